"""Structured pruning of any traceable model: ``prune_channels``.

One call traces the model's channel dependencies (:func:`prunelab.graph.trace_channels`),
scores every removable unit of every coupled group, chooses what to remove (per group or
under one global threshold, with floors), and returns both a physically smaller copy
(``.model``) and a copy of the original with exactly the same channels masked to zero
(``.masked``, for fine-tuning under masks); the two are checked to compute the same outputs.

Methods: ``l1_filter`` (Li et al. 2017: L1 norm of a unit's filters, averaged over the
group's producing layers), ``slimming`` (Liu et al. 2017: ``|gamma|`` of its BatchNorm scales;
train with :func:`prunelab.criteria.channels.slimming_penalty`; exactly the fraction asked is
pruned over the units that have BatchNorms), ``thinet`` (Luo et al. 2017: greedy, keeps the
units that best reconstruct the next layers' inputs) and ``random``.

Example:
    >>> import torch, torchvision
    >>> import prunelab
    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> res = prunelab.prune_channels(net, torch.randn(1, 3, 64, 64), method="l1_filter",
    ...                               amount=0.3)
    >>> res.params_after < 0.6 * res.params_before
    True
    >>> res.max_abs_diff < 1e-3  # compact model == masked model on the example input
    True
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .allocation import check_sparsity, global_keep, keep_top
from .criteria.channels import _contributions, thinet_select
from .errors import one_line
from .graph.dependency import ChannelGraph, ChannelGroup, GraphError, Member, trace_channels
from .graph.resize import owner, slice_tensors
from .graph.trace import Link
from .hooks import eval_forward
from .macs import count_macs
from .masks import effective_tensor, set_mask
from .metrics import count_parameters
from .outputs import max_abs, max_abs_diff
from .surgery import SurgeryError

__all__ = [
    "METHODS",
    "ChannelPruneResult",
    "GroupReport",
    "keep_stats_layernorm",
    "prune_channels",
]

#: The channel scoring methods.
METHODS = ("l1_filter", "slimming", "thinet", "random")
Scope = Literal["local", "global"]


@dataclass
class GroupReport:
    """What happened to one coupled group."""

    index: int
    producers: list[str]
    modules: int
    units: int
    channels_per_unit: int
    kept: int
    removed: list[int]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "index": self.index, "producers": self.producers, "modules": self.modules,
            "units": self.units, "channels_per_unit": self.channels_per_unit, "kept": self.kept,
            "removed": self.removed, "note": self.note,
        }


@dataclass
class ChannelPruneResult:
    """The outcome of :func:`prune_channels`.

    Attributes:
        model: a physically smaller copy of the model.
        masked: a copy of the original with the same channels masked to zero.
        graph: the traced channel groups.
        groups: one :class:`GroupReport` per group.
        keep: ``{(tensor, dim): kept indices}`` for every cut tensor (what ``.model`` is).
        shapes: ``{tensor: new shape}`` of the cut tensors (to rebuild ``.model`` from the
            original architecture, see :func:`prunelab.graph.resize.set_shapes`).
        params_before, params_after: parameter counts.
        macs_before, macs_after: multiply-accumulates per sample on the example input.
        max_abs_diff: largest output difference between ``.model`` and ``.masked`` on the
            example input (``None`` when not checked).
    """

    model: nn.Module
    masked: nn.Module
    graph: ChannelGraph
    groups: list[GroupReport]
    keep: dict[tuple[str, int], torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs_diff: float | None
    method: str = ""
    amount: float = 0.0
    pinned_ops: dict[str, int] = field(default_factory=dict)

    @property
    def units_removed(self) -> int:
        """Units removed over all groups."""
        return sum(len(g.removed) for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the models)."""
        return {
            "method": self.method, "amount": self.amount,
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "max_abs_diff": self.max_abs_diff, "units": self.graph.units,
            "units_removed": self.units_removed, "pinned_ops": self.pinned_ops,
            "groups": [g.to_dict() for g in self.groups],
        }

    def table(self) -> str:
        """One line per group: its producing layers, units kept of all, channels per unit."""
        rows = [f"{'group':>5}  {'kept/units':>11}  {'ch/unit':>7}  producers"]
        for g in self.groups:
            prod = ", ".join(g.producers[:4]) + (f" +{len(g.producers) - 4}"
                                                 if len(g.producers) > 4 else "")
            note = f"  ({g.note})" if g.note else ""
            rows.append(f"{g.index:>5}  {f'{g.kept}/{g.units}':>11}  {g.channels_per_unit:>7}  "
                        f"{prod}{note}")
        return "\n".join(rows)

    def summary(self) -> str:
        """One line: sizes before and after."""
        return (
            f"{self.method} {self.amount:.0%}: params {self.params_before:,} -> "
            f"{self.params_after:,} ({self.params_before / max(self.params_after, 1):.2f}x), "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_before / max(self.macs_after, 1):.2f}x), "
            f"{len(self.groups)} groups"
        )


# ----------------------------------------------------------------------------- scores


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    return effective_tensor(*owner(model, name)).detach()


def _slice_sums(t: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Per unit, the sum of ``|t|`` over its slices along ``dim``."""
    per = t.abs().double().movedim(dim, 0).reshape(t.shape[dim], -1).sum(dim=1)
    return per.cpu()[positions].sum(dim=1)


def _l1_scores(model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
    parts = [
        _slice_sums(_tensor(model, m.tensor), m.dim, p)
        for m, p in zip(group.members, group.positions, strict=True)
        if m.role == "out" and not m.name.endswith("bias")
    ]
    return torch.stack(parts).mean(dim=0) if parts else None


def _slimming_scores(model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
    parts = [
        _slice_sums(_tensor(model, m.tensor), m.dim, p) / p.shape[1]
        for m, p in zip(group.members, group.positions, strict=True)
        if m.role == "norm" and m.name == "weight"
        and _is_batchnorm(model, m)
    ]
    return torch.stack(parts).mean(dim=0) if parts else None


def _is_batchnorm(model: nn.Module, m: Member) -> bool:
    return isinstance(model.get_submodule(m.module), nn.modules.batchnorm._BatchNorm)


def _channels_per_unit(group: ChannelGroup) -> int:
    for m, p in zip(group.members, group.positions, strict=True):
        if m.role == "out" and not m.name.endswith("bias"):
            return int(p.shape[1])
    return int(group.positions[0].shape[1])


# ----------------------------------------------------------------------------- allocation


def _floor_units(group: ChannelGroup, min_channels: int, min_fraction: float) -> int:
    cpu = _channels_per_unit(group)
    need = max(1, math.ceil(min_channels / cpu), math.ceil(min_fraction * group.units))
    return min(need, group.units)


def _round_units(keep: int, units: int, cpu: int, round_to: int | None, floor: int) -> int:
    if not round_to or keep >= units:
        return keep
    step = round_to // math.gcd(round_to, cpu)
    rounded = max(step, round(keep / step) * step)
    if rounded >= units:
        return units
    return max(rounded, floor if floor % step == 0 else math.ceil(floor / step) * step)


def _check_int(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what}={value!r} is out of range; allowed: an integer >= {low}")
    return value


# ----------------------------------------------------------------------------- ThiNet


def _thinet_keep(
    model: nn.Module, group: ChannelGroup, n_keep: int, data: Any, samples: int,
    gen: torch.Generator,
) -> torch.Tensor | None:
    consumers = [
        (m, p) for m, p in zip(group.members, group.positions, strict=True)
        if m.role == "in" and m.name == "weight"
    ]
    usable = []
    for m, p in consumers:
        mod = model.get_submodule(m.module)
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv1d | nn.Conv2d)
                                          and mod.groups == 1):
            usable.append((m, p, mod))
    if not usable:
        return None
    inputs = _capture_inputs(model, [mod for _, _, mod in usable], data)
    rows = []
    for (m, p, mod), x in zip(usable, inputs, strict=True):
        if x is None:
            continue
        contrib = _contributions(mod, Link("", m.module, (), 1), x, samples, gen)  # [S, cols]
        rows.append(contrib[:, p].sum(dim=2))
    if not rows:
        return None
    removed = thinet_select(torch.cat(rows), group.units - n_keep)
    keep = torch.ones(group.units, dtype=torch.bool)
    keep[removed] = False
    return keep


def _capture_inputs(model: nn.Module, mods: Sequence[nn.Module], data: Any) -> list:
    box: dict[int, torch.Tensor] = {}

    def hook(mod: nn.Module, inp: tuple) -> None:
        box.setdefault(id(mod), inp[0].detach())

    eval_forward(model, data, pre_hooks=[(m, hook) for m in mods], unpack=True)
    return [box.get(id(m)) for m in mods]


# ----------------------------------------------------------------------------- LayerNorm


def keep_stats_layernorm(module: nn.Module, keep: torch.Tensor, dim: int) -> None:
    """Make a LayerNorm normalise over the kept channels only (what the compact model does).

    A forward hook recomputes the output from the kept entries of the input along ``dim``;
    the removed entries output zero. Used by ``.masked`` so that it computes exactly what the
    physically smaller model computes.
    """
    idx = keep.nonzero().flatten()

    def pre(mod: nn.Module, inp: tuple) -> None:
        mod._prunelab_input = inp[0]

    def post(mod: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        x = mod.__dict__.pop("_prunelab_input")
        d = dim % x.dim()
        xk = x.index_select(d, idx.to(x.device)).movedim(d, -1)
        w = mod.weight.index_select(0, idx.to(x.device)) if mod.weight is not None else None
        b = mod.bias.index_select(0, idx.to(x.device)) if mod.bias is not None else None
        yk = F.layer_norm(xk, (idx.numel(),), w, b, mod.eps).movedim(-1, d)
        y = torch.zeros_like(out)
        y.index_copy_(d, idx.to(x.device), yk.to(y.dtype))
        return y

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


# ----------------------------------------------------------------------------- the call


def prune_channels(
    model: nn.Module,
    example_input: Any,
    *,
    method: str = "l1_filter",
    amount: float = 0.5,
    scope: Scope | None = None,
    ignore: str | Sequence[str] | None = None,
    min_channels: int = 1,
    min_fraction: float = 0.0,
    round_to: int | None = None,
    data: Any = None,
    samples: int = 2000,
    seed: int = 0,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> ChannelPruneResult:
    """Remove a fraction of the channels of ``model``, respecting every coupling.

    Args:
        model: any ``torch.fx``-traceable network; not modified.
        example_input: one valid input batch (a tensor, a tuple of inputs, or a dict of
            keyword inputs); small spatial sizes make tracing fast.
        method: one of :data:`METHODS`.
        amount: fraction of units removed, in ``[0, 1)``: of each group (``scope="local"``)
            or of all units together (``"global"``).
        scope: ``"local"`` (default; ThiNet supports only this) or ``"global"`` (default for
            ``slimming``, as in Network Slimming: one threshold over all BatchNorm scales).
        ignore: glob patterns of module names whose output channels are never pruned. The
            layers producing the model's outputs (the classifier) are always left whole.
        min_channels: never keep fewer channels in a group (at least one unit is kept).
        min_fraction: never keep fewer than this fraction of a group's units.
        round_to: make each group's kept channel count a multiple of this (hardware friendly);
            groups too small to round keep their floor or all their units.
        data: calibration inputs for ThiNet (default: ``example_input``).
        samples: ThiNet's sampled output values per consumer layer.
        seed: seed of ``random`` scores and ThiNet's sampling.
        leaf_modules: module names (glob) or types ``torch.fx`` should not trace into.
        check: compare ``.model`` with ``.masked`` on ``example_input`` and raise when the
            outputs differ by more than ``atol + rtol * max|output|``.
        rtol, atol: tolerances of the check.

    Returns:
        A :class:`ChannelPruneResult`.

    Raises:
        ValueError: an option out of range.
        GraphError: the model cannot be traced, or nothing in it can be pruned.
        SurgeryError: the check failed (a bug: please report the model).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> res = prune_channels(net, torch.randn(2, 3, 12, 12), amount=0.25)
        >>> res.model[0].out_channels, res.model[3].out_channels, res.model[7].in_features
        (6, 6, 6)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {METHODS}")
    amount = check_sparsity(amount, "amount")
    scope = scope or ("global" if method == "slimming" else "local")
    if scope not in ("local", "global"):
        raise ValueError(f"scope={scope!r} is unknown; allowed: ('local', 'global')")
    if method == "thinet" and scope == "global":
        raise ValueError("method='thinet' selects per group; allowed scope: 'local'")
    _check_int(min_channels, "min_channels", 0)
    if isinstance(min_fraction, bool) or not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction={min_fraction!r} is out of range; allowed: [0, 1]")
    if round_to is not None:
        _check_int(round_to, "round_to", 1)
    _check_int(samples, "samples", 1)

    patterns = [] if ignore is None else [ignore] if isinstance(ignore, str) else list(ignore)
    names = [n for n, _ in model.named_modules() if n]
    for p in patterns:
        if not any(fnmatchcase(n, p) for n in names):
            raise ValueError(
                f"ignore pattern {p!r} matches no module of {type(model).__name__}; "
                f"module names look like {names[:4]}"
            )
    graph = trace_channels(model, example_input, ignore=patterns, leaf_modules=leaf_modules)
    if not graph.groups:
        ops = ", ".join(f"{k} (x{v})" for k, v in graph.pinned_ops.items()) or "none"
        raise GraphError(one_line_reason(type(model).__name__, ops))
    gen = torch.Generator().manual_seed(seed)

    scores: dict[int, torch.Tensor] = {}
    notes: dict[int, str] = {}
    for g in graph.groups:
        if method == "l1_filter":
            s = _l1_scores(model, g)
        elif method == "slimming":
            s = _slimming_scores(model, g)
            if s is None:
                notes[g.index] = "no BatchNorm: kept"
        elif method == "random":
            s = torch.rand(g.units, generator=gen, dtype=torch.float64)
        else:
            s = _l1_scores(model, g)  # ThiNet decides below; L1 only breaks ties of floors
        if s is not None:
            scores[g.index] = s

    floors = {
        g.index: _floor_units(g, min_channels, float(min_fraction)) for g in graph.groups
    }
    keep: dict[int, torch.Tensor] = {}
    if scope == "global":
        pool = {str(i): s for i, s in scores.items()}
        total = sum(s.numel() for s in scores.values())
        chosen = global_keep(
            pool, total - round(amount * total), floors={str(i): floors[i] for i in scores},
        )
        for i in scores:
            k = chosen[str(i)]
            g = graph.groups[i]
            n = _round_units(int(k.sum()), g.units, _channels_per_unit(g), round_to, floors[i])
            keep[i] = keep_top(scores[i], n) if n != int(k.sum()) else k
    else:
        data = example_input if data is None else data
        for g in graph.groups:
            if g.index not in scores:
                continue
            n = max(g.units - round(amount * g.units), floors[g.index])
            n = _round_units(n, g.units, _channels_per_unit(g), round_to, floors[g.index])
            if method == "thinet" and n < g.units:
                k = _thinet_keep(model, g, n, data, samples, gen)
                if k is None:
                    notes[g.index] = "thinet: no Linear/Conv consumer; scored by l1_filter"
                    k = keep_top(scores[g.index], n)
            else:
                k = keep_top(scores[g.index], n)
            keep[g.index] = k

    reports: list[GroupReport] = []
    cut: dict[tuple[str, int], set[int]] = {}
    for g in graph.groups:
        k = keep.get(g.index, torch.ones(g.units, dtype=torch.bool))
        removed = (~k).nonzero().flatten()
        for m, p in zip(g.members, g.positions, strict=True):
            if removed.numel():
                cut.setdefault((m.tensor, m.dim), set()).update(p[removed].flatten().tolist())
        reports.append(GroupReport(
            g.index, g.modules("out"), len(g.modules()), g.units, _channels_per_unit(g),
            int(k.sum()), removed.tolist(), notes.get(g.index, ""),
        ))

    shapes_before = _shapes(model)
    kept_idx: dict[tuple[str, int], torch.Tensor] = {}
    for (name, dim), gone in cut.items():
        size = shapes_before[name][dim]
        mask = torch.ones(size, dtype=torch.bool)
        mask[list(gone)] = False
        kept_idx[(name, dim)] = mask.nonzero().flatten()

    masked = _masked_copy(model, graph, kept_idx, shapes_before)
    compact = copy.deepcopy(model)
    slice_tensors(compact, kept_idx)
    shapes = {n: s for n, s in _shapes(compact).items() if shapes_before.get(n) != s}

    diff = None
    if check:
        diff, scale = _compare(compact, masked, example_input)
        if scale == 0.0:
            warnings.warn(
                f"the example output of {type(model).__name__} is all zero (a zero-initialised "
                "classifier?), so comparing the compact and masked models checks nothing",
                stacklevel=2,
            )
        if diff > atol + rtol * scale:
            raise SurgeryError(
                f"the compact {type(model).__name__} differs from the masked one by {diff:.3g} "
                f"(output scale {scale:.3g}); this is a prunelab bug: please report the model"
            )
    return ChannelPruneResult(
        compact, masked, graph, reports, kept_idx, shapes,
        count_parameters(model)[0], count_parameters(compact)[0],
        count_macs(model, example_input), count_macs(compact, example_input),
        diff, method, float(amount), dict(graph.pinned_ops),
    )


def one_line_reason(name: str, ops: str) -> str:
    """The message for a model with no prunable group."""
    return (
        f"nothing in {name} can be pruned: every channel reaches the output or an operation "
        f"the tracer cannot follow; unsupported operations: {ops}"
    )


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for n, p in model.named_parameters():
        out[n[: -len("_orig")] if n.endswith("_orig") else n] = tuple(p.shape)
    for n, b in model.named_buffers():
        if not n.endswith("_mask"):
            out[n] = tuple(b.shape)
    return out


def _masked_copy(
    model: nn.Module, graph: ChannelGraph, kept: Mapping[tuple[str, int], torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
) -> nn.Module:
    masked = copy.deepcopy(model)
    params = {n.removesuffix("_orig") for n, _ in masked.named_parameters()}
    masks: dict[str, torch.Tensor] = {}
    for (name, dim), idx in kept.items():
        if name not in params:
            continue  # buffers (running statistics) need no mask: their channel outputs zero
        m = masks.setdefault(name, torch.ones(shapes[name]))
        drop = torch.ones(shapes[name][dim], dtype=torch.bool)
        drop[idx] = False
        m.index_fill_(dim, drop.nonzero().flatten(), 0.0)
    for name, m in masks.items():
        set_mask(*owner(masked, name), m)
    for ln, dim in graph.layernorms.items():
        w = f"{ln}.weight" if ln else "weight"
        if (w, 0) in kept:
            keep = torch.zeros(shapes[w][0], dtype=torch.bool)
            keep[kept[(w, 0)]] = True
            keep_stats_layernorm(masked.get_submodule(ln), keep, dim)
    return masked


def _compare(a: nn.Module, b: nn.Module, x: Any) -> tuple[float, float]:
    yb = eval_forward(b, x, unpack=True)
    try:
        ya = eval_forward(a, x, unpack=True)
    except Exception as err:  # the compact model does not even run: a tracer bug
        raise SurgeryError(one_line(
            f"the compact {type(a).__name__} fails on the example input "
            f"({type(err).__name__}: {err}); this is a prunelab bug: please report the model"
        )) from err
    return max_abs_diff(ya, yb), max_abs(yb)
