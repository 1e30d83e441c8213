"""A fast in-memory batcher: mini-batches as slices of tensors held on the device.

No per-sample Python and no worker processes: each epoch draws one permutation from a
generator seeded by :meth:`TensorBatches.set_epoch` (the same protocol as
``torch.utils.data.DistributedSampler.set_epoch``), so every epoch's batches are a pure
function of its seed, which is what makes a resumed run continue exactly. Any iterable of
``(inputs, targets)`` batches (a ``DataLoader`` too) can take its place in
:class:`prunelab.training.Trainer`.

Example:
    >>> import torch
    >>> b = TensorBatches(torch.arange(10.0).unsqueeze(1), torch.arange(10), batch_size=4)
    >>> b.set_epoch(0)
    >>> [len(y) for _, y in b], len(b)
    ([4, 4, 2], 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["TensorBatches"]


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors (the last batch may be smaller).

    Args:
        x: inputs ``[N, ...]``.
        y: targets ``[N]``.
        batch_size: examples per batch, > 0.
        shuffle: draw a new permutation each epoch (else the stored order).

    Raises:
        ValueError: a batch size that is not a positive integer, or ``x`` and ``y`` of
            different lengths.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool = True
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: an integer >= 1")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs have {x.shape[0]} examples but targets {y.shape[0]}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._seed = 0

    def set_epoch(self, seed: int) -> None:
        """Seed the next epoch's permutation."""
        self._seed = int(seed)

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(self.x.shape[0] / self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples per epoch."""
        return int(self.x.shape[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        if not self.shuffle:  # views, no copy
            for b in range(len(self)):
                yield self.x[b * bs : (b + 1) * bs], self.y[b * bs : (b + 1) * bs]
            return
        gen = torch.Generator().manual_seed(self._seed)
        order = torch.randperm(self.x.shape[0], generator=gen).to(self.x.device)
        for b in range(len(self)):
            idx = order[b * bs : (b + 1) * bs]
            yield self.x[idx], self.y[idx]
