"""Criteria as pure functions: exact thresholds, exact counts, determinism, bad input."""

from __future__ import annotations

import math
import re

import pytest
import torch

from prunelab.criteria import (
    global_magnitude_masks,
    keep_count,
    layer_seed,
    magnitude_mask,
    random_mask,
    std_threshold_mask,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _below(x: float) -> float:
    """The largest float32 strictly below ``x``."""
    return float(torch.nextafter(torch.tensor(x), torch.tensor(-math.inf)))


# ------------------------------------------------------------------------------ std rule


def test_std_rule_prunes_below_and_keeps_equal():
    w = torch.tensor([0.5, _below(0.5), -0.5, -_below(0.5), 0.0, 3.0])
    assert std_threshold_mask(w, q=0.25, std=2.0).tolist() == [
        True, False, True, False, False, True,
    ]  # fmt: skip


def test_std_rule_compares_against_the_unrounded_threshold():
    # 1 + 2**-30 rounds to 1.0 in float32; a weight of exactly 1.0 is still below it.
    w = torch.tensor([1.0, 2.0])
    assert std_threshold_mask(w, q=1.0 + 2**-30, std=1.0).tolist() == [False, True]


def test_std_rule_never_keeps_an_already_pruned_entry():
    w = torch.tensor([5.0, 5.0, 0.1])
    current = torch.tensor([1.0, 0.0, 1.0])
    assert std_threshold_mask(w, q=0.0, std=1.0, current=current).tolist() == [True, False, True]


@pytest.mark.parametrize("q", [-0.5, math.nan, math.inf])
def test_std_rule_rejects_bad_q(q):
    with pytest.raises(ValueError, match=re.escape(f"q={q!r}")):
        std_threshold_mask(torch.ones(3), q=q, std=1.0)


def test_std_rule_rejects_negative_std():
    with pytest.raises(ValueError, match=re.escape("std=-1.0")):
        std_threshold_mask(torch.ones(3), q=1.0, std=-1.0)


# ------------------------------------------------------------------------------ magnitude


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.333, 0.5, 0.9, 0.999])
def test_magnitude_prunes_exactly_round_sparsity_n(sparsity):
    w = torch.randn(37, 11, generator=torch.Generator().manual_seed(1))
    keep = magnitude_mask(w, sparsity)
    assert int((~keep).sum()) == round(sparsity * w.numel())
    if keep.any() and (~keep).any():
        assert w.abs()[keep].min() >= w.abs()[~keep].max()


def test_magnitude_counts_already_pruned_entries():
    w = torch.randn(100, generator=torch.Generator().manual_seed(2)).abs() + 1.0
    current = torch.ones(100)
    current[:20] = 0  # 20 large weights already pruned: they count towards the target
    keep = magnitude_mask(w, 0.5, current)
    assert int((~keep).sum()) == 50
    assert not keep[:20].any()


def test_magnitude_already_sparser_than_target_prunes_nothing_more():
    current = torch.ones(10)
    current[:6] = 0
    keep = magnitude_mask(torch.arange(10.0), 0.3, current)
    assert keep.tolist() == [False] * 6 + [True] * 4


def test_magnitude_ties_broken_by_position():
    assert magnitude_mask(torch.ones(10), 0.3).tolist() == [True] * 7 + [False] * 3


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_magnitude_rejects_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=re.escape(f"sparsity={sparsity!r}")):
        magnitude_mask(torch.ones(4), sparsity)


def test_keep_count():
    assert keep_count(10, 0.25) == 8  # round(2.5) == 2 (banker's rounding)
    assert keep_count(10, 0.35) == 6
    assert keep_count(7, 0.0) == 7


# ------------------------------------------------------------------------------ random


def test_random_mask_exact_count():
    keep = random_mask(torch.randn(50, 20), 0.37, seed=3)
    assert int((~keep).sum()) == round(0.37 * 1000)


def test_random_mask_deterministic_per_seed_and_independent_of_values():
    a = random_mask(torch.randn(30, 30), 0.5, seed=7)
    b = random_mask(torch.randn(30, 30, dtype=torch.float64), 0.5, seed=7)
    assert torch.equal(a, b)


def test_random_mask_differs_across_seeds():
    w = torch.randn(30, 30)
    assert not torch.equal(random_mask(w, 0.5, seed=0), random_mask(w, 0.5, seed=1))


def test_random_mask_counts_already_pruned_entries():
    current = torch.ones(100)
    current[::4] = 0  # 25 already pruned
    keep = random_mask(torch.randn(100), 0.6, seed=0, current=current)
    assert int((~keep).sum()) == 60
    assert not keep[::4].any()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_random_mask_independent_of_device():
    w = torch.randn(40, 40)
    cpu = random_mask(w, 0.8, seed=5)
    gpu = random_mask(w.cuda(), 0.8, seed=5)
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_global_magnitude_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(20, 10, generator=g), "b": torch.randn(5, 5, generator=g)}
    cur = {"a": (torch.rand(20, 10, generator=g) > 0.2).float(), "b": None}
    cpu = global_magnitude_masks(w, 0.7, cur, min_density=0.1)
    gpu = global_magnitude_masks(
        {k: v.cuda() for k, v in w.items()},
        0.7,
        {"a": cur["a"].cuda(), "b": None},
        min_density=0.1,
    )
    for k in w:
        assert torch.equal(cpu[k], gpu[k].cpu())


def test_layer_seed_is_pure_and_distinguishes_layers():
    assert layer_seed(0, "fc1") == layer_seed(0, "fc1")
    assert layer_seed(0, "fc1") != layer_seed(0, "fc2")
    assert layer_seed(0, "fc1") != layer_seed(1, "fc1")


# ------------------------------------------------------------------------------ global


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return {
        "big": torch.randn(64, 32, generator=g),
        "mid": torch.randn(32, 16, generator=g),
        "tiny": 1e-6 * torch.randn(16, 4, generator=g),
    }


def test_global_threshold_is_exact():
    w = _weights()
    masks = global_magnitude_masks(w, 0.8, None)
    total = sum(t.numel() for t in w.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.8 * total)
    kept_min = min(float(w[n].abs()[m].min()) for n, m in masks.items() if m.any())
    pruned_max = max(float(w[n].abs()[~m].max()) for n, m in masks.items() if (~m).any())
    assert kept_min >= pruned_max
    assert not masks["tiny"].any()  # without floors one threshold empties the tiny layer


def test_global_floors_never_empty_a_layer():
    w = _weights()
    masks = global_magnitude_masks(w, 0.999, None, min_density=0.05)
    for name, mask in masks.items():
        assert int(mask.sum()) >= math.ceil(0.05 * w[name].numel()), name
    # the kept weights of each layer are its largest ones
    for name, mask in masks.items():
        if (~mask).any():
            assert w[name].abs()[mask].min() >= w[name].abs()[~mask].max()


def test_global_floor_budget_is_taken_from_other_layers():
    w = _weights()
    total = sum(t.numel() for t in w.values())
    masks = global_magnitude_masks(w, 0.9, None, min_density={"tiny": 0.5})
    assert int(masks["tiny"].sum()) == 32
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * total)


def test_global_tiny_positive_floor_keeps_one_weight():
    w = _weights()
    masks = global_magnitude_masks(w, 0.999, None, min_density=1e-9)
    assert all(int(m.sum()) >= 1 for m in masks.values())


def test_global_respects_current_masks():
    w = _weights()
    cur = {"big": torch.zeros_like(w["big"]), "mid": None, "tiny": None}
    cur["big"][:32] = 1  # half of the big layer already pruned
    masks = global_magnitude_masks(w, 0.5, cur)
    assert not masks["big"][32:].any()
    total = sum(t.numel() for t in w.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)


def test_global_rejects_bad_floor():
    with pytest.raises(ValueError, match=re.escape("min_density=1.5")):
        global_magnitude_masks(_weights(), 0.5, None, min_density=1.5)
