"""Models prunelab ships, and the registry to add your own."""

from .lenet import LeNet5, LeNet300
from .registry import MODELS, available_models, build_model, register_model

__all__ = ["MODELS", "LeNet5", "LeNet300", "available_models", "build_model", "register_model"]
