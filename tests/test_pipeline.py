"""The Han pipeline end to end on a tiny model: schedule, retraining rules, exact resume."""

from __future__ import annotations

import math
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prunelab.checkpoint import CheckpointError, load_tensors, save_tensors
from prunelab.experiments.han import CHECKPOINT_NAME, HanPipeline, SilentReporter
from prunelab.masks import get_mask
from prunelab.records import DropoutEvent, EpochRecord, PruneEvent

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ("fc1", "fc2", "fc3")


class _InterruptedError(RuntimeError):
    pass


class _InterruptAfter(SilentReporter):
    """Raises from ``epoch_end`` of the ``n``-th epoch (before that epoch's checkpoint)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise _InterruptedError(f"stopped after epoch {self.n}")


def _untimed(history: list[EpochRecord]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.to_dict().items() if k != "time_s"} for h in history]


def _epochs(history: list[EpochRecord]) -> list[dict[str, Any]]:
    assert all(isinstance(h, EpochRecord) for h in history)
    return [h.to_dict() for h in history]


# ------------------------------------------------------------------------------ behaviour


def test_tiny_run_reaches_scheduled_sparsity(mlp_factory, data, config_factory):
    cfg = config_factory(
        prune={
            "dead_neurons": False,
            "schedule": [{"sparsity": 0.5, "epochs": 1}, {"sparsity": 0.8, "epochs": 1}],
        }
    )
    model = mlp_factory()
    result = HanPipeline(model, cfg, data).run()
    for name in LAYERS:
        mask = get_mask(getattr(model, name))
        assert int((mask == 0).sum()) == round(0.8 * mask.numel()), name
    records = _epochs(result.history)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert records[-1]["sparsity"]["fc1"] == pytest.approx(0.8, abs=1 / 2048)
    assert result.stats.layers[0].weights_kept == pytest.approx(0.2, abs=1 / 2048)
    assert result.val_accuracy > 0.5  # separable data: it learnt something


def test_retrain_lr_is_lr_factor_times_training_lr(mlp_factory, data, config_factory):
    cfg = config_factory(
        train={"optimizer": {"lr": 0.04}},
        prune={"retrain": {"lr_factor": 0.25}, "schedule": [{"sparsity": 0.5, "epochs": 2}]},
    )
    records = _epochs(HanPipeline(mlp_factory(), cfg, data).run().history)
    assert [r["phase"] for r in records] == ["train", "retrain", "retrain"]
    assert records[0]["lr"] == 0.04
    assert records[1]["lr"] == records[2]["lr"] == pytest.approx(0.01, rel=1e-12)


def test_l1_regularisation_keeps_pruned_entries_zero(mlp_factory, data, config_factory):
    def run(kind: str) -> torch.nn.Module:
        cfg = config_factory(
            prune={
                "retrain": {"regularization": {"kind": kind, "strength": 1e-2}},
                "schedule": [{"sparsity": 0.6, "epochs": 2}],
            }
        )
        model = mlp_factory()
        HanPipeline(model, cfg, data).run()
        return model

    l1, none = run("l1"), run("none")
    for name in LAYERS:
        layer = getattr(l1, name)
        pruned = get_mask(layer) == 0
        assert torch.count_nonzero(layer.weight_orig.detach()[pruned]) == 0
    assert not torch.equal(l1.fc1.weight_orig, none.fc1.weight_orig)  # the penalty acted


@pytest.mark.parametrize("reinit", [False, True])
def test_reinit_false_keeps_surviving_weights(mlp_factory, data, config_factory, reinit):
    cfg = config_factory(prune={"reinit": reinit, "schedule": [{"sparsity": 0.5, "epochs": 0}]})
    model = mlp_factory()
    result = HanPipeline(model, cfg, data).run()
    for name in LAYERS:
        dense = result.dense_state[f"{name}.weight"]
        layer = getattr(model, name)
        kept = get_mask(layer) != 0
        same = torch.equal(layer.weight_orig.detach()[kept], dense[kept])
        assert same is not reinit, name
    assert any(isinstance(e, PruneEvent) and e.reinit for e in result.events) is reinit


def test_dropout_event_records_the_rule(mlp_factory, data, config_factory):
    cfg = config_factory(prune={"schedule": [{"sparsity": 0.75, "epochs": 1}]})
    model = mlp_factory(dropout=0.5)
    result = HanPipeline(model, cfg, data).run()
    events = [e for e in result.events if isinstance(e, DropoutEvent)]
    assert len(events) == 1 and events[0].iteration == 1
    (change,) = events[0].changes
    assert (change["dropout"], change["layer"], change["original"]) == ("drop1", "fc2", 0.5)
    assert change["connections_dense"] == 512
    assert change["connections_now"] == int((get_mask(model.fc2) != 0).sum())
    assert change["retrain"] == pytest.approx(0.5 * math.sqrt(change["connections_now"] / 512))
    assert model.drop1.p == change["retrain"]


# ------------------------------------------------------------------------------ resume


def _resume_config(config_factory):
    return config_factory(
        train={"epochs": 2},
        prune={"schedule": [{"sparsity": 0.5, "epochs": 2}, {"sparsity": 0.75, "epochs": 2}]},
    )


# Stopping in epoch n leaves the checkpoint of epoch n-1: 2 -> mid dense training;
# 3 -> retrain 1 not started (resuming prunes); 4 -> mid retrain 1 with optimizer state;
# 6 -> mid retrain 2.
@pytest.mark.parametrize("stop_after", [2, 3, 4, 6])
def test_resume_is_bit_identical(mlp_factory, data, config_factory, tmp_path, stop_after):
    cfg = _resume_config(config_factory)
    full = mlp_factory(dropout=0.5)
    expected = HanPipeline(full, cfg, data, run_dir=tmp_path / "full").run()

    broken = tmp_path / "broken"
    with pytest.raises(_InterruptedError):
        HanPipeline(
            mlp_factory(dropout=0.5), cfg, data, run_dir=broken,
            reporter=_InterruptAfter(stop_after),
        ).run()  # fmt: skip
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    shutil.copy2(broken / CHECKPOINT_NAME, copy_dir / CHECKPOINT_NAME)

    # a different initialisation proves every weight comes from the checkpoint
    resumed_model = mlp_factory(seed=42, dropout=0.5)
    resumed = HanPipeline(resumed_model, cfg, data, run_dir=copy_dir).run(resume=True)

    want, got = full.state_dict(), resumed_model.state_dict()
    assert sorted(want) == sorted(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert _untimed(expected.history) == _untimed(resumed.history)
    assert expected.events == resumed.events


def test_resume_with_reinit_is_bit_identical(mlp_factory, data, config_factory, tmp_path):
    cfg = config_factory(
        train={"epochs": 2},
        prune={"reinit": True, "schedule": [{"sparsity": 0.5, "epochs": 2}]},
    )
    full = mlp_factory(dropout=0.5)
    HanPipeline(full, cfg, data, run_dir=tmp_path / "full").run()
    with pytest.raises(_InterruptedError):  # stops before retraining starts: resuming re-prunes
        HanPipeline(mlp_factory(dropout=0.5), cfg, data, run_dir=tmp_path / "broken",
                    reporter=_InterruptAfter(3)).run()  # fmt: skip
    resumed = mlp_factory(seed=42, dropout=0.5)
    HanPipeline(resumed, cfg, data, run_dir=tmp_path / "broken").run(resume=True)
    want, got = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_checkpoint_from_other_config_is_refused(mlp_factory, data, config_factory, tmp_path):
    cfg = _resume_config(config_factory)
    HanPipeline(mlp_factory(), cfg, data, run_dir=tmp_path).run()
    other = config_factory(
        seed=1,
        train={"epochs": 2},
        prune={"schedule": [{"sparsity": 0.5, "epochs": 2}, {"sparsity": 0.75, "epochs": 2}]},
    )
    with pytest.raises(ValueError, match="different configuration"):
        HanPipeline(mlp_factory(), other, data, run_dir=tmp_path).run(resume=True)


def test_checkpoints_never_need_pickle(mlp_factory, data, config_factory, tmp_path, monkeypatch):
    cfg = config_factory()
    with pytest.raises(_InterruptedError):
        HanPipeline(mlp_factory(), cfg, data, run_dir=tmp_path,
                    reporter=_InterruptAfter(2)).run()  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    with safe_open(str(tmp_path / CHECKPOINT_NAME), framework="pt") as fh:
        assert "prunelab" in fh.metadata()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    result = HanPipeline(mlp_factory(), cfg, data, run_dir=tmp_path).run(resume=True)
    assert len(_epochs(result.history)) == 2


def test_load_tensors_truncated_file_names_the_file(tmp_path: Path):
    path = tmp_path / "ck.safetensors"
    save_tensors(path, {"w": torch.arange(1000.0)}, {"step": 1})
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_tensors(path)


def test_load_tensors_missing_and_foreign_files(tmp_path: Path):
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        load_tensors(missing)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a prunelab file"):
        load_tensors(foreign)


def test_save_load_tensors_round_trip(tmp_path: Path):
    path = tmp_path / "sub" / "ck.safetensors"
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(path, tensors, {"step": 3, "names": ["x", "y"]})
    loaded, meta = load_tensors(path)
    assert meta == {"step": 3, "names": ["x", "y"]}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert [p.name for p in path.parent.iterdir()] == ["ck.safetensors"]  # no temp files left


def test_freeze_conv_keeps_batchnorm_statistics_and_unfreezes_after(tmp_path):
    """Freezing conv layers freezes their BatchNorm too, running stats included."""
    from torch import nn

    from prunelab.config import parse_config
    from prunelab.data import TensorSplits
    from prunelab.experiments.han import HanPipeline

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    cfg = parse_config({"model": {"name": "x"}, "train": {"epochs": 1, "batch_size": 16},
                        "prune": {"method": "magnitude",
                                  "retrain": {"freeze": "conv", "keep_best": False},
                                  "schedule": [{"sparsity": 0.5, "epochs": 2}]}})
    pipe = HanPipeline(model, cfg, TensorSplits(x, y, x, y))
    seen = {}

    class Spy(SilentReporter):
        def phase_start(self, name, epochs, batches):
            seen.setdefault(name, (model[1].running_mean.clone(), model[0].weight_orig.clone()
                                   if hasattr(model[0], "weight_orig") else None))

    pipe.reporter = Spy()
    pipe.run()
    mean_before, conv_before = seen["retrain 1/1"]
    assert torch.equal(model[1].running_mean, mean_before)
    assert torch.equal(model[0].weight_orig, conv_before)
    assert all(p.requires_grad for p in model.parameters())


def test_structure_links_through_view_with_size():
    """`x.view(x.size(0), -1)` inside forward must not break the conv -> linear link."""
    from torch import nn

    from prunelab.graph import trace_structure

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.fc = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            return self.fc(x.view(x.size(0), -1))

    s = trace_structure(Net(), torch.zeros(2, 1, 6, 6))
    assert [(lk.producer, lk.consumer, lk.block) for lk in s.links] == [("conv", "fc", 16)]
    assert s.verified


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([{"q": 1.0, "epochs": 1}, {"q": -0.5, "epochs": 1}],
         r"prune.schedule\[1\]: .*q=-0.5"),
        ([{"q": 1.0, "epochs": 1, "layers": ["fc9"]}],
         r"prune.schedule\[0\]: layer pattern 'fc9' matches no layer"),
        ([{"q": {"*": 1.0, "nope": 0.5}, "epochs": 1}],
         r"prune.schedule\[0\]: .*'nope' matches no selected layer"),
    ],
)
def test_bad_schedule_values_are_rejected_before_any_training(
    mlp_factory, data, config_factory, schedule, message
):
    cfg = config_factory(train={"epochs": 50}, prune={"method": "std", "schedule": schedule})
    model = mlp_factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        HanPipeline(model, cfg, data)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained or pruned
