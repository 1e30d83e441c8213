"""Structured criteria (L1-norm filters, Network Slimming, ThiNet), channel masks, vgg_small."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from prunelab.channel_masks import apply_channel_masks
from prunelab.criteria.channels import (
    l1_filter_keep,
    slimming_keep,
    slimming_penalty,
    thinet_keep,
    thinet_select,
)
from prunelab.graph import Structure, trace_structure
from prunelab.masks import get_mask, set_mask
from prunelab.metrics import count_parameters, model_stats
from prunelab.models import VGGSmall, build_model
from prunelab.surgery import SurgeryError, compact_model

ATOL = 1e-5


def _bn_net(seed: int = 0) -> nn.Sequential:
    """conv 1->6 BN ReLU pool, conv 6->8 BN ReLU pool, fc 32->10 BN1d ReLU, fc 10->3; 8x8."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(6),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 8, 3, padding=1),
            bn2=nn.BatchNorm2d(8),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 2 * 2, 10),
            bn3=nn.BatchNorm1d(10),
            relu3=nn.ReLU(),
            fc2=nn.Linear(10, 3),
        )
    )
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(0.5 * torch.randn(n, generator=g))
    return net.eval()


def _x(n: int = 16, size: int = 8, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    a.eval()
    b.eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


# ----------------------------------------------------------------------------- L1-norm filters


def test_l1_filter_keep_picks_smallest_filters_ties_by_index():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():  # L1 norms 3, 1, 2, 1 (signs must not matter)
        conv.weight.copy_(
            torch.tensor([[2.0, -1.0], [0.5, -0.5], [-2.0, 0.0], [1.0, 0.0]]).view(4, 2, 1, 1)
        )
    model = nn.Sequential(OrderedDict(c1=conv, relu=nn.ReLU(), c2=nn.Conv2d(4, 3, 1)))
    assert l1_filter_keep(model, 0.5, layers="c1")["c1"].tolist() == [True, False, True, False]
    assert l1_filter_keep(model, 0.25, layers="c1")["c1"].tolist() == [True, False, True, True]
    assert l1_filter_keep(model, 0.0, layers="c1")["c1"].all()
    assert l1_filter_keep(model, 0.99, layers="c1")["c1"].sum() == 1  # never empties a layer
    # masked weights count as zero: filter 0 drops to norm 0.1
    set_mask(conv, "weight", torch.tensor([[0.0, 1.0], [1, 1], [1, 1], [1, 1]]).view(4, 2, 1, 1))
    with torch.no_grad():
        conv.weight_orig[0, 1] = 0.1
    assert l1_filter_keep(model, 0.25, layers="c1")["c1"].tolist() == [False, True, True, True]
    # per-layer ratios by pattern; the default selects every conv layer
    keep = l1_filter_keep(model, {"*": 0.5, "c2": 1 / 3})
    assert list(keep) == ["c1", "c2"] and int(keep["c2"].sum()) == 2


def test_l1_filter_keep_validates_ratio_and_patterns():
    model = _bn_net()
    with pytest.raises(ValueError, match=r"ratio=1\.0 .*allowed: \[0\.0, 1\.0\)"):
        l1_filter_keep(model, 1.0)
    with pytest.raises(ValueError, match=r"ratio=-0\.1"):
        l1_filter_keep(model, {"conv1": -0.1})
    with pytest.raises(ValueError, match="'convX' matches no layer"):
        l1_filter_keep(model, 0.5, layers="convX")
    with pytest.raises(ValueError, match="pattern 'fc\\*' matches no selected layer"):
        l1_filter_keep(model, {"fc*": 0.5})


# ----------------------------------------------------------------------------- Network Slimming


def _set_gammas(net: nn.Sequential, bn1: list[float], bn2: list[float]) -> None:
    with torch.no_grad():
        net.bn1.weight.copy_(torch.tensor(bn1))
        net.bn2.weight.copy_(torch.tensor(bn2))


def test_slimming_global_threshold_and_floors():
    net = _bn_net()
    s = trace_structure(net, _x())
    _set_gammas(net, [0.1, -0.2, 3, 4, 5, 6], [0.05, 0.15, 0.3, 5, 6, 7, 8, 9])
    # 14 channels (fc1's BN excluded by the pattern); ratio 2/7 drops 4: 0.05, 0.1, 0.15, |-0.2|
    keep = slimming_keep(net, 2 / 7, s, layers="conv*")
    assert keep["conv1"].tolist() == [False, False, True, True, True, True]
    assert keep["conv2"].tolist() == [False, False, True, True, True, True, True, True]
    # floor of 5 channels in conv1: its second channel survives, conv2's 0.3 goes instead
    keep = slimming_keep(net, 2 / 7, s, layers="conv*", min_channels=5)
    assert keep["conv1"].tolist() == [False, True, True, True, True, True]
    assert keep["conv2"].tolist() == [False, False, False, True, True, True, True, True]
    # min_fraction: conv1 keeps ceil(0.9 * 6) = 6, conv2 keeps ceil(0.9 * 8) = 8 -> nothing
    with pytest.raises(ValueError, match=r"ratio=0\.1 drops 1 of 14.*allowed: ratio <= 0\.0000"):
        slimming_keep(net, 0.1, s, layers="conv*", min_fraction=0.9)
    with pytest.raises(ValueError, match=r"ratio=0\.5 drops 7 of 14.*allowed: ratio <= 0\.4286"):
        slimming_keep(net, 0.5, s, layers="conv*", min_channels=4)
    # default: every layer followed by a BatchNorm (fc1 too), one threshold over 24 channels
    keep = slimming_keep(net, 0.5, s)
    assert (
        list(keep) == ["conv1", "conv2", "fc1"] and sum(int(k.sum()) for k in keep.values()) == 12
    )


def test_slimming_validates_inputs():
    net = _bn_net()
    s = trace_structure(net, _x())
    with pytest.raises(ValueError, match="'fc2' is not followed by a BatchNorm"):
        slimming_keep(net, 0.5, s, layers="fc2")
    with pytest.raises(ValueError, match="one global ratio"):
        slimming_keep(net, {"*": 0.5}, s)
    with pytest.raises(ValueError, match=r"ratio=1\.5 is out of range; allowed: \[0\.0, 1\.0\)"):
        slimming_keep(net, 1.5, s)
    with pytest.raises(ValueError, match="min_channels=0"):
        slimming_keep(net, 0.5, s, min_channels=0)
    with pytest.raises(ValueError, match=r"min_fraction=2"):
        slimming_keep(net, 0.5, s, min_fraction=2)


def test_slimming_penalty_adds_sign_of_gamma():
    net = _bn_net()
    set_mask(net.bn1, "weight", torch.tensor([1.0, 0, 1, 1, 1, 1]))
    net.train()
    net(_x()).sum().backward()
    g1 = net.bn1.weight_orig.grad.clone()
    g2 = net.bn2.weight.grad.clone()
    assert slimming_penalty(net, 1e-2) == 3
    assert torch.allclose(net.bn2.weight.grad, g2 + 1e-2 * torch.sign(net.bn2.weight.detach()))
    assert torch.allclose(net.bn1.weight_orig.grad, g1 + 1e-2 * torch.sign(net.bn1.weight_orig))
    assert net.bn1.weight_orig.grad[1] == 0  # a masked scale gets no push
    assert slimming_penalty(net, 0.0, layers="bn3") == 1
    with pytest.raises(ValueError, match=r"strength=-1 is out of range"):
        slimming_penalty(net, -1)
    with pytest.raises(ValueError, match="'bnX' matches no affine BatchNorm"):
        slimming_penalty(net, 1e-4, layers="bnX")


# ----------------------------------------------------------------------------- ThiNet


def test_thinet_select_greedy_order():
    x = torch.tensor([[1.0, -0.5, 0.6, 3.0], [1.0, -0.5, 0.4, 3.0]])
    assert thinet_select(x, 0) == []
    assert thinet_select(x, 2) == [1, 2]  # 2 cancels 1 better than the smaller-looking 0
    with pytest.raises(ValueError, match=r"n_remove=5 is out of range; allowed: 0\.\.4"):
        thinet_select(x, 5)


def _redundant_pair_net() -> nn.Sequential:
    """Four identical channels; the next layer reads channel 0 with +0.9 K and 3 with -0.9 K."""
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 1),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(4, 2, 3, padding=1),
        )
    )
    with torch.no_grad():
        net.conv1.weight.fill_(1.0)
        net.conv1.bias.zero_()
        k = torch.randn(2, 3, 3)
        net.conv2.weight[:, 0] = 0.9 * k
        net.conv2.weight[:, 3] = -0.9 * k
        net.conv2.weight[:, 1] = 2.0 * torch.randn(2, 3, 3)
        net.conv2.weight[:, 2] = 2.0 * torch.randn(2, 3, 3)
    return net.eval()


def test_thinet_removes_the_redundant_channels_and_output_is_unchanged():
    net = _redundant_pair_net()
    x = _x(8)
    s = trace_structure(net, x)
    keep = thinet_keep(net, 0.5, x, s)
    assert list(keep) == ["conv1"] and keep["conv1"].tolist() == [False, True, True, False]
    # L1 on the producer sees four equal filters and just drops the first two
    assert l1_filter_keep(net, 0.5, layers="conv1")["conv1"].tolist() == [False, False, True, True]
    ref = copy.deepcopy(net)
    apply_channel_masks(net, keep, s)
    small, _ = compact_model(net, x, structure=s, keep=keep)
    assert small.conv2.in_channels == 2
    assert _diff(ref, small, _x(4, seed=9)) <= ATOL  # channels 0 and 3 cancelled exactly


def test_thinet_picks_a_dead_relu_channel_l1_misses():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -100.0, 0.0]))  # unit 2 never fires
    x = torch.rand(32, 4)
    keep = thinet_keep(net, 0.25, x, trace_structure(net, x))
    assert keep["0"].tolist() == [True, True, False, True]


def test_thinet_rescale_reduces_reconstruction_error():
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(64, 6)
    s = trace_structure(base, x)
    errors, keeps = {}, {}
    for rescale in (False, True):
        net = copy.deepcopy(base)
        keep = thinet_keep(net, 0.5, x, s, samples=4096, rescale=rescale)
        apply_channel_masks(net, keep, s)
        keeps[rescale] = keep["0"]
        with torch.no_grad():
            errors[rescale] = float((net(x) - base(x)).pow(2).sum())
    assert torch.equal(keeps[False], keeps[True])
    assert errors[True] < errors[False]


def test_thinet_validates_inputs():
    net = _bn_net()
    s = trace_structure(net, _x())
    with pytest.raises(
        ValueError, match="ThiNet needs the layer that consumes the channels of 'fc2'"
    ):
        thinet_keep(net, 0.5, _x(), s, layers="fc2")
    with pytest.raises(ValueError, match="samples=0"):
        thinet_keep(net, 0.5, _x(), s, samples=0)
    with pytest.raises(ValueError, match=r"ratio=1\.0"):
        thinet_keep(net, 1.0, _x(), s)


# ----------------------------------------------------------------------------- masks and surgery


def _criterion(method: str, net: nn.Module, x: torch.Tensor, s: Structure) -> dict:
    if method == "l1":
        return l1_filter_keep(net, {"*": 0.5, "conv1": 1 / 3})
    if method == "slimming":
        return slimming_keep(net, 0.4, s)
    return thinet_keep(net, 0.5, x, s)


def _expected_conv_flops(out_c: int, in_c: int, k: int, positions: int) -> int:
    return 2 * out_c * in_c * k * k * positions


@pytest.mark.parametrize("method", ["l1", "slimming", "thinet"])
def test_masked_model_equals_compact_model(method):
    net = _bn_net()
    x = _x()
    s = trace_structure(net, x)
    keep = _criterion(method, net, x, s)
    results = apply_channel_masks(net, keep, s)
    assert all(r.surgery_blocker is None for r in results)
    small, report = compact_model(net, x, structure=s, keep=keep)
    for name, k in keep.items():
        assert report.layers[name].units_after == int(k.sum())
        assert report.layers[name].removed == tuple(torch.nonzero(~k).flatten().tolist())
    assert _diff(net, small, _x(8, seed=11)) <= ATOL
    # train mode (BatchNorm batch statistics) agrees as well
    a, b = copy.deepcopy(net).train(), copy.deepcopy(small).train()
    with torch.no_grad():
        assert float((a(x) - b(x)).abs().max()) <= 1e-4
    # parameters and FLOPs after surgery
    stats = model_stats(small, x)
    assert stats.params_total == report.params_after == count_parameters(small)[0]
    assert count_parameters(small)[1] == count_parameters(net)[1]  # removed entries were masked
    c1 = small.conv1.out_channels
    c2 = small.conv2.out_channels
    f1 = small.fc1.out_features
    flops = {layer.name: layer.flops_dense for layer in stats.layers}
    assert flops["conv1"] == _expected_conv_flops(c1, 1, 3, 64)
    assert flops["conv2"] == _expected_conv_flops(c2, c1, 3, 16)
    assert flops["fc1"] == 2 * f1 * c2 * 4
    assert flops["fc2"] == 2 * 3 * f1
    assert stats.flops_dense < model_stats(net, x).flops_dense


def test_masks_hold_during_fine_tuning_then_surgery_still_exact():
    net = _bn_net().train()
    x = _x()
    s = trace_structure(net, x)
    keep = slimming_keep(net, 0.4, s)
    apply_channel_masks(net, keep, s)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    target = torch.randint(0, 3, (x.shape[0],))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), target).backward()
        slimming_penalty(net, 1e-3)
        opt.step()
    gone = ~keep["conv2"]
    assert gone.any() and (~keep["conv1"]).any()
    assert torch.all(net.conv2.weight_orig[gone] == 0) and torch.all(net.conv2.bias_orig[gone] == 0)
    assert torch.all(net.bn2.weight_orig[gone] == 0) and torch.all(net.bn2.bias_orig[gone] == 0)
    assert torch.all(net.fc1.weight_orig.view(10, 8, 4)[:, gone] == 0)
    small, _ = compact_model(net.eval(), x, structure=s, keep=keep)
    assert _diff(net, small, x) <= ATOL


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4, 5)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(x))
        h = h + self.conv2(h)
        return self.fc2(self.relu(self.fc1(self.flatten(self.pool(h)))))


def test_unsupported_layer_is_masked_only_and_named_in_errors():
    torch.manual_seed(0)
    net = _Residual().eval()
    x = _x(4)
    s = trace_structure(net, x)
    keep = l1_filter_keep(net, 0.5, layers="conv1")
    with pytest.raises(SurgeryError, match=r"layer 'conv1'.*residual"):
        apply_channel_masks(copy.deepcopy(net), keep, s, require_surgery=True)
    (result,) = apply_channel_masks(net, keep, s)
    assert result.consumer is None and result.batchnorms == ("bn1",)
    assert "residual" in result.surgery_blocker
    gone = ~keep["conv1"]
    assert torch.all(net.conv1.weight[gone] == 0) and torch.all(net.bn1.weight[gone] == 0)
    with pytest.raises(SurgeryError, match=r"layer 'conv1'.*residual"):
        compact_model(net, x, structure=s, keep=keep)
    with pytest.raises(ValueError, match=r"consumes the channels of 'conv1'.*residual"):
        thinet_keep(net, 0.5, x, s, layers="conv1")
    small, report = compact_model(net, x, structure=s)  # without a request: kept as it is
    assert small.conv1.out_channels == 4 and "conv1" in report.unsupported


def test_apply_channel_masks_validates_keep():
    net = _bn_net()
    s = trace_structure(net, _x())
    with pytest.raises(ValueError, match="'bn1', which is not a Linear/Conv layer"):
        apply_channel_masks(net, {"bn1": torch.ones(6, dtype=torch.bool)}, s)
    with pytest.raises(ValueError, match=r"shape \(5,\); expected \(6,\)"):
        apply_channel_masks(net, {"conv1": torch.ones(5, dtype=torch.bool)}, s)
    with pytest.raises(ValueError, match="removes every unit"):
        apply_channel_masks(net, {"conv1": torch.zeros(6, dtype=torch.bool)}, s)
    assert get_mask(net.conv1) is None  # nothing was changed by the refused calls


# ----------------------------------------------------------------------------- vgg_small


def test_vgg_small_registered_and_linked():
    net = build_model("vgg_small")
    assert isinstance(net, VGGSmall)
    assert sum(p.numel() for p in net.parameters()) == 98_554  # as in the docstring
    x = torch.randn(2, 1, 28, 28)
    assert net(x).shape == (2, 10)
    s = trace_structure(net, x)
    assert [(lk.producer, lk.consumer, lk.block) for lk in s.links] == [
        ("features.0", "features.4", 1),
        ("features.4", "features.8", 1),
        ("features.8", "classifier.1", 9),
        ("classifier.1", "classifier.3", 1),
    ]
    assert build_model("vgg_small", width_mult=0.5, num_classes=3)(x).shape == (2, 3)
    assert VGGSmall(cfg=[8, 8, "M", 16, "M"], in_channels=3, input_size=12)(
        torch.randn(1, 3, 12, 12)
    ).shape == (1, 10)
    with pytest.raises(ValueError, match="cfg entry 'X' is invalid"):
        VGGSmall(cfg=[8, "X"])
    with pytest.raises(ValueError, match=r"width_mult=0 is out of range"):
        VGGSmall(width_mult=0)


@pytest.mark.parametrize("method", ["l1", "slimming", "thinet"])
def test_vgg_small_surgery_equivalence(method):
    net = build_model("vgg_small").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    x = torch.randn(4, 1, 28, 28, generator=g)
    s = trace_structure(net, x)
    if method == "l1":
        keep = l1_filter_keep(net, 0.5)
    elif method == "slimming":
        keep = slimming_keep(net, 0.5, s, min_fraction=0.25)
    else:
        keep = thinet_keep(net, 0.5, x, s, layers="features.*", samples=512)
    apply_channel_masks(net, keep, s)
    small, report = compact_model(net, x, structure=s, keep=keep)
    assert _diff(net, small, torch.randn(2, 1, 28, 28, generator=g)) <= ATOL
    assert report.params_after < report.params_before
    stats = model_stats(small, x)
    assert stats.params_total == report.params_after
    assert stats.flops_dense < 0.6 * model_stats(net, x).flops_dense
    kept = [int(keep[n].sum()) for n in ("features.0", "features.4", "features.8")]
    assert [small.features[i].out_channels for i in (0, 4, 8)] == kept
    assert small.classifier[1].in_features == kept[2] * 9
