"""Time DeepSparse (and ONNX Runtime, if importable) on the ONNX files of the sparse benchmark.

An optional DeepSparse column for ``bench_sparse_inference.py``. DeepSparse reached end of
life; its last working release, 1.8.0, pins old ``numpy`` / ``onnx``, so it lives in its own
virtualenv, never in the project's ``.venv``, and this script imports neither prunelab nor
torch. Install (CPython 3.11; these exact versions were resolved by pip and work)::

    python3 -m venv /tmp/dsvenv
    /tmp/dsvenv/bin/pip install --upgrade pip
    /tmp/dsvenv/bin/pip install deepsparse==1.8.0
    # resolves numpy 1.26.4, onnx 1.14.1, onnxruntime 1.32.0, protobuf 7.36.2, sparsezoo 1.8.1

(``deepsparse==1.9`` is an end-of-life stub; 1.8.0 is the "COMMUNITY" edition, under Neural
Magic's community licence.) Make the input files with the project's environment, then run
this script with the DeepSparse one::

    PYTHONPATH=src .venv/bin/python benchmarks/make_deepsparse_inputs.py --out /tmp/ds_models
    /tmp/dsvenv/bin/python benchmarks/bench_deepsparse.py --models /tmp/ds_models \\
        --threads 1,2 --batches 1,8,64,256 --repeats 20 --json deepsparse.json

Every ``*.onnx`` in ``--models`` must have a single input named ``input`` whose first
dimension is a dynamic batch. DeepSparse 1.8 embeds ONNX Runtime 1.15.1 and so loads ONNX
IR version <= 9 and opset <= 19 only (``make_deepsparse_inputs.py`` writes opset 18, IR 9);
a newer file fails to compile and is recorded as an ``error`` run.

For each file, thread count ``T`` and batch ``B``: ``deepsparse.compile_model(path,
batch_size=B, num_cores=T)``, a seeded random float32 input of the file's shape at batch
``B``, ``--warmup`` untimed calls, then ``--repeats`` timed calls of ``engine.run([x],
val_inp=False)`` (no per-call Python input validation), median and min in microseconds; then
the same for an ONNX Runtime session on the same file (``intra_op_num_threads=T``,
``inter_op_num_threads=1``, CPU provider) after the engine is freed, so the two runtimes'
thread pools never run at the same time. When ``<stem>.npz`` lies next to the file (keys
``input``, batch 1, and ``output``), its input is tiled to batch ``B`` and the largest
absolute difference from its output is recorded for each runtime, with ``*_ok`` (within
``--atol``); the line printed for the run says ``WRONG`` otherwise.

Known DeepSparse 1.8.0 bug (seen on AVX2, fp32): a sparse ``Gemm`` whose in_features is not a
multiple of 16 and whose out_features is 64 or more gives wrong outputs (NaN for some
shapes) at small batches (1 and 8; 64 was right), while ONNX Runtime is exact. LeNet-300-100's
fc2 (300 -> 100) hits it, so ``lenet300`` is ``WRONG`` at batch 1: its times are not of a
correct computation. The paper layers (in_features 4096 / 9216 / 25088) and LeNet-5 are right.

The JSON (``--json``, written atomically after every run, so an interrupted run keeps what it
measured): ``{"deepsparse_version", "onnxruntime_version", "cpu", "command", "repeats",
"warmup", "seed", "timing", "runs": [{"model", "threads", "batch", "input_shape",
"deepsparse_us", "deepsparse_min_us", "deepsparse_compile_s", "deepsparse_max_abs_err",
"deepsparse_ok", "ort_us", "ort_min_us", "ort_max_abs_err", "ort_ok"}]}`` (``*_max_abs_err``
and ``*_ok`` are ``null`` without an ``.npz``, an error that is not finite is the string
``"nan"`` / ``"inf"``, the ``ort_*`` keys are absent without onnxruntime, and a run that
failed has an ``error`` string instead of the figures). Exit status 1 if any run failed or
was wrong, else 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# DeepSparse / SparseZoo send usage analytics (to Google Analytics) on engine creation.
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

import deepsparse
import numpy as np
import onnx

try:
    import onnxruntime as ort
except ImportError:  # optional column
    ort = None

INPUT_NAME = "input"


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2 (got {text!r})")
    return values


def cpu_info() -> dict[str, Any]:
    """The CPU as DeepSparse sees it (ISA, cores, caches) plus the kernel's model name."""
    info: dict[str, Any] = {"machine": platform.machine(), "os_cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["model_name"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from deepsparse.cpu import cpu_architecture

        arch = cpu_architecture()
        keys = (
            "vendor", "vendor_model", "isa", "num_cores", "num_hw_threads",
            "available_num_cores", "num_sockets", "L2_cache_size", "L3_cache_size", "vnni",
        )  # fmt: skip
        info.update({k: arch[k] for k in keys if k in arch})
    except Exception as exc:  # informational only
        info["deepsparse_cpu_error"] = f"{type(exc).__name__}: {exc}"
    return info


def input_shape(path: Path) -> tuple[int, ...]:
    """The shape of the file's single input ``input`` (its dynamic first dimension as 1)."""
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [i.name for i in inputs]
        raise ValueError(f"{path.name}: expected one input named {INPUT_NAME!r}, got {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    if not shape or any(s < 1 for s in shape[1:]):
        raise ValueError(f"{path.name}: input needs static non-batch dimensions, got {shape}")
    return (1, *shape[1:])


def time_us(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn`` in microseconds over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    return statistics.median(samples), min(samples)


def max_abs_err(out: np.ndarray, ref: np.ndarray | None) -> float | None:
    """Largest |out - ref| with ``ref`` (batch 1) tiled to ``out``'s batch; inf on mismatch."""
    if ref is None:
        return None
    if out.shape[1:] != ref.shape[1:]:
        return float("inf")
    return float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())


def _check(
    row: dict[str, Any],
    prefix: str,
    out: np.ndarray | None,
    ref: np.ndarray | None,
    args: argparse.Namespace,
) -> None:
    """Record ``<prefix>_max_abs_err`` (a string for nan/inf) and ``<prefix>_ok`` in ``row``."""
    err = None if out is None else max_abs_err(out, ref)
    if err is None:
        row[f"{prefix}_max_abs_err"], row[f"{prefix}_ok"] = None, None
        return
    ok = bool(err <= args.atol)  # False for nan
    row[f"{prefix}_max_abs_err"] = err if np.isfinite(err) else str(err)
    row[f"{prefix}_ok"] = ok


def bench_one(
    path: Path,
    shape: tuple[int, ...],
    threads: int,
    batch: int,
    args: argparse.Namespace,
    ref: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    """One (file, threads, batch) run: DeepSparse, then ONNX Runtime if available."""
    rng = np.random.default_rng([args.seed, threads, batch])
    x = rng.standard_normal((batch, *shape[1:]), dtype=np.float32)
    row: dict[str, Any] = {
        "model": path.stem, "threads": threads, "batch": batch,
        "input_shape": [batch, *shape[1:]],
    }  # fmt: skip
    check_x = ref_y = None
    if ref is not None:
        check_x = np.ascontiguousarray(np.repeat(ref[0], batch, axis=0), dtype=np.float32)
        ref_y = np.repeat(ref[1], batch, axis=0)

    t0 = time.perf_counter()
    engine = deepsparse.compile_model(str(path), batch_size=batch, num_cores=threads)
    row["deepsparse_compile_s"] = round(time.perf_counter() - t0, 3)
    _check(row, "deepsparse", None if check_x is None else engine.run([check_x])[0], ref_y, args)
    engine.run([x])  # validates the input once; the timed calls skip the validation
    med, low = time_us(lambda: engine.run([x], val_inp=False), args.repeats, args.warmup)
    row["deepsparse_us"], row["deepsparse_min_us"] = round(med, 2), round(low, 2)
    engine = None  # frees the engine and its worker threads before ONNX Runtime runs
    gc.collect()

    if ort is not None and not args.no_ort:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: x}
        out = None if check_x is None else sess.run(None, {INPUT_NAME: check_x})[0]
        _check(row, "ort", out, ref_y, args)
        med, low = time_us(lambda: sess.run(None, feed), args.repeats, args.warmup)
        row["ort_us"], row["ort_min_us"] = round(med, 2), round(low, 2)
        sess = None
        gc.collect()
    return row


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` atomically (a temporary file, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, type=Path, help="directory of *.onnx files")
    p.add_argument("--only", default="", help="comma-separated file stems (default: all)")
    p.add_argument("--threads", type=_ints, default=[1], help="comma list, e.g. 1,2")
    p.add_argument("--batches", type=_ints, default=[1, 8, 64, 256], help="comma list")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument(
        "--atol", type=float, default=1e-3, help="largest |error| vs the .npz counted as right"
    )
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime even if installed")
    p.add_argument("--json", type=Path, help="write the results here (atomically)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")

    files = sorted(args.models.glob("*.onnx"))
    only = [s for s in args.only.split(",") if s]
    if only:
        missing = sorted(set(only) - {f.stem for f in files})
        if missing:
            p.error(f"no {missing} in {args.models} (found {[f.stem for f in files]})")
        files = [f for f in files if f.stem in only]
    if not files:
        p.error(f"no *.onnx files in {args.models}")

    use_ort = ort is not None and not args.no_ort
    result: dict[str, Any] = {
        "deepsparse_version": deepsparse.__version__,
        "onnxruntime_version": ort.__version__ if use_ort else None,
        "numpy_version": np.__version__,
        "onnx_version": onnx.__version__,
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "timing": "per run: DeepSparse block then ONNX Runtime block (not interleaved), "
        "wall time per call of engine.run([x], val_inp=False) / session.run; *_us medians, "
        "*_min_us minima, microseconds",
        "runs": [],
    }
    print(
        f"deepsparse {result['deepsparse_version']}, onnxruntime "
        f"{result['onnxruntime_version'] or '-'}, {result['cpu'].get('model_name', '?')} "
        f"({result['cpu'].get('isa', '?')})",
        flush=True,
    )
    failures = 0
    for path in files:
        try:
            shape = input_shape(path)
        except Exception as exc:
            shape = None
            error = f"{type(exc).__name__}: {exc}"
        npz = path.with_suffix(".npz")
        ref = None
        if shape is not None and npz.exists():
            with np.load(npz) as data:
                ref = (data["input"].astype(np.float32), data["output"])
        for threads in args.threads:
            for batch in args.batches:
                if shape is None:
                    row = {"model": path.stem, "threads": threads, "batch": batch}
                    row["error"] = error
                else:
                    try:
                        row = bench_one(path, shape, threads, batch, args, ref)
                    except Exception as exc:
                        row = {"model": path.stem, "threads": threads, "batch": batch}
                        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
                        traceback.print_exc()
                failures += "error" in row or False in (row.get("deepsparse_ok"), row.get("ort_ok"))
                result["runs"].append(row)
                print(_line(row), flush=True)
                if args.json:
                    write_json(args.json, result)
    return 1 if failures else 0


def _err_text(row: dict[str, Any], prefix: str) -> str:
    err = row[f"{prefix}_max_abs_err"]
    if err is None:
        return ""
    text = f" err {err:.1e}" if isinstance(err, float) else f" err {err}"
    return text + ("" if row[f"{prefix}_ok"] else " WRONG")


def _line(row: dict[str, Any]) -> str:
    head = f"{row['model']:>12} T={row['threads']} B={row['batch']:<4}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    text = (
        f"{head} deepsparse {row['deepsparse_us']:>10.1f} us (min {row['deepsparse_min_us']:.1f})"
    )
    text += _err_text(row, "deepsparse")
    if "ort_us" in row:
        text += f" | ort {row['ort_us']:>10.1f} us (min {row['ort_min_us']:.1f})"
        text += _err_text(row, "ort")
    return text


if __name__ == "__main__":
    sys.exit(main())
