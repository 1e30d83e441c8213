"""Block sparsity: magnitude pruning of whole ``rows x cols`` blocks of a weight matrix.

A weight is viewed as a matrix ``[out, rest]`` (a Conv weight ``[out, in, kh, kw]`` as
``[out, in * kh * kw]``, the layout of its im2col GEMM), tiled from the origin into blocks of
``block = (rows, cols)``; ``(1, 4)`` blocks are 4 consecutive weights of one output row,
``(4, 4)`` blocks tiles of 4 outputs by 4 inputs. A block's score is its L2 norm (``"l2"``,
the default; ``"l1"``: the sum of ``|w|``), all blocks being the same size. ``amount`` is the
fraction of the layer's *blocks* pruned: exactly ``round(amount * n_blocks)`` blocks (the
lowest scores; ties: the earlier block, in row-major block order, is kept), so a dense
layer ends at weight sparsity ``round(amount * n_blocks) / n_blocks``. A shape that does not
tile (``out % rows`` or ``rest % cols`` not zero) is an error; there is no partial edge block.

With ``current`` (monotone pruning) pruned entries stay pruned; a block is alive while any
of its entries is, fully pruned blocks count towards the target, and a partly pruned block is
scored by its surviving weights.

There are no per-entry scores, so ``scope="global"`` is refused: one threshold over entries
(:func:`prunelab.allocation.global_keep`) keeps an exact number of *entries*, which splits
the block at the threshold, and breaks ties between equal blocks by entry position, which for
``rows > 1`` interleaves the entries of neighbouring blocks.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, 1.0, 0.1, 0.1], [2.0, 0.0, 0.0, 0.5]])
    >>> block_magnitude_mask(w, 0.5, block=(1, 2)).int().tolist()  # norms 1.41 .14 2 .5
    [[1, 1, 0, 0], [1, 1, 0, 0]]
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..allocation import alive_mask, check_sparsity, keep_count, keep_top
from .base import Context, Criterion
from .registry import register_criterion

__all__ = ["BLOCK_NORMS", "BlockMagnitude", "block_magnitude_mask", "block_view"]

BlockNorm = Literal["l1", "l2"]
BLOCK_NORMS: tuple[str, ...] = ("l1", "l2")


def _check_block(block: object) -> tuple[int, int]:
    ok = (
        isinstance(block, Sequence) and not isinstance(block, str) and len(block) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                for v in block)
    )  # fmt: skip
    if not ok:
        raise ValueError(
            f"block={block!r} is invalid; allowed: two positive integers (rows, cols), "
            "e.g. (1, 4) or (4, 4)"
        )
    return int(block[0]), int(block[1])  # type: ignore[index]


def block_view(tensor: torch.Tensor, block: tuple[int, int], *, layer: str = "") -> torch.Tensor:
    """``tensor`` as ``[out // rows, rows, rest // cols, cols]`` blocks (a view when possible).

    Raises:
        ValueError: ``tensor`` is a scalar, or its matrix view does not tile into ``block``.

    Example:
        >>> import torch
        >>> block_view(torch.zeros(8, 2, 3, 3), (4, 2)).shape
        torch.Size([2, 4, 9, 2])
    """
    rows, cols = _check_block(block)
    if tensor.dim() == 0:
        raise ValueError("block sparsity needs a tensor with at least one dimension")
    mat = tensor.reshape(tensor.shape[0], -1) if tensor.dim() >= 2 else tensor.reshape(1, -1)
    out, rest = mat.shape
    if out % rows or rest % cols:
        where = f"layer {layer!r}: " if layer else ""
        raise ValueError(
            f"{where}weight of shape {tuple(tensor.shape)} (as a matrix {out} x {rest}) does "
            f"not tile into blocks of {rows} x {cols}; use a block dividing both, or exclude "
            "the layer (exclude=...)"
        )
    return mat.reshape(out // rows, rows, rest // cols, cols)


@register_criterion("block_magnitude")
@dataclass(frozen=True)
class BlockMagnitude(Criterion):
    """Prune whole blocks of lowest norm (``amount``: the fraction of blocks pruned).

    Args:
        block: ``(rows, cols)`` of a block, in the ``[out, rest]`` matrix view.
        norm: ``"l2"`` (default) or ``"l1"``, the block score.

    Raises:
        ValueError: a bad block or norm.

    Example:
        >>> import torch
        >>> w = torch.tensor([[3.0, 3.0, 0.1, 0.2], [0.1, 0.1, 5.0, 0.0]])
        >>> BlockMagnitude(block=(1, 2)).compute_mask(w, 0.5, None, Context()).int().tolist()
        [[1, 1, 0, 0], [0, 0, 1, 1]]
    """

    block: tuple[int, int] = (1, 4)
    norm: BlockNorm = "l2"

    def __post_init__(self) -> None:
        # A run config gives a list ([1, 4]); a frozen dataclass stores the checked tuple.
        object.__setattr__(self, "block", _check_block(self.block))
        if self.norm not in BLOCK_NORMS:
            raise ValueError(f"norm={self.norm!r} is unknown; allowed: {BLOCK_NORMS}")

    def block_scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """The norm of each block, ``[out // rows, rest // cols]`` (float32 or float64)."""
        b = block_view(tensor.detach(), self.block, layer=context.layer)
        if b.dtype not in (torch.float32, torch.float64):
            b = b.float()  # half / bfloat16: norms of many entries need the wider sum
        return torch.linalg.vector_norm(b, ord=1 if self.norm == "l1" else 2, dim=(1, 3))

    def compute_mask(
        self,
        tensor: torch.Tensor,
        amount: float,
        current: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """Keep the ``n_blocks - round(amount * n_blocks)`` alive blocks of highest norm."""
        alive = alive_mask(tensor, current)
        scores = self.block_scores(tensor * alive, context)  # pruned entries score zero
        block_alive = block_view(alive, self.block).any(dim=3).any(dim=1)
        keep = keep_top(scores, keep_count(scores.numel(), amount), block_alive)
        rows, cols = self.block
        whole = keep[:, None, :, None].expand(-1, rows, -1, cols).reshape(tensor.shape)
        return whole & alive

    def threshold(
        self, tensor: torch.Tensor, amount: float, keep: torch.Tensor, context: Context
    ) -> float | None:
        """The smallest kept block norm, when the step leaves some block of the layer out."""
        kept = block_view(keep, self.block).any(dim=3).any(dim=1)
        if bool(kept.all()):
            return None
        norms = self.block_scores(tensor * keep, context)[kept]
        return float(norms.min()) if norms.numel() else None


def block_magnitude_mask(
    weight: torch.Tensor,
    sparsity: float,
    *,
    block: tuple[int, int] = (1, 4),
    norm: BlockNorm = "l2",
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keep whole blocks of ``weight`` so that ``round(sparsity * n_blocks)`` blocks are pruned.

    Raises:
        ValueError: a sparsity outside ``[0, 1)``, a bad block or norm, or a shape that does
            not tile.

    Example:
        >>> import torch
        >>> m = block_magnitude_mask(torch.randn(8, 8), 0.75, block=(4, 4))
        >>> int(m.sum())  # one 4 x 4 block of four
        16
    """
    check_sparsity(sparsity)
    crit = BlockMagnitude(block=block, norm=norm)
    return crit.compute_mask(weight, sparsity, current, Context())
