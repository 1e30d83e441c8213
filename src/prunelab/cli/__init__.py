"""The ``prunelab`` command line: a thin layer over the Python API.

Example:
    >>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from .. import __version__

__all__ = ["BUILTIN_CONFIGS", "add_allow_import", "builtin_config_path", "error_line", "main"]

BUILTIN_CONFIGS: tuple[str, ...] = (
    "han2015-lenet300", "han2015-lenet5", "han2015-alexnet", "han2015-vgg16",
    "beyond-lenet300", "beyond-lenet5", "smoke-imagefolder",
)


def builtin_config_path(name: str) -> Path:
    """Path of a shipped YAML config (copy it to make your own).

    Raises:
        ValueError: unknown name (lists the built-in ones).
    """
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"unknown built-in config {name!r}; allowed: {', '.join(BUILTIN_CONFIGS)}")
    return Path(str(resources.files("prunelab") / "configs" / f"{name}.yaml"))


def _overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the run options (``--seed``, ``--device``, ...)."""
    overrides: dict = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    if getattr(args, "precision", None) is not None:
        overrides["train"] = {"precision": args.precision}
    if args.data_root is not None:
        overrides["data"] = {"root": args.data_root}
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from ..config import load_config

    return _execute(load_config(args.config, _overrides(args)), args)


def _execute(cfg: object, args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False):
        from ..experiments.plan import format_plan, run_plan

        print(format_plan(run_plan(cfg)))
        return 0
    from ..experiments.runner import run_han

    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-seed{cfg.seed}"
    after = None
    if not getattr(args, "no_report", True):
        try:
            from ..report import write_report

            def after(out_dir: Path, summary: dict) -> None:
                # the model files were just written from the user's own config
                write_report(out_dir, allow_import={cfg.model.name})
        except ImportError:
            after = None
    summary = run_han(cfg, out, resume=args.resume, quiet=args.quiet, after_run=after)
    if summary:  # empty on the ranks > 0 of a data-parallel run
        _print_summary(summary, out)
    return 0


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console

    from ..paper import PAPER

    console = Console()
    paper = PAPER.get(summary["model"])
    line = (
        f"[bold]{summary['name']}[/] (seed {summary['seed']}): test error "
        f"{summary['test_error_dense']:.2f}% dense -> {summary['test_error_pruned']:.2f}% pruned, "
        f"{summary['params_total']:,} -> {summary['params_nonzero']:,} parameters "
        f"({summary['compression']:.1f}x), {summary['time_s'] / 60:.1f} min"
    )
    console.print(line)
    if paper:
        console.print(
            f"paper ({paper['network']}): {paper['test_error_dense']:.2f}% -> "
            f"{paper['test_error_pruned']:.2f}%, {paper['params_total']:,} -> "
            f"{paper['params_nonzero']:,} ({paper['compression']}x)"
        )
    console.print(f"run directory: {out}")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ..config import load_config

    return _execute(load_config(builtin_config_path(args.experiment), _overrides(args)), args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..experiments.evaluation import evaluate_model_file

    res = evaluate_model_file(args.model_file, data_root=args.data_root, device=args.device,
                              allow_import=args.allow_import)
    if args.json:
        print(json.dumps({k: res[k] for k in ("test_error", "params_total", "params_nonzero")}))
    else:
        print(
            f"{res['model']} on {res['dataset']}: test error {res['test_error']:.2f}%, "
            f"{res['params_nonzero']:,} / {res['params_total']:,} parameters nonzero "
            f"({res['compression']:.1f}x)"
        )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..experiments.evaluation import evaluate_model_file

    res = evaluate_model_file(args.model_file, data_root=args.data_root, device=args.device,
                              allow_import=args.allow_import)
    stats = res["stats"]
    table = Table(title=f"{args.model_file}: {res['model']}, test error {res['test_error']:.2f}%")
    for col in ("layer", "kind", "shape", "weights", "nonzero", "kept %", "FLOP", "FLOP kept %",
                "input density %"):
        table.add_column(col, justify="right" if col not in ("layer", "kind") else "left")
    for layer in stats.layers:
        table.add_row(layer.name, layer.kind, "x".join(map(str, layer.shape)),
                      f"{layer.weights:,}", f"{layer.nonzero:,}",
                      f"{100 * layer.weights_kept:.1f}", f"{layer.flops_dense:,}",
                      f"{100 * layer.flops_kept:.1f}", f"{100 * layer.input_density:.0f}")
    table.add_row("total", "", "", f"{stats.weights:,}", f"{stats.nonzero:,}",
                  f"{100 * stats.nonzero / stats.weights:.1f}", f"{stats.flops_dense:,}",
                  f"{100 * stats.flops_pruned / stats.flops_dense:.1f}", "")
    console = Console()
    console.print(table)
    console.print(
        f"parameters (biases included): {stats.params_nonzero:,} nonzero of "
        f"{stats.params_total:,} ({stats.compression:.1f}x)"
    )
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run directory (default: runs/<name>-seed<seed>)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--device", help="cpu, cuda or cuda:N (overrides the config)")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides the config)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="training precision: autocast bf16/fp16 (overrides train.precision)")
    p.add_argument("--data-root", help="dataset directory (overrides data.root; else "
                   "PRUNELAB_DATA, else the shipped MNIST)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, build the model, print the per-layer plan "
                   "(parameters, FLOP, target density) and stop, without reading data")


def add_allow_import(p: argparse.ArgumentParser) -> None:
    """The ``--allow-import`` option of the commands that open model files."""
    p.add_argument("--allow-import", action="store_true",
                   help="trust the file: honour an import path (package.module:Factory) as "
                   "its model's name, which imports and runs that code (off: files may "
                   "name only registered and torchvision models)")


def error_line(exc: BaseException) -> str | None:
    """The one line the command prints for an input error; ``None`` for a bug.

    Input errors are prunelab's own (:class:`prunelab.errors.PrunelabError`), the
    ``ValueError`` of argument checks, and operating-system errors on the user's files
    (missing, a directory, no permission, disk full).

    Example:
        >>> error_line(FileNotFoundError(2, "No such file or directory", "m.safetensors"))
        "'m.safetensors': No such file or directory"
        >>> error_line(KeyError("x")) is None
        True
    """
    from ..errors import PrunelabError, one_line

    if isinstance(exc, PrunelabError | ValueError):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        where = f"{str(exc.filename)!r}: " if exc.filename is not None else ""
        what = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename2 is not None:
            where = f"{str(exc.filename)!r} -> {str(exc.filename2)!r}: "
        return one_line(f"{where}{what}")
    return None


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> (
    argparse.ArgumentParser
):
    """The argument parser (subcommands registered here and by ``extra`` callbacks)."""
    parser = argparse.ArgumentParser(
        prog="prunelab",
        description="Learn which connections matter: Han et al. 2015 pruning, measured honestly.",
    )
    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (input errors included)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a prune-retrain pipeline from a YAML config",
                       description="Run a full pipeline (train dense, prune, retrain, iterate) "
                       "from a YAML config into a run directory.")
    p.add_argument("config", help="YAML config file")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("reproduce", help="reproduce a paper result with a built-in config",
                       description="Run a built-in config: " + ", ".join(BUILTIN_CONFIGS))
    p.add_argument("experiment", choices=BUILTIN_CONFIGS)
    _add_run_options(p)
    p.set_defaults(func=_cmd_reproduce)

    for name, func, helptext in (
        ("evaluate", _cmd_evaluate, "test error and parameter counts of a saved model"),
        ("inspect", _cmd_inspect, "per-layer table of a saved model"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("model_file", help="model file (model.safetensors) or compact export")
        p.add_argument("--data-root", help="dataset root (default: shipped data / PRUNELAB_DATA)")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        add_allow_import(p)
        if name == "evaluate":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
    for register in extra:
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands registered by the modules beside this one (export, imagefolder, report,
    rethink, share)."""
    from . import export, imagefolder, report, rethink, share

    return [export.register, imagefolder.register, report.register, rethink.register,
            share.register]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunelab`` command.

    Returns:
        The exit status: 0 on success, 2 for input errors (bad config, missing, corrupt or
        hostile file, unusable run directory or device, full disk), printed as one line
        ``prunelab: error: ...``; other exceptions are bugs and keep their traceback
        (``--debug`` shows tracebacks for input errors too).
    """
    parser = build_parser(_extra_commands())
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        line = error_line(exc)
        if line is None or args.debug:
            raise
        print(f"prunelab: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunelab: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
