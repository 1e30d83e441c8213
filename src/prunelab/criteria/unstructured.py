"""What is unimportant among weights: Han's std threshold, magnitude, random, and dynamic
network surgery's thresholds (``dns``, Guo et al. 2016).

Each criterion is a small registered class (:mod:`prunelab.criteria.base`) with a one-line
function beside it for the common case. Every function here is deterministic: ties are
broken by position (stable sort) and random masks come from an explicit seed, so every
process that holds the same weights computes the same mask (a requirement for data-parallel
training, where all ranks must agree).

All functions are monotone with respect to ``current``: an entry already pruned is never
kept again, and it is counted as pruned when a target sparsity is met.

Example:
    >>> import torch
    >>> w = torch.tensor([0.1, -2.0, 0.5, -0.05])
    >>> std_threshold_mask(w, q=0.5, std=1.0).tolist()
    [False, True, True, False]
    >>> magnitude_mask(w, sparsity=0.5).tolist()
    [False, True, True, False]
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..allocation import (
    AmountKind,
    alive_mask,
    check_sparsity,
    density_floors,
    global_keep,
    keep_count,
)
from .base import Context, Criterion
from .registry import register_criterion

__all__ = [
    "Magnitude",
    "RandomScores",
    "StdThreshold",
    "SurgeryThreshold",
    "global_magnitude_masks",
    "keep_count",
    "layer_seed",
    "magnitude_mask",
    "population_std",
    "random_mask",
    "std_threshold_mask",
    "surgery_bounds",
]


def population_std(t: torch.Tensor) -> float:
    """Population standard deviation (numpy's default, ddof=0) in float64; 0 when empty.

    Example:
        >>> import torch
        >>> population_std(torch.tensor([1.0, -1.0, 1.0, -1.0]))
        1.0
    """
    t = t.detach().double().flatten()
    return float(t.std(correction=0)) if t.numel() > 0 else 0.0


def layer_seed(seed: int, layer: str) -> int:
    """A per-layer seed, a pure function of the run seed and the layer name.

    Example:
        >>> layer_seed(0, "fc1") == layer_seed(0, "fc1") != layer_seed(1, "fc1")
        True
    """
    return (int(seed) * 1_000_003 + zlib.crc32(layer.encode())) % (2**63 - 1)


# ----------------------------------------------------------------------------- std rule


def std_threshold_mask(
    weight: torch.Tensor,
    q: float,
    std: float,
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """Han et al.'s rule: prune ``|w| < q * std``; keep the rest (and nothing already pruned).

    Args:
        weight: the layer's weights.
        q: the quality parameter, ``q >= 0``.
        std: the standard deviation the threshold scales (of the dense or surviving weights).
        current: the mask in force, if any.

    Returns:
        Boolean keep-mask.

    Raises:
        ValueError: ``q`` or ``std`` is negative or not finite.

    Example:
        >>> import torch
        >>> std_threshold_mask(torch.tensor([1.0, 2.0]), q=1.5, std=1.0).tolist()
        [False, True]
    """
    if isinstance(q, bool) or not math.isfinite(q) or q < 0:
        raise ValueError(f"quality parameter q={q!r} is invalid; allowed: a finite q >= 0")
    if not math.isfinite(std) or std < 0:
        raise ValueError(f"std={std!r} is invalid; allowed: a finite std >= 0")
    # Compare in float64: against a float32 tensor the scalar q*std would be rounded to
    # float32 first, and a weight 1 ulp below the threshold would then be kept.
    return (weight.abs().double() >= float(q) * float(std)) & alive_mask(weight, current)


@register_criterion("std")
@dataclass(frozen=True)
class StdThreshold(Criterion):
    """Han et al. 2015: prune ``|w| < q * std`` (``amount`` is ``q``).

    The std is the layer's dense std captured by the Pruner (``context.dense_std``) when
    ``context.std_source`` is ``"dense"``, else (or when no dense std is known) the std of the
    weights that survive now (``context.mask``). Scores are ``|w|``: a floor keeps the largest.

    Example:
        >>> import torch
        >>> w = torch.tensor([0.1, -2.0, 0.5, -0.05])
        >>> StdThreshold().compute_mask(w, 0.5, None, Context(dense_std=1.0)).tolist()
        [False, True, True, False]
    """

    amount_kind = "q"

    def std(self, tensor: torch.Tensor, context: Context) -> float:
        """The std the threshold scales, as described above."""
        if context.std_source == "dense" and context.dense_std is not None:
            return float(context.dense_std)
        alive = tensor[context.mask != 0] if context.mask is not None else tensor
        return population_std(alive)

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """``|w|`` (used only to hold a floor)."""
        return tensor.abs()

    def compute_mask(
        self,
        tensor: torch.Tensor,
        amount: float,
        current: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """:func:`std_threshold_mask` with the std of :meth:`std`."""
        return std_threshold_mask(tensor, amount, self.std(tensor, context), current)

    def threshold(
        self, tensor: torch.Tensor, amount: float, keep: torch.Tensor, context: Context
    ) -> float | None:
        """``q * std``."""
        return amount * self.std(tensor, context)


# ----------------------------------------------------------------------------- magnitude


@register_criterion("magnitude")
@dataclass(frozen=True)
class Magnitude(Criterion):
    """Keep the largest ``|w|`` (``amount`` is the target sparsity; ties: earlier kept).

    Example:
        >>> import torch
        >>> Magnitude().compute_mask(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.25, None,
        ...                          Context()).tolist()
        [True, True, True, False]
    """

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """``|w|``."""
        return tensor.abs()

    def threshold(
        self, tensor: torch.Tensor, amount: float, keep: torch.Tensor, context: Context
    ) -> float | None:
        """The smallest kept ``|w|``, when the step leaves some weight of the layer zero."""
        if int(torch.count_nonzero(tensor * keep)) >= tensor.numel():
            return None
        kept = tensor.abs()[keep]
        return float(kept.min()) if kept.numel() else None


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, current: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the largest-magnitude weights so that exactly ``sparsity`` of the layer is pruned.

    Entries already pruned count towards the target; if the layer is already sparser than
    the target, nothing more is pruned (and nothing is revived).

    Raises:
        ValueError: ``sparsity`` is outside [0, 1).

    Example:
        >>> import torch
        >>> magnitude_mask(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.25).tolist()
        [True, True, True, False]
    """
    return Magnitude().compute_mask(weight, sparsity, current, Context())


# ----------------------------------------------------------------------------- surgery


def surgery_bounds(weight: torch.Tensor, c: float, margin: float = 0.1) -> tuple[float, float]:
    """Dynamic network surgery's two thresholds of a layer: ``(1 -+ margin) * max(mu + c*sd, 0)``.

    ``mu`` and ``sd`` are the mean and the (population) std of ``|w|`` over the layer's
    nonzero entries, as Guo et al.'s code computes them once from the trained weights; a
    weight at or below the lower bound is pruned, one above the upper bound is spliced back
    (:class:`prunelab.dns.DynamicSurgery`), the ones between keep their mask. ``c`` is the
    paper's ``crate`` (larger prunes more; it may be negative).

    Raises:
        ValueError: ``c`` not finite, or ``margin`` outside [0, 1).

    Example:
        >>> import torch
        >>> surgery_bounds(torch.tensor([1.0, -3.0, 0.0]), 0.0)
        (1.8, 2.2)
    """
    if not math.isfinite(c):
        raise ValueError(f"c={c!r} is invalid; allowed: a finite number")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin={margin!r} is out of range; allowed: [0.0, 1.0)")
    a = weight.detach().double().abs().flatten()
    a = a[a != 0]
    if a.numel() == 0:
        return 0.0, 0.0
    base = max(float(a.mean()) + c * float(a.std(correction=0)), 0.0)
    return (1.0 - margin) * base, (1.0 + margin) * base


@register_criterion("dns")
@dataclass(frozen=True)
class SurgeryThreshold(Criterion):
    """Dynamic network surgery's rule, one shot: prune ``|w| <= (1 - margin) * (mu + c*sd)``.

    ``amount`` is the paper's ``crate`` ``c`` (:func:`surgery_bounds`). Used alone it is a
    threshold criterion like ``std``; in a schedule iteration with ``dynamic:`` the masks
    keep changing during training (:class:`prunelab.dns.DynamicSurgery`), pruned weights
    keep training and come back above the upper bound.

    Example:
        >>> import torch
        >>> SurgeryThreshold().compute_mask(torch.tensor([1.0, -3.0, 0.5, 2.0]), 0.0, None,
        ...                                 Context()).tolist()
        [False, True, False, True]
    """

    amount_kind: ClassVar[AmountKind] = "q"
    margin: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, int | float) and 0.0 <= self.margin < 1.0):
            raise ValueError(f"margin={self.margin!r} is out of range; allowed: [0.0, 1.0)")

    def compute_mask(
        self, tensor: torch.Tensor, amount: float, current: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """Keep ``|w|`` above the lower bound (and not already pruned)."""
        low, _ = surgery_bounds(tensor, float(amount), self.margin)
        keep = tensor.detach().double().abs() > low
        return keep & alive_mask(tensor, current)

    def threshold(
        self, tensor: torch.Tensor, amount: float, keep: torch.Tensor, context: Context
    ) -> float | None:
        """The lower bound."""
        return surgery_bounds(tensor, float(amount), self.margin)[0]


# ----------------------------------------------------------------------------- random


@register_criterion("random")
@dataclass(frozen=True)
class RandomScores(Criterion):
    """Uniform random scores from a CPU generator seeded with ``context.seed`` (the control).

    The scores are the same on every device and every process, and do not depend on the
    weights.

    Example:
        >>> import torch
        >>> m = RandomScores().compute_mask(torch.ones(100), 0.3, None, Context(seed=0))
        >>> int((~m).sum())
        30
    """

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """``torch.rand`` of the tensor's shape, seeded with ``context.seed``."""
        gen = torch.Generator().manual_seed(int(context.seed))
        return torch.rand(tensor.shape, generator=gen).to(tensor.device)


def random_mask(
    weight: torch.Tensor,
    sparsity: float,
    seed: int,
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prune a uniformly random subset of exactly ``round(sparsity * n)`` entries (the control).

    The random scores come from a CPU generator seeded with ``seed``, so the mask is the same
    on every device and every process.

    Example:
        >>> import torch
        >>> m = random_mask(torch.ones(100), 0.3, seed=0)
        >>> int((~m).sum())
        30
    """
    return RandomScores().compute_mask(weight, sparsity, current, Context(seed=seed))


# ----------------------------------------------------------------------------- global


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    current: Mapping[str, torch.Tensor | None] | None = None,
    *,
    min_density: float | Mapping[str, float] = 0.0,
) -> dict[str, torch.Tensor]:
    """One magnitude threshold over several layers, with a per-layer minimum density.

    Exactly ``round(sparsity * N)`` of the ``N`` weights are pruned over all layers, except
    where floors make that impossible (then as many as the floors allow). A layer never keeps
    fewer than ``ceil(min_density * n_layer)`` weights (and never fewer than one if
    ``min_density > 0``); the budget a floor saves is taken from the other layers
    (water-filling, :func:`prunelab.allocation.global_keep`), so the total stays exact.

    Args:
        weights: ``{layer: weight}``.
        sparsity: global target in [0, 1).
        current: masks in force (monotone: pruned stays pruned).
        min_density: floor as a fraction of each layer, one value or per layer.

    Returns:
        ``{layer: keep-mask}``.

    Raises:
        ValueError: sparsity or a floor is out of range.

    Example:
        >>> import torch
        >>> w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.1, 0.2])}
        >>> m = global_magnitude_masks(w, 0.5, min_density=0.5)
        >>> m["a"].tolist(), m["b"].tolist()
        ([False, False, True, True], [False, True])
    """
    check_sparsity(sparsity)
    cur = dict(current or {})
    alive = {n: alive_mask(w, cur.get(n)) for n, w in weights.items()}
    sizes = {n: w.numel() for n, w in weights.items()}
    floors = density_floors(min_density, sizes, {n: int(a.sum()) for n, a in alive.items()})
    total = sum(sizes.values())
    scores = {n: Magnitude().scores(w, Context(layer=n)) for n, w in weights.items()}
    return global_keep(scores, total - round(sparsity * total), alive=alive, floors=floors)
