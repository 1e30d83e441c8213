"""Masks that hold everywhere: tensors read outside their module's forward, tied weights,
exact zero gradients, masks changing during training, torch.nn.utils.prune interop, compile."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab.masks import (
    effective_tensor,
    get_mask,
    is_masked,
    iter_masks,
    load_pruned_state_dict,
    make_permanent,
    masked_training,
    raw_parameter,
    set_mask,
    sparsity,
    sync_optimizer,
    tie_masks,
)

pytestmark = pytest.mark.usefixtures("single_thread")

D_MODEL = 16


def _half_mask(t: torch.Tensor, seed: int) -> torch.Tensor:
    """A 0/1 mask pruning exactly half of the entries, seeded."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(t.numel(), generator=g)
    mask = torch.ones(t.numel())
    mask[order[: t.numel() // 2]] = 0
    return mask.view(t.shape)


def _prune_all(pairs: list[tuple[nn.Module, str]]) -> None:
    for i, (module, name) in enumerate(pairs):
        set_mask(module, name, _half_mask(raw_parameter(module, name), seed=i))


class AttentionNet(nn.Module):
    """A bare nn.MultiheadAttention (reads ``out_proj.weight`` itself) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D_MODEL, 2, batch_first=True)
        self.head = nn.Linear(D_MODEL, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out.mean(dim=1))

    def pruned(self) -> list[tuple[nn.Module, str]]:
        return [(self.attn, "in_proj_weight"), (self.attn.out_proj, "weight")]


class EncoderNet(nn.Module):
    """One nn.TransformerEncoderLayer and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            D_MODEL, 2, 2 * D_MODEL, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(D_MODEL, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(dim=1))

    def pruned(self) -> list[tuple[nn.Module, str]]:
        lay = self.layer
        return [(lay.self_attn, "in_proj_weight"), (lay.self_attn.out_proj, "weight"),
                (lay.linear1, "weight"), (lay.linear2, "weight")]


def _plain_loop() -> nullcontext[Callable[[], None]]:
    """What ``masked_training`` yields, for a plain loop: an ``after_step`` doing nothing."""
    return nullcontext(lambda: None)


def _build(kind: str) -> AttentionNet | EncoderNet:
    torch.manual_seed(0)
    model = AttentionNet() if kind == "mha" else EncoderNet()
    _prune_all(model.pruned())
    return model


def _seq(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, D_MODEL, generator=g), torch.arange(n) % 4


def _assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Bit-equal outputs in training mode (with grad) and in eval mode without grad."""
    assert torch.equal(a(x), b(x))
    a.eval()
    b.eval()
    with torch.no_grad():  # the transformer's fused inference path
        assert torch.equal(a(x), b(x))
    a.train()
    b.train()


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("kind", ["mha", "encoder"])
def test_attention_trains_in_a_plain_loop_and_round_trips(kind):
    model = _build(kind)
    pairs = model.pruned()
    x, y = _seq()
    start = [raw_parameter(m, n).detach().clone() for m, n in pairs]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for module, name in pairs:
            grad, mask = raw_parameter(module, name).grad, get_mask(module, name)
            assert grad is not None, f"{name} of {type(module).__name__} got no gradient"
            assert torch.count_nonzero(grad[mask == 0]) == 0
            assert torch.count_nonzero(grad[mask != 0]) > 0
        opt.step()
    for (module, name), before in zip(pairs, start, strict=True):
        orig, mask = raw_parameter(module, name).detach(), get_mask(module, name)
        assert (orig != before)[mask != 0].all(), "every kept entry moves under Adam"
        assert torch.count_nonzero(orig[mask == 0]) == 0
        assert torch.count_nonzero(effective_tensor(module, name).detach()[mask == 0]) == 0
        assert sparsity(module, name) == 0.5

    # The dense twin whose weights are the effective weights computes bit for bit the same.
    twin = make_permanent(copy.deepcopy(model))
    assert not torch_prune.is_pruned(twin) and torch_prune.is_pruned(model)
    _assert_same_outputs(model, twin, x)
    for dtype in (torch.float64, torch.float16, torch.float32):  # float16 then back
        model.to(dtype), twin.to(dtype)
        for module, name in pairs:
            assert get_mask(module, name).dtype == dtype
            assert effective_tensor(module, name).dtype == dtype
        _assert_same_outputs(model, twin, x.to(dtype))
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch_prune.is_pruned(clone)
        assert torch.equal(clone(x), expected)
        assert clone.head.weight is not model.head.weight
    fresh = EncoderNet() if kind == "encoder" else AttentionNet()
    load_pruned_state_dict(fresh, model.state_dict())
    assert torch.equal(fresh(x), expected)
    assert list(fresh.state_dict()) == list(model.state_dict())


def test_out_proj_of_attention_follows_its_mask_at_every_forward():
    """The old failure: MHA reads out_proj.weight directly, so a pre-hook never refreshes it."""
    model = _build("mha")
    x, _ = _seq()
    out_proj = model.attn.out_proj
    with torch.no_grad():
        out_proj.weight_orig.add_(0.5)  # as an optimizer step does, in place
    values = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), D_MODEL, 2,
        model.attn.in_proj_weight_orig * model.attn.in_proj_weight_mask, model.attn.in_proj_bias,
        None, None, False, 0.0, out_proj.weight_orig * out_proj.weight_mask, out_proj.bias,
        need_weights=False)[0].transpose(0, 1)
    torch.testing.assert_close(model(x), model.head(values.mean(dim=1)))
    set_mask(out_proj, "weight", torch.zeros(D_MODEL, D_MODEL))  # prune everything
    expected = model.head(out_proj.bias.expand(x.shape[0], D_MODEL))
    torch.testing.assert_close(model(x), expected)


def test_torch_remove_on_attention_in_proj():
    model = _build("encoder")
    x, _ = _seq()
    expected = model(x)
    attn = model.layer.self_attn
    order = list(attn._parameters)
    torch_prune.remove(attn, "in_proj_weight")
    assert type(attn) is nn.MultiheadAttention
    assert isinstance(attn.in_proj_weight, nn.Parameter)
    assert torch.equal(model(x), expected)
    assert sorted(attn._parameters) == sorted(n.removesuffix("_orig") for n in order)


def test_masked_class_keeps_name_and_type_checks():
    model = _build("encoder")
    lin = model.layer.linear1
    assert type(lin).__name__ == "Linear" and isinstance(lin, nn.Linear)
    assert type(lin) is not nn.Linear
    assert repr(lin) == "Linear(in_features=16, out_features=32, bias=True)"
    assert type(model.layer.linear2) is type(lin)  # one class per (class, names)
    make_permanent(model)
    assert type(lin) is nn.Linear and type(model.layer.self_attn) is nn.MultiheadAttention


def test_assigning_the_effective_tensor_is_ignored_and_non_tensors_rejected():
    layer = nn.Linear(3, 2)
    set_mask(layer, "weight", torch.tensor([[1.0, 0, 1], [0, 1, 1]]))
    expected = layer.weight.detach().clone()
    layer.weight = torch.full((2, 3), 7.0)  # what a pruning hook does at every forward
    assert torch.equal(layer.weight, expected)
    with pytest.raises(TypeError, match="weight_orig"):
        layer.weight = 3.0
    with pytest.raises(KeyError, match="already exists"):  # as for torch.nn.utils.prune
        layer.weight = nn.Parameter(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- tied weights


class TiedLM(nn.Module):
    """Embedding and output head sharing one Parameter."""

    def __init__(self, vocab: int = 12, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(tokens))))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 12, (8, 5), generator=g), torch.randint(0, 12, (8 * 5,), generator=g)


def _lm_loss(model: TiedLM, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(tokens).flatten(0, 1), target)


def test_tie_masks_masks_every_holder_with_the_same_buffer():
    model = TiedLM()
    shared = model.emb.weight
    set_mask(model.emb, "weight", _half_mask(shared, 0))
    assert tie_masks(model) == ["head.weight"]
    assert tie_masks(model) == []  # idempotent
    mask = model.emb.weight_mask
    assert model.head.weight_mask is mask and model.head.weight_orig is shared
    tokens, target = _tokens()
    hidden = torch.tanh(model.mix(F.embedding(tokens, shared * mask)))
    torch.testing.assert_close(model(tokens), F.linear(hidden, shared * mask), rtol=0, atol=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert sum(p is shared for p in opt.param_groups[0]["params"]) == 1
    start = shared.detach().clone()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        _lm_loss(model, tokens, target).backward()
        assert torch.count_nonzero(shared.grad[mask == 0]) == 0
        opt.step()
    assert torch.count_nonzero(shared.detach()[mask == 0]) == 0
    assert (shared.detach() != start)[mask != 0].any()
    # A later mask change on either holder applies to both.
    set_mask(model.head, "weight", _half_mask(shared, 1))
    assert model.emb.weight_mask is model.head.weight_mask
    assert torch.equal(model.emb.weight, model.head.weight)


def test_without_tie_masks_the_head_revives_pruned_entries():
    """Control for the test above: the untied holder's gradient is dense."""
    model = TiedLM()
    set_mask(model.emb, "weight", _half_mask(model.emb.weight, 0))
    shared, mask = model.emb.weight_orig, model.emb.weight_mask
    tokens, target = _tokens()
    _lm_loss(model, tokens, target).backward()
    assert torch.count_nonzero(shared.grad[mask == 0]) > 0


def test_tie_masks_merges_existing_masks_and_survives_dtype_and_state_dict():
    model = TiedLM()
    first, second = _half_mask(model.emb.weight, 0), _half_mask(model.emb.weight, 1)
    set_mask(model.emb, "weight", first)
    set_mask(model.head, "weight", second)  # two separate masks on one parameter
    assert model.emb.weight_mask is not model.head.weight_mask
    assert tie_masks(model) == ["head.weight"]
    assert model.emb.weight_mask is model.head.weight_mask
    assert torch.equal(model.emb.weight_mask, first * second)
    tokens, _ = _tokens()
    expected = model(tokens)
    model.to(torch.float64)  # Module._apply replaces each module's buffer separately
    assert model.emb.weight_mask is not model.head.weight_mask
    assert tie_masks(model) == ["head.weight"] and tie_masks(model) == []
    model.to(torch.float32)
    tie_masks(model)
    torch.testing.assert_close(model(tokens), expected)
    fresh = TiedLM()
    load_pruned_state_dict(fresh, model.state_dict())
    assert fresh.emb.weight_mask is fresh.head.weight_mask
    assert torch.equal(fresh(tokens), model(tokens))


def test_tied_weights_inside_masked_training():
    model = TiedLM()
    set_mask(model.emb, "weight", _half_mask(model.emb.weight, 0))
    tie_masks(model)
    shared, mask = model.emb.weight_orig, model.emb.weight_mask
    tokens, target = _tokens()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with masked_training(model, opt) as after_step:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            _lm_loss(model, tokens, target).backward()
            assert torch.count_nonzero(shared.grad[mask == 0]) == 0
            opt.step()
            after_step()
            assert torch.count_nonzero(shared.detach()[mask == 0]) == 0


# ----------------------------------------------------------------------------- exact gradients


def _clip_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                inside: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx = masked_training(model, opt) if inside else None
    if ctx is not None:
        ctx.__enter__()
    try:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return norm, grads


CONV_PRUNED = (("conv1", "weight"), ("conv2", "weight"), ("fc1", "weight"), ("fc2", "weight"),
               ("fc1", "bias"))


@pytest.mark.parametrize("inside", [False, True], ids=["plain_loop", "masked_training"])
def test_pruned_gradients_are_exactly_zero_and_clip_norm_is_the_kept_norm(
    convnet_factory, x8, inside
):
    model = convnet_factory().train()
    _prune_all([(getattr(model, m), n) for m, n in CONV_PRUNED])
    model.bn1.eval()  # the same normalisation in both models
    dense = make_permanent(copy.deepcopy(model))
    y = torch.arange(x8.shape[0]) % 4
    norm, grads = _clip_norms(model, x8, y, inside)
    for m, n in CONV_PRUNED:
        mask = get_mask(getattr(model, m), n)
        grad = grads[f"{m}.{n}_orig"]
        assert torch.count_nonzero(grad[mask == 0]) == 0, (m, n)
        assert torch.count_nonzero(grad[mask != 0]) > 0, (m, n)
    # The dense model's gradient restricted to the kept entries has the same norm...
    dense.zero_grad(set_to_none=True)
    F.cross_entropy(dense(x8), y).backward()
    full = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in dense.parameters()]))
    with torch.no_grad():
        for m, n in CONV_PRUNED:
            getattr(dense, m)._parameters[n].grad.mul_(get_mask(getattr(model, m), n))
    kept = torch.nn.utils.clip_grad_norm_(dense.parameters(), max_norm=1e-3)
    assert torch.equal(norm, kept)
    assert not torch.allclose(norm, full)  # ...which is not the dense norm


def test_masked_training_keeps_kept_weights_bit_identical_to_the_plain_loop(
    convnet_factory, x8
):
    """The fast path changes no numerics of the kept weights (pruned ones are zero anyway)."""
    runs = []
    for inside in (False, True):
        model = convnet_factory().train()
        _prune_all([(model.conv2, "weight"), (model.fc1, "weight")])
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        y = torch.arange(x8.shape[0]) % 4
        with masked_training(model, opt) if inside else _plain_loop() as after_step:
            for _ in range(4):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x8), y).backward()
                opt.step()
                after_step()
        runs.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


# ----------------------------------------------------------------------------- masks changing


@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam"])
def test_mask_changes_in_the_middle_of_masked_training(mlp_factory, x8, opt_name):
    model = mlp_factory(dropout=0.0).train()
    set_mask(model.fc1, "weight", _half_mask(model.fc1.weight, 0))
    y = torch.arange(x8.shape[0]) % 4
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
           if opt_name == "sgd_momentum" else torch.optim.Adam(model.parameters(), lr=1e-2))
    state_keys = ("momentum_buffer",) if opt_name == "sgd_momentum" else ("exp_avg", "exp_avg_sq")
    fc1, fc2 = model.fc1, model.fc2
    fc2_param = fc2.weight
    revived = {}
    with masked_training(model, opt) as after_step:
        for step in range(8):
            if step == 3:  # a callback between steps: tighten fc1, mask fc2 for the first time
                set_mask(fc1, "weight", _half_mask(fc1.weight_orig, 1))
                set_mask(fc2, "weight", _half_mask(fc2_param, 2))
                assert fc2.weight_orig is fc2_param and is_masked(fc2)
                # the next forward uses the new masks
                hidden = model.relu1(F.linear(model.flatten(x8),
                                              fc1.weight_orig * fc1.weight_mask, fc1.bias))
                ref = model.fc3(model.relu2(F.linear(hidden, fc2.weight_orig * fc2.weight_mask,
                                                     fc2.bias)))
                torch.testing.assert_close(model(x8), ref, rtol=0, atol=0)
            if step == 5:  # the documented call clears the state of the newly pruned entries
                for layer in (fc1, fc2):
                    state = opt.state[layer.weight_orig]
                    assert all(torch.count_nonzero(state[k][layer.weight_mask == 0]) > 0
                               for k in state_keys)
                assert sync_optimizer(opt, model) == 2 * len(state_keys)
                for layer in (fc1, fc2):
                    state = opt.state[layer.weight_orig]
                    for k in state_keys:
                        assert torch.count_nonzero(state[k][layer.weight_mask == 0]) == 0
                        assert torch.count_nonzero(state[k][layer.weight_mask != 0]) > 0
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x8), y).backward()
            for layer in ([fc1] if step < 3 else [fc1, fc2]):
                grad, mask = layer.weight_orig.grad, layer.weight_mask
                assert grad is not None, f"step {step}: no gradient"
                assert torch.count_nonzero(grad[mask == 0]) == 0
                assert torch.count_nonzero(grad[mask != 0]) > 0
            opt.step()
            if step >= 3:
                revived[step] = int(torch.count_nonzero(
                    fc2.weight_orig.detach()[fc2.weight_mask == 0]))
            after_step()
            for _, module, name, mask in iter_masks(model):
                orig = module._parameters[f"{name}_orig"].detach()
                assert torch.count_nonzero(orig[mask == 0]) == 0, f"step {step}"
    # before sync_optimizer the stale state moved pruned entries (after_step zeroed them);
    # after it, nothing moves them
    assert revived[3] > 0 and revived[4] > 0
    assert revived[5] == revived[6] == revived[7] == 0
    assert type(fc2).__name__ == "Linear" and fc2.weight is not fc2.weight_orig
    # after the block the property is orig * mask again and gradients stay masked
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x8), y).backward()
    assert torch.count_nonzero(fc2.weight_orig.grad[fc2.weight_mask == 0]) == 0


def test_copies_made_inside_masked_training_are_ordinary_pruned_models(mlp, x8):
    set_mask(mlp.fc1, "weight", _half_mask(mlp.fc1.weight, 0))
    with masked_training(mlp):
        assert mlp.fc1.weight is mlp.fc1.weight_orig  # the fast path: no product
        clone = copy.deepcopy(mlp)
        unpickled = pickle.loads(pickle.dumps(mlp))
    for other in (clone, unpickled):
        with torch.no_grad():
            other.fc1.weight_orig.add_(1.0)  # the copy must still multiply by its mask
        assert torch.count_nonzero(other.fc1.weight[other.fc1.weight_mask == 0]) == 0
        other(x8).sum().backward()
        assert torch.count_nonzero(other.fc1.weight_orig.grad[other.fc1.weight_mask == 0]) == 0
    assert mlp.fc1.weight is not mlp.fc1.weight_orig
    assert not mlp.fc1.weight_orig._post_accumulate_grad_hooks


def test_make_permanent_inside_masked_training(mlp, x8):
    set_mask(mlp.fc1, "weight", _half_mask(mlp.fc1.weight, 0))
    set_mask(mlp.fc2, "weight", _half_mask(mlp.fc2.weight, 1))
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with masked_training(mlp, opt) as after_step:
        make_permanent(mlp, ["fc1"])
        mlp(x8).sum().backward()
        opt.step()
        after_step()
    assert [n for n, *_ in iter_masks(mlp)] == ["fc2"]
    assert list(mlp.fc1._parameters) == ["weight", "bias"]


# ----------------------------------------------------------------------------- torch interop


def test_torch_container_is_taken_over_trained_and_reported(mlp, x8):
    layer = mlp.fc1
    torch_prune.l1_unstructured(layer, "weight", amount=0.2)
    torch_prune.random_unstructured(layer, "weight", amount=0.2)
    hook = next(iter(layer._forward_pre_hooks.values()))
    assert isinstance(hook, torch_prune.PruningContainer)
    torch_mask = layer.weight_mask.clone()
    assert [n for n, *_ in iter_masks(mlp)] == ["fc1"] and get_mask(layer) is layer.weight_mask
    set_mask(layer, "weight", _half_mask(layer.weight_orig, 5))  # prunelab prunes further
    mask = layer.weight_mask
    assert (mask[torch_mask == 0] == 0).all() and sparsity(layer) > 0.5
    hook = next(iter(layer._forward_pre_hooks.values()))
    assert hook.replaced is not None and isinstance(hook.replaced, torch_prune.PruningContainer)
    assert torch_prune.is_pruned(mlp)
    assert "weight" not in layer.__dict__
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    y = torch.arange(x8.shape[0]) % 4
    for inside in (False, True):
        with masked_training(mlp, opt) if inside else _plain_loop() as after_step:
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(mlp(x8), y).backward()
                assert torch.count_nonzero(layer.weight_orig.grad[mask == 0]) == 0
                opt.step()
                after_step()
    assert torch.count_nonzero(layer.weight_orig.detach()[mask == 0]) == 0
    expected = mlp(x8)
    torch_prune.remove(layer, "weight")
    assert torch.equal(mlp(x8), expected)


def test_masked_training_takes_over_a_torch_container_directly(mlp, x8):
    torch_prune.l1_unstructured(mlp.fc3, "weight", amount=0.25)
    torch_prune.l1_unstructured(mlp.fc3, "weight", amount=0.25)
    mask = mlp.fc3.weight_mask
    assert torch.count_nonzero(mlp.fc3.weight_orig.detach()[mask == 0]) > 0  # torch's way
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    y = torch.arange(x8.shape[0]) % 4
    with masked_training(mlp, opt) as after_step:
        assert torch.count_nonzero(mlp.fc3.weight_orig.detach()[mask == 0]) == 0
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(mlp(x8), y).backward()
            assert torch.count_nonzero(mlp.fc3.weight_orig.grad[mask == 0]) == 0
            opt.step()
            after_step()
    assert [n for n, *_ in iter_masks(mlp)] == ["fc3"] and mlp.fc3.weight_mask is mask
    assert torch.equal(mlp.fc3.weight, mlp.fc3.weight_orig * mask)


def test_bad_inputs_name_the_value():
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="list"):
        set_mask(layer, "weight", [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"'gain'.*'bias', 'weight'"):
        set_mask(layer, "gain", torch.ones(2))
    sd = {"gain_orig": torch.ones(2), "gain_mask": torch.ones(2)}
    with pytest.raises(ValueError, match="no parameter 'gain'"):
        load_pruned_state_dict(nn.Linear(2, 2), sd)


def test_torch_prunes_a_prunelab_mask_further_and_training_follows(mlp, x8):
    set_mask(mlp.fc2, "weight", _half_mask(mlp.fc2.weight, 0))
    old = mlp.fc2.weight_mask
    torch_prune.l1_unstructured(mlp.fc2, "weight", amount=0.5)
    new = mlp.fc2.weight_mask
    assert new is not old and int((new == 0).sum()) == int((old == 0).sum()) + 128
    # torch leaves weight_orig nonzero at its new zeros; the property multiplies anyway
    assert torch.count_nonzero(mlp.fc2.weight_orig.detach()[new == 0]) > 0
    assert torch.count_nonzero(mlp.fc2.weight.detach()[new == 0]) == 0
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    y = torch.arange(x8.shape[0]) % 4
    with masked_training(mlp, opt) as after_step:
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(mlp(x8), y).backward()
            assert torch.count_nonzero(mlp.fc2.weight_orig.grad[new == 0]) == 0
            opt.step()
            after_step()
            assert torch.count_nonzero(mlp.fc2.weight_orig.detach()[new == 0]) == 0
    torch_prune.l1_unstructured(mlp.fc2, "weight", amount=0.1)  # again, after the block
    assert torch_prune.is_pruned(mlp)
    expected = mlp(x8)
    make_permanent(mlp)
    assert torch.equal(mlp(x8), expected)
    assert list(mlp.fc2._parameters) == ["weight", "bias"]


# ----------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["convnet", "encoder"])
def test_compiled_pruned_models_match_eager(convnet_factory, x8, kind):
    torch._dynamo.reset()
    if kind == "convnet":
        model, x = convnet_factory().train(), x8
        _prune_all([(model.conv1, "weight"), (model.conv2, "weight"), (model.fc1, "weight")])
    else:
        model, x = _build("encoder").train(), _seq()[0]
    y = torch.arange(x.shape[0]) % 4
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (eager, model)]

    def steps(after: tuple[Callable[[], None], Callable[[], None]], n: int) -> None:
        for _ in range(n):
            losses = []
            for fn, opt, after_step in zip((eager, compiled), opts, after, strict=True):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(fn(x), y)
                loss.backward()
                opt.step()
                after_step()
                losses.append(loss.detach())
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)

    steps((lambda: None, lambda: None), 2)  # a plain loop: the property orig * mask
    with masked_training(eager, opts[0]) as a, masked_training(model, opts[1]) as b:
        steps((a, b), 2)
        for m in (eager, model):  # a mask change between steps reaches the compiled graph
            target = m.fc1 if kind == "convnet" else m.layer.linear2
            set_mask(target, "weight", _half_mask(raw_parameter(target, "weight"), 9))
        steps((a, b), 2)
    for _, module, name, mask in iter_masks(model):
        assert torch.count_nonzero(module._parameters[f"{name}_orig"].detach()[mask == 0]) == 0
    model.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
