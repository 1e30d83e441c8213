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
        rank, world: this rank's share of a data-parallel epoch, as
            ``DistributedSampler`` deals it: the epoch's permutation is padded (repeating
            its start) to a multiple of ``world`` and rank ``r`` takes its positions
            ``r, r + world, ...``; so with ``batch_size = B / world`` the union over ranks
            of batch ``b`` is batch ``b`` of one process with batch size ``B``.

    Raises:
        ValueError: a batch size that is not a positive integer, ``x`` and ``y`` of
            different lengths, or a rank outside ``[0, world)``.

    Example:
        >>> import torch
        >>> x = torch.arange(8.0).unsqueeze(1)
        >>> whole = TensorBatches(x, torch.arange(8), batch_size=4)
        >>> halves = [TensorBatches(x, torch.arange(8), batch_size=2, rank=r, world=2)
        ...           for r in (0, 1)]
        >>> first = [next(iter(h))[1] for h in halves]
        >>> sorted(torch.cat(first).tolist()) == sorted(next(iter(whole))[1].tolist())
        True
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: an integer >= 1")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs have {x.shape[0]} examples but targets {y.shape[0]}")
        if not (world >= 1 and 0 <= rank < world):
            raise ValueError(f"rank={rank!r} of world={world!r} is invalid; allowed: 0 <= rank "
                             "< world")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world = int(rank), int(world)
        self._seed = 0

    def set_epoch(self, seed: int) -> None:
        """Seed the next epoch's permutation."""
        self._seed = int(seed)

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples per epoch (of this rank)."""
        return math.ceil(int(self.x.shape[0]) / self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        if self.world > 1:
            yield from self._shard()
            return
        if not self.shuffle:  # views, no copy
            for b in range(len(self)):
                yield self.x[b * bs : (b + 1) * bs], self.y[b * bs : (b + 1) * bs]
            return
        gen = torch.Generator().manual_seed(self._seed)
        order = torch.randperm(self.x.shape[0], generator=gen).to(self.x.device)
        for b in range(len(self)):
            idx = order[b * bs : (b + 1) * bs]
            yield self.x[idx], self.y[idx]

    def _shard(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = int(self.x.shape[0])
        if self.shuffle:
            gen = torch.Generator().manual_seed(self._seed)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        total = self.num_examples * self.world
        if total > n:  # pad by repeating the start, as DistributedSampler does
            order = torch.cat([order, order[: total - n]])
        mine = order[self.rank :: self.world].to(self.x.device)
        bs = self.batch_size
        for b in range(len(self)):
            idx = mine[b * bs : (b + 1) * bs]
            yield self.x[idx], self.y[idx]
