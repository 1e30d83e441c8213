"""Han et al.'s Figure 5 on our nets: accuracy vs fraction of parameters pruned.

Two dense models are trained from the same initialisation and data order, one with an L1
penalty and one with L2 (weight decay). For each pruned fraction ``f`` every prunable layer
of a copy is magnitude-pruned to ``f`` (so ``f`` is also the fraction of all weights pruned)
and validation and test accuracy are measured

* without retraining (``L1, no retrain`` / ``L2, no retrain``),
* after ``retrain_epochs`` epochs of retraining at ``retrain_lr_factor`` x the training
  learning rate, with the same regulariser (``L1 + retrain`` / ``L2 + retrain``),

and the L2 model is also pruned *iteratively*: prune to the next fraction, retrain, repeat
(``L2, iterative``), so its point at ``f`` has been retrained once per earlier fraction.
Past the paper, with the same retraining budget per point as one-shot + retrain:

* ``L2, gradual``: from the dense L2 model, Zhu & Gupta's cubic ramp from 0 to ``f`` over the
  first 75% of the ``retrain_epochs`` (:class:`prunelab.gradual.GradualPruning`, 10
  prunings), then training at ``f``;
* ``L2, dynamic surgery``: Guo et al.'s surgery (:class:`prunelab.dns.DynamicSurgery`, the
  paper's ``gamma = 1e-4``, ``power = 1``, margin 0.1) for ``retrain_epochs``, masks fixed
  after 75% of them; each layer's ``c`` puts its lower bound at the ``f`` quantile of ``|w|``,
  so it starts at ``f`` pruned; splicing moves it, and the point is drawn at the sparsity it
  ends with (``sparsity`` in the rows; the other curves end exactly at ``f``).

The paper reports: L1 is better right after pruning, L2 after retraining, and iterative
prune-retrain goes furthest. Test accuracy is recorded for the write-up only; no choice in
this experiment looks at it.

Example:
    >>> cfg = TradeoffConfig.quick("lenet300")
    >>> cfg.epochs, cfg.retrain_epochs
    (3, 1)
"""

from __future__ import annotations

import copy
import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import write_text_atomic

__all__ = ["CURVES", "TradeoffConfig", "main", "run_tradeoff"]

CURVES: tuple[str, ...] = ("L1, no retrain", "L2, no retrain", "L1 + retrain", "L2 + retrain",
                           "L2, iterative prune + retrain", "L2, gradual",
                           "L2, dynamic surgery")


@dataclass(frozen=True)
class TradeoffConfig:
    """Settings of one trade-off experiment (one network).

    Attributes:
        model: registered model name (``lenet300``, ``lenet5``).
        epochs: dense training epochs (each of the L1 and L2 models).
        retrain_epochs: retraining epochs after each pruning (one-shot and per iterative step).
        fractions: pruned fractions, each in (0, 1).
        l1: L1 strength (its subgradient ``l1 * sign(w)`` is added to the gradients).
        l2: L2 strength (weight decay).
        lr: training learning rate (SGD, momentum 0.9, Caffe's ``inv`` policy).
        retrain_lr_factor: retraining lr = factor x ``lr`` (constant); the paper uses 1/10.
        batch_size: mini-batch size.
        seed: initialisation and data-order seed.
        val_size: validation images held out of the training set.
        subset: use only the first ``subset`` training images (quick checks).
        normalize: input normalisation (``standard`` or ``scale``), as in run configs.
        data_root: dataset root (default: the shipped data / ``PRUNELAB_DATA``).
        device: ``cpu`` or ``cuda``.
    """

    model: str = "lenet300"
    epochs: int = 10
    retrain_epochs: int = 3
    fractions: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98)
    l1: float = 1e-4
    l2: float = 5e-4
    lr: float = 0.01
    retrain_lr_factor: float = 0.1
    batch_size: int = 64
    seed: int = 0
    val_size: int = 5000
    subset: int | None = None
    normalize: str = "standard"
    data_root: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.retrain_epochs < 0:
            raise ValueError(f"epochs={self.epochs} must be >= 1 and retrain_epochs="
                             f"{self.retrain_epochs} >= 0")
        if not self.fractions:
            raise ValueError("fractions is empty; give at least one pruned fraction")
        bad = [f for f in self.fractions if not 0 < f < 1]
        if bad:
            raise ValueError(f"fractions {bad} are invalid; allowed: values in (0, 1)")
        if self.l1 < 0 or self.l2 < 0 or self.lr <= 0 or self.retrain_lr_factor <= 0:
            raise ValueError("l1, l2 must be >= 0 and lr, retrain_lr_factor > 0")
        if self.normalize not in ("standard", "scale"):
            raise ValueError(f"normalize={self.normalize!r} is unknown; allowed: standard, scale")
        object.__setattr__(self, "fractions", tuple(sorted(float(f) for f in self.fractions)))

    @classmethod
    def quick(cls, model: str = "lenet300", **overrides: Any) -> TradeoffConfig:
        """A few-minute version: 3 training epochs, 1 retraining epoch, 7 fractions."""
        base = cls(model=model, epochs=3, retrain_epochs=1,
                   fractions=(0.5, 0.7, 0.8, 0.9, 0.94, 0.96, 0.98))
        return replace(base, **overrides)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
           policy: str, reg: str, cfg: TradeoffConfig, phase: int,
           callback: Any = None) -> None:
    from ..data import TensorBatches
    from ..schedules import lr_schedule
    from ..training import Trainer, epoch_seed, make_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, "sgd", lr=lr, momentum=0.9,
                         weight_decay=cfg.l2 if reg == "l2" else 0.0)
    batches = TensorBatches(x, y, batch_size=cfg.batch_size)
    lr_at = lr_schedule(policy, lr, epochs * len(batches), gamma=1e-4, power=0.75)
    trainer = Trainer(model, opt, lr_at=lr_at, l1=cfg.l1 if reg == "l1" else 0.0,
                      l1_params=params, callbacks=[callback] if callback is not None else [])
    if callback is not None and hasattr(callback, "prune_due"):
        callback.prune_due(0, opt)
    trainer.fit(batches, epochs=epochs, seed_of_epoch=lambda e: epoch_seed(cfg.seed, phase, e))


def _steps(cfg: TradeoffConfig, n: int) -> int:
    return cfg.retrain_epochs * -(-n // cfg.batch_size)


def _gradual(m: nn.Module, f: float, steps: int) -> Any:
    from ..gradual import GradualPruning
    from ..pruner import Pruner

    span = max(1, round(0.75 * steps))
    count = min(10, span)
    return GradualPruning(Pruner(m), "magnitude", f, every=span // count, count=count)


def _surgery(m: nn.Module, f: float, steps: int, seed: int) -> Any:
    from ..dns import DynamicSurgery
    from ..masks import effective_tensor
    from ..selection import select_layers

    c = {}
    for name, layer in select_layers(m).items():
        a = effective_tensor(layer).detach().double().abs().flatten()
        a = a[a != 0]
        q = float(torch.quantile(a, f)) if a.numel() else 0.0
        sd = float(a.std(correction=0)) if a.numel() else 0.0
        c[name] = (q / 0.9 - float(a.mean())) / sd if sd > 0 else 0.0
    surgery = DynamicSurgery(m, c, margin=0.1, stop=round(0.75 * steps), seed=seed)
    surgery.start()
    return surgery


def _prunable_sparsity(model: nn.Module) -> float:
    from ..masks import effective_tensor
    from ..selection import select_layers

    tot = nz = 0
    for m in select_layers(model).values():
        w = effective_tensor(m)
        tot += w.numel()
        nz += int(torch.count_nonzero(w))
    return 1.0 - nz / tot


def run_tradeoff(
    cfg: TradeoffConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the experiment and write ``tradeoff-<model>.{csv,json,png}`` into ``out_dir``.

    Returns:
        The JSON record: ``config``, ``dense`` (val/test accuracy of the L1 and L2 models),
        ``rows`` (one per curve and fraction: ``curve``, ``regularization``, ``retrain``,
        ``fraction``, ``sparsity``, ``val_accuracy``, ``test_accuracy``), ``time_s``, ``files``.
    """
    from ..data import prepare_splits
    from ..models import build_model
    from ..pruner import Pruner, prune_model
    from ..training import evaluate

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    s = prepare_splits("mnist", cfg.data_root, val_size=cfg.val_size, seed=cfg.seed,
                       normalize=cfg.normalize, subset=cfg.subset, device=device)
    x, y, xv, yv, xt, yt = s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test
    if xv.shape[0] == 0:
        raise ValueError("val_size=0 leaves no validation set; the experiment needs one")

    def acc(m: nn.Module) -> tuple[float, float]:
        return evaluate(m, xv, yv)[1], evaluate(m, xt, yt)[1]

    torch.manual_seed(cfg.seed)
    init = build_model(cfg.model).to(device)
    dense: dict[str, nn.Module] = {}
    dense_acc: dict[str, dict[str, float]] = {}
    for i, reg in enumerate(("l1", "l2")):
        m = copy.deepcopy(init)
        _train(m, x, y, epochs=cfg.epochs, lr=cfg.lr, policy="inv", reg=reg, cfg=cfg, phase=i)
        dense[reg] = m
        va, ta = acc(m)
        dense_acc[reg] = {"val_accuracy": va, "test_accuracy": ta}
        _log(f"dense {reg.upper()}: val {100 * va:.2f}%, test {100 * ta:.2f}% "
             f"({time.perf_counter() - t0:.0f} s)", quiet)

    rows: list[dict[str, Any]] = []

    def record(curve: str, reg: str, retrain: str, f: float, m: nn.Module, epochs: int) -> None:
        va, ta = acc(m)
        rows.append({"curve": curve, "regularization": reg, "retrain": retrain,
                     "fraction": f, "sparsity": _prunable_sparsity(m), "val_accuracy": va,
                     "test_accuracy": ta, "retrain_epochs": epochs})

    retrain_lr = cfg.lr * cfg.retrain_lr_factor
    for j, f in enumerate(cfg.fractions):
        for i, reg in enumerate(("l1", "l2")):
            m = copy.deepcopy(dense[reg])
            prune_model(m, "magnitude", f)
            record(f"{reg.upper()}, no retrain", reg, "none", f, m, 0)
            if cfg.retrain_epochs > 0:
                _train(m, x, y, epochs=cfg.retrain_epochs, lr=retrain_lr, policy="constant",
                       reg=reg, cfg=cfg, phase=100 + 10 * j + i)
                record(f"{reg.upper()} + retrain", reg, "retrain", f, m,
                       cfg.retrain_epochs)
        _log(f"one-shot {100 * f:.0f}%: " + ", ".join(
            f"{r['curve']} val {100 * r['val_accuracy']:.2f}%" for r in rows
            if r["fraction"] == f) + f" ({time.perf_counter() - t0:.0f} s)", quiet)

    if cfg.retrain_epochs > 0:
        m = copy.deepcopy(dense["l2"])
        pruner = Pruner(m)
        for j, f in enumerate(cfg.fractions):
            pruner.step("magnitude", f)
            _train(m, x, y, epochs=cfg.retrain_epochs, lr=retrain_lr, policy="constant",
                   reg="l2", cfg=cfg, phase=1000 + j)
            record("L2, iterative prune + retrain", "l2", "iterative", f, m,
                   cfg.retrain_epochs * (j + 1))
        _log(f"iterative done ({time.perf_counter() - t0:.0f} s)", quiet)
        steps = _steps(cfg, x.shape[0])
        for j, f in enumerate(cfg.fractions):
            m = copy.deepcopy(dense["l2"])
            _train(m, x, y, epochs=cfg.retrain_epochs, lr=retrain_lr, policy="constant",
                   reg="l2", cfg=cfg, phase=2000 + j, callback=_gradual(m, f, steps))
            record("L2, gradual", "l2", "gradual", f, m, cfg.retrain_epochs)
            m = copy.deepcopy(dense["l2"])
            surgery = _surgery(m, f, steps, seed=cfg.seed + j)
            _train(m, x, y, epochs=cfg.retrain_epochs, lr=retrain_lr, policy="constant",
                   reg="l2", cfg=cfg, phase=3000 + j, callback=surgery)
            surgery.finish()
            record("L2, dynamic surgery", "l2", "surgery", f, m, cfg.retrain_epochs)
        _log(f"gradual and surgery done ({time.perf_counter() - t0:.0f} s)", quiet)

    stem = f"tradeoff-{cfg.model}"
    csv_path, json_path, png_path = (out / f"{stem}.csv", out / f"{stem}.json",
                                     out / f"{stem}.png")
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from ..report import figures as F

    base = {"val": dense_acc["l2"]["val_accuracy"], "test": dense_acc["l2"]["test_accuracy"]}
    fig = F.tradeoff_curves(
        rows, baseline=base, path=png_path,
        title=f"{cfg.model}: accuracy vs parameters pruned (dense L2: val "
              f"{100 * base['val']:.2f}%, test {100 * base['test']:.2f}%)")
    import matplotlib.pyplot as plt

    plt.close(fig)
    result = {
        "experiment": "tradeoff",
        "config": asdict(cfg),
        "dense": dense_acc,
        "rows": rows,
        "time_s": time.perf_counter() - t0,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "files": {"csv": csv_path.name, "png": png_path.name, "json": json_path.name},
    }
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    _log(f"wrote {csv_path}, {png_path}, {json_path} in {result['time_s']:.0f} s", quiet)
    return result


def configs_from_args(args: Any) -> list[TradeoffConfig]:
    """Build one :class:`TradeoffConfig` per ``--model`` from parsed arguments."""
    over: dict[str, Any] = {"seed": args.seed, "device": args.device,
                            "data_root": args.data_root}
    for key in ("epochs", "retrain_epochs", "l1", "l2", "subset"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.fractions:
        try:
            over["fractions"] = tuple(float(v) for v in args.fractions.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"--fractions {args.fractions!r} is not a comma-separated list "
                             "of numbers") from None
    out = []
    for model in args.models or ["lenet300"]:
        out.append(TradeoffConfig.quick(model, **over) if args.quick
                   else TradeoffConfig(model=model, **over))
    return out


def run_from_args(args: Any) -> int:
    """Run every configured model (the body of ``prunelab tradeoff``)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for cfg in configs_from_args(args):
        res = run_tradeoff(cfg, args.out, quiet=args.quiet)
        print(f"{cfg.model}: {Path(args.out) / res['files']['png']} "
              f"({res['time_s']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m prunelab.experiments.tradeoff``)."""
    import argparse

    from ..cli.report import add_tradeoff_arguments

    p = argparse.ArgumentParser(prog="tradeoff", description=__doc__.split("\n\n")[0])
    add_tradeoff_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
