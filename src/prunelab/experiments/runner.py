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
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import remove_stale_temp_files, write_text_atomic
from ..config import RunConfig, config_hash
from ..data import TensorSplits
from ..devices import resolve_device
from ..distributed import DistContext, broadcast_object, init_from_env, shutdown, world_size
from ..masks import load_pruned_state_dict
from ..metrics import ModelStats, model_stats
from ..modelfile import save_model_file
from ..models import build_model
from ..progress import JsonlLog, RichReporter
from ..records import DropoutEvent, EpochRecord, PruneEvent
from ..report.tables import layer_table_markdown
from .evaluation import open_splits, split_test_error
from .han import CHECKPOINT_NAME, HanPipeline
from .rundir import RunDirectoryError, open_run_dir

__all__ = ["run_han"]


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

    Temporary files that an interrupted write left in ``out_dir`` are removed first.

    Raises:
        RunDirectoryError: ``out_dir`` is a file or lies under one, holds a checkpoint and
            ``resume`` is false, holds no checkpoint and ``resume`` is true, or holds a run
            of another configuration.
        prunelab.errors.DeviceError: ``cfg.device`` is not on this machine.
    """
    if os.environ.get("LOCAL_RANK") is None:  # torchrun gives each rank its own cuda:N
        resolve_device(cfg.device)
    ctx = init_from_env(cfg.device)
    try:
        return _run(cfg, Path(out_dir), resume=resume, quiet=quiet, after_run=after_run,
                    ctx=ctx)
    finally:
        if ctx is not None:
            shutdown()


def _resume_problem(
    out: Path, ck: Path, cfg_path: Path, resolved: dict[str, Any], resume: bool
) -> str | None:
    """Why ``out`` cannot be (re)started as asked, as one line; ``None`` when it can."""
    if ck.exists() and not resume:
        return (f"{str(out)!r} already holds a run (checkpoint {ck.name}); pass --resume to "
                "continue it or choose another --out")
    if resume and not ck.exists():
        return (f"--resume: {str(out)!r} holds no checkpoint ({ck.name}) to continue from; "
                "run without --resume to start the run afresh")
    if resume and cfg_path.exists():
        try:
            saved = yaml.safe_load(cfg_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            saved = None
        if saved != resolved:
            return (f"{str(out)!r} holds a run of another configuration; resume it with the "
                    "same config (and seed) or choose another --out")
    return None


def _run(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool,
    quiet: bool,
    after_run: Any,
    ctx: DistContext | None,
) -> dict[str, Any]:
    writer = ctx is None or ctx.is_writer
    quiet = quiet or not writer
    ck = out / CHECKPOINT_NAME
    cfg_path = out / "config.yaml"
    resolved = cfg.model_dump(mode="json")
    problem: str | None = None
    if writer:
        problem = open_run_dir(out)
        if problem is None:
            remove_stale_temp_files(out)
            problem = _resume_problem(out, ck, cfg_path, resolved, resume)
        if problem is None:
            write_text_atomic(cfg_path, yaml.safe_dump(resolved, sort_keys=False))
    # the other ranks learn rank 0's verdict, and read the run directory only after it
    problem = broadcast_object(problem)
    if problem is not None:
        raise RunDirectoryError(problem)
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = ctx.device if ctx is not None else torch.device(cfg.device)
    splits = open_splits(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, **cfg.model.kwargs)
    log = JsonlLog(out / "log.jsonl") if writer else None
    reporter = RichReporter(quiet=quiet, log=log)
    pipe = HanPipeline(model, cfg, splits, run_dir=out, reporter=reporter)
    restored = pipe.restore() if resume else False
    if log is not None:
        records = sorted(
            [*pipe.history, *pipe.events],
            key=lambda r: r.global_epoch if isinstance(r, EpochRecord) else r.after_epoch + 0.5,
        )
        log.rewrite([r.to_dict() for r in records] if restored else [])
    if restored and not quiet:
        reporter.console.print(
            f"resuming {str(out)!r} at phase {pipe.phase}, epoch {pipe.epoch_done}"
        )
    result = pipe.run()
    dense = build_model(cfg.model.name, **cfg.model.kwargs).to(device)
    load_pruned_state_dict(dense, result.dense_state)
    # every rank takes part (a data-parallel run evaluates its shard of the test set)
    test_error_dense = split_test_error(dense, splits, cfg.eval_batch_size, device)
    test_error_pruned = split_test_error(result.model, splits, cfg.eval_batch_size, device)
    if not writer:  # every file is rank 0's
        return {}
    m = splits.meta
    if isinstance(splits, TensorSplits):
        dataset_meta = {k: m[k] for k in ("name", "mean", "std", "normalize", "val_size",
                                          "split_seed", "subset")}
    else:
        dataset_meta = dict(m)
    spec = cfg.model.model_dump(mode="json")
    dense_stats = model_stats(dense, pipe.example)
    save_model_file(out / "dense_model.safetensors", dense, spec, dataset=dataset_meta)
    summary = _summary(cfg, result.stats, dense_stats, test_error_dense, test_error_pruned,
                       result, time.perf_counter() - t_start, restored)
    save_model_file(out / "model.safetensors", result.model, spec, dataset=dataset_meta,
                    extra={"summary": {k: summary[k] for k in
                                       ("test_error_pruned", "params_total", "params_nonzero")}})
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, sort_keys=False) + "\n")
    write_text_atomic(out / "layers.md", layer_table_markdown(summary))
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
    dead = [e.dead_neurons or {} for e in result.events if isinstance(e, PruneEvent)]
    dropout = [e.changes for e in result.events if isinstance(e, DropoutEvent)]
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
        "epochs": len(result.history),
        "time_s": elapsed,
        "resumed": resumed,
        "device": cfg.device,
        "world_size": world_size(),
        "precision": cfg.train.precision,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
