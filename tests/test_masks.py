"""Mask mechanics: the torch.nn.utils.prune convention, exactness under optimizers, round trips."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab.masks import (
    effective_tensor,
    get_mask,
    iter_masks,
    load_pruned_state_dict,
    make_permanent,
    mask_state,
    set_mask,
    sparsity,
    sync_optimizer,
)
from prunelab.pruner import Pruner

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS = ("fc1", "fc2", "fc3")


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> None:
    model.train()
    y = torch.arange(x.shape[0]) % 4
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def _pruned_entries(module: nn.Module) -> torch.Tensor:
    return get_mask(module) == 0


def test_prunelab_pruned_model_is_pruned_for_torch(mlp):
    assert not torch_prune.is_pruned(mlp)
    Pruner(mlp).step("magnitude", 0.5)
    assert torch_prune.is_pruned(mlp)
    for name in LAYERS:
        layer = getattr(mlp, name)
        assert "weight_orig" in layer._parameters and "weight_mask" in layer._buffers


def test_parameter_object_is_kept(mlp):
    before = {name: getattr(mlp, name).weight for name in LAYERS}
    Pruner(mlp).step("magnitude", 0.5)
    for name in LAYERS:
        assert getattr(mlp, name).weight_orig is before[name]


def test_optimizer_created_before_pruning_keeps_training(mlp, x8):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    Pruner(mlp).step("magnitude", 0.5)
    kept_before = mlp.fc1.weight_orig.detach().clone()
    _train_steps(mlp, opt, x8, 3)
    kept = get_mask(mlp.fc1) != 0
    changed = (mlp.fc1.weight_orig.detach() != kept_before)[kept]
    assert changed.any(), "the optimizer no longer updates the weights the model uses"
    # `weight` is `weight_orig * weight_mask` at every access, not only after a forward pass
    assert torch.equal(mlp.fc1.weight, mlp.fc1.weight_orig * get_mask(mlp.fc1))


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_under_optimizer(mlp, x8, opt_name):
    opt = OPTIMIZERS[opt_name](mlp.parameters())
    _train_steps(mlp, opt, x8, 3)  # the optimizer holds dense state for every entry now
    Pruner(mlp).step("magnitude", 0.7, optimizer=opt)
    start = {n: getattr(mlp, n).weight_orig.detach().clone() for n in LAYERS}
    _train_steps(mlp, opt, x8, 55)
    for name in LAYERS:
        layer = getattr(mlp, name)
        pruned = _pruned_entries(layer)
        assert int(pruned.sum()) == round(0.7 * pruned.numel())
        assert torch.count_nonzero(layer.weight_orig.detach()[pruned]) == 0
        assert torch.count_nonzero(effective_tensor(layer).detach()[pruned]) == 0
        assert torch.count_nonzero(layer.weight.detach()[pruned]) == 0
        assert (layer.weight_orig.detach() != start[name])[~pruned].any()


def test_without_optimizer_sync_momentum_would_revive_orig(mlp, x8):
    """Control for the test above: the stale momentum is what sync_optimizer removes."""
    opt = torch.optim.SGD(mlp.parameters(), lr=0.05, momentum=0.9)
    _train_steps(mlp, opt, x8, 3)
    Pruner(mlp).step("magnitude", 0.7)  # no optimizer given: its momentum is stale
    _train_steps(mlp, opt, x8, 2)
    assert torch.count_nonzero(mlp.fc1.weight_orig.detach()[_pruned_entries(mlp.fc1)]) > 0
    assert torch.count_nonzero(mlp.fc1.weight.detach()[_pruned_entries(mlp.fc1)]) == 0


def test_sync_optimizer_zeros_momentum_at_pruned_entries(mlp, x8):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.05, momentum=0.9)
    _train_steps(mlp, opt, x8, 3)
    Pruner(mlp).step("magnitude", 0.6)
    buf = opt.state[mlp.fc1.weight_orig]["momentum_buffer"]
    pruned = _pruned_entries(mlp.fc1)
    assert torch.count_nonzero(buf[pruned]) > 0
    assert sync_optimizer(opt, mlp) == len(LAYERS)
    assert torch.count_nonzero(buf[pruned]) == 0
    assert torch.count_nonzero(buf[~pruned]) > 0


def test_sync_optimizer_zeros_adam_state(mlp, x8):
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2, amsgrad=True)
    _train_steps(mlp, opt, x8, 3)
    Pruner(mlp).step("magnitude", 0.6, optimizer=opt)
    state = opt.state[mlp.fc2.weight_orig]
    pruned = _pruned_entries(mlp.fc2)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert torch.count_nonzero(state[key][pruned]) == 0, key


def test_grad_of_orig_is_zero_at_pruned_entries(mlp, x8):
    Pruner(mlp).step("magnitude", 0.5)
    mlp(x8).square().sum().backward()
    for name in LAYERS:
        layer = getattr(mlp, name)
        grad = layer.weight_orig.grad
        pruned = _pruned_entries(layer)
        assert torch.count_nonzero(grad[pruned]) == 0
        assert torch.count_nonzero(grad[~pruned]) > 0


def test_torch_remove_keeps_output(mlp, x8):
    Pruner(mlp).step("magnitude", 0.6)
    expected = mlp(x8)
    for name in LAYERS:
        torch_prune.remove(getattr(mlp, name), "weight")
    assert not torch_prune.is_pruned(mlp)
    assert isinstance(mlp.fc1.weight, nn.Parameter)
    assert torch.equal(mlp(x8), expected)
    assert sparsity(mlp.fc1) == pytest.approx(0.6, abs=1e-3)


def test_make_permanent_keeps_output(mlp, x8):
    Pruner(mlp).step("magnitude", 0.6)
    expected = mlp(x8)
    make_permanent(mlp)
    assert not torch_prune.is_pruned(mlp)
    assert list(iter_masks(mlp)) == []
    assert torch.equal(mlp(x8), expected)


def test_make_permanent_selected_modules_only(mlp):
    Pruner(mlp).step("magnitude", 0.6)
    make_permanent(mlp, ["fc2"])
    assert [name for name, *_ in iter_masks(mlp)] == ["fc1", "fc3"]


def test_state_dict_round_trip_into_unpruned_model(mlp, mlp_factory, x8):
    Pruner(mlp).step("magnitude", 0.6)
    fresh = mlp_factory(seed=99).eval()
    assert not torch_prune.is_pruned(fresh)
    load_pruned_state_dict(fresh, mlp.state_dict())
    assert torch_prune.is_pruned(fresh)
    assert torch.equal(fresh(x8), mlp(x8))
    ours, theirs = mask_state(mlp), mask_state(fresh)
    assert sorted(ours) == sorted(theirs) == [f"{n}.weight_mask" for n in LAYERS]
    for key in ours:
        assert torch.equal(ours[key], theirs[key])


def test_load_pruned_state_dict_rejects_unknown_module(mlp):
    Pruner(mlp).step("magnitude", 0.5)
    sd = dict(mlp.state_dict())
    sd["nowhere.weight_mask"] = sd.pop("fc1.weight_mask")
    with pytest.raises(ValueError, match="nowhere"):
        load_pruned_state_dict(copy.deepcopy(mlp), sd)


def test_deepcopy_after_forward_with_grad(mlp, x8):
    Pruner(mlp).step("magnitude", 0.5)
    mlp(x8).sum().backward()  # (torch's pre-hook would leave a non-leaf `weight` attribute)
    clone = copy.deepcopy(mlp)
    assert torch.equal(clone(x8), mlp(x8))
    assert clone.fc1.weight_mask is not mlp.fc1.weight_mask
    assert torch.equal(clone.fc1.weight_mask, mlp.fc1.weight_mask)


def test_pickle_round_trip(mlp, x8):
    Pruner(mlp).step("magnitude", 0.5)
    mlp(x8).sum().backward()
    clone = pickle.loads(pickle.dumps(mlp))
    assert torch_prune.is_pruned(clone)
    assert torch.equal(clone(x8), mlp(x8))
    assert torch.equal(clone.fc2.weight_mask, mlp.fc2.weight_mask)


def test_to_cpu_keeps_masks(mlp, x8):
    Pruner(mlp).step("magnitude", 0.5)
    expected, mask = mlp(x8), mlp.fc1.weight_mask.clone()
    moved = mlp.to("cpu")
    assert torch.equal(moved.fc1.weight_mask, mask)
    assert torch.equal(moved(x8), expected)


def test_dtype_move_keeps_masks(mlp, x8):
    Pruner(mlp).step("magnitude", 0.5)
    expected = mlp(x8)
    masks = {n: getattr(mlp, n).weight_mask.clone() for n in LAYERS}
    mlp.to(torch.float64)
    for name in LAYERS:
        layer = getattr(mlp, name)
        assert layer.weight_mask.dtype == torch.float64
        assert torch.equal(layer.weight_mask, masks[name].double())
    out = mlp(x8.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), expected, rtol=1e-5, atol=1e-6)
    for name in LAYERS:
        layer = getattr(mlp, name)
        assert layer.weight.dtype == torch.float64
        assert torch.count_nonzero(layer.weight[masks[name] == 0]) == 0


def test_second_looser_prune_never_revives(mlp):
    pruner = Pruner(mlp)
    pruner.step("magnitude", 0.7)
    first = {n: getattr(mlp, n).weight_mask.clone() for n in LAYERS}
    pruner.step("magnitude", 0.3)
    pruner.step("std", 0.0)
    for name in LAYERS:
        assert torch.equal(getattr(mlp, name).weight_mask, first[name])


def test_monotone_false_revives(mlp, x8):
    pruner = Pruner(mlp)
    pruner.step("magnitude", 0.7)
    first = mlp.fc1.weight_mask.clone()
    results = pruner.step("magnitude", 0.3, monotone=False)
    mask = mlp.fc1.weight_mask
    assert int((mask == 0).sum()) == round(0.3 * mask.numel())
    revived = (first == 0) & (mask != 0)
    assert revived.any()
    # Revived entries restart from zero, so the effective sparsity is unchanged for now...
    assert results[0].nonzero_after == results[0].nonzero_before
    assert torch.count_nonzero(mlp.fc1.weight_orig.detach()[revived]) == 0
    # ...and training grows them again.
    _train_steps(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), x8, 2)
    assert torch.count_nonzero(mlp.fc1.weight.detach()[revived]) > 0


def test_set_mask_monotone_false_replaces_the_mask():
    layer = nn.Linear(2, 2)
    set_mask(layer, "weight", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    set_mask(layer, "weight", torch.tensor([[0.0, 1.0], [1.0, 1.0]]), monotone=False)
    assert layer.weight_mask.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    set_mask(layer, "weight", torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert layer.weight_mask.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_set_mask_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        set_mask(nn.Linear(2, 2), "weight", torch.ones(3, 3))


def test_torch_pruned_model_is_taken_over_by_pruner(mlp, x8):
    torch_prune.l1_unstructured(mlp.fc1, "weight", amount=0.3)
    old_pruned = _pruned_entries(mlp.fc1).clone()
    # torch does not zero `weight_orig` at pruned entries
    assert torch.count_nonzero(mlp.fc1.weight_orig.detach()[old_pruned]) > 0
    results = Pruner(mlp).step("magnitude", 0.6)
    pruned = _pruned_entries(mlp.fc1)
    assert results[0].nonzero_before == mlp.fc1.weight.numel() - int(old_pruned.sum())
    assert sparsity(mlp.fc1) == pytest.approx(0.6, abs=1e-3) and sparsity(mlp.fc1) > 0.3
    assert pruned[old_pruned].all()
    assert torch.count_nonzero(mlp.fc1.weight_orig.detach()[pruned]) == 0
    out = mlp(x8)
    assert torch.isfinite(out).all()


def test_prunelab_pruned_model_pruned_further_by_torch(mlp, x8):
    pruner = Pruner(mlp)
    pruner.step("magnitude", 0.5)
    old_pruned = _pruned_entries(mlp.fc2).clone()
    torch_prune.l1_unstructured(mlp.fc2, "weight", amount=0.3)  # 30% of the remaining
    pruned = _pruned_entries(mlp.fc2)
    assert pruned[old_pruned].all()
    assert int(pruned.sum()) == int(old_pruned.sum()) + round(0.3 * int((~old_pruned).sum()))
    out = mlp(x8)
    manual = mlp.fc3(
        mlp.relu2(
            F.linear(
                mlp.relu1(mlp.fc1(mlp.flatten(x8))),
                mlp.fc2.weight_orig * pruned.logical_not(),
                mlp.fc2.bias,
            )
        )
    )
    torch.testing.assert_close(out, manual)
    out.sum().backward()
    copy.deepcopy(mlp)  # the torch container's assignment of `weight` must not break deepcopy
    pruner.step("magnitude", 0.8)
    assert sparsity(mlp.fc2) == pytest.approx(0.8, abs=1e-3)
    assert _pruned_entries(mlp.fc2)[pruned].all()


def _param_names(model: nn.Module) -> list[str]:
    return [n.removesuffix("_orig") for n, _ in model.named_parameters()]


def test_parameter_order_does_not_depend_on_mask_history(mlp, mlp_factory):
    """Optimizer state dicts are positional: the order must survive pruning and restoring."""
    dense_order = _param_names(mlp)
    set_mask(mlp.fc2, "weight", torch.ones(16, 32))
    set_mask(mlp.fc2, "bias", torch.ones(16))
    set_mask(mlp.fc1, "bias", torch.ones(32))  # bias first, then weight
    set_mask(mlp.fc1, "weight", torch.ones(32, 64))
    assert _param_names(mlp) == dense_order
    restored = mlp_factory()
    load_pruned_state_dict(restored, dict(sorted(mlp.state_dict().items())))  # as safetensors
    assert _param_names(restored) == dense_order
