"""``prunelab make-imagefolder``: write MNIST or Fashion-MNIST as an ImageNet-layout folder."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _cmd_make(args: argparse.Namespace) -> int:
    from ..data.imagefolder import write_imagefolder

    try:
        record = write_imagefolder(
            args.dataset, args.out, size=args.size, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, seed=args.seed, data_root=args.data_root,
            download=not args.no_download,
        )
    except FileExistsError as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {sum(record['train_counts'])} train and {sum(record['val_counts'])} val "
          f"images of {len(record['classes'])} classes ({args.size}x{args.size} RGB PNG) to "
          f"{args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``make-imagefolder`` to the ``prunelab`` command."""
    from ..data.datasets import DATASETS

    p = sub.add_parser(
        "make-imagefolder", help="write MNIST / Fashion-MNIST as an image folder of PNGs",
        description="Write a dataset as OUT/train/<class>/<index>.png (its training images) "
        "and OUT/val/<class>/<index>.png (its test images), RGB, SIZE x SIZE, with "
        "OUT/classes.json; the layout `open_imagefolder` (and ImageNet) uses.",
    )
    p.add_argument("dataset", choices=tuple(DATASETS))
    p.add_argument("out", help="folder to create (must not exist, or be empty)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--train-per-class", type=int, help="training images per class (default all)")
    p.add_argument("--val-per-class", type=int, help="val images per class (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class draw")
    p.add_argument("--data-root", help="dataset directory (default: shipped data / PRUNELAB_DATA)")
    p.add_argument("--no-download", action="store_true", help="do not fetch missing files")
    p.set_defaults(func=_cmd_make)
