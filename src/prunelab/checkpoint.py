"""Checkpoints and model files: tensors in safetensors, metadata as JSON, written atomically.

One file holds everything (tensors plus a JSON document in the safetensors header), written
to a temporary file, flushed to disk and moved into place with ``os.replace``, so a crash
leaves either the old file or the new one, never a torn one. Loading never unpickles.

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/ck.safetensors"
    >>> save_tensors(path, {"w": torch.ones(2)}, {"step": 3})
    >>> tensors, meta = load_tensors(path)
    >>> meta["step"], tensors["w"].tolist()
    (3, [1.0, 1.0])
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "load_tensors",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "save_tensors",
    "write_safetensors_atomic",
]

META_KEY = "prunelab"


class CheckpointError(RuntimeError):
    """A checkpoint or model file is missing, truncated or not a prunelab file."""


def write_safetensors_atomic(
    path: str | Path, tensors: Mapping[str, torch.Tensor], header: Mapping[str, str]
) -> Path:
    """Write a safetensors file atomically: temp file, fsync, ``os.replace``, fsync the dir.

    A crash leaves either the old file or the new one, never a torn one. The file gets the
    usual mode (``0o666 & ~umask``), not ``mkstemp``'s 0600.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=dict(header))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename durable too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Write tensors and a JSON-serialisable ``meta`` to ``path`` atomically.

    Raises:
        TypeError: ``meta`` is not JSON-serialisable.
    """
    write_safetensors_atomic(path, tensors, {META_KEY: json.dumps(meta, sort_keys=True)})


def load_tensors(
    path: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`.

    Raises:
        CheckpointError: missing file, not safetensors (or truncated), or no prunelab metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    try:
        tensors = load_file(str(path), device=device)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from None
    if META_KEY not in header:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not a prunelab file")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(path)!r} has corrupt prunelab metadata: {exc}") from None
    return tensors, meta


def optimizer_to_flat(
    optimizer: torch.optim.Optimizer, prefix: str = "optim."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON (no pickle needed).

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        >>> p.grad = torch.ones(2); opt.step()
        >>> t, j = optimizer_to_flat(opt)
        >>> sorted(t)
        ['optim.0.momentum_buffer']
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}{pid}.{k}"] = v
                entry[k] = {"tensor": f"{prefix}{pid}.{k}"}
            else:
                entry[k] = {"value": v}
        state_json[str(pid)] = entry
    return tensors, {"state": state_json, "param_groups": sd["param_groups"]}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    flat: Mapping[str, Any],
) -> None:
    """Load the output of :func:`optimizer_to_flat` into ``optimizer``.

    Raises:
        CheckpointError: a referenced tensor is missing.
    """
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in flat["state"].items():
        st: dict[str, Any] = {}
        for k, v in entry.items():
            if "tensor" in v:
                if v["tensor"] not in tensors:
                    raise CheckpointError(f"optimizer tensor {v['tensor']!r} missing")
                st[k] = tensors[v["tensor"]]
            else:
                st[k] = v["value"]
        state[int(pid)] = st
    optimizer.load_state_dict({"state": state, "param_groups": flat["param_groups"]})
