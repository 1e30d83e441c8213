"""A small VGG-style BatchNorm CNN for 28x28 images, the structured-pruning test bed.

Liu et al. 2019 study structured pruning (L1-norm filters, Network Slimming, ThiNet) on
VGG nets with BatchNorm; this is a VGG scaled down so one MNIST-sized epoch fits a 2-core
CPU. Every conv is followed by BatchNorm and ReLU, so each conv has BatchNorm scale factors
for Network Slimming and a linked consumer for ThiNet and the surgery.

Example:
    >>> import torch
    >>> VGGSmall()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_model

__all__ = ["DEFAULT_CFG", "VGGSmall"]

# Conv widths and "M" (2x2 max pool). Sized so one epoch of 55,000 28x28 images at batch 128
# (SGD) takes about 30 s on 2 CPU cores; see the class docstring for the measurement.
DEFAULT_CFG: tuple[int | str, ...] = (16, "M", 32, "M", 64, "M")


@register_model("vgg_small")
class VGGSmall(nn.Module):
    """VGG-style net: [conv3x3-BN-ReLU]* with max pools, then Linear-ReLU-Linear.

    Default (``cfg = (16, "M", 32, "M", 64, "M")``, hidden 128, 28x28 input, 10 classes):
    conv 1->16 (28x28), pool, conv 16->32 (14x14), pool, conv 32->64 (7x7), pool to 3x3,
    flatten 576 -> 128 -> 10; 98,554 parameters (convs without bias: BatchNorm's shift
    replaces it) and 3.99 MFLOP per image (2 x multiply-accumulates of the Linear/Conv
    layers, as :func:`prunelab.metrics.model_stats` counts).

    Speed: one training epoch (55,000 random 28x28 images, batch 128, SGD with momentum and
    weight decay) on the 2-core development machine (torch 2.13 CPU) took 23-26 s wall
    (22.4 s CPU) with ``torch.set_num_threads(1)``. With 2 threads it took 86-230 s, because
    3-4 other processes shared the two cores during the measurement and OpenMP's threads
    spin while waiting for each other; ``OMP_WAIT_POLICY=PASSIVE`` brought 2 threads to 37 s
    under the same load. On a shared machine use one thread. The first cfg tried,
    ``(32, 32, "M", 64, 64, "M", 128, 128, "M")``, needed about 220 s (one thread).

    Modules are named so that :func:`prunelab.graph.trace_structure` links every layer:
    ``features`` (``nn.Sequential`` of Conv2d, BatchNorm2d, ReLU, MaxPool2d) and
    ``classifier`` (``nn.Sequential`` of Flatten, Linear, ReLU, Linear).

    Args:
        num_classes: output units.
        cfg: conv widths and ``"M"`` (2x2 max pool) in order; ``DEFAULT_CFG`` when None.
        in_channels: input image channels.
        width_mult: multiplies every conv width and the hidden layer (at least 1 unit each).
        input_size: input height and width (the classifier's input size depends on it).
        hidden: hidden units of the classifier before ``width_mult``.

    Raises:
        ValueError: a bad ``cfg`` entry, a non-positive size or multiplier, or pools that
            shrink ``input_size`` to nothing.
    """

    def __init__(
        self,
        num_classes: int = 10,
        cfg: Sequence[int | str] | None = None,
        in_channels: int = 1,
        width_mult: float = 1.0,
        input_size: int = 28,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        for what, v in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("input_size", input_size),
            ("hidden", hidden),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what}={v!r} is out of range; allowed: integer >= 1")
        if (
            isinstance(width_mult, bool)
            or not isinstance(width_mult, int | float)
            or not (width_mult > 0)
        ):
            raise ValueError(f"width_mult={width_mult!r} is out of range; allowed: (0, inf)")
        cfg = tuple(DEFAULT_CFG if cfg is None else cfg)
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
                if size < 1:
                    raise ValueError(
                        f"cfg {list(cfg)} pools a {input_size}x{input_size} input to nothing"
                    )
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"cfg entry {v!r} is invalid; allowed: integer >= 1 or 'M'")
            width = max(1, round(v * width_mult))
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError(f"cfg {list(cfg)} has no conv layer")
        hid = max(1, round(hidden * width_mult))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, hid),
            nn.ReLU(),
            nn.Linear(hid, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
