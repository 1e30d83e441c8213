"""Batches moved to the training device as they are drawn (pinned memory, non-blocking).

Example:
    >>> import torch
    >>> batches = OnDevice([(torch.zeros(2, 3), torch.zeros(2).long())], "cpu")
    >>> [x.shape for x, _ in batches], len(batches)
    ([torch.Size([2, 3])], 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["OnDevice"]


class OnDevice:
    """Wrap an iterable of ``(inputs, targets)`` so each batch arrives on ``device``.

    ``set_epoch``, ``len`` and ``num_examples`` are passed through to the wrapped batches
    (a ``DataLoader`` wrapper with a ``DistributedSampler``, :class:`TensorBatches`), so the
    trainer seeds and counts them as it would the originals. Copies are non-blocking (they
    overlap compute when the loader pins memory). With ``channels_last`` 4-D inputs are
    laid out channels-last, like the model.
    """

    def __init__(self, batches: Iterable[Any], device: str | torch.device, *,
                 channels_last: bool = False) -> None:
        self.batches = batches
        self.device = torch.device(device)
        self.channels_last = channels_last

    def set_epoch(self, seed: int) -> None:
        """Seed the wrapped batches' next epoch (when they take a seed)."""
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(seed)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    @property
    def num_examples(self) -> int:
        """Examples per epoch of the wrapped batches."""
        return int(getattr(self.batches, "num_examples"))  # noqa: B009

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        for x, y in self.batches:
            fmt_x = torch.preserve_format if x.dim() != 4 else fmt
            yield (x.to(self.device, non_blocking=True, memory_format=fmt_x),
                   y.to(self.device, non_blocking=True))
