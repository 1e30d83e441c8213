"""Files are data: hostile or broken inputs give one line and exit 2, never code, hangs or huge
allocations (issue 14's reproductions, each pinned by a test)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from prunelab.checkpoint import CheckpointError, load_tensors, save_tensors
from prunelab.cli import main
from prunelab.config import ConfigError, read_yaml_mapping
from prunelab.errors import FileFormatError, PrunelabError, UntrustedCodeError
from prunelab.export import ExportFormatError, export_model, load_compact
from prunelab.modelfile import load_any_model, load_model_file, save_model_file
from prunelab.models import build_model

CANARY = '''
import pathlib
from torch import nn

def boom(**kwargs):
    pathlib.Path({mark!r}).write_text("ran")
    return nn.Linear(2, 2)
'''


def _model_file(path: Path, spec: dict | None = None, **meta_changes: object) -> Path:
    """A lenet300 model file, its metadata edited as given."""
    save_model_file(path, build_model("lenet300"), {"name": "lenet300", "kwargs": {}},
                    dataset={"name": "mnist", "mean": 0.1307, "std": 0.3081})
    tensors, meta = load_tensors(path)
    if spec is not None:
        meta["model"] = spec
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_tensors(path, tensors, meta)
    return path


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("prunelab: error: "), err
    return lines[0]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunelab", *args], capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------ files never run code
@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module ``canary_mod`` whose ``boom`` writes the returned marker file."""
    mark = tmp_path / "canary-ran"
    (tmp_path / "canary_mod.py").write_text(CANARY.format(mark=str(mark)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return mark


def test_import_path_in_model_file_is_refused(tmp_path: Path, canary: Path) -> None:
    path = _model_file(tmp_path / "m.safetensors", {"name": "canary_mod:boom", "kwargs": {}})
    with pytest.raises(UntrustedCodeError, match="import path 'canary_mod:boom'"):
        load_model_file(path)
    with pytest.raises(UntrustedCodeError):
        load_any_model(path)
    assert not canary.exists()
    # the opt-in really honours it (so the refusal above is what kept the canary quiet)
    with pytest.raises(FileFormatError):  # boom's Linear(2, 2) does not fit lenet300's tensors
        load_model_file(path, allow_import=True)
    assert canary.exists()


def test_import_path_allowed_only_when_listed(tmp_path: Path, canary: Path) -> None:
    path = _model_file(tmp_path / "m.safetensors", {"name": "canary_mod:boom", "kwargs": {}})
    with pytest.raises(UntrustedCodeError):
        load_model_file(path, allow_import={"other_mod:factory"})
    assert not canary.exists()


def test_cli_evaluate_never_runs_subprocess_from_file(tmp_path: Path) -> None:
    mark = tmp_path / "pwned"
    path = _model_file(tmp_path / "m.safetensors",
                       {"name": "subprocess:run", "kwargs": {"args": ["touch", str(mark)]}})
    for cmd in (["evaluate", str(path)], ["inspect", str(path)],
                ["export", str(path), "--out", str(tmp_path / "e.safetensors")]):
        res = _cli(*cmd)
        assert res.returncode == 2, res.stderr
        line = _one_error_line(res.stderr)
        assert "import path 'subprocess:run'" in line and "--allow-import" in line
        assert not mark.exists()


def test_compact_export_with_import_path_is_refused(tmp_path: Path, canary: Path) -> None:
    out = export_model(build_model("lenet300"), tmp_path / "e.safetensors", format="csr",
                       metadata={"model": {"name": "canary_mod:boom", "kwargs": {}}})
    with pytest.raises(UntrustedCodeError):
        load_any_model(out)
    assert not canary.exists()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"name": "lenet300", "kwargs": {"in_features": 10**12}}, "holds only"),
        ({"name": "lenet300", "kwargs": {"nope": 1}}, "cannot be built"),
        ({"name": "lenet300", "kwargs": []}, "kwargs must be a mapping"),
        ({"name": "no-such-model"}, "unknown model"),
        ({"name": "torchvision.resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}},
         "not allowed in a file"),
        ("lenet300", "no model description"),
    ],
)
def test_bad_model_descriptions(tmp_path: Path, spec: object, needle: str) -> None:
    path = _model_file(tmp_path / "m.safetensors", spec)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match=needle):
        load_model_file(path)
    assert time.perf_counter() - t0 < 10  # refused before building 10^18 weights


def test_metadata_without_model_key(tmp_path: Path) -> None:
    path = _model_file(tmp_path / "m.safetensors", model=None)
    assert main(["evaluate", str(path)]) == 2


def test_non_binary_mask_is_refused(tmp_path: Path) -> None:
    from prunelab.pruner import Pruner

    model = build_model("lenet300")
    Pruner(model).step("magnitude", 0.5)
    path = tmp_path / "m.safetensors"
    save_model_file(path, model, {"name": "lenet300", "kwargs": {}})
    tensors, meta = load_tensors(path)
    tensors["fc1.weight_mask"] = tensors["fc1.weight_mask"] * 0.5
    save_tensors(path, tensors, meta)
    with pytest.raises(FileFormatError, match="other than 0 and 1"):
        load_model_file(path)


# ------------------------------------------------------------------ sizes claimed by headers
def test_export_header_claiming_huge_layer(tmp_path: Path) -> None:
    path = export_model(build_model("lenet300"), tmp_path / "e.safetensors", format="han")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    meta = json.loads(header["__metadata__"]["prunelab"])
    meta["layers"]["fc1.weight"]["shape"] = [1 << 18, 1 << 18]  # 2^36 entries, 256 GiB
    tensors = load_compact_raw(path)
    save_file(tensors, str(path), metadata={"prunelab": json.dumps(meta)})
    t0 = time.perf_counter()
    with pytest.raises(ExportFormatError, match="GiB once decoded"):
        load_compact(path)
    assert time.perf_counter() - t0 < 5
    res = _cli("evaluate", str(path))
    assert res.returncode == 2
    assert "GiB once decoded" in _one_error_line(res.stderr)


def load_compact_raw(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("shape", [[-1, 3], [2.5], "big", [1] * 20, [True, 2]])
def test_export_header_with_bad_shape(tmp_path: Path, shape: object) -> None:
    path = export_model(build_model("lenet300"), tmp_path / "e.safetensors", format="csr")
    tensors = load_compact_raw(path)
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        meta = json.loads(json.loads(fh.read(n))["__metadata__"]["prunelab"])
    meta["layers"]["fc2.weight"]["shape"] = shape
    save_file(tensors, str(path), metadata={"prunelab": json.dumps(meta)})
    with pytest.raises(ExportFormatError):
        load_compact(path)


# ------------------------------------------------------------------ configs
def test_yaml_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 12):  # 10^12 values once expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("model: {name: lenet300}")
    lines.append("prune: {schedule: [{q: 1, epochs: 1}], extra: *a11}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        read_yaml_mapping(path)
    assert time.perf_counter() - t0 < 5
    res = _cli("run", str(path), "--out", str(tmp_path / "r"), timeout=60)
    assert res.returncode == 2
    assert len(_one_error_line(res.stderr)) < 500


def test_recursive_alias_and_deep_nesting(tmp_path: Path) -> None:
    path = tmp_path / "rec.yaml"
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="recursive"):
        read_yaml_mapping(path)
    path.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match=r"rec\.yaml.*nests brackets"):
        read_yaml_mapping(path)


def test_config_errors_name_the_key_not_the_whole_value(tmp_path: Path) -> None:
    big = list(range(5000))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "lenet300"}, "seed": big,
                                    "prune": {"schedule": [{"q": 1, "epochs": 1}]}}))
    res = _cli("run", str(path), "--out", str(tmp_path / "r"), timeout=60)
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert "seed" in line and "4999" not in line and len(line) < 500


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
                                     b"model: {name: lenet300}\x00\x01"])
def test_binary_config_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "weird.yaml"
    path.write_bytes(content)
    for cmd in (["run", str(path)], ["rethink", str(path)]):
        res = _cli(*cmd, "--out", str(tmp_path / "o"), timeout=60)
        assert res.returncode == 2, res.stderr
        assert "weird.yaml" in _one_error_line(res.stderr)


def test_oversized_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prunelab.config as config

    monkeypatch.setattr(config, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("model: {name: lenet300}\n# " + "x" * 2000 + "\n")
    with pytest.raises(ConfigError, match="more than the 1,000"):
        read_yaml_mapping(path)


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml_mapping(tmp_path)


# ------------------------------------------------------------------ paths and devices
def test_evaluate_on_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


TINY_RUN = {
    "name": "tiny", "model": {"name": "lenet300"},
    "data": {"subset": 256, "val_size": 128}, "threads": 1,
    "train": {"epochs": 1, "batch_size": 64},
    "prune": {"method": "std", "schedule": [{"q": 1.0, "epochs": 1}]},
}


def _cfg(tmp_path: Path) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(TINY_RUN))
    return p


@pytest.mark.parametrize("where", ["under-file", "onto-file"])
def test_out_under_or_onto_a_regular_file(tmp_path: Path, where: str,
                                          capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    out = f / "run" if where == "under-file" else f
    assert main(["run", str(_cfg(tmp_path)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and "not a directory" in err
    assert f.read_text() == "x"


def test_export_onto_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _model_file(tmp_path / "m.safetensors")
    (tmp_path / "d").mkdir()
    assert main(["export", str(path), "--out", str(tmp_path / "d")]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(_cfg(tmp_path)), "--out", str(tmp_path / "r"), "--quiet",
                 "--device", "cuda"]) == 2
    assert "no usable CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    path = _model_file(tmp_path / "m.safetensors")
    assert main(["evaluate", str(path), "--device", "cuda:1"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_unknown_device_is_blamed_on_the_device(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    path = _model_file(tmp_path / "m.safetensors")
    assert main(["evaluate", str(path), "--device", "gpu0"]) == 2
    err = capsys.readouterr().err
    assert "device 'gpu0' is unknown; allowed: cpu, cuda, cuda:N, mps" in err
    assert "m.safetensors" not in err


# ------------------------------------------------------------------ run directories
def test_resume_without_checkpoint_is_an_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_cfg(tmp_path)), "--out", str(out), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "without --resume" in err
    assert not (out / "model.safetensors").exists()


def test_checkpoint_without_config_is_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    cfg = _cfg(tmp_path)
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 0
    tensors, meta = load_tensors(out / "checkpoint.safetensors")
    del meta["config"]
    save_tensors(out / "checkpoint.safetensors", tensors, meta)
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and "not a complete pipeline checkpoint" in err


def test_stale_temp_files_are_removed_at_next_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".checkpoint.safetensors.a1b2c3.tmp", out / ".log.jsonl.zz_9.tmp"]
    for p in stale:
        p.write_bytes(b"torn")
    keep = out / "notes.tmp"  # not ours: left alone
    keep.write_text("mine")
    assert main(["run", str(_cfg(tmp_path)), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert not any(p.exists() for p in stale)
    assert keep.read_text() == "mine"
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------ the error contract
def test_every_input_error_is_a_prunelab_error() -> None:
    from prunelab.data import DatasetError
    from prunelab.experiments.rundir import RunDirectoryError
    from prunelab.surgery import SurgeryError

    for cls in (ConfigError, CheckpointError, ExportFormatError, DatasetError,
                RunDirectoryError, SurgeryError, UntrustedCodeError):
        assert issubclass(cls, PrunelabError), cls


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = _cli("--debug", "evaluate", str(tmp_path / "nope.safetensors"))
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = _cli("evaluate", str(tmp_path / "nope.safetensors"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    _one_error_line(res.stderr)


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunelab.cli as cli

    def broken(args: object) -> int:
        raise KeyError("internal")

    parser = cli.build_parser(cli._extra_commands())
    monkeypatch.setattr(cli, "build_parser", lambda extra=(): parser)
    parser.set_defaults(func=broken)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=broken)
    with pytest.raises(KeyError):
        main(["evaluate", "x"])


# ------------------------------------------------------------------ integrity and datasets
def test_a_flipped_bit_anywhere_is_detected(tmp_path: Path) -> None:
    path = _model_file(tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10  # inside the last tensor's bytes: safetensors alone cannot tell
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model_file(path)
    out = export_model(build_model("lenet300"), tmp_path / "e.safetensors", format="han")
    raw = bytearray(out.read_bytes())
    raw[-5] ^= 0x10
    out.write_bytes(bytes(raw))
    with pytest.raises(ExportFormatError, match="SHA-256"):
        load_compact(out)


def test_unknown_header_entry_is_refused(tmp_path: Path) -> None:
    path = _model_file(tmp_path / "m.safetensors")
    tensors, meta = load_tensors(path)
    save_file(tensors, str(path), metadata={"prunelab": json.dumps(meta), "prunelab.sha25x": ""})
    with pytest.raises(CheckpointError, match="unknown header entries"):
        load_tensors(path)


def test_gzip_bomb_in_a_dataset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from prunelab.data import DatasetError
    from prunelab.data.idx import decompress_if_gzip

    monkeypatch.setenv("PRUNELAB_MAX_DATASET_BYTES", "1000")
    with pytest.raises(DatasetError, match="decompresses to more than 1,000 bytes"):
        decompress_if_gzip(gzip.compress(b"\0" * 100_000), "bomb.gz")
    assert decompress_if_gzip(gzip.compress(b"\1" * 1000), "ok.gz") == b"\1" * 1000
