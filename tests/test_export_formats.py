"""Compact storage formats: Han's relative indices, CSR, the safetensors container, size tables."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import prune

from prunelab.export import (
    FORMAT_VERSION,
    CsrEncoded,
    ExportFormatError,
    RelativeEncoded,
    decode_csr,
    decode_relative,
    encode_csr,
    encode_relative,
    export_model,
    format_size_table_markdown,
    load_compact,
    pack_bits,
    read_compact_header,
    relative_entry_counts,
    save_compact,
    size_table,
    to_torch_csr,
    unpack_bits,
)

BITS = [2, 3, 4, 5, 8, 12]
SHAPES = [(1, 1), (7, 13), (64, 300), (20, 1, 5, 5), (10, 20, 3, 3)]
DENSITIES = [0.0, 0.01, 0.1, 0.5, 1.0]


# ----------------------------------------------------------------------------- helpers


def sparse_tensor(shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    """Random weights times a 0/1 mask, like a pruned layer (so pruned negatives are -0.0)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=g)
    mask = (torch.rand(shape, generator=g) < density).float()
    return weight * mask


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of an fp32 tensor, with -0.0 mapped to +0.0 (the formats drop signed zeros)."""
    t = torch.where(t == 0, torch.zeros_like(t), t)
    return t.contiguous().view(torch.int32)


def reference_encode(weight: torch.Tensor, bits: int) -> tuple[list[int], list[float]]:
    """Plain-Python encoder of the documented convention: code = zeros skipped, fillers at max."""
    top = (1 << bits) - 1
    codes: list[int] = []
    values: list[float] = []
    previous = -1
    for position, value in enumerate(weight.reshape(-1).tolist()):
        if value != 0:
            zeros = position - previous - 1
            while zeros > top:
                codes.append(top)
                values.append(0.0)
                zeros -= top + 1  # a filler skips `top` zeros and occupies one zero itself
            codes.append(zeros)
            values.append(value)
            previous = position
    return codes, values


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """Plain-Python LSB-first bit packer."""
    stream = [(code >> k) & 1 for code in codes for k in range(bits)]
    stream += [0] * (-len(stream) % 8)
    return [sum(stream[i + k] << k for k in range(8)) for i in range(0, len(stream), 8)]


def codes_of(enc: RelativeEncoded) -> list[int]:
    return unpack_bits(enc.packed_indices.numpy(), enc.index_bits, enc.num_entries).tolist()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.8)
    prune.l1_unstructured(model[2], "weight", amount=0.5)
    return model


def pruned_convnet() -> nn.Module:
    torch.manual_seed(1)
    model = SmallConvNet()
    model.train()
    model(torch.randn(16, 1, 8, 8))  # non-trivial BatchNorm running statistics
    prune.l1_unstructured(model.conv1, "weight", amount=0.3)
    prune.l1_unstructured(model.conv2, "weight", amount=0.7)
    prune.l1_unstructured(model.fc, "weight", amount=0.9)
    prune.l1_unstructured(model.fc, "bias", amount=0.5)
    return model.eval()


# ----------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_round_trip_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in (0, 1, 7, 8, 9, 1001):
        codes = rng.integers(0, 1 << bits, size=count)
        codes[: min(count, 2)] = (1 << bits) - 1  # the largest code must survive
        packed = pack_bits(codes, bits)
        assert packed.dtype == np.uint8
        assert packed.size == math.ceil(count * bits / 8)
        assert packed.tolist() == reference_pack(codes.tolist(), bits)
        assert unpack_bits(packed, bits, count).tolist() == codes.tolist()


def test_pack_bits_known_bytes() -> None:
    # codes 1, 2, 3 at 2 bits: 01 | 10 | 11 read LSB first -> 0b00111001 = 57
    assert pack_bits(np.array([1, 2, 3]), 2).tolist() == [57]
    # five 5-bit codes of 31 = 25 ones -> 3 full bytes and 1 padded bit
    assert pack_bits(np.full(5, 31), 5).tolist() == [255, 255, 255, 1]


def test_pack_unpack_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="codes must lie"):
        pack_bits(np.array([4]), 2)
    with pytest.raises(ValueError, match="out of range"):
        pack_bits(np.array([0]), 17)
    with pytest.raises(ValueError, match="expected 2"):
        unpack_bits(np.zeros(3, dtype=np.uint8), 5, 3)
    with pytest.raises(ValueError, match="padding"):
        unpack_bits(np.array([0b1000_0000], dtype=np.uint8), 5, 1)


# ----------------------------------------------------------------------------- Han format


@pytest.mark.parametrize("bits", BITS)
def test_relative_round_trip_bit_identical(bits: int) -> None:
    for shape_id, shape in enumerate(SHAPES):
        for density_id, density in enumerate(DENSITIES):
            w = sparse_tensor(shape, density, seed=100 * bits + 10 * shape_id + density_id)
            enc = encode_relative(w, bits)
            out = decode_relative(enc)
            assert out.shape == w.shape and out.dtype == torch.float32
            assert torch.equal(bits_of(out), bits_of(w)), (shape, density)
            nonzero = int(torch.count_nonzero(w))
            assert enc.num_entries - enc.num_fillers == nonzero
            assert enc.values.numel() == enc.num_entries
            assert enc.packed_indices.numel() == math.ceil(enc.num_entries * bits / 8)
            assert relative_entry_counts(w, bits) == (nonzero, enc.num_fillers)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_relative_matches_reference_encoder(bits: int) -> None:
    w = sparse_tensor((9, 31), 0.08, seed=bits)
    w[0, 0] = 0.25
    w[-1, -1] = -4.0
    enc = encode_relative(w, bits)
    codes, values = reference_encode(w, bits)
    assert codes_of(enc) == codes
    assert enc.values.tolist() == values
    assert enc.num_fillers == sum(1 for c, v in zip(codes, values, strict=True) if v == 0.0)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_filler_count_at_gap_boundaries(bits: int) -> None:
    span = 1 << bits  # largest positional gap one code can express
    for zeros, fillers in [(0, 0), (span - 1, 0), (span, 1), (2 * span - 1, 1), (2 * span, 2)]:
        # a nonzero at position 0, `zeros` zeros, a nonzero, then trailing zeros
        w = torch.zeros(1, zeros + 2 + 3)
        w[0, 0] = 1.0
        w[0, zeros + 1] = -2.0
        enc = encode_relative(w, bits)
        assert enc.num_fillers == fillers, (bits, zeros)
        assert enc.num_entries == 2 + fillers
        assert codes_of(enc) == [0] + [span - 1] * fillers + [zeros - fillers * span]
        assert torch.equal(decode_relative(enc), w)
        # the same run of zeros before the first nonzero (counted from position -1)
        lead = torch.zeros(zeros + 1)
        lead[zeros] = 3.0
        enc = encode_relative(lead, bits)
        assert enc.num_fillers == fillers
        assert torch.equal(decode_relative(enc), lead)


def test_relative_edge_cases() -> None:
    empty = torch.zeros(30, 40)
    enc = encode_relative(empty, 5)
    assert (enc.num_entries, enc.num_fillers, enc.packed_indices.numel()) == (0, 0, 0)
    assert torch.equal(decode_relative(enc), empty)

    dense = torch.randn(12, 17)
    enc = encode_relative(dense, 5)
    assert (enc.num_entries, enc.num_fillers) == (dense.numel(), 0)
    assert set(codes_of(enc)) == {0}
    assert torch.equal(decode_relative(enc).view(torch.int32), dense.view(torch.int32))

    rows = torch.zeros(6, 50)  # empty rows between and after nonzeros
    rows[0, 0], rows[3, 7], rows[5, 49] = 1.0, 2.0, 3.0  # first and last position
    enc = encode_relative(rows, 5)
    assert codes_of(enc)[0] == 0  # nonzero at position 0: code 0
    assert torch.equal(decode_relative(enc), rows)

    trailing = torch.zeros(1000)
    trailing[0] = 1.0  # 999 trailing zeros need no filler: the shape is stored
    enc = encode_relative(trailing, 2)
    assert (enc.num_entries, enc.num_fillers) == (1, 0)
    assert torch.equal(decode_relative(enc), trailing)

    scalar = torch.tensor(1.5)
    assert torch.equal(decode_relative(encode_relative(scalar, 3)), scalar)


def test_relative_signed_zero_nan_inf() -> None:
    w = torch.tensor([[-0.0, 0.0, 1.0, -0.0], [float("inf"), -float("inf"), 0.0, -1e-45]])
    nan_payload = torch.tensor([0x7FC0_1234], dtype=torch.int32).view(torch.float32)
    w = torch.cat([w, torch.cat([nan_payload, torch.zeros(3)]).view(1, 4)])
    enc = encode_relative(w, 3)
    assert enc.num_entries == 5  # 1.0, +inf, -inf, the denormal and the NaN; signed zeros not
    out = decode_relative(enc)
    assert torch.equal(bits_of(out), bits_of(w))  # NaN payload and denormal bit-exact
    assert out[0, 0].item() == 0.0 and math.copysign(1.0, out[0, 0].item()) == 1.0


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_relative_half_values(value_dtype: str) -> None:
    torch_dtype = getattr(torch, value_dtype)
    w = sparse_tensor((33, 70), 0.2, seed=7)
    w[0, 1] = 1e-10  # underflows to zero in float16: stored, decodes as w.half().float()
    w[0, 2] = 1e6  # overflows to inf in float16
    enc = encode_relative(w, 5, value_dtype=value_dtype)
    assert enc.values.dtype == torch_dtype
    out = decode_relative(enc)
    assert out.dtype == torch.float32
    assert torch.equal(bits_of(out), bits_of(w.to(torch_dtype).float()))


def test_relative_keeps_input_dtype() -> None:
    w = sparse_tensor((8, 40), 0.3, seed=3).half()
    out = decode_relative(encode_relative(w, 4, value_dtype="float16"))
    assert out.dtype == torch.float16 and torch.equal(out, w)


def test_relative_rejects_bad_arguments() -> None:
    w = torch.zeros(2, 2)
    for bits in (0, 17):
        with pytest.raises(ValueError, match="index_bits"):
            encode_relative(w, bits)
    with pytest.raises(TypeError):
        encode_relative(w, True)
    with pytest.raises(ValueError, match="value_dtype"):
        encode_relative(w, 5, value_dtype="int8")
    with pytest.raises(TypeError, match="weight dtype"):
        encode_relative(torch.zeros(2, 2, dtype=torch.int64), 5)


def test_decode_relative_rejects_corrupt_encodings() -> None:
    w = torch.zeros(4, 40)
    w[3, 39] = 1.0
    enc = encode_relative(w, 5)
    too_small = RelativeEncoded(**{**enc.__dict__, "shape": (4, 30)})
    with pytest.raises(ValueError, match="only 120 elements"):
        decode_relative(too_small)
    short_values = RelativeEncoded(**{**enc.__dict__, "values": enc.values[:-1]})
    with pytest.raises(ValueError, match="values has shape"):
        decode_relative(short_values)
    wrong_bits = RelativeEncoded(**{**enc.__dict__, "index_bits": 4})
    with pytest.raises(ValueError):
        decode_relative(wrong_bits)


@pytest.mark.slow
def test_big_layer_encode_decode_speed() -> None:
    rows, cols, density = 4096, 25088, 0.04  # VGG-16 fc6 at Han's 4% density
    g = torch.Generator().manual_seed(0)
    nnz = int(rows * cols * density)
    w = torch.zeros(rows * cols)
    w[torch.randint(rows * cols, (nnz,), generator=g)] = torch.randn(nnz, generator=g)
    w = w.view(rows, cols)
    # CPU time of this process: other jobs on a shared machine do not inflate it.
    start = time.process_time()
    enc = encode_relative(w, 5)
    encoded = time.process_time()
    out = decode_relative(enc)
    decoded = time.process_time()
    assert torch.equal(out, w)
    assert decoded - start < 5.0, f"encode {encoded - start:.2f}s, decode {decoded - encoded:.2f}s"


# ----------------------------------------------------------------------------- CSR


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_csr_round_trip_and_structure() -> None:
    for shape_id, shape in enumerate(SHAPES):
        for density_id, density in enumerate(DENSITIES):
            w = sparse_tensor(shape, density, seed=10 * shape_id + density_id)
            enc = encode_csr(w)
            assert enc.col_indices.dtype == torch.int32 and enc.row_ptr.dtype == torch.int32
            assert torch.equal(bits_of(decode_csr(enc)), bits_of(w))
            reference = w.reshape(shape[0], -1).to_sparse_csr()
            assert enc.row_ptr.tolist() == reference.crow_indices().tolist()
            assert enc.col_indices.tolist() == reference.col_indices().tolist()
            assert torch.equal(enc.values, reference.values())


def test_to_torch_csr_matmul_equals_dense() -> None:
    w = sparse_tensor((64, 300), 0.1, seed=5)
    x = torch.randn(300, 7)
    sparse = to_torch_csr(encode_csr(w))
    assert sparse.layout == torch.sparse_csr
    torch.testing.assert_close(sparse @ x, w @ x, rtol=1e-5, atol=1e-5)
    conv = sparse_tensor((8, 3, 3, 3), 0.3, seed=6)
    patches = torch.randn(27, 5)
    torch.testing.assert_close(
        to_torch_csr(encode_csr(conv)) @ patches, conv.reshape(8, -1) @ patches
    )


def test_csr_half_values_and_one_dim() -> None:
    w = sparse_tensor((10, 10), 0.4, seed=8)
    out = decode_csr(encode_csr(w, value_dtype="float16"))
    assert torch.equal(bits_of(out), bits_of(w.half().float()))
    vector = torch.tensor([0.0, 2.0, 0.0, -1.0])
    enc = encode_csr(vector)
    assert enc.matrix_shape == (1, 4) and torch.equal(decode_csr(enc), vector)


def test_decode_csr_rejects_corrupt_encodings() -> None:
    enc = encode_csr(torch.eye(3))
    bad_ptr = CsrEncoded(
        **{**enc.__dict__, "row_ptr": torch.tensor([0, 2, 1, 3], dtype=torch.int32)}
    )
    with pytest.raises(ValueError, match="row_ptr"):
        decode_csr(bad_ptr)
    bad_col = CsrEncoded(
        **{**enc.__dict__, "col_indices": torch.tensor([0, 1, 3], dtype=torch.int32)}
    )
    with pytest.raises(ValueError, match="column index out of range"):
        decode_csr(bad_col)


# ----------------------------------------------------------------------------- container


@pytest.mark.parametrize("fmt", ["han", "csr", "dense"])
def test_mlp_export_load_reproduces_outputs(tmp_path: Path, fmt: str) -> None:
    model = pruned_mlp()
    x = torch.randn(32, 20)
    expected = model(x)
    path = export_model(model, tmp_path / "mlp.safetensors", format=fmt, metadata={"name": "mlp"})
    state, metadata = load_compact(path)
    assert metadata == {"name": "mlp"}
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    fresh = mlp()
    fresh.load_state_dict(state)  # strict: a plain, mask-free state dict
    assert torch.equal(fresh(x), expected)
    assert torch.equal(state["0.weight"], model[0].weight)
    assert int(torch.count_nonzero(state["0.weight"])) == int(model[0].weight_mask.sum())


@pytest.mark.parametrize("fmt", ["han", "csr"])
def test_convnet_export_load_reproduces_outputs(tmp_path: Path, fmt: str) -> None:
    model = pruned_convnet()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    meta = {"model": "SmallConvNet", "kwargs": {"width": 6, "tags": ["a", "b"]}, "ratio": 0.5}
    path = export_model(model, tmp_path / "conv.safetensors", format=fmt, metadata=meta)
    state, metadata = load_compact(path)
    assert metadata == meta
    fresh = SmallConvNet().eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    assert torch.equal(state["bn1.running_var"], model.bn1.running_var)
    assert torch.equal(state["fc.bias"], model.fc.bias)  # a pruned bias, resolved and dense
    header = read_compact_header(path)
    assert header["format_version"] == FORMAT_VERSION and header["format"] == fmt
    assert set(header["layers"]) == {"conv1.weight", "conv2.weight", "fc.weight"}
    if fmt == "han":
        bits = {name: info["index_bits"] for name, info in header["layers"].items()}
        assert bits == {"conv1.weight": 8, "conv2.weight": 8, "fc.weight": 5}
        info = header["layers"]["fc.weight"]
        assert info["nnz"] == int(model.fc.weight_mask.sum())
        assert info["shape"] == [10, 128] and info["value_dtype"] == "float32"


def test_export_index_bits_override_and_half_values(tmp_path: Path) -> None:
    model = pruned_mlp()
    path = export_model(
        model,
        tmp_path / "m.safetensors",
        index_bits={"0": 3, "2.weight": 12},
        value_dtype="float16",
    )
    header = read_compact_header(path)
    assert header["layers"]["0.weight"]["index_bits"] == 3
    assert header["layers"]["2.weight"]["index_bits"] == 12
    state, _ = load_compact(path)
    assert torch.equal(state["0.weight"], model[0].weight.half().float())
    assert torch.equal(state["0.bias"], model[0].bias)  # other tensors keep their dtype
    with pytest.raises(ValueError, match="unknown layer"):
        export_model(model, tmp_path / "x.safetensors", index_bits={"fc9": 4})
    with pytest.raises(ValueError, match="format='han' or 'compressed' only"):
        export_model(model, tmp_path / "x.safetensors", format="csr", index_bits=5)
    with pytest.raises(ValueError, match="format="):
        export_model(model, tmp_path / "x.safetensors", format="coo")  # type: ignore[arg-type]


def test_save_compact_mixed_inputs(tmp_path: Path) -> None:
    a = sparse_tensor((16, 50), 0.1, seed=11)
    b = sparse_tensor((4, 3, 3, 3), 0.5, seed=12)
    c = sparse_tensor((5, 9), 0.5, seed=13)
    path = save_compact(
        tmp_path / "mixed.safetensors",
        {"a": a, "b": encode_csr(b), "c": encode_relative(c, 2)},
        format="han",
        index_bits={"a": 4},
        other_tensors={"steps": torch.tensor([3], dtype=torch.int64)},
    )
    state, metadata = load_compact(path)
    assert metadata == {}
    assert list(state) == ["a", "b", "c", "steps"]
    for name, w in {"a": a, "b": b, "c": c}.items():
        assert torch.equal(bits_of(state[name]), bits_of(w))
    assert state["steps"].tolist() == [3]
    layers = read_compact_header(path)["layers"]
    assert [layers[k]["encoding"] for k in "abc"] == ["han", "csr", "han"]
    assert (layers["a"]["index_bits"], layers["c"]["index_bits"]) == (4, 2)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    export_model(pruned_mlp(), path, metadata={"v": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="JSON"):
        export_model(pruned_mlp(), path, metadata={"bad": object()})
    assert path.read_bytes() == before  # a failed save leaves the old file alone
    export_model(pruned_mlp(), path, metadata={"v": 2})
    assert load_compact(path)[1] == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_truncated_file_raises_naming_path(tmp_path: Path) -> None:
    good = export_model(pruned_mlp(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    bad = tmp_path / "cut.safetensors"
    for cut in (0, 4, 8, 40, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ExportFormatError, match=str(bad)):
            load_compact(bad)
    assert issubclass(ExportFormatError, ValueError)


def test_foreign_and_non_safetensors_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"fc1.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(ExportFormatError, match="not a prunelab compact file") as info:
        load_compact(foreign)
    assert str(foreign) in str(info.value)
    text = tmp_path / "notes.txt"
    text.write_text("definitely not a safetensors file\n")
    with pytest.raises(ExportFormatError, match=str(text)):
        load_compact(text)
    with pytest.raises(FileNotFoundError):
        load_compact(tmp_path / "missing.safetensors")


def _rewrite(dst: Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    save_file(tensors, dst, metadata={"prunelab": json.dumps(header)})


def test_inconsistent_or_unknown_files_name_the_problem(tmp_path: Path) -> None:
    src = export_model(pruned_mlp(), tmp_path / "m.safetensors")
    with safe_open(str(src), framework="pt") as handle:
        header = json.loads(handle.metadata()["prunelab"])
    tensors = load_file(src)
    dst = tmp_path / "edited.safetensors"

    short = {**tensors, "0.weight/values": tensors["0.weight/values"][:-3]}
    _rewrite(dst, short, header)
    with pytest.raises(ExportFormatError, match=r"layer '0\.weight'"):
        load_compact(dst)

    missing = {k: v for k, v in tensors.items() if k != "2.weight/indices"}
    _rewrite(dst, missing, header)
    with pytest.raises(ExportFormatError, match=r"layer '2\.weight' is missing"):
        load_compact(dst)

    lying = json.loads(json.dumps(header))
    lying["layers"]["0.weight"]["shape"] = [2, 20]  # indices now run past the end
    _rewrite(dst, tensors, lying)
    with pytest.raises(ExportFormatError, match=r"layer '0\.weight'"):
        load_compact(dst)

    future = {**header, "format_version": FORMAT_VERSION + 1}
    _rewrite(dst, tensors, future)
    with pytest.raises(ExportFormatError, match="format_version"):
        load_compact(dst)

    _rewrite(dst, {**tensors, "stray": torch.zeros(1)}, header)
    with pytest.raises(ExportFormatError, match="stray"):
        load_compact(dst)


# ----------------------------------------------------------------------------- size table


def test_size_table_hand_computed() -> None:
    w = torch.zeros(2, 40)
    w[0, 0] = 1.0  # flat position 0
    w[1, 39] = 2.0  # flat position 79: 78 zeros before it
    state = {"fc.weight": w, "fc.bias": torch.ones(2)}

    layer, total = size_table(state, "han", index_bits=5)
    # 78 // 32 = 2 fillers; 4 entries: 16 value bytes, ceil(4*5/8) = 3 index bytes
    assert (layer.name, layer.shape, layer.weights, layer.nonzero) == ("fc.weight", (2, 40), 80, 2)
    assert (layer.entries, layer.fillers, layer.index_bits) == (4, 2, 5)
    assert (layer.value_bytes, layer.index_bytes, layer.compact_bytes) == (16, 3, 19)
    assert layer.index_overhead_pct == pytest.approx(3 / 16 * 100)
    assert layer.total_overhead_pct == pytest.approx((19 - 8) / 8 * 100)
    assert layer.dense_bytes == 320 and layer.ratio == pytest.approx(320 / 19)
    assert total.name == "total" and total.compact_bytes == 19

    (layer8, _) = size_table(state, "han")[:2]  # default for a 2-D weight: 5 bits
    assert layer8.index_bits == 5
    (layer8, _) = size_table(state, "han", index_bits=8)
    assert (layer8.entries, layer8.fillers, layer8.index_bytes) == (2, 0, 2)

    csr, _ = size_table(state, "csr")
    # 2 values * 4 B; 2 int32 columns + 3 int32 row pointers = 20 B
    assert (csr.entries, csr.value_bytes, csr.index_bytes, csr.compact_bytes) == (2, 8, 20, 28)
    assert csr.index_overhead_pct == pytest.approx(250.0)

    dense, _ = size_table(state, "dense", value_dtype="float16")
    assert (dense.entries, dense.value_bytes, dense.index_bytes, dense.ratio) == (80, 160, 0, 2.0)


def test_size_table_matches_export(tmp_path: Path) -> None:
    model = pruned_convnet()
    rows = size_table(model, "han")
    header = read_compact_header(export_model(model, tmp_path / "c.safetensors"))
    assert [r.name for r in rows] == [*header["layers"], "total"]
    for row in rows[:-1]:
        info = header["layers"][row.name]
        assert (row.entries, row.fillers, row.index_bits) == (
            info["num_entries"],
            info["num_fillers"],
            info["index_bits"],
        )
    total = rows[-1]
    assert total.entries == sum(r.entries for r in rows[:-1])
    assert total.compact_bytes == sum(r.value_bytes + r.index_bytes for r in rows[:-1])
    # Han's overhead: 5-bit indices on 32-bit values -> about 5/32 = 15.6%
    dense_fc = nn.Linear(800, 500)
    (fc_row, _) = size_table(dense_fc, "han")
    assert fc_row.index_overhead_pct == pytest.approx(5 / 32 * 100, abs=0.01)


def test_size_table_markdown() -> None:
    text = format_size_table_markdown(size_table(pruned_mlp(), "han"))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| layer | shape | weights | nonzero |")
    assert len(lines) == 2 + 2 + 1  # header, rule, two layers, total
    assert lines[2].startswith("| 0.weight | 16x20 | 320 | 64 | 20.0 |")
    assert lines[-1].startswith("| **total** |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
