"""Structured pruning criteria: which whole filters / channels / neurons to drop.

Three criteria studied by Liu et al. 2019 ("Rethinking the Value of Network Pruning"), each a
registered :class:`ChannelCriterion` with a one-line function beside it:

* :class:`L1Filter` (``"l1_filter"``), :func:`l1_filter_keep`: L1-norm filter pruning (Li et
  al. 2017): per layer, drop the fraction ``ratio`` of filters with the smallest ``sum |w|``.
* :class:`BNScale` (``"bn_scale"``, alias ``"slimming"``), :func:`slimming_keep` and
  :func:`slimming_penalty`: Network Slimming (Liu et al. 2017): an L1 penalty on BatchNorm
  scale factors during training, then one global threshold on ``|gamma|`` over all selected
  layers, with a per-layer floor (:func:`prunelab.allocation.global_keep`).
* :class:`ThiNet` (``"thinet"``), :func:`thinet_keep`: ThiNet (Luo et al. 2017): greedily drop
  the input channels of the *next* layer whose summed contribution to its output is smallest.

:func:`channel_keep` runs any channel criterion: it resolves the layers, gives each one a
:class:`~prunelab.criteria.base.Context` (model, structure, example input, seed, captured
inputs) and allocates per layer or under one global threshold, with per-layer floors of
``max(min_channels, ceil(min_fraction * channels))`` (so a layer is never emptied).

Each criterion returns a keep-mask per layer, ``{layer: BoolTensor[out_units]}``, and changes
nothing (except ThiNet's optional rescaling). :func:`apply_channel_masks` then masks the
removed units everywhere they live (filter rows and bias, BatchNorm scale and shift, the
consumer's input columns) through :func:`prunelab.masks.set_mask`, so they stay zero during
fine-tuning and the masked model computes exactly what the physically smaller model from
:func:`prunelab.surgery.compact_model` computes.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.graph import trace_structure
    >>> from prunelab.surgery import compact_model
    >>> from prunelab.channel_masks import apply_channel_masks
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
    ...                   nn.Conv2d(8, 4, 3)).eval()
    >>> x = torch.randn(2, 1, 8, 8)
    >>> s = trace_structure(m, x)
    >>> keep = l1_filter_keep(m, 0.5, layers="0")
    >>> _ = apply_channel_masks(m, keep, s)
    >>> small, report = compact_model(m, x, structure=s, keep=keep)
    >>> small[0].out_channels, small[1].num_features, small[3].in_channels
    (4, 4, 4)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..allocation import global_keep, keep_count, layer_amounts
from ..distributed import decide_on_rank0, is_distributed
from ..graph import (
    BATCHNORM_TYPES,
    Link,
    Structure,
    following_batchnorms,
    surgery_blocker,
    surgery_links,
    trace_structure,
)
from ..hooks import eval_forward
from ..masks import effective_tensor, get_mask, is_masked, set_mask
from ..selection import (
    CONV_TYPES,
    LINEAR_TYPES,
    LayerValue,
    out_units,
    select_layers,
)
from .base import Context, Criterion, checked_scores, layer_mask
from .registry import as_criterion, register_criterion
from .unstructured import layer_seed

__all__ = [
    "CHANNEL_SCOPES",
    "BNScale",
    "ChannelCriterion",
    "L1Filter",
    "ThiNet",
    "channel_keep",
    "l1_filter_keep",
    "slimming_keep",
    "slimming_penalty",
    "thinet_keep",
    "thinet_select",
]

CHANNEL_SCOPES: tuple[str, ...] = ("layer", "global")


def _check_number(value: object, what: str, low: float, high: float, high_ok: bool) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    v = math.nan if bad else float(value)
    upper = v <= high if high_ok else v < high
    if bad or math.isnan(v) or not (v >= low and upper):
        raise ValueError(
            f"{what}={value!r} is out of range; allowed: [{low}, {high}{']' if high_ok else ')'}"
        )
    return v



class ChannelCriterion(Criterion):
    """A criterion over the output units (filters, channels, neurons) of a layer.

    Scores and masks have shape ``[out_units]``; ``tensor`` is the layer's effective weight.
    Subclasses say which layers they apply to (:meth:`candidates`, :meth:`unusable`), their
    default allocation (``default_scope``) and what :func:`channel_keep` must provide
    (``needs_structure``, ``needs_example_input``). Ties: the earlier unit is dropped first.
    """

    granularity = "channel"
    ties = "earlier_dropped"
    default_scope: ClassVar[str] = "layer"
    needs_structure: ClassVar[bool] = False
    needs_example_input: ClassVar[bool] = False

    def mask_shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        """``(out_units,)``."""
        return (int(tensor.shape[0]),)

    def candidates(self, model: nn.Module, structure: Structure | None) -> list[str]:
        """The layers used when none are given: every conv layer here."""
        return [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)]

    def unusable(self, model: nn.Module, structure: Structure | None, layer: str) -> str | None:
        """Why an explicitly selected layer cannot be used (a full sentence), or None."""
        return None


def _resolve_layers(
    model: nn.Module,
    criterion: ChannelCriterion,
    structure: Structure | None,
    layers: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
) -> list[str]:
    """The selected layers: ``layers`` (each checked) or the criterion's candidates."""
    if layers is None:
        excl = [exclude] if isinstance(exclude, str) else list(exclude or [])
        default = criterion.candidates(model, structure)
        names = [n for n in default if not any(fnmatch.fnmatchcase(n, p) for p in excl)]
        if excl:
            select_layers(model, None, exclude=excl)  # validates the exclude patterns
    else:
        names = list(select_layers(model, layers, exclude=exclude))
        for n in names:
            reason = criterion.unusable(model, structure, n)
            if reason:
                raise ValueError(reason)
    if not names:
        raise ValueError("no layer selected; check the layers/exclude patterns")
    return names


def channel_keep(
    model: nn.Module,
    criterion: str | ChannelCriterion,
    ratio: LayerValue,
    *,
    structure: Structure | None = None,
    example_input: torch.Tensor | None = None,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    scope: str | None = None,
    min_channels: int = 1,
    min_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Which output units of each selected layer to keep, by a channel criterion.

    ``scope="layer"``: each layer drops ``round(ratio * units)`` units (``ratio`` may be a
    ``{pattern: ratio}`` mapping). ``scope="global"``: ``round(ratio * total)`` units are
    dropped over all selected layers under one threshold on the scores (water-filling,
    :func:`prunelab.allocation.global_keep`). Either way every layer keeps at least
    ``max(min_channels, ceil(min_fraction * units))`` units: its highest-scoring ones.

    Args:
        model: the network (not changed, except by ThiNet's ``rescale``).
        criterion: a registered channel criterion name or instance.
        ratio: fraction of units dropped, in ``[0, 1)``.
        structure: from :func:`prunelab.graph.trace_structure` (traced from
            ``example_input`` when needed and not given).
        example_input: a batch of real inputs (needed by ThiNet).
        layers: glob pattern(s) of layers; the criterion's candidates when None.
        exclude: glob pattern(s) to leave out.
        scope: ``"layer"`` or ``"global"``; the criterion's ``default_scope`` when None.
        min_channels: per-layer floor, an integer ``>= 1``.
        min_fraction: per-layer floor as a fraction of the layer's units, in ``[0, 1]``.
        seed: run seed; each layer's context gets ``layer_seed(seed, layer)``.

    Returns:
        ``{layer: BoolTensor[out_units]}``, True for the units kept.

    In a process group with several ranks, rank 0 decides (a data-dependent criterion such
    as ThiNet sees rank 0's ``example_input``) and every rank returns its decision.

    Raises:
        ValueError: unknown criterion or scope, a value out of range, bad patterns, a layer
            the criterion cannot use, or floors that make a global ``ratio`` unreachable.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(1, 4, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.copy_(torch.tensor([3.0, -1.0, 2.0, 0.5]).view(4, 1, 1, 1))
        >>> channel_keep(nn.Sequential(conv), "l1_filter", 0.5)["0"].tolist()
        [True, False, True, False]
    """
    args = (model, criterion, ratio)
    kwargs = {"structure": structure, "example_input": example_input, "layers": layers,
              "exclude": exclude, "scope": scope, "min_channels": min_channels,
              "min_fraction": min_fraction, "seed": seed}
    if not is_distributed():
        return _channel_keep_local(*args, **kwargs)
    keep = decide_on_rank0(
        lambda: {n: k.cpu() for n, k in _channel_keep_local(*args, **kwargs).items()},
        errors=(ValueError, TypeError))
    mods = dict(model.named_modules())
    return {n: k.to(effective_tensor(mods[n]).device) for n, k in keep.items()}


def _channel_keep_local(
    model: nn.Module,
    criterion: str | ChannelCriterion,
    ratio: LayerValue,
    *,
    structure: Structure | None = None,
    example_input: torch.Tensor | None = None,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    scope: str | None = None,
    min_channels: int = 1,
    min_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """:func:`channel_keep` in this process alone."""
    crit = as_criterion(criterion, granularity="channel")
    if not isinstance(crit, ChannelCriterion):
        raise TypeError(f"channel criterion {crit.label!r} must subclass ChannelCriterion")
    scope = crit.default_scope if scope is None else scope
    if scope not in CHANNEL_SCOPES:
        raise ValueError(f"scope={scope!r} is unknown; allowed: {CHANNEL_SCOPES}")
    if scope == "global":
        if not crit.has_scores():
            raise ValueError(
                f"scope 'global' needs a criterion with scores; {crit.label!r} only computes "
                "masks (use scope 'layer')"
            )
        if isinstance(ratio, Mapping):
            raise ValueError(
                f"scope 'global' ({crit.label}) uses one global ratio over all selected "
                f"layers; got a mapping {dict(ratio)!r}"
            )
        r = _check_number(ratio, "ratio", 0.0, 1.0, False)
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels={min_channels!r} is out of range; allowed: integer >= 1")
    frac = _check_number(min_fraction, "min_fraction", 0.0, 1.0, True)
    if structure is None and (crit.needs_structure or crit.needs_example_input):
        if example_input is None:
            raise ValueError(
                f"criterion {crit.label!r} needs structure= (prunelab.graph.trace_structure) "
                "or example_input="
            )
        structure = trace_structure(model, example_input)
    if crit.needs_example_input and example_input is None:
        raise ValueError(f"criterion {crit.label!r} needs example_input= (a batch of inputs)")
    names = _resolve_layers(model, crit, structure, layers, exclude)
    mods = dict(model.named_modules())
    tensors = {n: effective_tensor(mods[n]).detach() for n in names}
    ctx = {
        n: Context(layer=n, module=mods[n], model=model, structure=structure,
                   example_input=example_input, seed=layer_seed(seed, n))
        for n in names
    }  # fmt: skip
    needed = [m for n in names for m in crit.inputs_needed(ctx[n])]
    if needed:  # one forward pass for all layers, before any of them changes
        seen = MappingProxyType(_module_inputs(model, needed, example_input))
        ctx = {n: replace(c, activations=seen) for n, c in ctx.items()}
    units = {n: crit.mask_shape(tensors[n])[0] for n in names}
    floors = {n: min(u, max(min_channels, math.ceil(frac * u))) for n, u in units.items()}
    if scope == "layer":
        ratios = layer_amounts(ratio, names, "sparsity", what="ratio")
        return {n: layer_mask(crit, tensors[n], ratios[n], None, ctx[n], floors[n]) for n in names}
    total = sum(units.values())
    k = round(r * total)
    capacity = total - sum(floors.values())
    if k > capacity:
        raise ValueError(
            f"ratio={ratio!r} drops {k} of {total} channels, but the per-layer floors "
            f"(min_channels={min_channels}, min_fraction={min_fraction}) keep at least "
            f"{total - capacity}; allowed: ratio <= {capacity / total:.4f}"
        )
    scores = {n: checked_scores(crit, tensors[n], ctx[n]) for n in names}
    return global_keep(scores, total - k, floors=floors, ties=crit.ties)


# ----------------------------------------------------------------------------- L1-norm filters


@register_criterion("l1_filter")
@dataclass(frozen=True)
class L1Filter(ChannelCriterion):
    """Li et al. 2017: a filter's score is its L1 norm ``sum |w|`` (float64), per layer.

    Example:
        >>> import torch
        >>> L1Filter().scores(torch.tensor([[1.0, -2.0], [0.5, 0.5]]), Context()).tolist()
        [3.0, 1.0]
    """

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """``sum |w|`` over each output unit's weights, on the CPU."""
        return tensor.reshape(tensor.shape[0], -1).abs().double().sum(dim=1).cpu()


def l1_filter_keep(
    model: nn.Module,
    ratio: LayerValue,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """L1-norm filter pruning (Li et al. 2017): drop each layer's weakest filters.

    For each selected layer, the ``round(ratio * filters)`` filters (output channels) with the
    smallest L1 norm ``sum |w|`` over ``in x kh x kw`` are dropped (at least one filter stays);
    ties go to the lower index. Norms are taken over the effective (masked) weights.

    Args:
        model: the network (not changed).
        ratio: fraction of filters to drop, one number or ``{pattern: ratio}``; in ``[0, 1)``.
        layers: glob pattern(s) of layers; every conv layer when ``None`` (a Linear layer
            selected explicitly is treated the same way, a neuron's weights being its filter).
        exclude: glob pattern(s) to leave out.

    Returns:
        ``{layer: BoolTensor[out_units]}``, True for the filters kept.

    Raises:
        ValueError: a ratio out of range, or a pattern that matches no layer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(1, 3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.copy_(torch.tensor([3.0, -1.0, 2.0]).view(3, 1, 1, 1))
        >>> l1_filter_keep(nn.Sequential(conv), 0.34)["0"].tolist()
        [True, False, True]
    """
    return channel_keep(model, L1Filter(), ratio, layers=layers, exclude=exclude)


# ----------------------------------------------------------------------------- Network Slimming


def _batchnorms(model: nn.Module, patterns: str | Sequence[str] | None) -> dict[str, nn.Module]:
    bns = {n: m for n, m in model.named_modules() if isinstance(m, BATCHNORM_TYPES) and m.affine}
    if patterns is None:
        return bns
    chosen: dict[str, nn.Module] = {}
    for pat in [patterns] if isinstance(patterns, str) else list(patterns):
        hits = [n for n in bns if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(
                f"pattern {pat!r} matches no affine BatchNorm module; they are: {', '.join(bns)}"
            )
        chosen.update({n: bns[n] for n in hits})
    return {n: m for n, m in bns.items() if n in chosen}


def slimming_penalty(
    model: nn.Module, strength: float, *, layers: str | Sequence[str] | None = None
) -> int:
    """Add the Network Slimming sub-gradient ``strength * sign(gamma)`` to BatchNorm scales.

    Call it after ``loss.backward()`` and before ``optimizer.step()``: it is the gradient of
    ``strength * sum |gamma|`` (an L1 penalty on the BatchNorm scale factors, Liu et al.
    2017, who use ``strength`` = 1e-4 to 1e-5). A masked scale (``weight_orig`` zero) gets
    no push (``sign(0) = 0``).

    Args:
        model: the network.
        strength: the L1 coefficient, ``>= 0``.
        layers: glob pattern(s) over BatchNorm module names; every affine BatchNorm if None.

    Returns:
        The number of BatchNorm modules whose gradient was changed.

    Raises:
        ValueError: ``strength`` out of range, or a pattern matching no BatchNorm.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> bn = nn.BatchNorm1d(2)
        >>> with torch.no_grad():
        ...     _ = bn.weight.copy_(torch.tensor([0.5, -2.0]))
        >>> slimming_penalty(bn, 1e-2), bn.weight.grad.tolist()
        (1, [0.009999999776482582, -0.009999999776482582])
    """
    s = _check_number(strength, "strength", 0.0, math.inf, False)
    count = 0
    for _, bn in _batchnorms(model, layers).items():
        p = bn._parameters["weight_orig"] if is_masked(bn, "weight") else bn.weight
        push = s * torch.sign(p.detach())
        if p.grad is None:
            p.grad = push.clone()
        else:
            p.grad.add_(push)
        count += 1
    return count


@register_criterion("bn_scale", "slimming")
@dataclass(frozen=True)
class BNScale(ChannelCriterion):
    """Network Slimming (Liu et al. 2017): a channel's score is ``|gamma|`` of its BatchNorm.

    Applies to Linear/Conv layers followed by a BatchNorm; by default one global threshold
    over all of them (``default_scope = "global"``).
    """

    default_scope = "global"
    needs_structure = True

    def candidates(self, model: nn.Module, structure: Structure | None) -> list[str]:
        """Every Linear/Conv layer followed by a BatchNorm (in traced order)."""
        found = [
            n for n in dict.fromkeys(structure.layers) if following_batchnorms(model, structure, n)
        ]
        if not found:
            raise ValueError("no Linear/Conv layer of the model is followed by a BatchNorm")
        return found

    def unusable(self, model: nn.Module, structure: Structure | None, layer: str) -> str | None:
        """A layer without a following BatchNorm cannot be ranked."""
        if layer in structure.layers and following_batchnorms(model, structure, layer):
            return None
        units = out_units(dict(model.named_modules())[layer])
        return (
            f"layer {layer!r} is not followed by a BatchNorm with {units} features; "
            "Network Slimming ranks channels by BatchNorm scale factors"
        )

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """``|gamma|`` (effective, float64, CPU) of the layer's first following BatchNorm."""
        bn_name = following_batchnorms(context.model, context.structure, context.layer)[0]
        bn = dict(context.model.named_modules())[bn_name]
        return effective_tensor(bn, "weight").detach().abs().double().cpu()


def slimming_keep(
    model: nn.Module,
    ratio: float,
    structure: Structure,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    min_channels: int = 1,
    min_fraction: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Network Slimming channel selection: one global threshold on BatchNorm ``|gamma|``.

    All channels of the selected layers (Linear/Conv layers followed by a BatchNorm) are
    ranked by the ``|gamma|`` of their BatchNorm; the ``round(ratio * total)`` smallest are
    dropped (ties: earlier layer, then lower index), except that every layer keeps at least
    ``max(min_channels, ceil(min_fraction * channels))`` channels: where a layer reaches its
    floor, the next-smallest channels of the other layers are dropped instead, so the total
    dropped is exact.

    Args:
        model: the network, trained with :func:`slimming_penalty` (not changed).
        ratio: global fraction of the selected channels to drop, in ``[0, 1)``.
        structure: from :func:`prunelab.graph.trace_structure` (finds each BatchNorm).
        layers: glob pattern(s) over Linear/Conv layer names; all layers followed by a
            BatchNorm when ``None``.
        exclude: glob pattern(s) to leave out.
        min_channels: per-layer floor, ``>= 1``.
        min_fraction: per-layer floor as a fraction of the layer's channels, in ``[0, 1]``.

    Returns:
        ``{layer: BoolTensor[out_units]}``, keyed by the Linear/Conv layer (not the BatchNorm).

    Raises:
        ValueError: a value out of range, a selected layer without BatchNorm, or floors that
            make ``ratio`` unreachable (the message gives the largest reachable ratio).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.graph import trace_structure
        >>> m = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
        >>> with torch.no_grad():
        ...     _ = m[1].weight.copy_(torch.tensor([0.1, 2.0, 0.05, 1.0]))
        >>> slimming_keep(m, 0.5, trace_structure(m, torch.zeros(2, 2)))["0"].tolist()
        [False, True, False, True]
    """
    return channel_keep(
        model, BNScale(), ratio, structure=structure, layers=layers, exclude=exclude,
        scope="global", min_channels=min_channels, min_fraction=min_fraction,
    )


# ----------------------------------------------------------------------------- ThiNet


def thinet_select(contributions: torch.Tensor, n_remove: int) -> list[int]:
    """ThiNet's greedy channel selection (Luo et al. 2017, Algorithm 1).

    ``contributions[i, c]`` is what input channel ``c`` adds to sampled output value ``i``
    of the next layer. Channels are removed one at a time, each time the one that keeps
    ``sum_i (sum_{c in removed} contributions[i, c])^2`` smallest (ties: lower index).

    Args:
        contributions: ``[samples, channels]`` tensor.
        n_remove: how many channels to remove, in ``[0, channels]``.

    Returns:
        The removed channel indices, in the order chosen.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, -0.5, 0.6], [1.0, -0.5, 0.4]])
        >>> thinet_select(x, 2)  # the smallest first, then the one that cancels it best
        [1, 2]
    """
    if contributions.dim() != 2:
        raise ValueError(f"contributions must be [samples, channels], got {contributions.dim()}-D")
    channels = contributions.shape[1]
    if isinstance(n_remove, bool) or not isinstance(n_remove, int) or not 0 <= n_remove <= channels:
        raise ValueError(f"n_remove={n_remove!r} is out of range; allowed: 0..{channels}")
    x = contributions.detach().double()
    sq = (x * x).sum(dim=0)
    s = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    free = torch.ones(channels, dtype=torch.bool, device=x.device)
    removed: list[int] = []
    for _ in range(n_remove):
        # ||s + x_c||^2 - ||s||^2 for every candidate c
        cost = 2.0 * (s @ x) + sq
        cost[~free] = math.inf
        c = int(torch.argmin(cost))
        removed.append(c)
        free[c] = False
        s += x[:, c]
    return removed


def _contributions(
    consumer: nn.Module, link: Link, inputs: torch.Tensor, samples: int, gen: torch.Generator
) -> torch.Tensor:
    """``[samples, units]``: each producer unit's share of randomly sampled consumer outputs."""
    w = effective_tensor(consumer).detach()
    units = w.shape[1] // link.block if isinstance(consumer, LINEAR_TYPES) else w.shape[1]
    if isinstance(consumer, LINEAR_TYPES):
        x = inputs.reshape(-1, inputs.shape[-1])
        n = torch.randint(x.shape[0], (samples,), generator=gen)
        f = torch.randint(w.shape[0], (samples,), generator=gen)
        xs = x[n.to(x.device)].reshape(samples, units, -1)
        ws = w[f.to(w.device)].reshape(samples, units, -1)
        return (xs.double() * ws.double()).sum(dim=2)
    if not isinstance(consumer, nn.Conv1d | nn.Conv2d):
        raise ValueError(
            f"ThiNet supports Linear, Conv1d and Conv2d consumers, not {type(consumer).__name__}"
        )
    x, kernel = inputs, consumer.kernel_size
    stride, dilation = consumer.stride, consumer.dilation
    if isinstance(consumer, nn.Conv1d):  # as a 2-D convolution of height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    pad = consumer._reversed_padding_repeated_twice
    if any(pad):
        mode = "constant" if consumer.padding_mode == "zeros" else consumer.padding_mode
        x = F.pad(x, list(pad) + [0, 0] * (x.dim() - 2 - len(pad) // 2), mode=mode)
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [N, units*K, L]
    n = torch.randint(cols.shape[0], (samples,), generator=gen).to(cols.device)
    f = torch.randint(w.shape[0], (samples,), generator=gen).to(w.device)
    pos = torch.randint(cols.shape[2], (samples,), generator=gen).to(cols.device)
    patches = cols[n, :, pos].reshape(samples, units, -1)
    return (patches.double() * w[f].reshape(samples, units, -1).double()).sum(dim=2)


def _module_inputs(
    model: nn.Module, names: Sequence[str], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    box: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def _h(mod: nn.Module, inp: tuple) -> None:
            box.setdefault(name, inp[0].detach())

        return _h

    eval_forward(model, x, pre_hooks=[(mods[n], hook(n)) for n in dict.fromkeys(names)])
    return box


def _scale_columns(consumer: nn.Module, units: int, scale: torch.Tensor) -> None:
    raw = consumer._parameters["weight_orig"] if is_masked(consumer) else consumer.weight
    with torch.no_grad():
        s = scale.to(raw.dtype).to(raw.device).view(1, units, 1)
        raw.copy_((raw.reshape(raw.shape[0], units, -1) * s).reshape(raw.shape))
    if is_masked(consumer):
        set_mask(consumer, "weight", get_mask(consumer))  # refresh the cached weight


def _links(structure: Structure) -> dict[str, Link]:
    return {lk.producer: lk for lk in surgery_links(structure)}


@register_criterion("thinet")
@dataclass(frozen=True)
class ThiNet(ChannelCriterion):
    """ThiNet (Luo et al. 2017): drop the channels the next layer misses least (greedy).

    A mask criterion (no scores): each layer's mask comes from :func:`thinet_select` on
    ``samples`` sampled outputs of its consumer, drawn with ``context.seed``; the consumer's
    input comes from ``context.activations`` (captured before any layer changed).

    Args:
        samples: sampled outputs per layer, an integer ``>= 1``.
        rescale: also fit the consumer's kept input channels by least squares and scale its
            weights (changes the model; ThiNet's optional last step).

    Raises:
        ValueError: ``samples`` out of range.
        TypeError: ``rescale`` is not a bool.
    """

    samples: int = 2048
    rescale: bool = False
    needs_structure = True
    needs_example_input = True

    def __post_init__(self) -> None:
        s = self.samples
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"samples={s!r} is out of range; allowed: integer >= 1")
        if not isinstance(self.rescale, bool):
            raise TypeError(f"rescale={self.rescale!r} must be a bool")

    def candidates(self, model: nn.Module, structure: Structure | None) -> list[str]:
        """Every linked producer (a layer with a single consumer)."""
        return list(_links(structure))

    def unusable(self, model: nn.Module, structure: Structure | None, layer: str) -> str | None:
        """A layer without a (single) consumer has nothing to reconstruct."""
        if layer in _links(structure):
            return None
        reason = surgery_blocker(model, structure, layer) or "it has none"
        return f"ThiNet needs the layer that consumes the channels of {layer!r}, but {reason}"

    def inputs_needed(self, context: Context) -> tuple[str, ...]:
        """The consumer of the layer."""
        return (_links(context.structure)[context.layer].consumer,)

    def compute_mask(
        self,
        tensor: torch.Tensor,
        amount: float,
        current: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """Greedy selection of ``round(amount * units)`` channels (at least one stays)."""
        lk = _links(context.structure)[context.layer]
        consumer = dict(context.model.named_modules())[lk.consumer]
        units = out_units(context.module)
        gen = torch.Generator().manual_seed(context.seed)
        contrib = _contributions(consumer, lk, context.activations[lk.consumer],
                                 self.samples, gen)
        removed = thinet_select(contrib, units - max(keep_count(units, amount), 1))
        keep = torch.ones(units, dtype=torch.bool)
        keep[removed] = False
        if self.rescale and removed:
            y = contrib.sum(dim=1, keepdim=True)
            w = torch.linalg.lstsq(contrib[:, keep.to(contrib.device)], y).solution.flatten()
            scale = torch.ones(units, dtype=torch.float64)
            scale[keep] = w.cpu()
            _scale_columns(consumer, units, scale)
        return keep


def thinet_keep(
    model: nn.Module,
    ratio: LayerValue,
    example_input: torch.Tensor,
    structure: Structure,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    samples: int = 2048,
    seed: int = 0,
    rescale: bool = False,
) -> dict[str, torch.Tensor]:
    """ThiNet (Luo et al. 2017): drop the channels the next layer misses least.

    For each selected layer ``L`` and its consumer ``C``: ``C``'s input is collected on
    ``example_input`` (eval mode, one forward pass of the model as it is now, for all layers);
    ``samples`` random outputs of ``C`` (image, filter, position) are split into the
    contributions of ``L``'s channels (bias left out: it does not depend on the choice), and
    :func:`thinet_select` greedily picks the ``round(ratio * channels)`` channels whose summed
    contribution has the smallest squared norm.

    Args:
        model: the network.
        ratio: fraction of channels to drop, one number or ``{pattern: ratio}``, in ``[0, 1)``.
        example_input: a batch of real inputs (keep it modest: the consumer input is unfolded).
        structure: from :func:`prunelab.graph.trace_structure`.
        layers: glob pattern(s); every linked producer (a layer with a consumer) when None.
        exclude: glob pattern(s) to leave out.
        samples: sampled outputs per layer.
        seed: sampling seed (each layer draws from its own seeded stream).
        rescale: also fit ``C``'s kept input channels by least squares, ``min_w ||y - X w||``
            over the samples, and scale ``C``'s weights by ``w`` (changes the model; ThiNet's
            optional last step).

    Returns:
        ``{layer: BoolTensor[out_units]}``, True for the channels kept.

    Raises:
        ValueError: a ratio out of range, a bad pattern, ``samples < 1``, or a selected
            layer without consumer (the message says why).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.graph import trace_structure
        >>> m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.eye(3))
        ...     _ = m[0].bias.zero_()
        ...     _ = m[2].weight.copy_(torch.tensor([[1.0, 1e-3, 1.0]]))
        >>> x = torch.rand(64, 3) + 0.1
        >>> thinet_keep(m, 0.34, x, trace_structure(m, x))["0"].tolist()
        [True, False, True]
    """
    return channel_keep(
        model, ThiNet(samples=samples, rescale=rescale), ratio, structure=structure,
        example_input=example_input, layers=layers, exclude=exclude, seed=seed,
    )
