"""CPU sparse kernels for pruned fully connected layers.

A pruned ``nn.Linear`` keeps only a few percent of its weights. At batch 1 the layer is a
matrix-vector product (GEMV) whose cost is set by the bytes of weight it has to stream from
memory, so storing only the nonzeros (values + column indices + row pointers, CSR) cuts the
traffic by about ``4 / (density * (4 + index_bytes))``.

Kernel design (measured with torch 2.13 CPU / MKL, 2 cores; see
``benchmarks/results/sparse_inference``):

* **CSR with int32 indices.** ``W.to_sparse_csr()`` produces int64 ``crow``/``col`` indices.
  torch's CPU CSR matmul goes through MKL sparse BLAS, building an MKL descriptor on every
  call; ATen's ``prepare_indices_for_mkl`` (``ATen/mkl/SparseDescriptors.h``) converts indices
  whose dtype is not ``MKL_INT`` (32-bit in the LP64 build) with a full copy each time. Keeping
  the CSR with int32 indices (accepted by ``torch.mv``, ``torch.addmv``, ``torch.mm`` and
  ``torch.addmm`` on CPU) removes that per-call copy and cuts the bytes per nonzero from 12
  to 8; measured, it makes the batch-1 CSR product 2-4x faster.
* **Batch 1: ``torch.addmv(bias, csr, x)``.** The vector kernel plus fused bias is markedly
  faster than ``torch.mm(csr, x.T)`` on a one-column matrix.
* **Batch > 1: ``torch.addmm(bias[:, None], csr, x.T).T``.** Sparse-times-dense with the bias
  fused; the result is returned as the transposed view (no extra copy; strides ``(1, batch)``).
  The transposed orientations tried (``x @ CSR(W.T)``, CSC) were 7-15x *slower* than dense.
* A pure-torch gather formulation (``index_select`` + ``index_add_``) was slower than dense
  (0.4-0.9x on the big layers at batch 1, 0.03x at batch 64; ``segment_reduce`` only reduces
  along the last axis, which needs a transpose), and a hand-written OpenMP C++ CSR GEMV
  (``load_inline``, builds in ~30 s here) was no faster than MKL via ``addmv``, so no
  extension is compiled.

Convolutions stay dense: a conv reuses each weight across all output positions, so it is
compute-bound rather than weight-traffic-bound. An im2col + CSR formulation was measured no
faster than im2col + dense GEMM on LeNet-5's convs at batch 1, and 1.3-11x slower than
``F.conv2d`` at batch 64 or on an AlexNet-sized conv (256->384, 3x3, 30% density).

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> w = torch.randn(8, 16) * (torch.rand(8, 16) < 0.1)
    >>> b = torch.randn(8)
    >>> layer = SparseLinear(w, b)
    >>> x = torch.randn(1, 16)
    >>> bool((layer(x) - F.linear(x, w, b)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = [
    "INDEX_DTYPES",
    "SparseLinear",
    "csr_bytes",
    "dense_weight_bytes",
    "make_csr",
]

INDEX_DTYPES: tuple[torch.dtype, ...] = (torch.int32, torch.int64)
"""Index dtypes supported by :class:`SparseLinear` (int32 is the fast default)."""

_INT32_MAX = 2**31 - 1


def dense_weight_bytes(out_features: int, in_features: int, *, value_bytes: int = 4) -> int:
    """Bytes of weight a dense GEMV streams per call: ``value_bytes * out * in``.

    Example:
        >>> dense_weight_bytes(4096, 25088)
        411041792
    """
    return value_bytes * out_features * in_features


def csr_bytes(nnz: int, out_features: int, *, index_bytes: int = 4, value_bytes: int = 4) -> int:
    """Bytes of weight a CSR GEMV streams per call: values + column indices + row pointers.

    Example:
        >>> csr_bytes(nnz=100, out_features=10, index_bytes=4)
        844
    """
    return nnz * (value_bytes + index_bytes) + (out_features + 1) * index_bytes


def make_csr(
    crow_indices: torch.Tensor,
    col_indices: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
) -> torch.Tensor:
    """Build a sparse CSR tensor from its components, silencing torch's beta warnings.

    Invariants are checked once here (cheap compared with the matmuls it will serve).

    Example:
        >>> crow = torch.tensor([0, 1, 1], dtype=torch.int32)
        >>> col = torch.tensor([1], dtype=torch.int32)
        >>> make_csr(crow, col, torch.tensor([2.0]), (2, 3)).to_dense()
        tensor([[0., 2., 0.],
                [0., 0., 0.]])
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow_indices, col_indices, values, size=shape, check_invariants=True
        )


def _to_csr_components(
    weight: torch.Tensor, index_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
    crow = csr.crow_indices().to(index_dtype).contiguous()
    col = csr.col_indices().to(index_dtype).contiguous()
    values = csr.values().clone().contiguous()
    return crow, col, values


class SparseLinear(nn.Module):
    """Inference-only ``y = x @ W.T + b`` with ``W`` stored as CSR (zeros are pruned).

    Args:
        weight: dense ``(out_features, in_features)`` weight; exact zeros are dropped.
        bias: optional ``(out_features,)`` bias (copied).
        index_dtype: ``torch.int32`` (default, fast, needs ``nnz < 2**31``; falls back to
            int64 automatically otherwise) or ``torch.int64`` (what ``to_sparse_csr()`` gives).

    Batch 1 (and 1-D input) runs ``torch.addmv``; larger batches run ``torch.addmm`` on the
    transposed input and return the transposed view (``.contiguous()`` it if you need
    ``.view(-1)``). Inputs with extra leading dimensions are flattened and restored. The CSR
    components are buffers (``values``, ``crow_indices``, ``col_indices``), so the module
    moves with ``.to()`` and round-trips through ``state_dict``; no gradients are supported.

    Example:
        >>> lin = nn.Linear(32, 4)
        >>> with torch.no_grad():
        ...     _ = lin.weight.mul_(torch.rand(4, 32) < 0.2)
        >>> sp = SparseLinear.from_linear(lin)
        >>> x = torch.randn(64, 32)
        >>> bool(torch.allclose(sp(x), lin(x), atol=1e-5))
        True
    """

    values: torch.Tensor
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        index_dtype: torch.dtype = torch.int32,
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
        if index_dtype not in INDEX_DTYPES:
            raise ValueError(f"index_dtype must be one of {INDEX_DTYPES}, got {index_dtype}")
        out_features, in_features = weight.shape
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        if (
            index_dtype == torch.int32
            and weight.numel() > _INT32_MAX
            and int(torch.count_nonzero(weight)) > _INT32_MAX
        ):
            index_dtype = torch.int64  # int32 row pointers would overflow
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.index_dtype = index_dtype
        crow, col, values = _to_csr_components(weight, index_dtype)
        self.register_buffer("values", values)
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())
        self._csr: torch.Tensor | None = None
        self._csr_key: tuple[Any, ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_csr"] = None  # cache only; rebuilt on first use
        state["_csr_key"] = None
        return state

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, index_dtype: torch.dtype = torch.int32
    ) -> SparseLinear:
        """Build from an ``nn.Linear`` (its current ``weight``, i.e. masked if pruned).

        Example:
            >>> SparseLinear.from_linear(nn.Linear(3, 2)).out_features
            2
        """
        return cls(linear.weight, linear.bias, index_dtype=index_dtype)

    @property
    def nnz(self) -> int:
        """Number of stored (unpruned) weights."""
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """Fraction of weights kept, ``nnz / (out * in)``."""
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    @property
    def nbytes(self) -> int:
        """Weight bytes streamed per call (values + col indices + row pointers)."""
        return csr_bytes(
            self.nnz,
            self.out_features,
            index_bytes=self.crow_indices.element_size(),
            value_bytes=self.values.element_size(),
        )

    def csr(self) -> torch.Tensor:
        """The CSR weight tensor (cached; rebuilt if the buffers were moved or replaced).

        Example:
            >>> SparseLinear(torch.eye(2)).csr().layout
            torch.sparse_csr
        """
        key = (
            self.values.data_ptr(),
            self.crow_indices.data_ptr(),
            self.col_indices.data_ptr(),
            self.values.device,
            self.values.dtype,
            self.values.numel(),
        )
        if self._csr is None or self._csr_key != key:
            self._csr = make_csr(
                self.crow_indices,
                self.col_indices,
                self.values,
                (self.out_features, self.in_features),
            )
            self._csr_key = key
        return self._csr

    def to_dense(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight with zeros where pruned.

        Example:
            >>> SparseLinear(torch.eye(2)).to_dense()
            tensor([[1., 0.],
                    [0., 1.]])
        """
        return self.csr().to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute ``x @ W.T + b`` for ``x`` of shape ``(..., in_features)``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected last dim {self.in_features}, got input shape {tuple(x.shape)}"
            )
        csr = self.csr()
        bias = self.bias
        if x.dim() == 1:
            return torch.mv(csr, x) if bias is None else torch.addmv(bias, csr, x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]
        if n == 1:
            v = x2[0]
            y = torch.mv(csr, v) if bias is None else torch.addmv(bias, csr, v)
            y = y.unsqueeze(0)
        elif n == 0:
            y = x2.new_empty((0, self.out_features))
        else:
            xt = x2.t()
            y = torch.mm(csr, xt) if bias is None else torch.addmm(bias.unsqueeze(1), csr, xt)
            y = y.t()
        if x.dim() == 2:
            return y
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        idx = str(self.index_dtype).removeprefix("torch.")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={self.density:.4f}, index_dtype={idx}, bias={self.bias is not None}"
        )
