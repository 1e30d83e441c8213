"""Model files: a trained (possibly pruned) model, self-describing and safe to load.

A model file is a safetensors file holding the state dict (with ``*_orig``/``*_mask`` entries
for pruned tensors) and JSON metadata: how to build the model (registry name and kwargs),
which dataset and input normalisation it expects, and dropout rates. Loading rebuilds the
model from the registry and installs the masks; nothing is unpickled.

Example:
    >>> import tempfile, torch
    >>> from prunelab.models import build_model
    >>> path = tempfile.mkdtemp() + "/m.safetensors"
    >>> save_model_file(path, build_model("lenet300"), {"name": "lenet300", "kwargs": {}},
    ...                 dataset={"name": "mnist", "mean": 0.13, "std": 0.31})
    >>> model, meta = load_model_file(path)
    >>> meta["dataset"]["name"]
    'mnist'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, load_tensors, save_tensors
from .masks import load_pruned_state_dict
from .models import build_model

__all__ = ["load_any_model", "load_model_file", "save_model_file"]


def save_model_file(
    path: str | Path,
    model: nn.Module,
    model_spec: Mapping[str, Any],
    *,
    dataset: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` (masks included) and how to rebuild it, atomically.

    Args:
        path: destination ``.safetensors`` file.
        model: the model.
        model_spec: ``{"name": registry name or import path, "kwargs": {...}}``.
        dataset: ``{"name", "mean", "std"}`` of the inputs it expects.
        extra: more JSON metadata (e.g. a summary).
    """
    dropout = {n: float(m.p) for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    meta = {
        "kind": "model",
        "version": 1,
        "model": {"name": model_spec["name"], "kwargs": dict(model_spec.get("kwargs", {}))},
        "dataset": dict(dataset or {}),
        "dropout": dropout,
        **dict(extra or {}),
    }
    save_tensors(path, model.state_dict(), meta)


def load_model_file(
    path: str | Path, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a model file (masks installed).

    Raises:
        prunelab.checkpoint.CheckpointError: missing/corrupt file or not a model file.
    """
    tensors, meta = load_tensors(path, device=device)
    if meta.get("kind") != "model":
        raise CheckpointError(
            f"{str(path)!r} is a prunelab file of kind {meta.get('kind', meta.get('format'))!r}, "
            "not a model file"
        )
    spec = meta["model"]
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    load_pruned_state_dict(model, tensors)
    mods = dict(model.named_modules())
    for name, p in meta.get("dropout", {}).items():
        if name in mods:
            mods[name].p = p
    return model.to(torch.device(device)), meta


def load_any_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model file, or a compact export (Han relative-index, CSR, dense) of one.

    Raises:
        prunelab.checkpoint.CheckpointError: not a prunelab model or export file.
    """
    from .export import ExportFormatError, load_compact

    try:
        return load_model_file(path, device=device)
    except CheckpointError as exc:
        try:
            state, info = load_compact(path)
        except (ExportFormatError, FileNotFoundError):
            raise exc from None
    if "model" not in info:
        raise CheckpointError(f"{str(path)!r} is a compact export without a model description")
    model = build_model(info["model"]["name"], **info["model"].get("kwargs", {}))
    model.load_state_dict(state)
    return model.to(device), info
