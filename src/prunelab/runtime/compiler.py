"""Measure-then-choose sparse inference runtime for pruned models.

:func:`compile_sparse` deep-copies a model, makes ``torch.nn.utils.prune`` masks permanent
(``weight = weight_orig * weight_mask``), and for every ``nn.Linear`` and ``nn.Conv2d`` that
the example input reaches times the dense layer against the sparse kernels (prunelab's C++
kernels of :mod:`prunelab.runtime.packed`, torch's CSR of :mod:`prunelab.runtime.kernels`)
*on that layer's real input*. A sparse kernel replaces the layer only if its median speedup
over interleaved repeats is at least ``min_speedup`` (1.10: a margin against noise).
The whole model is then timed against the all-dense copy and, if
the mixed model is not faster (or its output differs), the all-dense copy is returned instead,
so the compiled model is never slower than dense *at the measured batch size* (the mixed
model must win by ``min_model_speedup``, default ``min_speedup``, to be kept).

Batch size matters: a batch-1 GEMV is bound by weight traffic (where sparse wins big), while a
batch-64 GEMM is compute-bound with good weight reuse (where dense BLAS is harder to beat).
The decision holds for the example input's batch size and thread count; compile once per
serving batch size, and keep :meth:`SparseModel.plan` to rebuild the same model later.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.nn.utils import prune
    >>> net = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    >>> _ = prune.l1_unstructured(net[0], "weight", amount=0.9)
    >>> x = torch.randn(1, 256)
    >>> sm = compile_sparse(net, x, repeats=5)
    >>> bool(torch.allclose(sm(x), net(x), atol=1e-5))
    True
    >>> [d.layer for d in sm.report]
    ['0', '2']
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import prune

from prunelab.outputs import close, max_abs_diff
from prunelab.runtime import native
from prunelab.runtime.fuse import fuse_sparse
from prunelab.runtime.kernels import SparseLinear
from prunelab.runtime.packed import PackedConv2d, PackedLinear, conv_supported, default_panel

__all__ = [
    "CANDIDATES",
    "LayerDecision",
    "SparseModel",
    "compile_sparse",
    "deepcopy_pruned",
    "make_pruning_permanent",
    "measure_samples_us",
    "measure_us",
]

def _csr(index_dtype: torch.dtype) -> Callable[[nn.Module, int], nn.Module]:
    def build(m: nn.Module, batch: int) -> nn.Module:
        if not isinstance(m, nn.Linear):
            raise TypeError("torch CSR kernels cover nn.Linear only")
        return SparseLinear.from_linear(m, index_dtype=index_dtype)

    return build


def _native(m: nn.Module, batch: int) -> nn.Module:
    if not native.available():
        raise TypeError("native kernels unavailable here")
    w = m.weight.detach()
    density = float(torch.count_nonzero(w)) / max(1, w.numel())
    if isinstance(m, nn.Linear):
        return PackedLinear.from_linear(m, panel=default_panel(batch, density))
    assert isinstance(m, nn.Conv2d)
    why = conv_supported(m)
    if why is not None:
        raise TypeError(why)
    return PackedConv2d.from_conv(m, panel=default_panel(2, density))


CANDIDATES: dict[str, Callable[[nn.Module, int], nn.Module] | None] = {
    "dense": None,
    "native": _native,
    "csr": _csr(torch.int32),
    "csr64": _csr(torch.int64),
}
"""Kernel choices: ``dense`` (the layer as it is, always the baseline), ``native``
(prunelab's C++ kernels, :class:`~prunelab.runtime.packed.PackedLinear` /
:class:`~prunelab.runtime.packed.PackedConv2d`, panel width by batch size), ``csr`` (torch's
MKL CSR with int32 indices, Linear only), ``csr64`` (same with torch's default int64
indices). A factory raising ``TypeError`` means "not applicable to this layer"."""


@dataclass(frozen=True)
class LayerDecision:
    """Per-layer outcome of :func:`compile_sparse` (times are medians in microseconds).

    ``sparse_us`` is the best sparse candidate's time (``None`` if no sparse candidate ran,
    e.g. the layer was not reached by the example input). ``chosen`` is the kernel in the
    returned model.

    Example:
        >>> d = LayerDecision("fc", 0.1, dense_us=10.0, sparse_us=4.0, chosen="csr")
        >>> round(d.speedup, 2)
        2.5
    """

    layer: str
    density: float
    dense_us: float | None
    sparse_us: float | None
    chosen: str
    candidate_us: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """``dense_us / sparse_us`` of the best sparse candidate."""
        if self.dense_us is None or not self.sparse_us:
            return None
        return self.dense_us / self.sparse_us

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (includes ``speedup``)."""
        out = asdict(self)
        out["speedup"] = self.speedup
        return out


class SparseModel(nn.Module):
    """A compiled model plus the measurements behind it; ``forward`` delegates to ``model``.

    Attributes:
        model: the inference model (pruning permanent, chosen layers run sparse kernels).
        report: one :class:`LayerDecision` per ``nn.Linear`` / ``nn.Conv2d``, in module order.
        batch_size: leading dim of the example input the decisions were measured on.
        dense_us / sparse_us: whole-model medians (all-dense copy vs mixed model; after a
            fall-back ``sparse_us`` is the rejected mixed model's time, ``None`` if unmeasured).
        fell_back: True if the mixed model was discarded for the all-dense copy.
        reason: why it fell back (empty otherwise).
        max_abs_err: max |compiled - dense| on the example input.

    Example:
        >>> sm = compile_sparse(nn.Linear(8, 2), torch.randn(1, 8), repeats=3)
        >>> sm.report[0].layer, sm.report[0].chosen in CANDIDATES
        ('', True)
    """

    def __init__(
        self,
        model: nn.Module,
        report: list[LayerDecision],
        *,
        batch_size: int | None,
        dense_us: float | None,
        sparse_us: float | None,
        fell_back: bool,
        reason: str = "",
        max_abs_err: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.report = report
        self.batch_size = batch_size
        self.dense_us = dense_us
        self.sparse_us = sparse_us
        self.fell_back = fell_back
        self.reason = reason
        self.max_abs_err = max_abs_err

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the compiled model."""
        return self.model(*args, **kwargs)

    @property
    def n_sparse(self) -> int:
        """Number of layers running a sparse kernel."""
        return sum(d.chosen != "dense" for d in self.report)

    def plan(self) -> dict[str, str]:
        """``{layer: kernel}`` of the layers running a sparse kernel, for ``compile_sparse(plan=)``.

        Example:
            >>> sm = compile_sparse(nn.Linear(8, 2), torch.randn(1, 8), repeats=3)
            >>> set(sm.plan().values()) <= set(CANDIDATES)
            True
        """
        return {d.layer: d.chosen for d in self.report if d.chosen != "dense"}

    def summary(self) -> str:
        """Plain-text decision table.

        Example:
            >>> sm = compile_sparse(nn.Linear(8, 2), torch.randn(1, 8), repeats=3)
            >>> "layer" in sm.summary()
            True
        """

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        lines = [f"{'layer':<24} {'density':>8} {'dense_us':>10} {'sparse_us':>10} chosen"]
        for d in self.report:
            lines.append(
                f"{d.layer or '<root>':<24} {d.density:>8.3f} {fmt(d.dense_us):>10} "
                f"{fmt(d.sparse_us):>10} {d.chosen}"
            )
        lines.append(
            f"whole model (batch {self.batch_size}): dense {fmt(self.dense_us)} us, "
            f"compiled {fmt(self.sparse_us)} us"
            + (f" [fell back: {self.reason}]" if self.fell_back else "")
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary of the decisions and whole-model timings."""
        return {
            "batch_size": self.batch_size,
            "dense_us": self.dense_us,
            "sparse_us": self.sparse_us,
            "fell_back": self.fell_back,
            "reason": self.reason,
            "max_abs_err": self.max_abs_err,
            "layers": [d.as_dict() for d in self.report],
        }


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Fold ``torch.nn.utils.prune`` masks into plain parameters, in place; returns ``model``.

    Handles modules with pruning hooks (via ``prune.remove``) and modules that only carry
    ``<name>_orig`` / ``<name>_mask`` tensors without a hook (e.g. rebuilt from a state dict).

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> _ = prune.random_unstructured(lin, "weight", amount=0.5)
        >>> _ = make_pruning_permanent(lin)
        >>> hasattr(lin, "weight_orig"), int((lin.weight == 0).sum())
        (False, 8)
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
        for pname, orig in list(module.named_parameters(recurse=False)):
            if not pname.endswith("_orig"):
                continue
            base = pname.removesuffix("_orig")
            mask = module._buffers.get(f"{base}_mask")
            if mask is None:
                continue
            with torch.no_grad():
                eff = orig * mask
            del module._parameters[pname]
            del module._buffers[f"{base}_mask"]
            if base in module.__dict__:
                delattr(module, base)
            module.register_parameter(base, nn.Parameter(eff, requires_grad=orig.requires_grad))
    return model


def measure_samples_us(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 15,
    warmup: int = 2,
    target_us: float = 200.0,
    max_inner: int = 64,
) -> dict[str, list[float]]:
    """Per-call wall times (microseconds) of each zero-arg callable, sampled interleaved.

    Every repeat times each function once (rotating the order), so slow drifts of a shared
    machine hit all of them alike. Very fast calls are looped ``inner`` times per sample (the
    same ``inner`` for all, chosen so the fastest sample lasts about ``target_us``). Runs under
    ``torch.inference_mode()``. Returns ``repeats`` samples per name.

    Example:
        >>> s = measure_samples_us({"a": lambda: sum(range(100))}, repeats=3)
        >>> len(s["a"])
        3
    """
    if not fns:
        return {}
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(max(warmup, 1)):
                f()
        single = []
        for f in fns.values():
            t0 = time.perf_counter()
            f()
            single.append(time.perf_counter() - t0)
        fastest_us = max(min(single) * 1e6, 1e-3)
        inner = int(min(max_inner, max(1, math.ceil(target_us / fastest_us))))
        for r in range(max(repeats, 1)):
            shift = r % len(names)
            for k in names[shift:] + names[:shift]:
                f = fns[k]
                t0 = time.perf_counter()
                for _ in range(inner):
                    f()
                samples[k].append((time.perf_counter() - t0) / inner * 1e6)
    return samples


def measure_us(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 15,
    warmup: int = 2,
    target_us: float = 200.0,
    max_inner: int = 64,
) -> dict[str, float]:
    """Median wall time per call (microseconds), see :func:`measure_samples_us`.

    Example:
        >>> t = measure_us({"a": lambda: sum(range(100))}, repeats=3)
        >>> t["a"] > 0
        True
    """
    samples = measure_samples_us(
        fns, repeats=repeats, warmup=warmup, target_us=target_us, max_inner=max_inner
    )
    return {k: statistics.median(v) for k, v in samples.items()}


def deepcopy_pruned(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on pruned models.

    A pruned module's ``weight`` is a plain attribute ``weight_orig * weight_mask``; when
    ``weight_orig`` requires grad it is a non-leaf tensor, which ``deepcopy`` refuses. Such
    attributes are copied as detached clones (``prune.remove`` recomputes them anyway).

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> _ = prune.random_unstructured(lin, "weight", amount=0.5)
        >>> twin = deepcopy_pruned(lin)
        >>> torch.equal(twin.weight, lin.weight), twin.weight_orig is lin.weight_orig
        (True, False)
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace ``root.<name>`` by ``new``; returns the (possibly new) root."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
    return root


def compile_sparse(
    model: nn.Module,
    example_input: torch.Tensor | tuple[Any, ...],
    *,
    candidates: Sequence[str] = ("dense", "native", "csr"),
    repeats: int = 15,
    warmup: int = 3,
    min_speedup: float = 1.10,
    min_model_speedup: float | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    whole_model_check: bool = True,
    plan: Mapping[str, str] | None = None,
    fuse: bool = True,
) -> SparseModel:
    """Compile a (pruned) model for CPU inference, choosing dense or sparse per layer by timing.

    Every ``nn.Linear`` and ``nn.Conv2d`` the example input reaches is timed on its real
    input with each candidate kernel, interleaved; the speedup of a candidate is the median
    of the per-repeat ratios ``dense / candidate``, and a sparse kernel replaces the layer
    only when that median is at least ``min_speedup`` (a margin: layers within noise of dense
    stay dense, so the choice does not flip between runs). Save :meth:`SparseModel.plan` and
    pass it back as ``plan=`` to rebuild the same model without timing.

    Args:
        model: any module; left untouched (a deep copy is compiled, in ``eval()`` mode).
        example_input: a tensor, or a tuple of positional args, with the batch size you will
            serve. Decisions are measured at that batch size and the current
            ``torch.get_num_threads()``.
        candidates: kernels to try, from :data:`CANDIDATES`; ``"dense"`` is always measured
            as the baseline and fallback. Candidates that do not apply to a layer (torch CSR
            on a conv, grouped convs, no native kernels here) are skipped with a note.
        repeats / warmup: timed samples (median) and untimed warm-up calls per measurement.
        min_speedup: a sparse kernel is chosen only if its median speedup is at least this.
        min_model_speedup: the mixed model is kept only if the all-dense copy is at least this
            much slower as a whole (default: ``min_speedup``), so that gains within timing
            noise (e.g. one small sparse FC behind convs) do not risk a slower model.
        atol / rtol: tolerance of the per-layer and whole-model output checks against dense.
        whole_model_check: time the compiled model against the all-dense copy and fall back
            if it is not faster (default). ``False`` keeps the per-layer choices regardless
            (the output check still runs); useful for tests and ablations.
        plan: ``{layer name: kernel}`` from an earlier :meth:`SparseModel.plan`: those layers
            get that kernel without timing (outputs are still checked); layers it does not
            name stay dense. With a plan the whole-model check is skipped.
        fuse: run the compiled model as a ``torch.fx`` graph that calls the C++ kernels
            directly, with ReLUs fused, Dropout removed and plain max pooling in C++
            (:func:`~prunelab.runtime.fuse.fuse_sparse`); kept only if its output matches.
            Untraceable models run unfused.

    Returns:
        A :class:`SparseModel` whose ``report`` lists every Linear and Conv2d (``layer,
        density, dense_us, sparse_us, chosen``). If the compiled model is not faster than the
        all-dense copy as a whole, or its output differs, the all-dense copy is returned
        (``fell_back=True``). Layers the example input never reaches (or whose ``forward``
        is bypassed, e.g. ``nn.MultiheadAttention.out_proj``) stay dense.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
        >>> sm = compile_sparse(net, torch.randn(1, 1, 28, 28), repeats=3, min_speedup=1e9)
        >>> [d.chosen for d in sm.report]
        ['dense', 'dense']
    """
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
    if min_speedup <= 0:
        raise ValueError("min_speedup must be > 0")
    sparse_names = [c for c in dict.fromkeys(candidates) if c != "dense"]
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    first = inputs[0] if inputs else None
    batch_size = (
        int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else None
    )

    if plan is not None:
        bad = {k: v for k, v in plan.items() if v not in CANDIDATES}
        if bad:
            raise ValueError(f"plan names unknown kernels {bad}; choose from {sorted(CANDIDATES)}")
    dense = make_pruning_permanent(deepcopy_pruned(model)).eval()
    linears = [
        (name, m)
        for name, m in dense.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
        and not isinstance(m.weight, UninitializedParameter)
    ]
    if plan is not None:
        known = {name for name, _ in linears}
        missing = sorted(set(plan) - known)
        if missing:
            raise ValueError(f"plan names layers the model does not have: {missing[:5]}")
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in linears:

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                captured[name] = args[0].detach().clone()

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            ref = dense(*inputs)
    finally:
        for h in handles:
            h.remove()

    decisions: list[LayerDecision] = []
    replacements: dict[str, nn.Module] = {}
    for name, m in linears:
        w = m.weight.detach()
        density = float(torch.count_nonzero(w)) / w.numel() if w.numel() else 0.0
        x = captured.get(name)
        if x is None:
            decisions.append(
                LayerDecision(name, density, None, None, "dense", note="not reached by input")
            )
            continue
        layer_batch = int(x.shape[0]) if x.dim() > 1 else 1
        with torch.inference_mode():
            y_dense = m(x)
        fns: dict[str, Callable[[], object]] = {"dense": lambda m=m, x=x: m(x)}
        built: dict[str, nn.Module] = {}
        notes = []
        names = sparse_names if plan is None else [k for k in [plan.get(name)] if k not in
                                                   (None, "dense")]
        for cname in names:
            factory = CANDIDATES[cname]
            assert factory is not None
            try:
                mod = factory(m, layer_batch).eval()
                with torch.inference_mode():
                    y = mod(x)
            except TypeError as exc:  # not applicable to this layer
                notes.append(f"{cname}: {exc}")
                continue
            except (RuntimeError, ValueError) as exc:  # kernel unsupported here
                notes.append(f"{cname}: {type(exc).__name__}: {exc}")
                continue
            if not close(y, y_dense, atol, rtol):
                notes.append(f"{cname}: output mismatch {max_abs_diff(y, y_dense):.2e}")
                continue
            built[cname] = mod
            fns[cname] = lambda mod=mod, x=x: mod(x)
        if plan is not None:
            chosen = next(iter(built), "dense")
            if chosen != "dense":
                replacements[name] = built[chosen]
            decisions.append(LayerDecision(name, density, None, None, chosen, {},
                                           "; ".join(["from plan", *notes])))
            continue
        samples = measure_samples_us(fns, repeats=repeats, warmup=warmup)
        times = {k: statistics.median(v) for k, v in samples.items()}
        ratios = {
            k: statistics.median(d / c for d, c in zip(samples["dense"], v, strict=True))
            for k, v in samples.items()
            if k != "dense"
        }
        dense_us = times["dense"]
        best = max(built, key=lambda c: ratios[c]) if built else None
        sparse_us = times[best] if best else None
        chosen = "dense"
        if best is not None and ratios[best] >= min_speedup:
            chosen = best
            replacements[name] = built[best]
        decisions.append(
            LayerDecision(name, density, dense_us, sparse_us, chosen, times, "; ".join(notes))
        )

    def dense_result(reason: str, d_us: float | None, s_us: float | None) -> SparseModel:
        report = [
            LayerDecision(
                d.layer,
                d.density,
                d.dense_us,
                d.sparse_us,
                "dense",
                d.candidate_us,
                "; ".join(filter(None, [d.note, reason])) if d.chosen != "dense" else d.note,
            )
            for d in decisions
        ]
        return SparseModel(
            dense,
            report,
            batch_size=batch_size,
            dense_us=d_us,
            sparse_us=s_us,
            fell_back=bool(replacements),
            reason=reason,
        )

    if not replacements:
        whole = measure_us({"dense": lambda: dense(*inputs)}, repeats=repeats, warmup=warmup)
        return dense_result("", whole["dense"], whole["dense"])

    sparse = copy.deepcopy(dense)
    for name, mod in replacements.items():
        sparse = _set_submodule(sparse, name, mod)
    sparse.eval()
    try:
        with torch.inference_mode():
            out = sparse(*inputs)
    except Exception as exc:  # e.g. a parent reads .weight of a replaced Linear directly
        warnings.warn(f"compile_sparse: sparse model failed ({exc!r}); using dense", stacklevel=2)
        return dense_result(f"sparse forward failed: {exc!r}", None, None)
    err = max_abs_diff(out, ref)
    if not close(out, ref, atol, rtol):
        warnings.warn(f"compile_sparse: output mismatch {err:.2e}; using dense", stacklevel=2)
        return dense_result(f"output mismatch {err:.2e}", None, None)
    if fuse:
        fused = fuse_sparse(sparse, inputs, atol=atol, rtol=rtol)
        if fused is not None:
            sparse = fused
            with torch.inference_mode():
                err = max_abs_diff(sparse(*inputs), ref)
    if not whole_model_check or plan is not None:
        return SparseModel(
            sparse,
            decisions,
            batch_size=batch_size,
            dense_us=None,
            sparse_us=None,
            fell_back=False,
            max_abs_err=err,
        )
    whole = measure_us(
        {"dense": lambda: dense(*inputs), "sparse": lambda: sparse(*inputs)},
        repeats=repeats,
        warmup=warmup,
    )
    need = min_speedup if min_model_speedup is None else min_model_speedup
    if whole["sparse"] * need > whole["dense"] or whole["sparse"] >= whole["dense"]:
        return dense_result(
            f"whole model not {need:g}x faster than dense", whole["dense"], whole["sparse"]
        )
    return SparseModel(
        sparse,
        decisions,
        batch_size=batch_size,
        dense_us=whole["dense"],
        sparse_us=whole["sparse"],
        fell_back=False,
        max_abs_err=err,
    )
