"""Strict reader for IDX files (the MNIST / Fashion-MNIST container format).

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim``
big-endian ``uint32`` dimension sizes, then the payload in row-major order. Files may be
gzip-compressed; compression is detected from the gzip magic bytes (``1f 8b``), never from
the file name, so ``train-labels-idx1-ubyte`` and ``train-labels-idx1-ubyte.gz`` are both
accepted whatever they actually contain.

Every problem (missing file, bad gzip stream, wrong magic, unknown dtype code, truncated or
over-long payload) is reported as :class:`DatasetError` with a message that names the file,
says what is wrong and what to do about it. No raw ``gzip``/``zlib``/``numpy`` exception
escapes from this module.

Example:
    >>> from prunelab.data.idx import read_idx
    >>> labels = read_idx("data/mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
    >>> labels.shape, labels.dtype  # doctest: +SKIP
    ((10000,), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np

from prunelab.errors import PrunelabError

__all__ = [
    "DEFAULT_HINT",
    "GZIP_MAGIC",
    "IDX_DTYPES",
    "DatasetError",
    "decompress_if_gzip",
    "parse_idx",
    "read_decompressed",
    "read_idx",
]


class DatasetError(PrunelabError, RuntimeError):
    """A dataset file is missing, unreadable, corrupt or fails its checksum.

    The message always names the offending file (or directory), says what is wrong and
    what to do about it, so it can be shown to a user as is.

    Example:
        >>> raise DatasetError("/data/x.gz: truncated. Re-copy it.")  # doctest: +SKIP
    """


GZIP_MAGIC: Final[bytes] = b"\x1f\x8b"
"""The first two bytes of every gzip stream."""

IDX_DTYPES: Final[Mapping[int, np.dtype]] = MappingProxyType(
    {
        0x08: np.dtype(np.uint8),
        0x09: np.dtype(np.int8),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
    }
)
"""IDX type code (third magic byte) -> on-disk numpy dtype (big-endian)."""

DEFAULT_HINT: Final[str] = (
    "Replace it with a fresh copy of the original file, or delete it so it is downloaded "
    "again (load_dataset(..., download=True))."
)
"""Default "what to do" sentence appended to error messages."""

_MAX_NDIM: Final[int] = 16


def _fail(path: str | os.PathLike[str], problem: str, hint: str | None) -> DatasetError:
    """Build a :class:`DatasetError` of the form ``"<path>: <problem> <hint>"``.

    Args:
        path: The file the problem is about.
        problem: What is wrong, as one or more full sentences.
        hint: What to do; :data:`DEFAULT_HINT` when ``None``.

    Returns:
        The error (the caller raises it).

    Example:
        >>> str(_fail("a.gz", "Bad.", "Fix it."))
        "IDX file 'a.gz': Bad. Fix it."
    """
    return DatasetError(f"IDX file '{os.fspath(path)}': {problem} {hint or DEFAULT_HINT}")


def max_dataset_bytes() -> int:
    """The most bytes a compressed dataset file may expand to (``PRUNELAB_MAX_DATASET_BYTES``,
    default 4 GiB; MNIST's largest file is 47 MB)."""
    return int(os.environ.get("PRUNELAB_MAX_DATASET_BYTES", 4 << 30))


def decompress_if_gzip(
    raw: bytes, path: str | os.PathLike[str] = "<bytes>", *, hint: str | None = None
) -> bytes:
    """Return ``raw`` gunzipped if it starts with the gzip magic, else unchanged.

    Args:
        raw: File contents as read from disk.
        path: Where the bytes came from (used in error messages only).
        hint: What to tell the user to do if the stream is broken.

    Returns:
        The decompressed bytes (or ``raw`` itself for a plain file).

    Raises:
        DatasetError: The gzip stream is corrupt or truncated, or decompresses to more than
            :func:`max_dataset_bytes`.

    Example:
        >>> import gzip
        >>> decompress_if_gzip(gzip.compress(b"abc"))
        b'abc'
        >>> decompress_if_gzip(b"abc")
        b'abc'
    """
    if not raw.startswith(GZIP_MAGIC):
        return raw
    limit = max_dataset_bytes()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            data = fh.read(limit + 1)  # streamed: a gzip bomb stops at the limit
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise _fail(
            path,
            f"the file starts with the gzip magic bytes but its gzip stream is broken or "
            f"truncated ({type(exc).__name__}: {exc}).",
            hint,
        ) from exc
    if len(data) > limit:
        raise _fail(
            path,
            f"the file decompresses to more than {limit:,} bytes "
            "(PRUNELAB_MAX_DATASET_BYTES); it is not a dataset file of this kind.",
            hint,
        )
    return data


def read_decompressed(path: str | os.PathLike[str], *, hint: str | None = None) -> bytes:
    """Read a file and gunzip it if (and only if) its content is gzip.

    Args:
        path: File to read, compressed or not (the name does not matter).
        hint: What to tell the user to do if the file is broken.

    Returns:
        The decompressed file contents.

    Raises:
        DatasetError: The file does not exist, cannot be read, or its gzip stream is broken.

    Example:
        >>> data = read_decompressed("data/mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
        >>> len(data)  # doctest: +SKIP
        10008
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise _fail(path, "the file does not exist.", hint) from exc
    except OSError as exc:
        raise _fail(path, f"the file cannot be read ({type(exc).__name__}: {exc}).", hint) from exc
    return decompress_if_gzip(raw, path, hint=hint)


def parse_idx(
    data: bytes, path: str | os.PathLike[str] = "<bytes>", *, hint: str | None = None
) -> np.ndarray:
    """Parse decompressed IDX bytes into a numpy array, validating the header strictly.

    Checks that the magic number starts with two zero bytes, that the type code is a
    known IDX code, that the number of dimensions is sensible, that the header is complete
    and that the payload length equals exactly ``prod(dims) * itemsize``.

    Args:
        data: Decompressed file contents (use :func:`decompress_if_gzip` first).
        path: Where the bytes came from (used in error messages only).
        hint: What to tell the user to do if the file is broken.

    Returns:
        A writable, C-contiguous array of shape ``dims`` in native byte order
        (``uint8`` for MNIST-style files).

    Raises:
        DatasetError: Wrong magic, unknown type code, truncated header or payload, or
            trailing bytes after the payload.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
        [7, 8, 9]
    """
    if len(data) < 4:
        raise _fail(
            path,
            f"the file is only {len(data)} bytes long, too short for the 4-byte IDX magic "
            f"number; it is truncated or empty.",
            hint,
        )
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0:
        raise _fail(
            path,
            f"wrong magic number {magic.hex()} (expected 0000<type><ndim>, e.g. 00000801 "
            f"for labels or 00000803 for images); this is not an IDX file "
            f"(it starts with {data[:16]!r}).",
            hint,
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _fail(
            path,
            f"unknown IDX data type code 0x{code:02X} in magic number {magic.hex()} "
            f"(known codes: {known}).",
            hint,
        )
    if not 1 <= ndim <= _MAX_NDIM:
        raise _fail(
            path,
            f"implausible number of dimensions {ndim} in magic number {magic.hex()} "
            f"(expected 1..{_MAX_NDIM}).",
            hint,
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _fail(
            path,
            f"the header declares {ndim} dimensions and so needs {header_len} bytes, but the "
            f"file has only {len(data)}; it is truncated.",
            hint,
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise _fail(
            path,
            f"the header declares shape {dims} of {dtype.name} ({expected} payload bytes) "
            f"but only {actual} payload bytes are present; the file is truncated "
            f"({expected - actual} bytes missing).",
            hint,
        )
    if actual > expected:
        raise _fail(
            path,
            f"the header declares shape {dims} of {dtype.name} ({expected} payload bytes) "
            f"but {actual} payload bytes are present ({actual - expected} unexpected "
            f"trailing bytes); the file is corrupt.",
            hint,
        )
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_len)
    # astype copies: the result is writable, native-endian and independent of ``data``.
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path: str | os.PathLike[str], *, hint: str | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed or plain, into a numpy array.

    Args:
        path: File to read. Compression is detected from the content, not the name.
        hint: What to tell the user to do if the file is broken; defaults to
            :data:`DEFAULT_HINT`.

    Returns:
        The array, shaped as declared in the header, in native byte order.

    Raises:
        DatasetError: The file is missing, unreadable, not valid gzip, not a valid IDX
            file, or its payload length does not match its header.

    Example:
        >>> images = read_idx("data/mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
        (10000, 28, 28)
    """
    return parse_idx(read_decompressed(path, hint=hint), path, hint=hint)
