"""Run directories: what may be written where.

Example:
    >>> issubclass(RunDirectoryError, RuntimeError)
    True
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelab.errors import PrunelabError

__all__ = ["RunDirectoryError", "open_run_dir"]


class RunDirectoryError(PrunelabError, RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds another run)."""


def open_run_dir(out: Path) -> str | None:
    """Create the run directory ``out`` if needed; the problem, as one line, if it cannot be.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "file"
        >>> _ = f.write_text("x")
        >>> open_run_dir(f / "run")
        "--out ... lies under ..., which is a file, not a directory"
    """
    if out.exists() and not out.is_dir():
        return f"--out {str(out)!r} is a file, not a directory; give a directory for the run"
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                return (f"--out {str(out)!r} lies under {str(parent)!r}, which is a file, "
                        "not a directory")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--out {str(out)!r} cannot be created: {exc.strerror or exc}"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {str(out)!r} is not writable"
    return None
