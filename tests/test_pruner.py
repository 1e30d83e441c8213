"""Pruner: per-layer thresholds and counts, overrides, validation, state round trip."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from prunelab.masks import effective_tensor, get_mask, load_pruned_state_dict
from prunelab.pruner import Pruner, prune_model

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ("fc1", "fc2", "fc3")


def _pop_std(t: torch.Tensor) -> float:
    t = t.detach().double().flatten()
    return math.sqrt(float(((t - t.mean()) ** 2).mean()))


def _zeros(module: nn.Module) -> int:
    return int((get_mask(module) == 0).sum())


# ------------------------------------------------------------------------------ std


def test_std_threshold_per_layer_is_q_times_dense_std(mlp):
    dense = {n: getattr(mlp, n).weight.detach().clone() for n in LAYERS}
    results = Pruner(mlp).step("std", 0.8)
    for r in results:
        std = _pop_std(dense[r.layer])
        assert r.threshold == pytest.approx(0.8 * std, rel=1e-12)
        expected = dense[r.layer].abs().double() >= 0.8 * std
        assert torch.equal(get_mask(getattr(mlp, r.layer)) != 0, expected)
        assert r.nonzero_after == int(expected.sum())


def test_std_weight_equal_to_threshold_is_kept():
    layer = nn.Linear(10, 1)
    with torch.no_grad():  # mean 0, mean square 1: population std exactly 1
        layer.weight.copy_(torch.tensor([[2.0, -2.0, 1.0, -1.0, 0, 0, 0, 0, 0, 0]]))
    model = nn.Sequential(layer)
    results = Pruner(model).step("std", 1.0)
    assert results[0].threshold == 1.0
    assert get_mask(layer).tolist() == [[1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0, 0, 0]]


def test_std_source_dense_keeps_the_first_std(mlp):
    pruner = Pruner(mlp, std_source="dense")
    first = pruner.step("std", 0.5)
    second = pruner.step("std", 0.5)
    for a, b in zip(first, second, strict=True):
        assert a.threshold == b.threshold
        assert b.nonzero_after == a.nonzero_after  # same threshold: nothing new to prune
    third = pruner.step("std", 1.0)
    for a, c in zip(first, third, strict=True):
        assert c.threshold == pytest.approx(2 * a.threshold)


def test_std_source_surviving_threshold_grows(mlp):
    pruner = Pruner(mlp, std_source="surviving")
    first = pruner.step("std", 0.5)
    second = pruner.step("std", 0.5)
    for a, b in zip(first, second, strict=True):
        assert b.threshold > a.threshold
        assert b.nonzero_after < a.nonzero_after
        layer = getattr(mlp, a.layer)
        kept = effective_tensor(layer).detach()[get_mask(layer) != 0]
        assert (kept.abs() >= b.threshold).all()


# ------------------------------------------------------------------------------ magnitude


def test_magnitude_exact_counts_per_layer(mlp):
    results = Pruner(mlp).step("magnitude", 0.33)
    for r in results:
        n = getattr(mlp, r.layer).weight_orig.numel()
        assert _zeros(getattr(mlp, r.layer)) == round(0.33 * n)
        assert r.weights - r.nonzero_after == round(0.33 * n)


def test_magnitude_iterative_counts_already_pruned(mlp):
    pruner = Pruner(mlp)
    pruner.step("magnitude", 0.4)
    before = {n: get_mask(getattr(mlp, n)).clone() for n in LAYERS}
    pruner.step("magnitude", 0.7)
    for n in LAYERS:
        mask = get_mask(getattr(mlp, n))
        assert int((mask == 0).sum()) == round(0.7 * mask.numel())
        assert not mask[before[n] == 0].any()


def test_global_scope_exact_with_floors_on_tiny_layer(mlp):
    with torch.no_grad():
        mlp.fc3.weight.mul_(1e-6)
    results = Pruner(mlp).step("magnitude", 0.999, scope="global", min_density=0.05)
    by_name = {r.layer: r for r in results}
    for n in LAYERS:
        assert by_name[n].nonzero_after >= math.ceil(0.05 * by_name[n].weights) >= 1


def test_global_scope_exact_total(mlp):
    results = Pruner(mlp).step("magnitude", 0.8, scope="global")
    total = sum(r.weights for r in results)
    assert total - sum(r.nonzero_after for r in results) == round(0.8 * total)
    assert all(r.amount == 0.8 for r in results)


# ------------------------------------------------------------------------------ random


def test_random_exact_count_and_deterministic_per_seed(mlp_factory):
    a, b = mlp_factory(seed=0), mlp_factory(seed=1)  # different weights, same mask seed
    Pruner(a).step("random", 0.6, seed=11)
    Pruner(b).step("random", 0.6, seed=11)
    for n in LAYERS:
        ma, mb = get_mask(getattr(a, n)), get_mask(getattr(b, n))
        assert int((ma == 0).sum()) == round(0.6 * ma.numel())
        assert torch.equal(ma, mb)


def test_random_differs_across_seeds(mlp_factory):
    a, b = mlp_factory(), mlp_factory()
    Pruner(a).step("random", 0.6, seed=0)
    Pruner(b).step("random", 0.6, seed=1)
    assert not torch.equal(get_mask(a.fc1), get_mask(b.fc1))


# ------------------------------------------------------------------------------ overrides


def test_per_layer_override_with_glob(mlp):
    dense = {n: _pop_std(getattr(mlp, n).weight) for n in LAYERS}
    results = Pruner(mlp).step("std", {"*": 1.0, "fc3": 0.5})
    thresholds = {r.layer: r.threshold for r in results}
    assert thresholds["fc1"] == pytest.approx(1.0 * dense["fc1"])
    assert thresholds["fc2"] == pytest.approx(1.0 * dense["fc2"])
    assert thresholds["fc3"] == pytest.approx(0.5 * dense["fc3"])
    assert {r.layer: r.amount for r in results} == {"fc1": 1.0, "fc2": 1.0, "fc3": 0.5}


def test_per_layer_override_character_class(mlp):
    Pruner(mlp).step("magnitude", {"*": 0.2, "fc[12]": 0.5})
    assert _zeros(mlp.fc1) == round(0.5 * 2048)
    assert _zeros(mlp.fc2) == round(0.5 * 512)
    assert _zeros(mlp.fc3) == round(0.2 * 64)


def test_layer_selection_and_step_subset(mlp):
    pruner = Pruner(mlp, "fc*", exclude="fc3")
    assert pruner.layer_names == ["fc1", "fc2"]
    results = pruner.step("magnitude", 0.5, layers="fc2")
    assert [r.layer for r in results] == ["fc2"]
    assert get_mask(mlp.fc1) is None and get_mask(mlp.fc3) is None
    with pytest.raises(ValueError, match="fc3"):
        pruner.step("magnitude", 0.5, layers="fc3")


def test_prune_model_one_liner(mlp):
    results = prune_model(mlp, "magnitude", 0.5)
    assert [r.layer for r in results] == list(LAYERS)
    assert all(r.sparsity_after == pytest.approx(0.5) for r in results)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("method", "amount", "needle"),
    [
        ("std", -1.0, "q=-1.0"),
        ("std", math.nan, "nan"),
        ("std", True, "True"),
        ("magnitude", 1.0, "sparsity=1.0"),
        ("magnitude", -0.1, "sparsity=-0.1"),
        ("random", 1.0, "sparsity=1.0"),
        ("magnitude", {"*": 0.5, "fc9": 0.1}, "fc9"),
    ],
)
def test_bad_amount_raises_naming_value(mlp, method, amount, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        Pruner(mlp).step(method, amount)
    assert get_mask(mlp.fc1) is None  # nothing was pruned


def test_unknown_layer_pattern_raises(mlp):
    with pytest.raises(ValueError, match=r"'fc9'.*fc1, fc2, fc3"):
        Pruner(mlp, "fc9")


def test_pattern_matching_only_batchnorm_raises(convnet):
    with pytest.raises(ValueError, match=r"'bn1'.*BatchNorm2d"):
        Pruner(convnet, "bn1")


def test_exclude_pattern_matching_nothing_raises(mlp):
    with pytest.raises(ValueError, match="fc9"):
        Pruner(mlp, exclude="fc9")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"method": "foo"}, "'foo'.*std"),
        ({"method": "magnitude", "scope": "everywhere"}, "'everywhere'.*layer"),
        ({"method": "std", "scope": "global"}, "global"),
        ({"method": "magnitude", "scope": "global", "amount": {"*": 0.5}}, "mapping"),
    ],
)
def test_unknown_method_or_scope_raises(mlp, kwargs, needle):
    kwargs = {"amount": 0.5, **kwargs}
    with pytest.raises(ValueError, match=needle):
        Pruner(mlp).step(kwargs.pop("method"), kwargs.pop("amount"), **kwargs)


def test_unknown_std_source_raises(mlp):
    with pytest.raises(ValueError, match=r"'median'.*dense"):
        Pruner(mlp, std_source="median")


def test_model_without_prunable_layers_raises():
    with pytest.raises(ValueError, match="no prunable layers"):
        Pruner(nn.Sequential(nn.ReLU()))


# ------------------------------------------------------------------------------ state


def test_state_dict_round_trip(mlp, mlp_factory):
    pruner = Pruner(mlp)
    pruner.step("std", 0.5)
    state = json.loads(json.dumps(pruner.state_dict()))  # JSON-serialisable
    other = Pruner(mlp_factory(seed=5))
    assert other.dense_std != pruner.dense_std
    other.load_state_dict(state)
    assert other.state_dict() == pruner.state_dict()
    assert other.steps_done == 1


def test_loaded_state_reproduces_next_step(mlp, mlp_factory):
    pruner = Pruner(mlp)
    pruner.step("std", 0.5)
    # a second model holding the pruned weights, with a Pruner that never saw the dense ones
    clone = mlp_factory().eval()
    load_pruned_state_dict(clone, mlp.state_dict())
    resumed = Pruner(clone)
    assert resumed.dense_std is None  # not captured yet: it would measure pruned weights
    resumed.load_state_dict(pruner.state_dict())
    pruner.step("std", 1.0)
    resumed.step("std", 1.0)
    for n in LAYERS:
        assert torch.equal(get_mask(getattr(mlp, n)), get_mask(getattr(clone, n)))


def test_load_state_dict_rejects_other_layers(mlp):
    state = Pruner(mlp).state_dict()
    with pytest.raises(ValueError, match="fc1"):
        Pruner(mlp, "fc1").load_state_dict(state)


def test_dense_std_is_captured_at_first_step_not_at_creation(mlp):
    """A Pruner made before training must use the trained weights' std (Han's threshold)."""
    pruner = Pruner(mlp)
    with torch.no_grad():
        for n in LAYERS:
            getattr(mlp, n).weight.mul_(3.0)  # "training" changes the weights after creation
    expected = {n: float(getattr(mlp, n).weight.detach().double().std(correction=0))
                for n in LAYERS}
    pruner.step("std", 1.0)
    for n in LAYERS:
        assert pruner.dense_std[n] == pytest.approx(expected[n], rel=1e-12)
    pruner.step("std", 2.0)  # fixed afterwards
    for n in LAYERS:
        assert pruner.dense_std[n] == pytest.approx(expected[n], rel=1e-12)
