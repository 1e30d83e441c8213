"""Dead neurons: units left with no input or no output connections after pruning.

Han et al. remove them too. A unit with no outputs is masked away; a unit with no
inputs outputs a constant, which is folded into the consumer's bias first, so the
network's function does not change. Chain links come from :func:`trace_structure`; channels
joined by residual adds or concatenations are found with the channel dependency graph
(:func:`prunelab.graph.dependency.trace_channels`): a coupled channel that no consumer reads
is removed from every layer producing it. The output is checked on the example batch: a
change is refused (the model is restored and :class:`~prunelab.surgery.SurgeryError` raised).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .graph.trace import Link, Structure, _columns
from .hooks import eval_forward
from .masks import effective_tensor, get_mask, is_masked, set_mask
from .selection import LINEAR_TYPES

__all__ = [
    "DeadNeuronReport",
    "find_dead_neurons",
    "prune_dead_neurons",
]


@dataclass
class DeadNeuronReport:
    """Dead neurons per producer layer: found (no inputs / no outputs) and removed."""

    no_input: dict[str, list[int]] = field(default_factory=dict)
    no_output: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    kept_unfoldable: dict[str, list[int]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{layer: {"no_input": n, "no_output": n, "removed": n, "kept_unfoldable": n}}``."""
        names = sorted(set(self.no_input) | set(self.no_output) | set(self.removed))
        return {
            n: {
                "no_input": len(self.no_input.get(n, [])),
                "no_output": len(self.no_output.get(n, [])),
                "removed": len(self.removed.get(n, [])),
                "kept_unfoldable": len(self.kept_unfoldable.get(n, [])),
            }
            for n in names
        }

    @property
    def total_removed(self) -> int:
        """Number of neurons removed over all layers."""
        return sum(len(v) for v in self.removed.values())


def _unit_alive_mask(module: nn.Module) -> torch.Tensor:
    """Units (rows/filters) of ``module`` that still have at least one incoming weight."""
    w = effective_tensor(module).detach()
    return w.reshape(w.shape[0], -1).ne(0).any(dim=1)


def find_dead_neurons(model: nn.Module, structure: Structure) -> DeadNeuronReport:
    """Find units with all incoming or all outgoing weights pruned (nothing is changed).

    A unit whose bias was already masked to zero and whose weights are all pruned is
    considered already removed and not reported again.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> from prunelab.graph import trace_structure
        >>> s = trace_structure(m, torch.zeros(1, 2))
        >>> with torch.no_grad():
        ...     m[0].weight[1] = 0
        >>> find_dead_neurons(m, s).no_input
        {'0': [1]}
    """
    mods = dict(model.named_modules())
    report = DeadNeuronReport()
    for link in structure.links:
        p, c = mods[link.producer], mods[link.consumer]
        has_in = _unit_alive_mask(p)
        cw = effective_tensor(c).detach()
        units = has_in.numel()
        has_out = torch.stack(
            [_columns(cw, j, link.block).ne(0).any() for j in range(units)]
        )
        gone = _already_removed(p, has_in, has_out)
        no_in = [j for j in range(units) if not has_in[j] and not gone[j]]
        no_out = [j for j in range(units) if not has_out[j] and not gone[j]]
        if no_in:
            report.no_input.setdefault(link.producer, []).extend(no_in)
        if no_out:
            report.no_output.setdefault(link.producer, []).extend(no_out)
    return report


def _already_removed(p: nn.Module, has_in: torch.Tensor, has_out: torch.Tensor) -> torch.Tensor:
    if getattr(p, "bias", None) is None:
        bias_zero = torch.ones_like(has_in)
    else:
        bias_zero = effective_tensor(p, "bias").detach().eq(0)
    return ~has_in & ~has_out & bias_zero


def _consumer_inputs(model: nn.Module, consumer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The consumer's input on batch ``x`` (eval mode)."""
    box: list[torch.Tensor] = []
    eval_forward(model, x, pre_hooks=[(consumer, lambda m, inp: box.append(inp[0].detach()))])
    return box[0]


def prune_dead_neurons(
    model: nn.Module,
    structure: Structure,
    example_input: torch.Tensor,
    *,
    max_rounds: int = 10,
    trust_links: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> DeadNeuronReport:
    """Prune dead neurons completely, keeping the network's function unchanged.

    A neuron with no outgoing weights is unused: its incoming weights and bias are masked.
    A neuron with no incoming weights outputs a constant (its activated bias); that constant's
    contribution is folded into the consumer's bias before the neuron's outgoing weights and
    bias are masked, so outputs do not change. Where folding is impossible (consumer without
    bias, or a padded convolution whose borders would see a different constant) the neuron is
    kept and reported in ``kept_unfoldable``. Removing neurons can kill others, so this runs
    until nothing changes.

    Args:
        model: the pruned network (modified in place).
        structure: from :func:`trace_structure`.
        example_input: a batch used to read the constant outputs of input-dead neurons.
        max_rounds: bound on the fixed-point iterations.
        trust_links: accept a structure whose links ``torch.fx`` did not verify (links you
            built yourself); by default such a structure is refused, since a link joined by
            a skip connection would change the output.
        atol, rtol: the output check's tolerance (``atol + rtol * max|output|``).

    Returns:
        The :class:`DeadNeuronReport` accumulated over all rounds.

    Raises:
        SurgeryError: the structure is not verified (and ``trust_links`` is false), or the
            output changed on ``example_input`` (the model is restored first).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> from prunelab.graph import trace_structure
        >>> s = trace_structure(m, torch.zeros(1, 2))
        >>> _ = set_mask(m[2], "weight", torch.tensor([[1.0, 0.0, 1.0]]))
        >>> prune_dead_neurons(m, s, torch.zeros(1, 2)).removed
        {'0': [1]}
    """
    from .surgery import SurgeryError

    if structure.links and not structure.verified and not trust_links:
        raise SurgeryError(
            f"cannot verify the layer links of {type(model).__name__} (torch.fx cannot trace "
            "it), so removing dead neurons might change its output through a skip connection; "
            "pass trust_links=True if the links are right"
        )
    snapshot = copy.deepcopy(model)
    before_out = eval_forward(model, example_input)
    try:
        total = _prune_dead(model, structure, example_input, max_rounds)
        _unused_coupled_channels(model, example_input, total)
    except Exception:
        _restore(model, snapshot)
        raise
    after = eval_forward(model, example_input)
    diff = float((after.float() - before_out.float()).abs().max()) if after.numel() else 0.0
    scale = float(before_out.float().abs().max()) if before_out.numel() else 0.0
    if diff > atol + rtol * scale:
        _restore(model, snapshot)
        raise SurgeryError(
            f"removing dead neurons would change the output of {type(model).__name__} by "
            f"{diff:.3g}; the model is left unchanged"
        )
    return total


def _restore(model: nn.Module, snapshot: nn.Module) -> None:
    """Put ``model`` back to ``snapshot`` in place (masks installed since are undone)."""
    model.__class__ = snapshot.__class__
    model.__dict__ = snapshot.__dict__


def _unused_coupled_channels(
    model: nn.Module, example_input: torch.Tensor, total: DeadNeuronReport
) -> None:
    """Mask coupled channels (residual streams, concatenations) that no consumer reads."""
    from .graph.dependency import GraphError, trace_channels
    from .graph.resize import owner

    try:
        graph = trace_channels(model, example_input)
    except GraphError:
        return
    for g in graph.groups:
        reads = [
            (m, p) for m, p in zip(g.members, g.positions, strict=True) if m.role == "in"
        ]
        if not reads or len(g.modules("out")) < 2:
            continue  # single-producer channels are the chain links' job
        unused = torch.ones(g.units, dtype=torch.bool)
        for m, p in reads:
            w = effective_tensor(*owner(model, m.tensor)).detach()
            per = w.ne(0).movedim(m.dim, 0).reshape(w.shape[m.dim], -1).any(dim=1).cpu()
            unused &= ~per[p].any(dim=1)
        if not bool(unused.any()):
            continue
        gone = unused.nonzero().flatten()
        for m, p in zip(g.members, g.positions, strict=True):
            mod, attr = owner(model, m.tensor)
            if m.role == "buffer" or not isinstance(getattr(mod, attr, None), torch.Tensor):
                continue
            if attr not in mod._parameters and f"{attr}_orig" not in mod._parameters:
                continue
            old = get_mask(mod, attr)
            mask = old.clone() if old is not None else torch.ones_like(effective_tensor(mod, attr))
            mask.index_fill_(m.dim, p[gone].flatten().to(mask.device), 0.0)
            set_mask(mod, attr, mask)
        for name in g.modules("out"):
            total.removed.setdefault(name, []).extend(gone.tolist())


def _prune_dead(
    model: nn.Module, structure: Structure, example_input: torch.Tensor, max_rounds: int
) -> DeadNeuronReport:
    mods = dict(model.named_modules())
    total = DeadNeuronReport()
    for _ in range(max_rounds):
        found = find_dead_neurons(model, structure)
        changed = False
        for link in structure.links:
            p, c = mods[link.producer], mods[link.consumer]
            no_in = found.no_input.get(link.producer, [])
            no_out = set(found.no_output.get(link.producer, []))
            dead = sorted(set(no_in) | no_out)
            if not dead:
                continue
            removable = _fold_constants(model, p, c, link, [j for j in no_in if j not in no_out],
                                        example_input, total)
            removable |= no_out
            if not removable:
                continue
            _mask_units(p, c, link, sorted(removable))
            total.removed.setdefault(link.producer, []).extend(sorted(removable))
            changed = True
        for k, v in found.no_input.items():
            total.no_input.setdefault(k, []).extend(v)
        for k, v in found.no_output.items():
            total.no_output.setdefault(k, []).extend(v)
        if not changed:
            break
    for d in (total.no_input, total.no_output, total.removed, total.kept_unfoldable):
        for k in d:
            d[k] = sorted(set(d[k]))
    return total


def _fold_constants(
    model: nn.Module,
    p: nn.Module,
    c: nn.Module,
    link: Link,
    units: list[int],
    x: torch.Tensor,
    report: DeadNeuronReport,
) -> set[int]:
    """Fold the constant outputs of input-dead ``units`` into ``c``'s bias; return the folded."""
    if not units:
        return set()
    inputs = _consumer_inputs(model, c, x)
    cw = effective_tensor(c).detach()
    done: set[int] = set()
    for j in units:
        if isinstance(c, LINEAR_TYPES):
            flat = inputs.reshape(inputs.shape[0], -1)
            v = flat[:, j * link.block : (j + 1) * link.block]
            const = v.mean(dim=0)
            delta = _columns(cw, j, link.block) @ const
        else:
            v = inputs[:, j]
            const = v.mean()
            padded = any(int(pad) != 0 for pad in _as_tuple(getattr(c, "padding", 0)))
            if padded and bool(const != 0):
                report.kept_unfoldable.setdefault(link.producer, []).append(j)
                continue
            delta = cw[:, j].reshape(cw.shape[0], -1).sum(dim=1) * const
        if not torch.allclose(v, v.reshape(-1)[0].expand_as(v) if v.numel() else v, atol=1e-6):
            # Not constant: the unit is not input-dead in effect (e.g. BatchNorm in training).
            report.kept_unfoldable.setdefault(link.producer, []).append(j)
            continue
        if bool(delta.abs().max() > 0) if delta.numel() else False:
            if getattr(c, "bias", None) is None:
                report.kept_unfoldable.setdefault(link.producer, []).append(j)
                continue
            with torch.no_grad():
                raw = c._parameters["bias_orig"] if is_masked(c, "bias") else c.bias
                raw.add_(delta.to(raw.dtype))
        done.add(j)
    return done


def _as_tuple(v: object) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _mask_units(p: nn.Module, c: nn.Module, link: Link, units: list[int]) -> None:
    """Mask producer rows (weights and bias) and consumer columns of ``units``."""
    idx = torch.tensor(units, dtype=torch.long)
    pm = get_mask(p)
    pmask = pm.clone() if pm is not None else torch.ones_like(p.weight)
    pmask[idx] = 0
    set_mask(p, "weight", pmask)
    if getattr(p, "bias", None) is not None:
        bm = get_mask(p, "bias")
        bmask = bm.clone() if bm is not None else torch.ones_like(effective_tensor(p, "bias"))
        bmask[idx] = 0
        set_mask(p, "bias", bmask)
    cm = get_mask(c)
    cmask = cm.clone() if cm is not None else torch.ones_like(effective_tensor(c))
    for j in units:
        _columns(cmask, j, link.block).zero_()
    set_mask(c, "weight", cmask)
