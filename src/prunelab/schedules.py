"""When: schedules as pure functions of the step.

Learning-rate policies map the step within a phase to a learning rate (Caffe's ``inv``,
``step``/``multistep`` at fractional milestones, ``cosine``, ``constant``), so a resumed run
needs only the step count. Pruning schedules (how much to prune at which step) will live here
too.

Example:
    >>> f = lr_schedule("multistep", 0.1, 100, milestones=(0.5, 0.75))
    >>> f(0), f(50), round(f(75), 6)
    (0.1, 0.010000000000000002, 0.001)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["LR_POLICIES", "lr_schedule"]

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
