"""What is unimportant: criteria that score weights or whole units.

Unstructured criteria (:mod:`prunelab.criteria.unstructured`) give a keep-mask of a weight
tensor; channel criteria (:mod:`prunelab.criteria.channels`) give a keep-mask of a layer's
output units.
"""

from .unstructured import (
    global_magnitude_masks,
    keep_count,
    layer_seed,
    magnitude_mask,
    random_mask,
    std_threshold_mask,
)

__all__ = [
    "global_magnitude_masks",
    "keep_count",
    "layer_seed",
    "magnitude_mask",
    "random_mask",
    "std_threshold_mask",
]
