"""The layer graph of a model: who consumes whose outputs, and what that allows.

:func:`trace_structure` finds producer -> consumer links of Linear/Conv layers by running
one example batch (and checks them with ``torch.fx``) for chain networks;
:func:`trace_channels` groups the coupled channels of any traceable network (residual adds,
concatenations, grouped convs, attention heads) for structured pruning; the queries in
:mod:`prunelab.graph.queries` say which links allow removing units, which BatchNorms
follow a layer, and why a layer's units cannot be removed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> [(lk.producer, lk.consumer) for lk in surgery_links(trace_structure(m, torch.zeros(1, 4)))]
    [('0', '2')]
"""

from .dependency import ChannelGraph, ChannelGroup, GraphError, Member, trace_channels
from .queries import check_keep_mask, following_batchnorms, surgery_blocker, surgery_links
from .trace import (
    BATCHNORM_TYPES,
    DROPOUT_TYPES,
    PASSTHROUGH_TYPES,
    Link,
    Structure,
    trace_structure,
)

__all__ = [
    "BATCHNORM_TYPES",
    "DROPOUT_TYPES",
    "PASSTHROUGH_TYPES",
    "ChannelGraph",
    "ChannelGroup",
    "GraphError",
    "Link",
    "Member",
    "Structure",
    "check_keep_mask",
    "following_batchnorms",
    "surgery_blocker",
    "surgery_links",
    "trace_channels",
    "trace_structure",
]
