"""Image-folder loading speed: ``open_imagefolder(...).train_batches`` vs a plain torchvision loop.

Both read the same folder: MNIST written by ``prunelab.data.write_imagefolder`` at ``--size``
pixels (RGB PNG), ``--train-per-class`` training images per class (kept in ``--folder`` and
reused when it is there). Per worker count in ``--workers``:

* ``ours``: ``open_imagefolder(ImageFolderSpec(folder, val_size=0, image_size=size,
  workers=w)).train_batches(batch)``: the spec's defaults (persistent workers, no pinned
  memory), a ``DistributedSampler`` over all training images, augmentation seeded per image;
* ``torchvision``: ``ImageFolder(folder / "train", transform=Compose([RandomResizedCrop(size),
  RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet mean, std)]))`` in a
  ``DataLoader(shuffle=True)`` with the same batch size and workers (persistent when > 0).

The transforms are the same operations (crop box drawn by torchvision's algorithm, bilinear
resize, flip, to-tensor, normalisation). One warm-up epoch each (it starts the workers),
then ``--repeats`` rounds of one epoch of each, interleaved (A B A B ...) so that machine
noise hits both alike. One sample is the wall time of one epoch: iterating every batch in
the main process (nothing else is done with it). Reported: images/s of the median and of
the best (minimum) epoch time, and the ratio of medians ours/torchvision. Last, per image
(:func:`micro_us`): the whole training transform of a decoded image, and the two steps
where the two differ: drawing the crop box and flip, and normalising with a copy or in place.

Usage:
    python benchmarks/bench_loader.py [--repeats 15] [--workers 0 2] [--batch 64]
        [--size 64] [--train-per-class 200] [--folder /tmp/prunelab-bench-loader]
        [--threads 1] [--out benchmarks/results/loader]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision
from bench_mask_mechanics import results_header, run_info, run_line
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from prunelab.data import ImageFolderSpec, open_imagefolder, write_imagefolder
from prunelab.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _crop_params,
    _TrainTransform,
    load_image,
)

LOADERS = ("ours", "torchvision")


def make_loaders(folder: Path, size: int, batch: int, workers: int) -> dict[str, Iterable]:
    ours = open_imagefolder(ImageFolderSpec(folder, val_size=0, image_size=size,
                                            workers=workers)).train_batches(batch)
    transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    plain = DataLoader(ImageFolder(str(folder / "train"), transform=transform),
                       batch_size=batch, shuffle=True, num_workers=workers,
                       persistent_workers=workers > 0)
    return {"ours": ours, "torchvision": plain}


def one_epoch(loader: Iterable, seed: int) -> tuple[float, int]:
    """Wall time of one epoch and the images it gave."""
    torch.manual_seed(seed)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(seed)
    n = 0
    t0 = time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return time.perf_counter() - t0, n


def bench(folder: Path, size: int, batch: int, workers: int, repeats: int) -> dict[str, object]:
    loaders = make_loaders(folder, size, batch, workers)
    times: dict[str, list[float]] = {k: [] for k in LOADERS}
    images = {}
    for name in LOADERS:  # warm-up: starts the (persistent) workers, fills the page cache
        images[name] = one_epoch(loaders[name], 0)[1]
    for r in range(repeats):
        for name in LOADERS:
            times[name].append(one_epoch(loaders[name], r + 1)[0])
    out: dict[str, object] = {"workers": workers}
    for name in LOADERS:
        med, best = statistics.median(times[name]), min(times[name])
        out[name] = {"images": images[name], "epoch_s": times[name],
                     "images_per_s_median": images[name] / med,
                     "images_per_s_best": images[name] / best}
    out["ours_over_torchvision"] = (out["ours"]["images_per_s_median"]  # type: ignore[index]
                                    / out["torchvision"]["images_per_s_median"])  # type: ignore[index]
    print(f"workers {workers}: ours {out['ours']['images_per_s_median']:.0f} img/s, "  # type: ignore[index]
          f"torchvision {out['torchvision']['images_per_s_median']:.0f} img/s, "  # type: ignore[index]
          f"ratio {out['ours_over_torchvision']:.3f}")
    return out


def micro_us(folder: Path, size: int, n: int = 500, repeats: int = 9) -> dict[str, float]:
    """Median microseconds per image of the transform and of its parts where the two differ.

    ``transform_*``: the whole training transform of a decoded image, torchvision's
    ``Compose`` vs prunelab's; ``draw_*``: one image's crop box and flip, torchvision
    (``get_params`` + ``torch.rand``) vs prunelab (``random.Random(seed)`` and the same
    algorithm); ``normalize_*``: ToTensor + Normalize of a cropped image, copying
    (torchvision's default) vs in place (prunelab).
    """
    img = load_image(str(min((folder / "train").rglob("*.png"))))
    crop = T.RandomResizedCrop(size)(img)
    to_tensor = T.ToTensor()
    norm, norm_in_place = (T.Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=flag)
                           for flag in (False, True))
    scale, ratio = [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0]
    composed = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ours = _TrainTransform(ImageFolderSpec(folder, val_size=0, image_size=size))

    def transform_torchvision() -> None:
        for _ in range(n):
            composed(img)

    def transform_prunelab() -> None:
        for i in range(n):
            ours(img, i)

    def draw_torchvision() -> None:
        for _ in range(n):
            T.RandomResizedCrop.get_params(img, scale, ratio)
            torch.rand(1)

    def draw_prunelab() -> None:
        for i in range(n):
            rng = random.Random(i)
            _crop_params(img.width, img.height, rng)
            rng.random()

    def normalize_copy() -> None:
        for _ in range(n):
            norm(to_tensor(crop))

    def normalize_in_place() -> None:
        for _ in range(n):
            norm_in_place(to_tensor(crop))

    steps = {"transform_torchvision": transform_torchvision,
             "transform_prunelab": transform_prunelab,
             "draw_torchvision": draw_torchvision, "draw_prunelab": draw_prunelab,
             "normalize_copy": normalize_copy, "normalize_in_place": normalize_in_place}
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, f in steps.items():
            t0 = time.perf_counter()
            f()
            samples[name].append((time.perf_counter() - t0) / n * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def markdown(result: dict[str, object], command: str) -> str:
    lines = [
        *results_header("Image-folder loading: open_imagefolder vs a plain torchvision loop",
                        command),
        run_line(result) + f", torchvision {result['torchvision']}. Folder: MNIST written by "
        f"`write_imagefolder` as {result['size']}x{result['size']} RGB PNG, "
        f"{result['train_per_class']} training images per class ({result['images']} images); "
        f"batch {result['batch']}; {result['repeats']} interleaved epochs of each loader after "
        "one warm-up epoch. Images/s of the median [best] epoch wall time; the ratio is of "
        "the medians (> 1: ours is faster). Both do RandomResizedCrop + horizontal flip + "
        "ToTensor + Normalize per image in the workers (in the main process with 0 workers) "
        "and collate batches of float32; see the docstring of `benchmarks/bench_loader.py`.",
        "",
        "| workers | ours img/s | torchvision ImageFolder + DataLoader img/s | ours/torchvision |",
        "|---|---|---|---|",
    ]
    for r in result["runs"]:  # type: ignore[union-attr]
        o, p = r["ours"], r["torchvision"]
        lines.append(f"| {r['workers']} | {o['images_per_s_median']:.0f} "
                     f"[{o['images_per_s_best']:.0f}] | {p['images_per_s_median']:.0f} "
                     f"[{p['images_per_s_best']:.0f}] | {r['ours_over_torchvision']:.3f} |")
    d = result["micro_us"]
    rest = ((d["transform_torchvision"] - d["transform_prunelab"])
            - (d["draw_torchvision"] - d["draw_prunelab"])
            - (d["normalize_copy"] - d["normalize_in_place"]))
    zero = next((r for r in result["runs"] if r["workers"] == 0), None)  # type: ignore[union-attr]
    per_image = ""
    if zero is not None:
        ours_us = 1e6 / zero["ours"]["images_per_s_median"]
        tv_us = 1e6 / zero["torchvision"]["images_per_s_median"]
        per_image = (f" With 0 workers one image costs {ours_us:.0f} us (ours) and {tv_us:.0f} us "
                     f"(torchvision) in all, a gap of {tv_us - ours_us:.0f} us.")
    lines += ["", "Where the difference comes from (per image, median us; the output is the same "
              "given the same crop box: `test_train_transform_is_torchvisions_given_the_crop_box`"
              "):", "",
              "| step | torchvision | prunelab |", "|---|---|---|",
              f"| whole training transform of a decoded image | {d['transform_torchvision']:.1f} "
              f"| {d['transform_prunelab']:.1f} |",
              f"| drawing the crop box and flip | {d['draw_torchvision']:.1f} (torch ops) | "
              f"{d['draw_prunelab']:.1f} (`random.Random`) |",
              f"| ToTensor + Normalize | {d['normalize_copy']:.1f} (copy) | "
              f"{d['normalize_in_place']:.1f} (in place) |",
              "",
              f"The rest of the transform's difference, {rest:.0f} us, lies in torchvision's "
              "transform objects around the same functional calls (`resized_crop`, `hflip`, "
              "`to_tensor`, `normalize`): the module calls of `RandomResizedCrop`, "
              "`RandomHorizontalFlip` and `Normalize`, the flip's tensor comparison; it is not "
              "broken down further." + per_image]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--folder", default="/tmp/prunelab-bench-loader")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/loader")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    if not folder.exists():
        write_imagefolder("mnist", folder, size=args.size, train_per_class=args.train_per_class,
                          val_per_class=1, seed=0)
    record = json.loads((folder / "classes.json").read_text())
    if (record["size"], record["train_per_class"]) != (args.size, args.train_per_class):
        raise SystemExit(f"{folder} holds {record['size']} px, {record['train_per_class']} per "
                         "class; remove it or pass another --folder")
    result: dict[str, object] = {**run_info(args.threads), "torchvision": torchvision.__version__,
                                 "size": args.size, "train_per_class": args.train_per_class,
                                 "images": sum(record["train_counts"]), "batch": args.batch,
                                 "repeats": args.repeats, "runs": []}
    for w in args.workers:
        result["runs"].append(bench(folder, args.size, args.batch, w, args.repeats))  # type: ignore[union-attr]
    result["micro_us"] = micro_us(folder, args.size)
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    workers = " ".join(str(w) for w in args.workers)
    command = (f"PYTHONPATH=src python benchmarks/bench_loader.py --repeats {args.repeats} "
               f"--workers {workers} --batch {args.batch} --size {args.size} --train-per-class "
               f"{args.train_per_class} --threads {args.threads} --out {args.out}")
    (out / "README.md").write_text(markdown(result, command))


if __name__ == "__main__":
    main()
