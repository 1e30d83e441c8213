"""Tests for prunelab.runtime: SparseLinear kernel and the compile_sparse runtime."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from prunelab.runtime import (
    PackedConv2d,
    PackedLinear,
    SparseLinear,
    SparseModel,
    compile_sparse,
    csr_bytes,
    dense_weight_bytes,
    make_pruning_permanent,
    measure_us,
    native,
)

ATOL = 1e-5
SPARSE = (SparseLinear, PackedLinear, PackedConv2d)
FAST = {"repeats": 3, "warmup": 1}


def _masked_weight(out_f: int, in_f: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(out_f, in_f).uniform_(-1 / in_f**0.5, 1 / in_f**0.5, generator=g)
    return w * (torch.rand(out_f, in_f, generator=g) < density)


def _mask_(module: nn.Module, density: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(module.weight.shape, generator=g) < density).float()
    prune.custom_from_mask(module, "weight", mask)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    for i, (idx, d) in enumerate([(1, 0.08), (3, 0.09), (5, 0.26)]):
        _mask_(net[idx], d, seed + i)
    return net


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )
    for i, (idx, d) in enumerate([(0, 0.66), (2, 0.12), (5, 0.08), (7, 0.19)]):
        _mask_(net[idx], d, seed + i)
    return net


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("density", [0.0, 0.04, 0.3, 1.0])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sparse_linear_matches_f_linear(density: float, batch: int, with_bias: bool) -> None:
    w = _masked_weight(120, 250, density, seed=int(density * 100) + batch)
    b = torch.randn(120) if with_bias else None
    layer = SparseLinear(w, b)
    x = torch.randn(batch, 250)
    y = layer(x)
    ref = F.linear(x, w, b)
    assert y.shape == ref.shape == (batch, 120)
    assert _max_err(y, ref) <= ATOL
    assert layer.nnz == int(torch.count_nonzero(w))
    if density == 0.0:
        expected = b.expand(batch, -1) if b is not None else torch.zeros(batch, 120)
        assert torch.equal(y, expected)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_sparse_linear_index_dtypes_and_shapes(index_dtype: torch.dtype) -> None:
    w = _masked_weight(33, 70, 0.1, seed=3)
    b = torch.randn(33)
    layer = SparseLinear(w, b, index_dtype=index_dtype)
    assert layer.crow_indices.dtype == layer.col_indices.dtype == index_dtype
    assert layer.csr().crow_indices().dtype == index_dtype
    x1 = torch.randn(70)
    assert layer(x1).shape == (33,)
    assert _max_err(layer(x1), F.linear(x1, w, b)) <= ATOL
    x3 = torch.randn(4, 5, 70)
    assert layer(x3).shape == (4, 5, 33)
    assert _max_err(layer(x3), F.linear(x3, w, b)) <= ATOL
    assert torch.equal(layer.to_dense(), w)
    with pytest.raises(ValueError):
        layer(torch.randn(2, 71))


def test_sparse_linear_from_linear_state_dict_and_copies() -> None:
    lin = nn.Linear(64, 16)
    _mask_(lin, 0.2, seed=1)  # pruned: from_linear must read the masked weight
    sp = SparseLinear.from_linear(lin)
    x = torch.randn(8, 64)
    with torch.no_grad():
        ref = lin(x)
    assert _max_err(sp(x), ref) <= ATOL
    assert sp.density == pytest.approx(float((lin.weight != 0).float().mean()))
    clone = copy.deepcopy(sp)
    assert _max_err(clone(x), ref) <= ATOL
    assert clone.values.data_ptr() != sp.values.data_ptr()
    restored = pickle.loads(pickle.dumps(sp))
    assert _max_err(restored(x), ref) <= ATOL
    fresh = SparseLinear(torch.zeros_like(lin.weight) + (lin.weight != 0), lin.bias)
    fresh.load_state_dict(sp.state_dict())
    assert _max_err(fresh(x), ref) <= ATOL


def test_traffic_bytes() -> None:
    assert dense_weight_bytes(4096, 25088) == 4 * 4096 * 25088
    assert csr_bytes(10, 3, index_bytes=8) == 10 * 12 + 4 * 8
    sp = SparseLinear(_masked_weight(50, 40, 0.25, seed=2))
    assert sp.nbytes == csr_bytes(sp.nnz, 50, index_bytes=4)
    assert SparseLinear(torch.eye(4), index_dtype=torch.int64).nbytes == 4 * 12 + 5 * 8


def test_measure_us_returns_all_names() -> None:
    t = measure_us({"a": lambda: torch.ones(10).sum(), "b": lambda: None}, repeats=3)
    assert set(t) == {"a", "b"}
    assert all(v > 0 for v in t.values())


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("whole_model_check", [True, False])
def test_compile_sparse_mlp_matches_masked(batch: int, whole_model_check: bool) -> None:
    net = _mlp()
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        ref = net(x)
    # min_speedup tiny: force sparse wherever it is not slower, to exercise the sparse path
    sm = compile_sparse(net, x, min_speedup=1e-9, whole_model_check=whole_model_check, **FAST)
    assert isinstance(sm, SparseModel)
    with torch.no_grad():
        out = sm(x)
    assert _max_err(out, ref) <= ATOL
    assert sm.max_abs_err <= ATOL
    assert [d.layer for d in sm.report] == ["1", "3", "5"]
    if not whole_model_check:
        assert sm.n_sparse == 3
        assert isinstance(sm.model.get_submodule("1"), SPARSE)
        assert sm.plan() == {d.layer: d.chosen for d in sm.report}
    else:
        assert sm.dense_us is not None and sm.dense_us > 0
        if sm.fell_back:
            assert sm.n_sparse == 0
            assert all(isinstance(sm.model.get_submodule(n), nn.Linear) for n in ("1", "3"))
        else:
            assert sm.sparse_us is not None and sm.sparse_us < sm.dense_us


def test_compile_sparse_convnet_matches_masked() -> None:
    net = _convnet()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = net(x)
    sm = compile_sparse(net, x, min_speedup=1e-9, whole_model_check=False, **FAST)
    with torch.no_grad():
        out = sm(x)
    assert _max_err(out, ref) <= ATOL
    assert [d.layer for d in sm.report] == ["0", "2", "5", "7"]
    dense = compile_sparse(net, x, candidates=("dense", "csr"), min_speedup=1e-9,
                           whole_model_check=False, **FAST)
    assert isinstance(dense.model[0], nn.Conv2d)  # torch CSR does not cover convs
    assert "nn.Linear only" in dense.report[0].note
    assert not hasattr(dense.model[0], "weight_orig")  # pruning made permanent
    assert torch.equal(dense.model[0].weight, net[0].weight)
    assert isinstance(sm.model.get_submodule("5"), SPARSE)
    if native.available():
        assert isinstance(sm.model.get_submodule("0"), PackedConv2d)
        assert torch.equal(sm.model.get_submodule("0").to_dense(), net[0].weight)
    assert sm.report[2].density == pytest.approx(float((net[5].weight != 0).float().mean()))


def test_report_covers_every_linear_and_fallback_to_dense() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(20, 30), nn.ReLU())
            self.head = nn.Linear(30, 5)
            self.unused = nn.Linear(5, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    net = Net()
    _mask_(net.head, 0.3, seed=5)
    x = torch.randn(1, 20)
    sm = compile_sparse(net, x, min_speedup=1e9, **FAST)  # nothing can be that much faster
    names = {n for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert {d.layer for d in sm.report} == names
    assert all(d.chosen == "dense" for d in sm.report)
    unused = next(d for d in sm.report if d.layer == "unused")
    assert unused.dense_us is None and "not reached" in unused.note
    head = next(d for d in sm.report if d.layer == "head")
    assert head.dense_us is not None and head.sparse_us is not None
    extra = {"native"} if native.available() else set()
    assert set(head.candidate_us) == {"dense", "csr"} | extra
    assert not any(isinstance(m, SPARSE) for m in sm.modules())
    with torch.no_grad():
        assert _max_err(sm(x), net(x)) <= ATOL
    assert "head" in sm.summary()
    assert sm.as_dict()["layers"][0]["layer"] == "body.0"


def test_compile_sparse_does_not_alias_or_modify_original() -> None:
    net = _mlp(seed=7)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    sm = compile_sparse(
        net,
        x,
        candidates=("dense", "csr", "csr64"),
        min_speedup=1e-9,
        whole_model_check=False,
        **FAST,
    )
    # original keeps its pruning reparametrization and values
    assert set(net.state_dict()) == set(before)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert hasattr(net[1], "weight_orig") and hasattr(net[1], "weight_mask")
    # no storage shared between compiled and original tensors
    orig_ptrs = {t.untyped_storage().data_ptr() for t in net.state_dict().values()}
    comp_ptrs = {t.untyped_storage().data_ptr() for t in sm.state_dict().values()}
    assert orig_ptrs.isdisjoint(comp_ptrs)
    # changing the original afterwards does not affect the compiled model
    with torch.no_grad():
        out_before = sm(x).clone()
        net[1].weight_orig.add_(1.0)
        net[5].bias.add_(1.0)
        assert torch.equal(sm(x), out_before)


def test_make_pruning_permanent_without_hooks() -> None:
    lin = nn.Linear(6, 4)
    _mask_(lin, 0.5, seed=9)
    expected = (lin.weight_orig * lin.weight_mask).detach().clone()
    lin._forward_pre_hooks.clear()  # e.g. rebuilt from a state dict without the hook
    make_pruning_permanent(lin)
    assert not hasattr(lin, "weight_orig") and not hasattr(lin, "weight_mask")
    assert isinstance(lin.weight, nn.Parameter)
    assert torch.equal(lin.weight, expected)


def test_compile_sparse_rejects_unknown_candidate() -> None:
    with pytest.raises(ValueError, match="unknown candidates"):
        compile_sparse(nn.Linear(3, 2), torch.randn(1, 3), candidates=("dense", "bogus"))


def _committed(name: str) -> nn.Module:
    from pathlib import Path

    from prunelab.modelfile import load_model_file

    path = Path(__file__).resolve().parents[1] / "benchmarks/results" / name / "model.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not committed")
    return load_model_file(path)[0].eval()


@pytest.mark.skipif(not native.available(), reason="no native kernels here")
@pytest.mark.parametrize("name", ["han2015-lenet300", "han2015-lenet5"])
def test_compile_decisions_are_stable_and_replayable(name: str) -> None:
    """Batch 1 on the committed LeNets: the same plan on every compile, and plan= replays it."""
    model = _committed(name)
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plans = [compile_sparse(model, x, whole_model_check=False).plan() for _ in range(3)]
    assert plans[0] == plans[1] == plans[2]
    assert set(plans[0].values()) == {"native"}  # every layer clearly faster sparse here
    replay = compile_sparse(model, x, plan=plans[0])
    assert replay.plan() == plans[0]
    assert all(d.dense_us is None and "from plan" in d.note for d in replay.report)
    with torch.no_grad():
        assert _max_err(replay(x), model(x)) <= ATOL
    with pytest.raises(ValueError, match="layers the model does not have"):
        compile_sparse(model, x, plan={"nope": "native"})
    with pytest.raises(ValueError, match="unknown kernels"):
        compile_sparse(model, x, plan={"fc1": "fast"})
