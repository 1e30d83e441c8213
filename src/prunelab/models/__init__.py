"""Models prunelab ships, and the registry to add your own."""

from .lenet import LeNet5, LeNet300
from .registry import MODELS, available_models, build_model, register_model
from .vgg import VGGSmall

__all__ = [
    "MODELS",
    "LeNet5",
    "LeNet300",
    "VGGSmall",
    "available_models",
    "build_model",
    "register_model",
]
