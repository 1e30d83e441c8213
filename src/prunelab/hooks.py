"""Run one forward pass in eval mode with temporary hooks (the model is left as it was).

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> seen = []
    >>> _ = eval_forward(m, torch.zeros(1, 2),
    ...                  forward_hooks=[(m[0], lambda mod, i, o: seen.append(o.shape))])
    >>> seen, m.training
    ([torch.Size([1, 3])], True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = ["eval_forward"]


def eval_forward(
    model: nn.Module,
    x: torch.Tensor,
    *,
    forward_hooks: Iterable[tuple[nn.Module, Callable]] = (),
    pre_hooks: Iterable[tuple[nn.Module, Callable]] = (),
    unpack: bool = False,
) -> torch.Tensor:
    """``model(x)`` in eval mode without autograd, with hooks installed only for this call.

    The model's training mode is restored and every hook removed, even on error. With
    ``unpack``, a tuple ``x`` is passed as positional inputs and a dict as keyword inputs.

    Returns:
        The model's output.
    """
    handles = [m.register_forward_hook(fn) for m, fn in forward_hooks]
    handles += [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if unpack and isinstance(x, tuple):
                return model(*x)
            if unpack and isinstance(x, Mapping):
                return model(**x)
            return model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
