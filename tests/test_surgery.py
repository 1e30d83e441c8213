"""Physical surgery: dead units go, the function stays (max abs diff <= 1e-5)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab.dead_neurons import find_dead_neurons, prune_dead_neurons
from prunelab.graph import Link, Structure, surgery_blocker, trace_structure
from prunelab.masks import get_mask, is_masked, set_mask
from prunelab.metrics import count_parameters, model_stats
from prunelab.models import LeNet5, LeNet300
from prunelab.pruner import prune_model
from prunelab.surgery import SurgeryError, compact_model

ATOL = 1e-5


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval()
    b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(6, 6),
            act1=nn.ReLU(),
            fc2=nn.Linear(6, 4),
            act2=nn.ReLU(),
            fc3=nn.Linear(4, 3),
        )
    ).eval()


def test_mlp_removes_exactly_the_dead_units_and_cascades():
    m = _mlp()
    w1 = torch.ones(6, 6)
    w1[2] = 0  # fc1 unit 2: no inputs, bias -1 -> ReLU -> 0: removable
    w1[3] = 0  # fc1 unit 3: no inputs, bias masked to 0: removable
    w1[4] = 0  # fc1 unit 4: no inputs, bias +0.5 -> constant 0.5: kept (not folded)
    set_mask(m.fc1, "weight", w1)
    b1 = torch.ones(6)
    b1[3] = 0
    set_mask(m.fc1, "bias", b1)
    w2 = torch.ones(4, 6)
    w2[:, 1] = 0  # fc1 unit 1: no outgoing weights: removable
    w2[0] = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # fc2 unit 0 reads only removed units
    set_mask(m.fc2, "weight", w2)
    with torch.no_grad():
        m.fc1.bias_orig[2] = -1.0
        m.fc1.bias_orig[4] = 0.5
        m.fc2.bias[0] = 0.0  # so fc2 unit 0 delivers exactly zero once its inputs go
    x = torch.randn(32, 6)
    small, report = compact_model(m, x)
    assert report.layers["fc1"].removed == (1, 2, 3)
    assert report.layers["fc2"].removed == (0,)
    assert report.kept_constant == {"fc1": (4,)}
    assert (small.fc1.in_features, small.fc1.out_features) == (6, 3)
    assert (small.fc2.in_features, small.fc2.out_features) == (3, 3)
    assert small.fc3.in_features == 3
    assert _max_diff(m, small, x) <= ATOL
    assert report.max_abs_diff <= ATOL
    before = 6 * 6 + 6 + 4 * 6 + 4 + 3 * 4 + 3
    after = 3 * 6 + 3 + 3 * 3 + 3 + 3 * 3 + 3
    assert (report.params_before, report.params_after) == (before, after)
    assert count_parameters(small)[0] == after
    assert report.layers["fc2"].inputs_after == 3


def test_constant_through_sigmoid_is_kept():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid(), nn.Linear(2, 1)).eval()
    set_mask(m[0], "weight", torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    set_mask(m[0], "bias", torch.tensor([1.0, 0.0]))  # sigmoid(0) = 0.5, not zero
    x = torch.randn(8, 3)
    small, report = compact_model(m, x)
    assert small[0].out_features == 2
    assert report.kept_constant == {"0": (1,)}


def test_unit_zero_in_eval_but_not_in_train_mode_is_kept():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1)).eval()
    set_mask(m[0], "weight", torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    set_mask(m[0], "bias", torch.tensor([1.0, 0.0]))
    with torch.no_grad():  # eval: ReLU((0 - 5) / 1 + 1) = 0; train (batch stats): ReLU(1) = 1
        m[1].running_mean[1] = 5.0
        m[1].weight[1] = 1.0
        m[1].bias[1] = 1.0
    small, report = compact_model(m, torch.randn(8, 3))
    assert small[0].out_features == 2 and report.kept_constant == {"0": (1,)}


def _convnet(bn: bool = True, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    layers = OrderedDict(conv1=nn.Conv2d(2, 6, 3, padding=1, bias=bias))
    if bn:
        layers["bn1"] = nn.BatchNorm2d(6)
    layers.update(relu1=nn.ReLU(), conv2=nn.Conv2d(6, 5, 3, padding=1, bias=bias))
    if bn:
        layers["bn2"] = nn.BatchNorm2d(5)
    layers.update(
        relu2=nn.ReLU(),
        pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc1=nn.Linear(5 * 3 * 3, 7),
        relu3=nn.ReLU(),
        fc2=nn.Linear(7, 3),
    )
    return nn.Sequential(layers)


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


def test_conv_conv_without_bn_random_masks_and_dead_channels():
    m = _convnet(bn=False).eval()
    x = torch.randn(4, 2, 6, 6)
    prune_model(m, "random", 0.5, seed=3)
    mask = get_mask(m.conv1).clone()
    mask[1] = 0  # conv1 channel 1: no inputs (bias masked below)
    set_mask(m.conv1, "weight", mask)
    set_mask(m.conv1, "bias", torch.tensor([1.0, 0, 1, 1, 1, 1]))
    cmask = get_mask(m.conv2).clone()
    cmask[:, 4] = 0  # conv1 channel 4: no outgoing weights
    set_mask(m.conv2, "weight", cmask)
    fmask = get_mask(m.fc1).clone()
    fmask[:, 2 * 9 : 3 * 9] = 0  # conv2 channel 2: its 3x3 block of fc1 columns is zero
    set_mask(m.fc1, "weight", fmask)
    small, report = compact_model(m, x)
    assert report.layers["conv1"].removed == (1, 4)
    assert report.layers["conv2"].removed == (2,)
    assert (small.conv2.in_channels, small.conv2.out_channels, small.fc1.in_features) == (4, 4, 36)
    assert _max_diff(m, small, x) <= ATOL
    # masks are kept, smaller, on the remaining weights
    assert get_mask(small.conv2).shape == (4, 4, 3, 3)
    assert torch.equal(get_mask(small.fc1), fmask[:, [j for j in range(45) if j // 9 != 2]])
    assert torch_prune.is_pruned(small)


def test_bn_channels_and_running_stats_are_carried():
    m = _convnet(bn=True).eval()
    _randomise_bn(m)
    x = torch.randn(4, 2, 6, 6)
    set_mask(m.conv1, "weight", torch.ones_like(m.conv1.weight))
    cmask = torch.ones_like(m.conv2.weight)
    cmask[:, [0, 3]] = 0  # conv1 channels 0 and 3 have no outgoing weights
    set_mask(m.conv2, "weight", cmask)
    small, report = compact_model(m, x)
    kept = [1, 2, 4, 5]
    assert report.layers["conv1"].removed == (0, 3)
    assert small.bn1.num_features == 4
    assert torch.equal(small.bn1.running_mean, m.bn1.running_mean[kept])
    assert torch.equal(small.bn1.running_var, m.bn1.running_var[kept])
    assert torch.equal(small.bn1.weight, m.bn1.weight[kept])
    assert torch.equal(small.bn1.bias, m.bn1.bias[kept])
    assert _max_diff(m, small, x) <= ATOL
    assert _max_diff(m, small, torch.randn(3, 2, 6, 6)) <= ATOL  # other inputs too


def test_masked_bn_scale_and_shift_make_a_live_filter_removable():
    m = _convnet(bn=True).eval()
    _randomise_bn(m, seed=1)
    set_mask(m.bn2, "weight", torch.tensor([1.0, 0, 1, 1, 1]))
    set_mask(m.bn2, "bias", torch.tensor([1.0, 0, 1, 1, 1]))
    x = torch.randn(4, 2, 6, 6)
    small, report = compact_model(m, x)
    assert report.layers["conv2"].removed == (1,)
    assert small.fc1.in_features == 36
    assert _max_diff(m, small, x) <= ATOL
    # train mode (batch statistics) gives the same outputs too
    a, b = copy.deepcopy(m).train(), copy.deepcopy(small).train()
    with torch.no_grad():
        assert float((a(x) - b(x)).abs().max()) <= ATOL


def test_unfolded_bn_constant_is_kept_until_prune_dead_neurons_folds_it():
    m = _convnet(bn=True).eval()
    _randomise_bn(m, seed=2)
    mask = torch.ones_like(m.conv1.weight)
    mask[5] = 0
    set_mask(m.conv1, "weight", mask)
    set_mask(m.conv1, "bias", torch.tensor([1.0, 1, 1, 1, 1, 0]))
    with torch.no_grad():  # make BN turn the zero into a positive constant that ReLU passes
        m.bn1.running_mean[5] = -1.0
        m.bn1.weight[5] = 1.0
        m.bn1.bias[5] = 0.0
    x = torch.randn(4, 2, 6, 6)
    small, report = compact_model(m, x)
    assert report.kept_constant == {"conv1": (5,)}
    assert small.conv1.out_channels == 6
    # conv2 pads with zeros, so the constant cannot be folded into its bias either
    s = trace_structure(m, x)
    dead = prune_dead_neurons(m, s, x)
    assert dead.kept_unfoldable == {"conv1": [5]}


def test_fold_then_compact_without_padding():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)
    ).eval()
    _randomise_bn(m, seed=3)
    with torch.no_grad():
        m[1].running_mean[2] = -2.0
        m[1].weight[2] = 1.0
        m[1].bias[2] = 0.0
    mask = torch.ones(4, 5)
    mask[2] = 0
    set_mask(m[0], "weight", mask)
    set_mask(m[0], "bias", torch.tensor([1.0, 1, 0, 1]))
    x = torch.randn(16, 5)
    ref = m(x).detach()
    s = trace_structure(m, x)
    assert compact_model(m, x, structure=s)[1].kept_constant == {"0": (2,)}
    prune_dead_neurons(m, s, x)  # folds the constant into layer 3's bias
    small, report = compact_model(m, x, structure=s)
    assert report.layers["0"].removed == (2,)
    assert small[1].num_features == 3
    with torch.no_grad():
        assert float((small(x) - ref).abs().max()) <= ATOL


@pytest.mark.parametrize("factory", [LeNet300, LeNet5], ids=["lenet300", "lenet5"])
def test_lenet_after_magnitude_pruning_and_dead_neurons(factory):
    torch.manual_seed(0)
    m = factory().eval()
    x = torch.rand(8, 1, 28, 28)
    prune_model(m, "magnitude", 0.97)
    s = trace_structure(m, x)
    dead = prune_dead_neurons(m, s, x)
    assert dead.total_removed > 0
    small, report = compact_model(m, x, structure=s)
    assert _max_diff(m, small, torch.rand(8, 1, 28, 28)) <= ATOL
    for layer, units in dead.removed.items():
        assert set(units) <= set(report.layers[layer].removed)
    # every removed unit was fully masked, so the nonzero count does not change
    assert count_parameters(small)[1] == count_parameters(m)[1]
    assert count_parameters(small)[0] == report.params_after < report.params_before
    stats = model_stats(small, x)
    assert stats.params_total == report.params_after
    assert stats.flops_dense < model_stats(m, x).flops_dense
    assert not find_dead_neurons(small, trace_structure(small, x)).no_output


def test_keep_masks_false_gives_plain_modules_and_same_outputs():
    m = _convnet().eval()
    _randomise_bn(m)
    x = torch.randn(4, 2, 6, 6)
    prune_model(m, "magnitude", 0.6)
    cmask = get_mask(m.conv2).clone()
    cmask[:, 2] = 0
    set_mask(m.conv2, "weight", cmask)
    small, _ = compact_model(m, x, keep_masks=False)
    assert not torch_prune.is_pruned(small)
    assert isinstance(small.conv1.weight, nn.Parameter)
    assert small.conv1.out_channels == 5
    assert _max_diff(m, small, x) <= ATOL


def test_original_untouched_and_masks_hold_during_training():
    m = _convnet().train()
    x = torch.randn(4, 2, 6, 6)
    prune_model(m, "magnitude", 0.5)
    cmask = get_mask(m.conv2).clone()
    cmask[:, 0] = 0
    set_mask(m.conv2, "weight", cmask)
    m(x).sum().backward()  # cached masked weights now carry autograd history
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small, _ = compact_model(m, x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert small.training and m.conv1.out_channels == 6
    opt = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        opt.zero_grad()
        small(x).pow(2).mean().backward()
        opt.step()
    for mod in (small.conv1, small.conv2, small.fc1):
        assert torch.all(mod.weight_orig[get_mask(mod) == 0] == 0)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4, 5)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h = h + self.conv2(h)  # residual join: conv1's and conv2's channels are tied
        h = self.grouped(self.conv3(h))
        return self.fc2(self.relu(self.fc1(self.flatten(self.pool(h)))))


def test_unsupported_layers_are_kept_and_requests_name_them():
    torch.manual_seed(0)
    m = _Residual().eval()
    x = torch.randn(2, 2, 5, 5)
    s = trace_structure(m, x)
    assert [(lk.producer, lk.consumer) for lk in s.links] == [("fc1", "fc2")]
    mask = torch.ones_like(m.conv1.weight)
    mask[1] = 0
    set_mask(m.conv1, "weight", mask)
    set_mask(m.conv1, "bias", torch.tensor([1.0, 0, 1, 1]))
    small, report = compact_model(m, x, structure=s)
    assert small.conv1.out_channels == 4 and "conv1" in report.unsupported
    assert _max_diff(m, small, x) <= ATOL
    drop_one = torch.tensor([True, False, True, True])
    with pytest.raises(SurgeryError, match=r"'conv1'.*residual"):
        compact_model(m, x, structure=s, keep={"conv1": drop_one})
    with pytest.raises(SurgeryError, match=r"'conv3'.*grouped convolution \(groups=2\)"):
        compact_model(m, x, structure=s, keep={"conv3": drop_one})
    with pytest.raises(SurgeryError, match=r"'grouped'.*groups=2"):
        compact_model(m, x, structure=s, keep={"grouped": drop_one})
    with pytest.raises(SurgeryError, match=r"'fc2'.*model's outputs"):
        compact_model(m, x, structure=s, keep={"fc2": torch.tensor([True, True, False])})
    assert surgery_blocker(m, s, "pool") == "it is a AdaptiveAvgPool2d, not a Linear/Conv layer"


def test_hand_made_links_are_guarded():
    torch.manual_seed(0)
    m = _Residual().eval()
    x = torch.randn(2, 2, 5, 5)
    cmask = torch.ones_like(m.conv2.weight)
    cmask[:, 0] = 0  # conv2 ignores conv1's channel 0, but the residual add still uses it
    set_mask(m.conv2, "weight", cmask)
    s = trace_structure(m, x)
    hidden = Structure(s.order, s.layers, (Link("conv1", "conv2"), *s.links))
    with pytest.raises(SurgeryError, match="not a chain"):
        compact_model(m, x, structure=hidden)
    branching = Structure(s.order, s.layers, (Link("conv1", "conv2"), Link("conv1", "conv3")))
    with pytest.raises(SurgeryError, match=r"'conv1'.*feeds 2 layers \(conv2, conv3\)"):
        compact_model(m, x, structure=branching, keep={"conv1": torch.tensor([0, 1, 1, 1]) > 0})
    small, report = compact_model(m, x, structure=branching)  # unsafe links are not used
    assert small.conv1.out_channels == 4 and report.units_removed == 0


def test_request_for_live_units_or_bad_masks_is_refused():
    m = _mlp()
    x = torch.randn(4, 6)
    with pytest.raises(SurgeryError, match=r"units \[0, 5\] of layer 'fc1' still affect 'fc2'"):
        compact_model(m, x, keep={"fc1": torch.tensor([False, True, True, True, True, False])})
    with pytest.raises(SurgeryError, match="every unit"):
        compact_model(m, x, keep={"fc1": torch.zeros(6, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shape \(5,\); expected \(6,\)"):
        compact_model(m, x, keep={"fc1": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'act1', which is not a Linear/Conv layer"):
        compact_model(m, x, keep={"act1": torch.ones(6, dtype=torch.bool)})


def test_all_dead_layer_keeps_one_unit():
    m = _mlp()
    set_mask(m.fc2, "weight", torch.zeros(4, 6))
    set_mask(m.fc2, "bias", torch.zeros(4))
    x = torch.randn(4, 6)
    small, report = compact_model(m, x)
    assert small.fc2.out_features == 1 and small.fc1.out_features == 1
    assert report.kept_last
    assert _max_diff(m, small, x) <= ATOL


def test_is_masked_on_compact_bias():
    m = _mlp()
    set_mask(m.fc2, "weight", torch.ones(4, 6) * torch.tensor([1.0, 0, 1, 1, 1, 1]))
    set_mask(m.fc1, "bias", torch.tensor([1.0, 1, 0, 1, 1, 1]))
    small, _ = compact_model(m, torch.randn(4, 6))
    assert is_masked(small.fc1, "bias") and get_mask(small.fc1, "bias").tolist() == [1, 0, 1, 1, 1]
