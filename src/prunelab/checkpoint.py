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

import errno
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prunelab.atomic import atomic_write
from prunelab.errors import FileFormatError, one_line, short_repr

__all__ = [
    "CheckpointError",
    "content_digest",
    "load_tensors",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "save_tensors",
    "write_safetensors_atomic",
]

META_KEY = "prunelab"
#: Header entry holding :func:`content_digest` of the metadata and tensors (files written
#: before it existed have none and are read unverified).
DIGEST_KEY = "prunelab.sha256"


class CheckpointError(FileFormatError, RuntimeError):
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
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(clean, tmp, metadata=dict(header))
        except SafetensorError as exc:  # safetensors reports I/O failures (a full disk) itself
            text = str(exc)
            code = errno.ENOSPC if "No space left" in text else errno.EIO
            raise OSError(code, os.strerror(code) + f" ({one_line(text, 120)})",
                          str(path)) from None

    return atomic_write(path, write)


def content_digest(tensors: Mapping[str, torch.Tensor], text: str = "") -> str:
    """SHA-256 over ``text`` and every tensor's name, dtype, shape and bytes (names sorted).

    Stored in the files prunelab writes and checked when they are read, so a flipped bit or
    an edited header anywhere in a file is an error, not a silently different model.

    Example:
        >>> a = content_digest({"w": torch.zeros(2)}, "{}")
        >>> a == content_digest({"w": torch.zeros(2)}, "{}"), a == content_digest({"w": torch.ones(2)})
        (True, False)
    """  # noqa: E501
    h = hashlib.sha256()
    h.update(text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.contiguous().cpu().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Write tensors and a JSON-serialisable ``meta`` to ``path`` atomically, with a SHA-256
    of both (:func:`content_digest`) that :func:`load_tensors` verifies.

    Raises:
        TypeError: ``meta`` is not JSON-serialisable.
    """
    text = json.dumps(meta, sort_keys=True)
    write_safetensors_atomic(path, tensors, {META_KEY: text,
                                             DIGEST_KEY: content_digest(tensors, text)})


def load_tensors(
    path: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`.

    Raises:
        CheckpointError: missing file, not safetensors (or truncated), or no prunelab metadata.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, expected a .safetensors file")
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
    if set(header) - {META_KEY, DIGEST_KEY}:
        raise CheckpointError(f"{str(path)!r} has unknown header entries "
                              f"{short_repr(sorted(set(header) - {META_KEY, DIGEST_KEY}))}; "
                              "it is corrupt or not written by prunelab")
    digest = header.get(DIGEST_KEY)
    if digest is not None and content_digest(tensors, header[META_KEY]) != digest:
        raise CheckpointError(
            f"{str(path)!r} fails its SHA-256 check: its tensors or metadata changed after "
            "it was written (a corrupt copy or an edited file)"
        )
    try:
        meta = json.loads(header[META_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{str(path)!r} has corrupt prunelab metadata: "
                              f"{one_line(str(exc), 120)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{str(path)!r} has prunelab metadata that is not a mapping")
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
