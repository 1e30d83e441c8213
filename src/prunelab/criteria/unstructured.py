"""What is unimportant: pure functions from weights (and the current mask) to a keep-mask.

Every function here is deterministic: ties are broken by position (stable sort) and random
masks come from an explicit seed, so every process that holds the same weights computes the
same mask (a requirement for data-parallel training, where all ranks must agree).

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

import torch

__all__ = [
    "global_magnitude_masks",
    "keep_count",
    "layer_seed",
    "magnitude_mask",
    "random_mask",
    "std_threshold_mask",
]


def _check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity={sparsity!r} is out of range; allowed: [0, 1)")


def _alive(weight: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
    if current is None:
        return torch.ones_like(weight, dtype=torch.bool)
    if current.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(current.shape)} != weight {tuple(weight.shape)}")
    return current != 0


def keep_count(numel: int, sparsity: float) -> int:
    """Number of entries kept so that exactly ``round(sparsity * numel)`` are pruned.

    Example:
        >>> keep_count(10, 0.25)
        8
    """
    _check_sparsity(sparsity)
    return numel - round(sparsity * numel)


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
    return (weight.abs().double() >= float(q) * float(std)) & _alive(weight, current)


def _scores_keep_top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the ``keep`` highest scores among alive entries (ties: earlier position wins)."""
    flat = scores.flatten().double()
    flat = torch.where(alive.flatten(), flat, torch.full_like(flat, -math.inf))
    keep = min(keep, int(alive.sum()))
    order = torch.sort(flat, descending=True, stable=True).indices
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    out[order[:keep]] = True
    return out.view_as(scores)


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
    k = keep_count(weight.numel(), sparsity)
    return _scores_keep_top(weight.abs(), _alive(weight, current), k)


def layer_seed(seed: int, layer: str) -> int:
    """A per-layer seed, a pure function of the run seed and the layer name.

    Example:
        >>> layer_seed(0, "fc1") == layer_seed(0, "fc1") != layer_seed(1, "fc1")
        True
    """
    return (int(seed) * 1_000_003 + zlib.crc32(layer.encode())) % (2**63 - 1)


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
    k = keep_count(weight.numel(), sparsity)
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(weight.shape, generator=gen).to(weight.device)
    return _scores_keep_top(scores, _alive(weight, current), k)


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
    (water-filling), so the total stays exact.

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
    _check_sparsity(sparsity)
    names = list(weights)
    floors_frac = (
        dict(min_density) if isinstance(min_density, Mapping) else dict.fromkeys(names, min_density)
    )
    cur = dict(current or {})
    alive = {n: _alive(weights[n], cur.get(n)) for n in names}
    floor: dict[str, int] = {}
    for n in names:
        f = float(floors_frac.get(n, 0.0))
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"min_density={f!r} for {n!r} is out of range; allowed: [0, 1]")
        need = math.ceil(f * weights[n].numel()) if f > 0 else 0
        floor[n] = min(max(need, 1 if f > 0 else 0), int(alive[n].sum()))
    total = sum(w.numel() for w in weights.values())
    keep_total = total - round(sparsity * total)
    # Water-filling: layers whose global share falls under their floor are fixed at the floor,
    # the rest share the remaining budget under one threshold. Each pass fixes >= 1 layer.
    fixed: dict[str, int] = {}
    while True:
        free = [n for n in names if n not in fixed]
        budget = keep_total - sum(fixed.values())
        counts = _global_topk_counts({n: weights[n] for n in free}, alive, budget)
        under = [n for n in free if counts[n] < floor[n]]
        if not under:
            break
        for n in under:
            fixed[n] = floor[n]
    counts.update(fixed)
    return {
        n: _scores_keep_top(weights[n].abs(), alive[n], counts[n]) for n in names
    }


def _global_topk_counts(
    weights: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor], budget: int
) -> dict[str, int]:
    """How many of each layer's alive weights fall in the global top-``budget`` by magnitude."""
    names = list(weights)
    if not names:
        return {}
    scores = torch.cat(
        [
            torch.where(
                alive[n].flatten().cpu(),  # scores are gathered on the CPU
                weights[n].detach().abs().flatten().double().cpu(),
                torch.tensor(-math.inf, dtype=torch.float64),
            )
            for n in names
        ]
    )
    owner = torch.cat(
        [torch.full((weights[n].numel(),), i, dtype=torch.long) for i, n in enumerate(names)]
    )
    budget = max(0, min(budget, int(torch.isfinite(scores).sum())))
    order = torch.sort(scores, descending=True, stable=True).indices[:budget]
    counts = torch.bincount(owner[order], minlength=len(names))
    return {n: int(counts[i]) for i, n in enumerate(names)}
