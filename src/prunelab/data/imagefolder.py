"""Image folders in the ImageNet layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.

:func:`open_imagefolder` checks the layout (torchvision's ``ImageFolder``, made strict: a
missing split, a class directory without images, a file that is not an image or a class
list that differs between ``train/`` and ``val/`` is a :class:`DatasetError` naming the
path), holds ``val_size`` images of ``train/`` out for validation (seeded, stratified by
class) and returns :class:`ImageFolderSplits`. Its ``train_batches`` / ``val_batches`` /
``test_batches`` are ``DataLoader``-backed :class:`FolderBatches` with the interface of
:class:`prunelab.data.TensorBatches` (``set_epoch``, ``len``, ``num_examples``, ``rank`` and
``world``). ``ROOT/val`` is the *test* split, as ImageNet's labelled validation set is the
usual test figure; choices are made on the held-out part of ``train/``.

Training batches always go through a ``DistributedSampler(num_replicas=world, rank=rank,
shuffle=True, seed=0)``, also for one process, so that one process and ``world`` ranks deal
the same permutation of each epoch (``torch.randperm(N)`` seeded with the epoch's seed, the
same as :class:`~prunelab.data.TensorBatches`). Augmentation (RandomResizedCrop and a
horizontal flip, torchvision's recipe) draws from a ``random.Random`` seeded per image with
the image's index and one number drawn from the global torch RNG when the epoch's iteration
starts. So an epoch's batches are a function of the global seed at that point
(``Trainer.train_epoch`` seeds it with the epoch's seed), identical for any number of
workers, persistent or not (a persistent worker is seeded once, when it starts, so worker
seeds alone would make epoch ``k`` of a resumed run differ from epoch ``k`` of the run that
went on), and a rank crops an image as one process would. Evaluation batches draw nothing
from the global RNG.

:func:`write_imagefolder` writes MNIST or Fashion-MNIST as such a folder of PNG files (for
tests, benchmarks and smoke runs of the image-folder path).

Example:
    >>> spec = ImageFolderSpec("/data/imagenet", val_size=10_000, seed=0, workers=8)
    >>> splits = open_imagefolder(spec)  # doctest: +SKIP
    >>> batches = splits.train_batches(256, rank=0, world=1)  # doctest: +SKIP
    >>> batches.set_epoch(0)  # doctest: +SKIP
    >>> images, labels = next(iter(batches))  # doctest: +SKIP
    >>> images.shape, labels.dtype  # doctest: +SKIP
    (torch.Size([256, 3, 224, 224]), torch.int64)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .batches import check_rank, shard_indices
from .datasets import dataset_info, load_dataset
from .idx import DatasetError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "FolderBatches",
    "ImageFolderSpec",
    "ImageFolderSplits",
    "class_dir_names",
    "load_image",
    "open_imagefolder",
    "write_imagefolder",
]

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
"""ImageNet's per-channel pixel mean (RGB, on the [0, 1] scale)."""

IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)
"""ImageNet's per-channel pixel std (RGB, on the [0, 1] scale)."""

IMAGE_EXTENSIONS: Final[tuple[str, ...]] = tuple(IMG_EXTENSIONS)
"""File name endings read as images (torchvision's list; case-insensitive)."""

CROP_SCALE: Final[tuple[float, float]] = (0.08, 1.0)
"""Area range of RandomResizedCrop (torchvision's default)."""

CROP_RATIO: Final[tuple[float, float]] = (3.0 / 4.0, 4.0 / 3.0)
"""Aspect-ratio range of RandomResizedCrop (torchvision's default)."""

_INDEX_BITS: Final[int] = 40  # per-image seed = (epoch base << 40) | image index


def _layout(root: str | os.PathLike[str]) -> str:
    """The expected layout, as the end of an error message."""
    return (f"expected {os.fspath(root)}/train/<class>/*.png|jpg and "
            f"{os.fspath(root)}/val/<class>/*.png|jpg with the same <class> directories")


def _check_int(value: object, name: str, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; allowed: an integer >= {minimum}")
    return int(value)


def _check_rgb(value: object, name: str, *, positive: bool) -> tuple[float, float, float]:
    """Three floats (one per RGB channel), all > 0 with ``positive``, else a ValueError."""
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or (positive and not all(v > 0 for v in out)):
        what = "positive numbers" if positive else "numbers"
        raise ValueError(f"{name}={value!r} is invalid; allowed: three {what} (R, G, B)")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ImageFolderSpec:
    """Where an image folder is and how its splits are read.

    Attributes:
        root: the folder (``root/train/<class>/*``, ``root/val/<class>/*``).
        val_size: images held out of ``root/train`` for validation: seeded by ``seed`` and
            stratified by class (largest-remainder quotas), ``0 <= val_size < len(train)``.
        seed: the split seed (hold-out, and which test images ``subset`` keeps).
        image_size: side of the images a model sees. Training: RandomResizedCrop
            (``CROP_SCALE``, ``CROP_RATIO``) to it and a random horizontal flip;
            evaluation: Resize(``resize_size``, shorter side) then CenterCrop(it).
        resize_size: shorter side before the evaluation centre crop.
        mean, std: per-channel normalisation ``(x - mean) / std`` of [0, 1] RGB pixels
            (default: ImageNet's; ``(0, 0, 0)`` / ``(1, 1, 1)`` keeps raw pixels).
        workers: ``DataLoader`` worker processes (0: load in the calling process).
        pin_memory: page-locked batches (for asynchronous copies to a GPU).
        persistent_workers: keep the workers between epochs (only with ``workers > 0``).
        prefetch_factor: batches each worker loads ahead (``None``: torch's default, 2;
            only with ``workers > 0``).
        subset: keep only ``subset`` images of each split (the first of the seeded training
            and validation orders, a seeded choice of the test images); for quick runs.
        flip: random horizontal flips in training.
        train_augment: ``False`` trains on the evaluation transform (no randomness; for
            tests and smoke runs).

    Raises:
        ValueError: a field out of range (the message names it and what is allowed).

    Example:
        >>> s = ImageFolderSpec("data/tiny", val_size=100, seed=0, image_size=32)
        >>> s.resize_size, s.mean
        (256, (0.485, 0.456, 0.406))
        >>> ImageFolderSpec("data/tiny", val_size=-1, seed=0)
        Traceback (most recent call last):
        ...
        ValueError: val_size=-1 is invalid; allowed: an integer >= 0
    """

    root: str | os.PathLike[str]
    val_size: int
    seed: int = 0
    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    workers: int = 4
    pin_memory: bool = False
    persistent_workers: bool = True
    prefetch_factor: int | None = None
    subset: int | None = None
    flip: bool = True
    train_augment: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.root, str | os.PathLike):
            raise ValueError(f"root={self.root!r} is invalid; allowed: a path")
        _check_int(self.val_size, "val_size", 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed={self.seed!r} is invalid; allowed: an integer")
        _check_int(self.image_size, "image_size", 1)
        _check_int(self.resize_size, "resize_size", 1)
        _check_int(self.workers, "workers", 0)
        if self.prefetch_factor is not None:
            _check_int(self.prefetch_factor, "prefetch_factor", 1)
        if self.subset is not None:
            _check_int(self.subset, "subset", 1)
        object.__setattr__(self, "mean", _check_rgb(self.mean, "mean", positive=False))
        object.__setattr__(self, "std", _check_rgb(self.std, "std", positive=True))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], **changes: Any) -> ImageFolderSpec:
        """The spec that rebuilds the splits described by ``meta`` (``ImageFolderSplits.meta``).

        ``changes`` replace fields (``root=`` for a folder that moved, ``workers=``, ...).

        Example:
            >>> s = ImageFolderSpec("d", val_size=5, seed=1, image_size=32, subset=10)
            >>> meta = {"root": "d", "val_size": 5, "split_seed": 1, "image_size": 32,
            ...         "resize_size": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "subset": 10}
            >>> ImageFolderSpec.from_meta(meta, workers=0).workers
            0
        """
        keys = {"image_size": "image_size", "resize_size": "resize_size", "mean": "mean",
                "std": "std", "subset": "subset", "flip": "flip",
                "train_augment": "train_augment"}
        fields = {f: meta[k] for k, f in keys.items() if k in meta}
        spec = cls(root=meta["root"], val_size=int(meta["val_size"]),
                   seed=int(meta.get("split_seed", 0)), **fields)
        return dataclasses.replace(spec, **changes)


# --------------------------------------------------------------------------- reading


def load_image(path: str) -> Image.Image:
    """Read an image file as RGB (what ``ImageFolder``'s default loader does, strictly).

    Raises:
        DatasetError: the file cannot be opened or decoded (the message names it).

    Example:
        >>> load_image("/nonexistent.png")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        prunelab.data.idx.DatasetError: image file '/nonexistent.png' cannot be read ...
    """
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")  # convert() decodes while the file is open
    except Exception as exc:  # whatever PIL raises for a broken file, it is this file's fault
        raise DatasetError(
            f"image file '{path}' cannot be read as an image ({type(exc).__name__}: {exc}); "
            "replace it with a good copy or delete it"
        ) from exc


def _visible(name: str) -> bool:
    """Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are not part of the data."""
    return not name.startswith(".")


class _StrictImageFolder(ImageFolder):
    """torchvision's ``ImageFolder`` that rejects what it would silently skip or misread.

    Hidden files and directories are ignored (``ImageFolder`` would take a hidden directory
    for a class); a file outside a class directory, a file that is not an image and a class
    directory without images are errors. The samples and their order are ``ImageFolder``'s.
    """

    def __init__(self, directory: Path, root: Path) -> None:
        self._top = root
        super().__init__(os.fspath(directory), loader=load_image)

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        classes, strays = [], []
        with os.scandir(directory) as entries:
            for entry in entries:
                if not _visible(entry.name):
                    continue
                (classes if entry.is_dir() else strays).append(entry.name)
        if strays:
            raise DatasetError(
                f"image folder file '{os.path.join(directory, sorted(strays)[0])}' is not "
                f"inside a class directory; {_layout(self._top)}"
            )
        if not classes:
            raise DatasetError(
                f"image folder split '{os.fspath(directory)}' holds no class directories; "
                f"{_layout(self._top)}"
            )
        classes.sort()
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(  # type: ignore[override]
        self,
        directory: str | os.PathLike[str],
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: object = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        instances: list[tuple[str, int]] = []
        for target_class in sorted(class_to_idx):
            target_dir = os.path.join(directory, target_class)
            walked = []
            for here, dirs, files in os.walk(target_dir, followlinks=True):
                dirs[:] = [d for d in dirs if _visible(d)]
                walked.append((here, files))
            found = 0
            for here, files in sorted(walked):  # ImageFolder's order: sorted(os.walk(...))
                for fname in sorted(files):
                    if not _visible(fname):
                        continue
                    path = os.path.join(here, fname)
                    if not has_file_allowed_extension(fname, IMAGE_EXTENSIONS):
                        raise DatasetError(
                            f"image folder file '{path}' is not an image (allowed "
                            f"extensions: {', '.join(IMAGE_EXTENSIONS)}); remove it; "
                            f"{_layout(self._top)}"
                        )
                    instances.append((path, class_to_idx[target_class]))
                    found += 1
            if not found:
                raise DatasetError(
                    f"image folder class directory '{target_dir}' holds no image files; "
                    f"{_layout(self._top)}"
                )
        return instances


@dataclass(frozen=True)
class _Files:
    """Image paths (as bytes: a numpy array, not a list of str, so that forked workers do
    not copy it page by page by touching reference counts) and their labels."""

    paths: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, samples: Sequence[tuple[str, int]], index: np.ndarray | None = None) -> _Files:
        paths = np.array([os.fsencode(p) for p, _ in samples], dtype=np.bytes_)
        labels = np.array([c for _, c in samples], dtype=np.int64)
        if index is not None:
            paths, labels = paths[index], labels[index]
        return cls(paths, labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        return os.fsdecode(self.paths[i])

    def head(self, n: int | None) -> _Files:
        return self if n is None else _Files(self.paths[:n], self.labels[:n])


def _quotas(counts: np.ndarray, val_size: int) -> np.ndarray:
    """Per-class hold-out sizes proportional to ``counts``, summing to ``val_size``.

    Largest remainders, in integers; ties go to the lower class index.

    Example:
        >>> _quotas(np.array([5, 3, 2]), 5).tolist()
        [3, 1, 1]
    """
    n = int(counts.sum())
    share = val_size * counts.astype(np.int64)
    quota, remainder = share // n, share % n
    extra = val_size - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:extra]] += 1
    return quota


def _hold_out(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(val, train)``: a seeded, class-stratified hold-out of ``val_size``.

    Both come in the order of one seeded permutation (so their first images are a random,
    mixed-class sample); class ``c`` gives its first ``quota[c]`` images in that order.

    Example:
        >>> val, train = _hold_out(np.array([0, 0, 0, 0, 1, 1]), 3, seed=0)
        >>> sorted(np.array([0, 0, 0, 0, 1, 1])[val].tolist()), len(train)
        ([0, 0, 1], 3)
    """
    n = int(labels.shape[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    lab = labels[perm]
    counts = np.bincount(lab)
    by_class = np.argsort(lab, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.empty(n, dtype=np.int64)
    rank_in_class[by_class] = np.arange(n) - starts[lab[by_class]]
    is_val = rank_in_class < _quotas(counts, val_size)[lab]
    return perm[is_val], perm[~is_val]


# --------------------------------------------------------------------------- transforms


def _crop_params(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params`` of torchvision, drawing from ``rng``: ``(i, j, h, w)``.

    Example:
        >>> i, j, h, w = _crop_params(64, 48, random.Random(0))
        >>> 0 <= i <= 48 - h and 0 <= j <= 64 - w
        True
    """
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fall back to a central crop, as torchvision does
    if in_ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _EvalTransform:
    """Resize(resize_size) + CenterCrop(image_size) + ToTensor + Normalize."""

    def __init__(self, spec: ImageFolderSpec) -> None:
        self.resize = T.Resize(spec.resize_size, antialias=True)
        self.crop = T.CenterCrop(spec.image_size)
        self.to_tensor = T.ToTensor()
        self.normalize = T.Normalize(spec.mean, spec.std, inplace=True)  # ToTensor's is new

    def __call__(self, img: Image.Image, seed: int) -> torch.Tensor:
        return self.normalize(self.to_tensor(self.crop(self.resize(img))))


class _TrainTransform(_EvalTransform):
    """RandomResizedCrop(image_size) + RandomHorizontalFlip + ToTensor + Normalize, seeded."""

    def __init__(self, spec: ImageFolderSpec) -> None:
        super().__init__(spec)
        self.size = [spec.image_size, spec.image_size]
        self.flip = spec.flip

    def __call__(self, img: Image.Image, seed: int) -> torch.Tensor:
        rng = random.Random(seed)
        i, j, h, w = _crop_params(img.width, img.height, rng)
        img = TF.resized_crop(img, i, j, h, w, self.size, T.InterpolationMode.BILINEAR,
                              antialias=True)
        if self.flip and rng.random() < 0.5:
            img = TF.hflip(img)
        return self.normalize(self.to_tensor(img))


@dataclass(frozen=True)
class _Unreadable:
    """Returned instead of an image (and then of its batch) when a file cannot be read.

    The error is raised in the calling process by :class:`FolderBatches`: raised inside a
    worker it would arrive wrapped in a traceback text, and torch then takes 5 s per
    worker to shut the workers down.
    """

    message: str


def _collate(items: list[tuple[torch.Tensor, int] | _Unreadable]) -> Any:
    for item in items:
        if isinstance(item, _Unreadable):
            return item
    return default_collate(items)


class _FolderDataset(Dataset):
    """Images of one split; an index is ``(i, seed)`` (the seed of its augmentation) or ``i``."""

    def __init__(self, files: _Files, transform: _EvalTransform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | _Unreadable:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        try:
            img = load_image(self.files.path(i))
        except DatasetError as exc:
            return _Unreadable(str(exc))
        return self.transform(img, seed), int(self.files.labels[i])


class _SeededSampler(Sampler):
    """The indices of ``sampler``, each paired with its augmentation seed for this epoch."""

    def __init__(self, sampler: Sequence[int] | Sampler) -> None:
        self.sampler = sampler
        self.base = 0

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = self.base << _INDEX_BITS  # read now: the epoch's base, not a later one
        return ((i, base | i) for i in self.sampler)


class FolderBatches:
    """``(images, labels)`` batches of an image folder split through a ``DataLoader``.

    Made by :meth:`ImageFolderSplits.train_batches` (shuffled by a ``DistributedSampler``,
    augmented) and by ``val_batches`` / ``test_batches`` (in order, a ``[rank::world]``
    shard). Images are ``float32 [B, 3, image_size, image_size]``, normalised; labels
    ``int64 [B]``; both on the CPU (pinned with ``pin_memory``).

    Attributes:
        sampler: the ``DistributedSampler`` of training batches, or the list of this rank's
            indices of an evaluation split.
        loader: the ``DataLoader``.
        batch_size: images per batch (of this rank; the last batch may be smaller).
        rank, world: this rank and the number of ranks.
    """

    def __init__(
        self,
        dataset: _FolderDataset,
        sampler: Sampler | list[int],
        *,
        batch_size: int,
        spec: ImageFolderSpec,
        augment: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.augment = augment
        self._seeded = _SeededSampler(sampler)
        # The loader's own generator (not the global RNG) draws its worker seeds, so
        # iterating consumes the same global randomness whether workers persist or not.
        self._generator = torch.Generator()
        workers = spec.workers
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self._seeded,
            num_workers=workers,
            pin_memory=spec.pin_memory,
            persistent_workers=spec.persistent_workers and workers > 0,
            prefetch_factor=spec.prefetch_factor if workers > 0 else None,
            generator=self._generator,
            collate_fn=_collate,
        )

    def set_epoch(self, seed: int) -> None:
        """Seed the next epoch's permutation (``DistributedSampler.set_epoch``)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(seed))

    def __len__(self) -> int:
        """Batches per epoch (of this rank)."""
        return len(self.loader)

    @property
    def num_examples(self) -> int:
        """Images per epoch (of this rank; the sampler's padding included)."""
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        base = 0
        if self.augment:  # the one draw from the global RNG per epoch
            base = int(torch.empty((), dtype=torch.int64).random_().item())
        self._seeded.base = base
        self._generator.manual_seed(base)
        for batch in self.loader:
            if isinstance(batch, _Unreadable):
                raise DatasetError(batch.message)
            yield batch


# --------------------------------------------------------------------------- splits


class ImageFolderSplits:
    """The training, validation (held out of ``train/``) and test (``val/``) parts of a folder.

    Made by :func:`open_imagefolder`. Batches are made on first request and kept (with
    persistent workers, their processes too) for later calls with the same arguments;
    :meth:`close` lets them go.

    Attributes:
        spec: the :class:`ImageFolderSpec`.
        classes: class directory names, in label order (sorted, as ``ImageFolder`` does).
        meta: JSON-serialisable description: ``name`` ("imagefolder"), ``root``, ``classes``,
            ``num_classes``, ``val_size`` (held out), ``split_seed``, ``image_size``,
            ``resize_size``, ``mean``, ``std``, ``subset``, ``flip``, ``train_augment``,
            ``train_size``, ``val_split_size`` and ``test_size`` (images of each split
            after ``subset``).
        has_test: always True (``val/`` is the test split).
    """

    has_test: bool = True

    def __init__(self, spec: ImageFolderSpec, classes: Sequence[str], train: _Files,
                 val: _Files, test: _Files) -> None:
        self.spec = spec
        self.classes = list(classes)
        self._files = {"train": train, "val": val, "test": test}
        self._eval = _EvalTransform(spec)
        self._train = _TrainTransform(spec) if spec.train_augment else self._eval
        self._batches: dict[tuple[str, int, int, int], FolderBatches] = {}
        self.meta: dict[str, Any] = {
            "name": "imagefolder", "root": os.path.abspath(os.path.expanduser(spec.root)),
            "classes": self.classes, "num_classes": len(self.classes),
            "val_size": spec.val_size, "split_seed": spec.seed, "image_size": spec.image_size,
            "resize_size": spec.resize_size, "mean": list(spec.mean), "std": list(spec.std),
            "subset": spec.subset, "flip": spec.flip, "train_augment": spec.train_augment,
            "train_size": len(train), "val_split_size": len(val), "test_size": len(test),
        }

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __repr__(self) -> str:
        m = self.meta
        return (f"ImageFolderSplits({m['root']!r}: {m['num_classes']} classes, train "
                f"{m['train_size']}, val {m['val_split_size']}, test {m['test_size']})")

    def files(self, split: str) -> list[tuple[str, int]]:
        """``(path, label)`` of every image of ``split`` (``"train"``, ``"val"``, ``"test"``),
        in the split's order.

        Raises:
            ValueError: an unknown split name.
        """
        if split not in self._files:
            raise ValueError(f"split={split!r} is unknown; allowed: train, val, test")
        f = self._files[split]
        return [(f.path(i), int(f.labels[i])) for i in range(len(f))]

    def _get(self, split: str, batch_size: int, rank: int, world: int) -> FolderBatches:
        _check_int(batch_size, "batch_size", 1)
        check_rank(rank, world)
        key = (split, batch_size, rank, world)
        if key not in self._batches:
            files = self._files[split]
            if split == "train":
                dataset = _FolderDataset(files, self._train)
                sampler: Sampler | list[int] = DistributedSampler(
                    dataset, num_replicas=world, rank=rank, shuffle=True, seed=0,
                    drop_last=False)
            else:
                dataset = _FolderDataset(files, self._eval)
                sampler = shard_indices(torch.arange(len(files)), rank, world,
                                        pad=False).tolist()
            self._batches[key] = FolderBatches(
                dataset, sampler, batch_size=batch_size, spec=self.spec,
                augment=split == "train" and self.spec.train_augment, rank=rank, world=world)
        return self._batches[key]

    def train_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> FolderBatches:
        """Shuffled, augmented training batches of ``batch_size`` images (per rank).

        Rank ``rank`` of ``world`` gets its ``DistributedSampler`` share of each epoch's
        permutation (padded to equal shares), so the union over ranks of batch ``b`` is
        batch ``b`` of one process with batch size ``world * batch_size``. Call
        ``set_epoch(seed)`` before each epoch.
        """
        return self._get("train", batch_size, rank, world)

    def val_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> FolderBatches:
        """Validation batches in order (evaluation transform); rank ``rank`` gets the images
        ``[rank::world]``, no padding, so per-rank sums add up to the whole split."""
        return self._get("val", batch_size, rank, world)

    def test_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> FolderBatches:
        """Test batches (``root/val``), like :meth:`val_batches`."""
        return self._get("test", batch_size, rank, world)

    def example(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images (evaluation transform) as one tensor, for tracing
        and FLOP counts (fewer if the split is smaller; the test split's with ``val_size=0``)."""
        n = _check_int(n, "n", 0)
        files = self._files["val" if len(self._files["val"]) else "test"].head(n)
        if not len(files):
            s = self.spec.image_size
            return torch.empty(0, 3, s, s)
        return torch.stack([self._eval(load_image(files.path(i)), 0) for i in range(len(files))])

    def close(self) -> None:
        """Let the batches made so far go (their worker processes end with them)."""
        self._batches.clear()


def open_imagefolder(spec: ImageFolderSpec) -> ImageFolderSplits:
    """Check an image folder's layout and split it (see the module docstring).

    Args:
        spec: the folder and how to read it.

    Returns:
        :class:`ImageFolderSplits`: ``train`` = ``root/train`` less the hold-out, ``val`` =
        the hold-out, ``test`` = ``root/val``.

    Raises:
        DatasetError: a missing folder, ``train/`` or ``val/``; no class directories; a
            class directory without images; a file that is not an image or lies outside a
            class directory; different classes in ``train/`` and ``val/``. One line that
            names the path and the expected layout. (A file that cannot be decoded raises
            when it is read.)
        ValueError: ``val_size`` not below the number of training images.

    Example:
        >>> open_imagefolder(ImageFolderSpec("/nonexistent", val_size=0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        prunelab.data.idx.DatasetError: image folder '/nonexistent' does not exist; expected ...
    """
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise DatasetError(f"image folder '{root}' {problem}; {_layout(root)}")
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DatasetError(f"image folder '{root}' has no {part}/ directory ('{root / part}' "
                               f"is missing); {_layout(root)}")
    train = _StrictImageFolder(root / "train", root)
    test = _StrictImageFolder(root / "val", root)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_val = sorted(set(test.classes) - set(train.classes))
        raise DatasetError(
            f"image folder '{root}': train/ and val/ have different classes (only in train/: "
            f"{', '.join(only_train) or '-'}; only in val/: {', '.join(only_val) or '-'}); "
            f"{_layout(root)}"
        )
    n = len(train.samples)
    if spec.val_size >= n:
        raise ValueError(f"val_size={spec.val_size} is out of range: '{root / 'train'}' has "
                         f"{n} images; allowed: 0 <= val_size < {n}")
    labels = np.array(train.targets, dtype=np.int64)
    val_idx, train_idx = _hold_out(labels, spec.val_size, spec.seed)
    test_files = _Files.of(test.samples)
    if spec.subset is not None and spec.subset < len(test_files):
        gen = torch.Generator().manual_seed(spec.seed)
        pick = np.sort(torch.randperm(len(test_files), generator=gen)[: spec.subset].numpy())
        test_files = _Files(test_files.paths[pick], test_files.labels[pick])
    return ImageFolderSplits(
        spec, train.classes,
        train=_Files.of(train.samples, train_idx).head(spec.subset),
        val=_Files.of(train.samples, val_idx).head(spec.subset),
        test=test_files,
    )


# --------------------------------------------------------------------------- writing


def class_dir_names(class_names: Sequence[str]) -> list[str]:
    """Directory names for classes, in label order, that sort in label order.

    Each name is made safe for a file name (characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``; no leading dot). ``ImageFolder`` numbers classes by sorted
    directory name, so if the safe names do not already sort in label order (or repeat),
    each gets its zero-padded label as a prefix.

    Example:
        >>> class_dir_names(["0", "1", "2"])
        ['0', '1', '2']
        >>> class_dir_names(["T-shirt/top", "Trouser", "Ankle boot"])
        ['0_T-shirt_top', '1_Trouser', '2_Ankle_boot']
    """
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", n).lstrip(".") or "class" for n in class_names]
    if sorted(safe) == safe and len(set(safe)) == len(safe):
        return safe
    width = len(str(len(safe) - 1))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(safe)]


def _choose(labels: np.ndarray, per_class: int | None, num_classes: int,
            gen: torch.Generator, what: str) -> list[np.ndarray]:
    """Per class, ``per_class`` of its indices drawn with ``gen`` (all if None), sorted."""
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            if per_class > len(idx):
                raise ValueError(f"{what}={per_class} is more than the {len(idx)} images of "
                                 f"class {c}; allowed: 1..{int(np.bincount(labels).min())}")
            idx = np.sort(idx[torch.randperm(len(idx), generator=gen)[:per_class].numpy()])
        out.append(idx)
    return out


def write_imagefolder(
    dataset: str,
    out: str | os.PathLike[str],
    *,
    size: int = 32,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Write MNIST or Fashion-MNIST as an image folder of RGB PNG files.

    The official training images go to ``out/train/<class>/<index>.png``, the official test
    images to ``out/val/<class>/<index>.png`` (``<index>``: the image's position in its
    official split, zero-padded); grey levels replicated to RGB and resized to ``size`` x
    ``size`` with PIL's bilinear filter. Class directories are :func:`class_dir_names` of the
    dataset's class names, so ``ImageFolder`` labels equal the dataset's; ``classes.json``
    records them and what was written. Everything is written into ``out.tmp-<random>``
    first and renamed to ``out`` at the end, so an interrupted run leaves no ``out``.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        out: the folder to create (absent, or an empty directory).
        size: side of the written images, >= 1.
        train_per_class, val_per_class: images per class of each split, drawn with
            ``seed`` (None: all).
        seed: the draw's seed.
        data_root, download: where the dataset's files are, and whether to download
            missing ones (see :func:`prunelab.data.load_dataset`).

    Returns:
        The contents of ``classes.json``: ``dataset``, ``size``, ``seed``, ``classes``
        (directory names, label order), ``class_names``, ``train_per_class``,
        ``val_per_class``, ``train_counts``, ``val_counts``.

    Raises:
        FileExistsError: ``out`` exists and is not an empty directory.
        DatasetError: the dataset's files are missing or corrupt.
        ValueError: an unknown dataset, a size or count out of range.

    Example:
        >>> info = write_imagefolder("mnist", "/tmp/mnist-folder", train_per_class=10,
        ...                          val_per_class=5)  # doctest: +SKIP
        >>> info["classes"][:3], sum(info["train_counts"])  # doctest: +SKIP
        (['0', '1', '2'], 100)
    """
    info = dataset_info(dataset)
    _check_int(size, "size", 1)
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if value is not None:
            _check_int(value, name, 1)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"'{out}' already exists and is not an empty directory; "
                              "refusing to write an image folder into it (choose a new path)")
    ds = load_dataset(dataset, data_root, val_size=0, normalize=False, download=download)
    names = class_dir_names(info.class_names)
    gen = torch.Generator().manual_seed(seed)
    parts = {  # drawn (and their counts checked) before anything is written
        part: (split, _choose(split.labels.numpy(), per_class, info.num_classes, gen, what))
        for part, split, per_class, what in (
            ("train", ds.train, train_per_class, "train_per_class"),
            ("val", ds.test, val_per_class, "val_per_class"),
        )
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for part, (split, chosen) in parts.items():
            # [0, 1] floats are uint8 / 255, so this gives back the file's grey levels exactly
            pixels = (split.images[:, 0] * 255).round().to(torch.uint8).numpy()
            width = len(str(len(split) - 1))
            for c, idx in enumerate(chosen):
                directory = tmp / part / names[c]
                directory.mkdir(parents=True)
                for i in idx.tolist():
                    img = Image.fromarray(pixels[i])
                    if img.size != (size, size):
                        img = img.resize((size, size), Image.Resampling.BILINEAR)
                    img.convert("RGB").save(directory / f"{i:0{width}d}.png")
        record = {"dataset": info.name, "size": size, "seed": seed, "classes": names,
                  "class_names": list(info.class_names), "train_per_class": train_per_class,
                  "val_per_class": val_per_class,
                  "train_counts": [len(idx) for idx in parts["train"][1]],
                  "val_counts": [len(idx) for idx in parts["val"][1]]}
        (tmp / "classes.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (checked above); a rename cannot replace it everywhere
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
