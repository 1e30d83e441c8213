"""Compact storage of pruned models: Han's relative-index format, CSR, Deep Compression's
codebook + Huffman format (:mod:`prunelab.export.compressed`, :mod:`prunelab.export.huffman`), a
safetensors container; and ONNX export (:mod:`prunelab.export.onnx`, effective weights with
exact zeros).

Example:
    >>> import os, tempfile, torch
    >>> from torch import nn
    >>> from torch.nn.utils import prune
    >>> from prunelab.export import export_model, load_compact
    >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = prune.l1_unstructured(net[0], "weight", amount=0.75)
    >>> path = export_model(net, os.path.join(tempfile.mkdtemp(), "net.safetensors"))
    >>> state, metadata = load_compact(path)
    >>> torch.equal(state["0.weight"], net[0].weight)
    True
"""

from prunelab.export.compressed import (
    CodebookSizeError,
    CompressedEncoded,
    codebook_of,
    decode_compressed,
    encode_compressed,
)
from prunelab.export.container import (
    FORMAT_VERSION,
    FORMATS,
    CompactFormat,
    ExportFormatError,
    compressible_weight_names,
    default_index_bits,
    effective_state_dict,
    export_model,
    load_compact,
    read_compact_header,
    save_compact,
)
from prunelab.export.csr import CsrEncoded, csr_matrix_shape, decode_csr, encode_csr, to_torch_csr
from prunelab.export.huffman import (
    HuffmanCoded,
    canonical_codes,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
)
from prunelab.export.onnx import (
    OnnxExportError,
    OnnxUnavailableError,
    check_onnx,
    export_onnx,
    run_onnx,
)
from prunelab.export.relative_index import (
    RelativeEncoded,
    decode_relative,
    encode_relative,
    pack_bits,
    packed_nbytes,
    relative_entry_counts,
    unpack_bits,
)
from prunelab.export.size_table import (
    CompressedLayerSize,
    CompressedSizeTable,
    LayerSize,
    compressed_size_table,
    format_compressed_size_table_markdown,
    format_deep_compression_comparison,
    format_size_table_markdown,
    size_table,
)

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "CodebookSizeError",
    "CompactFormat",
    "CompressedEncoded",
    "CompressedLayerSize",
    "CompressedSizeTable",
    "CsrEncoded",
    "ExportFormatError",
    "HuffmanCoded",
    "LayerSize",
    "OnnxExportError",
    "OnnxUnavailableError",
    "RelativeEncoded",
    "canonical_codes",
    "check_onnx",
    "codebook_of",
    "compressed_size_table",
    "compressible_weight_names",
    "csr_matrix_shape",
    "decode_compressed",
    "decode_csr",
    "decode_relative",
    "default_index_bits",
    "effective_state_dict",
    "encode_compressed",
    "encode_csr",
    "encode_relative",
    "export_model",
    "export_onnx",
    "format_compressed_size_table_markdown",
    "format_deep_compression_comparison",
    "format_size_table_markdown",
    "huffman_code_lengths",
    "huffman_decode",
    "huffman_encode",
    "load_compact",
    "pack_bits",
    "packed_nbytes",
    "read_compact_header",
    "relative_entry_counts",
    "run_onnx",
    "save_compact",
    "size_table",
    "to_torch_csr",
    "unpack_bits",
]
