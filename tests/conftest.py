"""Shared fixtures: tiny seeded models and synthetic data (every test runs in milliseconds)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from prunelab.config import RunConfig, parse_config
from prunelab.criteria import Context, Criterion, register_criterion, unregister_criterion
from prunelab.data import TensorSplits
from prunelab.sharing import share_weights as _share

IMAGE = (1, 8, 8)


def build_mlp(seed: int = 0, dropout: float = 0.5) -> nn.Sequential:
    """Flatten -> fc1 64x32 -> ReLU -> Dropout -> fc2 32x16 -> ReLU -> fc3 16x4, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 32),
            relu1=nn.ReLU(),
            drop1=nn.Dropout(dropout),
            fc2=nn.Linear(32, 16),
            relu2=nn.ReLU(),
            fc3=nn.Linear(16, 4),
        )
    )


def build_convnet(seed: int = 0) -> nn.Sequential:
    """conv1 1->4 3x3 -> BN -> ReLU -> conv2 4->6 3x3 -> ReLU -> pool -> flatten -> fc1 -> fc2."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 6, 3),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(6 * 2 * 2, 10),
            relu3=nn.ReLU(),
            fc2=nn.Linear(10, 4),
        )
    )


def share_weights(model: nn.Module, clusters: dict[type, int]) -> nn.Module:
    """Weight sharing for tests, in place: every module of a type in ``clusters`` gets
    ``clusters[type]`` (a power of two) k-means centroids by :func:`prunelab.sharing.share_weights`
    (density initialisation, so that a pruned random layer uses all its values, as a trained one
    would). Returns the model."""
    layers = [
        name
        for name, module in model.named_modules()
        if any(isinstance(module, kind) for kind in clusters)
    ]
    bits = {
        name: next(
            n for kind, n in clusters.items() if isinstance(model.get_submodule(name), kind)
        ).bit_length()
        - 1
        for name in layers
    }
    _share(model, bits, layers=layers, init="density")
    return model


def make_data(n_train: int = 96, n_val: int = 32, classes: int = 4, seed: int = 0) -> TensorSplits:
    """Linearly separable 1x8x8 images: a fixed random template per class plus small noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, *IMAGE, generator=g)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        x = templates[y] + 0.1 * torch.randn(n, *IMAGE, generator=g)
        return x, y

    x_train, y_train = split(n_train)
    x_val, y_val = split(n_val)
    return TensorSplits(x_train, y_train, x_val, y_val)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


BASE_CONFIG: dict[str, Any] = {
    "model": {"name": "lenet300"},  # the pipeline is handed a model; the name is not used
    "seed": 0,
    "train": {
        "epochs": 1,
        "batch_size": 32,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "regularization": {"kind": "l2", "strength": 5e-4},
    },
    "prune": {"method": "magnitude", "schedule": [{"sparsity": 0.5, "epochs": 1}]},
    "eval_batch_size": 64,
}


#: A whole ``prunelab run`` on 512 MNIST images in a few seconds (2 dense epochs, 2 pruning
#: iterations, dead-neuron removal), for tests that start real runs in subprocesses.
SMALL_MNIST_RUN: dict[str, Any] = {
    "name": "small-mnist",
    "model": {"name": "lenet300"},
    "data": {"name": "mnist", "val_size": 256, "subset": 512},
    "seed": 0,
    "threads": 1,
    "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}},
    "prune": {
        "method": "std",
        "dead_neurons": True,
        "schedule": [{"q": 1.0, "epochs": 1}, {"q": 1.5, "epochs": 1}],
    },
}


def make_config(**sections: Any) -> RunConfig:
    """``BASE_CONFIG`` deep-merged with ``sections`` (a section given as a dict is merged)."""
    return parse_config(_merge(BASE_CONFIG, sections))


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread (restored afterwards).

    The tensors here are tiny; on a machine shared with training runs, extra threads only
    wait for cores (a 3x slowdown measured with two cores and a load of four).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlp() -> nn.Sequential:
    """The tiny MLP, in eval mode (dropout off) so outputs are deterministic."""
    return build_mlp().eval()


@pytest.fixture
def convnet() -> nn.Sequential:
    """The tiny conv net, in eval mode."""
    return build_convnet().eval()


@pytest.fixture
def x8() -> torch.Tensor:
    """A seeded batch of 16 inputs of shape 1x8x8."""
    return torch.randn(16, *IMAGE, generator=torch.Generator().manual_seed(123))


@pytest.fixture
def data() -> TensorSplits:
    """Synthetic separable data (96 train, 32 validation, 4 classes)."""
    return make_data()


@pytest.fixture
def config_factory() -> Callable[..., RunConfig]:
    """``make_config`` as a fixture."""
    return make_config


@pytest.fixture
def mlp_factory() -> Callable[..., nn.Sequential]:
    """``build_mlp`` as a fixture (for tests that need two identical fresh models)."""
    return build_mlp


@pytest.fixture
def convnet_factory() -> Callable[..., nn.Sequential]:
    """``build_convnet`` as a fixture."""
    return build_convnet


@pytest.fixture
def data_factory() -> Callable[..., TensorSplits]:
    """``make_data`` as a fixture."""
    return make_data


@dataclass(frozen=True)
class KeepFirst(Criterion):
    """A user criterion: keeps the first entries of each weight (row-major order)."""

    reverse: bool = False

    def scores(self, tensor: torch.Tensor, context: Context) -> torch.Tensor:
        idx = torch.arange(tensor.numel(), dtype=torch.float64).view(tensor.shape)
        return idx if self.reverse else -idx


@pytest.fixture
def keep_first() -> Iterator[type[KeepFirst]]:
    register_criterion("keep_first")(KeepFirst)
    yield KeepFirst
    unregister_criterion("keep_first")


class StopRunError(RuntimeError):
    """Raised by :class:`StopAfterEpochs`: a run interrupted on purpose."""


class StopAfterEpochs:
    """A pipeline reporter that interrupts the run after ``n`` epochs (tests of resume)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None:
        pass

    def batch(self) -> None:
        pass

    def epoch_end(self, record: object) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise StopRunError

    def event(self, record: object) -> None:
        pass

    def phase_end(self) -> None:
        pass
