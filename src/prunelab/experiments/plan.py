"""The per-layer plan of a run, without training: what ``prunelab run CONFIG --dry-run`` prints.

:func:`run_plan` validates a config, builds its model, checks every schedule iteration
against the model's layers (the same checks as a real run, before any data is read), counts
each prunable layer's weights and FLOP on one input of the configured shape, and resolves
the pruning amounts of the schedule to each layer: the target density after the last
iteration for criteria given a sparsity, the quality parameter ``q`` of each iteration for
``std`` (whose density is known only once the weights are trained).

Example:
    >>> from prunelab.config import parse_config
    >>> cfg = parse_config({"model": {"name": "lenet300"},
    ...     "prune": {"method": "magnitude", "schedule": [{"sparsity": 0.9, "epochs": 1}]}})
    >>> plan = run_plan(cfg)
    >>> [(r.name, r.weights, round(r.target_density, 6)) for r in plan.layers][:1]
    [('fc1', 235200, 0.1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..criteria import criterion_class
from ..metrics import model_stats
from ..models import build_model
from ..paper import PAPER
from ..pruner import Pruner
from ..selection import per_layer_values, select_layers

__all__ = ["LayerPlan", "RunPlan", "format_plan", "run_plan"]


@dataclass(frozen=True)
class LayerPlan:
    """One prunable layer of the plan.

    Attributes:
        name, kind, shape: the layer.
        weights: its weights (no bias).
        flops: its dense FLOP per input image (2 x multiply-accumulates).
        target_density: weights kept after the last iteration that prunes it (criteria
            given a sparsity), ``None`` for ``std`` or when no iteration prunes it.
        q: the quality parameter of each iteration that prunes it (``std`` only).
        paper_weights, paper_kept: the paper's figures for this layer, when known.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    flops: int
    target_density: float | None
    q: tuple[float, ...] = ()
    paper_weights: int | None = None
    paper_kept: float | None = None


@dataclass(frozen=True)
class RunPlan:
    """A whole run's plan: its layers, totals and where the data is expected."""

    name: str
    model: str
    input_shape: tuple[int, ...]
    params_total: int
    layers: list[LayerPlan]
    iterations: int
    epochs: int
    data: str
    data_found: bool
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> int:
        """Weights of the prunable layers."""
        return sum(r.weights for r in self.layers)

    @property
    def flops(self) -> int:
        """Dense FLOP per image of the prunable layers."""
        return sum(r.flops for r in self.layers)

    @property
    def target_weights(self) -> float | None:
        """Weights kept at the end if every layer has a target density, else ``None``."""
        if any(r.target_density is None for r in self.layers):
            return None
        return sum(r.weights * r.target_density for r in self.layers)


def _targets(cfg: RunConfig, pruner: Pruner) -> tuple[dict[str, float], dict[str, list]]:
    """Final target density per layer (sparsity criteria) and q per iteration (std)."""
    pc = cfg.prune
    kind = criterion_class(pc.method).amount_kind
    density: dict[str, float] = {}
    qs: dict[str, list[float]] = {n: [] for n in pruner.layers}
    for it in pc.schedule:
        if it.share is not None:  # prunes nothing
            continue
        # the layers a step prunes, matched exactly as Pruner.step matches them
        chosen = list(pruner.layers if it.layers is None
                      else select_layers(pruner.model, it.layers))
        values = per_layer_values(pc.amount(it), chosen, what=kind)
        for n, v in values.items():
            if kind == "q":
                qs[n].append(v)
            else:  # monotone: the density only ever falls
                density[n] = min(density.get(n, 1.0), 1.0 - v)
    return density, qs


def run_plan(cfg: RunConfig) -> RunPlan:
    """Build the model of ``cfg`` and resolve its schedule per layer, without training.

    Raises:
        ValueError: the model cannot be built, or a schedule entry names no layer / has a
            bad amount (the messages of a real run).
    """
    model = build_model(cfg.model.name, **cfg.model.kwargs)
    shape = (1, *cfg.data.input_shape())
    pruner = Pruner(model, cfg.prune.layers, exclude=cfg.prune.exclude,
                    std_source=cfg.prune.std_source)
    for index, it in enumerate(cfg.prune.schedule):
        if it.share is not None:
            continue
        args: dict[str, Any] = {"method": cfg.prune.method, "amount": cfg.prune.amount(it),
                                "layers": it.layers, "scope": cfg.prune.scope,
                                "min_density": cfg.prune.min_density, **cfg.prune.method_options}
        try:
            pruner.check_step(**args)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"prune.schedule[{index}]: {exc}") from None
    with torch.no_grad():
        stats = model_stats(model, torch.zeros(shape))
    names = list(pruner.layers)
    density, qs = _targets(cfg, pruner)
    paper = PAPER.get(cfg.model.name, {}).get("layers", {})
    rows = []
    by_name = {layer.name: layer for layer in stats.layers}
    for n in names:
        layer = by_name[n]
        ref = paper.get(n, {})
        kept = ref.get("weights_kept")
        rows.append(LayerPlan(
            n, layer.kind, tuple(layer.shape), layer.weights, int(layer.flops_dense),
            density.get(n), tuple(qs.get(n, ())), ref.get("weights"),
            kept / 100.0 if kept is not None else None,
        ))
    root = cfg.data.root
    notes = []
    found = True
    if cfg.data.name == "imagefolder":
        found = root is not None and (Path(root) / "train").is_dir() and (
            Path(root) / "val").is_dir()
        if not found:
            notes.append(
                f"data root {root!r} does not hold train/ and val/ (the ImageNet layout "
                "DIR/train/<class>/*, DIR/val/<class>/*); pass --data-root to run"
            )
    epochs = cfg.train.epochs + sum(it.epochs for it in cfg.prune.schedule)
    return RunPlan(cfg.name, cfg.model.name, shape[1:], stats.params_total, rows,
                   len(cfg.prune.schedule), epochs, cfg.data.name, found, notes)


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_plan(plan: RunPlan) -> str:
    """The plan as a Markdown table and a summary (what ``--dry-run`` prints).

    Example:
        >>> from prunelab.config import parse_config
        >>> cfg = parse_config({"model": {"name": "lenet300"},
        ...     "prune": {"schedule": [{"q": 1.0, "epochs": 1}]}})
        >>> print(format_plan(run_plan(cfg)).splitlines()[0])
        run 'run': model lenet300, input 1x28x28, 266,610 parameters, 1 iteration(s), 11 epochs
    """
    lines = [
        f"run {plan.name!r}: model {plan.model}, input {'x'.join(map(str, plan.input_shape))}, "
        f"{plan.params_total:,} parameters, {plan.iterations} iteration(s), {plan.epochs} epochs",
        "",
        "| layer | kind | shape | weights | paper weights | FLOP | target density "
        "| paper density | q per iteration |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in plan.layers:
        lines.append(
            f"| {r.name} | {r.kind} | {'x'.join(map(str, r.shape))} | {r.weights:,} | "
            f"{'' if r.paper_weights is None else f'{r.paper_weights:,}'} | {_count(r.flops)} | "
            f"{'' if r.target_density is None else f'{100 * r.target_density:.1f}%'} | "
            f"{'' if r.paper_kept is None else f'{100 * r.paper_kept:.1f}%'} | "
            f"{', '.join(f'{q:g}' for q in r.q)} |"
        )
    target = plan.target_weights
    total = (
        f"| total | | | {plan.weights:,} | | {_count(plan.flops)} | "
        f"{'' if target is None else f'{100 * target / plan.weights:.1f}%'} | | |"
    )
    lines.append(total)
    if target is not None:
        lines += ["", f"target: {plan.weights:,} -> {target:,.0f} weights "
                  f"({plan.weights / max(target, 1):.1f}x fewer)"]
    lines += [""] + [f"note: {n}" for n in plan.notes] if plan.notes else []
    return "\n".join(lines)
