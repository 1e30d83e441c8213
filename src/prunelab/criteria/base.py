"""What a pruning criterion is: a small class with one method, and what it may look at.

A :class:`Criterion` (modelled on ``torch.nn.utils.prune.BasePruningMethod.compute_mask`` and
Torch-Pruning's ``Importance``) implements one of:

* ``scores(tensor, context) -> Tensor``: the importance of each entry (each weight, or each
  output unit of a channel criterion); allocation (:mod:`prunelab.allocation`) then keeps
  exactly the highest ones: per layer, or under one global threshold with per-layer floors;
* ``compute_mask(tensor, amount, current, context) -> BoolTensor``: the keep-mask itself,
  for rules that are not "keep the top k", such as Han's threshold ``|w| >= q * std``.

A score criterion gets ``compute_mask`` for free (keep the top ``n - round(amount * n)``);
``check_amount`` may refuse amounts a criterion cannot take (``nm``: above ``1 - n/m``).
Class attributes say how a criterion is used: ``amount_kind`` (``"q"``: a threshold factor
``>= 0``; ``"sparsity"``: the fraction pruned), ``granularity`` (``"weight"``: entries of a
weight tensor, used by :class:`prunelab.pruner.Pruner`; ``"channel"``: output units of a
layer, used by :func:`prunelab.criteria.channels.channel_keep`) and ``ties`` (which of equal
scores is kept first). :class:`Context` carries what a criterion may need.

Example:
    >>> import torch
    >>> class Smallest(Criterion):  # keeps the smallest weights (a toy)
    ...     def scores(self, tensor, context):
    ...         return -tensor.abs()
    >>> Smallest().compute_mask(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.5, None, Context()).tolist()
    [False, True, False, True]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from ..allocation import AmountKind, Ties, alive_mask, keep_count, keep_top

if TYPE_CHECKING:
    from ..graph import Structure

__all__ = [
    "GRANULARITIES",
    "Context",
    "Criterion",
    "Granularity",
    "checked_mask",
    "checked_scores",
    "layer_mask",
]

Granularity = Literal["weight", "channel"]
GRANULARITIES: tuple[str, ...] = ("weight", "channel")

_NO_ACTIVATIONS: Mapping[str, torch.Tensor] = MappingProxyType({})


def _no_activations() -> Mapping[str, torch.Tensor]:
    return _NO_ACTIVATIONS


@dataclass(frozen=True, eq=False)
class Context:
    """What a criterion may look at for one layer (every field is optional).

    Attributes:
        layer: the layer's module name.
        module: the layer.
        model: the whole network.
        mask: the mask in force on the layer's weight (None if unmasked). With
            ``monotone=False`` the Pruner passes ``current=None`` to ``compute_mask`` (every
            entry may be kept), but ``mask`` still says what survives now.
        dense_std: the std of the layer's dense weights, captured by the Pruner at its first
            step (population std, float64).
        std_source: ``"dense"`` or ``"surviving"``: which std Han's rule scales.
        seed: this layer's seed (:func:`prunelab.criteria.layer_seed` of the step's seed and
            the layer name).
        example_input: a batch of real inputs (channel criteria).
        structure: the traced layer graph, :func:`prunelab.graph.trace_structure`.
        activations: inputs of modules on ``example_input``, captured before this step changed
            anything, for the modules the criterion asked for (:meth:`Criterion.inputs_needed`).

    Example:
        >>> Context(layer="fc1", seed=3).seed
        3
    """

    layer: str = ""
    module: nn.Module | None = None
    model: nn.Module | None = None
    mask: torch.Tensor | None = None
    dense_std: float | None = None
    std_source: str = "dense"
    seed: int = 0
    example_input: torch.Tensor | None = None
    structure: Structure | None = None
    activations: Mapping[str, torch.Tensor] = field(default_factory=_no_activations)


class Criterion:
    """Base class of pruning criteria; implement ``scores`` or ``compute_mask`` (or both).

    Register a subclass with :func:`prunelab.criteria.register_criterion` to use it by name
    (``Pruner.step("name", ...)``, ``prune.method: name`` in a run config); options are the
    constructor's arguments (make it a frozen dataclass).

    Attributes:
        name: the registered name (set by :func:`~prunelab.criteria.register_criterion`).
        amount_kind: ``"sparsity"`` (default; the fraction pruned, in ``[0, 1)``) or ``"q"``
            (a finite factor ``>= 0``, as Han's ``|w| < q * std``).
        granularity: ``"weight"`` (default) or ``"channel"``.
        ties: ``"earlier_kept"`` (default) or ``"earlier_dropped"``: which of equal scores is
            kept first.

    Example:
        >>> import torch
        >>> class Smallest(Criterion):
        ...     def scores(self, tensor, context):
        ...         return -tensor.abs()
        >>> Smallest.has_scores(), Criterion.has_scores()
        (True, False)
    """

    name: ClassVar[str] = ""
    amount_kind: ClassVar[AmountKind] = "sparsity"
    granularity: ClassVar[Granularity] = "weight"
    ties: ClassVar[Ties] = "earlier_kept"

    @classmethod
    def has_scores(cls) -> bool:
        """Whether the criterion implements ``scores`` (needed for floors and global scope)."""
        return cls.scores is not Criterion.scores

    @classmethod
    def computes_mask(cls) -> bool:
        """Whether the criterion implements its own ``compute_mask``."""
        return cls.compute_mask is not Criterion.compute_mask

    @property
    def label(self) -> str:
        """The registered name, or the class name of an unregistered criterion."""
        return self.name or type(self).__name__

    def mask_shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        """Shape of the scores and masks for ``tensor``: the tensor's own shape here."""
        return tuple(tensor.shape)

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        """Importance of each entry (higher is kept first); of shape :meth:`mask_shape`."""
        raise NotImplementedError(f"criterion {self.label!r} has no scores")

    def compute_mask(
        self,
        tensor: torch.Tensor,
        amount: float,
        current: torch.Tensor | None,
        context: Context,
    ) -> torch.Tensor:
        """Boolean keep-mask of shape :meth:`mask_shape`.

        The default keeps the ``n - round(amount * n)`` highest scores among the entries
        ``current`` still keeps (pruned entries count towards the target and are not revived).

        Args:
            tensor: the layer's effective (masked) weight.
            amount: the fraction pruned (``amount_kind="sparsity"``) or the factor ``q``.
            current: the entries that may be kept (nonzero), None for all.
            context: what else the criterion may look at.
        """
        keep = keep_count(int(torch.Size(self.mask_shape(tensor)).numel()), amount)
        s = checked_scores(self, tensor, context)
        return keep_top(s, keep, alive_mask(s, current), ties=self.ties)

    def check_amount(self, amount: float) -> None:
        """Refuse an amount inside ``amount_kind``'s range that this criterion cannot take.

        Nothing here. :meth:`prunelab.pruner.Pruner.check_step` calls it (after checking the
        range), so a whole schedule is validated before any training.

        Raises:
            ValueError: in a subclass, e.g. ``nm`` above ``1 - n/m``.
        """
        return None

    def threshold(
        self, tensor: torch.Tensor, amount: float, keep: torch.Tensor, context: Context
    ) -> float | None:
        """The threshold reported for a step (``LayerPruneResult.threshold``); None here."""
        return None

    def inputs_needed(self, context: Context) -> tuple[str, ...]:
        """Modules whose inputs on the example batch the criterion reads (none here)."""
        return ()


def checked_scores(criterion: Criterion, tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """``criterion.scores(...)``, checked to be a tensor of the criterion's mask shape.

    Raises:
        ValueError: the criterion returned something else.
    """
    s = criterion.scores(tensor, context)
    want = criterion.mask_shape(tensor)
    if not torch.is_tensor(s) or tuple(s.shape) != want:
        got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
        raise ValueError(
            f"criterion {criterion.label!r} returned scores of shape {got} for layer "
            f"{context.layer!r}; expected a tensor of shape {want}"
        )
    return s


def checked_mask(
    criterion: Criterion,
    tensor: torch.Tensor,
    amount: float,
    current: torch.Tensor | None,
    context: Context,
) -> torch.Tensor:
    """``criterion.compute_mask(...)`` as a boolean tensor of the criterion's mask shape.

    Raises:
        ValueError: the criterion returned something else.
    """
    m = criterion.compute_mask(tensor, amount, current, context)
    want = criterion.mask_shape(tensor)
    if not torch.is_tensor(m) or tuple(m.shape) != want:
        got = tuple(m.shape) if torch.is_tensor(m) else type(m).__name__
        raise ValueError(
            f"criterion {criterion.label!r} returned a mask of shape {got} for layer "
            f"{context.layer!r}; expected a tensor of shape {want}"
        )
    return m if m.dtype == torch.bool else m != 0


def layer_mask(
    criterion: Criterion,
    tensor: torch.Tensor,
    amount: float,
    current: torch.Tensor | None,
    context: Context,
    floor: int = 0,
) -> torch.Tensor:
    """One layer's keep-mask, holding at least ``floor`` entries (its highest scores).

    Raises:
        ValueError: the mask keeps fewer than ``floor`` entries and the criterion has no
            scores to choose the extra ones by.

    Example:
        >>> import torch
        >>> from prunelab.criteria import get_criterion
        >>> w = torch.tensor([0.5, -1.0, 0.25, 0.75])
        >>> layer_mask(get_criterion("magnitude"), w, 0.75, None, Context()).tolist()
        [False, True, False, False]
        >>> layer_mask(get_criterion("magnitude"), w, 0.75, None, Context(), floor=2).tolist()
        [False, True, False, True]
    """
    mask = checked_mask(criterion, tensor, amount, current, context)
    kept = int(mask.sum())
    if floor > kept:
        if not criterion.has_scores():
            raise ValueError(
                f"criterion {criterion.label!r} keeps {kept} entries of layer "
                f"{context.layer!r}, under its floor of {floor}, and has no scores to choose "
                "more by; lower the floor or the amount"
            )
        s = checked_scores(criterion, tensor, context)
        mask = keep_top(s, floor, alive_mask(s, current), ties=criterion.ties)
    return mask
