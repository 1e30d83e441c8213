"""The one training seam: every training run of prunelab goes through :class:`Trainer`.

A :class:`Trainer` takes the model, its optimizer, an iterable of ``(inputs, targets)``
batches (a ``DataLoader`` or the fast in-memory :class:`prunelab.data.TensorBatches`), a loss
function and callbacks; it knows nothing of datasets or of pruning schedules. Masks are kept
exact with :func:`prunelab.masks.masked_training` (pruned weights and their gradients are
exactly zero at every step, and a callback may change masks between steps). The Han
pipeline, the rethinking protocol and the trade-off experiment all train through it.

Randomness: :meth:`Trainer.train_epoch` takes the epoch's seed; it seeds the global RNG
(dropout) and the batcher's permutation (``set_epoch``), so an epoch is a pure function of
the state at its start and its seed (:func:`epoch_seed` of run seed, phase and epoch).

In your own loop, nothing of this is needed: a pruned model trains like any model, and
after a mask change you call :func:`prunelab.masks.sync_optimizer` (or pass
``optimizer=`` to :meth:`prunelab.pruner.Pruner.step`) so the optimizer state of newly
pruned entries is cleared.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunelab.data import TensorBatches
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> model = nn.Linear(4, 2)
    >>> opt = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9)
    >>> stats = Trainer(model, opt).train_epoch(TensorBatches(x, y, batch_size=16), seed=0)
    >>> stats.steps, stats.examples
    (4, 64)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data.batches import TensorBatches
from .distributed import all_reduce_sums, is_distributed, sync_buffers
from .masks import mask_gradients, masked_training

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "Callback",
    "EpochStats",
    "Trainer",
    "epoch_seed",
    "evaluate",
    "evaluate_batches",
    "evaluate_sums",
    "make_optimizer",
    "precision_context",
]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(
    params: Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Build an SGD/Adam/AdamW optimizer (``weight_decay`` is the L2 strength).

    Raises:
        ValueError: unknown optimizer name.

    Example:
        >>> from torch import nn
        >>> type(make_optimizer(nn.Linear(2, 2).parameters(), "adam", lr=1e-3)).__name__
        'Adam'
    """
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} is unknown; allowed: {OPTIMIZERS}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")


def precision_context(
    precision: str, device: torch.device | str
) -> contextlib.AbstractContextManager[None]:
    """The autocast context of a precision: none for ``fp32``, ``torch.autocast`` otherwise.

    Parameters stay fp32 (the master weights); matrix products run in bf16/fp16. Masks
    hold under every precision: the weights a layer uses are ``orig * mask`` with pruned
    ``orig`` entries exactly zero, and a zero stays zero in every dtype.

    Raises:
        ValueError: unknown precision.

    Example:
        >>> import torch
        >>> with precision_context("bf16", "cpu"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    _check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


def epoch_seed(seed: int, phase: int, epoch: int) -> int:
    """The seed of one epoch: a pure function of run seed, phase index and epoch.

    Example:
        >>> epoch_seed(0, 1, 2) != epoch_seed(0, 2, 1)
        True
    """
    return (int(seed) * 1_000_003 + int(phase) * 10_007 + int(epoch)) % (2**62)


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch's training batches.

    Attributes:
        loss: mean loss per example.
        accuracy: fraction of examples whose arg-max output equals the target (classification).
        steps: optimizer steps taken.
        lr: learning rate of the last step.
        examples: examples seen.
    """

    loss: float
    accuracy: float
    steps: int
    lr: float
    examples: int


class Callback:
    """Hooks a :class:`Trainer` calls; override the ones you need (all do nothing here).

    ``on_step_end`` runs after the optimizer step and the mask re-application, so a callback
    may change masks there (gradual pruning): the next forward pass uses the new masks.

    Example:
        >>> class CountSteps(Callback):
        ...     def __init__(self):
        ...         self.steps = 0
        ...     def on_step_end(self, trainer, step):
        ...         self.steps += 1
        >>> CountSteps().steps
        0
    """

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimizer step ``step`` (counted within the trainer's phase, from 0)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, stats: EpochStats) -> None:
        """After epoch ``epoch`` (from 0) of :meth:`Trainer.fit`."""


class Trainer:
    """Train a model on batches, keeping its masks exact.

    Args:
        model: the network, on the batches' device.
        optimizer: its optimizer (built on the parameters to train).
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the batch (cross-entropy by
            default).
        lr_at: learning rate of a step within the phase; the optimizer's own rate when
            ``None``. A param group's ``lr_scale`` multiplies it.
        l1: L1 penalty strength: ``l1 * sign(w)`` is added to the gradients of
            ``l1_params`` (Han's L1 regulariser; Network Slimming's penalty on BatchNorm
            scales). Pruned entries are zero, so their sign adds nothing.
        l1_params: the parameters the L1 penalty acts on.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping);
            pruned entries have zero gradient, so they do not count.
        eval_modules: submodules kept in eval mode while training (frozen BatchNorm layers,
            whose running statistics must not change).
        callbacks: :class:`Callback` objects, called in order.
        on_batch: ``on_batch(batch_index)`` after each step (progress bars).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a
            ``GradScaler``, whose skipped steps leave weights and masks as they were).
        distributed: train through ``DistributedDataParallel`` (gradients averaged over
            ranks; pruned gradients re-masked after the all-reduce; BatchNorm statistics
            broadcast from rank 0 after each epoch). Default: whenever a process group with
            several ranks is initialised. Build one Trainer per phase: DDP fixes the set of
            trained (not frozen) parameters when it is built.

    Raises:
        ValueError: a negative ``l1``, a ``grad_clip`` that is not positive, an unknown
            precision.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        loss_fn: LossFn = F.cross_entropy,
        lr_at: Callable[[int], float] | None = None,
        l1: float = 0.0,
        l1_params: Sequence[nn.Parameter] = (),
        grad_clip: float | None = None,
        eval_modules: Sequence[nn.Module] = (),
        callbacks: Sequence[Callback] = (),
        on_batch: Callable[[int], None] | None = None,
        precision: str = "fp32",
        distributed: bool | None = None,
    ) -> None:
        _check_precision(precision)
        if not l1 >= 0:
            raise ValueError(f"l1={l1!r} is invalid; allowed: a strength >= 0")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip={grad_clip!r} is invalid; allowed: None or > 0")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.lr_at = lr_at
        self.l1 = float(l1)
        self.l1_params = list(l1_params)
        self.grad_clip = grad_clip
        self.eval_modules = list(eval_modules)
        self.callbacks = list(callbacks)
        self.on_batch = on_batch
        self.step = 0
        self.precision = precision
        param = next(iter(model.parameters()), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        )
        self.distributed = is_distributed() if distributed is None else bool(distributed)
        self.net: nn.Module = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # Buffers (masks, BatchNorm statistics) are synced when DDP is built, not at
            # every forward: masks change only through prunelab's broadcasts, BatchNorm
            # statistics are sent once per epoch (sync_buffers).
            params = inspect.signature(DistributedDataParallel).parameters
            no_sync = (
                {"forward_sync_buffers": False} if "forward_sync_buffers" in params
                else {"broadcast_buffers": False}
            )
            self.net = DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None,
                **no_sync,
            )

    def _set_lr(self) -> float:
        if self.lr_at is None:
            return float(self.optimizer.param_groups[0]["lr"])
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def train_epoch(
        self, batches: Batches, *, seed: int | None = None, step0: int | None = None
    ) -> EpochStats:
        """Train one pass over ``batches``.

        Args:
            batches: iterable of ``(inputs, targets)``; its ``set_epoch(seed)`` is called when
                it has one (:class:`prunelab.data.TensorBatches`, a ``DistributedSampler``
                wrapper).
            seed: the epoch's seed: seeds the global RNG (dropout draws) and the batches'
                permutation; ``None`` leaves both as they are.
            step0: the phase step at the start of the epoch (for ``lr_at``); default: go on
                from the last step.

        Returns:
            :class:`EpochStats`.
        """
        model, opt = self.model, self.optimizer
        model.train()
        for m in self.eval_modules:
            m.eval()
        if seed is not None:
            torch.manual_seed(seed)
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(seed)
        if step0 is not None:
            self.step = int(step0)
        loss_sum = correct = None
        examples = steps = 0
        lr = self._set_lr() if self.lr_at is not None else float(opt.param_groups[0]["lr"])
        with masked_training(model, opt) as after_step:
            for b, (xb, yb) in enumerate(batches):
                lr = self._set_lr()
                with precision_context(self.precision, self.device):
                    out = self.net(xb)
                    loss = self.loss_fn(out, yb)
                opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(opt)
                else:
                    loss.backward()
                if self.distributed:
                    mask_gradients(model)
                if self.l1 > 0:
                    with torch.no_grad():
                        for p in self.l1_params:
                            if p.grad is not None:
                                p.grad.add_(torch.sign(p), alpha=self.l1)
                if self.grad_clip is not None:
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                if self.scaler is not None:
                    self.scaler.step(opt)
                    self.scaler.update()
                else:
                    opt.step()
                after_step()
                with torch.no_grad():
                    n = yb.shape[0]
                    part = loss.detach() * n
                    loss_sum = part if loss_sum is None else loss_sum + part
                    if out.dim() == 2 and yb.dim() == 1:
                        hit = (out.argmax(1) == yb).sum()
                        correct = hit if correct is None else correct + hit
                examples += n
                steps += 1
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step)
                self.step += 1
                if self.on_batch is not None:
                    self.on_batch(b)
        if self.distributed:
            sync_buffers(model)
            loss_total, correct_total, examples_total = all_reduce_sums(
                [float(loss_sum) if loss_sum is not None else 0.0,
                 float(correct) if correct is not None else 0.0, examples])
            loss_sum, correct = loss_total, correct_total
            examples = int(examples_total)
        denom = max(1, examples)
        return EpochStats(
            float(loss_sum) / denom if loss_sum is not None else 0.0,
            float(correct) / denom if correct is not None else 0.0,
            steps, lr, examples,
        )

    def fit(
        self,
        batches: Batches,
        *,
        epochs: int,
        seed_of_epoch: Callable[[int], int] | None = None,
        start_epoch: int = 0,
    ) -> list[EpochStats]:
        """Train epochs ``start_epoch .. epochs - 1``; callbacks see each epoch's end.

        Args:
            batches: as for :meth:`train_epoch`; its length gives the steps per epoch.
            epochs: the phase's number of epochs.
            seed_of_epoch: ``epoch -> seed`` (e.g. ``lambda e: epoch_seed(seed, phase, e)``);
                ``None`` leaves the RNGs alone.
            start_epoch: the first epoch to run (a resumed phase).

        Returns:
            One :class:`EpochStats` per epoch run.
        """
        per_epoch = len(batches)  # type: ignore[arg-type]
        out = []
        for epoch in range(start_epoch, epochs):
            seed = seed_of_epoch(epoch) if seed_of_epoch is not None else None
            stats = self.train_epoch(batches, seed=seed, step0=epoch * per_epoch)
            out.append(stats)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, stats)
        return out


@torch.no_grad()
def evaluate_sums(
    model: nn.Module,
    batches: Batches,
    *,
    loss_fn: LossFn = F.cross_entropy,
    precision: str = "fp32",
) -> tuple[float, int, int]:
    """``(summed loss, correct predictions, examples)`` of ``model`` over ``batches``.

    In eval mode (the training mode is restored), under ``precision``'s autocast.
    ``loss_fn`` must accept ``reduction="sum"`` (as torch's losses do). Sums, unlike means,
    add up over the shards of a data-parallel evaluation.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> evaluate_sums(nn.Linear(2, 2), [(torch.zeros(3, 2), torch.zeros(3).long())])[2]
        3
    """
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    correct = n = 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with precision_context(precision, device):
            for xb, yb in batches:
                out = model(xb)
                loss_sum += float(loss_fn(out.float(), yb, reduction="sum"))
                correct += int((out.argmax(1) == yb).sum())
                n += yb.shape[0]
    finally:
        model.train(was_training)
    return loss_sum, correct, n


def evaluate_batches(
    model: nn.Module,
    batches: Batches,
    *,
    loss_fn: LossFn = F.cross_entropy,
    precision: str = "fp32",
    reduce: bool = False,
) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``model`` over ``batches`` in eval mode.

    ``loss_fn`` must accept ``reduction="sum"`` (as torch's losses do). The model's training
    mode is restored. With ``reduce=True`` in a process group, ``batches`` is this rank's
    shard and the sums are added over ranks first, so every rank gets the same figures.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> batches = [(torch.zeros(3, 2), torch.zeros(3).long())]
        >>> loss, acc = evaluate_batches(nn.Linear(2, 2), batches)
        >>> 0.0 <= acc <= 1.0
        True
    """
    loss_sum, correct, n = evaluate_sums(model, batches, loss_fn=loss_fn, precision=precision)
    if reduce and is_distributed():
        loss_sum, c, m = all_reduce_sums([loss_sum, correct, n])
        correct, n = int(c), int(m)
    n = max(1, n)
    return loss_sum / n, correct / n


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000
) -> tuple[float, float]:
    """Return ``(mean loss, accuracy)`` of ``model`` on tensors, in eval mode.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> loss, acc = evaluate(nn.Linear(3, 2), torch.zeros(5, 3), torch.zeros(5).long())
        >>> 0.0 <= acc <= 1.0
        True
    """
    return evaluate_batches(model, TensorBatches(x, y, batch_size=batch_size, shuffle=False))
