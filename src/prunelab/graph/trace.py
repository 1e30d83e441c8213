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

from ..hooks import eval_forward
from ..selection import CONV_TYPES, LINEAR_TYPES, PRUNABLE_TYPES

__all__ = [
    "Link",
    "Structure",
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

