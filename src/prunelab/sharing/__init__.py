"""Weight sharing (Deep Compression, Han et al. 2016): per-layer k-means on the surviving weights.

* :mod:`~prunelab.sharing.kmeans`: exact, deterministic 1-D k-means (:func:`kmeans_1d`) and
  the order-independent sums it and the fine-tuning use (:func:`cluster_sums`).
* :mod:`~prunelab.sharing.bits`: bits per layer (8 conv, 5 fc by default; kinds and
  patterns, :func:`resolve_bits`).
* :mod:`~prunelab.sharing.shared`: :class:`WeightSharing` (attach, centroid fine-tuning
  through gradient hooks, snap, codebooks, indices, state) and :func:`share_weights`.
* :mod:`~prunelab.sharing.report`: :class:`SharingReport` and its rows.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.masks import set_mask
    >>> torch.manual_seed(0) and None
    >>> layer = nn.Linear(16, 4)
    >>> _ = set_mask(layer, "weight", (torch.rand(4, 16) > 0.5).float())
    >>> report = share_weights(layer, bits=2)
    >>> w = layer.weight.detach()
    >>> len(torch.unique(w[layer.weight_mask.bool()])), bool((w[layer.weight_mask == 0] == 0).all())
    (4, True)
"""

from .bits import BITS_RANGE, DEFAULT_BITS, KINDS, resolve_bits
from .kmeans import INITS, KMeans1D, cluster_sums, kmeans_1d
from .report import LayerSharing, SharingReport
from .shared import STATE_FORMAT, WeightSharing, share_weights

__all__ = [
    "BITS_RANGE",
    "DEFAULT_BITS",
    "INITS",
    "KINDS",
    "STATE_FORMAT",
    "KMeans1D",
    "LayerSharing",
    "SharingReport",
    "WeightSharing",
    "cluster_sums",
    "kmeans_1d",
    "resolve_bits",
    "share_weights",
]
