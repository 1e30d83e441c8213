"""Markdown tables of a run's results, beside the paper's.

Example:
    >>> _k(235200)
    '235.2K'
"""

from __future__ import annotations

from typing import Any

from ..paper import PAPER

__all__ = ["layer_table_markdown"]


def _k(n: float) -> str:
    return f"{n / 1000:.1f}K" if n >= 1000 else f"{n:.0f}"


def layer_table_markdown(summary: dict[str, Any], paper_key: str | None = None) -> str:
    """The per-layer table (ours beside the paper's Tables 2-5 where the paper has one).

    A figure the paper entry lacks (e.g. the ImageNet activation densities) shows as "—".

    Example:
        >>> s = {"model": "x", "layers": [{"name": "fc", "weights": 10, "nonzero": 1,
        ...      "flops_dense": 20, "flops_pruned": 1.0, "input_density": 0.5}],
        ...      "params_total": 12, "params_nonzero": 3, "compression": 4.0,
        ...      "test_error_dense": 1.0, "test_error_pruned": 1.1}
        >>> "| fc |" in layer_table_markdown(s)
        True
    """
    paper = PAPER.get(paper_key or summary["model"])
    pl = (paper or {}).get("layers", {})
    head = ("| Layer | Weights | FLOP | Act. density % | Weights kept % | FLOP kept % |"
            + (" Paper: act. % | Paper: weights kept % | Paper: FLOP kept % |" if paper else "")
            + "\n|" + "---|" * (9 if paper else 6) + "\n")
    rows = []
    tw = tn = tf = tfp = 0.0
    dens_num = 0.0
    for layer in summary["layers"]:
        w, nz = layer["weights"], layer["nonzero"]
        f, fp = layer["flops_dense"], layer["flops_pruned"]
        tw, tn, tf, tfp = tw + w, tn + nz, tf + f, tfp + fp
        dens_num += layer["input_density"] * f
        row = (f"| {layer['name']} | {_k(w)} | {_k(f)} | {100 * layer['input_density']:.0f} | "
               f"{100 * nz / w:.1f} | {100 * fp / f:.1f} |")
        if paper:
            p = pl.get(layer["name"], {})
            row += (f" {p.get('act_density', '—')} | {p.get('weights_kept', '—')} | "
                    f"{p.get('flops_kept', '—')} |")
        rows.append(row)
    total = (f"| **total** | {_k(tw)} | {_k(tf)} | {100 * dens_num / tf:.0f} | "
             f"{100 * tn / tw:.1f} | {100 * tfp / tf:.1f} |")
    if paper:
        t = paper["total"]
        total += (f" {t.get('act_density', '—')} | {t.get('weights_kept', '—')} | "
                  f"{t.get('flops_kept', '—')} |")
    rows.append(total)
    lines = [f"# {summary.get('name', summary['model'])}: per-layer table\n",
             head + "\n".join(rows) + "\n"]
    lines.append(
        f"\nParameters (biases included): {summary['params_total']:,} total, "
        f"{summary['params_nonzero']:,} nonzero, compression {summary['compression']:.1f}x"
        + (f" (paper: {paper['params_total']:,} -> {paper['params_nonzero']:,}, "
           f"{paper['compression']}x)" if paper else "")
        + f".\n\nTest error: dense {summary['test_error_dense']:.2f}% -> pruned "
        f"{summary['test_error_pruned']:.2f}%"
        + (f" (paper: {paper['test_error_dense']:.2f}% -> {paper['test_error_pruned']:.2f}%)"
           if paper else "")
        + ".\n\nWeights exclude biases; FLOP = 2 x MAC per image; FLOP kept = weights kept x "
        "measured input-activation density (on 256 validation images).\n"
    )
    return "".join(lines)
