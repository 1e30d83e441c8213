"""Data-parallel runs: process groups from ``torchrun``, and masks identical on every rank.

Every rank of a ``DistributedDataParallel`` job must hold the same masks after every mask
change, even when the decision depends on data the ranks see differently (ThiNet, dead
neurons found from activations) or on weights that drifted apart. prunelab decides on rank 0
and broadcasts: :func:`sync_masks` sends rank 0's masks to every rank (creating masks a rank
lacks), re-applies them to the weights and then :func:`verify_masks` compares a SHA-256 digest
of all masks across ranks and raises :class:`MaskMismatchError` if any differs.
:meth:`prunelab.pruner.Pruner.step` and :func:`prunelab.channel_masks.apply_channel_masks` do
this by themselves whenever a process group with more than one rank is initialised, so a
user's own DDP loop gets identical masks without doing anything.

Outside a process group (or with one rank) every function here is a no-op, so library code
calls them unconditionally.

:func:`init_from_env` starts the process group from ``torchrun``'s environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA
devices, gloo on CPU, with a timeout so that a rank that died ends the job instead of hanging.

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(3, 2)
    >>> is_distributed(), rank(), world_size()
    (False, 0, 1)
    >>> sync_masks(layer)  # no process group: nothing to do
    False
    >>> len(mask_digest(layer))
    64
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .masks import iter_masks, raw_parameter, set_mask

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "MaskMismatchError",
    "all_reduce_sums",
    "barrier",
    "broadcast_object",
    "decide_on_rank0",
    "init_from_env",
    "is_distributed",
    "mask_digest",
    "rank",
    "shutdown",
    "sync_buffers",
    "sync_masks",
    "verify_masks",
    "world_size",
]

DEFAULT_TIMEOUT_S = 600.0


class MaskMismatchError(RuntimeError):
    """Ranks of a data-parallel job hold different masks (a bug: masks must be identical)."""


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device under NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """The process group a run joined (see :func:`init_from_env`).

    Attributes:
        rank: global rank.
        world: number of ranks.
        local_rank: rank on this machine (selects the CUDA device).
        device: the device this rank trains on.
        backend: ``"nccl"`` or ``"gloo"``.
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes files (checkpoints, logs, reports); the others never do."""
        return self.rank == 0


def init_from_env(
    device: str | torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistContext | None:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: the configured device: ``"cpu"`` (gloo) or ``"cuda"``/``"cuda:N"`` (NCCL;
            each rank takes ``cuda:LOCAL_RANK``).
        timeout_s: how long a collective may wait for the other ranks before the job fails.

    Returns:
        The :class:`DistContext`, or ``None`` when ``WORLD_SIZE`` is unset or 1 (a plain run).

    Raises:
        ValueError: a CUDA device was asked for but this machine has fewer GPUs than local
            ranks, or the environment is incomplete.

    Example:
        >>> import os
        >>> "WORLD_SIZE" in os.environ or init_from_env("cpu") is None
        True
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset; start several processes with "
            "torchrun --nproc_per_node N -m prunelab run CONFIG"
        )
    global_rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise ValueError(
                f"local rank {local_rank} needs cuda:{local_rank} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node <= "
                f"{torch.cuda.device_count()} or --device cpu"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"device {str(device)!r} cannot run data-parallel; allowed: cpu, cuda")
    if not dist.is_initialized():
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if backend == "nccl" else {}),
        )
    return DistContext(global_rank, world, local_rank, dev, backend)


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown() -> None:
    """Leave the process group after a last barrier (no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable built-ins only; no-op outside a group).

    Only used for small control values (an error message, a dict of floats) that prunelab
    itself produced on ``src``; never for data read from files.
    """
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def decide_on_rank0(
    compute: Callable[[], Any], *, errors: tuple[type[Exception], ...] = (ValueError,)
) -> Any:
    """Run ``compute`` on rank 0 only and give every rank its result, or raise its error.

    An exception of ``errors`` raised on rank 0 is raised on every rank as a ``ValueError``
    with the same message, so no rank waits for a decision that never comes. Outside a
    process group this is just ``compute()``. ``compute`` must not call collectives.

    Example:
        >>> decide_on_rank0(lambda: {"kept": 3})
        {'kept': 3}
    """
    if not is_distributed():
        return compute()
    result: Any = None
    error: str | None = None
    if rank() == 0:
        try:
            result = compute()
        except errors as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error is not None:
        raise ValueError(error)
    return broadcast_object(result)


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over ranks, in float64 (no-op outside a group).

    Example:
        >>> all_reduce_sums([1.0, 2.0])
        [1.0, 2.0]
    """
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def _mask_entries(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(m, t, tuple(buf.shape)) for m, _, t, buf in iter_masks(model)]


def mask_digest(model: nn.Module) -> str:
    """SHA-256 over the names, shapes and kept/pruned pattern of every mask of ``model``.

    Two models have the same digest exactly when the same tensors are masked with the same
    patterns (the mask dtype does not matter).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> _ = set_mask(a, "weight", torch.tensor([[1, 0], [1, 1]]))
        >>> _ = set_mask(b, "weight", torch.tensor([[1, 0], [1, 1]]))
        >>> mask_digest(a) == mask_digest(b)
        True
    """
    h = hashlib.sha256()
    for mod_name, _, tensor_name, buf in iter_masks(model):
        h.update(f"{mod_name}.{tensor_name}:{tuple(buf.shape)};".encode())
        h.update((buf != 0).to(torch.uint8).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def verify_masks(model: nn.Module) -> str:
    """Check that every rank holds the same masks; return the digest.

    Raises:
        MaskMismatchError: naming the ranks whose masks differ from rank 0's.
    """
    digest = mask_digest(model)
    if not is_distributed():
        return digest
    digests: list[Any] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    if bad:
        raise MaskMismatchError(
            f"masks differ across ranks: rank(s) {bad} hold masks other than rank 0's "
            f"(digests {digests[0][:12]} vs {', '.join(digests[r][:12] for r in bad)})"
        )
    return digest


def sync_masks(model: nn.Module, src: int = 0) -> bool:
    """Give every rank rank ``src``'s masks, re-apply them to the weights, verify.

    A mask that exists on ``src`` but not on another rank is created there; a mask that
    exists on another rank but not on ``src`` is an error (masks are never removed here).

    Returns:
        Whether anything was synchronised (false outside a process group).

    Raises:
        MaskMismatchError: the ranks mask different tensors, or the check after the
            broadcast failed.
    """
    if not is_distributed():
        return False
    entries = broadcast_object(_mask_entries(model), src=src)
    mine = {(m, t) for m, t, _ in _mask_entries(model)}
    extra = mine - {(m, t) for m, t, _ in entries}
    if extra:
        raise MaskMismatchError(
            f"rank {rank()} masks {sorted(f'{m}.{t}' for m, t in extra)}, which rank {src} "
            "does not"
        )
    modules = dict(model.named_modules())
    device = _comm_device()
    for mod_name, tensor_name, shape in entries:
        module = modules.get(mod_name)
        if module is None:
            raise MaskMismatchError(f"rank {rank()} has no module {mod_name!r} (rank {src} has)")
        param = raw_parameter(module, tensor_name)
        if tuple(param.shape) != tuple(shape):
            raise MaskMismatchError(
                f"{mod_name}.{tensor_name} has shape {tuple(param.shape)} on rank {rank()} but "
                f"{tuple(shape)} on rank {src}"
            )
        buf = module._buffers.get(f"{tensor_name}_mask")
        local = (buf != 0) if buf is not None else torch.ones(shape, dtype=torch.bool)
        wire = local.to(device=device, dtype=torch.uint8).contiguous()
        dist.broadcast(wire, src=src)
        set_mask(module, tensor_name, wire.to(param.device), monotone=False)
    verify_masks(model)
    return True


def sync_buffers(model: nn.Module, src: int = 0) -> bool:
    """Broadcast rank ``src``'s non-mask buffers (BatchNorm running statistics) to every rank.

    DDP is run with ``broadcast_buffers=False`` (sending every mask at every step would cost
    as much as the gradients); this call, at the end of each epoch, makes the ranks' models
    identical again before they are evaluated or saved.

    Returns:
        Whether anything was synchronised (false outside a process group).
    """
    if not is_distributed():
        return False
    device = _comm_device()
    for _, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is None or name.endswith("_mask"):
                continue
            wire = buf.detach().to(device).contiguous()
            dist.broadcast(wire, src=src)
            with torch.no_grad():
                buf.copy_(wire.to(buf.device))
    return True
