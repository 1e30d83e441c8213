"""One self-contained HTML report of a run: paper vs ours, per-layer table, every figure.

The report has no external references: CSS is inline and every image is a base64 PNG data
URI, so ``report.html`` can be mailed or archived alone. Each figure is also written as a PNG
beside it. Whatever the run directory lacks (no dense model, no log, no sensitivity sweep) is
skipped with a note instead of failing.

Example:
    >>> path = write_report("runs/lenet300-seed0")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'report.html'
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from .. import __version__
from ..atomic import write_text_atomic
from ..paper import PAPER
from . import figures as F

__all__ = ["FIGURE_IDS", "ReportFigure", "write_report"]

#: Figure ids in report order (also the PNG file names, with ``.png``).
FIGURE_IDS: tuple[str, ...] = (
    "fig-training", "fig-layers", "fig-histograms", "fig-connectivity", "fig-conv-masks",
    "fig-sensitivity",
)

# base64 text is random letters; a URL scheme spelt by chance would trip "no external
# reference" checks. The URL parser drops newlines inside a data URI, so split such runs.
_SCHEME_RUN = re.compile("(h)(ttp)", re.IGNORECASE)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f3f7; }
td:first-child, th:first-child { text-align: left; }
tr.total td { font-weight: bold; background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 0.9em; margin-top: 0.3em; }
.skipped { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.8em; border-radius: 4px; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.good { color: #1a7f37; } .bad { color: #b42318; }
"""


@dataclass
class ReportFigure:
    """One figure of the report: drawn (``png`` set) or skipped (``skipped`` says why)."""

    fig_id: str
    title: str
    caption: str
    png: bytes | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def _data_uri(png: bytes) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return "data:image/png;base64," + _SCHEME_RUN.sub("\\1\n\\2", b64)


def _read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
    return records


def _fmt(v: Any, spec: str = ",") -> str:
    if v is None:
        return "—"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return html.escape(str(v))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]],
           total: Sequence[str] | None = None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    if total is not None:
        out.append('<tr class="total">' + "".join(f"<td>{c}</td>" for c in total) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _summary_table(summary: Mapping[str, Any], paper: Mapping[str, Any] | None) -> str:
    p = paper or {}
    pt = p.get("total", {})
    w, nz = summary.get("weights"), summary.get("weights_nonzero")
    fd, fp = summary.get("flops_dense"), summary.get("flops_pruned")
    rows = [
        ("Test error, dense (%)", _fmt(summary.get("test_error_dense"), ".2f"),
         _fmt(p.get("test_error_dense"), ".2f")),
        ("Test error, pruned (%)", _fmt(summary.get("test_error_pruned"), ".2f"),
         _fmt(p.get("test_error_pruned"), ".2f")),
        ("Validation error, dense -> pruned (%)",
         f"{_fmt(summary.get('val_error_dense'), '.2f')} -> "
         f"{_fmt(summary.get('val_error_pruned'), '.2f')}", "—"),
        ("Parameters, total (biases included)", _fmt(summary.get("params_total")),
         _fmt(p.get("params_total"))),
        ("Parameters, nonzero", _fmt(summary.get("params_nonzero")),
         _fmt(p.get("params_nonzero"))),
        ("Compression (parameters, x)", _fmt(summary.get("compression"), ".1f"),
         _fmt(p.get("compression"))),
        ("Weights kept (%, no biases)", _fmt(100 * nz / w if w and nz is not None else None,
                                             ".1f"), _fmt(pt.get("weights_kept"))),
        ("FLOP per image, dense", _fmt(fd), _fmt(pt.get("flops"))),
        ("FLOP kept (%)", _fmt(100 * fp / fd if fd and fp is not None else None, ".1f"),
         _fmt(pt.get("flops_kept"))),
        ("FLOP reduction (x)", _fmt(summary.get("flops_reduction"), ".1f"),
         _fmt(100 / pt["flops_kept"] if pt.get("flops_kept") else None, ".1f")),
    ]
    net = p.get("network", "paper")
    return _table(["", "ours", f"paper ({net})" if paper else "paper"],
                  [[html.escape(a), b, c] for a, b, c in rows])


def _layer_table(summary: Mapping[str, Any], paper: Mapping[str, Any] | None) -> str:
    pl = (paper or {}).get("layers", {})
    head = ["layer", "kind", "shape", "weights", "nonzero", "weights kept %", "FLOP",
            "FLOP kept %", "input act. density %"]
    if paper:
        head += ["paper: weights kept %", "paper: FLOP kept %", "paper: act. density %"]
    rows = []
    tw = tn = tf = tfp = dens = 0.0
    for layer in summary.get("layers", []):
        w, nz = layer["weights"], layer["nonzero"]
        f, fp = layer["flops_dense"], layer["flops_pruned"]
        tw, tn, tf, tfp = tw + w, tn + nz, tf + f, tfp + fp
        dens += layer["input_density"] * f
        row = [html.escape(layer["name"]), html.escape(layer.get("kind", "")),
               "x".join(str(s) for s in layer.get("shape", [])), _fmt(w), _fmt(nz),
               _fmt(100 * nz / w if w else None, ".1f"), _fmt(f),
               _fmt(100 * fp / f if f else None, ".1f"),
               _fmt(100 * layer["input_density"], ".0f")]
        if paper:
            q = pl.get(layer["name"], {})
            row += [_fmt(q.get("weights_kept")), _fmt(q.get("flops_kept")),
                    _fmt(q.get("act_density"))]
        rows.append(row)
    total = ["total", "", "", _fmt(int(tw)), _fmt(int(tn)),
             _fmt(100 * tn / tw if tw else None, ".1f"), _fmt(int(tf)),
             _fmt(100 * tfp / tf if tf else None, ".1f"),
             _fmt(100 * dens / tf if tf else None, ".0f")]
    if paper:
        t = paper.get("total", {})
        total += [_fmt(t.get("weights_kept")), _fmt(t.get("flops_kept")),
                  _fmt(t.get("act_density"))]
    return _table(head, rows, total)


def _dead_cell(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return "0"
    return (f"{counts.get('removed', 0)} removed (no input {counts.get('no_input', 0)}, "
            f"no output {counts.get('no_output', 0)})")


def _prune_table(records: Sequence[Mapping[str, Any]]) -> str | None:
    rows = []
    for ev in records:
        if ev.get("kind") != "prune":
            continue
        for r in ev.get("layers", []):
            dead = ev.get("dead_neurons") or {}
            rows.append([str(ev.get("iteration", "")), html.escape(str(r.get("layer"))),
                         _fmt(r.get("amount"), ".3g"), _fmt(r.get("threshold"), ".4g"),
                         _fmt(r.get("nonzero_before")), _fmt(r.get("nonzero_after")),
                         _fmt(100 * r["sparsity_after"] if "sparsity_after" in r else None,
                              ".1f"),
                         _dead_cell(dead.get(r.get("layer")))])
    if not rows:
        return None
    return _table(["iteration", "layer", "q / sparsity", "threshold |w|", "nonzero before",
                   "nonzero after", "pruned %", "dead neurons of the layer"], rows)


def _centre_table(stats: Sequence[F.CentreStats]) -> str:
    rows = []
    for s in stats:
        verdict = []
        verdict.append('<span class="good">centre gone</span>' if s.centre_vanished
                       else '<span class="bad">centre still populated</span>')
        verdict.append("two lobes (bimodal)" if s.bimodal else "not bimodal")
        rows.append([html.escape(s.layer), _fmt(s.dense_std, ".4g"),
                     _fmt(100 * s.centre_dense, ".2f"), _fmt(100 * s.centre_pruned, ".2f"),
                     _fmt(s.bimodality_dense, ".3f"), _fmt(s.bimodality_pruned, ".3f"),
                     ", ".join(verdict)])
    return _table(["layer", "dense std", f"centre % dense (|w| < {stats[0].fraction:g} std)",
                   "centre % pruned (nonzero)", "bimodality dense", "bimodality pruned",
                   "verdict"], rows)


def _draw(fig_id: str, out: Path, make: Callable[[Path], Any]) -> bytes:
    path = out / f"{fig_id}.png"
    fig = make(path)
    plt.close(fig)
    return path.read_bytes()


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    allow_import: bool | Collection[str] = False,
) -> Path:
    """Write ``report.html`` (self-contained) and one PNG per figure for a run directory.

    Args:
        run_dir: a directory written by :func:`prunelab.experiments.runner.run_han`
            (``summary.json``,
            ``log.jsonl``, ``dense_model.safetensors``, ``model.safetensors``; an optional
            ``sensitivity/sensitivity.csv`` from ``prunelab sensitivity RUN_DIR``).
        out_dir: where to write (default: ``run_dir``).
        allow_import: honour an import path as the model files' model name (see
            :func:`prunelab.modelfile.load_model_file`; a run's own config passes its own).

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or holds neither ``summary.json`` nor
            ``log.jsonl``.
    """
    from ..modelfile import load_model_file

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    if (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text())
    records = _read_log(run / "log.jsonl") if (run / "log.jsonl").exists() else []
    if not summary and not records:
        raise FileNotFoundError(
            f"{str(run)!r} holds neither summary.json nor log.jsonl; is it a run directory?"
        )
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    model_name = summary.get("model")
    if model_name is None and config_text:
        import yaml

        model_name = (yaml.safe_load(config_text) or {}).get("model", {}).get("name")
    paper = PAPER.get(model_name or "")

    dense = pruned = None
    if (run / "dense_model.safetensors").exists():
        dense, _ = load_model_file(run / "dense_model.safetensors", allow_import=allow_import)
    if (run / "model.safetensors").exists():
        pruned, _ = load_model_file(run / "model.safetensors", allow_import=allow_import)

    figs: list[ReportFigure] = []
    centre: list[F.CentreStats] = []

    def add(fig_id: str, title: str, caption: str, make: Callable[[Path], Any] | None,
            missing: str) -> None:
        item = ReportFigure(fig_id, title, caption)
        if make is None:
            item.skipped = missing
        else:
            try:
                item.png = _draw(fig_id, out, make)
            except Exception as exc:  # a figure must never sink the report of a long run
                warnings.warn(f"figure {fig_id} failed: {exc}", RuntimeWarning, stacklevel=2)
                item.skipped = f"could not be drawn: {type(exc).__name__}: {exc}"
        figs.append(item)

    has_epochs = any(r.get("kind") == "epoch" for r in records)
    add("fig-training", "Training curves across the pipeline",
        "Loss, accuracy and per-layer sparsity per epoch of the whole pipeline (dense training, "
        "then each prune + retrain iteration); dashed lines mark the prune events.",
        (lambda p: F.training_curves(records, path=p)) if has_epochs else None,
        "no epoch records in log.jsonl")
    add("fig-layers", "Weights and FLOP kept per layer",
        "Weights kept % and FLOP kept % (weights kept x measured input-activation density) of "
        "each layer" + (", ours beside the paper's" if paper else "") + ".",
        (lambda p: F.layer_bars(summary["layers"], paper_layers=(paper or {}).get("layers"),
                                path=p)) if summary.get("layers") else None,
        "no summary.json with per-layer figures")

    def hist(p: Path) -> Any:
        dw, pw = F.layer_weights(dense), F.layer_weights(pruned)
        centre.extend(F.centre_stats(n, dw[n], pw[n]) for n in dw if n in pw)
        return F.weight_histograms(dw, pw, path=p)

    add("fig-histograms", "Weight distributions before and after",
        "Left: all weights of the dense model; right: the nonzero weights after prune + "
        "retrain, on the same x range. Han et al. report that the distribution turns bimodal: "
        "the centre disappears and the range widens.",
        hist if dense is not None and pruned is not None else None,
        "needs both dense_model.safetensors and model.safetensors")
    mlp_first = F.is_mlp_first_layer(pruned) if pruned is not None else None
    conv = F.first_conv(pruned) if pruned is not None else None
    first = F.first_layer(pruned) if pruned is not None else None
    add("fig-connectivity", "First-layer connectivity (28x28 input)",
        "Number of surviving connections from each input pixel to the first hidden layer. "
        "Han et al. find the surviving connections concentrate on the centre of the image, "
        "where the digits are.",
        (lambda p: F.connectivity_map(mlp_first, path=p)) if mlp_first is not None else None,
        "the model's first layer is not a Linear layer with 784 inputs" if pruned is not None
        else "no model.safetensors")
    add("fig-conv-masks", "First conv layer: surviving pattern of each filter",
        "Kept (dark) and pruned (light) kernel positions of each filter of the first "
        "convolution; the title of each cell counts the filter's surviving weights.",
        (lambda p: F.conv_mask_grid(conv[1], path=p,
                                    title=f"{conv[0]}: surviving weights per filter"))
        if conv is not None and first is not None and first[0] == conv[0] else None,
        "the model's first layer is not a convolution" if pruned is not None
        else "no model.safetensors")
    sens_csv = next((c for c in (out / "sensitivity" / "sensitivity.csv",
                                 run / "sensitivity" / "sensitivity.csv") if c.exists()), None)

    def sens(p: Path) -> Any:
        from ..records import read_rows_csv

        rows = read_rows_csv(sens_csv)
        return F.sensitivity_curves(rows, x="q" if rows and rows[0].mode == "q" else "sparsity",
                                    path=p)

    add("fig-sensitivity", "Sensitivity of each layer (no retraining)",
        "Validation accuracy when one layer alone is pruned at increasing threshold, the "
        "analysis Han et al. use to pick each layer's quality parameter.",
        sens if sens_csv is not None else None,
        "no sensitivity sweep; run `prunelab sensitivity RUN_DIR` and rebuild the report")

    write_text_atomic(out / "report.html",
                      _render(run, summary, records, config_text, paper, figs, centre))
    return out / "report.html"


def _render(run: Path, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
            config_text: str, paper: Mapping[str, Any] | None, figs: Sequence[ReportFigure],
            centre: Sequence[F.CentreStats]) -> str:
    name = summary.get("name") or run.name
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>prunelab report: {esc(str(name))}</title>", f"<style>{_CSS}</style>",
             "</head>", "<body>", f"<h1>prunelab report: {esc(str(name))}</h1>"]
    meta = [f"run directory <code>{esc(str(run))}</code>"]
    for key, label in (("model", "model"), ("dataset", "dataset"), ("seed", "seed"),
                       ("epochs", "epochs"), ("config_hash", "config")):
        if summary.get(key) is not None:
            meta.append(f"{label} <code>{esc(str(summary[key]))}</code>")
    if summary.get("time_s") is not None:
        meta.append(f"{summary['time_s'] / 60:.1f} min")
    meta.append(f"prunelab {esc(__version__)}, written "
                f"{_dt.datetime.now().isoformat(timespec='seconds')}")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')

    parts.append("<h2>Summary: paper vs ours</h2>")
    if summary:
        parts.append(_summary_table(summary, paper))
        parts.append("<p class=\"meta\">Errors are top-1 on the test set. Parameters include "
                     "biases; weights and FLOP exclude them; FLOP = 2 x multiply-accumulates per "
                     "image; the compression is a ratio of parameters, not of storage.</p>")
        parts.append("<h2>Per-layer table</h2>")
        parts.append(_layer_table(summary, paper))
    else:
        parts.append('<p class="skipped">No summary.json: the run has not finished.</p>')
    prune_tbl = _prune_table(records)
    if prune_tbl:
        parts.append("<h2>Pruning steps</h2>")
        parts.append(prune_tbl)
    if centre:
        parts.append("<h2>Did the weight distribution turn bimodal?</h2>")
        parts.append(_centre_table(centre))
        parts.append("<p class=\"meta\">Centre: share of the (surviving) weights with |w| below "
                     f"{centre[0].fraction:g} x the dense layer's std (a trained dense layer has "
                     "about 6-8% there); \"centre gone\" means under 1% of the surviving weights, "
                     "and \"bimodal\" that besides each sign holds at least 10% of them. Sarle's "
                     "coefficient (skew² + 1) / kurtosis is given for reference: a Gaussian gives "
                     "0.33, values above 0.555 suggest two lobes, but heavy-tailed lobes keep it "
                     "lower.</p>")

    parts.append("<h2>Figures</h2>")
    for f in figs:
        if f.png is not None:
            parts.append(
                f'<figure id="{f.fig_id}"><img src="{_data_uri(f.png)}" '
                f'alt="{esc(f.title)}" title="{esc(f.title)}">'
                f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)} "
                f"(<code>{esc(f.fig_id)}.png</code>)</figcaption></figure>"
            )
        else:
            parts.append(f'<p class="skipped" id="{f.fig_id}-skipped"><b>{esc(f.title)}</b>: '
                         f"skipped ({esc(f.skipped or '')}).</p>")
    if config_text:
        parts.append("<h2>Configuration</h2>")
        parts.append(f"<pre>{esc(config_text)}</pre>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
