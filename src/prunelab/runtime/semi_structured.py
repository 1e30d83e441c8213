"""2:4 semi-structured Linear layers on NVIDIA sparse tensor cores (inference).

:func:`to_semi_structured` replaces the weight of every 2:4-sparse ``nn.Linear`` of a model
on a CUDA GPU of compute capability 8.0 or later (Ampere, Ada, Hopper) by
``torch.sparse.to_sparse_semi_structured(weight)`` (cuSPARSELt; CUTLASS when this torch has
no cuSPARSELt), so ``F.linear`` runs the sparse kernel: half the weight values plus 2-bit
metadata (NVIDIA quotes up to 2x the dense math throughput; what a layer gains depends on
its size, so measure). A layer qualifies when its
effective weight is 2:4 along the input dimension (prune with ``Pruner.step("nm", 0.5)``,
:mod:`prunelab.criteria.nm`), is float16 or bfloat16 with both sides multiples of the
backend's minimum tile (16 x 16 for cuSPARSELt, 32 x 64 for CUTLASS, read from torch's
table), is not shared with another module, and lives on such a GPU. Every other selected layer
is left as it is and reported with the reason.

:func:`check_semi_structured` runs the same checks and converts nothing, on any device: on a
CPU it says which layers would convert on a GPU (their reason names only the device).

The conversion is for inference: a converted layer's ``weight`` is a new ``Parameter``
(``requires_grad=False``) holding the compressed tensor, its mask is made permanent first,
and an optimizer built before it no longer sees that weight.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.pruner import prune_model
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).half()
    >>> _ = prune_model(model, "nm", 0.5, layers="0")
    >>> report = check_semi_structured(model)
    >>> report.convertible(ignore_device=True), sorted(report.skipped)
    (['0'], ['0', '2'])
    >>> report.skipped["2"]
    'not 2:4 sparse: 80 of 80 groups of 4 inputs hold more than 2 nonzeros'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunelab.criteria.nm import nm_violations
from prunelab.errors import DeviceError
from prunelab.masks import effective_tensor, is_masked, make_permanent
from prunelab.selection import select_layers

__all__ = [
    "MIN_CAPABILITY",
    "SEMI_STRUCTURED_DTYPES",
    "SemiStructuredLayer",
    "SemiStructuredReport",
    "check_semi_structured",
    "to_semi_structured",
]

#: Sparse tensor cores appeared with Ampere (sm_80).
MIN_CAPABILITY: tuple[int, int] = (8, 0)
#: The dtypes prunelab converts (both backends also take int8; cuSPARSELt float8).
SEMI_STRUCTURED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SemiStructuredLayer:
    """One selected layer: whether it can be (or was) converted, and if not, why.

    Attributes:
        layer: the module name.
        kind: the module's class name.
        shape: the weight's shape.
        dtype: the weight's dtype, e.g. ``"float16"``.
        device: the weight's device, e.g. ``"cuda:0"``.
        reason: why it is not converted; empty when it is convertible.
        only_device: the device is the only check it fails (it would convert on a GPU of
            compute capability >= 8.0).
    """

    layer: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    reason: str
    only_device: bool = False

    @property
    def ok(self) -> bool:
        """Whether the layer passes every check."""
        return not self.reason


@dataclass(frozen=True)
class SemiStructuredReport:
    """What :func:`check_semi_structured` found or :func:`to_semi_structured` did.

    Attributes:
        layers: one record per selected layer, in module order.
        applied: whether the convertible layers were converted.
        backend: ``"cusparselt"`` or ``"cutlass"``: the kernels torch uses here.
    """

    layers: tuple[SemiStructuredLayer, ...]
    applied: bool
    backend: str

    def convertible(self, *, ignore_device: bool = False) -> list[str]:
        """Layers passing every check (with ``ignore_device``: every check but the device)."""
        return [r.layer for r in self.layers if r.ok or (ignore_device and r.only_device)]

    @property
    def converted(self) -> list[str]:
        """The layers whose weight is now semi-structured (empty for a check)."""
        return self.convertible() if self.applied else []

    @property
    def skipped(self) -> dict[str, str]:
        """``{layer: reason}`` of the layers left dense."""
        return {r.layer: r.reason for r in self.layers if not r.ok}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"applied": self.applied, "backend": self.backend,
                "layers": [asdict(r) for r in self.layers]}


def _backend() -> type[torch.Tensor]:
    """The semi-structured tensor class torch's kernels use here."""
    sparse = torch.sparse
    cutlass = sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
    if cutlass or not torch.backends.cusparselt.is_available():
        return sparse.SparseSemiStructuredTensorCUTLASS
    return sparse.SparseSemiStructuredTensorCUSPARSELT


def _backend_name() -> str:
    cutlass = _backend() is torch.sparse.SparseSemiStructuredTensorCUTLASS
    return "cutlass" if cutlass else "cusparselt"


def _min_tile(dtype: torch.dtype) -> tuple[int, int] | None:
    """(rows, cols) the weight's sides must be multiples of, from torch's table."""
    table = getattr(_backend(), "_DTYPE_SHAPE_CONSTRAINTS", {})
    c = table.get(dtype)
    return (int(c.sparse_min_rows), int(c.sparse_min_cols)) if c is not None else None


def _shared(model: nn.Module) -> dict[int, list[str]]:
    """``{id(parameter): [module names]}`` of the weights held by more than one module."""
    owners: dict[int, dict[int, str]] = {}
    for name, module in model.named_modules():
        for key in ("weight_orig", "weight"):
            p = module._parameters.get(key)
            if p is not None:
                owners.setdefault(id(p), {})[id(module)] = name
                break
    return {k: list(v.values()) for k, v in owners.items() if len(v) > 1}


def _reason(module: nn.Module, name: str, shared: dict[int, list[str]]) -> str:
    """Why ``module`` cannot be converted on any device (the first failing check), or ``""``."""
    if not isinstance(module, nn.Linear):
        return f"{type(module).__name__}: torch's semi-structured kernels serve nn.Linear only"
    if isinstance(module._parameters.get("weight"), torch.sparse.SparseSemiStructuredTensor):
        return "already semi-structured"
    raw = module._parameters.get("weight_orig" if is_masked(module) else "weight")
    if id(raw) in shared:
        others = [n for n in shared[id(raw)] if n != name]
        return f"its weight is shared with {', '.join(others)}; converting it would untie them"
    w = effective_tensor(module).detach()
    if w.dtype not in SEMI_STRUCTURED_DTYPES:
        return (f"dtype {str(w.dtype).removeprefix('torch.')}; the kernels take float16 or "
                "bfloat16 (model.half() or model.to(torch.bfloat16))")
    if w.shape[1] % 4:
        return f"in_features={w.shape[1]} is not a multiple of 4"
    bad = nm_violations(w, 2, 4)
    if bad:
        return (f"not 2:4 sparse: {bad} of {w.numel() // 4} groups of 4 inputs hold more than "
                "2 nonzeros")
    tile = _min_tile(w.dtype)
    if tile is not None and (w.shape[0] % tile[0] or w.shape[1] % tile[1]):
        return (f"weight {tuple(w.shape)} is not a multiple of the {tile[0]} x {tile[1]} tile "
                "of the sparse kernels")
    return ""


def _device_reason(device: torch.device) -> str:
    """Why the kernels cannot run on ``device``, or ``""``."""
    need = f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}"
    if device.type != "cuda":
        return (f"on {device}: semi-structured kernels need a CUDA GPU of compute capability "
                f">= {need}")
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < MIN_CAPABILITY:
        return (f"on {device} of compute capability {cap[0]}.{cap[1]}; sparse tensor cores "
                f"need >= {need}")
    return ""


def _record(module: nn.Module, name: str, shared: dict[int, list[str]]) -> SemiStructuredLayer:
    """The checks of one layer: the layer's own first, then its device."""
    reason = _reason(module, name, shared)
    w = effective_tensor(module)
    device = "" if reason else _device_reason(w.device)
    return SemiStructuredLayer(name, type(module).__name__, tuple(w.shape),
                               str(w.dtype).removeprefix("torch."), str(w.device),
                               reason or device, only_device=bool(device))


def check_semi_structured(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    *,
    exclude: str | Sequence[str] | None = None,
) -> SemiStructuredReport:
    """Which selected layers :func:`to_semi_structured` would convert; changes nothing.

    Args:
        model: the network (on any device).
        layers: glob pattern(s) of layers to check; all Linear/Conv layers when None.
        exclude: glob pattern(s) left out.

    Returns:
        A report with ``applied=False``.

    Raises:
        ValueError: a pattern matches nothing.

    Example:
        >>> from torch import nn
        >>> check_semi_structured(nn.Sequential(nn.Linear(8, 4))).skipped  # doctest: +ELLIPSIS
        {'0': 'dtype float32; the kernels take float16 or bfloat16 (...)'}
    """
    chosen = select_layers(model, layers, exclude=exclude)
    shared = _shared(model)
    records = tuple(_record(m, n, shared) for n, m in chosen.items())
    return SemiStructuredReport(records, applied=False, backend=_backend_name())


def to_semi_structured(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    *,
    exclude: str | Sequence[str] | None = None,
) -> SemiStructuredReport:
    """Replace the weight of each convertible 2:4 Linear layer by a semi-structured tensor.

    Checks every selected layer as :func:`check_semi_structured` does and converts, in place,
    those that pass (mask made permanent, ``weight`` a new ``Parameter(requires_grad=False)``
    holding ``torch.sparse.to_sparse_semi_structured`` of it). A layer torch still rejects is
    left unchanged and reported with torch's message.

    Args:
        model: the network, on a CUDA GPU (modified in place).
        layers: glob pattern(s) of layers to convert; all Linear/Conv layers when None.
        exclude: glob pattern(s) left out.

    Returns:
        A report with ``applied=True``: converted and skipped layers, with reasons.

    Raises:
        prunelab.errors.DeviceError: no selected weight is on a CUDA device (nothing is
            changed; :func:`check_semi_structured` validates on any device).
        ValueError: a pattern matches nothing.

    Example:
        >>> from torch import nn
        >>> try:
        ...     to_semi_structured(nn.Linear(64, 64).half())
        ... except ValueError as exc:
        ...     print(exc)  # doctest: +ELLIPSIS
        to_semi_structured needs the model on a CUDA GPU ...; every selected weight is on cpu (...)
    """
    chosen = select_layers(model, layers, exclude=exclude)
    devices = sorted({str(effective_tensor(m).device) for m in chosen.values()})
    if not any(d.startswith("cuda") for d in devices):
        raise DeviceError(
            f"to_semi_structured needs the model on a CUDA GPU of compute capability >= "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}; every selected weight is on "
            f"{', '.join(devices)} (check_semi_structured validates on any device)"
        )
    shared = _shared(model)
    records = []
    for name, module in chosen.items():
        record = _record(module, name, shared)
        if record.ok:
            record = SemiStructuredLayer(**{**asdict(record), "reason": _convert(module)})
        records.append(record)
    return SemiStructuredReport(tuple(records), applied=True, backend=_backend_name())


def _convert(module: nn.Module) -> str:
    """Convert one checked layer; ``""`` on success, else torch's message (layer unchanged)."""
    dense = effective_tensor(module).detach().contiguous()
    try:
        if _backend() is torch.sparse.SparseSemiStructuredTensorCUTLASS:
            sparse = torch.sparse.SparseSemiStructuredTensorCUTLASS.from_dense(dense)
        else:
            sparse = torch.sparse.to_sparse_semi_structured(dense)
    except RuntimeError as exc:
        return f"torch refused it: {' '.join(str(exc).split())}"
    if is_masked(module):
        make_permanent(module)
    module.weight = nn.Parameter(sparse, requires_grad=False)
    return ""
