"""ONNX export: masked and compacted models round-trip through ONNX Runtime, pruned weights
are exact zeros in the file, the model keeps its masks, and the CLI's onnx format works."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from prunelab.cli import main  # noqa: E402
from prunelab.export import (  # noqa: E402
    OnnxExportError,
    OnnxUnavailableError,
    check_onnx,
    effective_state_dict,
    export_onnx,
    run_onnx,
)
from prunelab.export.onnx import input_shape_from_metadata, parse_input_shape  # noqa: E402
from prunelab.modelfile import load_model_file, save_model_file  # noqa: E402
from prunelab.models import build_model  # noqa: E402
from prunelab.runtime import deepcopy_pruned  # noqa: E402
from prunelab.surgery import compact_model  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MNIST = (1, 1, 28, 28)


def pruned_lenet(name: str) -> nn.Module:
    """The committed pruned model of ``benchmarks/results/han2015-<name>``, or (when absent) a
    freshly built one with 90% random masks on every weight."""
    path = RESULTS / f"han2015-{name}" / "model.safetensors"
    if path.is_file():
        return load_model_file(path)[0]
    torch.manual_seed(0)
    model = build_model(name)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            prune.random_unstructured(module, "weight", amount=0.9)
    return model


def initializers(path: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def assert_round_trip(path: Path, model: nn.Module, shape: tuple[int, ...]) -> None:
    """ONNX Runtime equals torch at batch 1 and 7 from the same file."""
    reference = deepcopy_pruned(model).eval()
    g = torch.Generator().manual_seed(1)
    for batch in (1, 7):
        x = torch.randn((batch, *shape[1:]), generator=g)
        with torch.no_grad():
            want = reference(x).numpy()
        got = run_onnx(path, x)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def assert_exact_zeros(path: Path, model: nn.Module) -> None:
    """Every masked weight is an initializer whose pruned positions are exactly 0.0, with the
    model's nonzero count; the graph has no masks and multiplies by none."""
    inits = initializers(path)
    state = model.state_dict()
    effective = effective_state_dict(model)
    masked = [k.removesuffix("_mask") for k in state if k.endswith("_mask")]
    assert masked
    for key in masked:
        mask = state[f"{key}_mask"].numpy()
        weight = inits[key]
        assert weight.shape == mask.shape
        assert np.all(weight[mask == 0] == 0.0), key
        assert np.count_nonzero(weight) == int(effective[key].count_nonzero()), key
    assert not [n for n in inits if n.endswith(("_mask", "_orig"))]
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Mul" not in ops


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)  # masks and *_orig still there
    assert all(torch.equal(after[k], before[k]) for k in before)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lenet300_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = RESULTS / "han2015-lenet300" / "model.safetensors"
    if not source.is_file():
        source = tmp_path / "m.safetensors"
        save_model_file(source, pruned_lenet("lenet300"), {"name": "lenet300"},
                        dataset={"name": "mnist"})
    out = tmp_path / "sub" / "lenet300.onnx"
    assert main(["export", str(source), "--format", "onnx", "--out", str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "1x1x28x28" in printed
    line = next(x for x in printed.splitlines() if x.startswith("check:"))
    assert float(line.split("torch: ")[1].split()[0]) < 1e-4
    assert sorted(p.name for p in out.parent.iterdir()) == ["lenet300.onnx"]  # no temp files
    model = load_model_file(source)[0]
    assert_round_trip(out, model, MNIST)
    assert_exact_zeros(out, model)
    dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"


def test_lenet5_masked_round_trip_keeps_masks(tmp_path: Path) -> None:
    model = pruned_lenet("lenet5").train()
    before = snapshot(model)
    path = export_onnx(model, tmp_path / "lenet5.onnx", torch.randn(MNIST))
    assert path == tmp_path / "lenet5.onnx"
    assert_round_trip(path, model, MNIST)
    assert_exact_zeros(path, model)
    assert_unchanged(model, before)
    assert model.training and hasattr(model.conv1, "weight_mask")
    assert check_onnx(path, model, torch.randn(3, *MNIST[1:])) < 1e-4


def test_compacted_lenet300_round_trip(tmp_path: Path) -> None:
    masked = pruned_lenet("lenet300").eval()
    with torch.no_grad():  # nothing reads fc1's first 50 units: the surgery removes them
        masked.fc2.weight_mask[:, :50] = 0.0
    small, _ = compact_model(masked, torch.randn(16, *MNIST[1:]))
    assert small.fc1.out_features <= 250 and small.fc2.in_features == small.fc1.out_features
    before = snapshot(small)
    path = export_onnx(small, tmp_path / "small.onnx", torch.randn(MNIST))
    assert initializers(path)["fc1.weight"].shape == (small.fc1.out_features, 784)
    assert_round_trip(path, small, MNIST)
    assert_round_trip(path, masked, MNIST)  # the compact file computes the masked function
    assert_exact_zeros(path, small)
    assert_unchanged(small, before)


def test_resnet18_random_masks_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("torchvision.resnet18", num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            prune.random_unstructured(module, "weight", amount=0.6)
    shape = (1, 3, 64, 64)
    before = snapshot(model)
    path = export_onnx(model, tmp_path / "resnet18.onnx", torch.randn(shape))
    assert_round_trip(path, model, shape)
    assert_exact_zeros(path, model)
    assert_unchanged(model, before)


def test_cli_input_shape_option_and_its_absence(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "m.safetensors"
    save_model_file(source, build_model("lenet300", in_features=12, num_classes=3),
                    {"name": "lenet300", "kwargs": {"in_features": 12, "num_classes": 3}})
    out = tmp_path / "m.onnx"
    assert main(["export", str(source), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--input-shape" in err and not out.exists()
    assert main(["export", str(source), "--format", "onnx", "--out", str(out),
                 "--input-shape", "1,12"]) == 0
    assert run_onnx(out, torch.randn(5, 12))[0].shape == (5, 3)
    assert main(["export", str(source), "--format", "csr", "--out", str(out),
                 "--input-shape", "1,12"]) == 2
    assert "onnx only" in capsys.readouterr().err
    assert main(["export", str(source), "--format", "onnx", "--out", str(out),
                 "--input-shape", "1,5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not run on an example input of shape (1, 5)" in err


def test_wrong_example_shape_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match=r"shape \(1, 5\)"):
        export_onnx(nn.Linear(4, 2), tmp_path / "l.onnx", torch.randn(1, 5))
    assert list(tmp_path.iterdir()) == []


def test_input_shapes() -> None:
    assert parse_input_shape(" 1, 3,64 ,64") == (1, 3, 64, 64)
    for bad in ("", "28", "1,0,28", "a,b", "1,-1"):
        with pytest.raises(ValueError, match="--input-shape"):
            parse_input_shape(bad)
    assert input_shape_from_metadata({"input_shape": [8, 3, 32, 32]}) == (1, 3, 32, 32)
    assert input_shape_from_metadata({"dataset": {"name": "fashion-mnist"}}) == MNIST
    assert input_shape_from_metadata({"dataset": "mnist"}) is None


def test_missing_onnx_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    with pytest.raises(OnnxUnavailableError, match=r"'onnxscript'.*pip install"):
        export_onnx(nn.Linear(2, 2), tmp_path / "l.onnx", torch.randn(1, 2))
    source = tmp_path / "m.safetensors"
    save_model_file(source, build_model("lenet300"), {"name": "lenet300"},
                    dataset={"name": "mnist"})
    out = tmp_path / "m.onnx"
    assert main(["export", str(source), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prunelab: error: ")
    assert "'onnxscript'" in err and "pip install 'prunelab[onnx]'" in err
    assert not out.exists()
