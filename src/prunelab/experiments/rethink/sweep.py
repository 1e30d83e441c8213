"""Run a whole sweep resumably, and aggregate it into a table, a JSON and a plot.

A sweep directory holds:

* ``config.yaml`` -- the resolved configuration of the last run;
* ``large/<hash>.safetensors`` (+ ``.init.safetensors``, ``.json``) -- cached large models;
* ``cells/<hash>.json`` -- one finished cell (method, ratio, seed, baseline), written
  atomically when it is done. The hash is :func:`prunelab.experiments.rethink.protocol.key_hash` of
  :func:`~prunelab.experiments.rethink.protocol.cell_key`, i.e. of everything that determines the
  result, so a rerun skips every cell whose file exists and never redoes it, and a changed
  setting gives new hashes only to the cells it affects;
* ``runs.jsonl`` -- one line per invocation (wall time, cells run and skipped);
* ``results.json``, ``table.md``, ``plot.png`` -- the aggregate (:func:`write_report`).

Example:
    >>> from prunelab.experiments.rethink.config import parse_rethink_config
    >>> cfg = parse_rethink_config({"model": {"name": "vgg_small"}, "large": {"epochs": 2},
    ...     "seeds": [0, 1], "methods": [{"kind": "l1_filter", "ratios": [0.3, 0.6]},
    ...     {"kind": "magnitude", "ratios": [0.9], "baselines": ["finetune", "lottery"]}]})
    >>> len(plan_cells(cfg))  # 2 seeds x (2 ratios x 3 baselines + 1 ratio x 2 baselines)
    16
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ...atomic import write_text_atomic
from ...config import read_yaml_mapping
from ...data import TensorSplits
from ...report.rethink import plot_results, table_markdown
from ..rundir import RunDirectoryError
from . import protocol
from .config import MethodConfig, RethinkConfig, parse_rethink_config

__all__ = [
    "Cell",
    "SweepResult",
    "aggregate",
    "load_cells",
    "plan_cells",
    "run_sweep",
    "write_report",
]

CELLS_DIR = "cells"
LARGE_DIR = "large"


@dataclass(frozen=True)
class Cell:
    """One unit of work and its identity."""

    method: MethodConfig
    ratio: float
    seed: int
    baseline: str
    hash: str

    @property
    def filename(self) -> str:
        """``<hash>.json``."""
        return f"{self.hash}.json"

    def describe(self) -> str:
        """``l1_filter 0.3 seed 0 scratch_b``."""
        return f"{self.method.name} {self.ratio:g} seed {self.seed} {self.baseline}"


def plan_cells(cfg: RethinkConfig) -> list[Cell]:
    """Every cell of the sweep, in run order (seed, method, ratio, baseline)."""
    out = []
    for seed in cfg.seeds:
        for m in cfg.methods:
            for r in m.ratios:
                for b in cfg.baselines_of(m):
                    out.append(Cell(m, r, seed, b,
                                    protocol.key_hash(protocol.cell_key(cfg, m, r, seed, b))))
    return out


@dataclass(frozen=True)
class SweepResult:
    """What one invocation of :func:`run_sweep` did."""

    out_dir: Path
    cells_total: int
    cells_run: int
    cells_skipped: int
    large_trained: int
    large_loaded: int
    wall_s: float
    report: dict[str, Any] | None


class _Progress:
    """Rich progress (a bar over the cells and a line per cell), or silence."""

    def __init__(self, total: int, done: int, quiet: bool, console: Any = None) -> None:
        self.quiet = quiet
        self.bar = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console(stderr=True)
        self.bar = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            console=self.console, transient=True)
        self.task = self.bar.add_task("cells", total=total, completed=done, info="")
        self.bar.start()

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)

    def info(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, info=text)

    def epoch(self, what: str) -> Callable[[dict[str, Any]], None]:
        def on_epoch(rec: dict[str, Any]) -> None:
            self.info(f"{what}: epoch {rec['epoch']}/{rec['epochs']} loss {rec['loss']:.3f}")

        return on_epoch

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _large_groups(cfg: RethinkConfig) -> dict[str, MethodConfig]:
    """One representative method per distinct large model (by large-key hash, seed 0)."""
    out: dict[str, MethodConfig] = {}
    for m in cfg.methods:
        out.setdefault(protocol.key_hash(protocol.large_key(cfg, m, 0)), m)
    return out


def run_sweep(
    cfg: RethinkConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    data: TensorSplits | None = None,
    report: bool = True,
    console: Any = None,
) -> SweepResult:
    """Run every cell of ``cfg`` not yet in ``out_dir``, then aggregate.

    Args:
        cfg: the sweep configuration.
        out_dir: sweep directory (created).
        resume: continue a sweep directory that already holds cells. Finished cells
            (recognised by their hash) are skipped, cached large models reused.
        quiet: no progress output.
        data: pre-loaded data (default: loaded from ``cfg.data``).
        report: write ``results.json``, ``table.md`` and ``plot.png`` at the end.
        console: a rich console for the progress output.

    Returns:
        :class:`SweepResult`.

    Raises:
        RunDirectoryError: ``out_dir`` holds cells and ``resume`` is false.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    cells_dir, large_dir = out / CELLS_DIR, out / LARGE_DIR
    if cells_dir.is_dir() and any(cells_dir.glob("*.json")) and not resume:
        raise RunDirectoryError(
            f"{str(out)!r} already holds a sweep (cells/); pass --resume to continue it "
            "(finished cells are skipped) or choose another --out"
        )
    cells_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml",
                      yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    cells = plan_cells(cfg)
    done = {c.hash for c in cells if (cells_dir / c.filename).is_file()}
    skipped = len(done)
    progress = _Progress(len(cells), len(done), quiet, console)
    counts = {"run": 0, "large_trained": 0, "large_loaded": 0}
    try:
        if len(done) < len(cells):
            if data is None:
                data = protocol.load_rethink_data(cfg)
            _run_cells(cfg, data, cells, done, cells_dir, large_dir, progress, counts)
    finally:
        progress.stop()
        wall = time.perf_counter() - t_start
        with (out / "runs.jsonl").open("a") as fh:
            fh.write(json.dumps({
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": wall,
                "cells_total": len(cells), "cells_run": counts["run"],
                "cells_skipped": skipped, "large_trained": counts["large_trained"],
                "threads": torch.get_num_threads(), "torch": torch.__version__,
            }, sort_keys=True) + "\n")
    rep = write_report(out, cfg) if report else None
    if not quiet:
        from rich.console import Console

        (console or Console(stderr=True)).print(
            f"sweep {str(out)!r}: {counts['run']} cells run, {skipped} skipped "
            f"(already done), {counts['large_trained']} large models trained, "
            f"{wall / 60:.1f} min"
        )
    return SweepResult(out, len(cells), counts["run"], skipped, counts["large_trained"],
                       counts["large_loaded"], time.perf_counter() - t_start, rep)


def _run_cells(
    cfg: RethinkConfig,
    data: TensorSplits,
    cells: Sequence[Cell],
    done: set[str],
    cells_dir: Path,
    large_dir: Path,
    progress: _Progress,
    counts: dict[str, int],
) -> None:
    example = data.example(cfg.example_size)
    for seed in cfg.seeds:
        for method in cfg.methods:
            todo = [c for c in cells if c.seed == seed and c.method is method
                    and c.hash not in done]
            if not todo:
                continue
            what = f"large model for {method.name}, seed {seed}"
            large = protocol.get_large_model(cfg, data, method, seed, cache_dir=large_dir,
                                             on_epoch=progress.epoch(what))
            counts["large_loaded" if large.cached else "large_trained"] += 1
            if not large.cached:
                progress.print(
                    f"[cyan]large model[/] {method.name} seed {seed}: test error "
                    f"{large.info['test_error']:.2f}% ({large.info['time_s']:.0f}s)"
                )
            for ratio in method.ratios:
                todo_r = [c for c in todo if c.ratio == ratio]
                if not todo_r:
                    continue
                pruned = protocol.prune(large.model, method, ratio, example, seed=seed)
                for cell in todo_r:
                    rec = protocol.run_baseline(cfg, data, large, pruned, cell.baseline, seed,
                                                on_epoch=progress.epoch(cell.describe()))
                    rec["hash"] = cell.hash
                    rec["key"] = protocol.cell_key(cfg, method, ratio, seed, cell.baseline)
                    protocol.write_json_atomic(cells_dir / cell.filename, rec)
                    done.add(cell.hash)
                    counts["run"] += 1
                    progress.advance()
                    progress.print(
                        f"{cell.describe()}: {rec['epochs']} epochs, test error "
                        f"{rec['test_error']:.2f}%, {rec['flops'] / 1e6:.2f} MFLOPs "
                        f"({rec['time_s']:.0f}s)"
                    )


# ----------------------------------------------------------------------------- aggregation


def load_cells(out_dir: str | Path, cfg: RethinkConfig) -> tuple[list[tuple[Cell, dict]], int]:
    """The finished cells of ``cfg``'s plan found in ``out_dir``, and how many are missing."""
    cells_dir = Path(out_dir) / CELLS_DIR
    found, missing = [], 0
    for c in plan_cells(cfg):
        p = cells_dir / c.filename
        if p.is_file():
            found.append((c, json.loads(p.read_text())))
        else:
            missing += 1
    return found, missing


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _large_infos(out_dir: Path, cfg: RethinkConfig) -> dict[str, list[dict[str, Any]]]:
    """``{large-group hash: [info per seed found]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for group, m in _large_groups(cfg).items():
        infos = []
        for seed in cfg.seeds:
            p = out_dir / LARGE_DIR / f"{protocol.key_hash(protocol.large_key(cfg, m, seed))}.json"
            if p.is_file():
                infos.append(json.loads(p.read_text())["info"])
        out[group] = infos
    return out


def _large_label(m: MethodConfig) -> str:
    if m.kind == "slimming":
        return f"large (L1 on BN scales {m.slimming_strength:g})"
    return "large"


def aggregate(cfg: RethinkConfig, out_dir: str | Path) -> dict[str, Any]:
    """Mean and standard deviation over seeds per (method, ratio, baseline).

    Returns:
        ``{"rows": [...], "large": [...], "missing_cells": int, "compute_s": float, ...}``.
        A row holds method, kind, ratio, baseline, n (seeds), epochs, test/val error mean
        and std (%; std is the sample std, None for one seed), mean parameters and FLOPs on
        nonzero weights, the FLOP reduction against the large model, mean seconds. A
        ``pruned`` row per (method, ratio) gives the error right after pruning.
    """
    out = Path(out_dir)
    found, missing = load_cells(out, cfg)
    larges = _large_infos(out, cfg)
    groups = {}
    for c, rec in found:
        groups.setdefault((c.method.name, c.ratio, c.baseline), []).append(rec)
    rows = []
    for m in cfg.methods:
        for r in m.ratios:
            ft = groups.get((m.name, r, "finetune"), [])
            pre = [x["test_error_pruned"] for x in ft if x.get("test_error_pruned") is not None]
            if pre:
                mean, std = _mean_std(pre)
                rows.append({"method": m.name, "kind": m.kind, "ratio": r, "baseline": "pruned",
                             "n": len(pre), "epochs": [0], "test_error_mean": mean,
                             "test_error_std": std, "val_error_mean": None,
                             "val_error_std": None,
                             "params_nonzero": statistics.fmean(x["params_nonzero"] for x in ft),
                             "flops": statistics.fmean(x["flops"] for x in ft),
                             "flops_reduction": statistics.fmean(x["flops_reduction"]
                                                                 for x in ft),
                             "time_s": None})
            for b in cfg.baselines_of(m):
                recs = groups.get((m.name, r, b), [])
                if not recs:
                    continue
                tm, ts = _mean_std([x["test_error"] for x in recs])
                vm, vs = _mean_std([x["val_error"] for x in recs])
                rows.append({
                    "method": m.name, "kind": m.kind, "ratio": r, "baseline": b, "n": len(recs),
                    "seeds": sorted(x["seed"] for x in recs),
                    "epochs": sorted({x["epochs"] for x in recs}),
                    "test_error_mean": tm, "test_error_std": ts,
                    "val_error_mean": vm, "val_error_std": vs,
                    "test_errors": [x["test_error"] for x in recs],
                    "params_nonzero": statistics.fmean(x["params_nonzero"] for x in recs),
                    "flops": statistics.fmean(x["flops"] for x in recs),
                    "flops_reduction": statistics.fmean(x["flops_reduction"] for x in recs),
                    "time_s": statistics.fmean(x["time_s"] for x in recs),
                })
    large_rows = []
    for group, m in _large_groups(cfg).items():
        infos = larges.get(group, [])
        if not infos:
            continue
        tm, ts = _mean_std([i["test_error"] for i in infos])
        vm, vs = _mean_std([i["val_error"] for i in infos])
        large_rows.append({
            "label": _large_label(m), "hash_seed0": group, "n": len(infos),
            "methods": [x.name for x in cfg.methods
                        if protocol.key_hash(protocol.large_key(cfg, x, 0)) == group],
            "epochs": cfg.large.epochs, "test_error_mean": tm, "test_error_std": ts,
            "val_error_mean": vm, "val_error_std": vs,
            "params_nonzero": statistics.fmean(i["params_nonzero"] for i in infos),
            "flops": statistics.fmean(i["flops"] for i in infos),
            "time_s": statistics.fmean(i["time_s"] for i in infos),
        })
    cell_s = sum(rec["time_s"] for _, rec in found)
    large_s = sum(i["time_s"] for infos in larges.values() for i in infos)
    runs_path = out / "runs.jsonl"
    runs = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()] \
        if runs_path.is_file() else []
    return {
        "name": cfg.name, "rows": rows, "large": large_rows, "cells_found": len(found),
        "missing_cells": missing, "compute_s": cell_s + large_s, "cells_compute_s": cell_s,
        "large_compute_s": large_s, "wall_s_total": sum(r["wall_s"] for r in runs),
        "invocations": len(runs), "seeds": list(cfg.seeds),
        "config": cfg.model_dump(mode="json"),
    }


def write_report(out_dir: str | Path, cfg: RethinkConfig | None = None) -> dict[str, Any]:
    """Write ``results.json``, ``table.md`` and ``plot.png`` into the sweep directory.

    Args:
        out_dir: the sweep directory.
        cfg: the configuration (default: the directory's ``config.yaml``).

    Returns:
        The aggregate (:func:`aggregate`) with the written paths under ``"files"``.

    Raises:
        RunDirectoryError: no configuration given and none in the directory.
    """
    out = Path(out_dir)
    if cfg is None:
        p = out / "config.yaml"
        if not p.is_file():
            raise RunDirectoryError(f"{str(out)!r} has no config.yaml; is it a sweep directory?")
        cfg = parse_rethink_config(read_yaml_mapping(p), repr(str(p)))
    agg = aggregate(cfg, out)
    write_text_atomic(out / "results.json", json.dumps(agg, indent=1) + "\n")
    write_text_atomic(out / "table.md", table_markdown(agg))
    files = {"results": str(out / "results.json"), "table": str(out / "table.md")}
    if any(r["baseline"] != "pruned" for r in agg["rows"]):
        plot_results(agg, out / "plot.png")
        files["plot"] = str(out / "plot.png")
    return {**agg, "files": files}

