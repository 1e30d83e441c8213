"""Block magnitude masks: whole blocks, exact block counts, norms, Pruner use, torch.ao."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import make_config
from torch import nn

from prunelab.criteria import BlockMagnitude, Context, block_magnitude_mask, get_criterion
from prunelab.masks import get_mask, masked_training, sparsity
from prunelab.pruner import Pruner

pytestmark = pytest.mark.usefixtures("single_thread")


def _weight(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _blocks(mask: torch.Tensor, rows: int, cols: int) -> list[torch.Tensor]:
    """Every block of the [out, rest] matrix view, gathered by plain slicing."""
    mat = mask.reshape(mask.shape[0], -1)
    return [mat[i : i + rows, j : j + cols]
            for i in range(0, mat.shape[0], rows) for j in range(0, mat.shape[1], cols)]


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (2, 3)])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9])
def test_whole_blocks_are_kept_or_pruned_in_exact_counts(block, amount):
    w = _weight((8, 24))
    mask = block_magnitude_mask(w, amount, block=block)
    blocks = _blocks(mask, *block)
    assert all(bool(b.all()) or not bool(b.any()) for b in blocks)
    pruned = sum(not bool(b.any()) for b in blocks)
    assert pruned == round(amount * len(blocks))
    kept_norms = [float(torch.linalg.vector_norm(b)) for b, k in
                  zip(_blocks(w, *block), blocks, strict=True) if k.all()]
    gone_norms = [float(torch.linalg.vector_norm(b)) for b, k in
                  zip(_blocks(w, *block), blocks, strict=True) if not k.any()]
    if kept_norms and gone_norms:
        assert max(gone_norms) <= min(kept_norms)


def test_conv_weights_are_blocked_as_out_by_in_times_kernel():
    w = torch.zeros(2, 2, 1, 3)  # as a matrix 2 x 6: row o = [w[o,0,0,:], w[o,1,0,:]]
    w[0, 0, 0, 2] = 1.0
    w[0, 1, 0, 0] = 1.0  # matrix columns 2 and 3: one (1, 2) block spanning two channels
    mask = block_magnitude_mask(w, 5 / 6, block=(1, 2))  # keep 1 of 6 blocks
    assert mask.reshape(2, 6).int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]


def test_l1_and_l2_rank_blocks_differently():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0]])  # L1 4 vs 3, L2 2 vs 3
    assert block_magnitude_mask(w, 0.5, block=(1, 4)).int().tolist() == [[0] * 4 + [1] * 4]
    l1 = block_magnitude_mask(w, 0.5, block=(1, 4), norm="l1")
    assert l1.int().tolist() == [[1] * 4 + [0] * 4]


def test_ties_keep_the_earlier_blocks_in_row_major_order():
    mask = block_magnitude_mask(torch.ones(4, 4), 0.5, block=(2, 2))
    assert mask.int().tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_already_pruned_entries_stay_pruned_and_pruned_blocks_count():
    w = torch.tensor([[3.0, 9.0, 1.0, 1.0, 2.5, 2.5, 3.0, 3.0]])
    current = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])  # block 1 already gone
    # Scores by survivors: block 0 = 3 (not 9.49), block 2 = 3.54, block 3 = 4.24; one more
    # block goes, and the pruned 9 does not save block 0.
    mask = block_magnitude_mask(w, 0.5, block=(1, 2), current=current)
    assert mask.int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert torch.equal(block_magnitude_mask(w, 0.25, block=(1, 2), current=current),
                       current.bool())  # the target is met: nothing new, nothing revived


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights(dtype):
    w = _weight((8, 16)).to(dtype)
    assert torch.equal(block_magnitude_mask(w, 0.5, block=(2, 4)),
                       block_magnitude_mask(w.float(), 0.5, block=(2, 4)))


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("block", [(0, 4), (4,), (1, 2, 3), "44", (1.5, 2), (True, 4), 4])
def test_a_bad_block_is_an_error(block):
    with pytest.raises(ValueError, match=re.escape(f"block={block!r} is invalid; allowed: two "
                                                   "positive integers")):
        get_criterion("block_magnitude", block=block)


def test_a_bad_norm_or_amount_is_an_error():
    with pytest.raises(ValueError, match=re.escape("norm='l3' is unknown; allowed: ('l1', 'l2')")):
        BlockMagnitude(norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("sparsity=1.0 is out of range")):
        block_magnitude_mask(torch.ones(4, 4), 1.0)


def test_a_shape_that_does_not_tile_is_an_error_naming_it():
    with pytest.raises(ValueError, match=re.escape("weight of shape (4, 3, 3, 3) (as a matrix "
                                                   "4 x 27) does not tile into blocks of 2 x 4")):
        block_magnitude_mask(torch.ones(4, 3, 3, 3), 0.5, block=(2, 4))
    with pytest.raises(ValueError, match=re.escape("layer '2': weight of shape (10, 16)")):
        Pruner(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))).step(
            "block_magnitude", 0.5, block=(4, 4))


# ------------------------------------------------------------------------------ Pruner


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16),
                         nn.ReLU(), nn.Linear(16, 4))


def test_pruner_step_prunes_whole_blocks_and_reports_the_threshold():
    model = _mlp()
    results = Pruner(model).step("block_magnitude", 0.5, block=[4, 4])  # as a config gives it
    assert [r.sparsity_after for r in results] == [0.5, 0.5, 0.5]
    for layer, r in zip((model[1], model[3], model[5]), results, strict=True):
        blocks = _blocks(get_mask(layer), 4, 4)
        assert all(bool(b.all()) or not bool(b.any()) for b in blocks)
        kept = [float(torch.linalg.vector_norm(b)) for b, k in
                zip(_blocks(layer.weight.detach(), 4, 4), blocks, strict=True) if k.all()]
        assert r.threshold == pytest.approx(min(kept))


def test_global_scope_is_refused():
    with pytest.raises(ValueError, match=r"scope='global' needs a criterion with scores .*"
                                         r"'block_magnitude' has no scores"):
        Pruner(_mlp()).step("block_magnitude", 0.5, scope="global")


def test_masked_training_keeps_whole_blocks():
    model = _mlp().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 4
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    Pruner(model).step("block_magnitude", 0.75, block=(1, 4), optimizer=opt)
    with masked_training(model, opt) as after_step:
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            after_step()
    for layer in (model[1], model[3], model[5]):
        assert sparsity(layer) == 0.75
        assert all(bool(b.all()) or not bool(b.any())
                   for b in _blocks(layer.weight.detach() != 0, 1, 4))


# ------------------------------------------------------------------------------ torch.ao


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (2, 2)])
@pytest.mark.parametrize("level", [0.25, 0.5, 0.75])
def test_equals_torch_ao_weight_norm_sparsifier_with_whole_blocks(block, level):
    """WeightNormSparsifier with zeros_per_block = the block size ranks blocks by their mean
    square (the same order as the L2 norm) and prunes round(level * n_blocks) of them."""
    from torch.ao.pruning import WeightNormSparsifier

    w = _weight((16, 32), seed=2)
    layer = nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    model = nn.Sequential(layer)
    sparsifier = WeightNormSparsifier(sparsity_level=level, sparse_block_shape=block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
        sparsifier.step()
    ao = model[0].parametrizations.weight[0].mask.bool()
    assert torch.equal(block_magnitude_mask(w, level, block=block), ao)


def test_criterion_is_usable_directly():
    w = _weight((4, 8))
    mask = BlockMagnitude(block=(2, 2)).compute_mask(w, 0.5, None, Context(layer="x"))
    assert int(mask.sum()) == 16


def test_run_config_gives_the_block_as_a_list():
    prune = {"method": "block_magnitude", "method_options": {"block": [4, 4], "norm": "l1"},
             "schedule": [{"sparsity": 0.5, "epochs": 1}]}
    assert make_config(prune=prune).prune.criterion() == BlockMagnitude(block=(4, 4), norm="l1")
    prune["method_options"] = {"block": [4, 0]}
    with pytest.raises(ValueError, match=re.escape("block=[4, 0] is invalid")):
        make_config(prune=prune)
