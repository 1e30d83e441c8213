"""``prunelab share``: Deep Compression's weight sharing of a saved model, with centroid
fine-tuning (:mod:`prunelab.experiments.share`)."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _cmd_share(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..experiments.share import ShareSettings, share_model_file
    from ..sharing.bits import BITS_RANGE
    from .export import parse_bits

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    layers = tuple(p for p in args.layers.split(",") if p) if args.layers else None
    settings = ShareSettings(
        bits=parse_bits(args.bits, "--bits", BITS_RANGE[1]), layers=layers, init=args.init,
        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
        seed=args.seed,
    )
    result = share_model_file(args.model_file, args.out, settings, data_root=args.data_root,
                              device=args.device, allow_import=args.allow_import)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    console = Console()
    console.print("| layer | kind | bits | clusters | surviving / total |", soft_wrap=True,
                  markup=False)
    console.print("|---|---|---:|---:|---:|", markup=False)
    for r in result.sharing["layers"]:
        console.print(f"| {r['layer']} | {r['kind']} | {r['bits']} | {r['clusters']} | "
                      f"{r['surviving']} / {r['total']} |", soft_wrap=True, markup=False)
    console.print(
        f"test error {result.test_error_source:.2f}% -> shared {result.test_error_shared:.2f}% "
        f"-> kept epoch {result.best_epoch} of {settings.epochs} (by validation "
        f"{result.val_error:.2f}%): {result.test_error:.2f}%; wrote {result.out} "
        f"({result.time_s:.1f} s); next: prunelab export {result.out} --format compressed "
        "--out FILE", soft_wrap=True, markup=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``share`` to the ``prunelab`` command."""
    p = sub.add_parser(
        "share",
        help="weight sharing (k-means codebooks) of a saved model, centroids fine-tuned",
        description="Deep Compression's weight sharing: each layer's surviving weights become "
        "their k-means centroids (2**bits per layer; 8 bits conv, 5 bits fc by default), then "
        "the centroids are fine-tuned on the file's training split (summed gradients, masks "
        "kept); the epoch of lowest validation error is written as a model file. `prunelab "
        "export OUT --format compressed` then Huffman-codes it.",
    )
    p.add_argument("model_file", help="model file (model.safetensors of a run)")
    p.add_argument("--out", required=True, help="output model file (.safetensors)")
    p.add_argument("--bits", help="index width: '5', or 'fc=5,conv=8' (the default), or per "
                   "layer 'fc1=4'")
    p.add_argument("--layers", help="comma-separated glob patterns of the layers to share "
                   "(default: every Linear/Conv layer)")
    p.add_argument("--init", choices=("linear", "density", "random"), default="linear",
                   help="centroid initialisation (default linear, the paper's best)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (0: share only)")
    p.add_argument("--lr", type=float, default=1e-4, help="centroid learning rate (1e-4)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data-root", help="dataset root (default: shipped data / PRUNELAB_DATA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    from . import add_allow_import

    add_allow_import(p)
    p.set_defaults(func=_cmd_share)
