"""Pruning during training: the cubic schedule (vs torch.ao), gradual pruning, dynamic network
surgery (dense updates, splicing), their pipeline iterations, events and exact resume."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from conftest import StopAfterEpochs, StopRunError
from torch import nn
from torch.ao.pruning import CubicSL

from prunelab.config import ConfigError, parse_config
from prunelab.data import TensorBatches
from prunelab.dns import DynamicSurgery, surgery_mask
from prunelab.experiments.han import CHECKPOINT_NAME, HanPipeline
from prunelab.gradual import GradualPruning
from prunelab.masks import (
    get_mask,
    has_dense_updates,
    masked_training,
    set_dense_updates,
    set_mask,
)
from prunelab.pruner import Pruner
from prunelab.records import MaskUpdateEvent, PruneEvent, record_from_dict
from prunelab.schedules import cubic_sparsity, gradual_points, surgery_probability
from prunelab.training import Trainer, make_optimizer

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------ pure schedules


@pytest.mark.parametrize(("s0", "sf", "t0", "dt", "n"),
                         [(0.0, 0.9, 0, 10, 5), (0.2, 0.8, 7, 3, 11), (0.5, 0.5, 0, 1, 1),
                          (0.0, 0.99, 100, 100, 30)])
def test_cubic_sparsity_equals_torch_ao(s0, sf, t0, dt, n):
    for t in range(0, t0 + dt * n + 3 * dt + 1):
        ours = cubic_sparsity(t, s0, sf, t0, dt, n)
        ao = CubicSL.sparsity_compute_fn(s_0=s0, s_f=sf, t=t, t_0=t0, dt=dt, n=n)
        assert ours == pytest.approx(ao, abs=1e-15), t


def test_cubic_sparsity_bounds_and_points():
    assert gradual_points(3, 4, 2) == [3, 7, 11]
    values = [cubic_sparsity(t, 0.1, 0.9, 3, 4, 2) for t in gradual_points(3, 4, 2)]
    assert values[0] == 0.1 and values[-1] == 0.9
    assert values == sorted(values)
    with pytest.raises(ValueError, match=r"final sparsity 0\.1 is below the initial 0\.5"):
        cubic_sparsity(0, 0.5, 0.1, 0, 1, 1)
    with pytest.raises(ValueError, match=r"final sparsity=1.0 is out of range; allowed: \[0.0"):
        cubic_sparsity(0, 0.0, 1.0, 0, 1, 1)
    with pytest.raises(ValueError, match="every=0 is invalid"):
        gradual_points(0, 0, 3)
    assert surgery_probability(0) == 1.0
    assert surgery_probability(20000, 1e-4, 1.0) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------ dense updates


def test_dense_updates_train_pruned_entries_and_restore_the_invariant():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    mask = (torch.rand(4, 6) > 0.5).float()
    set_mask(layer, "weight", mask)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    set_dense_updates(layer)
    assert has_dense_updates(layer)
    x = torch.randn(16, 6)
    with masked_training(layer, opt) as after_step:
        for _ in range(3):
            opt.zero_grad()
            out = layer(x)
            # forward is orig * mask exactly
            assert torch.equal(out, x @ (layer.weight_orig * mask).T + layer.bias)
            out.square().sum().backward()
            opt.step()
            after_step()
    pruned = mask == 0
    assert (layer.weight_orig.detach()[pruned] != 0).all()  # pruned entries trained
    assert (opt.state[layer.weight_orig]["momentum_buffer"][pruned] != 0).all()
    set_dense_updates(layer, enabled=False)
    assert (layer.weight_orig.detach()[pruned] == 0).all()
    with masked_training(layer, opt) as after_step:
        opt.zero_grad()
        layer(x).square().sum().backward()
        assert (layer.weight_orig.grad[pruned] == 0).all()
        opt.step()
        after_step()
    assert (layer.weight_orig.detach()[pruned] == 0).all()
    with pytest.raises(ValueError, match="has no mask"):
        set_dense_updates(nn.Linear(2, 2))


def test_surgery_mask_rule():
    w = torch.tensor([-0.5, 1.0, 1.5, 2.5, -3.0, 0.1])
    m = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert surgery_mask(w, m, 1.0, 2.0).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="low <= high"):
        surgery_mask(w, m, 2.0, 1.0)


def test_surgery_splices_back_a_weight_that_grows():
    torch.manual_seed(0)
    layer = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.1, 1.0, 10).view(1, 10))
    surgery = DynamicSurgery(layer, c=0.0, layers={"": layer}, gamma=0.0)
    first = surgery.start()
    low, high = surgery.bounds[""]
    assert first.pruned[""] == int((layer.weight_orig.abs() <= low).sum()) > 0
    pruned0 = get_mask(layer)[0, 0] == 0
    assert pruned0
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    # the loss pushes weight 0 up, the others are left alone: grad of -w0 * x0
    x, y = torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
    x[:, 0] = 1.0
    trainer = Trainer(layer, opt, loss_fn=lambda out, _: -out.mean(), callbacks=[surgery])
    trainer.fit(TensorBatches(x, y, batch_size=4), epochs=4)
    assert layer.weight_orig[0, 0] > high
    assert get_mask(layer)[0, 0] == 1  # spliced back
    assert surgery.summary()[0].spliced >= 1
    surgery.finish(opt)
    assert not has_dense_updates(layer)
    assert (layer.weight_orig[get_mask(layer) == 0] == 0).all()


def test_surgery_draws_are_deterministic_and_stop():
    layer = nn.Linear(4, 4)
    a = DynamicSurgery(layer, c=0.5, layers={"l": layer}, gamma=1e-2, seed=3, stop=50)
    b = DynamicSurgery(layer, c=0.5, layers={"l": layer}, gamma=1e-2, seed=3, stop=50)
    a.active = b.active = True
    due = [a.due(t) for t in range(200)]
    assert due == [b.due(t) for t in range(200)]
    assert not any(due[50:])
    assert 5 < sum(due[:50]) < 50  # probability falls from 1 towards 1/1.5
    with pytest.raises(ValueError, match=r"margin=1.0 is out of range"):
        DynamicSurgery(layer, c=0.5, margin=1.0)
    with pytest.raises(ValueError, match=r"c for '\*' must be a number"):
        DynamicSurgery(layer, c=float("nan"))


# ------------------------------------------------------------------------ gradual


def test_gradual_pruning_hits_each_scheduled_sparsity_exactly(mlp_factory, data):
    model = mlp_factory(dropout=0.0)
    pruner = Pruner(model)
    opt = make_optimizer(model.parameters(), "adam", lr=1e-3)
    seen = []
    gradual = GradualPruning(pruner, "magnitude", {"*": 0.8, "fc3": 0.5}, start=1, every=2,
                             count=4, on_prune=lambda t, r: seen.append((t, r)))
    batches = TensorBatches(data.x_train, data.y_train, batch_size=8)  # 12 steps per epoch
    gradual.prune_due(0)
    assert seen == []
    Trainer(model, opt, callbacks=[gradual]).fit(batches, epochs=1)
    assert [t for t, _ in seen] == [1, 3, 5, 7, 9]
    for t, results in seen:
        want = gradual.sparsity_at(t)
        for r in results:
            assert r.nonzero_after == r.weights - round(want[r.layer] * r.weights), (t, r)
    final = {r.layer: r.sparsity_after for r in seen[-1][1]}
    assert final["fc3"] == pytest.approx(0.5, abs=1e-2)
    assert final["fc1"] == pytest.approx(0.8, abs=1e-2)
    for name, m in pruner.layers.items():  # exact zeros after Adam kept training
        assert (m.weight_orig[get_mask(m) == 0] == 0).all(), name
    with pytest.raises(ValueError, match="needs a criterion whose amount is a sparsity"):
        GradualPruning(pruner, "std", 0.5)


# ------------------------------------------------------------------------ pipeline


def _cfg(config_factory, schedule, method="magnitude", **prune):
    return config_factory(train={"epochs": 1, "batch_size": 8},
                          prune={"method": method, "schedule": schedule,
                                                      **prune})


def test_gradual_iteration_in_pipeline(mlp_factory, data, config_factory):
    cfg = _cfg(config_factory, [{"sparsity": 0.75, "epochs": 4,
                                 "gradual": {"end": 0.5, "every": 3}}], dead_neurons=False)
    result = HanPipeline(mlp_factory(), cfg, data).run()
    prunes = [e for e in result.events if isinstance(e, PruneEvent)]
    assert [e.step for e in prunes] == [0, 3, 6, 9, 12, 15, 18, 21, 24]  # 48 steps, end 24
    assert all(e.schedule == "gradual" for e in prunes)
    assert [e.at_epoch for e in prunes][:3] == [1.0, 1.25, 1.5]
    for layer in result.stats.layers:
        assert layer.weights_kept == pytest.approx(0.25, abs=0.01)
    best = result.events[-1]
    assert best.kind == "best_epoch" and best.epoch >= 2  # epochs ending before step 24 excluded
    assert record_from_dict(prunes[3].to_dict()) == prunes[3]


def test_dynamic_iteration_in_pipeline(mlp_factory, data, config_factory):
    cfg = _cfg(config_factory, [{"q": 0.3, "epochs": 3, "dynamic": {"stop": 0.5}},
                                {"q": 0.3, "epochs": 1}], method="dns")
    model = mlp_factory()
    result = HanPipeline(model, cfg, data).run()
    updates = [e for e in result.events if isinstance(e, MaskUpdateEvent)]
    assert len(updates) == 4  # the start and one per epoch
    assert updates[0].step_from == updates[0].step_to == 0
    assert updates[-1].updates == 0  # epoch 3 is after stop (step 18 of 36)
    assert sum(u.updates for u in updates[1:]) > 0
    for _, m in Pruner(model).layers.items():
        assert not has_dense_updates(m)
        assert (m.weight_orig[get_mask(m) == 0] == 0).all()
    assert record_from_dict(updates[1].to_dict()) == updates[1]


def test_in_training_config_errors(config_factory):
    with pytest.raises(ConfigError, match="gradual, which needs a sparsity criterion"):
        _cfg(config_factory, [{"q": 1.0, "epochs": 2, "gradual": {}}], method="std")
    with pytest.raises(ConfigError, match="needs method 'dns'"):
        _cfg(config_factory, [{"sparsity": 0.5, "epochs": 2, "dynamic": {}}])
    with pytest.raises(ConfigError, match="either 'gradual' or 'dynamic'"):
        _cfg(config_factory, [{"q": 1.0, "epochs": 2, "gradual": {}, "dynamic": {}}],
             method="dns")
    with pytest.raises(ConfigError, match=r"end=0\.2 must be after start=0\.5"):
        _cfg(config_factory, [{"sparsity": 0.5, "epochs": 2,
                               "gradual": {"start": 0.5, "end": 0.2}}])


def test_gradual_too_short_is_refused_before_training(mlp_factory, data, config_factory):
    cfg = _cfg(config_factory, [{"sparsity": 0.5, "epochs": 1,
                                 "gradual": {"end": 0.5, "every": 100}}])
    with pytest.raises(ValueError, match=r"prune.schedule\[0\]: gradual pruning .* leaves no "
                                         "interval of every=100"):
        HanPipeline(mlp_factory(), cfg, data)


def test_old_configs_hash_the_same():
    cfg = parse_config({"model": {"name": "lenet300"},
                        "prune": {"schedule": [{"q": 1.0, "epochs": 1}]}})
    dumped = cfg.model_dump(mode="json")["prune"]["schedule"][0]
    assert "gradual" not in dumped and "dynamic" not in dumped


@pytest.mark.parametrize(("kind", "stop_after"), list(itertools.product(["gradual", "dynamic"],
                                                                    [3, 4])))
def test_resume_in_training_is_bit_identical(mlp_factory, data, config_factory, tmp_path,
                                              kind, stop_after):
    if kind == "gradual":
        cfg = _cfg(config_factory, [{"sparsity": 0.7, "epochs": 3,
                                     "gradual": {"end": 0.7, "every": 5}}])
    else:
        cfg = _cfg(config_factory, [{"q": 0.4, "epochs": 3, "dynamic": {"gamma": 1e-2}}],
                   method="dns")
    full = mlp_factory(dropout=0.5)
    expected = HanPipeline(full, cfg, data, run_dir=tmp_path / "full").run()
    broken = tmp_path / "broken"
    with pytest.raises(StopRunError):
        HanPipeline(mlp_factory(dropout=0.5), cfg, data, run_dir=broken,
                    reporter=StopAfterEpochs(stop_after)).run()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(broken / CHECKPOINT_NAME, copy / CHECKPOINT_NAME)
    model = mlp_factory(seed=42, dropout=0.5)
    resumed = HanPipeline(model, cfg, data, run_dir=copy).run(resume=True)
    want, got = full.state_dict(), model.state_dict()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert expected.events == resumed.events


def test_yaml_cli_run_logs_in_training_events_and_plots_them(tmp_path):
    import json

    import yaml

    from prunelab.cli import main
    from prunelab.report.figures import _prune_positions, _surgery_spans, training_curves

    cfg = {
        "name": "tiny-in-training",
        "model": {"name": "lenet300"},
        "data": {"subset": 600, "val_size": 500},
        "threads": 1,
        "train": {"epochs": 1, "batch_size": 50, "optimizer": {"lr": 0.05}},
        "prune": {
            "method": "magnitude",
            "schedule": [
                {"sparsity": 0.9, "epochs": 2, "gradual": {"end": 0.5, "every": 1,
                                                           "unit": "epoch"}},
                {"sparsity": 0.95, "epochs": 1,
                 "gradual": {"initial_sparsity": 0.9, "end": 1.0, "every": 1}},
            ],
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    prunes = [r for r in log if r["kind"] == "prune"]
    assert [(r["iteration"], r["step"]) for r in prunes] == [(1, 0), (1, 1),
                                                             *[(2, t) for t in range(13)]]
    assert all(r["schedule"] == "gradual" for r in prunes)
    summary = json.loads((out / "summary.json").read_text())
    for layer in summary["layers"]:
        assert layer["weights_kept"] <= 0.05 + 1e-3
    positions = [x for _, x in _prune_positions(log)]
    # 12 steps per epoch: iteration 2 prunes after every step of its one epoch
    assert positions == pytest.approx([1.0, 2.0, *[3.0 + t / 12 for t in range(13)]])
    assert (out / "config.yaml").is_file()
    training_curves(log, path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    # a surgery run's mask updates become one shaded span
    spans = _surgery_spans([
        {"kind": "mask_update", "iteration": 1, "step_from": 0, "step_to": 0, "changed": 1,
         "at_epoch": 1.0},
        {"kind": "mask_update", "iteration": 1, "step_from": 0, "step_to": 10, "changed": 4,
         "at_epoch": 2.0},
        {"kind": "mask_update", "iteration": 1, "step_from": 10, "step_to": 20, "changed": 0,
         "at_epoch": 3.0},
    ])
    assert spans == [(1.0, 2.0)]
