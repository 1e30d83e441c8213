"""Tests for prunelab.report: sensitivity sweep, q choice, figure data, the HTML report."""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from prunelab.cli import main
from prunelab.config import parse_config
from prunelab.experiments.runner import run_han
from prunelab.experiments.sensitivity import (
    SensitivityRow,
    choose_q,
    config_snippet,
    read_rows_csv,
    run_sensitivity,
    sensitivity_sweep,
)
from prunelab.masks import effective_tensor, set_mask
from prunelab.report import figures as F
from prunelab.report import write_report
from prunelab.report.html import FIGURE_IDS, _data_uri

SCHEME = "ht" + "tp"  # spelt in two parts so this file never matches its own search
REPORT_SRC = Path(__file__).resolve().parents[1] / "src" / "prunelab" / "report"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny_run(root: Path, model: str) -> Path:
    cfg = parse_config({
        "model": {"name": model}, "data": {"subset": 300}, "train": {"epochs": 1},
        "prune": {"schedule": [{"q": 1.0, "epochs": 1}, {"q": 1.5, "epochs": 1}]},
    })
    out = root / model
    run_han(cfg, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {m: _tiny_run(root, m) for m in ("lenet300", "lenet5")}


def _mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    x, y = torch.randn(200, 10), torch.randint(0, 3, (200,))
    return model, x, y


# ------------------------------------------------------------------------------ sensitivity
@pytest.mark.parametrize("mode,grid", [("q", [2.0, 0.5, 1.0, 0.0, 3.0]),
                                       ("sparsity", [0.1, 0.5, 0.9, 0.0])])
def test_sweep_shape_and_monotone_sparsity(mode: str, grid: list[float]) -> None:
    model, x, y = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = sensitivity_sweep(model, x, y, grid=grid, mode=mode)
    assert len(rows) == 3 * len(grid)
    assert [r.layer for r in rows] == [n for n in ("0", "2", "4") for _ in grid]
    for layer in ("0", "2", "4"):
        mine = [r for r in rows if r.layer == layer]
        assert [r.value for r in mine] == sorted(grid)
        sp = [r.sparsity for r in mine]
        assert all(a <= b for a, b in itertools.pairwise(sp))
        assert sp[0] == 0.0  # grid value 0 prunes nothing
        assert all(0.0 <= r.val_accuracy <= 1.0 for r in mine)
        if mode == "sparsity":
            n = dict(model.named_modules())[layer].weight.numel()
            assert [round(r.sparsity * n) for r in mine] == [round(v * n) for v in sorted(grid)]
            qs = [r.q for r in mine]
            assert all(a <= b for a, b in itertools.pairwise(qs))
    # the model is restored exactly and the baseline is the unpruned accuracy
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    from prunelab.training import evaluate

    assert rows[0].baseline_accuracy == evaluate(model, x, y)[1]


def test_sweep_q_threshold_uses_layer_std_and_other_layers_untouched() -> None:
    model, x, y = _mlp()
    w = model[0].weight.detach().clone()
    std = float(w.double().std(correction=0))
    rows = sensitivity_sweep(model, x, y, grid=[1.0], layers="0")
    assert len(rows) == 1
    expected = float((w.abs() < std).double().mean())
    assert rows[0].sparsity == pytest.approx(expected)
    # pruning layer 0 alone at q=1 gives the same accuracy as doing it by hand
    from prunelab.training import evaluate

    with torch.no_grad():
        model[0].weight.mul_(w.abs() >= std)
    assert rows[0].val_accuracy == evaluate(model, x, y)[1]


def test_sweep_on_pruned_model_keeps_masks() -> None:
    model, x, y = _mlp()
    mask = (torch.rand_like(model[2].weight) > 0.5).float()
    set_mask(model[2], "weight", mask)
    zeros = 1.0 - float(mask.mean())
    rows = sensitivity_sweep(model, x, y, grid=[0.0, 0.5], layers="2")
    assert rows[0].sparsity == pytest.approx(zeros)
    assert rows[1].sparsity >= rows[0].sparsity
    assert torch.equal(model[2].weight_mask, mask)
    assert not effective_tensor(model[2])[mask == 0].any()


def test_sweep_rejects_bad_input() -> None:
    model, x, y = _mlp()
    with pytest.raises(ValueError, match="mode"):
        sensitivity_sweep(model, x, y, grid=[1.0], mode="amount")
    with pytest.raises(ValueError, match="sparsity in"):
        sensitivity_sweep(model, x, y, grid=[1.0], mode="sparsity")
    with pytest.raises(ValueError, match="q >= 0"):
        sensitivity_sweep(model, x, y, grid=[-1.0])
    with pytest.raises(ValueError, match="matches no layer"):
        sensitivity_sweep(model, x, y, grid=[1.0], layers="conv9")


def _rows(layer: str, pts: list[tuple[float, float]], base: float) -> list[SensitivityRow]:
    return [SensitivityRow(layer, "q", q, q, min(0.99, q / 4), a, base) for q, a in pts]


def test_choose_q_respects_budget() -> None:
    rows = (
        # fc1: drops 0.2, 0.5 (= budget), 1.0 points; a noisy recovery at 2.5 is not taken
        _rows("fc1", [(0.5, 0.978), (1.0, 0.975), (1.5, 0.970), (2.0, 0.90), (2.5, 0.979)],
              0.980)
        # conv1: over budget at once -> 0.0 (do not prune)
        + _rows("conv1", [(0.5, 0.97), (1.0, 0.96)], 0.98)
        # fc2: accuracy goes *up*, all within budget -> the largest q
        + _rows("fc2", [(1.0, 0.981), (2.0, 0.982)], 0.98)
    )
    assert choose_q(rows, 0.5) == {"fc1": 1.0, "conv1": 0.0, "fc2": 2.0}
    assert choose_q(rows, 1.0) == {"fc1": 1.5, "conv1": 0.5, "fc2": 2.0}
    assert choose_q(rows, 0.0)["fc1"] == 0.0
    for budget in (0.0, 0.3, 0.5, 1.0, 5.0):
        choice = choose_q(rows, budget)
        for r in rows:
            if r.q <= choice[r.layer]:
                assert 100 * (r.baseline_accuracy - r.val_accuracy) <= budget + 1e-9
    # mappings with an explicit baseline work the same
    dicts = [{"layer": r.layer, "q": r.q, "val_accuracy": r.val_accuracy} for r in rows
             if r.layer == "fc1"]
    assert choose_q(dicts, 0.5, baseline=0.98) == {"fc1": 1.0}
    with pytest.raises(ValueError, match="budget"):
        choose_q(rows, -1.0)
    with pytest.raises(ValueError, match="baseline"):
        choose_q(dicts, 0.5)


def test_config_snippet_validates() -> None:
    choice = {"conv1": 0.25, "conv2": 1.0, "fc1": 1.75, "fc2": 1.0}
    text = config_snippet(choice, epochs=4, comment="from a test\nsecond line")
    assert text.startswith("# from a test\n# second line\n")
    data = yaml.safe_load(text)
    cfg = parse_config({"model": {"name": "lenet5"}, **data})
    assert cfg.prune.method == "std"
    assert cfg.prune.schedule[0].q == choice
    assert cfg.prune.schedule[0].epochs == 4
    with pytest.raises(ValueError):
        config_snippet({})
    with pytest.raises(ValueError, match="q="):
        config_snippet({"fc1": -1.0})


# ------------------------------------------------------------------------------ figure data
def test_connectivity_counts_known_mask() -> None:
    mask = torch.zeros(3, 4)
    mask[0, 0] = mask[1, 0] = mask[2, 0] = 1  # input 0: all 3 outputs
    mask[1, 2] = 1  # input 2: one output
    assert connectivity_counts_list(mask) == [3, 0, 1, 0]
    layer = nn.Linear(4, 3)
    set_mask(layer, "weight", mask)
    assert connectivity_counts_list(layer) == [3, 0, 1, 0]
    with pytest.raises(ValueError, match="2-D"):
        F.connectivity_counts(torch.ones(2, 2, 2))


def connectivity_counts_list(x: torch.Tensor | nn.Module) -> list[int]:
    return F.connectivity_counts(x).tolist()


def test_histogram_data_known_values() -> None:
    w = torch.tensor([0.0, 0.0, 0.0, -1.0, -0.5, 0.5, 1.0, 1.0])
    counts, edges = F.histogram_data(w, 4, value_range=(-1.0, 1.0))
    assert counts.tolist() == [1, 1, 3, 3] and edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    counts, _ = F.histogram_data(w, 4, nonzero_only=True, value_range=(-1.0, 1.0))
    assert counts.tolist() == [1, 1, 0, 3]
    assert int(counts.sum()) == int(torch.count_nonzero(w))


def test_centre_and_bimodality() -> None:
    torch.manual_seed(0)
    dense = torch.randn(20000)
    pruned = dense * (dense.abs() >= 1.0)  # Han's rule at q = 1, std ~ 1
    st = F.centre_stats("fc", dense, pruned)
    assert 0.06 < st.centre_dense < 0.10  # ~8% of a Gaussian lies within 0.1 std
    assert st.centre_pruned == 0.0 and st.centre_vanished
    assert st.bimodality_dense == pytest.approx(1 / 3, abs=0.02)
    assert st.bimodal and not st.bimodality_dense > 5 / 9
    assert st.negative_share == pytest.approx(0.5, abs=0.02)
    assert not F.centre_stats("fc", dense, pruned.abs()).bimodal  # one lobe only
    assert F.centre_fraction(torch.tensor([0.0, 0.01, 2.0]), 1.0) == 0.5
    assert math.isnan(F.centre_fraction(torch.zeros(3), 1.0))


def test_prune_event_positions() -> None:
    recs = [{"kind": "epoch", "iteration": 0, "global_epoch": 1},
            {"kind": "epoch", "iteration": 0, "global_epoch": 2},
            {"kind": "prune", "iteration": 1},
            {"kind": "epoch", "iteration": 1, "global_epoch": 3},
            {"kind": "prune", "iteration": 2}]  # a retrain phase of 0 epochs
    assert F._prune_positions(recs) == [(1, 2.5), (2, 3.5)]
    stamped = [{"kind": "prune", "iteration": 1, "after_epoch": 4}]
    assert F._prune_positions(stamped) == [(1, 4.5)]


# ----------------------------------------------------------------------------------- report
def _no_scheme(path: Path) -> bool:
    return SCHEME.encode() not in path.read_bytes().lower()


def test_data_uri_never_spells_a_scheme() -> None:
    raw = base64.b64decode(SCHEME * 3) + base64.b64decode(SCHEME.upper() + "A" + SCHEME + "AAA")
    assert SCHEME in base64.b64encode(raw).decode().lower()
    uri = _data_uri(raw)
    assert SCHEME not in uri.lower()
    payload = re.sub(r"\s", "", uri.split(",", 1)[1])
    assert base64.b64decode(payload) == raw


def test_report_lenet300(runs: dict[str, Path], tmp_path: Path) -> None:
    t0 = time.process_time()  # CPU time: not inflated by other jobs on a shared machine
    path = write_report(runs["lenet300"], tmp_path)
    elapsed = time.process_time() - t0
    assert elapsed < 15, elapsed
    assert path == tmp_path / "report.html"
    text = path.read_text()
    assert SCHEME not in text.lower()
    assert "<link" not in text and "<script" not in text
    assert text.count("<img") == 4
    for fig_id in ("fig-training", "fig-layers", "fig-histograms", "fig-connectivity"):
        assert f'<figure id="{fig_id}">' in text
        assert (tmp_path / f"{fig_id}.png").exists() and _no_scheme(tmp_path / f"{fig_id}.png")
    assert 'id="fig-conv-masks-skipped"' in text and 'id="fig-sensitivity-skipped"' in text
    assert text.count('src="data:image/png;base64,') == 4
    for title in ("Summary: paper vs ours", "Per-layer table", "First-layer connectivity",
                  "Weight distributions before and after", "LeNet-300-100", "fc1"):
        assert title in text
    summary = json.loads((runs["lenet300"] / "summary.json").read_text())
    assert f"{summary['test_error_pruned']:.2f}" in text


@pytest.mark.parametrize("key", ["lenet300", "lenet5", "alexnet_caffe", "vgg16"])
def test_every_paper_entry_renders(key: str, tmp_path: Path) -> None:
    """Tables and figures read every PAPER entry, also where it lacks a figure (the ImageNet
    entries have no activation densities, VGG-16 no per-layer FLOP kept)."""
    from prunelab.paper import PAPER
    from prunelab.report.html import _layer_table, _summary_table
    from prunelab.report.tables import layer_table_markdown

    paper = PAPER[key]
    layers = [{"name": n, "kind": "fc", "shape": [2, 2], "weights": v["weights"],
               "nonzero": v["weights"] // 2, "flops_dense": v["flops"],
               "flops_pruned": v["flops"] / 4, "input_density": 0.5}
              for n, v in paper["layers"].items()]
    summary = {"model": key, "layers": layers, "params_total": paper["params_total"],
               "params_nonzero": paper["params_nonzero"], "compression": 3.0,
               "test_error_dense": 1.0, "test_error_pruned": 1.1}
    table = layer_table_markdown(summary)
    assert f"| {layers[-1]['name']} |" in table and paper["network"] not in ("", None)
    assert f"{paper['params_total']:,}" in table
    html_table = _layer_table(summary, paper) + _summary_table(summary, paper)
    assert layers[0]["name"] in html_table
    F.layer_bars(layers, paper_layers=paper["layers"], path=tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 0


def test_report_lenet5_conv_masks(runs: dict[str, Path], tmp_path: Path) -> None:
    text = write_report(runs["lenet5"], tmp_path).read_text()
    assert text.count("<img") == 4
    assert '<figure id="fig-conv-masks">' in text
    assert 'id="fig-connectivity-skipped"' in text


def test_report_skips_missing_parts(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "partial"
    run.mkdir()
    for name in ("summary.json", "log.jsonl", "config.yaml", "model.safetensors"):
        shutil.copy(runs["lenet300"] / name, run / name)
    text = write_report(run).read_text()
    assert 'id="fig-histograms-skipped"' in text
    assert text.count("<img") == 3
    only_log = tmp_path / "only-log"
    only_log.mkdir()
    shutil.copy(runs["lenet300"] / "log.jsonl", only_log / "log.jsonl")
    text = write_report(only_log).read_text()
    assert text.count("<img") == 1 and "has not finished" in text
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nothing")


def test_sensitivity_files_and_report_figure(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["lenet300"], run)
    res = run_sensitivity(run, grid=[0.5, 1.0, 2.0], budget=1.0, epochs=3)
    out = run / "sensitivity"
    assert res["out_dir"] == out
    rows = read_rows_csv(out / "sensitivity.csv")
    assert [r.layer for r in rows] == ["fc1"] * 3 + ["fc2"] * 3 + ["fc3"] * 3
    assert rows == res["rows"]
    assert (out / "sensitivity.png").stat().st_size > 0
    snippet = yaml.safe_load((out / "suggested_q.yaml").read_text())
    cfg = parse_config({"model": {"name": "lenet300"}, **snippet})
    assert cfg.prune.schedule[0].q == res["choice"] and cfg.prune.schedule[0].epochs == 3
    text = write_report(run).read_text()
    assert '<figure id="fig-sensitivity">' in text and text.count("<img") == 5
    assert set(FIGURE_IDS) >= {"fig-sensitivity", "fig-conv-masks"}


def test_cli_report_and_sensitivity(runs: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs["lenet300"]), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").exists()
    model_file = runs["lenet300"] / "model.safetensors"
    assert main(["sensitivity", str(model_file), "--grid", "0.5,1", "--mode", "q",
                 "--layers", "fc3", "--out", str(tmp_path / "s")]) == 0
    assert "suggested q" in capsys.readouterr().out
    assert len(read_rows_csv(tmp_path / "s" / "sensitivity.csv")) == 2
    assert main(["sensitivity", str(model_file), "--grid", "0.5,x"]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_tradeoff_tiny(tmp_path: Path) -> None:
    from prunelab.experiments.tradeoff import CURVES, TradeoffConfig, run_tradeoff

    cfg = TradeoffConfig(model="lenet300", epochs=1, retrain_epochs=1, fractions=(0.9, 0.5),
                         subset=300)
    res = run_tradeoff(cfg, tmp_path, quiet=True)
    assert len(res["rows"]) == len(CURVES) * 2
    assert {r["curve"] for r in res["rows"]} == set(CURVES)
    for r in res["rows"]:
        if r["curve"] == "L2, dynamic surgery":  # starts at the fraction, splicing moves it
            assert r["sparsity"] == pytest.approx(r["fraction"], abs=0.1)
        else:
            assert r["sparsity"] == pytest.approx(r["fraction"], abs=1e-3)
    for suffix in ("csv", "json", "png"):
        assert (tmp_path / f"tradeoff-lenet300.{suffix}").exists()
    with pytest.raises(ValueError, match="fractions"):
        TradeoffConfig(fractions=(1.0,))


def test_report_source_has_no_external_reference() -> None:
    files = list(REPORT_SRC.rglob("*.py"))
    assert files
    for f in files:
        assert SCHEME not in f.read_text().lower(), f
