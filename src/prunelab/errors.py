"""The errors prunelab raises for bad input, all under one base class.

Every error a user can cause (a bad config, a missing or hostile file, a run directory that
cannot be used, an unknown device) derives from :class:`PrunelabError`; its message is one
line that names the file or key and says what is wrong and what is allowed, so the command
line prints it as ``prunelab: error: <message>`` and exits with status 2. Anything else is a
bug and keeps its traceback (``prunelab --debug`` shows tracebacks for every error).

The concrete classes live beside the code that raises them and also derive from the builtin
type that code raised before (``ValueError`` or ``RuntimeError``), so existing ``except``
clauses keep working.

Example:
    >>> from prunelab.config import ConfigError
    >>> issubclass(ConfigError, PrunelabError) and issubclass(ConfigError, ValueError)
    True
    >>> one_line("bad\\nvalue " + "x" * 500)[:20]
    'bad value xxxxxxxxxx'
"""

from __future__ import annotations

import reprlib

__all__ = [
    "DeviceError",
    "FileFormatError",
    "PrunelabError",
    "UntrustedCodeError",
    "one_line",
    "short_repr",
]

#: The longest message :func:`one_line` returns (characters).
MAX_MESSAGE = 400

_REPR = reprlib.Repr()
for _attr, _limit in (("maxlevel", 2), ("maxdict", 4), ("maxlist", 4), ("maxtuple", 4),
                      ("maxset", 4), ("maxstring", 60), ("maxother", 60), ("maxlong", 40)):
    setattr(_REPR, _attr, _limit)


class PrunelabError(Exception):
    """Bad input: the message names the problem and the allowed values (shown as one line)."""


class FileFormatError(PrunelabError, ValueError):
    """A file being opened is not what it claims to be (corrupt, truncated, hostile, foreign)."""


class UntrustedCodeError(FileFormatError):
    """A file asks to import and run code; files are data and may only name registered models."""


class DeviceError(PrunelabError, ValueError):
    """A device name is unknown, or names hardware this machine does not have."""


def short_repr(value: object) -> str:
    """A bounded ``repr``: a few items of each container, long strings cut.

    Safe on huge or deeply shared structures (a YAML alias bomb): it never walks more than a
    few items per level.

    Example:
        >>> short_repr(list(range(100)))
        '[0, 1, 2, 3, ...]'
    """
    return _REPR.repr(value)


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line (newlines and runs of spaces folded), at most ``limit`` chars.

    Example:
        >>> one_line("a\\n  b")
        'a b'
    """
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
