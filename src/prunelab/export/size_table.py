"""Bytes per layer of the compact formats, computed without writing a file.

Definitions (all sizes count array payload only: the file header, shapes and safetensors framing
are left out; biases and other dense tensors are left out, as in the per-layer tables of
Han et al. 2015):

* ``entries``: stored entries: nonzeros plus fillers (``"han"``), nonzeros (``"csr"``), all
  weights (``"dense"``).
* ``value_bytes = entries * bytes per value`` (4 for float32, 2 for float16/bfloat16).
* ``index_bytes``: ``"han"``: ``ceil(entries * index_bits / 8)`` (bit-packed); ``"csr"``:
  ``4 * nnz`` (int32 columns) ``+ 4 * (rows + 1)`` (int32 row pointers; 8 bytes each once
  ``nnz >= 2**31``); ``"dense"``: 0.
* ``index_overhead_pct = index_bytes / value_bytes * 100``: with 5-bit indices and 32-bit values it
  is about 5/32 = 15.6%, the figure Han et al. report; fillers add entries to both sides, so they
  barely move this ratio.
* ``total_overhead_pct = (compact_bytes - nnz * bytes per value) / (nnz * bytes per value) * 100``:
  everything stored beyond the nonzero values themselves (indices *and* filler values), which is
  where fillers show.
* ``dense_bytes = weights * 4`` (the dense fp32 layer); ``compact_bytes = value_bytes +
  index_bytes``; ``ratio = dense_bytes / compact_bytes`` (a storage ratio, not a weight ratio).

The ``"compressed"`` format (Deep Compression) has its own table, :func:`compressed_size_table`,
which counts *everything* the file stores, biases and other tensors included, so its total is
the file's payload to the byte:

* ``value_bytes``: the Huffman-coded cluster (codebook) indices, one per entry;
  ``index_bytes``: the Huffman-coded relative indices (gaps); ``codebook_bytes = 4 *
  codebook_size``; ``table_bytes``: the two Huffman tables (one byte per code length);
  ``bias_bytes``: the layer's bias as stored; ``compressed_bytes``: their sum.
* ``dense_bytes = 4 * (weights + biases)``; ``ratio = dense_bytes / compressed_bytes``;
  ``bits_per_nonzero``: the weight's bytes (all but the bias) * 8 per nonzero weight.
* Tensors that are neither a layer's weight nor its bias (BatchNorm state, ...) are stored as
  they are: ``other_bytes``, counted the same in every stage.
* The stages, each including biases and other tensors: ``dense_bytes`` (fp32), ``pruned_bytes``
  (Han 2015: fp32 values of all entries plus ``index_bits``-bit relative indices, as
  ``--format han`` writes), ``quantized_bytes`` (the same entries with fixed-width codebook
  indices, ``ceil(log2(codebook_size + 1 if fillers else codebook_size))`` bits each, fixed
  ``index_bits`` relative indices and the codebooks: weight sharing without Huffman coding, a
  stage no file is written for) and ``compressed_bytes`` (this format). Their ratios multiply:
  ``dense / compressed = (dense / pruned) * (pruned / quantized) * (quantized / compressed)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.export.compressed import CodebookSizeError, encode_compressed
from prunelab.export.container import (
    FORMATS,
    _resolve_bits,
    _resolve_index_bits,
    compressible_weight_names,
    default_index_bits,
    effective_state_dict,
)
from prunelab.export.csr import csr_matrix_shape
from prunelab.export.relative_index import packed_nbytes, relative_entry_counts, resolve_value_dtype
from prunelab.paper import DEEP_COMPRESSION

__all__ = [
    "CompressedLayerSize",
    "CompressedSizeTable",
    "LayerSize",
    "compressed_size_table",
    "format_compressed_size_table_markdown",
    "format_deep_compression_comparison",
    "format_size_table_markdown",
    "size_table",
]

_DENSE_BYTES_PER_WEIGHT = 4  # the fp32 baseline every ratio is measured against
_INT32_MAX = int(np.iinfo(np.int32).max)


@dataclass(frozen=True)
class LayerSize:
    """Storage of one layer (or the ``"total"`` row) in one compact format.

    Attributes:
        name: state_dict key of the weight, or ``"total"``.
        shape: the weight's shape (``None`` for the total row).
        weights: number of weights.
        nonzero: nonzero weights.
        entries: stored entries (nonzeros plus fillers for ``"han"``).
        fillers: filler entries (``"han"`` only, else 0).
        index_bits: relative-index width (``"han"`` only, else ``None``; ``None`` in the total).
        value_bytes: bytes of stored values.
        index_bytes: bytes of indices (packed bits rounded up to bytes, or CSR arrays).
        index_overhead_pct: ``index_bytes / value_bytes * 100``.
        total_overhead_pct: bytes beyond the nonzero values, in % of the nonzero values' bytes.
        dense_bytes: bytes of the dense fp32 weight.
        compact_bytes: ``value_bytes + index_bytes``.
        ratio: ``dense_bytes / compact_bytes``.
    """

    name: str
    shape: tuple[int, ...] | None
    weights: int
    nonzero: int
    entries: int
    fillers: int
    index_bits: int | None
    value_bytes: int
    index_bytes: int
    index_overhead_pct: float
    total_overhead_pct: float
    dense_bytes: int
    compact_bytes: int
    ratio: float


def _pct(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 0.0 if numerator == 0 else math.inf
    return numerator / denominator * 100.0


def _ratio(dense_bytes: int, compact_bytes: int) -> float:
    if compact_bytes == 0:
        return 1.0 if dense_bytes == 0 else math.inf
    return dense_bytes / compact_bytes


def _layers_of(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
) -> tuple[dict[str, Any], dict[str, int], dict[str, torch.Tensor]]:
    """``(effective state, default width by layer, layer weights)``: the Linear/Conv weights of
    a module, or a state dict's 2-D+ ``weight`` tensors."""
    state = effective_state_dict(model_or_state)
    if isinstance(model_or_state, nn.Module):
        defaults = compressible_weight_names(model_or_state)
    else:
        defaults = {
            key: default_index_bits(tuple(value.shape))
            for key, value in state.items()
            if isinstance(value, torch.Tensor)
            and value.dim() >= 2
            and (key == "weight" or key.endswith(".weight"))
        }
    layers = {name: state[name] for name in defaults if name in state}
    return state, defaults, layers


def _row(
    name: str,
    shape: tuple[int, ...] | None,
    weights: int,
    nonzero: int,
    entries: int,
    fillers: int,
    index_bits: int | None,
    value_bytes: int,
    index_bytes: int,
    value_size: int,
) -> LayerSize:
    compact = value_bytes + index_bytes
    nonzero_bytes = nonzero * value_size
    dense = weights * _DENSE_BYTES_PER_WEIGHT
    return LayerSize(
        name=name,
        shape=shape,
        weights=weights,
        nonzero=nonzero,
        entries=entries,
        fillers=fillers,
        index_bits=index_bits,
        value_bytes=value_bytes,
        index_bytes=index_bytes,
        index_overhead_pct=_pct(index_bytes, value_bytes),
        total_overhead_pct=_pct(compact - nonzero_bytes, nonzero_bytes),
        dense_bytes=dense,
        compact_bytes=compact,
        ratio=_ratio(dense, compact),
    )


def size_table(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    format: str = "han",
    *,
    index_bits: Mapping[str, int] | int | None = None,
    value_dtype: str | torch.dtype = "float32",
) -> list[LayerSize]:
    """Per-layer storage of the compressible weights, plus a final ``"total"`` row.

    Layers are the Linear/Conv weights of a module, or, for a state dict, every tensor of two or
    more dimensions whose key is ``"weight"`` or ends in ``".weight"``. Masks are resolved
    (``weight_orig * weight_mask``) as in :func:`prunelab.export.export_model`, so the numbers
    match what that function writes. See the module docstring for every definition.

    Args:
        model_or_state: a module or a state dict (pruned or not).
        format: ``"han"``, ``"csr"`` or ``"dense"``.
        index_bits: ``"han"`` only: an int for all layers or a dict by layer name; default 5 for
            Linear (2-D) weights and 8 for Conv weights.
        value_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.

    Returns:
        One :class:`LayerSize` per layer in model order, then the total row (sums; its
        percentages and ratio are recomputed from the sums).

    Raises:
        ValueError: unknown format or value dtype, bad ``index_bits``.

    Example:
        >>> w = torch.zeros(2, 40); w[0, 0] = 1.0; w[1, 39] = 2.0
        >>> rows = size_table({"fc.weight": w}, "han", index_bits=5)
        >>> rows[0].entries, rows[0].fillers, rows[0].value_bytes, rows[0].index_bytes
        (4, 2, 16, 3)
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; use one of {list(FORMATS)}")
    if format == "compressed":
        raise ValueError("format='compressed' has its own table, with codebooks, Huffman tables "
                         "and biases: use compressed_size_table()")
    _, value_torch_dtype = resolve_value_dtype(value_dtype)
    value_size = torch.empty(0, dtype=value_torch_dtype).element_size()
    _, defaults, layers = _layers_of(model_or_state)
    bits_by_layer = _resolve_index_bits(layers, format, index_bits, defaults)

    rows: list[LayerSize] = []
    for name, weight in layers.items():
        shape = tuple(int(s) for s in weight.shape)
        weights = weight.numel()
        bits: int | None = None
        fillers = 0
        if format == "han":
            bits = bits_by_layer[name]
            nonzero, fillers = relative_entry_counts(weight, bits)
            entries = nonzero + fillers
            index_bytes = packed_nbytes(entries, bits)
        elif format == "csr":
            nonzero = int(torch.count_nonzero(weight))
            entries = nonzero
            n_rows, _ = csr_matrix_shape(shape)
            ptr_size = 4 if nonzero <= _INT32_MAX else 8
            index_bytes = 4 * nonzero + ptr_size * (n_rows + 1)
        else:
            nonzero = int(torch.count_nonzero(weight))
            entries = weights
            index_bytes = 0
        rows.append(
            _row(
                name,
                shape,
                weights,
                nonzero,
                entries,
                fillers,
                bits,
                entries * value_size,
                index_bytes,
                value_size,
            )
        )
    rows.append(
        _row(
            "total",
            None,
            sum(r.weights for r in rows),
            sum(r.nonzero for r in rows),
            sum(r.entries for r in rows),
            sum(r.fillers for r in rows),
            None,
            sum(r.value_bytes for r in rows),
            sum(r.index_bytes for r in rows),
            value_size,
        )
    )
    return rows


def _fmt_float(value: float, digits: int) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def format_size_table_markdown(rows: list[LayerSize]) -> str:
    """Render :func:`size_table` rows as a Markdown table.

    Args:
        rows: rows from :func:`size_table` (the total row, if present, is set in bold).

    Returns:
        The table as a string, one line per row, ending with a newline.

    Example:
        >>> table = format_size_table_markdown(size_table({"fc.weight": torch.eye(2)}, "csr"))
        >>> table.splitlines()[2]
        '| fc.weight | 2x2 | 4 | 2 | 50.0 | 2 | 0 | - | 8 | 20 | 250.0 | 250.0 | 16 | 28 | 0.57x |'
    """
    header = (
        "| layer | shape | weights | nonzero | kept % | entries | fillers | index bits | value B "
        "| index B | index overhead % | total overhead % | dense B | compact B | ratio |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [header]
    for row in rows:
        name = f"**{row.name}**" if row.shape is None else row.name
        shape = "" if row.shape is None else "x".join(str(s) for s in row.shape)
        bits = "-" if row.index_bits is None else str(row.index_bits)
        kept = _pct(row.nonzero, row.weights)
        lines.append(
            f"| {name} | {shape} | {row.weights} | {row.nonzero} | {_fmt_float(kept, 1)} "
            f"| {row.entries} | {row.fillers} | {bits} | {row.value_bytes} | {row.index_bytes} "
            f"| {_fmt_float(row.index_overhead_pct, 1)} | {_fmt_float(row.total_overhead_pct, 1)} "
            f"| {row.dense_bytes} | {row.compact_bytes} | {_fmt_float(row.ratio, 2)}x |\n"
        )
    return "".join(lines)


# ----------------------------------------------------------------------------- compressed


@dataclass(frozen=True)
class CompressedLayerSize:
    """Storage of one layer (or the ``"total"`` row) in the ``"compressed"`` format.

    Attributes:
        name: state_dict key of the weight, or ``"total"``.
        shape: the weight's shape (``None`` for the total row).
        weights: number of weights.
        nonzero: nonzero weights.
        entries: stored entries, nonzeros plus fillers.
        fillers: filler entries.
        index_bits: relative-index (gap) width (``None`` in the total).
        cluster_bits: codebook width, at most ``2**cluster_bits`` values (``None`` in the total).
        codebook_size: values in the codebook (summed in the total).
        value_bytes: Huffman-coded cluster indices.
        index_bytes: Huffman-coded relative indices.
        codebook_bytes: the codebook, 4 bytes per value.
        table_bytes: the two Huffman tables, one byte per code length.
        bias_bytes: the layer's bias as stored (0 without one).
        compressed_bytes: the sum of the five above.
        dense_bytes: ``4 * (weights + bias elements)``, the dense fp32 layer.
        ratio: ``dense_bytes / compressed_bytes``.
        bits_per_nonzero: ``(compressed_bytes - bias_bytes) * 8 / nonzero``.
    """

    name: str
    shape: tuple[int, ...] | None
    weights: int
    nonzero: int
    entries: int
    fillers: int
    index_bits: int | None
    cluster_bits: int | None
    codebook_size: int
    value_bytes: int
    index_bytes: int
    codebook_bytes: int
    table_bytes: int
    bias_bytes: int
    compressed_bytes: int
    dense_bytes: int
    ratio: float
    bits_per_nonzero: float


@dataclass(frozen=True)
class CompressedSizeTable:
    """Per-layer storage of a model in the ``"compressed"`` format and the stages before it.

    Attributes:
        rows: one :class:`CompressedLayerSize` per layer, then the ``"total"`` row (sums).
        other_bytes: tensors stored as they are that are neither a layer weight nor its bias.
        dense_bytes: the whole model in fp32 (weights and biases; other tensors as stored).
        pruned_bytes: Han 2015's relative-index format (fp32 values) plus biases and others.
        quantized_bytes: weight sharing with fixed-width indices, no Huffman coding (an
            estimate: no file is written in this form), plus biases and others.
        compressed_bytes: this format: exactly the array payload of the file it writes.
    """

    rows: tuple[CompressedLayerSize, ...]
    other_bytes: int
    dense_bytes: int
    pruned_bytes: int
    quantized_bytes: int
    compressed_bytes: int

    @property
    def total(self) -> CompressedLayerSize:
        """The ``"total"`` row."""
        return self.rows[-1]

    @property
    def ratio(self) -> float:
        """``dense_bytes / compressed_bytes``: the whole storage ratio."""
        return _ratio(self.dense_bytes, self.compressed_bytes)

    @property
    def pruning_ratio(self) -> float:
        """What pruning (with Han's relative indices) contributes: ``dense / pruned``."""
        return _ratio(self.dense_bytes, self.pruned_bytes)

    @property
    def quantization_ratio(self) -> float:
        """What weight sharing with fixed-width indices adds: ``pruned / quantized``."""
        return _ratio(self.pruned_bytes, self.quantized_bytes)

    @property
    def huffman_ratio(self) -> float:
        """What Huffman coding adds: ``quantized / compressed``."""
        return _ratio(self.quantized_bytes, self.compressed_bytes)

    @property
    def quantization_huffman_ratio(self) -> float:
        """Quantisation and Huffman coding together: ``pruned / compressed``."""
        return _ratio(self.pruned_bytes, self.compressed_bytes)


def _bias_key(weight_key: str) -> str:
    return weight_key[: -len("weight")] + "bias"


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def compressed_size_table(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    *,
    index_bits: Mapping[str, int] | int | None = None,
    cluster_bits: Mapping[str, int] | int | None = None,
) -> CompressedSizeTable:
    """Storage of a weight-shared model in the ``"compressed"`` format, layer by layer.

    Layers are chosen as in :func:`size_table`; every layer is encoded (nothing is written),
    so the numbers are those of the file :func:`prunelab.export.export_model` writes with
    ``format="compressed"`` and the same widths: the total is its array payload to the byte.
    See the module docstring for every definition.

    Args:
        model_or_state: a weight-shared module or state dict (pruned or not).
        index_bits: relative-index widths: an int or a dict by layer; default 5 for Linear
            (2-D) weights and 8 for Conv weights.
        cluster_bits: codebook widths, as ``index_bits`` (same defaults).

    Returns:
        The :class:`CompressedSizeTable`.

    Raises:
        prunelab.export.CodebookSizeError: layers with more distinct nonzero values than their
            codebook holds (all named in one message).
        ValueError: bad widths.

    Example:
        >>> w = torch.zeros(2, 40); w[0, 0] = 0.5; w[1, 39] = 0.5
        >>> table = compressed_size_table({"fc.weight": w, "fc.bias": torch.ones(2)})
        >>> row = table.rows[0]
        >>> row.entries, row.codebook_bytes, row.table_bytes, row.bias_bytes
        (4, 4, 34, 8)
        >>> table.compressed_bytes == row.compressed_bytes == 1 + 1 + 4 + 34 + 8
        True
    """
    state, defaults, layers = _layers_of(model_or_state)
    bits_by_layer = _resolve_bits(layers, index_bits, defaults, "index_bits")
    cluster_by_layer = _resolve_bits(layers, cluster_bits, defaults, "cluster_bits")
    rows: list[CompressedLayerSize] = []
    biases: set[str] = set()
    too_many: list[tuple[str, int, int]] = []
    pruned = quantized = 0
    for name, weight in layers.items():
        bits, clusters = bits_by_layer[name], cluster_by_layer[name]
        try:
            enc = encode_compressed(weight, bits, clusters, name=name)
        except CodebookSizeError as exc:
            too_many.extend(exc.layers)
            continue
        bias = state.get(_bias_key(name)) if name.endswith("weight") else None
        bias_bytes = bias_numel = 0
        if isinstance(bias, torch.Tensor) and _bias_key(name) not in layers:
            biases.add(_bias_key(name))
            bias_bytes, bias_numel = _nbytes(bias), bias.numel()
        symbols = enc.codebook_size + (1 if enc.num_fillers else 0)
        fixed_width = max(1, (symbols - 1).bit_length())
        pruned += enc.num_entries * 4 + packed_nbytes(enc.num_entries, bits) + bias_bytes
        quantized += (packed_nbytes(enc.num_entries, fixed_width)
                      + packed_nbytes(enc.num_entries, bits) + enc.codebook_nbytes + bias_bytes)
        rows.append(_compressed_row(
            name, tuple(enc.shape), weight.numel(), enc.nnz, enc.num_entries, enc.num_fillers,
            bits, clusters, enc.codebook_size, enc.value_nbytes, enc.index_nbytes,
            enc.codebook_nbytes, enc.table_nbytes, bias_bytes, 4 * (weight.numel() + bias_numel),
        ))
    if too_many:
        raise CodebookSizeError(too_many)
    rows.append(_compressed_row(
        "total", None, *(sum(getattr(r, f) for r in rows) for f in (
            "weights", "nonzero", "entries", "fillers")), None, None,
        *(sum(getattr(r, f) for r in rows) for f in (
            "codebook_size", "value_bytes", "index_bytes", "codebook_bytes", "table_bytes",
            "bias_bytes", "dense_bytes")),
    ))
    other = sum(_nbytes(t) for k, t in state.items()
                if isinstance(t, torch.Tensor) and k not in layers and k not in biases)
    total = rows[-1]
    return CompressedSizeTable(
        rows=tuple(rows),
        other_bytes=other,
        dense_bytes=total.dense_bytes + other,
        pruned_bytes=pruned + other,
        quantized_bytes=quantized + other,
        compressed_bytes=total.compressed_bytes + other,
    )


def _compressed_row(
    name: str,
    shape: tuple[int, ...] | None,
    weights: int,
    nonzero: int,
    entries: int,
    fillers: int,
    index_bits: int | None,
    cluster_bits: int | None,
    codebook_size: int,
    value_bytes: int,
    index_bytes: int,
    codebook_bytes: int,
    table_bytes: int,
    bias_bytes: int,
    dense_bytes: int,
) -> CompressedLayerSize:
    weight_bytes = value_bytes + index_bytes + codebook_bytes + table_bytes
    compressed = weight_bytes + bias_bytes
    return CompressedLayerSize(
        name=name,
        shape=shape,
        weights=weights,
        nonzero=nonzero,
        entries=entries,
        fillers=fillers,
        index_bits=index_bits,
        cluster_bits=cluster_bits,
        codebook_size=codebook_size,
        value_bytes=value_bytes,
        index_bytes=index_bytes,
        codebook_bytes=codebook_bytes,
        table_bytes=table_bytes,
        bias_bytes=bias_bytes,
        compressed_bytes=compressed,
        dense_bytes=dense_bytes,
        ratio=_ratio(dense_bytes, compressed),
        bits_per_nonzero=weight_bytes * 8 / nonzero if nonzero else math.nan,
    )


def format_compressed_size_table_markdown(table: CompressedSizeTable) -> str:
    """Render a :func:`compressed_size_table` as Markdown: the per-layer table, then the stages
    (dense, pruned, quantised, Huffman) with the ratio each contributes.

    Args:
        table: the table.

    Returns:
        Two Markdown tables and a closing line, ending with a newline.

    Example:
        >>> w = torch.zeros(2, 40); w[0, 0] = 0.5; w[1, 39] = 0.5
        >>> text = format_compressed_size_table_markdown(compressed_size_table({"fc.weight": w}))
        >>> text.splitlines()[2]
        '| fc.weight | 2x40 | 80 | 2 | 2.5 | 4 | 2 | 5 | 5 | 1 | 1 | 1 | 4 | 34 | 0 | 40 | 320 | 8.00x | 160.0 |'
    """  # noqa: E501
    lines = [
        "| layer | shape | weights | nonzero | kept % | entries | fillers | index bits "
        "| cluster bits | codebook | value B | index B | codebook B | table B | bias B | total B "
        "| dense B | ratio | bits/nonzero |\n",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
        "|---:|\n",
    ]
    for row in table.rows:
        name = f"**{row.name}**" if row.shape is None else row.name
        shape = "" if row.shape is None else "x".join(str(s) for s in row.shape)
        lines.append(
            f"| {name} | {shape} | {row.weights} | {row.nonzero} "
            f"| {_fmt_float(_pct(row.nonzero, row.weights), 1)} | {row.entries} | {row.fillers} "
            f"| {'-' if row.index_bits is None else row.index_bits} "
            f"| {'-' if row.cluster_bits is None else row.cluster_bits} | {row.codebook_size} "
            f"| {row.value_bytes} | {row.index_bytes} | {row.codebook_bytes} | {row.table_bytes} "
            f"| {row.bias_bytes} | {row.compressed_bytes} | {row.dense_bytes} "
            f"| {_fmt_float(row.ratio, 2)}x | {_fmt_float(row.bits_per_nonzero, 1)} |\n"
        )
    if table.other_bytes:
        lines.append(f"| other tensors | | | | | | | | | | | | | | | {table.other_bytes} "
                     f"| {table.other_bytes} | | |\n")
    stages = [
        ("dense fp32", table.dense_bytes, None),
        ("pruned (relative indices, fp32 values)", table.pruned_bytes, table.pruning_ratio),
        ("+ weight sharing (fixed-width indices)", table.quantized_bytes,
         table.quantization_ratio),
        ("+ Huffman coding (this file)", table.compressed_bytes, table.huffman_ratio),
    ]
    lines += ["\n| stage | bytes | vs dense | this step |\n", "|---|---:|---:|---:|\n"]
    for label, size, step in stages:
        step_text = "" if step is None else f"{_fmt_float(step, 2)}x"
        lines.append(f"| {label} | {size} | {_fmt_float(_ratio(table.dense_bytes, size), 2)}x "
                     f"| {step_text} |\n")
    lines.append(
        f"\npruning contributes {_fmt_float(table.pruning_ratio, 2)}x, quantisation and Huffman "
        f"coding {_fmt_float(table.quantization_huffman_ratio, 2)}x: "
        f"{_fmt_float(table.ratio, 2)}x in all (storage, biases included)\n"
    )
    return "".join(lines)


def format_deep_compression_comparison(table: CompressedSizeTable, model: str) -> str | None:
    """Our totals beside Deep Compression's published ones (Han et al. 2016), as Markdown.

    The reference columns are the paper's figures (:data:`prunelab.paper.DEEP_COMPRESSION`,
    KB = 1000 bytes), not claims about this model; they come from the paper's own trained,
    pruned and k-means-shared networks.

    Args:
        table: our :func:`compressed_size_table`.
        model: the registered model name (``"lenet300"``, ``"lenet5"``).

    Returns:
        A two-row Markdown table, or ``None`` if the paper gives no figures for ``model``.

    Example:
        >>> w = torch.zeros(2, 40); w[0, 0] = 0.5
        >>> text = format_deep_compression_comparison(compressed_size_table({"w": w}), "lenet5")
        >>> text.splitlines()[-1]
        '| Deep Compression (Han et al. 2016, LeNet-5) | 1720.0 | 44.0 | 39x |'
    """
    ref = DEEP_COMPRESSION.get(model)
    if ref is None:
        return None
    return (
        "| | dense KB | compressed KB | ratio |\n|---|---:|---:|---:|\n"
        f"| this file | {table.dense_bytes / 1000:.1f} | {table.compressed_bytes / 1000:.1f} "
        f"| {_fmt_float(table.ratio, 1)}x |\n"
        f"| Deep Compression (Han et al. 2016, {ref['network']}) | {ref['dense_kb']:.1f} "
        f"| {ref['compressed_kb']:.1f} | {ref['compression']}x |\n"
    )
