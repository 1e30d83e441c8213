"""Weight sharing on the committed pruned LeNet-300-100: test error before and after
fine-tuning the centroids, clusters used, and the cost of the sharing per training step.

The model is ``benchmarks/results/han2015-lenet300/model.safetensors`` (Han et al. 2015
pruning, seed 0, 1.51% test error). For each index width of the fully connected layers it
shares the weights (k-means, linear init), measures the test error, fine-tunes the centroids
for one epoch over the first ``--train`` training images (prunelab's ``Trainer``, the
:class:`~prunelab.sharing.WeightSharing` object as its callback) and measures it again. It
also times one epoch with and without the sharing (the gradient hooks and the snap), one
thread, CPU time of the process.

Usage:
    python benchmarks/bench_weight_sharing.py [--bits 2 3 4 5 6] [--train 20000]
        [--optimizer sgd|adam] [--lr 1e-4] [--out benchmarks/results/weight_sharing]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from prunelab.data import TensorBatches, splits_for_model_file
from prunelab.modelfile import load_model_file
from prunelab.sharing import WeightSharing
from prunelab.training import Trainer, evaluate, make_optimizer

MODEL = Path(__file__).resolve().parent / "results" / "han2015-lenet300" / "model.safetensors"


def _error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (1.0 - evaluate(model, x, y)[1])


def _distinct(model: torch.nn.Module, layers: list[str]) -> dict[str, int]:
    mods = dict(model.named_modules())
    out = {}
    for name in layers:
        w = mods[name].weight.detach()
        out[name] = int(torch.unique(w[w != 0]).numel())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--train", type=int, default=20000, help="training images to fine-tune on")
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, meta = load_model_file(MODEL)
    splits = splits_for_model_file(meta)
    x, y = splits.x_train[: args.train], splits.y_train[: args.train]
    batches = TensorBatches(x, y, batch_size=64)
    rows = []
    dense_error = _error(base, splits.x_test, splits.y_test)
    print(f"pruned model: test error {dense_error:.2f}%")
    for bits in args.bits:
        model = copy.deepcopy(base)
        sharing = WeightSharing({"fc": bits})
        t0 = time.process_time()
        report = sharing.attach(model)
        attach_s = time.process_time() - t0
        shared_error = _error(model, splits.x_test, splits.y_test)
        opt = make_optimizer(model.parameters(), args.optimizer, lr=args.lr, momentum=0.9)
        t0 = time.process_time()
        Trainer(model, opt, callbacks=[sharing]).train_epoch(batches, seed=0)
        epoch_s = time.process_time() - t0
        tuned_error = _error(model, splits.x_test, splits.y_test)
        layers = [r.layer for r in report.layers]
        distinct = _distinct(model, layers)
        assert all(distinct[r.layer] <= 2**r.bits for r in report.layers)
        # the same epoch without sharing, for the cost of the hooks and the snap
        plain = copy.deepcopy(base)
        popt = make_optimizer(plain.parameters(), args.optimizer, lr=args.lr, momentum=0.9)
        t0 = time.process_time()
        Trainer(plain, popt).train_epoch(batches, seed=0)
        plain_s = time.process_time() - t0
        print(report.table())
        print(f"fc {bits} bits: test error shared {shared_error:.2f}%, after one epoch of "
              f"centroid fine-tuning {tuned_error:.2f}%; distinct nonzero values {distinct}; "
              f"attach {attach_s:.3f} s, epoch {epoch_s:.2f} s vs {plain_s:.2f} s unshared")
        rows.append({"bits_fc": bits, "test_error_pruned": dense_error,
                     "test_error_shared": shared_error, "test_error_tuned": tuned_error,
                     "distinct_nonzero": distinct, "attach_cpu_s": attach_s,
                     "epoch_cpu_s": epoch_s, "epoch_cpu_s_unshared": plain_s,
                     "report": report.to_dict()})
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"model": str(MODEL.relative_to(MODEL.parents[3])),
                   "train_images": args.train, "optimizer": args.optimizer, "lr": args.lr,
                   "torch": torch.__version__, "threads": 1, "rows": rows}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
