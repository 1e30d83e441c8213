"""Which layers are pruned, and with which per-layer value.

Layers are selected by module name with glob patterns (``"features.*"``, ``"fc1"``). A pattern
that matches nothing is an error (a misspelt layer name must never silently prune nothing).
Per-layer values (quality parameter, sparsity, ...) are given as one number or as a mapping
``{pattern: value}`` where later patterns override earlier ones, so ``{"*": 1.0, "conv1": 0.5}``
means "1.0 everywhere, 0.5 for conv1".

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(select_layers(model))
    ['0', '2']
    >>> per_layer_values({"*": 1.0, "2": 0.5}, ["0", "2"], what="q")
    {'0': 1.0, '2': 0.5}
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence

from torch import nn

__all__ = [
    "CONV_TYPES",
    "LINEAR_TYPES",
    "PRUNABLE_TYPES",
    "LayerValue",
    "in_units",
    "layer_kind",
    "out_units",
    "per_layer_values",
    "select_layers",
]

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = LINEAR_TYPES + CONV_TYPES

LayerValue = float | Mapping[str, float]


def layer_kind(module: nn.Module) -> str:
    """Return ``"fc"`` for Linear layers, ``"conv"`` for Conv1d/2d/3d.

    Raises:
        TypeError: the module is not prunable.

    Example:
        >>> from torch import nn
        >>> layer_kind(nn.Conv2d(1, 2, 3))
        'conv'
    """
    if isinstance(module, LINEAR_TYPES):
        return "fc"
    if isinstance(module, CONV_TYPES):
        return "conv"
    raise TypeError(
        f"{type(module).__name__} is not prunable; prunable types are "
        f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)}"
    )


def out_units(module: nn.Module) -> int:
    """Output units of a Linear (features) or Conv (channels) layer.

    Example:
        >>> from torch import nn
        >>> out_units(nn.Conv2d(1, 8, 3)), out_units(nn.Linear(4, 2))
        (8, 2)
    """
    return module.out_features if isinstance(module, LINEAR_TYPES) else module.out_channels


def in_units(module: nn.Module) -> int:
    """Input units of a Linear (features) or Conv (channels) layer.

    Example:
        >>> from torch import nn
        >>> in_units(nn.Conv2d(1, 8, 3)), in_units(nn.Linear(4, 2))
        (1, 4)
    """
    return module.in_features if isinstance(module, LINEAR_TYPES) else module.in_channels


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def select_layers(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    *,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """Return the prunable layers of ``model`` selected by glob patterns, in module order.

    Args:
        model: the network.
        include: glob pattern(s) over module names; all prunable layers when ``None``.
        exclude: glob pattern(s) removed from the selection.

    Returns:
        ``{module_name: module}`` of Linear/Conv layers, in ``named_modules`` order.

    Raises:
        ValueError: a pattern matches no module, or only non-prunable modules (the message
            lists the prunable layer names).

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> list(select_layers(m, "0"))
        ['0']
    """
    named = dict(model.named_modules())
    prunable = {n: m for n, m in named.items() if isinstance(m, PRUNABLE_TYPES)}
    if not prunable:
        raise ValueError(
            f"{type(model).__name__} has no prunable layers "
            f"({', '.join(t.__name__ for t in PRUNABLE_TYPES)})"
        )
    inc = _as_patterns(include)
    exc = _as_patterns(exclude) or []
    if inc is None:
        chosen = dict(prunable)
    else:
        chosen = {}
        for pat in inc:
            hits = [n for n in named if fnmatch.fnmatchcase(n, pat)]
            good = [n for n in hits if n in prunable]
            if not good:
                if hits:
                    kinds = ", ".join(f"{n} ({type(named[n]).__name__})" for n in hits[:5])
                    raise ValueError(
                        f"layer pattern {pat!r} matches only non-prunable modules: {kinds}; "
                        f"prunable layers are: {', '.join(prunable)}"
                    )
                raise ValueError(
                    f"layer pattern {pat!r} matches no layer; prunable layers are: "
                    f"{', '.join(prunable)}"
                )
            for n in good:
                chosen[n] = prunable[n]
        chosen = {n: m for n, m in prunable.items() if n in chosen}
    for pat in exc:
        hits = [n for n in chosen if fnmatch.fnmatchcase(n, pat)]
        if not hits and not any(fnmatch.fnmatchcase(n, pat) for n in prunable):
            raise ValueError(
                f"exclude pattern {pat!r} matches no layer; prunable layers are: "
                f"{', '.join(prunable)}"
            )
        for n in hits:
            del chosen[n]
    return chosen


def per_layer_values(
    value: LayerValue,
    layers: Sequence[str],
    *,
    what: str,
    low: float = 0.0,
    high: float = math.inf,
    high_inclusive: bool = True,
) -> dict[str, float]:
    """Resolve one number or a ``{pattern: value}`` mapping to a value per layer.

    Later patterns override earlier ones. Every pattern must match at least one of
    ``layers`` and every layer must receive a value.

    Args:
        value: a number for all layers, or a mapping of glob patterns to numbers.
        layers: the selected layer names.
        what: the name of the quantity, used in error messages (e.g. ``"q"``).
        low: smallest allowed value (inclusive).
        high: largest allowed value.
        high_inclusive: whether ``high`` itself is allowed.

    Returns:
        ``{layer: value}`` for every layer.

    Raises:
        ValueError: a value is out of range or not a number, a pattern matches no layer, or a
            layer receives no value. The message names the value and the allowed range.

    Example:
        >>> per_layer_values(0.5, ["a", "b"], what="sparsity", high=1.0, high_inclusive=False)
        {'a': 0.5, 'b': 0.5}
    """
    items = list(value.items()) if isinstance(value, Mapping) else [("*", value)]
    out: dict[str, float] = {}
    for pat, v in items:
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(float(v)):
            raise ValueError(f"{what} for {pat!r} must be a number, got {v!r}")
        v = float(v)
        upper_ok = v <= high if high_inclusive else v < high
        if not (v >= low and upper_ok):
            bracket = "]" if high_inclusive else ")"
            raise ValueError(
                f"{what}={v!r} for {pat!r} is out of range; allowed: [{low}, {high}{bracket}"
            )
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(
                f"{what} pattern {pat!r} matches no selected layer; selected layers are: "
                f"{', '.join(layers)}"
            )
        for n in hits:
            out[n] = v
    missing = [n for n in layers if n not in out]
    if missing:
        raise ValueError(
            f"no {what} given for layer(s) {', '.join(missing)}; add them or a '*' default"
        )
    return {n: out[n] for n in layers}
