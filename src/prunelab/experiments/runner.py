"""Run a Han pipeline from a config into a run directory, and evaluate saved models.

A run directory holds:

* ``config.yaml`` — the resolved configuration;
* ``log.jsonl`` — one JSON record per epoch (phase, iteration, loss, train/val accuracy,
  lr, sparsity per layer) and per event (prune, dead neurons, dropout rule, best epoch);
* ``checkpoint.safetensors`` — the latest checkpoint (written atomically every epoch);
* ``dense_model.safetensors`` and ``model.safetensors`` — the dense and the final pruned
  model files;
* ``summary.json`` and ``layers.md`` — the results (errors in percent) beside the paper's.

Example:
    >>> from prunelab.config import parse_config
    >>> cfg = parse_config({"model": {"name": "lenet300"}, "data": {"subset": 200},
    ...     "train": {"epochs": 1}, "prune": {"schedule": [{"q": 1.0, "epochs": 1}]}})
    >>> import tempfile
    >>> summary = run_han(cfg, tempfile.mkdtemp(), quiet=True)
    >>> sorted(k for k in summary if k.startswith("test_error"))
    ['test_error_dense', 'test_error_pruned']
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import RunConfig, config_hash
from ..data import DatasetSplits, load_dataset
from ..masks import load_pruned_state_dict
from ..metrics import ModelStats, model_stats
from ..modelfile import load_model_file, save_model_file
from ..models import build_model
from ..paper import PAPER
from ..progress import JsonlLog, RichReporter
from ..training import evaluate
from .han import CHECKPOINT_NAME, HanPipeline, TensorData

__all__ = [
    "RunDirectoryError",
    "evaluate_model_file",
    "layer_table_markdown",
    "load_data",
    "run_han",
]


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds another run)."""


def load_data(
    name: str, root: str | None, *, val_size: int, seed: int, subset: int | None = None
) -> tuple[DatasetSplits, float, float]:
    """Load a dataset un-normalised and return it with its training mean and std."""
    ds = load_dataset(name, root, val_size=val_size, seed=seed, normalize=False, subset=subset)
    return ds, float(ds.mean), float(ds.std)


def _norm(x: torch.Tensor, mean: float, std: float, mode: str = "standard") -> torch.Tensor:
    """``(x - mean) / std`` (standard) or ``x / std`` (scale: zero pixels stay zero)."""
    if mode == "scale":
        return x / std
    if mode != "standard":
        raise ValueError(f"normalize={mode!r} is unknown; allowed: standard, scale")
    return (x - mean) / std


def _test_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _, acc = evaluate(model, x, y)
    return 100.0 * (1.0 - acc)


def run_han(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    after_run: Any = None,
) -> dict[str, Any]:
    """Run the pipeline of ``cfg`` into ``out_dir`` and return the summary.

    Args:
        cfg: validated configuration.
        out_dir: run directory (created).
        resume: continue from ``out_dir``'s checkpoint; without it an existing checkpoint
            is an error (so a finished or running run is never overwritten by accident).
        quiet: no progress output.
        after_run: optional callable ``(out_dir, summary)`` (e.g. the report writer).

    Raises:
        RunDirectoryError: ``out_dir`` holds a checkpoint and ``resume`` is false, or holds
            a run of another configuration.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = out / CHECKPOINT_NAME
    if ck.exists() and not resume:
        raise RunDirectoryError(
            f"{str(out)!r} already holds a run (checkpoint {ck.name}); pass --resume to "
            "continue it or choose another --out"
        )
    cfg_path = out / "config.yaml"
    resolved = cfg.model_dump(mode="json")
    if resume and cfg_path.exists():
        saved = yaml.safe_load(cfg_path.read_text())
        if saved != resolved:
            raise RunDirectoryError(
                f"{str(out)!r} holds a run of another configuration; resume it with the "
                "same config (and seed) or choose another --out"
            )
    cfg_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ds, mean, std = load_data(cfg.data.name, cfg.data.root, val_size=cfg.data.val_size,
                              seed=cfg.seed, subset=cfg.data.subset)
    device = torch.device(cfg.device)
    mode = cfg.data.normalize
    data = TensorData(_norm(ds.train.images, mean, std, mode), ds.train.labels,
                      _norm(ds.val.images, mean, std, mode), ds.val.labels)
    x_test = _norm(ds.test.images, mean, std, mode).to(device)
    y_test = ds.test.labels.to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, **cfg.model.kwargs)
    log = JsonlLog(out / "log.jsonl")
    reporter = RichReporter(quiet=quiet, log=log)
    pipe = HanPipeline(model, cfg, data, run_dir=out, reporter=reporter)
    restored = pipe.restore() if resume else False
    log.rewrite(
        sorted(pipe.history + pipe.events,
               key=lambda r: r["global_epoch"] if r["kind"] == "epoch" else r["after_epoch"] + 0.5)
        if restored else []
    )
    if restored and not quiet:
        reporter.console.print(
            f"resuming {str(out)!r} at phase {pipe.phase}, epoch {pipe.epoch_done}"
        )
    result = pipe.run()
    dataset_meta = {"name": cfg.data.name, "mean": mean, "std": std, "normalize": mode,
                    "val_size": cfg.data.val_size, "split_seed": cfg.seed,
                    "subset": cfg.data.subset}
    spec = cfg.model.model_dump(mode="json")

    dense = build_model(cfg.model.name, **cfg.model.kwargs).to(device)
    load_pruned_state_dict(dense, result.dense_state)
    dense_stats = model_stats(dense, pipe.example)
    save_model_file(out / "dense_model.safetensors", dense, spec, dataset=dataset_meta)
    test_error_dense = _test_error(dense, x_test, y_test)
    test_error_pruned = _test_error(result.model, x_test, y_test)
    summary = _summary(cfg, result.stats, dense_stats, test_error_dense, test_error_pruned,
                       result, time.perf_counter() - t_start, restored)
    save_model_file(out / "model.safetensors", result.model, spec, dataset=dataset_meta,
                    extra={"summary": {k: summary[k] for k in
                                       ("test_error_pruned", "params_total", "params_nonzero")}})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    (out / "layers.md").write_text(layer_table_markdown(summary))
    if after_run is not None:
        after_run(out, summary)
    return summary


def _summary(
    cfg: RunConfig,
    stats: ModelStats,
    dense_stats: ModelStats,
    err_dense: float,
    err_pruned: float,
    result: Any,
    elapsed: float,
    resumed: bool,
) -> dict[str, Any]:
    dense_by_name = {layer.name: layer for layer in dense_stats.layers}
    layers = []
    for layer in stats.layers:
        d = dense_by_name.get(layer.name)
        layers.append({
            "name": layer.name, "kind": layer.kind, "shape": list(layer.shape),
            "weights": layer.weights, "nonzero": layer.nonzero,
            "weights_kept": layer.weights_kept,
            "flops_dense": layer.flops_dense, "flops_pruned": layer.flops_pruned,
            "flops_kept": layer.flops_kept,
            "input_density": layer.input_density,
            "input_density_dense": d.input_density if d else None,
        })
    dead = [e.get("dead_neurons", {}) for e in result.events if e["kind"] == "prune"]
    dropout = [e["changes"] for e in result.events if e["kind"] == "dropout"]
    return {
        "name": cfg.name,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "test_error_dense": err_dense,
        "test_error_pruned": err_pruned,
        "val_error_dense": 100.0 * (1.0 - result.dense_val_accuracy),
        "val_error_pruned": 100.0 * (1.0 - result.val_accuracy),
        "params_total": stats.params_total,
        "params_nonzero": stats.params_nonzero,
        "compression": stats.compression,
        "weights": stats.weights,
        "weights_nonzero": stats.nonzero,
        "flops_dense": stats.flops_dense,
        "flops_pruned": stats.flops_pruned,
        "flops_reduction": stats.flops_dense / stats.flops_pruned if stats.flops_pruned else None,
        "layers": layers,
        "dead_neurons": dead,
        "dropout": dropout,
        "epochs": len([h for h in result.history if h["kind"] == "epoch"]),
        "time_s": elapsed,
        "resumed": resumed,
        "device": cfg.device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _k(n: float) -> str:
    return f"{n / 1000:.1f}K" if n >= 1000 else f"{n:.0f}"


def layer_table_markdown(summary: dict[str, Any], paper_key: str | None = None) -> str:
    """The per-layer table (ours beside the paper's Table 2/3 where the paper has one).

    Example:
        >>> s = {"model": "x", "layers": [{"name": "fc", "weights": 10, "nonzero": 1,
        ...      "flops_dense": 20, "flops_pruned": 1.0, "input_density": 0.5}],
        ...      "params_total": 12, "params_nonzero": 3, "compression": 4.0,
        ...      "test_error_dense": 1.0, "test_error_pruned": 1.1}
        >>> "| fc |" in layer_table_markdown(s)
        True
    """
    paper = PAPER.get(paper_key or summary["model"])
    pl = (paper or {}).get("layers", {})
    head = ("| Layer | Weights | FLOP | Act. density % | Weights kept % | FLOP kept % |"
            + (" Paper: act. % | Paper: weights kept % | Paper: FLOP kept % |" if paper else "")
            + "\n|" + "---|" * (9 if paper else 6) + "\n")
    rows = []
    tw = tn = tf = tfp = 0.0
    dens_num = 0.0
    for layer in summary["layers"]:
        w, nz = layer["weights"], layer["nonzero"]
        f, fp = layer["flops_dense"], layer["flops_pruned"]
        tw, tn, tf, tfp = tw + w, tn + nz, tf + f, tfp + fp
        dens_num += layer["input_density"] * f
        row = (f"| {layer['name']} | {_k(w)} | {_k(f)} | {100 * layer['input_density']:.0f} | "
               f"{100 * nz / w:.1f} | {100 * fp / f:.1f} |")
        if paper:
            p = pl.get(layer["name"], {})
            row += (f" {p.get('act_density', '—')} | {p.get('weights_kept', '—')} | "
                    f"{p.get('flops_kept', '—')} |")
        rows.append(row)
    total = (f"| **total** | {_k(tw)} | {_k(tf)} | {100 * dens_num / tf:.0f} | "
             f"{100 * tn / tw:.1f} | {100 * tfp / tf:.1f} |")
    if paper:
        t = paper["total"]
        total += f" {t['act_density']} | {t['weights_kept']} | {t['flops_kept']} |"
    rows.append(total)
    lines = [f"# {summary.get('name', summary['model'])}: per-layer table\n",
             head + "\n".join(rows) + "\n"]
    lines.append(
        f"\nParameters (biases included): {summary['params_total']:,} total, "
        f"{summary['params_nonzero']:,} nonzero, compression {summary['compression']:.1f}x"
        + (f" (paper: {paper['params_total']:,} -> {paper['params_nonzero']:,}, "
           f"{paper['compression']}x)" if paper else "")
        + f".\n\nTest error: dense {summary['test_error_dense']:.2f}% -> pruned "
        f"{summary['test_error_pruned']:.2f}%"
        + (f" (paper: {paper['test_error_dense']:.2f}% -> {paper['test_error_pruned']:.2f}%)"
           if paper else "")
        + ".\n\nWeights exclude biases; FLOP = 2 x MAC per image; FLOP kept = weights kept x "
        "measured input-activation density (on 256 validation images).\n"
    )
    return "".join(lines)


def evaluate_model_file(
    path: str | Path, *, data_root: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Test error (percent) and parameter counts of a saved model or compact export.

    Args:
        path: a model file (``model.safetensors``) or a compact export file.
        data_root: dataset root (default: the shipped data / ``PRUNELAB_DATA``).
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``{"test_error", "params_total", "params_nonzero", ...}``.

    Raises:
        prunelab.checkpoint.CheckpointError: not a prunelab model file.
    """
    model, meta = load_any_model(path, device=device)
    ds_meta = meta.get("dataset") or {}
    name = ds_meta.get("name", "mnist")
    ds = load_dataset(name, data_root, val_size=int(ds_meta.get("val_size", 5000)),
                      seed=int(ds_meta.get("split_seed", 0)), normalize=False,
                      subset=ds_meta.get("subset"))
    mean, std = float(ds_meta.get("mean", ds.mean)), float(ds_meta.get("std", ds.std))
    x = _norm(ds.test.images, mean, std, ds_meta.get("normalize", "standard")).to(device)
    y = ds.test.labels.to(device)
    err = _test_error(model, x, y)
    stats = model_stats(model, x[:256])
    return {"test_error": err, "params_total": stats.params_total,
            "params_nonzero": stats.params_nonzero, "compression": stats.compression,
            "model": meta["model"]["name"], "dataset": name, "stats": stats}


def load_any_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model file, or a compact export (Han relative-index, CSR, dense) of one.

    Raises:
        prunelab.checkpoint.CheckpointError: not a prunelab model or export file.
    """
    from ..checkpoint import CheckpointError
    from ..export import ExportFormatError, load_compact

    try:
        return load_model_file(path, device=device)
    except CheckpointError as exc:
        try:
            state, info = load_compact(path)
        except (ExportFormatError, FileNotFoundError):
            raise exc from None
    if "model" not in info:
        raise CheckpointError(f"{str(path)!r} is a compact export without a model description")
    model = build_model(info["model"]["name"], **info["model"].get("kwargs", {}))
    model.load_state_dict(state)
    return model.to(device), info
