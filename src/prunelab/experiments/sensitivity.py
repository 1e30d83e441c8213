"""Per-layer sensitivity analysis (Han et al. 2015, Figure 6) and the choice of ``q``.

Each prunable layer is pruned *alone* at increasing strength while every other layer keeps
its weights, and the validation accuracy is measured without retraining. Han et al. read the
per-layer quality parameters off these curves: a layer whose accuracy collapses early (the
first conv layer) gets a small ``q``, a robust one (a big FC layer) a large one.

The sweep edits the layer's weights in place and restores them afterwards, so one model and
one set of cached validation tensors serve every point (no deep copy per point).

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    >>> rows = sensitivity_sweep(model, x, y, grid=[0.5, 1.0, 2.0])
    >>> len(rows), rows[0].layer, rows[0].q
    (6, '0', 0.5)
    >>> sorted(choose_q(rows, budget=100.0))
    ['0', '2']
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..atomic import write_text_atomic
from ..criteria import magnitude_mask, population_std
from ..masks import effective_tensor, get_mask, raw_parameter
from ..records import SensitivityRow, read_rows_csv, write_rows_csv
from ..selection import select_layers
from ..training import evaluate

__all__ = [
    "DEFAULT_GRID",
    "MODES",
    "SensitivityRow",
    "choose_q",
    "config_snippet",
    "read_rows_csv",
    "resolve_model_file",
    "run_sensitivity",
    "sensitivity_sweep",
    "validation_tensors",
    "write_rows_csv",
]

MODES: tuple[str, ...] = ("q", "sparsity")

#: Default grids: 15 points each. ``q`` multiplies the layer's weight std (``q = 2`` prunes
#: about 95% of a Gaussian layer); sparsity is the fraction of the layer's weights pruned.
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "q": (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 4.0),
    "sparsity": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98,
                 0.99),
}


def _check_grid(grid: Iterable[float], mode: str) -> list[float]:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    values = sorted(float(v) for v in grid)
    if not values:
        raise ValueError("grid is empty; give at least one value")
    for v in values:
        if not math.isfinite(v) or v < 0 or (mode == "sparsity" and v >= 1):
            allowed = "q >= 0" if mode == "q" else "sparsity in [0, 1)"
            raise ValueError(f"grid value {v!r} is invalid for mode={mode!r}; allowed: {allowed}")
    return values



@torch.no_grad()
def sensitivity_sweep(
    model: nn.Module,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    grid: Sequence[float],
    mode: str = "q",
    layers: str | Sequence[str] | None = None,
    batch_size: int = 256,
) -> list[SensitivityRow]:
    """Prune each layer alone at each grid value and measure validation accuracy.

    For ``mode="q"`` a point keeps ``|w| >= q * std(w)`` where ``w`` are the layer's current
    weights (zeros of an already pruned layer included, as :class:`~prunelab.pruner.Pruner`
    with ``std_source="dense"`` does when created on this model). For ``mode="sparsity"`` the
    layer is magnitude-pruned to that fraction of zeros. Already pruned entries stay pruned.
    Other layers are untouched and nothing is retrained. The model's weights are restored
    exactly when the sweep ends (also on error).

    Args:
        model: the trained network (dense or pruned), on the device of ``x_val``.
        x_val: validation inputs, already normalised as the model expects.
        y_val: validation labels.
        grid: the ``q`` values or target sparsities (sorted ascending in the output).
        mode: ``"q"`` or ``"sparsity"``.
        layers: glob pattern(s) of the layers to sweep; all Linear/Conv layers if ``None``.
        batch_size: evaluation batch size (256 is faster than 1000 for LeNet-5 on a CPU).

    Returns:
        ``len(layers) * len(grid)`` rows, layer by layer in module order, each layer's rows
        in ascending grid order (so sparsity never decreases along a layer's rows).

    Raises:
        ValueError: bad mode or grid value, or a layer pattern that matches nothing.
    """
    values = _check_grid(grid, mode)
    chosen = select_layers(model, layers)
    _, baseline = evaluate(model, x_val, y_val, batch_size=batch_size)
    rows: list[SensitivityRow] = []
    for name, module in chosen.items():
        param = raw_parameter(module)
        saved = param.detach().clone()
        w = effective_tensor(module).detach().clone()
        current = get_mask(module)
        std = population_std(w)
        absw = w.abs()
        last: tuple[int, float] | None = None  # (nonzero, accuracy) of the previous point
        try:
            for v in values:
                if mode == "q":
                    keep = absw >= v * std
                    q = v
                else:
                    keep = magnitude_mask(w, v, current)
                    kept = absw[keep]
                    q = float(kept.min()) / std if kept.numel() and std > 0 else math.inf
                # Pruned entries are zeroed in the raw tensor; a masked layer multiplies by
                # its (unchanged) mask on top, so its old zeros stay zero.
                param.copy_(saved * keep.to(saved.dtype))
                nz = int(torch.count_nonzero(effective_tensor(module)))
                # Masks along the grid are nested, so an equal count means an equal mask.
                if last is not None and last[0] == nz:
                    acc = last[1]
                else:
                    _, acc = evaluate(model, x_val, y_val, batch_size=batch_size)
                last = (nz, acc)
                rows.append(SensitivityRow(name, mode, v, q, 1.0 - nz / w.numel(), acc,
                                           baseline))
        finally:
            param.copy_(saved)
    return rows


def _get(row: SensitivityRow | Mapping[str, Any], key: str) -> Any:
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


def choose_q(
    rows: Iterable[SensitivityRow | Mapping[str, Any]],
    budget: float,
    *,
    baseline: float | Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Pick, for each layer, the largest ``q`` whose accuracy drop stays within ``budget``.

    The drop is measured from the unpruned baseline in **absolute accuracy points**
    (percentage points): ``100 * (baseline - val_accuracy) <= budget``, so ``budget=0.5``
    allows 99.2% -> 98.7%. The choice is conservative: a layer's points are scanned by
    increasing ``q`` and the scan stops at the first point over budget, so a noisy recovery
    at a larger ``q`` after a violation is not chosen. A layer whose smallest ``q`` is already
    over budget gets ``q = 0.0`` (do not prune it).

    Args:
        rows: :class:`SensitivityRow` objects or mappings with ``layer``, ``q``,
            ``val_accuracy`` (fraction in [0, 1]) and, unless ``baseline`` is given,
            ``baseline_accuracy``.
        budget: the allowed accuracy drop per layer, in accuracy points (>= 0).
        baseline: the baseline accuracy (fraction), one for all layers or per layer;
            default: each row's ``baseline_accuracy``.

    Returns:
        ``{layer: q}`` in the order layers first appear in ``rows``.

    Raises:
        ValueError: negative or non-finite budget, or no baseline available.

    Example:
        >>> rows = [{"layer": "fc1", "q": q, "val_accuracy": a} for q, a in
        ...         [(0.5, 0.98), (1.0, 0.975), (1.5, 0.95), (2.0, 0.97)]]
        >>> choose_q(rows, 0.5, baseline=0.98)
        {'fc1': 1.0}
    """
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget={budget!r} is invalid; allowed: accuracy points >= 0")
    by_layer: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        layer = str(_get(row, "layer"))
        if baseline is None:
            try:
                base = float(_get(row, "baseline_accuracy"))
            except (KeyError, AttributeError):
                raise ValueError(
                    f"row of layer {layer!r} has no baseline_accuracy; pass baseline="
                ) from None
        elif isinstance(baseline, Mapping):
            base = float(baseline[layer])
        else:
            base = float(baseline)
        by_layer.setdefault(layer, []).append(
            (float(_get(row, "q")), float(_get(row, "val_accuracy")), base)
        )
    choice: dict[str, float] = {}
    for layer, points in by_layer.items():
        best = 0.0
        for q, acc, base in sorted(points):
            # 1e-9: accuracy fractions are ratios of counts; don't fail on float noise
            if 100.0 * (base - acc) > budget + 1e-9:
                break
            best = q
        choice[layer] = best
    return choice


def config_snippet(
    choice: Mapping[str, float],
    *,
    epochs: int = 10,
    comment: str | None = None,
    digits: int = 3,
) -> str:
    """YAML text of a ``prune`` section with one schedule entry ``q: {layer: value}``.

    Paste it into a run config (it replaces the ``prune`` section's ``method`` and
    ``schedule``; other ``prune`` keys can be added beside them). The text validates with
    :func:`prunelab.config.parse_config` once a ``model`` section is added.

    Args:
        choice: ``{layer: q}`` as from :func:`choose_q`.
        epochs: retraining epochs of the entry.
        comment: optional first line(s), written as YAML comments.
        digits: decimals kept for each ``q``.

    Raises:
        ValueError: empty choice, a negative or non-finite ``q``, or ``epochs < 0``.

    Example:
        >>> print(config_snippet({"fc1": 1.5, "fc2": 1.0}, epochs=5))
        prune:
          method: std
          schedule:
          - q:
              fc1: 1.5
              fc2: 1.0
            epochs: 5
        <BLANKLINE>
    """
    if not choice:
        raise ValueError("choice is empty; nothing to write")
    if epochs < 0:
        raise ValueError(f"epochs={epochs!r} is invalid; allowed: >= 0")
    q = {}
    for layer, v in choice.items():
        if not math.isfinite(float(v)) or float(v) < 0:
            raise ValueError(f"q={v!r} of layer {layer!r} is invalid; allowed: a finite q >= 0")
        q[str(layer)] = round(float(v), digits)
    body = yaml.safe_dump({"prune": {"method": "std", "schedule": [{"q": q, "epochs": epochs}]}},
                          sort_keys=False)
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    return head + body


def resolve_model_file(path: str | Path) -> tuple[Path, Path]:
    """``(model file, default output directory)`` of a model file or a run directory.

    A run directory's *dense* model is analysed (the analysis that chooses ``q`` is done
    before pruning); its output goes to ``RUN_DIR/sensitivity`` where the report finds it.

    Raises:
        FileNotFoundError: the path does not exist, or a directory has no dense model.
    """
    p = Path(path)
    if p.is_dir():
        f = p / "dense_model.safetensors"
        if not f.exists():
            raise FileNotFoundError(f"run directory {str(p)!r} has no dense_model.safetensors")
        return f, p / "sensitivity"
    if not p.exists():
        raise FileNotFoundError(f"model file {str(p)!r} does not exist")
    return p, p.parent / f"{p.stem}-sensitivity"


def validation_tensors(
    meta: Mapping[str, Any], *, data_root: str | None = None, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split a model file was trained with, normalised as it expects.

    Uses the file's dataset metadata (name, ``val_size``, ``split_seed``, ``subset``, ``mean``,
    ``std``, ``normalize``); never touches the test set.

    Raises:
        ValueError: the metadata describes no validation split (``val_size`` 0).
    """
    from ..data import splits_for_model_file

    if int(dict(meta.get("dataset") or {}).get("val_size", 5000)) <= 0:
        raise ValueError("the model was trained without a validation split (val_size 0); the "
                         "sensitivity analysis never uses the test set")
    splits = splits_for_model_file(meta, data_root=data_root, device=device)
    return splits.x_val, splits.y_val


def run_sensitivity(
    path: str | Path,
    *,
    grid: Sequence[float] | None = None,
    mode: str = "q",
    budget: float = 0.5,
    out_dir: str | Path | None = None,
    layers: str | Sequence[str] | None = None,
    data_root: str | None = None,
    device: str = "cpu",
    epochs: int = 10,
    allow_import: bool | Collection[str] = False,
) -> dict[str, Any]:
    """Sweep a model file (or a run directory's dense model) and write the results.

    Writes ``sensitivity.csv`` (the rows), ``sensitivity.png`` (one curve per layer) and
    ``suggested_q.yaml`` (:func:`config_snippet` of :func:`choose_q` at ``budget``).

    Returns:
        ``{"rows", "choice", "out_dir", "files", "time_s", "baseline_accuracy"}``.
    """
    import time

    from ..modelfile import load_model_file

    t0 = time.perf_counter()
    model_file, default_out = resolve_model_file(path)
    out = Path(out_dir) if out_dir is not None else default_out
    values = _check_grid(grid if grid is not None else DEFAULT_GRID[mode], mode)
    from ..devices import resolve_device

    resolve_device(device)
    model, meta = load_model_file(model_file, device=device, allow_import=allow_import)
    x, y = validation_tensors(meta, data_root=data_root, device=device)
    rows = sensitivity_sweep(model, x, y, grid=values, mode=mode, layers=layers)
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(rows, out / "sensitivity.csv")
    from ..report import figures as F

    fig = F.sensitivity_curves(rows, x=mode, budget=budget, path=out / "sensitivity.png",
                               title=f"Sensitivity of {meta['model']['name']} "
                               f"({model_file.name}), each layer pruned alone, no retraining")
    import matplotlib.pyplot as plt

    plt.close(fig)
    choice = choose_q(rows, budget)
    comment = (f"suggested by `prunelab sensitivity` on {model_file.name}: per layer, the largest "
               f"q whose\nvalidation accuracy drop (layer pruned alone, no retraining) stays "
               f"within {budget:g} points\nof {100 * rows[0].baseline_accuracy:.2f}%. q scales "
               "the std of the trained dense weights.")
    write_text_atomic(out / "suggested_q.yaml",
                      config_snippet(choice, epochs=epochs, comment=comment))
    return {"rows": rows, "choice": choice, "out_dir": out,
            "baseline_accuracy": rows[0].baseline_accuracy,
            "files": [out / "sensitivity.csv", out / "sensitivity.png",
                      out / "suggested_q.yaml"],
            "time_s": time.perf_counter() - t0}
