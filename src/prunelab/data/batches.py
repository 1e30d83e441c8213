"""A fast in-memory batcher: mini-batches as slices of tensors held on the device.

No per-sample Python and no worker processes: each epoch draws one permutation from a
generator seeded by :meth:`TensorBatches.set_epoch` (the same protocol as
``torch.utils.data.DistributedSampler.set_epoch``), so every epoch's batches are a pure
function of its seed, which is what makes a resumed run continue exactly. Any iterable of
``(inputs, targets)`` batches (a ``DataLoader`` too) can take its place in
:class:`prunelab.training.Trainer`.

For data-parallel runs, ``rank`` and ``world`` deal each epoch as
``DistributedSampler(num_replicas=world, rank=rank, shuffle=True, seed=0)`` does: the same
permutation as one process (``torch.randperm(N)`` from a generator seeded with the epoch's
seed), padded by repeating its start to a multiple of ``world``, rank ``r`` taking positions
``r, r + world, ...``. With ``batch_size = B / world`` the union over ranks of batch ``b``
is batch ``b`` of one process with batch size ``B``. ``pad=False`` gives evaluation shards
instead: ``[rank::world]``, no example repeated, so per-rank sums add up to the whole split.

``shift=s`` translates every training image by a random whole number of pixels in
``[-s, s]`` along each axis, filling the uncovered border with the background value (the
inputs' minimum: a blank pixel of MNIST-like data after normalising). The offsets are drawn
from the epoch's generator after its permutation, one pair per example of the whole epoch,
so the permutation is that of ``shift=0``, a resumed epoch gets the same images, and the
ranks of a data-parallel epoch together see exactly one process's batches.

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

__all__ = ["TensorBatches", "check_rank", "shard_indices", "shard_size", "translate"]

MAX_SHIFT = 8


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors (the last batch may be smaller).

    Args:
        x: inputs ``[N, ...]``.
        y: targets ``[N]``.
        batch_size: examples per batch, > 0.
        shuffle: draw a new permutation each epoch (else the stored order).
        rank, world: this process's share of a data-parallel epoch (see the module
            docstring); ``world=1`` is the whole data, batched exactly as without them.
        pad: with ``world > 1``, pad the epoch's order by repeating its start so that every
            rank gets ``ceil(N / world)`` examples (as ``DistributedSampler`` does; for
            training); ``False``: rank ``r`` gets the positions ``r::world`` only (for
            evaluation: every example on exactly one rank).
        shift: random translation of each image by up to this many pixels along each axis
            (0: none; needs ``shuffle`` and images ``[N, C, H, W]``; see the module docstring).

    Raises:
        ValueError: a batch size that is not a positive integer, ``x`` and ``y`` of
            different lengths, a rank outside ``[0, world)``, or a shift that is not an
            integer in ``[0, 8]`` or is given for unshuffled or non-image inputs.

    Example:
        >>> x, y = torch.arange(6.0).unsqueeze(1), torch.arange(6)
        >>> [b[1].tolist() for b in TensorBatches(x, y, batch_size=4, shuffle=False)]
        [[0, 1, 2, 3], [4, 5]]
        >>> [[b[1].tolist() for b in TensorBatches(x, y, batch_size=2, shuffle=False,
        ...                                        rank=r, world=4)] for r in (0, 3)]
        [[[0, 4]], [[3, 1]]]
        >>> [[b[1].tolist() for b in TensorBatches(x, y, batch_size=2, shuffle=False,
        ...                                        rank=r, world=4, pad=False)] for r in (0, 3)]
        [[[0, 4]], [[3]]]
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
        pad: bool = True,
        shift: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: an integer >= 1")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs have {x.shape[0]} examples but targets {y.shape[0]}")
        check_rank(rank, world)
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= MAX_SHIFT:
            raise ValueError(f"shift={shift!r} is invalid; allowed: an integer in [0, {MAX_SHIFT}]")
        if shift and (not shuffle or x.ndim != 4):
            raise ValueError(f"shift={shift} needs shuffled image batches [N, C, H, W]; got "
                             f"shuffle={shuffle} and inputs of shape {tuple(x.shape)}")
        self.shift = shift
        self._fill = float(x.amin()) if shift and x.numel() else 0.0
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world, self.pad = int(rank), int(world), bool(pad)
        self._seed = 0

    def set_epoch(self, seed: int) -> None:
        """Seed the next epoch's permutation."""
        self._seed = int(seed)

    def __len__(self) -> int:
        """Batches per epoch (of this rank)."""
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples per epoch (of this rank; padding included)."""
        return shard_size(int(self.x.shape[0]), self.rank, self.world, pad=self.pad)

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
        order = torch.randperm(self.x.shape[0], generator=gen)
        x = self._epoch_inputs(gen)
        order = order.to(self.x.device)
        for b in range(len(self)):
            idx = order[b * bs : (b + 1) * bs]
            yield x[idx], self.y[idx]

    def _epoch_inputs(self, gen: torch.Generator) -> torch.Tensor:
        """This epoch's inputs: ``x`` itself, or with a shift every image translated by its
        offsets (``[N, 2]`` draws of the epoch's generator, after the permutation)."""
        if not self.shift:
            return self.x
        s = self.shift
        offsets = torch.randint(-s, s + 1, (int(self.x.shape[0]), 2), generator=gen)
        return translate(self.x, offsets.to(self.x.device), fill=self._fill)

    def _shard(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of a ``world > 1`` epoch (see the module docstring)."""
        n = int(self.x.shape[0])
        if self.shuffle:
            gen = torch.Generator().manual_seed(self._seed)
            order = torch.randperm(n, generator=gen)
            x = self._epoch_inputs(gen)
        else:
            order, x = torch.arange(n), self.x
        mine = shard_indices(order, self.rank, self.world, pad=self.pad).to(self.x.device)
        bs = self.batch_size
        for b in range(len(self)):
            idx = mine[b * bs : (b + 1) * bs]
            yield x[idx], self.y[idx]


def translate(x: torch.Tensor, offsets: torch.Tensor, *, fill: float = 0.0) -> torch.Tensor:
    """Images ``x [B, C, H, W]`` moved by whole pixels: image ``i`` by ``offsets[i] = (dy, dx)``.

    Pixel ``(r, c)`` of the result is pixel ``(r - dy, c - dx)`` of the input where that lies
    inside the image, and ``fill`` elsewhere. One copy per distinct offset, so a whole epoch
    is translated in a few large slices.

    Example:
        >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> translate(x, torch.tensor([[1, -1]]), fill=-1.0)[0, 0].tolist()
        [[-1.0, -1.0, -1.0], [1.0, 2.0, -1.0], [4.0, 5.0, -1.0]]
    """
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    for (dy, dx) in torch.unique(offsets, dim=0).tolist():
        if abs(dy) >= h or abs(dx) >= w:  # moved out of the image: all fill
            continue
        sel = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().squeeze(1)
        src = x[sel][:, :, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        out[sel, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = src
    return out


def check_rank(rank: int, world: int) -> None:
    """Raise unless ``world >= 1`` and ``0 <= rank < world`` (both integers).

    Raises:
        ValueError: names the bad pair and what is allowed.

    Example:
        >>> check_rank(1, 2)
        >>> check_rank(2, 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: rank=2 of world=2 is invalid; allowed: integers with world >= 1 and ...
    """
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (rank, world))
    if not (ok and world >= 1 and 0 <= rank < world):
        raise ValueError(f"rank={rank!r} of world={world!r} is invalid; allowed: integers with "
                         "world >= 1 and 0 <= rank < world")


def shard_size(n: int, rank: int, world: int, *, pad: bool) -> int:
    """How many of ``n`` examples rank ``rank`` of ``world`` gets (see :func:`shard_indices`).

    Example:
        >>> shard_size(10, 3, 4, pad=True), shard_size(10, 3, 4, pad=False)
        (3, 2)
    """
    if pad:
        return math.ceil(n / world)
    return len(range(rank, n, world))


def shard_indices(order: torch.Tensor, rank: int, world: int, *, pad: bool) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's ``order``, dealt like ``DistributedSampler``.

    With ``pad``, ``order`` is first extended by repeating it from its start to a multiple
    of ``world`` (``DistributedSampler(drop_last=False)``); rank ``r`` then takes the
    positions ``r, r + world, ...``.

    Example:
        >>> shard_indices(torch.arange(5), 1, 3, pad=True).tolist()
        [1, 4]
        >>> shard_indices(torch.arange(5), 2, 3, pad=True).tolist()
        [2, 0]
        >>> shard_indices(torch.arange(5), 2, 3, pad=False).tolist()
        [2]
    """
    n = int(order.shape[0])
    if pad and n:
        total = math.ceil(n / world) * world
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
    return order[rank::world]
