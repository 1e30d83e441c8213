"""Weight sharing with centroid fine-tuning that stays exact in any training loop.

:class:`WeightSharing` clusters the surviving weights of each selected layer
(:func:`~prunelab.sharing.kmeans.kmeans_1d`), replaces each by its centroid and keeps them
shared while the model trains:

* **Gradient.** A hook on the trainable tensor (``weight_orig`` of a masked layer, else
  ``weight``; the ``Parameter`` object is kept) replaces the incoming gradient, before it
  is accumulated into ``.grad``, by the *sum* of the gradients of the weight's cluster,
  broadcast to every member; non-members (pruned entries) get 0. This is the centroid
  gradient of the paper (Han et al. 2016, Sec. 3.1): the loss depends on a centroid ``c``
  through all its members, so ``dL/dc = sum_i dL/dW_i``. Every member then gets the same
  gradient, and an optimizer whose update is elementwise (SGD with momentum, Nesterov and
  weight decay, Adam, AdamW, RMSprop, ...) gives members with equal weight, gradient and
  state equal updates, bit for bit: each member moves exactly as the centroid would if it
  were the parameter (plain SGD: ``c <- c - lr * sum_i g_i``). The mean instead of the sum
  would not be the gradient of anything: it divides each centroid's step by its cluster's
  size (a cluster of 10,000 weights would barely move). Because the sum grows with the
  cluster, fine-tune with SGD at a lower learning rate than the dense network's (Adam is
  insensitive to the scale). Hooking the gradient before accumulation keeps gradient
  accumulation over several backward passes right, and gradient clipping, L1 terms and
  loss scaling (``torch.amp.GradScaler``; an overflow shows as NaN in every member) act
  alike on all members.
* **Snap.** :meth:`WeightSharing.snap` after each optimizer step (the :class:`Trainer`
  callback hook ``on_step_end`` calls it) reads each centroid back from its members and
  writes ``weight = codebook[index]``: with an elementwise optimizer the members are
  already equal and nothing changes; where something else made them drift (an all-reduce
  summing in different orders, a factored optimizer) the centroid becomes the members'
  mean. So after every snap each layer's nonzero weights take at most ``2**bits`` distinct
  values of the weight's dtype, exactly, and :meth:`~WeightSharing.codebooks` and
  :meth:`~WeightSharing.indices` describe them (what an exporter stores).

Masks (:mod:`prunelab.masks`): a masked layer's members are its unmasked entries, an
unmasked layer's its nonzero entries; the rest stays exactly zero and belongs to no cluster
(no gradient, and the snap writes 0). Inside :func:`~prunelab.masks.masked_training` the mask
hook and the sharing hook both act and agree. A mask changed after :meth:`attach` (gradual
pruning) is followed: newly pruned members leave their cluster at the next backward pass
or snap; entries unpruned later stay zero until the next :meth:`attach`.

The sums are exact integer sums (:func:`~prunelab.sharing.kmeans.cluster_sums`): the same
bits on CPU and CUDA whatever the order of the additions. The gradient hook needs no host
synchronisation; the snap one per layer on CUDA (is everything already shared?). Pass the
optimizer to :meth:`~WeightSharing.attach` when it already holds state: the separate
weights' momentum would otherwise pull the members of a cluster apart until each snap.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> sharing = WeightSharing(bits=2)
    >>> report = sharing.attach(model)
    >>> [r.clusters for r in report.layers]
    [4, 4]
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     model(torch.randn(4, 8)).square().sum().backward()
    ...     opt.step()
    ...     sharing.snap()
    >>> len(torch.unique(model[0].weight.detach()))
    4
    >>> w, c, i = model[0].weight, sharing.codebooks()["0"], sharing.indices()["0"]
    >>> bool(torch.equal(w, c[i]))
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..masks import get_mask, raw_parameter
from ..selection import layer_kind, select_layers
from ..training import Callback, Trainer
from .bits import BitsSpec, check_bits, check_spec, resolve_bits
from .kmeans import INITS, cluster_sums, kmeans_1d
from .report import LayerSharing, SharingReport

__all__ = ["STATE_FORMAT", "WeightSharing", "share_weights"]

#: ``meta["format"]`` of :meth:`WeightSharing.state_dict`.
STATE_FORMAT = "prunelab.weight_sharing"
_STATE_VERSION = 1

# id(parameter) -> (weakref to it, weakref to the WeightSharing sharing it): one sharer each.
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}


def _owner(param: nn.Parameter) -> WeightSharing | None:
    entry = _OWNERS.get(id(param))
    if entry is None or entry[0]() is not param:
        return None
    return entry[1]()


class _Layer:
    """The sharing of one weight: cluster of each entry, codebook, and the gradient hook.

    ``slot`` (int32, flat, on the weight's device) is 0 for an entry in no cluster, else
    1 + its cluster; ``positions`` (int64) and ``labels`` (int32) list the members and their
    clusters (the hook works on members only: a pruned layer's gradient sums cost what its
    surviving weights do); ``codebook`` (the weight's dtype) holds one value per cluster;
    ``rep`` is the position of one member of each cluster (0 when empty).
    """

    def __init__(self, name: str, module: nn.Module, bits: int, slot: torch.Tensor,
                 codebook: torch.Tensor) -> None:
        self.name = name
        self.module = module
        self.kind = layer_kind(module)
        self.bits = bits
        self.param = raw_parameter(module, "weight")
        self.slot = slot.to(device=self.param.device, dtype=torch.int32).reshape(-1)
        self.codebook = codebook.to(device=self.param.device, dtype=self.param.dtype)
        self.handle: Any = None
        self._mask_token: tuple[int, int] | None = self._token()
        self._recount()

    # -------------------------------------------------------------- membership

    def _token(self) -> tuple[int, int] | None:
        mask = get_mask(self.module, "weight")
        return None if mask is None else (id(mask), mask._version)

    def _recount(self) -> None:
        k = self.codebook.numel()
        slot = self.slot.to(torch.int64)
        self.positions = torch.nonzero(slot).reshape(-1)
        self.labels = (slot.index_select(0, self.positions) - 1).to(torch.int32)
        self.counts = torch.bincount(self.labels.to(torch.int64), minlength=k)
        rep = torch.full((k,), slot.numel(), dtype=torch.int64, device=slot.device)
        rep.scatter_reduce_(0, self.labels.to(torch.int64), self.positions, "amin")
        self.rep = torch.where(self.counts > 0, rep, 0)

    def sync_members(self) -> None:
        """Drop members the mask now prunes (a host check of the mask's version first)."""
        token = self._token()
        if token == self._mask_token:
            return
        self._mask_token = token
        mask = get_mask(self.module, "weight")
        if mask is None:
            return
        with torch.no_grad():
            dropped = (self.slot > 0) & (mask.reshape(-1).to(self.slot.device) == 0)
            if bool(dropped.any()):
                self.slot[dropped] = 0
                self._recount()

    def _on(self, device: torch.device) -> None:
        if self.slot.device != device:  # the model moved after attach
            for key in ("slot", "codebook", "positions", "labels", "counts", "rep"):
                setattr(self, key, getattr(self, key).to(device))

    # -------------------------------------------------------------- the two steps

    def _scatter(self, per_cluster: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A flat tensor like ``like``: ``per_cluster[label]`` at members, 0 elsewhere."""
        out = like.new_zeros(like.numel())
        return out.index_copy_(0, self.positions, per_cluster.index_select(0, self.labels))

    def grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of each member: its cluster's summed gradient (0 off the clusters)."""
        self.sync_members()
        self._on(grad.device)
        members = grad.reshape(-1).index_select(0, self.positions)
        sums = cluster_sums(members, self.labels, self.codebook.numel())
        return self._scatter(sums.to(grad.dtype), grad).view_as(grad)

    @torch.no_grad()
    def snap(self) -> None:
        """Read the centroids back from the members, then write ``weight = codebook[index]``.

        The common case (members equal, everything else zero) costs gathers of the members,
        a count of nonzeros and one host synchronisation on CUDA; otherwise each centroid
        becomes its members' value when they agree, else their mean.
        """
        self.sync_members()
        w = self.param.detach()
        self._on(w.device)
        flat = w.reshape(-1)
        first = torch.where(self.counts > 0, flat.index_select(0, self.rep), self.codebook)
        members = flat.index_select(0, self.positions)
        agree = members == first.index_select(0, self.labels)
        # nonzeros of the whole weight == nonzeros of its members: the rest is zero
        ok = agree.all() & (torch.count_nonzero(flat) == torch.count_nonzero(members))
        if bool(ok):
            self.codebook = first
            return
        k = self.codebook.numel()
        drifted = torch.zeros(k, dtype=torch.int32, device=w.device)
        drifted.index_add_(0, self.labels, (~agree).int())
        means = cluster_sums(members, self.labels, k) / self.counts.clamp(min=1)
        new = torch.where(drifted == 0, first, means.to(w.dtype))
        self.codebook = torch.where(self.counts > 0, new, self.codebook)
        self.write()

    @torch.no_grad()
    def write(self) -> None:
        """``weight = codebook[index]`` (0 off the clusters), in place."""
        w = self.param.detach()
        self._on(w.device)
        w.copy_(self._scatter(self.codebook.to(w.dtype), w).view_as(w))

    # -------------------------------------------------------------- views

    def index(self) -> torch.Tensor:
        return (self.slot.to(torch.int64) - 1).view(self.param.shape)

    def max_error(self, weight: torch.Tensor) -> float:
        if not self.positions.numel():
            return 0.0
        w = weight.detach().reshape(-1).index_select(0, self.positions).double()
        c = self.codebook.double().index_select(0, self.labels)
        return float((w - c).abs().max())


def _surviving(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """Boolean, the weight's shape: the unmasked entries, or the nonzero ones unmasked."""
    mask = get_mask(module, "weight")
    return (mask != 0) if mask is not None else (weight != 0)


def _cluster(weight: torch.Tensor, surviving: torch.Tensor, bits: int, init: str,
             max_iter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """``(slot, codebook, iterations, converged)`` of one weight."""
    values = weight.detach()[surviving]
    result = kmeans_1d(values, 2**bits, init=init, max_iter=max_iter, seed=seed)
    # Codebook entries are values of the weight's dtype: drop empty clusters and merge
    # centroids that round to one value, so entries are distinct and all in use.
    used = result.counts > 0
    rounded = result.centroids.to(weight.dtype)
    codebook, inverse = torch.unique_consecutive(rounded[used], return_inverse=True)
    relabel = torch.full_like(result.counts, -1)
    relabel[used] = inverse
    slot = torch.zeros(weight.numel(), dtype=torch.int32, device=weight.device)
    slot[surviving.reshape(-1)] = (relabel[result.labels] + 1).to(torch.int32)
    return slot, codebook, result.iterations, result.converged


class WeightSharing(Callback):
    """Per-layer k-means weight sharing with centroid fine-tuning (Deep Compression).

    Use it like an optimizer wrapper: :meth:`attach` the model (clusters and shares the
    weights, installs the gradient hooks), train with any loop calling :meth:`snap` after each
    optimizer step (or pass the object to :class:`~prunelab.training.Trainer` as a callback),
    :meth:`detach` to train freely again. See the module docstring for the rules.

    Args:
        bits: ``None`` (8 bits for conv, 5 for fc layers), one width, or a mapping of kinds
            (``"fc"``, ``"conv"``) and layer-name patterns to widths
            (:func:`~prunelab.sharing.bits.resolve_bits`), each in 1..16.
        layers: glob pattern(s) of the layers to share (all Linear/Conv layers when
            ``None``; :func:`prunelab.selection.select_layers`).
        exclude: patterns removed from the selection.
        init: centroid initialisation: ``"linear"`` (the paper's), ``"density"``, ``"random"``.
        max_iter: most k-means iterations per layer.
        seed: seed of ``init="random"``.

    Raises:
        ValueError: a bad width, init or ``max_iter`` (layer patterns are checked by
            :meth:`attach`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(4, 4)
        >>> sharing = WeightSharing(bits=1)
        >>> sharing.attach(layer).layers[0].clusters, len(torch.unique(layer.weight.detach()))
        (2, 2)
        >>> sharing.detach()
    """

    def __init__(
        self,
        bits: BitsSpec = None,
        *,
        layers: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        init: str = "linear",
        max_iter: int = 300,
        seed: int = 0,
    ) -> None:
        check_spec(bits)
        if init not in INITS:
            raise ValueError(f"init={init!r} is unknown; allowed: {', '.join(INITS)}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
            raise ValueError(f"max_iter={max_iter!r} is invalid; allowed: an integer >= 0")
        self.bits = dict(bits) if isinstance(bits, Mapping) else bits
        self.layers = layers
        self.exclude = exclude
        self.init = init
        self.max_iter = max_iter
        self.seed = int(seed)
        self._layers: dict[str, _Layer] = {}
        self._attached = False
        self._pending: dict[str, tuple[int, torch.Tensor, torch.Tensor]] | None = None
        self.report: SharingReport | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def attached(self) -> bool:
        """Whether the hooks are installed."""
        return self._attached

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> SharingReport:
        """Cluster the selected layers, share their weights and install the gradient hooks.

        After a :meth:`load_state_dict` the saved clusters are installed instead of running
        k-means. A model whose weights are already shared (few distinct values) keeps them:
        attaching it again reproduces its clusters.

        Args:
            model: the network (modified in place; its ``Parameter`` objects are kept).
            optimizer: when given, its state of the shared tensors is cleared (momentum
                and Adam moments of the separate weights mean nothing for the centroids;
                the state restarts at the next step, for every member alike).

        Returns:
            The :class:`~prunelab.sharing.report.SharingReport` (also kept as ``.report``).

        Raises:
            RuntimeError: already attached.
            ValueError: a layer pattern or bits pattern matches no layer, a layer is shared
                by another attached :class:`WeightSharing`, or a loaded state does not fit.
        """
        if self._attached:
            raise RuntimeError("WeightSharing is already attached; detach() it first")
        selected = select_layers(model, self.layers, exclude=self.exclude)
        unique: dict[str, nn.Module] = {}
        seen: set[int] = set()
        for name, module in selected.items():  # tied weights: shared once, by the first
            param = raw_parameter(module, "weight")
            if id(param) not in seen:
                seen.add(id(param))
                unique[name] = module
        for name, module in unique.items():
            other = _owner(raw_parameter(module, "weight"))
            if other is not None and other is not self and other.attached:
                raise ValueError(f"layer {name!r} is already shared by another "
                                 "WeightSharing; detach() that one first")
        if self._pending is not None:
            layers, rows = self._from_state(unique, self._pending)
        else:
            layers, rows = self._from_kmeans(unique, resolve_bits(unique, self.bits))
        self._install(layers, optimizer)
        self._pending = None
        self.report = SharingReport(tuple(rows))
        return self.report

    def _from_kmeans(
        self, modules: Mapping[str, nn.Module], bits: Mapping[str, int]
    ) -> tuple[dict[str, _Layer], list[LayerSharing]]:
        layers, rows = {}, []
        for name, module in modules.items():
            param = raw_parameter(module, "weight")
            w = param.detach()
            surviving = _surviving(module, w)
            slot, codebook, iterations, converged = _cluster(
                w, surviving, bits[name], self.init, self.max_iter, self.seed)
            layer = _Layer(name, module, bits[name], slot, codebook)
            layers[name] = layer
            rows.append(self._row(layer, w, iterations, converged))
        return layers, rows

    def _from_state(
        self, modules: Mapping[str, nn.Module],
        state: Mapping[str, tuple[int, torch.Tensor, torch.Tensor]],
    ) -> tuple[dict[str, _Layer], list[LayerSharing]]:
        if set(state) != set(modules):
            raise ValueError(
                f"the loaded state shares layers {sorted(state)} but the selection is "
                f"{sorted(modules)}; construct WeightSharing(layers=...) to match"
            )
        layers, rows = {}, []
        for name, module in modules.items():
            bits, codebook, index = state[name]
            param = raw_parameter(module, "weight")
            if tuple(index.shape) != tuple(param.shape):
                raise ValueError(f"state index of {name!r} has shape {tuple(index.shape)}, "
                                 f"the weight {tuple(param.shape)}")
            members = index.reshape(-1) >= 0
            mask = get_mask(module, "weight")
            if mask is not None and bool((members & (mask.reshape(-1).cpu() == 0)).any()):
                raise ValueError(f"state index of {name!r} puts pruned entries in clusters "
                                 "(the mask changed since it was saved)")
            layer = _Layer(name, module, bits, index.reshape(-1) + 1, codebook)
            layers[name] = layer
            rows.append(self._row(layer, param.detach(), 0, True))
        return layers, rows

    @staticmethod
    def _row(layer: _Layer, weight: torch.Tensor, iterations: int,
             converged: bool) -> LayerSharing:
        return LayerSharing(
            layer=layer.name, kind=layer.kind, bits=layer.bits,
            clusters=int((layer.counts > 0).sum()), surviving=int(layer.counts.sum()),
            total=weight.numel(), max_error=layer.max_error(weight),
            iterations=iterations, converged=converged,
            weight_bits=torch.finfo(weight.dtype).bits,
        )

    def detach(self) -> None:
        """Remove the gradient hooks: the weights keep their shared values and train freely.

        :meth:`codebooks`, :meth:`indices` and :meth:`state_dict` still describe the last
        snap. Detaching a detached object does nothing.
        """
        for layer in self._layers.values():
            if layer.handle is not None:
                layer.handle.remove()
                layer.handle = None
            if _owner(layer.param) is self:
                del _OWNERS[id(layer.param)]
        self._attached = False

    def snap(self) -> None:
        """After an optimizer step: read the centroids back and set ``weight = codebook[index]``.

        Raises:
            RuntimeError: not attached.
        """
        if not self._attached:
            raise RuntimeError("WeightSharing is not attached; call attach(model) first")
        for layer in self._layers.values():
            layer.snap()

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """:class:`~prunelab.training.Trainer` callback: :meth:`snap` after every step."""
        self.snap()

    # ------------------------------------------------------------------ views and state

    def _need_layers(self) -> None:
        if not self._layers:
            raise RuntimeError("WeightSharing has no layers yet; call attach(model) first")

    def codebooks(self) -> dict[str, torch.Tensor]:
        """``{layer: codebook}``: the shared values (the weight's dtype and device), one per
        cluster (ascending after k-means; fine-tuning may reorder them).

        Raises:
            RuntimeError: never attached.
        """
        self._need_layers()
        return {n: layer.codebook.clone() for n, layer in self._layers.items()}

    def indices(self) -> dict[str, torch.Tensor]:
        """``{layer: index}``: int64 of the weight's shape, the cluster of each entry, -1 for
        entries in none (pruned); ``weight == where(index >= 0, codebook[index], 0)``.

        Raises:
            RuntimeError: never attached.
        """
        self._need_layers()
        return {n: layer.index() for n, layer in self._layers.items()}

    def state_dict(self) -> dict[str, Any]:
        """``{"meta": JSON-able dict, "tensors": {name: CPU tensor}}``, no pickle.

        ``tensors`` holds ``<layer>.codebook`` and ``<layer>.index`` (int32, -1 for pruned
        entries); ``prunelab.checkpoint.save_tensors(path, s["tensors"], s["meta"])`` writes
        it as one safetensors file.

        Raises:
            RuntimeError: never attached.
        """
        self._need_layers()
        meta = {
            "format": STATE_FORMAT, "version": _STATE_VERSION,
            "init": self.init, "max_iter": self.max_iter, "seed": self.seed,
            "layers": {n: {"bits": layer.bits, "kind": layer.kind,
                           "clusters": layer.codebook.numel(),
                           "shape": list(layer.param.shape)}
                       for n, layer in self._layers.items()},
        }
        tensors = {}
        for n, layer in self._layers.items():
            tensors[f"{n}.codebook"] = layer.codebook.detach().cpu().clone()
            tensors[f"{n}.index"] = layer.index().to(torch.int32).cpu()
        return {"meta": meta, "tensors": tensors}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore clusters saved by :meth:`state_dict`.

        Attached: the attached layers (the same set) take the saved clusters now and the
        weights are set to them. Not attached: the next :meth:`attach` installs them
        instead of running k-means.

        Raises:
            ValueError: not a state of this format, or tensors that do not fit.
        """
        parsed = _parse_state(state)
        if not self._attached:
            self._pending = parsed
            return
        modules = {n: layer.module for n, layer in self._layers.items()}
        layers, rows = self._from_state(modules, parsed)  # validates before changing anything
        self.detach()
        self._install(layers)
        self.report = SharingReport(tuple(rows))

    def _install(self, layers: dict[str, _Layer],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self._layers = layers
        for layer in layers.values():
            layer.write()
            if layer.param.requires_grad:
                layer.handle = layer.param.register_hook(layer.grad_hook)
            _OWNERS[id(layer.param)] = (weakref.ref(layer.param), weakref.ref(self))
            if optimizer is not None:
                optimizer.state.pop(layer.param, None)
        self._attached = True


def _parse_state(state: Mapping[str, Any]) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """``{layer: (bits, codebook, index)}`` from a state dict, validated."""
    meta = state.get("meta") if isinstance(state, Mapping) else None
    tensors = state.get("tensors") if isinstance(state, Mapping) else None
    if not isinstance(meta, Mapping) or not isinstance(tensors, Mapping):
        raise ValueError("state must be {'meta': ..., 'tensors': ...} from "
                         "WeightSharing.state_dict()")
    if meta.get("format") != STATE_FORMAT or meta.get("version") != _STATE_VERSION:
        raise ValueError(
            f"state format {meta.get('format')!r} version {meta.get('version')!r} is not "
            f"supported; allowed: {STATE_FORMAT!r} version {_STATE_VERSION}"
        )
    layers = meta.get("layers")
    if not isinstance(layers, Mapping):
        raise ValueError("state meta has no 'layers' mapping")
    out = {}
    for name, info in layers.items():
        bits = check_bits(info.get("bits") if isinstance(info, Mapping) else None, name)
        codebook, index = tensors.get(f"{name}.codebook"), tensors.get(f"{name}.index")
        if not isinstance(codebook, torch.Tensor) or not isinstance(index, torch.Tensor):
            raise ValueError(f"state has no tensors {name}.codebook and {name}.index")
        if codebook.dim() != 1 or not codebook.is_floating_point():
            raise ValueError(f"state {name}.codebook must be a 1-D float tensor, got "
                             f"{codebook.dtype} of shape {tuple(codebook.shape)}")
        if codebook.numel() > 2**bits:
            raise ValueError(f"state {name}.codebook has {codebook.numel()} entries; "
                             f"allowed: at most 2**{bits}")
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"state {name}.index must be an integer tensor, got {index.dtype}")
        index = index.to(torch.int64)
        if index.numel() and not (int(index.min()) >= -1 and
                                  int(index.max()) < codebook.numel()):
            raise ValueError(f"state {name}.index has values outside -1..{codebook.numel() - 1}")
        out[name] = (int(bits), codebook, index)
    return out


def share_weights(
    model: nn.Module,
    bits: BitsSpec = None,
    *,
    layers: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    init: str = "linear",
    max_iter: int = 300,
    seed: int = 0,
) -> SharingReport:
    """Share the weights of a model in one line (no fine-tuning: no hooks are left).

    Each selected layer's surviving weights become their k-means centroids; pruned entries
    stay zero. For centroid fine-tuning keep a :class:`WeightSharing` attached instead.

    Args:
        model: modified in place.
        bits, layers, exclude, init, max_iter, seed: as for :class:`WeightSharing`.

    Returns:
        The per-layer :class:`~prunelab.sharing.report.SharingReport`.

    Raises:
        ValueError: as :class:`WeightSharing` and :meth:`WeightSharing.attach`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> report = share_weights(model, {"conv": 3})
        >>> [(r.layer, r.bits, r.clusters) for r in report.layers]
        [('0', 3, 8), ('2', 5, 16)]
    """
    sharing = WeightSharing(bits, layers=layers, exclude=exclude, init=init,
                            max_iter=max_iter, seed=seed)
    report = sharing.attach(model)
    sharing.detach()
    return report
