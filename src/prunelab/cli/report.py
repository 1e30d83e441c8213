"""Subcommands ``prunelab report``, ``prunelab sensitivity`` and ``prunelab tradeoff``.

Heavy imports (matplotlib, data) happen inside the commands, so registering them costs
nothing for the other subcommands.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> register(sub)
    >>> sorted(sub.choices)
    ['report', 'sensitivity', 'tradeoff']
"""

from __future__ import annotations

import argparse

__all__ = ["add_tradeoff_arguments", "parse_grid", "register"]


def parse_grid(text: str) -> list[float]:
    """Parse ``"0.25,0.5,1"`` into floats.

    Raises:
        ValueError: an entry is not a number.

    Example:
        >>> parse_grid("0.5, 1,2")
        [0.5, 1.0, 2.0]
    """
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--grid {text!r} is not a comma-separated list of numbers") from None


def add_tradeoff_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``prunelab tradeoff`` and ``benchmarks/tradeoff.py``."""
    p.add_argument("--model", action="append", dest="models",
                   choices=("lenet300", "lenet5"),
                   help="network (repeat for several; default: lenet300)")
    p.add_argument("--epochs", type=int, help="dense training epochs (default 10; quick 3)")
    p.add_argument("--retrain-epochs", type=int,
                   help="retraining epochs after each pruning (default 3; quick 1)")
    p.add_argument("--fractions", help="comma-separated pruned fractions, e.g. 0.5,0.9,0.95")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute check: 3 epochs, 1 retraining epoch, 7 fractions")
    p.add_argument("--l1", type=float, help="L1 strength (default 1e-4)")
    p.add_argument("--l2", type=float, help="L2 strength / weight decay (default 5e-4)")
    p.add_argument("--subset", type=int, help="use only the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="dataset root (default: shipped data / PRUNELAB_DATA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", default="benchmarks/results/tradeoff", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import write_report

    path = write_report(args.run_dir, args.out, allow_import=args.allow_import)
    print(f"report: {path}")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.sensitivity import run_sensitivity

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # a missing file (FileNotFoundError) is an input error: prunelab.cli.main prints one line
    res = run_sensitivity(
        args.path, grid=parse_grid(args.grid) if args.grid else None, mode=args.mode,
        budget=args.budget, out_dir=args.out, layers=args.layers, data_root=args.data_root,
        device=args.device, epochs=args.epochs, allow_import=args.allow_import,
    )
    print(f"baseline validation accuracy {100 * res['baseline_accuracy']:.2f}%; suggested q "
          f"(budget {args.budget:g} points): "
          + ", ".join(f"{k}={v:g}" for k, v in res["choice"].items()))
    print(f"wrote {', '.join(str(f) for f in res['files'])} in {res['time_s']:.1f} s")
    return 0


def _cmd_tradeoff(args: argparse.Namespace) -> int:
    from ..experiments.tradeoff import run_from_args

    return run_from_args(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report``, ``sensitivity`` and ``tradeoff`` to the ``prunelab`` parser."""
    from . import add_allow_import

    p = sub.add_parser("report", help="write report.html (and the figures) for a run directory",
                       description="Write a self-contained report.html with the paper-vs-ours "
                       "summary, the per-layer table and every figure the run has data for.")
    p.add_argument("run_dir", help="run directory of `prunelab run`")
    p.add_argument("--out", help="output directory (default: the run directory)")
    add_allow_import(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "sensitivity", help="per-layer sensitivity analysis and suggested q",
        description="Prune each layer alone at increasing threshold and measure validation "
        "accuracy without retraining (Han et al. 2015). Writes sensitivity.csv, "
        "sensitivity.png and suggested_q.yaml (a prune section for a run config).")
    p.add_argument("path", metavar="MODEL_FILE|RUN_DIR",
                   help="a model file, or a run directory (its dense_model.safetensors)")
    p.add_argument("--grid", help="comma-separated q values or sparsities "
                   "(default: 15 points, 0.25..4 for q, 0.1..0.99 for sparsity)")
    p.add_argument("--mode", choices=("q", "sparsity"), default="q",
                   help="grid values are q (threshold = q x layer std) or target sparsities")
    p.add_argument("--budget", type=float, default=0.5,
                   help="allowed validation accuracy drop per layer, in accuracy points "
                   "(default 0.5)")
    p.add_argument("--layers", action="append",
                   help="glob pattern of layers to sweep (repeatable; default: all)")
    p.add_argument("--epochs", type=int, default=10,
                   help="retraining epochs written into suggested_q.yaml")
    p.add_argument("--out", help="output directory (default: RUN_DIR/sensitivity or "
                   "<model>-sensitivity beside the model file)")
    p.add_argument("--data-root", help="dataset root (default: shipped data / PRUNELAB_DATA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    add_allow_import(p)
    p.set_defaults(func=_cmd_sensitivity)

    p = sub.add_parser(
        "tradeoff", help="accuracy vs parameters pruned, L1/L2, with/without retraining",
        description="Han et al. 2015 Figure 5 on LeNet: train dense models with L1 and L2, "
        "prune every layer to each fraction, measure accuracy without and with retraining, and "
        "prune iteratively. Writes tradeoff-<model>.csv/.json/.png.")
    add_tradeoff_arguments(p)
    p.set_defaults(func=_cmd_tradeoff)
