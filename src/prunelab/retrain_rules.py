"""Han et al.'s rules for retraining a pruned network: the dropout rule and freezing.

Dropout rule: dropout acts on neurons while connections grow quadratically with neurons,
so a dropout layer feeding layer ``i`` is retrained with
``D_r = D_o * sqrt(C_ir / C_io)``, where ``C_io`` is the number of connections of layer
``i`` in the dense network and ``C_ir`` the number that survive.

Freezing: when retraining after pruning conv layers, keep the FC layers fixed and vice
versa (this limits vanishing-gradient trouble in deep networks).

Example:
    >>> adjusted_dropout(0.5, 1000, 250)
    0.25
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .masks import effective_tensor
from .selection import CONV_TYPES, LINEAR_TYPES

__all__ = [
    "DropoutChange",
    "adjusted_dropout",
    "apply_dropout_rule",
    "freeze_kind",
    "frozen_parameters",
]

FREEZE_CHOICES: tuple[str, ...] = ("none", "conv", "fc")


def adjusted_dropout(rate: float, dense_connections: int, surviving_connections: int) -> float:
    """``D_r = D_o * sqrt(C_ir / C_io)``.

    Raises:
        ValueError: a rate outside [0, 1) or connection counts that are negative or grow.

    Example:
        >>> round(adjusted_dropout(0.5, 235200, 18816), 4)
        0.1414
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate!r} is out of range; allowed: [0, 1)")
    if dense_connections <= 0 or not 0 <= surviving_connections <= dense_connections:
        raise ValueError(
            f"connections must satisfy 0 <= C_ir <= C_io and C_io > 0, got C_io="
            f"{dense_connections}, C_ir={surviving_connections}"
        )
    return rate * math.sqrt(surviving_connections / dense_connections)


@dataclass(frozen=True)
class DropoutChange:
    """One dropout layer's rate before and during retraining."""

    dropout: str
    layer: str
    original: float
    retrain: float
    connections_dense: int
    connections_now: int

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)


def apply_dropout_rule(
    model: nn.Module,
    feeds: Mapping[str, str],
    original_rates: Mapping[str, float],
    dense_connections: Mapping[str, int],
) -> list[DropoutChange]:
    """Set each dropout layer's ``p`` from the rule; return what was set.

    Args:
        model: the pruned network.
        feeds: ``{dropout_module: layer_it_feeds}``, from
            :func:`prunelab.graph.trace_structure` or given explicitly.
        original_rates: ``{dropout_module: D_o}`` of the dense network.
        dense_connections: ``{layer: C_io}``, weights of each layer when dense.

    Raises:
        ValueError: a name is not a dropout module or not a layer of the model.
    """
    mods = dict(model.named_modules())
    changes = []
    for drop_name, layer_name in feeds.items():
        drop = mods.get(drop_name)
        layer = mods.get(layer_name)
        if drop is None or not hasattr(drop, "p"):
            raise ValueError(f"{drop_name!r} is not a dropout module of the model")
        if layer is None or not isinstance(layer, LINEAR_TYPES + CONV_TYPES):
            raise ValueError(f"{layer_name!r} (fed by {drop_name!r}) is not a prunable layer")
        now = int(torch.count_nonzero(effective_tensor(layer)))
        dense = int(dense_connections[layer_name])
        rate = adjusted_dropout(float(original_rates[drop_name]), dense, now)
        drop.p = rate
        changes.append(
            DropoutChange(drop_name, layer_name, float(original_rates[drop_name]), rate, dense, now)
        )
    return changes


def frozen_parameters(model: nn.Module, freeze: str) -> set[int]:
    """``id``s of the parameters frozen when ``freeze`` is ``"conv"`` or ``"fc"``.

    Freezing conv layers also freezes BatchNorm layers (they normalise conv outputs).

    Raises:
        ValueError: unknown choice.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(1, 1))
        >>> len(frozen_parameters(m, "fc"))
        2
    """
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"freeze={freeze!r} is unknown; allowed: {FREEZE_CHOICES}")
    if freeze == "none":
        return set()
    kinds: tuple[type[nn.Module], ...] = (
        LINEAR_TYPES if freeze == "fc"
        else (*CONV_TYPES, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    )  # fmt: skip
    out: set[int] = set()
    for m in model.modules():
        if isinstance(m, kinds):
            out.update(id(p) for p in m.parameters(recurse=False))
    return out


def freeze_kind(model: nn.Module, freeze: str) -> list[nn.Parameter]:
    """Set ``requires_grad`` so only the non-frozen kind trains; return trainable params.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(1, 1))
        >>> len(freeze_kind(m, "conv"))
        2
    """
    frozen = frozen_parameters(model, freeze)
    trainable = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            trainable.append(p)
    return trainable
