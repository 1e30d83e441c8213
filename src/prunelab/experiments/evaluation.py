"""Measure a saved model: test error and parameter counts, from the file alone.

Example:
    >>> import torch
    >>> from torch import nn
    >>> test_error(nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4).long()) in (0.0, 100.0)
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import splits_for_model_file
from ..metrics import model_stats
from ..modelfile import load_any_model
from ..training import evaluate

__all__ = ["evaluate_model_file", "test_error"]


def test_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 error in percent."""
    _, acc = evaluate(model, x, y)
    return 100.0 * (1.0 - acc)


test_error.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def evaluate_model_file(
    path: str | Path, *, data_root: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Test error (percent) and parameter counts of a saved model or compact export.

    Args:
        path: a model file (``model.safetensors``) or a compact export file.
        data_root: dataset root (default: the shipped data / ``PRUNELAB_DATA``).
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``{"test_error", "params_total", "params_nonzero", ...}``.

    Raises:
        prunelab.checkpoint.CheckpointError: not a prunelab model file.
    """
    model, meta = load_any_model(path, device=device)
    splits = splits_for_model_file(meta, data_root=data_root, device=device)
    err = test_error(model, splits.x_test, splits.y_test)
    stats = model_stats(model, splits.x_test[:256])
    return {"test_error": err, "params_total": stats.params_total,
            "params_nonzero": stats.params_nonzero, "compression": stats.compression,
            "model": meta["model"]["name"], "dataset": splits.meta["name"], "stats": stats}
