"""Han et al. 2015 Figure 5 on LeNet-300-100 and LeNet-5: accuracy vs parameters pruned.

For each network: train a dense model with L1 and one with L2 (same init, same epochs),
magnitude-prune every layer to each fraction and measure validation and test accuracy
without retraining and after a short retraining, plus the iterative prune-retrain curve
(L2). Writes ``tradeoff-<model>.csv``, ``.json`` and ``.png`` into ``--out``.

Usage (the same code as ``prunelab tradeoff``):

    python benchmarks/tradeoff.py --quick --model lenet300          # ~1-3 min check
    python benchmarks/tradeoff.py --epochs 20 --retrain-epochs 5    # both nets, long run

Without ``--model`` both networks run. ``--threads`` defaults to 1 here (shared machines).
"""

from __future__ import annotations

import argparse
import sys

import torch

from prunelab.cli.report import add_tradeoff_arguments
from prunelab.experiments.tradeoff import run_from_args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_tradeoff_arguments(p)
    args = p.parse_args(argv)
    if args.models is None:
        args.models = ["lenet300", "lenet5"]
    if args.threads is None:
        args.threads = 1
    torch.set_num_threads(args.threads)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
