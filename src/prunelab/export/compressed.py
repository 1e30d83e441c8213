"""Deep Compression's storage of a pruned, weight-shared layer (Han et al. 2016).

A layer whose nonzero weights take few distinct values (after k-means weight sharing) is
stored as:

* a *codebook*: its distinct nonzero values, float32, sorted ascending (NaNs last), at most
  ``2**cluster_bits`` of them (Deep Compression: 8 bits for conv, 5 for fully connected);
* the *entries* of Han's relative-index format (:mod:`prunelab.export.relative_index`): every
  nonzero plus the filler entries that bridge runs of more than ``2**index_bits - 1`` zeros,
  each with a gap code ``0..2**index_bits - 1``;
* per entry a *cluster index*: the position of its value in the codebook, or the reserved
  index ``len(codebook)`` for a filler (whose value is zero);
* both symbol streams, cluster indices and gap codes, Huffman coded
  (:mod:`prunelab.export.huffman`), each with its table stored as code lengths.

Which values count: as in the other compact formats, every element that compares unequal to
zero (NaNs included, bit pattern kept); ``+0.0`` and ``-0.0`` are zeros and decode as ``+0.0``.
Distinct values are distinct bit patterns, so decoding is bit-exact. A float16/bfloat16 layer
fits its float32 codebook exactly; a float64 layer only if every value is a float32 value.

Example:
    >>> w = torch.tensor([[0.0, 0.5, 0.0, -0.25], [0.5, 0.0, 0.0, 0.5]])
    >>> enc = encode_compressed(w, index_bits=2, cluster_bits=1)
    >>> enc.codebook.tolist(), enc.num_entries, enc.num_fillers
    ([-0.25, 0.5], 4, 0)
    >>> torch.equal(decode_compressed(enc), w)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.export.huffman import HuffmanCoded, huffman_decode, huffman_encode
from prunelab.export.relative_index import (
    _check_bits,
    _flat_weight,
    _nonzero_positions,
    dense_zeros,
    entry_codes,
    entry_positions,
    weight_dtype_from_name,
    weight_dtype_name,
)

__all__ = [
    "MAX_CLUSTER_BITS",
    "CodebookSizeError",
    "CompressedEncoded",
    "codebook_of",
    "decode_compressed",
    "encode_compressed",
]

#: Widest cluster index: a codebook of 2**15 values plus the filler symbol still fits the
#: 16-bit limit of the Huffman codes.
MAX_CLUSTER_BITS = 15

# Integer dtype of the same width, to compare floats by bit pattern (NaN payloads, no -0.0).
_PATTERN_DTYPES: dict[torch.dtype, torch.dtype] = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class CodebookSizeError(PrunelabError, ValueError):
    """Layers have more distinct nonzero values than their codebook may hold.

    Attributes:
        layers: ``(name, distinct values, limit)`` of each such layer.
    """

    def __init__(self, layers: Sequence[tuple[str, int, int]]) -> None:
        self.layers = tuple(layers)
        parts = [f"{name!r} has {count:,} distinct nonzero values (limit {limit:,}, "
                 f"{int(limit).bit_length() - 1}-bit codebook)" for name, count, limit in layers]
        # The advice first: a long list of layers is cut when printed as one line.
        super().__init__(
            "format 'compressed' stores each layer's nonzero values as a codebook: share the "
            "weights first (k-means weight sharing, prunelab.sharing) or allow more values "
            f"with cluster_bits (--cluster-bits); layer {'; layer '.join(parts)}"
        )


def _check_cluster_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError(f"cluster_bits must be an int, got {type(bits).__name__}")
    if not 1 <= bits <= MAX_CLUSTER_BITS:
        raise ValueError(f"cluster_bits={bits} is out of range; allowed 1..{MAX_CLUSTER_BITS}")


@dataclass(frozen=True)
class CompressedEncoded:
    """One layer in the compressed format (see the module docstring).

    Attributes:
        codebook: 1-D float32 tensor of the layer's distinct nonzero values, ascending.
        cluster_code_lengths: 1-D ``uint8`` tensor, Huffman code length of each cluster index
            (index ``len(codebook)`` is the filler).
        cluster_stream: 1-D ``uint8`` tensor, the Huffman-coded cluster index of every entry.
        cluster_nbits: exact bits of ``cluster_stream``.
        gap_code_lengths: 1-D ``uint8`` tensor, Huffman code length of each gap code.
        gap_stream: 1-D ``uint8`` tensor, the Huffman-coded gap code of every entry.
        gap_nbits: exact bits of ``gap_stream``.
        num_entries: stored entries, nonzeros plus fillers.
        num_fillers: filler entries among them.
        shape: shape of the dense weight.
        index_bits: width of the gap codes, 1..16 (the largest gap one entry bridges).
        cluster_bits: the codebook holds at most ``2**cluster_bits`` values, 1..15.
        dtype: name of the dense weight's dtype, restored by :func:`decode_compressed`.
    """

    codebook: torch.Tensor
    cluster_code_lengths: torch.Tensor
    cluster_stream: torch.Tensor
    cluster_nbits: int
    gap_code_lengths: torch.Tensor
    gap_stream: torch.Tensor
    gap_nbits: int
    num_entries: int
    num_fillers: int
    shape: tuple[int, ...]
    index_bits: int
    cluster_bits: int
    dtype: str = "float32"

    @property
    def nnz(self) -> int:
        """Stored entries that are not fillers (the weight's nonzeros)."""
        return self.num_entries - self.num_fillers

    @property
    def codebook_size(self) -> int:
        """Values in the codebook."""
        return int(self.codebook.numel())

    @property
    def value_nbytes(self) -> int:
        """Bytes of the Huffman-coded cluster indices."""
        return int(self.cluster_stream.numel())

    @property
    def index_nbytes(self) -> int:
        """Bytes of the Huffman-coded relative indices (gaps)."""
        return int(self.gap_stream.numel())

    @property
    def codebook_nbytes(self) -> int:
        """Bytes of the codebook (4 per value)."""
        return self.codebook_size * 4

    @property
    def table_nbytes(self) -> int:
        """Bytes of the two Huffman tables (one byte per code length)."""
        return int(self.cluster_code_lengths.numel() + self.gap_code_lengths.numel())

    @property
    def nbytes(self) -> int:
        """All bytes stored for the layer."""
        return self.value_nbytes + self.index_nbytes + self.codebook_nbytes + self.table_nbytes


def codebook_of(weight: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The distinct nonzero values of a weight and where each nonzero's value sits in them.

    Args:
        weight: floating tensor of any shape.

    Returns:
        ``(values, positions, clusters)``: the distinct nonzero values (distinct bit patterns)
        in the weight's dtype, ascending with NaNs last; the flat positions of the nonzeros;
        the index into ``values`` of each nonzero.

    Raises:
        TypeError: if ``weight`` is not a floating tensor.

    Example:
        >>> values, positions, clusters = codebook_of(torch.tensor([0.0, 2.0, -1.0, 2.0]))
        >>> values.tolist(), positions.tolist(), clusters.tolist()
        ([-1.0, 2.0], [1, 2, 3], [1, 0, 1])
    """
    flat = _flat_weight(weight)
    positions = _nonzero_positions(flat)
    nonzero = flat[torch.from_numpy(positions)]
    patterns = nonzero.view(_PATTERN_DTYPES[flat.dtype]).numpy()
    unique, inverse = np.unique(patterns, return_inverse=True)
    values = torch.from_numpy(unique).view(flat.dtype)
    order = np.argsort(values.to(torch.float64).numpy(), kind="stable")  # NaNs sort last
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return values[torch.from_numpy(order)], positions, rank[inverse.reshape(-1)].astype(np.int64)


def encode_compressed(
    weight: torch.Tensor, index_bits: int, cluster_bits: int, *, name: str = "weight"
) -> CompressedEncoded:
    """Encode a weight-shared layer: codebook, Huffman-coded cluster indices and gaps.

    Args:
        weight: floating tensor of any shape (flattened row-major, as in Han's format).
        index_bits: width of the relative-index gap codes, 1..16 (Han: 5 FC, 8 conv).
        cluster_bits: the codebook may hold at most ``2**cluster_bits`` values, 1..15
            (Deep Compression: 5 FC, 8 conv).
        name: the layer's name, for the error message.

    Returns:
        The :class:`CompressedEncoded` layer.

    Raises:
        CodebookSizeError: more distinct nonzero values than ``2**cluster_bits``.
        TypeError: non-floating weight or non-int widths.
        ValueError: widths out of range; a float64 value that float32 cannot hold exactly.

    Example:
        >>> enc = encode_compressed(torch.tensor([0.5, 0.0, 0.5, 0.5]), 2, 1)
        >>> enc.cluster_nbits, enc.gap_nbits  # one bit per symbol: a lone symbol each
        (3, 3)
    """
    _check_bits(index_bits)
    _check_cluster_bits(cluster_bits)
    dtype_name = weight_dtype_name(weight.dtype)
    values, positions, clusters = codebook_of(weight)
    limit = 1 << cluster_bits
    if values.numel() > limit:
        raise CodebookSizeError([(name, int(values.numel()), limit)])
    codebook = values.to(torch.float32)
    back = codebook.to(values.dtype).view(_PATTERN_DTYPES[values.dtype])
    if not torch.equal(back, values.view(_PATTERN_DTYPES[values.dtype])):
        raise ValueError(
            f"layer {name!r} is {dtype_name} with values that float32 cannot hold exactly; "
            "format 'compressed' stores a float32 codebook (cast the model to float32 first)"
        )
    codes, slots = entry_codes(positions, index_bits)
    symbols = np.full(codes.size, values.numel(), dtype=np.int64)  # fillers: index K
    symbols[slots] = clusters
    cluster_coded = huffman_encode(symbols)
    gap_coded = huffman_encode(codes)
    return CompressedEncoded(
        codebook=codebook.contiguous(),
        cluster_code_lengths=torch.from_numpy(cluster_coded.code_lengths),
        cluster_stream=torch.from_numpy(cluster_coded.stream),
        cluster_nbits=cluster_coded.nbits,
        gap_code_lengths=torch.from_numpy(gap_coded.code_lengths),
        gap_stream=torch.from_numpy(gap_coded.stream),
        gap_nbits=gap_coded.nbits,
        num_entries=int(codes.size),
        num_fillers=int(codes.size - positions.size),
        shape=tuple(int(s) for s in weight.shape),
        index_bits=int(index_bits),
        cluster_bits=int(cluster_bits),
        dtype=dtype_name,
    )


def _uint8_vector(tensor: torch.Tensor, what: str, most: int) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(f"{what} must be a 1-D uint8 tensor")
    if tensor.numel() > most:
        raise ValueError(f"{what} has {tensor.numel()} entries, more than the {most} allowed")
    return tensor.detach().cpu().contiguous().numpy()


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{what}={value!r} must be a non-negative int")
    return int(value)


def decode_compressed(enc: CompressedEncoded) -> torch.Tensor:
    """Rebuild the dense weight, bit for bit, checking every size against the arrays.

    Args:
        enc: an encoding from :func:`encode_compressed` (or read back from a file).

    Returns:
        A dense CPU tensor of ``enc.shape`` and ``enc.dtype`` (zeros come back as ``+0.0``).

    Raises:
        ValueError: if the encoding is inconsistent: widths, codebook size or dtype, table
            sizes, Huffman streams, filler count, or gaps that run past the tensor's end.

    Example:
        >>> w = torch.zeros(3, 40)
        >>> w[2, 39] = 1.5
        >>> enc = encode_compressed(w, 5, 5)
        >>> enc.num_fillers, torch.equal(decode_compressed(enc), w)
        (3, True)
    """
    _check_bits(enc.index_bits)
    _check_cluster_bits(enc.cluster_bits)
    dense_dtype = weight_dtype_from_name(enc.dtype)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in enc.shape):
        raise ValueError(f"invalid shape {enc.shape}")
    numel = math.prod(enc.shape)
    entries = _count(enc.num_entries, "num_entries")
    fillers = _count(enc.num_fillers, "num_fillers")
    if fillers > entries or entries > numel:
        raise ValueError(
            f"num_fillers={fillers}, num_entries={entries} and {numel} elements do not fit "
            "(fillers <= entries <= elements)"
        )
    codebook = enc.codebook
    if not isinstance(codebook, torch.Tensor) or codebook.dtype != torch.float32 or (
        codebook.dim() != 1
    ):
        raise ValueError("codebook must be a 1-D float32 tensor")
    size = codebook.numel()
    if size > 1 << enc.cluster_bits:
        raise ValueError(
            f"codebook has {size} values, more than 2**cluster_bits = {1 << enc.cluster_bits}"
        )
    if bool((codebook == 0).any()):
        raise ValueError("codebook holds a zero (zeros are not stored)")
    cluster_lengths = _uint8_vector(enc.cluster_code_lengths, "cluster_code_lengths", size + 1)
    gap_lengths = _uint8_vector(enc.gap_code_lengths, "gap_code_lengths", 1 << enc.index_bits)
    clusters = huffman_decode(HuffmanCoded(
        code_lengths=cluster_lengths,
        stream=_uint8_vector(enc.cluster_stream, "cluster_stream", 1 << 62),
        count=entries, nbits=_count(enc.cluster_nbits, "cluster_nbits"),
    ))
    gaps = huffman_decode(HuffmanCoded(
        code_lengths=gap_lengths,
        stream=_uint8_vector(enc.gap_stream, "gap_stream", 1 << 62),
        count=entries, nbits=_count(enc.gap_nbits, "gap_nbits"),
    ))
    is_filler = clusters == size
    if int(is_filler.sum()) != fillers:
        raise ValueError(f"{int(is_filler.sum())} entries carry the filler index, "
                         f"but num_fillers={fillers}")
    if bool((gaps[is_filler] != (1 << enc.index_bits) - 1).any()):
        raise ValueError("a filler entry has a gap code other than the largest")
    positions = entry_positions(gaps, enc.shape)
    keep = ~is_filler
    dense = dense_zeros(numel, dense_dtype)
    dense[torch.from_numpy(positions[keep])] = codebook[torch.from_numpy(clusters[keep])].to(
        dense_dtype
    )
    return dense.reshape(enc.shape)

