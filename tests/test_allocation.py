"""Allocation: exact keep counts, tie orders, floors, one global threshold by water-filling."""

from __future__ import annotations

import math
import re

import pytest
import torch

from prunelab.allocation import (
    density_floors,
    global_keep,
    keep_count,
    keep_top,
    layer_amounts,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------ keep_top


def test_keep_top_exact_and_tie_orders():
    s = torch.tensor([2.0, 1.0, 1.0, 1.0, 3.0])
    assert keep_top(s, 3).tolist() == [True, True, False, False, True]
    assert keep_top(s, 3, ties="earlier_dropped").tolist() == [True, False, False, True, True]


def test_keep_top_never_keeps_dead_entries_even_with_low_scores():
    s = torch.tensor([-math.inf, 5.0, -math.inf, 1.0])
    alive = torch.tensor([True, False, True, True])
    # a live entry scored -inf is still kept before a dead one (the old -inf trick could not)
    assert keep_top(s, 2, alive).tolist() == [True, False, False, True]
    assert keep_top(s, 10, alive).tolist() == [True, False, True, True]


@pytest.mark.parametrize("ties", ["earlier_kept", "earlier_dropped"])
def test_keep_top_selection_equals_the_stable_sort(ties):
    """The selection path gives exactly the masks of the stable sort, ties and dead included."""
    from prunelab.allocation import _keep_top_sorted

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(1, 24, (1,), generator=g))
        # few distinct values (many ties), signed zeros and infinities among them
        s = torch.tensor([0.0, -0.0, 1.0, 2.0, -math.inf, math.inf])[
            torch.randint(0, 6, (n,), generator=g)]
        alive = torch.rand(n, generator=g) > 0.3 if trial % 3 else None
        for dtype in (torch.float32, torch.float64, torch.float16, torch.int64):
            sd = s.clamp(-5, 5).to(dtype) if dtype is torch.int64 else s.to(dtype)
            for k in {0, 1, n // 3, n // 2, n - 1, n, n + 1}:
                want = _keep_top_sorted(sd.double(), k, alive, ties)
                assert torch.equal(keep_top(sd, k, alive, ties=ties), want), (sd, k, alive)


def test_keep_top_with_nan_scores_follows_the_sort():
    s = torch.tensor([1.0, math.nan, 3.0, 2.0])
    assert keep_top(s, 2).tolist() == [False, True, True, False]  # sort puts NaN first


def test_keep_top_rejects_unknown_ties():
    with pytest.raises(ValueError, match=r"ties='random'.*earlier_kept"):
        keep_top(torch.ones(3), 1, ties="random")


def test_keep_count_rejects_out_of_range():
    assert keep_count(10, 0.25) == 8
    for bad in (1.0, -0.1, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=re.escape(f"sparsity={bad!r}")):
            keep_count(10, bad)


# ------------------------------------------------------------------------------ amounts


def test_layer_amounts_overrides_and_ranges():
    names = ["conv1", "conv2", "fc1"]
    assert layer_amounts({"*": 1.0, "conv*": 0.5}, names, "q") == {
        "conv1": 0.5, "conv2": 0.5, "fc1": 1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"q=inf"):
        layer_amounts(math.inf, names, "q")
    with pytest.raises(ValueError, match=r"ratio=1\.0 for '\*'"):
        layer_amounts(1.0, names, "sparsity", what="ratio")
    with pytest.raises(ValueError, match=r"pattern 'fc9' matches no selected layer"):
        layer_amounts({"*": 0.5, "fc9": 0.1}, names, "sparsity")
    with pytest.raises(ValueError, match=r"amount kind 'fraction' is unknown"):
        layer_amounts(0.5, names, "fraction")


def test_density_floors():
    assert density_floors(0.05, {"a": 100, "b": 7}) == {"a": 5, "b": 1}
    assert density_floors({"a": 0.5}, {"a": 10, "b": 10}, {"a": 3, "b": 10}) == {"a": 3, "b": 0}
    with pytest.raises(ValueError, match=r"min_density=1\.5 for 'a'"):
        density_floors(1.5, {"a": 3})


# ------------------------------------------------------------------------------ global


def _scores(seed: int, sizes=(40, 25, 9, 3), ties: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, n in enumerate(sizes):
        t = torch.randint(0, 5, (n,), generator=g).double() if ties else torch.rand(n, generator=g)
        out[f"l{i}"] = t * (10.0 ** -i)  # later layers smaller: they hit their floors
    return out


def test_global_keep_is_exact_and_respects_floors():
    s = _scores(0)
    floors = {"l0": 2, "l1": 5, "l2": 4, "l3": 3}
    masks = global_keep(s, 20, floors=floors)
    assert sum(int(m.sum()) for m in masks.values()) == 20
    for n, m in masks.items():
        assert int(m.sum()) >= floors[n]
        if (~m).any() and m.any():  # each layer keeps its highest scores
            assert s[n][m].min() >= s[n][~m].max()
    free = [n for n in masks if int(masks[n].sum()) > floors[n]]
    kept_min = min(float(s[n][masks[n]].min()) for n in free)
    dropped_max = max(float(s[n][~masks[n]].max()) for n in s if (~masks[n]).any())
    assert kept_min >= dropped_max  # one threshold over the layers not held by a floor


def test_global_keep_floors_beyond_budget_keep_the_floors():
    s = _scores(1)
    masks = global_keep(s, 3, floors={"l2": 9, "l3": 3})
    assert int(masks["l2"].sum()) == 9 and int(masks["l3"].sum()) == 3
    assert not masks["l0"].any() and not masks["l1"].any()


def test_global_keep_respects_alive():
    s = _scores(2)
    alive = {n: torch.arange(t.numel()) % 2 == 0 for n, t in s.items()}
    masks = global_keep(s, 30, alive=alive, floors={"l3": 1})
    for n, m in masks.items():
        assert not m[~alive[n]].any()
    assert sum(int(m.sum()) for m in masks.values()) == 30


def _slimming_greedy(gammas: list[torch.Tensor], floors: list[int], k: int) -> list[torch.Tensor]:
    """The Network Slimming selection of commit 3b74408, verbatim: drop the smallest scales
    one by one (ties: earlier layer, then lower index), skipping layers at their floor."""
    flat = torch.cat(gammas)
    owner = torch.cat([torch.full((g.numel(),), i) for i, g in enumerate(gammas)])
    offset = torch.cat([torch.arange(g.numel()) for g in gammas])
    keep = [torch.ones(g.numel(), dtype=torch.bool) for g in gammas]
    left = [g.numel() for g in gammas]
    dropped = 0
    for pos in torch.sort(flat, stable=True).indices.tolist():
        if dropped == k:
            break
        i = int(owner[pos])
        if left[i] > floors[i]:
            keep[i][int(offset[pos])] = False
            left[i] -= 1
            dropped += 1
    return keep


@pytest.mark.parametrize("ties", [False, True])
def test_water_filling_equals_the_old_slimming_greedy(ties):
    """One floor algorithm: water-filling gives Network Slimming's channels exactly."""
    cases = 0
    for seed in range(60):
        s = _scores(seed, sizes=(16, 32, 64, 8, 5), ties=ties)
        g = torch.Generator().manual_seed(1000 + seed)
        floors = {n: int(torch.randint(1, t.numel() + 1, (1,), generator=g)) if seed % 3 else 1
                  for n, t in s.items()}
        total = sum(t.numel() for t in s.values())
        capacity = total - sum(floors.values())
        for ratio in (0.1, 0.3, 0.6, 0.9):
            k = round(ratio * total)
            if k > capacity:  # slimming_keep refuses these before either algorithm runs
                continue
            old = _slimming_greedy(list(s.values()), list(floors.values()), k)
            new = global_keep(s, total - k, floors=floors, ties="earlier_dropped")
            for n, o in zip(s, old, strict=True):
                assert torch.equal(new[n], o), (seed, ratio, n)
            cases += 1
    assert cases > 100
