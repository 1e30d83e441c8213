"""Layer links, dropout placement, dead neurons and their function-preserving removal."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from prunelab.dead_neurons import find_dead_neurons, prune_dead_neurons
from prunelab.graph import Link, trace_structure
from prunelab.masks import get_mask, set_mask
from prunelab.models import build_model
from prunelab.surgery import SurgeryError

pytestmark = pytest.mark.usefixtures("single_thread")


def _pairs(structure) -> list[tuple[str, str, int]]:
    return [(lk.producer, lk.consumer, lk.block) for lk in structure.links]


def _mask_with(module: nn.Module, edit) -> None:
    """Install a mask of ones with ``edit(mask)`` applied (rows/columns zeroed)."""
    mask = torch.ones_like(module.weight)
    edit(mask)
    set_mask(module, "weight", mask)


def _randomise_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
        bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
        bn.weight.copy_(0.5 + torch.rand(n, generator=g))
        bn.bias.copy_(torch.rand(n, generator=g) - 0.2)


# ------------------------------------------------------------------------------ tracing


def test_trace_mlp_links_and_dropout(mlp, x8):
    s = trace_structure(mlp, x8)
    assert s.links == (
        Link("fc1", "fc2", ("relu1", "drop1"), 1),
        Link("fc2", "fc3", ("relu2",), 1),
    )
    assert dict(s.dropout_feeds) == {"drop1": "fc2"}
    assert s.layers == ("fc1", "fc2", "fc3")
    assert s.verified


def test_trace_conv_conv_and_conv_flatten_linear(convnet, x8):
    s = trace_structure(convnet, x8)
    assert s.links == (
        Link("conv1", "conv2", ("bn1", "relu1"), 1),
        Link("conv2", "fc1", ("relu2", "pool", "flatten"), 4),  # 6 channels of 2x2
        Link("fc1", "fc2", ("relu3",), 1),
    )
    assert s.producer_of("fc1").producer == "conv2"
    assert [lk.consumer for lk in s.consumers_of("conv1")] == ["conv2"]


def test_trace_lenet5_block_is_pooled_h_times_w():
    s = trace_structure(build_model("lenet5", dropout=0.5), torch.zeros(1, 1, 28, 28))
    assert _pairs(s) == [("conv1", "conv2", 1), ("conv2", "fc1", 16), ("fc1", "fc2", 1)]
    assert dict(s.dropout_feeds) == {"drop": "fc2"}


def test_dropout_on_input_feeds_first_layer(x8):
    model = nn.Sequential(
        OrderedDict(drop0=nn.Dropout(0.2), flat=nn.Flatten(), fc1=nn.Linear(64, 4))
    )
    assert dict(trace_structure(model, x8).dropout_feeds) == {"drop0": "fc1"}


def test_trace_restores_training_mode(mlp, x8):
    mlp.train()
    trace_structure(mlp, x8)
    assert mlp.training


class Residual(nn.Module):
    """fc0 -> relu -> fc1 -> relu -> (fc2(h) + h) -> fc3: the skip joins fc1's output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(64, 8)
        self.relu0 = nn.ReLU()
        self.fc1 = nn.Linear(8, 8)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.fc1(self.relu0(self.fc0(x.flatten(1)))))
        return self.fc3(self.fc2(h) + h)


def test_no_link_across_a_residual_add(x8):
    s = trace_structure(Residual(), x8)
    assert s.verified
    # fc1's output feeds both fc2 and the add; fc2's output goes through the add to fc3.
    assert _pairs(s) == [("fc0", "fc1", 1)]


def test_dead_neurons_across_a_residual_add_are_left_alone(x8):
    model = Residual().eval()
    _mask_with(model.fc2, lambda m: m[:, 3].zero_())  # fc1 unit 3 still feeds the add
    s = trace_structure(model, x8)
    before = model(x8)
    report = prune_dead_neurons(model, s, x8)
    assert report.removed == {}
    assert torch.equal(model(x8), before)


# ------------------------------------------------------------------------------ detection


def _mlp_with_dead_units(mlp: nn.Module) -> None:
    def fc1(m):
        m[3].zero_()  # unit 3: no input
        m[7].zero_()  # unit 7: no input

    def fc2(m):
        m[:, 5].zero_()  # fc1 unit 5: no output
        m[2].zero_()  # fc2 unit 2: no input

    _mask_with(mlp.fc1, fc1)
    _mask_with(mlp.fc2, fc2)
    _mask_with(mlp.fc3, lambda m: m[:, 9].zero_())  # fc2 unit 9: no output
    with torch.no_grad():
        mlp.fc1.bias[3] = 0.5  # a positive constant reaches fc2 through the ReLU
        mlp.fc1.bias[7] = -0.5  # ReLU makes this one output zero
        mlp.fc2.bias[2] = 0.25


def test_find_dead_neurons_exact(mlp, x8):
    _mlp_with_dead_units(mlp)
    report = find_dead_neurons(mlp, trace_structure(mlp, x8))
    assert report.no_input == {"fc1": [3, 7], "fc2": [2]}
    assert report.no_output == {"fc1": [5], "fc2": [9]}
    assert report.removed == {}


def test_find_dead_neurons_conv_block_columns(convnet, x8):
    # conv2 channel 1 feeds fc1 columns 4..7 (block 4); zeroing only part of them keeps it
    _mask_with(convnet.fc1, lambda m: m[:, 4:7].zero_())
    s = trace_structure(convnet, x8)
    assert find_dead_neurons(convnet, s).no_output == {}
    _mask_with(convnet.fc1, lambda m: m[:, 4:8].zero_())
    assert find_dead_neurons(convnet, s).no_output == {"conv2": [1]}


# ------------------------------------------------------------------------------ removal


def test_prune_dead_neurons_mlp_keeps_outputs(mlp, x8):
    _mlp_with_dead_units(mlp)
    s = trace_structure(mlp, x8)
    before = mlp(x8)
    bias_before = mlp.fc2.bias.detach().clone()
    column = mlp.fc2.weight_orig.detach()[:, 3].clone()
    report = prune_dead_neurons(mlp, s, x8)
    assert (mlp(x8) - before).abs().max() < 1e-5
    assert report.removed == {"fc1": [3, 5, 7], "fc2": [2, 9]}
    assert report.kept_unfoldable == {}
    assert report.counts() == {
        "fc1": {"no_input": 2, "no_output": 1, "removed": 3, "kept_unfoldable": 0},
        "fc2": {"no_input": 1, "no_output": 1, "removed": 2, "kept_unfoldable": 0},
    }
    assert report.total_removed == 5
    # removed units: rows, biases and consumer columns are masked
    assert not get_mask(mlp.fc1)[[3, 5, 7]].any()
    assert not get_mask(mlp.fc1, "bias")[[3, 5, 7]].any()
    assert not get_mask(mlp.fc2)[:, [3, 5, 7]].any()
    assert not get_mask(mlp.fc3)[:, [2, 9]].any()
    # fc1 unit 3 contributed relu(0.5) * column 3 of fc2: now part of fc2's bias
    # (unit 2 of fc2 is removed, so its own bias entry is masked to zero)
    expected = bias_before + 0.5 * column
    keep = [i for i in range(16) if i not in (2, 9)]
    torch.testing.assert_close(mlp.fc2.bias.detach()[keep], expected[keep])


def test_prune_dead_neurons_cascades(mlp, x8):
    def fc1(m):
        m[6].zero_()  # unit 6: no input, bias negative: constant 0

    def fc2(m):
        m[4].zero_()
        m[4, 6] = 1.0  # fc2 unit 4 reads only fc1 unit 6

    _mask_with(mlp.fc1, fc1)
    _mask_with(mlp.fc2, fc2)
    with torch.no_grad():
        mlp.fc1.bias[6] = -1.0
        mlp.fc2.bias[4] = 0.3
    s = trace_structure(mlp, x8)
    assert find_dead_neurons(mlp, s).no_input == {"fc1": [6]}
    before = mlp(x8)
    report = prune_dead_neurons(mlp, s, x8)
    assert report.removed == {"fc1": [6], "fc2": [4]}
    assert (mlp(x8) - before).abs().max() < 1e-5


def test_prune_dead_neurons_conv_with_batchnorm_keeps_outputs(convnet, x8):
    _randomise_bn(convnet.bn1, 0)
    convnet.eval()
    _mask_with(convnet.conv1, lambda m: m[1].zero_())  # channel 1: no input
    _mask_with(convnet.conv2, lambda m: m[4].zero_())  # channel 4: no input
    _mask_with(convnet.fc1, lambda m: m[:, 8:12].zero_())  # conv2 channel 2: no output
    with torch.no_grad():
        convnet.conv1.bias[1] = 0.7  # BN(0.7) is a nonzero constant map
        convnet.conv2.bias[4] = 0.3
    s = trace_structure(convnet, x8)
    before = convnet(x8)
    bias_before = convnet.conv2.bias.detach().clone()
    report = prune_dead_neurons(convnet, s, x8)
    assert (convnet(x8) - before).abs().max() < 1e-5
    kept = [0, 1, 3, 5]  # conv1 channel 1's constant was folded into conv2's bias
    assert not torch.allclose(convnet.conv2.bias.detach()[kept], bias_before[kept])
    assert report.removed == {"conv1": [1], "conv2": [2, 4]}
    assert report.counts()["conv2"] == {
        "no_input": 1, "no_output": 1, "removed": 2, "kept_unfoldable": 0,
    }  # fmt: skip
    assert not get_mask(convnet.conv2)[:, 1].any()
    assert not get_mask(convnet.fc1)[:, 16:20].any()  # channel 4's block


def _padded_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 3, 3, padding=1),
            flatten=nn.Flatten(),
            fc=nn.Linear(3 * 8 * 8, 2),
        )
    ).eval()


def test_padded_conv_consumer_keeps_unfoldable_neuron(x8):
    net = _padded_net()
    _mask_with(net.conv1, lambda m: m[2:4].zero_())
    with torch.no_grad():
        net.conv1.bias[2] = 0.5  # constant 0.5 map: zero padding makes borders differ
        net.conv1.bias[3] = -0.5  # ReLU -> constant 0: removable despite the padding
    s = trace_structure(net, x8)
    before = net(x8)
    report = prune_dead_neurons(net, s, x8)
    assert report.kept_unfoldable == {"conv1": [2]}
    assert report.removed == {"conv1": [3]}
    assert (net(x8) - before).abs().max() < 1e-5
    assert get_mask(net.conv2)[:, 2].all()


def test_consumer_without_bias_keeps_unfoldable_neuron(x8):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2, bias=False))
    _mask_with(net[1], lambda m: m[0].zero_())
    with torch.no_grad():
        net[1].bias[0] = 1.0
    before = net(x8)
    report = prune_dead_neurons(net, trace_structure(net, x8), x8)
    assert report.kept_unfoldable == {"1": [0]}
    assert report.removed == {}
    assert torch.equal(net(x8), before)


def test_prune_dead_neurons_is_idempotent(mlp, x8):
    _mlp_with_dead_units(mlp)
    s = trace_structure(mlp, x8)
    prune_dead_neurons(mlp, s, x8)
    again = prune_dead_neurons(mlp, s, x8)
    assert again.removed == {} and again.no_input == {} and again.no_output == {}


@pytest.mark.parametrize("training", [False, True])
def test_prune_dead_neurons_restores_training_mode(mlp, x8, training):
    _mlp_with_dead_units(mlp)
    mlp.train(training)
    prune_dead_neurons(mlp, trace_structure(mlp, x8), x8)
    assert mlp.training is training


class _UntraceableSkip(nn.Module):
    """A skip connection behind data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        y = self.fc2(h)
        if x.sum() > -1e9:  # data-dependent: fx fails, the hooks see a chain
            y = y + h
        return self.out(y)


def test_prune_dead_neurons_refuses_what_it_cannot_verify(x8):
    model = _UntraceableSkip().eval()
    _mask_with(model.fc2, lambda m: m[:, 2].zero_())  # h unit 2 still reaches `out` via the add
    with pytest.warns(UserWarning, match="cannot trace"):
        s = trace_structure(model, x8)
    assert not s.verified and ("fc1", "fc2") in [(lk.producer, lk.consumer) for lk in s.links]
    before = model(x8)
    with pytest.raises(SurgeryError, match="cannot verify the layer links"):
        prune_dead_neurons(model, s, x8)
    # told to trust the links, the output check still refuses and restores the model
    with pytest.raises(SurgeryError, match="would change the output"):
        prune_dead_neurons(model, s, x8, trust_links=True)
    assert get_mask(model.fc1) is None and torch.equal(model(x8), before)


def test_unused_residual_stream_channels_are_removed_from_every_producer():
    class Stream(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            h = h + self.b(torch.relu(h))
            return self.c(h)

    torch.manual_seed(0)
    model = Stream().eval()
    _mask_with(model.b, lambda m: m[:, 4].zero_())
    _mask_with(model.c, lambda m: m[:, 4].zero_())  # stream channel 4: nobody reads it
    x = torch.randn(5, 8)
    before = model(x)
    report = prune_dead_neurons(model, trace_structure(model, x), x)
    assert report.removed == {"a": [4], "b": [4]}
    assert not get_mask(model.a)[4].any() and not get_mask(model.b)[4].any()
    assert torch.allclose(model(x), before, atol=1e-6)
