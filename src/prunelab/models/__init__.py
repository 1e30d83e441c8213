"""Models prunelab ships, torchvision's zoo through the same registry, and your own.

Example:
    >>> build_model("torchvision.resnet18", num_classes=10).fc.out_features
    10
"""

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
