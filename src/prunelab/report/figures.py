"""Figures of what pruning did, and the pure data helpers behind them.

Data helpers (no plotting, tested on known masks):

* :func:`connectivity_counts` -- surviving connections per input feature of a Linear layer;
* :func:`histogram_data` -- counts and bin edges of a weight tensor (optionally nonzeros only);
* :func:`centre_fraction` and :func:`bimodality_coefficient` -- whether the centre of a
  weight distribution vanished (Han et al.: after prune + retrain it becomes bimodal).

Figures (matplotlib, ``Agg`` backend; each returns the ``Figure`` and saves a PNG when
``path`` is given): :func:`weight_histograms`, :func:`connectivity_map`,
:func:`conv_mask_grid`, :func:`layer_bars`, :func:`training_curves`,
:func:`sensitivity_curves`, :func:`tradeoff_curves`.

Example:
    >>> import torch
    >>> connectivity_counts(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])).tolist()
    [1, 0, 2]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from torch import nn

from ..masks import effective_tensor
from ..selection import CONV_TYPES, LINEAR_TYPES, PRUNABLE_TYPES

__all__ = [
    "CentreStats",
    "bimodality_coefficient",
    "centre_fraction",
    "centre_stats",
    "connectivity_counts",
    "connectivity_map",
    "conv_mask_grid",
    "first_conv",
    "first_layer",
    "histogram_data",
    "is_mlp_first_layer",
    "layer_bars",
    "layer_weights",
    "save_figure",
    "sensitivity_curves",
    "tradeoff_curves",
    "training_curves",
    "weight_histograms",
]

DPI = 100


# ---------------------------------------------------------------------------- data helpers
def _as_tensor(x: torch.Tensor | np.ndarray | nn.Module) -> torch.Tensor:
    if isinstance(x, nn.Module):
        return effective_tensor(x).detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if torch.is_tensor(x):
        return x.detach()
    raise TypeError(f"expected a tensor, array or Linear/Conv module, got {type(x).__name__}")


def connectivity_counts(weight_mask_or_weight: torch.Tensor | np.ndarray | nn.Module
                        ) -> torch.Tensor:
    """Number of surviving (nonzero) connections of each input feature of a Linear layer.

    Args:
        weight_mask_or_weight: a ``[out_features, in_features]`` mask or weight (nonzero =
            surviving), or a Linear module (its effective, masked weight is used).

    Returns:
        Integer tensor ``[in_features]``: for each input, how many outputs still read it.

    Raises:
        ValueError: the tensor is not 2-D.

    Example:
        >>> import torch
        >>> connectivity_counts(torch.eye(3)).tolist()
        [1, 1, 1]
    """
    t = _as_tensor(weight_mask_or_weight)
    if t.dim() != 2:
        raise ValueError(
            f"connectivity_counts needs a 2-D [out, in] weight or mask, got shape {tuple(t.shape)}"
        )
    return (t != 0).sum(dim=0).to(torch.long)


def histogram_data(
    weights: torch.Tensor | np.ndarray | nn.Module,
    bins: int | Sequence[float] = 100,
    *,
    nonzero_only: bool = False,
    value_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of weight values.

    Args:
        weights: a tensor/array, or a Linear/Conv module (effective weight).
        bins: number of equal-width bins, or the bin edges.
        nonzero_only: drop exact zeros first (pruned connections).
        value_range: ``(low, high)`` of the bins (default: min and max of the values).

    Returns:
        ``(counts, edges)`` as numpy arrays, ``len(edges) == len(counts) + 1``.

    Example:
        >>> import torch
        >>> c, e = histogram_data(torch.tensor([0.0, 0.0, 1.0, 2.0]), 2, nonzero_only=True)
        >>> c.tolist(), e.tolist()
        ([1, 1], [1.0, 1.5, 2.0])
    """
    t = _as_tensor(weights).flatten().double()
    if nonzero_only:
        t = t[t != 0]
    values = t.cpu().numpy()
    if isinstance(bins, int) and bins < 1:
        raise ValueError(f"bins={bins!r} is invalid; allowed: an int >= 1 or bin edges")
    if value_range is None and values.size == 0:
        value_range = (-1.0, 1.0)
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    return counts, edges


def centre_fraction(
    weights: torch.Tensor | np.ndarray | nn.Module, scale: float, *, fraction: float = 0.1
) -> float:
    """Fraction of the surviving (nonzero) weights with ``|w| < fraction * scale``.

    With ``scale`` the std of the *dense* layer, a trained dense layer has a sizeable centre
    (about 8% of a Gaussian lies within 0.1 std); right after Han pruning the centre is
    empty, and after retraining it stays nearly empty when the distribution turns bimodal.

    Returns:
        A fraction in [0, 1] (``nan`` when no weight survives).

    Example:
        >>> import torch
        >>> centre_fraction(torch.tensor([0.0, 0.01, 1.0, -1.0]), 1.0)
        0.3333333333333333
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale={scale!r} is invalid; allowed: a finite value >= 0")
    t = _as_tensor(weights).flatten().double()
    t = t[t != 0]
    if t.numel() == 0:
        return math.nan
    return float((t.abs() < fraction * scale).double().mean())


def bimodality_coefficient(weights: torch.Tensor | np.ndarray | nn.Module,
                           *, nonzero_only: bool = True) -> float:
    """Sarle's bimodality coefficient ``(skew^2 + 1) / kurtosis`` of the weight values.

    A Gaussian gives 1/3, a uniform distribution 5/9 (0.555...); values above 5/9 point to
    a bimodal distribution (two separated lobes, no centre), up to 1 for two spikes.

    Returns:
        The coefficient (``nan`` for fewer than 2 distinct values).

    Example:
        >>> import torch
        >>> round(bimodality_coefficient(torch.tensor([-1.0, 1.0] * 50)), 3)
        1.0
    """
    t = _as_tensor(weights).flatten().double()
    if nonzero_only:
        t = t[t != 0]
    if t.numel() < 2:
        return math.nan
    d = t - t.mean()
    m2 = float((d**2).mean())
    if m2 == 0:
        return math.nan
    skew = float((d**3).mean()) / m2**1.5
    kurt = float((d**4).mean()) / m2**2
    return (skew**2 + 1.0) / kurt


@dataclass(frozen=True)
class CentreStats:
    """Centre and shape of a layer's weights, dense vs pruned+retrained.

    ``centre_*`` are :func:`centre_fraction` with the dense std as scale; ``bimodality_*``
    are :func:`bimodality_coefficient` (informative only: heavy-tailed lobes keep it low
    even when the centre is empty); ``negative_share`` is the share of the surviving
    weights that are negative.
    """

    layer: str
    dense_std: float
    centre_dense: float
    centre_pruned: float
    bimodality_dense: float
    bimodality_pruned: float
    negative_share: float
    fraction: float

    @property
    def centre_vanished(self) -> bool:
        """True when under 1% of the surviving weights sit in the centre band.

        A trained dense layer has about 6-8% of its weights there.
        """
        return self.centre_pruned < 0.01

    @property
    def bimodal(self) -> bool:
        """Two lobes: the centre vanished and each sign holds at least 10% of the weights."""
        return self.centre_vanished and 0.1 <= self.negative_share <= 0.9


def centre_stats(layer: str, dense: torch.Tensor | nn.Module, pruned: torch.Tensor | nn.Module,
                 *, fraction: float = 0.1) -> CentreStats:
    """:class:`CentreStats` of one layer (``fraction`` of the dense std bounds the centre).

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> w = torch.randn(1000)
        >>> s = centre_stats("fc", w, w * (w.abs() > 1))
        >>> s.centre_vanished, s.bimodal
        (True, True)
    """
    d = _as_tensor(dense).flatten().double()
    p = _as_tensor(pruned).flatten().double()
    nz = p[p != 0]
    std = float(d.std(correction=0)) if d.numel() else 0.0
    neg = float((nz < 0).double().mean()) if nz.numel() else math.nan
    return CentreStats(layer, std, centre_fraction(d, std, fraction=fraction),
                       centre_fraction(p, std, fraction=fraction),
                       bimodality_coefficient(d, nonzero_only=False),
                       bimodality_coefficient(p), neg, fraction)


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer: effective weight}`` of every Linear/Conv layer, in module order."""
    return {n: effective_tensor(m).detach().cpu() for n, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES)}


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Linear/Conv layer of ``model`` (module order), or ``None``."""
    for n, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES):
            return n, m
    return None


# ------------------------------------------------------------------------------- plotting
def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Save ``fig`` as PNG (no software tag in the metadata) when ``path`` is given."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return fig


def weight_histograms(
    dense: Mapping[str, torch.Tensor] | nn.Module,
    pruned: Mapping[str, torch.Tensor] | nn.Module,
    *,
    bins: int = 80,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Per layer: dense weights (left) beside the nonzero weights after prune+retrain (right).

    Both panels of a layer share the x range, so a wider range after retraining shows; the
    right panel's title gives the centre fraction (``|w| < 0.1 std_dense``) and Sarle's
    bimodality coefficient.
    """
    dw = layer_weights(dense) if isinstance(dense, nn.Module) else dict(dense)
    pw = layer_weights(pruned) if isinstance(pruned, nn.Module) else dict(pruned)
    names = [n for n in dw if n in pw]
    if not names:
        raise ValueError("no layer is in both the dense and the pruned model")
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 2.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        d = dw[name].flatten().double()
        p = pw[name].flatten().double()
        p = p[p != 0]
        lo = float(min(d.min(), p.min() if p.numel() else d.min()))
        hi = float(max(d.max(), p.max() if p.numel() else d.max()))
        st = centre_stats(name, d, p)
        for j, (vals, label, color) in enumerate(
            ((d, "dense (before pruning)", "tab:blue"),
             (p, "nonzero after prune + retrain", "tab:orange"))
        ):
            ax = axes[i][j]
            counts, edges = histogram_data(vals, bins, value_range=(lo, hi))
            ax.stairs(counts, edges, fill=True, color=color, alpha=0.8, label=label)
            ax.set_xlim(lo, hi)
            ax.set_xlabel(f"{name} weight value")
            ax.set_ylabel("count (weights)")
            ax.legend(loc="best", fontsize=8)
            if j == 0:
                ax.set_title(f"{name}: {vals.numel():,} weights, std {st.dense_std:.3g}",
                             fontsize=9)
            else:
                ax.set_title(
                    f"{name}: {vals.numel():,} nonzero; centre {100 * st.centre_pruned:.1f}% "
                    f"(dense {100 * st.centre_dense:.1f}%), bimodality "
                    f"{st.bimodality_pruned:.2f}", fontsize=9)
    fig.suptitle(title or "Weight distribution before pruning and after prune + retrain")
    fig.tight_layout()
    return save_figure(fig, path)


def connectivity_map(
    layer: nn.Module | torch.Tensor,
    *,
    image_shape: tuple[int, int] = (28, 28),
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of surviving connections per input pixel of an MLP's first Linear layer.

    Raises:
        ValueError: the layer's input count is not ``prod(image_shape)``.
    """
    counts = connectivity_counts(layer)
    out_features = (layer.out_features if isinstance(layer, nn.Linear)
                    else _as_tensor(layer).shape[0])
    if counts.numel() != image_shape[0] * image_shape[1]:
        raise ValueError(
            f"the layer has {counts.numel()} inputs, not {image_shape[0]}x{image_shape[1]}"
        )
    grid = counts.reshape(image_shape).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    # Scale to the busiest pixel (not to out_features): after 90%+ pruning no pixel is near it.
    vmax = max(1, int(grid.max()))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(f"surviving connections per pixel (of {out_features})")
    ax.set_xlabel("pixel column")
    ax.set_ylabel("pixel row")
    alive = int((counts > 0).sum())
    ax.set_title(title or f"First-layer connectivity: {alive} of {counts.numel()} pixels "
                 f"still used", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def conv_mask_grid(
    layer: nn.Module | torch.Tensor,
    *,
    path: str | Path | None = None,
    title: str | None = None,
    max_filters: int = 64,
) -> Figure:
    """Grid of a conv layer's filter masks (kept vs pruned), first input channel.

    Each cell is one output filter's ``kh x kw`` kernel (input channel 0); its title gives
    how many of the filter's weights (all input channels) survive.
    """
    w = _as_tensor(layer)
    if w.dim() < 3:
        raise ValueError(
            f"conv_mask_grid needs a conv weight [out, in, k...], got {tuple(w.shape)}"
        )
    w = w.reshape(w.shape[0], w.shape[1], w.shape[2], -1)
    n = min(w.shape[0], max_filters)
    cols = min(10, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.5, 1.45 * rows + 0.9),
                             squeeze=False)
    cmap = matplotlib.colors.ListedColormap(["#dddddd", "#1f4e79"])
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        kept = w[k] != 0
        ax.imshow(kept[0].cpu().numpy().astype(float), cmap=cmap, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(f"#{k}: {int(kept.sum())}/{kept.numel()}", fontsize=7)
    axes[-1][0].set_xlabel("kernel x")
    axes[-1][0].set_ylabel("kernel y")
    fig.legend(handles=[Patch(color="#1f4e79", label="kept"),
                        Patch(color="#dddddd", label="pruned")],
               loc="lower right", ncol=2, fontsize=8)
    total_kept = int((w != 0).sum())
    fig.suptitle(title or f"First conv layer: surviving weights per filter "
                 f"({total_kept}/{w.numel()} kept)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path)


def layer_bars(
    layers: Sequence[Mapping[str, Any]],
    *,
    paper_layers: Mapping[str, Mapping[str, Any]] | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Per layer: weights kept % and FLOP kept %, ours beside the paper's where it exists.

    Args:
        layers: ``summary.json``'s ``layers`` (``name``, ``weights``, ``nonzero``,
            ``flops_dense``, ``flops_pruned``).
        paper_layers: ``PAPER[model]["layers"]`` (``weights_kept``, ``flops_kept`` in %; a
            missing key leaves that bar out).
    """
    names = [layer["name"] for layer in layers]
    ours_w = [100 * layer["nonzero"] / layer["weights"] for layer in layers]
    ours_f = [100 * layer["flops_pruned"] / layer["flops_dense"] if layer["flops_dense"] else 0
              for layer in layers]
    pl = paper_layers or {}
    x = np.arange(len(names))
    has_paper = any(n in pl for n in names)
    width = 0.38 if has_paper else 0.6
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, ours, key, what in ((axes[0], ours_w, "weights_kept", "weights kept"),
                                (axes[1], ours_f, "flops_kept", "FLOP kept")):
        off = -width / 2 if has_paper else 0.0
        bars = ax.bar(x + off, ours, width, label="ours", color="tab:blue")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        if has_paper:
            # A figure the paper does not give (VGG-16's per-layer FLOP kept) has no bar.
            pv = [float(pl[n][key]) if key in pl.get(n, {}) else np.nan for n in names]
            pbars = ax.bar(x + width / 2, pv, width, label="paper (Han et al. 2015)",
                           color="tab:gray")
            ax.bar_label(pbars, labels=["" if np.isnan(v) else f"{v:.0f}" for v in pv],
                         fontsize=7)
        ax.set_xticks(x, names)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{what} (%)")
        ax.set_ylim(0, max(105.0, *(v for v in ours if np.isfinite(v))) * 1.05)
        ax.set_title(f"{what[0].upper()}{what[1:]} per layer", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title or "What each layer keeps")
    fig.tight_layout()
    return save_figure(fig, path)


def _prune_positions(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """``(iteration, x)`` of each prune event: just before its retraining phase's epochs."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    out = []
    for ev in records:
        if ev.get("kind") != "prune":
            continue
        k = int(ev.get("iteration", 0))
        if ev.get("at_epoch") is not None:  # a pruning during training (gradual)
            out.append((k, float(ev["at_epoch"])))
            continue
        if ev.get("after_epoch") is not None:  # stamped by the pipeline: epochs run so far
            out.append((k, int(ev["after_epoch"]) + 0.5))
            continue
        in_phase = [r["global_epoch"] for r in epochs if r.get("iteration") == k]
        before = [r["global_epoch"] for r in epochs if r.get("iteration", 0) < k]
        if in_phase:
            out.append((k, min(in_phase) - 0.5))
        elif before:
            out.append((k, max(before) + 0.5))
        else:
            out.append((k, 0.5))
    return out


def _surgery_spans(records: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """Per iteration, the epochs (fractional) from the first to the last mask change."""
    spans: dict[int, list[float]] = {}
    for ev in records:
        if ev.get("kind") != "mask_update" or ev.get("at_epoch") is None:
            continue
        if not ev.get("changed") and ev.get("step_from") != ev.get("step_to"):
            continue
        k = int(ev.get("iteration", 0))
        per_step = ev["step_to"] - ev["step_from"]
        end = float(ev["at_epoch"])
        start = end if per_step == 0 else end - 1.0
        lo, hi = spans.get(k, [start, end])
        spans[k] = [min(lo, start), max(hi, end)]
    return [(lo, hi) for lo, hi in spans.values()]


def training_curves(
    records: Sequence[Mapping[str, Any]],
    *,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Loss, accuracy and per-layer sparsity per global epoch across the whole pipeline.

    Dashed vertical lines mark the prune events (between the last epoch before an
    iteration's pruning and the first retraining epoch; a pruning during training, gradual,
    at its fractional epoch, thinner), and a shaded band the epochs in which dynamic network
    surgery changed masks (``mask_update`` events).

    Raises:
        ValueError: no epoch records.
    """
    epochs = sorted((r for r in records if r.get("kind") == "epoch"),
                    key=lambda r: r["global_epoch"])
    if not epochs:
        raise ValueError("the log holds no epoch records")
    x = [r["global_epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    ax = axes[0]
    ax.plot(x, [r["loss"] for r in epochs], "o-", ms=3, label="training loss")
    if all(r.get("val_loss") is not None for r in epochs):
        ax.plot(x, [r["val_loss"] for r in epochs], "s-", ms=3, label="validation loss")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title("Loss", fontsize=10)
    ax = axes[1]
    ax.plot(x, [100 * r["train_accuracy"] for r in epochs], "o-", ms=3,
            label="training accuracy")
    ax.plot(x, [100 * r["val_accuracy"] for r in epochs], "s-", ms=3,
            label="validation accuracy")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy", fontsize=10)
    ax = axes[2]
    layer_names = list(epochs[-1].get("sparsity", {}))
    for name in layer_names:
        ax.plot(x, [100 * r.get("sparsity", {}).get(name, 0.0) for r in epochs], ".-",
                label=name)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("weights pruned (%)")
    ax.set_title("Sparsity per layer", fontsize=10)
    marks = _prune_positions(records)
    gradual = {round(float(r["at_epoch"]), 9) for r in records
               if r.get("kind") == "prune" and r.get("at_epoch") is not None}
    spans = _surgery_spans(records)
    for ax in axes:
        for i, (_, xp) in enumerate(marks):
            thin = round(xp, 9) in gradual
            ax.axvline(xp, color="k", ls=":" if thin else "--", lw=0.5 if thin else 0.8,
                       alpha=0.6, label="prune event" if i == 0 else None)
        for i, (x0, x1) in enumerate(spans):
            ax.axvspan(x0, x1, color="tab:purple", alpha=0.12,
                       label="masks prune and splice (surgery)" if i == 0 else None)
        ax.set_xlabel("epoch (whole pipeline)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    # phase names along the top of the accuracy panel (the first pruning of each iteration)
    named: set[int] = set()
    for k, xp in marks:
        if k in named:
            continue
        named.add(k)
        axes[1].annotate(f"prune {k}", (xp, 1.0), xycoords=("data", "axes fraction"),
                         fontsize=7, ha="left", va="top", rotation=90)
    fig.suptitle(title or "Training across the pipeline: train dense, then prune + retrain")
    fig.tight_layout()
    return save_figure(fig, path)


def sensitivity_curves(
    rows: Iterable[Any],
    *,
    x: str = "q",
    budget: float | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """One curve per layer: validation accuracy (%) against ``q`` or sparsity (no retraining).

    Args:
        rows: :class:`~prunelab.records.SensitivityRow` objects (or mappings).
        x: ``"q"`` or ``"sparsity"`` on the x axis.
        budget: if given, a dotted line at baseline - budget (accuracy points).
    """
    if x not in ("q", "sparsity"):
        raise ValueError(f"x={x!r} is unknown; allowed: q, sparsity")

    def get(r: Any, k: str) -> Any:
        return r[k] if isinstance(r, Mapping) else getattr(r, k)

    by_layer: dict[str, list[tuple[float, float]]] = {}
    base = None
    for r in rows:
        xv = float(get(r, x))
        if x == "sparsity":
            xv *= 100
        by_layer.setdefault(str(get(r, "layer")), []).append((xv, 100 * float(get(r,
                                                                                "val_accuracy"))))
        base = 100 * float(get(r, "baseline_accuracy"))
    if not by_layer:
        raise ValueError("no sensitivity rows to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for layer, pts in by_layer.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=layer)
    if base is not None:
        ax.axhline(base, color="k", lw=0.8, label=f"unpruned ({base:.2f}%)")
        if budget is not None:
            ax.axhline(base - budget, color="k", lw=0.8, ls=":",
                       label=f"budget: -{budget:g} points")
    ax.set_xlabel("quality parameter q (threshold / layer weight std)" if x == "q"
                  else "weights of the layer pruned (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "Sensitivity: each layer pruned alone, no retraining", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def tradeoff_curves(
    rows: Sequence[Mapping[str, Any]],
    *,
    baseline: Mapping[str, float] | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Han et al.'s Figure 5: accuracy change against fraction of parameters pruned.

    Args:
        rows: records with ``curve`` (label), ``fraction`` (in [0, 1]), ``val_accuracy`` and
            ``test_accuracy`` (fractions).
        baseline: ``{"val": acc, "test": acc}`` the changes are measured from (the dense
            L2 model); without it absolute accuracies are plotted.
    """
    curves: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        curves.setdefault(str(r["curve"]), []).append(r)
    if not curves:
        raise ValueError("no trade-off rows to plot")

    def style(label: str) -> dict[str, Any]:
        # colour = regulariser (iterative its own), dashed = no retraining, as in the paper
        color = ("tab:purple" if "iterative" in label else "tab:green" if "gradual" in label
                 else "tab:orange" if "surgery" in label
                 else "tab:blue" if label.startswith("L1") else "tab:red")
        dashed = "no retrain" in label
        marker = ("o" if dashed else "^" if "iterative" in label else "D" if "gradual" in label
                  else "v" if "surgery" in label else "s")
        return {"color": color, "ls": "--" if dashed else "-", "marker": marker, "ms": 4}

    zoom = baseline is not None
    nrows = 2 if zoom else 1
    fig, axes = plt.subplots(nrows, 2, figsize=(12, 4.2 * nrows), squeeze=False)
    for row in range(nrows):
        for ax, split in zip(axes[row], ("val", "test"), strict=True):
            for label, pts in curves.items():
                # the x is the sparsity reached (surgery ends near, not at, its fraction)
                xkey = "sparsity" if all("sparsity" in p for p in pts) else "fraction"
                pts = sorted(pts, key=lambda r: r[xkey])
                ys = [100 * p[f"{split}_accuracy"] for p in pts]
                if baseline is not None:
                    ys = [y - 100 * baseline[split] for y in ys]
                ax.plot([100 * p[xkey] for p in pts], ys, label=label, **style(label))
            ax.set_xlabel("parameters pruned away (%)")
            ax.set_ylabel("accuracy change vs dense L2 model (points)" if baseline is not None
                          else "accuracy (%)")
            if baseline is not None:
                ax.axhline(0.0, color="k", lw=0.8)
            name = "Validation" if split == "val" else "Test"
            if row == 1:
                ax.set_ylim(-5.0, 1.0)
                name += " set, zoomed to -5..+1 points (the paper's range)"
            else:
                name += " set"
            ax.set_title(name, fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title or "Accuracy vs parameters pruned (Han et al. 2015, Figure 5)")
    fig.tight_layout()
    return save_figure(fig, path)


def is_mlp_first_layer(model: nn.Module, in_features: int = 784) -> nn.Module | None:
    """The model's first prunable layer if it is a Linear with ``in_features`` inputs."""
    first = first_layer(model)
    if first is not None and isinstance(first[1], LINEAR_TYPES) \
            and first[1].in_features == in_features:
        return first[1]
    return None


def first_conv(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv layer of ``model``, or ``None``."""
    for n, m in model.named_modules():
        if isinstance(m, CONV_TYPES):
            return n, m
    return None
