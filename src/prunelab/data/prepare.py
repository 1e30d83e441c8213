"""From dataset files to the tensors a run trains and measures on.

:func:`prepare_splits` loads a dataset un-normalised, computes the training mean and std,
normalises the three splits with them (:class:`Normalization`) and returns
:class:`TensorSplits` on a device. :func:`splits_for_model_file` rebuilds exactly the splits
a saved model was trained with from its metadata (``dataset``: name, validation size, split
seed, subset, mean, std, normalisation), for evaluation and sensitivity analysis.

Example:
    >>> import torch
    >>> norm = Normalization(mean=0.5, std=0.25, mode="standard")
    >>> norm(torch.tensor([0.5, 1.0])).tolist()
    [0.0, 2.0]
    >>> Normalization(mean=0.5, std=0.25, mode="scale")(torch.tensor([0.0, 1.0])).tolist()
    [0.0, 4.0]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .batches import TensorBatches
from .datasets import load_dataset

__all__ = [
    "NORMALIZE_MODES",
    "Normalization",
    "TensorSplits",
    "prepare_splits",
    "splits_for_model_file",
]

NORMALIZE_MODES: tuple[str, ...] = ("standard", "scale")


@dataclass(frozen=True)
class Normalization:
    """Input normalisation with the training split's statistics.

    Attributes:
        mean, std: pixel mean and std of the training split (on the [0, 1] scale).
        mode: ``"standard"``: ``(x - mean) / std``; ``"scale"``: ``x / std`` (zero pixels stay
            zero, like Caffe's pixel scaling, so input-activation densities stay meaningful).

    Raises:
        ValueError: unknown mode or a std that is not positive.
    """

    mean: float
    std: float
    mode: str = "standard"

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZE_MODES:
            raise ValueError(
                f"normalize={self.mode!r} is unknown; allowed: {', '.join(NORMALIZE_MODES)}"
            )
        if not self.std > 0:
            raise ValueError(f"normalisation std={self.std!r} must be > 0")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch of images."""
        if self.mode == "scale":
            return x / self.std
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class TensorSplits:
    """Normalised training, validation and (optionally) test tensors, in memory.

    Attributes:
        x_train, y_train: training images ``[N, C, H, W]`` and labels.
        x_val, y_val: the validation split (held out of the official training set); every
            choice of a run is made on it.
        x_test, y_test: the official test set, for the final figure only (may be ``None``).
        meta: how the tensors were made (dataset name, mean, std, normalisation, sizes),
            stored in model files so that evaluation rebuilds the same inputs.

    Example:
        >>> import torch
        >>> s = TensorSplits(torch.zeros(4, 1, 2, 2), torch.zeros(4).long(),
        ...                  torch.zeros(2, 1, 2, 2), torch.zeros(2).long())
        >>> s.example(3).shape, s.has_test
        (torch.Size([3, 1, 2, 2]), False)
        >>> [len(y) for _, y in s.train_batches(2, rank=1, world=2)]
        [2]
        >>> [y.shape[0] for _, y in s.val_batches(8)]
        [2]
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_test(self) -> bool:
        """Whether the test split is present."""
        return self.x_test is not None

    def to(self, device: str | torch.device) -> TensorSplits:
        """A copy on ``device`` (tensors already there are not copied)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return t.to(device) if t is not None else None

        return TensorSplits(move(self.x_train), move(self.y_train), move(self.x_val),
                            move(self.y_val), move(self.x_test), move(self.y_test),
                            dict(self.meta))

    def example(self, n: int) -> torch.Tensor:
        """The first ``n`` training images (to trace, count FLOPs, run ThiNet)."""
        return self.x_train[:n]

    def train_batches(self, batch_size: int, *, rank: int = 0, world: int = 1,
                      shift: int = 0) -> TensorBatches:
        """Shuffled training batches of ``batch_size`` (per rank), seeded by ``set_epoch``.

        For ``world > 1`` rank ``rank`` gets its ``DistributedSampler`` share of each
        epoch's permutation (padded; see :class:`TensorBatches`), so the union over ranks of
        batch ``b`` is batch ``b`` of one process with ``world * batch_size``. ``shift``:
        random translations of up to that many pixels (see :class:`TensorBatches`).
        """
        return TensorBatches(self.x_train, self.y_train, batch_size=batch_size,
                             rank=rank, world=world, shift=shift)

    def val_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> TensorBatches:
        """Validation batches in order; rank ``rank`` gets ``[rank::world]``, no padding."""
        return TensorBatches(self.x_val, self.y_val, batch_size=batch_size, shuffle=False,
                             rank=rank, world=world, pad=False)

    def test_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> TensorBatches:
        """Test batches in order; rank ``rank`` gets ``[rank::world]``, no padding.

        Raises:
            ValueError: the splits have no test split (``has_test`` is False).
        """
        if self.x_test is None or self.y_test is None:
            raise ValueError("these splits have no test split (x_test is None); use "
                             "val_batches, or prepare the splits with a test set")
        return TensorBatches(self.x_test, self.y_test, batch_size=batch_size, shuffle=False,
                             rank=rank, world=world, pad=False)


def prepare_splits(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    normalize: str = "standard",
    subset: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    device: str | torch.device = "cpu",
) -> TensorSplits:
    """Load a dataset and return its normalised splits on ``device``.

    The mean and std are those of the training part after holding out validation and
    before any subset or limit, so a subset is normalised exactly like the full data.

    Args:
        name: dataset name (``"mnist"``, ``"fashion-mnist"``).
        root: directory of its files (default: the shipped data / ``PRUNELAB_DATA``).
        val_size: validation images held out of the training set (seeded by ``seed``).
        seed: split seed.
        normalize: ``"standard"`` or ``"scale"`` (see :class:`Normalization`).
        subset: passed to :func:`prunelab.data.load_dataset` (first ``subset`` examples of
            every split; for quick runs).
        train_limit, test_limit: keep only the first images of the training / test split.
        device: where the tensors go.

    Returns:
        :class:`TensorSplits` with ``meta`` = ``{"name", "mean", "std", "normalize",
        "val_size", "split_seed", "subset", "train_size", "test_size"}``.

    Raises:
        prunelab.data.DatasetError: missing or corrupt files.
        ValueError: bad sizes or normalisation mode.

    Example:
        >>> s = prepare_splits("mnist", val_size=100, subset=200)  # doctest: +SKIP
        >>> s.x_train.shape, s.x_val.shape  # doctest: +SKIP
        (torch.Size([200, 1, 28, 28]), torch.Size([100, 1, 28, 28]))
    """
    ds = load_dataset(name, root, val_size=val_size, seed=seed, normalize=False, subset=subset)
    norm = Normalization(float(ds.mean), float(ds.std), normalize)

    def prep(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, ...]:
        x, y = (x[:n], y[:n]) if n is not None else (x, y)
        return norm(x).to(device), y.to(device)

    x_tr, y_tr = prep(ds.train.images, ds.train.labels, train_limit)
    x_va, y_va = prep(ds.val.images, ds.val.labels, None)
    x_te, y_te = prep(ds.test.images, ds.test.labels, test_limit)
    meta = {"name": name, "mean": norm.mean, "std": norm.std, "normalize": normalize,
            "val_size": val_size, "split_seed": seed, "subset": subset,
            "train_size": len(y_tr), "test_size": len(y_te)}
    return TensorSplits(x_tr, y_tr, x_va, y_va, x_te, y_te, meta)


def splits_for_model_file(
    meta: Mapping[str, Any],
    *,
    data_root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> TensorSplits:
    """The splits a saved model was trained with, normalised as it expects.

    Reads the file's ``dataset`` metadata (name, ``val_size``, ``split_seed``, ``subset``,
    ``mean``, ``std``, ``normalize``; MNIST defaults where a key is missing). The stored
    mean and std are used as they are, so the inputs are those of training.

    Example:
        >>> s = splits_for_model_file({"dataset": {"name": "mnist"}})  # doctest: +SKIP
        >>> s.x_test.shape  # doctest: +SKIP
        torch.Size([10000, 1, 28, 28])
    """
    ds_meta = dict(meta.get("dataset") or {})
    name = ds_meta.get("name", "mnist")
    val_size = int(ds_meta.get("val_size", 5000))
    ds = load_dataset(name, data_root, val_size=val_size,
                      seed=int(ds_meta.get("split_seed", 0)), normalize=False,
                      subset=ds_meta.get("subset"))
    norm = Normalization(float(ds_meta.get("mean", ds.mean)), float(ds_meta.get("std", ds.std)),
                         ds_meta.get("normalize", "standard"))
    return TensorSplits(norm(ds.train.images).to(device), ds.train.labels.to(device),
                        norm(ds.val.images).to(device), ds.val.labels.to(device),
                        norm(ds.test.images).to(device), ds.test.labels.to(device),
                        {**ds_meta, "name": name, "mean": norm.mean, "std": norm.std,
                         "normalize": norm.mode, "val_size": val_size})
