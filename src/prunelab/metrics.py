"""Accounting: parameters, nonzeros, FLOPs, in the paper's conventions.

Conventions (Han et al. 2015, Tables 1-4; they reproduce every number of the paper):

* per-layer ``weights`` count the weight tensor only (no biases);
* FLOP = 2 x multiply-accumulates of the dense layer, per input sample;
* FLOP kept = (fraction of weights kept) x (measured density of the layer's input
  activations, i.e. fraction of nonzero inputs, on a batch);
* model-wide ``params_total`` counts every parameter including biases, ``params_nonzero``
  counts the nonzero entries of masked tensors plus every unmasked parameter, and
  ``compression = params_total / params_nonzero``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
    ...                   nn.ReLU(), nn.Linear(100, 10))
    >>> s = model_stats(m, torch.rand(2, 1, 28, 28))
    >>> s.params_total, s.flops_dense
    (266610, 532400)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .hooks import eval_forward
from .masks import effective_tensor, is_masked
from .selection import CONV_TYPES, PRUNABLE_TYPES

__all__ = ["LayerStats", "ModelStats", "count_parameters", "model_stats"]


@dataclass(frozen=True)
class LayerStats:
    """One prunable layer's figures (FLOP per input sample)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    nonzero: int
    flops_dense: int
    flops_pruned: float
    input_density: float

    @property
    def weights_kept(self) -> float:
        """Fraction of the weights that are nonzero."""
        return self.nonzero / self.weights if self.weights else 0.0

    @property
    def flops_kept(self) -> float:
        """Fraction of the dense FLOP still needed."""
        return self.flops_pruned / self.flops_dense if self.flops_dense else 0.0

    def to_dict(self) -> dict:
        """JSON-friendly form with the derived fractions."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["weights_kept"] = self.weights_kept
        d["flops_kept"] = self.flops_kept
        return d


@dataclass(frozen=True)
class ModelStats:
    """Per-layer table and model totals."""

    layers: tuple[LayerStats, ...]
    params_total: int
    params_nonzero: int

    @property
    def flops_dense(self) -> int:
        """Dense FLOP of all prunable layers, per sample."""
        return sum(layer.flops_dense for layer in self.layers)

    @property
    def flops_pruned(self) -> float:
        """FLOP still needed after pruning, per sample."""
        return sum(layer.flops_pruned for layer in self.layers)

    @property
    def weights(self) -> int:
        """Weights of the prunable layers (no biases)."""
        return sum(layer.weights for layer in self.layers)

    @property
    def nonzero(self) -> int:
        """Nonzero weights of the prunable layers."""
        return sum(layer.nonzero for layer in self.layers)

    @property
    def compression(self) -> float:
        """``params_total / params_nonzero`` (parameters, biases included)."""
        return self.params_total / self.params_nonzero if self.params_nonzero else math.inf

    def to_dict(self) -> dict:
        """JSON-friendly summary with totals and the layer list."""
        return {
            "params_total": self.params_total,
            "params_nonzero": self.params_nonzero,
            "compression": self.compression,
            "weights": self.weights,
            "nonzero": self.nonzero,
            "flops_dense": self.flops_dense,
            "flops_pruned": self.flops_pruned,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(total, nonzero)`` parameters, biases included, masks respected.

    ``nonzero`` counts the nonzero entries of every effective tensor, so a model whose
    masks were made permanent (or loaded from a compact export) counts the same.

    Example:
        >>> from torch import nn
        >>> count_parameters(nn.Linear(3, 2))
        (8, 8)
    """
    total = nonzero = 0
    for module in model.modules():
        for pname, p in module._parameters.items():
            if p is None:
                continue
            total += p.numel()
            base = pname[: -len("_orig")] if pname.endswith("_orig") else pname
            eff = effective_tensor(module, base) if is_masked(module, base) else p
            nonzero += int(torch.count_nonzero(eff))
    return total, nonzero


def _flops(module: nn.Module, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> int:
    w = effective_tensor(module)
    if isinstance(module, CONV_TYPES):
        # MACs per output position = all weights (out x in/groups x kernel: a grouped conv's
        # weight already holds only the in/groups inputs each output reads); positions =
        # prod(spatial).
        positions = math.prod(out_shape[2:])
        return 2 * w.numel() * positions
    # Linear: extra leading dims (e.g. sequence) multiply the work per sample.
    extra = math.prod(in_shape[1:-1]) if len(in_shape) > 2 else 1
    return 2 * w.numel() * extra


def model_stats(model: nn.Module, example_input: torch.Tensor) -> ModelStats:
    """Measure the per-layer table on a batch (input densities are measured on it).

    Args:
        model: the (pruned) network; its training mode is restored afterwards.
        example_input: a batch of real inputs (input densities depend on the data).

    Returns:
        :class:`ModelStats`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model_stats(nn.Linear(4, 2), torch.ones(3, 4)).layers[0].flops_dense
        16
    """
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...], float]] = {}
    named = dict(model.named_modules())

    def record(name: str):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            x = inp[0]
            density = float(torch.count_nonzero(x)) / x.numel() if x.numel() else 0.0
            seen.setdefault(name, (tuple(x.shape), tuple(out.shape), density))

        return hook

    eval_forward(model, example_input, forward_hooks=[
        (m, record(n)) for n, m in named.items() if isinstance(m, PRUNABLE_TYPES)
    ])
    layers = []
    for name, module in named.items():
        if not isinstance(module, PRUNABLE_TYPES) or name not in seen:
            continue
        in_shape, out_shape, density = seen[name]
        w = effective_tensor(module).detach()
        nz = int(torch.count_nonzero(w))
        dense = _flops(module, out_shape, in_shape)
        kind = "conv" if isinstance(module, CONV_TYPES) else "fc"
        pruned = dense * (nz / w.numel()) * density
        layers.append(
            LayerStats(name or type(module).__name__, kind, tuple(w.shape), w.numel(), nz,
                       dense, pruned, density)
        )
    total, nonzero = count_parameters(model)
    return ModelStats(tuple(layers), total, nonzero)
