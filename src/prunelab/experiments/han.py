"""Han et al.'s pipeline: train dense -> prune -> retrain, iterated over a schedule.

The pipeline is a list of phases: phase 0 trains the dense network; phase ``k >= 1`` runs
iteration ``k-1`` of the schedule (prune, remove dead neurons, adjust dropout, freeze, then
retrain at ``lr_factor`` times the training learning rate). After every epoch a checkpoint
(model, masks, optimizer state, best-so-far weights, pruner state, history) is written
atomically; every epoch's randomness is a pure function of ``(seed, phase, epoch)``, so a run
resumed from its last checkpoint ends exactly as an uninterrupted one.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.config import parse_config
    >>> cfg = parse_config({"model": {"name": "lenet300"},
    ...     "train": {"epochs": 1, "batch_size": 32},
    ...     "prune": {"method": "magnitude", "schedule": [{"sparsity": 0.9, "epochs": 1}]}})
    >>> x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    >>> result = HanPipeline(model, cfg, TensorData(x, y, x, y)).run()
    >>> round(result.stats.layers[0].weights_kept, 2)
    0.1
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..checkpoint import load_tensors, optimizer_from_flat, optimizer_to_flat, save_tensors
from ..config import (
    IterationConfig,
    LRPolicyConfig,
    OptimizerConfig,
    RegularizationConfig,
    RunConfig,
)
from ..dead_neurons import prune_dead_neurons
from ..graph import DROPOUT_TYPES, Structure, trace_structure
from ..masks import effective_tensor, iter_masks, load_pruned_state_dict, set_mask
from ..metrics import ModelStats, model_stats
from ..pruner import Pruner
from ..retrain_rules import DropoutChange, apply_dropout_rule, freeze_kind
from ..training import epoch_seed, evaluate, lr_schedule, make_optimizer, train_epoch

__all__ = ["HanPipeline", "PipelineResult", "Reporter", "SilentReporter", "TensorData"]

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass(frozen=True)
class TensorData:
    """Training and validation tensors, held in memory (already normalised)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def to(self, device: str | torch.device) -> TensorData:
        """Copy to a device."""
        return TensorData(*(t.to(device) for t in (self.x_train, self.y_train,
                                                    self.x_val, self.y_val)))


class Reporter(Protocol):
    """Receives progress: a phase starts, batches advance, an epoch ends, an event happens."""

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None: ...
    def batch(self) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def event(self, record: dict[str, Any]) -> None: ...
    def phase_end(self) -> None: ...


class SilentReporter:
    """A :class:`Reporter` that ignores everything; subclass it to react to some events only."""

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None:
        pass

    def batch(self) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass

    def event(self, record: dict[str, Any]) -> None:
        pass

    def phase_end(self) -> None:
        pass


@dataclass
class PipelineResult:
    """What a finished pipeline produced."""

    model: nn.Module
    history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    stats: ModelStats
    dense_val_accuracy: float
    val_accuracy: float
    dense_state: dict[str, torch.Tensor] = field(default_factory=dict)


OptimizerFactory = Callable[[Sequence[nn.Parameter], float, OptimizerConfig, float], Any]


def _default_optimizer(
    params: Sequence[nn.Parameter], lr: float, cfg: OptimizerConfig, weight_decay: float
) -> torch.optim.Optimizer:
    return make_optimizer(params, cfg.name, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=weight_decay, betas=tuple(cfg.betas))


class HanPipeline:
    """Run the prune-retrain pipeline of a :class:`~prunelab.config.RunConfig` on a model.

    Args:
        model: the network, freshly initialised (or pretrained, with ``train.epochs: 0``).
        config: the validated configuration (``train`` and ``prune`` sections are used).
        data: in-memory training/validation tensors.
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
        data: TensorData,
        *,
        run_dir: str | Path | None = None,
        reporter: Reporter | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        example_input: torch.Tensor | None = None,
    ) -> None:
        self.cfg = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.data = data.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reporter = reporter or SilentReporter()
        self.optimizer_factory = optimizer_factory or _default_optimizer
        self.example = (
            example_input if example_input is not None else self.data.x_val[:256]
        ).to(self.device)
        if self.example.shape[0] == 0:
            self.example = self.data.x_train[:256]
        pc = config.prune
        self.pruner = Pruner(self.model, pc.layers, exclude=pc.exclude, std_source=pc.std_source)
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
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.dense_val_accuracy: float | None = None
        self.dense_state: dict[str, torch.Tensor] = {}
        self.dropout_now: dict[str, float] = dict(self.original_dropout)
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []
        self._restored = False

    def _emit(self, event: dict[str, Any]) -> None:
        """Record an event, stamped with the number of epochs run so far (for ordering)."""
        event["after_epoch"] = sum(1 for h in self.history if h["kind"] == "epoch")
        self.events.append(event)
        self.reporter.event(event)

    # ------------------------------------------------------------------ phases
    @property
    def num_phases(self) -> int:
        """1 (dense training) + the number of schedule iterations."""
        return 1 + len(self.cfg.prune.schedule)

    def _phase_settings(
        self, phase: int
    ) -> tuple[int, float, OptimizerConfig, LRPolicyConfig, RegularizationConfig, str, bool]:
        t, r = self.cfg.train, self.cfg.prune.retrain
        if phase == 0:
            return (t.epochs, t.optimizer.lr, t.optimizer, t.lr_policy, t.regularization,
                    "none", t.keep_best)
        it = self.cfg.prune.schedule[phase - 1]
        opt = r.optimizer or t.optimizer
        return (
            it.epochs,
            opt.lr * r.lr_factor,
            opt,
            r.lr_policy or t.lr_policy,
            r.regularization or t.regularization,
            it.freeze or r.freeze,
            r.keep_best,
        )

    def _structure(self) -> Structure:
        if self.structure is None:
            self.structure = trace_structure(self.model, self.example)
            if not self.cfg.prune.dropout_map:
                self.dropout_feeds = dict(self.structure.dropout_feeds)
        return self.structure

    def _prune(self, it: IterationConfig, index: int) -> None:
        pc = self.cfg.prune
        amount = it.q if pc.method == "std" else it.sparsity
        results = self.pruner.step(
            pc.method, amount, layers=it.layers, scope=pc.scope, min_density=pc.min_density,
            seed=self.cfg.seed + index, monotone=pc.monotone,
        )
        event: dict[str, Any] = {
            "kind": "prune", "iteration": index + 1, "method": pc.method,
            "layers": [r.to_dict() for r in results],
        }
        if pc.dead_neurons:
            report = prune_dead_neurons(self.model, self._structure(), self.example)
            event["dead_neurons"] = report.counts()
        if pc.reinit:
            self._reinitialise(index + 1)
            event["reinit"] = True
        self._emit(event)

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
        if self._phase_settings(phase)[5] != "conv":
            return []
        return [m for m in self.model.modules()
                if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)]

    def _make_optimizer(self, phase: int) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
        _, lr, opt_cfg, _, reg, freeze, _ = self._phase_settings(phase)
        params = freeze_kind(self.model, freeze)
        wd = reg.strength if reg.kind == "l2" else 0.0
        return self.optimizer_factory(params, lr, opt_cfg, wd), params

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    def _save_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if path is None:
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
            "history": self.history,
            "events": self.events,
            "dense_val_accuracy": self.dense_val_accuracy,
            "dropout_now": self.dropout_now,
        }
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
            raise ValueError(f"{str(path)!r} is not a pipeline checkpoint")
        if meta["config"] != self.cfg.model_dump(mode="json"):
            raise ValueError(
                f"checkpoint {str(path)!r} was written with a different configuration; "
                "resume with the same config or start a new run directory"
            )
        strip = {"model.": {}, "best.": {}, "dense.": {}}
        for k, v in tensors.items():
            for prefix, d in strip.items():
                if k.startswith(prefix):
                    d[k[len(prefix):]] = v
        load_pruned_state_dict(self.model, strip["model."])
        self.pruner.load_state_dict(meta["pruner"])
        self.phase, self.epoch_done = int(meta["phase"]), int(meta["epoch_done"])
        self.history, self.events = list(meta["history"]), list(meta["events"])
        self.dense_val_accuracy = meta["dense_val_accuracy"]
        self.dense_state = strip["dense."]
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
        return True

    # --------------------------------------------------------------------- run
    def run(self, *, resume: bool = False) -> PipelineResult:
        """Run (or, with ``resume=True``, continue) the whole pipeline.

        Returns:
            :class:`PipelineResult` with the pruned model (masks installed) and records.
        """
        if resume and not self._restored:
            self.restore()
        x, y = self.data.x_train, self.data.y_train
        while self.phase < self.num_phases:
            phase = self.phase
            epochs, _, _, policy, reg, _, keep_best = self._phase_settings(phase)
            batch_size = self.cfg.train.batch_size
            per_epoch = -(-x.shape[0] // batch_size)
            if self.epoch_done == 0:
                if phase > 0:
                    self._prune(self.cfg.prune.schedule[phase - 1], phase - 1)
                    changes = self._apply_dropout(phase)
                    if changes:
                        event = {"kind": "dropout", "iteration": phase,
                                 "changes": [c.to_dict() for c in changes]}
                        self._emit(event)
                self.optimizer, self._params = self._make_optimizer(phase)
                self.best = None
            elif self.optimizer is None:
                self.optimizer, self._params = self._make_optimizer(phase)
            else:
                freeze_kind(self.model, self._phase_settings(phase)[5])
            lr_at = lr_schedule(
                policy.name, self._phase_settings(phase)[1], epochs * per_epoch,
                gamma=policy.gamma, power=policy.power, milestones=policy.milestones,
                min_lr=policy.min_lr,
            )
            l1 = reg.strength if reg.kind == "l1" else 0.0
            name = "train" if phase == 0 else f"retrain {phase}/{self.num_phases - 1}"
            self.reporter.phase_start(name, epochs - self.epoch_done, per_epoch)
            while self.epoch_done < epochs:
                t0 = time.perf_counter()
                stats = train_epoch(
                    self.model, self.optimizer, x, y, batch_size=batch_size, lr_at=lr_at,
                    seed=epoch_seed(self.cfg.seed, phase, self.epoch_done),
                    step0=self.epoch_done * per_epoch, l1=l1, l1_params=self._params,
                    on_batch=lambda b, n: self.reporter.batch(),
                    eval_modules=self._frozen_norms(phase),
                )
                val_loss, val_acc = evaluate(self.model, self.data.x_val, self.data.y_val,
                                             batch_size=self.cfg.eval_batch_size)
                self.epoch_done += 1
                record = {
                    "kind": "epoch", "phase": "train" if phase == 0 else "retrain",
                    "iteration": phase, "epoch": self.epoch_done,
                    "global_epoch": len([h for h in self.history if h["kind"] == "epoch"]) + 1,
                    "loss": stats.loss, "train_accuracy": stats.accuracy,
                    "val_loss": val_loss, "val_accuracy": val_acc, "lr": stats.lr,
                    "sparsity": {n: 1.0 - int(torch.count_nonzero(effective_tensor(m)))
                                 / effective_tensor(m).numel()
                                 for n, m in self.pruner.layers.items()},
                    "time_s": time.perf_counter() - t0,
                }
                self.history.append(record)
                if keep_best and (self.best is None or val_acc > self.best["val_accuracy"]):
                    self.best = {"val_accuracy": val_acc, "epoch": self.epoch_done,
                                 "state": {k: v.detach().clone()
                                           for k, v in self.model.state_dict().items()}}
                self.reporter.epoch_end(record)
                self._save_checkpoint()
            self.reporter.phase_end()
            self._finish_phase(phase, keep_best)
        for p in self.model.parameters():  # frozen only for the retraining phases
            p.requires_grad_(True)
        _, val_acc = evaluate(self.model, self.data.x_val, self.data.y_val,
                              batch_size=self.cfg.eval_batch_size)
        return PipelineResult(
            model=self.model,
            history=self.history,
            events=self.events,
            stats=model_stats(self.model, self.example),
            dense_val_accuracy=float(self.dense_val_accuracy or 0.0),
            val_accuracy=val_acc,
            dense_state=self.dense_state,
        )

    def _finish_phase(self, phase: int, keep_best: bool) -> None:
        if keep_best and self.best is not None:
            load_pruned_state_dict(self.model, self.best["state"])
            event = {"kind": "best_epoch", "iteration": phase, "epoch": self.best["epoch"],
                     "val_accuracy": self.best["val_accuracy"]}
            self._emit(event)
        # Masks must survive the restore exactly; re-assert them (no-op when consistent).
        for _, module, name, mask in list(iter_masks(self.model)):
            set_mask(module, name, mask.clone())
        _, val_acc = evaluate(self.model, self.data.x_val, self.data.y_val,
                              batch_size=self.cfg.eval_batch_size)
        if phase == 0:
            self.dense_val_accuracy = val_acc
            self.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.phase += 1
        self.epoch_done = 0
        self.best = None
        self.optimizer = None
        self._save_checkpoint()
