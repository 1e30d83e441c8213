"""The CIFAR networks of Liu et al. 2019 (Rethinking the Value of Network Pruning).

``vgg16_cifar`` is the VGG-16 for CIFAR of Li et al. 2017 (L1-norm filter pruning) as the
Rethinking repository builds it (``cifar/l1-norm-pruning/models/vgg.py``); ``resnet20``,
``resnet56`` and ``resnet110`` are He et al. 2016's CIFAR ResNets (``6n + 2`` layers) as the
same repository builds them (``models/resnet.py``). Both take a ``cfg`` of layer widths, so a
pruned architecture (what Scratch-E / Scratch-B train from random weights) is the same class.

Exact parameter counts (10 classes, 3 input channels, biases and BatchNorm affine parameters
included) and FLOP per 32x32 image (:func:`prunelab.metrics.model_stats`: 2 x MAC of the
convs and linears):

=============  ===========  ==============
model          parameters   FLOP
=============  ===========  ==============
vgg16_cifar    14,987,722   626,927,616
resnet20       269,722      81,102,080
resnet56       853,018      250,971,392
resnet110      1,727,962    505,775,360
=============  ===========  ==============

(``shortcut="B"`` adds 2,752 parameters and 524,288 FLOP to each ResNet: two 1x1 projections
with BatchNorm.) Li et al. 2017 give VGG-16 / ResNet-56 / ResNet-110 as 1.5e7 / 0.85M / 1.7M
parameters and count FLOP as multiply-accumulates: 3.13e8 / 1.25e8 / 2.53e8, half of the
figures above.

Example:
    >>> import torch
    >>> resnet20()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = [
    "SHORTCUTS",
    "VGG16_CIFAR_CFG",
    "BasicBlock",
    "CifarResNet",
    "VGG16Cifar",
    "ZeroPadShortcut",
    "resnet20",
    "resnet56",
    "resnet110",
]

# Li et al. 2017's VGG-16 for CIFAR as the Rethinking code builds it: four 2x2 max pools; the
# last 2x2 map is averaged (append "M" to max-pool it, as other CIFAR VGG codes do).
VGG16_CIFAR_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip

SHORTCUTS: tuple[str, ...] = ("A", "B")


def _check_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is out of range; allowed: integer >= 1")
    return value


def _check_width_mult(width_mult: float) -> float:
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, int | float)
        or not (0 < width_mult < float("inf"))
    ):
        raise ValueError(f"width_mult={width_mult!r} is out of range; allowed: (0, inf)")
    return float(width_mult)


def _scaled(width: int, width_mult: float) -> int:
    return max(1, round(width * width_mult))


@register_model("vgg16_cifar")
class VGG16Cifar(nn.Module):
    """VGG-16 for CIFAR (Li et al. 2017, as in the Rethinking code): 13 conv-BN-ReLU, 2 linears.

    ``features``: 13 conv 3x3 pad 1 without bias, each followed by BatchNorm and ReLU, in five
    stages of 64, 128, 256, 512, 512 channels (``conv1_1 ... conv5_3``, ``bn1_1 ...``,
    ``relu1_1 ...``) with a 2x2 max pool after each of the first four (``pool1 ... pool4``).
    ``avgpool`` averages what is left (2x2 at 32x32; adaptive, so other sizes work), then
    ``flatten`` and ``classifier``: fc1 512->512 -> BatchNorm1d -> ReLU -> fc2 512->
    ``num_classes``. 14,987,722 parameters at 10 classes (convs 14,710,464, conv BatchNorms
    8,448, classifier 268,810); 626.9 MFLOP per 32x32 image.

    The classifier is Li et al.'s 512-512-10 (15.0M parameters in all), not the single
    linear of Network Slimming's CIFAR VGGs (20.04M for its VGG-19). Other CIFAR VGG-16 codes
    max-pool the last 2x2 map instead of averaging it: pass ``cfg=(*VGG16_CIFAR_CFG, "M")``
    for that (the same parameters). Weights start as in the
    Rethinking code: Kaiming normal (fan out) convs, conv BatchNorm scales 0.5, N(0, 0.01)
    linears, zero biases.

    Args:
        num_classes: output units.
        in_channels: input image channels.
        cfg: conv widths and ``"M"`` (2x2 max pool) in order; a new stage (``conv<k>_1``)
            starts after each ``"M"``. ``VGG16_CIFAR_CFG`` when None; a pruned architecture
            is the same list with smaller widths.
        width_mult: multiplies every conv width and the classifier's hidden units.
        hidden: hidden units of the classifier before ``width_mult``.

    Raises:
        ValueError: a bad ``cfg`` entry or a non-positive size or multiplier.

    Example:
        >>> import torch
        >>> net = VGG16Cifar(width_mult=0.25)
        >>> net.features.conv5_3.out_channels, net(torch.zeros(2, 3, 32, 32)).shape
        (128, torch.Size([2, 10]))
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        cfg: Sequence[int | str] | None = None,
        width_mult: float = 1.0,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        _check_int(num_classes, "num_classes")
        _check_int(in_channels, "in_channels")
        _check_int(hidden, "hidden")
        width_mult = _check_width_mult(width_mult)
        cfg = tuple(VGG16_CIFAR_CFG if cfg is None else cfg)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, stage, index = in_channels, 1, 0
        for v in cfg:
            if v == "M":
                layers[f"pool{stage}"] = nn.MaxPool2d(2, 2)
                stage, index = stage + 1, 0
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"cfg entry {v!r} is invalid; allowed: integer >= 1 or 'M'")
            index += 1
            width = _scaled(v, width_mult)
            layers[f"conv{stage}_{index}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
            layers[f"bn{stage}_{index}"] = nn.BatchNorm2d(width)
            layers[f"relu{stage}_{index}"] = nn.ReLU()
            channels = width
        if not any(k.startswith("conv") for k in layers):
            raise ValueError(f"cfg {list(cfg)} has no conv layer; allowed: widths and 'M'")
        hid = _scaled(hidden, width_mult)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(channels, hid)),
            ("bn1", nn.BatchNorm1d(hid)),
            ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(hid, num_classes)),
        ]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the Rethinking code does (conv BatchNorm scales start at 0.5)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


class ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: downsample, then append zero channels (no parameters).

    As the Rethinking code: a 2x2 average pool with stride ``stride`` (the paper subsamples),
    then ``out_channels - in_channels`` zero channels after the input's.

    Example:
        >>> import torch
        >>> ZeroPadShortcut(16, 32, 2)(torch.ones(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut from {in_channels} to out_channels={out_channels} channels; "
                f"allowed: out_channels >= {in_channels} (zero padding cannot drop channels)"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (He et al. 2016).

    Args:
        in_channels: input channels.
        channels: output channels (of ``conv2`` and of the block).
        stride: stride of ``conv1`` (and of the shortcut).
        shortcut: ``"A"`` (:class:`ZeroPadShortcut`) or ``"B"`` (1x1 conv + BatchNorm) where
            the shape changes; identity otherwise.
        inner: output channels of ``conv1`` (``channels`` when None); L1-norm filter pruning
            of ResNets prunes only these.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        shortcut: str = "A",
        inner: int | None = None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is unknown; allowed: {SHORTCUTS}")
        mid = channels if inner is None else inner
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = (
                ZeroPadShortcut(in_channels, channels, stride) if shortcut == "A"
                else nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                   nn.BatchNorm2d(channels))
            )  # fmt: skip
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet: ``6n + 2`` layers, three stages of ``n`` basic blocks.

    ``conv1`` 3x3 16 channels -> ``bn1`` -> ``relu``; ``layer1`` / ``layer2`` / ``layer3``: ``n``
    :class:`BasicBlock` each, 16 / 32 / 64 channels at 32x32 / 16x16 / 8x8 (the first block of
    ``layer2`` and ``layer3`` has stride 2); ``avgpool`` (global), ``flatten``, ``fc``. No conv
    has a bias (BatchNorm's shift replaces it).

    Shortcuts where the shape changes: option A (the paper's for CIFAR and the Rethinking
    code's, the default) pads zero channels, so it has no parameters; option B projects with a
    1x1 conv and BatchNorm (``downsample.0`` / ``downsample.1``), a layer a pruner can prune
    like the others. Every other shortcut is the identity. The residual additions mean
    :func:`prunelab.graph.trace_structure` links only ``conv1 -> conv2`` inside each block.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: output units.
        in_channels: input image channels.
        shortcut: ``"A"`` or ``"B"``.
        width_mult: multiplies the stage widths 16 / 32 / 64.
        cfg: output channels of each block's ``conv1`` (``3n`` entries, before
            ``width_mult``), as the Rethinking code's ``cfg``; the stage widths when None.

    Raises:
        ValueError: a depth that is not ``6n + 2``, an unknown shortcut, a ``cfg`` of the wrong
            length or with a bad entry, a non-positive size or multiplier.

    Example:
        >>> net = CifarResNet(20, shortcut="B")
        >>> sum(p.numel() for p in net.parameters())
        272474
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        width_mult: float = 1.0,
        cfg: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth={depth!r} is invalid; allowed: 6n + 2, n >= 1 (20, 56, ...)")
        _check_int(num_classes, "num_classes")
        _check_int(in_channels, "in_channels")
        width_mult = _check_width_mult(width_mult)
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is unknown; allowed: {SHORTCUTS}")
        n = (depth - 2) // 6
        widths = [_scaled(w, width_mult) for w in (16, 32, 64)]
        if cfg is None:
            inner = [w for w in widths for _ in range(n)]
        else:
            cfg = list(cfg)
            if len(cfg) != 3 * n:
                raise ValueError(
                    f"cfg has {len(cfg)} entries; allowed: {3 * n} (one per block of depth {depth})"
                )
            for v in cfg:
                _check_int(v, "cfg entry")
            inner = [_scaled(v, width_mult) for v in cfg]
        self.depth, self.shortcut = depth, shortcut
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        channels = widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, shortcut, inner[stage * n + i]))
                channels = width
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the Rethinking code: Kaiming normal (fan out) convs, BatchNorm 1 / 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.fc.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("resnet20")
def resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "A",
    width_mult: float = 1.0,
    cfg: Sequence[int] | None = None,
) -> CifarResNet:
    """ResNet-20 for CIFAR: :class:`CifarResNet` of depth 20 (3 blocks per stage).

    269,722 parameters with option-A shortcuts (the default), 272,474 with ``shortcut="B"``
    (10 classes); 81,102,080 FLOP per 32x32 image with option A.

    Args:
        num_classes: output units.
        in_channels: input image channels.
        shortcut: ``"A"`` (zero padding, no parameters) or ``"B"`` (1x1 conv + BatchNorm).
        width_mult: multiplies the stage widths 16 / 32 / 64.
        cfg: output channels of each block's first conv (9 entries; a pruned
            architecture).
    """
    return CifarResNet(20, num_classes, in_channels, shortcut, width_mult, cfg)


@register_model("resnet56")
def resnet56(
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "A",
    width_mult: float = 1.0,
    cfg: Sequence[int] | None = None,
) -> CifarResNet:
    """ResNet-56 for CIFAR: :class:`CifarResNet` of depth 56 (9 blocks per stage).

    853,018 parameters with option-A shortcuts (the default), 855,770 with ``shortcut="B"``
    (10 classes); 250,971,392 FLOP per 32x32 image with option A.

    Args:
        num_classes: output units.
        in_channels: input image channels.
        shortcut: ``"A"`` (zero padding, no parameters) or ``"B"`` (1x1 conv + BatchNorm).
        width_mult: multiplies the stage widths 16 / 32 / 64.
        cfg: output channels of each block's first conv (27 entries; a pruned
            architecture).
    """
    return CifarResNet(56, num_classes, in_channels, shortcut, width_mult, cfg)


@register_model("resnet110")
def resnet110(
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "A",
    width_mult: float = 1.0,
    cfg: Sequence[int] | None = None,
) -> CifarResNet:
    """ResNet-110 for CIFAR: :class:`CifarResNet` of depth 110 (18 blocks per stage).

    1,727,962 parameters with option-A shortcuts (the default), 1,730,714 with ``shortcut="B"``
    (10 classes); 505,775,360 FLOP per 32x32 image with option A.

    Args:
        num_classes: output units.
        in_channels: input image channels.
        shortcut: ``"A"`` (zero padding, no parameters) or ``"B"`` (1x1 conv + BatchNorm).
        width_mult: multiplies the stage widths 16 / 32 / 64.
        cfg: output channels of each block's first conv (54 entries; a pruned
            architecture).
    """
    return CifarResNet(110, num_classes, in_channels, shortcut, width_mult, cfg)
