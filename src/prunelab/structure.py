"""The layer graph of a chain-structured network, and dead neurons.

Dead-neuron pruning, physical surgery and the dropout rule all need to know which layer
consumes which layer's outputs. For chain networks (Linear -> Linear, Conv -> Conv,
Conv -> Flatten -> Linear, with activations, pooling, dropout and BatchNorm in between)
:func:`trace_structure` finds these links by running one example batch with forward hooks,
and, when ``torch.fx`` can trace the model, verifies each link is a real single path (no
residual add or concatenation joins it). For other models pass the links yourself.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 2))
    >>> s = trace_structure(m, torch.zeros(1, 4))
    >>> [(link.producer, link.consumer) for link in s.links], s.dropout_feeds
    ([('0', '3')], {'2': '3'})
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .hooks import eval_forward
from .masks import effective_tensor, get_mask, is_masked, set_mask
from .selection import CONV_TYPES, LINEAR_TYPES, PRUNABLE_TYPES

__all__ = [
    "DeadNeuronReport",
    "Link",
    "Structure",
    "find_dead_neurons",
    "prune_dead_neurons",
    "trace_structure",
]

# Leaf modules that act on each channel separately (or only reshape), so a channel of the
# producer stays "its" channel (or block of columns) at the consumer.
PASSTHROUGH_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Flatten,
)  # fmt: skip
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Link:
    """Layer ``consumer`` reads the outputs of layer ``producer``.

    Attributes:
        producer: name of the layer whose output units (neurons / channels) are consumed.
        consumer: name of the consuming layer.
        between: names of the leaf modules called in between (activations, pools, ...).
        block: consumer input columns per producer unit (``H*W`` after a flatten, else 1);
            unit ``j`` feeds consumer inputs ``j*block ... (j+1)*block - 1``.
    """

    producer: str
    consumer: str
    between: tuple[str, ...] = ()
    block: int = 1


@dataclass(frozen=True)
class Structure:
    """The traced call order, links and dropout placement of a model."""

    order: tuple[str, ...]
    layers: tuple[str, ...]
    links: tuple[Link, ...]
    dropout_feeds: Mapping[str, str] = field(default_factory=dict)
    verified: bool = False

    def consumers_of(self, producer: str) -> list[Link]:
        """Links whose producer is ``producer``."""
        return [link for link in self.links if link.producer == producer]

    def producer_of(self, consumer: str) -> Link | None:
        """The link feeding ``consumer``, if any."""
        return next((link for link in self.links if link.consumer == consumer), None)


def _out_units(m: nn.Module) -> int:
    return m.out_features if isinstance(m, LINEAR_TYPES) else m.out_channels


def _leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and not list(m.children())}


def _reads_metadata_only(node: torch.fx.Node) -> bool:
    if node.op == "call_method" and node.target in ("size", "dim", "numel"):
        return True
    return node.op == "call_function" and node.target is getattr and node.args[1:2] in (
        ("shape",), ("dtype",), ("device",)
    )


def _fx_single_path(model: nn.Module, links: Sequence[Link]) -> bool | None:
    """Check with torch.fx that each link is one unbranched path; None if fx cannot trace."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # fx fails on data-dependent control flow; that is not our error
        return None
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    for link in links:
        node = nodes.get(link.producer)
        if node is None:
            return False
        while True:
            # x.size(0) / x.shape in `x.view(x.size(0), -1)` read metadata, not data.
            users = [u for u in node.users if not _reads_metadata_only(u)]
            if len(users) != 1:
                return False
            node = users[0]
            if node.op == "call_module" and node.target == link.consumer:
                break
            data_inputs = [n for n in node.all_input_nodes if not _reads_metadata_only(n)]
            if len(data_inputs) != 1 or node.op == "output":
                return False
    return True


def trace_structure(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    verify: bool = True,
) -> Structure:
    """Find the producer -> consumer links of a chain network by running ``example_input``.

    Args:
        model: the network (its training mode is restored afterwards).
        example_input: one batch of valid input.
        verify: check the links with ``torch.fx`` when it can trace the model; a link that
            is not a single unbranched path (e.g. joined by a residual add) is dropped.

    Returns:
        The :class:`Structure`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        >>> trace_structure(m, torch.zeros(1, 1, 6, 6)).links[0].block
        16
    """
    leaves = _leaf_modules(model)
    calls: list[str] = []
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(name: str):
        def _h(mod: nn.Module, inp: tuple, out: object) -> None:
            calls.append(name)
            if inp and torch.is_tensor(inp[0]) and torch.is_tensor(out):
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))

        return _h

    eval_forward(model, example_input, forward_hooks=[(m, hook(n)) for n, m in leaves.items()])

    counts: dict[str, int] = {}
    for n in calls:
        counts[n] = counts.get(n, 0) + 1
    links: list[Link] = []
    dropout_feeds: dict[str, str] = {}
    last: str | None = None
    between: list[str] = []
    for name in calls:
        mod = leaves[name]
        if counts[name] > 1:  # a module used twice cannot be reasoned about channel-wise
            last, between = None, []
            continue
        if isinstance(mod, PRUNABLE_TYPES):
            link = _make_link(leaves, shapes, last, name, between) if last else None
            if link is not None:
                links.append(link)
            for b in between:
                if isinstance(leaves[b], DROPOUT_TYPES):
                    dropout_feeds[b] = name
            if last is None:  # dropout directly on the model input feeds the first layer
                for b in between:
                    if isinstance(leaves[b], DROPOUT_TYPES):
                        dropout_feeds[b] = name
            last, between = name, []
        elif isinstance(mod, PASSTHROUGH_TYPES):
            between.append(name)
        else:
            last, between = None, []
    verified = False
    if verify and links:
        ok = _fx_single_path(model, links)
        if ok is None:
            warnings.warn(
                f"torch.fx cannot trace {type(model).__name__}; layer links are inferred from "
                "the call order only (assumes a chain without residual connections)",
                stacklevel=2,
            )
        elif ok:
            verified = True
        else:
            links = [lk for lk in links if _fx_single_path(model, [lk])]
            verified = True
    layers = tuple(n for n in calls if isinstance(leaves[n], PRUNABLE_TYPES))
    return Structure(tuple(calls), layers, tuple(links), dropout_feeds, verified)


def _make_link(
    leaves: Mapping[str, nn.Module],
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
    producer: str,
    consumer: str,
    between: Sequence[str],
) -> Link | None:
    p, c = leaves[producer], leaves[consumer]
    units = _out_units(p)
    if isinstance(p, CONV_TYPES) and p.groups != 1:
        return None
    for b in between:
        bm = leaves[b]
        if isinstance(bm, BATCHNORM_TYPES) and bm.num_features != units:
            return None
    if isinstance(c, LINEAR_TYPES):
        if c.in_features == units:
            return Link(producer, consumer, tuple(between), 1)
        if isinstance(p, CONV_TYPES) and c.in_features % units == 0:
            out_shape = shapes.get(producer, ((), ()))[1]
            if len(out_shape) >= 3 and out_shape[1] == units:
                return Link(producer, consumer, tuple(between), c.in_features // units)
        return None
    if (isinstance(c, CONV_TYPES) and isinstance(p, CONV_TYPES) and c.groups == 1
            and c.in_channels == units):
        return Link(producer, consumer, tuple(between), 1)
    return None


def _columns(weight: torch.Tensor, unit: int, block: int) -> torch.Tensor:
    """The consumer's weights reading producer unit ``unit`` (shape [out, block, ...])."""
    if weight.dim() == 2:
        return weight[:, unit * block : (unit + 1) * block]
    return weight[:, unit]


@dataclass
class DeadNeuronReport:
    """Dead neurons per producer layer: found (no inputs / no outputs) and removed."""

    no_input: dict[str, list[int]] = field(default_factory=dict)
    no_output: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    kept_unfoldable: dict[str, list[int]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{layer: {"no_input": n, "no_output": n, "removed": n, "kept_unfoldable": n}}``."""
        names = sorted(set(self.no_input) | set(self.no_output) | set(self.removed))
        return {
            n: {
                "no_input": len(self.no_input.get(n, [])),
                "no_output": len(self.no_output.get(n, [])),
                "removed": len(self.removed.get(n, [])),
                "kept_unfoldable": len(self.kept_unfoldable.get(n, [])),
            }
            for n in names
        }

    @property
    def total_removed(self) -> int:
        """Number of neurons removed over all layers."""
        return sum(len(v) for v in self.removed.values())


def _unit_alive_mask(module: nn.Module) -> torch.Tensor:
    """Units (rows/filters) of ``module`` that still have at least one incoming weight."""
    w = effective_tensor(module).detach()
    return w.reshape(w.shape[0], -1).ne(0).any(dim=1)


def find_dead_neurons(model: nn.Module, structure: Structure) -> DeadNeuronReport:
    """Find units with all incoming or all outgoing weights pruned (nothing is changed).

    A unit whose bias was already masked to zero and whose weights are all pruned is
    considered already removed and not reported again.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> s = trace_structure(m, torch.zeros(1, 2))
        >>> with torch.no_grad():
        ...     m[0].weight[1] = 0
        >>> find_dead_neurons(m, s).no_input
        {'0': [1]}
    """
    mods = dict(model.named_modules())
    report = DeadNeuronReport()
    for link in structure.links:
        p, c = mods[link.producer], mods[link.consumer]
        has_in = _unit_alive_mask(p)
        cw = effective_tensor(c).detach()
        units = has_in.numel()
        has_out = torch.stack(
            [_columns(cw, j, link.block).ne(0).any() for j in range(units)]
        )
        gone = _already_removed(p, has_in, has_out)
        no_in = [j for j in range(units) if not has_in[j] and not gone[j]]
        no_out = [j for j in range(units) if not has_out[j] and not gone[j]]
        if no_in:
            report.no_input.setdefault(link.producer, []).extend(no_in)
        if no_out:
            report.no_output.setdefault(link.producer, []).extend(no_out)
    return report


def _already_removed(p: nn.Module, has_in: torch.Tensor, has_out: torch.Tensor) -> torch.Tensor:
    if getattr(p, "bias", None) is None:
        bias_zero = torch.ones_like(has_in)
    else:
        bias_zero = effective_tensor(p, "bias").detach().eq(0)
    return ~has_in & ~has_out & bias_zero


def _consumer_inputs(model: nn.Module, consumer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The consumer's input on batch ``x`` (eval mode)."""
    box: list[torch.Tensor] = []
    eval_forward(model, x, pre_hooks=[(consumer, lambda m, inp: box.append(inp[0].detach()))])
    return box[0]


def prune_dead_neurons(
    model: nn.Module,
    structure: Structure,
    example_input: torch.Tensor,
    *,
    max_rounds: int = 10,
) -> DeadNeuronReport:
    """Prune dead neurons completely, keeping the network's function unchanged.

    A neuron with no outgoing weights is unused: its incoming weights and bias are masked.
    A neuron with no incoming weights outputs a constant (its activated bias); that constant's
    contribution is folded into the consumer's bias before the neuron's outgoing weights and
    bias are masked, so outputs do not change. Where folding is impossible (consumer without
    bias, or a padded convolution whose borders would see a different constant) the neuron is
    kept and reported in ``kept_unfoldable``. Removing neurons can kill others, so this runs
    until nothing changes.

    Args:
        model: the pruned network (modified in place).
        structure: from :func:`trace_structure`.
        example_input: a batch used to read the constant outputs of input-dead neurons.
        max_rounds: bound on the fixed-point iterations.

    Returns:
        The :class:`DeadNeuronReport` accumulated over all rounds.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> s = trace_structure(m, torch.zeros(1, 2))
        >>> _ = set_mask(m[2], "weight", torch.tensor([[1.0, 0.0, 1.0]]))
        >>> prune_dead_neurons(m, s, torch.zeros(1, 2)).removed
        {'0': [1]}
    """
    mods = dict(model.named_modules())
    total = DeadNeuronReport()
    for _ in range(max_rounds):
        found = find_dead_neurons(model, structure)
        changed = False
        for link in structure.links:
            p, c = mods[link.producer], mods[link.consumer]
            no_in = found.no_input.get(link.producer, [])
            no_out = set(found.no_output.get(link.producer, []))
            dead = sorted(set(no_in) | no_out)
            if not dead:
                continue
            removable = _fold_constants(model, p, c, link, [j for j in no_in if j not in no_out],
                                        example_input, total)
            removable |= no_out
            if not removable:
                continue
            _mask_units(p, c, link, sorted(removable))
            total.removed.setdefault(link.producer, []).extend(sorted(removable))
            changed = True
        for k, v in found.no_input.items():
            total.no_input.setdefault(k, []).extend(v)
        for k, v in found.no_output.items():
            total.no_output.setdefault(k, []).extend(v)
        if not changed:
            break
    for d in (total.no_input, total.no_output, total.removed, total.kept_unfoldable):
        for k in d:
            d[k] = sorted(set(d[k]))
    return total


def _fold_constants(
    model: nn.Module,
    p: nn.Module,
    c: nn.Module,
    link: Link,
    units: list[int],
    x: torch.Tensor,
    report: DeadNeuronReport,
) -> set[int]:
    """Fold the constant outputs of input-dead ``units`` into ``c``'s bias; return the folded."""
    if not units:
        return set()
    inputs = _consumer_inputs(model, c, x)
    cw = effective_tensor(c).detach()
    done: set[int] = set()
    for j in units:
        if isinstance(c, LINEAR_TYPES):
            flat = inputs.reshape(inputs.shape[0], -1)
            v = flat[:, j * link.block : (j + 1) * link.block]
            const = v.mean(dim=0)
            delta = _columns(cw, j, link.block) @ const
        else:
            v = inputs[:, j]
            const = v.mean()
            padded = any(int(pad) != 0 for pad in _as_tuple(getattr(c, "padding", 0)))
            if padded and bool(const != 0):
                report.kept_unfoldable.setdefault(link.producer, []).append(j)
                continue
            delta = cw[:, j].reshape(cw.shape[0], -1).sum(dim=1) * const
        if not torch.allclose(v, v.reshape(-1)[0].expand_as(v) if v.numel() else v, atol=1e-6):
            # Not constant: the unit is not input-dead in effect (e.g. BatchNorm in training).
            report.kept_unfoldable.setdefault(link.producer, []).append(j)
            continue
        if bool(delta.abs().max() > 0) if delta.numel() else False:
            if getattr(c, "bias", None) is None:
                report.kept_unfoldable.setdefault(link.producer, []).append(j)
                continue
            with torch.no_grad():
                raw = c._parameters["bias_orig"] if is_masked(c, "bias") else c.bias
                raw.add_(delta.to(raw.dtype))
        done.add(j)
    return done


def _as_tuple(v: object) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _mask_units(p: nn.Module, c: nn.Module, link: Link, units: list[int]) -> None:
    """Mask producer rows (weights and bias) and consumer columns of ``units``."""
    idx = torch.tensor(units, dtype=torch.long)
    pm = get_mask(p)
    pmask = pm.clone() if pm is not None else torch.ones_like(p.weight)
    pmask[idx] = 0
    set_mask(p, "weight", pmask)
    if getattr(p, "bias", None) is not None:
        bm = get_mask(p, "bias")
        bmask = bm.clone() if bm is not None else torch.ones_like(effective_tensor(p, "bias"))
        bmask[idx] = 0
        set_mask(p, "bias", bmask)
    cm = get_mask(c)
    cmask = cm.clone() if cm is not None else torch.ones_like(effective_tensor(c))
    for j in units:
        _columns(cmask, j, link.block).zero_()
    set_mask(c, "weight", cmask)
