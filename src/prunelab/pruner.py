"""Apply a pruning criterion to selected layers of a model: the one-call entry point.

:class:`Pruner` is used like an optimizer (``torch.ao.pruning`` style): it is created on a
model, remembers what it needs across iterations (the std of each layer's original dense
weights), and each :meth:`Pruner.step` computes new masks and installs them. Its state is
small and JSON-serialisable (:meth:`Pruner.state_dict`), so checkpoints carry it and every
data-parallel rank can hold the same state and compute the same masks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> report = prune_model(model, "magnitude", 0.9)
    >>> [round(r.sparsity_after, 2) for r in report]
    [0.9, 0.9]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from . import criteria
from .masks import effective_tensor, get_mask, set_mask, sync_optimizer
from .selection import LayerValue, per_layer_values, select_layers

__all__ = ["METHODS", "STD_SOURCES", "LayerPruneResult", "Pruner", "prune_model"]

Method = Literal["std", "magnitude", "random"]
METHODS: tuple[str, ...] = ("std", "magnitude", "random")
STD_SOURCES: tuple[str, ...] = ("dense", "surviving")
SCOPES: tuple[str, ...] = ("layer", "global")


@dataclass(frozen=True)
class LayerPruneResult:
    """What one pruning step did to one layer."""

    layer: str
    weights: int
    nonzero_before: int
    nonzero_after: int
    threshold: float | None
    amount: float

    @property
    def sparsity_after(self) -> float:
        """Fraction of the layer's weights that are zero after the step."""
        return 1.0 - self.nonzero_after / self.weights if self.weights else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, with ``sparsity_after`` included."""
        return {**asdict(self), "sparsity_after": self.sparsity_after}


def _std(t: torch.Tensor) -> float:
    """Population standard deviation (numpy's default, ddof=0) in float64."""
    t = t.detach().double().flatten()
    return float(t.std(correction=0)) if t.numel() > 0 else 0.0


class Pruner:
    """Prune selected layers of ``model`` step by step.

    Args:
        model: the network (pruned in place).
        layers: glob pattern(s) selecting prunable layers; all Linear/Conv layers if ``None``.
        exclude: glob pattern(s) to leave out.
        std_source: for the ``"std"`` criterion, which std the threshold scales:
            ``"dense"`` (default) the std of each layer's weights at the first :meth:`step`
            (the trained dense weights, fixed for the whole run, so a quality parameter ``q``
            means the same threshold in every iteration and matches the sensitivity analysis);
            ``"surviving"`` the std of the weights that currently survive (the threshold grows
            with each iteration as small weights disappear).

    Raises:
        ValueError: a pattern matches nothing, or ``std_source`` is unknown.

    Example:
        >>> from torch import nn
        >>> p = Pruner(nn.Sequential(nn.Linear(4, 4)), std_source="surviving")
        >>> p.layer_names
        ['0']
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | None = None,
        *,
        exclude: str | Sequence[str] | None = None,
        std_source: str = "dense",
    ) -> None:
        if std_source not in STD_SOURCES:
            raise ValueError(f"std_source={std_source!r} is unknown; allowed: {STD_SOURCES}")
        self.model = model
        self.layers = select_layers(model, layers, exclude=exclude)
        self.std_source = std_source
        # Captured at the first step, i.e. from the trained dense weights, not at creation
        # (a Pruner is often created before training, e.g. by the pipeline).
        self.dense_std: dict[str, float] | None = None
        self.steps_done = 0

    def capture_dense_std(self) -> dict[str, float]:
        """Record each layer's std now (done automatically by the first :meth:`step`).

        Returns:
            ``{layer: std}`` (population std of the effective weights, float64).
        """
        self.dense_std = {n: _std(effective_tensor(m)) for n, m in self.layers.items()}
        return dict(self.dense_std)

    def dense_std_of(self, layer: str) -> float:
        """The recorded dense std of ``layer`` (captured on first use)."""
        if self.dense_std is None:
            self.capture_dense_std()
        return self.dense_std[layer]

    @property
    def layer_names(self) -> list[str]:
        """Names of the selected layers, in module order."""
        return list(self.layers)

    def _subset(self, layers: str | Sequence[str] | None) -> dict[str, nn.Module]:
        if layers is None:
            return dict(self.layers)
        chosen = select_layers(self.model, layers)
        outside = [n for n in chosen if n not in self.layers]
        if outside:
            raise ValueError(
                f"layers {outside} are not among this Pruner's layers {self.layer_names}"
            )
        return chosen

    def step(
        self,
        method: str,
        amount: LayerValue,
        *,
        layers: str | Sequence[str] | None = None,
        scope: str = "layer",
        min_density: LayerValue = 0.0,
        seed: int = 0,
        monotone: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> list[LayerPruneResult]:
        """Compute and install new masks.

        Args:
            method: ``"std"`` (``amount`` is the quality parameter ``q``: prune
                ``|w| < q * std``), ``"magnitude"`` (``amount`` is the target sparsity of each
                layer, or of all selected layers together with ``scope="global"``), or
                ``"random"`` (``amount`` is the target sparsity, entries chosen at random).
            amount: one value or ``{pattern: value}`` (later patterns override earlier ones).
            layers: restrict this step to some of the Pruner's layers (glob patterns).
            scope: ``"layer"`` or ``"global"`` (magnitude only: one threshold over layers).
            min_density: per-layer floor for ``scope="global"``, a fraction in [0, 1].
            seed: seed of the ``"random"`` criterion (combined with each layer's name).
            monotone: pruned connections stay pruned (the paper's behaviour).
            optimizer: if given, its state for pruned entries is zeroed
                (:func:`prunelab.masks.sync_optimizer`).

        Returns:
            One :class:`LayerPruneResult` per affected layer.

        Raises:
            ValueError: unknown method/scope, ``q < 0``, sparsity outside [0, 1), unknown
                layer patterns.
        """
        if method not in METHODS:
            raise ValueError(f"pruning method {method!r} is unknown; allowed: {METHODS}")
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is unknown; allowed: {SCOPES}")
        if scope == "global" and method != "magnitude":
            raise ValueError(f"scope='global' needs method='magnitude', got method={method!r}")
        if self.dense_std is None:
            self.capture_dense_std()  # all layers, before the first mask changes any of them
        chosen = self._subset(layers)
        names = list(chosen)
        if method == "std":
            values = per_layer_values(amount, names, what="q")
        else:
            values = per_layer_values(
                amount, names, what="sparsity", high=1.0, high_inclusive=False
            )
        weights = {n: effective_tensor(m).detach() for n, m in chosen.items()}
        current = {n: get_mask(m) for n, m in chosen.items()}
        # With monotone=False the criterion must see every entry (pruned ones included), or
        # it could never choose to revive one.
        held = current if monotone else dict.fromkeys(names)
        before = {n: int(torch.count_nonzero(weights[n])) for n in names}
        thresholds: dict[str, float | None] = dict.fromkeys(names)
        if method == "magnitude" and scope == "global":
            if isinstance(amount, Mapping):
                raise ValueError("scope='global' takes one sparsity for all layers, not a mapping")
            floors = per_layer_values(min_density, names, what="min_density", high=1.0)
            masks = criteria.global_magnitude_masks(
                weights, float(amount), held, min_density=floors
            )
        else:
            masks = {}
            for n in names:
                w, cur = weights[n], current[n]
                if method == "std":
                    if self.std_source == "dense":
                        std = self.dense_std_of(n)
                    else:
                        alive = w[cur != 0] if cur is not None else w
                        std = _std(alive)
                    thresholds[n] = values[n] * std
                    masks[n] = criteria.std_threshold_mask(w, values[n], std, held[n])
                elif method == "magnitude":
                    masks[n] = criteria.magnitude_mask(w, values[n], held[n])
                else:
                    masks[n] = criteria.random_mask(
                        w, values[n], criteria.layer_seed(seed, n), held[n]
                    )
        results = []
        for n, m in chosen.items():
            set_mask(m, "weight", masks[n], monotone=monotone)
            after = int(torch.count_nonzero(effective_tensor(m)))
            if method == "magnitude" and thresholds[n] is None and after < weights[n].numel():
                kept = weights[n].abs()[masks[n]]
                thresholds[n] = float(kept.min()) if kept.numel() else None
            amt = values[n] if not (method == "magnitude" and scope == "global") else amount
            results.append(
                LayerPruneResult(n, weights[n].numel(), before[n], after, thresholds[n], amt)
            )
        if optimizer is not None:
            sync_optimizer(optimizer, self.model)
        self.steps_done += 1
        return results

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: layer names, std source, dense stds, steps done."""
        return {
            "layers": self.layer_names,
            "std_source": self.std_source,
            "dense_std": dict(self.dense_std) if self.dense_std is not None else None,
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the layer selection must be the same).

        Raises:
            ValueError: the saved layer list differs from this Pruner's.
        """
        if list(state["layers"]) != self.layer_names:
            raise ValueError(
                f"saved pruner layers {state['layers']} differ from {self.layer_names}"
            )
        if state["std_source"] not in STD_SOURCES:
            raise ValueError(f"std_source={state['std_source']!r} is unknown")
        self.std_source = state["std_source"]
        saved = state["dense_std"]
        self.dense_std = {k: float(v) for k, v in saved.items()} if saved is not None else None
        self.steps_done = int(state["steps_done"])


def prune_model(
    model: nn.Module,
    method: str,
    amount: LayerValue,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    scope: str = "layer",
    min_density: LayerValue = 0.0,
    std_source: str = "dense",
    seed: int = 0,
    monotone: bool = True,
) -> list[LayerPruneResult]:
    """One-shot pruning in one line (a :class:`Pruner` created and stepped once).

    Note that with ``std_source="dense"`` the std is that of the weights *now*; for an
    iterative run keep one :class:`Pruner` so the original dense std is remembered.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Linear(100, 10)
        >>> r = prune_model(m, "std", 1.0)  # uniform init: 1/sqrt(3) of it lies within 1 std
        >>> 0.5 < r[0].sparsity_after < 0.65
        True
    """
    pruner = Pruner(model, layers, exclude=exclude, std_source=std_source)
    return pruner.step(
        method, amount, scope=scope, min_density=min_density, seed=seed, monotone=monotone
    )
