"""Multiply-accumulates of one forward pass, counted from the operations actually run.

``torch.utils.flop_counter`` counts every convolution and matrix product the forward pass
executes (a module called twice counts twice; attention done in functional calls, einsum and
``scaled_dot_product_attention`` included: the math kernel is selected while counting so the
fused paths are seen). Element-wise work (norms, activations, adds) is not counted, as is usual
for MAC figures. Weights are counted dense: a masked model counts like its architecture.

Example:
    >>> import torch
    >>> from torch import nn
    >>> count_macs(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.ones(5, 4))
    18
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .hooks import eval_forward

__all__ = ["count_macs"]


def count_macs(model: nn.Module, example_input: Any) -> int:
    """MACs per sample of ``model(example_input)`` (batch = the first input's first dim).

    Args:
        model: the network (run in eval mode without gradients; its mode is restored).
        example_input: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    """
    x = example_input
    first = x[0] if isinstance(x, tuple) else next(iter(x.values())) if isinstance(
        x, Mapping) else x
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        eval_forward(model, x, unpack=True)
    return int(counter.get_total_flops()) // 2 // max(batch, 1)
