"""prune_channels: coupled channel groups, exact counts, compact == masked, clear errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.channel_pruning import prune_channels
from prunelab.criteria.channels import l1_filter_keep
from prunelab.graph.dependency import GraphError, trace_channels
from prunelab.masks import get_mask

ATOL = 1e-5


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics everywhere (so pruning changes every output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p[0].numel(), 1))
                                                           if p.dim() > 1 else 0.5))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _same(res, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = res.model(x), res.masked(x)
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.b1 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.b2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.b1(x)))
        x = F.relu(x + self.bn2(self.b2(y)))
        return self.fc(x.mean((2, 3)))


def test_residual_add_ties_channels_and_compact_equals_masked() -> None:
    model = _randomize(Residual())
    x = torch.randn(2, 3, 8, 8)
    res = prune_channels(model, x, method="l1_filter", amount=0.25)
    groups = {tuple(g.modules("out")): g for g in res.graph.groups}
    assert set(groups) == {("stem", "b2"), ("b1",)}
    stream = groups[("stem", "b2")]
    assert {"bn0", "bn2", "b1", "fc"} <= set(stream.modules())
    report = {tuple(r.producers): r for r in res.groups}
    assert report[("stem", "b2")].kept == 12 and report[("b1",)].kept == 12
    # the same filters are gone from both producers, and the consumers' columns with them
    removed = report[("stem", "b2")].removed
    m = res.model
    assert m.stem.out_channels == m.b2.out_channels == m.bn0.num_features == 12
    assert m.b1.in_channels == 12 and m.fc.in_features == 12 and m.fc.out_features == 5
    for name in ("stem", "b2"):
        mask = get_mask(getattr(res.masked, name))
        assert mask is not None
        alive = mask.flatten(1).any(dim=1)
        assert alive.tolist() == [i not in removed for i in range(16)]
    assert torch.equal(get_mask(res.masked.fc)[:, removed], torch.zeros(5, 4))
    _same(res, x)
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    assert model.stem.out_channels == 16 and get_mask(model.stem) is None  # input untouched


def test_chain_network_matches_the_l1_filter_criterion() -> None:
    torch.manual_seed(3)
    net = _randomize(nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(), nn.Flatten(),
        nn.Linear(10 * 4 * 4, 6),
    ))
    x = torch.randn(2, 3, 8, 8)
    res = prune_channels(net, x, method="l1_filter", amount=0.5)
    want = l1_filter_keep(net, 0.5)
    for name in ("0", "4"):
        report = next(r for r in res.groups if r.producers == [name])
        kept = torch.ones(want[name].numel(), dtype=torch.bool)
        kept[report.removed] = False
        assert torch.equal(kept, want[name].cpu()), name
    # the flatten maps each channel to a block of 16 columns of the Linear
    assert res.model[8].in_features == 5 * 16
    _same(res, x)


def test_exact_counts_floors_round_to_and_ignore() -> None:
    model = _randomize(Residual())
    x = torch.randn(1, 3, 8, 8)
    res = prune_channels(model, x, amount=0.9, min_channels=4)
    assert all(r.kept == 4 for r in res.groups)
    res = prune_channels(model, x, amount=0.3, round_to=8)
    assert all(r.kept % 8 == 0 for r in res.groups), [r.kept for r in res.groups]
    res = prune_channels(model, x, amount=0.99)
    assert all(r.kept >= 1 for r in res.groups)  # never an empty group
    res = prune_channels(model, x, amount=0.5, ignore="b1")
    assert res.model.b1.out_channels == 16 and res.model.stem.out_channels == 8
    _same(res, x)


def test_global_slimming_prunes_exactly_the_fraction_asked() -> None:
    # Torch-Pruning under-prunes when a whole layer falls under the global threshold; the
    # floor keeps one channel there and the rest of the budget is taken elsewhere.
    net = _randomize(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ))
    with torch.no_grad():
        net[4].weight.mul_(1e-3)  # a whole layer far under the threshold
    x = torch.randn(2, 3, 8, 8)
    res = prune_channels(net, x, method="slimming", amount=0.5)
    total = sum(r.units for r in res.groups)
    assert res.units_removed == round(0.5 * total) == 20
    by = {r.producers[0]: r for r in res.groups}
    assert by["3"].kept == 1
    _same(res, x)


def test_concat_depthwise_grouped_and_shuffle() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.bn = nn.BatchNorm2d(16)
            self.g = nn.Conv2d(16, 16, 1, groups=4)
            self.pw = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = F.relu(self.a(x))
            x = torch.cat([a, F.relu(self.b(a))], dim=1)  # concat: channel offsets
            x = F.relu(self.g(self.bn(self.dw(x))))
            n, c, h, w = x.shape  # channel shuffle: view / transpose / view
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            x1, x2 = x.chunk(2, dim=1)
            x = torch.cat([x1, F.relu(self.pw(x2))], dim=1)
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    model = _randomize(Net())
    x = torch.randn(2, 3, 6, 6)
    res = prune_channels(model, x, amount=0.5)
    m = res.model
    width = m.a.out_channels + m.b.out_channels
    assert m.dw.groups == m.dw.in_channels == m.dw.out_channels == width
    assert m.g.groups == 4 and m.g.out_channels % 4 == 0 and m.g.out_channels < 16
    assert m.a.out_channels < 8 and m.b.out_channels < 8
    _same(res, x)


def test_layernorm_stream_and_attention_heads() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.ln1 = nn.LayerNorm(16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.ln2 = nn.LayerNorm(16)
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.embed(x)
            y = self.ln1(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
            return self.head(x[:, 0])

    model = _randomize(Block())
    x = torch.randn(2, 5, 6)
    res = prune_channels(model, x, amount=0.5)
    m = res.model
    assert res.graph.heads == {"attn": 4}
    assert m.attn.num_heads == 2 and m.attn.embed_dim == 8 and m.attn.head_dim == 4
    assert m.ln1.normalized_shape == (8,) and m.fc1.out_features == 16
    _same(res, x)  # the masked LayerNorms normalise over the kept channels, as the compact ones


def test_masked_copy_keeps_pruned_weights_zero_while_training() -> None:
    model = _randomize(Residual())
    x = torch.randn(4, 3, 8, 8)
    res = prune_channels(model, x, amount=0.5)
    net = res.masked.train()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    removed = next(r for r in res.groups if r.producers == ["b1"]).removed
    assert torch.count_nonzero(net.b1.weight[removed]) == 0
    assert torch.count_nonzero(net.b2.weight[:, removed]) == 0


@pytest.mark.parametrize("method", ["slimming", "thinet", "random"])
def test_every_method_prunes_a_residual_network_consistently(method: str) -> None:
    model = _randomize(Residual())
    x = torch.randn(4, 3, 8, 8)
    res = prune_channels(model, x, method=method, amount=0.5, samples=200)
    assert res.units_removed == 16
    _same(res, x)
    if method == "random":
        again = prune_channels(model, x, method=method, amount=0.5)
        assert [r.removed for r in again.groups] == [r.removed for r in res.groups]


def test_unsupported_operations_are_named_and_pinned() -> None:
    class FFT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft(self.conv(x), dim=1).abs()

    with pytest.raises(GraphError, match="fft_rfft"):
        prune_channels(FFT(), torch.randn(1, 2, 8))
    graph = trace_channels(FFT(), torch.randn(1, 2, 8))
    assert graph.groups == [] and "fft_rfft" in graph.pinned_ops


def test_untraceable_model_fails_with_one_clear_line() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(GraphError, match=r"torch\.fx cannot trace Branchy") as err:
        prune_channels(Branchy(), torch.randn(1, 3))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "l2"}, "method='l2' is unknown; allowed"),
        ({"amount": 1.0}, "amount=1.0 is out of range"),
        ({"scope": "layer"}, "scope='layer' is unknown"),
        ({"method": "thinet", "scope": "global"}, "allowed scope: 'local'"),
        ({"round_to": 0}, "round_to=0 is out of range"),
        ({"min_fraction": 2.0}, "min_fraction=2.0 is out of range"),
        ({"ignore": "classifier"}, "ignore pattern 'classifier' matches no module of Residual"),
    ],
)
def test_bad_options_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        prune_channels(Residual(), torch.randn(1, 3, 8, 8), **kwargs)


def test_public_entry_point() -> None:
    assert prunelab.prune_channels is prune_channels


def test_compact_model_saves_and_loads_without_pickle(tmp_path) -> None:
    from prunelab.errors import FileFormatError
    from prunelab.modelfile import load_model_file, save_model_file
    from prunelab.models import build_model

    model = _randomize(build_model("torchvision.resnet18", num_classes=7))
    x = torch.randn(2, 3, 32, 32)
    res = prune_channels(model, x, amount=0.4)
    path = tmp_path / "small.safetensors"
    spec = {"name": "torchvision.resnet18", "kwargs": {"num_classes": 7}, "shapes": res.shapes}
    save_model_file(path, res.model, spec)
    loaded, meta = load_model_file(path)
    assert meta["model"]["shapes"]["conv1.weight"] == list(res.model.conv1.weight.shape)
    assert loaded.layer1[0].conv1.in_channels == res.model.layer1[0].conv1.in_channels < 64
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), res.model.eval()(x))
    assert path.stat().st_size < 0.5 * 4 * res.params_before  # the file is smaller too
    # the masked copy (same architecture, masks) round-trips through the same format
    save_model_file(tmp_path / "masked.safetensors", res.masked,
                    {"name": "torchvision.resnet18", "kwargs": {"num_classes": 7}})
    back, _ = load_model_file(tmp_path / "masked.safetensors")
    assert get_mask(back.conv1) is not None
    # a file cannot ask to grow a tensor, or name one the model does not have
    for bad in ({"conv1.weight": [65, 3, 7, 7]}, {"nope.weight": [1]}, {"conv1.weight": "x"}):
        save_model_file(path, res.model, {**spec, "shapes": bad})
        with pytest.raises(FileFormatError, match="shapes"):
            load_model_file(path)


def test_tied_embedding_groupnorm_and_prelu_stay_consistent() -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            self.conv = nn.Conv1d(8, 12, 3, padding=1)
            self.gn = nn.GroupNorm(4, 12)
            self.act = nn.PReLU(12)
            self.proj = nn.Conv1d(12, 8, 1)
            self.head = nn.Linear(8, 11, bias=False)
            self.head.weight = self.emb.weight  # tied input and output embeddings

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.emb(tokens)  # [N, L, 8]
            y = self.proj(self.act(self.gn(self.conv(h.transpose(1, 2)))))
            return self.head(h + y.transpose(1, 2))

    model = _randomize(LM())
    tokens = torch.randint(0, 11, (2, 6))
    res = prune_channels(model, tokens, amount=0.5)
    m = res.model
    assert m.head.weight is m.emb.weight and m.emb.embedding_dim == m.head.in_features == 4
    assert m.gn.num_groups == 2 and m.gn.num_channels == 6 == m.act.num_parameters
    assert m.head.out_features == 11
    with torch.no_grad():
        assert torch.allclose(m(tokens), res.masked(tokens), atol=1e-4, rtol=1e-4)


def test_a_model_already_pruned_unstructured_keeps_its_masks() -> None:
    from prunelab.masks import set_mask

    model = _randomize(Residual())
    sparse = (torch.rand(model.b1.weight.shape) > 0.5).float()
    set_mask(model.b1, "weight", sparse)
    x = torch.randn(2, 3, 8, 8)
    res = prune_channels(model, x, amount=0.25)
    kept = res.keep[("b1.weight", 0)]
    cols = res.keep[("b1.weight", 1)]
    want = sparse[kept][:, cols]
    assert torch.equal(get_mask(res.model.b1), want)  # the compact copy keeps the old mask
    assert torch.count_nonzero(res.model.b1.weight[want == 0]) == 0
    _same(res, x)
    assert get_mask(model.b1) is not None and torch.equal(get_mask(model.b1), sparse)


def test_amount_zero_changes_nothing() -> None:
    model = _randomize(Residual())
    x = torch.randn(1, 3, 8, 8)
    res = prune_channels(model, x, amount=0.0)
    assert res.params_after == res.params_before and res.units_removed == 0
    with torch.no_grad():
        assert torch.equal(res.model(x), model(x))


def test_a_compact_model_that_crashes_is_a_surgery_error(monkeypatch) -> None:
    import prunelab.channel_pruning as cp
    from prunelab.surgery import SurgeryError

    real = cp.slice_tensors

    def broken(model: nn.Module, keep: dict) -> set[str]:
        out = real(model, keep)
        model.b1.in_channels = 3  # as if a width had not been synced
        model.b1.weight = nn.Parameter(torch.zeros(16, 3, 3, 3))
        return out

    monkeypatch.setattr(cp, "slice_tensors", broken)
    with pytest.raises(SurgeryError, match="the compact Residual fails on the example input"):
        prune_channels(_randomize(Residual()), torch.randn(1, 3, 8, 8), amount=0.5)


def test_ignore_none_means_nothing_extra() -> None:
    res = prune_channels(_randomize(Residual()), torch.randn(1, 3, 8, 8), ignore=None)
    assert res.units_removed == 16
