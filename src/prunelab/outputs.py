"""Compare model outputs: tensors, or tuples / lists / dicts of them (nested).

Used wherever prunelab checks that a transformed model (compiled, fused, compacted) computes
what the original does.

Example:
    >>> import torch
    >>> a = {"y": (torch.ones(2), torch.zeros(1))}
    >>> max_abs_diff(a, {"y": (torch.full((2,), 1.5), torch.zeros(1))}), max_abs(a)
    (0.5, 1.0)
    >>> max_abs_diff(torch.ones(2), torch.ones(3))  # shapes differ
    inf
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["close", "flatten_tensors", "max_abs", "max_abs_diff"]


def flatten_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_tensors(v)]
    if isinstance(out, Sequence) and not isinstance(out, str):
        return [t for v in out for t in flatten_tensors(v)]
    return []


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference; ``inf`` when the structures or shapes differ."""
    ta, tb = flatten_tensors(a), flatten_tensors(b)
    if len(ta) != len(tb):
        return math.inf
    err = 0.0
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape:
            return math.inf
        if x.numel():
            err = max(err, float((x.float() - y.float()).abs().max()))
    return err


def max_abs(a: Any) -> float:
    """Largest absolute value of a (nested) output (its scale)."""
    return max((float(t.float().abs().max()) for t in flatten_tensors(a) if t.numel()),
               default=0.0)


def close(a: Any, b: Any, atol: float, rtol: float) -> bool:
    """Same structure and shapes, and every tensor ``allclose``."""
    ta, tb = flatten_tensors(a), flatten_tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and torch.allclose(x, y, atol=atol, rtol=rtol)
        for x, y in zip(ta, tb, strict=True)
    )
