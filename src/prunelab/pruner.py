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
from typing import Any

import torch
from torch import nn

from .allocation import alive_mask, density_floors, global_keep, layer_amounts
from .criteria import Context, Criterion, as_criterion, layer_seed, population_std
from .criteria.base import checked_scores, layer_mask
from .distributed import broadcast_object, decide_on_rank0, is_distributed, sync_masks
from .masks import effective_tensor, get_mask, set_mask, sync_optimizer, tie_masks
from .selection import LayerValue, per_layer_values, select_layers

__all__ = ["SCOPES", "STD_SOURCES", "LayerPruneResult", "Pruner", "prune_model"]

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


@dataclass(frozen=True)
class _Plan:
    """A validated step: the criterion, the layers and each layer's amount and floor."""

    criterion: Criterion
    layers: tuple[str, ...]
    amounts: Mapping[str, float]
    min_density: Mapping[str, float]
    scope: str
    amount: Any  # as given (reported for scope="global")


class Pruner:
    """Prune selected layers of ``model`` step by step, with any registered weight criterion.

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

    def _measure_std(self) -> dict[str, float]:
        return {n: population_std(effective_tensor(m)) for n, m in self.layers.items()}

    def capture_dense_std(self) -> dict[str, float]:
        """Record each layer's std now (done automatically by the first :meth:`step`).

        Returns:
            ``{layer: std}`` (population std of the effective weights, float64).
        """
        self.dense_std = self._measure_std()
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

    def _plan(
        self,
        method: str | Criterion,
        amount: LayerValue,
        layers: str | Sequence[str] | None,
        scope: str,
        min_density: LayerValue,
        options: Mapping[str, Any],
    ) -> _Plan:
        """Validate a step's arguments (changes nothing)."""
        crit = as_criterion(method, options, granularity="weight")
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is unknown; allowed: {SCOPES}")
        if scope == "global" and not (crit.has_scores() and crit.amount_kind == "sparsity"):
            raise ValueError(
                "scope='global' needs a criterion with scores and a sparsity amount (e.g. "
                f"'magnitude'); {crit.label!r} has "
                + ("no scores" if not crit.has_scores() else f"amount kind {crit.amount_kind!r}")
            )
        if scope == "global" and isinstance(amount, Mapping):
            raise ValueError("scope='global' takes one sparsity for all layers, not a mapping")
        names = list(self._subset(layers))
        amounts = layer_amounts(amount, names, crit.amount_kind)
        for value in dict.fromkeys(amounts.values()):
            crit.check_amount(value)
        floors = per_layer_values(min_density, names, what="min_density", high=1.0)
        return _Plan(crit, tuple(names), amounts, floors, scope, amount)

    def check_step(
        self,
        method: str | Criterion,
        amount: LayerValue,
        *,
        layers: str | Sequence[str] | None = None,
        scope: str = "layer",
        min_density: LayerValue = 0.0,
        seed: int = 0,
        monotone: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        **options: Any,
    ) -> None:
        """Raise the errors :meth:`step` would raise for these arguments; change nothing.

        Takes exactly :meth:`step`'s arguments, so a pipeline can validate every iteration
        of a schedule before any training. What it cannot know in advance is whether the
        weights *then* make a layer empty (:meth:`step` checks that before changing a mask).

        Raises:
            ValueError: unknown criterion (the message lists the registered ones) or option,
                a channel criterion, unknown scope, ``scope="global"`` with a criterion without
                scores or with a ``q`` amount, a mapping with ``scope="global"``, ``q``
                negative or not finite, a sparsity outside ``[0, 1)`` (or outside what the
                criterion's ``check_amount`` allows, e.g. ``[0, 1 - n/m]`` for ``"nm"``),
                ``min_density`` outside ``[0, 1]``, a layer pattern or mapping pattern that
                matches no layer.
            TypeError: ``method`` is neither a registered name nor a criterion instance.

        Example:
            >>> from torch import nn
            >>> p = Pruner(nn.Sequential(nn.Linear(4, 4)))
            >>> p.check_step("magnitude", 0.5)
            >>> try:
            ...     p.check_step("magnitude", 1.5)
            ... except ValueError as exc:
            ...     print(exc)
            sparsity=1.5 for '*' is out of range; allowed: [0.0, 1.0)
        """
        self._plan(method, amount, layers, scope, min_density, options)

    def step(
        self,
        method: str | Criterion,
        amount: LayerValue,
        *,
        layers: str | Sequence[str] | None = None,
        scope: str = "layer",
        min_density: LayerValue = 0.0,
        seed: int = 0,
        monotone: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        **options: Any,
    ) -> list[LayerPruneResult]:
        """Compute and install new masks (all or nothing).

        Args:
            method: a registered weight criterion name or a
                :class:`~prunelab.criteria.Criterion` instance. Built-ins: ``"std"``
                (``amount`` is the quality parameter ``q``: prune ``|w| < q * std``),
                ``"magnitude"`` (``amount`` is the target sparsity of each layer, or of all
                selected layers together with ``scope="global"``), ``"random"`` (``amount``
                is the target sparsity, entries chosen at random), ``"nm"`` (N:M
                semi-structured, options ``n``/``m``; ``amount`` in ``[0, 1 - n/m]``,
                :mod:`prunelab.criteria.nm`), ``"block_magnitude"`` (whole blocks, option
                ``block``; :mod:`prunelab.criteria.blocks`).
            amount: one value or ``{pattern: value}`` (later patterns override earlier ones):
                ``q`` or a sparsity, as the criterion's ``amount_kind`` says.
            layers: restrict this step to some of the Pruner's layers (glob patterns).
            scope: ``"layer"`` or ``"global"`` (one threshold over layers; criteria with
                scores and a sparsity amount).
            min_density: per-layer floor, a fraction in [0, 1] (one value or per layer): a
                layer keeps at least ``ceil(min_density * n)`` weights (at least one if
                positive), its highest-scoring ones.
            seed: seed of the ``"random"`` criterion (combined with each layer's name).
            monotone: pruned connections stay pruned (the paper's behaviour).
            optimizer: if given, its state for pruned entries is zeroed
                (:func:`prunelab.masks.sync_optimizer`).
            options: constructor options of a criterion given by name.

        In a process group with several ranks (a DDP job) every rank calls ``step`` with
        the same arguments; rank 0 decides and its decision is installed on all of them (its
        masks are broadcast and verified identical by digest, :mod:`prunelab.distributed`),
        so masks stay identical even when a criterion depends on data or the weights drifted
        apart.

        Returns:
            One :class:`LayerPruneResult` per affected layer.

        Raises:
            ValueError: everything :meth:`check_step` raises, and a step that would leave a
                selected layer without any weight (no floor given); in every case before any
                mask or the recorded dense std changed (in a process group: when rank 0
                raises, on every rank).
            prunelab.distributed.MaskMismatchError: ranks ended with different masks.
        """
        if not is_distributed():
            results = self._step_local(method, amount, layers, scope, min_density, seed,
                                       monotone, options)
        else:
            results = self._step_agreed(method, amount, layers, scope, min_density, seed,
                                        monotone, options)
        if optimizer is not None:
            sync_optimizer(optimizer, self.model)
        return results

    def _step_agreed(self, *args: Any) -> list[LayerPruneResult]:
        """One step in a process group: rank 0 decides, every rank installs its decision.

        Rank 0 computes the step on its weights (and, for a data-dependent criterion, its
        data); its error is raised on every rank, or its masks are broadcast (and verified
        identical by digest), with its recorded dense stds and results. A criterion must not
        itself call collectives: it runs on rank 0 only.
        """
        results = decide_on_rank0(lambda: self._step_local(*args))
        sync_masks(self.model)
        tie_masks(self.model)
        self.dense_std, self.steps_done = broadcast_object((self.dense_std, self.steps_done))
        return results

    def _step_local(
        self,
        method: str | Criterion,
        amount: LayerValue,
        layers: str | Sequence[str] | None,
        scope: str,
        min_density: LayerValue,
        seed: int,
        monotone: bool,
        options: Mapping[str, Any],
    ) -> list[LayerPruneResult]:
        plan = self._plan(method, amount, layers, scope, min_density, dict(options))
        crit, names = plan.criterion, list(plan.layers)
        # The dense std of all layers, measured before the first mask changes any of them;
        # recorded only once the step succeeds.
        dense = self.dense_std if self.dense_std is not None else self._measure_std()
        chosen = {n: self.layers[n] for n in names}
        weights = {n: effective_tensor(m).detach() for n, m in chosen.items()}
        current = {n: get_mask(m) for n, m in chosen.items()}
        # With monotone=False the criterion must see every entry (pruned ones included), or
        # it could never choose to revive one.
        held = current if monotone else dict.fromkeys(names)
        before = {n: int(torch.count_nonzero(weights[n])) for n in names}
        ctx = {
            n: Context(layer=n, module=m, model=self.model, mask=current[n],
                       dense_std=dense.get(n), std_source=self.std_source,
                       seed=layer_seed(seed, n))
            for n, m in chosen.items()
        }  # fmt: skip
        alive = {n: alive_mask(weights[n], held[n]) for n in names}
        floors = density_floors(
            plan.min_density,
            {n: weights[n].numel() for n in names},
            {n: int(alive[n].sum()) for n in names},
        )
        if plan.scope == "global":
            scores = {n: checked_scores(crit, weights[n], ctx[n]) for n in names}
            total = sum(w.numel() for w in weights.values())
            keep = total - round(plan.amounts[names[0]] * total)
            masks = global_keep(scores, keep, alive=alive, floors=floors, ties=crit.ties)
        else:
            masks = {
                n: layer_mask(crit, weights[n], plan.amounts[n], held[n], ctx[n], floors[n])
                for n in names
            }
        for n in names:
            if weights[n].numel() and not bool(masks[n].any()):
                self._refuse_empty(plan, n)
        thresholds = {
            n: crit.threshold(weights[n], plan.amounts[n], masks[n], ctx[n]) for n in names
        }
        self.dense_std = dict(dense)
        results = []
        for n, m in chosen.items():
            set_mask(m, "weight", masks[n], monotone=monotone)
            after = int(torch.count_nonzero(effective_tensor(m)))
            amt = plan.amount if plan.scope == "global" else plan.amounts[n]
            results.append(
                LayerPruneResult(n, weights[n].numel(), before[n], after, thresholds[n], amt)
            )
        tie_masks(self.model)  # modules sharing a pruned Parameter (tied weights) share its mask
        self.steps_done += 1
        return results

    @staticmethod
    def _refuse_empty(plan: _Plan, layer: str) -> None:
        crit = plan.criterion
        what = "q" if crit.amount_kind == "q" else "sparsity"
        how = f"a smaller {what} for it" + (
            f" (e.g. {{'*': {plan.amount!r}, '{layer}': ...}})"
            if plan.scope == "layer" and not isinstance(plan.amount, Mapping) else ""
        )
        where = " under one global threshold" if plan.scope == "global" else ""
        raise ValueError(
            f"pruning layer {layer!r} with {crit.label!r} at {what}={plan.amounts[layer]!r}"
            f"{where} would remove all its weights; use {how} or a floor such as "
            "min_density=0.01 (nothing was changed)"
        )

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
    method: str | Criterion,
    amount: LayerValue,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    scope: str = "layer",
    min_density: LayerValue = 0.0,
    std_source: str = "dense",
    seed: int = 0,
    monotone: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    **options: Any,
) -> list[LayerPruneResult]:
    """One-shot pruning in one line (a :class:`Pruner` created and stepped once).

    Note that with ``std_source="dense"`` the std is that of the weights *now*; for an
    iterative run keep one :class:`Pruner` so the original dense std is remembered. Pass the
    ``optimizer`` that trains the model so its state of pruned entries is zeroed too (else
    momentum would move pruned ``weight_orig`` entries off zero).

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
        method, amount, scope=scope, min_density=min_density, seed=seed, monotone=monotone,
        optimizer=optimizer, **options,
    )
