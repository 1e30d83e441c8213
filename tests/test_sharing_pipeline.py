"""Weight sharing as the last iteration of a pipeline (``share:`` in YAML): masks kept,
centroids fine-tuned, events logged, exact resume, and the CLI chain run -> export
--format compressed -> evaluate."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import StopAfterEpochs, StopRunError

from prunelab.config import ConfigError
from prunelab.experiments.han import CHECKPOINT_NAME, HanPipeline
from prunelab.masks import get_mask
from prunelab.pruner import Pruner
from prunelab.records import PruneEvent, ShareEvent, record_from_dict

pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(config_factory, share, epochs=2, **prune):
    return config_factory(
        train={"epochs": 1, "batch_size": 8},
        prune={"method": "magnitude",
               "schedule": [{"sparsity": 0.7, "epochs": 1}, {"share": share, "epochs": epochs}],
               **prune},
    )


def _values(module: torch.nn.Module) -> torch.Tensor:
    w = module.weight.detach()
    return torch.unique(w[w != 0])


def test_share_iteration_keeps_masks_and_at_most_2_to_the_bits_values(
        mlp_factory, data, config_factory):
    cfg = _cfg(config_factory, {"bits": {"fc1": 3, "fc": 2}}, dead_neurons=False)
    model = mlp_factory()
    pipeline = HanPipeline(model, cfg, data)
    result = pipeline.run()
    share = [e for e in result.events if isinstance(e, ShareEvent)]
    assert len(share) == 1 and share[0].iteration == 2
    assert {r["layer"]: r["bits"] for r in share[0].layers} == {"fc1": 3, "fc2": 2, "fc3": 2}
    assert record_from_dict(share[0].to_dict()) == share[0]
    prune = next(e for e in result.events if isinstance(e, PruneEvent))
    kept = {r["layer"]: r["nonzero_after"] for r in prune.layers}
    for name, m in Pruner(model).layers.items():
        mask = get_mask(m)
        assert mask is not None and int(mask.sum()) == kept[name]  # sharing pruned nothing
        assert (m.weight_orig[mask == 0] == 0).all()
        bits = 3 if name == "fc1" else 2
        assert 1 < len(_values(m)) <= 2 ** bits, name
        assert int((m.weight != 0).sum()) == kept[name]  # no survivor snapped to zero
    # no hooks left behind: a plain step changes the weights freely
    assert all(not p._backward_hooks for p in model.parameters())


def test_centroid_fine_tuning_moves_the_centroids_and_lowers_the_loss(
        mlp_factory, data, config_factory):
    shared_only = HanPipeline(mlp_factory(), _cfg(config_factory, {"bits": 2}, epochs=0),
                              data).run()
    tuned_model = mlp_factory()
    tuned = HanPipeline(tuned_model, _cfg(config_factory, {"bits": 2}, epochs=3), data).run()
    before = {n: _values(m) for n, m in Pruner(shared_only.model).layers.items()}
    after = {n: _values(m) for n, m in Pruner(tuned_model).layers.items()}
    assert any(not torch.equal(before[n], after[n]) for n in before)
    share_epochs = [r for r in tuned.history if r.iteration == 2]
    assert len(share_epochs) == 3
    assert share_epochs[-1].loss < share_epochs[0].loss


def test_share_lr_factor_sets_the_centroid_learning_rate(mlp_factory, data, config_factory):
    cfg = _cfg(config_factory, {"bits": 3, "lr_factor": 0.001}, epochs=1)
    result = HanPipeline(mlp_factory(), cfg, data).run()
    base = cfg.train.optimizer.lr
    retrain = next(r for r in result.history if r.iteration == 1)
    share = next(r for r in result.history if r.iteration == 2)
    assert retrain.lr > 0.01 * base  # prune.retrain.lr_factor (0.1 by default)
    assert 0 < share.lr <= 0.001 * base


def test_share_config_errors(config_factory):
    with pytest.raises(ConfigError, match="must be the last iteration"):
        config_factory(prune={"method": "magnitude", "schedule": [
            {"share": {}, "epochs": 1}, {"sparsity": 0.5, "epochs": 1}]})
    with pytest.raises(ConfigError, match=r"prunes nothing; remove 'sparsity'"):
        config_factory(prune={"method": "magnitude", "schedule": [
            {"sparsity": 0.5, "epochs": 1}, {"share": {}, "sparsity": 0.6, "epochs": 1}]})
    with pytest.raises(ConfigError, match=r"bits"):
        config_factory(prune={"method": "magnitude", "schedule": [
            {"sparsity": 0.5, "epochs": 1}, {"share": {"bits": 40}, "epochs": 1}]})


def test_share_layer_pattern_matching_nothing_is_refused_before_training(
        mlp_factory, data, config_factory):
    cfg = _cfg(config_factory, {"layers": ["nope*"]})
    with pytest.raises(ValueError, match=r"prune.schedule\[1\]: .*nope"):
        HanPipeline(mlp_factory(), cfg, data)


def test_resume_in_a_share_phase_is_bit_identical(mlp_factory, data, config_factory, tmp_path):
    cfg = _cfg(config_factory, {"bits": 3}, epochs=3)
    full = mlp_factory()
    expected = HanPipeline(full, cfg, data, run_dir=tmp_path / "full").run()
    broken = tmp_path / "broken"
    with pytest.raises(StopRunError):  # epochs: 1 dense, 1 retrain, then 1 of 3 sharing
        HanPipeline(mlp_factory(), cfg, data, run_dir=broken, reporter=StopAfterEpochs(3)).run()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(broken / CHECKPOINT_NAME, copy / CHECKPOINT_NAME)
    model = mlp_factory(seed=42)
    resumed = HanPipeline(model, cfg, data, run_dir=copy).run(resume=True)
    want, got = full.state_dict(), model.state_dict()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert expected.events == resumed.events


def test_yaml_run_then_compressed_export_evaluates_to_the_same_error(tmp_path, capsys):
    import yaml

    from prunelab.cli import main

    cfg = {
        "name": "tiny-share",
        "model": {"name": "lenet300"},
        "data": {"subset": 600, "val_size": 500},
        "threads": 1,
        "train": {"epochs": 1, "batch_size": 50, "optimizer": {"lr": 0.05}},
        "prune": {"method": "magnitude", "schedule": [
            {"sparsity": 0.9, "epochs": 1},
            {"share": {"bits": 4}, "epochs": 1},
        ]},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log].count("share") == 1
    packed = tmp_path / "model.compressed.safetensors"
    capsys.readouterr()
    assert main(["export", str(out / "model.safetensors"), "--format", "compressed",
                 "--cluster-bits", "4", "--out", str(packed)]) == 0
    assert "+ Huffman coding (this file)" in capsys.readouterr().out
    assert main(["evaluate", str(out / "model.safetensors"), "--json"]) == 0
    source = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(packed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == source
    assert packed.stat().st_size < (out / "model.safetensors").stat().st_size / 10


# ----------------------------------------------------------------------------- prunelab share


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory: pytest.TempPathFactory):
    from prunelab.modelfile import save_model_file
    from prunelab.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet300")
    Pruner(model).step("magnitude", 0.9)
    path = tmp_path_factory.mktemp("share") / "model.safetensors"
    save_model_file(path, model, {"name": "lenet300", "kwargs": {}},
                    dataset={"name": "mnist", "mean": 0.1307, "std": 0.3081, "subset": 1200,
                             "val_size": 200})
    return path


def test_cli_share_keeps_masks_picks_the_epoch_on_validation_and_evaluates_the_same(
        pruned_file, tmp_path, capsys):
    from prunelab.cli import main
    from prunelab.modelfile import load_model_file

    out = tmp_path / "shared.safetensors"
    assert main(["share", str(pruned_file), "--out", str(out), "--bits", "fc=3,fc3=2",
                 "--epochs", "2", "--lr", "1e-3", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2]
    best = min(result["epochs"], key=lambda e: e["val_error"])
    assert result["best_epoch"] == best["epoch"] and result["val_error"] == best["val_error"]
    source, _ = load_model_file(pruned_file)
    shared, meta = load_model_file(out)
    assert meta["sharing"]["result"]["best_epoch"] == result["best_epoch"]
    for name in ("fc1", "fc2", "fc3"):
        a, b = getattr(source, name), getattr(shared, name)
        assert torch.equal(get_mask(a), get_mask(b)), name  # sharing prunes nothing
        assert len(_values(b)) <= (4 if name == "fc3" else 8), name
    assert main(["evaluate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_error"] == pytest.approx(
        result["test_error"], abs=1e-9)
    packed = tmp_path / "packed.safetensors"
    assert main(["export", str(out), "--format", "compressed", "--out", str(packed)]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--bits", "0"], "--bits"),
    (["--epochs", "-1"], "epochs=-1 is invalid; allowed: an integer >= 0"),
    (["--layers", "nope*"], "nope"),
])
def test_cli_share_bad_input_is_one_line(pruned_file, tmp_path, capsys, argv, message):
    from prunelab.cli import main

    out = tmp_path / "x.safetensors"
    assert main(["share", str(pruned_file), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error:") and message in err and "\n" not in err
    assert not out.exists()
