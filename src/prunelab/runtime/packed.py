"""Pruned ``nn.Linear`` / ``nn.Conv2d`` layers on prunelab's native sparse kernels.

Format (see ``runtime/csrc/spkern.h``): the weight, viewed as ``(M, K)`` (``K = in`` for a
Linear, ``in * kh * kw`` for a conv), is cut into column *panels* of ``panel`` columns; each
panel is CSR with 16-bit panel-local column indices (6 bytes per nonzero instead of 8 for
int32 CSR or 12 for torch's int64 CSR). Panels bound the slice of the dense operand a kernel
touches: ``panel`` floats of ``x`` at batch 1, ``panel x 64`` floats (AVX2) of the batch tile
otherwise, so it stays in the core's L2 cache. Measured here (AMD EPYC, AVX2, 1 thread; see
``benchmarks/results/sparse_inference``): wide panels (4096) are best for batch-1 GEMV,
narrow ones (512) for batched SpMM, hence :func:`default_panel`.

Products:

* batch 1: ``y = W x + b``, rows split over threads (``torch.get_num_threads()``);
* batch N: ``Y = W X + b`` with ``X = x.T`` (``K x N``), vectorised over the batch, 8
  vector accumulators per row tile; the result is returned as the transposed view, so a
  following packed Linear reads it without a copy;
* conv: ``W @ im2col(x)`` per image, the im2col gathered tile by tile inside the kernel
  (never materialised: ``F.unfold`` alone costs more than the sparse product), or
  ``W @ x.view(C, H*W)`` directly for 1x1 stride-1 convs; images and row chunks are spread
  over threads.

Without the compiled kernels (:mod:`prunelab.runtime.native`) the same layers run torch's
CSR products (a notice says so once), with identical results up to float rounding.

Example:
    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(300, 100)
    >>> with torch.no_grad():
    ...     _ = lin.weight.mul_(torch.rand(100, 300) < 0.1)
    >>> packed = PackedLinear.from_linear(lin)
    >>> x = torch.randn(5, 300)
    >>> bool(torch.allclose(packed(x), lin(x), atol=1e-5))
    True
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.runtime import native
from prunelab.runtime.kernels import make_csr

__all__ = [
    "MAX_PANEL",
    "PackedConv2d",
    "PackedLinear",
    "conv_supported",
    "default_panel",
    "pack_panels",
    "packed_bytes",
]

MAX_PANEL = 65536
"""Widest panel (16-bit panel-local column indices)."""

_INT32_MAX = 2**31 - 1


def default_panel(batch: int, density: float | None = None) -> int:
    """Panel width for a serving batch size and weight density.

    Batch 1 (GEMV): 4096. Larger batches: about 32 nonzeros per row and panel, a power of
    two in [128, 512] (512 without a density): narrow panels keep the batch tile in L1 for
    denser layers, wide ones keep row segments long for sparse ones (measured on AlexNet /
    VGG-16 FC shapes at 4%, 9% and 25% density, batch 64).

    Example:
        >>> default_panel(1), default_panel(64), default_panel(64, 0.25), default_panel(64, 0.04)
        (4096, 512, 128, 512)
    """
    if batch <= 1:
        return 4096
    if density is None or density <= 0:
        return 512
    panel = 128
    while panel < 512 and panel * 2 * density <= 32:
        panel *= 2
    return panel


def pack_panels(
    weight2d: torch.Tensor, panel: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack a dense ``(M, K)`` weight into panelled CSR: ``(rowptr, cols, vals)``.

    ``rowptr`` is int32 ``(P, M + 1)`` (offsets into ``vals``; ``P = ceil(K / panel)``, at
    least 1), ``cols`` int16 holding the unsigned 16-bit panel-local column of each nonzero,
    ``vals`` float32. Exact zeros are dropped.

    Example:
        >>> w = torch.tensor([[0.0, 2.0, 0.0, 3.0], [4.0, 0.0, 0.0, 0.0]])
        >>> rowptr, cols, vals = pack_panels(w, 2)
        >>> rowptr.tolist(), cols.tolist(), vals.tolist()
        ([[0, 1, 2], [2, 3, 3]], [1, 0, 1], [2.0, 4.0, 3.0])
    """
    if weight2d.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(weight2d.shape)}")
    if not 1 <= panel <= MAX_PANEL:
        raise ValueError(f"panel must be in [1, {MAX_PANEL}], got {panel}")
    w = weight2d.detach().to(device="cpu", dtype=torch.float32)
    m, k = w.shape
    n_panels = max(1, -(-k // panel))
    rows, cols = w.nonzero(as_tuple=True)
    if rows.numel() > _INT32_MAX:
        raise ValueError(f"{rows.numel()} nonzeros exceed the int32 offsets of the format")
    pidx = torch.div(cols, panel, rounding_mode="floor")
    local = cols - pidx * panel
    order = torch.argsort((pidx * m + rows) * panel + local)
    rows, pidx, local, cols = rows[order], pidx[order], local[order], cols[order]
    vals = w[rows, cols].contiguous()
    counts = torch.bincount(pidx * m + rows, minlength=n_panels * m).view(n_panels, m)
    rowptr = torch.zeros(n_panels, m + 1, dtype=torch.int64)
    rowptr[:, 1:] = counts.cumsum(1)
    starts = torch.zeros(n_panels, dtype=torch.int64)
    starts[1:] = counts.sum(1).cumsum(0)[:-1]
    rowptr += starts[:, None]
    local16 = torch.where(local >= 32768, local - 65536, local).to(torch.int16)
    return rowptr.to(torch.int32).contiguous(), local16.contiguous(), vals


def packed_bytes(nnz: int, rows: int, panels: int) -> int:
    """Bytes a packed weight streams per call: 4 B values + 2 B indices + row pointers.

    Example:
        >>> packed_bytes(nnz=100, rows=10, panels=1)
        644
    """
    return nnz * 6 + panels * (rows + 1) * 4


class _Packed(nn.Module):
    """Shared storage and kernel dispatch of the packed layers."""

    rowptr: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    bias: torch.Tensor | None

    def _init_packed(
        self, weight2d: torch.Tensor, bias: torch.Tensor | None, panel: int
    ) -> None:
        self.rows, self.cols_k = (int(s) for s in weight2d.shape)
        self.panel = int(min(panel, max(1, self.cols_k)))
        rowptr, cols, vals = pack_panels(weight2d, self.panel)
        self.register_buffer("rowptr", rowptr)
        self.register_buffer("cols", cols)
        self.register_buffer("vals", vals)
        self.register_buffer(
            "bias", None if bias is None else bias.detach().float().clone().contiguous()
        )
        self._csr: torch.Tensor | None = None
        self._kernel: object | None = None  # native.Packed, False for the fallback, None: unset

    def kernel(self) -> object | None:
        """The C++ kernel object over these buffers (built on first use), ``None`` without.

        The instruction set is fixed when it is built (``PRUNELAB_SPARSE_ISA`` or the best).
        """
        k = self._kernel
        if k is None:
            mod = native.load()
            k = False if mod is None else mod.Packed(
                self.rowptr, self.cols, self.vals, self.bias,
                self.rows, self.cols_k, self.panel, native.isa(),
            )
            self._kernel = k
        return k or None

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # .to(), .float()...
        self._kernel = None  # buffers may be new tensors: rebind on next use
        self._csr = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._kernel = None
        self._csr = None
        return super()._load_from_state_dict(*args, **kwargs)

    @property
    def nnz(self) -> int:
        """Number of stored (unpruned) weights."""
        return int(self.vals.numel())

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        total = self.rows * self.cols_k
        return self.nnz / total if total else 0.0

    @property
    def nbytes(self) -> int:
        """Weight bytes the kernels stream per call."""
        return packed_bytes(self.nnz, self.rows, int(self.rowptr.shape[0]))

    @property
    def backend(self) -> str:
        """``native`` (the C++ kernels) or ``torch`` (the fallback)."""
        return "native" if native.available() else "torch"

    def weight2d(self) -> torch.Tensor:
        """The dense ``(M, K)`` weight with zeros where pruned."""
        w = torch.zeros(self.rows, self.cols_k)
        rowptr = self.rowptr.to(torch.int64)
        cols = self.cols.to(torch.int64) & 0xFFFF
        for p in range(rowptr.shape[0]):
            counts = rowptr[p, 1:] - rowptr[p, :-1]
            lo, hi = int(rowptr[p, 0]), int(rowptr[p, -1])
            r = torch.repeat_interleave(torch.arange(self.rows), counts)
            w[r, cols[lo:hi] + p * self.panel] = self.vals[lo:hi]
        return w

    def _torch_csr(self) -> torch.Tensor:
        if self._csr is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                csr = self.weight2d().to_sparse_csr()
            self._csr = make_csr(
                csr.crow_indices().to(torch.int32),
                csr.col_indices().to(torch.int32),
                csr.values(),
                (self.rows, self.cols_k),
            )
        return self._csr

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_csr"] = None
        state["_kernel"] = None  # a C++ object: rebuilt on first use after copy/pickle
        return state

    def _spmm(self, xs: torch.Tensor) -> torch.Tensor:
        """``W @ xs + b`` for ``xs`` of shape ``(B, K, N)``; returns ``(B, M, N)``."""
        kernel = self.kernel()
        if kernel is not None:
            return kernel.spmm(xs)  # type: ignore[attr-defined]
        b, k, n = xs.shape
        flat = xs.permute(1, 0, 2).reshape(k, b * n)
        csr = self._torch_csr()
        y = torch.mm(csr, flat) if flat.numel() else flat.new_zeros(self.rows, b * n)
        y = y.reshape(self.rows, b, n).permute(1, 0, 2)
        if self.bias is not None:
            y = y + self.bias[None, :, None]
        return y.contiguous()


class PackedLinear(_Packed):
    """Inference-only ``y = x @ W.T + b`` on the native sparse kernels.

    Args:
        weight: dense ``(out_features, in_features)`` weight; exact zeros are dropped.
        bias: optional ``(out_features,)`` bias.
        panel: panel width (columns per panel, <= 65536); :func:`default_panel` by default.

    Example:
        >>> w = torch.randn(4, 16) * (torch.rand(4, 16) < 0.3)
        >>> lin = PackedLinear(w, torch.zeros(4), panel=8)
        >>> x = torch.randn(3, 16)
        >>> bool(torch.allclose(lin(x), x @ w.T, atol=1e-5))
        True
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, panel: int = 4096
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self._init_packed(weight, bias, panel)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, panel: int = 4096) -> PackedLinear:
        """Build from an ``nn.Linear`` (its current, i.e. masked, weight).

        Example:
            >>> PackedLinear.from_linear(nn.Linear(3, 2)).out_features
            2
        """
        return cls(linear.weight, linear.bias, panel=panel)

    def to_dense(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight with zeros where pruned."""
        return self.weight2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute ``x @ W.T + b`` for float32 ``x`` of shape ``(..., in_features)``."""
        kernel = self._kernel if self._kernel is not None else self.kernel()
        if kernel and x.dim() == 2 and x.shape[0] > 0:  # the hot path: one C++ call
            try:
                return kernel.linear(x)  # type: ignore[attr-defined]
            except RuntimeError:
                self._check_input(x)  # a clear ValueError for bad input
                raise
        self._check_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:
            y = x2.new_empty((0, self.out_features))
        elif kernel:
            y = kernel.linear(x2)  # type: ignore[attr-defined]
        else:
            csr = self._torch_csr()
            xt = x2.t()
            y = (torch.mm(csr, xt) if self.bias is None
                 else torch.addmm(self.bias.unsqueeze(1), csr, xt)).t()
        return y if x.dim() == 2 else y.reshape(*lead, self.out_features)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dtype is not torch.float32 or x.device.type != "cpu":
            raise ValueError(f"PackedLinear runs float32 on CPU, got {x.dtype} on {x.device}")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected last dim {self.in_features}, got input shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={self.density:.4f}, panel={self.panel}, bias={self.bias is not None}"
        )


def conv_supported(conv: nn.Conv2d) -> str | None:
    """Why a conv cannot be packed (``None`` if it can): groups and padding modes.

    Example:
        >>> conv_supported(nn.Conv2d(4, 4, 3, groups=2))
        'groups=2 (only groups=1 is packed)'
    """
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is packed)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' is packed)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (explicit padding only)"
    return None


class PackedConv2d(_Packed):
    """Inference-only ``nn.Conv2d`` (groups=1, zero padding) as sparse ``W @ im2col(x)``.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1)
        >>> with torch.no_grad():
        ...     _ = conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
        >>> packed = PackedConv2d.from_conv(conv, panel=512)
        >>> x = torch.randn(2, 3, 10, 10)
        >>> bool(torch.allclose(packed(x), conv(x), atol=1e-5))
        True
    """

    def __init__(self, conv: nn.Conv2d, *, panel: int = 512) -> None:
        super().__init__()
        why = conv_supported(conv)
        if why is not None:
            raise ValueError(f"cannot pack this conv: {why}")
        w = conv.weight.detach()
        self.in_channels = int(conv.in_channels)
        self.out_channels = int(conv.out_channels)
        self.kernel_size = tuple(int(k) for k in conv.kernel_size)
        self.stride = tuple(int(s) for s in conv.stride)
        self.padding = tuple(int(p) for p in conv.padding)
        self.dilation = tuple(int(d) for d in conv.dilation)
        self._init_packed(w.reshape(w.shape[0], -1), conv.bias, panel)
        self._pointwise = (
            self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
        )
        self._geometry = [*self.kernel_size, *self.stride, *self.padding, *self.dilation]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, panel: int = 512) -> PackedConv2d:
        """Build from an ``nn.Conv2d`` (its current, i.e. masked, weight)."""
        return cls(conv, panel=panel)

    def to_dense(self) -> torch.Tensor:
        """The dense ``(out, in, kh, kw)`` weight with zeros where pruned."""
        return self.weight2d().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve float32 ``x`` of shape ``(B, C, H, W)`` (or ``(C, H, W)``)."""
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"PackedConv2d runs float32 on CPU, got {x.dtype} on {x.device}")
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected (B, {self.in_channels}, H, W), got input shape {tuple(x.shape)}"
            )
        kernel = self._kernel if self._kernel is not None else self.kernel()
        if kernel and not self._pointwise:  # implicit im2col inside the C++ kernel
            y = kernel.conv2d(x, self._geometry)  # type: ignore[attr-defined]
            return y[0] if squeeze else y
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if self._pointwise:
            cols = x.reshape(b, self.in_channels, h * w)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = self._spmm(cols).view(b, self.out_channels, oh, ow)
        return y[0] if squeeze else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"density={self.density:.4f}, panel={self.panel}, bias={self.bias is not None}"
        )
