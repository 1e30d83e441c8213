"""Models prunelab ships, torchvision's zoo through the same registry, and your own.

Registered: Han et al. 2015's networks (``lenet300``, ``lenet5``, ``alexnet_caffe``,
``vgg16``), Liu et al. 2019's CIFAR networks (``vgg16_cifar``, ``resnet20``, ``resnet56``,
``resnet110``) and the small structured-pruning test bed ``vgg_small``.

Example:
    >>> build_model("torchvision.resnet18", num_classes=10).fc.out_features
    10
"""

from .cifar import CifarResNet, VGG16Cifar, resnet20, resnet56, resnet110
from .imagenet import VGG16, AlexNetCaffe, load_torchvision_vgg16_state, map_torchvision_vgg16_state
from .lenet import LeNet5, LeNet300
from .registry import MODELS, available_models, build_model, register_model
from .vgg import VGGSmall

__all__ = [
    "MODELS",
    "VGG16",
    "AlexNetCaffe",
    "CifarResNet",
    "LeNet5",
    "LeNet300",
    "VGG16Cifar",
    "VGGSmall",
    "available_models",
    "build_model",
    "load_torchvision_vgg16_state",
    "map_torchvision_vgg16_state",
    "register_model",
    "resnet20",
    "resnet56",
    "resnet110",
]
