"""prune_channels on the torchvision and timm zoo: 30% L1-filter, compact output == masked.

Every classification model family of torchvision 0.29 that builds on the CPU in reasonable
time, plus a few timm models. Inputs are small where the model allows; the largest models carry
the ``slow`` marker (CI still runs them). ``prune_channels`` itself checks the compact model
against the masked one (``check=True``); the test also checks sizes went down and the output
is unchanged in shape.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from prunelab.channel_pruning import prune_channels

# (name, builder kwargs, input side); slow ones marked
TORCHVISION = [
    ("resnet18", {}, 64),
    pytest.param("resnet50", {}, 64, marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", {}, 64, marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", {}, 64, marks=pytest.mark.slow),
    ("mobilenet_v2", {}, 64),
    ("mobilenet_v3_small", {}, 64),
    pytest.param("mobilenet_v3_large", {}, 64, marks=pytest.mark.slow),
    ("efficientnet_b0", {}, 64),
    pytest.param("efficientnet_v2_s", {}, 64, marks=pytest.mark.slow),
    ("regnet_y_400mf", {}, 64),
    ("regnet_x_400mf", {}, 64),
    ("shufflenet_v2_x0_5", {}, 64),
    ("mnasnet0_5", {}, 64),
    ("squeezenet1_1", {}, 64),
    pytest.param("densenet121", {}, 64, marks=pytest.mark.slow),
    pytest.param("googlenet", {"aux_logits": False, "init_weights": False}, 64,
                 marks=pytest.mark.slow),
    pytest.param("inception_v3", {"aux_logits": False, "init_weights": False}, 96,
                 marks=pytest.mark.slow),
    ("alexnet", {}, 64),
    pytest.param("vgg11_bn", {}, 32, marks=pytest.mark.slow),
    pytest.param("convnext_tiny", {}, 64, marks=pytest.mark.slow),
    ("vit_b_16", {"image_size": 32}, 32),
    pytest.param("swin_t", {}, 64, marks=pytest.mark.slow),
    pytest.param("swin_v2_t", {}, 64, marks=pytest.mark.slow),
    pytest.param("maxvit_t", {}, 224, marks=pytest.mark.slow),
]


def _nonzero_init(model: nn.Module) -> nn.Module:
    """Give all-zero parameters (ViT's head, layer scales) random values: a zero output would
    make the compact == masked check vacuous."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not bool(p.any()):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def _check(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        y = model(x)
    assert float(y.abs().max()) > 0
    res = prune_channels(model, x, method="l1_filter", amount=0.3)
    assert res.max_abs_diff is not None  # checked inside, would have raised
    assert res.pinned_ops == {}  # every operation of these models is understood
    assert res.params_after < 0.85 * res.params_before, res.summary()
    assert res.macs_after < 0.85 * res.macs_before, res.summary()
    with torch.no_grad():
        assert res.model(x).shape == y.shape


@pytest.mark.parametrize(("name", "kwargs", "side"), TORCHVISION)
def test_torchvision_model(name: str, kwargs: dict, side: int) -> None:
    torch.manual_seed(0)
    model = _nonzero_init(torchvision.models.get_model(name, weights=None, **kwargs))
    _check(model, torch.randn(1, 3, side, side))


TIMM = [
    ("resnet18", 64, {}),
    ("mobilenetv3_small_100", 64, {}),
    ("efficientnet_b0", 64, {}),
    ("convnext_atto", 64, {}),
    ("vit_tiny_patch16_224", 32, {"img_size": 32}),
]


@pytest.mark.parametrize(("name", "side", "kwargs"), TIMM)
def test_timm_model(name: str, side: int, kwargs: dict) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _nonzero_init(timm.create_model(name, pretrained=False, **kwargs))
    _check(model, torch.randn(1, 3, side, side))


def test_timm_vit_loses_whole_heads() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _nonzero_init(timm.create_model("vit_small_patch16_224", pretrained=False,
                                            img_size=32, depth=2))
    res = prune_channels(model, torch.randn(2, 3, 32, 32), amount=0.5)
    for block in res.model.blocks:
        attn = block.attn
        assert attn.num_heads == 3 and attn.attn_dim == 3 * attn.head_dim == 192
        assert attn.qkv.out_features == 3 * 192 and attn.proj.in_features == 192
    assert res.pinned_ops == {}
