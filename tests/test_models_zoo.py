"""The ImageNet nets of Han et al. 2015 and the CIFAR nets of Liu et al. 2019: exact counts,
FLOP against the paper, layer names, torchvision's VGG-16 weights, tracing and pruning.

The ImageNet models are big (VGG-16 is 553 MB in float32): each is built once per module.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.graph import trace_structure
from prunelab.metrics import model_stats
from prunelab.models import (
    MODELS,
    VGG16,
    AlexNetCaffe,
    CifarResNet,
    VGG16Cifar,
    available_models,
    build_model,
    load_torchvision_vgg16_state,
    map_torchvision_vgg16_state,
)
from prunelab.models.cifar import VGG16_CIFAR_CFG, ZeroPadShortcut
from prunelab.paper import PAPER
from prunelab.pruner import Pruner

pytestmark = pytest.mark.usefixtures("single_thread")

ALEXNET_WEIGHTS = {
    "features.conv1": 34_848, "features.conv2": 307_200, "features.conv3": 884_736,
    "features.conv4": 663_552, "features.conv5": 442_368, "classifier.fc6": 37_748_736,
    "classifier.fc7": 16_777_216, "classifier.fc8": 4_096_000,
}  # fmt: skip
# 2 x MAC per 227x227 image, measured once and checked by hand (conv2: 307,200 x 27 x 27 x 2).
ALEXNET_FLOPS = {
    "features.conv1": 210_830_400, "features.conv2": 447_897_600,
    "features.conv3": 299_040_768, "features.conv4": 224_280_576,
    "features.conv5": 149_520_384, "classifier.fc6": 75_497_472,
    "classifier.fc7": 33_554_432, "classifier.fc8": 8_192_000,
}  # fmt: skip


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _within(ours: float, paper: float, rel: float = 0.005) -> bool:
    return abs(ours - paper) <= rel * paper


@pytest.fixture(scope="module")
def alexnet() -> AlexNetCaffe:
    torch.manual_seed(0)
    return AlexNetCaffe().eval()


@pytest.fixture(scope="module")
def alexnet_stats(alexnet):
    with torch.no_grad():
        return model_stats(alexnet, torch.rand(1, 3, 227, 227))


@pytest.fixture(scope="module")
def vgg() -> VGG16:
    torch.manual_seed(0)
    return VGG16().eval()


@pytest.fixture(scope="module")
def vgg_stats(vgg):
    with torch.no_grad():
        return model_stats(vgg, torch.rand(1, 3, 224, 224))


def test_all_registered():
    assert {"alexnet_caffe", "vgg16", "vgg16_cifar", "resnet20", "resnet56",
            "resnet110"} <= set(available_models())


# ------------------------------------------------------------------------------ AlexNet


def test_alexnet_counts_exact(alexnet):
    layers = _layers(alexnet)
    assert list(layers) == [n for n, _ in AlexNetCaffe.prunable_layer_names()]
    assert {n: m.weight.numel() for n, m in layers.items()} == ALEXNET_WEIGHTS
    assert _params(alexnet) == 60_965_224
    assert [layers[f"features.conv{i}"].groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    assert layers["classifier.fc6"].in_features == 9216


def test_alexnet_flops_match_the_paper(alexnet_stats):
    paper = PAPER["alexnet_caffe"]
    got = {layer.name: layer.flops_dense for layer in alexnet_stats.layers}
    assert got == ALEXNET_FLOPS
    for name, want in paper["layers"].items():
        assert _within(got[name], want["flops"]), name
        assert {layer.name: layer.weights for layer in alexnet_stats.layers}[name] == \
            want["weights"]
    assert alexnet_stats.flops_dense == 1_448_813_632
    assert _within(alexnet_stats.flops_dense, paper["total"]["flops"])
    assert _within(alexnet_stats.weights, paper["total"]["weights"])
    assert _within(alexnet_stats.params_total, paper["params_total"])


def test_alexnet_layout_and_init(alexnet):
    f = alexnet.features
    assert list(f._modules) == [
        "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3",
        "relu3", "conv4", "relu4", "conv5", "relu5", "pool5",
    ]  # fmt: skip
    assert list(alexnet.classifier._modules) == [
        "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    lrn = f.norm1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert alexnet.classifier.drop6.p == 0.5
    # the prototxt's fillers
    with torch.no_grad():
        assert float(f.conv2.bias[0]) == pytest.approx(0.1)
        assert float(f.conv1.bias.abs().max()) == 0
        assert float(alexnet.classifier.fc6.weight.std()) == pytest.approx(0.005, rel=0.01)


def test_alexnet_forward_and_options():
    torch.manual_seed(0)
    net = AlexNetCaffe(num_classes=10, dropout=0.0, input_size=99, lrn=False).eval()
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in net.modules())
    assert net.classifier.fc6.in_features == 256 * 2 * 2
    with torch.no_grad():
        assert net(torch.rand(2, 3, 99, 99)).shape == (2, 10)
    assert AlexNetCaffe.min_input_size() == 55
    assert AlexNetCaffe(num_classes=2, input_size=55).classifier.fc6.in_features == 256


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"input_size": 54}, r"input_size=54 is too small.*allowed: >= 55"),
    ({"num_classes": 0}, r"num_classes=0 is out of range; allowed: integer >= 1"),
    ({"dropout": 1.0}, r"dropout=1.0 is out of range; allowed: \[0, 1\)"),
    ({"lrn": "yes"}, r"lrn='yes' is invalid; allowed: True, False"),
])  # fmt: skip
def test_alexnet_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlexNetCaffe(**kwargs)


def test_alexnet_traces_and_prunes_to_exact_sparsity():
    torch.manual_seed(0)
    net = build_model("alexnet_caffe", input_size=99)
    x = torch.rand(1, 3, 99, 99)
    s = trace_structure(net, x)
    assert s.verified
    assert s.layers == tuple(n for n, _ in AlexNetCaffe.prunable_layer_names())
    # grouped convs and LRN are no channel-wise links; the classifier is a chain
    assert [(lk.producer, lk.consumer) for lk in s.links] == [
        ("classifier.fc6", "classifier.fc7"), ("classifier.fc7", "classifier.fc8")]
    assert dict(s.dropout_feeds) == {"classifier.drop6": "classifier.fc7",
                                     "classifier.drop7": "classifier.fc8"}
    results = Pruner(net).step("magnitude", 0.5)
    assert [r.layer for r in results] == list(s.layers)
    for name, m in _layers(net).items():
        nonzero = int(torch.count_nonzero(m.weight))
        assert abs(nonzero - m.weight.numel() / 2) <= 1, name
    with torch.no_grad():
        assert net(x).shape == (1, 1000)


# ------------------------------------------------------------------------------ VGG-16


def test_vgg16_counts_and_names(vgg):
    layers = _layers(vgg)
    names = [n for n, _ in VGG16.prunable_layer_names()]
    assert list(layers) == names
    assert names[:3] == ["features.conv1_1", "features.conv1_2", "features.conv2_1"]
    assert names[-4:] == ["features.conv5_3", "classifier.fc6", "classifier.fc7",
                          "classifier.fc8"]
    assert _params(vgg) == 138_357_544
    assert sum(m.weight.numel() for m in layers.values()) == 138_344_128
    assert layers["classifier.fc6"].weight.shape == (4096, 25088)


def test_vgg16_flops_match_the_paper(vgg_stats):
    paper = PAPER["vgg16"]
    assert vgg_stats.flops_dense == 30_940_528_640
    assert _within(vgg_stats.flops_dense, paper["total"]["flops"])
    assert _within(vgg_stats.params_total, paper["params_total"])
    got = {layer.name: layer for layer in vgg_stats.layers}
    assert set(got) == set(paper["layers"])
    for name, want in paper["layers"].items():
        assert got[name].weights == want["weights"], name
        assert _within(got[name].flops_dense, want["flops"]), name
    assert got["features.conv1_2"].flops_dense == 2 * 36_864 * 224 * 224


def test_vgg16_equals_torchvision_with_its_weights(vgg):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    tv = torchvision.models.vgg16(weights=None).eval()
    load_torchvision_vgg16_state(vgg, tv.state_dict())
    x = torch.rand(1, 3, 64, 64)  # the adaptive pool makes small inputs work
    with torch.no_grad():
        ours, theirs = vgg(x), tv(x)
    assert torch.equal(ours, theirs)
    assert torch.equal(vgg.classifier.fc6.weight, tv.classifier[0].weight)
    del tv


def test_vgg16_bn_state_maps_key_for_key():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no 553 MB allocation
        tv = torchvision.models.vgg16_bn(weights=None)
        ours = VGG16(batch_norm=True)
    mapped = map_torchvision_vgg16_state(tv.state_dict())
    assert list(mapped) == list(ours.state_dict())
    assert all(mapped[k].shape == v.shape for k, v in ours.state_dict().items())
    assert "features.bn1_1.running_var" in mapped and "features.conv5_3.weight" in mapped


def test_vgg16_state_mapping_rejects_foreign_keys():
    with pytest.raises(ValueError, match=r"'fc.weight' is not a torchvision vgg16 key"):
        map_torchvision_vgg16_state({"fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'features.31.weight' is not a torchvision vgg16 key"):
        map_torchvision_vgg16_state({"features.31.weight": torch.zeros(1)})


def test_vgg16_traces_at_a_small_input(vgg):
    s = trace_structure(vgg, torch.rand(1, 3, 32, 32))
    assert s.verified and len(s.layers) == 16
    assert len(s.links) == 15  # a chain: every layer feeds the next
    assert s.producer_of("classifier.fc6").block == 49  # 512 channels x 7 x 7


@pytest.mark.slow
def test_vgg16_prunes_to_exact_sparsity():
    """About 20 s and 3 GB on one CPU thread (selection over fc6's 103M weights)."""
    torch.manual_seed(0)
    net = VGG16()
    Pruner(net).step("magnitude", 0.5)
    for name, m in _layers(net).items():
        nonzero = int(torch.count_nonzero(m.weight))
        assert abs(nonzero - m.weight.numel() / 2) <= 1, name


def test_paper_entries_are_keyed_by_our_module_names():
    for key, cls in (("alexnet_caffe", AlexNetCaffe), ("vgg16", VGG16)):
        names = [n for n, _ in cls.prunable_layer_names()]
        assert list(PAPER[key]["layers"]) == names
    assert [v["weights_kept"] for v in PAPER["vgg16"]["layers"].values()] == [
        58, 22, 34, 36, 53, 24, 42, 32, 27, 34, 35, 29, 36, 4, 4, 23]
    assert PAPER["alexnet_caffe"]["top5_error_pruned"] == 19.67


# ------------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize(("name", "kwargs", "params", "flops"), [
    ("vgg16_cifar", {}, 14_987_722, 626_927_616),
    ("resnet20", {}, 269_722, 81_102_080),
    ("resnet20", {"shortcut": "B"}, 272_474, 81_626_368),
    ("resnet56", {}, 853_018, 250_971_392),
    ("resnet56", {"shortcut": "B"}, 855_770, 251_495_680),
    ("resnet110", {}, 1_727_962, 505_775_360),
    ("resnet110", {"shortcut": "B"}, 1_730_714, 506_299_648),
])  # fmt: skip
def test_cifar_counts_and_flops_exact(name, kwargs, params, flops):
    torch.manual_seed(0)
    net = build_model(name, **kwargs)
    assert _params(net) == params
    with torch.no_grad():
        stats = model_stats(net, torch.rand(2, 3, 32, 32))
        assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert stats.flops_dense == flops
    # the documented figures: Li et al.'s 1.5e7 / 0.85M / 1.7M and ~0.27M for ResNet-20
    documented = {"vgg16_cifar": 15.0e6, "resnet20": 0.27e6, "resnet56": 0.85e6,
                  "resnet110": 1.7e6}[name]
    assert abs(params - documented) <= 0.02 * documented
    assert f"{params:,}" in MODELS[name].__doc__


def test_vgg16_cifar_layout():
    net = VGG16Cifar()
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and convs[0] == "features.conv1_1" and convs[-1] == "features.conv5_3"
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert list(net.classifier._modules) == ["fc1", "bn1", "relu1", "fc2"]
    assert float(net.features.bn1_1.weight.detach()[0]) == 0.5  # the Rethinking code's BN init
    # Li et al.'s max-pooled variant has the same parameters
    assert _params(VGG16Cifar(cfg=(*VGG16_CIFAR_CFG, "M"))) == _params(net)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_cifar_options():
    small = VGG16Cifar(num_classes=100, in_channels=1, width_mult=0.5)
    assert small.features.conv1_1.in_channels == 1 and small.features.conv5_3.out_channels == 256
    assert small.classifier.fc2.out_features == 100
    net = CifarResNet(20, num_classes=100, width_mult=0.5)
    assert net.layer3[0].conv2.out_channels == 32 and net.fc.out_features == 100
    # a pruned architecture: narrower first convs in each block
    pruned = build_model("resnet20", cfg=[8] * 3 + [16] * 3 + [32] * 3)
    assert pruned.layer2[1].conv1.out_channels == 16 and pruned.layer2[1].conv2.out_channels == 32
    with torch.no_grad():
        assert pruned.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_pads_zero_channels():
    x = torch.rand(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert torch.allclose(y[:, :16], nn.functional.avg_pool2d(x, 2))
    assert float(y[:, 16:].abs().max()) == 0.0
    net = CifarResNet(20)
    assert isinstance(net.layer2[0].downsample, ZeroPadShortcut)
    assert net.layer1[0].downsample is None and net.layer2[1].downsample is None
    b = CifarResNet(20, shortcut="B")
    assert isinstance(b.layer3[0].downsample[0], nn.Conv2d)


@pytest.mark.parametrize(("factory", "message"), [
    (lambda: CifarResNet(21), r"depth=21 is invalid; allowed: 6n \+ 2"),
    (lambda: CifarResNet(20, shortcut="C"), r"shortcut='C' is unknown; allowed: \('A', 'B'\)"),
    (lambda: CifarResNet(20, cfg=[16] * 8), r"cfg has 8 entries; allowed: 9"),
    (lambda: CifarResNet(20, width_mult=0), r"width_mult=0 is out of range; allowed: \(0, inf\)"),
    (lambda: VGG16Cifar(cfg=(64, "X")), r"cfg entry 'X' is invalid; allowed: integer >= 1 or 'M'"),
    (lambda: VGG16Cifar(cfg=("M",)), r"has no conv layer"),
    (lambda: ZeroPadShortcut(32, 16, 1), r"out_channels=16 channels; allowed: out_channels >= 32"),
])  # fmt: skip
def test_cifar_rejects_bad_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_cifar_nets_trace_and_prune():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    res = build_model("resnet20", shortcut="B")
    s = trace_structure(res, x)
    # residual additions leave only the conv1 -> conv2 link inside each block
    assert s.verified and len(s.layers) == 22
    assert all(lk.producer.endswith(".conv1") and lk.consumer.endswith(".conv2")
               for lk in s.links) and len(s.links) == 9
    vgg = build_model("vgg16_cifar")
    assert len(trace_structure(vgg, x).links) == 14  # a chain through the BN1d classifier
    for net in (res, vgg):
        Pruner(net).step("magnitude", 0.5)
        for name, m in _layers(net).items():
            assert abs(int(torch.count_nonzero(m.weight)) - m.weight.numel() / 2) <= 1, name
