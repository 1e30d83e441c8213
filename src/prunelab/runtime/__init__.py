"""Sparse inference for pruned models: CPU kernels, and 2:4 tensor cores on NVIDIA GPUs.

``PackedLinear`` / ``PackedConv2d`` run pruned layers on prunelab's C++ kernels (panelled CSR,
16-bit indices, AVX2/AVX-512, :mod:`prunelab.runtime.native` builds them);
``SparseLinear`` runs torch's MKL CSR with int32 indices; ``compile_sparse`` makes pruning
permanent on a copy of a model and swaps in a sparse layer only where it measures faster
than dense on the example input. ``to_semi_structured`` gives 2:4-pruned Linear layers on a
GPU torch's semi-structured weights (:mod:`prunelab.runtime.semi_structured`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.runtime import compile_sparse
    >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> sm = compile_sparse(net, torch.randn(1, 64), repeats=3)
    >>> sorted(d.layer for d in sm.report)
    ['0', '2']
"""

from prunelab.runtime.compiler import (
    LayerDecision,
    SparseModel,
    compile_sparse,
    deepcopy_pruned,
    make_pruning_permanent,
    measure_samples_us,
    measure_us,
)
from prunelab.runtime.kernels import (
    INDEX_DTYPES,
    SparseLinear,
    csr_bytes,
    dense_weight_bytes,
    make_csr,
)
from prunelab.runtime.packed import PackedConv2d, PackedLinear
from prunelab.runtime.semi_structured import (
    SemiStructuredLayer,
    SemiStructuredReport,
    check_semi_structured,
    to_semi_structured,
)

__all__ = [
    "INDEX_DTYPES",
    "LayerDecision",
    "PackedConv2d",
    "PackedLinear",
    "SemiStructuredLayer",
    "SemiStructuredReport",
    "SparseLinear",
    "SparseModel",
    "check_semi_structured",
    "compile_sparse",
    "csr_bytes",
    "deepcopy_pruned",
    "dense_weight_bytes",
    "make_csr",
    "make_pruning_permanent",
    "measure_samples_us",
    "measure_us",
    "to_semi_structured",
]
