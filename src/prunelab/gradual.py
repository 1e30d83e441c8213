"""Gradual magnitude pruning (Zhu & Gupta 2017): raise the sparsity while the network trains.

Instead of pruning to the target at once and retraining, the sparsity follows the cubic
ramp :func:`prunelab.schedules.cubic_sparsity` from ``initial`` at step ``start`` to
``final`` at ``start + count * every``, pruning every ``every`` steps (or epochs), so the
network recovers a little between prunings and most weights go early, while it is most
redundant. :class:`GradualPruning` is a :class:`prunelab.training.Callback` that runs any
sparsity criterion (``magnitude``, ``random``, N:M, block ...) through a
:class:`~prunelab.pruner.Pruner` at those points; each pruning is reported (``on_prune``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.data import TensorBatches
    >>> from prunelab.pruner import Pruner
    >>> from prunelab.training import Trainer, make_optimizer
    >>> model = nn.Sequential(nn.Linear(8, 50), nn.ReLU(), nn.Linear(50, 2))
    >>> opt = make_optimizer(model.parameters(), "sgd", lr=0.05)
    >>> gradual = GradualPruning(Pruner(model), "magnitude", 0.9, start=0, every=2, count=3)
    >>> x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    >>> gradual.prune_due(0)  # point 0, before training
    True
    >>> _ = Trainer(model, opt, callbacks=[gradual]).fit(TensorBatches(x, y, batch_size=8),
    ...                                                  epochs=1)
    >>> [p for p, _ in gradual.done], round(float((model[0].weight == 0).float().mean()), 3)
    ([0, 2, 4, 6], 0.9)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from .allocation import layer_amounts
from .criteria import Criterion, as_criterion
from .pruner import LayerPruneResult, Pruner
from .schedules import cubic_sparsity, gradual_points
from .selection import LayerValue
from .training import Callback, EpochStats, Trainer

__all__ = ["UNITS", "GradualPruning"]

UNITS: tuple[str, ...] = ("step", "epoch")


class GradualPruning(Callback):
    """Prune to a growing sparsity at fixed points of training (a Trainer callback).

    Args:
        pruner: the :class:`~prunelab.pruner.Pruner` holding the layers.
        method: a sparsity criterion (name or instance): ``"magnitude"``, ``"random"``, ...
        final: the final sparsity ``s_f``, one value or ``{layer pattern: value}``.
        initial: the sparsity ``s_i`` at ``start`` (one value for all layers).
        start: first pruning point ``t0`` (steps or epochs done).
        every: points apart ``dt``.
        count: number of intervals ``n``: the last pruning is at ``start + count * every``.
        unit: ``"step"`` (points count optimizer steps) or ``"epoch"`` (epochs).
        layers: restrict the pruning to some of the Pruner's layers (glob patterns).
        scope, min_density, seed, options: passed to :meth:`Pruner.step`.
        on_prune: ``on_prune(point, results)`` after each pruning (the log's prune events).

    A point 0 is pruned by :meth:`prune_due` (call it before training; the pipeline does),
    later points by the callbacks: after the step (or epoch) that completes them, before any
    other callback of the same step sees the model, when this one is first in the list.

    Raises:
        ValueError: a criterion whose amount is not a sparsity, bad schedule values, a
            pattern matching no layer.
    """

    def __init__(
        self,
        pruner: Pruner,
        method: str | Criterion,
        final: LayerValue,
        *,
        initial: float = 0.0,
        start: int = 0,
        every: int = 1,
        count: int = 1,
        unit: Literal["step", "epoch"] = "step",
        layers: str | Sequence[str] | None = None,
        scope: str = "layer",
        min_density: LayerValue = 0.0,
        seed: int = 0,
        on_prune: Callable[[int, list[LayerPruneResult]], None] | None = None,
        **options: Any,
    ) -> None:
        crit = as_criterion(method, options, granularity="weight")
        if crit.amount_kind != "sparsity":
            raise ValueError(
                f"gradual pruning needs a criterion whose amount is a sparsity (e.g. "
                f"'magnitude'); {crit.label!r} takes {crit.amount_kind!r}"
            )
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r} is unknown; allowed: {UNITS}")
        self.points = gradual_points(start, every, count)
        names = list(pruner._subset(layers))
        self.final = layer_amounts(final, names, "sparsity", what="final sparsity")
        for f in self.final.values():
            cubic_sparsity(start, initial, f, start, every, count)  # validates initial <= final
        self.pruner, self.criterion = pruner, crit
        self.initial, self.start, self.every, self.count = float(initial), start, every, count
        self.unit = unit
        self.global_final = final if not isinstance(final, Mapping) else None
        self.layers = layers
        self.scope, self.min_density, self.seed = scope, min_density, seed
        self.on_prune = on_prune
        self.done: list[tuple[int, list[LayerPruneResult]]] = []
        pruner.check_step(crit, self._amount(start), layers=layers, scope=scope,
                          min_density=min_density)

    @property
    def last_point(self) -> int:
        """The point at which the final sparsity is reached."""
        return self.points[-1]

    def sparsity_at(self, t: int) -> dict[str, float]:
        """Each layer's scheduled sparsity at point ``t``."""
        return {n: cubic_sparsity(t, self.initial, f, self.start, self.every, self.count)
                for n, f in self.final.items()}

    def _amount(self, t: int) -> float | dict[str, float]:
        if self.scope == "global":
            if self.global_final is None:
                raise ValueError("scope='global' takes one final sparsity, not a mapping")
            return cubic_sparsity(t, self.initial, float(self.global_final), self.start,
                                  self.every, self.count)
        return self.sparsity_at(t)

    def prune_due(self, t: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Prune now if ``t`` is one of the points; return whether it was."""
        if t not in self.points:
            return False
        results = self.pruner.step(
            self.criterion, self._amount(t), layers=self.layers, scope=self.scope,
            min_density=self.min_density,
            seed=self.seed + self.points.index(t), optimizer=optimizer,
        )
        self.done.append((t, results))
        if self.on_prune is not None:
            self.on_prune(t, results)
        return True

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Prune after the step that completes a point (``unit="step"``)."""
        if self.unit == "step":
            self.prune_due(step + 1, trainer.optimizer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, stats: EpochStats) -> None:
        """Prune after the epoch that completes a point (``unit="epoch"``)."""
        if self.unit == "epoch":
            self.prune_due(epoch + 1, trainer.optimizer)
