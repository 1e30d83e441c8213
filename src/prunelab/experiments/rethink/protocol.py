"""The protocol of Liu et al. 2019: does pruning give good weights, or only an architecture?

One *cell* of the experiment is (method, ratio, seed, baseline):

1. **Large model** (:func:`get_large_model`): built from the registry, initialised by
   :func:`he_reinit_` and trained with the large recipe (lr x``gamma`` at the milestone
   fractions). Network Slimming trains its own large model with an L1 penalty on the
   BatchNorm scales. Large models are cached as model files keyed by a hash of what
   determines them, so every method and ratio of a seed reuses them; the initial state is
   stored beside them (for the lottery baseline).
2. **Prune** (:func:`prune`): structured methods compute channel keep-masks, install them
   with :func:`prunelab.channel_masks.apply_channel_masks` and remove the channels with
   :func:`prunelab.surgery.compact_model` (a physically smaller model computing the same
   function); magnitude pruning (unstructured) masks weights of the same architecture.
3. **Baseline** (:func:`run_baseline`), all on the pruned architecture:

   * ``finetune``: the pruned weights, constant small learning rate, ``finetune.epochs``;
   * ``scratch_e``: fresh weights (:func:`he_reinit_`, which keeps the masks of an
     unstructured model), the large model's epochs and schedule;
   * ``scratch_b``: fresh weights, :func:`scratch_b_epochs` epochs, the same fractional
     milestones over the longer run;
   * ``lottery``: the surviving weights rewound to the large model's initial values
     (:func:`rewind_`; for structured pruning the kept channels of the initial weights),
     trained like ``scratch_e``.

Initialisation: the large model and every scratch model are initialised by the same rule,
He/Kaiming normal in fan-in mode with the fan-in counted on *surviving* weights of each
output unit (``std = sqrt(2 / surviving_fan_in)``), zero biases, BatchNorm scale 1 and
shift 0. So Scratch-E/B start from the distribution the large model started from, and the
lottery baseline differs from Scratch-E only in *which* sample it starts from. (Liu et al.'s
official weight-level code rescales He init per layer by the mean surviving fan-out,
``n = mask.sum() / in_channels``, matching their fan-out init; the per-unit fan-in rule is
the same idea applied per output unit.)

Every training run is seeded: epoch ``e`` of phase ``p`` shuffles with
:func:`prunelab.training.epoch_seed` ``(seed, p, e)``, and initial weights come from
generators seeded with :func:`prunelab.criteria.layer_seed`, so a cell is a pure function of
its configuration (on one device and thread count).

Example:
    >>> scratch_b_epochs(6, 4.0e6, 1.0e6)
    24
    >>> scratch_b_epochs(6, 4.0e6, 1.0e5, max_factor=4.0)  # 40x capped at 4x
    24
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...atomic import write_text_atomic
from ...channel_masks import apply_channel_masks
from ...checkpoint import load_tensors, save_tensors
from ...criteria import get_criterion, layer_seed
from ...criteria.channels import channel_keep
from ...data import TensorBatches, TensorSplits, prepare_splits
from ...graph import BATCHNORM_TYPES, Structure, following_batchnorms, trace_structure
from ...graph.resize import slice_tensors
from ...masks import get_mask, is_masked, raw_parameter, set_mask
from ...metrics import count_parameters, model_stats
from ...modelfile import load_model_file, save_model_file
from ...models import build_model
from ...pruner import prune_model
from ...schedules import lr_schedule
from ...selection import CONV_TYPES, LINEAR_TYPES
from ...surgery import SurgeryError, SurgeryReport, compact_model
from ...training import Callback, EpochStats, Trainer, epoch_seed, evaluate, make_optimizer
from .config import MethodConfig, RethinkConfig

__all__ = [
    "PHASES",
    "PROTOCOL_VERSION",
    "LargeModel",
    "PrunedModel",
    "Recipe",
    "baseline_model",
    "cell_key",
    "get_large_model",
    "he_reinit_",
    "key_hash",
    "large_key",
    "load_rethink_data",
    "nonzero_flops",
    "prune",
    "rewind_",
    "run_baseline",
    "scratch_b_epochs",
    "train",
    "train_large_model",
    "write_json_atomic",
]

# Bump when a change of this module changes results: it is part of every cell's hash.
PROTOCOL_VERSION = 1

# Phase index of each kind of training run (part of every epoch's shuffle seed).
PHASES: dict[str, int] = {"large": 0, "finetune": 1, "scratch_e": 2, "scratch_b": 3, "lottery": 4}


# ----------------------------------------------------------------------------- pure functions


def scratch_b_epochs(
    large_epochs: int,
    flops_large: float,
    flops_pruned: float,
    *,
    finetune_epochs: int = 0,
    count_finetune: bool = False,
    max_factor: float = 4.0,
) -> int:
    """Epochs of Scratch-B: the large model's computation budget spent on the pruned model.

    ``factor = min(max(flops_large / flops_pruned, 1), max_factor)`` and the result is
    ``floor(large_epochs * factor)`` (truncated, as ``int(...)`` in Liu et al.'s code), plus
    ``finetune_epochs`` when ``count_finetune`` (the fine-tune epochs of the prune pipeline
    ran on the pruned model, so each costs one Scratch-B epoch). FLOPs are per image and
    counted on nonzero weights (:func:`nonzero_flops`). A pruned model is never given fewer
    epochs than the large one (factor >= 1).

    Args:
        large_epochs: epochs of the large model's training, >= 1.
        flops_large: FLOPs per image of the large model, > 0.
        flops_pruned: FLOPs per image of the pruned model, > 0.
        finetune_epochs: epochs of the fine-tune baseline, >= 0.
        count_finetune: add ``finetune_epochs`` to the budget.
        max_factor: cap on the multiplier, >= 1.

    Returns:
        The number of epochs.

    Raises:
        ValueError: a value out of range (the message names it and the allowed range).

    Example:
        >>> scratch_b_epochs(6, 3.0e6, 2.0e6)  # 6 x 1.5
        9
        >>> scratch_b_epochs(6, 3.0e6, 2.0e6, finetune_epochs=3, count_finetune=True)
        12
    """
    for what, v, low in (("large_epochs", large_epochs, 1),
                         ("finetune_epochs", finetune_epochs, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{what}={v!r} is out of range; allowed: integer >= {low}")
    for what, v in (("flops_large", flops_large), ("flops_pruned", flops_pruned)):
        bad = isinstance(v, bool) or not isinstance(v, int | float)
        if bad or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{what}={v!r} is out of range; allowed: a finite number > 0")
    if isinstance(max_factor, bool) or not isinstance(max_factor, int | float) or not (
        max_factor >= 1
    ):
        raise ValueError(f"max_factor={max_factor!r} is out of range; allowed: >= 1")
    factor = min(max(flops_large / flops_pruned, 1.0), float(max_factor))
    # The epsilon keeps e.g. 6 x (3/2) from truncating to 8 through rounding error.
    epochs = math.floor(large_epochs * factor + 1e-9)
    return epochs + (finetune_epochs if count_finetune else 0)


def key_hash(key: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of a JSON-serialisable mapping (sorted keys).

    The same construction as :func:`prunelab.config.config_hash`, on a plain mapping.

    Example:
        >>> key_hash({"a": 1, "b": [2]}) == key_hash({"b": [2], "a": 1})
        True
    """
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _data_key(cfg: RethinkConfig) -> dict[str, Any]:
    # Where the files live does not change a result (they are verified by checksum).
    # ``pad: 0`` (the default) is left out so that older sweeps keep their cell hashes.
    return cfg.data.model_dump(mode="json", exclude={"root"} | ({"pad"} if not cfg.data.pad
                                                                 else set()))


def _slimming_key(method: MethodConfig) -> dict[str, Any] | None:
    if method.kind != "slimming":
        return None
    layers = list(method.layers) if method.layers is not None else None
    return {"strength": method.slimming_strength, "layers": layers}


def large_key(cfg: RethinkConfig, method: MethodConfig, seed: int) -> dict[str, Any]:
    """Everything that determines the large model a method starts from.

    Methods other than Network Slimming share one large model per seed.

    Example:
        >>> from prunelab.experiments.rethink.config import parse_rethink_config
        >>> cfg = parse_rethink_config({"model": {"name": "vgg_small"}, "large": {"epochs": 2},
        ...     "methods": [{"kind": "l1_filter", "ratios": [0.5]},
        ...                 {"kind": "magnitude", "ratios": [0.9]}]})
        >>> large_key(cfg, cfg.methods[0], 0) == large_key(cfg, cfg.methods[1], 0)
        True
    """
    return {
        "protocol": PROTOCOL_VERSION,
        "model": cfg.model.model_dump(mode="json"),
        "data": _data_key(cfg),
        "device": cfg.device,
        "large": cfg.large.model_dump(mode="json"),
        "seed": int(seed),
        "slimming": _slimming_key(method),
    }


def _method_key(cfg: RethinkConfig, method: MethodConfig) -> dict[str, Any]:
    """The method settings that change its pruning (labels and unused fields left out)."""
    key: dict[str, Any] = {
        "kind": method.kind,
        "layers": list(method.layers) if method.layers is not None else None,
    }
    if method.kind == "slimming":
        key.update(min_fraction=method.min_fraction, strength=method.slimming_strength)
    elif method.kind == "magnitude":
        key.update(scope=method.scope, min_fraction=method.min_fraction)
    elif method.kind == "thinet":
        key.update(samples=method.thinet_samples, example_size=cfg.example_size)
    return key


def cell_key(
    cfg: RethinkConfig, method: MethodConfig, ratio: float, seed: int, baseline: str
) -> dict[str, Any]:
    """Everything that determines one cell's result, and nothing else.

    The fine-tune settings enter only the ``finetune`` cell (and ``scratch_b`` with
    ``count_finetune``), the Scratch-B settings only the ``scratch_b`` cell, so changing one
    baseline's settings leaves the other cells valid.

    Example:
        >>> from prunelab.experiments.rethink.config import parse_rethink_config
        >>> raw = {"model": {"name": "vgg_small"}, "large": {"epochs": 2},
        ...        "methods": [{"kind": "l1_filter", "ratios": [0.5]}]}
        >>> a = parse_rethink_config(raw)
        >>> b = parse_rethink_config({**raw, "finetune": {"epochs": 9}})
        >>> m = a.methods[0]
        >>> key_hash(cell_key(a, m, 0.5, 0, "scratch_e")) == key_hash(cell_key(b, m, 0.5, 0,
        ...     "scratch_e")), key_hash(cell_key(a, m, 0.5, 0, "finetune")) == key_hash(
        ...     cell_key(b, m, 0.5, 0, "finetune"))
        (True, False)
    """
    key: dict[str, Any] = {
        "large": large_key(cfg, method, seed),
        "method": _method_key(cfg, method),
        "ratio": float(ratio),
        "baseline": baseline,
    }
    if baseline == "finetune":
        key["finetune"] = cfg.finetune.model_dump(mode="json")
    if baseline == "scratch_b":
        key["scratch_b"] = cfg.scratch_b.model_dump(mode="json")
        if cfg.scratch_b.count_finetune:
            key["finetune_epochs"] = cfg.finetune.epochs
    return key


# ----------------------------------------------------------------------------- data


def load_rethink_data(cfg: RethinkConfig) -> TensorSplits:
    """Load and normalise the dataset of ``cfg`` (training mean/std, before any subset).

    Raises:
        prunelab.data.DatasetError: missing or corrupt files.
    """
    d = cfg.data
    splits = prepare_splits(d.name, d.root, val_size=d.val_size, seed=d.split_seed,
                            normalize=d.normalize, train_limit=d.subset,
                            test_limit=d.test_subset, device=torch.device(cfg.device))
    if not d.pad:
        return splits

    def pad(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.nn.functional.pad(x, (d.pad,) * 4)

    return dataclasses.replace(
        splits, x_train=pad(splits.x_train), x_val=pad(splits.x_val),
        x_test=pad(splits.x_test), meta={**splits.meta, "pad": d.pad},
    )


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Recipe:
    """One training run: epochs, optimizer, learning-rate schedule, phase index.

    ``milestones`` empty means a constant learning rate. ``slimming_strength`` > 0 adds the
    Network Slimming sub-gradient ``strength * sign(gamma)`` to the BatchNorm scales passed
    to :func:`train` as ``l1_params`` (the gradient of
    :func:`prunelab.criteria.channels.slimming_penalty`).
    """

    phase: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    slimming_strength: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _recipe(cfg: RethinkConfig, phase: str, epochs: int, **over: Any) -> Recipe:
    t = cfg.large
    base = {"batch_size": t.batch_size, "optimizer": t.optimizer, "lr": t.lr,
            "momentum": t.momentum, "weight_decay": t.weight_decay, "milestones": t.milestones,
            "gamma": t.gamma}
    base.update(over)
    return Recipe(phase=phase, epochs=epochs, **base)


def train(
    model: nn.Module,
    recipe: Recipe,
    data: TensorSplits,
    *,
    seed: int,
    l1_params: Sequence[nn.Parameter] = (),
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place by ``recipe`` (masks, if any, are kept exact).

    Args:
        model: the network, on the data's device.
        recipe: what to run.
        data: the splits (only the training split is used).
        seed: run seed; epoch ``e`` shuffles with ``epoch_seed(seed, PHASES[phase], e)``.
        l1_params: parameters the slimming penalty acts on.
        on_epoch: called with each epoch's record.

    Returns:
        One record per epoch: epoch, loss, train accuracy, lr, seconds.
    """
    opt = make_optimizer(model.parameters(), recipe.optimizer, lr=recipe.lr,
                         momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    batches = TensorBatches(data.x_train, data.y_train, batch_size=recipe.batch_size)
    policy = "multistep" if recipe.milestones else "constant"
    lr_at = lr_schedule(policy, recipe.lr, recipe.epochs * len(batches), gamma=recipe.gamma,
                        milestones=recipe.milestones)
    history: list[dict[str, Any]] = []
    log = _EpochLog(recipe, history, on_epoch)
    trainer = Trainer(model, opt, lr_at=lr_at, l1=recipe.slimming_strength,
                      l1_params=list(l1_params), callbacks=[log])
    trainer.fit(batches, epochs=recipe.epochs,
                seed_of_epoch=lambda e: epoch_seed(seed, PHASES[recipe.phase], e))
    return history


class _EpochLog(Callback):
    """One record per epoch of a recipe: epoch, loss, train accuracy, lr, seconds."""

    def __init__(self, recipe: Recipe, history: list[dict[str, Any]],
                 on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
        self.recipe, self.history, self.on_epoch = recipe, history, on_epoch
        self.t0 = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, stats: EpochStats) -> None:
        rec = {"phase": self.recipe.phase, "epoch": epoch + 1, "epochs": self.recipe.epochs,
               "loss": stats.loss, "train_accuracy": stats.accuracy, "lr": stats.lr,
               "time_s": time.perf_counter() - self.t0}
        self.history.append(rec)
        if self.on_epoch is not None:
            self.on_epoch(rec)
        self.t0 = time.perf_counter()


def _errors(model: nn.Module, data: TensorSplits, batch_size: int) -> tuple[float, float]:
    """(test error %, validation error %)."""
    _, acc_test = evaluate(model, data.x_test, data.y_test, batch_size=batch_size)
    _, acc_val = evaluate(model, data.x_val, data.y_val, batch_size=batch_size)
    return 100.0 * (1.0 - acc_test), 100.0 * (1.0 - acc_val)


def nonzero_flops(model: nn.Module, example_input: torch.Tensor) -> float:
    """FLOPs per image on nonzero weights: sum over Linear/Conv layers of dense FLOPs x
    the fraction of the layer's weights that are nonzero (Liu et al.'s count).

    Unlike :attr:`prunelab.metrics.ModelStats.flops_pruned`, input-activation density is
    not counted (ReLU zeros are not skipped by dense kernels, and the paper ignores them).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> nonzero_flops(nn.Linear(4, 2), torch.ones(1, 4))
        16.0
    """
    stats = model_stats(model, example_input)
    return float(sum(layer.flops_dense * layer.weights_kept for layer in stats.layers))


# ----------------------------------------------------------------------------- initialisation



def _refresh_masks(module: nn.Module) -> None:
    for name in ("weight", "bias"):
        if is_masked(module, name):
            set_mask(module, name, get_mask(module, name))  # recompute the cached product


@torch.no_grad()
def he_reinit_(model: nn.Module, *, seed: int) -> nn.Module:
    """Re-initialise every parameter in place, keeping the masks (the scratch baselines).

    * Linear/Conv weights: ``N(0, 2 / n_u)`` for output unit ``u``, where ``n_u`` is the
      number of *surviving* (unmasked) weights of that unit, i.e. its surviving fan-in
      (He/Kaiming normal, fan-in mode); a unit with no survivor stays zero; pruned entries
      are exactly zero. Biases are zero.
    * BatchNorm: scale 1, shift 0, running statistics reset.
    * Other modules with parameters: their own ``reset_parameters()`` (unmasked only).

    Each module draws from a CPU generator seeded with ``layer_seed(seed, module_name)``, so
    the result does not depend on the global RNG or the device.

    Args:
        model: the network (masked or not); changed in place.
        seed: the initialisation seed.

    Returns:
        ``model``.

    Raises:
        ValueError: a masked module of a type this function cannot re-initialise.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.masks import set_mask
        >>> layer = nn.Linear(4, 2)
        >>> _ = set_mask(layer, "weight", torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0]]))
        >>> _ = he_reinit_(layer, seed=0)
        >>> (layer.weight != 0).sum(1).tolist(), layer.bias.tolist()
        ([2, 1], [0.0, 0.0])
    """
    for name, m in model.named_modules():
        if not m._parameters:
            continue
        gen = torch.Generator().manual_seed(layer_seed(seed, name or "<root>"))
        if isinstance(m, LINEAR_TYPES + CONV_TYPES):
            w = raw_parameter(m, "weight", missing_ok=True)
            mask = get_mask(m, "weight")
            keep = (mask != 0) if mask is not None else torch.ones_like(w, dtype=torch.bool)
            fan = keep.reshape(w.shape[0], -1).sum(dim=1).double()
            std = torch.where(fan > 0, torch.sqrt(2.0 / fan.clamp(min=1)), torch.zeros_like(fan))
            draw = torch.randn(w.shape, generator=gen, dtype=torch.float64)
            draw = draw * std.view(-1, *([1] * (w.dim() - 1))) * keep.cpu()
            w.copy_(draw.to(dtype=w.dtype, device=w.device))
            b = raw_parameter(m, "bias", missing_ok=True)
            if b is not None:
                b.zero_()
        elif isinstance(m, BATCHNORM_TYPES):
            if m.affine:
                raw_parameter(m, "weight", missing_ok=True).fill_(1.0)
                raw_parameter(m, "bias", missing_ok=True).zero_()
            m.reset_running_stats()
        elif any(is_masked(m, n[: -len("_orig")]) for n in m._parameters if n.endswith("_orig")):
            raise ValueError(
                f"cannot re-initialise masked module {name!r} of type {type(m).__name__}; "
                "supported: Linear, Conv1d/2d/3d, BatchNorm"
            )
        elif hasattr(m, "reset_parameters"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(layer_seed(seed, name or "<root>"))
                m.reset_parameters()
        _refresh_masks(m)
    return model


@torch.no_grad()
def rewind_(model: nn.Module, init_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Set every parameter and buffer to its initial value, keeping the masks (lottery).

    ``init_state`` is the state dict of the unpruned model before training (keys without
    ``_orig``); a masked tensor gets ``init * mask``, so pruned entries stay zero and the
    survivors equal their original initial values exactly.

    Raises:
        ValueError: ``init_state`` lacks a parameter of ``model`` or has another shape.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.masks import set_mask
        >>> layer = nn.Linear(2, 1)
        >>> init = {k: v.clone() for k, v in layer.state_dict().items()}
        >>> _ = set_mask(layer, "weight", torch.tensor([[1.0, 0.0]]))
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.add_(5.0)  # training moved it
        >>> _ = rewind_(layer, init)
        >>> bool(layer.weight[0, 0] == init["weight"][0, 0]), bool(layer.weight[0, 1] == 0)
        (True, True)
    """
    for mod_name, m in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for pname, p in m._parameters.items():
            if p is None:
                continue
            base = pname[: -len("_orig")] if pname.endswith("_orig") else pname
            key = prefix + base
            if key not in init_state or tuple(init_state[key].shape) != tuple(p.shape):
                got = tuple(init_state[key].shape) if key in init_state else "missing"
                raise ValueError(
                    f"initial state has no tensor {key!r} of shape {tuple(p.shape)} (got {got})"
                )
            value = init_state[key].to(dtype=p.dtype, device=p.device)
            mask = get_mask(m, base) if pname.endswith("_orig") else None
            p.copy_(value * mask if mask is not None else value)
        for bname, buf in m._buffers.items():
            if buf is None or bname.endswith("_mask") or prefix + bname not in init_state:
                continue
            buf.copy_(init_state[prefix + bname].to(dtype=buf.dtype, device=buf.device))
        _refresh_masks(m)
    return model


# ----------------------------------------------------------------------------- large model


@dataclass
class LargeModel:
    """A trained large model and what is known about it.

    Attributes:
        model: the trained network (unmasked).
        init_state: its state before training (for the lottery baseline).
        key, hash: :func:`large_key` and its :func:`key_hash`.
        info: test/val error (%), FLOPs, parameters, time, history (JSON-friendly).
        cached: loaded from the cache rather than trained now.
    """

    model: nn.Module
    init_state: dict[str, torch.Tensor]
    key: dict[str, Any]
    hash: str
    info: dict[str, Any]
    cached: bool = False

    @property
    def flops(self) -> float:
        """FLOPs per image on nonzero weights."""
        return float(self.info["flops"])


def _slimming_params(
    model: nn.Module, method: MethodConfig, example: torch.Tensor
) -> list[nn.Parameter]:
    """BatchNorm scales penalised for Network Slimming (those after the selected layers)."""
    bns = {n: m for n, m in model.named_modules() if isinstance(m, BATCHNORM_TYPES) and m.affine}
    if method.layers is None:
        names = list(bns)
    else:
        from ...selection import select_layers

        structure = trace_structure(model, example)
        names = []
        for layer in select_layers(model, list(method.layers)):
            names += [b for b in following_batchnorms(model, structure, layer) if b in bns]
    if not names:
        raise ValueError("Network Slimming found no affine BatchNorm to penalise")
    return [bns[n].weight for n in dict.fromkeys(names)]


def train_large_model(
    cfg: RethinkConfig,
    data: TensorSplits,
    method: MethodConfig,
    seed: int,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> LargeModel:
    """Build, initialise (:func:`he_reinit_`) and train the large model for ``method``.

    Network Slimming (``method.kind == "slimming"``) trains with its L1 penalty on the
    BatchNorm scales; every other method gets the plain large model.
    """
    t0 = time.perf_counter()
    model = build_model(cfg.model.name, **cfg.model.kwargs)
    he_reinit_(model, seed=layer_seed(seed, "large-init"))
    model.to(torch.device(cfg.device))
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    example = data.example(cfg.example_size)
    strength = method.slimming_strength if method.kind == "slimming" else 0.0
    l1_params = _slimming_params(model, method, example) if strength else []
    recipe = _recipe(cfg, "large", cfg.large.epochs, slimming_strength=strength or 0.0)
    history = train(model, recipe, data, seed=seed, l1_params=l1_params, on_epoch=on_epoch)
    test_err, val_err = _errors(model, data, cfg.eval_batch_size)
    total, nonzero = count_parameters(model)
    key = large_key(cfg, method, seed)
    info = {"test_error": test_err, "val_error": val_err, "flops": nonzero_flops(model, example),
            "params_total": total, "params_nonzero": nonzero, "epochs": cfg.large.epochs,
            "time_s": time.perf_counter() - t0, "recipe": recipe.to_dict(), "history": history,
            "slimming": _slimming_key(method), "seed": int(seed)}
    return LargeModel(model, init_state, key, key_hash(key), info)


def get_large_model(
    cfg: RethinkConfig,
    data: TensorSplits,
    method: MethodConfig,
    seed: int,
    *,
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> LargeModel:
    """The large model for ``method`` and ``seed``, from ``cache_dir`` or trained and cached.

    The cache holds ``<hash>.safetensors`` (a prunelab model file:
    ``prunelab evaluate`` reads it), ``<hash>.init.safetensors`` (the initial state) and
    ``<hash>.json`` (the info). The model file is written after the initial state, so its
    presence marks a complete entry. A freshly trained model is re-read from the file, so a
    resumed sweep starts pruning from exactly the same tensors as an uninterrupted one.
    """
    key = large_key(cfg, method, seed)
    h = key_hash(key)
    if cache_dir is None:
        return train_large_model(cfg, data, method, seed, on_epoch=on_epoch)
    d = Path(cache_dir)
    model_path, init_path, info_path = (d / f"{h}.safetensors", d / f"{h}.init.safetensors",
                                        d / f"{h}.json")
    cached = model_path.is_file() and init_path.is_file()
    if not cached:
        large = train_large_model(cfg, data, method, seed, on_epoch=on_epoch)
        spec = cfg.model.model_dump(mode="json")
        save_tensors(init_path, large.init_state, {"kind": "rethink-init", "hash": h})
        save_model_file(model_path, large.model, spec, dataset=dict(data.meta),
                        extra={"rethink": {"key": key, "hash": h, "info": large.info}})
    # the file was written above from the user's own config: its import path is theirs
    model, meta = load_model_file(model_path, device=cfg.device,
                                  allow_import={cfg.model.name})
    init_state, _ = load_tensors(init_path, device=cfg.device)
    info = meta["rethink"]["info"]
    if not info_path.is_file():
        write_json_atomic(info_path, {"key": key, "hash": h, "info": info})
    return LargeModel(model, init_state, key, h, info, cached=cached)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, fsync, ``os.replace``):
    a crash leaves the old file or the new one, never a torn one."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- pruning


@dataclass
class PrunedModel:
    """The result of :func:`prune`.

    Attributes:
        method, ratio: what was done.
        model: the pruned network to train: physically smaller (structured) or masked
            (unstructured); its weights are the large model's.
        masked: the large model with masks installed (structured: computes the same
            function as ``model``; unstructured: ``model`` itself).
        structure: the traced structure of the large model.
        keep: structured only: ``{layer: BoolTensor}``, True for kept channels.
        surgery: structured only: the surgery report.
        flops: FLOPs per image on nonzero weights of ``model``.
        params_total, params_nonzero: parameters of ``model`` (biases, BatchNorm included).
    """

    method: MethodConfig
    ratio: float
    model: nn.Module
    masked: nn.Module
    structure: Structure
    keep: dict[str, torch.Tensor] | None
    surgery: SurgeryReport | None
    flops: float
    params_total: int
    params_nonzero: int
    cuts: dict[tuple[str, int], torch.Tensor] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description: kept channels per layer or weight density."""
        out: dict[str, Any] = {"flops": self.flops, "params_total": self.params_total,
                               "params_nonzero": self.params_nonzero}
        if self.keep is not None:
            out["channels_kept"] = {n: [int(k.sum()), k.numel()] for n, k in self.keep.items()}
        else:
            out["density"] = {
                n: float((get_mask(m) != 0).float().mean())
                for n, m in self.model.named_modules() if is_masked(m)
            }
        return out


def prune(
    model: nn.Module,
    method: MethodConfig,
    ratio: float,
    example_input: torch.Tensor,
    *,
    seed: int = 0,
) -> PrunedModel:
    """Prune a copy of ``model`` with ``method`` at ``ratio`` (``model`` is not changed).

    Structured methods: the channel criterion registered as ``method.kind`` (``l1_filter``,
    ``slimming`` = ``bn_scale``, ``thinet``; :mod:`prunelab.criteria.channels`) gives keep-masks
    through :func:`~prunelab.criteria.channels.channel_keep` (its default scope: per layer,
    or one global threshold for slimming, each layer keeping at least ``method.min_fraction``),
    installed by :func:`~prunelab.channel_masks.apply_channel_masks` (every selected layer
    must be removable physically) and :func:`prunelab.surgery.compact_model` builds the
    smaller model (it verifies that the two compute the same outputs). Magnitude: the
    ``ratio`` of the smallest weights is masked (:func:`prunelab.pruner.prune_model`),
    per layer or under one global threshold (``method.scope``).

    Args:
        model: the trained large model.
        method: the method's configuration.
        ratio: fraction pruned, in (0, 1).
        example_input: a batch of real inputs (tracing, ThiNet's statistics, FLOPs).
        seed: ThiNet's sampling seed.

    Returns:
        :class:`PrunedModel`.

    Raises:
        ValueError: a ratio out of range or unreachable, or bad layer patterns.
        prunelab.surgery.SurgeryError: a selected layer cannot be removed physically.
    """
    masked = copy.deepcopy(model)
    layers = list(method.layers) if method.layers is not None else None
    structure = trace_structure(masked, example_input)
    keep = report = None
    if method.structured and not _is_chain(masked, structure):
        return _prune_coupled(model, method, ratio, example_input, structure, seed)
    if method.structured:
        options = {"samples": method.thinet_samples} if method.kind == "thinet" else {}
        keep = channel_keep(masked, get_criterion(method.kind, **options), ratio,
                            structure=structure, example_input=example_input, layers=layers,
                            min_fraction=method.min_fraction, seed=seed)
        try:
            apply_channel_masks(masked, keep, structure, require_surgery=True)
            pruned, report = compact_model(masked, example_input, structure=structure,
                                           keep=keep, keep_masks=False)
        except SurgeryError:  # residual / concatenating network: the channel graph
            return _prune_coupled(model, method, ratio, example_input, structure, seed)
    else:
        prune_model(masked, "magnitude", ratio, layers=layers, scope=method.scope,
                    min_density=method.min_fraction)
        pruned = masked
    total, nonzero = count_parameters(pruned)
    return PrunedModel(method, float(ratio), pruned, masked, structure, keep, report,
                       nonzero_flops(pruned, example_input), total, nonzero)


def _is_chain(model: nn.Module, structure: Structure) -> bool:
    """Every Linear/Conv layer but the output one feeds a verified single-path link."""
    layers = [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES + LINEAR_TYPES)]
    producers = {lk.producer for lk in structure.links}
    return structure.verified and all(n in producers for n in structure.layers[:-1]) and len(
        structure.layers) == len(layers)


def _prune_coupled(
    model: nn.Module, method: MethodConfig, ratio: float, example_input: torch.Tensor,
    structure: Structure, seed: int,
) -> PrunedModel:
    """Structured pruning through the channel dependency graph (``prune_channels``): coupled
    channels (residual streams, concatenations) are removed from every layer sharing them."""
    from ...channel_pruning import prune_channels

    ignore: list[str] = []
    if method.layers is not None:
        ignore = [
            n for n, m in model.named_modules()
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
            and not any(fnmatchcase(n, p) for p in method.layers)
        ]
    res = prune_channels(
        model, example_input, method="slimming" if method.kind == "slimming" else method.kind,
        amount=ratio, ignore=ignore, min_fraction=method.min_fraction,
        samples=method.thinet_samples, seed=seed,
    )
    keep: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    for name, m in mods.items():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            rows = res.keep.get((f"{name}.weight", 0))
            k = torch.ones(m.weight.shape[0], dtype=torch.bool)
            if rows is not None:
                k[:] = False
                k[rows] = True
            keep[name] = k
    total, nonzero = count_parameters(res.model)
    return PrunedModel(method, float(ratio), res.model, res.masked, structure, keep, None,
                       nonzero_flops(res.model, example_input), total, nonzero, res.keep)


# ----------------------------------------------------------------------------- baselines


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def baseline_model(
    baseline: str,
    pruned: PrunedModel,
    large: LargeModel,
    example_input: torch.Tensor,
    *,
    seed: int,
) -> nn.Module:
    """The pruned architecture with the weights a baseline starts from (a new module).

    * ``finetune``: the pruned weights;
    * ``scratch_e`` / ``scratch_b``: :func:`he_reinit_` with ``layer_seed(seed, "scratch")``
      (the same fresh weights for both, so they differ only in budget);
    * ``lottery``: unstructured: :func:`rewind_` to ``large.init_state``; structured: the
      initial state's kept channels (the initial model masked and compacted like the
      trained one).

    Raises:
        ValueError: unknown baseline.
    """
    if baseline == "finetune":
        return copy.deepcopy(pruned.model)
    if baseline in ("scratch_e", "scratch_b"):
        return he_reinit_(copy.deepcopy(pruned.model), seed=layer_seed(seed, "scratch"))
    if baseline != "lottery":
        raise ValueError(
            f"baseline {baseline!r} is unknown; allowed: finetune, scratch_e, scratch_b, lottery"
        )
    if pruned.keep is None:
        return rewind_(copy.deepcopy(pruned.model), large.init_state)
    init = copy.deepcopy(large.model)
    init.load_state_dict(large.init_state)
    if pruned.cuts is not None:  # pruned through the channel graph: cut the same slices
        slice_tensors(init, pruned.cuts)
        if not _same_architecture(init, pruned.model):
            raise RuntimeError("the rewound initial model does not match the pruned architecture")
        return init
    apply_channel_masks(init, pruned.keep, pruned.structure, require_surgery=True)
    small, _ = compact_model(init, example_input, structure=pruned.structure, keep=pruned.keep,
                             keep_masks=False)
    if not _same_architecture(small, pruned.model):
        raise RuntimeError("the rewound initial model does not match the pruned architecture")
    return small


def baseline_epochs(
    cfg: RethinkConfig, baseline: str, flops_large: float, flops_pruned: float
) -> tuple[int, dict[str, Any]]:
    """Epochs of a baseline and, for Scratch-B, how they were computed."""
    if baseline == "finetune":
        return cfg.finetune.epochs, {}
    if baseline in ("scratch_e", "lottery"):
        return cfg.large.epochs, {}
    sb = cfg.scratch_b
    epochs = scratch_b_epochs(cfg.large.epochs, flops_large, flops_pruned,
                              finetune_epochs=cfg.finetune.epochs,
                              count_finetune=sb.count_finetune, max_factor=sb.max_factor)
    raw = flops_large / flops_pruned
    return epochs, {"factor_raw": raw, "factor": min(max(raw, 1.0), sb.max_factor),
                    "capped": raw > sb.max_factor, "count_finetune": sb.count_finetune}


def run_baseline(
    cfg: RethinkConfig,
    data: TensorSplits,
    large: LargeModel,
    pruned: PrunedModel,
    baseline: str,
    seed: int,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one baseline on the pruned architecture and measure it (one cell).

    Returns:
        The cell record: method, kind, ratio, seed, baseline, epochs, test and validation
        error (%), parameters and FLOPs on nonzero weights of the trained model, the large
        model's FLOPs and error, the error right after pruning (``finetune`` only), the
        recipe, the epoch history and the seconds spent (training and evaluation).
    """
    t0 = time.perf_counter()
    example = data.example(cfg.example_size)
    model = baseline_model(baseline, pruned, large, example, seed=seed)
    epochs, budget = baseline_epochs(cfg, baseline, large.flops, pruned.flops)
    before = None
    if baseline == "finetune":
        recipe = _recipe(cfg, "finetune", epochs, lr=cfg.finetune.lr, milestones=())
        before = _errors(model, data, cfg.eval_batch_size)[0]
    else:
        recipe = _recipe(cfg, baseline, epochs)
    history = train(model, recipe, data, seed=seed, on_epoch=on_epoch)
    test_err, val_err = _errors(model, data, cfg.eval_batch_size)
    total, nonzero = count_parameters(model)
    flops = nonzero_flops(model, example)
    method = pruned.method
    return {
        "method": method.name, "kind": method.kind, "structured": method.structured,
        "ratio": pruned.ratio, "seed": int(seed), "baseline": baseline, "epochs": epochs,
        "test_error": test_err, "val_error": val_err,
        "params_nonzero": nonzero, "params_total": total, "flops": flops,
        "flops_large": large.flops, "flops_reduction": large.flops / flops if flops else None,
        "large_test_error": large.info["test_error"], "large_hash": large.hash,
        "test_error_pruned": before, "budget": budget, "recipe": recipe.to_dict(),
        "pruned": pruned.summary(), "history": history, "time_s": time.perf_counter() - t0,
        "device": cfg.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
