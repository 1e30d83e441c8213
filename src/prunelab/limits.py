"""Bounds on what a file being opened may ask for, checked before anything is allocated.

A file's header can claim any size; these limits turn an absurd claim into one clear error
instead of an attempt to allocate it. Each can be raised through an environment variable.

- :func:`max_decoded_bytes`: the most memory a compact export may decode to
  (``PRUNELAB_MAX_DECODED_BYTES``; default: half of this machine's physical memory).
- :data:`MAX_CONFIG_BYTES`: the largest YAML config read (``PRUNELAB_MAX_CONFIG_BYTES``,
  default 1 MiB; real configs are a few kB).
- :data:`MAX_CONFIG_NODES`: the most values a config may expand to once YAML aliases are
  resolved (default 100,000), so an alias bomb is refused in linear time.

Example:
    >>> max_decoded_bytes() > 0
    True
    >>> check_elements((3, 4), "w", "m.safetensors")
    12
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .errors import FileFormatError, short_repr

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "MAX_DIMS",
    "check_elements",
    "max_decoded_bytes",
]

MAX_CONFIG_BYTES = int(os.environ.get("PRUNELAB_MAX_CONFIG_BYTES", 1 << 20))
MAX_CONFIG_NODES = 100_000
#: The most dimensions a stored tensor may claim.
MAX_DIMS = 8


def max_decoded_bytes() -> int:
    """The most bytes a file may decode to: ``PRUNELAB_MAX_DECODED_BYTES``, else half of RAM."""
    env = os.environ.get("PRUNELAB_MAX_DECODED_BYTES")
    if env:
        return int(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: a generous fixed bound
        return 16 << 30


def check_elements(
    shape: Sequence[object],
    what: str,
    source: str,
    error: type[FileFormatError] = FileFormatError,
) -> int:
    """The element count of a claimed ``shape``, after checking it is a sane shape.

    Raises:
        FileFormatError: (or the given subclass ``error``) not a list of at most
            :data:`MAX_DIMS` non-negative integers.
    """
    if (not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise error(
            f"{source}: {what} claims shape {short_repr(shape)}; a shape is a list of at most "
            f"{MAX_DIMS} non-negative integers"
        )
    return math.prod(shape)
