"""The result of channel tracing: groups of tensor slices removed together.

:class:`ChannelGroup` lists, for each unit (a removable set of channels), its indices along
each member tensor's dim; :func:`resolve_groups` turns the tracer's labels into groups.

Example:
    >>> Member("layer1.0.conv1.weight", 0, "out").module
    'layer1.0.conv1'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import PrunelabError

if TYPE_CHECKING:
    from .propagate import Labeler

__all__ = ["ChannelGraph", "ChannelGroup", "GraphError", "Member", "resolve_groups"]



class GraphError(PrunelabError, ValueError):
    """The model cannot be traced, or nothing in it can be pruned (the message says why)."""


@dataclass(frozen=True)
class Member:
    """One tensor slice family of a group: ``tensor`` is cut along ``dim``.

    Attributes:
        tensor: qualified name of a parameter or buffer (``"layer1.0.conv1.weight"``).
        dim: the dimension cut.
        role: ``"out"`` (a producer's output rows: what importance is measured on),
            ``"in"`` (a consumer's input columns), ``"norm"`` (per-channel scale / shift),
            ``"buffer"`` (running statistics), ``"head"`` (per-head attention tables),
            ``"param"`` (a tensor used directly in the forward, e.g. a class token).
    """

    tensor: str
    dim: int
    role: str

    @property
    def module(self) -> str:
        """Name of the module owning the tensor (``""`` for the root)."""
        return self.tensor.rpartition(".")[0]

    @property
    def name(self) -> str:
        """The tensor's attribute name in its module."""
        return self.tensor.rpartition(".")[2]


@dataclass
class ChannelGroup:
    """Channels removed together: unit ``u`` is ``positions[i][u]`` along each member's dim.

    Attributes:
        index: the group's number.
        members: the tensor slice families.
        positions: per member, a long tensor ``[units, count]`` of indices along its dim.
    """

    index: int
    members: tuple[Member, ...]
    positions: tuple[torch.Tensor, ...]

    @property
    def units(self) -> int:
        """How many units (removable channel sets) the group has."""
        return int(self.positions[0].shape[0])

    def modules(self, *roles: str) -> list[str]:
        """Names of the modules with members (of the given roles, all when none), in order."""
        out: list[str] = []
        for m in self.members:
            if (not roles or m.role in roles) and m.module not in out:
                out.append(m.module)
        return out

    def describe(self) -> str:
        """A short line: the producing modules and how many others the group touches."""
        prod = self.modules("out")
        rest = len(set(self.modules()) - set(prod))
        head = ", ".join(prod[:3]) + (f" +{len(prod) - 3}" if len(prod) > 3 else "")
        return f"{head} ({self.units} units; {rest} more modules)"


@dataclass
class ChannelGraph:
    """The coupled channel groups of a model, and what the tracer could not follow.

    Attributes:
        groups: the prunable groups.
        pinned_ops: ``{operation: times seen}`` for operations whose channels were pinned
            because the tracer does not know how they move channels.
        layernorms: ``{module: channel dim of its input}`` for LayerNorms over a prunable
            dimension (their statistics span the channels; see ``prune_channels``).
        heads: ``{attention module: head size}`` where whole heads are units.
        grouped: ``{conv module: out channels per group}`` for depthwise convolutions (their
            ``groups`` follows the channel count).
    """

    groups: list[ChannelGroup]
    pinned_ops: dict[str, int] = field(default_factory=dict)
    layernorms: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    grouped: dict[str, int] = field(default_factory=dict)

    @property
    def units(self) -> int:
        """Units over all groups."""
        return sum(g.units for g in self.groups)


# ----------------------------------------------------------------------------- grouping


def _resolve_param_slices(
    shape: Sequence[int], flat: torch.Tensor
) -> tuple[int, torch.Tensor] | None:
    """``(dim, indices)`` when the flat entries are whole slices along one dim, else None."""
    numel = math.prod(shape)
    coords = torch.stack(torch.unravel_index(flat, tuple(shape)), dim=1)
    for d, size in enumerate(shape):
        if size <= 1:
            continue
        idx = torch.unique(coords[:, d])
        if idx.numel() < size and flat.numel() == idx.numel() * (numel // size):
            return d, idx
    return None


def _tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    out = {n.removesuffix("_orig"): tuple(p.shape) for n, p in model.named_parameters()}
    out.update({n: tuple(b.shape) for n, b in model.named_buffers()})
    return out


def resolve_groups(
    lab: Labeler, ignore: Sequence[str], model: nn.Module
) -> list[tuple[tuple[Member, ...], tuple[torch.Tensor, ...]]]:
    """Resolve the labels to groups: ``(members, positions [units, count] per member)``."""
    u = lab.u
    keys: dict[tuple[str, int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, dim, role, pos, var in lab.records:
        keys.setdefault((name, dim, role), []).append((pos, var))
    # The same tensor entry seen twice (a module called twice, shared weights) is one channel.
    by_slice: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for (name, dim, _), lst in keys.items():
        by_slice.setdefault((name, dim), []).extend(lst)
    for lst in by_slice.values():
        pos = torch.cat([p for p, _ in lst])
        var = torch.cat([v for _, v in lst])
        uniq, inv = torch.unique(pos, return_inverse=True)
        rep = torch.full((uniq.numel(),), -1, dtype=torch.long)
        rep.scatter_reduce_(0, inv, var, reduce="amax")
        u.unify(var, rep[inv])
    roots, pinned = u.resolve()
    members = [Member(name, dim, role) for name, dim, role in keys]
    for m, lst in zip(members, keys.values(), strict=True):
        if m.role in ("out", "norm", "head") and any(fnmatchcase(m.module, p) for p in ignore):
            for _, v in lst:
                pinned[roots[v]] = True
    # one table of (component, member, position), sorted
    comp_l, key_l, pos_l = [], [], []
    for k, lst in enumerate(keys.values()):
        pos = torch.cat([p for p, _ in lst])
        comp = roots[torch.cat([v for _, v in lst])]
        ok = ~pinned[comp]
        comp_l.append(comp[ok])
        pos_l.append(pos[ok])
        key_l.append(torch.full((int(ok.sum()),), k, dtype=torch.long))
    if not comp_l or sum(c.numel() for c in comp_l) == 0:
        return []
    comp, key, pos = torch.cat(comp_l), torch.cat(key_l), torch.cat(pos_l)
    _, comp = torch.unique(comp, return_inverse=True)
    n_keys, n_pos = len(members), int(pos.max()) + 1
    code = torch.unique((comp * n_keys + key) * n_pos + pos)  # sorted and deduplicated
    pos = code % n_pos
    ck = code // n_pos
    seg, counts = torch.unique_consecutive(ck, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    seg_comp, seg_key = (seg // n_keys).tolist(), (seg % n_keys).tolist()
    sigs: dict[int, list[tuple[int, int, int]]] = {}
    for c, k, n, s0 in zip(seg_comp, seg_key, counts.tolist(), starts.tolist(), strict=True):
        sigs.setdefault(c, []).append((k, n, s0))
    buckets: dict[tuple[tuple[int, int], ...], list[list[int]]] = {}
    for segs in sigs.values():
        sig = tuple((k, n) for k, n, _ in segs)
        buckets.setdefault(sig, []).append([s0 for _, _, s0 in segs])
    shapes = _tensor_shapes(model)
    out = []
    for sig, unit_starts in buckets.items():
        mems = [members[k] for k, _ in sig]
        if not any(m.role == "out" for m in mems):
            continue  # nothing produces these channels (e.g. only a parameter's entries)
        st = torch.tensor(unit_starts, dtype=torch.long)  # [units, members]
        positions = [pos[st[:, j:j + 1] + torch.arange(n)] for j, (_, n) in enumerate(sig)]
        if any(m.dim == -1 for m in mems):
            got = _resolve_flat(mems, positions, shapes)
            if got is None:
                continue
            mems, positions = got
        order = torch.argsort(positions[0][:, 0], stable=True)
        out.append((tuple(mems), tuple(p[order] for p in positions)))
    return out


def _resolve_flat(
    mems: list[Member], positions: list[torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[list[Member], list[torch.Tensor]] | None:
    """Turn entries of directly used parameters into slices along one dim (None: cannot)."""
    new_m, new_p = [], []
    for m, p in zip(mems, positions, strict=True):
        if m.dim != -1:
            new_m.append(m)
            new_p.append(p)
            continue
        found = [_resolve_param_slices(shapes[m.tensor], row) for row in p]
        if any(f is None for f in found) or len({f[0] for f in found}) != 1 or len(
            {f[1].numel() for f in found}
        ) != 1:
            return None
        new_m.append(Member(m.tensor, found[0][0], m.role))
        new_p.append(torch.stack([f[1] for f in found]))
    return new_m, new_p

