"""Run directories: what may be written where.

Example:
    >>> issubclass(RunDirectoryError, RuntimeError)
    True
"""

from __future__ import annotations

__all__ = ["RunDirectoryError"]


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds another run)."""
