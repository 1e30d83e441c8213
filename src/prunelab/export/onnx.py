"""ONNX export of pruned models: the masks folded into plain dense weights with exact zeros.

:func:`export_onnx` makes pruning permanent on a copy of the model (the model itself keeps
its masks), so the graph holds the effective weights as ordinary initializers: no mask
tensors and no mask multiplications, and every pruned position is an exact ``0.0``. Masked
models and physically compacted ones (:func:`prunelab.surgery.compact_model`) export alike.
The first input dimension is dynamic (named ``batch``), so ONNX Runtime runs any batch size
from the same file. :func:`check_onnx` runs the file with ONNX Runtime and returns the
largest absolute difference from torch's output.

Exporter: ``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based exporter (it
needs ``onnxscript``). It is torch's default and maintained exporter since torch 2.9; the
legacy TorchScript exporter (``dynamo=False``) still runs in torch 2.14.1 but warns that it
is deprecated and will be removed. Both export LeNet-5 to the same Conv/MaxPool/Gemm graph;
the dynamo one also handles LeNet-300-100 and ResNet-18 with a dynamic batch, matching torch
to ~1e-6 in ONNX Runtime.

The packages (``onnx``, ``onnxscript``, ``onnxruntime``) are an optional extra: ``pip install
'prunelab[onnx]'``; without them the functions raise :class:`OnnxUnavailableError`, one line
naming the package and the command.

Example:
    >>> import os, tempfile, torch
    >>> from torch import nn
    >>> from torch.nn.utils import prune
    >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = prune.l1_unstructured(net[0], "weight", amount=0.75)
    >>> path = export_onnx(net, os.path.join(tempfile.mkdtemp(), "net.onnx"), torch.randn(1, 8))
    >>> check_onnx(path, net, torch.randn(5, 8)) < 1e-5
    True
    >>> run_onnx(path, torch.randn(64, 8))[0].shape  # the same file at another batch size
    (64, 2)
    >>> hasattr(net[0], "weight_mask")  # the model keeps its masks
    True
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import PrunelabError, one_line

__all__ = [
    "DEFAULT_OPSET",
    "ONNX_PACKAGES",
    "OnnxExportError",
    "OnnxUnavailableError",
    "check_onnx",
    "export_onnx",
    "input_shape_from_metadata",
    "parse_input_shape",
    "require_onnx",
    "run_onnx",
]

#: The ONNX opset written by default (torch 2.14's default for the dynamo exporter).
DEFAULT_OPSET = 20

#: The packages ONNX export and checking need (the ``onnx`` extra).
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

#: Name of the dynamic first dimension of the exported graph's input and output.
BATCH_DIM = "batch"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch.export colours its messages
_INSTALL = "pip install 'prunelab[onnx]' (or: pip install onnx onnxscript onnxruntime)"


class OnnxUnavailableError(PrunelabError, ImportError):
    """A package ONNX export or checking needs is not installed."""


class OnnxExportError(PrunelabError, RuntimeError):
    """The model could not be exported to ONNX (the message says why)."""


def require_onnx(*packages: str) -> None:
    """Import ``packages`` (default: all of :data:`ONNX_PACKAGES`) or raise one clear error.

    Raises:
        OnnxUnavailableError: a package is missing (or fails to import); the message names
            it and the pip command.

    Example:
        >>> require_onnx("onnx")
    """
    for name in packages or ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing = isinstance(exc, ModuleNotFoundError) and exc.name in (name, None)
            why = "is not installed" if missing else f"fails to import ({one_line(str(exc), 120)})"
            raise OnnxUnavailableError(
                f"ONNX export needs the Python package {name!r}, which {why}; "
                f"install it with: {_INSTALL}"
            ) from None


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``--input-shape``: positive integers separated by commas or ``x``, batch first.

    Raises:
        ValueError: not of that form.

    Example:
        >>> parse_input_shape("1,1,28,28"), parse_input_shape("1x3x64x64")
        ((1, 1, 28, 28), (1, 3, 64, 64))
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) < 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"--input-shape {text!r} is not a shape; give positive integers, batch first, "
            "e.g. '1,1,28,28'"
        )
    return tuple(int(p) for p in parts)


def input_shape_from_metadata(meta: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The example input shape (batch 1 first) a model file's metadata implies, or ``None``.

    An explicit ``input_shape`` entry (a list of ints, batch first) wins; otherwise the
    dataset decides, as :meth:`prunelab.config.DataConfig.input_shape` does: MNIST and
    Fashion-MNIST are ``1x28x28``, an image folder is ``3 x image_size x image_size``.

    Example:
        >>> input_shape_from_metadata({"dataset": {"name": "mnist"}})
        (1, 1, 28, 28)
        >>> input_shape_from_metadata({"dataset": {"name": "imagefolder", "image_size": 32}})
        (1, 3, 32, 32)
        >>> input_shape_from_metadata({"model": {"name": "torchvision.resnet18"}}) is None
        True
    """
    shape = meta.get("input_shape")
    if (isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) >= 2
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        return (1, *shape[1:])
    data = meta.get("dataset")
    if not isinstance(data, Mapping):
        return None
    if data.get("name") in ("mnist", "fashion-mnist"):
        return (1, 1, 28, 28)
    size = data.get("image_size")
    if data.get("name") == "imagefolder" and isinstance(size, int) and size > 0:
        return (1, 3, size, size)
    return None


def _effective_copy(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy of ``model`` with every mask folded into its weight."""
    from ..runtime import deepcopy_pruned, make_pruning_permanent

    copy = make_pruning_permanent(deepcopy_pruned(model)).cpu().eval()
    left = [f"{n}.{b}" for n, m in copy.named_modules() for b in m._buffers if b.endswith("_mask")]
    if left:
        raise OnnxExportError(f"masks {left[:4]} could not be folded into their weights")
    return copy


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` as an ONNX file with its effective (masked) weights; returns the path.

    The model is copied, its masks made permanent on the copy (plain dense initializers,
    exact zeros where pruned) and the copy exported in eval mode on CPU with torch's dynamo
    exporter; ``model`` is not changed. The file is written atomically (a temporary file in
    the same directory, then ``os.replace``). Graph input and output are named ``input`` and
    ``output``.

    Args:
        model: a masked (``torch.nn.utils.prune`` / prunelab masks) or compacted model.
        path: destination ``.onnx`` file (below 2 GB: the weights are stored in the file).
        example_input: one batch of valid input (its shape is the traced one).
        opset: ONNX opset version.
        dynamic_batch: make the first dimension dynamic (``batch``) in input and output.

    Raises:
        OnnxUnavailableError: ``onnx`` or ``onnxscript`` is not installed.
        OnnxExportError: the model does not run on ``example_input``, or torch could not
            export it (nothing is written).

    Example:
        >>> import os, tempfile, onnx
        >>> path = export_onnx(nn.Linear(3, 2), os.path.join(tempfile.mkdtemp(), "l.onnx"),
        ...                    torch.randn(1, 3))
        >>> onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_param
        'batch'
    """
    require_onnx("onnx", "onnxscript")
    copy = _effective_copy(model)
    x = example_input.detach().cpu()
    try:  # a wrong shape fails here with torch's plain message, not deep in torch.export
        with torch.no_grad():
            copy(x)
    except Exception as exc:
        raise OnnxExportError(
            f"{type(model).__name__} does not run on an example input of shape "
            f"{tuple(x.shape)}: {type(exc).__name__}: {one_line(str(exc), 200)}; give an "
            "input of the shape it expects"
        ) from exc
    dynamic = ({0: torch.export.Dim(BATCH_DIM)},) if dynamic_batch else None
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                copy, (x,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                input_names=["input"], output_names=["output"], verbose=False,
            )
    except Exception as exc:  # torch.export's errors have no common base class
        raise OnnxExportError(
            f"torch.onnx could not export {type(model).__name__} on an input of shape "
            f"{tuple(x.shape)}: {type(exc).__name__}: "
            f"{one_line(_ANSI.sub('', str(exc)), 240)}"
        ) from exc
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise OnnxExportError("torch.onnx.export returned no program")
    return atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def run_onnx(path: str | Path, inputs: torch.Tensor) -> list[Any]:
    """Run an exported file with ONNX Runtime (CPU) on ``inputs``; returns its outputs.

    See the module's example.

    Raises:
        OnnxUnavailableError: ``onnxruntime`` is not installed.
    """
    require_onnx("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs.detach().cpu().numpy()})


def check_onnx(path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime's and torch's outputs on ``inputs``.

    torch runs an eval-mode copy of ``model`` as it is, masks applied by their hooks, not the
    folded weights the file holds (``model`` itself is not changed); outputs of different
    shapes or number give ``inf``.

    Raises:
        OnnxUnavailableError: ``onnxruntime`` is not installed.
    """
    from ..runtime import deepcopy_pruned

    got = run_onnx(path, inputs)
    with torch.no_grad():
        ref = deepcopy_pruned(model).cpu().eval()(inputs.detach().cpu())
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    if len(refs) != len(got):
        return math.inf
    worst = 0.0
    for r, g in zip(refs, got, strict=True):
        g_t = torch.from_numpy(g)
        if tuple(r.shape) != tuple(g_t.shape):
            return math.inf
        if r.numel():
            worst = max(worst, float((r.float() - g_t.float()).abs().max()))
    return worst
