"""Run configuration: frozen, validated pydantic models read from YAML.

Every key is checked before any work starts: an unknown key or a bad value raises
:class:`ConfigError` naming the key and the allowed values.

Example:
    >>> cfg = RunConfig.model_validate({
    ...     "model": {"name": "lenet300"},
    ...     "train": {"epochs": 1},
    ...     "prune": {"method": "std", "schedule": [{"q": 1.0, "epochs": 1}]},
    ... })
    >>> cfg.prune.retrain.lr_factor
    0.1
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from prunelab.errors import PrunelabError, one_line, short_repr
from prunelab.limits import MAX_CONFIG_BYTES, MAX_CONFIG_NODES

from .criteria import available_criteria, criterion_class, get_criterion
from .criteria.base import Criterion

__all__ = [
    "ConfigError",
    "DataConfig",
    "IterationConfig",
    "LRPolicyConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PruneConfig",
    "RegularizationConfig",
    "RetrainConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_hash",
    "load_config",
    "read_yaml_mapping",
]


class ConfigError(PrunelabError, ValueError):
    """A configuration is invalid; the message names each bad key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Which network: a registered name or ``"package.module:Factory"``, and its kwargs."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


IMAGEFOLDER_KEYS: tuple[str, ...] = (
    "image_size", "resize_size", "mean", "std", "workers", "augment",
)


class DataConfig(_Strict):
    """Dataset, validation split and an optional subset (for quick tests).

    ``mnist`` and ``fashion-mnist`` are held in memory. ``imagefolder`` reads the ImageNet
    layout ``root/train/<class>/*`` and ``root/val/<class>/*`` through a ``DataLoader``;
    ``val_size`` images are held out of ``train/`` (seeded) for every choice of the run, and
    ``val/`` is the test set. Its keys: ``image_size`` (training random-resized crop and
    evaluation centre crop), ``resize_size`` (evaluation resize), per-channel ``mean`` and
    ``std`` (ImageNet's by default), ``workers`` and ``augment`` (random crop and flip).
    The in-memory datasets take ``shift``: each training image moved by a random whole
    number of pixels in ``[-shift, shift]`` along each axis, drawn anew every epoch (0: none).
    """

    name: Literal["mnist", "fashion-mnist", "imagefolder"] = "mnist"
    root: str | None = None
    val_size: int = Field(5000, ge=0)
    subset: int | None = Field(None, gt=0)
    normalize: Literal["standard", "scale"] = Field(
        "standard",
        description="standard: (x - mean) / std; scale: x / std (keeps zero pixels zero, like "
        "Caffe's pixel scaling, so input-activation densities stay meaningful)",
    )
    image_size: int = Field(224, gt=0)
    resize_size: int = Field(256, gt=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    workers: int = Field(4, ge=0)
    augment: bool = True
    shift: int = Field(0, ge=0, le=8, description=(
        "mnist / fashion-mnist: translate each training image by a random number of pixels "
        "in [-shift, shift] along each axis, every epoch (0: no augmentation)"))

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, v: int, info: ValidationInfo) -> int:
        name = info.data.get("name")
        if name in ("mnist", "fashion-mnist") and v >= 60000:
            raise ValueError(f"must be < 60000 for {name} (its training set has 60,000 images)")
        return v

    @model_validator(mode="after")
    def _per_dataset(self) -> DataConfig:
        if self.name == "imagefolder":
            if self.shift:
                raise ValueError(f"shift={self.shift} applies to the in-memory datasets "
                                 "(mnist, fashion-mnist) only; imagefolder has augment")
            if any(not v > 0 for v in self.std):
                raise ValueError(f"std {self.std} must be > 0 in every channel")
            if self.resize_size < self.image_size:
                raise ValueError(
                    f"resize_size={self.resize_size} must be >= image_size={self.image_size} "
                    "(the centre crop is taken from the resized image)"
                )
            return self
        extra = sorted(set(IMAGEFOLDER_KEYS) & self.model_fields_set)
        if extra:
            raise ValueError(f"{', '.join(extra)} apply to name 'imagefolder' only, not "
                             f"{self.name!r}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The image-folder keys are left out for the in-memory datasets, so their configs
        # (and config_hash) are those of runs made before the keys existed.
        data = handler(self)
        if not self.shift:  # configs without augmentation keep their earlier hashes
            data.pop("shift", None)
        if self.name != "imagefolder":
            for key in IMAGEFOLDER_KEYS:
                data.pop(key, None)
        return data

    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input image.

        Example:
            >>> DataConfig(name="imagefolder", image_size=227).input_shape()
            (3, 227, 227)
        """
        if self.name == "imagefolder":
            return (3, self.image_size, self.image_size)
        return (1, 28, 28)


class OptimizerConfig(_Strict):
    """Optimizer: SGD (momentum, Nesterov) or Adam/AdamW."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class LRPolicyConfig(_Strict):
    """Learning-rate policy within a phase (see :func:`prunelab.training.lr_schedule`)."""

    name: Literal["constant", "inv", "step", "multistep", "cosine"] = "constant"
    gamma: float = Field(0.1, ge=0)
    power: float = Field(0.75, ge=0)
    milestones: tuple[float, ...] = ()
    min_lr: float = Field(0.0, ge=0)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [m for m in v if not 0 < m < 1]
        if bad:
            raise ValueError(f"milestones must be fractions of the phase in (0, 1), got {bad}")
        return v


class RegularizationConfig(_Strict):
    """L2 (weight decay) or L1 (penalty on the weights), and its strength."""

    kind: Literal["l2", "l1", "none"] = "l2"
    strength: float = Field(5e-4, ge=0)


class TrainConfig(_Strict):
    """Dense training."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_policy: LRPolicyConfig = LRPolicyConfig()
    regularization: RegularizationConfig = RegularizationConfig()
    keep_best: bool = Field(
        True, description="restore the weights of the best validation epoch at phase end"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision of training (fp16 adds a GradScaler); "
        "weights stay fp32 and pruned ones exactly zero"
    )
    channels_last: bool | None = Field(
        None, description="channels-last memory format for conv nets (default: on CUDA)"
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Leave out the defaults of keys added later, so the configs (and config_hash) of
        # earlier runs are unchanged.
        data = handler(self)
        if self.precision == "fp32":
            data.pop("precision", None)
        if self.channels_last is None:
            data.pop("channels_last", None)
        return data


class RetrainConfig(_Strict):
    """Retraining after each pruning step (defaults: the training settings)."""

    lr_factor: float = Field(0.1, gt=0, description="retrain lr = factor x training lr")
    lr_policy: LRPolicyConfig | None = None
    optimizer: OptimizerConfig | None = None
    regularization: RegularizationConfig | None = None
    freeze: Literal["none", "conv", "fc"] = "none"
    keep_best: bool = True


LayerAmount = float | dict[str, float]


class GradualConfig(_Strict):
    """Gradual pruning during an iteration's training (Zhu & Gupta 2017).

    The iteration's ``sparsity`` is the final one; it is reached on the cubic ramp
    (:func:`prunelab.schedules.cubic_sparsity`) from ``initial_sparsity`` at ``start`` to
    ``end`` (fractions of the iteration's training), pruning every ``every`` steps or epochs.
    """

    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    start: float = Field(0.0, ge=0, lt=1, description="first pruning, fraction of the phase")
    end: float = Field(0.75, gt=0, le=1, description="last pruning, fraction of the phase")
    every: int = Field(1, ge=1, description="steps (or epochs) between prunings")
    unit: Literal["step", "epoch"] = "step"

    @model_validator(mode="after")
    def _order(self) -> GradualConfig:
        if self.end <= self.start:
            raise ValueError(f"end={self.end} must be after start={self.start}")
        return self

    def points(self, epochs: int, steps_per_epoch: int) -> tuple[int, int, int]:
        """``(start, every, count)`` in the schedule's unit for a phase of that length.

        Raises:
            ValueError: the phase is too short for one interval.

        Example:
            >>> GradualConfig(end=0.5, every=10).points(epochs=4, steps_per_epoch=100)
            (0, 10, 20)
        """
        total = epochs * (steps_per_epoch if self.unit == "step" else 1)
        t0, t1 = round(self.start * total), round(self.end * total)
        count = (t1 - t0) // self.every
        if count < 1:
            raise ValueError(
                f"gradual pruning from {self.start} to {self.end} of {total} {self.unit}s "
                f"leaves no interval of every={self.every}; use a smaller 'every' or more epochs"
            )
        return t0, self.every, count


class DynamicConfig(_Strict):
    """Dynamic network surgery during an iteration's training (Guo et al. 2016, method ``dns``).

    The masks are recomputed with probability ``(1 + gamma * t) ** -power`` every ``every``
    steps until ``stop`` (a fraction of the iteration's training), then fixed.
    """

    gamma: float = Field(1e-4, ge=0)
    power: float = Field(1.0, ge=0)
    every: int = Field(1, ge=1)
    stop: float = Field(1.0, gt=0, le=1, description="last mask update, fraction of the phase")


class ShareConfig(_Strict):
    """Weight sharing with centroid fine-tuning (Deep Compression, Han et al. 2016).

    The iteration prunes nothing: at its start the surviving weights of each layer are
    clustered by 1-D k-means (:class:`prunelab.sharing.WeightSharing`) and its ``epochs``
    train only the centroids (the summed gradient of each cluster), masks kept. It is the
    schedule's last iteration; ``prunelab export --format compressed`` then codes the model.
    """

    bits: int | dict[str, int] | None = Field(
        None, description="index width: one for all, or {kind or layer pattern: width}; "
                          "default 8 for conv, 5 for fc")
    layers: list[str] | None = None
    init: Literal["linear", "density", "random"] = "linear"
    max_iter: int = Field(300, ge=0)
    lr_factor: float | None = Field(
        None, gt=0, description="centroid learning rate as a factor of the training lr "
                                "(default: prune.retrain.lr_factor); a centroid's gradient is "
                                "the sum over its members, so it wants a smaller one")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int | dict[str, int] | None) -> int | dict[str, int] | None:
        from .sharing.bits import check_spec

        check_spec(v)
        return v


class IterationConfig(_Strict):
    """One prune -> retrain iteration of the schedule.

    With ``gradual`` the pruning happens during the iteration's training (the ``sparsity``
    is the final one); with ``dynamic`` (method ``dns``) the masks also splice weights back
    during training.
    """

    q: LayerAmount | None = None
    sparsity: LayerAmount | None = None
    epochs: int = Field(..., ge=0)
    layers: list[str] | None = None
    freeze: Literal["none", "conv", "fc"] | None = None
    gradual: GradualConfig | None = None
    dynamic: DynamicConfig | None = None
    share: ShareConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> IterationConfig:
        if self.gradual is not None and self.dynamic is not None:
            raise ValueError("an iteration is either 'gradual' or 'dynamic', not both")
        if (self.gradual is not None or self.dynamic is not None) and self.epochs < 1:
            raise ValueError("a gradual or dynamic iteration needs epochs >= 1")
        if self.share is not None:
            given = [k for k in ("q", "sparsity", "gradual", "dynamic", "layers", "freeze")
                     if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"a 'share' iteration prunes nothing; remove {', '.join(map(repr, given))} "
                    "(choose its layers with share.layers)"
                )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Leave out the keys added later when unset, so earlier configs' hashes stay.
        data = handler(self)
        for key in ("gradual", "dynamic", "share"):
            if getattr(self, key) is None:
                data.pop(key, None)
        return data


class PruneConfig(_Strict):
    """Pruning: criterion, layer selection, schedule and Han's retraining rules.

    ``method`` is any registered weight criterion (:func:`prunelab.criteria.register_criterion`;
    built-ins ``std``, ``magnitude``, ``random``) and ``method_options`` the keyword arguments
    of its constructor. A criterion whose ``amount_kind`` is ``"q"`` (``std``) takes ``q`` in
    each schedule entry, the others ``sparsity``.
    """

    method: str = "std"
    method_options: dict[str, Any] = Field(default_factory=dict)
    layers: list[str] | None = None
    exclude: list[str] | None = None
    std_source: Literal["dense", "surviving"] = "dense"
    scope: Literal["layer", "global"] = "layer"
    min_density: LayerAmount = 0.0
    schedule: list[IterationConfig] = Field(..., min_length=1)
    retrain: RetrainConfig = RetrainConfig()
    dead_neurons: bool = True
    dropout_adjust: bool = True
    dropout_map: dict[str, str] | None = None
    reinit: bool = False
    monotone: bool = True

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        weight = available_criteria("weight")
        if v not in weight:
            channel = available_criteria("channel")
            hint = (
                f"; {v!r} is a channel criterion (structured pruning: prunelab rethink)"
                if v in channel else ""
            )
            raise ValueError(
                f"method {v!r} is unknown; registered weight criteria: "
                f"{', '.join(map(repr, weight))}{hint}"
            )
        return v

    @field_validator("method_options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is not None:  # else the method itself was rejected
            try:
                get_criterion(method, **v)
            except (TypeError, ValueError) as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _amounts(self) -> PruneConfig:
        crit = criterion_class(self.method)
        need = crit.amount_kind
        other = "sparsity" if need == "q" else "q"
        for i, it in enumerate(self.schedule):
            if it.share is not None:
                if i != len(self.schedule) - 1:
                    raise ValueError(
                        f"schedule[{i}] shares weights, which must be the last iteration "
                        "(pruning after it would undo the sharing)"
                    )
                continue
            if it.gradual is not None and need != "sparsity":
                raise ValueError(
                    f"schedule[{i}] is gradual, which needs a sparsity criterion (e.g. "
                    f"'magnitude'), not {self.method!r}"
                )
            if it.dynamic is not None and self.method != "dns":
                raise ValueError(
                    f"schedule[{i}] is dynamic (network surgery), which needs method 'dns', "
                    f"not {self.method!r}"
                )
            if getattr(it, need) is None:
                raise ValueError(f"schedule[{i}] needs '{need}' for method {self.method!r}")
            if getattr(it, other) is not None:
                raise ValueError(
                    f"schedule[{i}] sets '{other}', which method {self.method!r} does not use; "
                    f"use '{need}'"
                )
        if self.scope == "global" and not (crit.has_scores() and need == "sparsity"):
            raise ValueError(
                "scope 'global' needs a criterion with scores and a sparsity amount (e.g. "
                f"'magnitude'), not {self.method!r}"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Leave out empty method_options, so configs (and config_hash) of runs made before
        # the key existed are unchanged.
        data = handler(self)
        if not self.method_options:
            data.pop("method_options", None)
        return data

    def criterion(self) -> Criterion:
        """A new instance of the configured criterion (``method`` with ``method_options``).

        Example:
            >>> PruneConfig(method="magnitude", schedule=[{"sparsity": 0.5, "epochs": 1}]
            ...             ).criterion().label
            'magnitude'
        """
        return get_criterion(self.method, **self.method_options)

    def amount(self, iteration: IterationConfig) -> LayerAmount:
        """The amount of a schedule entry for this criterion: its ``q`` or its ``sparsity``.

        Example:
            >>> pc = PruneConfig(method="std", schedule=[{"q": 1.5, "epochs": 1}])
            >>> pc.amount(pc.schedule[0])
            1.5
        """
        kind = criterion_class(self.method).amount_kind
        return iteration.q if kind == "q" else iteration.sparsity


class RunConfig(_Strict):
    """A whole Han pipeline run."""

    name: str = "run"
    model: ModelConfig
    data: DataConfig = DataConfig()
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    train: TrainConfig = TrainConfig()
    prune: PruneConfig
    eval_batch_size: int = Field(1000, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from .devices import ALLOWED, NAME_PATTERN

        if not NAME_PATTERN.fullmatch(v):
            raise ValueError(f"device {v!r} is unknown; allowed: {ALLOWED}")
        return v


def _format_errors(exc: ValidationError, source: str) -> str:
    """Every bad key as ``key.path: problem (got <short repr>)``; never the whole value."""
    errors = exc.errors()
    lines = [f"invalid configuration {source}:"]
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg} (got {short_repr(err.get('input'))})")
    if len(errors) > 10:
        lines.append(f"  ... and {len(errors) - 10} more")
    return "\n".join(lines)


def _expanded_size(data: Any, source: str) -> int:
    """Number of values ``data`` holds once every YAML alias is expanded, computed in time
    linear in the distinct objects.

    Raises:
        ConfigError: more than :data:`~prunelab.limits.MAX_CONFIG_NODES`, or a recursive alias.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any, path: str) -> int:
        if not isinstance(obj, dict | list):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"config file {source} holds a recursive YAML alias at {path}")
        active.add(key)
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        total = 1
        for k, v in items:
            total += size(v, f"{path}.{k}" if path else str(k))
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"config file {source} expands to more than {MAX_CONFIG_NODES:,} values "
                    f"(YAML aliases) at {path or '(top level)'}; a config is a few hundred"
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(data, "")


def parse_config(data: Mapping[str, Any], source: str = "") -> RunConfig:
    """Validate a mapping into a :class:`RunConfig`.

    Raises:
        ConfigError: listing every bad key/value.
    """
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


#: The deepest nesting of ``[``/``{`` and the widest indentation a config may have (the YAML
#: parser slows down sharply on deep nesting; real configs nest a few levels).
MAX_FLOW_DEPTH = 64
MAX_INDENT = 256


def _check_nesting(text: str, source: str) -> None:
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_FLOW_DEPTH:
        raise ConfigError(f"config file {source} nests brackets {deepest} deep, more than "
                          f"the {MAX_FLOW_DEPTH} a config may")
    widest = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines()), default=0)
    if widest > MAX_INDENT:
        raise ConfigError(f"config file {source} is indented {widest} columns, more than the "
                          f"{MAX_INDENT} a config may")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping at top level.

    The file is bounded before it is parsed (at most
    :data:`~prunelab.limits.MAX_CONFIG_BYTES`, UTF-8 text) and after (at most
    :data:`~prunelab.limits.MAX_CONFIG_NODES` values with YAML aliases expanded, no
    recursive alias), so neither a huge file nor an alias bomb can hang the loader. Only
    plain YAML is read (``yaml.safe_load``: no Python objects).

    Raises:
        ConfigError: the file is missing, a directory, too large, not text, not YAML, too
            large once expanded, or not a mapping; the message names the file.
    """
    p = Path(path)
    source = repr(str(p))
    try:
        if p.is_dir():
            raise ConfigError(f"config file {source} is a directory, expected a YAML file")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {source} is {size:,} bytes, more than the "
                              f"{MAX_CONFIG_BYTES:,} a config may have; is it a config?")
        raw = p.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {source} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {source} is not UTF-8 text; a config is a YAML "
                          "text file") from None
    if "\x00" in text:
        raise ConfigError(f"config file {source} is binary (holds NUL bytes); a config is a "
                          "YAML text file")
    _check_nesting(text, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: "
                          f"{one_line(str(exc), 200)}") from None
    except RecursionError:
        raise ConfigError(f"config file {source} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping at top level, "
                          f"not {type(data).__name__}")
    _expanded_size(data, source)
    return data


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply top-level overrides in place; nested mappings are merged (e.g. ``data.root``).

    Example:
        >>> apply_overrides({"data": {"name": "mnist"}, "seed": 0}, {"data": {"root": "/d"}})
        {'data': {'name': 'mnist', 'root': '/d'}, 'seed': 0}
    """
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML config, apply top-level overrides (e.g. ``{"seed": 1}``), validate it.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or invalid.
    """
    data = apply_overrides(read_yaml_mapping(path), overrides)
    return parse_config(data, repr(str(Path(path))))


def config_hash(cfg: BaseModel) -> str:
    """A short stable hash of a config (sorted JSON), for run ids and resumable sweeps.

    Example:
        >>> a = ModelConfig(name="lenet5")
        >>> config_hash(a) == config_hash(ModelConfig(name="lenet5"))
        True
    """
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
