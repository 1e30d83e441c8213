"""Model registry: build a model by name or by import path.

Example:
    >>> model = build_model("lenet300")
    >>> sum(p.numel() for p in model.parameters())
    266610
    >>> @register_model("tiny")
    ... def tiny(num_classes: int = 10):
    ...     from torch import nn
    ...     return nn.Linear(4, num_classes)
    >>> build_model("tiny", num_classes=3).out_features
    3
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["MODELS", "available_models", "build_model", "register_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    name: str,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory (a class or a function) under ``name``.

    Raises:
        ValueError: the name is already taken.
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and MODELS[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return deco


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(
                f"cannot import module {mod_name!r} for model {name!r}: {exc}"
            ) from exc
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ValueError(f"{mod_name!r} has no callable {attr!r} (model {name!r})")
        return factory
    raise ValueError(
        f"unknown model {name!r}; registered models: {', '.join(available_models())}, "
        "or give an import path 'package.module:Factory'"
    )


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model (``"lenet5"``) or one given as ``"pkg.module:Factory"``.

    Raises:
        ValueError: unknown name, unimportable path, or bad keyword arguments.
    """
    factory = _resolve(name)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments {kwargs} for model {name!r}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not nn.Module")
    return model
