"""2:4 semi-structured conversion: what is checked on any device, what converts on a GPU."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from prunelab.criteria import is_nm_sparse
from prunelab.errors import DeviceError
from prunelab.masks import is_masked
from prunelab.pruner import Pruner
from prunelab.runtime import check_semi_structured, to_semi_structured

pytestmark = pytest.mark.usefixtures("single_thread")


def _model(dtype: torch.dtype = torch.float16) -> nn.Sequential:
    """Two 2:4-prunable layers, a small one, a conv and a layer left dense."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        fc1=nn.Linear(128, 64), relu1=nn.ReLU(), fc2=nn.Linear(64, 64), relu2=nn.ReLU(),
        dense=nn.Linear(64, 64), small=nn.Linear(64, 8),
    ))  # fmt: skip
    Pruner(model, exclude="dense").step("nm", 0.5)
    return model.to(dtype)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.small(model.dense(model.relu2(model.fc2(model.relu1(model.fc1(x))))))


def test_check_names_why_each_layer_is_left_dense_on_cpu():
    model = _model()
    report = check_semi_structured(model)
    assert not report.applied and report.converted == []
    assert report.convertible() == []
    assert report.convertible(ignore_device=True) == ["fc1", "fc2"]
    reasons = report.skipped
    assert reasons["fc1"] == reasons["fc2"] == (
        "on cpu: semi-structured kernels need a CUDA GPU of compute capability >= 8.0")
    assert reasons["dense"] == ("not 2:4 sparse: 1024 of 1024 groups of 4 inputs hold more "
                                "than 2 nonzeros")
    assert reasons["small"].startswith("weight (8, 64) is not a multiple of the ")
    record = report.layers[0]
    assert (record.layer, record.kind, record.shape, record.dtype, record.device) == (
        "fc1", "Linear", (64, 128), "float16", "cpu")
    assert json.loads(json.dumps(report.to_dict()))["layers"][0]["layer"] == "fc1"


def test_check_refuses_float32_convs_shared_weights_and_odd_inputs():
    torch.manual_seed(0)
    head = nn.Linear(64, 64)
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(4, 4, 1), f32=nn.Linear(64, 64), odd=nn.Linear(66, 64),
        a=head, b=nn.Linear(64, 64),
    )).half()  # fmt: skip
    model.f32.float()
    model.b.weight = model.a.weight  # tied
    reasons = check_semi_structured(model).skipped
    assert reasons["conv"] == "Conv2d: torch's semi-structured kernels serve nn.Linear only"
    assert reasons["f32"].startswith("dtype float32; the kernels take float16 or bfloat16")
    assert reasons["odd"] == "in_features=66 is not a multiple of 4"
    assert reasons["a"] == "its weight is shared with b; converting it would untie them"
    assert reasons["b"] == "its weight is shared with a; converting it would untie them"


def test_check_selects_layers_by_pattern():
    report = check_semi_structured(_model(), "fc*", exclude="fc2")
    assert [r.layer for r in report.layers] == ["fc1"]


def test_conversion_without_a_gpu_weight_is_a_device_error_and_changes_nothing():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(DeviceError, match=r"needs the model on a CUDA GPU of compute capability "
                                          r">= 8\.0; every selected weight is on cpu"):
        to_semi_structured(model)
    assert is_masked(model.fc1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------ on a GPU


def _sm80() -> None:
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a GPU of compute capability >= 8.0")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_layers_compute_what_the_masked_model_computes(dtype):
    _sm80()
    model = _model(dtype).cuda().eval()
    reference = copy.deepcopy(model)
    x = torch.randn(32, 128, device="cuda", dtype=dtype)
    with torch.no_grad():
        want = _forward(reference, x)
    report = to_semi_structured(model)
    assert report.applied and report.converted == ["fc1", "fc2"]
    assert set(report.skipped) == {"dense", "small"}
    for name in ("fc1", "fc2"):
        layer = getattr(model, name)
        assert isinstance(layer.weight, torch.sparse.SparseSemiStructuredTensor)
        assert not is_masked(layer) and not layer.weight.requires_grad
        torch.testing.assert_close(layer.weight.to_dense(),
                                   getattr(reference, name).weight.detach())
    assert is_masked(model.small) and not is_nm_sparse(model.dense.weight)  # left as they were
    with torch.no_grad():
        got = _forward(model, x)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_layers_are_reported_and_a_second_conversion_skips_converted_ones():
    _sm80()
    model = _model().cuda()
    model.fc2.cpu()
    first = to_semi_structured(model)
    assert first.converted == ["fc1"]
    assert first.skipped["fc2"].startswith("on cpu: semi-structured kernels need a CUDA GPU")
    second = to_semi_structured(model)
    assert second.converted == [] and second.skipped["fc1"] == "already semi-structured"
