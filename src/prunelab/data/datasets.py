"""MNIST and Fashion-MNIST loaders with SHA-256 verification and seeded validation splits.

Files are looked up in a *root* directory, resolved in this order:

1. the explicit ``root`` argument of :func:`load_dataset` / :func:`resolve_root`;
2. ``$PRUNELAB_DATA/<name>`` when the environment variable ``PRUNELAB_DATA`` is set (it
   names a directory holding ``mnist/`` and/or ``fashion-mnist/`` subdirectories);
3. the dataset's default roots (:attr:`DatasetInfo.default_roots`): for MNIST the copy
   shipped in the repository (``<repo>/data/mnist``, then ``<repo>/../shared/data/mnist``);
   for Fashion-MNIST ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``).

Each file may be stored gzip-compressed (``name.gz``) or plain (``name``). Whatever the
form, the SHA-256 of the *decompressed* bytes is checked against the registry, so a file
recompressed with other gzip settings still verifies. Missing files are downloaded from
the public mirrors when ``download=True`` (written atomically, then verified).

Example:
    >>> from prunelab.data import load_dataset
    >>> ds = load_dataset("mnist", subset=512)  # doctest: +SKIP
    >>> ds.train.images.shape, len(ds.val), round(ds.mean, 4)  # doctest: +SKIP
    (torch.Size([512, 1, 28, 28]), 512, 0.1307)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np
import torch

from prunelab.data.idx import DatasetError, decompress_if_gzip, parse_idx, read_decompressed

__all__ = [
    "DATASETS",
    "DOWNLOAD_TIMEOUT_S",
    "ENV_VAR",
    "FILE_ROLES",
    "DatasetInfo",
    "DatasetSplits",
    "Split",
    "clear_cache",
    "dataset_info",
    "fetch_url",
    "load_dataset",
    "resolve_root",
]

ENV_VAR: Final[str] = "PRUNELAB_DATA"
"""Environment variable naming a directory with ``mnist/`` and/or ``fashion-mnist/``."""

DOWNLOAD_TIMEOUT_S: Final[float] = 10.0
"""Socket timeout for one mirror request, in seconds."""

FILE_ROLES: Final[tuple[str, ...]] = ("train_images", "train_labels", "test_images", "test_labels")
"""Keys of :attr:`DatasetInfo.files`."""

_REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset in the :data:`DATASETS` registry.

    Attributes:
        name: Registry key, e.g. ``"mnist"``.
        title: Human-readable name used in messages.
        files: Role (see :data:`FILE_ROLES`) -> base file name without ``.gz``.
        sha256: Base file name -> SHA-256 hex digest of the *decompressed* file.
        class_names: Label index -> class name.
        mirrors: Base URLs; a file is fetched from ``mirror + name + ".gz"``.
        default_roots: Directories searched when neither ``root`` nor ``PRUNELAB_DATA``
            is given, in order.
        train_size: Number of official training examples.
        test_size: Number of official test examples.
        image_shape: ``(height, width)`` of one image.
        train_label_counts: Occurrences of each label in the official training set.
        test_label_counts: Occurrences of each label in the official test set.
        install_hint: Extra advice shown when files are missing or corrupt.

    Example:
        >>> DATASETS["mnist"].files["train_labels"]
        'train-labels-idx1-ubyte'
        >>> DATASETS["fashion-mnist"].num_classes
        10
    """

    name: str
    title: str
    files: Mapping[str, str]
    sha256: Mapping[str, str]
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    default_roots: tuple[Path, ...]
    train_size: int
    test_size: int
    image_shape: tuple[int, int]
    train_label_counts: tuple[int, ...]
    test_label_counts: tuple[int, ...]
    install_hint: str

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``).

        Returns:
            The class count.

        Example:
            >>> DATASETS["mnist"].num_classes
            10
        """
        return len(self.class_names)


_IDX_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
)

DATASETS: Final[Mapping[str, DatasetInfo]] = MappingProxyType(
    {
        "mnist": DatasetInfo(
            name="mnist",
            title="MNIST",
            files=_IDX_NAMES,
            sha256=MappingProxyType(
                {
                    "train-images-idx3-ubyte": (
                        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
                    ),
                    "train-labels-idx1-ubyte": (
                        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
                    ),
                    "t10k-images-idx3-ubyte": (
                        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
                    ),
                    "t10k-labels-idx1-ubyte": (
                        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
                    ),
                }
            ),
            class_names=tuple(str(d) for d in range(10)),
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
            ),
            default_roots=(
                _REPO_ROOT / "data" / "mnist",
                _REPO_ROOT.parent / "shared" / "data" / "mnist",
            ),
            train_size=60_000,
            test_size=10_000,
            image_shape=(28, 28),
            train_label_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
            test_label_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
            install_hint=(
                "A verified copy ships with the repository in data/mnist/ (restore it with "
                "`git checkout -- data/mnist`)."
            ),
        ),
        "fashion-mnist": DatasetInfo(
            name="fashion-mnist",
            title="Fashion-MNIST",
            files=_IDX_NAMES,
            sha256=MappingProxyType(
                {
                    "train-images-idx3-ubyte": (
                        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
                    ),
                    "train-labels-idx1-ubyte": (
                        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
                    ),
                    "t10k-images-idx3-ubyte": (
                        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
                    ),
                    "t10k-labels-idx1-ubyte": (
                        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
                    ),
                }
            ),
            class_names=(
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            default_roots=(Path("/usr/share/datasets/fashion-mnist"),),
            train_size=60_000,
            test_size=10_000,
            image_shape=(28, 28),
            train_label_counts=(6000,) * 10,
            test_label_counts=(1000,) * 10,
            install_hint=(
                "On Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (installs the "
                "files into /usr/share/datasets/fashion-mnist)."
            ),
        ),
    }
)
"""Registry of supported datasets, keyed by name (``"mnist"``, ``"fashion-mnist"``)."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset, held in memory.

    Attributes:
        images: ``float32`` tensor ``[N, 1, 28, 28]``; pixels scaled to [0, 1] and, when
            normalised, standardised with the training mean/std.
        labels: ``int64`` tensor ``[N]`` of class indices.

    Example:
        >>> s = Split(torch.zeros(2, 1, 28, 28), torch.tensor([3, 1]))
        >>> len(s)
        2
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        """Check that images and labels agree in length.

        Raises:
            ValueError: ``images`` is not 4-D or its first dimension differs from
                ``labels``'s length.
        """
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise ValueError(
                f"Split expects images [N, C, H, W] and labels [N]; got images of shape "
                f"{tuple(self.images.shape)} and labels of shape {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"Split has {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        """Number of examples.

        Returns:
            ``N``, the length of ``labels``.
        """
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset loaded into memory: train / validation / test splits plus statistics.

    Attributes:
        name: Registry name, e.g. ``"mnist"``.
        train: Training split (official training set minus the held-out validation part).
        val: Validation split held out of the official training set.
        test: Official test set.
        mean: Pixel mean on [0, 1] scale of the training part (after holding out val).
        std: Pixel standard deviation (population, ``ddof=0``) of the same pixels.
        num_classes: Number of classes.
        normalized: Whether ``(x - mean) / std`` was applied to all three splits. ``mean``
            and ``std`` are reported either way.

    Example:
        >>> ds = load_dataset("mnist", subset=100)  # doctest: +SKIP
        >>> (len(ds.train), len(ds.val), len(ds.test))  # doctest: +SKIP
        (100, 100, 100)
    """

    name: str
    train: Split
    val: Split
    test: Split
    mean: float
    std: float
    num_classes: int
    normalized: bool = True


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset in the registry.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.

    Returns:
        The registry entry.

    Raises:
        ValueError: ``name`` is not in :data:`DATASETS`; the message lists the allowed names.

    Example:
        >>> dataset_info("mnist").train_size
        60000
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"unknown dataset {name!r}; allowed names: {allowed}") from None


# --------------------------------------------------------------------------- root lookup


def _candidates(path: Path, filename: str) -> tuple[Path, Path]:
    """Return the plain and gzip candidate paths of ``filename`` in ``path``."""
    return path / filename, path / f"{filename}.gz"


def _find_file(root: Path, filename: str) -> Path | None:
    """Return the existing file for ``filename`` in ``root`` (plain preferred), or None."""
    for candidate in _candidates(root, filename):
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(root: Path, info: DatasetInfo) -> bool:
    """Whether ``root`` holds every file of ``info`` (in either form)."""
    return all(_find_file(root, f) is not None for f in info.files.values())


def _resolve_root_with_source(
    info: DatasetInfo, root: str | os.PathLike[str] | None
) -> tuple[Path, str]:
    """Resolve the directory to use and describe where it came from (for messages)."""
    if root is not None:
        path = Path(root).expanduser()
        nested = path / info.name
        if not _has_all_files(path, info) and _has_all_files(nested, info):
            return nested, f"the root argument ({os.fspath(root)!s}/{info.name})"
        return path, "the root argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return (
            Path(env).expanduser() / info.name,
            f"${ENV_VAR}/{info.name} (PRUNELAB_DATA={env})",
        )
    for candidate in info.default_roots:
        if _has_all_files(candidate, info):
            return candidate, "the default data directory"
    for candidate in info.default_roots:
        if candidate.is_dir():
            return candidate, "the default data directory"
    return info.default_roots[0], "the default data directory"


def resolve_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the directory that holds (or should hold) a dataset's files.

    Order: explicit ``root`` (if it lacks the files but has a ``<name>/`` subdirectory
    that holds them, that subdirectory) > ``$PRUNELAB_DATA/<name>`` > the first default
    root that holds all files > the first default root that exists > the first default
    root. The directory is not required to exist.

    Args:
        name: Dataset name.
        root: Explicit directory, or ``None``.

    Returns:
        The directory (not necessarily existing).

    Raises:
        ValueError: Unknown dataset name.

    Example:
        >>> resolve_root("fashion-mnist", "/tmp/fm")
        PosixPath('/tmp/fm')
    """
    return _resolve_root_with_source(dataset_info(name), root)[0]


# --------------------------------------------------------------------------- download


def fetch_url(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` into the (already open-able) file ``dest``.

    This is the only function in the package that touches the network; tests replace it
    with ``monkeypatch.setattr(prunelab.data.datasets, "fetch_url", fake)``.

    Args:
        url: Address to fetch.
        dest: File to write (created or truncated).
        timeout: Socket timeout in seconds.

    Raises:
        OSError: Any network or file-system failure (``urllib.error.URLError`` is one).

    Example:
        >>> fetch_url("https://example.org/x.gz", Path("/tmp/x.gz"))  # doctest: +SKIP
    """
    request = urllib.request.Request(url, headers={"User-Agent": "prunelab"})
    with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out)


def _download(info: DatasetInfo, filename: str, directory: Path) -> tuple[Path | None, list[str]]:
    """Try every mirror for ``filename``; return the verified file or None and the failures.

    The download goes to a temporary file in ``directory``, is decompressed and checked
    against the registry digest, and only then renamed to ``filename.gz`` with
    :func:`os.replace`, so a crash never leaves a half-written file under the final name.
    """
    failures: list[str] = []
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, [f"cannot create {directory} ({type(exc).__name__}: {exc})"]
    result = _try_mirrors(info, filename, directory, failures)
    if result is None and created:
        with contextlib.suppress(OSError):
            directory.rmdir()  # leave no empty directory behind after a failed download
    return result, failures


def _try_mirrors(
    info: DatasetInfo, filename: str, directory: Path, failures: list[str]
) -> Path | None:
    """Fetch ``filename`` from each mirror in turn; return the verified final path or None.

    Every failure is appended to ``failures`` as ``"<url>: <reason>"``.
    """
    expected = info.sha256[filename]
    final = directory / f"{filename}.gz"
    for mirror in info.mirrors:
        url = f"{mirror}{filename}.gz"
        tmp: Path | None = None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
            os.close(fd)
            tmp = Path(tmp_name)
            fetch_url(url, tmp, DOWNLOAD_TIMEOUT_S)
            data = decompress_if_gzip(tmp.read_bytes(), url)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                failures.append(f"{url}: SHA-256 {actual} != expected {expected}")
                continue
            os.replace(tmp, final)
            tmp = None
            return final
        except (OSError, ValueError, DatasetError) as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
    return None


# --------------------------------------------------------------------------- loading

_CacheKey = tuple[str, int, int, str]
_CACHE: dict[_CacheKey, np.ndarray] = {}
_HISTOGRAMS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def clear_cache() -> None:
    """Forget every parsed array held by the in-process cache.

    Example:
        >>> clear_cache()
    """
    _CACHE.clear()
    _HISTOGRAMS.clear()


def _corrupt_hint(info: DatasetInfo) -> str:
    """What to do about a corrupt file of ``info``."""
    return (
        f"Re-copy it from a good {info.title} copy, or delete it so it is downloaded again "
        f"(load_dataset({info.name!r}, download=True)). {info.install_hint}"
    )


def _load_verified(path: Path, expected_sha256: str, info: DatasetInfo) -> np.ndarray:
    """Read, checksum and parse one IDX file, memoised per (resolved path, size, mtime).

    The returned array is shared with the cache and marked read-only.
    """
    resolved = path.resolve()
    try:
        st = resolved.stat()
    except OSError as exc:
        raise DatasetError(
            f"{info.title} file '{path}' cannot be accessed ({type(exc).__name__}: {exc}). "
            f"{_corrupt_hint(info)}"
        ) from exc
    key = (str(resolved), st.st_size, st.st_mtime_ns, expected_sha256)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    hint = _corrupt_hint(info)
    data = read_decompressed(path, hint=hint)
    # Parse before hashing: a structural problem (e.g. truncation) gets the more specific
    # message; the checksum then catches any content change the header cannot reveal.
    array = parse_idx(data, path, hint=hint)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise DatasetError(
            f"{info.title} file '{path}' fails its checksum: SHA-256 of the decompressed "
            f"bytes is {actual}, expected {expected_sha256}. The file is corrupt, truncated "
            f"or not the official {info.title} file. {hint}"
        )
    array.flags.writeable = False
    for stale in [k for k in _CACHE if k[0] == key[0]]:  # the file changed on disk
        _HISTOGRAMS.pop(id(_CACHE.pop(stale)), None)
    _CACHE[key] = array
    return array


def _locate(info: DatasetInfo, filename: str, root: Path, source: str, download: bool) -> Path:
    """Find ``filename`` in ``root`` (or download it there); raise a helpful error if not."""
    found = _find_file(root, filename)
    if found is not None:
        return found
    failures: list[str] = []
    if download:
        downloaded, failures = _download(info, filename, root)
        if downloaded is not None:
            return downloaded
    if download:
        tried = "; ".join(failures) if failures else "no mirror configured"
        download_note = f"Downloading it failed: {tried}."
    else:
        download_note = (
            f"Downloading is disabled (download=False); pass download=True to fetch it from "
            f"{', '.join(info.mirrors)}."
        )
    raise DatasetError(
        f"{info.title} file '{filename}' is missing: neither '{root / filename}' nor "
        f"'{root / (filename + '.gz')}' exists (directory {root}, chosen from {source}). "
        f"{download_note} Put {filename}.gz (or the decompressed {filename}) into {root}, "
        f"or pass root=<dir with the files>, or set {ENV_VAR}=<dir> with the files in "
        f"<dir>/{info.name}/. {info.install_hint}"
    )


def _check_int(value: object, what: str) -> int:
    """Return ``value`` if it is a true ``int`` (not bool), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _histogram(images: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
    """Counts of each pixel value 0..255 in ``images`` (uint8), computed in chunks.

    Chunking keeps ``np.bincount``'s int64 temporary small; results for cached (read-only)
    arrays are memoised, as the full training histogram is needed on every call.
    """
    memo = _HISTOGRAMS.get(id(images))
    if memo is not None and memo[0] is images:
        return memo[1]
    hist = np.zeros(256, dtype=np.int64)
    flat = images.reshape(len(images), -1)
    for start in range(0, len(flat), chunk_rows):
        hist += np.bincount(flat[start : start + chunk_rows].reshape(-1), minlength=256)
    if not images.flags.writeable:
        _HISTOGRAMS[id(images)] = (images, hist)
    return hist


def _pixel_stats(images: np.ndarray, exclude: np.ndarray) -> tuple[float, float]:
    """Exact mean/std on [0, 1] of ``images`` without rows ``exclude``, via a histogram."""
    hist = _histogram(images).astype(np.float64)
    if exclude.size:
        hist -= _histogram(images[exclude])
    values = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum()
    mean = float((hist * values).sum() / total)
    var = float((hist * (values - mean) ** 2).sum() / total)
    return mean, var**0.5


def _make_split(
    images: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray | None,
    mean: float,
    std: float,
) -> Split:
    """Gather rows ``index`` (all rows if None) into a normalised float32 :class:`Split`."""
    img = images[index] if index is not None else images
    lab = labels[index] if index is not None else labels
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    x = x.div_(255.0).sub_(mean).div_(std).unsqueeze(1)
    y = torch.from_numpy(lab.astype(np.int64))
    return Split(images=x, labels=y)


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    normalize: bool = True,
    download: bool = True,
    subset: int | None = None,
) -> DatasetSplits:
    """Load, verify and split MNIST or Fashion-MNIST into in-memory torch tensors.

    The 60,000 official training images are permuted with a ``torch.Generator`` seeded
    with ``seed``; the first ``val_size`` of the permutation form the validation split,
    the rest the training split. Pixels are scaled to [0, 1]; with ``normalize`` they are
    then standardised as ``(x - mean) / std`` where ``mean``/``std`` are computed over the
    training part only (after holding out validation, and before ``subset`` is applied, so
    a subset is normalised exactly like the full data). For MNIST with the default split
    this gives roughly 0.1307 / 0.3081.

    Parsed and verified files are cached per (resolved path, size, mtime) in-process, so
    repeated calls only redo the split and tensor conversion.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: Directory holding the four IDX files (``.gz`` or plain); see
            :func:`resolve_root` for the lookup order when ``None``.
        val_size: Number of training images held out for validation, ``0 <= val_size <
            60000``.
        seed: Seed of the validation permutation.
        normalize: Standardise pixels with the training mean/std (else keep [0, 1]).
        download: Fetch missing files from the public mirrors.
        subset: If given, keep only the first ``subset`` training examples, the first
            ``min(subset, val_size)`` validation examples and the first ``subset`` test
            examples (after splitting). Meant for fast tests.

    Returns:
        The three splits (images ``float32 [N, 1, 28, 28]``, labels ``int64 [N]``), the
        mean/std used and the number of classes.

    Raises:
        ValueError: Unknown ``name`` (the message lists the allowed names), ``val_size``
            outside ``[0, 60000)``, or ``subset`` not a positive integer.
        DatasetError: A file is missing (and could not be downloaded), unreadable,
            corrupt, truncated, or fails its SHA-256 check.

    Example:
        >>> ds = load_dataset("mnist", val_size=5000, seed=0)  # doctest: +SKIP
        >>> len(ds.train), len(ds.val), len(ds.test)  # doctest: +SKIP
        (55000, 5000, 10000)
    """
    info = dataset_info(name)
    val_size = _check_int(val_size, "val_size")
    if not 0 <= val_size < info.train_size:
        raise ValueError(
            f"val_size={val_size} is out of range: it must satisfy 0 <= val_size < "
            f"{info.train_size} (the {info.title} training set has {info.train_size} images)"
        )
    if subset is not None:
        subset = _check_int(subset, "subset")
        if subset < 1:
            raise ValueError(f"subset={subset} must be a positive integer or None")
    seed = _check_int(seed, "seed")

    directory, source = _resolve_root_with_source(info, root)
    arrays: dict[str, np.ndarray] = {}
    # Labels first: they are small, so a broken root fails fast.
    for role in ("train_labels", "test_labels", "train_images", "test_images"):
        filename = info.files[role]
        path = _locate(info, filename, directory, source, download)
        arrays[role] = _load_verified(path, info.sha256[filename], info)

    h, w = info.image_shape
    for part, n in (("train", info.train_size), ("test", info.test_size)):
        imgs, labs = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if imgs.shape != (n, h, w) or labs.shape != (n,) or imgs.dtype != np.uint8:
            raise DatasetError(
                f"{info.title} {part} files in {directory} have unexpected shapes "
                f"{imgs.shape} {imgs.dtype} / {labs.shape} (expected ({n}, {h}, {w}) uint8 / "
                f"({n},)). {_corrupt_hint(info)}"
            )

    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(info.train_size, generator=generator).numpy()
    val_idx, train_idx = perm[:val_size], perm[val_size:]

    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    mean, std = _pixel_stats(train_images, val_idx)
    scale_mean, scale_std = (mean, std) if normalize else (0.0, 1.0)

    test_idx: np.ndarray | None = None
    if subset is not None:
        train_idx = train_idx[:subset]
        val_idx = val_idx[: min(subset, val_size)]
        test_idx = np.arange(min(subset, info.test_size))

    return DatasetSplits(
        name=info.name,
        train=_make_split(train_images, train_labels, train_idx, scale_mean, scale_std),
        val=_make_split(train_images, train_labels, val_idx, scale_mean, scale_std),
        test=_make_split(
            arrays["test_images"], arrays["test_labels"], test_idx, scale_mean, scale_std
        ),
        mean=mean,
        std=std,
        num_classes=info.num_classes,
        normalized=normalize,
    )
