"""Multiply-accumulates of one forward pass, counted from the calls actually made.

Counts every call of Conv / Linear modules (a module called twice counts twice), the
projections and attention products of ``nn.MultiheadAttention`` and torchvision's Swin window
attention, per sample of the example batch. Element-wise work (norms, activations, adds) is
not counted, as is usual for MAC figures.

Example:
    >>> import torch
    >>> from torch import nn
    >>> count_macs(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.ones(5, 4))
    18
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .hooks import eval_forward
from .masks import effective_tensor

__all__ = ["count_macs"]


def _swin_types() -> tuple[type[nn.Module], ...]:
    try:
        from torchvision.models.swin_transformer import (
            ShiftedWindowAttention,
            ShiftedWindowAttentionV2,
        )
    except ImportError:  # pragma: no cover
        return ()
    return (ShiftedWindowAttention, ShiftedWindowAttentionV2)


def count_macs(model: nn.Module, example_input: Any) -> int:
    """MACs per sample of ``model(example_input)`` (batch = the first input's first dim).

    Args:
        model: the network (run in eval mode without gradients; its mode is restored).
        example_input: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    """
    total = [0]
    swin = _swin_types()

    def hook(mod: nn.Module, inp: tuple, out: Any) -> None:
        # attention blocks apply their projections functionally: their Linears never fire
        if isinstance(mod, nn.modules.conv._ConvNd):
            w = effective_tensor(mod, "weight")
            total[0] += out.numel() * (w[0].numel() if not mod.transposed else w.shape[1])
        elif isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features
        elif isinstance(mod, nn.MultiheadAttention):
            q, e = inp[0], mod.embed_dim
            lq = q.shape[1] if mod.batch_first or q.dim() == 2 else q.shape[0]
            n = q.numel() // e
            total[0] += n * e * 3 * e + n * e * e + 2 * n * lq * e
        elif swin and isinstance(mod, swin):
            x = inp[0]
            c = x.shape[-1]
            tokens = x.numel() // c
            total[0] += tokens * c * 4 * c + 2 * tokens * math.prod(mod.window_size) * c

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, *swin)
    hooks = [(m, hook) for m in model.modules() if isinstance(m, kinds)]
    x = example_input
    first = x[0] if isinstance(x, tuple) else next(iter(x.values())) if isinstance(
        x, Mapping) else x
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
    eval_forward(model, x, forward_hooks=hooks, unpack=True)
    return total[0] // max(batch, 1)
