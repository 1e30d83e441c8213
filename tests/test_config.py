"""Configuration validation: every bad key or value is named before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prunelab.config import ConfigError, config_hash, load_config, parse_config

MINIMAL = {
    "model": {"name": "lenet300"},
    "prune": {"method": "std", "schedule": [{"q": 1.0, "epochs": 1}]},
}


def _with(**changes):
    return {**MINIMAL, **changes}


def test_minimal_config_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.prune.retrain.lr_factor == 0.1
    assert cfg.prune.monotone and not cfg.prune.reinit


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match=r"learning_rate: unknown key"):
        parse_config(_with(learning_rate=0.1))


def test_unknown_nested_key_is_named():
    data = _with(train={"optimizer": {"name": "sgd", "momentun": 0.9}})
    with pytest.raises(ConfigError, match=r"train\.optimizer\.momentun: unknown key"):
        parse_config(data)


def test_bad_literal_lists_allowed_values():
    data = _with(prune={"method": "foo", "schedule": [{"q": 1.0, "epochs": 1}]})
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "prune.method" in message and "'foo'" in message
    for allowed in ("std", "magnitude", "random"):
        assert allowed in message


def test_bad_freeze_lists_allowed_values():
    data = _with(prune={"schedule": [{"q": 1.0, "epochs": 1}], "retrain": {"freeze": "bn"}})
    with pytest.raises(ConfigError, match=r"prune\.retrain\.freeze.*'none', 'conv' or 'fc'"):
        parse_config(data)


def test_schedule_entry_without_q_for_std_method():
    data = _with(prune={"method": "std", "schedule": [{"sparsity": 0.5, "epochs": 1}]})
    with pytest.raises(ConfigError, match=r"schedule\[0\] needs 'q' for method 'std'"):
        parse_config(data)


def test_schedule_entry_without_sparsity_for_magnitude():
    data = _with(prune={"method": "magnitude", "schedule": [{"epochs": 1}]})
    with pytest.raises(ConfigError, match=r"schedule\[0\] needs 'sparsity'"):
        parse_config(data)


def test_global_scope_needs_magnitude():
    data = _with(prune={"scope": "global", "schedule": [{"q": 1.0, "epochs": 1}]})
    with pytest.raises(ConfigError, match="global"):
        parse_config(data)


def test_negative_epochs_and_bad_device():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        parse_config(_with(train={"epochs": -1}))
    with pytest.raises(ConfigError, match="'tpu'"):
        parse_config(_with(device="tpu"))


def test_config_is_frozen():
    cfg = parse_config(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3


def test_load_config_missing_file(tmp_path: Path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"absent\.yaml.*does not exist"):
        load_config(path)


def test_load_config_invalid_yaml(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {name: lenet300\nprune: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*not valid YAML"):
        load_config(path)


def test_load_config_not_a_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_load_config_with_overrides_and_hash(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    a, b = load_config(path), load_config(path, {"seed": 7})
    assert b.seed == 7
    assert config_hash(a) == config_hash(load_config(path)) != config_hash(b)


def test_invalid_values_in_file_name_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "seeed": 1}))
    with pytest.raises(ConfigError, match=r"bad\.yaml(.|\n)*seeed: unknown key"):
        load_config(path)
