"""Dynamic network surgery (Guo et al. 2016): masks that prune *and splice* during training.

Han et al. prune once per iteration and a pruned weight is gone for good. Guo et al. keep
training the dense weights under the mask (the gradient with respect to ``w * mask`` updates
every ``w``, pruned ones too: :func:`prunelab.masks.set_dense_updates`) and recompute each
layer's mask during training with two thresholds (:func:`prunelab.criteria.surgery_bounds`):
a weight at or below ``(1 - margin) * max(mu + c*sd, 0)`` is pruned, one above
``(1 + margin) * max(mu + c*sd, 0)`` is spliced back, the ones between keep their mask
(``mu``, ``sd``: mean and std of ``|w|`` over the surviving weights when the surgery starts,
fixed from then on, as in the paper's code). At step ``t`` the masks are recomputed with
probability ``(1 + gamma * t) ** -power`` (:func:`prunelab.schedules.surgery_probability`;
the draw is a pure function of the seed and the step, so every process and every resumed
run draws the same), and never from ``stop`` on.

:class:`DynamicSurgery` is a :class:`prunelab.training.Callback`: :meth:`~DynamicSurgery.start`
before training, pass it to the :class:`~prunelab.training.Trainer`, :meth:`~DynamicSurgery.finish`
after: then the pruned entries are exactly zero again and the optimizer's state of them is
cleared, so the usual retraining (fixed masks) can follow.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.data import TensorBatches
    >>> from prunelab.training import Trainer, make_optimizer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> opt = make_optimizer(model.parameters(), "sgd", lr=0.1)
    >>> surgery = DynamicSurgery(model, c=0.5)
    >>> first = surgery.start()
    >>> x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    >>> _ = Trainer(model, opt, callbacks=[surgery]).fit(TensorBatches(x, y, batch_size=16),
    ...                                                  epochs=2)
    >>> summary = surgery.finish(opt)
    >>> surgery.updates > 0, bool((model[0].weight_orig[model[0].weight_mask == 0] == 0).all())
    (True, True)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .criteria import surgery_bounds
from .distributed import is_distributed, sync_masks
from .masks import (
    get_mask,
    raw_parameter,
    set_dense_updates,
    set_mask,
    sync_optimizer,
)
from .schedules import surgery_probability
from .selection import LayerValue, per_layer_values, select_layers
from .training import Callback, EpochStats, Trainer

__all__ = ["DynamicSurgery", "LayerSurgery", "SurgeryUpdate", "surgery_mask"]


def surgery_mask(
    weight: torch.Tensor, mask: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """One surgery update: prune ``|w| <= low``, splice ``|w| > high``, keep the rest as is.

    Args:
        weight: the layer's dense weights (``weight_orig`` under dense updates).
        mask: the mask in force (0/1).
        low, high: the bounds, ``low <= high``.

    Returns:
        The new 0/1 mask, of ``mask``'s dtype.

    Example:
        >>> import torch
        >>> surgery_mask(torch.tensor([0.5, 1.5, 1.5, 3.0]), torch.tensor([1., 1., 0., 0.]),
        ...              1.0, 2.0).tolist()
        [0.0, 1.0, 0.0, 1.0]
    """
    if low > high:
        raise ValueError(f"bounds ({low!r}, {high!r}) are invalid; allowed: low <= high")
    a = weight.detach().abs().double()
    keep = (mask != 0) & ~(a <= low) | (a > high)
    return keep.to(mask.dtype)


@dataclass(frozen=True)
class LayerSurgery:
    """A layer's bounds and what the surgery did to it so far."""

    layer: str
    c: float
    low: float
    high: float
    weights: int
    pruned: int = 0
    spliced: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class SurgeryUpdate:
    """What the mask updates of a stretch of training did (an epoch, or the start).

    Attributes:
        step_from, step_to: the steps covered (steps done, ``[from, to)``).
        updates: how many times the masks were recomputed.
        changed: of those, how many changed some mask entry.
        pruned, spliced: per layer, entries pruned and spliced back.
        density: per layer, fraction of weights kept at the end of the stretch.
    """

    step_from: int
    step_to: int
    updates: int
    changed: int
    pruned: dict[str, int] = field(default_factory=dict)
    spliced: dict[str, int] = field(default_factory=dict)
    density: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class DynamicSurgery(Callback):
    """Prune and splice the weights of selected layers while they train (Guo et al. 2016).

    Args:
        model: the network (its masks change in place).
        c: the paper's ``crate``, one value or ``{layer pattern: value}``: larger prunes
            more (negative puts the bounds under the mean ``|w|``).
        layers: glob pattern(s) of the layers (all Linear/Conv layers when ``None``), or the
            ``{name: module}`` selection of a :class:`~prunelab.pruner.Pruner`.
        exclude: pattern(s) to leave out.
        margin: half-width of the hysteresis band: bounds ``(1 -+ margin) * max(mu + c*sd, 0)``.
        gamma, power: the update probability ``(1 + gamma * t) ** -power`` at step ``t``.
        every: recompute (with that probability) every ``every`` steps.
        stop: no update from this step on (``None``: until :meth:`finish`).
        seed: seed of the update draws.
        on_update: called with a :class:`SurgeryUpdate` at :meth:`start` and at the end of
            each epoch (the log's ``mask_update`` events).

    Raises:
        ValueError: bad values (named, with the allowed ones).
    """

    def __init__(
        self,
        model: nn.Module,
        c: LayerValue = 0.0,
        *,
        layers: str | Sequence[str] | Mapping[str, nn.Module] | None = None,
        exclude: str | Sequence[str] | None = None,
        margin: float = 0.1,
        gamma: float = 1e-4,
        power: float = 1.0,
        every: int = 1,
        stop: int | None = None,
        seed: int = 0,
        on_update: Callable[[SurgeryUpdate], None] | None = None,
    ) -> None:
        if isinstance(layers, Mapping):
            self.layers = dict(layers)
        else:
            self.layers = select_layers(model, layers, exclude=exclude)
        if not self.layers:
            raise ValueError("DynamicSurgery has no layers to operate on")
        # crate may be negative (a lower bound under the mean |w|): any finite number
        self.c = per_layer_values(c, list(self.layers), what="c", low=-math.inf,
                                  high=math.inf, high_inclusive=False)
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin={margin!r} is out of range; allowed: [0.0, 1.0)")
        surgery_probability(0, gamma, power)  # validates gamma and power
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every={every!r} is invalid; allowed: an integer >= 1")
        if stop is not None and not (isinstance(stop, int) and stop >= 0):
            raise ValueError(f"stop={stop!r} is invalid; allowed: None or an integer step >= 0")
        self.model = model
        self.margin, self.gamma, self.power = float(margin), float(gamma), float(power)
        self.every, self.stop, self.seed = every, stop, int(seed)
        self.on_update = on_update
        self.bounds: dict[str, tuple[float, float]] = {}
        self.updates = self.changed = 0
        self._totals: dict[str, list[int]] = {n: [0, 0] for n in self.layers}
        self._epoch = self._fresh(0)
        self.active = False

    # ------------------------------------------------------------------ control
    def start(self) -> SurgeryUpdate:
        """Measure the bounds, put the layers under dense updates, make the first masks.

        Returns:
            The first update (also passed to ``on_update``).
        """
        for n, m in self.layers.items():
            if get_mask(m) is None:
                set_mask(m, "weight", torch.ones_like(raw_parameter(m)))
            w = raw_parameter(m) * get_mask(m)
            self.bounds[n] = surgery_bounds(w, self.c[n], self.margin)
            set_dense_updates(m, "weight", True)
        self.active = True
        self._epoch = self._fresh(0)
        self._update()
        return self._flush(0)

    def resume(self, state: Mapping[str, Any]) -> None:
        """Continue a surgery from :meth:`state_dict` (the model's weights and masks loaded)."""
        if sorted(state["bounds"]) != sorted(self.layers):
            raise ValueError(
                f"saved surgery layers {sorted(state['bounds'])} differ from {sorted(self.layers)}"
            )
        self.bounds = {n: (float(lo), float(hi)) for n, (lo, hi) in state["bounds"].items()}
        self.updates, self.changed = int(state["updates"]), int(state["changed"])
        self._totals = {n: [int(a), int(b)] for n, (a, b) in state["totals"].items()}
        self._epoch = self._fresh(int(state["step"]))
        for m in self.layers.values():
            set_dense_updates(m, "weight", True)
        self.active = True

    def finish(self, optimizer: torch.optim.Optimizer | None = None) -> list[LayerSurgery]:
        """End the surgery: pruned entries exactly zero again, their optimizer state cleared.

        Returns:
            One :class:`LayerSurgery` per layer (bounds, totals pruned and spliced).
        """
        for m in self.layers.values():
            set_dense_updates(m, "weight", False)
        if optimizer is not None:
            sync_optimizer(optimizer, self.model)
        self.active = False
        return self.summary()

    def summary(self) -> list[LayerSurgery]:
        """Per layer: bounds and totals so far."""
        return [
            LayerSurgery(n, self.c[n], *self.bounds.get(n, (0.0, 0.0)),
                         weights=raw_parameter(m).numel(), pruned=self._totals[n][0],
                         spliced=self._totals[n][1])
            for n, m in self.layers.items()
        ]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (bounds and counters; the draws are a function of the step)."""
        return {"bounds": {n: list(b) for n, b in self.bounds.items()},
                "updates": self.updates, "changed": self.changed,
                "totals": {n: list(t) for n, t in self._totals.items()},
                "step": self._epoch["step_from"]}

    # ---------------------------------------------------------------- callbacks
    def due(self, t: int) -> bool:
        """Whether the masks are recomputed after ``t`` steps done (the draw is seeded by ``t``)."""
        if not self.active or t % self.every or (self.stop is not None and t >= self.stop):
            return False
        draw = random.Random(self.seed * 1_000_003 + t).random()
        return surgery_probability(t, self.gamma, self.power) > draw

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Recompute the masks when :meth:`due` (``step + 1`` steps are done)."""
        t = step + 1
        self._epoch["step_to"] = t
        if self.due(t):
            self._update()

    def on_epoch_end(self, trainer: Trainer, epoch: int, stats: EpochStats) -> None:
        """Report the epoch's updates (``on_update``)."""
        self._flush(self._epoch["step_to"])

    # ----------------------------------------------------------------- internals
    def _fresh(self, step: int) -> dict[str, Any]:
        return {"step_from": step, "step_to": step, "updates": 0, "changed": 0,
                "pruned": dict.fromkeys(self.layers, 0), "spliced": dict.fromkeys(self.layers, 0)}

    def _update(self) -> None:
        changed = False
        for n, m in self.layers.items():
            mask = get_mask(m)
            low, high = self.bounds[n]
            new = surgery_mask(raw_parameter(m), mask, low, high)
            pruned = int(((mask != 0) & (new == 0)).sum())
            spliced = int(((mask == 0) & (new != 0)).sum())
            if pruned or spliced:
                changed = True
                set_mask(m, "weight", new, monotone=False)
                self._epoch["pruned"][n] += pruned
                self._epoch["spliced"][n] += spliced
                self._totals[n][0] += pruned
                self._totals[n][1] += spliced
        if changed and is_distributed():
            sync_masks(self.model)
        self.updates += 1
        self._epoch["updates"] += 1
        if changed:
            self.changed += 1
            self._epoch["changed"] += 1

    def _flush(self, step: int) -> SurgeryUpdate:
        e = self._epoch
        density = {n: float(get_mask(m).float().mean()) for n, m in self.layers.items()}
        update = SurgeryUpdate(e["step_from"], max(step, e["step_to"]), e["updates"],
                               e["changed"], dict(e["pruned"]), dict(e["spliced"]), density)
        self._epoch = self._fresh(update.step_to)
        if self.on_update is not None:
            self.on_update(update)
        return update

