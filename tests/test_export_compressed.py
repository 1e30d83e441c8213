"""Deep Compression's format: codebook + Huffman-coded cluster indices and relative indices,
in the compact safetensors container, its size table and the command line."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import build_convnet, share_weights
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import prune

from prunelab.cli import main
from prunelab.export import (
    CodebookSizeError,
    ExportFormatError,
    codebook_of,
    compressed_size_table,
    decode_compressed,
    effective_state_dict,
    encode_compressed,
    export_model,
    format_compressed_size_table_markdown,
    format_deep_compression_comparison,
    load_compact,
    read_compact_header,
    save_compact,
    size_table,
)
from prunelab.modelfile import load_any_model, save_model_file
from prunelab.models import build_model
from prunelab.paper import DEEP_COMPRESSION
from prunelab.pruner import Pruner

# ----------------------------------------------------------------------------- helpers


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of an fp32 tensor, -0.0 mapped to +0.0 (the formats drop signed zeros)."""
    t = torch.where(t == 0, torch.zeros_like(t), t)
    return t.contiguous().view(torch.int32)


def shared(shape: tuple[int, ...], density: float, values: int, seed: int) -> torch.Tensor:
    """A pruned layer whose nonzeros take ``values`` distinct values (-0.0 where pruned)."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.linspace(-1.0, 1.0, values + 1)[torch.arange(values + 1) != values // 2]
    centroids = centroids[:values]
    weight = centroids[torch.randint(values, shape, generator=g)]
    mask = (torch.rand(shape, generator=g) < density).float()
    return weight * mask


def shared_convnet() -> nn.Sequential:
    """conftest's conv net (conv, BatchNorm, conv, fc, fc), pruned and weight-shared."""
    model = build_convnet(seed=3)
    model.train()
    model(torch.randn(32, 1, 8, 8))  # BatchNorm running statistics that are not trivial
    for name, amount in (("conv1", 0.3), ("conv2", 0.6), ("fc1", 0.8), ("fc2", 0.5)):
        prune.l1_unstructured(getattr(model, name), "weight", amount=amount)
    return share_weights(model, {nn.Conv2d: 16, nn.Linear: 8}).eval()


def shared_lenet300(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("lenet300")
    Pruner(model).step("magnitude", 0.92)
    return share_weights(model, {nn.Linear: 32}).eval()


def file_payload(path: Path) -> int:
    with safe_open(str(path), framework="pt") as handle:
        return sum(handle.get_tensor(k).numel() * handle.get_tensor(k).element_size()
                   for k in handle.keys())  # noqa: SIM118


def rewrite(src: Path, dst: Path, header_edit=None, tensor_edit=None) -> Path:
    """Re-write a compact file after editing its header / tensors (no checksum: a hostile
    author writes none)."""
    with safe_open(str(src), framework="pt") as handle:
        header = json.loads(handle.metadata()["prunelab"])
    tensors = load_file(src)
    if header_edit is not None:
        header_edit(header)
    if tensor_edit is not None:
        tensor_edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst,
              metadata={"prunelab": json.dumps(header)})
    return dst


# ----------------------------------------------------------------------------- one layer


@pytest.mark.parametrize("index_bits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 300), (20, 1, 5, 5), (10, 20, 3, 3)])
def test_layer_round_trip_bit_exact(index_bits: int, shape: tuple[int, ...]) -> None:
    for seed, (density, values) in enumerate([(0.0, 1), (0.02, 3), (0.1, 32), (0.5, 7),
                                              (1.0, 256)]):
        w = shared(shape, density, values, seed)
        enc = encode_compressed(w, index_bits, 8)
        out = decode_compressed(enc)
        assert out.shape == w.shape and out.dtype == torch.float32
        assert torch.equal(bits_of(out), bits_of(w)), (shape, density, values)
        nonzero = int(torch.count_nonzero(w))
        assert enc.nnz == nonzero
        assert enc.codebook_size == len(set(w[w != 0].tolist()))
        assert enc.codebook.dtype == torch.float32
        assert enc.nbytes == (enc.value_nbytes + enc.index_nbytes + 4 * enc.codebook_size
                              + enc.table_nbytes)


def test_fillers_match_han_format() -> None:
    from prunelab.export import encode_relative

    w = torch.zeros(3, 100)
    w[0, 0], w[1, 50], w[2, 99] = 0.5, -0.5, 0.5
    for bits in (2, 3, 5):
        enc = encode_compressed(w, bits, 1)
        han = encode_relative(w, bits)
        assert (enc.num_entries, enc.num_fillers) == (han.num_entries, han.num_fillers)
        assert torch.equal(decode_compressed(enc), w)
        # the filler is the extra cluster symbol, after the two codebook values
        assert enc.cluster_code_lengths.numel() == 3


def test_codebook_is_sorted_distinct_and_indexes_every_nonzero() -> None:
    w = shared((30, 40), 0.3, 9, seed=4)
    values, positions, clusters = codebook_of(w)
    assert values.tolist() == sorted(set(w[w != 0].tolist()))
    assert torch.equal(values[torch.from_numpy(clusters)], w.reshape(-1)[positions])
    assert positions.tolist() == torch.nonzero(w.reshape(-1)).flatten().tolist()


def test_special_values_and_signed_zeros_are_exact() -> None:
    nan = torch.tensor([0x7FC0_1234], dtype=torch.int32).view(torch.float32)
    w = torch.tensor([[-0.0, 1.0, float("inf"), -float("inf")], [0.0, -1e-45, 1.0, 0.0]])
    w = torch.cat([w, torch.cat([nan, nan, torch.zeros(2)]).view(1, 4)])
    enc = encode_compressed(w, 3, 3)
    assert enc.codebook_size == 5  # -inf, -1e-45, 1.0, inf, the NaN (one bit pattern)
    out = decode_compressed(enc)
    assert torch.equal(bits_of(out), bits_of(w))
    assert math.copysign(1.0, out[0, 0].item()) == 1.0  # -0.0 decodes as +0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_weight_dtypes(dtype: torch.dtype) -> None:
    w = shared((12, 50), 0.3, 6, seed=5).to(dtype)
    out = decode_compressed(encode_compressed(w, 5, 3))
    assert out.dtype == dtype and torch.equal(out, w)


def test_float64_values_float32_cannot_hold_are_refused() -> None:
    w = torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64)  # 0.1 is not a float32 value
    with pytest.raises(ValueError, match="float32 cannot hold exactly"):
        encode_compressed(w, 5, 5, name="fc9.weight")


def test_too_many_values_names_layer_count_and_limit() -> None:
    w = shared((10, 10), 1.0, 40, seed=6)
    count = len(set(w.flatten().tolist()))
    assert count > 32
    with pytest.raises(CodebookSizeError) as info:
        encode_compressed(w, 5, 5, name="fc1.weight")
    message = str(info.value)
    assert f"'fc1.weight' has {count} distinct nonzero values (limit 32, 5-bit" in message
    assert "share the weights first" in message
    assert info.value.layers == (("fc1.weight", count, 32),)
    assert isinstance(info.value, ValueError)
    assert encode_compressed(w, 5, 6).codebook_size == count  # 64 values allowed: fits


def test_bad_widths_are_refused() -> None:
    w = shared((4, 4), 0.5, 2, seed=7)
    with pytest.raises(ValueError, match="cluster_bits=16"):
        encode_compressed(w, 5, 16)
    with pytest.raises(ValueError, match="index_bits=0"):
        encode_compressed(w, 0, 5)
    with pytest.raises(TypeError, match="cluster_bits must be an int"):
        encode_compressed(w, 5, True)


# ----------------------------------------------------------------------------- container


def test_export_load_is_bit_exact_and_outputs_identical(tmp_path: Path) -> None:
    model = shared_convnet()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(x)
    path = export_model(model, tmp_path / "c.safetensors", format="compressed",
                        metadata={"model": "convnet"})
    state, metadata = load_compact(path)
    assert metadata == {"model": "convnet"}
    effective = effective_state_dict(model)
    assert list(state) == list(effective)
    for key, tensor in effective.items():
        assert state[key].dtype == tensor.dtype
        if tensor.is_floating_point():
            assert torch.equal(bits_of(state[key]), bits_of(tensor)), key
        else:
            assert torch.equal(state[key], tensor), key
    fresh = build_convnet(seed=11).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)

    header = read_compact_header(path)
    assert header["format"] == "compressed"
    layers = header["layers"]
    assert set(layers) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert {k: (v["index_bits"], v["cluster_bits"]) for k, v in layers.items()} == {
        "conv1.weight": (8, 8), "conv2.weight": (8, 8), "fc1.weight": (5, 5),
        "fc2.weight": (5, 5)}
    for name, info in layers.items():
        weight = effective[name]
        assert info["encoding"] == "compressed" and info["value_dtype"] == "float32"
        assert info["nnz"] == int(torch.count_nonzero(weight))
        assert info["codebook_size"] == len(set(weight[weight != 0].tolist()))
    assert set(header["tensors"]) == {"conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                      "bn1.running_var", "bn1.num_batches_tracked",
                                      "conv2.bias", "fc1.bias", "fc2.bias"}


def test_index_and_cluster_bits_overrides(tmp_path: Path) -> None:
    model = shared_convnet()
    path = export_model(model, tmp_path / "c.safetensors", format="compressed",
                        index_bits={"fc1": 3, "conv1.weight": 2}, cluster_bits=4)
    layers = read_compact_header(path)["layers"]
    assert (layers["fc1.weight"]["index_bits"], layers["conv1.weight"]["index_bits"]) == (3, 2)
    assert (layers["fc2.weight"]["index_bits"], layers["conv2.weight"]["index_bits"]) == (5, 8)
    assert {v["cluster_bits"] for v in layers.values()} == {4}
    state, _ = load_compact(path)
    # (effective_state_dict, not model.fc1.weight: torch's pruning hook refreshes that
    # attribute only at the next forward, after share_weights edited weight_orig)
    assert torch.equal(bits_of(state["fc1.weight"]),
                       bits_of(effective_state_dict(model)["fc1.weight"]))
    with pytest.raises(ValueError, match="cluster_bits applies to format='compressed' only"):
        export_model(model, tmp_path / "x.safetensors", format="han", cluster_bits=4)
    with pytest.raises(ValueError, match="float32 codebooks"):
        export_model(model, tmp_path / "x.safetensors", format="compressed",
                     value_dtype="float16")
    with pytest.raises(ValueError, match="cluster_bits names unknown layer 'fc9'"):
        export_model(model, tmp_path / "x.safetensors", format="compressed",
                     cluster_bits={"fc9": 4})
    assert not (tmp_path / "x.safetensors").exists()


def test_unshared_model_is_one_error_naming_every_layer(tmp_path: Path) -> None:
    model = build_convnet(seed=0)  # not weight-shared: (almost) every value distinct
    prune.l1_unstructured(model.fc2, "weight", amount=0.9)  # 4 values left: they fit
    path = tmp_path / "c.safetensors"
    with pytest.raises(CodebookSizeError) as info:
        export_model(model, path, format="compressed", cluster_bits=4)
    counts = {name: len(set(t[t != 0].tolist()))
              for name, t in effective_state_dict(model).items() if name.endswith("weight")}
    assert counts["fc2.weight"] == 4 and min(counts["conv1.weight"], counts["fc1.weight"]) > 16
    assert info.value.layers == tuple(
        (name, counts[name], 16) for name in ("conv1.weight", "conv2.weight", "fc1.weight"))
    message = str(info.value)
    for name, count, _ in info.value.layers:
        assert f"'{name}' has {count} distinct nonzero values (limit 16, 4-bit codebook)" in message
    assert "fc2" not in message
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_save_compact_takes_encoded_layers_and_mixes_formats(tmp_path: Path) -> None:
    a = shared((16, 50), 0.1, 5, seed=12)
    b = shared((4, 3, 3, 3), 0.5, 3, seed=13)
    path = save_compact(tmp_path / "m.safetensors", {"a": a, "b": encode_compressed(b, 2, 2)},
                        format="han")
    layers = read_compact_header(path)["layers"]
    assert (layers["a"]["encoding"], layers["b"]["encoding"]) == ("han", "compressed")
    state, _ = load_compact(path)
    assert torch.equal(bits_of(state["a"]), bits_of(a))
    assert torch.equal(bits_of(state["b"]), bits_of(b))


def test_empty_and_dense_layers(tmp_path: Path) -> None:
    empty = torch.zeros(5, 7)
    full = shared((6, 6), 1.0, 4, seed=14)
    path = save_compact(tmp_path / "m.safetensors", {"e": empty, "f": full}, format="compressed")
    layers = read_compact_header(path)["layers"]
    assert (layers["e"]["num_entries"], layers["e"]["codebook_size"]) == (0, 0)
    assert layers["f"]["num_entries"] == 36 and layers["f"]["gap_nbits"] == 36  # 1 bit each
    state, _ = load_compact(path)
    assert torch.equal(state["e"], empty) and torch.equal(bits_of(state["f"]), bits_of(full))


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compressed") / "good.safetensors"
    torch.manual_seed(0)
    w = torch.zeros(20, 100)
    w[:, ::7] = torch.linspace(-1, 1, 4).repeat(20, 4)[:, : w[:, ::7].shape[1]]
    w[5:8] = 0.0  # 300 zeros in a row: fillers at 5 bits
    return save_compact(path, {"fc.weight": w}, format="compressed",
                        other_tensors={"fc.bias": torch.ones(20)})


def _set(key: str, value: object, **more: object):
    def edit(header: dict) -> None:
        info = header["layers"]["fc.weight"]
        info[key] = value
        for other, change in more.items():  # a callable edits relative to the old value
            info[other] = change(info[other]) if callable(change) else change
    return edit


def test_good_file_has_fillers(good_file: Path) -> None:
    info = read_compact_header(good_file)["layers"]["fc.weight"]
    assert info["num_fillers"] == 9 and info["codebook_size"] == 4


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_set("codebook_size", 3), "codebook"),
        (_set("codebook_size", True), "codebook_size"),
        (_set("cluster_nbits", 10**6), "cluster_stream"),
        (_set("gap_nbits", 1), "gap_stream"),
        (_set("num_entries", 2**40, nnz=lambda n: 2**40 - 9), "num_entries=1099511627776"),
        (_set("num_entries", "300"), "num_entries"),
        (_set("num_fillers", 5), "fillers"),
        (_set("num_fillers", 8, nnz=lambda n: n + 1), "carry the filler index"),
        (_set("num_entries", 2000, nnz=2000 - 9), "cannot fill"),
        (_set("nnz", 1), "nnz"),
        (_set("cluster_bits", 1), "2\\*\\*cluster_bits"),
        (_set("cluster_bits", 16), "cluster_bits"),
        (_set("index_bits", 17), "index_bits"),
        (_set("index_bits", 2), "gap_code_lengths"),
        (_set("shape", [20, 10]), "elements"),
        (_set("value_dtype", "float16"), "value_dtype"),
        (_set("encoding", "huffman"), "unknown encoding"),
    ],
)
def test_corrupt_headers_are_one_clear_error(good_file: Path, tmp_path: Path, edit,
                                             needle: str) -> None:
    bad = rewrite(good_file, tmp_path / "bad.safetensors", header_edit=edit)
    start = time.process_time()
    with pytest.raises(ExportFormatError, match=needle) as info:
        load_compact(bad)
    assert time.process_time() - start < 2.0  # refused before any big allocation
    assert str(bad) in str(info.value) and "fc.weight" in str(info.value)


def _tensor(key: str, change):
    def edit(tensors: dict) -> None:
        tensors[key] = change(tensors[key])
    return edit


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_tensor("fc.weight/cluster_stream", lambda t: t[:-1]), "cluster_stream"),
        (_tensor("fc.weight/gap_stream", lambda t: torch.cat([t, t])), "gap_stream"),
        (_tensor("fc.weight/codebook", lambda t: t.double()), "codebook"),
        (_tensor("fc.weight/codebook", lambda t: torch.zeros_like(t)), "zero"),
        (_tensor("fc.weight/gap_code_lengths", lambda t: torch.ones_like(t)), "over-subscribed"),
        (_tensor("fc.weight/cluster_code_lengths", lambda t: t.to(torch.int32)), "uint8"),
        (_tensor("fc.weight/cluster_code_lengths", lambda t: torch.cat([t, t])), "more than"),
        (_tensor("fc.weight/gap_code_lengths", lambda t: torch.zeros_like(t)), "no symbol"),
    ],
)
def test_corrupt_arrays_are_one_clear_error(good_file: Path, tmp_path: Path, edit,
                                            needle: str) -> None:
    bad = rewrite(good_file, tmp_path / "bad.safetensors", tensor_edit=edit)
    with pytest.raises(ExportFormatError, match=needle):
        load_compact(bad)


def test_missing_array_and_truncated_file(good_file: Path, tmp_path: Path) -> None:
    bad = rewrite(good_file, tmp_path / "bad.safetensors",
                  tensor_edit=lambda t: t.pop("fc.weight/gap_code_lengths"))
    with pytest.raises(ExportFormatError, match=r"missing its array 'fc\.weight/gap_code_len"):
        load_compact(bad)
    data = good_file.read_bytes()
    for cut in (8, 100, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ExportFormatError, match=str(bad)):
            load_compact(bad)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_flipped_stream_bits_load_or_raise(good_file: Path, tmp_path_factory, data) -> None:
    """A flipped bit in a stream of a file without its checksum: our error, or a tensor of the
    declared shape whose values all come from the codebook."""
    key = data.draw(st.sampled_from(["fc.weight/cluster_stream", "fc.weight/gap_stream",
                                     "fc.weight/cluster_code_lengths",
                                     "fc.weight/gap_code_lengths"]))
    def flip(tensors: dict) -> None:
        t = tensors[key].clone()
        at = data.draw(st.integers(0, t.numel() * 8 - 1))
        t[at // 8] ^= 1 << (at % 8)
        tensors[key] = t
    bad = rewrite(good_file, tmp_path_factory.mktemp("flip") / "bad.safetensors",
                  tensor_edit=flip)
    try:
        state, _ = load_compact(bad)
    except ExportFormatError:
        return
    codebook = set(load_file(good_file)["fc.weight/codebook"].tolist()) | {0.0}
    assert state["fc.weight"].shape == (20, 100)
    assert set(state["fc.weight"].flatten().tolist()) <= codebook


def test_flipped_bit_with_checksum_is_caught(good_file: Path, tmp_path: Path) -> None:
    data = bytearray(good_file.read_bytes())
    data[-3] ^= 0x10  # inside the last array
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ExportFormatError, match="SHA-256"):
        load_compact(bad)


# ----------------------------------------------------------------------------- size table


def test_size_table_sums_equal_the_file_payload(tmp_path: Path) -> None:
    model = shared_convnet()
    path = export_model(model, tmp_path / "c.safetensors", format="compressed")
    table = compressed_size_table(model)
    assert table.compressed_bytes == file_payload(path)
    layers, total = table.rows[:-1], table.total
    assert total.compressed_bytes + table.other_bytes == table.compressed_bytes
    with safe_open(str(path), framework="pt") as handle:
        def size(key: str) -> int:
            return handle.get_tensor(key).numel() * handle.get_tensor(key).element_size()
        for row in layers:
            assert row.value_bytes == size(f"{row.name}/cluster_stream")
            assert row.index_bytes == size(f"{row.name}/gap_stream")
            assert row.codebook_bytes == size(f"{row.name}/codebook")
            assert row.table_bytes == (size(f"{row.name}/cluster_code_lengths")
                                       + size(f"{row.name}/gap_code_lengths"))
            assert row.bias_bytes == size(row.name.replace("weight", "bias"))
        bn = sum(size(k) for k in handle.keys() if k.startswith("bn1."))  # noqa: SIM118
    assert table.other_bytes == bn > 0
    for field in ("weights", "nonzero", "entries", "fillers", "value_bytes", "index_bytes",
                  "codebook_bytes", "table_bytes", "bias_bytes", "compressed_bytes",
                  "dense_bytes"):
        assert getattr(total, field) == sum(getattr(r, field) for r in layers), field
    params = sum(p.numel() for n, p in build_convnet().named_parameters() if "bn1" not in n)
    assert total.dense_bytes == 4 * params
    lines = format_compressed_size_table_markdown(table).splitlines()
    assert lines[7].startswith("| other tensors |")
    assert lines[7].endswith(f"| {table.other_bytes} | {table.other_bytes} | | |")
    assert all(line.count("|") == lines[0].count("|") for line in lines[:8])


def test_size_table_stages_and_ratios() -> None:
    model = shared_lenet300()
    table = compressed_size_table(model)
    han = size_table(model, "han")
    biases = sum(4 * m.bias.numel() for m in (model.fc1, model.fc2, model.fc3))
    assert table.dense_bytes == 266_610 * 4
    assert table.pruned_bytes == han[-1].compact_bytes + biases
    assert table.dense_bytes > table.pruned_bytes > table.quantized_bytes > table.compressed_bytes
    assert table.ratio == pytest.approx(
        table.pruning_ratio * table.quantization_ratio * table.huffman_ratio)
    assert table.quantization_huffman_ratio == pytest.approx(
        table.quantization_ratio * table.huffman_ratio)
    for row in table.rows[:-1]:
        # Huffman never loses to the fixed widths it replaces (an optimal prefix code)
        symbols = row.codebook_size + (1 if row.fillers else 0)
        assert row.value_bytes <= math.ceil(row.entries * (symbols - 1).bit_length() / 8)
        assert row.index_bytes <= math.ceil(row.entries * 5 / 8)
        assert row.bits_per_nonzero == pytest.approx(
            (row.compressed_bytes - row.bias_bytes) * 8 / row.nonzero)
    with pytest.raises(ValueError, match="compressed_size_table"):
        size_table(model, "compressed")


def test_size_table_hand_computed() -> None:
    w = torch.zeros(2, 40)
    w[0, 0], w[1, 39] = 0.5, -0.25  # 78 zeros between: 2 fillers at 5 bits
    table = compressed_size_table({"fc.weight": w, "fc.bias": torch.ones(2)}, cluster_bits=1)
    row = table.rows[0]
    assert (row.entries, row.fillers, row.codebook_size) == (4, 2, 2)
    # clusters: -0.25 once, 0.5 once, filler twice -> lengths 2, 2, 1: 6 bits -> 1 byte
    # gaps: 0 once, 31 twice, 14 once -> 6 bits -> 1 byte; gap table holds codes 0..31
    assert (row.value_bytes, row.index_bytes, row.codebook_bytes) == (1, 1, 8)
    assert row.table_bytes == 3 + 32 and row.bias_bytes == 8
    assert row.compressed_bytes == 1 + 1 + 8 + 35 + 8 == table.compressed_bytes
    assert row.dense_bytes == 4 * 82 == table.dense_bytes
    assert table.pruned_bytes == 4 * 4 + 3 + 8  # Han: 4 fp32 entries, 20 bits of indices
    assert table.quantized_bytes == 1 + 3 + 8 + 8  # 2-bit clusters (3 symbols), 5-bit gaps


def test_size_table_markdown_and_comparison() -> None:
    model = shared_lenet300()
    table = compressed_size_table(model)
    text = format_compressed_size_table_markdown(table)
    lines = text.splitlines()
    assert lines[0].startswith("| layer | shape | weights | nonzero | kept % | entries |")
    assert [ln.split(" | ")[0] for ln in lines[2:6]] == ["| fc1.weight", "| fc2.weight",
                                                         "| fc3.weight", "| **total**"]
    assert lines[5].split(" | ")[15] == str(table.compressed_bytes)
    assert all(ln.count("|") == lines[0].count("|") for ln in lines[:6])
    assert f"| + Huffman coding (this file) | {table.compressed_bytes} |" in text
    assert f"pruning contributes {table.pruning_ratio:.2f}x" in text
    comparison = format_deep_compression_comparison(table, "lenet300")
    ours, paper = comparison.splitlines()[2:]
    assert ours.startswith(f"| this file | 1066.4 | {table.compressed_bytes / 1000:.1f} |")
    ref = DEEP_COMPRESSION["lenet300"]
    assert paper == (f"| Deep Compression (Han et al. 2016, LeNet-300-100) | "
                     f"{ref['dense_kb']:.1f} | {ref['compressed_kb']:.1f} | 40x |")
    assert format_deep_compression_comparison(table, "vgg16") is None


def test_size_table_refuses_unshared_layers() -> None:
    with pytest.raises(CodebookSizeError, match=r"'fc1\.weight' has"):
        compressed_size_table(build_model("lenet300"))


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "model.safetensors"
    save_model_file(path, shared_lenet300(seed=2), {"name": "lenet300", "kwargs": {}},
                    dataset={"name": "mnist", "mean": 0.1307, "std": 0.3081, "subset": 500})
    return path


def test_cli_export_and_evaluate_give_the_same_error(model_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lenet300.compressed.safetensors"
    assert main(["export", str(model_file), "--format", "compressed", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| fc1.weight | 300x784 |" in printed and "+ Huffman coding (this file)" in printed
    assert "Deep Compression (Han et al. 2016, LeNet-300-100)" in printed
    model, _ = load_any_model(model_file)
    assert f"{file_payload(out)}" in printed  # the table's total is the file's payload
    assert compressed_size_table(model).compressed_bytes == file_payload(out)

    assert main(["evaluate", str(model_file), "--json"]) == 0
    source = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--json"]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert decoded == source  # test error and parameter counts, exactly
    assert 0 < source["params_nonzero"] < source["params_total"] == 266_610

    loaded, info = load_any_model(out)
    assert info["source"] == str(model_file)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_cli_export_options(model_file: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e.safetensors"
    assert main(["export", str(model_file), "--format", "compressed", "--out", str(out),
                 "--index-bits", "fc=4,fc3=6", "--cluster-bits", "6"]) == 0
    layers = read_compact_header(out)["layers"]
    assert {k: (v["index_bits"], v["cluster_bits"]) for k, v in layers.items()} == {
        "fc1.weight": (4, 6), "fc2.weight": (4, 6), "fc3.weight": (6, 6)}
    capsys.readouterr()
    cases = [
        (["--format", "han", "--cluster-bits", "5"], "--cluster-bits applies to --format "
         "compressed only"),
        (["--format", "compressed", "--value-dtype", "float16"], "codebooks are float32"),
        (["--format", "compressed", "--cluster-bits", "16"], "--cluster-bits 16 is out of range"),
        (["--format", "compressed", "--cluster-bits", "fc9=4"], "--cluster-bits names unknown "
         "layers ['fc9']"),
        (["--format", "csr", "--index-bits", "5"], "--index-bits applies to --format han and "
         "compressed only"),
        (["--format", "compressed", "--cluster-bits", "fc=2"], "nonzero values (limit 4, "
         "2-bit codebook); layer 'fc2.weight' has"),
    ]
    for extra, needle in cases:
        assert main(["export", str(model_file), "--out", str(tmp_path / "x.safetensors"),
                     *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("prunelab: error: ") and needle in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_refuses_a_model_that_is_not_weight_shared(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "dense.safetensors"
    save_model_file(path, build_model("lenet300"), {"name": "lenet300", "kwargs": {}},
                    dataset={"name": "mnist"})
    assert main(["export", str(path), "--format", "compressed",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"layer 'fc1\.weight' has [\d,]{7} distinct nonzero values \(limit 32, "
                     r"5-bit codebook\); layer 'fc2\.weight' has", err), err
    assert "share the weights first" in err and "prunelab.sharing" in err


# ----------------------------------------------------------------------------- figures


def test_bits_per_weight_on_a_snapped_lenet300() -> None:
    """A measured figure, pinned loosely. LeNet-300-100 at random init, magnitude-pruned to 8%,
    32 values per layer at quantiles of the survivors: the clusters are near uniform (~5.0
    bits per entry, 32 values and the filler), the gaps geometric-like (~4.7 bits per entry,
    below the fixed 5), and 7.5% of the entries are fillers: ~10.4 bits per nonzero."""
    table = compressed_size_table(shared_lenet300())
    total = table.total
    assert total.fillers / total.entries == pytest.approx(0.07, abs=0.02)
    assert 4.3 < total.index_bytes * 8 / total.entries < 5.0
    assert 4.9 < total.value_bytes * 8 / total.entries < 5.2
    assert 9.5 < (total.value_bytes + total.index_bytes) * 8 / total.nonzero < 11.0
    assert table.quantized_bytes > table.compressed_bytes
