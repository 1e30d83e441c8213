"""Dataset loading: MNIST and Fashion-MNIST from IDX files, verified by SHA-256.

Public API:

* :func:`load_dataset` -- load a dataset into memory as train/val/test torch tensors.
* :class:`DatasetSplits`, :class:`Split` -- the returned containers.
* :data:`DATASETS`, :func:`dataset_info`, :class:`DatasetInfo` -- the dataset registry
  (file names, checksums, class names, mirrors, default roots).
* :func:`resolve_root` -- where the files of a dataset are looked for.
* :func:`read_idx` -- strict reader for a single IDX file (gzip or plain).
* :class:`DatasetError` -- raised for missing, corrupt or unverifiable data files.
* :func:`prepare_splits`, :class:`TensorSplits`, :class:`Normalization`,
  :func:`splits_for_model_file` -- normalised tensors of the splits a run uses.
* :class:`TensorBatches` -- the fast in-memory batcher (seeded per epoch).
* :func:`open_imagefolder`, :class:`ImageFolderSpec`, :class:`ImageFolderSplits`,
  :class:`FolderBatches` -- image folders in the ImageNet layout through a ``DataLoader``;
  :func:`write_imagefolder` writes MNIST / Fashion-MNIST as one (these load torchvision,
  so they are imported on first use).

Example:
    >>> from prunelab.data import load_dataset
    >>> ds = load_dataset("mnist")  # doctest: +SKIP
    >>> len(ds.train), len(ds.val), len(ds.test)  # doctest: +SKIP
    (55000, 5000, 10000)
"""

from prunelab.data.datasets import (
    DATASETS,
    ENV_VAR,
    DatasetInfo,
    DatasetSplits,
    Split,
    clear_cache,
    dataset_info,
    load_dataset,
    resolve_root,
)
from prunelab.data.idx import DatasetError, read_idx

from .batches import TensorBatches
from .prepare import Normalization, TensorSplits, prepare_splits, splits_for_model_file

# torchvision takes seconds to import: the image-folder names load it on first use.
_IMAGEFOLDER_NAMES = frozenset(
    {"FolderBatches", "ImageFolderSpec", "ImageFolderSplits", "open_imagefolder",
     "write_imagefolder"}
)


def __getattr__(name: str) -> object:
    if name in _IMAGEFOLDER_NAMES:
        from . import imagefolder

        return getattr(imagefolder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "ENV_VAR",
    "DatasetError",
    "DatasetInfo",
    "DatasetSplits",
    "FolderBatches",
    "ImageFolderSpec",
    "ImageFolderSplits",
    "Normalization",
    "Split",
    "TensorBatches",
    "TensorSplits",
    "clear_cache",
    "dataset_info",
    "load_dataset",
    "open_imagefolder",
    "prepare_splits",
    "read_idx",
    "resolve_root",
    "splits_for_model_file",
    "write_imagefolder",
]
