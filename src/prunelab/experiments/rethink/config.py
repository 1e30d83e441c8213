"""Configuration of a "Rethinking the Value of Network Pruning" sweep (Liu et al. 2019).

A sweep trains a large model, prunes it with each method at each ratio, and trains the
pruned architecture several ways (the *baselines*):

* ``finetune``: the pruned model's own weights, a small constant learning rate;
* ``scratch_e``: random initialisation, as many epochs as the large model;
* ``scratch_b``: random initialisation, the large model's computation budget (epochs scaled
  by the FLOP ratio, see :func:`prunelab.experiments.rethink.protocol.scratch_b_epochs`);
* ``lottery``: the surviving weights rewound to the large model's initial values
  (Frankle & Carbin 2019), trained like ``scratch_e``.

Every key is validated before any work starts (frozen pydantic models, unknown keys
rejected); a bad value raises :class:`prunelab.config.ConfigError` naming the key and the
allowed values.

Example:
    >>> cfg = RethinkConfig.model_validate({
    ...     "model": {"name": "vgg_small"},
    ...     "large": {"epochs": 6},
    ...     "methods": [{"kind": "l1_filter", "ratios": [0.3, 0.6]}],
    ... })
    >>> cfg.large.milestones, cfg.baselines, cfg.methods[0].name
    ((0.5, 0.75), ('finetune', 'scratch_e', 'scratch_b'), 'l1_filter')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ...config import (
    ConfigError,
    ModelConfig,
    _format_errors,
    _Strict,
    apply_overrides,
    read_yaml_mapping,
)

__all__ = [
    "BASELINES",
    "BASELINE_TITLES",
    "METHOD_KINDS",
    "STRUCTURED_KINDS",
    "FinetuneConfig",
    "MethodConfig",
    "RethinkConfig",
    "RethinkDataConfig",
    "ScratchBConfig",
    "TrainingConfig",
    "load_rethink_config",
    "parse_rethink_config",
]

Baseline = Literal["finetune", "scratch_e", "scratch_b", "lottery"]
MethodKind = Literal["l1_filter", "slimming", "thinet", "magnitude"]
BASELINES: tuple[str, ...] = ("finetune", "scratch_e", "scratch_b", "lottery")
BASELINE_TITLES: dict[str, str] = {
    "finetune": "fine-tune", "scratch_e": "Scratch-E", "scratch_b": "Scratch-B",
    "lottery": "lottery (rewind)", "pruned": "pruned, no retraining",
}
METHOD_KINDS: tuple[str, ...] = ("l1_filter", "slimming", "thinet", "magnitude")
STRUCTURED_KINDS: tuple[str, ...] = ("l1_filter", "slimming", "thinet")


class RethinkDataConfig(_Strict):
    """Dataset and splits.

    The validation split (``val_size`` images of the official training set, chosen by
    ``split_seed``) is the same for every seed of the sweep; ``subset`` then keeps the first
    ``subset`` of the remaining training images (a random subset, since the split permutes).
    Unlike :class:`prunelab.config.DataConfig`, ``subset`` leaves the validation and test
    sets whole (``test_subset`` cuts the test set, for quick tests only).
    """

    name: Literal["mnist", "fashion-mnist"] = "fashion-mnist"
    root: str | None = Field(None, description="dataset directory (default: resolve_root)")
    val_size: int = Field(5000, gt=0, lt=60000)
    split_seed: int = Field(0, ge=0)
    subset: int | None = Field(None, gt=0, description="training images kept (None: all)")
    test_subset: int | None = Field(None, gt=0, description="test images kept (None: all)")
    normalize: Literal["standard", "scale"] = "standard"
    pad: int = Field(0, ge=0, le=16, description=(
        "zero-pad every image by this many pixels on each side, after normalising (2 makes "
        "28x28 Fashion-MNIST 32x32, the input size of the CIFAR networks)"))


class TrainingConfig(_Strict):
    """The large model's training recipe, reused by Scratch-E, Scratch-B and lottery runs.

    The learning rate is multiplied by ``gamma`` at each milestone, given as fractions of
    the run (Liu et al.: x0.1 at 50% and 75% of the epochs, also for Scratch-B's longer
    schedule).
    """

    epochs: int = Field(..., ge=1)
    batch_size: int = Field(64, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [m for m in v if not 0 < m < 1]
        if bad:
            raise ValueError(f"milestones must be fractions of the run in (0, 1), got {bad}")
        if list(v) != sorted(set(v)):
            raise ValueError(f"milestones must be increasing and distinct, got {list(v)}")
        return v


class FinetuneConfig(_Strict):
    """Fine-tuning the pruned weights: constant learning rate (Liu et al.: 0.001, i.e. 1% of
    the initial rate, for 40 of 160 epochs). Batch size, optimizer, momentum and weight decay
    are the large model's."""

    epochs: int = Field(3, ge=1)
    lr: float = Field(0.001, gt=0)


class ScratchBConfig(_Strict):
    """How Scratch-B's budget is counted.

    Attributes:
        count_finetune: False (Liu et al.): Scratch-B gets the large model's training budget,
            ``large_epochs x FLOPs(large) / FLOPs(pruned)`` epochs. True: the fine-tune
            epochs count too (the prune pipeline spent them on the pruned model, which costs
            what the scratch model costs per epoch), so Scratch-B gets ``finetune.epochs``
            more epochs.
        max_factor: cap on the epoch multiplier ``FLOPs(large) / FLOPs(pruned)``. FLOPs are
            counted on nonzero weights, so for unstructured pruning they fall with the
            density: 95% sparsity would mean ~20x the large model's epochs, on a masked
            network whose dense kernels run no faster than the large one. The official CIFAR
            code applies no cap; the cap keeps a sweep's wall time bounded, and the cell
            records both the raw and the capped factor.
    """

    count_finetune: bool = False
    max_factor: float = Field(4.0, ge=1.0)


class MethodConfig(_Strict):
    """One pruning method and the ratios to sweep.

    Attributes:
        kind: ``l1_filter`` (Li et al. 2017, per-layer), ``slimming`` (Liu et al. 2017, one
            global threshold on BatchNorm scales), ``thinet`` (Luo et al. 2017) or
            ``magnitude`` (unstructured, Han et al. 2015).
        ratios: fractions pruned, each in (0, 1): of the channels (structured, per layer
            for l1_filter/thinet, overall for slimming) or of the weights (magnitude).
        label: name in tables (default: ``kind``); unique within a sweep.
        layers: glob patterns of the Linear/Conv layers to prune (default: the method's own
            default, e.g. every conv for l1_filter, every layer followed by a BatchNorm for
            slimming, every Linear/Conv for magnitude).
        min_fraction: per-layer floor: slimming keeps at least this fraction of each layer's
            channels; magnitude with ``scope: global`` keeps at least this fraction of each
            layer's weights. Not used by other methods.
        scope: magnitude only: ``layer`` (each layer pruned to the ratio, Han style) or
            ``global`` (one threshold over all selected layers, as Liu et al.'s code does).
        slimming_strength: slimming only (required): the L1 coefficient on BatchNorm scales
            during the large model's training, so slimming gets its own large model.
        thinet_samples: thinet only: sampled outputs per layer.
        baselines: the baselines run for this method (default: the sweep's ``baselines``).
    """

    kind: MethodKind
    ratios: tuple[float, ...] = Field(..., min_length=1)
    label: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    layers: tuple[str, ...] | None = None
    min_fraction: float = Field(0.0, ge=0, le=1)
    scope: Literal["layer", "global"] = "layer"
    slimming_strength: float | None = Field(None, gt=0)
    thinet_samples: int = Field(2048, gt=0)
    baselines: tuple[Baseline, ...] | None = None

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for r in v:
            if not (isinstance(r, int | float) and math.isfinite(r) and 0 < r < 1):
                raise ValueError(
                    f"ratio {r!r} is out of range; allowed: 0 < ratio < 1 (the fraction "
                    "pruned; 1.0 would remove everything, 0 nothing)"
                )
        if len(set(v)) != len(v):
            raise ValueError(f"ratios must be distinct, got {list(v)}")
        return v

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"baselines must be a non-empty list without repeats, got {v}")
        return v

    @model_validator(mode="after")
    def _kind_specific(self) -> MethodConfig:
        if self.kind == "slimming" and self.slimming_strength is None:
            raise ValueError(
                "slimming_strength is required for kind 'slimming' (the L1 coefficient on "
                "BatchNorm scales while training the large model, e.g. 1e-4)"
            )
        if self.kind != "slimming" and self.slimming_strength is not None:
            raise ValueError(
                f"slimming_strength is only used by kind 'slimming', not {self.kind!r}"
            )
        if self.scope != "layer" and self.kind != "magnitude":
            raise ValueError(f"scope is only used by kind 'magnitude', not {self.kind!r}")
        uses_floor = self.kind == "slimming" or (
            self.kind == "magnitude" and self.scope == "global"
        )
        if self.min_fraction and not uses_floor:
            raise ValueError(
                "min_fraction is only used by kind 'slimming' and by 'magnitude' with "
                f"scope 'global', not by {self.kind!r}"
                + (" with scope 'layer'" if self.kind == "magnitude" else "")
            )
        return self

    @property
    def name(self) -> str:
        """The label in tables: ``label`` or ``kind``."""
        return self.label or self.kind

    @property
    def structured(self) -> bool:
        """True for channel pruning (the architecture shrinks), False for magnitude."""
        return self.kind in STRUCTURED_KINDS


class RethinkConfig(_Strict):
    """A whole sweep: methods x ratios x seeds x baselines.

    ``threads`` is not part of any result's identity (a sweep may be resumed with another
    thread count); ``device`` is.
    """

    name: str = Field("rethink", min_length=1)
    model: ModelConfig
    data: RethinkDataConfig = RethinkDataConfig()
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    device: str = "cpu"
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    large: TrainingConfig
    methods: tuple[MethodConfig, ...] = Field(..., min_length=1)
    finetune: FinetuneConfig = FinetuneConfig()
    scratch_b: ScratchBConfig = ScratchBConfig()
    baselines: tuple[Baseline, ...] = ("finetune", "scratch_e", "scratch_b")
    example_size: int = Field(
        256, gt=0, description="training images used to trace the model, count FLOPs, ThiNet"
    )
    eval_batch_size: int = Field(256, gt=0)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct non-negative integers, got {list(v)}")
        return v

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"baselines must be a non-empty list without repeats, got {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v == "cpu" or v == "cuda" or v.startswith("cuda:") or v == "mps"):
            raise ValueError(f"device {v!r} is unknown; allowed: cpu, cuda, cuda:N, mps")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: ModelConfig) -> ModelConfig:
        from ...models import available_models

        if v.name not in available_models() and ":" not in v.name:
            raise ValueError(
                f"model {v.name!r} is unknown; registered models: "
                f"{', '.join(available_models())}, or an import path 'package.module:Factory'"
            )
        return v

    @model_validator(mode="after")
    def _labels(self) -> RethinkConfig:
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"method labels must be unique, {dup} repeat; set 'label' to tell them apart"
            )
        return self

    def baselines_of(self, method: MethodConfig) -> tuple[str, ...]:
        """The baselines run for ``method`` (its own list, else the sweep's)."""
        return method.baselines if method.baselines is not None else self.baselines


def parse_rethink_config(data: Mapping[str, Any], source: str = "") -> RethinkConfig:
    """Validate a mapping into a :class:`RethinkConfig`.

    Raises:
        ConfigError: listing every bad key/value (``methods.0.kind: ...``).

    Example:
        >>> try:  # "seed" instead of "seeds"
        ...     parse_rethink_config({"model": {"name": "vgg_small"}, "large": {"epochs": 1},
        ...                           "methods": [{"kind": "l1_filter", "ratios": [0.5]}],
        ...                           "seed": 1})
        ... except ConfigError as exc:
        ...     print(str(exc).splitlines()[1])
          seed: unknown key (got 1)
    """
    try:
        return RethinkConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_rethink_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None
) -> RethinkConfig:
    """Read a YAML sweep config, apply top-level overrides (e.g. ``{"seeds": [0]}``).

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or invalid.
    """
    data = apply_overrides(read_yaml_mapping(path), overrides)
    return parse_rethink_config(data, repr(str(Path(path))))
