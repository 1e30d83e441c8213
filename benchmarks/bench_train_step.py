"""Masked vs dense training step through prunelab's Trainer: the cost of keeping masks exact.

Two copies of one model from the same weights: ``dense`` (no masks) and ``masked`` (every
Conv2d/Linear weight pruned to ``--sparsity`` by magnitude, so ``masked_training`` hooks
every gradient and re-masks every weight after each step). Each is trained by
:class:`prunelab.training.Trainer` (SGD with momentum and weight decay, cross-entropy,
``--precision`` autocast, channels-last on CUDA for conv nets) on the same random batch of
``--batch`` images; rounds of ``--steps`` steps are timed interleaved (dense, masked, dense,
...) for ``--repeats`` rounds after ``--warmup`` rounds; reported: median and minimum step
time of each and the ratio of medians masked/dense (target: <= 1.05). CUDA timings are
synchronised. The pruned entries are checked to be exactly zero at the end.

Usage:
    python benchmarks/bench_train_step.py [--model torchvision.resnet18] [--batch 32]
        [--image-size 224] [--device cpu] [--precision fp32] [--threads 1]
        [--repeats 7] [--steps 3] [--out DIR (default: benchmarks/results/train_step)]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_mask_mechanics import results_header, run_info, run_line
from torch import nn

from prunelab.masks import get_mask, iter_masks, mask_gradients, masked_training
from prunelab.models import build_model
from prunelab.pruner import Pruner
from prunelab.training import Trainer, make_optimizer

OUT = Path(__file__).resolve().parent / "results" / "train_step"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(model: nn.Module, precision: str) -> Trainer:
    opt = make_optimizer(model.parameters(), "sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4)
    return Trainer(model, opt, precision=precision, distributed=False)


def _mask_mechanics_s(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Median time of what masking adds to one step: gradients times masks, then
    ``after_step()`` (weights times masks), timed alone on the model's own tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    times = []
    with masked_training(model, optimizer) as after_step:
        for p in params:
            p.grad = torch.zeros_like(p)
        for _ in range(11):
            _sync(params[0].device)
            t0 = time.perf_counter()
            mask_gradients(model)
            after_step()
            _sync(params[0].device)
            times.append(time.perf_counter() - t0)
    for p, g in zip(params, saved, strict=True):
        p.grad = g
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict:
    """Time both variants; return the figures."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs = {"num_classes": args.classes}
    dense = build_model(args.model, **kwargs).to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in dense.modules()):
        dense.to(memory_format=torch.channels_last)
    masked = copy.deepcopy(dense)
    Pruner(masked).step("magnitude", args.sparsity)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    batches = [(x, y)] * args.steps
    trainers = {"dense": _trainer(dense, args.precision),
                "masked": _trainer(masked, args.precision)}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(args.warmup + args.repeats):
        for name, tr in trainers.items():
            _sync(device)
            t0 = time.perf_counter()
            tr.train_epoch(batches)
            _sync(device)
            if r >= args.warmup:
                times[name].append((time.perf_counter() - t0) / args.steps)
    mech = _mask_mechanics_s(masked, trainers["masked"].optimizer)
    zero = all(bool((m._parameters[f"{n}_orig"][get_mask(m, n) == 0] == 0).all())
               for _, m, n, _ in iter_masks(masked))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": args.model, "batch": args.batch, "image_size": args.image_size,
        "device": str(device), "precision": args.precision, "sparsity": args.sparsity,
        "steps_per_round": args.steps, "repeats": args.repeats,
        "median_s": med, "min_s": {k: min(v) for k, v in times.items()},
        "images_per_s": {k: args.batch / v for k, v in med.items()},
        "ratio_masked_dense": med["masked"] / med["dense"],
        "ratio_of_mins": min(times["masked"]) / min(times["dense"]),
        "mask_mechanics_s": mech,
        "pruned_exactly_zero": zero, "times_s": times,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        **run_info(args.threads),
    } | {"load_average_1min_at_end": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="torchvision.resnet18")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--tag", default=None, help="file name stem (default: from the settings)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or (f"{args.model.replace('torchvision.', '')}-b{args.batch}-"
                       f"{args.device.replace(':', '')}-{args.precision}-t{args.threads}")
    (out / f"{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    cmd = "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
    lines = [
        *results_header(f"Training step, masked vs dense: {tag}", cmd),
        "| variant | median step (s) | min step (s) | images/s (median) |",
        "|---|---|---|---|",
    ]
    for k in ("dense", "masked"):
        lines.append(f"| {k} | {res['median_s'][k]:.4f} | {res['min_s'][k]:.4f} | "
                     f"{res['images_per_s'][k]:.1f} |")
    lines += ["", f"Ratio of medians masked/dense: **{res['ratio_masked_dense']:.3f}** "
              f"(target <= 1.05); ratio of minimums {res['ratio_of_mins']:.3f}; pruned entries "
              f"exactly zero: {res['pruned_exactly_zero']}.", "",
              f"What masking itself adds to a step (gradients times masks, then weights times "
              f"masks, timed alone): {1e3 * res['mask_mechanics_s']:.1f} ms, "
              f"{100 * res['mask_mechanics_s'] / res['median_s']['dense']:.2f}% of the dense "
              "step; the rest of any difference between the two medians is timing noise.",
              "", f"Measured with {run_line(res)}" + (f", GPU {res['gpu']}" if res["gpu"] else "")
              + ".", ""]
    (out / f"{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
