"""Channel labels: integer tensors that say which prunable channel each activation entry is.

The dependency tracer (:mod:`prunelab.graph.dependency`) runs a model on an example input and,
beside every real tensor, a *label tensor* of the same shape: entry ``v >= 0`` means "this
value belongs to channel variable ``v``", ``-1`` means "no prunable channel" (the model input,
constants). Operations move labels the way they move data; joins (a residual add, a shared
consumer) *unify* variables; anything the tracer cannot follow *pins* its variables (they are
never pruned). :class:`Unifier` collects both and resolves them to connected components.

Example:
    >>> import torch
    >>> u = Unifier()
    >>> a, b = u.fresh(3), u.fresh(3)
    >>> u.unify(a, b)
    >>> u.pin(a[2:])
    >>> roots, pinned = u.resolve()
    >>> bool(roots[0] == roots[3]), bool(pinned[roots[5]]), bool(pinned[roots[0]])
    (True, True, False)
"""

from __future__ import annotations

import torch

__all__ = ["UNLABELED", "Unifier", "channel_vector", "expand_channels", "varies_along"]

#: The label of an entry that belongs to no prunable channel.
UNLABELED = -1


class Unifier:
    """Channel variables, the equalities between them and the pinned ones."""

    def __init__(self) -> None:
        self.count = 0
        self._edges: list[torch.Tensor] = []
        self._pins: list[torch.Tensor] = []

    def fresh(self, n: int) -> torch.Tensor:
        """``n`` new variables (a 1-D long tensor)."""
        out = torch.arange(self.count, self.count + n, dtype=torch.long)
        self.count += n
        return out

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Variables ``a[i]`` and ``b[i]`` are the same channel; an unlabeled partner pins.

        Both are broadcast to one shape; pairs where both are unlabeled are ignored.
        """
        a, b = torch.broadcast_tensors(a.detach().long(), b.detach().long())
        for d in range(a.dim()):  # dims along which neither varies add nothing
            if a.shape[d] > 1 and not varies_along(a, d) and not varies_along(b, d):
                a, b = a.narrow(d, 0, 1), b.narrow(d, 0, 1)
        a, b = a.reshape(-1), b.reshape(-1)
        both = (a >= 0) & (b >= 0)
        if bool(both.any()):
            pa, pb = a[both], b[both]
            diff = pa != pb
            if bool(diff.any()):
                self._edges.append(_unique_pairs(pa[diff], pb[diff]))
        self.pin(a[(a >= 0) & (b < 0)])
        self.pin(b[(b >= 0) & (a < 0)])

    def pin(self, labels: torch.Tensor) -> None:
        """Never prune the channels of these labels (unlabeled entries are ignored)."""
        flat = labels.detach().reshape(-1).long()
        flat = flat[flat >= 0]
        if flat.numel():
            self._pins.append(torch.unique(flat))

    def resolve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(roots, pinned)``: each variable's component root and, per root, whether pinned."""
        parent = torch.arange(self.count, dtype=torch.long)
        if self._edges:
            e = torch.cat(self._edges, dim=1)
            a, b = e[0], e[1]
            while True:
                pa, pb = parent[a], parent[b]
                if bool((pa == pb).all()):
                    break
                m = torch.minimum(pa, pb)
                parent.scatter_reduce_(0, pa, m, reduce="amin")
                parent.scatter_reduce_(0, pb, m, reduce="amin")
                while True:  # pointer jumping to the roots
                    nxt = parent[parent]
                    if bool((nxt == parent).all()):
                        break
                    parent = nxt
        pinned = torch.zeros(self.count, dtype=torch.bool)
        if self._pins:
            pinned[parent[torch.cat(self._pins)]] = True
        return parent, pinned


def _unique_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    key = torch.unique(a * (1 << 31) + b)
    return torch.stack([key >> 31, key & ((1 << 31) - 1)])


def varies_along(labels: torch.Tensor, dim: int) -> bool:
    """Whether ``labels`` hold any variable that differs along ``dim`` (a channel dim).

    Example:
        >>> import torch
        >>> lab = torch.tensor([[0, 1], [0, 1]])
        >>> varies_along(lab, 0), varies_along(lab, 1)
        (False, True)
    """
    if labels.dim() == 0 or labels.shape[dim] <= 1:
        return False
    first = labels.narrow(dim, 0, 1)
    return not bool((labels == first).all())


def channel_vector(labels: torch.Tensor, dim: int, unifier: Unifier) -> torch.Tensor:
    """One variable per index along ``dim`` (``-1`` where none), as a consumer reads them.

    All variables in one slice ``labels.select(dim, c)`` become one channel; a slice mixing
    variables and unlabeled entries pins its variables (the channel cannot be removed alone).

    Example:
        >>> import torch
        >>> u = Unifier(); v = u.fresh(2)
        >>> channel_vector(torch.stack([v, v]), 1, u).tolist()
        [0, 1]
    """
    size = labels.shape[dim]
    rows = labels.movedim(dim, 0).reshape(size, -1)
    if rows.shape[1] == 0:
        return torch.full((size,), UNLABELED, dtype=torch.long)
    rep = rows.max(dim=1).values
    if not bool((rows == rep[:, None]).all()):
        unifier.unify(rows, rep[:, None].expand_as(rows))  # pins vars next to -1 entries
    return rep


def expand_channels(
    vector: torch.Tensor, shape: torch.Size | tuple[int, ...], dim: int
) -> torch.Tensor:
    """Labels of ``shape`` that are ``vector[c]`` at index ``c`` of ``dim``.

    Example:
        >>> import torch
        >>> expand_channels(torch.tensor([4, 5]), (1, 2, 2), 1)[0].tolist()
        [[4, 4], [5, 5]]
    """
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = vector.numel()
    return vector.view(view).expand(tuple(shape))
