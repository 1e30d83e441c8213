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

__all__ = ["MODELS", "available_models", "available_torchvision", "build_model", "register_model"]

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


TORCHVISION_PREFIX = "torchvision."


def available_models(*, torchvision: bool = False) -> list[str]:
    """Registered model names, sorted; with ``torchvision=True`` also torchvision's
    classification models as ``torchvision.<name>``.

    Example:
        >>> "lenet5" in available_models()
        True
        >>> "torchvision.resnet18" in available_models(torchvision=True)
        True
    """
    names = sorted(MODELS)
    if torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_models()]
    return names


def _torchvision_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_torchvision() -> list[str]:
    """torchvision's classification model names (without the ``torchvision.`` prefix).

    Example:
        >>> "resnet18" in available_torchvision()
        True
    """
    return _torchvision_models()


def _torchvision_factory(arch: str) -> Callable[..., nn.Module]:
    """torchvision's ``get_model(arch)``, randomly initialised unless ``weights`` is given.

    Pretrained weights are never downloaded by prunelab: ``weights`` names torchvision's
    weights enum entry, which torchvision loads from its local cache (``TORCH_HOME``).
    """
    import torchvision

    if arch not in _torchvision_models():
        raise ValueError(
            f"torchvision has no classification model {arch!r}; allowed: "
            f"{', '.join(_torchvision_models())}"
        )

    def factory(**kwargs: Any) -> nn.Module:
        kwargs.setdefault("weights", None)
        return torchvision.models.get_model(arch, **kwargs)

    return factory


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_factory(name[len(TORCHVISION_PREFIX):])
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
        "a torchvision model as 'torchvision.<name>' (e.g. torchvision.resnet18), "
        "or an import path 'package.module:Factory'"
    )


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model (``"lenet5"``), a torchvision model
    (``"torchvision.resnet18"``, randomly initialised) or one given as ``"pkg.module:Factory"``.

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
