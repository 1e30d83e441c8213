"""End-to-end tests of the `prunelab` command line on a small MNIST subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from prunelab.checkpoint import load_tensors
from prunelab.cli import BUILTIN_CONFIGS, builtin_config_path, main
from prunelab.config import load_config

TINY = {
    "name": "tiny",
    "model": {"name": "lenet300"},
    "data": {"subset": 600, "val_size": 500},
    "threads": 1,
    "train": {"epochs": 2, "batch_size": 64, "optimizer": {"lr": 0.05}},
    "prune": {
        "method": "std",
        "schedule": [{"q": 1.0, "epochs": 2}, {"q": {"*": 1.5, "fc3": 1.0}, "epochs": 2}],
    },
}


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunelab.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_builtin_configs_validate() -> None:
    for name in BUILTIN_CONFIGS:
        cfg = load_config(builtin_config_path(name))
        assert cfg.name == name
        assert cfg.data.val_size > 0  # choices are made on a held-out validation split


def test_run_evaluate_inspect_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_write(tmp_path, TINY)), "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    for f in ("config.yaml", "log.jsonl", "checkpoint.safetensors", "model.safetensors",
              "dense_model.safetensors", "summary.json", "layers.md"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "dataset", "seed", "test_error_dense", "test_error_pruned",
                "params_total", "params_nonzero", "compression", "flops_dense",
                "flops_pruned", "layers"):
        assert key in summary
    assert summary["params_total"] == 266_610
    assert summary["params_nonzero"] < summary["params_total"]
    assert {"name", "weights", "nonzero", "flops_dense", "flops_pruned"} <= set(
        summary["layers"][0]
    )
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epoch_recs = [r for r in epochs if r["kind"] == "epoch"]
    assert len(epoch_recs) == 6
    assert {"phase", "iteration", "loss", "train_accuracy", "val_accuracy", "lr",
            "sparsity"} <= set(epoch_recs[-1])
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.safetensors"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test_error"] == pytest.approx(summary["test_error_pruned"], abs=1e-9)
    assert res["params_nonzero"] == summary["params_nonzero"]
    assert res["params_total"] == summary["params_total"]
    assert main(["inspect", str(out / "model.safetensors")]) == 0
    assert "fc1" in capsys.readouterr().out
    for fmt in ("han", "csr", "dense"):
        exported = tmp_path / f"m_{fmt}.safetensors"
        assert main(["export", str(out / "model.safetensors"), "--format", fmt,
                     "--out", str(exported)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(exported), "--json"]) == 0
        again = json.loads(capsys.readouterr().out)
        assert again["test_error"] == res["test_error"]
        assert again["params_nonzero"] == res["params_nonzero"]


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {**TINY, "train": {**TINY["train"], "epochs": 1},
                            "prune": {"method": "std", "schedule": [{"q": 1.0, "epochs": 0}]}})
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 2
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-report",
                 "--seed", "5", "--resume"]) == 2  # another config: refused


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"trian": {}}, "trian"),
        ({"prune": {"method": "foo", "schedule": [{"q": 1, "epochs": 1}]}}, "'std'"),
        ({"prune": {"method": "std", "schedule": [{"sparsity": 0.5, "epochs": 1}]}}, "needs 'q'"),
        ({"train": {"epochs": -1}}, "train.epochs"),
        ({"data": {"val_size": 70000}}, "data.val_size"),
    ],
)
def test_bad_config_is_refused_before_work(tmp_path: Path, patch: dict, needle: str,
                                           capsys: pytest.CaptureFixture) -> None:
    cfg = {**TINY, **patch}
    out = tmp_path / "run"
    assert main(["run", str(_write(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not (out / "checkpoint.safetensors").exists()


def test_unknown_layer_in_schedule_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = {**TINY, "prune": {"method": "std", "schedule": [{"q": {"fc9": 1.0}, "epochs": 1}]}}
    assert main(["run", str(_write(tmp_path, cfg)), "--out", str(tmp_path / "r"), "--quiet",
                 "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "fc9" in err and "fc1" in err


def test_evaluate_missing_file_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def _final_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(run / "model.safetensors")
    return tensors


def test_resume_after_kill_matches_uninterrupted(tmp_path: Path) -> None:
    """SIGKILL a real run between epochs; --resume must end bit-identical to a clean run."""
    cfg = {**TINY, "train": {**TINY["train"], "epochs": 3}, "data": {"subset": 1500,
                                                                     "val_size": 500}}
    path = _write(tmp_path, cfg)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    r = _cli("run", str(path), "--out", str(clean), "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunelab.cli", "run", str(path), "--out", str(killed),
         "--quiet", "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ck = killed / "checkpoint.safetensors"
    deadline = time.time() + 240
    epochs_seen = 0
    while time.time() < deadline and proc.poll() is None:
        if ck.exists():
            try:
                _, meta = load_tensors(ck)
                epochs_seen = len([h for h in meta["history"] if h["kind"] == "epoch"])
            except Exception:  # being replaced right now; the next poll reads it
                epochs_seen = 0
            if epochs_seen >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    r = _cli("run", str(path), "--out", str(killed), "--quiet", "--no-report", "--resume")
    assert r.returncode == 0, r.stderr
    a, b = _final_tensors(clean), _final_tensors(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = json.loads((clean / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert sa["test_error_pruned"] == sb["test_error_pruned"]
    assert sb["resumed"] is True
    log = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    assert len([r for r in log if r["kind"] == "epoch"]) == 3 + 2 + 2
