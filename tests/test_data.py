"""Tests for prunelab.data: IDX parsing, checksums, root lookup, downloads and splits.

No test touches the network: ``prunelab.data.datasets.fetch_url`` is replaced for every
test, and tests that exercise downloading supply their own fake.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab.data import (
    DATASETS,
    DatasetError,
    DatasetSplits,
    Split,
    clear_cache,
    dataset_info,
    load_dataset,
    read_idx,
    resolve_root,
)
from prunelab.data import datasets as datasets_mod
from prunelab.data.idx import parse_idx

MNIST = DATASETS["mnist"]
FILES = MNIST.files
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
REPO_MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist"


@pytest.fixture(autouse=True)
def _no_network_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forbid real downloads and ignore any PRUNELAB_DATA set by the user."""

    def refuse(url: str, dest: Path, timeout: float = 10.0) -> None:
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(datasets_mod, "fetch_url", refuse)
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    """The MNIST directory the loader finds by default (the repo's shipped copy)."""
    old = os.environ.pop("PRUNELAB_DATA", None)
    try:
        root = resolve_root("mnist")
    finally:
        if old is not None:
            os.environ["PRUNELAB_DATA"] = old
    assert (root / f"{FILES['train_labels']}.gz").is_file(), root
    return root


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DatasetSplits:
    """Full MNIST, default split, normalised."""
    return load_dataset("mnist", mnist_dir, download=False)


@pytest.fixture(scope="module")
def mnist_raw(mnist_dir: Path) -> DatasetSplits:
    """Full MNIST, default split, pixels in [0, 1]."""
    return load_dataset("mnist", mnist_dir, download=False, normalize=False)


def _link_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """Populate ``dst`` with links (or copies) of the four MNIST .gz files, minus ``skip``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if name in skip:
            continue
        target = dst / f"{name}.gz"
        try:
            target.symlink_to(src / f"{name}.gz")
        except OSError:
            shutil.copyfile(src / f"{name}.gz", target)
    return dst


def _label_bytes(mnist_dir: Path) -> bytes:
    return gzip.decompress((mnist_dir / f"{FILES['train_labels']}.gz").read_bytes())


def _rows_sorted(images_u8: np.ndarray) -> np.ndarray:
    """Rows of an [N, ...] uint8 array as sorted opaque records (multiset fingerprint)."""
    flat = np.ascontiguousarray(images_u8.reshape(len(images_u8), -1))
    return np.sort(flat.view(np.dtype((np.void, flat.shape[1]))).ravel())


def _to_u8(split: Split) -> np.ndarray:
    return (split.images * 255).round().to(torch.uint8).numpy()


# --------------------------------------------------------------------------- real MNIST


def test_mnist_sizes_shapes_and_label_counts(mnist: DatasetSplits) -> None:
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55_000, 5_000, 10_000)
    assert mnist.name == "mnist" and mnist.num_classes == 10
    assert mnist.train.images.shape == (55_000, 1, 28, 28)
    assert mnist.train.images.dtype == torch.float32
    assert mnist.train.labels.dtype == torch.int64
    assert mnist.test.images.shape == (10_000, 1, 28, 28)
    all_train = torch.cat([mnist.train.labels, mnist.val.labels])
    assert torch.bincount(all_train, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.test.labels, minlength=10).tolist() == TEST_COUNTS


def test_mnist_normalisation_uses_training_statistics(mnist: DatasetSplits) -> None:
    assert mnist.normalized
    assert mnist.mean == pytest.approx(0.1307, abs=5e-4)
    assert mnist.std == pytest.approx(0.3081, abs=5e-4)
    x = mnist.train.images.double()
    # Exact up to float32 rounding: a mean/std taken over other pixels (e.g. all 60,000
    # images, val included) would be off by more than this.
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # Black pixels map to -mean/std in every split (same transform everywhere).
    for split in (mnist.train, mnist.val, mnist.test):
        assert split.images.min().item() == pytest.approx(-mnist.mean / mnist.std, rel=1e-5)
    # Val/test were not used for the statistics, so their mean is close to, not exactly, 0.
    assert abs(mnist.val.images.mean().item()) < 0.05


def test_unnormalised_pixels_in_unit_range(mnist_raw: DatasetSplits, mnist: DatasetSplits) -> None:
    assert not mnist_raw.normalized
    assert mnist_raw.train.images.min().item() == 0.0
    assert mnist_raw.train.images.max().item() == 1.0
    assert (mnist_raw.mean, mnist_raw.std) == (mnist.mean, mnist.std)
    restored = mnist.val.images[:50] * mnist.std + mnist.mean
    torch.testing.assert_close(restored, mnist_raw.val.images[:50], atol=1e-5, rtol=0)


def test_train_and_val_partition_the_official_training_set(
    mnist_raw: DatasetSplits, mnist_dir: Path
) -> None:
    official = read_idx(mnist_dir / f"{FILES['train_images']}.gz")
    official_labels = read_idx(mnist_dir / f"{FILES['train_labels']}.gz")
    train_u8, val_u8 = _to_u8(mnist_raw.train), _to_u8(mnist_raw.val)
    # Same multiset of images as the official file: nothing lost, nothing duplicated.
    combined = np.concatenate([train_u8, val_u8])[:, 0]
    assert np.array_equal(_rows_sorted(combined), _rows_sorted(official))
    # Disjoint: no val image appears in train (compare fingerprints of the val rows).
    train_set = set(_rows_sorted(train_u8).tolist())
    val_rows = _rows_sorted(val_u8).tolist()
    assert len(train_set) == len(train_u8)  # (MNIST has no exact duplicate images)
    assert not any(r in train_set for r in val_rows)
    # Labels travel with their images: image 0 of val has the label it has in the file.
    first = val_u8[0, 0]
    hits = np.flatnonzero((official == first).all(axis=(1, 2)))
    assert mnist_raw.val.labels[0].item() in official_labels[hits].tolist()


def test_split_is_deterministic_per_seed_and_differs_across_seeds(
    mnist_raw: DatasetSplits, mnist_dir: Path
) -> None:
    again = load_dataset("mnist", mnist_dir, seed=0, normalize=False, download=False, subset=500)
    assert torch.equal(again.val.images, mnist_raw.val.images[:500])
    assert torch.equal(again.val.labels, mnist_raw.val.labels[:500])
    assert torch.equal(again.train.labels, mnist_raw.train.labels[:500])
    other = load_dataset("mnist", mnist_dir, seed=1, normalize=False, download=False, subset=500)
    assert not torch.equal(other.val.labels, again.val.labels)
    assert not torch.equal(other.train.images, again.train.images)
    # The test set is never shuffled.
    assert torch.equal(other.test.labels, again.test.labels)


def test_subset_and_val_size(mnist: DatasetSplits, mnist_dir: Path) -> None:
    small = load_dataset("mnist", mnist_dir, subset=100, download=False)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 100, 100)
    # Statistics come from the full training part, so a subset is normalised identically.
    assert (small.mean, small.std) == (mnist.mean, mnist.std)
    assert torch.equal(small.test.images, mnist.test.images[:100])
    big = load_dataset("mnist", mnist_dir, subset=8000, val_size=3000, download=False)
    assert (len(big.train), len(big.val), len(big.test)) == (8000, 3000, 8000)
    none = load_dataset("mnist", mnist_dir, val_size=0, subset=10, download=False)
    assert len(none.val) == 0 and none.val.images.shape == (0, 1, 28, 28)


def test_default_root_is_shipped_copy_and_checksums_match_sums_file(mnist_dir: Path) -> None:
    assert mnist_dir == MNIST.default_roots[0] == REPO_MNIST
    sums = {}
    for line in (mnist_dir / "SHA256SUMS.uncompressed").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert sums == dict(MNIST.sha256)
    assert sorted(FILES.values()) == sorted(sums)


def test_cache_returns_same_array_and_notices_file_changes(tmp_path: Path, mnist_dir: Path) -> None:
    info = dataset_info("mnist")
    name = FILES["test_labels"]
    path = tmp_path / name
    path.write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    first = datasets_mod._load_verified(path, info.sha256[name], info)
    assert datasets_mod._load_verified(path, info.sha256[name], info) is first
    assert not first.flags.writeable
    # Same size, new content and new mtime: the cache must not hide the corruption.
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DatasetError, match="fails its checksum"):
        datasets_mod._load_verified(path, info.sha256[name], info)
    clear_cache()
    assert not datasets_mod._CACHE


# --------------------------------------------------------------------------- corruption


def test_flipped_byte_in_gz_label_file_raises_naming_file(tmp_path: Path, mnist_dir: Path) -> None:
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=(FILES["train_labels"],))
    bad = root / f"{FILES['train_labels']}.gz"
    data = bytearray((mnist_dir / bad.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root, download=False)
    assert str(bad) in str(err.value)
    assert "delete it so it is downloaded again" in str(err.value)


def test_flipped_payload_byte_fails_checksum_with_both_digests(
    tmp_path: Path, mnist_dir: Path
) -> None:
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=(FILES["train_labels"],))
    data = bytearray(_label_bytes(mnist_dir))
    data[1000] = (data[1000] + 1) % 10  # still a valid label: only the checksum can tell
    bad = root / FILES["train_labels"]  # plain, uncompressed file
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root, download=False)
    msg = str(err.value)
    assert str(bad) in msg and "checksum" in msg
    assert MNIST.sha256[FILES["train_labels"]] in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg


def test_truncated_plain_file_raises_naming_file(tmp_path: Path, mnist_dir: Path) -> None:
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=(FILES["train_labels"],))
    bad = root / FILES["train_labels"]
    bad.write_bytes(_label_bytes(mnist_dir)[:-100])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root, download=False)
    msg = str(err.value)
    assert str(bad) in msg and "truncated" in msg and "100 bytes missing" in msg


def test_truncated_gz_file_raises_naming_file(tmp_path: Path, mnist_dir: Path) -> None:
    bad = tmp_path / f"{FILES['test_images']}.gz"
    bad.write_bytes((mnist_dir / bad.name).read_bytes()[:50_000])
    with pytest.raises(DatasetError) as err:
        read_idx(bad)
    assert str(bad) in str(err.value) and "gzip" in str(err.value)
    assert err.value.__cause__ is not None  # original exception kept as context only


# --------------------------------------------------------------------------- IDX parser


def test_gz_and_plain_parse_identically_whatever_the_name(tmp_path: Path, mnist_dir: Path) -> None:
    gz = mnist_dir / f"{FILES['test_labels']}.gz"
    plain = tmp_path / "labels.gz"  # misleading name: content is plain
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    disguised = tmp_path / "labels.idx"  # misleading name: content is gzip
    disguised.write_bytes(gz.read_bytes())
    a, b, c = read_idx(gz), read_idx(plain), read_idx(disguised)
    assert a.shape == (10_000,) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert np.bincount(a, minlength=10).tolist() == TEST_COUNTS


def test_plain_files_in_root_load(tmp_path: Path, mnist_dir: Path) -> None:
    labels = (FILES["train_labels"], FILES["test_labels"])
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=labels)
    for name in labels:
        (root / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    ds = load_dataset("mnist", root, subset=50, download=False)
    ref = load_dataset("mnist", mnist_dir, subset=50, download=False)
    assert torch.equal(ds.train.labels, ref.train.labels)
    assert torch.equal(ds.test.images, ref.test.images)


def test_parse_idx_multidim_big_endian_int32() -> None:
    header = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    payload = np.arange(-3, 3, dtype=">i4").tobytes()
    arr = parse_idx(header + payload)
    assert arr.shape == (2, 3) and arr.dtype == np.dtype(np.int32)
    assert arr.dtype.isnative and arr.tolist() == [[-3, -2, -1], [0, 1, 2]]
    assert arr.flags.writeable


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "too short"),
        (b"<html>not found</html>", "wrong magic number"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "unknown IDX data type code 0x07"),
        (bytes([0, 0, 0x08, 0]), "implausible number of dimensions 0"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "truncated"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 1, 2, 3]), "1 unexpected trailing bytes"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 4, 1, 2, 3]), "1 bytes missing"),
        (b"\x1f\x8b\x08\x00garbage-after-gzip-magic", "gzip stream is broken"),
    ],
)
def test_malformed_idx_raises_dataset_error(tmp_path: Path, data: bytes, needle: str) -> None:
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(data)
    with pytest.raises(DatasetError) as err:
        read_idx(bad)
    assert needle in str(err.value)
    assert str(bad) in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------- missing / download


def test_missing_file_with_download_disabled_names_it(tmp_path: Path, mnist_dir: Path) -> None:
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=(FILES["test_images"],))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root, download=False)
    msg = str(err.value)
    assert f"'{FILES['test_images']}' is missing" in msg
    assert str(root) in msg and "download=False" in msg
    assert "train-images" not in msg.split("is missing")[0]


def test_failed_download_lists_every_mirror(tmp_path: Path, mnist_dir: Path) -> None:
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=(FILES["test_labels"],))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root, download=True)
    msg = str(err.value)
    for mirror in MNIST.mirrors:
        assert f"{mirror}{FILES['test_labels']}.gz" in msg
    assert "network disabled in tests" in msg
    assert sorted(p.name for p in root.iterdir()) == sorted(
        f"{n}.gz" for n in FILES.values() if n != FILES["test_labels"]
    )  # no partial downloads left behind


def test_download_is_atomic_and_verified(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def fake_fetch(url: str, dest: Path, timeout: float = 10.0) -> None:
        calls.append(url)
        assert dest.parent == root and dest.name.endswith(".part") and timeout <= 30
        if len(calls) == 1:  # first mirror serves garbage: must be rejected
            dest.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
        else:
            shutil.copyfile(mnist_dir / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(datasets_mod, "fetch_url", fake_fetch)
    root = _link_files(mnist_dir, tmp_path / "mnist", skip=(FILES["test_labels"],))
    ds = load_dataset("mnist", root, subset=20, download=True)
    assert len(calls) == 2 and calls[1].startswith(MNIST.mirrors[1])
    assert (root / f"{FILES['test_labels']}.gz").is_file()
    assert not list(root.glob("*.part"))
    assert torch.bincount(ds.test.labels, minlength=10).sum().item() == 20


def test_missing_fashion_mnist_suggests_apt(tmp_path: Path) -> None:
    empty = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", empty, download=True)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in msg
    assert not empty.exists()  # the failed download did not leave an empty directory


# --------------------------------------------------------------------------- root resolution


def test_env_var_is_honoured(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _link_files(mnist_dir, tmp_path / "mnist")
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path))
    assert resolve_root("mnist") == tmp_path / "mnist"
    assert resolve_root("fashion-mnist") == tmp_path / "fashion-mnist"
    assert len(load_dataset("mnist", subset=10, download=False).train) == 10
    # Explicit root beats the environment variable.
    assert resolve_root("mnist", mnist_dir) == mnist_dir
    # And a PRUNELAB_DATA without the files is reported as such.
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="PRUNELAB_DATA"):
        load_dataset("mnist", download=False)


def test_explicit_root_may_be_the_parent_directory(tmp_path: Path, mnist_dir: Path) -> None:
    _link_files(mnist_dir, tmp_path / "mnist")
    assert resolve_root("mnist", tmp_path) == tmp_path / "mnist"
    assert resolve_root("mnist", str(tmp_path / "mnist")) == tmp_path / "mnist"


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("val_size", [-1, 60_000, 10**6])
def test_bad_val_size_raises_value_error(val_size: int) -> None:
    with pytest.raises(ValueError, match=rf"val_size={val_size}\b.*0 <= val_size < 60000"):
        load_dataset("mnist", val_size=val_size, download=False)


@pytest.mark.parametrize("val_size", [2.5, "10", True])
def test_non_integer_val_size_raises_value_error(val_size: object) -> None:
    with pytest.raises(ValueError, match="val_size must be an integer"):
        load_dataset("mnist", val_size=val_size, download=False)  # type: ignore[arg-type]


def test_bad_subset_raises_value_error() -> None:
    with pytest.raises(ValueError, match="subset=0"):
        load_dataset("mnist", subset=0, download=False)


def test_unknown_name_lists_allowed_names() -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10")
    msg = str(err.value)
    assert "'cifar10'" in msg and "'mnist'" in msg and "'fashion-mnist'" in msg
    with pytest.raises(ValueError, match="cifar10"):
        dataset_info("cifar10")


def test_registry_contents() -> None:
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    for info in DATASETS.values():
        assert set(info.files) == {"train_images", "train_labels", "test_images", "test_labels"}
        assert set(info.sha256) == set(info.files.values())
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in info.sha256.values())
        assert info.num_classes == 10 and len(info.class_names) == 10
        assert sum(info.train_label_counts) == info.train_size == 60_000
        assert sum(info.test_label_counts) == info.test_size == 10_000
    assert MNIST.mirrors == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    assert DATASETS["fashion-mnist"].class_names[0] == "T-shirt/top"
    assert DATASETS["fashion-mnist"].default_roots == (FASHION_DIR,)


def test_split_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        Split(torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.int64))


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture
def fashion_dir() -> Iterator[Path]:
    if not FASHION_DIR.is_dir():
        pytest.skip(
            f"{FASHION_DIR} is absent (install it with `apt-get install dataset-fashion-mnist`)"
        )
    yield FASHION_DIR


def test_fashion_mnist_loads(fashion_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55_000, 5_000, 10_000)
    assert ds.train.images.shape == (55_000, 1, 28, 28)
    all_train = torch.cat([ds.train.labels, ds.val.labels])
    assert torch.bincount(all_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10
    assert ds.mean == pytest.approx(0.2860, abs=2e-3)
    assert ds.std == pytest.approx(0.3530, abs=2e-3)
    assert ds.train.images.double().mean().item() == pytest.approx(0.0, abs=1e-4)


def test_prepare_splits_normalises_like_load_dataset() -> None:
    from prunelab.data import prepare_splits

    s = prepare_splits("mnist", val_size=500, seed=3, subset=600)
    ref = load_dataset("mnist", val_size=500, seed=3, subset=600, normalize=True)
    assert torch.allclose(s.x_train, ref.train.images, atol=1e-6)
    assert torch.allclose(s.x_val, ref.val.images, atol=1e-6)
    assert torch.equal(s.y_test, ref.test.labels)
    assert s.meta["mean"] == pytest.approx(ref.mean) and s.meta["split_seed"] == 3


def test_prepare_splits_limits_and_scale_mode() -> None:
    from prunelab.data import prepare_splits

    s = prepare_splits("mnist", val_size=100, normalize="scale", train_limit=50, test_limit=20)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (50, 100, 20)
    assert (s.meta["train_size"], s.meta["test_size"]) == (50, 20)
    assert float(s.x_train.min()) == 0.0  # zero pixels stay zero under "scale"
    with pytest.raises(ValueError, match="normalize='bogus' is unknown; allowed: standard, scale"):
        prepare_splits("mnist", val_size=100, subset=10, normalize="bogus")


def test_splits_for_model_file_rebuild_the_training_inputs() -> None:
    from prunelab.data import prepare_splits, splits_for_model_file

    s = prepare_splits("mnist", val_size=200, seed=1, subset=300, normalize="scale")
    again = splits_for_model_file({"dataset": dict(s.meta)})
    assert torch.equal(again.x_val, s.x_val) and torch.equal(again.x_test, s.x_test)
