"""Pluggable criteria: classes, the registry, options, use by name or instance from Python."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import KeepFirst, build_convnet

from prunelab.criteria import (
    Context,
    Criterion,
    Magnitude,
    StdThreshold,
    available_criteria,
    criterion_class,
    get_criterion,
    register_criterion,
    std_threshold_mask,
    unregister_criterion,
)
from prunelab.criteria.channels import BNScale, ThiNet, channel_keep, l1_filter_keep
from prunelab.graph import trace_structure
from prunelab.masks import get_mask
from prunelab.pruner import Pruner

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ("fc1", "fc2", "fc3")


@dataclass(frozen=True)
class AbsAbove(Criterion):
    """A mask rule with a ``q`` amount: keep ``|w| >= q`` (an absolute threshold)."""

    amount_kind = "q"

    def compute_mask(self, tensor, amount, current, context):
        keep = tensor.abs() >= amount
        return keep if current is None else keep & (current != 0)


def _first_half(shape: torch.Size) -> torch.Tensor:
    n = shape.numel()
    return (torch.arange(n) < n - round(0.5 * n)).view(shape)


# ------------------------------------------------------------------------------ registry


def test_builtins_are_registered_with_their_kinds():
    assert available_criteria() == (
        "block_magnitude", "bn_scale", "dns", "l1_filter", "magnitude", "nm", "random",
        "slimming", "std", "thinet",
    )  # fmt: skip
    assert available_criteria("weight") == (
        "block_magnitude", "dns", "magnitude", "nm", "random", "std",
    )  # fmt: skip
    assert criterion_class("dns").amount_kind == "q"
    assert criterion_class("slimming") is criterion_class("bn_scale") is BNScale
    assert criterion_class("std").amount_kind == "q"
    assert criterion_class("magnitude").amount_kind == "sparsity"
    assert isinstance(get_criterion("magnitude"), Magnitude)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"'magnitud' is unknown; registered criteria: "
                                         r"block_magnitude, bn_scale, dns, l1_filter, magnitude, "
                                         r"nm, random, slimming, std, thinet"):
        get_criterion("magnitud")


def test_options_are_checked_by_name_and_value():
    assert get_criterion("thinet", samples=64) == ThiNet(samples=64)
    with pytest.raises(ValueError, match=r"'thinet' has no option 'sample'; allowed: samples, "
                                         r"rescale"):
        get_criterion("thinet", sample=64)
    with pytest.raises(ValueError, match=r"'magnitude' has no option 'p'; allowed: none"):
        get_criterion("magnitude", p=2)
    with pytest.raises(ValueError, match=r"samples=0 is out of range"):
        get_criterion("thinet", samples=0)
    with pytest.raises(TypeError, match=r"rescale='yes' must be a bool"):
        get_criterion("thinet", rescale="yes")


def test_required_option_is_named():
    class Needs(Criterion):
        def __init__(self, level: int) -> None:
            self.level = level

        def scores(self, tensor, context):
            return tensor.abs()

    register_criterion("needs_level")(Needs)
    try:
        with pytest.raises(ValueError, match=r"'needs_level' needs option 'level'"):
            get_criterion("needs_level")
        assert get_criterion("needs_level", level=2).level == 2
    finally:
        unregister_criterion("needs_level")


def test_register_validates_the_class_and_the_name(keep_first):
    with pytest.raises(TypeError, match="Criterion subclass"):
        register_criterion("x")(dict)

    class Nothing(Criterion):
        pass

    with pytest.raises(TypeError, match=r"Nothing implements neither scores\(\) nor"):
        register_criterion("nothing")(Nothing)

    class BadKind(KeepFirst):
        amount_kind = "fraction"

    with pytest.raises(TypeError, match=r"amount_kind='fraction' is unknown"):
        register_criterion("bad_kind")(BadKind)
    with pytest.raises(ValueError, match=r"'magnitude' is already registered by Magnitude"):
        register_criterion("magnitude")(KeepFirst)
    with pytest.raises(ValueError, match=r"criterion name 'two words' is invalid"):
        register_criterion("two words")
    assert register_criterion("keep_first")(KeepFirst) is KeepFirst  # same class: no-op
    assert "magnitude" in available_criteria()


def test_aliases_and_unregister():
    @dataclass(frozen=True)
    class Alias(KeepFirst):
        pass

    register_criterion("alias_a", "alias_b")(Alias)
    assert criterion_class("alias_b") is Alias and Alias.name == "alias_a"
    unregister_criterion("alias_b")
    assert "alias_a" not in available_criteria()
    with pytest.raises(ValueError, match="'alias_a' is unknown"):
        unregister_criterion("alias_a")


# ------------------------------------------------------------------------------ classes


def test_std_class_uses_dense_or_surviving_std():
    w = torch.tensor([0.1, -2.0, 0.5, -0.05, 4.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    crit = StdThreshold()
    dense = Context(dense_std=1.0, mask=mask)
    surviving = Context(dense_std=1.0, mask=mask, std_source="surviving")
    assert torch.equal(crit.compute_mask(w, 0.4, mask, dense),
                       std_threshold_mask(w, 0.4, 1.0, mask))
    std = float(w[:4].double().std(correction=0))
    assert crit.threshold(w, 0.4, mask != 0, surviving) == pytest.approx(0.4 * std, rel=1e-15)
    assert torch.equal(crit.compute_mask(w, 0.4, mask, surviving),
                       std_threshold_mask(w, 0.4, std, mask))


def test_step_by_instance_equals_step_by_name(mlp_factory):
    a, b = mlp_factory(), mlp_factory()
    ra = Pruner(a).step("magnitude", 0.7)
    rb = Pruner(b).step(Magnitude(), 0.7)
    assert ra == rb
    for n in LAYERS:
        assert torch.equal(get_mask(getattr(a, n)), get_mask(getattr(b, n)))


def test_unregistered_score_criterion_instance(mlp):
    Pruner(mlp).step(KeepFirst(reverse=True), {"*": 0.5, "fc3": 0.25})
    mask = get_mask(mlp.fc1)
    assert torch.equal(mask != 0, ~_first_half(mask.shape))  # the last half is kept
    assert int((get_mask(mlp.fc3) == 0).sum()) == round(0.25 * 64)


def test_registered_criterion_by_name_with_options(mlp, keep_first):
    Pruner(mlp).step("keep_first", 0.5, reverse=False)
    for n in LAYERS:
        w = getattr(mlp, n).weight_orig
        assert torch.equal(get_mask(getattr(mlp, n)) != 0, _first_half(w.shape))


def test_mask_criterion_with_q_amount(mlp):
    dense = {n: getattr(mlp, n).weight.detach().clone() for n in LAYERS}
    results = Pruner(mlp).step(AbsAbove(), 0.1)
    for r in results:
        assert r.threshold is None and r.amount == 0.1
        assert torch.equal(get_mask(getattr(mlp, r.layer)) != 0, dense[r.layer].abs() >= 0.1)
    with pytest.raises(ValueError, match=r"q=-1\.0 for '\*' is out of range"):
        Pruner(mlp).step(AbsAbove(), -1.0)
    with pytest.raises(ValueError, match=r"scope='global' needs a criterion with scores.*"
                                         r"'AbsAbove' has no scores"):
        Pruner(mlp).step(AbsAbove(), 0.1, scope="global")


def test_floor_needs_scores(mlp):
    with pytest.raises(ValueError, match=r"'AbsAbove' keeps 0 entries of layer 'fc1', under its "
                                         r"floor of 103, and has no scores"):
        Pruner(mlp).step(AbsAbove(), 10.0, min_density=0.05)
    assert get_mask(mlp.fc1) is None


@pytest.mark.parametrize(
    ("method", "options", "error", "needle"),
    [
        (KeepFirst, {}, TypeError, r"pass a criterion instance, KeepFirst\(\), not the class"),
        (KeepFirst(), {"reverse": True}, ValueError, r"only used with a criterion name"),
        ("l1_filter", {}, ValueError, r"'l1_filter' is a channel criterion; a weight criterion "
                                      r"is needed here: block_magnitude, dns, magnitude, nm, "
                                      r"random, std"),
        (3, {}, TypeError, r"registered name or a Criterion instance, got 3"),
        ("magnitude", {"power": 2}, ValueError, r"no option 'power'"),
    ],
)
def test_bad_criterion_arguments(mlp, method, options, error, needle):
    with pytest.raises(error, match=needle):
        Pruner(mlp).step(method, 0.5, **options)
    assert get_mask(mlp.fc1) is None


def test_scores_of_wrong_shape_are_refused(mlp):
    class Flat(Criterion):
        def scores(self, tensor, context):
            return tensor.abs().flatten()

    with pytest.raises(ValueError, match=r"'Flat' returned scores of shape \(2048,\) for layer "
                                         r"'fc1'; expected a tensor of shape \(32, 64\)"):
        Pruner(mlp).step(Flat(), 0.5)


# ------------------------------------------------------------------------------ channels


def test_channel_criteria_by_name_equal_the_functions(x8):
    net = build_convnet().eval()
    s = trace_structure(net, x8)
    assert _same(channel_keep(net, "l1_filter", 0.5), l1_filter_keep(net, 0.5))
    assert _same(channel_keep(net, "slimming", 0.5, structure=s),
                 channel_keep(net, BNScale(), 0.5, example_input=x8))
    keep = channel_keep(net, get_criterion("thinet", samples=64), 0.5, example_input=x8)
    assert sorted(keep) == ["conv1", "conv2", "fc1"]


def test_channel_keep_refuses_weight_criteria_and_global_without_scores(x8):
    net = build_convnet().eval()
    with pytest.raises(ValueError, match=r"'magnitude' is a weight criterion; a channel "
                                         r"criterion is needed here: bn_scale, l1_filter"):
        channel_keep(net, "magnitude", 0.5)
    with pytest.raises(ValueError, match=r"scope 'global' needs a criterion with scores; "
                                         r"'thinet' only computes masks"):
        channel_keep(net, "thinet", 0.5, example_input=x8, scope="global")
    with pytest.raises(ValueError, match=r"'thinet' needs structure="):
        channel_keep(net, "thinet", 0.5)


def test_channel_layer_scope_floor_and_global_l1(x8):
    net = build_convnet().eval()
    keep = channel_keep(net, "l1_filter", 0.9, min_fraction=0.5)
    assert {n: int(k.sum()) for n, k in keep.items()} == {"conv1": 2, "conv2": 3}
    keep = channel_keep(net, "l1_filter", 0.5, scope="global")
    assert sum(int(k.sum()) for k in keep.values()) == 5


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
