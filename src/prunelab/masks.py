"""Mask mechanics: how pruning is enforced.

prunelab keeps the *names* of :mod:`torch.nn.utils.prune`: a pruned tensor ``name`` of a
module is stored as a parameter ``<name>_orig`` (the *same* ``Parameter`` object as before,
at the same position in ``module._parameters``, so an optimizer created before pruning and
positional optimizer state dicts keep working) and a buffer ``<name>_mask`` of 0/1 values.
What differs is how ``module.<name>`` is produced. ``torch.nn.utils.prune`` stores
``orig * mask`` as a plain attribute, recomputed by a forward pre-hook of the module that
owns it; that attribute is stale whenever the tensor is read outside its module's own
forward (``nn.MultiheadAttention`` reads ``self.out_proj.weight`` directly, a weight-tied
head shares the embedding's ``Parameter``) and it does not follow ``.to(dtype)``.

Here ``<name>`` is a *property* of the module's class: the module's class is swapped for a
subclass created once per (class, names) whose property returns ``<name>_orig * <name>_mask``
at every access, with autograd, wherever the access comes from. So the value is never stale,
the gradient of ``<name>_orig`` is exactly zero at pruned entries in any training loop, and
``deepcopy``/``pickle``/``.to()`` see only parameters and buffers. The subclass keeps the
class name (``repr`` and ``type(m).__name__`` are unchanged) and ``isinstance`` still holds.
Interop with :mod:`torch.nn.utils.prune` both ways:

* a ``BasePruningMethod`` pre-hook stays registered (one whose call does nothing; the
  property does the work), so ``torch.nn.utils.prune.is_pruned(model)`` is true and
  ``torch.nn.utils.prune.l1_unstructured`` & co. can prune further (they wrap it in a
  ``PruningContainer`` and register a new mask buffer, which the property reads);
* ``torch.nn.utils.prune.remove(module, name)`` works: deleting ``module.<name>`` (the first
  thing ``remove`` does) restores the original class, then ``remove`` re-registers
  ``<name>_orig`` as ``<name>`` holding ``orig * mask``;
* the property's setter ignores tensors assigned to ``<name>`` (what a pruning hook assigns at
  every forward, always ``orig * mask``), so a tensor pruned by torch (a single method or a
  ``PruningContainer``) is taken over by :func:`set_mask`, which also replaces its torch hook
  by prunelab's (the replaced hook is kept as ``hook.replaced``).

Why a property: on speed the three mechanisms tie. ``benchmarks/bench_mask_mechanics.py``
(results and command in ``benchmarks/results/mask_mechanics/``; CPU time of a training step,
one thread, interleaved, median ratio to the dense model, run-to-run noise about +-3%):
LeNet-5 hooks 1.07, ``parametrize`` 1.03, property 1.04; a TransformerEncoderLayer model
hooks 1.05 (and wrong: ``out_proj`` never trains), ``parametrize`` 1.08, property 1.03;
``masked_training`` 1.02 and 1.04. So the choice is made on correctness and interop:
``torch.nn.utils.parametrize`` (what ``torch.ao.pruning`` uses) is as correct but renames the
tensors (``parametrizations.weight.original``), which breaks ``torch.nn.utils.prune`` interop
and every checkpoint; the hooks are wrong as soon as a tensor is read outside its module's
forward. Inside
:func:`masked_training` (our training loop) the property returns ``<name>_orig`` itself (no
product) and a post-accumulate-grad hook multiplies the gradient by the mask, so pruned
gradients are exactly zero before the optimizer step (``clip_grad_norm_`` sees only kept
entries) while the kept entries' forward/backward numerics are those of the dense model.

prunelab also keeps pruned entries of ``<name>_orig`` at exactly zero and clears the optimizer
state of pruned entries (:func:`sync_optimizer`), so that no optimizer (SGD with
momentum/Nesterov/weight decay, Adam, AdamW) can revive them: with a zero weight, a zero
gradient and zero state, every update is exactly zero. A ``Parameter`` shared by several
modules (tied embedding and head) is masked on all of them with one buffer by
:func:`tie_masks`.

Caveats: ``type(m) is nn.Linear`` is false for a masked layer (``isinstance`` holds; the
class's ``__module__`` is the base's, so ``torch.fx`` still treats it as a leaf, and its
``__qualname__`` says ``Linear[masked: weight]``); in-place writes to ``module.<name>`` change
a temporary (write to ``<name>_orig``); ``Module.to()`` gives each module its own copy of a
shared mask buffer, so call :func:`tie_masks` again after a dtype/device move of a tied model.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.masks import set_mask, sparsity
    >>> layer = nn.Linear(4, 2)
    >>> _ = set_mask(layer, "weight", torch.tensor([[1., 0, 1, 0], [0, 0, 1, 1]]))
    >>> torch.nn.utils.prune.is_pruned(layer), sparsity(layer), type(layer).__name__
    (True, 0.5, 'Linear')
    >>> layer.weight_orig.grad is None
    True
    >>> layer(torch.ones(1, 4)).sum().backward()
    >>> layer.weight_orig.grad[0].tolist()
    [1.0, 0.0, 1.0, 0.0]
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    "effective_tensor",
    "enforce_masks",
    "get_mask",
    "has_dense_updates",
    "is_masked",
    "iter_masks",
    "load_pruned_state_dict",
    "make_permanent",
    "mask_gradients",
    "mask_state",
    "masked_training",
    "raw_parameter",
    "set_dense_updates",
    "set_mask",
    "sparsity",
    "sync_optimizer",
    "tie_masks",
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

    Always recomputed (with autograd), so it is valid at any time.

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> bool((effective_tensor(layer) == layer.weight).all())
        True
    """
    if is_masked(module, name):
        return module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"]
    return raw_parameter(module, name)


# ----------------------------------------------------------------------------- the property


class _MaskMarker(torch_prune.BasePruningMethod):
    """The ``torch.nn.utils.prune`` hook of a prunelab-masked tensor; its call does nothing.

    It makes ``torch.nn.utils.prune.is_pruned`` true and gives ``torch.nn.utils.prune.remove``
    and further torch pruning the method they expect (it behaves like ``prune.Identity``:
    ``compute_mask`` returns the current mask). The effective tensor is the class property.
    ``replaced`` is the torch hook this one replaced (``None`` for a tensor prunelab masked).
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, name: str, replaced: torch_prune.BasePruningMethod | None = None) -> None:
        self._tensor_name = name
        self.replaced = replaced

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        return default_mask

    def __call__(self, module: nn.Module, inputs: object) -> None:
        return None


# How ``module.<name>`` is produced: "product" (``orig * mask``), "direct" (inside
# masked_training: ``orig`` itself, its pruned entries being zero) or "dense" (dense updates,
# dynamic network surgery: ``orig * mask`` forward, the gradient passed to every entry).
# (original class, ((name, mode), ...)) -> subclass with one property per name
_CLASSES: dict[tuple[type, tuple[tuple[str, str], ...]], type] = {}

# module.__dict__ key: the names of the module's tensors under dense updates
_DENSE_KEY = "_prunelab_dense_updates"


class _StraightThrough(torch.autograd.Function):
    """``orig * mask`` whose gradient reaches every entry of ``orig`` (pruned ones too)."""

    @staticmethod
    def forward(ctx: Any, orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return orig * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _property(name: str, mode: str) -> property:
    orig_key, mask_key = f"{name}_orig", f"{name}_mask"

    if mode == "direct":  # inside masked_training: the parameter itself (pruned entries are 0)

        def fget(self: nn.Module) -> torch.Tensor:
            try:
                return self._parameters[orig_key]
            except KeyError:
                raise AttributeError(name) from None  # unmasked by hand: Module.__getattr__
    elif mode == "dense":

        def fget(self: nn.Module) -> torch.Tensor:
            try:
                return _StraightThrough.apply(self._parameters[orig_key], self._buffers[mask_key])
            except KeyError:
                raise AttributeError(name) from None
    else:

        def fget(self: nn.Module) -> torch.Tensor:
            try:
                return self._parameters[orig_key] * self._buffers[mask_key]
            except KeyError:
                raise AttributeError(name) from None

    def fset(self: nn.Module, value: object) -> None:
        # Pruning hooks (torch's, and older code) assign ``orig * mask`` here at every
        # forward; the property computes it at every access, so the assignment is dropped.
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__}.{name} is pruned ({orig_key} * {mask_key}); "
                f"it accepts only tensors (which are ignored), not {type(value).__name__}; "
                f"change {orig_key} or use prunelab.masks.set_mask"
            )

    def fdel(self: nn.Module) -> None:
        _unmanage(self, name)

    return property(fget, fset, fdel, f"``{orig_key} * {mask_key}`` (prunelab.masks).")


def _new_masked_module(base: type, spec: tuple[str, ...], *args: Any) -> nn.Module:
    """Unpickling/deepcopy constructor: an empty instance of the masked class (not direct)."""
    cls = _masked_class(base, tuple((n, "product") for n in spec))
    return cls.__new__(cls, *args)


def _masked_class(base: type, spec: tuple[tuple[str, str], ...]) -> type:
    key = (base, spec)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    names = tuple(n for n, _ in spec)

    def __reduce_ex__(self: nn.Module, protocol: int) -> Any:  # noqa: N807
        rv = super(cls, self).__reduce_ex__(max(protocol, 2))
        if isinstance(rv, tuple) and rv[0] is copyreg.__newobj__ and rv[1][0] is type(self):
            # Rebuild through this module (the class itself cannot be pickled by name), and
            # always as the plain masked class: a copy made inside masked_training is not
            # attached to the training session.
            return (_new_masked_module, (base, names, *rv[1][1:]), *rv[2:])
        return rv

    namespace: dict[str, Any] = {
        "__module__": base.__module__,
        # __module__ as the base's: torch.fx keeps a torch.nn layer a leaf, and ``__name__``
        # too (repr); the qualified name says what it is (``repr(type(m))``).
        "__qualname__": f"{base.__qualname__}[masked: {', '.join(names)}]",
        "__reduce_ex__": __reduce_ex__,
        "_prunelab_base": base,
        "_prunelab_spec": spec,
    }
    namespace.update({n: _property(n, mode) for n, mode in spec})
    cls = type(base.__name__, (base,), namespace)
    _CLASSES[key] = cls
    return cls


def _spec(module: nn.Module) -> dict[str, str]:
    return dict(type(module).__dict__.get("_prunelab_spec", ()))


def _set_spec(module: nn.Module, spec: Mapping[str, str]) -> None:
    base = type(module).__dict__.get("_prunelab_base", type(module))
    items = tuple(sorted(spec.items()))
    module.__class__ = _masked_class(base, items) if items else base


def _pruning_hooks(module: nn.Module, name: str) -> list[tuple[int, Any]]:
    return [
        (k, h) for k, h in module._forward_pre_hooks.items()
        if isinstance(h, torch_prune.BasePruningMethod)
        and getattr(h, "_tensor_name", None) == name
    ]


def _install(module: nn.Module, name: str, mask: torch.Tensor | None = None) -> None:
    """Rename ``<name>`` to ``<name>_orig`` in place (same position) and add ``<name>_mask``.

    The parameter keeps its position in ``module._parameters`` (optimizer state dicts are
    positional), whatever order masks are installed in. ``mask`` is registered as is (the
    same object; :func:`tie_masks`), else a mask of ones is created.
    """
    param = module._parameters[name]
    items = [(f"{name}_orig" if k == name else k, v) for k, v in module._parameters.items()]
    module._parameters.clear()
    module._parameters.update(items)
    if mask is None:
        mask = torch.ones_like(param, memory_format=torch.preserve_format)
    module.register_buffer(f"{name}_mask", mask)


def _manage(module: nn.Module, name: str, mask: torch.Tensor | None = None) -> None:
    """Make ``module.<name>`` a prunelab mask: installed, property, hook, training sessions."""
    if not is_masked(module, name):
        if name not in module._parameters or module._parameters[name] is None:
            raise ValueError(
                f"module {type(module).__name__} has no parameter {name!r}; "
                f"its parameters are {sorted(module._parameters)}"
            )
        _install(module, name, mask)
    hooks = _pruning_hooks(module, name)
    if len(hooks) != 1 or type(hooks[0][1]) is not _MaskMarker:
        # A torch hook would recompute (and drop) orig * mask at every forward: replace it,
        # at the same place, by the marker (it keeps the torch one for reference).
        for k, _ in hooks[1:]:
            del module._forward_pre_hooks[k]
        if hooks:
            k, old = hooks[0]
            module._forward_pre_hooks[k] = _MaskMarker(name, replaced=old)
        else:
            module.register_forward_pre_hook(_MaskMarker(name))
    module.__dict__.pop(name, None)  # torch's cached attribute (the property shadows it)
    spec = _spec(module)
    if name not in spec:
        spec[name] = _mode(module, name, any(s.holds(module, name) for s in _SESSIONS))
        _set_spec(module, spec)
    for session in _SESSIONS:
        session.adopt(module, name)


def _unmanage(module: nn.Module, name: str) -> None:
    """``del module.<name>``: drop the property (restoring the class) and leave sessions."""
    for session in _SESSIONS:
        session.release(module, name)
    spec = _spec(module)
    spec.pop(name, None)
    _set_spec(module, spec)


def _dense(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` is under dense updates (:func:`set_dense_updates`)."""
    return name in module.__dict__.get(_DENSE_KEY, ())


def _mode(module: nn.Module, name: str, direct: bool) -> str:
    if _dense(module, name):
        return "dense"
    return "direct" if direct else "product"


def _set_direct(module: nn.Module, name: str, direct: bool) -> None:
    spec = _spec(module)
    mode = _mode(module, name, direct)
    if name in spec and spec[name] != mode:
        spec[name] = mode
        _set_spec(module, spec)


# ----------------------------------------------------------------------------- public API


def set_mask(
    module: nn.Module,
    name: str,
    mask: torch.Tensor,
    *,
    monotone: bool = True,
) -> torch.Tensor:
    """Install or update the pruning mask of ``module.<name>``.

    The first call registers ``<name>_orig`` (the same parameter object, at the same position)
    and ``<name>_mask`` and makes ``module.<name>`` the property ``orig * mask``; later calls
    write into the existing mask buffer in place. Pruned entries of ``<name>_orig`` are set to
    exactly zero. A tensor pruned by ``torch.nn.utils.prune`` is taken over (its mask is
    kept and combined as below). Inside :func:`masked_training` the change takes effect at
    the next forward pass, for a tensor that had no mask as well.

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
        TypeError: ``mask`` is not a tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> m = set_mask(layer, "weight", torch.tensor([[1., 0.], [1., 1.]]))
        >>> float(layer.weight[0, 1].detach()) == 0.0  # -0.0 when the weight was negative
        True
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    param = raw_parameter(module, name)
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match {name!r} of shape {tuple(param.shape)}"
        )
    _manage(module, name)
    buf = module._buffers[f"{name}_mask"]
    new = (mask != 0).to(dtype=buf.dtype, device=buf.device)
    with torch.no_grad():
        if monotone:
            buf.mul_(new)
        else:
            buf.copy_(new)
        if not _dense(module, name):
            module._parameters[f"{name}_orig"].mul_(buf)
    return buf


def set_dense_updates(module: nn.Module, name: str = "weight", enabled: bool = True) -> None:
    """Let the pruned entries of ``module.<name>`` keep training (or stop it again).

    Dynamic network surgery (Guo et al. 2016) trains the dense weights under a mask: the
    forward pass uses ``orig * mask``, but the gradient with respect to that product reaches
    *every* entry of ``<name>_orig``, pruned ones included (a straight-through estimator), so
    a pruned weight that keeps growing can be spliced back by a later mask. Under dense
    updates the pruned entries of ``<name>_orig`` are therefore not zero and the optimizer
    keeps their state; :func:`masked_training`, :func:`enforce_masks`, :func:`sync_optimizer`,
    :func:`set_mask` and :func:`tie_masks` leave them alone. The effective tensor
    (``module.<name>``, :func:`effective_tensor`, exports) is ``orig * mask`` as always.
    ``enabled=False`` restores the usual invariant: pruned entries of ``<name>_orig`` are set
    to exactly zero (call :func:`sync_optimizer` next to clear their optimizer state). The
    flag lives in the module's ``__dict__`` (``deepcopy`` keeps it, ``state_dict`` does not).

    Raises:
        ValueError: ``module.<name>`` has no mask.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 1, bias=False)
        >>> _ = set_mask(layer, "weight", torch.tensor([[1.0, 0.0]]))
        >>> set_dense_updates(layer)
        >>> layer(torch.ones(1, 2)).sum().backward()
        >>> layer.weight_orig.grad.tolist()  # the pruned entry gets its gradient too
        [[1.0, 1.0]]
        >>> set_dense_updates(layer, enabled=False)
        >>> layer.weight_orig.grad = None
        >>> layer(torch.ones(1, 2)).sum().backward()
        >>> layer.weight_orig.grad.tolist()
        [[1.0, 0.0]]
    """
    if not is_masked(module, name):
        raise ValueError(
            f"{type(module).__name__}.{name} has no mask; dense updates apply to pruned "
            "tensors (set_mask first)"
        )
    names = set(module.__dict__.get(_DENSE_KEY, ()))
    if (name in names) == bool(enabled):
        return
    for session in _SESSIONS:
        session.release(module, name)
    if enabled:
        names.add(name)
    else:
        names.discard(name)
    module.__dict__[_DENSE_KEY] = frozenset(names)
    _set_direct(module, name, False)
    for session in _SESSIONS:
        if id(module) in session.modules:
            session.adopt(module, name)
    if not enabled:
        with torch.no_grad():
            module._parameters[f"{name}_orig"].mul_(module._buffers[f"{name}_mask"])


def has_dense_updates(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` is under :func:`set_dense_updates`.

    Example:
        >>> from torch import nn
        >>> has_dense_updates(nn.Linear(2, 2))
        False
    """
    return _dense(module, name)


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


def tie_masks(model: nn.Module) -> list[str]:
    """Mask every other holder of a masked parameter with the same mask buffer object.

    A ``Parameter`` held by several modules (an ``nn.Embedding`` and a ``Linear`` head sharing
    one weight) is masked on every holder once it is masked on one: each holder sees
    ``orig * mask`` with the *same* mask tensor, so a later :func:`set_mask` on any of them
    applies to all. Holders that already have their own mask are merged into the first
    one's (an entry pruned in either stays pruned). Idempotent; buffers are no longer shared
    after ``model.to(...)`` changes their dtype or device, and a second call ties them again.

    Returns:
        The ``"<module>.<name>"`` tensors that were tied by this call (empty when nothing
        changed).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> emb, head = nn.Embedding(4, 2), nn.Linear(2, 4, bias=False)
        >>> head.weight = emb.weight
        >>> model = nn.ModuleDict({"emb": emb, "head": head})
        >>> _ = set_mask(emb, "weight", torch.tensor([[1., 0], [1, 1], [0, 1], [1, 1]]))
        >>> tie_masks(model), tie_masks(model)
        (['head.weight'], [])
        >>> head.weight_mask is emb.weight_mask, bool((head.weight == emb.weight).all())
        (True, True)
    """
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, module in model.named_modules():
        for pname, p in module._parameters.items():
            if p is None:
                continue
            base = pname.removesuffix("_orig")
            name = base if pname != base and is_masked(module, base) else pname
            holders.setdefault(id(p), []).append((mod_name, module, name))
    tied: list[str] = []
    for group in holders.values():
        masked = [(m, n) for _, m, n in group if is_masked(m, n)]
        if len(group) < 2 or not masked:
            continue
        mask = get_mask(*masked[0])
        for mod_name, module, name in group:
            own = get_mask(module, name)
            if own is mask:
                continue
            if own is not None:
                with torch.no_grad():
                    mask.mul_((own != 0).to(dtype=mask.dtype, device=mask.device))
                module._buffers[f"{name}_mask"] = mask
            _manage(module, name, mask)
            tied.append(f"{mod_name}.{name}" if mod_name else name)
        if not _dense(*masked[0]):
            with torch.no_grad():
                masked[0][0]._parameters[f"{masked[0][1]}_orig"].mul_(mask)
    return tied


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
            if not _dense(module, tensor_name):
                module._parameters[f"{tensor_name}_orig"].mul_(mask)


def sync_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Zero the optimizer state of pruned entries so it cannot revive them.

    Every tensor-valued state entry of the same shape as a masked parameter (momentum
    buffers, Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, ...) is multiplied by the
    mask. Call it after every mask change when the optimizer already holds state (also inside
    :func:`masked_training`; ``Pruner.step(optimizer=...)`` does).

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
    masks: dict[int, list[torch.Tensor]] = {}
    for _, module, t, mask in iter_masks(model):
        if _dense(module, t):  # its pruned entries keep training
            continue
        found = masks.setdefault(id(module._parameters[f"{t}_orig"]), [])
        if not any(m is mask for m in found):
            found.append(mask)
    count = 0
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p)
                if id(p) not in masks or not state:
                    continue
                for value in state.values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        for mask in masks[id(p)]:
                            value.mul_(mask.to(value.dtype))
                        count += 1
    return count


class _GradMask:
    """Post-accumulate-grad hook: ``param.grad *= mask`` for every mask the parameter has."""

    def __init__(self) -> None:
        self.entries: list[tuple[nn.Module, str]] = []

    def __call__(self, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None:
            return
        for module, key in self.entries:
            mask = module._buffers.get(key)
            if mask is not None:
                grad.mul_(mask)


class _Session:
    """The masked tensors of one :func:`masked_training` block."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = {id(m) for m in model.modules()}
        self.entries: dict[tuple[int, str], tuple[nn.Module, str]] = {}
        self.grad_hooks: dict[int, tuple[_GradMask, Any]] = {}

    def holds(self, module: nn.Module, name: str) -> bool:
        return (id(module), name) in self.entries

    def adopt(self, module: nn.Module, name: str) -> None:
        if id(module) not in self.modules or self.holds(module, name):
            return
        self.entries[id(module), name] = (module, name)
        _set_direct(module, name, True)
        param = module._parameters[f"{name}_orig"]
        if not param.requires_grad or _dense(module, name):
            return
        if id(param) not in self.grad_hooks:
            fn = _GradMask()
            self.grad_hooks[id(param)] = (fn, param.register_post_accumulate_grad_hook(fn))
        self.grad_hooks[id(param)][0].entries.append((module, f"{name}_mask"))

    def release(self, module: nn.Module, name: str) -> None:
        if self.entries.pop((id(module), name), None) is None:
            return
        for fn, _ in self.grad_hooks.values():
            fn.entries = [(m, k) for m, k in fn.entries
                          if not (m is module and k == f"{name}_mask")]

    def after_step(self) -> None:
        origs: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        seen: set[tuple[int, int]] = set()
        for module, name in self.entries.values():
            if _dense(module, name):
                continue
            orig, mask = module._parameters[f"{name}_orig"], module._buffers[f"{name}_mask"]
            if (id(orig), id(mask)) not in seen:
                seen.add((id(orig), id(mask)))
                origs.append(orig)
                masks.append(mask)
        if origs:
            with torch.no_grad():
                torch._foreach_mul_(origs, masks)

    def close(self) -> None:
        for _, handle in self.grad_hooks.values():
            handle.remove()
        self.grad_hooks.clear()
        for module, name in self.entries.values():
            if not any(s.holds(module, name) for s in _SESSIONS):
                _set_direct(module, name, False)
        self.entries.clear()


_SESSIONS: list[_Session] = []


@contextmanager
def masked_training(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> Iterator[Callable[[], None]]:
    """Fast exact masking for a training loop; yields ``after_step()`` to call after each step.

    Inside the block ``module.<name>`` *is* the ``<name>_orig`` parameter, so the forward pass
    costs what an unpruned model's does (no ``orig * mask`` product); a hook on each
    ``<name>_orig`` multiplies its gradient by the mask as soon as it is accumulated, so
    gradients at pruned entries are exactly zero before the optimizer step (gradient clipping
    sees only the kept entries), and ``after_step()`` multiplies every ``<name>_orig`` by its
    mask in place (one fused call), so every forward pass sees exactly ``orig * mask``.
    Masks may change between steps (:func:`set_mask`, also on a tensor that had no mask when
    the block was entered, :func:`tie_masks`): the next forward uses the new mask, gradients
    and ``after_step()`` follow it; call :func:`sync_optimizer` after such a change (as
    ``Pruner.step(optimizer=...)`` does) to clear the state of newly pruned entries. On exit
    the hooks are removed, ``module.<name>`` is ``orig * mask`` again, the masks are
    re-applied and the optimizer's state of pruned entries is zeroed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(3, 2)
        >>> _ = set_mask(layer, "weight", torch.tensor([[1., 0., 1.], [0., 1., 0.]]))
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
        >>> with masked_training(layer, opt) as after_step:
        ...     layer(torch.ones(4, 3)).sum().backward()
        ...     print(layer.weight_orig.grad[0].tolist())
        ...     opt.step()
        ...     after_step()
        [4.0, 0.0, 4.0]
        >>> bool(layer.weight_orig[0, 1] == 0) and bool(layer.weight[0, 1] == 0)
        True
    """
    session = _Session(model)
    enforce_masks(model)
    _SESSIONS.append(session)
    try:
        for _, module, name, _ in list(iter_masks(model)):
            _manage(module, name)
        yield session.after_step
    finally:
        _SESSIONS.remove(session)
        session.close()
        enforce_masks(model)
        if optimizer is not None:
            sync_optimizer(optimizer, model)


def mask_gradients(model: nn.Module) -> int:
    """Multiply the gradient of every masked ``<name>_orig`` by its mask, in place.

    :func:`masked_training` does this as each gradient is accumulated; call this after the
    backward pass when something rewrites gradients later (``DistributedDataParallel``
    copies the averaged gradients into ``.grad`` after the hooks ran), so that pruned
    entries are exactly zero before gradient clipping and the optimizer step.

    Returns:
        The number of gradients masked.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(2, 1)
        >>> _ = set_mask(layer, "weight", torch.tensor([[1.0, 0.0]]))
        >>> layer.weight_orig.grad = torch.ones(1, 2)
        >>> mask_gradients(layer), layer.weight_orig.grad.tolist()
        (1, [[1.0, 0.0]])
    """
    grads: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for _, module, name, mask in iter_masks(model):
        grad = module._parameters[f"{name}_orig"].grad
        if grad is not None:
            grads.append(grad)
            masks.append(mask)
    if grads:
        with torch.no_grad():
            torch._foreach_mul_(grads, masks)
    return len(grads)


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
    state dict (no masks) loads as usual. Tied parameters get one shared mask again
    (:func:`tie_masks`).

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
        if not is_masked(module, tensor_name) and tensor_name not in module._parameters:
            raise ValueError(
                f"state dict has a mask {key!r} but module {mod_name!r} "
                f"({type(module).__name__}) has no parameter {tensor_name!r}; "
                f"its parameters are {sorted(module._parameters)}"
            )
        _manage(module, tensor_name)
        with torch.no_grad():
            module._buffers[f"{tensor_name}_mask"].copy_(value)
    model.load_state_dict(dict(state_dict), strict=strict)
    tie_masks(model)
    return model


def make_permanent(model: nn.Module, names: Iterable[str] | None = None) -> nn.Module:
    """Remove every mask (``torch.nn.utils.prune.remove``): zeros become plain weights.

    The parameter keeps its object and its position in ``module._parameters``.

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
        >>> torch.nn.utils.prune.is_pruned(make_permanent(layer)), list(layer._parameters)
        (False, ['weight', 'bias'])
    """
    wanted = set(names) if names is not None else None
    for mod_name, module, t, _ in list(iter_masks(model)):
        if wanted is None or mod_name in wanted:
            if not _pruning_hooks(module, t):
                _manage(module, t)  # hookless (rebuilt by hand): give remove() its hook
            position = list(module._parameters).index(f"{t}_orig")
            torch_prune.remove(module, t)
            items = list(module._parameters.items())
            items.insert(position, items.pop(next(i for i, (k, _) in enumerate(items) if k == t)))
            module._parameters.clear()
            module._parameters.update(items)
    return model
