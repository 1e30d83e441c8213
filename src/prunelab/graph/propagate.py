"""Label propagation: run a traced model and move channel labels beside its tensors.

:class:`Labeler` is a ``torch.fx`` interpreter: each node computes its real value and, from
its inputs' label tensors (:mod:`prunelab.graph.labels`), its output labels, by one rule per
kind of operation (layers create channels; data movement moves them; joins unify them;
anything unknown pins them and is counted in ``pinned_ops``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    >>> lab = Labeler(torch.fx.GraphModule(m, Tracer(()).trace(m)), m)
    >>> _ = lab.run(torch.zeros(1, 3))
    >>> [name for name, *_ in lab.records]
    ['0.weight', '0.bias']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .labels import UNLABELED, Unifier, channel_vector, expand_channels, varies_along

__all__ = ["MAX_LABELED_PARAM", "Labeler", "SizeAttr", "Tracer"]

#: Parameters larger than this (entries) are not given per-entry labels when read directly.
MAX_LABELED_PARAM = 4_000_000


_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Tanhshrink,
)  # fmt: skip
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)  # fmt: skip
_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

_UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "elu",
    "selu", "celu", "mish", "softplus", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "neg", "abs", "exp", "sqrt", "rsqrt", "erf",
    "clamp", "clamp_", "clip", "contiguous", "clone", "detach", "float", "half", "double",
    "bfloat16", "to", "type", "type_as", "stochastic_depth", "square", "sign", "floor", "ceil",
    "round", "sin", "cos", "log", "log1p", "expm1", "reciprocal", "logical_not", "invert",
    "requires_grad_", "cpu", "cuda", "pow", "__pow__", "mul_scalar",
}  # fmt: skip
_BINARY = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "truediv",
    "div", "div_", "itruediv", "floordiv", "maximum", "minimum", "__add__", "__radd__",
    "__mul__", "__rmul__", "__sub__", "__rsub__", "__truediv__", "__rtruediv__", "__iadd__",
    "__imul__", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "logical_and", "logical_or",
}  # fmt: skip
_MOVEMENT = {
    "cat", "concat", "concatenate", "stack", "permute", "transpose", "transpose_", "t",
    "unsqueeze", "squeeze", "flatten", "expand", "roll", "flip", "movedim", "moveaxis",
    "swapaxes", "swapdims", "unbind", "repeat", "tile",
}  # fmt: skip
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"}
_PER_CHANNEL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
    "max_pool3d", "interpolate", "upsample", "max_pool2d_with_indices",
}  # fmt: skip
_ALONG_DIM = {"softmax", "log_softmax", "normalize", "cumsum", "sort", "argsort", "topk"}
_METADATA = {"size", "dim", "numel", "getattr", "type_as_meta", "is_contiguous", "__len__"}


def _swin_attention_types() -> tuple[type[nn.Module], ...]:
    try:
        from torchvision.models.swin_transformer import (
            ShiftedWindowAttention,
            ShiftedWindowAttentionV2,
        )
    except ImportError:  # pragma: no cover - torchvision without Swin
        return ()
    return (ShiftedWindowAttention, ShiftedWindowAttentionV2)


def _maxvit_attention_types() -> tuple[type[nn.Module], ...]:
    try:
        from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    except ImportError:  # pragma: no cover - torchvision without MaxViT
        return ()
    return (RelativePositionalMultiHeadAttention,)


_SWIN_TYPES = _swin_attention_types()
_MAXVIT_TYPES = _maxvit_attention_types()
# Subclasses too (timm's Linear, Conv2dSame, LayerNorm2d): their channels behave as the base's.
_LEAF_TYPES = (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, nn.Linear,
               nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, *_SWIN_TYPES, *_MAXVIT_TYPES)


class Tracer(fx.Tracer):
    """``torch.fx`` tracer keeping norms, attention and Linear/Conv subclasses as leaves."""

    def __init__(self, leaves: Sequence[str | type[nn.Module]]) -> None:
        super().__init__()
        self._leaf_types = tuple(x for x in leaves if isinstance(x, type))
        self._leaf_names = [x for x in leaves if isinstance(x, str)]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _LEAF_TYPES + self._leaf_types):
            return True
        if any(fnmatchcase(module_qualified_name, p) for p in self._leaf_names):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _is_literal(size: object) -> bool:
    return (isinstance(size, int) and not isinstance(size, bool | SizeAttr) and size != -1)


def _full(value: object) -> object:
    """Unlabeled labels mirroring the structure of ``value``."""
    if isinstance(value, torch.Tensor):
        return torch.full(value.shape, UNLABELED, dtype=torch.long)
    if isinstance(value, torch.Size):
        return None
    if isinstance(value, tuple | list):
        return tuple(_full(v) for v in value) if isinstance(value, tuple) else [
            _full(v) for v in value
        ]
    return None


@dataclass(frozen=True)
class _SizeTag:
    """A Python int read from a prunable dim (``x.shape[-1]``): the channel variables behind it."""

    labels: torch.Tensor


def _tags(labels: object) -> list[_SizeTag]:
    if isinstance(labels, _SizeTag):
        return [labels]
    if isinstance(labels, tuple | list):
        return [t for x in labels for t in _tags(x)]
    if isinstance(labels, dict):
        return [t for x in labels.values() for t in _tags(x)]
    return []


class SizeAttr(int):
    """A module's int attribute that equals a channel count prunelab updates (see
    :data:`SIZE_ATTRIBUTES`); while tracing, reshapes using it are not fixed-size."""


def _tensors(labels: object) -> Iterable[torch.Tensor]:
    if isinstance(labels, torch.Tensor):
        yield labels
    elif isinstance(labels, tuple | list):
        for x in labels:
            yield from _tensors(x)
    elif isinstance(labels, dict):
        for x in labels.values():
            yield from _tensors(x)


def _split_groups(
    shape_in: Sequence[int], shape_out: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input and output dims of a reshape whose products match."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(shape_in) or j < len(shape_out):
        if i == len(shape_in):
            groups.append(([], [j]))
            j += 1
            continue
        if j == len(shape_out):
            groups.append(([i], []))
            i += 1
            continue
        ii, jj = [i], [j]
        pi, pj = shape_in[i], shape_out[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(shape_in):
                ii.append(i)
                pi *= shape_in[i]
                i += 1
            elif j < len(shape_out):
                jj.append(j)
                pj *= shape_out[j]
                j += 1
            else:  # pragma: no cover - numel mismatch cannot reach here
                break
        groups.append((ii, jj))
    return groups


class Labeler(fx.Interpreter):
    """Runs the traced graph on real values and propagates channel labels beside them."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.model = model
        self.u = Unifier()
        self.labels: dict[fx.Node, object] = {}
        self.records: list[tuple[str, int, str, torch.Tensor, torch.Tensor]] = []
        self.pinned_ops: Counter[str] = Counter()
        self.layernorms: dict[str, int] = {}
        self.heads: dict[str, int] = {}
        self.grouped: dict[str, int] = {}
        self._names: dict[int, str] = {}
        for name, p in model.named_parameters():
            self._names.setdefault(id(p), name)
        for name, b in model.named_buffers():
            self._names.setdefault(id(b), name)
        self._modules = dict(model.named_modules())
        self._canon_edges = -1
        self._roots = torch.zeros(0, dtype=torch.long)

    # -- bookkeeping
    def tensor_name(self, module: nn.Module, attr: str) -> str | None:
        t = module._parameters.get(attr, module._buffers.get(attr))
        if t is None and f"{attr}_orig" in module._parameters:  # masked: weight_orig * mask
            t = module._parameters[f"{attr}_orig"]
        name = self._names.get(id(t)) if isinstance(t, torch.Tensor) else None
        return name[: -len("_orig")] if name and name.endswith("_orig") else name

    def record(self, module: nn.Module, attr: str, dim: int, role: str,
               positions: torch.Tensor, labels: torch.Tensor) -> None:
        name = self.tensor_name(module, attr)
        if name is None:
            return
        keep = labels >= 0
        if bool(keep.any()):
            self.records.append((name, dim, role, positions[keep].long(), labels[keep].long()))

    def canonical(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels replaced by their current component roots (so equal channels look equal)."""
        if self.u.count == 0:
            return labels
        if self._canon_edges != len(self.u._edges) or self._roots.numel() != self.u.count:
            self._roots, _ = self.u.resolve()
            self._canon_edges = len(self.u._edges)
        out = labels.clone()
        pos = out >= 0
        out[pos] = self._roots[out[pos]]
        return out

    def pin_all(self, labels: object, op: str | None = None) -> None:
        hit = False
        for t in _tensors(labels):
            if bool((t >= 0).any()):
                hit = True
                self.u.pin(t)
        if hit and op is not None:
            self.pinned_ops[op] += 1

    # -- the interpreter
    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.labels[n] = self._label(n, value)
        for dead in self.user_to_last_uses.get(n, []):
            self.labels.pop(dead, None)
        return value

    def _arg_labels(self, n: fx.Node) -> tuple[tuple, dict]:
        args = fx.node.map_arg(n.args, lambda a: self.labels.get(a))
        kwargs = fx.node.map_arg(n.kwargs, lambda a: self.labels.get(a))
        return args, kwargs  # type: ignore[return-value]

    def _label(self, n: fx.Node, value: Any) -> object:
        if n.op == "placeholder":
            return _full(value)
        if n.op == "get_attr":
            return self._get_attr(n, value)
        if n.op == "output":
            largs, _ = self._arg_labels(n)
            self.pin_all(largs)
            return None
        largs, lkw = self._arg_labels(n)
        real_args, real_kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "call_module":
            mod = self._modules[str(n.target)]
            return self._module(str(n.target), mod, n, largs, real_args, value)
        if _op_name(n) == "getitem" and isinstance(largs[0], tuple | list):
            return self._getitem(largs[0], real_args, value)  # an output of a tuple / sizes
        tags = _tags((largs, lkw))
        if tags and not isinstance(value, torch.Tensor):  # arithmetic on sizes read from channels
            return _SizeTag(torch.unique(torch.cat([t.labels for t in tags])))
        flowing = any(bool((t >= 0).any()) for t in _tensors((largs, lkw)))
        if tags and (not flowing or _op_name(n) not in ("view", "reshape")):
            # e.g. an unlabeled tensor reshaped to a width read from prunable channels
            self.pin_all([t.labels for t in tags], f"{_op_name(n)} to a size read from channels")
        if not flowing:
            return _full(value)  # nothing labeled flows in: nothing to follow
        return self._function(_op_name(n), n, largs, lkw, real_args, real_kwargs, value)

    def _get_attr(self, n: fx.Node, value: Any) -> object:
        if not isinstance(value, torch.Tensor):
            return None
        name = self._names.get(id(value))
        if name is None or not value.is_floating_point() or value.numel() > MAX_LABELED_PARAM:
            return _full(value)
        v = self.u.fresh(value.numel())
        self.records.append((name, -1, "param", torch.arange(value.numel()), v))
        return v.view(value.shape)

    # -- modules
    def _module(self, name: str, mod: nn.Module, n: fx.Node, largs: tuple,
                args: tuple, out: Any) -> object:
        x = largs[0] if largs else None
        if isinstance(mod, _CONV_MODULES):
            return self._conv(name, mod, x, args[0], out)
        if isinstance(mod, nn.Linear):
            return self._linear(mod, x, out)
        if isinstance(mod, _BatchNorm):
            return self._per_channel_norm(mod, x, out, 1, ("running_mean", "running_var"))
        if isinstance(mod, nn.LayerNorm):
            return self._layer_norm(name, mod, x, args[0], out)
        if isinstance(mod, nn.GroupNorm):
            return self._group_norm(mod, x, out)
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters == 1:
                return x
            return self._per_channel_norm(mod, x, out, 1, ())
        if isinstance(mod, nn.Embedding):
            v = self.u.fresh(mod.embedding_dim)
            self.record(mod, "weight", 1, "out", torch.arange(mod.embedding_dim), v)
            return expand_channels(v, out.shape, -1)
        if isinstance(mod, nn.MultiheadAttention):
            return self._mha(name, mod, n, largs, args, out)
        if _MAXVIT_TYPES and isinstance(mod, _MAXVIT_TYPES):
            return self._heads_block(name, mod, x, out, mod.to_qkv, mod.merge, mod.n_heads)[0]
        if _SWIN_TYPES and isinstance(mod, _SWIN_TYPES):
            return self._swin(name, mod, x, out)
        if isinstance(mod, _ELEMENTWISE_MODULES) and isinstance(x, torch.Tensor):
            return x
        if isinstance(mod, _POOL_MODULES) and isinstance(x, torch.Tensor):
            return self._per_channel(x, out, 1)
        if isinstance(mod, nn.Flatten) and isinstance(x, torch.Tensor):
            return torch.flatten(x, mod.start_dim, mod.end_dim)
        if isinstance(mod, nn.Softmax | nn.LogSoftmax) and isinstance(x, torch.Tensor):
            return self._along_dim(x, mod.dim if mod.dim is not None else -1, type(mod).__name__)
        self.pin_all(largs, type(mod).__name__)
        return _full(out)

    def _conv(self, name: str, mod: nn.Module, x: object, xin: torch.Tensor,
              out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor) or xin.dim() != mod.weight.dim():
            self.pin_all(x, f"{type(mod).__name__} (unbatched)")
            return _full(out)
        cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
        vec = channel_vector(x, 1, self.u)
        ipg, opg = cin // g, cout // g
        if g == 1:
            self.record(mod, "weight", 1, "in", torch.arange(cin), vec)
            ov = self.u.fresh(cout)
        elif ipg == 1:  # depthwise (with a channel multiplier): each output follows its input
            ov = vec.repeat_interleave(opg)
            self.grouped[name] = opg
        else:  # grouped: slot i of every group goes together, in and out
            slots = vec.view(g, ipg)
            self.u.unify(slots, slots[:1].expand_as(slots))
            self.record(mod, "weight", 1, "in", torch.arange(ipg), slots.max(dim=0).values)
            ov = self.u.fresh(opg).repeat(g)
        self.record(mod, "weight", 0, "out", torch.arange(cout), ov)
        self.record(mod, "bias", 0, "out", torch.arange(cout), ov)
        return expand_channels(ov, out.shape, 1)

    def _linear(self, mod: nn.Linear, x: object, out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor):
            return _full(out)
        vec = channel_vector(x, -1, self.u)
        self.record(mod, "weight", 1, "in", torch.arange(mod.in_features), vec)
        ov = self.u.fresh(mod.out_features)
        self.record(mod, "weight", 0, "out", torch.arange(mod.out_features), ov)
        self.record(mod, "bias", 0, "out", torch.arange(mod.out_features), ov)
        return expand_channels(ov, out.shape, -1)

    def _per_channel_norm(self, mod: nn.Module, x: object, out: torch.Tensor, dim: int,
                          buffers: Sequence[str]) -> object:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            self.pin_all(x, type(mod).__name__)
            return _full(out)
        vec = channel_vector(x, dim, self.u)
        pos = torch.arange(vec.numel())
        for attr in ("weight", "bias"):
            self.record(mod, attr, 0, "norm", pos, vec)
        for attr in buffers:
            self.record(mod, attr, 0, "buffer", pos, vec)
        return expand_channels(vec, out.shape, dim)

    def _layer_norm(self, name: str, mod: nn.LayerNorm, x: object, xin: torch.Tensor,
                    out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor):
            return _full(out)
        c = mod.normalized_shape[-1]
        if len(mod.normalized_shape) != 1:
            self.pin_all(x, "LayerNorm over several dims")
            return _full(out)
        own_forward = type(mod).forward is not nn.LayerNorm.forward
        dim = 1 if own_forward and xin.dim() >= 3 and xin.shape[1] == c else -1
        if xin.shape[dim] != c:
            self.pin_all(x, f"{type(mod).__name__} (layout)")
            return _full(out)
        vec = channel_vector(x, dim, self.u)
        if bool((vec >= 0).any()):
            self.layernorms[name] = dim
        pos = torch.arange(c)
        for attr in ("weight", "bias"):
            self.record(mod, attr, 0, "norm", pos, vec)
        return expand_channels(vec, out.shape, dim)

    def _group_norm(self, mod: nn.GroupNorm, x: object, out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor):
            return _full(out)
        vec = channel_vector(x, 1, self.u)
        blocks = vec.view(mod.num_groups, -1)  # a whole group is one unit
        self.u.unify(blocks, blocks[:, :1].expand_as(blocks))
        vec = blocks.max(dim=1, keepdim=True).values.expand_as(blocks).reshape(-1)
        pos = torch.arange(vec.numel())
        for attr in ("weight", "bias"):
            self.record(mod, attr, 0, "norm", pos, vec)
        return expand_channels(vec, out.shape, 1)

    def _tie_heads(self, vec: torch.Tensor, heads: int) -> torch.Tensor:
        blocks = vec.view(heads, -1)
        self.u.unify(blocks, blocks[:, :1].expand_as(blocks))
        return blocks.max(dim=1, keepdim=True).values.expand_as(blocks).reshape(-1)

    def _mha(self, name: str, mod: nn.MultiheadAttention, n: fx.Node, largs: tuple,
             args: tuple, out: Any) -> object:
        q_l = largs[0] if largs else None
        kv = [a for a in largs[1:3] if isinstance(a, torch.Tensor)]
        if (not mod._qkv_same_embed_dim or mod.bias_k is not None or len(kv) != 2
                or not isinstance(q_l, torch.Tensor)):
            self.pin_all(largs, "MultiheadAttention (separate q/k/v sizes or bias_kv)")
            return _full(out)
        e, h = mod.embed_dim, mod.num_heads
        vec = channel_vector(q_l, -1, self.u)
        for other in kv:
            self.u.unify(vec, channel_vector(other, -1, self.u))
        vec = self._tie_heads(vec, h)
        self.heads[name] = e // h
        self._record_attention(mod, "in_proj_weight", "in_proj_bias", mod.out_proj, vec)
        first = expand_channels(vec, out[0].shape, -1)
        return (first, _full(out[1]))

    def _record_attention(self, qkv: nn.Module, weight: str, bias: str, proj: nn.Module,
                          vec: torch.Tensor) -> None:
        """Stream channel ``c`` is row ``c`` of q, k and v (stacked in ``qkv.<weight>``),
        column ``c`` of the input projection and row and column ``c`` of ``proj``."""
        pos = torch.arange(vec.numel())
        c = vec.numel()
        rows, rlab = torch.cat([pos, pos + c, pos + 2 * c]), vec.repeat(3)
        self.record(qkv, weight, 0, "out", rows, rlab)
        self.record(qkv, weight, 1, "in", pos, vec)
        self.record(qkv, bias, 0, "out", rows, rlab)
        self.record(proj, "weight", 0, "out", pos, vec)
        self.record(proj, "weight", 1, "in", pos, vec)
        self.record(proj, "bias", 0, "out", pos, vec)

    def _heads_block(self, name: str, mod: nn.Module, x: object, out: torch.Tensor,
                     qkv: nn.Linear, proj: nn.Linear, h: int) -> tuple[object, torch.Tensor | None]:
        """An attention block whose inner width is its input width (``[..., C]``, heads of
        ``C / h``, q/k/v stacked in ``qkv``'s rows): whole heads go with the stream's channels,
        and its relative-position table's columns with them.

        Returns the output labels and the stream's channel vector (None when not followed).
        """
        if not isinstance(x, torch.Tensor):
            return _full(out), None
        c = qkv.in_features
        if qkv.out_features != 3 * c or proj.in_features != c or proj.out_features != c:
            return self._fail(f"{type(mod).__name__} (widths)", x, out), None
        vec = self._tie_heads(channel_vector(x, -1, self.u), h)
        self.heads[name] = c // h
        self._record_attention(qkv, "weight", "bias", proj, vec)
        if hasattr(mod, "relative_position_bias_table"):
            head_of = torch.arange(c) // (c // h)
            self.record(mod, "relative_position_bias_table", 1, "head", head_of, vec)
        return expand_channels(vec, out.shape, -1), vec

    def _swin(self, name: str, mod: nn.Module, x: object, out: torch.Tensor) -> object:
        got, vec = self._heads_block(name, mod, x, out, mod.qkv, mod.proj, mod.num_heads)
        if vec is None:
            return got
        c, h = mod.qkv.in_features, mod.num_heads
        head_of = torch.arange(c) // (c // h)
        if getattr(mod, "logit_scale", None) is not None:  # Swin v2
            self.record(mod, "logit_scale", 0, "head", head_of, vec)
        cpb = getattr(mod, "cpb_mlp", None)
        if cpb is not None:
            last = [m for m in cpb.modules() if isinstance(m, nn.Linear)][-1]
            self.record(last, "weight", 0, "head", head_of, vec)
            self.record(last, "bias", 0, "head", head_of, vec)
        return got

    # -- functions and methods
    def _function(self, op: str, n: fx.Node, largs: tuple, lkw: dict, args: tuple,
                  kwargs: dict, out: Any) -> object:
        x = largs[0] if largs else None
        if op == "getitem":
            return self._getitem(x, args, out)
        if op == "_patch_merging_pad" and isinstance(x, torch.Tensor):  # torchvision Swin
            vec = channel_vector(x, -1, self.u)
            return expand_channels(vec.repeat(4), out.shape, -1)
        if op == "scaled_dot_product_attention" and len(largs) >= 3:
            return self._sdpa(largs, kwargs, out)
        if op in ("getattr", "size") and isinstance(x, torch.Tensor):
            return self._size_tags(op, x, args, out)
        if op in _METADATA or not isinstance(out, torch.Tensor | tuple | list):
            return None if not isinstance(out, torch.Tensor) else _full(out)
        if op in _UNARY and isinstance(x, torch.Tensor) and not any(
            isinstance(a, torch.Tensor) and bool((a >= 0).any()) for a in largs[1:]
        ):
            return x if tuple(x.shape) == tuple(out.shape) else self._fail(op, largs, out)
        if op in _BINARY:
            tensors = [a for a in (*largs[:2], lkw.get("other")) if a is not None]
            return self._binary(op, tensors, out)
        if op == "where" and len(largs) == 3:
            return self._binary(op, [a for a in largs if isinstance(a, torch.Tensor)], out)
        if op in ("view", "reshape"):
            return self._reshape(op, n, x, args, out)
        if op in ("chunk", "split", "tensor_split", "split_with_sizes"):
            return self._split(op, n, x, args, kwargs, out)
        if op in _MOVEMENT:
            return self._movement(op, n, largs, args, kwargs, out)
        if op == "expand_as":
            return x.expand(out.shape) if isinstance(x, torch.Tensor) else _full(out)
        if op == "pad":
            return self._pad(x, args, kwargs, out)
        if op in _REDUCE and isinstance(out, torch.Tensor):
            return self._reduce(op, x, args, kwargs, out)
        if op in _PER_CHANNEL and isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
            return self._per_channel(x, out, 1)
        if op in _ALONG_DIM and isinstance(x, torch.Tensor):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            if isinstance(dim, int) and isinstance(out, torch.Tensor):
                return self._along_dim(x, dim, op)
        return self._fail(op, largs, out, lkw)

    def _fail(self, op: str, largs: object, out: Any, lkw: object = None) -> object:
        self.pin_all((largs, lkw), op)
        return _full(out)

    def _binary(self, op: str, tensors: list, out: torch.Tensor) -> object:
        labs = [t for t in tensors if isinstance(t, torch.Tensor)]
        if not isinstance(out, torch.Tensor):
            return self._fail(op, labs, out)
        shape = tuple(out.shape)
        nd = len(shape)
        aligned = [t.reshape((1,) * (nd - t.dim()) + tuple(t.shape)) for t in labs]
        aligned = [a for a in aligned if bool((a >= 0).any()) or a.numel() > 0]
        vary = [[varies_along(a, d) for d in range(nd)] for a in aligned]
        labeled = [bool((a >= 0).any()) for a in aligned]
        # an operand broadcast across another's channels (``x * scale``) does not follow them
        shadowed = [
            any(a.shape[d] == 1 and shape[d] > 1 and vary[j][d]
                for j in range(len(aligned)) if j != i for d in range(nd))
            for i, a in enumerate(aligned)
        ]
        for i, a in enumerate(aligned):
            if shadowed[i] and labeled[i] and any(vary[i]):
                self.u.pin(a)
        live = [i for i in range(len(aligned)) if not shadowed[i]]
        for x, i in enumerate(live):
            for j in live[x + 1:]:
                self.u.unify(aligned[i], aligned[j])
        primary = sorted((i for i in live if labeled[i]), key=lambda i: sum(vary[i]))
        result = torch.full(shape, UNLABELED, dtype=torch.long)
        for i in primary:
            ea = aligned[i].expand(shape)
            result = torch.where((result < 0) & (ea >= 0), ea, result)
        return result

    def _sdpa(self, largs: tuple, kwargs: dict, out: torch.Tensor) -> object:
        """``softmax(q k^T / sqrt(d)) v`` over ``[..., heads, tokens, d]``: heads follow."""
        q, k, v = largs[:3]
        if not all(isinstance(t, torch.Tensor) and t.dim() >= 3 for t in (q, k, v)):
            return self._fail("scaled_dot_product_attention", largs, out)
        heads = [channel_vector(t, -3, self.u) for t in (q, k, v)]
        self.u.unify(heads[0], heads[1])
        self.u.unify(heads[0], heads[2])
        cq, cv = self.canonical(q), self.canonical(v)
        if kwargs.get("scale") is None and (varies_along(cq, -1) or varies_along(
                self.canonical(k), -1)):
            self.pin_all((q, k), "scaled_dot_product_attention (head size: its default scale)")
        if varies_along(cq, -2) or varies_along(cv, -2):
            return self._fail("scaled_dot_product_attention (token labels)", largs, out)
        return cv.narrow(-2, 0, 1).expand(out.shape)

    def _per_channel(self, x: torch.Tensor, out: torch.Tensor, dim: int) -> object:
        if x.dim() < 2 or out.dim() != x.dim() or out.shape[dim] != x.shape[dim]:
            return self._fail("pooling (layout)", x, out)
        return expand_channels(channel_vector(x, dim, self.u), out.shape, dim)

    def _along_dim(self, x: torch.Tensor, dim: int, op: str) -> object:
        if varies_along(self.canonical(x), dim):
            self.pin_all(x, f"{op} over channels")
        return x

    def _size_tags(self, op: str, x: torch.Tensor, args: tuple, out: Any) -> object:
        if op == "getattr" and args[1] != "shape":
            return None
        canon = self.canonical(x)
        tags = tuple(
            _SizeTag(torch.unique(canon[canon >= 0])) if varies_along(canon, d) else None
            for d in range(x.dim())
        )
        if op == "size" and len(args) > 1:
            return tags[args[1]]
        return tags

    def _getitem(self, x: object, args: tuple, out: Any) -> object:
        if not isinstance(x, torch.Tensor):
            if isinstance(x, tuple | list):
                return x[args[1]] if isinstance(args[1], int | slice) else None
            return None if not isinstance(out, torch.Tensor) else _full(out)
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        canon = self.canonical(x)
        # which input dims an index item touches
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        d = 0
        for item in idx:
            if item is None:
                continue
            if item is Ellipsis:
                d += x.dim() - n_real
                continue
            full = isinstance(item, slice) and item == slice(None, None, None)
            if not full and d < x.dim() and varies_along(canon, d):
                self.pin_all(x, "indexing a channel dim")
            is_mask = isinstance(item, torch.Tensor) and item.dtype == torch.bool
            d += item.dim() if is_mask else 1
        try:
            return canon[args[1]]
        except (IndexError, RuntimeError, TypeError):
            return self._fail("getitem", x, out)

    def _reshape(self, op: str, n: fx.Node, x: object, args: tuple, out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return _full(out)
        raw = list(n.args[1:])
        if len(raw) == 1 and isinstance(raw[0], tuple | list):
            raw = list(raw[0])
        canon = self.canonical(x)
        shape_in, shape_out = tuple(x.shape), tuple(out.shape)
        lab = canon.reshape(shape_out)
        if len(raw) != len(shape_out):
            raw = [None] * len(shape_out)  # a shape tensor or torch.Size: treat as dynamic
        for dims_in, dims_out in _split_groups(shape_in, shape_out):
            if not any(varies_along(canon, d) for d in dims_in):
                continue
            literal = [d for d in dims_out if _is_literal(raw[d])]
            dynamic = [d for d in dims_out if d not in literal and shape_out[d] > 1]
            if len(dims_out) == 1 and not literal:
                continue  # kept or merged, the size follows the channels
            if len(dims_in) == 1 and len(dynamic) == 1:
                ref = lab
                for d in dims_out:
                    if d != dynamic[0] and shape_out[d] > 1:
                        ref = ref.narrow(d, 0, 1)
                self.u.unify(lab, ref.expand_as(lab))  # the same slot of every block
                continue
            self.pin_all(x, f"{op} with a fixed channel size")
        largs = fx.node.map_arg(n.args[1:], lambda a: self.labels.get(a))
        if len(largs) == 1 and isinstance(largs[0], tuple | list):
            largs = tuple(largs[0])
        for d, tag in enumerate(largs):
            if not isinstance(tag, _SizeTag) or d >= lab.dim():
                continue
            # the size follows channels: fine if this dim carries those very channels
            along = torch.unique(self.canonical(lab.movedim(d, 0).reshape(lab.shape[d], -1)))
            wanted = torch.unique(self.canonical(tag.labels))
            if bool((along < 0).any()) or not bool(torch.isin(wanted, along).all()):
                self.pin_all(tag.labels, f"{op} to a size read from channels")
        return lab

    def _split(self, op: str, n: fx.Node, x: object, args: tuple, kwargs: dict,
               out: Any) -> object:
        if not isinstance(x, torch.Tensor):
            return _full(out)
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        canon = self.canonical(x)
        parts = getattr(canon, op)(*args[1:2], dim=dim)
        if varies_along(canon, dim):
            sizes = {p.shape[dim] for p in parts}
            if op == "chunk" and len(sizes) == 1:
                first = parts[0]
                for p in parts[1:]:
                    self.u.unify(first, p)  # slot i of every chunk goes together
            else:
                self.pin_all(x, f"{op} of a channel dim")
        return tuple(parts)

    def _movement(self, op: str, n: fx.Node, largs: tuple, args: tuple, kwargs: dict,
                  out: Any) -> object:
        def swap(a: object, r: object) -> object:
            return a if isinstance(r, torch.Tensor) else r

        lab_args = [swap(la, ra) for la, ra in zip(largs, args, strict=False)]
        if op in ("cat", "concat", "concatenate", "stack"):
            seq = largs[0]
            lab_args[0] = [s if s is not None else _full(r) for s, r in zip(seq, args[0],
                                                                          strict=False)]
        lkw = {k: v for k, v in kwargs.items()}
        try:
            if n.op == "call_method":
                return getattr(lab_args[0], op)(*lab_args[1:], **lkw)
            fn = getattr(torch, op, None) or n.target
            return fn(*lab_args, **lkw)
        except (RuntimeError, TypeError, AttributeError, IndexError):
            return self._fail(op, largs, out)

    def _pad(self, x: object, args: tuple, kwargs: dict, out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor):
            return _full(out)
        pad = list(kwargs.get("pad", args[1]))
        mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        lab = x
        for k in range(len(pad) // 2):
            d = x.dim() - 1 - k
            lo, hi = pad[2 * k], pad[2 * k + 1]
            if lo == hi == 0:
                continue
            if varies_along(self.canonical(x), d):
                if mode != "constant" or lo < 0 or hi < 0:
                    return self._fail("pad of a channel dim", x, out)
                shp = list(lab.shape)
                parts = [torch.full([*shp[:d], lo, *shp[d + 1:]], UNLABELED, dtype=torch.long),
                         lab,
                         torch.full([*shp[:d], hi, *shp[d + 1:]], UNLABELED, dtype=torch.long)]
                lab = torch.cat(parts, dim=d)
            else:
                shp = list(lab.shape)
                shp[d] = out.shape[d]
                lab = lab.narrow(d, 0, 1).expand(shp)
        return lab

    def _reduce(self, op: str, x: object, args: tuple, kwargs: dict, out: torch.Tensor) -> object:
        if not isinstance(x, torch.Tensor):
            return _full(out)
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if op in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            return self._binary(op, [x, self.labels.get(args[1])], out)
        if dims is None:
            dims = tuple(range(x.dim()))
        if isinstance(dims, int):
            dims = (dims,)
        dims = tuple(sorted(d % x.dim() for d in dims))
        canon = self.canonical(x)
        if any(varies_along(canon, d) for d in dims):
            self.pin_all(x, f"{op} over channels")
        lab = canon
        for d in reversed(dims):
            lab = lab.narrow(d, 0, 1)
            if not keep:
                lab = lab.squeeze(d)
        if isinstance(out, tuple):
            return (lab, lab)
        return lab if tuple(lab.shape) == tuple(out.shape) else self._fail(op, x, out)

