"""Collect several seeds of a Han reproduction into ``benchmarks/results/<name>/``.

Copies the first run's ``summary.json``, ``layers.md``, ``config.yaml``, ``log.jsonl`` and
``model.safetensors`` (so anyone can check it with ``prunelab evaluate`` in seconds), and writes
``seeds.json`` and ``README.md`` with every seed's figures, their mean and standard deviation,
the measured run times and the commands that reproduce them.

Usage:
    python benchmarks/collect_han.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/NAME
        --command "prunelab reproduce han2015-lenet300 --seed {seed} --out runs/x-{seed}"
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from prunelab.paper import PAPER

KEYS = ("test_error_dense", "test_error_pruned", "val_error_dense", "val_error_pruned",
        "params_nonzero", "compression", "flops_pruned", "time_s")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--command", required=True, help="command with {seed} placeholder")
    ap.add_argument("--note", default="", help="extra text for README.md (e.g. machine load)")
    args = ap.parse_args()
    summaries = [json.loads((r / "summary.json").read_text()) for r in args.runs]
    first = args.runs[0]
    args.out.mkdir(parents=True, exist_ok=True)
    for f in ("summary.json", "layers.md", "config.yaml", "log.jsonl", "model.safetensors",
              "dense_model.safetensors"):
        shutil.copy2(first / f, args.out / f)
    stats = {k: _mean_std([float(s[k]) for s in summaries]) for k in KEYS}
    seeds = {
        "name": summaries[0]["name"],
        "model": summaries[0]["model"],
        "runs": [{"seed": s["seed"], **{k: s[k] for k in KEYS}} for s in summaries],
        "mean": {k: v[0] for k, v in stats.items()},
        "std": {k: v[1] for k, v in stats.items()},
        "params_total": summaries[0]["params_total"],
        "commands": [args.command.format(seed=s["seed"]) for s in summaries],
    }
    (args.out / "seeds.json").write_text(json.dumps(seeds, indent=2) + "\n")
    paper = PAPER.get(summaries[0]["model"], {})
    lines = [f"# {summaries[0]['name']}: {paper.get('network', summaries[0]['model'])} on MNIST\n",
             "| seed | test error dense % | test error pruned % | val error pruned % | "
             "params nonzero | compression | FLOP pruned | time (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s['seed']} | {s['test_error_dense']:.2f} | {s['test_error_pruned']:.2f} | "
            f"{s['val_error_pruned']:.2f} | {s['params_nonzero']:,} | {s['compression']:.1f}x | "
            f"{s['flops_pruned']:,.0f} | {s['time_s'] / 60:.1f} |"
        )
    m, sd = seeds["mean"], seeds["std"]
    lines.append(
        f"| **mean ± std** | {m['test_error_dense']:.2f} ± {sd['test_error_dense']:.2f} | "
        f"{m['test_error_pruned']:.2f} ± {sd['test_error_pruned']:.2f} | "
        f"{m['val_error_pruned']:.2f} ± {sd['val_error_pruned']:.2f} | "
        f"{m['params_nonzero']:,.0f} ± {sd['params_nonzero']:,.0f} | "
        f"{m['compression']:.1f}x ± {sd['compression']:.1f} | {m['flops_pruned']:,.0f} | "
        f"{m['time_s'] / 60:.1f} |"
    )
    if paper:
        lines.append(
            f"| paper | {paper['test_error_dense']:.2f} | {paper['test_error_pruned']:.2f} | — | "
            f"{paper['params_nonzero']:,} | {paper['compression']}x | — | — |"
        )
    lines += [
        "",
        f"Parameters include biases ({summaries[0]['params_total']:,} in total). Errors are top-1 "
        "on the 10,000 MNIST test images; every choice during a run (best epoch) was made on the "
        "5,000-image validation split held out from the training set (seeded by the run seed).",
        "",
        "Reproduce (each seed):",
        "",
        *[f"    {c}" for c in seeds["commands"]],
        "",
        "Check the committed model in seconds:",
        "",
        f"    prunelab evaluate {args.out}/model.safetensors",
        "",
        "Per-layer table of the first seed (ours beside the paper's): [layers.md](layers.md).",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
