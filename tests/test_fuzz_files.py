"""Property-based fuzzing of every file prunelab opens (hypothesis).

Two kinds of damage, on valid model files, compact exports (han, csr, dense, compressed), pipeline
checkpoints and YAML configs:

- *corruption*: truncation, bit flips, overwritten header bytes (a copy damaged on disk or in
  transit). Loading must either give back exactly the original tensors and metadata or raise
  our error type.
- *hostile authorship*: the file is re-written validly (checksum included) after its metadata
  or tensors were edited: huge or negative sizes, wrong dtypes and shapes, deleted or retyped
  keys, an import path as the model's name. Loading must either succeed (with exactly the
  file's tensors in the model) or raise our error type.

Every example is bounded in time (hypothesis ``deadline``) and the whole run in memory (peak
resident memory may not grow by more than 1 GiB, where one claimed tensor of the edits below
would need many), and a canary module named by the edits must never be imported.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from conftest import build_mlp, make_config, make_data, share_weights  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from prunelab.checkpoint import load_tensors, save_tensors  # noqa: E402
from prunelab.cli import builtin_config_path  # noqa: E402
from prunelab.config import load_config  # noqa: E402
from prunelab.errors import PrunelabError  # noqa: E402
from prunelab.experiments.han import CHECKPOINT_NAME, HanPipeline  # noqa: E402
from prunelab.export import export_model, load_compact  # noqa: E402
from prunelab.modelfile import load_any_model, load_model_file, save_model_file  # noqa: E402
from prunelab.models import build_model  # noqa: E402
from prunelab.pruner import Pruner  # noqa: E402

SPEC = {"name": "lenet300", "kwargs": {"in_features": 16}}
CANARY_MODULE = "prunelab_fuzz_canary"
# CI runs a fixed set (derandomised); PRUNELAB_FUZZ_EXAMPLES=N runs N fresh random examples
EXAMPLES = int(os.environ.get("PRUNELAB_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 100, deadline=3000, derandomize=not EXAMPLES,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.sampled_from([2**36, 2**62, -1, 0, 1.5, float("inf")]),
    st.text(max_size=12), st.sampled_from(["float64", "int64", "bool", "uint8", "complex64",
                                           "bfloat16", "float16", "han", "csr", "dense"]),
    st.lists(st.integers(-4, 2**40), max_size=6), st.just({}), st.just([]),
    st.just(f"{CANARY_MODULE}:boom"),
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = build_model(SPEC["name"], **SPEC["kwargs"])
    Pruner(model).step("magnitude", 0.8)
    files = {"model": d / "model.safetensors"}
    save_model_file(files["model"], model, SPEC, dataset={"name": "mnist"})
    for fmt in ("han", "csr", "dense"):
        files[fmt] = export_model(model, d / f"{fmt}.safetensors", format=fmt,
                                  metadata={"model": SPEC})
    shared = share_weights(copy.deepcopy(model), {torch.nn.Linear: 32})
    files["compressed"] = export_model(shared, d / "compressed.safetensors", format="compressed",
                                       metadata={"model": SPEC})
    run = d / "run"
    HanPipeline(build_mlp(), _ck_config(), make_data(), run_dir=run).run()
    files["checkpoint"] = run / CHECKPOINT_NAME
    return files


def _ck_config():
    return make_config(prune={"schedule": [{"sparsity": 0.5, "epochs": 1},
                                           {"sparsity": 0.7, "epochs": 1}]})


@pytest.fixture(scope="module", autouse=True)
def memory_bound() -> Any:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    yield
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert grown_gib < 1.0, f"peak memory grew by {grown_gib:.2f} GiB while fuzzing"
    assert CANARY_MODULE not in sys.modules, "a file made prunelab import code"


# ------------------------------------------------------------------ corruption
@st.composite
def corruptions(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """A few edits: ("cut", at, 0), ("flip", byte, bit), ("poke", byte, value)."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "flip", "poke", "head"]))
        if kind == "cut":
            edits.append(("cut", draw(st.integers(0, size - 1)), 0))
        elif kind == "head":  # the 8-byte length and the JSON header: where structure lives
            edits.append(("poke", draw(st.integers(0, min(size - 1, 600))),
                          draw(st.integers(0, 255))))
        else:
            edits.append((kind, draw(st.integers(0, size - 1)),
                          draw(st.integers(0, 7 if kind == "flip" else 255))))
    return edits


def _corrupt(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, at, arg in edits:
        if kind == "cut":
            del buf[min(at, len(buf)):]
        elif at < len(buf):
            buf[at] = buf[at] ^ (1 << arg) if kind == "flip" else arg
    return bytes(buf)


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and values, NaN equal to NaN (a file may hold NaN weights)."""
    b = b.to(a.dtype)
    if a.shape != b.shape:
        return False
    same = a == b
    if a.is_floating_point():
        same |= a.isnan() & b.isnan()
    return bool(same.all())


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and _identical(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["model", "han", "csr", "dense", "compressed", "checkpoint"])
@FUZZ
@given(data=st.data())
def test_corrupted_files_load_identically_or_raise(originals: dict[str, Path], kind: str,
                                                   tmp_path: Path, data: st.DataObject) -> None:
    src = originals[kind]
    raw = src.read_bytes()
    edits = data.draw(corruptions(len(raw)))
    bad = tmp_path / f"bad-{kind}.safetensors"
    bad.write_bytes(_corrupt(raw, edits))
    if kind in ("model", "checkpoint"):
        want, want_meta = load_tensors(src)
        try:
            got, meta = load_tensors(bad)
        except PrunelabError:
            return
        assert _same_state(want, got) and meta == want_meta
    else:
        want, want_meta = load_compact(src)
        try:
            got, meta = load_compact(bad)
        except PrunelabError:
            return
        assert _same_state(want, got) and meta == want_meta


# ------------------------------------------------------------------ hostile authorship
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _paths(v, (*prefix, i))
    return out


def _edit(obj: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


@st.composite
def meta_edits(draw: st.DrawFn, meta: dict) -> dict:
    meta = copy.deepcopy(meta)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(meta)
        path = draw(st.sampled_from(paths))
        meta = _edit(meta, path, draw(HOSTILE_VALUES), draw(st.booleans()))
        if not isinstance(meta, dict):
            break
    return meta


@st.composite
def tensor_edits(draw: st.DrawFn, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(tensors)))
        how = draw(st.sampled_from(["drop", "shape", "dtype", "extra", "values"]))
        t = tensors[name]
        if how == "drop" and len(tensors) > 1:
            del tensors[name]
        elif how == "shape":
            tensors[name] = t.reshape(-1)[: max(0, t.numel() - draw(st.integers(0, 3)))]
        elif how == "dtype":
            tensors[name] = t.to(draw(st.sampled_from([torch.float16, torch.int64, torch.bool,
                                                       torch.uint8, torch.float64])))
        elif how == "extra":
            tensors[f"{name}.x"] = torch.zeros(draw(st.integers(0, 5)))
        elif t.is_floating_point():
            tensors[name] = torch.full_like(t, draw(st.sampled_from([float("nan"), 2.0, -1.0])))
        else:
            tensors[name] = torch.ones_like(t)
    return tensors


@FUZZ
@given(data=st.data())
def test_hostile_model_files_load_or_raise(originals: dict[str, Path], tmp_path: Path,
                                           data: st.DataObject) -> None:
    tensors, meta = load_tensors(originals["model"])
    meta = data.draw(meta_edits(meta))
    tensors = data.draw(tensor_edits(tensors))
    path = tmp_path / "hostile.safetensors"
    try:
        save_tensors(path, tensors, meta)
    except (TypeError, ValueError):
        event("not writable")
        return  # not writable as JSON (inf): not a file anyone can hand us
    try:
        model, _ = load_model_file(path)
    except PrunelabError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    state = model.state_dict()
    assert state.keys() == tensors.keys()
    assert all(_identical(state[k], tensors[k]) for k in state)


@pytest.mark.parametrize("fmt", ["han", "csr", "dense", "compressed"])
@FUZZ
@given(data=st.data())
def test_hostile_exports_load_or_raise(originals: dict[str, Path], fmt: str, tmp_path: Path,
                                       data: st.DataObject) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(originals[fmt]), framework="pt") as fh:
        header = json.loads(fh.metadata()["prunelab"])
        arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    header = data.draw(meta_edits(header))
    arrays = data.draw(tensor_edits(arrays))
    path = tmp_path / "hostile.safetensors"
    try:  # a hostile author writes no checksum at all
        save_file({k: v.contiguous() for k, v in arrays.items()}, str(path),
                  metadata={"prunelab": json.dumps(header)})
    except (TypeError, ValueError):
        event("not writable")
        return
    try:
        state, _ = load_compact(path)
        model, _ = load_any_model(path)
    except PrunelabError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    got = model.state_dict()
    assert all(_identical(got[k], state[k]) for k in got)


@FUZZ
@given(data=st.data())
def test_hostile_checkpoints_restore_or_raise(originals: dict[str, Path], tmp_path: Path,
                                              data: st.DataObject) -> None:
    tensors, meta = load_tensors(originals["checkpoint"])
    meta = data.draw(meta_edits(meta))
    tensors = data.draw(tensor_edits(tensors))
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    try:
        save_tensors(run / CHECKPOINT_NAME, tensors, meta)
    except (TypeError, ValueError):
        event("not writable")
        return
    pipe = HanPipeline(build_mlp(), _ck_config(), make_data(), run_dir=run)
    try:
        assert pipe.restore() is True
    except PrunelabError as exc:
        event(f"refused: {type(exc).__name__}")
        return


# ------------------------------------------------------------------ configs
CONFIG_TEXT = builtin_config_path("han2015-lenet5").read_text()


@FUZZ
@given(data=st.data())
def test_mutated_configs_load_or_raise(tmp_path: Path, data: st.DataObject) -> None:
    raw = CONFIG_TEXT.encode()
    edits = data.draw(corruptions(len(raw)))
    text = _corrupt(raw, edits)
    if data.draw(st.booleans()):  # splice in YAML of hostile shape
        snippet = data.draw(st.sampled_from([
            "\nx: &a [1, *a]\n", "\ny: !!python/object/apply:os.system ['true']\n",
            "\nz: " + "[" * 3000 + "]" * 3000 + "\n", "\nseed: 1e400\n",
            "\nmodel: {name: " + CANARY_MODULE + ":boom}\n", "\n\tbad: tab\n", "\0",
        ]))
        text += snippet.encode()
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text)
    try:
        load_config(path)
    except PrunelabError as exc:
        event(f"refused: {type(exc).__name__}")
        return
