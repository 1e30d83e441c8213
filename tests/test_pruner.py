"""Pruner: per-layer thresholds and counts, overrides, validation, state round trip."""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict

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
    pruner.step("std", 1.5)  # fixed afterwards (2.0 would empty these uniform layers)
    for n in LAYERS:
        assert pruner.dense_std[n] == pytest.approx(expected[n], rel=1e-12)


# ------------------------------------------------------------------------------ never empty


def _uniform_output_layer() -> nn.Sequential:
    """fc1: Gaussian weights (q=2 keeps ~5%); fc2: like an untrained LeNet-300 output layer,
    weights spread evenly over [-a, a], so 2 * std = 1.15 a exceeds every |w|."""
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(100, 300), fc2=nn.Linear(300, 10)))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.randn(300, 100, generator=torch.Generator().manual_seed(0)))
        model.fc2.weight.copy_(torch.linspace(-0.05, 0.05, 3000).view(10, 300))
    return model


def test_step_that_would_empty_a_layer_raises_and_changes_nothing():
    model = _uniform_output_layer()
    pruner = Pruner(model)
    w2 = model.fc2.weight.detach()
    assert 2.0 * _pop_std(w2) > float(w2.abs().max())
    with pytest.raises(ValueError) as info:
        pruner.step("std", 2.0)  # the README's iterative example on such a layer
    message = str(info.value)
    for needle in ("'fc2'", "q=2.0", "remove all its weights", "smaller q", "min_density"):
        assert needle in message
    assert "\n" not in message
    # atomic: fc1 (which alone would be fine) is untouched too, and no std was recorded
    assert get_mask(model.fc1) is None and get_mask(model.fc2) is None
    assert pruner.dense_std is None and pruner.steps_done == 0
    results = pruner.step("std", {"*": 2.0, "fc2": 1.0})  # the suggested fix works
    assert all(r.nonzero_after > 0 for r in results)


def test_min_density_floor_holds_a_layer_the_std_rule_would_empty():
    model = _uniform_output_layer()
    dense = model.fc2.weight.detach().clone()
    results = Pruner(model).step("std", 2.0, min_density=0.01)
    by_name = {r.layer: r for r in results}
    assert by_name["fc2"].nonzero_after == 30  # ceil(0.01 * 3000): its 30 largest weights
    kept = get_mask(model.fc2) != 0
    assert dense.abs()[kept].min() >= dense.abs()[~kept].max()
    fc1 = model.fc1.weight_orig.detach()
    assert torch.equal(get_mask(model.fc1) != 0, fc1.abs().double() >= by_name["fc1"].threshold)


def test_global_step_that_would_empty_a_layer_raises(mlp):
    with torch.no_grad():
        mlp.fc3.weight.mul_(1e-6)
    with pytest.raises(ValueError, match=r"'fc3'.*sparsity=0\.9 under one global threshold.*"
                                         r"min_density"):
        Pruner(mlp).step("magnitude", 0.9, scope="global")
    assert get_mask(mlp.fc1) is None


def test_magnitude_on_a_one_weight_layer_raises_instead_of_emptying():
    model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 4))
    with pytest.raises(ValueError, match=r"'0' with 'magnitude' at sparsity=0\.6"):
        Pruner(model).step("magnitude", 0.6)  # round(0.6 * 1) = 1 of 1 weight
    Pruner(model).step("magnitude", 0.6, min_density=0.01)
    assert int(get_mask(model[0]).sum()) == 1


# ------------------------------------------------------------------------------ check_step


@pytest.mark.parametrize(
    ("method", "amount", "kwargs", "needle"),
    [
        ("foo", 0.5, {}, r"'foo' is unknown; registered criteria: .*std"),
        ("std", -1.0, {}, r"q=-1\.0"),
        ("std", math.inf, {}, r"q=inf"),
        ("std", math.nan, {}, r"nan"),
        ("magnitude", 1.0, {}, r"sparsity=1\.0"),
        ("random", -0.2, {}, r"sparsity=-0\.2"),
        ("magnitude", 0.5, {"layers": "fc9"}, r"'fc9' matches no layer"),
        ("magnitude", {"*": 0.5, "fc9": 0.1}, {}, r"'fc9' matches no selected layer"),
        ("magnitude", {"fc1": 0.5}, {}, r"no sparsity given for layer\(s\) fc2, fc3"),
        ("std", 1.0, {"scope": "global"}, r"scope='global' needs a criterion with scores and a "
                                          r"sparsity amount.*'std' has amount kind 'q'"),
        ("magnitude", 0.5, {"scope": "all"}, r"scope='all' is unknown"),
        ("magnitude", {"*": 0.5}, {"scope": "global"}, r"not a mapping"),
        ("magnitude", 0.5, {"min_density": 1.5}, r"min_density=1\.5"),
        ("magnitude", 0.5, {"min_density": {"fc9": 0.1}}, r"min_density pattern 'fc9'"),
        ("magnitude", 0.5, {"power": 2}, r"'magnitude' has no option 'power'"),
        ("thinet", 0.5, {}, r"'thinet' is a channel criterion"),
    ],
)
def test_check_step_raises_what_step_raises_and_changes_nothing(mlp, method, amount, kwargs,
                                                                 needle):
    pruner = Pruner(mlp)
    with pytest.raises(ValueError, match=needle) as checked:
        pruner.check_step(method, amount, **kwargs)
    assert pruner.dense_std is None and pruner.steps_done == 0
    assert all(get_mask(getattr(mlp, n)) is None for n in LAYERS)
    with pytest.raises(ValueError) as stepped:
        pruner.step(method, amount, **kwargs)
    assert str(stepped.value) == str(checked.value)
    assert pruner.dense_std is None and pruner.steps_done == 0
    assert all(get_mask(getattr(mlp, n)) is None for n in LAYERS)


def test_check_step_accepts_good_arguments_and_changes_nothing(mlp):
    pruner = Pruner(mlp)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    pruner.check_step("std", {"*": 1.0, "fc3": 0.5}, layers="fc*", seed=3, monotone=False)
    pruner.check_step("magnitude", 0.9, scope="global", min_density=0.05)
    assert pruner.dense_std is None and pruner.steps_done == 0
    after = mlp.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------ optimizer


def _momentum_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))).sum().backward()
    opt.step()


@pytest.mark.parametrize("sync", [True, False])
def test_prune_model_with_optimizer_keeps_pruned_weights_exactly_zero(mlp, sync):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    _momentum_step(mlp, opt)  # momentum buffers now nonzero everywhere
    prune_model(mlp, "magnitude", 0.5, optimizer=opt if sync else None)
    _momentum_step(mlp, opt)
    pruned = get_mask(mlp.fc1) == 0
    moved = int((mlp.fc1.weight_orig.detach()[pruned] != 0).sum())
    if sync:
        assert moved == 0
    else:  # without the optimizer, stale momentum moves pruned entries off zero
        assert moved > 0


def test_pruning_a_tied_head_masks_the_embedding_too() -> None:
    """A Linear head tied to an Embedding: both read the same masked weight after a step."""
    torch.manual_seed(0)
    emb = nn.Embedding(12, 6)
    head = nn.Linear(6, 12, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    Pruner(model, layers="head").step("magnitude", 0.5)
    tokens = torch.arange(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model["emb"](tokens).sum().backward()  # a gradient only through the embedding
    opt.step()
    expected = head.weight_orig.detach() * head.weight_mask
    assert torch.equal(model["emb"](tokens), expected[tokens])
    assert int((model["emb"](tokens) == 0).sum()) == 36
    assert float(head.weight_orig.detach()[head.weight_mask == 0].abs().sum()) == 0.0
