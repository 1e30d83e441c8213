"""LeNet-300-100 and Caffe's LeNet-5, the two MNIST networks of Han et al. 2015.

Example:
    >>> import torch
    >>> LeNet5()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["LeNet5", "LeNet300"]


def _check_p(p: float, name: str) -> float:
    if isinstance(p, bool) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name}={p!r} is out of range; allowed: [0, 1)")
    return float(p)


@register_model("lenet300")
class LeNet300(nn.Module):
    """LeNet-300-100: fully connected 784-300-100-10 with ReLU (266,610 parameters).

    Args:
        num_classes: output units.
        dropout: dropout rate before fc2 and fc3 (0 disables it; the modules stay so the
            dropout rule of retraining has a place to act).
        in_features: flattened input size.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, in_features: int = 784):
        super().__init__()
        p = _check_p(dropout, "dropout")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.drop2 = nn.Dropout(p)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.relu1(self.fc1(self.flatten(x))))
        x = self.drop2(self.relu2(self.fc2(x)))
        return self.fc3(x)


@register_model("lenet5")
class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv20 5x5, pool, conv50 5x5, pool, fc500, ReLU, fc10.

    No ReLU after the convolutions, as in Caffe's ``lenet_train_test.prototxt``
    (431,080 parameters).

    Args:
        num_classes: output units.
        dropout: dropout rate before fc2 (0 disables it).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        p = _check_p(dropout, "dropout")
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(800, 500)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        x = self.drop(self.relu(self.fc1(self.flatten(x))))
        return self.fc2(x)
