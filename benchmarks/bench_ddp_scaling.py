"""Data-parallel scaling on CPU: 2 gloo ranks against 1 process, through prunelab's Trainer.

One global batch of ``--batch`` images is trained per step in three set-ups:

- ``1 process x 1 thread`` (the baseline),
- ``2 ranks x 1 thread`` (``DistributedDataParallel`` over gloo, each rank ``batch / 2``
  images, gradients averaged and re-masked after the all-reduce, as ``torchrun -m prunelab``
  trains),
- ``1 process x 2 threads`` (what the same two cores give without DDP).

The model's Conv2d/Linear weights are pruned to ``--sparsity`` by magnitude (``0``: dense), so
the masked-training path is what is timed. Each measurement starts fresh processes, trains
``--warmup`` steps untimed and then ``--steps`` timed steps (the slowest rank's time counts);
the set-ups are measured interleaved for ``--repeats`` rounds. Reported: median and minimum
images/s of each, and the scaling efficiency ``ips(2 ranks) / (2 * ips(1 process x 1 thread))``
(1.0 is perfect). The masks are checked identical on both ranks at the end.

Usage (from the repository root):
    python benchmarks/bench_ddp_scaling.py [--model resnet20] [--batch 128] [--image-size 32]
        [--sparsity 0.9] [--repeats 5] [--steps 6]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_mask_mechanics import results_header, run_info, run_line

from prunelab.distributed import mask_digest
from prunelab.models import build_model
from prunelab.pruner import Pruner
from prunelab.training import Trainer, make_optimizer

SETUPS = {"1 process x 1 thread": (1, 1), "2 ranks x 1 thread": (2, 1),
          "1 process x 2 threads": (1, 2)}
OUT = Path(__file__).resolve().parent / "results" / "ddp_scaling"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, threads: int, port: int, args: argparse.Namespace,
            out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
    try:
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=args.classes)
        if args.sparsity > 0:
            Pruner(model).step("magnitude", args.sparsity)
        opt = make_optimizer(model.parameters(), "sgd", lr=1e-3, momentum=0.9,
                             weight_decay=5e-4)
        trainer = Trainer(model, opt, distributed=world > 1)
        g = torch.Generator().manual_seed(rank)
        n = args.batch // world
        x = torch.randn(n, 3, args.image_size, args.image_size, generator=g)
        y = torch.randint(0, args.classes, (n,), generator=g)
        trainer.train_epoch([(x, y)] * args.warmup)
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        trainer.train_epoch([(x, y)] * args.steps)
        if world > 1:
            dist.barrier()  # the slowest rank's time counts
        elapsed = time.perf_counter() - t0
        digest = mask_digest(model)
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"seconds": elapsed, "digest": digest}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _measure(world: int, threads: int, args: argparse.Namespace) -> tuple[float, bool]:
    """Images/s of one fresh run of ``world`` processes; whether their masks agree."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, threads, _free_port(), args, tmp), nprocs=world,
                 join=True)
        res = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    seconds = max(r["seconds"] for r in res)
    return args.batch * args.steps / seconds, len({r["digest"] for r in res}) == 1


def measure(args: argparse.Namespace) -> dict:
    """Interleaved rounds over the set-ups; the figures."""
    ips: dict[str, list[float]] = {k: [] for k in SETUPS}
    agree = True
    for _ in range(args.repeats):
        for name, (world, threads) in SETUPS.items():
            value, same = _measure(world, threads, args)
            ips[name].append(value)
            agree = agree and same
    med = {k: statistics.median(v) for k, v in ips.items()}
    base = med["1 process x 1 thread"]
    return {
        "model": args.model, "batch": args.batch, "image_size": args.image_size,
        "sparsity": args.sparsity, "steps": args.steps, "repeats": args.repeats,
        "images_per_s_median": med, "images_per_s_min": {k: min(v) for k, v in ips.items()},
        "images_per_s": ips,
        "speedup_vs_1x1": {k: v / base for k, v in med.items()},
        "scaling_efficiency_2_ranks": med["2 ranks x 1 thread"] / (2 * base),
        "masks_identical_on_ranks": agree,
        **run_info(1),
    } | {"load_average_1min_at_end": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128, help="global batch (even)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.batch % 2:
        p.error(f"--batch must be even (it is split over 2 ranks), got {args.batch}")
    res = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.model}-b{args.batch}-s{args.sparsity:g}"
    (args.out / f"{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    cmd = "python benchmarks/bench_ddp_scaling.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    lines = [
        *results_header(f"DDP scaling on CPU: {tag}", cmd),
        f"{args.model}, global batch {args.batch} of {args.image_size}-px images, "
        f"{args.sparsity:.0%} of the weights masked; {args.steps} timed steps per measurement, "
        f"{args.repeats} interleaved rounds.",
        "",
        "| set-up | images/s (median) | images/s (min) | speed-up vs 1 process x 1 thread |",
        "|---|---|---|---|",
    ]
    for k in SETUPS:
        lines.append(f"| {k} | {res['images_per_s_median'][k]:.1f} | "
                     f"{res['images_per_s_min'][k]:.1f} | {res['speedup_vs_1x1'][k]:.2f}x |")
    lines += ["", f"Scaling efficiency of 2 ranks: **{res['scaling_efficiency_2_ranks']:.2f}** "
              f"(1.00 is perfect); masks identical on both ranks: "
              f"{res['masks_identical_on_ranks']}.", "",
              f"Measured with {run_line(res).replace('1 thread(s), ', '')}.", ""]
    (args.out / f"{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
