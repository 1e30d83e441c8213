"""``prunelab run CONFIG --dry-run``: the per-layer plan, without training or data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prunelab.cli import main
from prunelab.config import ConfigError, parse_config
from prunelab.experiments.plan import run_plan


def test_dry_run_prints_the_paper_counts_and_trains_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    assert main(["reproduce", "han2015-lenet300", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| fc1 | fc | 300x784 | 235,200 | 235,000 | 470.40K |" in text
    assert "266,610 parameters" in text
    assert not out.exists()


def test_target_density_follows_the_schedule_per_layer() -> None:
    cfg = parse_config({
        "model": {"name": "lenet5"},
        "prune": {"method": "magnitude", "schedule": [
            {"sparsity": {"*": 0.5}, "epochs": 1, "layers": ["fc*"], "freeze": "conv"},
            {"sparsity": {"conv*": 0.3, "conv1": 0.1}, "epochs": 1, "layers": ["conv*"]},
            {"sparsity": {"fc1": 0.9, "fc2": 0.2}, "epochs": 1, "layers": ["fc*"]},
        ]},
    })
    plan = run_plan(cfg)
    dens = {r.name: round(r.target_density, 6) for r in plan.layers}
    # monotone: fc2's 0.2 in the last iteration does not revive what 0.5 pruned
    assert dens == {"conv1": 0.9, "conv2": 0.7, "fc1": 0.1, "fc2": 0.5}
    assert plan.target_weights == pytest.approx(500 * 0.9 + 25000 * 0.7 + 400000 * 0.1
                                                + 5000 * 0.5)


def test_dry_run_rejects_a_schedule_naming_no_layer(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "lenet300"},
        "prune": {"method": "magnitude", "schedule": [
            {"sparsity": 0.5, "epochs": 1, "layers": ["conv*"]}]},
    }))
    assert main(["run", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "prune.schedule[0]" in err and "conv*" in err


def test_imagefolder_plan_notes_a_missing_root_and_uses_the_image_size() -> None:
    cfg = parse_config({
        "model": {"name": "torchvision.resnet18"},
        "data": {"name": "imagefolder", "root": "/nonexistent/imagenet", "image_size": 64,
                 "resize_size": 73},
        "prune": {"method": "magnitude", "schedule": [{"sparsity": 0.5, "epochs": 1}]},
    })
    plan = run_plan(cfg)
    assert plan.input_shape == (3, 64, 64) and not plan.data_found
    assert "train/ and val/" in plan.notes[0]


@pytest.mark.parametrize(("data", "needle"), [
    ({"name": "mnist", "image_size": 32}, "image_size apply to name 'imagefolder' only"),
    ({"name": "mnist", "val_size": 60000}, "must be < 60000 for mnist"),
    ({"name": "imagefolder", "image_size": 256, "resize_size": 224}, "resize_size=224"),
    ({"name": "imagefolder", "std": [0.2, 0.0, 0.2]}, "must be > 0"),
])
def test_data_config_errors(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config({"model": {"name": "lenet300"}, "data": data,
                      "prune": {"schedule": [{"q": 1.0, "epochs": 1}]}})


def test_in_memory_configs_keep_their_old_form() -> None:
    cfg = parse_config({"model": {"name": "lenet300"},
                        "prune": {"schedule": [{"q": 1.0, "epochs": 1}]}})
    dumped = cfg.model_dump(mode="json")
    assert "image_size" not in dumped["data"] and "precision" not in dumped["train"]
    bf16 = parse_config({"model": {"name": "lenet300"}, "train": {"precision": "bf16"},
                         "prune": {"schedule": [{"q": 1.0, "epochs": 1}]}})
    assert bf16.model_dump(mode="json")["train"]["precision"] == "bf16"


@pytest.mark.parametrize(("config", "total", "paper_total"), [
    ("han2015-alexnet", "60,965,224 parameters", "(9.0x fewer)"),
    ("han2015-vgg16", "138,357,544 parameters", "(13.1x fewer)"),
])
def test_imagenet_configs_dry_run_with_the_papers_layer_counts(
    capsys, config: str, total: str, paper_total: str
) -> None:
    from prunelab.cli import builtin_config_path
    from prunelab.config import load_config

    assert main(["reproduce", config, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert total in text and paper_total in text
    plan = run_plan(load_config(builtin_config_path(config)))
    for row in plan.layers:  # every layer: the paper's weights and its Table 4/5 density
        assert row.weights == row.paper_weights, row.name
        assert row.target_density == pytest.approx(row.paper_kept, abs=1e-9), row.name
