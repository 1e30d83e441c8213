"""Han et al.'s pipeline: train dense -> prune -> retrain, iterated over a schedule.

The pipeline is a list of phases: phase 0 trains the dense network; phase ``k >= 1`` runs
iteration ``k-1`` of the schedule (prune, remove dead neurons, adjust dropout, freeze, then
retrain at ``lr_factor`` times the training learning rate). An iteration with ``gradual``
prunes during its training instead (:class:`prunelab.gradual.GradualPruning`: the cubic ramp
to its sparsity, dead neurons removed after the last pruning), one with ``dynamic`` runs
dynamic network surgery (:class:`prunelab.dns.DynamicSurgery`: masks prune and splice while
the dense weights train, fixed at its ``stop``, exact again at the phase end). In those
phases ``keep_best`` only considers epochs that end after the masks are final. After every
epoch a checkpoint (model, masks, optimizer state, best-so-far weights, pruner state,
history, surgery state) is written atomically; every epoch's randomness is a pure function of
``(seed, phase, epoch)``, so a run resumed from its last checkpoint ends exactly as an
uninterrupted one.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.config import parse_config
    >>> cfg = parse_config({"model": {"name": "lenet300"},
    ...     "train": {"epochs": 1, "batch_size": 32},
    ...     "prune": {"method": "magnitude", "schedule": [{"sparsity": 0.9, "epochs": 1}]}})
    >>> x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    >>> result = HanPipeline(model, cfg, TensorSplits(x, y, x, y)).run()
    >>> round(result.stats.layers[0].weights_kept, 2)
    0.1
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import torch
from torch import nn

from ..checkpoint import (
    CheckpointError,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_tensors,
)
from ..config import (
    IterationConfig,
    LRPolicyConfig,
    OptimizerConfig,
    RegularizationConfig,
    RunConfig,
)
from ..data import TensorSplits
from ..data.device import OnDevice
from ..dead_neurons import prune_dead_neurons
from ..distributed import broadcast_object, is_distributed, rank, sync_masks, world_size
from ..dns import DynamicSurgery, SurgeryUpdate
from ..errors import one_line
from ..gradual import GradualPruning
from ..graph import DROPOUT_TYPES, Structure, trace_structure
from ..masks import effective_tensor, iter_masks, load_pruned_state_dict, set_mask, sparsity
from ..metrics import ModelStats, model_stats
from ..pruner import LayerPruneResult, Pruner
from ..records import (
    BestEpochEvent,
    DropoutEvent,
    EpochRecord,
    Event,
    MaskUpdateEvent,
    PruneEvent,
    ShareEvent,
    record_from_dict,
)
from ..retrain_rules import DropoutChange, apply_dropout_rule, freeze_kind
from ..schedules import lr_schedule
from ..selection import select_layers
from ..sharing import WeightSharing, resolve_bits
from ..training import (
    Callback,
    EpochStats,
    Trainer,
    epoch_seed,
    evaluate_batches,
    make_optimizer,
)

__all__ = [
    "HanPipeline",
    "PhaseSettings",
    "PipelineResult",
    "Reporter",
    "SilentReporter",
    "StreamedSplits",
]

CHECKPOINT_NAME = "checkpoint.safetensors"


class Reporter(Protocol):
    """Receives progress: a phase starts, batches advance, an epoch ends, an event happens."""

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None: ...
    def batch(self) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...
    def event(self, record: Event) -> None: ...
    def phase_end(self) -> None: ...


class StreamedSplits(Protocol):
    """Splits streamed batch by batch (an image folder through a ``DataLoader``).

    Each method returns CPU batches ``(images, labels)``; a rank of a data-parallel run
    gets its shard (``train_batches`` dealt like ``DistributedSampler``, with
    ``set_epoch``; ``val_batches`` disjoint shards without padding).
    """

    meta: Any

    def train_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> Any: ...
    def val_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> Any: ...
    def test_batches(self, batch_size: int, *, rank: int = 0, world: int = 1) -> Any: ...
    def example(self, n: int) -> torch.Tensor: ...


class SilentReporter:
    """A :class:`Reporter` that ignores everything; subclass it to react to some events only."""

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None:
        pass

    def batch(self) -> None:
        pass

    def epoch_end(self, record: EpochRecord) -> None:
        pass

    def event(self, record: Event) -> None:
        pass

    def phase_end(self) -> None:
        pass


@dataclass
class PipelineResult:
    """What a finished pipeline produced."""

    model: nn.Module
    history: list[EpochRecord]
    events: list[Event]
    stats: ModelStats
    dense_val_accuracy: float
    val_accuracy: float
    dense_state: dict[str, torch.Tensor] = field(default_factory=dict)


OptimizerFactory: TypeAlias = Callable[
    [Sequence[nn.Parameter], float, OptimizerConfig, float], torch.optim.Optimizer
]


@dataclass(frozen=True)
class PhaseSettings:
    """What one phase of the pipeline trains with (phase 0: dense; k: retraining k).

    Attributes:
        epochs: epochs of the phase.
        lr: its base learning rate (retraining: ``lr_factor`` x the training lr).
        optimizer: optimizer settings.
        lr_policy: learning-rate policy within the phase.
        regularization: L1 or L2 and its strength.
        freeze: ``"none"``, ``"conv"`` or ``"fc"``: which kind of layer stays fixed.
        keep_best: restore the best validation epoch's weights at the phase's end.
    """

    epochs: int
    lr: float
    optimizer: OptimizerConfig
    lr_policy: LRPolicyConfig
    regularization: RegularizationConfig
    freeze: str
    keep_best: bool

    @classmethod
    def of(cls, config: RunConfig, phase: int) -> PhaseSettings:
        """The settings of ``phase`` under ``config``."""
        t, r = config.train, config.prune.retrain
        if phase == 0:
            return cls(t.epochs, t.optimizer.lr, t.optimizer, t.lr_policy, t.regularization,
                       "none", t.keep_best)
        it = config.prune.schedule[phase - 1]
        opt = r.optimizer or t.optimizer
        factor = r.lr_factor
        if it.share is not None and it.share.lr_factor is not None:
            factor = it.share.lr_factor
        return cls(it.epochs, opt.lr * factor, opt, r.lr_policy or t.lr_policy,
                   r.regularization or t.regularization, it.freeze or r.freeze, r.keep_best)

    @property
    def weight_decay(self) -> float:
        """The L2 strength passed to the optimizer (0 under L1)."""
        r = self.regularization
        return r.strength if r.kind == "l2" else 0.0

    @property
    def l1(self) -> float:
        """The L1 strength added to the gradients (0 under L2)."""
        r = self.regularization
        return r.strength if r.kind == "l1" else 0.0


def _default_optimizer(
    params: Sequence[nn.Parameter], lr: float, cfg: OptimizerConfig, weight_decay: float
) -> torch.optim.Optimizer:
    return make_optimizer(params, cfg.name, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=weight_decay, betas=tuple(cfg.betas))


def _use_channels_last(config: RunConfig, device: torch.device, model: nn.Module) -> bool:
    """Channels-last for conv nets: as configured, by default on CUDA only."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    wanted = config.train.channels_last
    return has_conv and (device.type == "cuda" if wanted is None else wanted)


class HanPipeline:
    """Run the prune-retrain pipeline of a :class:`~prunelab.config.RunConfig` on a model.

    Args:
        model: the network, freshly initialised (or pretrained, with ``train.epochs: 0``).
        config: the validated configuration (``train`` and ``prune`` sections are used).
        data: normalised training/validation tensors (:class:`prunelab.data.TensorSplits`),
            or splits streamed from files (:class:`StreamedSplits`, e.g. an image folder);
            the test split, if present, is never used here.
        run_dir: where checkpoints go; ``None`` keeps everything in memory.
        reporter: progress sink (silent by default).
        optimizer_factory: ``(params, lr, optimizer_config, weight_decay) -> optimizer``,
            to use another optimizer; the default builds SGD/Adam/AdamW.
        example_input: batch for tracing structure and measuring input densities
            (default: the first 256 validation inputs).
    """

    def __init__(
        self,
        model: nn.Module,
        config: RunConfig,
        data: TensorSplits | StreamedSplits,
        *,
        run_dir: str | Path | None = None,
        reporter: Reporter | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        example_input: torch.Tensor | None = None,
    ) -> None:
        self.cfg = config
        self.device = torch.device(config.device)
        if is_distributed() and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.rank, self.world = rank(), world_size()
        if config.train.batch_size % self.world:
            raise ValueError(
                f"train.batch_size={config.train.batch_size} (the global batch) must be a "
                f"multiple of the {self.world} ranks"
            )
        self.model = model.to(self.device)
        self.channels_last = _use_channels_last(config, self.device, self.model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # in-memory tensors move to the device once; streamed data moves batch by batch
        self.in_memory = isinstance(data, TensorSplits)
        self.data = data.to(self.device) if self.in_memory else data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reporter = reporter or SilentReporter()
        self.optimizer_factory = optimizer_factory or _default_optimizer
        if example_input is not None:
            self.example = example_input.to(self.device)
        elif self.in_memory:
            self.example = self.data.x_val[:256]
            if self.example.shape[0] == 0:
                self.example = self.data.x_train[:256]
        else:
            self.example = self.data.example(256).to(self.device)
        pc = config.prune
        self.pruner = Pruner(self.model, pc.layers, exclude=pc.exclude, std_source=pc.std_source)
        self._check_schedule()
        self.structure: Structure | None = None
        self.dropout_feeds: dict[str, str] = dict(pc.dropout_map or {})
        mods = dict(self.model.named_modules())
        for d in self.dropout_feeds:
            if d not in mods or not isinstance(mods[d], DROPOUT_TYPES):
                raise ValueError(f"dropout_map names {d!r}, which is not a dropout module")
        self.original_dropout = {
            n: float(m.p) for n, m in mods.items() if isinstance(m, DROPOUT_TYPES)
        }
        self.dense_connections = {
            n: effective_tensor(m).numel() for n, m in self.pruner.layers.items()
        }
        # run state (all of it goes into checkpoints)
        self.phase = 0
        self.epoch_done = 0
        self.history: list[EpochRecord] = []
        self.events: list[Event] = []
        self.best: dict[str, Any] | None = None
        self.dense_val_accuracy: float | None = None
        self.dense_state: dict[str, torch.Tensor] = {}
        self.dropout_now: dict[str, float] = dict(self.original_dropout)
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []
        self._restored = False
        # pruning during training (gradual / dynamic iterations), for the phase running now
        self._callback: GradualPruning | DynamicSurgery | WeightSharing | None = None
        self._surgery_state: dict[str, Any] | None = None
        self._sharing_state: dict[str, Any] | None = None
        self._per_epoch = 1
        self._settle_at: int | None = None

    def _emit(self, event: Event) -> None:
        """Record an event, stamped with the number of epochs run so far (for ordering)."""
        event = dataclasses.replace(event, after_epoch=len(self.history))
        self.events.append(event)
        self.reporter.event(event)

    # ------------------------------------------------------------------ phases
    @property
    def num_phases(self) -> int:
        """1 (dense training) + the number of schedule iterations."""
        return 1 + len(self.cfg.prune.schedule)

    def settings(self, phase: int) -> PhaseSettings:
        """The training settings of ``phase``."""
        return PhaseSettings.of(self.cfg, phase)

    def _structure(self) -> Structure:
        if self.structure is None:
            self.structure = trace_structure(self.model, self.example)
            if not self.cfg.prune.dropout_map:
                self.dropout_feeds = dict(self.structure.dropout_feeds)
        return self.structure

    def _prune(self, it: IterationConfig, index: int) -> None:
        pc = self.cfg.prune
        results = self.pruner.step(**self._step_arguments(it, index))
        dead = self._remove_dead_neurons() if pc.dead_neurons else None
        if pc.reinit:
            self._reinitialise(index + 1)
        self._emit(PruneEvent(iteration=index + 1, method=pc.method,
                              layers=[r.to_dict() for r in results], dead_neurons=dead,
                              reinit=pc.reinit))

    def _remove_dead_neurons(self) -> dict[str, dict[str, int]]:
        """Mask the neurons no input reaches or no output reads; their counts per layer."""
        dead = prune_dead_neurons(self.model, self._structure(), self.example).counts()
        if is_distributed():  # found from activations: rank 0's decision everywhere
            sync_masks(self.model)
            dead = broadcast_object(dead)
        return dead

    def _step_arguments(self, it: IterationConfig, index: int) -> dict[str, Any]:
        """The :meth:`Pruner.step` arguments of schedule iteration ``index``."""
        pc = self.cfg.prune
        return {"method": pc.method, "amount": pc.amount(it), "layers": it.layers,
                "scope": pc.scope, "min_density": pc.min_density,
                "seed": self.cfg.seed + index, "monotone": pc.monotone, **pc.method_options}

    def _check_schedule(self) -> None:
        """Reject bad schedule values (q, sparsity, layer names) before any training.

        Raises:
            ValueError: naming the schedule iteration and the problem.
        """
        per_epoch = None
        for index, it in enumerate(self.cfg.prune.schedule):
            try:
                if it.share is not None:
                    self._sharing_layers(it)
                    continue
                self.pruner.check_step(**self._step_arguments(it, index))
                if it.gradual is not None or it.dynamic is not None:
                    if per_epoch is None:
                        per_epoch = len(self._train_batches())
                    self._in_training(index + 1, per_epoch)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"prune.schedule[{index}]: {exc}") from None

    def _sharing_layers(self, it: IterationConfig) -> WeightSharing:
        """The (unattached) weight sharing of a ``share`` iteration, its layers and bits
        checked against the model.

        Raises:
            ValueError: a layer or bits pattern matches no layer.
        """
        sc = it.share
        assert sc is not None
        layers = sc.layers if sc.layers is not None else self.pruner.layer_names
        chosen = select_layers(self.model, layers)
        resolve_bits(chosen, sc.bits)
        return WeightSharing(sc.bits, layers=list(chosen), init=sc.init,
                             max_iter=sc.max_iter, seed=self.cfg.seed)

    def _in_training(
        self, phase: int, per_epoch: int
    ) -> tuple[GradualPruning | DynamicSurgery | WeightSharing | None, int | None]:
        """The callback that prunes (or shares weights) during ``phase``'s training, and the
        phase step from which its masks are final (``(None, None)`` for an iteration of
        Han's kind)."""
        if phase == 0:
            return None, None
        pc, it = self.cfg.prune, self.cfg.prune.schedule[phase - 1]
        index = phase - 1
        if it.share is not None:
            return self._sharing_layers(it), None
        total = it.epochs * per_epoch
        if it.gradual is not None:
            g = it.gradual
            start, every, count = g.points(it.epochs, per_epoch)
            layers = self.pruner.layer_names if it.layers is None else it.layers
            callback = GradualPruning(
                self.pruner, pc.criterion(), pc.amount(it), initial=g.initial_sparsity,
                start=start, every=every, count=count, unit=g.unit, layers=layers,
                scope=pc.scope, min_density=pc.min_density, seed=self.cfg.seed + index,
                on_prune=lambda t, results, ph=phase: self._gradual_pruned(ph, t, results),
            )
            last = callback.last_point * (per_epoch if g.unit == "epoch" else 1)
            return callback, last
        if it.dynamic is not None:
            d = it.dynamic
            chosen = (self.pruner.layers if it.layers is None
                      else {n: self.pruner.layers[n] for n in self.pruner._subset(it.layers)})
            stop = round(d.stop * total)
            callback = DynamicSurgery(
                self.model, pc.amount(it), layers=chosen,
                margin=float(pc.method_options.get("margin", 0.1)), gamma=d.gamma,
                power=d.power, every=d.every, stop=stop,
                seed=epoch_seed(self.cfg.seed, phase, 0),
                on_update=lambda u, ph=phase: self._surgery_updated(ph, u),
            )
            return callback, stop
        return None, None

    def _at_epoch(self, steps: float) -> float:
        """Epochs of the run done ``steps`` steps into the running phase."""
        return len(self.history) - self.epoch_done + steps / self._per_epoch

    def _gradual_pruned(self, phase: int, t: int, results: list[LayerPruneResult]) -> None:
        pc, it = self.cfg.prune, self.cfg.prune.schedule[phase - 1]
        dead = None
        callback = self._callback
        if pc.dead_neurons and isinstance(callback, GradualPruning) and t == callback.last_point:
            dead = self._remove_dead_neurons()
        steps = t * (self._per_epoch if it.gradual.unit == "epoch" else 1)
        self._emit(PruneEvent(iteration=phase, method=pc.method,
                              layers=[r.to_dict() for r in results], dead_neurons=dead,
                              schedule="gradual", step=t, at_epoch=self._at_epoch(steps)))

    def _surgery_updated(self, phase: int, update: SurgeryUpdate) -> None:
        self._emit(MaskUpdateEvent(iteration=phase, **update.to_dict(),
                                   at_epoch=self._at_epoch(update.step_to)))

    def _reinitialise(self, phase: int) -> None:
        """Re-draw surviving weights (the ablation the paper argues against).

        Uses PyTorch's default Linear/Conv initialisation from a generator seeded with
        ``(seed, phase)`` (so a resumed run re-draws the same values), then re-applies masks.
        """
        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, phase, 0))
        for _, module, name, mask in list(iter_masks(self.model)):
            if name != "weight":
                continue
            orig = module._parameters["weight_orig"]
            fresh = torch.empty(orig.shape, dtype=orig.dtype)
            nn.init.kaiming_uniform_(fresh, a=5**0.5, generator=gen)
            fresh = fresh.to(orig.device)
            with torch.no_grad():
                orig.copy_(fresh * mask)

    def _apply_dropout(self, phase: int) -> list[DropoutChange]:
        if phase == 0 or not self.cfg.prune.dropout_adjust:
            return []
        self._structure()
        feeds = {d: layer for d, layer in self.dropout_feeds.items()
                 if layer in self.dense_connections}
        changes = apply_dropout_rule(self.model, feeds, self.original_dropout,
                                     self.dense_connections)
        self.dropout_now.update({c.dropout: c.retrain for c in changes})
        return changes

    def _frozen_norms(self, phase: int) -> list[nn.Module]:
        """BatchNorm layers frozen with the conv layers: their running stats must not move."""
        if self.settings(phase).freeze != "conv":
            return []
        return [m for m in self.model.modules()
                if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)]

    def _make_optimizer(self, phase: int) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
        s = self.settings(phase)
        params = freeze_kind(self.model, s.freeze)
        return self.optimizer_factory(params, s.lr, s.optimizer, s.weight_decay), params

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    def _save_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if path is None or self.rank != 0:  # only rank 0 writes files
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_flat: dict[str, Any] | None = None
        if self.optimizer is not None and self.epoch_done > 0:
            t, opt_flat = optimizer_to_flat(self.optimizer)
            tensors.update(t)
        best_meta = None
        if self.best is not None:
            tensors.update({f"best.{k}": v for k, v in self.best["state"].items()})
            best_meta = {"val_accuracy": self.best["val_accuracy"], "epoch": self.best["epoch"]}
        tensors.update({f"dense.{k}": v for k, v in self.dense_state.items()})
        meta = {
            "version": 1,
            "kind": "checkpoint",
            "config": self.cfg.model_dump(mode="json"),
            "phase": self.phase,
            "epoch_done": self.epoch_done,
            "optimizer": opt_flat,
            "best": best_meta,
            "pruner": self.pruner.state_dict(),
            "history": [r.to_dict() for r in self.history],
            "events": [e.to_dict() for e in self.events],
            "dense_val_accuracy": self.dense_val_accuracy,
            "dropout_now": self.dropout_now,
        }
        if self.world > 1:  # absent for 1 process, so earlier checkpoints stay valid
            meta["world_size"] = self.world
        callback = self._callback
        if isinstance(callback, DynamicSurgery) and callback.active:
            meta["surgery"] = callback.state_dict()
        if isinstance(callback, WeightSharing) and callback.attached:
            state = callback.state_dict()
            meta["sharing"] = state["meta"]
            tensors.update({f"sharing.{k}": v for k, v in state["tensors"].items()})
        save_tensors(path, tensors, meta)

    def restore(self) -> bool:
        """Load the run directory's checkpoint, if any; return whether one was loaded.

        Raises:
            ValueError: the checkpoint was written with a different configuration.
            prunelab.checkpoint.CheckpointError: the file is corrupt.
        """
        path = self._checkpoint_path()
        if path is None or not path.exists():
            return False
        tensors, meta = load_tensors(path, device=str(self.device))
        self._restored = True
        if meta.get("kind") != "checkpoint":
            raise CheckpointError(f"{str(path)!r} is not a pipeline checkpoint")
        try:
            self._restore_from(path, tensors, meta)
        except CheckpointError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise CheckpointError(
                f"{str(path)!r} is not a complete pipeline checkpoint (bad or missing entry "
                f"{one_line(str(exc), 80)}); start the run afresh in a new directory"
            ) from None
        except (RuntimeError, ValueError) as exc:  # tensors that do not fit the model
            raise CheckpointError(f"{str(path)!r} does not fit this run's model: "
                                  f"{one_line(str(exc), 200)}") from None
        return True

    def _restore_from(self, path: Path, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> None:
        if meta["config"] != self.cfg.model_dump(mode="json"):
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written with a different configuration; "
                "resume with the same config or start a new run directory"
            )
        strip: dict[str, dict[str, torch.Tensor]] = {"model.": {}, "best.": {}, "dense.": {},
                                                    "sharing.": {}}
        for k, v in tensors.items():
            for prefix, d in strip.items():
                if k.startswith(prefix):
                    d[k[len(prefix):]] = v
        load_pruned_state_dict(self.model, strip["model."])
        saved_world = int(meta.get("world_size", 1))
        if saved_world != self.world:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written by a run of {saved_world} rank(s); "
                f"resume it with {saved_world} (this job has {self.world})"
            )
        self.pruner.load_state_dict(meta["pruner"])
        self.phase, self.epoch_done = int(meta["phase"]), int(meta["epoch_done"])
        self.history = [record_from_dict(r) for r in meta["history"]]
        self.events = [record_from_dict(e) for e in meta["events"]]
        self.dense_val_accuracy = meta["dense_val_accuracy"]
        self.dense_state = strip["dense."]
        self._surgery_state = meta.get("surgery")
        self._sharing_state = (None if meta.get("sharing") is None
                               else {"meta": meta["sharing"], "tensors": strip["sharing."]})
        self.dropout_now = {k: float(v) for k, v in meta["dropout_now"].items()}
        mods = dict(self.model.named_modules())
        for name, p in self.dropout_now.items():
            mods[name].p = p
        self.best = None
        if meta["best"] is not None:
            self.best = {**meta["best"], "state": strip["best."]}
        self.optimizer = None
        if meta["optimizer"] is not None and self.phase < self.num_phases:
            self.optimizer, self._params = self._make_optimizer(self.phase)
            optimizer_from_flat(self.optimizer, tensors, meta["optimizer"])

    # --------------------------------------------------------------------- run
    def run(self, *, resume: bool = False) -> PipelineResult:
        """Run (or, with ``resume=True``, continue) the whole pipeline.

        Returns:
            :class:`PipelineResult` with the pruned model (masks installed) and records.
        """
        if resume and not self._restored:
            self.restore()
        batches = self._train_batches()
        self._per_epoch = max(1, len(batches))
        while self.phase < self.num_phases:
            phase = self.phase
            s = self.settings(phase)
            self._callback, self._settle_at = self._in_training(phase, self._per_epoch)
            callback = self._callback
            if self.epoch_done == 0:
                if phase > 0:
                    if isinstance(callback, WeightSharing):
                        report = callback.attach(self.model)
                        self._emit(ShareEvent(iteration=phase, layers=report.to_dict()["layers"],
                                              compression=report.compression))
                    elif isinstance(callback, GradualPruning):
                        callback.prune_due(0)
                    elif isinstance(callback, DynamicSurgery):
                        callback.start()
                    else:
                        self._prune(self.cfg.prune.schedule[phase - 1], phase - 1)
                    changes = ([] if isinstance(callback, WeightSharing)  # nothing pruned
                               else self._apply_dropout(phase))
                    if changes:
                        self._emit(DropoutEvent(iteration=phase,
                                                changes=[c.to_dict() for c in changes]))
                self.optimizer, self._params = self._make_optimizer(phase)
                self.best = None
            elif self.optimizer is None:
                self.optimizer, self._params = self._make_optimizer(phase)
            else:
                freeze_kind(self.model, s.freeze)
            if self.epoch_done > 0 and isinstance(callback, DynamicSurgery):
                if self._surgery_state is None:
                    raise CheckpointError("the checkpoint of a dynamic-surgery phase has no "
                                          "surgery state; start the run afresh")
                callback.resume(self._surgery_state)
            if self.epoch_done > 0 and isinstance(callback, WeightSharing):
                if self._sharing_state is None:
                    raise CheckpointError("the checkpoint of a weight-sharing phase has no "
                                          "sharing state; start the run afresh")
                callback.load_state_dict(self._sharing_state)
                callback.attach(self.model)
            policy = s.lr_policy
            lr_at = lr_schedule(policy.name, s.lr, s.epochs * len(batches), gamma=policy.gamma,
                                power=policy.power, milestones=policy.milestones,
                                min_lr=policy.min_lr)
            name = "train" if phase == 0 else f"retrain {phase}/{self.num_phases - 1}"
            self.reporter.phase_start(name, s.epochs - self.epoch_done, len(batches))
            trainer = Trainer(
                self.model, self.optimizer, lr_at=lr_at, l1=s.l1, l1_params=self._params,
                eval_modules=self._frozen_norms(phase),
                # the pruning callback first: the epoch's checkpoint then holds its masks
                callbacks=[*([callback] if callback is not None else []),
                           _EpochEnd(self, phase, s.keep_best)],
                on_batch=lambda b: self.reporter.batch(),
                precision=self.cfg.train.precision,
            )
            trainer.fit(batches, epochs=s.epochs, start_epoch=self.epoch_done,
                        seed_of_epoch=lambda e, ph=phase: epoch_seed(self.cfg.seed, ph, e))
            self.reporter.phase_end()
            if isinstance(callback, DynamicSurgery):
                callback.finish(self.optimizer)
            if isinstance(callback, WeightSharing):
                callback.detach()  # the weights keep their shared values
            self._callback, self._surgery_state, self._sharing_state = None, None, None
            self._finish_phase(phase, s.keep_best)
        for p in self.model.parameters():  # frozen only for the retraining phases
            p.requires_grad_(True)
        _, val_acc = self._validate()
        return PipelineResult(
            model=self.model,
            history=self.history,
            events=self.events,
            stats=model_stats(self.model, self.example),
            dense_val_accuracy=float(self.dense_val_accuracy or 0.0),
            val_accuracy=val_acc,
            dense_state=self.dense_state,
        )

    def _on_device(self, batches: Any) -> Any:
        """In-memory batches are on the device already; streamed ones move as drawn."""
        if self.in_memory:
            return batches
        return OnDevice(batches, self.device, channels_last=self.channels_last)

    def _train_batches(self) -> Any:
        """This rank's training batches: its share of each global batch of the config."""
        # only the in-memory splits take shift (the config refuses it for image folders)
        shift = {"shift": self.cfg.data.shift} if self.cfg.data.shift else {}
        return self._on_device(self.data.train_batches(
            self.cfg.train.batch_size // self.world, rank=self.rank, world=self.world, **shift))

    def _validate(self) -> tuple[float, float]:
        """Validation loss and accuracy; in a process group each rank evaluates its shard
        and the sums are reduced, so every rank gets the same figures."""
        shard = self.data.val_batches(self.cfg.eval_batch_size, rank=self.rank,
                                      world=self.world)
        return evaluate_batches(self.model, self._on_device(shard), reduce=True)

    def _end_epoch(self, phase: int, keep_best: bool, stats: EpochStats, t0: float) -> None:
        """Validate, record, keep the best weights, checkpoint (after every epoch)."""
        val_loss, val_acc = self._validate()
        self.epoch_done += 1
        record = EpochRecord(
            phase="train" if phase == 0 else "retrain", iteration=phase,
            epoch=self.epoch_done, global_epoch=len(self.history) + 1,
            loss=stats.loss, train_accuracy=stats.accuracy, val_loss=val_loss,
            val_accuracy=val_acc, lr=stats.lr,
            sparsity={n: sparsity(m) for n, m in self.pruner.layers.items()},
            time_s=time.perf_counter() - t0,
        )
        self.history.append(record)
        settled = self._settle_at is None or self.epoch_done * self._per_epoch >= self._settle_at
        if keep_best and settled and (self.best is None
                                      or val_acc > self.best["val_accuracy"]):
            self.best = {"val_accuracy": val_acc, "epoch": self.epoch_done,
                         "state": {k: v.detach().clone()
                                   for k, v in self.model.state_dict().items()}}
        self.reporter.epoch_end(record)
        self._save_checkpoint()

    def _finish_phase(self, phase: int, keep_best: bool) -> None:
        if keep_best and self.best is not None:
            load_pruned_state_dict(self.model, self.best["state"])
            self._emit(BestEpochEvent(iteration=phase, epoch=self.best["epoch"],
                                      val_accuracy=self.best["val_accuracy"]))
        # Masks must survive the restore exactly; re-assert them (no-op when consistent).
        for _, module, name, mask in list(iter_masks(self.model)):
            set_mask(module, name, mask.clone())
        _, val_acc = self._validate()
        if phase == 0:
            self.dense_val_accuracy = val_acc
            self.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.phase += 1
        self.epoch_done = 0
        self.best = None
        self.optimizer = None
        self._save_checkpoint()


class _EpochEnd(Callback):
    """Hands each finished epoch of a phase back to its pipeline (timed from its start)."""

    def __init__(self, pipeline: HanPipeline, phase: int, keep_best: bool) -> None:
        self.pipeline, self.phase, self.keep_best = pipeline, phase, keep_best
        self.t0 = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, stats: EpochStats) -> None:
        self.pipeline._end_epoch(self.phase, self.keep_best, stats, self.t0)
        self.t0 = time.perf_counter()
