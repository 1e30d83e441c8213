"""The C++ sparse kernels and the packed layers: exact against dense on every path.

Every instruction-set path this CPU runs (generic SSE2, AVX2, AVX-512) is forced in turn;
the pure-torch fallback is checked in subprocesses (kernels disabled, no compiler).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.modelfile import load_model_file
from prunelab.runtime import native
from prunelab.runtime.compiler import make_pruning_permanent
from prunelab.runtime.packed import (
    MAX_PANEL,
    PackedConv2d,
    PackedLinear,
    conv_supported,
    default_panel,
    pack_panels,
    packed_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HAVE_NATIVE = native.available()
ISAS = [
    name
    for name, code in native.ISA_NAMES.items()
    if HAVE_NATIVE and native.load().isa_supported(code)
]


def _weight(m: int, k: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g)
    return w * (torch.rand(m, k, generator=g) < density)


def _close(a: torch.Tensor, b: torch.Tensor, k: int) -> None:
    # float sums of k products in another order: error grows ~ sqrt(k) * eps * |terms|
    assert a.shape == b.shape
    if not b.numel():
        return
    tol = 1e-5 * max(1.0, k**0.5) * max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


@pytest.fixture(params=ISAS or ["torch"])
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each kernel path this machine runs (``torch``: the fallback, if no kernels)."""
    if request.param != "torch":
        monkeypatch.setenv("PRUNELAB_SPARSE_ISA", request.param)
        assert native.isa_name() == request.param
    return request.param


# ---------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("m", "k", "density", "panel"),
    [(7, 13, 0.5, 4), (1, 1, 1.0, 1), (5, 70000, 0.001, MAX_PANEL), (16, 100, 0.0, 32),
     (9, 33, 1.0, 8), (3, 40000, 0.002, 40000)],
)
def test_pack_round_trip(m: int, k: int, density: float, panel: int) -> None:
    w = _weight(m, k, density)
    if k > 32768:  # make sure panel-local indices >= 32768 (negative as int16) occur
        w[0, k - 1] = 1.5
        w[m - 1, 32768] = -2.5
    lin = PackedLinear(w, panel=panel)
    assert torch.equal(lin.to_dense(), w)
    assert lin.nnz == int(w.count_nonzero())
    rowptr, cols, vals = pack_panels(w, panel)
    n_panels = max(1, -(-k // panel))
    assert rowptr.shape == (n_panels, m + 1) and rowptr.dtype == torch.int32
    assert int(rowptr[0, 0]) == 0 and int(rowptr[-1, -1]) == vals.numel()
    assert bool((rowptr[:, 1:] >= rowptr[:, :-1]).all())
    assert cols.dtype == torch.int16 and vals.dtype == torch.float32
    assert bool((vals != 0).all())
    assert lin.nbytes == packed_bytes(lin.nnz, m, n_panels)


def test_pack_rejects_bad_panels() -> None:
    with pytest.raises(ValueError, match="panel must be in"):
        pack_panels(torch.ones(2, 2), 0)
    with pytest.raises(ValueError, match="panel must be in"):
        pack_panels(torch.ones(2, 2), MAX_PANEL + 1)
    with pytest.raises(ValueError, match="2-D"):
        pack_panels(torch.ones(2), 4)


def test_default_panel() -> None:
    assert default_panel(1) == 4096
    assert default_panel(2) == default_panel(256) == 512
    assert default_panel(64, 0.25) == 128 and default_panel(64, 0.09) == 256
    assert default_panel(64, 0.04) == default_panel(64, 0.001) == 512


# ---------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    ("m", "k", "density", "panel"),
    [(300, 784, 0.08, 4096), (300, 784, 0.08, 100), (13, 37, 0.3, 8), (1, 1, 1.0, 4),
     (64, 129, 1.0, 512), (50, 200, 0.0, 64), (8, 3000, 0.05, 1000)],
)
@pytest.mark.parametrize("batch", [1, 2, 7, 63, 64, 65, 130])
def test_linear_matches_dense(isa: str, m: int, k: int, density: float, panel: int,
                              batch: int) -> None:
    w = _weight(m, k, density, seed=m + k)
    w[m // 2] = 0  # an empty row
    b = torch.randn(m)
    lin = PackedLinear(w, b, panel=panel)
    x = torch.randn(batch, k)
    _close(lin(x), F.linear(x, w, b), k)


@pytest.mark.parametrize("batch", [0, 1, 5])
def test_linear_shapes_and_bias(isa: str, batch: int) -> None:
    w = _weight(20, 30, 0.2)
    lin = PackedLinear(w)  # no bias
    x = torch.randn(batch, 30)
    _close(lin(x), x @ w.T, 30)
    x3 = torch.randn(2, 3, 30)
    _close(lin(x3), x3 @ w.T, 30)
    x1 = torch.randn(30)
    _close(lin(x1), w @ x1, 30)


def test_linear_chain_reads_transposed_output(isa: str) -> None:
    w1, w2 = _weight(40, 50, 0.3, 1), _weight(10, 40, 0.3, 2)
    a, b = PackedLinear(w1, panel=16), PackedLinear(w2, panel=16)
    x = torch.randn(9, 50)
    h = a(x)
    assert not h.is_contiguous() and h.t().is_contiguous()  # the transposed view
    _close(b(torch.relu(h)), torch.relu(x @ w1.T) @ w2.T, 50)
    _close(b(h), (x @ w1.T) @ w2.T, 50)


def test_linear_threads_give_identical_results(isa: str) -> None:
    """Rows are split over threads, each row summed in one order: bit-identical outputs."""
    w, b = _weight(512, 2048, 0.1), torch.randn(512)
    lin = PackedLinear(w, b, panel=512)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([lin(torch.ones(n, 2048) * 0.5) for n in (1, 64, 100)])
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*outs, strict=True):
        assert torch.equal(one, two)


def test_linear_rejects_bad_input() -> None:
    lin = PackedLinear(_weight(4, 6, 0.5))
    with pytest.raises(ValueError, match="expected last dim 6"):
        lin(torch.randn(2, 5))
    with pytest.raises(ValueError, match="float32 on CPU"):
        lin(torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias must have shape"):
        PackedLinear(torch.ones(3, 2), torch.ones(2))


def test_isa_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAVE_NATIVE:
        pytest.skip("no native kernels here")
    monkeypatch.setenv("PRUNELAB_SPARSE_ISA", "sse9")
    with pytest.raises(ValueError, match="not one of generic, avx2, avx512"):
        native.isa()
    for name in set(native.ISA_NAMES) - set(ISAS):  # e.g. avx512 on an AVX2 machine
        monkeypatch.setenv("PRUNELAB_SPARSE_ISA", name)
        with pytest.raises(ValueError, match="does not support"):
            native.isa()


def test_kernel_checks_its_arguments() -> None:
    if not HAVE_NATIVE:
        pytest.skip("no native kernels here")
    mod = native.load()
    lin = PackedLinear(_weight(4, 6, 0.5))
    with pytest.raises(RuntimeError, match="rowptr has"):
        mod.spmv(torch.randn(6), lin.rowptr[:, :-1].contiguous(), lin.cols, lin.vals, None,
                 4, 6, lin.panel, False, 0)
    with pytest.raises(RuntimeError, match="x: float32 of length K"):
        mod.spmv(torch.randn(5), lin.rowptr, lin.cols, lin.vals, None, 4, 6, lin.panel,
                 False, 0)


# ---------------------------------------------------------------------------- conv


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "hw"),
    [(1, 20, 5, 1, 0, 1, (28, 28)), (20, 50, 5, 1, 0, 1, (12, 12)), (3, 8, 3, 2, 1, 1, (9, 7)),
     (16, 24, 1, 1, 0, 1, (5, 6)), (8, 8, (3, 1), (1, 2), (1, 0), 2, (10, 11)),
     (16, 32, 1, 2, 0, 1, (8, 8))],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_matches_dense(isa: str, cin: int, cout: int, kernel, stride, padding, dilation,
                            hw: tuple[int, int], batch: int) -> None:
    torch.manual_seed(cin * cout)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
        conv.weight[0] = 0  # an empty filter
    packed = PackedConv2d.from_conv(conv, panel=64)
    assert torch.equal(packed.to_dense(), conv.weight.detach())
    x = torch.randn(batch, cin, *hw)
    with torch.no_grad():
        ref = conv(x)
    _close(packed(x), ref, cin * 25)
    _close(packed(x[0]), ref[0], cin * 25)


def test_conv_without_bias_and_unsupported() -> None:
    conv = nn.Conv2d(4, 6, 3, bias=False)
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        _close(PackedConv2d(conv)(x), conv(x), 36)
    assert conv_supported(nn.Conv2d(4, 4, 3, padding_mode="reflect")) is not None
    assert conv_supported(nn.Conv2d(4, 4, 3, padding="same")) is not None
    with pytest.raises(ValueError, match="groups=4"):
        PackedConv2d(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match=r"expected \(B, 4, H, W\)"):
        PackedConv2d(conv)(torch.randn(2, 3, 7, 7))


# ---------------------------------------------------------------------------- real models


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_committed_pruned_models(isa: str, name: str) -> None:
    path = RESULTS / f"han2015-{name}" / "model.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not committed")
    model = make_pruning_permanent(load_model_file(path)[0]).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=g)
    checked = 0
    for mod in model.modules():
        packed: nn.Module
        if isinstance(mod, nn.Linear):
            packed = PackedLinear.from_linear(mod, panel=default_panel(64))
            inp = torch.randn(64, mod.in_features, generator=g)
        elif isinstance(mod, nn.Conv2d):
            packed = PackedConv2d.from_conv(mod)
            inp = x if mod.in_channels == 1 else torch.randn(64, mod.in_channels, 12, 12,
                                                               generator=g)
        else:
            continue
        assert packed.nnz == int(mod.weight.count_nonzero())
        with torch.no_grad():
            ref = mod(inp)
            for batch in (1, 64):
                _close(packed(inp[:batch]), ref[:batch], mod.weight[0].numel())
        checked += 1
    assert checked >= 3


# ---------------------------------------------------------------------------- fallback


_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import warnings, torch, torch.nn.functional as F
    from torch import nn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from prunelab.runtime import native
        from prunelab.runtime.packed import PackedConv2d, PackedLinear
        w = torch.randn(30, 50) * (torch.rand(30, 50) < 0.2)
        b = torch.randn(30)
        lin = PackedLinear(w, b)
        errs = [float((lin(x) - F.linear(x, w, b)).abs().max())
                for x in (torch.randn(1, 50), torch.randn(9, 50))]
        conv = nn.Conv2d(3, 5, 3, padding=1)
        x = torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            errs.append(float((PackedConv2d(conv)(x) - conv(x)).abs().max()))
        native.load()
    notices = [str(c.message) for c in caught if "native sparse kernels" in str(c.message)]
    print(lin.backend, native.isa_name(), max(errs) < 1e-4, len(notices))
    print(notices[0] if notices else "-")
    """
)


def _run_fallback(env_extra: dict[str, str], tmp_path: Path) -> list[str]:
    env = dict(os.environ, PRUNELAB_CACHE_DIR=str(tmp_path / "cache"), **env_extra)
    env.pop("PRUNELAB_SPARSE_ISA", None)
    out = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_fallback_when_disabled(tmp_path: Path) -> None:
    first, second = _run_fallback({"PRUNELAB_NATIVE": "0"}, tmp_path)
    assert first == "torch torch True 0"  # disabled on purpose: no notice
    assert second == "-"
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_fallback_without_compiler_says_so_once(tmp_path: Path) -> None:
    first, second = _run_fallback({"CXX": "/nonexistent/c++"}, tmp_path)
    assert first == "torch torch True 1"
    assert second == (
        "prunelab: native sparse kernels unavailable (no C++ compiler "
        "('/nonexistent/c++' not found)); using the pure-torch fallback"
    )


@pytest.mark.skipif(not HAVE_NATIVE, reason="no native kernels here")
def test_build_is_cached() -> None:
    """The setup/first-use build is reused: a fresh process loads it without compiling."""
    code = ("import time; t = time.perf_counter(); from prunelab.runtime import native; "
            "native.load(required=True); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 10.0
    assert any(native.build_dir().glob("*.so"))


# ---------------------------------------------------------------------------- fused models


@pytest.mark.skipif(not HAVE_NATIVE, reason="no native kernels here")
@pytest.mark.parametrize(
    ("shape", "k", "s"), [((3, 4, 24, 24), 2, 2), ((1, 2, 9, 7), 2, 2), ((2, 3, 10, 11), 3, 2),
                          ((1, 1, 5, 5), (2, 3), (1, 2))]
)
def test_max_pool_matches_torch(shape: tuple[int, ...], k, s) -> None:
    x = torch.randn(*shape)
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("inf")
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    got = native.load().max_pool2d(x, kh, kw, sh, sw)
    want = F.max_pool2d(x, (kh, kw), (sh, sw))
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))


@pytest.mark.skipif(not HAVE_NATIVE, reason="no native kernels here")
@pytest.mark.parametrize("batch", [1, 64])
def test_fused_lenets_match_and_fuse(batch: int) -> None:
    from prunelab.runtime import compile_sparse
    from prunelab.runtime.fuse import packed_call

    for name in ("lenet300", "lenet5"):
        path = RESULTS / f"han2015-{name}" / "model.safetensors"
        if not path.exists():
            pytest.skip(f"{path} not committed")
        model = load_model_file(path)[0].eval()
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        sm = compile_sparse(model, x, min_speedup=1e-9, whole_model_check=False, repeats=3)
        code = sm.model.code  # a torch.fx GraphModule: the fused form
        assert "packed_call" in code and "Dropout" not in code and "drop" not in code
        assert "relu" not in code.replace("True", "")  # ReLUs fused into the kernels
        if name == "lenet5":
            assert "_max_pool" in code
        with torch.no_grad():
            _close(sm(x), model(x), 800)
        assert callable(packed_call)


@pytest.mark.skipif(not HAVE_NATIVE, reason="no native kernels here")
def test_untraceable_model_runs_unfused() -> None:
    from prunelab.runtime import compile_sparse

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace this
                return torch.relu(self.fc(x))
            return self.fc(x)

    net = Branchy().eval()
    with torch.no_grad():
        net.fc.weight.mul_(torch.rand(32, 64) < 0.1)
    x = torch.rand(4, 64)
    sm = compile_sparse(net, x, min_speedup=1e-9, whole_model_check=False, repeats=3)
    assert isinstance(sm.model, Branchy) and isinstance(sm.model.fc, PackedLinear)
    with torch.no_grad():
        _close(sm(x), net(x), 64)
        _close(sm(-x), net(-x), 64)
