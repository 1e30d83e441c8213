"""Mask mechanics: how pruning is enforced.

prunelab follows the convention of :mod:`torch.nn.utils.prune` exactly: a pruned tensor
``name`` of a module becomes a parameter ``<name>_orig`` (the *same* ``Parameter`` object as
before, so an optimizer created before pruning keeps working), a buffer ``<name>_mask`` of
0/1 values, and a plain attribute ``<name>`` recomputed as ``orig * mask`` by a forward
pre-hook. Consequently ``torch.nn.utils.prune.is_pruned(model)`` is true for a model pruned by
prunelab, ``torch.nn.utils.prune.remove`` makes pruning permanent, and a model pruned with
``torch.nn.utils.prune`` can be pruned further by prunelab.

On top of that convention prunelab keeps pruned entries of ``<name>_orig`` at exactly zero
and clears the optimizer state of pruned entries (:func:`sync_optimizer`), so that no
optimizer (SGD with momentum/Nesterov/weight decay, Adam, AdamW) can revive them: with a zero
weight, a zero gradient (the mask multiplies it) and zero state, every update is exactly zero.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.masks import set_mask, sparsity
    >>> layer = nn.Linear(4, 2)
    >>> _ = set_mask(layer, "weight", torch.tensor([[1., 0, 1, 0], [0, 0, 1, 1]]))
    >>> torch.nn.utils.prune.is_pruned(layer), sparsity(layer)
    (True, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    "DetachEffective",
    "effective_tensor",
    "enforce_masks",
    "get_mask",
    "is_masked",
    "iter_masks",
    "load_pruned_state_dict",
    "make_permanent",
    "mask_state",
    "masked_training",
    "raw_parameter",
    "set_mask",
    "sparsity",
    "sync_optimizer",
]


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """Return whether ``module.<name>`` is pruned in the ``torch.nn.utils.prune`` convention.

    Example:
        >>> from torch import nn
        >>> is_masked(nn.Linear(2, 2))
        False
    """
    return f"{name}_mask" in module._buffers and f"{name}_orig" in module._parameters


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """Return the mask buffer of ``module.<name>``, or ``None`` when it is not pruned.

    Example:
        >>> from torch import nn
        >>> get_mask(nn.Linear(2, 2)) is None
        True
    """
    return module._buffers.get(f"{name}_mask") if is_masked(module, name) else None


def raw_parameter(
    module: nn.Module, name: str = "weight", *, missing_ok: bool = False
) -> nn.Parameter | None:
    """The trainable parameter behind ``name`` (``<name>_orig`` when masked).

    Args:
        module: the module owning the tensor.
        name: parameter name.
        missing_ok: return ``None`` instead of raising when there is no such parameter.

    Raises:
        ValueError: no parameter ``name`` (and not ``missing_ok``).

    Example:
        >>> from torch import nn
        >>> raw_parameter(nn.Linear(2, 2), "bias").shape
        torch.Size([2])
    """
    if is_masked(module, name):
        return module._parameters[f"{name}_orig"]
    param = module._parameters.get(name)
    if param is None and missing_ok:
        return None
    if param is None:
        raise ValueError(
            f"module {type(module).__name__} has no parameter {name!r}; "
            f"its parameters are {sorted(module._parameters)}"
        )
    return param


def effective_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """Return the tensor the forward pass uses: ``orig * mask`` when masked, else the parameter.

    Always recomputed, so it is valid even before the next forward pass.

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> bool((effective_tensor(layer) == layer.weight).all())
        True
    """
    if is_masked(module, name):
        return module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"]
    return raw_parameter(module, name)


class DetachEffective:
    """Forward hook that detaches ``module.<name>`` once the forward pass is done.

    ``torch.nn.utils.prune``'s pre-hook stores ``orig * mask`` as a plain attribute with an
    autograd history; such a non-leaf tensor makes ``copy.deepcopy(model)`` fail. The graph
    of the pass already holds what backward needs, so the attribute itself can be detached.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, inputs: object, output: object) -> None:
        value = module.__dict__.get(self.name)
        if torch.is_tensor(value) and value.grad_fn is not None:
            module.__dict__[self.name] = value.detach()


def _ensure_detach_hook(module: nn.Module, name: str) -> None:
    for hook in module._forward_hooks.values():
        if isinstance(hook, DetachEffective) and hook.name == name:
            return
    module.register_forward_hook(DetachEffective(name))


def _install(module: nn.Module, name: str) -> None:
    """Reparametrise ``module.<name>`` with ``torch.nn.utils.prune.identity``, in place.

    ``identity`` re-registers the parameter as ``<name>_orig`` at the *end* of the module's
    parameters. It is moved back to where ``<name>`` was, so the parameter order (which
    optimizer state dicts are keyed by) is the unpruned module's order whatever order masks
    were installed in: a checkpoint whose keys come back sorted (safetensors) restores the
    same order as the run that wrote it.
    """
    keys = list(module._parameters)
    position = keys.index(name) if name in keys else len(keys)
    torch_prune.identity(module, name)
    items = list(module._parameters.items())
    moved = items.pop(next(i for i, (k, _) in enumerate(items) if k == f"{name}_orig"))
    items.insert(position, moved)
    module._parameters.clear()
    module._parameters.update(items)


def _refresh(module: nn.Module, name: str) -> None:
    """Recompute the plain attribute ``module.<name>`` after a mask change (as the hook does)."""
    with torch.no_grad():
        value = module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"]
    # Same as the pre-hook, but outside autograd; the next forward recomputes it with grad.
    setattr(module, name, value)


def set_mask(
    module: nn.Module,
    name: str,
    mask: torch.Tensor,
    *,
    monotone: bool = True,
) -> torch.Tensor:
    """Install or update the pruning mask of ``module.<name>``.

    The first call registers ``<name>_orig``/``<name>_mask`` and the forward pre-hook with
    ``torch.nn.utils.prune.identity`` (the parameter object is kept, not replaced); later calls
    write into the existing mask buffer in place. Pruned entries of ``<name>_orig`` are set to
    exactly zero.

    Args:
        module: the module owning the tensor.
        name: parameter name, usually ``"weight"``.
        mask: tensor of the parameter's shape; nonzero means keep.
        monotone: when true (the default, as in the paper) a pruned entry stays pruned:
            the new mask is ``old_mask * mask``. When false the mask is replaced, so entries
            can be revived; a revived entry restarts from zero.

    Returns:
        The mask buffer now in force.

    Raises:
        ValueError: the shape does not match or the parameter does not exist.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> m = set_mask(layer, "weight", torch.tensor([[1., 0.], [1., 1.]]))
        >>> float(layer.weight[0, 1]) == 0.0  # -0.0 when the weight was negative
        True
    """
    param = raw_parameter(module, name)
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match {name!r} of shape {tuple(param.shape)}"
        )
    if not is_masked(module, name):
        _install(module, name)
    _ensure_detach_hook(module, name)
    buf = module._buffers[f"{name}_mask"]
    new = (mask != 0).to(dtype=buf.dtype, device=buf.device)
    with torch.no_grad():
        if monotone:
            buf.mul_(new)
        else:
            buf.copy_(new)
        module._parameters[f"{name}_orig"].mul_(buf)
    _refresh(module, name)
    return buf


def iter_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """Yield ``(module_name, module, tensor_name, mask)`` for every masked tensor of ``model``.

    Example:
        >>> from torch import nn
        >>> list(iter_masks(nn.Linear(2, 2)))
        []
    """
    for mod_name, module in model.named_modules():
        for buf_name, buf in module._buffers.items():
            if buf_name.endswith("_mask") and buf is not None:
                tensor_name = buf_name[: -len("_mask")]
                if is_masked(module, tensor_name):
                    yield mod_name, module, tensor_name, buf


def enforce_masks(model: nn.Module) -> None:
    """Multiply every ``<name>_orig`` by its mask in place (a cheap guard after a step).

    With :func:`sync_optimizer` called at each mask change this is a no-op for the built-in
    optimizers; it protects against optimizers with exotic state (e.g. a custom one).

    Example:
        >>> from torch import nn
        >>> enforce_masks(nn.Linear(2, 2))
    """
    with torch.no_grad():
        for _, module, tensor_name, mask in iter_masks(model):
            module._parameters[f"{tensor_name}_orig"].mul_(mask)


def sync_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Zero the optimizer state of pruned entries so it cannot revive them.

    Every tensor-valued state entry of the same shape as a masked parameter (momentum
    buffers, Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, ...) is multiplied by the
    mask. Call it after every mask change when the optimizer already holds state.

    Returns:
        The number of state tensors that were masked.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        >>> sync_optimizer(opt, layer)
        0
    """
    masks = {
        id(module._parameters[f"{t}_orig"]): mask for _, module, t, mask in iter_masks(model)
    }
    count = 0
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                mask = masks.get(id(p))
                state = optimizer.state.get(p)
                if mask is None or not state:
                    continue
                for value in state.values():
                    if torch.is_tensor(value) and value.shape == mask.shape:
                        value.mul_(mask.to(value.dtype))
                        count += 1
    return count


@contextmanager
def masked_training(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> Iterator[Callable[[], None]]:
    """Fast exact masking for a training loop; yields ``after_step()`` to call after each step.

    Inside the block the pruning hooks are taken off and ``module.<name>`` *is* the
    ``<name>_orig`` parameter, so the forward pass costs what an unpruned model's does (no
    ``orig * mask`` product, no hook calls); ``after_step()`` multiplies every
    ``<name>_orig`` by its mask in place (one fused call), so every forward pass sees exactly
    ``orig * mask``, as with ``torch.nn.utils.prune``'s hook. On exit the hooks are put back,
    the masks re-applied, ``<name>`` recomputed and the optimizer's state of pruned entries
    zeroed (:func:`sync_optimizer`). Tensors pruned by a chain of ``torch.nn.utils.prune``
    methods (a ``PruningContainer``) keep their own hook.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(3, 2)
        >>> _ = set_mask(layer, "weight", torch.tensor([[1., 0., 1.], [0., 1., 0.]]))
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        >>> with masked_training(layer, opt) as after_step:
        ...     layer(torch.ones(4, 3)).sum().backward()
        ...     opt.step()
        ...     after_step()
        >>> bool(layer.weight_orig[0, 1] == 0) and bool(layer.weight[0, 1] == 0)
        True
    """
    removed: list[tuple[nn.Module, str, dict, dict]] = []
    origs: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    enforce_masks(model)
    try:
        for _, module, name, mask in list(iter_masks(model)):
            pre = {
                k: h for k, h in module._forward_pre_hooks.items()
                if isinstance(h, torch_prune.BasePruningMethod)
                and getattr(h, "_tensor_name", None) == name
            }
            if len(pre) != 1 or isinstance(next(iter(pre.values())),
                                            torch_prune.PruningContainer):
                continue
            post = {k: h for k, h in module._forward_hooks.items()
                    if isinstance(h, DetachEffective) and h.name == name}
            for k in pre:
                del module._forward_pre_hooks[k]
            for k in post:
                del module._forward_hooks[k]
            removed.append((module, name, pre, post))
            orig = module._parameters[f"{name}_orig"]
            # Bypass Module.__setattr__ (it would register a second parameter).
            module.__dict__[name] = orig
            origs.append(orig)
            masks.append(mask)

        def after_step() -> None:
            if origs:
                with torch.no_grad():
                    torch._foreach_mul_(origs, masks)

        yield after_step
    finally:
        for module, _, pre, post in removed:
            module._forward_pre_hooks.update(pre)
            module._forward_hooks.update(post)
        enforce_masks(model)
        for module, name, _, _ in removed:
            _refresh(module, name)
        if optimizer is not None:
            sync_optimizer(optimizer, model)


def sparsity(module: nn.Module, name: str = "weight") -> float:
    """Fraction of entries of ``module.<name>`` that are zero in the effective tensor.

    Example:
        >>> from torch import nn
        >>> sparsity(nn.Linear(3, 3))
        0.0
    """
    t = effective_tensor(module, name)
    return 1.0 - float(torch.count_nonzero(t)) / t.numel() if t.numel() else 0.0


def mask_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return ``{"<module>.<name>_mask": mask}`` for every masked tensor (for checkpoints).

    Example:
        >>> from torch import nn
        >>> mask_state(nn.Linear(2, 2))
        {}
    """
    out = {}
    for mod_name, _, t, mask in iter_masks(model):
        out[f"{mod_name}.{t}_mask" if mod_name else f"{t}_mask"] = mask
    return out


def load_pruned_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> nn.Module:
    """Load a state dict saved from a pruned model into a (possibly unpruned) fresh model.

    Keys ``<m>.<name>_mask`` install masks on ``model`` (in place, as in :func:`set_mask`)
    before the weights are loaded, so the ``_orig`` keys find their parameters. A plain
    state dict (no masks) loads as usual.

    Args:
        model: a freshly built model of the same architecture.
        state_dict: from ``pruned_model.state_dict()`` or a checkpoint.
        strict: passed to ``load_state_dict``.

    Returns:
        ``model``, now pruned as the saved one.

    Raises:
        ValueError: a mask names a module or tensor the model does not have.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> src = nn.Linear(2, 2)
        >>> _ = set_mask(src, "weight", torch.tensor([[1., 0.], [0., 1.]]))
        >>> dst = load_pruned_state_dict(nn.Linear(2, 2), src.state_dict())
        >>> bool(torch.equal(dst.weight, src.weight))
        True
    """
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        if not key.endswith("_mask"):
            continue
        mod_name, _, buf = key.rpartition(".")
        tensor_name = buf[: -len("_mask")]
        module = modules.get(mod_name)
        if module is None:
            raise ValueError(f"state dict has a mask {key!r} for unknown module {mod_name!r}")
        orig_key = f"{mod_name}.{tensor_name}_orig" if mod_name else f"{tensor_name}_orig"
        if orig_key not in state_dict:
            continue  # not in the prune convention; let load_state_dict report it
        if not is_masked(module, tensor_name):
            _install(module, tensor_name)
        _ensure_detach_hook(module, tensor_name)
        with torch.no_grad():
            module._buffers[f"{tensor_name}_mask"].copy_(value)
    model.load_state_dict(dict(state_dict), strict=strict)
    for _, module, t, _ in list(iter_masks(model)):
        _refresh(module, t)
    return model


def make_permanent(model: nn.Module, names: Iterable[str] | None = None) -> nn.Module:
    """Remove every mask (``torch.nn.utils.prune.remove``): zeros become plain weights.

    Args:
        model: a pruned model (modified in place).
        names: module names to unmask; all masked modules when ``None``.

    Returns:
        ``model``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> _ = set_mask(layer, "weight", torch.eye(2))
        >>> torch.nn.utils.prune.is_pruned(make_permanent(layer))
        False
    """
    wanted = set(names) if names is not None else None
    for mod_name, module, t, _ in list(iter_masks(model)):
        if wanted is None or mod_name in wanted:
            torch_prune.remove(module, t)
    return model
