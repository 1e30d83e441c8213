"""Render a rethinking sweep's aggregate: a Markdown table and a plot of the baselines.

Example:
    >>> _fmt_err(1.234, 0.05), _fmt_count(2.5e6)
    ('1.23 ± 0.05', '2.50M')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..experiments.rethink.config import BASELINE_TITLES, BASELINES

__all__ = ["plot_results", "table_markdown"]


def _fmt_err(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _fmt_count(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}K"
    return f"{v:.0f}"


def table_markdown(agg: dict[str, Any]) -> str:
    """The aggregate as a Markdown table (mean ± sample std over seeds)."""
    head = ("| Method | Pruned | Baseline | Epochs | Test error % | Val error % | "
            "Params (nonzero) | FLOPs (nonzero) | FLOPs vs large | Seeds |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for lg in agg["large"]:
        lines.append(
            f"| {lg['label']} ({', '.join(lg['methods'])}) | 0 | — | {lg['epochs']} | "
            f"{_fmt_err(lg['test_error_mean'], lg['test_error_std'])} | "
            f"{_fmt_err(lg['val_error_mean'], lg['val_error_std'])} | "
            f"{_fmt_count(lg['params_nonzero'])} | {_fmt_count(lg['flops'])} | 1.00x | "
            f"{lg['n']} |"
        )
    for r in agg["rows"]:
        epochs = "–".join(str(e) for e in (r["epochs"][0], r["epochs"][-1])) \
            if r["epochs"][0] != r["epochs"][-1] else str(r["epochs"][0])
        lines.append(
            f"| {r['method']} | {r['ratio']:g} | {BASELINE_TITLES[r['baseline']]} | {epochs} | "
            f"{_fmt_err(r['test_error_mean'], r['test_error_std'])} | "
            f"{_fmt_err(r['val_error_mean'], r['val_error_std'])} | "
            f"{_fmt_count(r['params_nonzero'])} | {_fmt_count(r['flops'])} | "
            f"{1 / r['flops_reduction']:.2f}x | {r['n']} |"
        )
    note = (f"\n{agg['cells_found']} cells" + (f", {agg['missing_cells']} missing" if
                                             agg["missing_cells"] else "")
            + f"; compute {agg['compute_s'] / 60:.1f} min (training and evaluation, summed).\n")
    return head + "\n".join(lines) + "\n" + note


def plot_results(agg: dict[str, Any], path: str | Path | None = None) -> Any:
    """Test error per baseline, grouped by (method, ratio); error bars = std over seeds.

    The dashed segment over each group is the mean test error of its large model.

    Returns:
        The matplotlib ``Figure`` (saved as PNG when ``path`` is given).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in agg["rows"] if r["baseline"] != "pruned"]
    groups = list(dict.fromkeys((r["method"], r["ratio"]) for r in rows))
    baselines = [b for b in BASELINES if any(r["baseline"] == b for r in rows)]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(groups) + 3.5), 4.5))
    width = 0.8 / max(1, len(baselines))
    markers = {"finetune": "o", "scratch_e": "s", "scratch_b": "D", "lottery": "^"}
    for j, b in enumerate(baselines):
        xs, ys, es = [], [], []
        for i, g in enumerate(groups):
            r = next((r for r in rows if (r["method"], r["ratio"]) == g and r["baseline"] == b),
                     None)
            if r is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(r["test_error_mean"])
            es.append(r["test_error_std"] or 0.0)
        ax.errorbar(xs, ys, yerr=es, fmt=markers.get(b, "o"), capsize=3,
                    label=BASELINE_TITLES[b])
    large_of = {m: lg for lg in agg["large"] for m in lg["methods"]}
    for i, (method, _) in enumerate(groups):
        lg = large_of.get(method)
        if lg is not None:
            ax.hlines(lg["test_error_mean"], i - 0.45, i + 0.45, colors="0.3",
                      linestyles="dashed", label="large model" if i == 0 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\n{r:g} pruned" for m, r in groups])
    ax.set_xlabel("pruning method and fraction pruned")
    ax.set_ylabel("test error (%), mean ± std over seeds")
    n = len(agg["seeds"])
    ax.set_title(f"{agg['name']}: fine-tune vs training from scratch "
                 f"({n} seed{'s' if n != 1 else ''})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
