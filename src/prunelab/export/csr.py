"""Compressed sparse row (CSR) storage of a layer's weight.

The weight is viewed as a 2-D matrix with one row per output unit: ``[out, prod(rest)]`` (a conv
weight ``[out, in, kh, kw]`` becomes ``[out, in*kh*kw]``; a 1-D tensor is one row). The format
stores, as in Deep Compression's description, ``2a + n + 1`` numbers for ``a`` nonzeros and
``n`` rows: ``a`` values, ``a`` int32 column indices and ``n + 1`` row pointers (int32 while
``a < 2**31``, int64 beyond). Row ``r`` holds entries ``row_ptr[r]:row_ptr[r+1]`` with strictly
increasing columns. Which values are stored follows :mod:`prunelab.export.relative_index`:
everything that compares unequal to zero (NaNs included); ``+0.0`` and ``-0.0`` decode as ``+0.0``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from prunelab.export.relative_index import (
    _flat_weight,
    _nonzero_positions,
    dense_zeros,
    resolve_value_dtype,
    weight_dtype_from_name,
    weight_dtype_name,
)

__all__ = ["CsrEncoded", "csr_matrix_shape", "decode_csr", "encode_csr", "to_torch_csr"]

_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class CsrEncoded:
    """One layer in CSR form.

    Attributes:
        values: 1-D tensor of the ``nnz`` stored values, in ``value_dtype``.
        col_indices: 1-D int32 tensor of column indices, one per value.
        row_ptr: 1-D int32 (or int64 when ``nnz >= 2**31``) tensor of ``rows + 1`` offsets.
        shape: shape of the dense weight (the 2-D view is :func:`csr_matrix_shape`).
        value_dtype: name of the stored value dtype.
        dtype: name of the dense weight's dtype, restored by :func:`decode_csr`.
    """

    values: torch.Tensor
    col_indices: torch.Tensor
    row_ptr: torch.Tensor
    shape: tuple[int, ...]
    value_dtype: str = "float32"
    dtype: str = "float32"

    @property
    def nnz(self) -> int:
        """Number of stored values."""
        return self.values.numel()

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the 2-D view."""
        return csr_matrix_shape(self.shape)

    @property
    def value_nbytes(self) -> int:
        """Bytes of the stored values."""
        return self.values.numel() * self.values.element_size()

    @property
    def index_nbytes(self) -> int:
        """Bytes of column indices plus row pointers."""
        return (
            self.col_indices.numel() * self.col_indices.element_size()
            + self.row_ptr.numel() * self.row_ptr.element_size()
        )


def csr_matrix_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The 2-D ``(rows, cols)`` view a weight of ``shape`` is stored as.

    Args:
        shape: the dense weight's shape, at least 1-D.

    Returns:
        ``(shape[0], prod(shape[1:]))``, or ``(1, shape[0])`` for a 1-D shape.

    Raises:
        ValueError: for a 0-D shape.

    Example:
        >>> csr_matrix_shape((20, 1, 5, 5))
        (20, 25)
    """
    if len(shape) == 0:
        raise ValueError("CSR needs a tensor with at least one dimension, got a 0-D tensor")
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), math.prod(int(s) for s in shape[1:])


def encode_csr(weight: torch.Tensor, value_dtype: str | torch.dtype = "float32") -> CsrEncoded:
    """Encode a weight as CSR on its ``[out, rest]`` view.

    Args:
        weight: floating tensor with at least one dimension (on any device).
        value_dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"``.

    Returns:
        The :class:`CsrEncoded` layer.

    Raises:
        TypeError: if ``weight`` is not a floating tensor.
        ValueError: for a 0-D weight, an unsupported ``value_dtype``, or more than ``2**31 - 1``
            columns (int32 column indices).

    Example:
        >>> enc = encode_csr(torch.tensor([[0.0, 2.0], [3.0, 0.0]]))
        >>> enc.col_indices.tolist(), enc.row_ptr.tolist()
        ([1, 0], [0, 1, 2])
    """
    value_name, value_torch_dtype = resolve_value_dtype(value_dtype)
    flat = _flat_weight(weight)
    rows, cols = csr_matrix_shape(weight.shape)
    if cols > _INT32_MAX:
        raise ValueError(f"{cols} columns do not fit int32 column indices")
    positions = _nonzero_positions(flat)
    row_of = positions // cols if cols else positions
    counts = np.bincount(row_of, minlength=rows) if positions.size else np.zeros(rows, np.int64)
    ptr_dtype = np.int32 if positions.size <= _INT32_MAX else np.int64
    row_ptr = np.zeros(rows + 1, dtype=ptr_dtype)
    np.cumsum(counts, out=row_ptr[1:])
    col = (positions - row_of * cols).astype(np.int32)
    values = flat[torch.from_numpy(positions)].to(value_torch_dtype)
    return CsrEncoded(
        values=values,
        col_indices=torch.from_numpy(col),
        row_ptr=torch.from_numpy(row_ptr),
        shape=tuple(int(s) for s in weight.shape),
        value_dtype=value_name,
        dtype=weight_dtype_name(weight.dtype),
    )


def _validated_positions(enc: CsrEncoded) -> np.ndarray:
    """Flat positions of the stored values, after checking the arrays are consistent."""
    _, value_torch_dtype = resolve_value_dtype(enc.value_dtype)
    rows, cols = csr_matrix_shape(enc.shape)
    nnz = enc.values.numel()
    if enc.values.dim() != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(enc.values.shape)}")
    if enc.values.dtype != value_torch_dtype:
        raise ValueError(f"values has dtype {enc.values.dtype}, expected {value_torch_dtype}")
    if enc.col_indices.dtype != torch.int32 or enc.col_indices.shape != (nnz,):
        raise ValueError(
            f"col_indices must be int32 of shape ({nnz},), got {enc.col_indices.dtype} "
            f"{tuple(enc.col_indices.shape)}"
        )
    if enc.row_ptr.dtype not in (torch.int32, torch.int64) or enc.row_ptr.shape != (rows + 1,):
        raise ValueError(
            f"row_ptr must be int32/int64 of shape ({rows + 1},), got {enc.row_ptr.dtype} "
            f"{tuple(enc.row_ptr.shape)}"
        )
    row_ptr = enc.row_ptr.detach().cpu().numpy().astype(np.int64)
    counts = np.diff(row_ptr)
    if row_ptr[0] != 0 or row_ptr[-1] != nnz or (counts < 0).any():
        raise ValueError(
            f"row_ptr must rise from 0 to nnz={nnz}, got first={int(row_ptr[0])} "
            f"last={int(row_ptr[-1])}"
        )
    col = enc.col_indices.detach().cpu().numpy().astype(np.int64)
    if nnz and (col.min() < 0 or col.max() >= cols):
        raise ValueError(f"column index out of range [0, {cols})")
    positions = np.repeat(np.arange(rows, dtype=np.int64) * cols, counts) + col
    if nnz > 1 and (np.diff(positions) <= 0).any():
        raise ValueError("column indices must increase strictly within each row")
    return positions


def decode_csr(enc: CsrEncoded) -> torch.Tensor:
    """Rebuild the dense weight from CSR.

    Args:
        enc: an encoding from :func:`encode_csr` (or read back from a file).

    Returns:
        A dense CPU tensor of ``enc.shape`` and ``enc.dtype`` (bit-identical to the encoded weight
        when values were stored in its dtype; zeros come back as ``+0.0``).

    Raises:
        ValueError: if the arrays are inconsistent (lengths, dtypes, row pointers, columns).

    Example:
        >>> w = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
        >>> torch.equal(decode_csr(encode_csr(w)), w)
        True
    """
    positions = _validated_positions(enc)
    dense_dtype = weight_dtype_from_name(enc.dtype)
    dense = dense_zeros(math.prod(enc.shape), dense_dtype)
    dense[torch.from_numpy(positions)] = enc.values.detach().cpu().to(dense_dtype)
    return dense.reshape(enc.shape)


def to_torch_csr(enc: CsrEncoded, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A ``torch.sparse_csr_tensor`` of the 2-D view, for sparse kernels.

    Args:
        enc: the CSR encoding.
        dtype: dtype of the tensor's values; default the dense weight's dtype (``enc.dtype``).

    Returns:
        A sparse CSR tensor of shape :func:`csr_matrix_shape` ``(enc.shape)``; for a Linear
        layer ``to_torch_csr(enc) @ x.T`` equals ``weight @ x.T``. Torch needs row and column
        indices of one dtype, so columns are widened to int64 when the row pointers are int64.

    Raises:
        ValueError: if the arrays are inconsistent.

    Example:
        >>> w = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
        >>> (to_torch_csr(encode_csr(w)) @ torch.ones(2, 1)).flatten().tolist()
        [2.0, 3.0]
    """
    _validated_positions(enc)
    out_dtype = weight_dtype_from_name(enc.dtype) if dtype is None else dtype
    row_ptr = enc.row_ptr.detach().cpu()
    with warnings.catch_warnings():
        # torch warns once that sparse CSR is "beta"; the invariants were checked above.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            row_ptr,
            enc.col_indices.detach().cpu().to(row_ptr.dtype),
            enc.values.detach().cpu().to(out_dtype),
            size=csr_matrix_shape(enc.shape),
            check_invariants=False,
        )
