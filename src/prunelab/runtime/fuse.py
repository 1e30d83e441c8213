"""Low-overhead whole-model execution of a compiled sparse model (``torch.fx``).

At batch 1 a pruned LeNet's layers take a few microseconds each, so the Python around them
(``nn.Module.__call__`` per layer, ReLU and Dropout modules, flatten) costs as much as the
arithmetic. :func:`fuse_sparse` traces the compiled model with ``torch.fx`` (packed layers are
leaves) and rewrites the graph:

* a packed layer calls its C++ kernel object directly (no module call), and a following ReLU
  that is its only user is fused into the kernel (applied after the bias);
* ``nn.Dropout`` / ``nn.Identity`` in eval mode are removed;
* ``nn.ReLU`` / ``nn.Flatten`` become ``torch.relu`` / ``torch.flatten`` calls;
* ``nn.MaxPool2d`` without padding or dilation runs the C++ pooling kernel
  (torch's CPU ``max_pool2d`` on NCHW float is several times slower here).

The fused module must reproduce the unfused one's output on the example input, else
:func:`fuse_sparse` returns ``None`` and the caller keeps the unfused model. Models ``torch.fx``
cannot trace (data-dependent control flow) are left as they are, also ``None``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.runtime.packed import PackedLinear
    >>> net = nn.Sequential(nn.Flatten(), PackedLinear(torch.eye(4)), nn.ReLU(), nn.Dropout())
    >>> fused = fuse_sparse(net.eval(), torch.randn(2, 2, 2))
    >>> fused is None or bool(torch.equal(fused(-torch.ones(2, 2, 2)), torch.zeros(2, 4)))
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunelab.outputs import close
from prunelab.runtime import native
from prunelab.runtime.packed import PackedConv2d, PackedLinear

__all__ = ["fuse_sparse", "packed_call"]

_RELU_FUNCTIONS = (torch.relu, F.relu, torch.relu_)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (PackedLinear, PackedConv2d)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def packed_call(layer: nn.Module, x: torch.Tensor, relu: bool) -> torch.Tensor:
    """Run a packed layer through its kernel object, ReLU fused (the fused graph's call).

    Example:
        >>> lin = PackedLinear(-torch.eye(3))
        >>> packed_call(lin, torch.ones(2, 3), True).abs().sum().item()
        0.0
    """
    kernel = layer._kernel if layer._kernel is not None else layer.kernel()
    if kernel:
        if isinstance(layer, PackedLinear) and x.dim() == 2 and x.shape[0] > 0:
            return kernel.linear(x, relu)
        if isinstance(layer, PackedConv2d) and x.dim() == 4 and not layer._pointwise:
            return kernel.conv2d(x, layer._geometry, relu)
    y = layer(x)
    return torch.relu(y) if relu else y


def _max_pool(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    mod = native._module
    if mod is not None and x.dim() == 4 and x.dtype is torch.float32 and x.device.type == "cpu":
        return mod.max_pool2d(x, kh, kw, sh, sw)
    return F.max_pool2d(x, (kh, kw), (sh, sw))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _plain_pool(m: nn.MaxPool2d) -> tuple[int, int, int, int] | None:
    if m.ceil_mode or m.return_indices or _pair(m.padding) != (0, 0):
        return None
    if _pair(m.dilation) != (1, 1):
        return None
    kh, kw = _pair(m.kernel_size)
    sh, sw = _pair(m.stride if m.stride is not None else m.kernel_size)
    return kh, kw, sh, sw


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and not node.kwargs.get("inplace", False)
    return False


def fuse_sparse(
    model: nn.Module, example_input: tuple[Any, ...] | torch.Tensor, *, atol: float = 1e-5,
    rtol: float = 1e-4,
) -> fx.GraphModule | None:
    """The fused form of a compiled (eval-mode) model, or ``None`` if it cannot be fused.

    Args:
        model: a model whose pruned layers are :class:`PackedLinear` / :class:`PackedConv2d`.
        example_input: checked: the fused output must match ``model``'s within tolerance.

    Example:
        >>> fuse_sparse(nn.Sequential(nn.Linear(3, 3)), torch.randn(1, 3)) is None
        True
    """
    if not native.available():
        return None
    modules = dict(model.named_modules())
    if not any(isinstance(m, (PackedLinear, PackedConv2d)) for m in modules.values()):
        return None
    try:
        graph = _Tracer().trace(model)
    except Exception:  # untraceable (control flow on values, unsupported Python): keep as is
        return None
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        mod = modules[str(node.target)]
        if isinstance(mod, (nn.Dropout, nn.Identity)) and not mod.training:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
        elif isinstance(mod, (PackedLinear, PackedConv2d)) and len(node.args) == 1:
            users = list(node.users)
            relu = len(users) == 1 and _is_relu(users[0], modules)
            with graph.inserting_before(node):
                layer = graph.get_attr(str(node.target))
                new = graph.call_function(packed_call, (layer, node.args[0], relu))
            if relu:
                users[0].replace_all_uses_with(new)
                graph.erase_node(users[0])
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            changed = True
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        mod = modules[str(node.target)]
        replacement: tuple[Any, tuple[Any, ...]] | None = None
        if isinstance(mod, nn.ReLU) and len(node.args) == 1:
            replacement = (torch.relu, (node.args[0],))
        elif isinstance(mod, nn.Flatten) and len(node.args) == 1:
            replacement = (torch.flatten, (node.args[0], mod.start_dim, mod.end_dim))
        elif isinstance(mod, nn.MaxPool2d) and len(node.args) == 1:
            pool = _plain_pool(mod)
            if pool is not None:
                replacement = (_max_pool, (node.args[0], *pool))
        if replacement is None:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(replacement[0], replacement[1])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed = True
    if not changed:
        return None
    graph.lint()
    fused = fx.GraphModule(model, graph, class_name=f"Fused{type(model).__name__}")
    fused.eval()
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with torch.inference_mode():
            want, got = model(*inputs), fused(*inputs)
    except Exception:
        return None

    if not close(want, got, atol, rtol):
        return None
    return fused

