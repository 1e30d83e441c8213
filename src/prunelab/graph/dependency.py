"""Which channels of a model must be pruned together: the channel dependency graph.

:func:`trace_channels` traces the model with ``torch.fx`` and runs the graph on an example
input with, beside each real tensor, a label tensor of channel variables
(:mod:`prunelab.graph.labels`). Every Conv / Linear / Embedding output creates fresh
variables; each operation moves them the way it moves data (concatenation offsets, flatten
blocks, permutes, chunks, channel shuffles), joins unify them (a residual add ties its
inputs' channels; a grouped conv ties in- and outputs by group; attention ties the channels of
one head), and anything the tracer cannot follow pins them: such channels are never pruned, so
an unknown operation can make pruning less aggressive but never wrong. The model's outputs are
pinned (the classifier keeps its classes).

The result, a :class:`ChannelGraph`, lists :class:`ChannelGroup` s: sets of tensors slices
(conv filters, BatchNorm/LayerNorm entries, consumer input columns, attention head rows, a
class token's entries) that are removed together, one *unit* at a time.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Res(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
    ...         self.c, self.fc = nn.Conv2d(8, 4, 1), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         x = self.a(x)
    ...         x = x + self.b(x).relu()
    ...         return self.fc(self.c(x).mean((2, 3)))
    >>> g = trace_channels(Res(), torch.zeros(1, 3, 8, 8))
    >>> [(grp.units, sorted({m.module for m in grp.members})) for grp in g.groups]
    [(8, ['a', 'b', 'c']), (4, ['c', 'fc'])]
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

from ..errors import one_line
from .groups import ChannelGraph, ChannelGroup, GraphError, Member, resolve_groups
from .propagate import Labeler, SizeAttr, Tracer
from .resize import SIZE_ATTRIBUTES, class_path

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "GraphError",
    "Member",
    "trace_channels",
]


def trace_channels(
    model: nn.Module,
    example_input: torch.Tensor | tuple | Mapping[str, Any],
    *,
    ignore: str | Sequence[str] = (),
    leaf_modules: Sequence[str | type[nn.Module]] = (),
) -> ChannelGraph:
    """Trace ``model`` and group the channels that must be removed together.

    Args:
        model: the network (not modified; run in eval mode without gradients).
        example_input: one valid input (a tensor, a tuple of positional inputs, or a dict of
            keyword inputs). Small spatial sizes are fine: labels only need the layout.
        ignore: glob patterns of module names whose output channels (and norm entries) are
            never pruned; their input columns still follow the layers that feed them.
        leaf_modules: module names (glob) or types that ``torch.fx`` should not trace into;
            their channels are pinned unless their type is one the tracer knows.

    Returns:
        The :class:`ChannelGraph`.

    Raises:
        GraphError: ``torch.fx`` cannot trace the model (the message names the failure).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        ...                   nn.Linear(4 * 4 * 4, 2))
        >>> g = trace_channels(m, torch.zeros(1, 1, 6, 6))
        >>> [(mem.tensor, mem.dim, int(p.shape[1])) for mem, p in zip(g.groups[0].members,
        ...                                                       g.groups[0].positions)]
        ... # doctest: +NORMALIZE_WHITESPACE
        [('0.weight', 0, 1), ('0.bias', 0, 1), ('1.weight', 0, 1), ('1.bias', 0, 1),
         ('1.running_mean', 0, 1), ('1.running_var', 0, 1), ('4.weight', 1, 16)]
    """
    patterns = [ignore] if isinstance(ignore, str) else list(ignore)
    marked = []
    for m in model.modules():
        for attr, _ in SIZE_ATTRIBUTES.get(class_path(m), ()):
            marked.append((m, attr, getattr(m, attr)))
            setattr(m, attr, SizeAttr(getattr(m, attr)))
    try:
        graph = Tracer(leaf_modules).trace(model)
    except Exception as err:  # fx raises many types; all mean "not traceable"
        raise GraphError(one_line(
            f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}; "
            "pass leaf_modules=[...] naming the submodule with data-dependent control flow"
        )) from err
    finally:
        for m, attr, value in marked:
            setattr(m, attr, value)
    gm = fx.GraphModule(model, graph)
    labeler = Labeler(gm, model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_input, Mapping):
                labeler.run(*_ordered(gm, example_input))
            elif isinstance(example_input, tuple):
                labeler.run(*example_input)
            else:
                labeler.run(example_input)
    except GraphError:
        raise
    except Exception as err:
        raise GraphError(one_line(
            f"running the traced {type(model).__name__} on the example input failed: "
            f"{type(err).__name__}: {err}"
        )) from err
    finally:
        model.train(was_training)
    found = resolve_groups(labeler, patterns, model)
    found.sort(key=lambda g: _first_seen(labeler, g[0]))
    groups = [ChannelGroup(i, mems, pos) for i, (mems, pos) in enumerate(found)]
    return ChannelGraph(groups, dict(labeler.pinned_ops), labeler.layernorms, labeler.heads,
                        labeler.grouped)


def _ordered(gm: fx.GraphModule, kwargs: Mapping[str, Any]) -> list[Any]:
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    missing = [n for n in names if n not in kwargs]
    if missing:
        raise GraphError(f"example_input lacks the model inputs {missing}; given: {list(kwargs)}")
    return [kwargs[n] for n in names]


def _first_seen(lab: Labeler, members: Sequence[Member]) -> int:
    order: dict[str, int] = {}
    for i, (name, *_rest) in enumerate(lab.records):
        order.setdefault(name, i)
    return min(order.get(m.tensor, 1 << 30) for m in members if m.role == "out")
