"""Physical surgery: remove dead units so the network really becomes smaller.

Masks only *pretend* a network is small: a masked neuron still costs memory and time. After
pruning (and :func:`prunelab.dead_neurons.prune_dead_neurons`, which folds the constant output of
input-dead neurons into the next layer's bias), :func:`compact_model` returns a copy in which
every unit (Linear output neuron, conv output channel) of a linked producer that no longer
affects the output is physically removed, together with the consumer's input columns that
read it and the BatchNorm channels in between.

A unit of producer ``P`` (linked to consumer ``C``) is removed when

* its outgoing weights (``C``'s input columns for it, all ``H*W`` of them after a flatten)
  are all zero, or
* the value it delivers to ``C`` is exactly zero for every input: its incoming weights are
  all zero and its bias is zero (or it has none), or a BatchNorm in between has its scale
  and shift masked to zero, and the activations in between keep that constant at zero in
  both train and eval mode (a constant ``ReLU(-0.3)`` is zero, a constant ``Sigmoid(0)``
  is not).

An input-dead unit with a *nonzero* constant output is kept (``kept_constant`` in the report):
folding it is :func:`prunelab.dead_neurons.prune_dead_neurons`' job. Layers the surgery cannot
follow channel by channel (not linked by :func:`prunelab.graph.trace_structure`: model
outputs, residual joins, grouped convolutions, shared modules) are kept as they are.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.masks import set_mask
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> _ = set_mask(m[2], "weight", torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]))
    >>> small, report = compact_model(m, torch.randn(5, 4))
    >>> small[0].out_features, small[2].in_features, report.layers["0"].removed
    (2, 2, (1,))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError

from .graph import (
    BATCHNORM_TYPES,
    DROPOUT_TYPES,
    Link,
    Structure,
    check_keep_mask,
    surgery_blocker,
    surgery_links,
    trace_structure,
)
from .graph.queries import layer_params
from .hooks import eval_forward
from .masks import effective_tensor, get_mask, iter_masks, make_permanent, raw_parameter, set_mask
from .metrics import count_parameters
from .selection import LINEAR_TYPES, in_units, out_units

__all__ = [
    "LayerSurgery",
    "SurgeryError",
    "SurgeryReport",
    "compact_model",
]

_AVGPOOL_TYPES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_SHAPE_ONLY_TYPES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity,
)  # fmt: skip


class SurgeryError(PrunelabError, ValueError):
    """Units were asked to be removed where physical surgery cannot remove them."""


@dataclass(frozen=True)
class LayerSurgery:
    """What the surgery did to one Linear/Conv layer.

    Attributes:
        name: module name.
        units_before / units_after: output units (neurons / channels).
        inputs_before / inputs_after: input features / channels.
        removed: indices (in the original numbering) of the removed output units.
        params_before / params_after: weight + bias entries of the layer.
    """

    name: str
    units_before: int
    units_after: int
    inputs_before: int
    inputs_after: int
    removed: tuple[int, ...]
    params_before: int
    params_after: int


@dataclass(frozen=True)
class SurgeryReport:
    """Per-layer results and model totals of :func:`compact_model`.

    Attributes:
        layers: ``{name: LayerSurgery}`` for every Linear/Conv layer of the traced forward pass.
        params_before / params_after: all parameters of the model (biases, BatchNorm included).
        kept_constant: input-dead units kept because they deliver a nonzero constant (fold
            them with :func:`prunelab.dead_neurons.prune_dead_neurons` first).
        kept_last: dead units kept because removing them would empty their layer.
        unsupported: layers with all-zero units the surgery cannot remove, and why.
        max_abs_diff: largest output difference between the masked model and the compact
            one on ``example_input`` (``None`` when not verified).
    """

    layers: dict[str, LayerSurgery]
    params_before: int
    params_after: int
    kept_constant: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kept_last: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    max_abs_diff: float | None = None

    @property
    def units_removed(self) -> int:
        """Output units removed over all layers."""
        return sum(len(layer.removed) for layer in self.layers.values())

    def removed(self) -> dict[str, tuple[int, ...]]:
        """``{layer: removed indices}`` for the layers that lost units."""
        return {n: s.removed for n, s in self.layers.items() if s.removed}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "layers": {
                n: {**asdict(s), "removed": list(s.removed)} for n, s in self.layers.items()
            },
            "params_before": self.params_before,
            "params_after": self.params_after,
            "units_removed": self.units_removed,
            "kept_constant": {n: list(v) for n, v in self.kept_constant.items()},
            "kept_last": {n: list(v) for n, v in self.kept_last.items()},
            "unsupported": dict(self.unsupported),
            "max_abs_diff": self.max_abs_diff,
        }
# ----------------------------------------------------------------------------- planning


def _apply_elementwise(m: nn.Module, v: float | None) -> float | None:
    if v is None:
        return None
    with torch.no_grad():
        return float(m(torch.tensor([v], dtype=torch.float32))[0])


def _bn_values(m: nn.Module) -> tuple[list[float], list[float]]:
    """Effective BatchNorm scale and shift as lists (1 and 0 when not affine)."""
    if not m.affine:
        return [1.0] * m.num_features, [0.0] * m.num_features
    return (
        effective_tensor(m, "weight").detach().tolist(),
        effective_tensor(m, "bias").detach().tolist(),
    )


def _delivered_constant(
    mods: Mapping[str, nn.Module],
    link: Link,
    j: int,
    c0: float | None,
    bn_values: Mapping[str, tuple[list[float], list[float]]],
) -> tuple[float | None, float | None]:
    """Value unit ``j`` delivers to the consumer, if constant: ``(eval mode, train mode)``.

    ``c0`` is the producer's constant output (its bias when input-dead), ``None`` when the
    output depends on the input.
    """
    ev = tr = c0
    for b in link.between:
        m = mods[b]
        if isinstance(m, BATCHNORM_TYPES):
            g, beta = bn_values[b][0][j], bn_values[b][1][j]
            if g == 0.0:  # scale masked: the output is the shift, whatever comes in
                ev = tr = beta
                continue
            tr = beta if tr is not None else None  # batch statistics of a constant: (c-c)=0
            if ev is not None:
                if m.track_running_stats and m.running_mean is not None:
                    rm, rv = float(m.running_mean[j]), float(m.running_var[j])
                    ev = (ev - rm) / math.sqrt(rv + m.eps) * g + beta
                else:
                    ev = beta
        elif isinstance(m, DROPOUT_TYPES):
            if m.p > 0 and not (tr == 0.0 and not isinstance(m, nn.AlphaDropout)):
                tr = None  # a nonzero constant is randomly dropped in train mode
        elif isinstance(m, _AVGPOOL_TYPES):
            pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
            if any(int(p) for p in pads) and m.count_include_pad:
                ev = ev if ev == 0.0 else None  # zero padding changes a nonzero border value
                tr = tr if tr == 0.0 else None
        elif isinstance(m, _SHAPE_ONLY_TYPES):
            continue
        else:  # an elementwise activation
            ev, tr = _apply_elementwise(m, ev), _apply_elementwise(m, tr)
    return ev, tr


@dataclass
class _Plan:
    out_keep: dict[str, torch.Tensor]
    kept_constant: dict[str, list[int]]
    kept_last: dict[str, list[int]]


def _plan(mods: Mapping[str, nn.Module], links: list[Link]) -> _Plan:
    """Decide which units of each linked producer go (a fixed point over all links)."""
    weights: dict[str, torch.Tensor] = {}
    for lk in links:
        for n in (lk.producer, lk.consumer):
            if n not in weights:
                weights[n] = effective_tensor(mods[n]).detach().clone()
    out_keep = {
        lk.producer: torch.ones(out_units(mods[lk.producer]), dtype=torch.bool) for lk in links
    }
    kept_constant: dict[str, set[int]] = {}
    kept_last: dict[str, set[int]] = {}
    bn_values = {
        b: _bn_values(mods[b])
        for lk in links
        for b in lk.between
        if isinstance(mods[b], BATCHNORM_TYPES)
    }
    changed = True
    while changed:
        changed = False
        for lk in links:
            p = mods[lk.producer]
            units = out_units(p)
            wp = weights[lk.producer].reshape(units, -1)
            has_in = wp.ne(0).any(dim=1).tolist()
            wc = weights[lk.consumer]
            rows_c = out_keep.get(lk.consumer)
            if rows_c is not None:
                wc = wc[rows_c.to(wc.device)]
            has_out = wc.reshape(wc.shape[0], units, -1).ne(0).any(dim=2).any(dim=0).tolist()
            bias = (
                effective_tensor(p, "bias").detach().tolist()
                if raw_parameter(p, "bias", missing_ok=True) is not None
                else None
            )
            keep = out_keep[lk.producer]
            for j in range(units):
                if not keep[j]:
                    continue
                if has_out[j]:
                    c0 = None if has_in[j] else (bias[j] if bias is not None else 0.0)
                    ev, tr = _delivered_constant(mods, lk, j, c0, bn_values)
                    if not (ev == 0.0 and tr == 0.0):
                        if ev is not None or tr is not None:
                            kept_constant.setdefault(lk.producer, set()).add(j)
                        continue
                if int(keep.sum()) <= 1:
                    kept_last.setdefault(lk.producer, set()).add(j)
                    continue
                keep[j] = False
                kept_constant.get(lk.producer, set()).discard(j)
                # The unit delivers zero (or nothing is read): zeroing what reads it is exact,
                # and lets the next round see units that only it fed.
                wc_full = weights[lk.consumer]
                wc_full.view(wc_full.shape[0], units, -1)[:, j] = 0
                weights[lk.producer][j] = 0
                changed = True
    return _Plan(
        out_keep,
        {k: sorted(v) for k, v in kept_constant.items() if v},
        {k: sorted(v) for k, v in kept_last.items() if v},
    )


# ----------------------------------------------------------------------------- building


def _copy_into(
    new: nn.Module,
    name: str,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    requires_grad: bool,
    keep_masks: bool,
) -> None:
    with torch.no_grad():
        if mask is not None and not keep_masks:
            value = value * mask
        getattr(new, name).copy_(value)
    getattr(new, name).requires_grad_(requires_grad)
    if mask is not None and keep_masks:
        set_mask(new, name, mask)


def _new_layer(
    old: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None, keep_masks: bool
) -> nn.Module:
    """A plain layer of the same type holding ``old``'s kept rows and columns."""
    w = raw_parameter(old, "weight", missing_ok=True).detach()
    wmask = get_mask(old, "weight")
    if rows is not None:
        w = w[rows]
        wmask = wmask[rows] if wmask is not None else None
    if cols is not None:
        w = w[:, cols]
        wmask = wmask[:, cols] if wmask is not None else None
    b = raw_parameter(old, "bias", missing_ok=True)
    bmask = get_mask(old, "bias")
    if b is not None and rows is not None:
        b = b.detach()[rows]
        bmask = bmask[rows] if bmask is not None else None
    kw = {"device": w.device, "dtype": w.dtype}
    if isinstance(old, LINEAR_TYPES):
        new = nn.utils.skip_init(type(old), w.shape[1], w.shape[0], bias=b is not None, **kw)
    else:
        new = nn.utils.skip_init(
            type(old), w.shape[1], w.shape[0], old.kernel_size, stride=old.stride,
            padding=old.padding, dilation=old.dilation, groups=1, bias=b is not None,
            padding_mode=old.padding_mode, **kw,
        )  # fmt: skip
    _copy_into(new, "weight", w, wmask, raw_parameter(old, "weight").requires_grad, keep_masks)
    if b is not None:
        grad = raw_parameter(old, "bias").requires_grad
        _copy_into(new, "bias", b.detach(), bmask, grad, keep_masks)
    new.train(old.training)
    return new


def _new_batchnorm(old: nn.Module, rows: torch.Tensor, keep_masks: bool) -> nn.Module:
    kw: dict[str, Any] = {}
    ref = raw_parameter(old, "weight", missing_ok=True) if old.affine else old.running_mean
    if ref is not None:
        kw = {"device": ref.device, "dtype": ref.dtype}
    new = nn.utils.skip_init(
        type(old), int(rows.numel()), eps=old.eps, momentum=old.momentum, affine=old.affine,
        track_running_stats=old.track_running_stats, **kw,
    )  # fmt: skip
    if old.affine:
        for name in ("weight", "bias"):
            raw = raw_parameter(old, name, missing_ok=True)
            mask = get_mask(old, name)
            _copy_into(
                new,
                name,
                raw.detach()[rows],
                mask[rows] if mask is not None else None,
                raw.requires_grad,
                keep_masks,
            )
    with torch.no_grad():
        for name in ("running_mean", "running_var"):
            buf = old._buffers.get(name)
            if buf is not None:
                new._buffers[name].copy_(buf[rows])
        nbt = old._buffers.get("num_batches_tracked")
        if nbt is not None:
            new._buffers["num_batches_tracked"].copy_(nbt)
    new.train(old.training)
    return new


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _detach_cached(model: nn.Module) -> None:
    """Detach the cached ``orig * mask`` attributes so ``deepcopy`` works (values unchanged)."""
    for _, module, name, _ in iter_masks(model):
        value = module.__dict__.get(name)
        if torch.is_tensor(value) and value.grad_fn is not None:
            module.__dict__[name] = value.detach()


def _max_abs_diff(a: object, b: object) -> float | None:
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.shape != b.shape:
            return math.inf
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        diffs = [_max_abs_diff(x, y) for x, y in zip(a, b, strict=True)]
        return None if any(d is None for d in diffs) else max(diffs, default=0.0)
    return None


def _check_request(
    model: nn.Module,
    mods: Mapping[str, nn.Module],
    structure: Structure,
    keep: Mapping[str, torch.Tensor],
    plan: _Plan,
) -> None:
    for name, mask in keep.items():
        mask = check_keep_mask(mods, structure, name, mask)
        if bool(mask.all()):
            continue
        reason = surgery_blocker(model, structure, name)
        if reason is not None:
            raise SurgeryError(
                f"cannot physically remove units of layer {name!r}: {reason} (masking them "
                "with prunelab.channel_masks.apply_channel_masks still works)"
            )
        if not bool(mask.any()):
            raise SurgeryError(f"cannot remove every unit of layer {name!r}")
        alive = [int(j) for j in torch.nonzero(~mask & plan.out_keep[name]).flatten()]
        if alive:
            consumer = structure.consumers_of(name)[0].consumer
            shown = ", ".join(map(str, alive[:10])) + (" ..." if len(alive) > 10 else "")
            raise SurgeryError(
                f"units [{shown}] of layer {name!r} still affect {consumer!r}, so removing them "
                "would change the outputs; mask them first with "
                "prunelab.channel_masks.apply_channel_masks"
            )


def compact_model(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    structure: Structure | None = None,
    keep: Mapping[str, torch.Tensor] | None = None,
    keep_masks: bool = True,
    verify: bool = True,
) -> tuple[nn.Module, SurgeryReport]:
    """Return a physically smaller copy of ``model`` computing the same function.

    Every unit of a linked producer that no longer affects the output (see the module
    docstring) is removed: its weight row (filter) and bias, its BatchNorm channel (weight,
    bias, running mean and variance) and the consumer's input columns that read it (a block
    of ``H*W`` columns after a flatten). Removed layers are replaced by plain, smaller
    ``nn.Linear``/``nn.ConvNd``/``nn.BatchNormNd`` modules under the same names, so the
    model class's ``forward`` still works. ``model`` itself is not changed.

    Args:
        model: the masked network.
        example_input: a batch of real inputs (used to trace the structure and to verify).
        structure: from :func:`prunelab.graph.trace_structure`; traced when ``None``.
        keep: optional ``{layer: BoolTensor[units]}`` (structured pruning): the units marked
            False must be removed; they must be dead already (apply
            :func:`prunelab.channel_masks.apply_channel_masks` first).
        keep_masks: keep the masks of the remaining weights (smaller masks, same
            ``torch.nn.utils.prune`` convention); when false every mask of the copy is made
            permanent.
        verify: compare outputs of the masked and the compact model on ``example_input``
            (eval mode) and raise if they differ.

    Returns:
        ``(compact_model, SurgeryReport)``.

    Raises:
        SurgeryError: ``keep`` asks to remove units of a layer the surgery cannot handle
            (the message names the layer and why), units that are still alive, or every
            unit of a layer; or verification found different outputs.
        ValueError: ``keep`` names an unknown layer or has a wrong shape.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with torch.no_grad():
        ...     _ = m[0].weight[2].zero_()
        ...     _ = m[0].bias[2].fill_(-1.0)  # a constant -1, which the ReLU turns into 0
        >>> small, report = compact_model(m, torch.randn(5, 4))
        >>> report.params_before, report.params_after
        (23, 16)
    """
    if structure is None:
        structure = trace_structure(model, example_input)
    mods = dict(model.named_modules())
    links = [lk for lk in surgery_links(structure) if lk.producer in mods and lk.consumer in mods]
    plan = _plan(mods, links)
    if keep is not None:
        _check_request(model, mods, structure, keep, plan)

    _detach_cached(model)
    new_model = copy.deepcopy(model)
    new_mods = dict(new_model.named_modules())
    rows: dict[str, torch.Tensor] = {}
    cols: dict[str, torch.Tensor] = {}
    for lk in links:
        kept = plan.out_keep[lk.producer]
        if bool(kept.all()):
            continue
        idx = torch.nonzero(kept).flatten()
        rows[lk.producer] = idx
        cols[lk.consumer] = (idx[:, None] * lk.block + torch.arange(lk.block)).reshape(-1)
        for b in lk.between:
            if isinstance(mods[b], BATCHNORM_TYPES):
                bn = new_mods[b]
                dev = next(iter(bn.buffers()), idx).device
                _set_module(new_model, b, _new_batchnorm(bn, idx.to(dev), keep_masks))
    for name in dict.fromkeys([*rows, *cols]):
        old = new_mods[name]
        dev = raw_parameter(old, "weight", missing_ok=True).device
        r, c = rows.get(name), cols.get(name)
        _set_module(new_model, name, _new_layer(
            old, r.to(dev) if r is not None else None, c.to(dev) if c is not None else None,
            keep_masks,
        ))  # fmt: skip
    if not keep_masks:
        make_permanent(new_model)

    after = dict(new_model.named_modules())
    layers: dict[str, LayerSurgery] = {}
    for name in dict.fromkeys(structure.layers):
        o, n = mods[name], after[name]
        gone = (
            tuple(int(j) for j in torch.nonzero(~plan.out_keep[name]).flatten())
            if name in rows else ()
        )  # fmt: skip
        layers[name] = LayerSurgery(
            name, out_units(o), out_units(n), in_units(o), in_units(n), gone,
            layer_params(o), layer_params(n),
        )  # fmt: skip
    unsupported: dict[str, str] = {}
    for name in dict.fromkeys(structure.layers):
        if name in plan.out_keep:
            continue
        w = effective_tensor(mods[name]).detach()
        if bool(w.reshape(w.shape[0], -1).eq(0).all(dim=1).any()):
            unsupported[name] = surgery_blocker(model, structure, name) or "not linked"

    diff = None
    if verify:
        hint = (
            "the model is probably not a chain the links describe (e.g. a residual connection "
            "torch.fx could not see, or hand-made links); check structure="
        )
        ref = eval_forward(model, example_input)
        try:
            out = eval_forward(new_model, example_input)
        except RuntimeError as exc:
            raise SurgeryError(f"the compact model fails on example_input ({exc}); {hint}") from exc
        diff = _max_abs_diff(ref, out)
        if diff is not None:
            scale = float(ref.abs().max()) if torch.is_tensor(ref) and ref.numel() else 1.0
            if not diff <= 1e-4 * (1.0 + scale):
                raise SurgeryError(
                    f"the compact model's outputs differ from the masked model's by {diff:.3g}; "
                    + hint
                )
    report = SurgeryReport(
        layers=layers,
        params_before=count_parameters(model)[0],
        params_after=count_parameters(new_model)[0],
        kept_constant={k: tuple(v) for k, v in plan.kept_constant.items()},
        kept_last={k: tuple(v) for k, v in plan.kept_last.items()},
        unsupported=unsupported,
        max_abs_diff=diff,
    )
    return new_model, report
