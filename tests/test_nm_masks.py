"""N:M semi-structured masks: the pattern, exact counts, monotonicity, schedules, torch.ao."""

from __future__ import annotations

import itertools
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import build_mlp, make_config, make_data
from torch import nn

from prunelab.criteria import NM, Context, get_criterion, is_nm_sparse, nm_mask, nm_violations
from prunelab.experiments.han import HanPipeline
from prunelab.masks import get_mask, masked_training, sparsity
from prunelab.pruner import Pruner

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(6, 16), (5, 16, 3, 3)]  # a Linear [out, in] and a Conv [out, in, kh, kw] weight


def _weight(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _groups(t: torch.Tensor, m: int) -> list[torch.Tensor]:
    """Every group of m consecutive inputs (dim 1), gathered by plain indexing."""
    out = []
    for o in range(t.shape[0]):
        for tap in torch.cartesian_prod(*[torch.arange(k) for k in t.shape[2:]]).reshape(
            -1, t.dim() - 2
        ).tolist() if t.dim() > 2 else [[]]:
            row = t[(o, slice(None), *tap)]
            out += [row[i : i + m] for i in range(0, row.numel(), m)]
    return out


def _reference(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The exact N:M mask by the definition: per group the n largest |w|, earlier on ties."""
    keep = torch.zeros_like(w, dtype=torch.bool)
    flat_idx = torch.arange(w.numel()).view(w.shape)
    for g, idx in zip(_groups(w, m), _groups(flat_idx, m), strict=True):
        order = sorted(range(m), key=lambda i: (-abs(float(g[i])), i))[:n]
        keep.view(-1)[idx[order]] = True
    return keep


# ------------------------------------------------------------------------------ the pattern


@pytest.mark.parametrize("shape", SHAPES, ids=["linear", "conv"])
@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_full_amount_is_exactly_n_of_m_along_the_input_dim(shape, n, m):
    w = _weight(shape)
    mask = NM(n=n, m=m).compute_mask(w, 1 - n / m, None, Context())
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert all(int(g.sum()) == n for g in _groups(mask, m))  # exactly n, weights being nonzero
    assert torch.equal(mask, _reference(w, n, m))  # and the n largest of each group
    assert int((~mask).sum()) == w.numel() * (m - n) // m
    assert is_nm_sparse(w * mask, n, m) and not is_nm_sparse(w, n, m)


def test_conv_groups_run_along_input_channels_not_kernel_taps():
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # one group: channels 0..3 at tap 0
    w[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = nm_mask(w, 2, 4)
    assert mask[0, :, 0, 0].tolist() == [True, True, False, False]
    assert mask[0, :, 0, 1].tolist() == [False, False, True, True]


def test_ties_keep_the_earlier_entries():
    assert nm_mask(torch.ones(2, 8), 2, 4).int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]] * 2
    w = torch.tensor([[1.0, -3.0, 3.0, 3.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False]]
    # Among equal unprotected weights the later ones go first.
    assert nm_mask(torch.ones(1, 8), 2, 4, sparsity=0.25).int().tolist() == [[1] * 6 + [0] * 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_weights_give_the_mask_of_their_values(dtype):
    w = _weight((8, 32)).to(dtype)
    mask = nm_mask(w, 2, 4, sparsity=0.3)
    assert torch.equal(mask, nm_mask(w.float(), 2, 4, sparsity=0.3))
    assert is_nm_sparse(w * nm_mask(w), 2, 4)


def test_validation_counts_violating_groups():
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [0.0] * 4 + [1.0] * 4])
    assert nm_violations(w, 2, 4) == 2
    assert nm_violations(w, 3, 4) == 1
    assert is_nm_sparse(w[:, :4], 2, 4) and not is_nm_sparse(w, 3, 4)
    assert is_nm_sparse(torch.zeros(3, 8, 2, 2), 1, 8)


# ------------------------------------------------------------------------------ amounts


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
@pytest.mark.parametrize("amount", [0.0, 0.1, 0.25, 0.37, 0.49])
def test_intermediate_amounts_are_exact_and_contain_the_n_of_m_mask(n, m, amount):
    w = _weight((8, 32), seed=1)
    full = nm_mask(w, n, m)
    mask = nm_mask(w, n, m, sparsity=amount)
    assert int((~mask).sum()) == round(amount * w.numel())
    assert bool((mask | ~full).all())  # every entry of the exact N:M mask is still kept
    # What goes is the smallest |w| outside each group's top n.
    free = ~full
    pruned, kept_free = w.abs()[free & ~mask], w.abs()[free & mask]
    if pruned.numel() and kept_free.numel():
        assert float(pruned.max()) <= float(kept_free.min())


def test_sparsity_grows_with_amount_and_masks_nest():
    w = _weight((4, 16, 3, 3), seed=2)
    masks = [nm_mask(w, 2, 4, sparsity=a) for a in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    for a, b in itertools.pairwise(masks):
        assert bool((a | ~b).all())  # b is a subset of a
    assert torch.equal(masks[-1], nm_mask(w, 2, 4))


def test_gradual_schedule_converges_to_n_of_m_through_masks_completable_to_it():
    """Weights drift between steps (training); every mask still holds n per group."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 32, generator=g)
    current = torch.ones_like(w)
    for amount in (0.1, 0.2, 0.3, 0.4, 0.5):
        mask = NM().compute_mask(w * current, amount, current, Context())
        assert not bool((mask & (current == 0)).any())  # monotone: nothing revived
        assert int((~mask).sum()) == round(amount * w.numel())
        assert all(int(grp.sum()) >= 2 for grp in _groups(mask, 4))
        current = mask.float()
        w = w + 0.5 * torch.randn(w.shape, generator=g)
    assert all(int(grp.sum()) == 2 for grp in _groups(current.bool(), 4))


# ------------------------------------------------------------------------------ current


def test_already_pruned_entries_stay_pruned_and_count():
    w = _weight((4, 16), seed=4)
    current = torch.ones_like(w)
    current[:, ::4] = 0  # one entry of every group of 4 already pruned: 25%
    assert torch.equal(nm_mask(w, sparsity=0.2, current=current), current.bool())  # nothing new
    mask = nm_mask(w, sparsity=0.375, current=current)
    assert int((~mask).sum()) == round(0.375 * w.numel()) and not mask[:, ::4].any()
    full = nm_mask(w, current=current)
    assert all(int(grp.sum()) == 2 for grp in _groups(full, 4)) and not full[:, ::4].any()


def test_a_group_already_under_n_keeps_its_survivors_and_borrows_nothing():
    w = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0]])
    current = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # group 0: 1 survivor
    assert nm_mask(w, current=current).int().tolist() == [[0, 0, 0, 1, 0, 0, 1, 1]]
    # Of group 0's three pruned entries, the two in unprotected places count towards 3 of 8;
    # the third fills a protected place, so one more weight goes than 0.375 asks.
    assert nm_mask(w, sparsity=0.375, current=current).int().tolist() == [[0, 0, 0, 1, 0, 1, 1, 1]]


def test_monotone_false_sees_zeroed_entries_as_smallest():
    w = torch.tensor([[0.0, 0.0, 3.0, 2.0]])  # effective weight: two entries pruned before
    assert nm_mask(w).tolist() == [[False, False, True, True]]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("n", "m"), [(4, 4), (5, 4), (0, 4), (-1, 4), (2.0, 4), (True, 4)])
def test_bad_n_or_m_is_an_error_naming_the_allowed_ones(n, m):
    with pytest.raises(ValueError, match=re.escape(f"n={n!r}, m={m!r} are invalid; allowed: "
                                                   "integers with 1 <= n < m")):
        get_criterion("nm", n=n, m=m)


@pytest.mark.parametrize(("n", "m", "amount", "top"), [(2, 4, 0.6, "0.5"), (4, 8, 0.51, "0.5"),
                                                       (1, 4, 0.8, "0.75")])
def test_an_amount_above_one_minus_n_over_m_is_an_error(n, m, amount, top):
    with pytest.raises(ValueError, match=re.escape(f"sparsity={amount!r} is out of range for "
                                                   f"{n}:{m} masks; allowed: [0, {top}]")):
        nm_mask(torch.ones(2, 8), n, m, sparsity=amount)


@pytest.mark.parametrize("amount", [2 / 3, 1 - 1 / 3], ids=["fraction", "one_minus"])
def test_one_minus_n_over_m_as_floats_compute_it_is_accepted(amount):
    mask = nm_mask(torch.randn(3, 6), 1, 3, sparsity=amount)
    assert all(int(g.sum()) == 1 for g in _groups(mask, 3))


@pytest.mark.parametrize(("shape", "m", "inputs"), [((4, 6), 4, 6), ((4, 3, 3, 3), 4, 3),
                                                    ((4, 12), 8, 12)])
def test_an_input_dim_not_a_multiple_of_m_is_an_error_naming_shape_and_m(shape, m, inputs):
    msg = f"weight of shape {shape} has {inputs} inputs, not a multiple of m={m}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        nm_mask(torch.ones(shape), m // 2, m)
    with pytest.raises(ValueError, match=re.escape(msg)):
        is_nm_sparse(torch.ones(shape), m // 2, m)


# ------------------------------------------------------------------------------ Pruner


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16),
                         nn.ReLU(), nn.Linear(16, 4))


def test_pruner_step_nm_prunes_every_layer_to_two_of_four():
    model = _mlp()
    results = Pruner(model).step("nm", 0.5)
    assert [r.layer for r in results] == ["1", "3", "5"]
    for layer in (model[1], model[3], model[5]):
        assert is_nm_sparse(layer.weight, 2, 4) and sparsity(layer) == 0.5
    results = Pruner(_mlp()).step("nm", 0.5, n=4, m=8, layers=["1", "3"])
    assert [r.sparsity_after for r in results] == [0.5, 0.5]


def test_pruner_refuses_nm_amounts_too_high_global_scope_and_bad_shapes_changing_nothing(
    convnet_factory,
):
    model = _mlp()
    pruner = Pruner(model)
    with pytest.raises(ValueError, match=re.escape("allowed: [0, 0.5]")):
        pruner.check_step("nm", {"*": 0.5, "5": 0.75})
    with pytest.raises(ValueError, match="scope='global' needs a criterion with scores"):
        pruner.step("nm", 0.5, scope="global")
    assert all(get_mask(model[i]) is None for i in (1, 3, 5))
    conv = convnet_factory()
    with pytest.raises(ValueError, match=re.escape("layer 'conv1': N:M groups run along the "
                                                   "input dimension (dim 1), but weight of "
                                                   "shape (4, 1, 3, 3) has 1 inputs")):
        Pruner(conv).step("nm", 0.5)
    assert get_mask(conv.conv2) is None  # all or nothing
    Pruner(conv).step("nm", 0.5, layers=["conv2", "fc1"])
    assert is_nm_sparse(conv.conv2.weight) and is_nm_sparse(conv.fc1.weight)


@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam"])
def test_masked_training_keeps_the_two_of_four_pattern(opt_name):
    model = _mlp().train()
    params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
           if opt_name == "sgd_momentum" else torch.optim.Adam(params, lr=1e-2))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 4
    for _ in range(2):  # dense steps first: the optimizer holds state for every entry
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    pruner = Pruner(model)
    for amount in (0.25, 0.5):  # a gradual schedule, training in between
        pruner.step("nm", amount, optimizer=opt)
        before = model[1].weight.detach().clone()
        with masked_training(model, opt) as after_step:
            for _ in range(5):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                after_step()
        assert not torch.equal(model[1].weight.detach(), before)  # it trained
    for layer in (model[1], model[3], model[5]):
        mask = get_mask(layer)
        assert is_nm_sparse(layer.weight, 2, 4) and sparsity(layer) == 0.5
        assert torch.count_nonzero(layer.weight_orig[mask == 0]) == 0
        assert torch.count_nonzero(layer.weight_orig[mask != 0]) == mask.sum()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_mask_equals_the_cpu_mask(dtype):
    w = _weight((16, 64, 3, 3), seed=6).to(dtype)
    current = (torch.rand(w.shape, generator=torch.Generator().manual_seed(7)) > 0.1).float()
    for amount in (0.3, 0.5):
        cpu = nm_mask(w, sparsity=amount, current=current)
        gpu = nm_mask(w.cuda(), sparsity=amount, current=current.cuda())
        assert gpu.device.type == "cuda"
        assert torch.equal(cpu, gpu.cpu())


# ------------------------------------------------------------------------------ torch.ao


def _ao_mask(weight: torch.Tensor, **settings: object) -> torch.Tensor:
    """torch.ao.pruning.WeightNormSparsifier's mask of one Linear weight."""
    from torch.ao.pruning import WeightNormSparsifier

    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    model = nn.Sequential(layer)
    sparsifier = WeightNormSparsifier(**settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
        sparsifier.step()
    return model[0].parametrizations.weight[0].mask.bool()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_exact_n_of_m_equals_torch_ao_weight_norm_sparsifier(n, m):
    """torchao's ``apply_fake_sparsity`` setting: sparsity_level=1, blocks (1, m), m-n zeros."""
    w = _weight((12, 32), seed=8)
    ao = _ao_mask(w, sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n)
    assert torch.equal(nm_mask(w, n, m), ao)


def test_intermediate_amounts_differ_from_torch_ao_but_both_contain_two_of_four():
    """torch.ao's sparsity_level s makes the s share of weakest blocks 2:4 and keeps the rest
    dense; prunelab prunes the smallest unprotected weights wherever they are. Both prune the
    same number of weights (when s * n_blocks is whole) and keep the exact 2:4 mask."""
    w = _weight((12, 32), seed=9)
    full = nm_mask(w)
    ao = _ao_mask(w, sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=2)
    ours = nm_mask(w, sparsity=0.25)
    assert int((~ao).sum()) == int((~ours).sum()) == w.numel() // 4
    assert bool((ao | ~full).all()) and bool((ours | ~full).all())
    assert not torch.equal(ao, ours)


# ------------------------------------------------------------------------------ run configs


def _pipeline(schedule: list[dict]) -> HanPipeline:
    prune = {"method": "nm", "method_options": {"n": 4, "m": 8}, "dead_neurons": False,
             "schedule": schedule}
    return HanPipeline(build_mlp(), make_config(prune=prune), make_data())


def test_a_gradual_run_config_ends_four_of_eight():
    result = _pipeline([{"sparsity": 0.2, "epochs": 1}, {"sparsity": 0.5, "epochs": 1}]).run()
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(result.model, name)
        assert is_nm_sparse(layer.weight, 4, 8) and sparsity(layer) == 0.5, name


def test_a_schedule_above_one_minus_n_over_m_fails_before_any_training():
    with pytest.raises(ValueError, match=re.escape("prune.schedule[1]: sparsity=0.6 is out of "
                                                   "range for 4:8 masks; allowed: [0, 0.5]")):
        _pipeline([{"sparsity": 0.3, "epochs": 1}, {"sparsity": 0.6, "epochs": 1}])


def test_zhu_gupta_gradual_iteration_ends_exactly_four_of_eight():
    """The in-training cubic schedule (``gradual:``) with the N:M criterion: every pruning
    point keeps an N:M-completable mask and the last one is exactly 4:8."""
    result = _pipeline([{"sparsity": 0.5, "epochs": 4, "gradual": {"end": 0.5, "every": 1}}]
                       ).run()
    prunes = [e for e in result.events if e.kind == "prune"]
    assert len(prunes) > 3 and all(e.schedule == "gradual" for e in prunes)
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(result.model, name)
        assert is_nm_sparse(layer.weight, 4, 8) and sparsity(layer) == 0.5, name
