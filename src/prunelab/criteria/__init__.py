"""What is unimportant: criteria that score weights or whole units, registered by name.

A criterion is a small class (:class:`Criterion`) implementing ``scores`` (importance; the
allocation in :mod:`prunelab.allocation` keeps the top entries) or ``compute_mask`` (a rule
such as Han's threshold). Weight criteria (:mod:`prunelab.criteria.unstructured`: ``std``,
``magnitude``, ``random``; :mod:`prunelab.criteria.nm`: ``nm``, N:M semi-structured;
:mod:`prunelab.criteria.blocks`: ``block_magnitude``, whole blocks) give a keep-mask of a
weight tensor and are used by :class:`prunelab.pruner.Pruner`; channel criteria
(:mod:`prunelab.criteria.channels`: ``l1_filter``, ``bn_scale``/``slimming``, ``thinet``) give
a keep-mask of a layer's output units and are used by
:func:`prunelab.criteria.channels.channel_keep`. Register your own with
:func:`register_criterion`.

Example:
    >>> available_criteria()  # doctest: +NORMALIZE_WHITESPACE
    ('block_magnitude', 'bn_scale', 'dns', 'l1_filter', 'magnitude', 'nm', 'random', 'slimming',
     'std', 'thinet')
"""

from . import channels  # noqa: F401  (registers the channel criteria)
from .base import Context, Criterion
from .blocks import BlockMagnitude, block_magnitude_mask
from .nm import NM, is_nm_sparse, nm_mask, nm_violations
from .registry import (
    as_criterion,
    available_criteria,
    criterion_class,
    get_criterion,
    register_criterion,
    unregister_criterion,
)
from .unstructured import (
    Magnitude,
    RandomScores,
    StdThreshold,
    SurgeryThreshold,
    global_magnitude_masks,
    keep_count,
    layer_seed,
    magnitude_mask,
    population_std,
    random_mask,
    std_threshold_mask,
    surgery_bounds,
)

__all__ = [
    "NM",
    "BlockMagnitude",
    "Context",
    "Criterion",
    "Magnitude",
    "RandomScores",
    "StdThreshold",
    "SurgeryThreshold",
    "as_criterion",
    "available_criteria",
    "block_magnitude_mask",
    "criterion_class",
    "get_criterion",
    "global_magnitude_masks",
    "is_nm_sparse",
    "keep_count",
    "layer_seed",
    "magnitude_mask",
    "nm_mask",
    "nm_violations",
    "population_std",
    "random_mask",
    "register_criterion",
    "std_threshold_mask",
    "surgery_bounds",
    "unregister_criterion",
]
