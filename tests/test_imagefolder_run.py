"""The smoke run of the README: a real image folder -> the VGG-16-shaped recipe -> a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunelab.cli import main


@pytest.mark.slow
def test_smoke_recipe_on_a_real_image_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mnist-folder"
    assert main(["make-imagefolder", "mnist", str(folder), "--size", "32",
                 "--train-per-class", "40", "--val-per-class", "10"]) == 0
    out = tmp_path / "run"
    assert main(["reproduce", "smoke-imagefolder", "--data-root", str(folder), "--out",
                 str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "imagefolder" and summary["epochs"] == 9
    layers = {r["name"]: r for r in summary["layers"]}
    # the schedule's targets, to one weight (dead-neuron removal can only add zeros)
    for name, kept in (("classifier.fc1", 0.1), ("features.conv3_1", 0.36)):
        assert layers[name]["weights_kept"] <= kept + 1 / layers[name]["weights"], name
    assert (out / "report.html").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.safetensors"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test_error"] == pytest.approx(summary["test_error_pruned"])
    assert got["params_nonzero"] == summary["params_nonzero"]
