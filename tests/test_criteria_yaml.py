"""A user-registered criterion used from a YAML run config, through the Han pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BASE_CONFIG, KeepFirst, build_mlp, make_data

from prunelab.config import load_config
from prunelab.experiments.han import HanPipeline
from prunelab.masks import get_mask
from prunelab.records import PruneEvent

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ("fc1", "fc2", "fc3")


def _first_half(shape: torch.Size) -> torch.Tensor:
    n = shape.numel()
    return (torch.arange(n) < n - round(0.5 * n)).view(shape)


def _write_config(tmp_path: Path, prune: dict) -> Path:
    data = {**BASE_CONFIG, "prune": {"dead_neurons": False, **prune}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_criterion_from_yaml_through_the_pipeline(tmp_path, keep_first):
    path = _write_config(tmp_path, {
        "method": "keep_first", "schedule": [{"sparsity": 0.5, "epochs": 1}],
    })  # fmt: skip
    cfg = load_config(path)
    assert cfg.prune.criterion() == KeepFirst()
    result = HanPipeline(build_mlp(), cfg, make_data()).run()
    for n in LAYERS:
        mask = get_mask(getattr(result.model, n))
        assert torch.equal(mask != 0, _first_half(mask.shape)), n
    prune_events = [e for e in result.events if isinstance(e, PruneEvent)]
    assert prune_events[0].method == "keep_first"


def test_method_options_from_yaml_reach_the_criterion_in_the_pipeline(tmp_path, keep_first):
    path = _write_config(tmp_path, {
        "method": "keep_first", "method_options": {"reverse": True},
        "schedule": [{"sparsity": 0.5, "epochs": 1}],
    })  # fmt: skip
    cfg = load_config(path)
    assert cfg.prune.criterion() == KeepFirst(reverse=True)
    result = HanPipeline(build_mlp(), cfg, make_data()).run()
    mask = get_mask(result.model.fc1)
    assert torch.equal(mask != 0, ~_first_half(mask.shape))


def test_unknown_method_option_in_yaml_is_one_clear_error(tmp_path, keep_first):
    path = _write_config(tmp_path, {
        "method": "keep_first", "method_options": {"revers": True},
        "schedule": [{"sparsity": 0.5, "epochs": 1}],
    })  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(
        "prune.method_options: Value error, criterion 'keep_first' has no option 'revers'; "
        "allowed: reverse"
    )):
        load_config(path)
