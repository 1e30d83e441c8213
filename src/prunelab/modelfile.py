"""Model files: a trained (possibly pruned) model, self-describing and safe to load.

A model file is a safetensors file holding the state dict (with ``*_orig``/``*_mask`` entries
for pruned tensors) and JSON metadata: how to build the model (registry name and kwargs),
which dataset and input normalisation it expects, and dropout rates. Loading rebuilds the
model from the registry and installs the masks; nothing is unpickled and nothing named by the
file is imported (an import path as the model's name needs ``allow_import``).

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

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError, load_tensors, save_tensors
from .errors import FileFormatError, UntrustedCodeError, one_line, short_repr
from .graph.resize import set_shapes
from .masks import load_pruned_state_dict
from .models import available_models, build_model
from .models.registry import MODELS, TORCHVISION_PREFIX, available_torchvision

__all__ = [
    "build_from_file",
    "check_model_spec",
    "load_any_model",
    "load_model_file",
    "save_model_file",
]


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
        model_spec: ``{"name": registry name or import path, "kwargs": {...}}``, plus
            ``"shapes": {tensor: shape}`` for a structurally pruned model (the
            ``shapes`` of :class:`~prunelab.channel_pruning.ChannelPruneResult`): loading
            builds the registry model, gives those tensors their pruned shapes (and the
            modules their widths), then loads the weights.
        dataset: ``{"name", "mean", "std"}`` of the inputs it expects.
        extra: more JSON metadata (e.g. a summary).
    """
    dropout = {n: float(m.p) for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    meta = {
        "kind": "model",
        "version": 1,
        "model": {"name": model_spec["name"], "kwargs": dict(model_spec.get("kwargs", {})),
                  **({"shapes": {k: list(v) for k, v in model_spec["shapes"].items()}}
                     if model_spec.get("shapes") else {})},
        "dataset": dict(dataset or {}),
        "dropout": dropout,
        **dict(extra or {}),
    }
    save_tensors(path, model.state_dict(), meta)


#: Keyword arguments a model file may not pass to its model's factory: the file holds the
#: weights, and torchvision would download pretrained ones.
_REFUSED_KWARGS = ("weights", "weights_backbone", "pretrained", "progress")

Trust = bool | Collection[str]


def _trusted(name: str, allow_import: Trust) -> bool:
    if isinstance(allow_import, bool):
        return allow_import
    return name in allow_import


def check_model_spec(spec: object, source: str, *, allow_import: Trust = False) -> dict[str, Any]:
    """Validate the ``{"name", "kwargs"}`` model description read from a file.

    A file is data: it may name a registered model (``lenet300``) or a torchvision one
    (``torchvision.resnet18``) with JSON keyword arguments; an import path
    (``package.module:Factory``) would import and run code, so it is refused unless
    ``allow_import`` is true or lists that very path (as a run's own config does).

    Raises:
        UntrustedCodeError: an import path that is not allowed.
        FileFormatError: anything else malformed (missing name, kwargs not a mapping, a
            refused keyword such as ``weights``).

    Example:
        >>> check_model_spec({"name": "lenet5", "kwargs": {}}, "m.safetensors")["name"]
        'lenet5'
        >>> check_model_spec({"name": "os:system"}, "m.safetensors")
        Traceback (most recent call last):
        ...
        prunelab.errors.UntrustedCodeError: m.safetensors names its model by the import path 'os:system'; ...
    """  # noqa: E501
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise FileFormatError(
            f"{source} has no model description (metadata 'model' must be "
            '{"name": <registered model>, "kwargs": {...}})'
        )
    name = spec["name"]
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise FileFormatError(f"{source}: model kwargs must be a mapping of names, "
                              f"got {short_repr(kwargs)}")
    if ":" in name and not _trusted(name, allow_import):
        raise UntrustedCodeError(
            f"{source} names its model by the import path {name!r}; a file being opened may "
            "only name registered models or torchvision.<name>, because an import path runs "
            "code; if you trust this file, pass --allow-import (allow_import=True)"
        )
    if ":" not in name and name not in MODELS and not (
        name.startswith(TORCHVISION_PREFIX)
        and name[len(TORCHVISION_PREFIX):] in available_torchvision()
    ):
        raise FileFormatError(
            f"{source} names an unknown model {short_repr(name)}; allowed: "
            f"{', '.join(available_models())} or torchvision.<name>"
        )
    refused = sorted(set(kwargs) & set(_REFUSED_KWARGS))
    if refused:
        raise FileFormatError(
            f"{source}: model kwargs {refused} are not allowed in a file (its weights are in "
            "the file; nothing is downloaded)"
        )
    shapes = spec.get("shapes", {})
    if not isinstance(shapes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list) and len(v) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
        for k, v in shapes.items()
    ):
        raise FileFormatError(
            f"{source}: model 'shapes' must map tensor names to lists of sizes (the widths of a "
            f"structurally pruned model), got {short_repr(shapes)}"
        )
    out: dict[str, Any] = {"name": name, "kwargs": dict(kwargs)}
    if shapes:
        out["shapes"] = {k: list(v) for k, v in shapes.items()}
    return out


def _probe_size(spec: Mapping[str, Any], source: str) -> int:
    """Number of elements the described model has, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            probe = build_model(spec["name"], **spec["kwargs"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise FileFormatError(f"{source}: its model description cannot be built: "
                              f"{one_line(str(exc), 200)}") from None
    sizes = {k: tuple(t.shape) for k, t in probe.state_dict().items()}
    for name, shape in spec.get("shapes", {}).items():
        full = sizes.get(name)
        if full is None:
            raise FileFormatError(f"{source}: its model 'shapes' name {short_repr(name)}, which "
                                  f"is not a tensor of {spec['name']!r}")
        if len(shape) != len(full) or any(a > b for a, b in zip(shape, full, strict=True)):
            raise FileFormatError(
                f"{source}: its model 'shapes' give {name!r} the shape {shape}; allowed: "
                f"{len(full)} sizes, each at most the original {list(full)} (pruning only shrinks)"
            )
        sizes[name] = tuple(shape)
    return sum(math.prod(s) for s in sizes.values())


def build_from_file(
    spec: object,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    *,
    allow_import: Trust = False,
) -> nn.Module:
    """Build the model a file describes and load the file's tensors into it (masks installed).

    The model is first built on the meta device: if it has more elements than the file holds
    tensors for, the file is refused before any real allocation (a few bytes of metadata
    cannot ask for gigabytes). Masks must be binary.

    Raises:
        UntrustedCodeError, FileFormatError: see :func:`check_model_spec`; also tensors that
            do not fit the model, or non-binary masks.
    """
    checked = check_model_spec(spec, source, allow_import=allow_import)
    held = sum(t.numel() for t in tensors.values())
    needed = _probe_size(checked, source)
    if needed > held:
        raise FileFormatError(
            f"{source}: its model {checked['name']!r} has {needed:,} elements but the file "
            f"holds only {held:,}; the file is truncated or its model description was edited"
        )
    for key, value in tensors.items():
        if key.endswith("_mask") and not bool(((value == 0) | (value == 1)).all()):
            raise FileFormatError(f"{source}: mask {key!r} holds values other than 0 and 1")
    model = build_model(checked["name"], **checked["kwargs"])
    if checked.get("shapes"):  # a structurally pruned model: rebuild its widths first
        set_shapes(model, checked["shapes"])
    try:
        load_pruned_state_dict(model, tensors)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise FileFormatError(f"{source}: its tensors do not fit its model "
                              f"{checked['name']!r}: {one_line(str(exc), 240)}") from None
    return model


def load_model_file(
    path: str | Path, device: str = "cpu", *, allow_import: Trust = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a model file (masks installed); nothing in the file runs.

    Args:
        path: a file written by :func:`save_model_file`.
        device: where to put the model.
        allow_import: honour an import path as the model's name (``True``, or a collection of
            the paths allowed, such as a run's own config's); files may otherwise name only
            registered and torchvision models.

    Raises:
        prunelab.checkpoint.CheckpointError: missing/corrupt file or not a model file.
        prunelab.errors.FileFormatError: a bad model description or tensors that do not fit
            (:class:`~prunelab.errors.UntrustedCodeError` for an import path not allowed).
    """
    tensors, meta = load_tensors(path, device="cpu")
    source = repr(str(path))
    if meta.get("kind") != "model":
        raise CheckpointError(
            f"{source} is a prunelab file of kind "
            f"{short_repr(meta.get('kind', meta.get('format')))}, not a model file"
        )
    model = build_from_file(meta.get("model"), tensors, source, allow_import=allow_import)
    mods = dict(model.named_modules())
    dropout = meta.get("dropout", {})
    if isinstance(dropout, Mapping):
        for name, p in dropout.items():
            if name in mods and isinstance(p, int | float) and 0 <= p < 1:
                mods[name].p = float(p)
    return model.to(torch.device(device)), meta


def load_any_model(
    path: str | Path, device: str = "cpu", *, allow_import: Trust = False
) -> tuple[torch.nn.Module, dict]:
    """Load a model file, or a compact export (Han relative-index, CSR, dense, compressed)
    of one.

    Raises:
        prunelab.checkpoint.CheckpointError: not a prunelab model or export file.
        prunelab.errors.FileFormatError: see :func:`load_model_file`.
    """
    from .export import ExportFormatError, load_compact, read_compact_header

    try:
        return load_model_file(path, device=device, allow_import=allow_import)
    except CheckpointError as exc:
        try:
            state, info = load_compact(path)
        except FileNotFoundError:
            raise exc from None
        except ExportFormatError as compact_exc:
            try:  # a compact file with a bad body: its own error is the one to show
                read_compact_header(path)
            except (ExportFormatError, FileNotFoundError):
                raise exc from None
            raise compact_exc from None
    if "model" not in info:
        raise CheckpointError(f"{str(path)!r} is a compact export without a model description")
    model = build_from_file(info["model"], state, repr(str(path)), allow_import=allow_import)
    return model.to(device), info
