"""Cost of training under masks: prunelab's masked epoch vs a plain PyTorch loop.

Both loops see the same model architecture, the same in-memory data, the same batches and
the same optimizer (SGD, momentum 0.9, weight decay 5e-4). The plain loop trains an unpruned
copy with a minimal hand-written loop; prunelab's loop is ``prunelab.training.Trainer``
on a copy pruned to 90% sparsity (masks enforced by forward pre-hooks). Repetitions alternate
between the two (ABAB...) so that machine noise hits both alike; the ratio of medians is
printed as JSON.

Usage:
    python benchmarks/bench_train_overhead.py [--model lenet300|lenet5] [--reps 5]
        [--samples N] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from prunelab.data import TensorBatches, load_dataset
from prunelab.models import build_model
from prunelab.pruner import prune_model
from prunelab.training import Trainer


def plain_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, batch_size: int, seed: int) -> None:
    """The baseline: the shortest reasonable PyTorch loop over in-memory tensors."""
    model.train()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet300", choices=("lenet300", "lenet5"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=None, help="training images per epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("mnist")
    n = args.samples or (55_000 if args.model == "lenet300" else 11_000)
    x, y = ds.train.images[:n], ds.train.labels[:n]

    torch.manual_seed(0)
    base = build_model(args.model)
    plain = copy.deepcopy(base)
    masked = copy.deepcopy(base)
    prune_model(masked, "magnitude", 0.9)

    def sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    opt_plain, opt_masked = sgd(plain), sgd(masked)
    # Warm-up (allocator, kernels) for both.
    plain_epoch(plain, opt_plain, x[:2048], y[:2048], args.batch_size, 0)
    trainer = Trainer(masked, opt_masked, lr_at=lambda s: 0.01)
    trainer.train_epoch(TensorBatches(x[:2048], y[:2048], batch_size=args.batch_size), seed=0)
    batches = TensorBatches(x, y, batch_size=args.batch_size)
    t_plain, t_masked = [], []
    for rep in range(args.reps):
        t0 = time.perf_counter()
        plain_epoch(plain, opt_plain, x, y, args.batch_size, rep)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        trainer.train_epoch(batches, seed=rep)
        t_masked.append(time.perf_counter() - t0)
    result = {
        "model": args.model,
        "samples": n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "reps": args.reps,
        "plain_s": t_plain,
        "masked_s": t_masked,
        "plain_median_s": statistics.median(t_plain),
        "masked_median_s": statistics.median(t_masked),
        "ratio": statistics.median(t_masked) / statistics.median(t_plain),
        "target": 1.10,
        "torch": torch.__version__,
    }
    result["meets_target"] = result["ratio"] <= result["target"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
