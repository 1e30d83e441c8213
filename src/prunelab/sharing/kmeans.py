"""One-dimensional k-means (Lloyd) for weight sharing, exact and deterministic on any device.

Deep Compression (Han et al. 2016, Sec. 3) clusters the surviving weights of each layer with
k-means and replaces every weight by its centroid. In one dimension Lloyd's algorithm needs
no distance matrix: once the values are sorted, the clusters of sorted centroids are
contiguous runs of the sorted values, cut at the midpoints between neighbouring centroids
(``torch.searchsorted``), and each centroid update is a difference of two prefix sums. One
iteration costs ``O(k log n)`` after an ``O(n log n)`` sort, whatever the layer's size.

Sums are exact: the values are written in fixed point (int64, a power-of-two scale chosen
from the largest value and the count so no sum can overflow) and added as integers, so the
result does not depend on the order of the additions: the same bits on CPU and CUDA, with any
number of threads, and with atomics (``index_add_``). Only the conversion to fixed point
rounds, to ``2**-shift`` with ``2**shift ~ 2**62 / (n * max|v|)``: below ``1e-10`` of the
largest value for ``n`` up to ``10**8``. Means are then taken in float64.

Initialisations (Han et al. 2016, Sec. 3.2 and Fig. 4): ``"linear"`` spaces the centroids
evenly over ``[min, max]`` (the paper's best: it keeps centroids on the large weights, which
are few but matter most); ``"density"`` puts them at equally spaced quantiles (the order
statistics at ``(2j + 1) n / (2k)``); ``"random"`` (Forgy) picks ``k`` of the values with a
seeded generator.

Example:
    >>> import torch
    >>> r = kmeans_1d(torch.tensor([0.0, 1.0, 2.0, 9.0, 10.0]), 2)
    >>> r.centroids.tolist(), r.labels.tolist(), r.iterations, r.converged
    ([1.0, 9.5], [0, 0, 0, 1, 1], 1, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["INITS", "KMeans1D", "cluster_sums", "fixed_point", "kmeans_1d"]

#: Centroid initialisations of :func:`kmeans_1d`.
INITS: tuple[str, ...] = ("linear", "density", "random")

# int64 holds |sum| < 2**63; one bit of margin for the rounding of each value.
_SUM_BITS = 62
_MAX_SHIFT = 1000  # 2**shift stays a normal float64


@dataclass(frozen=True)
class KMeans1D:
    """The outcome of :func:`kmeans_1d`.

    Attributes:
        centroids: float64 centroids in ascending order. ``clusters`` of them, except when
            the values have at most ``clusters`` distinct values: then exactly those values.
            A cluster that became empty keeps its last centroid (its count is 0).
        labels: int64, the shape of the input: the cluster of each value (its nearest
            centroid; a value exactly half-way goes to the lower one).
        counts: int64 number of values per cluster.
        iterations: centroid updates made.
        converged: whether the assignment stopped changing (within ``max_iter``).
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor
    iterations: int
    converged: bool


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2.0 ** exponent`` exactly, as float64, for an int64 exponent in [-1022, 1023]."""
    return ((exponent.to(torch.int64) + 1023) << 52).view(torch.float64)


def _fixed_point(
    values: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, scale, top)``: ``q = round(values * scale)`` (int64), ``scale`` a power of two
    (float64, 0-dim) and ``top = max |values|`` (NaN or inf when a value is not finite:
    ``amax`` propagates NaN)."""
    v = values.detach().reshape(-1)
    top = v.abs().amax() if v.numel() else v.new_zeros(())
    if top.dtype not in (torch.float32, torch.float64):
        top = top.to(torch.float32)  # frexp of half types is not everywhere
    exponent = torch.frexp(top).exponent  # top < 2**exponent (0 for top = 0)
    shift = (exponent.to(torch.int64) + (max(int(count), 1).bit_length() - _SUM_BITS)).neg_()
    scale = _pow2(shift.clamp_(-_MAX_SHIFT, _MAX_SHIFT))
    q = (v.to(torch.float64) * scale).round_().to(torch.int64)
    return q, scale, top


def fixed_point(values: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, unit)``: ``values ~= q * unit`` with int64 ``q`` such that any sum of ``count``
    of them fits in int64.

    ``unit`` is a power of two (a float64 0-dim tensor), chosen on the values' device from
    ``max |values|`` without a host synchronisation. Non-finite values give meaningless ``q``
    (callers check them).

    Example:
        >>> import torch
        >>> q, unit = fixed_point(torch.tensor([0.5, -0.25]), 2)
        >>> (q.double() * unit).tolist()
        [0.5, -0.25]
    """
    q, scale, _ = _fixed_point(values, count)
    return q, 1.0 / scale


def cluster_sums(values: torch.Tensor, labels: torch.Tensor, clusters: int) -> torch.Tensor:
    """Float64 sum of ``values`` per label in ``0..clusters-1``, accumulated exactly.

    The result is the same whatever the order of the values and the device (the additions
    are int64, see :func:`fixed_point`). Any non-finite value makes every sum NaN (so a
    gradient overflow stays visible, e.g. to ``torch.amp.GradScaler``).

    Args:
        values: floating tensor.
        labels: integer tensor (int32 or int64) of the same number of elements.
        clusters: number of sums.

    Example:
        >>> import torch
        >>> cluster_sums(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1, 0, 1]), 3).tolist()
        [2.0, 5.0, 0.0]
    """
    v = values.detach().reshape(-1)
    q, scale, top = _fixed_point(v, v.numel())
    sums = torch.zeros(clusters, dtype=torch.int64, device=v.device)
    sums.index_add_(0, labels.reshape(-1), q)
    # dividing by a power of two is exact; top - top is 0, or NaN for a non-finite value
    return sums.to(torch.float64).div_(scale).add_((top - top).to(torch.float64))


def _check_args(values: torch.Tensor, clusters: int, init: str, max_iter: int) -> None:
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"values must be a floating-point tensor, got {type(values).__name__}"
                        + (f" of {values.dtype}" if isinstance(values, torch.Tensor) else ""))
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters={clusters!r} is invalid; allowed: an integer >= 1")
    if init not in INITS:
        raise ValueError(f"init={init!r} is unknown; allowed: {', '.join(INITS)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter={max_iter!r} is invalid; allowed: an integer >= 0")
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise ValueError("values contain NaN or infinity; allowed: finite values only")


def _init(sv: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    """Initial centroids (float64, ascending) from the sorted float64 values ``sv``."""
    n = sv.numel()
    if init == "linear":
        lo, hi = sv[0], sv[-1]
        steps = torch.arange(k, dtype=torch.float64, device=sv.device) / (k - 1)
        c = lo + (hi - lo) * steps
        c[-1] = hi  # lo + (hi - lo) * 1 may round below hi
        return c
    if init == "density":
        pos = (torch.arange(k, dtype=torch.int64, device=sv.device) * 2 + 1) * n // (2 * k)
        return sv[pos]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    pick = torch.randperm(n, generator=gen)[:k].to(sv.device)
    return torch.sort(sv[pick]).values


def kmeans_1d(
    values: torch.Tensor,
    clusters: int,
    *,
    init: str = "linear",
    max_iter: int = 300,
    seed: int = 0,
) -> KMeans1D:
    """Lloyd's k-means of a set of numbers, until the assignment stops changing.

    Deterministic and device-independent: the same input gives the same bits on CPU and
    CUDA (sorting, ``searchsorted`` and integer sums are exact; see the module docstring).
    When there are at most ``clusters`` distinct values, they are the centroids (no
    iteration, zero error).

    Args:
        values: floating tensor, any shape (flattened); finite.
        clusters: ``k``, at least 1.
        init: ``"linear"`` (the paper's choice), ``"density"`` or ``"random"``.
        max_iter: most centroid updates (0: the initial centroids).
        seed: the generator seed of ``init="random"``.

    Returns:
        :class:`KMeans1D` (on the values' device).

    Raises:
        ValueError: a bad ``clusters``, ``init`` or ``max_iter``, or non-finite values.
        TypeError: ``values`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> kmeans_1d(torch.tensor([0.0, 1.0, 1.0, 5.0]), 4).centroids.tolist()
        [0.0, 1.0, 5.0]
        >>> kmeans_1d(torch.linspace(0, 1, 9), 3, max_iter=0).centroids.tolist()
        [0.0, 0.5, 1.0]
    """
    _check_args(values, clusters, init, max_iter)
    v = values.detach().reshape(-1).to(torch.float64)
    dev = v.device
    sv = torch.sort(v).values
    n, k = sv.numel(), clusters
    distinct = torch.unique_consecutive(sv)
    if distinct.numel() <= k:
        labels = torch.searchsorted(distinct, v)
        counts = torch.bincount(labels, minlength=distinct.numel())
        return KMeans1D(distinct, labels.view(values.shape), counts, 0, True)

    q, unit = fixed_point(sv, n)
    prefix = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(q, 0)])
    n_t = torch.tensor([n], device=dev)
    zero_t = torch.zeros(1, dtype=torch.int64, device=dev)
    c = _init(sv, k, init, seed)
    previous: torch.Tensor | None = None
    iterations, converged = 0, False
    while True:
        # Cluster j holds the sorted values in (t[j-1], t[j]]: cut at the midpoints.
        bounds = torch.searchsorted(sv, (c[:-1] + c[1:]) * 0.5, right=True)
        if previous is not None and torch.equal(bounds, previous):
            converged = True
            break
        if iterations == max_iter:
            break
        starts, ends = torch.cat([zero_t, bounds]), torch.cat([bounds, n_t])
        count = ends - starts
        mean = (prefix[ends] - prefix[starts]).to(torch.float64) * unit / count.clamp(min=1)
        # The mean lies within its run; clamping removes the last rounding, so centroids
        # stay strictly ascending and each run keeps its values.
        lo, hi = sv[starts.clamp(max=n - 1)], sv[(ends - 1).clamp(min=0)]
        c = torch.where(count > 0, torch.minimum(torch.maximum(mean, lo), hi), c)
        previous = bounds
        iterations += 1
    labels = torch.searchsorted((c[:-1] + c[1:]) * 0.5, v)
    counts = torch.bincount(labels, minlength=k)
    return KMeans1D(c, labels.view(values.shape), counts, iterations, converged)
