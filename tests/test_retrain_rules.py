"""Han's retraining rules: the dropout rule and freezing one kind of layer."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from prunelab.experiments.han import HanPipeline, SilentReporter
from prunelab.graph import trace_structure
from prunelab.pruner import Pruner
from prunelab.retrain_rules import (
    adjusted_dropout,
    apply_dropout_rule,
    freeze_kind,
    frozen_parameters,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# ------------------------------------------------------------------------------ dropout


def test_adjusted_dropout_formula():
    assert adjusted_dropout(0.5, 1000, 250) == 0.25
    assert adjusted_dropout(0.5, 235_200, 18_816) == pytest.approx(0.5 * math.sqrt(0.08))
    assert adjusted_dropout(0.3, 10, 10) == 0.3
    assert adjusted_dropout(0.3, 10, 0) == 0.0


def test_apply_dropout_rule_on_pruned_model(mlp, x8):
    Pruner(mlp).step("magnitude", {"*": 0.5, "fc2": 0.75})
    feeds = trace_structure(mlp, x8).dropout_feeds
    changes = apply_dropout_rule(mlp, feeds, {"drop1": 0.5}, {"fc1": 2048, "fc2": 512, "fc3": 64})
    assert len(changes) == 1
    c = changes[0]
    assert (c.dropout, c.layer, c.original) == ("drop1", "fc2", 0.5)
    assert (c.connections_dense, c.connections_now) == (512, 128)
    assert c.retrain == 0.5 * math.sqrt(128 / 512) == 0.25
    assert mlp.drop1.p == 0.25
    assert c.to_dict()["retrain"] == 0.25


@pytest.mark.parametrize("rate", [1.0, -0.1, math.nan])
def test_bad_dropout_rate_raises(rate):
    with pytest.raises(ValueError, match=re.escape(repr(rate))):
        adjusted_dropout(rate, 100, 50)


def test_growing_connections_raise():
    with pytest.raises(ValueError, match="C_ir=200"):
        adjusted_dropout(0.5, 100, 200)


def test_apply_dropout_rule_rejects_non_dropout(mlp):
    with pytest.raises(ValueError, match="'relu1'"):
        apply_dropout_rule(mlp, {"relu1": "fc2"}, {"relu1": 0.5}, {"fc2": 512})


def test_apply_dropout_rule_rejects_non_layer(mlp):
    with pytest.raises(ValueError, match="'relu2'"):
        apply_dropout_rule(mlp, {"drop1": "relu2"}, {"drop1": 0.5}, {"relu2": 1})


# ------------------------------------------------------------------------------ freezing


def test_frozen_parameters_by_kind(convnet):
    conv = {id(p) for n in ("conv1", "bn1", "conv2") for p in getattr(convnet, n).parameters()}
    fc = {id(p) for n in ("fc1", "fc2") for p in getattr(convnet, n).parameters()}
    assert frozen_parameters(convnet, "conv") == conv
    assert frozen_parameters(convnet, "fc") == fc
    assert frozen_parameters(convnet, "none") == set()
    trainable = freeze_kind(convnet, "conv")
    assert {id(p) for p in trainable} == fc
    assert not convnet.conv1.weight.requires_grad and convnet.fc1.weight.requires_grad


def test_unknown_freeze_raises(convnet):
    with pytest.raises(ValueError, match="'bn'"):
        frozen_parameters(convnet, "bn")


class _Snapshot(SilentReporter):
    """Reporter that copies the parameters when the first retraining phase starts."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.at_retrain: dict[str, torch.Tensor] | None = None

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None:
        if name.startswith("retrain") and self.at_retrain is None:
            self.at_retrain = {k: v.detach().clone() for k, v in self.model.named_parameters()}


@pytest.mark.parametrize(
    ("freeze", "frozen", "trained"),
    [
        ("conv", ("conv1", "bn1", "conv2"), ("fc1", "fc2")),
        ("fc", ("fc1", "fc2"), ("conv1", "conv2")),
    ],
)
def test_freeze_in_pipeline_keeps_frozen_kind_bit_identical(
    convnet_factory, data, config_factory, freeze, frozen, trained
):
    model = convnet_factory()
    cfg = config_factory(
        prune={
            "schedule": [{"sparsity": 0.5, "epochs": 2}],
            "retrain": {
                "freeze": freeze,
                "keep_best": False,
                "regularization": {"kind": "l2", "strength": 0.05},
            },
        }
    )
    reporter = _Snapshot(model)
    HanPipeline(model, cfg, data, reporter=reporter).run()
    assert reporter.at_retrain is not None
    after = dict(model.named_parameters())
    checked = []
    for name, before in reporter.at_retrain.items():
        if name.split(".")[0] in frozen:
            assert torch.equal(after[name].detach(), before), name
            checked.append(name.split(".")[1])
    assert {"weight_orig", "bias"} <= set(checked)
    for layer in trained:
        for suffix in ("weight_orig", "bias"):
            name = f"{layer}.{suffix}"
            assert not torch.equal(after[name].detach(), reporter.at_retrain[name]), name
