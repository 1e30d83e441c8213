"""When: schedules as pure functions of the step.

Learning-rate policies map the step within a phase to a learning rate (Caffe's ``inv``,
``step``/``multistep`` at fractional milestones, ``cosine``, ``constant``), so a resumed run
needs only the step count. Pruning schedules say how much to prune at which step:
:func:`cubic_sparsity` is Zhu & Gupta 2017's gradual magnitude pruning (the same values as
``torch.ao.pruning.CubicSL.sparsity_compute_fn`` for the same arguments),
:func:`gradual_points` the steps at which it prunes, and :func:`surgery_probability` the
chance that dynamic network surgery (Guo et al. 2016) recomputes its masks at a step. The
callbacks that run them inside training are :class:`prunelab.gradual.GradualPruning` and
:class:`prunelab.dns.DynamicSurgery`.

Example:
    >>> f = lr_schedule("multistep", 0.1, 100, milestones=(0.5, 0.75))
    >>> f(0), f(50), round(f(75), 6)
    (0.1, 0.010000000000000002, 0.001)
    >>> [round(cubic_sparsity(t, 0.0, 0.9, 0, 10, 4), 4) for t in gradual_points(0, 10, 4)]
    [0.0, 0.5203, 0.7875, 0.8859, 0.9]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = [
    "LR_POLICIES",
    "cubic_sparsity",
    "gradual_points",
    "lr_schedule",
    "surgery_probability",
]

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


def _check_sparsity(value: float, what: str) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
        raise ValueError(f"{what}={value!r} is out of range; allowed: [0.0, 1.0)")


def cubic_sparsity(
    t: float, initial: float, final: float, start: int, every: int, count: int
) -> float:
    """Zhu & Gupta's gradual sparsity at step ``t``: ``s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3``.

    Clamped to ``[initial, final]``, so it is ``initial`` before ``start`` and ``final`` from
    ``start + count * every`` on: exactly ``torch.ao.pruning.CubicSL.sparsity_compute_fn``
    (with ``initially_zero=False``) for ``s_0=initial, s_f=final, t_0=start, dt=every,
    n=count``. Pruning happens only at the :func:`gradual_points`; between them the mask is
    that of the last point.

    Args:
        t: the step (or epoch) of the phase.
        initial: sparsity ``s_i`` at ``start``, in [0, 1).
        final: sparsity ``s_f`` reached at the last point, in [0, 1), ``>= initial``.
        start: first pruning step ``t0`` (>= 0).
        every: steps between prunings ``dt`` (>= 1).
        count: number of pruning intervals ``n`` (>= 1); ``count + 1`` points in all.

    Raises:
        ValueError: a value out of its range.

    Example:
        >>> cubic_sparsity(0, 0.0, 0.8, 0, 100, 10), cubic_sparsity(1000, 0.0, 0.8, 0, 100, 10)
        (0.0, 0.8)
        >>> round(cubic_sparsity(500, 0.0, 0.8, 0, 100, 10), 4)
        0.7
    """
    _check_sparsity(initial, "initial sparsity")
    _check_sparsity(final, "final sparsity")
    if final < initial:
        raise ValueError(f"final sparsity {final!r} is below the initial {initial!r}; "
                         "allowed: final >= initial")
    if not (isinstance(start, int) and start >= 0):
        raise ValueError(f"start={start!r} is invalid; allowed: an integer step >= 0")
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every={every!r} is invalid; allowed: an integer >= 1")
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"count={count!r} is invalid; allowed: an integer >= 1")
    s = final + (initial - final) * (1.0 - (t - start) / (every * count)) ** 3
    return min(max(s, initial), final)


def gradual_points(start: int, every: int, count: int) -> list[int]:
    """The steps at which gradual pruning prunes: ``start, start + every, ...`` (``count + 1``).

    Example:
        >>> gradual_points(5, 10, 3)
        [5, 15, 25, 35]
    """
    cubic_sparsity(start, 0.0, 0.0, start, every, count)  # validates the arguments
    return [start + k * every for k in range(count + 1)]


def surgery_probability(t: int, gamma: float = 1e-4, power: float = 1.0) -> float:
    """Chance that dynamic network surgery recomputes its masks at step ``t``.

    Guo et al. 2016 (and their Caffe code): ``(1 + gamma * t) ** -power``, decreasing from 1
    so the masks settle as training goes on.

    Raises:
        ValueError: ``gamma`` or ``power`` negative, or ``t`` negative.

    Example:
        >>> surgery_probability(0), round(surgery_probability(10000), 3)
        (1.0, 0.5)
    """
    if not (gamma >= 0 and power >= 0):
        raise ValueError(f"gamma={gamma!r}, power={power!r} are invalid; allowed: both >= 0")
    if t < 0:
        raise ValueError(f"step {t!r} is invalid; allowed: >= 0")
    return float((1.0 + gamma * t) ** -power)
