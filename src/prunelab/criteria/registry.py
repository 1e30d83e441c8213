"""Criteria by name: register a :class:`~prunelab.criteria.base.Criterion`, look it up.

Built-ins (registered when :mod:`prunelab.criteria` is imported): ``std``, ``magnitude``,
``random``, ``nm``, ``block_magnitude`` (weights) and ``l1_filter``, ``bn_scale`` (alias
``slimming``), ``thinet`` (channels). Options of a criterion are its constructor's arguments
and are checked by name.

Example:
    >>> import torch
    >>> from dataclasses import dataclass
    >>> @register_criterion("toy_smallest")
    ... @dataclass(frozen=True)
    ... class Smallest(Criterion):
    ...     power: float = 1.0
    ...     def scores(self, tensor, context):
    ...         return -tensor.abs() ** self.power
    >>> get_criterion("toy_smallest", power=2.0)
    Smallest(power=2.0)
    >>> try:
    ...     get_criterion("toy_smallest", powr=2.0)
    ... except ValueError as exc:
    ...     print(exc)
    criterion 'toy_smallest' has no option 'powr'; allowed: power
    >>> unregister_criterion("toy_smallest")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..allocation import AMOUNT_KINDS, TIES
from .base import GRANULARITIES, Criterion

__all__ = [
    "as_criterion",
    "available_criteria",
    "criterion_class",
    "get_criterion",
    "register_criterion",
    "unregister_criterion",
]

C = TypeVar("C", bound=type[Criterion])

_REGISTRY: dict[str, type[Criterion]] = {}


def register_criterion(name: str, *aliases: str, replace: bool = False) -> Callable[[C], C]:
    """Class decorator: make a :class:`Criterion` subclass available as ``name``.

    Args:
        name: the registered name (also set as the class's ``name``).
        aliases: further names for the same class (e.g. ``"slimming"`` for ``"bn_scale"``).
        replace: allow taking over a name registered by another class.

    Raises:
        TypeError: not a Criterion subclass, or it implements neither ``scores`` nor
            ``compute_mask``, or a bad class attribute.
        ValueError: a bad name, or a name already taken by another class.
    """
    names = (name, *aliases)
    for n in names:
        if not isinstance(n, str) or not n or any(c.isspace() for c in n):
            raise ValueError(f"criterion name {n!r} is invalid; allowed: a non-empty string "
                             "without spaces")

    def decorate(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Criterion)):
            raise TypeError(f"register_criterion needs a Criterion subclass, got {cls!r}")
        if not (cls.has_scores() or cls.computes_mask()):
            raise TypeError(f"{cls.__name__} implements neither scores() nor compute_mask()")
        for attr, allowed in (("amount_kind", AMOUNT_KINDS), ("granularity", GRANULARITIES),
                              ("ties", TIES)):
            if getattr(cls, attr) not in allowed:
                raise TypeError(f"{cls.__name__}.{attr}={getattr(cls, attr)!r} is unknown; "
                                f"allowed: {allowed}")
        taken = [n for n in names if _REGISTRY.get(n, cls) is not cls]
        if taken and not replace:
            raise ValueError(
                f"criterion name {taken[0]!r} is already registered by "
                f"{_REGISTRY[taken[0]].__name__}; pass replace=True to take it over"
            )
        cls.name = name
        for n in names:
            _REGISTRY[n] = cls
        return cls

    return decorate


def unregister_criterion(name: str) -> None:
    """Remove ``name`` and every other name of the same class from the registry.

    Raises:
        ValueError: ``name`` is not registered.
    """
    cls = criterion_class(name)
    for n in [n for n, c in _REGISTRY.items() if c is cls]:
        del _REGISTRY[n]


def available_criteria(granularity: str | None = None) -> tuple[str, ...]:
    """Registered names (aliases included), sorted; only those of one granularity if given.

    Example:
        >>> available_criteria("weight")
        ('block_magnitude', 'dns', 'magnitude', 'nm', 'random', 'std')
    """
    return tuple(
        sorted(n for n, c in _REGISTRY.items() if granularity in (None, c.granularity))
    )


def criterion_class(name: str) -> type[Criterion]:
    """The class registered as ``name``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: nothing is registered as ``name`` (the message lists what is).

    Example:
        >>> criterion_class("slimming").__name__
        'BNScale'
    """
    if not isinstance(name, str):
        raise TypeError(f"a criterion name must be a string, got {name!r}")
    if name not in _REGISTRY:
        raise ValueError(
            f"criterion {name!r} is unknown; registered criteria: "
            f"{', '.join(available_criteria())}"
        )
    return _REGISTRY[name]


def get_criterion(name: str, **options: Any) -> Criterion:
    """A new instance of the criterion registered as ``name``, built with ``options``.

    Raises:
        ValueError: unknown name, unknown or missing option (the message lists the allowed
            ones), or an option value the criterion rejects.
        TypeError: an option value of the wrong type.

    Example:
        >>> get_criterion("thinet", samples=256)
        ThiNet(samples=256, rescale=False)
    """
    cls = criterion_class(name)
    params = inspect.signature(cls).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        allowed = [p.name for p in named]
        unknown = [k for k in options if k not in allowed]
        if unknown:
            raise ValueError(
                f"criterion {name!r} has no option {unknown[0]!r}; allowed: "
                f"{', '.join(allowed) if allowed else 'none (it takes no options)'}"
            )
        missing = [p.name for p in named if p.default is p.empty and p.name not in options]
        if missing:
            raise ValueError(f"criterion {name!r} needs option {missing[0]!r}")
    return cls(**options)


def as_criterion(
    method: str | Criterion,
    options: Mapping[str, Any] | None = None,
    *,
    granularity: str | None = None,
) -> Criterion:
    """A criterion from a registered name (built with ``options``) or an instance.

    Args:
        method: a registered name or a :class:`Criterion` instance.
        options: constructor options, only with a name.
        granularity: if given, the criterion must be of this granularity.

    Raises:
        TypeError: neither a name nor an instance (e.g. a class, not an instance).
        ValueError: unknown name or option, options with an instance, or the wrong
            granularity.

    Example:
        >>> as_criterion("magnitude").label
        'magnitude'
    """
    if isinstance(method, str):
        crit = get_criterion(method, **dict(options or {}))
    elif isinstance(method, Criterion):
        if options:
            raise ValueError(
                f"options {sorted(options)} are only used with a criterion name; build "
                f"{type(method).__name__}(...) with them instead"
            )
        crit = method
    elif isinstance(method, type) and issubclass(method, Criterion):
        raise TypeError(f"pass a criterion instance, {method.__name__}(), not the class")
    else:
        raise TypeError(
            f"a criterion must be a registered name or a Criterion instance, got {method!r}"
        )
    if granularity is not None and crit.granularity != granularity:
        raise ValueError(
            f"criterion {crit.label!r} is a {crit.granularity} criterion; a {granularity} "
            f"criterion is needed here: {', '.join(available_criteria(granularity))}"
        )
    return crit
