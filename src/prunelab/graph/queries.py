"""Questions about a traced layer graph: which links allow removing units, which
BatchNorms follow a layer, why a layer's units cannot be removed physically.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masks import raw_parameter
from ..selection import CONV_TYPES, LINEAR_TYPES, PRUNABLE_TYPES, out_units
from .trace import (
    BATCHNORM_TYPES,
    PASSTHROUGH_TYPES,
    Link,
    Structure,
    _fx_single_path,
)

__all__ = [
    "check_keep_mask",
    "following_batchnorms",
    "layer_params",
    "surgery_blocker",
    "surgery_links",
]


def layer_params(m: nn.Module) -> int:
    """Parameters of a layer's weight and bias (masked or not).

    Example:
        >>> from torch import nn
        >>> layer_params(nn.Linear(3, 2))
        8
    """
    tensors = (raw_parameter(m, n, missing_ok=True) for n in ("weight", "bias"))
    return sum(t.numel() for t in tensors if t is not None)


def _plausible_link(p: nn.Module, c: nn.Module) -> bool:
    units = out_units(p)
    if isinstance(c, LINEAR_TYPES):
        return c.in_features == units or (isinstance(p, CONV_TYPES) and c.in_features % units == 0)
    return isinstance(c, CONV_TYPES) and isinstance(p, CONV_TYPES) and c.in_channels == units


def surgery_links(structure: Structure) -> tuple[Link, ...]:
    """The links along which units can be removed: one consumer per producer and vice versa.

    A producer read by two layers, or a consumer fed by two producers (a concatenation), is
    left out: a unit could be unused by one side and still used by the other.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.graph import trace_structure
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> links = surgery_links(trace_structure(m, torch.zeros(1, 4)))
        >>> [(lk.producer, lk.consumer) for lk in links]
        [('0', '2')]
    """
    producers = [lk.producer for lk in structure.links]
    consumers = [lk.consumer for lk in structure.links]
    return tuple(
        lk for lk in structure.links
        if producers.count(lk.producer) == 1 and consumers.count(lk.consumer) == 1
    )  # fmt: skip


def check_keep_mask(
    mods: dict[str, nn.Module], structure: Structure, name: str, mask: object
) -> torch.Tensor:
    """Validate a unit keep-mask for layer ``name``; return it as a CPU bool tensor.

    Raises:
        ValueError: ``name`` is not a Linear/Conv layer, or the mask has the wrong shape.
    """
    m = mods.get(name)
    if m is None or not isinstance(m, PRUNABLE_TYPES):
        raise ValueError(
            f"keep names {name!r}, which is not a Linear/Conv layer of the model; layers "
            f"are: {', '.join(dict.fromkeys(structure.layers))}"
        )
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != (out_units(m),):
        raise ValueError(
            f"keep mask of {name!r} has shape {tuple(mask.shape)}; expected ({out_units(m)},)"
        )
    return mask.bool().cpu()


def surgery_blocker(model: nn.Module, structure: Structure, layer: str) -> str | None:
    """Why the output units of ``layer`` cannot be removed physically (``None`` if they can).

    Args:
        model: the network.
        structure: from :func:`prunelab.graph.trace_structure`.
        layer: module name of a Linear/Conv layer.

    Returns:
        ``None`` when ``layer`` is the producer of a link (its units can be removed), else a
        sentence saying why not.

    Raises:
        ValueError: ``model`` has no module ``layer``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.graph import trace_structure
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> s = trace_structure(m, torch.zeros(1, 4))
        >>> surgery_blocker(m, s, "0") is None, surgery_blocker(m, s, "2")
        (True, "its outputs are the model's outputs (no layer consumes them)")
    """
    mods = dict(model.named_modules())
    m = mods.get(layer)
    if m is None:
        raise ValueError(
            f"model has no module {layer!r}; its layers are: {', '.join(structure.layers)}"
        )
    if not isinstance(m, PRUNABLE_TYPES):
        return f"it is a {type(m).__name__}, not a Linear/Conv layer"
    if isinstance(m, CONV_TYPES) and m.groups != 1:
        return f"it is a grouped convolution (groups={m.groups}); only groups=1 is supported"
    if any(lk.producer == layer for lk in surgery_links(structure)):
        return None
    links = structure.consumers_of(layer)
    if len(links) > 1:
        return f"it feeds {len(links)} layers ({', '.join(lk.consumer for lk in links)})"
    if links:
        return f"its consumer {links[0].consumer!r} also reads another layer's outputs"
    if layer not in structure.order:
        return "it was not called on the example input"
    if structure.order.count(layer) > 1:
        return "it is called more than once per forward pass (a shared module)"
    start = structure.order.index(layer) + 1
    for name in structure.order[start:]:
        nxt = mods[name]
        if isinstance(nxt, PRUNABLE_TYPES):
            if isinstance(nxt, CONV_TYPES) and nxt.groups != 1:
                return f"its consumer {name!r} is a grouped convolution (groups={nxt.groups})"
            if _plausible_link(m, nxt):
                single = _fx_single_path(model, [Link(layer, name)])
                if single is False:
                    return (
                        f"its output does not reach {name!r} along one unbranched path "
                        "(torch.fx found a branch or a join, e.g. a residual connection)"
                    )
                if single is None:
                    return (
                        f"torch.fx cannot trace the model to prove that its output reaches "
                        f"{name!r} along one unbranched path; pass the links via structure="
                    )
            return f"its {out_units(m)} outputs do not map unit by unit onto the inputs of {name!r}"
        if isinstance(nxt, BATCHNORM_TYPES) and nxt.num_features != out_units(m):
            return (
                f"BatchNorm {name!r} after it has {nxt.num_features} features, "
                f"not {out_units(m)}"
            )
        if not isinstance(nxt, PASSTHROUGH_TYPES):
            return (
                f"its output passes through {name!r} ({type(nxt).__name__}), which the surgery "
                "cannot follow channel by channel"
            )
    return "its outputs are the model's outputs (no layer consumes them)"


def following_batchnorms(model: nn.Module, structure: Structure, layer: str) -> tuple[str, ...]:
    """The BatchNorm modules that normalise the output channels of ``layer``.

    For a linked layer these are the BatchNorms on the link; otherwise the BatchNorm called
    right after ``layer`` (same number of features), if any.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.graph import trace_structure
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1))
        >>> following_batchnorms(m, trace_structure(m, torch.zeros(1, 1, 5, 5)), "0")
        ('1',)
    """
    mods = dict(model.named_modules())
    units = out_units(mods[layer])
    links = [lk for lk in surgery_links(structure) if lk.producer == layer]
    if links:
        return tuple(
            b for b in links[0].between
            if isinstance(mods[b], BATCHNORM_TYPES) and mods[b].num_features == units
        )  # fmt: skip
    if layer not in structure.order:
        return ()
    i = structure.order.index(layer) + 1
    if i < len(structure.order):
        nxt = mods[structure.order[i]]
        if isinstance(nxt, BATCHNORM_TYPES) and nxt.num_features == units:
            return (structure.order[i],)
    return ()


