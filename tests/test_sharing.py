"""Weight sharing (prunelab.sharing): k-means, exact sharing through training, masks, state."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.checkpoint import load_tensors, save_tensors
from prunelab.data import TensorBatches, TensorSplits
from prunelab.masks import effective_tensor, get_mask, raw_parameter, set_mask
from prunelab.pruner import prune_model
from prunelab.sharing import (
    WeightSharing,
    cluster_sums,
    kmeans_1d,
    resolve_bits,
    share_weights,
)
from prunelab.training import Trainer, make_optimizer

# ----------------------------------------------------------------------------- helpers


def _values(n: int = 400, seed: int = 0) -> torch.Tensor:
    """A float32 sample like a layer's weights: a mixture of three normals."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n // 2, generator=g) * 0.05,
             torch.randn(n // 4, generator=g) * 0.02 + 0.15,
             torch.randn(n - n // 2 - n // 4, generator=g) * 0.03 - 0.2]
    return torch.cat(parts)[torch.randperm(n, generator=g)]


def _lloyd_numpy(values: np.ndarray, c: np.ndarray, max_iter: int):
    """Textbook Lloyd on all pairwise distances (ties to the lower centroid)."""
    v = values.astype(np.float64)
    c = c.astype(np.float64).copy()
    previous, iterations, converged = None, 0, False
    while True:
        labels = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
        if previous is not None and (labels == previous).all():
            converged = True
            break
        if iterations == max_iter:
            break
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = v[labels == j].mean()
        previous, iterations = labels, iterations + 1
    return c, np.argmin(np.abs(v[:, None] - c[None, :]), axis=1), iterations, converged


def _masked_mlp(factory: Callable[..., nn.Sequential], amount: float = 0.6) -> nn.Sequential:
    model = factory(dropout=0.0)
    prune_model(model, "magnitude", amount)
    return model


def _distinct_nonzero(t: torch.Tensor) -> int:
    t = t.detach()
    return torch.unique(t[t != 0]).numel()


def _assert_shared(model: nn.Module, sharing: WeightSharing) -> None:
    """weight == codebook[index] exactly, pruned entries zero, at most 2**bits values."""
    modules = dict(model.named_modules())
    books, idx = sharing.codebooks(), sharing.indices()
    for row in sharing.report.layers:
        module = modules[row.layer]
        w = raw_parameter(module, "weight").detach()
        i, c = idx[row.layer], books[row.layer]
        table = torch.cat([c.new_zeros(1), c])  # an empty layer has an empty codebook
        expect = table[i + 1]
        assert torch.equal(w, expect), row.layer
        assert _distinct_nonzero(w) <= 2**row.bits
        mask = get_mask(module, "weight")
        if mask is not None:
            assert bool((w[mask == 0] == 0).all()), row.layer
            assert bool((effective_tensor(module)[mask == 0] == 0).all()), row.layer
            assert bool((i[mask == 0] == -1).all()), row.layer


def _batches(data: TensorSplits, batch_size: int = 16) -> TensorBatches:
    return TensorBatches(data.x_train, data.y_train, batch_size=batch_size)


def _grads_without_sharing(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Raw gradients of each layer's trainable weight, on a hook-free copy."""
    twin = copy.deepcopy(model)  # deepcopy drops tensor hooks
    twin.zero_grad()
    F.cross_entropy(twin(x), y).backward()
    return {n: raw_parameter(m, "weight").grad.clone()
            for n, m in twin.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


# ----------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_numpy_lloyd(init: str, seed: int) -> None:
    v = _values(seed=seed)
    start = kmeans_1d(v, 8, init=init, max_iter=0, seed=seed).centroids
    got = kmeans_1d(v, 8, init=init, seed=seed)
    c, labels, iterations, converged = _lloyd_numpy(v.numpy(), start.numpy(), 300)
    np.testing.assert_allclose(got.centroids.numpy(), c, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(got.labels.numpy(), labels)
    assert (got.iterations, got.converged) == (iterations, converged)
    assert got.iterations > 1 and got.converged


def test_kmeans_result_is_a_lloyd_fixed_point() -> None:
    v = _values(1000, seed=3).double()
    r = kmeans_1d(v, 16)
    assert r.converged and r.centroids.numel() == 16
    nearest = torch.argmin((v[:, None] - r.centroids[None, :]).abs(), dim=1)
    assert torch.equal(nearest, r.labels)
    for j in range(16):
        members = v[r.labels == j]
        assert int(r.counts[j]) == members.numel()
        if members.numel():
            assert float(r.centroids[j]) == pytest.approx(float(members.mean()), rel=1e-13)
    assert bool((r.centroids[1:] > r.centroids[:-1]).all())


def test_kmeans_reduces_the_error_of_its_start() -> None:
    v = _values(500, seed=4).double()
    start, end = kmeans_1d(v, 6, max_iter=0), kmeans_1d(v, 6)

    def sse(r):
        return float(((v - r.centroids[r.labels]) ** 2).sum())

    assert sse(end) < 0.9 * sse(start)


def test_linear_init_spaces_centroids_over_min_max() -> None:
    v = torch.tensor([0.5, -1.0, 3.0, 0.25, 2.0, 1.5])
    assert kmeans_1d(v, 3, max_iter=0).centroids.tolist() == [-1.0, 1.0, 3.0]
    w = torch.linspace(-1.0, 3.0, 101)
    assert kmeans_1d(w, 5, max_iter=0).centroids.tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0]
    odd = torch.tensor([-0.3, 0.1, 0.7, 0.2, 0.05])
    c = kmeans_1d(odd, 4, max_iter=0).centroids
    lo, hi = float(odd.double().min()), float(odd.double().max())
    assert c[0] == lo and c[-1] == hi  # the ends are the extreme weights, exactly
    np.testing.assert_allclose(c.numpy(), np.linspace(lo, hi, 4), rtol=0, atol=1e-16)


def test_density_init_takes_equally_spaced_quantiles() -> None:
    v = torch.arange(10.0)[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    assert kmeans_1d(v, 5, init="density", max_iter=0).centroids.tolist() == [1, 3, 5, 7, 9]


def test_random_init_is_seeded_and_picks_data_values() -> None:
    v = _values(200)
    a = kmeans_1d(v, 6, init="random", max_iter=0, seed=7).centroids
    b = kmeans_1d(v, 6, init="random", max_iter=0, seed=7).centroids
    c = kmeans_1d(v, 6, init="random", max_iter=0, seed=8).centroids
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(torch.isin(a, v.double()).all())


def test_kmeans_keeps_few_distinct_values() -> None:
    r = kmeans_1d(torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0]), 4)
    assert r.centroids.tolist() == [1.0, 3.0] and r.counts.tolist() == [3, 2]
    assert r.labels.tolist() == [1, 1, 0, 0, 0] and r.iterations == 0
    assert kmeans_1d(torch.full((7,), 0.25), 2).centroids.tolist() == [0.25]
    empty = kmeans_1d(torch.zeros(0), 4)
    assert empty.centroids.numel() == 0 and empty.labels.numel() == 0


def test_kmeans_is_order_independent_bit_for_bit() -> None:
    v = _values(3000, seed=5)
    perm = torch.randperm(v.numel(), generator=torch.Generator().manual_seed(1))
    a, b = kmeans_1d(v, 32), kmeans_1d(v[perm], 32)
    assert torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.labels[perm], b.labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"clusters": 0}, "allowed: an integer >= 1"),
     ({"clusters": True}, "allowed: an integer >= 1"),
     ({"init": "kmeans++"}, "allowed: linear, density, random"),
     ({"max_iter": -1}, "allowed: an integer >= 0")],
)
def test_kmeans_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"clusters": 4, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        kmeans_1d(_values(20), args.pop("clusters"), **args)
    assert "\n" not in str(err.value)


def test_kmeans_rejects_nonfinite_and_integer_values() -> None:
    with pytest.raises(ValueError, match="finite values only"):
        kmeans_1d(torch.tensor([0.0, float("nan"), 1.0]), 2)
    with pytest.raises(TypeError, match="floating-point"):
        kmeans_1d(torch.arange(5), 2)


def test_cluster_sums_are_exact_and_order_independent() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5000, generator=g) * torch.logspace(-6, 2, 5000)
    labels = torch.randint(0, 7, (5000,), generator=g)
    perm = torch.randperm(5000, generator=g)
    a = cluster_sums(v, labels, 7)
    assert torch.equal(a, cluster_sums(v[perm], labels[perm], 7))
    assert torch.equal(a, cluster_sums(v, labels.int(), 7))
    ref = torch.zeros(7, dtype=torch.float64).index_add_(0, labels, v.double())
    np.testing.assert_allclose(a.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    bad = v.clone()
    bad[3] = float("inf")
    assert bool(cluster_sums(bad, labels, 7).isnan().all())


# ----------------------------------------------------------------------------- bits


def _layers() -> dict[str, nn.Module]:
    return {"conv1": nn.Conv2d(1, 2, 3), "conv2": nn.Conv2d(2, 2, 3),
            "fc1": nn.Linear(4, 4), "fc2": nn.Linear(4, 2)}


def test_resolve_bits_defaults_kinds_and_patterns() -> None:
    layers = _layers()
    assert resolve_bits(layers, None) == {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    assert resolve_bits(layers, 3) == dict.fromkeys(layers, 3)
    assert resolve_bits(layers, {"fc": 4, "conv": 6, "conv2": 7}) == {
        "conv1": 6, "conv2": 7, "fc1": 4, "fc2": 4}
    # patterns in order: the later one wins; a kind key applies before any pattern
    assert resolve_bits(layers, {"fc*": 2, "fc2": 3, "fc": 9}) == {
        "conv1": 8, "conv2": 8, "fc1": 2, "fc2": 3}


@pytest.mark.parametrize("bits", [0, 17, -1, True, 5.0, "5", {"fc": 0}, {"fc1": 17}, {"": 3}])
def test_bad_bits_is_a_one_line_value_error(bits: object) -> None:
    with pytest.raises(ValueError, match="allowed") as err:
        WeightSharing(bits)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    if not isinstance(bits, dict) or bits != {"": 3}:
        assert "1..16" in str(err.value)


def test_unknown_patterns_name_the_layers(mlp_factory) -> None:
    model = mlp_factory()
    with pytest.raises(ValueError, match=r"matches no selected layer.*fc1, fc2, fc3") as err:
        WeightSharing({"conv*": 4}).attach(model)
    assert "\n" not in str(err.value) and "fc, conv" in str(err.value)
    with pytest.raises(ValueError, match="matches no layer; prunable layers are: fc1"):
        WeightSharing(layers="fc9").attach(model)
    with pytest.raises(ValueError, match="allowed: linear, density, random"):
        WeightSharing(init="kmeans++")
    with pytest.raises(ValueError, match="allowed: an integer >= 0"):
        WeightSharing(max_iter=-3)


# ----------------------------------------------------------------------------- sharing


def _wide_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(8, 16, 3), flatten=nn.Flatten(), fc=nn.Linear(16 * 4, 40)))


def test_default_bits_share_conv_in_256_and_fc_in_32_values() -> None:
    model = _wide_model()
    report = share_weights(model)
    assert [(r.layer, r.kind, r.bits) for r in report.layers] == [
        ("conv", "conv", 8), ("fc", "fc", 5)]
    assert _distinct_nonzero(model.conv.weight) == report["conv"].clusters
    assert _distinct_nonzero(model.fc.weight) == report["fc"].clusters
    assert 200 < report["conv"].clusters <= 256 and 28 < report["fc"].clusters <= 32
    assert report["fc"].surviving == report["fc"].total == 64 * 40


def test_masked_layer_clusters_only_unmasked_entries(mlp_factory) -> None:
    model = _masked_mlp(mlp_factory)
    before = {n: effective_tensor(m).detach().clone() for n, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    sharing = WeightSharing({"fc": 3})
    report = sharing.attach(model)
    _assert_shared(model, sharing)
    for row in report.layers:
        module = getattr(model, row.layer)
        mask = module.weight_mask
        assert row.surviving == int(mask.sum()) and row.total == mask.numel()
        assert bool((sharing.indices()[row.layer] >= 0).eq(mask != 0).all())
        err = (before[row.layer] - module.weight.detach()).abs()[mask != 0].max()
        assert row.max_error == pytest.approx(float(err), abs=0) and row.max_error > 0
        # linear init leaves the centroids in the pruned gap around zero empty (paper)
        assert 2 <= row.clusters == _distinct_nonzero(module.weight) <= 8


def test_zero_entries_of_an_unmasked_layer_are_not_a_cluster(data) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with torch.no_grad():
        model[1].weight[:, ::3] = 0.0
    zeros = model[1].weight.detach() == 0
    sharing = WeightSharing(2)
    sharing.attach(model)
    assert bool((sharing.indices()["1"][zeros] == -1).all())
    opt = make_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9, weight_decay=1e-3)
    Trainer(model, opt, callbacks=[sharing]).fit(_batches(data), epochs=2)
    assert bool((model[1].weight.detach()[zeros] == 0).all())
    assert _distinct_nonzero(model[1].weight) <= 4
    _assert_shared(model, sharing)


def test_fewer_surviving_weights_than_clusters_are_kept_exactly() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    mask = torch.zeros(4, 8)
    mask.view(-1)[torch.tensor([1, 5, 9, 20, 31])] = 1
    set_mask(layer, "weight", mask)
    before = layer.weight.detach().clone()
    row = share_weights(layer, 5).layers[0]
    assert torch.equal(layer.weight.detach(), before)
    assert (row.clusters, row.surviving, row.max_error, row.iterations) == (5, 5, 0.0, 0)


def test_empty_and_constant_layers(data) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(64, 8),
                                      relu=nn.ReLU(), fc2=nn.Linear(8, 8), fc3=nn.Linear(8, 4)))
    set_mask(model.fc2, "weight", torch.zeros(8, 8))  # empty: every entry pruned
    with torch.no_grad():
        model.fc3.weight.fill_(0.125)  # constant
    sharing = WeightSharing(3)
    report = sharing.attach(model)
    assert (report["fc2"].clusters, report["fc2"].surviving, report["fc2"].compression) == (
        0, 0, 1.0)
    assert (report["fc3"].clusters, report["fc3"].max_error) == (1, 0.0)
    assert sharing.codebooks()["fc2"].numel() == 0
    opt = make_optimizer(model.parameters(), "adam", lr=1e-2, weight_decay=1e-4)
    Trainer(model, opt, callbacks=[sharing]).fit(_batches(data), epochs=1)
    assert bool((model.fc2.weight_orig == 0).all())
    w3 = model.fc3.weight.detach()
    assert torch.unique(w3).numel() == 1 and float(w3[0, 0]) != 0.125  # moved, as one
    _assert_shared(model, sharing)
    assert "fc2" in report.table()


@pytest.mark.parametrize(
    "opt_args",
    [{"name": "sgd", "lr": 0.005, "momentum": 0.9, "weight_decay": 5e-4},
     {"name": "sgd", "lr": 0.005, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
     {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4},
     {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-2}],
    ids=["sgd-momentum-wd", "nesterov", "adam", "adamw"],
)
def test_trainer_keeps_sharing_and_masks_exact(mlp_factory, data, opt_args: dict) -> None:
    model = _masked_mlp(mlp_factory)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if get_mask(m)
             is not None}
    sharing = WeightSharing({"fc": 3, "fc3": 2})
    sharing.attach(model)
    start = sharing.codebooks()
    args = dict(opt_args)
    opt = make_optimizer(model.parameters(), args.pop("name"), **args)
    Trainer(model, opt, callbacks=[sharing]).fit(_batches(data), epochs=2)
    _assert_shared(model, sharing)
    for name, mask in masks.items():
        assert torch.equal(getattr(model, name).weight_mask, mask)
    for name, book in sharing.codebooks().items():
        assert book.numel() == start[name].numel()
        assert not torch.equal(book, start[name]), name  # the centroids were fine-tuned
    assert _distinct_nonzero(model.fc3.weight) <= 4


@pytest.mark.parametrize(
    "make_opt",
    [lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
     lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-3),
     lambda p: torch.optim.AdamW(p, lr=1e-3, amsgrad=True),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5)],
    ids=["sgd", "nesterov", "adam", "adamw-amsgrad", "rmsprop"],
)
def test_gradient_hook_alone_keeps_members_equal(mlp_factory, data, make_opt) -> None:
    """A plain loop, no snap: equal gradients and an elementwise optimizer suffice."""
    model = _masked_mlp(mlp_factory)
    sharing = WeightSharing(3)
    sharing.attach(model)
    index = sharing.indices()
    opt = make_opt(model.parameters())
    for xb, yb in _batches(data):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    for name, idx in index.items():
        module = getattr(model, name)
        w = module.weight_orig.detach()
        assert bool((w[module.weight_mask == 0] == 0).all())
        for c in range(int(idx.max()) + 1):
            assert torch.unique(w[idx == c]).numel() == 1, (name, c)
        assert _distinct_nonzero(w) <= 8


def test_sgd_step_moves_each_centroid_by_its_summed_gradient(mlp_factory, data) -> None:
    model = _masked_mlp(mlp_factory)
    sharing = WeightSharing(3)
    sharing.attach(model)
    xb, yb = data.x_train[:32], data.y_train[:32]
    raw = _grads_without_sharing(model, xb, yb)
    before, index = sharing.codebooks(), sharing.indices()
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    for name, idx in index.items():
        g = raw[name].double()
        sums = torch.stack([g[idx == c].sum() for c in range(before[name].numel())])
        grad = model.get_submodule(name).weight_orig.grad
        assert bool((grad[idx == -1] == 0).all())
        np.testing.assert_allclose(grad[idx >= 0].double().numpy(),
                                   sums[idx[idx >= 0]].numpy(), rtol=1e-6, atol=1e-9)
    opt.step()
    sharing.snap()
    for name, book in sharing.codebooks().items():
        g, idx = raw[name].double(), index[name]
        sums = torch.stack([g[idx == c].sum() for c in range(book.numel())])
        expect = before[name].double() - lr * sums
        assert bool((book.double() != before[name].double()).any())
        np.testing.assert_allclose(book.double().numpy(), expect.numpy(), rtol=0, atol=1e-6)
    _assert_shared(model, sharing)


def test_gradient_accumulation_adds_the_summed_gradients(mlp_factory, data) -> None:
    model = _masked_mlp(mlp_factory)
    sharing = WeightSharing(2)
    sharing.attach(model)
    (x1, x2), (y1, y2) = data.x_train[:64].chunk(2), data.y_train[:64].chunk(2)
    g1, g2 = _grads_without_sharing(model, x1, y1), _grads_without_sharing(model, x2, y2)
    model.zero_grad()
    F.cross_entropy(model(x1), y1).backward()
    F.cross_entropy(model(x2), y2).backward()
    for name, idx in sharing.indices().items():
        g = g1[name].double() + g2[name].double()
        sums = torch.stack([g[idx == c].sum() for c in range(int(idx.max()) + 1)])
        got = model.get_submodule(name).weight_orig.grad
        np.testing.assert_allclose(got[idx >= 0].double().numpy(),
                                   sums[idx[idx >= 0]].numpy(), rtol=1e-5, atol=1e-8)


def test_detach_restores_plain_training(mlp_factory, data) -> None:
    model = _masked_mlp(mlp_factory)
    sharing = WeightSharing(2)
    sharing.attach(model)
    sharing.detach()
    assert not sharing.attached and model.fc1.weight_orig._backward_hooks in (None, {})
    xb, yb = data.x_train[:32], data.y_train[:32]
    raw = _grads_without_sharing(model, xb, yb)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    for name, g in raw.items():
        assert torch.equal(model.get_submodule(name).weight_orig.grad, g)
    opt.step()
    assert _distinct_nonzero(model.fc1.weight) > 4
    with pytest.raises(RuntimeError, match="not attached"):
        sharing.snap()
    assert sharing.codebooks()["fc1"].numel() == 4  # as of the last snap


def test_state_round_trips_through_a_safetensors_file(mlp_factory, data, tmp_path) -> None:
    fresh = _masked_mlp(mlp_factory)
    model = copy.deepcopy(fresh)
    sharing = WeightSharing({"fc": 3}, init="density")
    sharing.attach(model)
    opt = make_optimizer(model.parameters(), "sgd", lr=0.005, momentum=0.9)
    Trainer(model, opt, callbacks=[sharing]).fit(_batches(data), epochs=1)
    state = sharing.state_dict()
    json.dumps(state["meta"])
    assert state["tensors"]["fc1.index"].dtype == torch.int32
    save_tensors(tmp_path / "sharing.safetensors", state["tensors"], state["meta"])
    tensors, meta = load_tensors(tmp_path / "sharing.safetensors")

    restored = WeightSharing()  # the saved state decides layers and bits
    restored.load_state_dict({"meta": meta, "tensors": tensors})
    report = restored.attach(fresh)  # no k-means: the saved clusters
    assert all(r.iterations == 0 for r in report.layers)
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(fresh.get_submodule(name).weight_orig,
                           model.get_submodule(name).weight_orig)
        assert torch.equal(restored.codebooks()[name], sharing.codebooks()[name])
        assert torch.equal(restored.indices()[name], sharing.indices()[name])
    assert restored.report["fc1"].bits == 3

    other = copy.deepcopy(_masked_mlp(mlp_factory, amount=0.6))
    attached = WeightSharing(1)
    attached.attach(other)
    attached.load_state_dict(state)  # attached: applied now
    assert torch.equal(other.fc2.weight_orig, model.fc2.weight_orig)
    _assert_shared(other, attached)


def test_bad_states_are_rejected_and_leave_the_sharing_intact(mlp_factory) -> None:
    model = _masked_mlp(mlp_factory)
    sharing = WeightSharing(2)
    sharing.attach(model)
    state = sharing.state_dict()
    with pytest.raises(ValueError, match=r"allowed: 'prunelab\.weight_sharing' version 1"):
        sharing.load_state_dict({"meta": {**state["meta"], "version": 9},
                                 "tensors": state["tensors"]})
    wrong = {**state["tensors"], "fc1.index": state["tensors"]["fc1.index"][:, :3]}
    with pytest.raises(ValueError, match="shape"):
        sharing.load_state_dict({"meta": state["meta"], "tensors": wrong})
    meta = copy.deepcopy(state["meta"])
    del meta["layers"]["fc3"]
    with pytest.raises(ValueError, match="selection is"):
        sharing.load_state_dict({"meta": meta, "tensors": state["tensors"]})
    assert sharing.attached
    model.zero_grad()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    g, idx = model.fc1.weight_orig.grad, sharing.indices()["fc1"]
    assert torch.unique(g[idx == 0]).numel() == 1  # the hook still acts


def test_attaching_a_shared_model_reproduces_its_clusters(mlp_factory) -> None:
    model = _masked_mlp(mlp_factory)
    first = share_weights(model, 4)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    again = share_weights(model, 4)
    assert [r.clusters for r in again.layers] == [r.clusters for r in first.layers]
    assert all(r.max_error == 0.0 for r in again.layers)
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n])


def test_sharing_and_fine_tuning_are_deterministic(mlp_factory, data) -> None:
    runs = []
    for _ in range(2):
        model = _masked_mlp(mlp_factory)
        sharing = WeightSharing(3, init="random", seed=3)
        sharing.attach(model)
        opt = make_optimizer(model.parameters(), "adam", lr=1e-3)
        Trainer(model, opt, callbacks=[sharing]).fit(_batches(data), epochs=1,
                                                     seed_of_epoch=lambda e: e)
        runs.append((sharing.codebooks(), sharing.indices()))
    for name in runs[0][0]:
        assert torch.equal(runs[0][0][name], runs[1][0][name])
        assert torch.equal(runs[0][1][name], runs[1][1][name])


def test_a_mask_changed_after_attach_removes_members(mlp_factory, data) -> None:
    model = _masked_mlp(mlp_factory, amount=0.3)
    sharing = WeightSharing(3)
    sharing.attach(model)
    opt = make_optimizer(model.parameters(), "sgd", lr=0.005, momentum=0.9)
    trainer = Trainer(model, opt, callbacks=[sharing])
    trainer.train_epoch(_batches(data))
    prune_model(model, "magnitude", 0.7, optimizer=opt)  # gradual pruning, mid-fine-tuning
    trainer.train_epoch(_batches(data))
    _assert_shared(model, sharing)
    assert sharing.report is not None
    assert int((sharing.indices()["fc1"] >= 0).sum()) == int(model.fc1.weight_mask.sum())


def test_attach_clears_the_optimizer_state_of_shared_weights(mlp_factory, data) -> None:
    model = _masked_mlp(mlp_factory)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    F.cross_entropy(model(data.x_train[:16]), data.y_train[:16]).backward()
    opt.step()
    assert model.fc1.weight_orig in opt.state
    sharing = WeightSharing(3)
    sharing.attach(model, opt)
    assert model.fc1.weight_orig not in opt.state and model.fc1.bias in opt.state
    index = sharing.indices()["fc1"]
    for xb, yb in _batches(data):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    w = model.fc1.weight_orig.detach()
    assert all(torch.unique(w[index == c]).numel() == 1 for c in range(int(index.max()) + 1))


def test_one_sharer_per_weight(mlp_factory) -> None:
    model = _masked_mlp(mlp_factory)
    first = WeightSharing(3)
    first.attach(model)
    with pytest.raises(RuntimeError, match="already attached"):
        first.attach(model)
    with pytest.raises(ValueError, match="'fc1' is already shared"):
        WeightSharing(3).attach(model)
    first.detach()
    WeightSharing(3).attach(model)


def test_share_weights_leaves_no_hooks(mlp_factory) -> None:
    model = _masked_mlp(mlp_factory)
    report = share_weights(model, {"fc1": 2})
    assert [r.bits for r in report.layers] == [2, 5, 5]
    assert all(p._backward_hooks in (None, {}) for p in model.parameters())
    assert _distinct_nonzero(model.fc1.weight) <= 4


def test_report_table_and_dict(mlp_factory) -> None:
    report = share_weights(_masked_mlp(mlp_factory), 3)
    lines = report.table().splitlines()
    assert lines[0].split()[:4] == ["layer", "kind", "bits", "clusters"]
    assert [ln.split()[0] for ln in lines[1:]] == ["fc1", "fc2", "fc3"]
    assert lines[1].split()[2:4] == ["3", str(report["fc1"].clusters)]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["layers"][0]["layer"] == "fc1" and data["compression"] > 1
    with pytest.raises(KeyError, match="fc1, fc2, fc3"):
        report["fc9"]


def test_a_gradient_overflow_stays_visible() -> None:
    layer = nn.Linear(4, 2)
    sharing = WeightSharing(1)
    sharing.attach(layer)
    scale = torch.tensor([[1.0, 1.0, float("inf"), 1.0]])
    (layer.weight * scale).sum().backward()
    assert bool(layer.weight.grad.isnan().all())  # what GradScaler detects to skip the step


def test_tied_weights_are_shared_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    model[1].weight = model[0].weight
    report = share_weights(model, 2)
    assert [r.layer for r in report.layers] == ["0"]
    assert _distinct_nonzero(model[1].weight) <= 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_bits(mlp_factory, data) -> None:
    v = _values(100_000, seed=9)
    a, b = kmeans_1d(v, 256), kmeans_1d(v.cuda(), 256)
    assert torch.equal(a.centroids, b.centroids.cpu()) and torch.equal(a.labels, b.labels.cpu())
    models = [_masked_mlp(mlp_factory), _masked_mlp(mlp_factory).cuda()]
    books = []
    for model in models:
        sharing = WeightSharing(3)
        sharing.attach(model)
        dev = next(model.parameters()).device
        model.zero_grad()
        F.cross_entropy(model(data.x_train[:32].to(dev)), data.y_train[:32].to(dev)).backward()
        books.append((sharing.codebooks(), {n: m.weight_orig.grad.cpu() for n, m in
                                            model.named_modules() if get_mask(m) is not None}))
        _assert_shared(model, sharing)
    for name in books[0][0]:
        assert torch.equal(books[0][0][name], books[1][0][name].cpu())
        members = books[0][1][name] != 0
        np.testing.assert_allclose(books[0][1][name][members].numpy(),
                                   books[1][1][name][members].numpy(), rtol=1e-5, atol=1e-7)
