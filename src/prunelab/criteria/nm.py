"""N:M semi-structured sparsity: at most N nonzero weights in every group of M inputs.

The pattern sparse tensor cores run (2:4 on NVIDIA Ampere and later, through cuSPARSELt or
CUTLASS; :mod:`prunelab.runtime.semi_structured` converts such layers). Groups are M
consecutive entries of the weight's *input* dimension, dim 1 (the last dim of a Linear
weight ``[out, in]``; the input channels of a Conv weight ``[out, in, *kernel]``, one group
sequence per output channel and kernel tap). That is NVIDIA ASP's and cuDNN's grouping: as
an implicit GEMM over NHWC activations a convolution's reduction dimension is
``kh * kw * in`` with the input channels innermost, so M consecutive input channels at one tap
are M consecutive elements of a GEMM row. (Groups along the flattened ``in * kh * kw`` dim
would match an NCHW im2col layout instead, which sparse tensor-core convolutions do not use.)
An input dimension that is not a multiple of M is an error (exclude the layer, e.g. a first
convolution with 3 input channels); there is no tail rule.

``amount`` is a sparsity in ``[0, 1 - N/M]``. In each group the N largest ``|w|`` are
*protected* (ties: the earlier entry wins); of the other ``M - N`` per group, the
``round(amount * numel)`` smallest ``|w|`` are pruned (ties: the earlier entry is kept). So
at ``amount == 1 - N/M`` the mask is exactly N:M, and at every smaller amount the mask
contains an N:M mask (its protected entries): a gradual schedule ramping sparsity from 0 to
``1 - N/M`` converges to N:M, and every intermediate mask can still be completed to it.

With ``current`` (monotone pruning) pruned entries stay pruned and count as the smallest:
they fill the unprotected places of their group first and count towards ``amount``. A group
that already has fewer than N survivors keeps them all; its missing survivors are not made up
elsewhere (an N:M pattern cannot borrow across groups), so the sparsity can then exceed
``amount``. Starting dense, no group ever drops below N survivors, and the final step gives
exactly N per group.

Example:
    >>> import torch
    >>> w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 0.3, 0.4, -0.8, 0.7]])
    >>> nm_mask(w).int().tolist()  # 2:4
    [[0, 1, 1, 0, 0, 0, 1, 1]]
    >>> nm_mask(w, sparsity=0.25).int().tolist()  # the two smallest unprotected go
    [[0, 1, 1, 0, 1, 1, 1, 1]]
    >>> is_nm_sparse(w * nm_mask(w)), is_nm_sparse(w)
    (True, False)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..allocation import alive_mask, check_sparsity, keep_top
from .base import Context, Criterion
from .registry import register_criterion

__all__ = [
    "NM",
    "check_nm",
    "is_nm_sparse",
    "nm_groups",
    "nm_mask",
    "nm_violations",
]

# ``1 - n/m`` computed in floats can exceed the correctly rounded (m - n) / m by an ulp
# (1:3: 0.6666666666666667 > 0.6666666666666666); a schedule computing it must still pass.
_AMOUNT_SLACK = 1e-12


def check_nm(n: object, m: object) -> tuple[int, int]:
    """``(n, m)`` as ints if they are integers with ``1 <= n < m``.

    Raises:
        ValueError: anything else.

    Example:
        >>> check_nm(2, 4)
        (2, 4)
    """
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, m))
    if not ints or not 1 <= int(n) < int(m):  # type: ignore[call-overload]
        raise ValueError(
            f"N:M options n={n!r}, m={m!r} are invalid; allowed: integers with 1 <= n < m "
            "(e.g. n=2, m=4)"
        )
    return int(n), int(m)  # type: ignore[call-overload]


def _input_dim(tensor: torch.Tensor) -> int:
    if tensor.dim() == 0:
        raise ValueError("N:M groups need a tensor with at least one dimension, got a scalar")
    return 1 if tensor.dim() >= 2 else 0


def nm_groups(tensor: torch.Tensor, m: int, *, layer: str = "") -> torch.Tensor:
    """``tensor`` with its input dimension split into groups of ``m``: shape ``(..., m)``.

    The input dimension is dim 1 of a tensor with two or more dims (a 1-D tensor's only
    dim); it is moved last, so ``[out, in, kh, kw]`` becomes ``[out, kh, kw, in // m, m]``.

    Raises:
        ValueError: the input dimension is not a multiple of ``m`` (the message names the
            layer, the shape and ``m``).

    Example:
        >>> import torch
        >>> nm_groups(torch.zeros(3, 8, 2, 2), 4).shape
        torch.Size([3, 2, 2, 2, 4])
    """
    dim = _input_dim(tensor)
    size = tensor.shape[dim]
    if size % m:
        where = f"layer {layer!r}: " if layer else ""
        raise ValueError(
            f"{where}N:M groups run along the input dimension (dim {dim}), but weight of "
            f"shape {tuple(tensor.shape)} has {size} inputs, not a multiple of m={m}; exclude "
            "the layer (exclude=...)"
        )
    moved = tensor.movedim(dim, -1)
    return moved.reshape(*moved.shape[:-1], size // m, m)


def _ungroup(groups: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`nm_groups` for a tensor of shape ``shape``."""
    dim = 1 if len(shape) >= 2 else 0
    moved = groups.reshape(*groups.shape[:-2], shape[dim])
    return moved.movedim(-1, dim).contiguous()


def nm_violations(tensor: torch.Tensor, n: int = 2, m: int = 4) -> int:
    """Number of groups of ``m`` inputs of ``tensor`` holding more than ``n`` nonzeros.

    Raises:
        ValueError: bad ``n``/``m`` or an input dimension not a multiple of ``m``.

    Example:
        >>> import torch
        >>> nm_violations(torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]))
        1
    """
    n, m = check_nm(n, m)
    counts = (nm_groups(tensor.detach(), m) != 0).sum(dim=-1)
    return int((counts > n).sum())


def is_nm_sparse(tensor: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` inputs of ``tensor`` has at most ``n`` nonzeros.

    Raises:
        ValueError: bad ``n``/``m`` or an input dimension not a multiple of ``m``.

    Example:
        >>> import torch
        >>> is_nm_sparse(torch.tensor([[0.0, 3.0, 0.0, 1.0]])), is_nm_sparse(torch.ones(1, 4))
        (True, False)
    """
    return nm_violations(tensor, n, m) == 0


def _protected(
    scores: torch.Tensor, alive: torch.Tensor, n: int, m: int, layer: str
) -> torch.Tensor:
    """The ``n`` highest alive scores of each group (pruned entries count as the smallest)."""
    s = nm_groups(scores, m, layer=layer).masked_fill(~nm_groups(alive, m), -math.inf)
    top = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :n]
    out = torch.zeros(s.shape, dtype=torch.bool, device=s.device).scatter_(-1, top, True)
    return _ungroup(out, scores.shape)


@register_criterion("nm")
@dataclass(frozen=True)
class NM(Criterion):
    """N:M semi-structured masks (default 2:4); ``amount`` is a sparsity in ``[0, 1 - n/m]``.

    See the module docstring for the grouping and the rule at amounts below ``1 - n/m``. It
    has no scores, so it cannot be used with ``scope="global"`` (an N:M pattern is per group,
    not one threshold) and a floor above ``n/m`` density is an error.

    Args:
        n: weights kept per group.
        m: the group size.

    Raises:
        ValueError: ``n``/``m`` are not integers with ``1 <= n < m``.

    Example:
        >>> import torch
        >>> NM(n=1, m=2).compute_mask(torch.tensor([[1.0, -2.0, 3.0, 0.5]]), 0.5, None,
        ...                           Context()).tolist()
        [[False, True, True, False]]
    """

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        check_nm(self.n, self.m)

    @property
    def max_amount(self) -> float:
        """The sparsity of an exact N:M mask, ``1 - n/m`` (as ``(m - n) / m``, one rounding)."""
        return (self.m - self.n) / self.m

    def check_amount(self, amount: float) -> None:
        """Raise unless ``amount`` lies in ``[0, 1 - n/m]``.

        Raises:
            ValueError: it does not (the message names the allowed range).
        """
        top = self.max_amount
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not (
            0.0 <= float(amount) <= top + _AMOUNT_SLACK
        ):
            raise ValueError(
                f"sparsity={amount!r} is out of range for {self.n}:{self.m} masks; allowed: "
                f"[0, {top!r}] ({top!r} = 1 - {self.n}/{self.m} is exactly {self.n}:{self.m})"
            )

    def compute_mask(
        self,
        tensor: torch.Tensor,
        amount: float,
        current: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """Keep each group's top ``n``, prune the ``round(amount * numel)`` smallest others."""
        self.check_amount(amount)
        alive = alive_mask(tensor, current)
        scores = tensor.detach().abs()
        if not scores.is_floating_point():
            scores = scores.double()
        elif scores.dtype not in (torch.float32, torch.float64):
            scores = scores.float()  # half / bfloat16: widening is exact; CPU sorts float32
        protected = _protected(scores, alive, self.n, self.m, context.layer)
        free = ~protected
        n_free = int(free.sum())
        pruned = min(round(float(amount) * tensor.numel()), n_free)
        kept_free = keep_top(scores, n_free - pruned, free & alive, ties="earlier_kept")
        return alive & (protected | kept_free)


def nm_mask(
    weight: torch.Tensor,
    n: int = 2,
    m: int = 4,
    *,
    sparsity: float | None = None,
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean N:M keep-mask of ``weight`` (:class:`NM`); exactly N:M when ``sparsity`` is None.

    Args:
        weight: a weight tensor (input dimension: dim 1, see :func:`nm_groups`).
        n: weights kept per group.
        m: the group size.
        sparsity: the fraction pruned, in ``[0, 1 - n/m]``; None for ``1 - n/m``.
        current: the mask in force (pruned entries stay pruned).

    Raises:
        ValueError: bad ``n``/``m``, a sparsity out of range, or an input dimension not a
            multiple of ``m``.

    Example:
        >>> import torch
        >>> nm_mask(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), 1, 4).tolist()
        [[True, False, False, False]]
    """
    crit = NM(n=n, m=m)
    amount = crit.max_amount if sparsity is None else check_sparsity(sparsity)
    return crit.compute_mask(weight, amount, current, Context())
