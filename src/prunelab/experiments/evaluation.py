"""Measure a saved model: test error and parameter counts, from the file alone.

Example:
    >>> import torch
    >>> from torch import nn
    >>> test_error(nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4).long()) in (0.0, 100.0)
    True
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..data import DatasetError, TensorSplits, prepare_splits, splits_for_model_file
from ..data.device import OnDevice
from ..devices import resolve_device
from ..distributed import rank, world_size
from ..metrics import model_stats
from ..modelfile import load_any_model
from ..training import evaluate, evaluate_batches

__all__ = ["evaluate_model_file", "open_splits", "split_test_error", "test_error"]


def test_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 error in percent."""
    _, acc = evaluate(model, x, y)
    return 100.0 * (1.0 - acc)


test_error.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def open_splits(cfg: RunConfig, device: str | torch.device = "cpu") -> Any:
    """The data of a run config: in-memory tensors, or an image folder streamed from disk.

    Raises:
        prunelab.data.DatasetError: missing or malformed data (one line naming the path).
    """
    d = cfg.data
    if d.name != "imagefolder":
        return prepare_splits(d.name, d.root, val_size=d.val_size, seed=cfg.seed,
                              normalize=d.normalize, subset=d.subset, device=device)
    from ..data.imagefolder import ImageFolderSpec, open_imagefolder

    if d.root is None:
        raise DatasetError("data.root is unset: an image folder needs --data-root DIR (the "
                           "ImageNet layout DIR/train/<class>/*, DIR/val/<class>/*)")
    spec = ImageFolderSpec(
        root=d.root, val_size=d.val_size, seed=cfg.seed, image_size=d.image_size,
        resize_size=d.resize_size, mean=tuple(d.mean), std=tuple(d.std), workers=d.workers,
        pin_memory=torch.device(device).type == "cuda", subset=d.subset,
        train_augment=d.augment,
    )
    return open_imagefolder(spec)


def split_test_error(
    model: torch.nn.Module, splits: Any, batch_size: int, device: str | torch.device
) -> float:
    """Top-1 test error in percent on the test split of in-memory or streamed splits.

    Streamed splits are evaluated shard by shard in a data-parallel run (every rank must
    call this) and the counts summed over ranks.
    """
    if isinstance(splits, TensorSplits):
        return test_error(model, splits.x_test, splits.y_test)
    shard = splits.test_batches(batch_size, rank=rank(), world=world_size())
    _, acc = evaluate_batches(model, OnDevice(shard, device), reduce=True)
    return 100.0 * (1.0 - acc)


def evaluate_model_file(
    path: str | Path,
    *,
    data_root: str | None = None,
    device: str = "cpu",
    allow_import: bool | Collection[str] = False,
) -> dict[str, Any]:
    """Test error (percent) and parameter counts of a saved model or compact export.

    Args:
        path: a model file (``model.safetensors``) or a compact export file.
        data_root: dataset root (default: the shipped data / ``PRUNELAB_DATA``).
        device: ``"cpu"`` or ``"cuda"``.
        allow_import: honour an import path as the file's model name (see
            :func:`prunelab.modelfile.load_model_file`).

    Returns:
        ``{"test_error", "params_total", "params_nonzero", ...}``.

    Raises:
        prunelab.checkpoint.CheckpointError: not a prunelab model file.
    """
    resolve_device(device)
    model, meta = load_any_model(path, device=device, allow_import=allow_import)
    if (meta.get("dataset") or {}).get("name") == "imagefolder":
        from ..data.imagefolder import ImageFolderSpec, open_imagefolder

        changes: dict[str, Any] = {"workers": min(4, os.cpu_count() or 1)}
        if data_root is not None:
            changes["root"] = data_root
        splits = open_imagefolder(ImageFolderSpec.from_meta(meta["dataset"], **changes))
        err = split_test_error(model, splits, 250, device)
        stats = model_stats(model, splits.example(16).to(device))
    else:
        splits = splits_for_model_file(meta, data_root=data_root, device=device)
        err = test_error(model, splits.x_test, splits.y_test)
        stats = model_stats(model, splits.x_test[:256])
    return {"test_error": err, "params_total": stats.params_total,
            "params_nonzero": stats.params_nonzero, "compression": stats.compression,
            "model": meta["model"]["name"], "dataset": splits.meta["name"], "stats": stats}
