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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunelab.export.container import (
    FORMATS,
    _resolve_index_bits,
    compressible_weight_names,
    default_index_bits,
    effective_state_dict,
)
from prunelab.export.csr import csr_matrix_shape
from prunelab.export.relative_index import packed_nbytes, relative_entry_counts, resolve_value_dtype

__all__ = ["LayerSize", "format_size_table_markdown", "size_table"]

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
    _, value_torch_dtype = resolve_value_dtype(value_dtype)
    value_size = torch.empty(0, dtype=value_torch_dtype).element_size()
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
