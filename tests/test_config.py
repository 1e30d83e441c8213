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


# ------------------------------------------------------------------------------ criteria


@pytest.fixture
def user_criteria():
    """A score criterion with an option and a q-amount mask criterion, registered for a test."""
    from dataclasses import dataclass

    from prunelab.criteria import Criterion, register_criterion, unregister_criterion

    @dataclass(frozen=True)
    class Scaled(Criterion):
        power: float = 1.0

        def __post_init__(self):
            if not self.power > 0:
                raise ValueError(f"power={self.power!r} is out of range; allowed: > 0")

        def scores(self, tensor, context):
            return tensor.abs() ** self.power

    @dataclass(frozen=True)
    class Above(Criterion):
        amount_kind = "q"

        def compute_mask(self, tensor, amount, current, context):
            return tensor.abs() >= amount

    register_criterion("scaled")(Scaled)
    register_criterion("above")(Above)
    yield Scaled, Above
    unregister_criterion("scaled")
    unregister_criterion("above")


def _prune(**prune):
    return _with(prune=prune)


def test_registered_user_criterion_and_options(user_criteria):
    scaled, _ = user_criteria
    cfg = parse_config(_prune(method="scaled", method_options={"power": 2.0},
                              schedule=[{"sparsity": 0.5, "epochs": 1}]))
    assert cfg.prune.criterion() == scaled(power=2.0)
    assert cfg.prune.amount(cfg.prune.schedule[0]) == 0.5


def test_bad_method_options_are_named(user_criteria):
    sched = [{"sparsity": 0.5, "epochs": 1}]
    with pytest.raises(ConfigError, match=r"prune\.method_options: .*'scaled' has no option "
                                          r"'powr'; allowed: power"):
        parse_config(_prune(method="scaled", method_options={"powr": 2.0}, schedule=sched))
    with pytest.raises(ConfigError, match=r"prune\.method_options: .*power=-1"):
        parse_config(_prune(method="scaled", method_options={"power": -1}, schedule=sched))
    with pytest.raises(ConfigError, match=r"'std' has no option 'x'; allowed: none"):
        parse_config(_prune(method="std", method_options={"x": 1},
                            schedule=[{"q": 1.0, "epochs": 1}]))


def test_amount_kind_of_a_user_criterion_decides_q_or_sparsity(user_criteria):
    with pytest.raises(ConfigError, match=r"schedule\[0\] needs 'q' for method 'above'"):
        parse_config(_prune(method="above", schedule=[{"sparsity": 0.5, "epochs": 1}]))
    cfg = parse_config(_prune(method="above", schedule=[{"q": 0.1, "epochs": 1}]))
    assert cfg.prune.amount(cfg.prune.schedule[0]) == 0.1
    with pytest.raises(ConfigError, match=r"scope 'global' needs a criterion with scores"):
        parse_config(_prune(method="above", scope="global", schedule=[{"q": 0.1, "epochs": 1}]))


def test_unknown_method_lists_registered_weight_criteria():
    with pytest.raises(ConfigError, match=r"method 'foo' is unknown; registered weight criteria: "
                                          r"'block_magnitude', 'dns', 'magnitude', 'nm', 'random', "
                                          r"'std'"):
        parse_config(_prune(method="foo", schedule=[{"q": 1.0, "epochs": 1}]))
    with pytest.raises(ConfigError, match=r"'l1_filter' is a channel criterion"):
        parse_config(_prune(method="l1_filter", schedule=[{"sparsity": 0.5, "epochs": 1}]))


def test_config_hash_of_committed_runs_is_unchanged():
    """Empty method_options are left out of dumps: run configs and their hashes stay."""
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    cfg = load_config(root / "han2015-lenet300" / "config.yaml")
    assert "method_options" not in cfg.model_dump()["prune"]
    assert config_hash(cfg) == "75e0dc34cf93"  # as in han2015-lenet300/summary.json
    other = parse_config(_prune(method="random", method_options={},
                                schedule=[{"sparsity": 0.5, "epochs": 1}]))
    assert "method_options" not in other.model_dump(mode="json")["prune"]


def test_method_options_change_the_hash(user_criteria):
    sched = [{"sparsity": 0.5, "epochs": 1}]
    a = parse_config(_prune(method="scaled", schedule=sched))
    b = parse_config(_prune(method="scaled", method_options={"power": 2.0}, schedule=sched))
    assert b.model_dump()["prune"]["method_options"] == {"power": 2.0}
    assert config_hash(a) != config_hash(b)
