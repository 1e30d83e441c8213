"""Liu et al. 2019 protocol: Scratch-B budget, re-initialisation, lottery, resumable sweep."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from prunelab.cli.rethink import parse_seeds
from prunelab.config import ConfigError
from prunelab.data import TensorSplits
from prunelab.experiments.rethink import protocol, sweep
from prunelab.experiments.rethink.config import MethodConfig, RethinkConfig, parse_rethink_config
from prunelab.experiments.rethink.protocol import (
    LargeModel,
    baseline_epochs,
    baseline_model,
    cell_key,
    get_large_model,
    he_reinit_,
    key_hash,
    large_key,
    load_rethink_data,
    prune,
    scratch_b_epochs,
)
from prunelab.experiments.rundir import RunDirectoryError
from prunelab.masks import set_mask
from prunelab.models import build_model

TINY_MODEL = {
    "name": "vgg_small",
    "kwargs": {"cfg": [6, "M", 8, "M"], "input_size": 8, "hidden": 12, "num_classes": 4},
}


def _raw_config(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": TINY_MODEL,
        "data": {"name": "mnist", "val_size": 100},
        "seeds": [0],
        "large": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "finetune": {"epochs": 1, "lr": 0.01},
        "methods": [
            {"kind": "l1_filter", "ratios": [0.5]},
            {"kind": "magnitude", "ratios": [0.8],
             "baselines": ["finetune", "scratch_e", "lottery"]},
        ],
        "example_size": 32,
        "eval_batch_size": 64,
    }
    raw.update(over)
    return raw


def _config(**over: Any) -> RethinkConfig:
    return parse_rethink_config(_raw_config(**over))


def _data(n_train: int = 96, n_eval: int = 32, seed: int = 0) -> TensorSplits:
    """Separable 1x8x8 images: a fixed template per class plus noise (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 1, 8, 8, generator=g)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 4
        return templates[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g), y

    return TensorSplits(*split(n_train), *split(n_eval), *split(n_eval), meta={"name": "synth"})


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- Scratch-B


def test_scratch_b_epochs_arithmetic():
    assert scratch_b_epochs(6, 4.0e6, 1.0e6) == 24  # 4x fewer FLOPs -> 4x the epochs
    assert scratch_b_epochs(6, 3.0e6, 2.0e6) == 9  # 6 x 1.5 exactly, no rounding loss
    assert scratch_b_epochs(5, 1.0e6, 3.0e5) == 16  # 16.67 truncated, as int() in the paper
    assert scratch_b_epochs(6, 1.0e6, 1.0e6) == 6
    assert scratch_b_epochs(6, 1.0e6, 2.0e6) == 6  # never fewer than the large model's
    # the cap
    assert scratch_b_epochs(6, 4.0e6, 1.0e5) == 24  # 40x capped at the default 4x
    assert scratch_b_epochs(6, 4.0e6, 1.0e5, max_factor=2.5) == 15
    assert scratch_b_epochs(6, 4.0e6, 1.0e5, max_factor=100) == 240
    # fine-tune epochs count only when asked
    assert scratch_b_epochs(6, 4.0e6, 1.0e6, finetune_epochs=3) == 24
    assert scratch_b_epochs(6, 4.0e6, 1.0e6, finetune_epochs=3, count_finetune=True) == 27
    assert scratch_b_epochs(6, 4.0e6, 1.0e5, finetune_epochs=3, count_finetune=True) == 27
    for kwargs, match in (
        ({"large_epochs": 0}, r"large_epochs=0 is out of range; allowed: integer >= 1"),
        ({"flops_pruned": 0.0}, r"flops_pruned=0.0 is out of range"),
        ({"flops_large": math.nan}, r"flops_large=nan is out of range"),
        ({"max_factor": 0.5}, r"max_factor=0.5 is out of range; allowed: >= 1"),
        ({"finetune_epochs": -1}, r"finetune_epochs=-1 is out of range"),
    ):
        args = {"large_epochs": 6, "flops_large": 2.0, "flops_pruned": 1.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            scratch_b_epochs(args.pop("large_epochs"), args.pop("flops_large"),
                             args.pop("flops_pruned"), **args)


def test_baseline_epochs_follow_the_config():
    cfg = _config(large={"epochs": 6}, finetune={"epochs": 2},
                  scratch_b={"max_factor": 3, "count_finetune": True})
    assert baseline_epochs(cfg, "finetune", 4.0, 1.0)[0] == 2
    assert baseline_epochs(cfg, "scratch_e", 4.0, 1.0)[0] == 6
    assert baseline_epochs(cfg, "lottery", 4.0, 1.0)[0] == 6
    epochs, info = baseline_epochs(cfg, "scratch_b", 4.0, 1.0)
    assert epochs == 6 * 3 + 2
    assert info == {"factor_raw": 4.0, "factor": 3.0, "capped": True, "count_finetune": True}


# ----------------------------------------------------------------------------- initialisation


def test_he_reinit_scales_by_surviving_fan_in_per_unit():
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(4000, 48)
    density = torch.linspace(0.05, 0.9, 48).view(-1, 1)
    mask = (torch.rand(48, 4000, generator=g) < density).float()
    mask[7] = 0.0  # a unit with no surviving input
    set_mask(layer, "weight", mask)
    he_reinit_(layer, seed=3)
    w = layer.weight.detach()
    assert torch.all(w[mask == 0] == 0) and torch.all(layer.weight_orig[mask == 0] == 0)
    assert torch.equal(layer.bias.detach(), torch.zeros(48))
    ratios = []
    for u in range(48):
        alive = w[u][mask[u] != 0]
        if u == 7:
            assert alive.numel() == 0
            continue
        assert int(torch.count_nonzero(alive)) == alive.numel()  # survivors drawn, not zero
        expected = math.sqrt(2.0 / alive.numel())
        ratios.append(float(alive.std()) / expected)
        assert abs(float(alive.mean())) < 4 * expected / math.sqrt(alive.numel())
    ratios_t = torch.tensor(ratios)
    # n >= 200 survivors per unit: the sample std is within ~5% (1 sigma) of the truth
    assert float(ratios_t.min()) > 0.83 and float(ratios_t.max()) < 1.17
    assert abs(float(ratios_t.mean()) - 1.0) < 0.03
    # deterministic in the seed
    again = nn.Linear(4000, 48)
    set_mask(again, "weight", mask)
    he_reinit_(again, seed=3)
    assert torch.equal(again.weight, layer.weight)
    he_reinit_(again, seed=4)
    assert not torch.equal(again.weight, layer.weight)


def test_he_reinit_conv_fan_in_and_batchnorm():
    conv = nn.Conv2d(64, 40, 3, bias=False)
    mask = torch.zeros(40, 64, 3, 3)
    mask[:20] = 1.0  # full fan-in 576
    mask[20:, :16] = 1.0  # surviving fan-in 144
    set_mask(conv, "weight", mask)
    net = nn.Sequential(conv, nn.BatchNorm2d(40), nn.ReLU())
    with torch.no_grad():
        net[1].weight.fill_(3.0)
        net[1].running_mean.fill_(2.0)
    he_reinit_(net, seed=0)
    w = conv.weight.detach()
    full = w[:20].flatten()
    part = w[20:, :16].flatten()
    assert abs(float(full.std()) / math.sqrt(2 / 576) - 1) < 0.05
    assert abs(float(part.std()) / math.sqrt(2 / 144) - 1) < 0.05
    assert torch.all(w[20:, 16:] == 0)
    assert torch.all(net[1].weight == 1) and torch.all(net[1].running_mean == 0)


def test_lottery_rewinds_survivors_to_stored_init(tmp_path):
    cfg = _config()
    data = _data()
    method = cfg.methods[1]  # magnitude, 80%
    fresh = get_large_model(cfg, data, method, 0, cache_dir=tmp_path)
    large = get_large_model(cfg, data, method, 0, cache_dir=tmp_path)
    assert not fresh.cached and large.cached
    for k, v in fresh.init_state.items():  # the stored init is the one it trained from
        assert torch.equal(large.init_state[k], v)
    example = data.example(cfg.example_size)
    pruned = prune(large.model, method, 0.8, example)
    model = baseline_model("lottery", pruned, large, example, seed=0)
    checked = 0
    for name, m in model.named_modules():
        if not hasattr(m, "weight_mask"):
            continue
        keep = m.weight_mask != 0
        init = large.init_state[f"{name}.weight"]
        trained = dict(large.model.named_modules())[name].weight
        assert torch.equal(m.weight_orig[keep], init[keep])
        assert torch.all(m.weight_orig[~keep] == 0)
        assert not torch.equal(init[keep], trained.detach()[keep])  # a real rewind
        checked += 1
    assert checked == 4
    bn = model.features[1]
    assert torch.equal(bn.running_var, large.init_state["features.1.running_var"])


def test_structured_lottery_takes_the_kept_channels_of_the_init(tmp_path):
    cfg = _config()
    data = _data()
    method = cfg.methods[0]  # l1_filter, 50%
    large = get_large_model(cfg, data, method, 0, cache_dir=tmp_path)
    example = data.example(cfg.example_size)
    pruned = prune(large.model, method, 0.5, example)
    small = baseline_model("lottery", pruned, large, example, seed=0)
    k0, k4 = pruned.keep["features.0"], pruned.keep["features.4"]
    init = large.init_state
    assert torch.equal(small.features[0].weight, init["features.0.weight"][k0])
    assert torch.equal(small.features[4].weight, init["features.4.weight"][k4][:, k0])
    scratch = baseline_model("scratch_e", pruned, large, example, seed=0)
    assert scratch.features[4].weight.shape == small.features[4].weight.shape
    assert torch.equal(scratch.features[4].weight,
                       baseline_model("scratch_b", pruned, large, example, seed=0)
                       .features[4].weight)  # Scratch-E and -B start alike
    expected = math.sqrt(2 / (int(k0.sum()) * 9))
    assert 0.6 < float(scratch.features[4].weight.detach().std()) / expected < 1.4


# ----------------------------------------------------------------------------- pruning step


def _bn_vgg() -> nn.Module:
    net = build_model("vgg_small", **TINY_MODEL["kwargs"]).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    return net


@pytest.mark.parametrize(
    "method",
    [{"kind": "l1_filter", "ratios": [0.5]},
     {"kind": "slimming", "ratios": [0.5], "slimming_strength": 1e-4, "min_fraction": 0.2},
     {"kind": "thinet", "ratios": [0.5], "layers": ["features.*"], "thinet_samples": 256}],
    ids=["l1_filter", "slimming", "thinet"],
)
def test_structured_pruning_step_equals_masked_model(method):
    net = _bn_vgg()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    m = MethodConfig.model_validate(method)
    pruned = prune(net, m, 0.5, x)
    assert pruned.surgery is not None and pruned.surgery.params_after < pruned.surgery.params_before
    assert [pruned.model.features[i].out_channels for i in (0, 4)] == [
        int(pruned.keep[n].sum()) for n in ("features.0", "features.4")]
    with torch.no_grad():
        a, b = pruned.masked.eval()(x), pruned.model.eval()(x)
    assert float((a - b).abs().max()) <= 1e-5
    assert pruned.flops < protocol.nonzero_flops(net, x)
    assert not any(hasattr(mod, "weight_mask") for mod in pruned.model.modules())
    assert not hasattr(net.features[0], "weight_mask")  # the large model is untouched


# ----------------------------------------------------------------------------- sweep


def _counting_train(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = protocol.train

    def counted(model, recipe, data, **kw):
        calls.append(recipe.phase)
        return real(model, recipe, data, **kw)

    monkeypatch.setattr(protocol, "train", counted)
    return calls


def test_resumed_sweep_skips_finished_cells(tmp_path, monkeypatch):
    cfg = _config()
    data = _data()
    calls = _counting_train(monkeypatch)
    out = tmp_path / "sweep"
    first = sweep.run_sweep(cfg, out, quiet=True, data=data)
    n_cells = 3 + 3  # l1 x (finetune, scratch_e, scratch_b) + magnitude x 3 baselines
    assert (first.cells_total, first.cells_run, first.cells_skipped) == (n_cells, n_cells, 0)
    assert first.large_trained == 1  # l1_filter and magnitude share the plain large model
    assert sorted(calls) == sorted(["large", "finetune", "scratch_e", "scratch_b", "finetune",
                                    "scratch_e", "lottery"])
    files = sorted((out / "cells").glob("*.json"))
    assert len(files) == n_cells
    with pytest.raises(RunDirectoryError, match="--resume"):
        sweep.run_sweep(cfg, out, quiet=True, data=data)

    # interrupt: one cell lost; the rerun runs exactly that one and nothing else
    lost = next(f for f in files if json.loads(f.read_text())["baseline"] == "scratch_b")
    before = json.loads(lost.read_text())
    lost.unlink()
    mtimes = {f: f.stat().st_mtime_ns for f in files if f != lost}
    calls.clear()
    again = sweep.run_sweep(cfg, out, resume=True, quiet=True, data=data)
    assert (again.cells_run, again.cells_skipped, again.large_trained) == (1, n_cells - 1, 0)
    assert calls == ["scratch_b"]
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
    redone = json.loads(lost.read_text())
    assert redone["test_error"] == before["test_error"]  # deterministic
    assert redone["epochs"] == before["epochs"] >= cfg.large.epochs

    calls.clear()
    assert sweep.run_sweep(cfg, out, resume=True, quiet=True, data=data).cells_run == 0
    assert calls == []

    # the report
    agg = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["baseline"]): r for r in agg["rows"]}
    assert set(rows) >= {("l1_filter", "finetune"), ("l1_filter", "scratch_b"),
                         ("magnitude", "lottery"), ("l1_filter", "pruned")}
    assert rows[("l1_filter", "scratch_b")]["flops_reduction"] > 1.5
    assert agg["missing_cells"] == 0 and agg["large"][0]["n"] == 1
    table = (out / "table.md").read_text()
    assert "| l1_filter | 0.5 | Scratch-B |" in table and "lottery" in table
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_cell_hash_changes_only_with_relevant_settings():
    base = _config()
    m = base.methods[0]

    def h(cfg: RethinkConfig, baseline: str, ratio: float = 0.5, seed: int = 0,
          method: MethodConfig | None = None) -> str:
        method = method or next(x for x in cfg.methods if x.kind == m.kind)
        return key_hash(cell_key(cfg, method, ratio, seed, baseline))

    all_b = ("finetune", "scratch_e", "scratch_b")
    ref = {b: h(base, b) for b in all_b}
    assert len(set(ref.values())) == 3
    assert h(base, "finetune", ratio=0.6) != ref["finetune"]
    assert h(base, "finetune", seed=1) != ref["finetune"]

    def changed(**over: Any) -> set[str]:
        cfg = _config(**over)
        return {b for b in all_b if h(cfg, b) != ref[b]}

    assert changed(finetune={"epochs": 1, "lr": 0.02}) == {"finetune"}
    assert changed(scratch_b={"max_factor": 2}) == {"scratch_b"}
    assert changed(scratch_b={"count_finetune": True}) == {"scratch_b"}
    assert changed(large={"epochs": 2, "batch_size": 32, "lr": 0.05}) == set(all_b)
    assert changed(data={"name": "mnist", "val_size": 100, "subset": 50}) == set(all_b)
    assert changed(model={**TINY_MODEL, "kwargs": {**TINY_MODEL["kwargs"], "hidden": 10}}) \
        == set(all_b)
    # no effect on any result: labels, thread count, where the data lives, seeds list
    assert changed(threads=1, seeds=[0, 5], name="other") == set()
    assert changed(data={"name": "mnist", "val_size": 100, "root": "/elsewhere"}) == set()
    methods = [{"kind": "l1_filter", "ratios": [0.5, 0.7], "label": "L1"}]
    assert changed(methods=methods) == set()
    # slimming's large model depends on its strength; the plain one does not
    s1 = MethodConfig(kind="slimming", ratios=(0.5,), slimming_strength=1e-4)
    s2 = MethodConfig(kind="slimming", ratios=(0.5,), slimming_strength=1e-3)
    assert large_key(base, s1, 0) != large_key(base, s2, 0) != large_key(base, m, 0)


def test_bad_configs_give_clear_errors():
    cases = [
        (_raw_config(seed=1), r"seed: unknown key \(got 1\)"),
        (_raw_config(methods=[{"kind": "l1_filter", "ratio": [0.5]}]),
         r"methods\.0\.ratio: unknown key"),
        (_raw_config(methods=[{"kind": "l1_filter", "ratios": [0.5, 1.0]}]),
         r"methods\.0\.ratios: .*ratio 1\.0 is out of range; allowed: 0 < ratio < 1"),
        (_raw_config(methods=[{"kind": "l1_filter", "ratios": [0.0]}]),
         r"ratio 0\.0 is out of range"),
        (_raw_config(methods=[{"kind": "l2_filter", "ratios": [0.5]}]),
         r"methods\.0\.kind: Input should be 'l1_filter', 'slimming', 'thinet' or "
         r"'magnitude' \(got 'l2_filter'\)"),
        (_raw_config(methods=[{"kind": "slimming", "ratios": [0.5]}]),
         r"slimming_strength is required for kind 'slimming'"),
        (_raw_config(methods=[{"kind": "l1_filter", "ratios": [0.5], "slimming_strength": 1}]),
         r"slimming_strength is only used by kind 'slimming', not 'l1_filter'"),
        (_raw_config(methods=[{"kind": "l1_filter", "ratios": [0.5], "min_fraction": 0.1}]),
         r"min_fraction is only used by kind 'slimming'"),
        (_raw_config(methods=[{"kind": "l1_filter", "ratios": [0.5]},
                              {"kind": "l1_filter", "ratios": [0.3]}]),
         r"method labels must be unique, \['l1_filter'\] repeat"),
        (_raw_config(baselines=["finetune", "scratch_c"]),
         r"baselines\.1: Input should be 'finetune', 'scratch_e', 'scratch_b' or 'lottery'"),
        (_raw_config(large={"epochs": 2, "milestones": [0.75, 0.5]}),
         r"large\.milestones: .*increasing"),
        (_raw_config(large={"epochs": 2, "milestones": [1.5]}),
         r"milestones must be fractions of the run in \(0, 1\)"),
        (_raw_config(model={"name": "vgg_huge"}), r"model 'vgg_huge' is unknown; registered"),
        (_raw_config(scratch_b={"max_factor": 0.5}), r"scratch_b\.max_factor: Input should be"),
        (_raw_config(seeds=[0, 0]), r"seeds must be distinct"),
    ]
    for raw, match in cases:
        with pytest.raises(ConfigError, match=match):
            parse_rethink_config(raw)
    assert parse_seeds("0,1") == [0, 1]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a")


def _run_sweep(tmp_path: Path, raw: dict[str, Any]) -> tuple[Path, Path, list[dict]]:
    """Write ``raw`` as a sweep file, run it by the CLI; the finished cells (finetune and
    Scratch-B) are returned."""
    from prunelab.cli import main

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["rethink", str(path), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert sorted(c["baseline"] for c in cells) == ["finetune", "scratch_b"]
    return path, out, cells


def test_cli_runs_a_sweep_on_an_mnist_subset_and_reports(tmp_path, capsys):
    from prunelab.cli import main

    raw = _raw_config(
        model={"name": "vgg_small",
               "kwargs": {"cfg": [4, "M", 6, "M", "M"], "hidden": 8}},  # 28x28 input
        data={"name": "mnist", "val_size": 100, "subset": 200, "test_subset": 100},
        methods=[{"kind": "slimming", "ratios": [0.4], "slimming_strength": 1e-3,
                  "baselines": ["finetune", "scratch_b"]}],
    )
    path, out, cells = _run_sweep(tmp_path, raw)
    assert all(c["kind"] == "slimming" and c["threads"] == 1 for c in cells)
    assert main(["rethink", str(path), "--out", str(out), "--quiet"]) == 2  # needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["rethink-report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "large (L1 on BN scales 0.001) (slimming)" in printed and "Scratch-B" in printed
    assert main(["rethink-report", str(tmp_path)]) == 2  # not a sweep directory


def test_builtin_results_config_is_valid():
    path = Path(__file__).resolve().parents[1] / "src/prunelab/configs/rethink-fashion.yaml"
    cfg = parse_rethink_config(yaml.safe_load(path.read_text()))
    kinds = {m.kind for m in cfg.methods}
    assert kinds == {"l1_filter", "slimming", "magnitude"} and len(cfg.seeds) == 3
    assert all("lottery" in cfg.baselines_of(m) for m in cfg.methods if m.kind == "magnitude")


@pytest.mark.parametrize("kind", ["l1_filter", "slimming", "thinet"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_structured_pruning_of_a_residual_network_uses_the_channel_graph(kind, shortcut):
    torch.manual_seed(0)
    net = build_model("resnet20", num_classes=4, in_channels=1, shortcut=shortcut,
                      width_mult=0.5).eval()
    with torch.no_grad():  # trained-looking BN scales (at init they all tie at 1)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) + 0.1)
    x = torch.randn(8, 1, 16, 16)
    extra = {"slimming_strength": 1e-4} if kind == "slimming" else {}
    method = MethodConfig(kind=kind, ratios=(0.5,), thinet_samples=200, **extra)
    pruned = prune(net, method, 0.5, x)
    assert pruned.cuts is not None  # coupled residual channels, not only block-internal ones
    with torch.no_grad():
        assert torch.allclose(pruned.model(x), pruned.masked(x), atol=1e-4, rtol=1e-4)
    assert pruned.params_total < 0.6 * sum(p.numel() for p in net.parameters())
    stem = pruned.keep["conv1"]
    assert 0 < int(stem.sum()) < stem.numel()  # the residual stream itself was pruned
    init = copy.deepcopy(net.state_dict())
    large = LargeModel(net, init, {}, "h", {"flops": 1.0})
    for baseline in ("finetune", "scratch_e", "lottery"):
        model = baseline_model(baseline, pruned, large, x, seed=0)
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert shapes == {k: v.shape for k, v in pruned.model.state_dict().items()}


def test_cli_rethink_runs_on_a_residual_network(tmp_path):
    raw = _raw_config(
        model={"name": "resnet20", "kwargs": {"in_channels": 1, "width_mult": 0.25,
                                              "num_classes": 10}},
        data={"name": "mnist", "val_size": 100, "subset": 200, "test_subset": 100},
        methods=[{"kind": "l1_filter", "ratios": [0.5], "baselines": ["finetune", "scratch_b"]}],
    )
    _, _, cells = _run_sweep(tmp_path, raw)
    assert all(c["kind"] == "l1_filter" for c in cells)


def test_pad_makes_fashion_sized_images_cifar_sized_and_keeps_old_hashes():
    cfg = _config(data={"name": "mnist", "val_size": 100, "subset": 50, "test_subset": 20,
                        "pad": 2})
    data = load_rethink_data(cfg)
    assert data.x_train.shape[-2:] == (32, 32) and data.x_test.shape[-2:] == (32, 32)
    assert data.x_val.shape[-2:] == (32, 32) and data.meta["pad"] == 2
    assert torch.equal(data.x_train[:, :, :2], torch.zeros_like(data.x_train[:, :, :2]))
    plain = _config(data={"name": "mnist", "val_size": 100, "subset": 50, "test_subset": 20})
    zero = _config(data={"name": "mnist", "val_size": 100, "subset": 50, "test_subset": 20,
                         "pad": 0})
    m = plain.methods[0]
    assert key_hash(large_key(plain, m, 0)) == key_hash(large_key(zero, m, 0))
    assert key_hash(large_key(plain, m, 0)) != key_hash(large_key(cfg, m, 0))
