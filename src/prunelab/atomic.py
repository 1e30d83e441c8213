"""Atomic file writes, and cleaning up what an interrupted one left behind.

A write goes to a temporary file ``.<name>.<random>.tmp`` beside its destination, is flushed
to disk and moved into place with ``os.replace``: a crash (even ``SIGKILL``) leaves either
the old file or the new one, never a torn one. What a kill can leave is the temporary file;
:func:`remove_stale_temp_files` removes such files when a run directory is opened again.
Errors of the write itself (a full disk) propagate after the temporary file is removed.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_text_atomic(d / "a.json", "{}")
    PosixPath('...a.json')
    >>> (d / ".a.json.x1y2.tmp").write_text("torn")
    4
    >>> [p.name for p in remove_stale_temp_files(d)]
    ['.a.json.x1y2.tmp']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_write",
    "remove_stale_temp_files",
    "temp_name_matches",
    "write_bytes_atomic",
    "write_text_atomic",
]

_SUFFIX = ".tmp"


def temp_name_matches(name: str) -> bool:
    """Whether ``name`` has the form of this module's temporary files (``.<name>.<r>.tmp``).

    Example:
        >>> temp_name_matches(".checkpoint.safetensors.k3j_9.tmp"), temp_name_matches("a.tmp")
        (True, False)
    """
    return name.startswith(".") and name.endswith(_SUFFIX) and name.count(".") >= 3


def _fsync_dir(directory: Path) -> None:
    try:  # make the rename durable too (not possible on every filesystem)
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Have ``write(tmp_path)`` fill a temporary file, then move it onto ``path`` atomically.

    The file gets the usual mode (``0o666 & ~umask``), not ``mkstemp``'s 0600.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        OSError: from ``write`` or the filesystem (the temporary file is removed first).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, expected a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``directory``.

    Only names of the form ``.<name>.<random>.tmp`` directly in ``directory`` are removed.
    Call it when a run directory is opened by the only process writing to it.

    Returns:
        The files removed.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if temp_name_matches(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return sorted(removed)
