"""Benchmark sparse CPU inference of pruned layers and models against dense.

Two parts, measured in one run, interleaved (each repeat times every variant once), medians:

(a) single FC layers with the shapes and densities of the paper's big nets (AlexNet / VGG-16
    fc6-fc8, random masks), batch 1, 8, 64 and 256: dense ``F.linear`` vs torch's own CSR
    (``W.to_sparse_csr()``, int64 indices, ``torch.sparse.mm(csr, x.T)``) vs MKL CSR with
    int32 indices (:class:`~prunelab.runtime.SparseLinear`) vs SciPy's CSR (if installed) vs
    ONNX Runtime on the dense layer (if installed) vs **prunelab's C++ kernels**
    (:class:`~prunelab.runtime.PackedLinear`); the weight bytes each format streams per call
    (the memory-traffic bound of a batch-1 GEMV), the FLOP bound ``1 / density`` of batched
    products, and Deep Compression's measured speedups. At batch 1 an ablation separates the
    index-width and the mv-vs-mm effects and includes a pure-torch gather formulation.
(b) whole models via :func:`bench_models`: dense (pruning made permanent) vs masked
    (``torch.nn.utils.prune`` hooks) vs :func:`~prunelab.runtime.compile_sparse`.

Usage::

    python benchmarks/bench_sparse_inference.py --json out.json --md out.md
    python benchmarks/bench_sparse_inference.py --quick

Threads: ``torch.get_num_threads()`` of the machine unless ``--threads`` is given; the value
used is recorded in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn.utils import prune

from prunelab.runtime import (
    PackedLinear,
    SparseLinear,
    compile_sparse,
    csr_bytes,
    deepcopy_pruned,
    dense_weight_bytes,
    make_pruning_permanent,
    measure_samples_us,
    native,
)
from prunelab.runtime.packed import default_panel, packed_bytes
from prunelab.surgery import compact_model

try:
    import scipy.sparse as scipy_sparse
except ImportError:  # optional column
    scipy_sparse = None
try:
    import onnxruntime as ort

    from prunelab.export import export_onnx
except ImportError:  # optional column
    ort = None

# (name, in_features, out_features, density, Deep Compression batch-1 speedup)
PAPER_LAYERS: list[tuple[str, int, int, float, float]] = [
    ("AlexNet fc6", 9216, 4096, 0.09, 2.45),
    ("AlexNet fc7", 4096, 4096, 0.09, 4.83),
    ("AlexNet fc8", 4096, 1000, 0.25, 1.27),
    ("VGG-16 fc6", 25088, 4096, 0.04, 9.3),
    ("VGG-16 fc7", 4096, 4096, 0.04, 9.9),
    ("VGG-16 fc8", 4096, 1000, 0.23, 1.0),
]
QUICK_LAYERS = ("AlexNet fc8", "VGG-16 fc7", "VGG-16 fc8")
DC_BATCH64_NOTE = "<1 (slower)"  # Deep Compression: at batch 64 sparse was slower everywhere


def _masked_linear_weight(
    in_f: int, out_f: int, density: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear-style init (U(-1/sqrt(in), 1/sqrt(in))) with a random mask at ``density``."""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / in_f**0.5
    w = torch.empty(out_f, in_f).uniform_(-bound, bound, generator=g)
    w.mul_(torch.rand(out_f, in_f, generator=g) < density)
    b = torch.empty(out_f).uniform_(-bound, bound, generator=g)
    return w, b


def _to_csr(w: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return w.to_sparse_csr()


def _ort_session(model: nn.Module, example: torch.Tensor, threads: int) -> Any:
    """An ONNX Runtime session for a dense module (its own threads = the torch threads)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, path, example)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # ORT's pool spins after each run by default, stealing the cores from the variant
        # timed next in the interleaved loop (seen: 2-thread medians of everything doubled)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _layer_fns(
    w: torch.Tensor,
    b: torch.Tensor,
    csr64: torch.Tensor,
    ours: SparseLinear,
    x: torch.Tensor,
    *,
    ablation: bool,
    session: Any = None,
) -> dict[str, Callable[[], Any]]:
    """The timed variants for one layer and input (ablation adds batch-1 alternatives)."""
    density = float(torch.count_nonzero(w)) / w.numel()
    packed = PackedLinear(w, b, panel=default_panel(x.shape[0], density))
    fns: dict[str, Callable[[], Any]] = {
        "dense": lambda: F.linear(x, w, b),
        # torch's own CSR as a user would write it: to_sparse_csr() (int64) + sparse.mm
        "torch_csr": lambda: torch.sparse.mm(csr64, x.t()).t() + b,
        "mkl32": lambda: ours(x),
        "prunelab": lambda: packed(x),
    }
    if scipy_sparse is not None:
        sp = scipy_sparse.csr_matrix(w.numpy())
        xn, bn = x.numpy(), b.numpy()
        fns["scipy"] = lambda: (sp @ xn.T).T + bn
    if session is not None:
        feed = {"input": x.numpy()}
        fns["ort_dense"] = lambda: session.run(None, feed)[0]
    if not ablation:
        return fns
    csr32 = ours.csr()
    col64 = csr64.col_indices()
    rows_idx = torch.repeat_interleave(torch.arange(w.shape[0]), csr64.crow_indices().diff())
    vals = csr64.values()
    x0 = x[0]

    def gather() -> torch.Tensor:
        prod = x.index_select(1, col64) * vals
        return b.expand(x.shape[0], -1).clone().index_add_(1, rows_idx, prod)

    fns |= {
        "int64_addmv": lambda: torch.addmv(b, csr64, x0).unsqueeze(0),
        "int32_mm": lambda: torch.mm(csr32, x.t()).t() + b,
        "gather_index_add": gather,
    }
    return fns


def bench_layers(
    layers: list[tuple[str, int, int, float, float]],
    *,
    batches: tuple[int, ...] = (1, 8, 64, 256),
    repeats: int = 20,
    ablation: bool = True,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time dense vs sparse variants on single layers; returns (rows, ablation rows)."""
    rows: list[dict[str, Any]] = []
    abl_rows: list[dict[str, Any]] = []
    for li, (name, in_f, out_f, density, dc) in enumerate(layers):
        w, b = _masked_linear_weight(in_f, out_f, density, seed + li)
        csr64 = _to_csr(w)  # torch's default: int64 crow/col indices
        ours = SparseLinear(w, b)
        nnz = ours.nnz
        dense_b = dense_weight_bytes(out_f, in_f)
        b64 = csr_bytes(nnz, out_f, index_bytes=8)
        b32 = csr_bytes(nnz, out_f, index_bytes=4)
        session = None
        if ort is not None:  # one session per layer: the batch dimension is dynamic
            lin = nn.Linear(in_f, out_f)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            session = _ort_session(lin, torch.zeros(1, in_f), torch.get_num_threads())
        for batch in batches:
            x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(seed + batch))
            do_abl = ablation and batch == 1
            fns = _layer_fns(w, b, csr64, ours, x, ablation=do_abl, session=session)
            with torch.inference_mode():
                ref = F.linear(x, w, b)
                errs = {
                    k: float((torch.as_tensor(f()) - ref).abs().max()) for k, f in fns.items()
                }
            samples = measure_samples_us(fns, repeats=repeats, warmup=2)
            t = {k: statistics.median(v) for k, v in samples.items()}
            tmin = {k: min(v) for k, v in samples.items()}
            panels = -(-in_f // default_panel(batch, nnz / (in_f * out_f)))
            pbytes = packed_bytes(nnz, out_f, panels)
            rows.append(
                {
                    "layer": name,
                    "in": in_f,
                    "out": out_f,
                    "batch": batch,
                    "density_target": density,
                    "density": nnz / (in_f * out_f),
                    "nnz": nnz,
                    "dense_us": t["dense"],
                    "torch_csr_us": t["torch_csr"],
                    "prunelab_us": t["prunelab"],
                    "mkl32_us": t["mkl32"],
                    "scipy_us": t.get("scipy"),
                    "ort_dense_us": t.get("ort_dense"),
                    "torch_csr_speedup": t["dense"] / t["torch_csr"],
                    "prunelab_speedup": t["dense"] / t["prunelab"],
                    "mkl32_speedup": t["dense"] / t["mkl32"],
                    "scipy_speedup": t["dense"] / t["scipy"] if "scipy" in t else None,
                    "ort_dense_speedup": t["dense"] / t["ort_dense"] if "ort_dense" in t else None,
                    "packed_bytes": pbytes,
                    "traffic_bound_packed": dense_b / pbytes,
                    "flop_bound": (in_f * out_f) / nnz if nnz else None,
                    "prunelab_vs_torch_csr": t["torch_csr"] / t["prunelab"],
                    # best-of-repeats: robust to preemption by other processes
                    "dense_min_us": tmin["dense"],
                    "torch_csr_min_us": tmin["torch_csr"],
                    "prunelab_min_us": tmin["prunelab"],
                    "torch_csr_speedup_min": tmin["dense"] / tmin["torch_csr"],
                    "prunelab_speedup_min": tmin["dense"] / tmin["prunelab"],
                    "paper_speedup": dc if batch == 1 else None,
                    "dense_bytes": dense_b,
                    "csr_int64_bytes": b64,
                    "csr_int32_bytes": b32,
                    "traffic_bound_int64": dense_b / b64,
                    "traffic_bound_int32": dense_b / b32,
                    "max_abs_err_torch_csr": errs["torch_csr"],
                    "max_abs_err_prunelab": errs["prunelab"],
                    "max_abs_err": errs,
                }
            )
            if do_abl:
                abl_rows.append(
                    {
                        "layer": name,
                        "batch": batch,
                        **{f"{k}_us": v for k, v in t.items()},
                        **{f"{k}_speedup": t["dense"] / v for k, v in t.items()},
                        **{f"{k}_min_us": v for k, v in tmin.items()},
                        **{f"{k}_speedup_min": tmin["dense"] / v for k, v in tmin.items()},
                        "max_abs_err": errs,
                    }
                )
            print(f"  {name} batch {batch}: " + ", ".join(f"{k} {v:.0f}us" for k, v in t.items()))
        del w, csr64, ours, session
    return rows, abl_rows


def lenet_300_100(seed: int = 0) -> nn.Module:
    """Stand-in LeNet-300-100 with random masks at 8% / 9% / 26% (Han et al. Table 2)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    _random_masks(net, {1: 0.08, 3: 0.09, 5: 0.26}, seed)
    return net.eval()


def lenet_5(seed: int = 0) -> nn.Module:
    """Stand-in Caffe LeNet-5 with random masks at 66% / 12% / 8% / 19% (Han et al. Table 3)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )
    _random_masks(net, {0: 0.66, 2: 0.12, 5: 0.08, 7: 0.19}, seed)
    return net.eval()


def _random_masks(net: nn.Sequential, densities: Mapping[int, float], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for idx, d in densities.items():
        mod = net[idx]
        mask = (torch.rand(mod.weight.shape, generator=g) < d).float()
        prune.custom_from_mask(mod, "weight", mask)


def _load_models(paths: list[Path]) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """Trained pruned models and 64 of their dataset's test images, normalised as in training."""
    from prunelab.data import load_dataset
    from prunelab.modelfile import load_model_file

    models: dict[str, nn.Module] = {}
    pools: dict[str, torch.Tensor] = {}
    for path in paths:
        model, meta = load_model_file(path)
        ds_meta = meta.get("dataset", {})
        ds = load_dataset(ds_meta.get("name", "mnist"), normalize=False)
        x = ds.test.images[:64]
        mean, std = float(ds_meta.get("mean", ds.mean)), float(ds_meta.get("std", ds.std))
        x = x / std if ds_meta.get("normalize") == "scale" else (x - mean) / std
        name = f"{meta['model']['name']} ({path.parent.name})"
        models[name], pools[name] = model.eval(), x
    return models, pools


def bench_models(
    models: dict[str, nn.Module],
    inputs: Mapping[str, torch.Tensor],
    *,
    batches: tuple[int, ...] = (1, 8, 64, 256),
    repeats: int = 20,
    compile_repeats: int = 15,
) -> list[dict[str, Any]]:
    """Dense vs masked vs compiled-sparse whole-model timings.

    Args:
        models: name -> pruned model (``torch.nn.utils.prune`` reparametrization, e.g. a
            loaded checkpoint); it is not modified.
        inputs: name -> a pool of samples with a batch dim (e.g. MNIST test images); batch
            ``b`` uses the first ``b`` samples (cycled if the pool is smaller).
        batches: batch sizes; the sparse runtime is compiled separately for each.

    Returns:
        One dict per (model, batch) with medians, speedups and the per-layer decisions.
    """
    rows: list[dict[str, Any]] = []
    for name, masked in models.items():
        masked = masked.eval()
        dense = make_pruning_permanent(deepcopy_pruned(masked)).eval()
        pool = inputs[name]
        # Physical surgery: dead neurons / empty channels removed, plain smaller dense layers.
        compacted, surgery = compact_model(deepcopy_pruned(masked), pool[:8], keep_masks=False)
        compacted = compacted.eval()
        session = _ort_session(dense, pool[:1], torch.get_num_threads()) if ort else None
        for batch in batches:
            idx = torch.arange(batch) % pool.shape[0]
            x = pool[idx].contiguous()
            t0 = time.perf_counter()
            sm = compile_sparse(masked, x, repeats=compile_repeats)
            compile_s = time.perf_counter() - t0
            with torch.inference_mode():
                ref = masked(x)
                err = float((sm(x) - ref).abs().max())
                err_dense = float((dense(x) - ref).abs().max())
                err_compact = float((compacted(x) - ref).abs().max())
            fns: dict[str, Callable[[], Any]] = {
                "dense": lambda x=x, m=dense: m(x),
                "masked": lambda x=x, m=masked: m(x),
                "compacted": lambda x=x, m=compacted: m(x),
                "sparse": lambda x=x, m=sm: m(x),
            }
            if session is not None:
                feed = {"input": x.numpy()}
                fns["ort_dense"] = lambda s=session, f=feed: s.run(None, f)[0]
            samples = measure_samples_us(fns, repeats=repeats, warmup=3)
            t = {k: statistics.median(v) for k, v in samples.items()}
            tmin = {k: min(v) for k, v in samples.items()}
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "dense_us": t["dense"],
                    "masked_us": t["masked"],
                    "sparse_us": t["sparse"],
                    "compacted_us": t["compacted"],
                    "compacted_speedup_vs_dense": t["dense"] / t["compacted"],
                    "compacted_units_removed": surgery.units_removed,
                    "max_abs_err_compacted_vs_masked": err_compact,
                    "speedup_vs_dense": t["dense"] / t["sparse"],
                    "ort_dense_us": t.get("ort_dense"),
                    "ort_dense_speedup": t["dense"] / t["ort_dense"] if "ort_dense" in t else None,
                    "speedup_vs_masked": t["masked"] / t["sparse"],
                    "dense_min_us": tmin["dense"],
                    "masked_min_us": tmin["masked"],
                    "sparse_min_us": tmin["sparse"],
                    "speedup_vs_dense_min": tmin["dense"] / tmin["sparse"],
                    "n_linear": len(sm.report),
                    "n_sparse": sm.n_sparse,
                    "fell_back": sm.fell_back,
                    "compile_s": compile_s,
                    # the runtime's own whole-model check (dense vs mixed) during compile
                    "compile_check_speedup": (
                        sm.dense_us / sm.sparse_us if sm.dense_us and sm.sparse_us else None
                    ),
                    "max_abs_err_vs_masked": err,
                    "max_abs_err_dense_vs_masked": err_dense,
                    "compiled": sm.as_dict(),
                }
            )
            print(
                f"  {name} batch {batch}: dense {t['dense']:.0f}us masked {t['masked']:.0f}us "
                f"sparse {t['sparse']:.0f}us ({sm.n_sparse}/{len(sm.report)} sparse)"
            )
    return rows


def _targets(layer_rows: list[dict[str, Any]], model_rows: list[dict[str, Any]]) -> list[dict]:
    out: list[dict[str, Any]] = []
    vgg = [r for r in layer_rows if r["layer"] == "VGG-16 fc6" and r["batch"] == 1]
    if vgg:
        s = vgg[0]["prunelab_speedup"]
        out.append(
            {
                "target": "VGG-16 fc6 (4%), batch 1: prunelab >= 10x faster than dense",
                "value": f"{s:.2f}x (best-of-repeats {vgg[0]['prunelab_speedup_min']:.2f}x)",
                "met": s >= 10.0,
            }
        )
    if layer_rows:
        worst = min(layer_rows, key=lambda r: r["prunelab_vs_torch_csr"])
        out.append(
            {
                "target": "prunelab at least as fast as torch's CSR (every layer, batch)",
                "value": f"min {worst['prunelab_vs_torch_csr']:.2f}x "
                f"({worst['layer']}, batch {worst['batch']})",
                "met": worst["prunelab_vs_torch_csr"] >= 1.0,
            }
        )
    rows_ds = [r for r in layer_rows + model_rows if r.get("prunelab_vs_deepsparse")]
    if rows_ds:
        worst = min(rows_ds, key=lambda r: r["prunelab_vs_deepsparse"])
        out.append(
            {
                "target": "prunelab ahead of DeepSparse (every row with a DeepSparse time)",
                "value": f"min {worst['prunelab_vs_deepsparse']:.2f}x "
                f"({worst.get('layer') or worst.get('model')}, batch {worst['batch']}); "
                f"{sum(r['prunelab_vs_deepsparse'] >= 1 for r in rows_ds)}/{len(rows_ds)} rows",
                "met": worst["prunelab_vs_deepsparse"] >= 1.0,
            }
        )
    for r in model_rows:
        ratio = r["sparse_us"] / r["dense_us"]
        same = r["n_sparse"] == 0  # fell back / nothing chosen: identical dense computation
        out.append(
            {
                "target": f"{r['model']} batch {r['batch']}: compiled not slower than dense",
                "value": f"{r['speedup_vs_dense']:.2f}x ({r['n_sparse']}/{r['n_linear']} "
                f"sparse{', all-dense' if same else ''})",
                # all-dense: same computation, any ratio != 1 is timing noise
                "met": ratio <= 1.0 or same,
            }
        )
    return out


def _stem(name: str) -> str:
    """File stem of a layer/model in the DeepSparse JSON: 'VGG-16 fc6' -> 'vgg16_fc6'."""
    base = name.split(" (")[0].lower().replace("-", "")
    return base.replace(" ", "_")


def merge_deepsparse(run: dict[str, Any], ds: Mapping[str, Any]) -> None:
    """Add DeepSparse times (bench_deepsparse.py, its own venv and process) to a suite's rows.

    ``deepsparse_speedup`` = this run's dense torch time / DeepSparse's time (same machine,
    threads and batch, measured minutes apart in another process); ``prunelab_vs_deepsparse``
    = DeepSparse time / prunelab time (> 1: prunelab faster).
    """
    times = {
        (r["model"], int(r["threads"]), int(r["batch"])): r
        for r in ds.get("runs", [])
        if r.get("deepsparse_us")
    }
    for kind, ours in (("layers", "prunelab_us"), ("models", "sparse_us")):
        for row in run[kind]:
            key = (_stem(row.get("layer") or row["model"]), int(run["threads"]), row["batch"])
            hit = times.get(key)
            if hit is None:
                continue
            row["deepsparse_us"] = hit["deepsparse_us"]
            row["deepsparse_min_us"] = hit.get("deepsparse_min_us")
            row["deepsparse_max_abs_err"] = hit.get("deepsparse_max_abs_err")
            if hit.get("deepsparse_ok") is False:  # a wrong result: no speed to compare
                row["deepsparse_wrong"] = True
                continue
            row["deepsparse_speedup"] = row["dense_us"] / hit["deepsparse_us"]
            row["prunelab_vs_deepsparse"] = hit["deepsparse_us"] / row[ours]


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _layer_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = [
        "layer",
        "batch",
        "density",
        "dense us",
        "prunelab us",
        "prunelab x",
        "prunelab x (min)",
        "torch CSR x",
        "MKL CSR32 x",
        "SciPy x",
        "ORT dense x",
        "DeepSparse x",
        "prunelab / DeepSparse",
        "bound x",
        "Deep Compr. x",
        "max err",
    ]
    body = [
        [
            r["layer"],
            str(r["batch"]),
            f"{100 * r['density']:.1f}%",
            _fmt(r["dense_us"], 0),
            _fmt(r["prunelab_us"], 0),
            _fmt(r["prunelab_speedup"], 2),
            _fmt(r["prunelab_speedup_min"], 2),
            _fmt(r["torch_csr_speedup"], 2),
            _fmt(r.get("mkl32_speedup"), 2),
            _fmt(r.get("scipy_speedup"), 2),
            _fmt(r.get("ort_dense_speedup"), 2),
            "wrong output" if r.get("deepsparse_wrong") else _fmt(r.get("deepsparse_speedup"), 2),
            _fmt(r.get("prunelab_vs_deepsparse"), 2),
            # batch 1: weight bytes dense / packed (memory-bound GEMV); else FLOPs 1/density
            (f"{r['traffic_bound_packed']:.1f} (mem)" if r["batch"] == 1
             else f"{_fmt(r['flop_bound'], 1)} (flop)"),
            _fmt(r["paper_speedup"], 2) if r["batch"] == 1 else DC_BATCH64_NOTE,
            f"{r['max_abs_err_prunelab']:.1e}",
        ]
        for r in rows
    ]
    return head, body


def _ablation_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    variants = [
        ("torch_csr", "torch.sparse.mm int64"),
        ("int64_addmv", "addmv int64"),
        ("int32_mm", "mm int32"),
        ("mkl32", "addmv int32 (SparseLinear)"),
        ("gather_index_add", "gather+index_add"),
        ("prunelab", "prunelab C++"),
    ]
    head = ["layer", "dense us"] + [f"{label} x" for _, label in variants]
    body = [
        [r["layer"], _fmt(r["dense_us"], 0)] + [_fmt(r.get(f"{k}_speedup"), 2) for k, _ in variants]
        for r in rows
    ]
    return head, body


def _model_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "batch",
        "dense us",
        "masked us",
        "compacted us",
        "compacted vs dense x",
        "compiled us",
        "vs dense x",
        "vs masked x",
        "vs dense x (min)",
        "sparse layers",
        "fell back",
        "compile check x",
        "ORT dense x",
        "DeepSparse x",
        "compiled / DeepSparse",
        "max err",
    ]
    body = [
        [
            r["model"],
            str(r["batch"]),
            _fmt(r["dense_us"], 1),
            _fmt(r["masked_us"], 1),
            _fmt(r.get("compacted_us"), 1),
            _fmt(r.get("compacted_speedup_vs_dense"), 2),
            _fmt(r["sparse_us"], 1),
            _fmt(r["speedup_vs_dense"], 2),
            _fmt(r["speedup_vs_masked"], 2),
            _fmt(r["speedup_vs_dense_min"], 2),
            f"{r['n_sparse']}/{r['n_linear']}",
            "yes" if r["fell_back"] else "no",
            _fmt(r["compile_check_speedup"], 2),
            _fmt(r.get("ort_dense_speedup"), 2),
            "wrong output" if r.get("deepsparse_wrong") else _fmt(r.get("deepsparse_speedup"), 2),
            _fmt(r.get("prunelab_vs_deepsparse"), 2),
            f"{r['max_abs_err_vs_masked']:.1e}",
        ]
        for r in rows
    ]
    return head, body


def _decision_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "batch", "layer", "density", "dense us", "sparse us", "chosen"]
    body = [
        [
            r["model"],
            str(r["batch"]),
            d["layer"],
            f"{100 * d['density']:.1f}%",
            _fmt(d["dense_us"], 1),
            _fmt(d["sparse_us"], 1),
            d["chosen"],
        ]
        for r in rows
        for d in r["compiled"]["layers"]
    ]
    return head, body


def _targets_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return ["target", "measured", "met"], [
        [r["target"], r["value"], "yes" if r["met"] else "NO"] for r in rows
    ]


def _rich(console: Console, title: str, head: list[str], body: list[list[str]]) -> None:
    assert all(len(row) == len(head) for row in body), title
    table = Table(title=title, show_lines=False)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)


def _md(title: str, head: list[str], body: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "loadavg_at_start": load,  # other work on the shared machine skews timings
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkl": torch.backends.mkl.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine from /proc/stat, or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def _run_suite(
    threads: int, layers: list[tuple[str, int, int, float, float]], repeats: int, args: Any
) -> dict[str, Any]:
    """Layers + models + targets at one thread count; reports other load on the machine."""
    torch.set_num_threads(threads)
    print(f"== torch threads: {torch.get_num_threads()}")
    stat0, own0, t0 = _proc_stat(), time.process_time(), time.perf_counter()
    print("Single layers")
    layer_rows, abl_rows = bench_layers(
        layers, batches=args.batches, repeats=repeats, ablation=not args.quick, seed=args.seed
    )
    if args.model_file:
        print("Whole models (trained pruned models, MNIST test images)")
        models, pools = _load_models(args.model_file)
    else:
        print("Whole models (random-mask stand-ins)")
        models = {"LeNet-300-100": lenet_300_100(args.seed), "LeNet-5": lenet_5(args.seed)}
        pool = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
        pools = dict.fromkeys(models, pool)
    model_rows = bench_models(
        models, pools, batches=args.batches, repeats=repeats, compile_repeats=max(5, repeats)
    )
    elapsed = time.perf_counter() - t0
    stat1, own = _proc_stat(), time.process_time() - own0
    other = None
    if stat0 and stat1 and stat1[1] > stat0[1]:
        # share of the machine's CPU time used by *other* processes while we measured
        other = max(0.0, (stat1[0] - stat0[0] - own) / (stat1[1] - stat0[1]))
    run = {
        "threads": torch.get_num_threads(),
        "elapsed_s": elapsed,
        "other_cpu_load": other,
        "layers": layer_rows,
        "ablation_batch1": abl_rows,
        "models": model_rows,
    }
    if args.deepsparse_json:
        merge_deepsparse(run, json.loads(args.deepsparse_json.read_text()))
    run["targets"] = _targets(layer_rows, model_rows)
    return run


def _suite_tables(run: dict[str, Any]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    n = run["threads"]
    return [
        (f"[{n} thr] FC layers: speedup over dense F.linear", _layer_table(run["layers"])),
        (f"[{n} thr] Batch-1 ablation (speedup vs dense)", _ablation_table(run["ablation_batch1"])),
        (f"[{n} thr] Whole models", _model_table(run["models"])),
        (f"[{n} thr] compile_sparse decisions", _decision_table(run["models"])),
        (f"[{n} thr] Targets", _targets_table(run["targets"])),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per variant")
    ap.add_argument("--json", type=Path, default=None, help="write all results as JSON")
    ap.add_argument("--md", type=Path, default=None, help="write the tables as Markdown")
    ap.add_argument("--quick", action="store_true", help="3 layers, few repeats, no ablation")
    ap.add_argument(
        "--threads",
        default=None,
        help="comma list of torch thread counts, each a full suite (default: the machine's)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--model-file", action="append", type=Path, default=[],
        help="a prunelab model file (repeatable); whole-model rows then use the trained pruned "
        "models on MNIST test images instead of random-mask stand-ins",
    )
    ap.add_argument(
        "--batches", default="1,8,64,256", help="comma list of batch sizes (default 1,8,64,256)"
    )
    ap.add_argument(
        "--deepsparse-json", type=Path, default=None,
        help="results of benchmarks/bench_deepsparse.py (run in its own venv) to add as a column",
    )
    args = ap.parse_args(argv)
    args.batches = tuple(int(b) for b in args.batches.split(","))

    default_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [default_threads]
    repeats = args.repeats or (5 if args.quick else 20)
    layers = [ly for ly in PAPER_LAYERS if not args.quick or ly[0] in QUICK_LAYERS]
    console = Console(width=220)
    machine = _machine() | {"default_torch_threads": default_threads}
    command = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    console.print(f"torch {machine['torch']}, {machine['cpu']}, {machine['cpu_count']} cores")
    machine["sparse_kernels"] = native.status_line()
    console.print(machine["sparse_kernels"])

    runs = [_run_suite(n, layers, repeats, args) for n in threads]
    torch.set_num_threads(default_threads)
    for run in runs:
        for title, (head, body) in _suite_tables(run):
            if body:
                _rich(console, title, head, body)
        load = run["other_cpu_load"]
        console.print(
            f"[{run['threads']} thr] {run['elapsed_s']:.0f} s; other processes used "
            f"{'?' if load is None else f'{100 * load:.0f}%'} of the machine's CPU meanwhile"
        )

    result = {
        "command": command,
        "machine": machine,
        "repeats": repeats,
        "seed": args.seed,
        "timing": "interleaved repeats (prunelab.runtime.measure_samples_us); *_us are medians, "
        "*_min_us the best sample",
        "runs": runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        parts = [
            "# Sparse inference benchmark\n\n"
            f"Command: `{command}`\n\n"
            f"Machine: {machine['cpu']}, {machine['cpu_count']} CPU cores (shared), torch "
            f"{machine['torch']} (MKL {machine['mkl']}), default {default_threads} torch "
            f"threads, Python {machine['python']}. Load average at start "
            f"{machine['loadavg_at_start']}. Repeats: {repeats} interleaved, medians. "
            f"{machine['sparse_kernels']}.\n\n"
            "Speedups are dense torch time / variant time in the same run (interleaved). "
            "`bound` at batch 1 = dense weight bytes / prunelab's packed bytes (values + 16-bit "
            "indices + row pointers): what a purely memory-bound GEMV could reach; at larger "
            "batches = 1 / density, the FLOP ratio. Speedups use medians; `(min)` columns use "
            "the best of the repeats of each variant (less sensitive to preemption by other "
            "processes on a shared machine). Layers have random masks; whole models are the "
            "files given with --model-file (else random-mask stand-ins). DeepSparse columns "
            "come from benchmarks/bench_deepsparse.py in its own virtualenv and process "
            "(same machine, threads and batch, minutes apart): `prunelab / DeepSparse` = "
            "DeepSparse time / prunelab time, > 1 means prunelab is faster.\n"
        ]
        for run in runs:
            load = run["other_cpu_load"]
            parts.append(
                f"\n## torch threads = {run['threads']}\n\n"
                f"{run['elapsed_s']:.0f} s; other processes used "
                f"{'?' if load is None else f'{100 * load:.0f}%'} of the machine's CPU "
                "during this suite.\n\n"
            )
            parts += [_md(t, h, b) + "\n" for t, (h, b) in _suite_tables(run) if b]
        args.md.write_text("".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
