"""Mask whole units (filters, neurons, channels) everywhere they live.

Filter rows and bias, the BatchNorm scale and shift after them, and the consumer's
input columns are masked through :func:`prunelab.masks.set_mask`, so the masked model
computes what the physically smaller model of :func:`prunelab.surgery.compact_model`
computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distributed import sync_masks
from .graph import (
    Structure,
    check_keep_mask,
    following_batchnorms,
    surgery_blocker,
    surgery_links,
)
from .masks import effective_tensor, get_mask, is_masked, set_mask
from .selection import out_units
from .surgery import SurgeryError

# ----------------------------------------------------------------------------- masking


__all__ = [
    "ChannelMaskResult",
    "apply_channel_masks",
]


@dataclass(frozen=True)
class ChannelMaskResult:
    """What :func:`apply_channel_masks` did to one layer.

    Attributes:
        layer: the Linear/Conv layer whose output units were masked.
        units: its number of output units.
        removed: indices of the masked units.
        consumer: the layer whose input columns were masked too (``None``: not linked).
        batchnorms: BatchNorm modules whose scale and shift were masked.
        surgery_blocker: why :func:`prunelab.surgery.compact_model` cannot remove these
            units physically (``None``: it can); masking works either way.
    """

    layer: str
    units: int
    removed: tuple[int, ...]
    consumer: str | None
    batchnorms: tuple[str, ...]
    surgery_blocker: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "layer": self.layer,
            "units": self.units,
            "removed": list(self.removed),
            "consumer": self.consumer,
            "batchnorms": list(self.batchnorms),
            "surgery_blocker": self.surgery_blocker,
        }


def _mask_rows(module: nn.Module, name: str, idx: torch.Tensor) -> None:
    raw = module._parameters[f"{name}_orig"] if is_masked(module, name) else getattr(module, name)
    if raw is None:
        return
    old = get_mask(module, name)
    mask = old.clone() if old is not None else torch.ones_like(raw)
    mask[idx.to(mask.device)] = 0
    set_mask(module, name, mask)


def apply_channel_masks(
    model: nn.Module,
    keep: Mapping[str, torch.Tensor],
    structure: Structure,
    *,
    require_surgery: bool = False,
) -> list[ChannelMaskResult]:
    """Mask whole units: filter rows and bias, BatchNorm scale and shift, consumer columns.

    Everything goes through :func:`prunelab.masks.set_mask` (monotone), so the removed units
    stay exactly zero during fine-tuning (the optimizer state of masked entries must be
    cleared with :func:`prunelab.masks.sync_optimizer` if the optimizer already has state).
    For a linked layer the masked model then equals the one
    :func:`prunelab.surgery.compact_model` builds. A layer the surgery cannot handle (no
    consumer, residual join, grouped convolution) is masked only: its rows, bias and the
    BatchNorm right after it.

    Args:
        model: the network (modified in place).
        keep: ``{layer: BoolTensor[out_units]}`` from a criterion; False = remove.
        structure: from :func:`prunelab.graph.trace_structure`.
        require_surgery: raise instead of masking when a layer cannot be removed physically.

    Returns:
        One :class:`ChannelMaskResult` per layer of ``keep``.

    Raises:
        ValueError: unknown layer, wrong mask shape, or a mask removing every unit.
        SurgeryError: ``require_surgery`` and a layer the surgery cannot handle (the message
            names the layer and why).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.graph import trace_structure
        >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> s = trace_structure(m, torch.zeros(1, 2))
        >>> r = apply_channel_masks(m, {"0": torch.tensor([True, False, True])}, s)
        >>> m[2].weight_mask.tolist(), r[0].consumer
        ([[1.0, 0.0, 1.0]], '2')
    """
    mods = dict(model.named_modules())
    checked: list[tuple[str, torch.Tensor, str | None]] = []
    for name, mask in keep.items():
        mask = check_keep_mask(mods, structure, name, mask)
        if not bool(mask.any()):
            raise ValueError(f"keep mask of {name!r} removes every unit; keep at least one")
        blocker = surgery_blocker(model, structure, name)
        if blocker is not None and require_surgery and not bool(mask.all()):
            raise SurgeryError(f"cannot physically remove units of layer {name!r}: {blocker}")
        checked.append((name, mask, blocker))
    results = []
    for name, mask, blocker in checked:
        idx = torch.nonzero(~mask).flatten()
        link = next((lk for lk in surgery_links(structure) if lk.producer == name), None)
        bns = following_batchnorms(model, structure, name)
        if idx.numel():
            p = mods[name]
            _mask_rows(p, "weight", idx)
            _mask_rows(p, "bias", idx)
            for b in bns:
                _mask_rows(mods[b], "weight", idx)
                _mask_rows(mods[b], "bias", idx)
            if link is not None:
                c = mods[link.consumer]
                old = get_mask(c)
                cmask = old.clone() if old is not None else torch.ones_like(effective_tensor(c))
                cmask.view(cmask.shape[0], out_units(p), -1)[:, idx.to(cmask.device)] = 0
                set_mask(c, "weight", cmask)
        results.append(
            ChannelMaskResult(
                layer=name,
                units=mask.numel(),
                removed=tuple(int(j) for j in idx),
                consumer=link.consumer if link is not None else None,
                batchnorms=bns,
                surgery_blocker=blocker,
            )
        )
    sync_masks(model)  # a process group: rank 0's masks on every rank (no-op otherwise)
    return results
