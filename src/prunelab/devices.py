"""Device names: checked once, with one clear line when they are wrong or absent here.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> check_device_name("gpu")
    Traceback (most recent call last):
    ...
    prunelab.errors.DeviceError: device 'gpu' is unknown; allowed: cpu, cuda, cuda:N, mps
"""

from __future__ import annotations

import re

import torch

from .errors import DeviceError, short_repr

__all__ = ["ALLOWED", "NAME_PATTERN", "check_device_name", "resolve_device"]

#: The device names prunelab accepts, as shown in error messages.
ALLOWED = "cpu, cuda, cuda:N, mps"
NAME_PATTERN = re.compile(r"cpu|cuda|cuda:\d+|mps")


def check_device_name(name: object) -> str:
    """``name`` if it is a device name prunelab accepts (whether or not it is present).

    Raises:
        DeviceError: not one of ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DeviceError(f"device {short_repr(name)} is unknown; allowed: {ALLOWED}")
    return name


def resolve_device(name: str | torch.device) -> torch.device:
    """The ``torch.device`` for ``name``, after checking this machine has it.

    Raises:
        DeviceError: an unknown name, CUDA asked for where there is none (or fewer GPUs
            than the index), or MPS where it is unavailable.
    """
    if isinstance(name, torch.device):
        name = str(name)
    dev = torch.device(check_device_name(name))
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"device {name!r} asked for, but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"device {name!r} asked for, but this machine has {count} CUDA device(s): "
                f"cuda:0..cuda:{count - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} asked for, but MPS is not available here; "
                          "use --device cpu")
    return dev
