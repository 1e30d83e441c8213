"""The ImageNet networks of Han et al. 2015: Caffe's BVLC AlexNet and VGG-16.

Layers are named as in the Caffe prototxts (``features.conv1`` ... ``classifier.fc8``,
``features.conv1_1`` ... ``features.conv5_3``), so per-layer tables, sensitivity curves and
``PAPER["alexnet_caffe"]["layers"]`` use the names the paper uses, and the names stay the same
whatever the options (``lrn=False`` drops the ``norm`` modules, not a renumbering).

Counted with :func:`prunelab.metrics.model_stats` (weights without biases; FLOP = 2 x
multiply-accumulates per image):

* ``alexnet_caffe`` at 227x227: 60,954,656 weights, 60,965,224 parameters with biases (the
  paper's 61M), 1,448,813,632 FLOP (the paper's 1.5B).
* ``vgg16`` at 224x224: 138,344,128 weights, 138,357,544 parameters (the paper's 138M),
  30,940,528,640 FLOP (the paper's 30.9B).

Example:
    >>> layer_names = [n for n, _ in AlexNetCaffe.prunable_layer_names()]
    >>> layer_names[0], layer_names[-1]
    ('features.conv1', 'classifier.fc8')
    >>> map_torchvision_vgg16_state({"features.0.weight": 1, "classifier.6.bias": 2})
    {'features.conv1_1.weight': 1, 'classifier.fc8.bias': 2}
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .lenet import _check_p
from .registry import register_model

__all__ = [
    "VGG16",
    "VGG16_CFG",
    "AlexNetCaffe",
    "load_torchvision_vgg16_state",
    "map_torchvision_vgg16_state",
]


def _check_size(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is out of range; allowed: integer >= 1")
    return value


def _caffe_pool(size: int) -> int:
    """Output size of Caffe's 3x3 / stride-2 max pool without padding (rounds up)."""
    return math.ceil((size - 3) / 2) + 1


# name, out channels, kernel, stride, padding, groups; then the modules after the ReLU.
_ALEXNET_CONVS: tuple[tuple[str, int, int, int, int, int, tuple[str, ...]], ...] = (
    ("conv1", 96, 11, 4, 0, 1, ("norm1", "pool1")),
    ("conv2", 256, 5, 1, 2, 2, ("norm2", "pool2")),
    ("conv3", 384, 3, 1, 1, 1, ()),
    ("conv4", 384, 3, 1, 1, 2, ()),
    ("conv5", 256, 3, 1, 1, 2, ("pool5",)),
)


def _alexnet_feature_size(input_size: int) -> int:
    """Height/width of pool5's output for an ``input_size`` input; 0 if a layer gets nothing."""
    size = input_size
    for _, _, kernel, stride, pad, _, after in _ALEXNET_CONVS:
        size = (size + 2 * pad - kernel) // stride + 1
        if size < 1:
            return 0
        for extra in after:
            if extra.startswith("pool"):
                if size < 3:
                    return 0
                size = _caffe_pool(size)
    return size


# The prototxt's fillers: (weight std, bias value) per layer.
_CAFFE_FILLERS: dict[str, tuple[float, float]] = {
    "conv1": (0.01, 0.0), "conv2": (0.01, 0.1), "conv3": (0.01, 0.0), "conv4": (0.01, 0.1),
    "conv5": (0.01, 0.1), "fc6": (0.005, 0.1), "fc7": (0.005, 0.1), "fc8": (0.01, 0.0),
}  # fmt: skip


@register_model("alexnet_caffe")
class AlexNetCaffe(nn.Module):
    """Caffe's BVLC AlexNet (``models/bvlc_alexnet/train_val.prototxt``), as Han et al. pruned it.

    ``features``: conv1 96@11x11 stride 4 -> ReLU -> LRN -> max pool 3/2; conv2 256@5x5 pad 2
    in 2 groups -> ReLU -> LRN -> max pool 3/2; conv3 384@3x3 pad 1 -> ReLU; conv4 384@3x3
    pad 1 in 2 groups -> ReLU; conv5 256@3x3 pad 1 in 2 groups -> ReLU -> max pool 3/2 (6x6 at
    a 227x227 input). ``flatten``, then ``classifier``: fc6 9216->4096 -> ReLU -> Dropout;
    fc7 4096->4096 -> ReLU -> Dropout; fc8 4096->``num_classes`` (Caffe's order: the dropout
    follows the ReLU of fc6 and of fc7, so ``drop6`` feeds fc7 and ``drop7`` feeds fc8).

    Weights per layer (biases left out, as the paper counts): conv1 34,848, conv2 307,200,
    conv3 884,736, conv4 663,552, conv5 442,368, fc6 37,748,736, fc7 16,777,216, fc8
    4,096,000; 60,965,224 parameters with biases. FLOP at 227x227 (2 x MAC, grouped convs
    counted with their ``in/groups`` inputs per output): conv1 210.8M, conv2 447.9M, conv3
    299.0M, conv4 224.3M, conv5 149.5M, fc6 75.5M, fc7 33.6M, fc8 8.2M; 1.449 GFLOP in all.

    LRN is ``nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1)``: Caffe's cross-channel LRN
    divides ``alpha`` by the window size as torch does, so the two compute the same. Pools
    round up as Caffe's do (``ceil_mode=True``); at 227x227 that changes nothing. The weights
    start as in the prototxt: Gaussian with std 0.01 (fc6, fc7: 0.005), biases 0 (conv2, conv4,
    conv5, fc6, fc7: 0.1).

    Structure for :func:`prunelab.graph.trace_structure`: grouped convolutions and LRN (which
    mixes neighbouring channels) are not channel-wise links, so only fc6 -> fc7 and fc7 -> fc8
    are linked (dead-neuron removal and surgery act there; all eight layers prune).

    Args:
        num_classes: output units of fc8.
        dropout: dropout rate after fc6 and fc7 (the prototxt's 0.5; 0 keeps the modules).
        input_size: input height and width; fc6's input size follows from it (9216 at 227).
        lrn: keep the two LocalResponseNorm layers (``False`` leaves them out).
        in_channels: input image channels.

    Raises:
        ValueError: a size or rate out of range, or an input too small for the conv stack.

    Example:
        >>> import torch
        >>> net = AlexNetCaffe(num_classes=10, input_size=67)
        >>> net.classifier.fc6.in_features, net(torch.zeros(2, 3, 67, 67)).shape
        (256, torch.Size([2, 10]))
    """

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.5,
        input_size: int = 227,
        lrn: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_size(num_classes, "num_classes")
        _check_size(in_channels, "in_channels")
        _check_size(input_size, "input_size")
        p = _check_p(dropout, "dropout")
        if not isinstance(lrn, bool):
            raise ValueError(f"lrn={lrn!r} is invalid; allowed: True, False")
        size = _alexnet_feature_size(input_size)
        if size < 1:
            raise ValueError(
                f"input_size={input_size} is too small: pool5 would have no output; allowed: "
                f">= {self.min_input_size()}"
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for name, out, kernel, stride, pad, groups, after in _ALEXNET_CONVS:
            index = name[len("conv"):]
            layers[name] = nn.Conv2d(channels, out, kernel, stride, pad, groups=groups)
            layers[f"relu{index}"] = nn.ReLU()
            for extra in after:
                if extra.startswith("pool"):
                    layers[extra] = nn.MaxPool2d(3, 2, ceil_mode=True)
                elif lrn:
                    layers[extra] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
            channels = out
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(channels * size * size, 4096)),
            ("relu6", nn.ReLU()),
            ("drop6", nn.Dropout(p)),
            ("fc7", nn.Linear(4096, 4096)),
            ("relu7", nn.ReLU()),
            ("drop7", nn.Dropout(p)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the BVLC prototxt does (Gaussian weights, constant biases)."""
        for name, module in self.prunable_layers():
            std, bias = _CAFFE_FILLERS[name.rsplit(".", 1)[1]]
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.constant_(module.bias, bias)

    def prunable_layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of the eight conv / fc layers, in order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    @staticmethod
    def prunable_layer_names() -> list[tuple[str, str]]:
        """``(module name, kind)`` of the eight layers, without building the model."""
        return [(f"features.{c[0]}", "conv") for c in _ALEXNET_CONVS] + [
            (f"classifier.fc{i}", "fc") for i in (6, 7, 8)
        ]

    @staticmethod
    def min_input_size() -> int:
        """The smallest input height/width the conv stack accepts (55: pool5 gives 1x1)."""
        return next(n for n in range(11, 1000) if _alexnet_feature_size(n) > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


# VGG-16, configuration D of Simonyan & Zisserman: conv widths per stage (then a 2x2 max pool).
VGG16_CFG: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512),
)  # fmt: skip


def _vgg16_feature_names(batch_norm: bool) -> list[str]:
    """Module names of ``VGG16.features`` in order: the order of torchvision's ``features``."""
    names = []
    for stage, widths in enumerate(VGG16_CFG, start=1):
        for i in range(1, len(widths) + 1):
            names.append(f"conv{stage}_{i}")
            if batch_norm:
                names.append(f"bn{stage}_{i}")
            names.append(f"relu{stage}_{i}")
        names.append(f"pool{stage}")
    return names


_VGG16_CLASSIFIER_NAMES = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")


@register_model("vgg16")
class VGG16(nn.Module):
    """VGG-16 (configuration D), torchvision's layout with the paper's layer names.

    ``features``: 13 conv 3x3 pad 1 (each followed by ReLU; by BatchNorm then ReLU with
    ``batch_norm=True``) in five stages of 64, 128, 256, 512, 512 channels, each ending in a 2x2
    max pool: ``conv1_1 ... conv5_3``, ``relu1_1 ...``, ``pool1 ... pool5``. Then ``avgpool``
    (adaptive, to 7x7, as torchvision: at 224x224 it changes nothing, other input sizes work),
    ``flatten`` and ``classifier``: fc6 25088->4096 -> ReLU -> Dropout; fc7 4096->4096 -> ReLU
    -> Dropout; fc8 4096->``num_classes``.

    138,357,544 parameters at 1000 classes (138,344,128 weights); 30.94 GFLOP per 224x224
    image (2 x MAC; convs 30.69G, fc6 205.5M, fc7 33.6M, fc8 8.2M).

    The modules are in torchvision's order, so torchvision's ``vgg16`` / ``vgg16_bn`` weights
    load through :func:`load_torchvision_vgg16_state` (keys renamed by position). The weights
    start as torchvision's do: Kaiming normal (fan out) convs, N(0, 0.01) linears, zero biases.

    Args:
        num_classes: output units of fc8.
        dropout: dropout rate after fc6 and fc7.
        batch_norm: BatchNorm after every conv (torchvision's ``vgg16_bn``).
        in_channels: input image channels.

    Raises:
        ValueError: a size or rate out of range.

    Example:
        >>> [n for n, _ in VGG16.prunable_layer_names()][12:]
        ['features.conv5_3', 'classifier.fc6', 'classifier.fc7', 'classifier.fc8']
    """

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.5,
        batch_norm: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _check_size(num_classes, "num_classes")
        _check_size(in_channels, "in_channels")
        p = _check_p(dropout, "dropout")
        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm={batch_norm!r} is invalid; allowed: True, False")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for stage, widths in enumerate(VGG16_CFG, start=1):
            for i, width in enumerate(widths, start=1):
                layers[f"conv{stage}_{i}"] = nn.Conv2d(channels, width, 3, padding=1)
                if batch_norm:
                    layers[f"bn{stage}_{i}"] = nn.BatchNorm2d(width)
                layers[f"relu{stage}_{i}"] = nn.ReLU()
                channels = width
            layers[f"pool{stage}"] = nn.MaxPool2d(2, 2)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict(zip(_VGG16_CLASSIFIER_NAMES, (
            nn.Linear(channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(p),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p),
            nn.Linear(4096, num_classes),
        ), strict=True)))  # fmt: skip
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as torchvision's VGG does."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @staticmethod
    def prunable_layer_names() -> list[tuple[str, str]]:
        """``(module name, kind)`` of the 16 layers, without building the model."""
        convs = [f"features.{n}" for n in _vgg16_feature_names(False) if n.startswith("conv")]
        return [(n, "conv") for n in convs] + [(f"classifier.fc{i}", "fc") for i in (6, 7, 8)]

    def load_torchvision_state(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """Load torchvision weights: :func:`load_torchvision_vgg16_state` on this model."""
        return load_torchvision_vgg16_state(self, state_dict, strict=strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def map_torchvision_vgg16_state(
    state_dict: Mapping[str, Any], batch_norm: bool | None = None
) -> dict[str, Any]:
    """Rename torchvision ``vgg16`` (or ``vgg16_bn``) state-dict keys to :class:`VGG16`'s.

    ``features.<i>.<tensor>`` becomes ``features.<name>.<tensor>`` where ``<name>`` is the
    i-th module of our ``features`` (``features.0.weight`` -> ``features.conv1_1.weight``,
    ``features.1.weight`` -> ``features.bn1_1.weight`` for ``vgg16_bn``) and likewise for
    ``classifier`` (``classifier.0`` -> ``fc6``, ``.3`` -> ``fc7``, ``.6`` -> ``fc8``). The
    values are passed through untouched (no copy).

    Args:
        state_dict: torchvision's state dict (e.g. ``torch.load`` of the cached
            ``vgg16-397923af.pth``, or ``torchvision.models.vgg16().state_dict()``).
        batch_norm: whether it is ``vgg16_bn``'s; ``None`` decides from the keys (BatchNorm
            running statistics present).

    Returns:
        A new dict with our keys, in the input's order.

    Raises:
        ValueError: a key that is not one of torchvision's VGG-16 keys.

    Example:
        >>> map_torchvision_vgg16_state({"features.1.weight": 0, "features.1.running_mean": 0})
        {'features.bn1_1.weight': 0, 'features.bn1_1.running_mean': 0}
    """
    if batch_norm is None:
        batch_norm = any(k.endswith(".running_mean") for k in state_dict)
    names = {"features": _vgg16_feature_names(batch_norm),
             "classifier": list(_VGG16_CLASSIFIER_NAMES)}
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        index, _, tensor = rest.partition(".")
        if part not in names or not index.isdigit() or not tensor \
                or int(index) >= len(names[part]):
            raise ValueError(
                f"state-dict key {key!r} is not a torchvision vgg16"
                f"{'_bn' if batch_norm else ''} key; allowed: 'features.<i>.<tensor>' "
                f"(i < {len(names['features'])}) or 'classifier.<i>.<tensor>' (i < 7)"
            )
        out[f"{part}.{names[part][int(index)]}.{tensor}"] = value
    return out


def load_torchvision_vgg16_state(
    model: VGG16, state_dict: Mapping[str, Any], *, strict: bool = True
) -> Any:
    """Load torchvision ``vgg16`` / ``vgg16_bn`` weights into ``model`` (a :class:`VGG16`).

    With torchvision's pretrained file in the local cache (prunelab never downloads)::

        sd = torch.load(Path(torch.hub.get_dir()) / "checkpoints/vgg16-397923af.pth")
        load_torchvision_vgg16_state(build_model("vgg16"), sd)

    Args:
        model: the model to load into (``batch_norm`` must match the state dict).
        state_dict: torchvision's state dict.
        strict: as :meth:`torch.nn.Module.load_state_dict` (``False`` e.g. to drop fc8's keys
            from the dict and keep a new ``num_classes`` head).

    Returns:
        What :meth:`torch.nn.Module.load_state_dict` returns (missing / unexpected keys).

    Raises:
        ValueError: a key that is not torchvision's (see :func:`map_torchvision_vgg16_state`).
        RuntimeError: shapes that do not match (from ``load_state_dict``).
    """
    batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in model.features)
    return model.load_state_dict(map_torchvision_vgg16_state(state_dict, batch_norm),
                                 strict=strict)
