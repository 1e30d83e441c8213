"""How many bits (``2**bits`` shared values) each layer gets.

Deep Compression's defaults (Han et al. 2016, Sec. 3): 8 bits (256 shared weights) for
convolutional layers and 5 bits (32) for fully connected layers, "with no loss of accuracy"
on AlexNet. A spec is one number for every layer, or a mapping whose keys are a layer kind
(``"fc"``, ``"conv"``) or glob patterns over module names; kinds apply first, then patterns
in order (a later pattern overrides an earlier one). That is the form
``prunelab.cli.export.parse_index_bits`` returns for ``--index-bits`` (``"fc=5,conv=8"``,
``"conv1=6"``), so a parsed option can be passed as is.

Example:
    >>> from torch import nn
    >>> layers = {"conv1": nn.Conv2d(1, 4, 3), "fc1": nn.Linear(4, 2), "fc2": nn.Linear(2, 2)}
    >>> resolve_bits(layers, None)
    {'conv1': 8, 'fc1': 5, 'fc2': 5}
    >>> resolve_bits(layers, {"fc": 4, "fc2": 6})
    {'conv1': 8, 'fc1': 4, 'fc2': 6}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from ..selection import layer_kind

__all__ = [
    "BITS_RANGE", "DEFAULT_BITS", "KINDS", "BitsSpec", "check_bits", "check_spec", "resolve_bits",
]

#: Smallest and largest index width, inclusive (``2**16`` clusters at most).
BITS_RANGE: tuple[int, int] = (1, 16)
#: Layer kinds a spec may name (see :func:`prunelab.selection.layer_kind`).
KINDS: tuple[str, ...] = ("fc", "conv")
#: The paper's widths per kind.
DEFAULT_BITS: Mapping[str, int] = MappingProxyType({"conv": 8, "fc": 5})

BitsSpec = int | Mapping[str, int] | None


def check_bits(bits: object, where: str = "") -> int:
    """Return ``bits`` when it is an integer in :data:`BITS_RANGE`, else raise.

    Raises:
        ValueError: not an integer (``bool`` is not one), or out of range.

    Example:
        >>> check_bits(5)
        5
    """
    lo, hi = BITS_RANGE
    at = f" for {where!r}" if where else ""
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"bits={bits!r}{at} is invalid; allowed: integers {lo}..{hi}")
    return bits


def check_spec(bits: BitsSpec) -> None:
    """Check a spec's values and key types (not whether patterns match; see resolve_bits)."""
    if bits is None:
        return
    if not isinstance(bits, Mapping):
        check_bits(bits)
        return
    for key, value in bits.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"bits key {key!r} is invalid; allowed: a layer kind ({', '.join(KINDS)}) "
                f"or a glob pattern over layer names"
            )
        check_bits(value, key)


def resolve_bits(layers: Mapping[str, nn.Module], bits: BitsSpec) -> dict[str, int]:
    """Resolve a spec to the width of every layer (in the order of ``layers``).

    Args:
        layers: ``{name: Linear or Conv module}`` (from :func:`prunelab.selection.select_layers`).
        bits: ``None`` (the defaults), one width for all, or ``{kind or pattern: width}``;
            layers no key reaches keep their kind's default.

    Returns:
        ``{layer: bits}``.

    Raises:
        ValueError: a width outside :data:`BITS_RANGE`, or a key that is neither a kind nor a
            pattern matching one of ``layers`` (the message lists them).

    Example:
        >>> from torch import nn
        >>> resolve_bits({"0": nn.Linear(2, 2)}, 3)
        {'0': 3}
    """
    check_spec(bits)
    kinds = {name: layer_kind(m) for name, m in layers.items()}
    if bits is not None and not isinstance(bits, Mapping):
        return dict.fromkeys(layers, bits)
    spec = dict(bits or {})
    out = {name: spec.get(kind, DEFAULT_BITS[kind]) for name, kind in kinds.items()}
    for pattern, value in spec.items():
        if pattern in KINDS:
            continue
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(
                f"bits pattern {pattern!r} matches no selected layer; allowed: a kind "
                f"({', '.join(KINDS)}) or a pattern over the layers {', '.join(layers)}"
            )
        for n in hits:
            out[n] = value
    return out
