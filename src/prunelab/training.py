"""A readable, fast training loop over in-memory tensors.

No per-sample Python: each batch is a slice of a tensor held in memory, shuffled by a
permutation drawn from a generator seeded with ``(seed, phase, epoch)``, so every epoch is a
pure function of the state at its start (which is what makes resuming exact).

Learning-rate policies are pure functions of the step within a phase (Caffe's ``inv``,
``step``, ``cosine``, ``constant``), so a resumed run needs only the step count.

Example:
    >>> import torch
    >>> from torch import nn
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> model = nn.Linear(4, 2)
    >>> opt = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9)
    >>> stats = train_epoch(model, opt, x, y, batch_size=16, lr_at=lambda s: 0.1, seed=0)
    >>> stats.steps
    4
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .masks import masked_training

__all__ = [
    "LR_POLICIES",
    "OPTIMIZERS",
    "EpochStats",
    "epoch_seed",
    "evaluate",
    "lr_schedule",
    "make_optimizer",
    "train_epoch",
]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
LR_POLICIES: tuple[str, ...] = ("constant", "inv", "step", "multistep", "cosine")


def lr_schedule(
    policy: str,
    base_lr: float,
    total_steps: int,
    *,
    gamma: float = 0.1,
    power: float = 0.75,
    milestones: Sequence[float] = (),
    min_lr: float = 0.0,
) -> Callable[[int], float]:
    """Return ``lr(step)`` for a policy.

    Args:
        policy: ``"constant"``; ``"inv"`` (Caffe: ``base * (1 + gamma*step)^-power``);
            ``"step"``/``"multistep"`` (multiply by ``gamma`` at each milestone, given as
            fractions of the phase in (0, 1), e.g. ``(0.5, 0.75)`` as in Liu et al.);
            ``"cosine"`` (from ``base_lr`` to ``min_lr``).
        base_lr: initial learning rate.
        total_steps: steps in the phase (for fractions and cosine).

    Raises:
        ValueError: unknown policy or bad values.

    Example:
        >>> f = lr_schedule("inv", 0.01, 10000, gamma=1e-4, power=0.75)
        >>> round(f(10000), 6)
        0.005946
    """
    if policy not in LR_POLICIES:
        raise ValueError(f"lr policy {policy!r} is unknown; allowed: {LR_POLICIES}")
    if not base_lr > 0:
        raise ValueError(f"learning rate {base_lr!r} must be > 0")
    total = max(1, int(total_steps))
    if policy == "constant":
        return lambda step: base_lr
    if policy == "inv":
        return lambda step: base_lr * (1.0 + gamma * step) ** (-power)
    if policy in ("step", "multistep"):
        bad = [m for m in milestones if not 0 < m < 1]
        if bad:
            raise ValueError(f"lr milestones {bad} must be fractions of the phase in (0, 1)")
        points = sorted(round(m * total) for m in milestones)
        return lambda step: base_lr * gamma ** sum(step >= p for p in points)
    return lambda step: min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * step / total))


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


def epoch_seed(seed: int, phase: int, epoch: int) -> int:
    """The seed of one epoch: a pure function of run seed, phase index and epoch.

    Example:
        >>> epoch_seed(0, 1, 2) != epoch_seed(0, 2, 1)
        True
    """
    return (int(seed) * 1_000_003 + int(phase) * 10_007 + int(epoch)) % (2**62)


@dataclass(frozen=True)
class EpochStats:
    """Mean loss and accuracy over the epoch's training batches."""

    loss: float
    accuracy: float
    steps: int
    lr: float


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    lr_at: Callable[[int], float],
    seed: int,
    step0: int = 0,
    l1: float = 0.0,
    l1_params: Sequence[nn.Parameter] = (),
    on_batch: Callable[[int, int], None] | None = None,
    eval_modules: Sequence[nn.Module] = (),
) -> EpochStats:
    """Train one epoch over in-memory tensors.

    Args:
        model: the network, already on the data's device.
        optimizer: its optimizer.
        x: inputs, ``[N, ...]``.
        y: integer labels, ``[N]``.
        batch_size: mini-batch size (the last batch may be smaller).
        lr_at: learning rate of a step within the phase.
        seed: seeds the shuffle permutation and the global RNG (dropout) of this epoch.
        step0: phase step count at the start of the epoch.
        l1: L1 penalty strength; its subgradient ``l1 * sign(w)`` is added to the gradients
            of ``l1_params`` (pruned entries are zero, so their sign is zero).
        l1_params: parameters the L1 penalty acts on.
        on_batch: progress callback ``(batch_index, num_batches)``.
        eval_modules: submodules kept in eval mode (e.g. frozen BatchNorm layers, whose
            running statistics must not change).

    Returns:
        :class:`EpochStats` (loss and accuracy averaged over samples).
    """
    model.train()
    for m in eval_modules:
        m.eval()
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws of this epoch
    perm = torch.randperm(n, generator=gen).to(x.device)
    num_batches = math.ceil(n / batch_size)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    lr = lr_at(step0)
    with masked_training(model, optimizer) as after_step:
        for b in range(num_batches):
            lr = _train_step(model, optimizer, x, y, perm, b, batch_size, lr_at, step0, l1,
                             l1_params, loss_sum, correct)
            after_step()
            if on_batch is not None:
                on_batch(b, num_batches)
    return EpochStats(float(loss_sum) / n, float(correct) / n, num_batches, lr)


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    b: int,
    batch_size: int,
    lr_at: Callable[[int], float],
    step0: int,
    l1: float,
    l1_params: Sequence[nn.Parameter],
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
) -> float:
    """One optimizer step on batch ``b`` of the permutation; accumulates loss and hits."""
    idx = perm[b * batch_size : (b + 1) * batch_size]
    xb, yb = x[idx], y[idx]
    lr = lr_at(step0 + b)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    out = model(xb)
    loss = F.cross_entropy(out, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if l1 > 0:
        with torch.no_grad():
            for p in l1_params:
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=l1)
    optimizer.step()
    with torch.no_grad():
        loss_sum += loss.detach() * yb.shape[0]
        correct += (out.argmax(1) == yb).sum()
    return lr


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000
) -> tuple[float, float]:
    """Return ``(mean loss, accuracy)`` of ``model`` in eval mode (training mode restored).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> loss, acc = evaluate(nn.Linear(3, 2), torch.zeros(5, 3), torch.zeros(5).long())
        >>> 0.0 <= acc <= 1.0
        True
    """
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    correct = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i : i + batch_size])
            yb = y[i : i + batch_size]
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    n = max(1, x.shape[0])
    return loss_sum / n, correct / n
