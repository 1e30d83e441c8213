"""``torchrun -m prunelab run``: 2 gloo ranks on CPU equal 1 process; a killed rank ends the job.

These start real ``torchrun`` jobs (2 processes of one thread each) on a small MNIST subset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import SMALL_MNIST_RUN

from prunelab.checkpoint import load_tensors

CONFIG = {**SMALL_MNIST_RUN, "name": "ddp-smoke"}


def _write_config(tmp_path: Path, **train: object) -> Path:
    cfg = {**CONFIG, "train": {**CONFIG["train"], **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "--max_restarts", "0", "-m", "prunelab", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _run_single(cfg: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "prunelab", "run", str(cfg), "--out", str(out),
                    "--quiet", "--no-report"], env=_env(), check=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    cfg = _write_config(tmp_path)
    job = _torchrun(["run", str(cfg), "--out", str(tmp_path / "ddp"), "--quiet", "--no-report"])
    log, _ = job.communicate(timeout=300)
    assert job.returncode == 0, log
    _run_single(cfg, tmp_path / "one")
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["epochs"] == one["epochs"] == 4
    # the same global batches: the same run up to float summation order
    assert abs(ddp["params_nonzero"] - one["params_nonzero"]) <= 0.002 * one["params_nonzero"]
    assert abs(ddp["test_error_pruned"] - one["test_error_pruned"]) <= 0.2
    assert abs(ddp["val_error_dense"] - one["val_error_dense"]) <= 0.5
    t_ddp, _ = load_tensors(tmp_path / "ddp" / "dense_model.safetensors")
    t_one, _ = load_tensors(tmp_path / "one" / "dense_model.safetensors")
    for k in t_one:
        assert (t_ddp[k] - t_one[k]).abs().max() < 1e-3, k
    # only rank 0 wrote: one log, no stray files
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_killed_rank_ends_the_job_and_the_run_resumes(tmp_path: Path) -> None:
    cfg = _write_config(tmp_path, epochs=6)
    out = tmp_path / "ddp"
    job = _torchrun(["run", str(cfg), "--out", str(out), "--quiet", "--no-report"])
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.safetensors").exists():
        assert job.poll() is None, job.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    workers = _children(job.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # the rank started last
    t0 = time.monotonic()
    log, _ = job.communicate(timeout=120)
    assert job.returncode != 0, log
    assert time.monotonic() - t0 < 120
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["world_size"] == 2
    done = len(meta["history"])
    assert done < 8
    job = _torchrun(["run", str(cfg), "--out", str(out), "--resume", "--quiet", "--no-report"])
    log, _ = job.communicate(timeout=300)
    assert job.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 8 and summary["resumed"]
    # a different number of ranks cannot resume it
    single = subprocess.run([sys.executable, "-m", "prunelab", "run", str(cfg), "--out",
                             str(out), "--resume", "--quiet"], env=_env(), text=True,
                            capture_output=True, timeout=120)
    assert single.returncode != 0
