"""Physically resize a model's tensors and keep its modules' size attributes consistent.

Structured pruning removes slices of parameters and buffers; the modules owning them must
then report their new sizes (``Conv2d.out_channels``, ``Linear.in_features``,
``BatchNorm2d.num_features``, ``LayerNorm.normalized_shape``, a depthwise conv's
``groups``, ``MultiheadAttention.embed_dim`` / ``num_heads``, ...) because their ``forward``
or ``repr`` reads them. :func:`slice_tensors` cuts tensors of a model in place and
:func:`set_shapes` gives a freshly built model the recorded shapes (to load a compact model
from a file); both then call :func:`sync_attributes`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    >>> k = torch.tensor([0, 2])
    >>> cut = {(n, 0): k for n in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
    ...                            "1.running_var")}
    >>> _ = slice_tensors(m, {**cut, ("2.weight", 1): k})
    >>> m[0].out_channels, m[1].num_features, m[2].in_channels
    (2, 2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..masks import is_masked

__all__ = [
    "SIZE_ATTRIBUTES",
    "class_path",
    "owner",
    "set_shapes",
    "slice_tensors",
    "sync_attributes",
    "tensor_slots",
]


def owner(model: nn.Module, tensor: str) -> tuple[nn.Module, str]:
    """The module holding tensor ``tensor`` (a qualified name) and its attribute name.

    Example:
        >>> from torch import nn
        >>> owner(nn.Sequential(nn.Linear(2, 2)), "0.weight")
        (Linear(in_features=2, out_features=2, bias=True), 'weight')
    """
    path, _, attr = tensor.rpartition(".")
    return model.get_submodule(path), attr


def _width(module: nn.Module, tensor: str, dim: int) -> int:
    t = _raw(*owner(module, tensor))
    return int(t.shape[dim]) if t is not None else 0


#: ``{class path: [(int attribute, its new value from the resized module)]}``: int
#: attributes that hold a prunable width, set in this order after pruning (and while
#: tracing, a reshape to such a size is not taken as a fixed size).
SIZE_ATTRIBUTES: dict[str, list[tuple[str, Callable[[nn.Module], int]]]] = {
    "torchvision.models.vision_transformer.VisionTransformer": [
        ("hidden_dim", lambda m: _width(m, "conv_proj.weight", 0)),
    ],
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": [  # whole heads
        ("n_heads", lambda m: _width(m, "to_qkv.weight", 1) // m.head_dim),
    ],
    "timm.layers.attention.Attention": [  # whole heads: head_dim stays
        ("num_heads", lambda m: _width(m, "qkv.weight", 0) // (3 * m.head_dim)),
        ("attn_dim", lambda m: m.num_heads * m.head_dim),
    ],
}


#: torchvision's Swin attention: whole heads are pruned, ``num_heads`` follows ``qkv``.
_WINDOW_ATTENTION = {
    "torchvision.models.swin_transformer.ShiftedWindowAttention",
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2",
}


def class_path(m: nn.Module) -> str:
    """``module.QualName`` of ``m``'s class."""
    return f"{type(m).__module__}.{type(m).__qualname__}"


def tensor_slots(model: nn.Module, name: str) -> list[tuple[nn.Module, str, dict]]:
    """Where tensor ``name`` lives: ``(module, key, dict)`` for its storage (and its mask).

    A masked parameter (``weight`` as ``weight_orig * weight_mask``) has two slots.
    """
    module, attr = owner(model, name)
    if is_masked(module, attr):
        return [(module, f"{attr}_orig", module._parameters),
                (module, f"{attr}_mask", module._buffers)]
    if attr in module._parameters:
        return [(module, attr, module._parameters)]
    if attr in module._buffers:
        return [(module, attr, module._buffers)]
    raise KeyError(f"{name!r} is neither a parameter nor a buffer of the model")


def _replace_everywhere(model: nn.Module, old: torch.Tensor, new: torch.Tensor) -> None:
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for k, v in list(store.items()):
                if v is old:
                    store[k] = new


def _snapshot(model: nn.Module) -> dict[str, dict[str, object]]:
    """The size attributes of the modules before resizing (to know what ``groups`` means)."""
    out: dict[str, dict[str, object]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = {"groups": m.groups, "in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.GroupNorm):
            out[name] = {"per_group": m.num_channels // m.num_groups}
        elif isinstance(m, nn.MultiheadAttention):
            out[name] = {"head_dim": m.head_dim}
        elif class_path(m) in _WINDOW_ATTENTION:
            out[name] = {"head_dim": m.qkv.in_features // m.num_heads}
    return out


def slice_tensors(
    model: nn.Module, keep: Mapping[tuple[str, int], torch.Tensor]
) -> set[str]:
    """Keep only the given indices of tensors, in place, then sync the module attributes.

    Args:
        model: the model to cut.
        keep: ``{(tensor name, dim): indices kept along dim}``.

    Returns:
        The names of the modules whose tensors changed.
    """
    before = _snapshot(model)
    by_tensor: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (name, dim), idx in keep.items():
        by_tensor.setdefault(name, []).append((dim, idx))
    touched: set[str] = set()
    for name, cuts in by_tensor.items():
        for _, key, store in tensor_slots(model, name):
            old = store[key]
            new = old.detach()
            for dim, idx in cuts:
                new = new.index_select(dim, idx.to(new.device))
            new = new.clone()
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            _replace_everywhere(model, old, new)
        touched.add(name.rpartition(".")[0])
    sync_attributes(model, before)  # every module: a shared tensor has several owners
    return touched


def set_shapes(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> set[str]:
    """Give tensors new (recorded) shapes, zero-filled, and sync the module attributes.

    Used to rebuild a compact model before loading its state dict.
    """
    before = _snapshot(model)
    touched: set[str] = set()
    for name, shape in shapes.items():
        for _, key, store in tensor_slots(model, name):
            old = store[key]
            if tuple(old.shape) == tuple(shape):
                continue
            new = torch.zeros(tuple(shape), dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            _replace_everywhere(model, old, new)
        touched.add(name.rpartition(".")[0])
    sync_attributes(model, before)
    return touched


def _raw(module: nn.Module, attr: str) -> torch.Tensor | None:
    if is_masked(module, attr):
        return module._parameters[f"{attr}_orig"]
    t = module._parameters.get(attr)
    if t is None:
        t = module._buffers.get(attr)
    return t


def sync_attributes(
    model: nn.Module, before: Mapping[str, Mapping[str, object]] | None = None
) -> None:
    """Set the size attributes of every module from its tensors' shapes.

    Args:
        model: the model.
        before: the attributes before the change (:func:`_snapshot`); needed to tell a
            depthwise convolution (``groups`` follows the channels) from a grouped one.
    """
    before = before or {}
    for m in model.modules():
        for attr, value in SIZE_ATTRIBUTES.get(class_path(m), ()):
            setattr(m, attr, value(m))
    for name, m in model.named_modules():
        info = before.get(name, {})
        if isinstance(m, nn.modules.conv._ConvNd):
            w = _raw(m, "weight")
            old_groups, old_in = int(info.get("groups", m.groups)), int(info.get("in", 0))
            transposed = m.transposed
            out_c = w.shape[1] * old_groups if transposed else w.shape[0]
            if old_groups > 1 and old_groups == old_in and not transposed:  # depthwise
                per = int(info["out"]) // old_groups
                m.groups = out_c // per
                m.in_channels = m.groups
            else:
                m.in_channels = w.shape[0] if transposed else w.shape[1] * m.groups
            m.out_channels = out_c
        elif isinstance(m, nn.Linear):
            w = _raw(m, "weight")
            m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
        elif isinstance(m, _BatchNorm):
            t = _raw(m, "weight") if m.affine else m.running_mean
            if t is not None:
                m.num_features = int(t.shape[0])
        elif isinstance(m, nn.LayerNorm):
            t = _raw(m, "weight")
            if t is not None:
                m.normalized_shape = (int(t.shape[0]),)
        elif isinstance(m, nn.GroupNorm):
            t = _raw(m, "weight")
            if t is not None:
                m.num_channels = int(t.shape[0])
                m.num_groups = m.num_channels // int(info.get("per_group", 1))
        elif isinstance(m, nn.PReLU):
            m.num_parameters = int(_raw(m, "weight").shape[0])
        elif isinstance(m, nn.Embedding):
            m.embedding_dim = int(_raw(m, "weight").shape[1])
        elif isinstance(m, nn.MultiheadAttention):
            e = int(_raw(m, "in_proj_weight").shape[1])
            hd = int(info.get("head_dim", m.head_dim))
            m.embed_dim = m.kdim = m.vdim = e
            m.num_heads, m.head_dim = e // hd, hd
        elif "head_dim" in info and hasattr(m, "num_heads"):  # Swin window attention
            m.num_heads = int(_raw(m.qkv, "weight").shape[1]) // int(info["head_dim"])
