"""Subcommands ``prunelab rethink`` (run a sweep) and ``prunelab rethink-report``.

Heavy imports happen inside the commands, so registering them costs nothing.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> register(sub)
    >>> sorted(sub.choices)
    ['rethink', 'rethink-report']
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["parse_seeds", "register"]


def parse_seeds(text: str) -> list[int]:
    """Parse ``"0,1,2"`` into integers.

    Raises:
        ValueError: an entry is not an integer.

    Example:
        >>> parse_seeds("0, 2")
        [0, 2]
    """
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a comma-separated list of integers") from None


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill PID``) into SystemExit, so the sweep logs its invocation and
    stops between writes (a cell file is either complete or absent either way)."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))


def _cmd_rethink(args: argparse.Namespace) -> int:
    from ..experiments.rethink.config import load_rethink_config
    from ..experiments.rethink.sweep import run_sweep

    overrides: dict = {}
    if args.seeds is not None:
        overrides["seeds"] = parse_seeds(args.seeds)
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = load_rethink_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / f"rethink-{cfg.name}"
    _exit_on_sigterm()
    result = run_sweep(cfg, out, resume=args.resume, quiet=args.quiet,
                       report=not args.no_report)
    if result.report is not None and not args.quiet:
        print(Path(result.report["files"]["table"]).read_text())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.rethink.sweep import write_report

    agg = write_report(args.sweep_dir)
    print(Path(agg["files"]["table"]).read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``rethink`` and ``rethink-report`` to a subparsers object."""
    p = sub.add_parser(
        "rethink", help="fine-tune vs scratch sweep (Liu et al. 2019) from a YAML config",
        description="Train large models, prune them (L1-norm filters, Network Slimming, "
        "ThiNet, magnitude) and train each pruned architecture by fine-tuning, Scratch-E, "
        "Scratch-B and lottery rewinding; write a table, a JSON and a plot. Every finished "
        "cell is saved, so an interrupted sweep continues with --resume.",
    )
    p.add_argument("config", help="YAML sweep config")
    p.add_argument("--out", help="sweep directory (default: runs/rethink-<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue a sweep directory; finished cells are skipped")
    p.add_argument("--seeds", help="override the config's seeds, e.g. 0 or 0,1,2")
    p.add_argument("--device", help="cpu, cuda or cuda:N (overrides the config)")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the config)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-report", action="store_true",
                   help="do not write table.md, results.json and plot.png")
    p.set_defaults(func=_cmd_rethink)

    p = sub.add_parser(
        "rethink-report", help="table, JSON and plot of a rethink sweep directory",
        description="Aggregate the finished cells of a sweep directory (mean ± std over "
        "seeds) into table.md, results.json and plot.png.",
    )
    p.add_argument("sweep_dir", help="a directory written by 'prunelab rethink'")
    p.set_defaults(func=_cmd_report)
