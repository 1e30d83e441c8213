"""Han et al.'s relative-index sparse format (Han 2015, Deep Compression 2016).

A layer's weight is flattened row-major (a conv weight ``[out, in, kh, kw]`` becomes the
``[out, in*kh*kw]`` matrix read row after row, so gaps may run across row boundaries) and
only its *entries* are stored: every nonzero value plus the filler zeros described below.
Each entry carries a ``b``-bit *relative index* instead of an absolute position.

Relative-index convention (the Deep Compression "diff", stored minus one)
------------------------------------------------------------------------
Let ``p_0 < p_1 < ...`` be the flat positions of the stored entries and ``p_{-1} = -1``.
The stored code of entry ``i`` is the number of zeros skipped since the previous entry::

    code_i = p_i - p_{i-1} - 1        # 0 <= code_i <= 2**b - 1

so the first entry's code is its own position and two adjacent nonzeros have code 0. A code of
``b`` bits therefore reaches a *positional gap* ``p_i - p_{i-1}`` of at most ``2**b`` (with
3 bits a gap of 8, as in Deep Compression's Figure 2). When a run of ``z`` zeros before a
nonzero exceeds ``2**b - 1``, filler entries are inserted: each filler has code ``2**b - 1``
and value 0 and itself sits on a zero position, so it advances the position by ``2**b``.
A run of ``z`` zeros needs exactly ``z // 2**b`` fillers (``z = 2**b - 1``: none;
``z = 2**b``: one; ``z = 2 * 2**b``: two). Zeros after the last nonzero need no filler: the
shape is stored.

Which values are stored: every element that compares unequal to zero, i.e. all nonzeros and
NaNs (bit pattern kept). Both ``+0.0`` and ``-0.0`` count as zero and decode as ``+0.0``
(pruned weights computed as ``weight_orig * weight_mask`` are ``-0.0`` wherever the original
was negative; storing those would defeat the format). Every other element decodes
bit-identically when values are stored in the weight's own dtype.

Bit packing: code ``i`` occupies bits ``[i*b, (i+1)*b)`` of one little-endian bit stream, least
significant bit first; stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``. The stream is
padded with zero bits to whole bytes, so ``num_entries`` codes take ``ceil(num_entries*b/8)``
bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "MAX_INDEX_BITS",
    "VALUE_DTYPES",
    "RelativeEncoded",
    "decode_relative",
    "encode_relative",
    "entry_codes",
    "entry_positions",
    "pack_bits",
    "packed_nbytes",
    "relative_entry_counts",
    "resolve_value_dtype",
    "unpack_bits",
    "weight_dtype_from_name",
    "weight_dtype_name",
]

#: Widest relative index supported (codes are handled as uint16).
MAX_INDEX_BITS = 16

#: Value dtypes the compact formats can store, by name.
VALUE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

_WEIGHT_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "float64",
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}

# Codes are packed in chunks so that the temporary bit matrix (16 bytes per code) stays small;
# a multiple of 8 keeps every chunk's first code on a byte boundary for any b.
_CHUNK = 1 << 20
_SCAN_CHUNK = 1 << 18


def resolve_value_dtype(value_dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    """Normalise a value dtype given by name or as a torch dtype.

    Args:
        value_dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` or the matching torch dtype.

    Returns:
        ``(name, torch_dtype)``.

    Raises:
        ValueError: for any other dtype.

    Example:
        >>> resolve_value_dtype(torch.float16)
        ('float16', torch.float16)
    """
    for name, dtype in VALUE_DTYPES.items():
        if value_dtype in (name, dtype):
            return name, dtype
    raise ValueError(
        f"value_dtype={value_dtype!r} is not supported; use one of {list(VALUE_DTYPES)}"
    )


def weight_dtype_name(dtype: torch.dtype) -> str:
    """Name of a floating weight dtype that the compact formats can rebuild.

    Args:
        dtype: dtype of a weight tensor.

    Returns:
        Its name, e.g. ``"float32"``.

    Raises:
        TypeError: if ``dtype`` is not float64/float32/float16/bfloat16.

    Example:
        >>> weight_dtype_name(torch.float32)
        'float32'
    """
    try:
        return _WEIGHT_DTYPES[dtype]
    except KeyError:
        raise TypeError(
            f"weight dtype {dtype} is not supported; use one of {list(_WEIGHT_DTYPES.values())}"
        ) from None


def weight_dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`weight_dtype_name`.

    Args:
        name: a dtype name such as ``"float32"``.

    Returns:
        The torch dtype.

    Raises:
        ValueError: for an unknown name.

    Example:
        >>> weight_dtype_from_name("float16")
        torch.float16
    """
    for dtype, dtype_name in _WEIGHT_DTYPES.items():
        if dtype_name == name:
            return dtype
    raise ValueError(
        f"unknown weight dtype {name!r}; expected one of {list(_WEIGHT_DTYPES.values())}"
    )


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError(f"index_bits must be an int, got {type(bits).__name__}")
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise ValueError(f"index_bits={bits} is out of range; allowed 1..{MAX_INDEX_BITS}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` codes of ``bits`` bits each (padded to whole bytes).

    Args:
        count: number of codes.
        bits: bits per code, 1..16.

    Returns:
        ``ceil(count * bits / 8)``.

    Raises:
        ValueError: if ``bits`` is out of range or ``count`` is negative.

    Example:
        >>> packed_nbytes(3, 5)
        2
    """
    _check_bits(bits)
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    return (count * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integer codes into a little-endian bit stream (vectorised).

    Args:
        codes: 1-D array of non-negative integers, each ``< 2**bits``.
        bits: bits per code, 1..16.

    Returns:
        1-D ``uint8`` array of length ``ceil(len(codes) * bits / 8)``; code ``i`` occupies
        stream bits ``[i*bits, (i+1)*bits)``, LSB first, padding bits are zero.

    Raises:
        ValueError: if ``bits`` is out of range, ``codes`` is not 1-D, or a code does not fit.
        TypeError: if ``codes`` is not an integer array.

    Example:
        >>> pack_bits(np.array([1, 2, 3]), 2).tolist()
        [57]
    """
    _check_bits(bits)
    codes = np.asarray(codes)
    if codes.ndim != 1:
        raise ValueError(f"codes must be 1-D, got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    n = codes.size
    out = np.zeros(packed_nbytes(n, bits), dtype=np.uint8)
    if n == 0:
        return out
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= (1 << bits):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, got [{lo}, {hi}]"
        )
    if bits == 8:
        out[:] = codes.astype(np.uint8)
        return out
    if bits == 16:
        out[:] = codes.astype("<u2").view(np.uint8)
        return out
    for start in range(0, n, _CHUNK):
        chunk = codes[start : start + _CHUNK].astype("<u2")
        # (m, 2) bytes -> (m, 16) bits, LSB first; keep the low `bits` bits of each code.
        bit_matrix = np.unpackbits(chunk.view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
        packed = np.packbits(bit_matrix[:, :bits].reshape(-1), bitorder="little")
        offset = start * bits // 8
        out[offset : offset + packed.size] = packed
    return out


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: 1-D ``uint8`` array as written by :func:`pack_bits`.
        bits: bits per code, 1..16.
        count: number of codes to read.

    Returns:
        1-D ``uint16`` array of ``count`` codes.

    Raises:
        ValueError: if ``packed`` does not have exactly ``ceil(count * bits / 8)`` bytes or its
            padding bits are not zero (a sign of corruption or a wrong ``bits``).

    Example:
        >>> unpack_bits(np.array([57], dtype=np.uint8), 2, 3).tolist()
        [1, 2, 3]
    """
    _check_bits(bits)
    packed = np.asarray(packed)
    if packed.ndim != 1 or packed.dtype != np.uint8:
        raise ValueError(f"packed must be a 1-D uint8 array, got {packed.dtype} {packed.shape}")
    expected = packed_nbytes(count, bits)
    if packed.size != expected:
        raise ValueError(
            f"packed index stream has {packed.size} bytes, expected {expected} "
            f"for {count} codes of {bits} bits"
        )
    pad = expected * 8 - count * bits
    if pad and int(packed[-1]) >> (8 - pad):
        raise ValueError("nonzero padding bits at the end of the packed index stream")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    if bits == 8:
        return packed.astype(np.uint16)
    if bits == 16:
        return packed.view("<u2").astype(np.uint16)
    out = np.empty(count, dtype=np.uint16)
    for start in range(0, count, _CHUNK):
        m = min(_CHUNK, count - start)
        offset = start * bits // 8
        stream = packed[offset : offset + packed_nbytes(m, bits)]
        code_bits = np.unpackbits(stream, count=m * bits, bitorder="little").reshape(m, bits)
        wide = np.zeros((m, 16), dtype=np.uint8)
        wide[:, :bits] = code_bits
        out[start : start + m] = np.packbits(wide, axis=1, bitorder="little").view("<u2")[:, 0]
    return out


@dataclass(frozen=True)
class RelativeEncoded:
    """One layer in Han's relative-index format (see the module docstring for the layout).

    Attributes:
        values: 1-D tensor of ``num_entries`` stored values (fillers are 0) in ``value_dtype``.
        packed_indices: 1-D ``uint8`` tensor, the bit-packed relative indices.
        num_entries: stored entries, nonzeros plus fillers.
        num_fillers: filler entries among them.
        shape: shape of the dense weight.
        index_bits: bits per relative index, 1..16.
        value_dtype: name of the stored value dtype (``"float32"``, ``"float16"``, ``"bfloat16"``).
        dtype: name of the dense weight's dtype, restored by :func:`decode_relative`.
    """

    values: torch.Tensor
    packed_indices: torch.Tensor
    num_entries: int
    num_fillers: int
    shape: tuple[int, ...]
    index_bits: int
    value_dtype: str = "float32"
    dtype: str = "float32"

    @property
    def nnz(self) -> int:
        """Stored entries that are not fillers (the weight's nonzeros)."""
        return self.num_entries - self.num_fillers

    @property
    def value_nbytes(self) -> int:
        """Bytes of the stored values."""
        return self.values.numel() * self.values.element_size()

    @property
    def index_nbytes(self) -> int:
        """Bytes of the packed relative indices."""
        return self.packed_indices.numel()


def _flat_weight(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    weight_dtype_name(weight.dtype)  # raises TypeError for non-float weights
    return weight.detach().to("cpu").reshape(-1).contiguous()


def _nonzero_positions(flat: torch.Tensor) -> np.ndarray:
    """Flat positions of the elements that compare unequal to zero (NaNs kept, +-0 dropped)."""
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 compares the same
        flat = flat.float()
    array = flat.numpy()
    # Chunks keep the temporary boolean mask in cache instead of one numel-sized array.
    parts = []
    for start in range(0, array.size, _SCAN_CHUNK):
        part = np.flatnonzero(array[start : start + _SCAN_CHUNK] != 0)
        part += start
        parts.append(part)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts).astype(np.int64, copy=False)


def dense_zeros(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled 1-D CPU tensor from calloc'd memory (pages are touched only when used)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(numel * itemsize, dtype=np.uint8)).view(dtype)


def _zero_runs(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each nonzero, in flat order."""
    runs = np.empty_like(positions)
    if positions.size:
        runs[0] = positions[0]
        np.subtract(positions[1:], positions[:-1] + 1, out=runs[1:])
    return runs


def entry_codes(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index codes of the stored entries (nonzeros and fillers) of sorted positions.

    Args:
        positions: 1-D ``int64`` array of the nonzeros' flat positions, strictly increasing.
        index_bits: bits per relative index, 1..16.

    Returns:
        ``(codes, slots)``: ``uint16`` codes of all entries in stream order (fillers carry the
        maximal code) and the entry slot of each nonzero.

    Example:
        >>> codes, slots = entry_codes(np.array([1, 9]), 2)
        >>> codes.tolist(), slots.tolist()
        ([1, 3, 3], [0, 2])
    """
    _check_bits(index_bits)
    runs = _zero_runs(positions)
    fillers = np.right_shift(runs, index_bits)  # z // 2**b fillers before each nonzero
    # Output slot of each nonzero: its rank plus all fillers inserted up to and including it.
    slots = np.arange(positions.size, dtype=np.int64) + np.cumsum(fillers)
    num_entries = int(positions.size + (int(fillers.sum()) if fillers.size else 0))
    codes = np.full(num_entries, (1 << index_bits) - 1, dtype=np.uint16)
    codes[slots] = runs - np.left_shift(fillers, index_bits)
    return codes, slots


def entry_positions(codes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat positions of stored entries from their relative-index codes (inverse of
    :func:`entry_codes`), checked against the tensor's size.

    Args:
        codes: 1-D array of codes, one per entry (fillers included).
        shape: shape of the dense tensor.

    Returns:
        1-D ``int64`` array of positions, strictly increasing.

    Raises:
        ValueError: if the codes reach past the last element.

    Example:
        >>> entry_positions(np.array([1, 3, 3]), (10,)).tolist()
        [1, 5, 9]
    """
    numel = math.prod(shape)
    positions = np.cumsum(codes, dtype=np.int64)
    positions += np.arange(1, positions.size + 1, dtype=np.int64)
    positions -= 1
    if positions.size and positions[-1] >= numel:
        raise ValueError(
            f"relative indices reach flat position {int(positions[-1])} but the tensor of shape "
            f"{tuple(shape)} has only {numel} elements"
        )
    return positions


def relative_entry_counts(weight: torch.Tensor, index_bits: int) -> tuple[int, int]:
    """Count nonzeros and fillers of a weight without building the encoding.

    Args:
        weight: floating tensor of any shape.
        index_bits: bits per relative index, 1..16.

    Returns:
        ``(nnz, num_fillers)``; :func:`encode_relative` stores ``nnz + num_fillers`` entries.

    Raises:
        TypeError: if ``weight`` is not a floating tensor.
        ValueError: if ``index_bits`` is out of range.

    Example:
        >>> relative_entry_counts(torch.tensor([0.0] * 40 + [1.0]), 5)
        (1, 1)
    """
    _check_bits(index_bits)
    positions = _nonzero_positions(_flat_weight(weight))
    fillers = int(np.right_shift(_zero_runs(positions), index_bits).sum())
    return int(positions.size), fillers


def encode_relative(
    weight: torch.Tensor, index_bits: int, value_dtype: str | torch.dtype = "float32"
) -> RelativeEncoded:
    """Encode a weight in Han's relative-index format.

    Args:
        weight: floating tensor of any shape (flattened row-major; on any device).
        index_bits: bits per relative index, 1..16 (Han: 5 for FC layers, 8 for conv layers).
        value_dtype: dtype of the stored values: ``"float32"`` (default, lossless for fp32
            weights), ``"float16"`` or ``"bfloat16"``.

    Returns:
        The :class:`RelativeEncoded` layer.

    Raises:
        TypeError: if ``weight`` is not a floating tensor or ``index_bits`` not an int.
        ValueError: if ``index_bits`` or ``value_dtype`` is not supported.

    Example:
        >>> w = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, -2.0]])
        >>> enc = encode_relative(w, index_bits=2)
        >>> enc.num_entries, enc.num_fillers, enc.values.tolist()
        (2, 0, [1.5, -2.0])
        >>> torch.equal(decode_relative(enc), w)
        True
    """
    _check_bits(index_bits)
    value_name, value_torch_dtype = resolve_value_dtype(value_dtype)
    flat = _flat_weight(weight)
    positions = _nonzero_positions(flat)
    codes, slots = entry_codes(positions, index_bits)
    num_entries = int(codes.size)
    values = torch.zeros(num_entries, dtype=value_torch_dtype)
    values[torch.from_numpy(slots)] = flat[torch.from_numpy(positions)].to(value_torch_dtype)
    return RelativeEncoded(
        values=values,
        packed_indices=torch.from_numpy(pack_bits(codes, index_bits)),
        num_entries=num_entries,
        num_fillers=num_entries - int(positions.size),
        shape=tuple(int(s) for s in weight.shape),
        index_bits=int(index_bits),
        value_dtype=value_name,
        dtype=weight_dtype_name(weight.dtype),
    )


def decode_relative(enc: RelativeEncoded) -> torch.Tensor:
    """Rebuild the dense weight from its relative-index encoding.

    Args:
        enc: an encoding from :func:`encode_relative` (or read back from a file).

    Returns:
        A dense CPU tensor of ``enc.shape`` and ``enc.dtype``; bit-identical to the encoded
        weight when values were stored in its dtype (zeros come back as ``+0.0``).

    Raises:
        ValueError: if the encoding is inconsistent (array lengths, dtypes, filler count, or
            indices that run past the end of the tensor).

    Example:
        >>> w = torch.zeros(4, 50)
        >>> w[3, 49] = 7.0
        >>> torch.equal(decode_relative(encode_relative(w, 5)), w)
        True
    """
    _check_bits(enc.index_bits)
    _, value_torch_dtype = resolve_value_dtype(enc.value_dtype)
    dense_dtype = weight_dtype_from_name(enc.dtype)
    if any(int(s) < 0 for s in enc.shape):
        raise ValueError(f"invalid shape {enc.shape}")
    numel = math.prod(enc.shape)
    if not 0 <= enc.num_fillers <= enc.num_entries:
        raise ValueError(f"num_fillers={enc.num_fillers} not in [0, num_entries={enc.num_entries}]")
    values = enc.values
    if values.dim() != 1 or values.numel() != enc.num_entries:
        raise ValueError(f"values has shape {tuple(values.shape)}, expected ({enc.num_entries},)")
    if values.dtype != value_torch_dtype:
        raise ValueError(f"values has dtype {values.dtype}, expected {value_torch_dtype}")
    if enc.packed_indices.dtype != torch.uint8:
        raise ValueError(f"packed_indices has dtype {enc.packed_indices.dtype}, expected uint8")
    codes = unpack_bits(
        enc.packed_indices.detach().cpu().contiguous().numpy(), enc.index_bits, enc.num_entries
    )
    max_code = (1 << enc.index_bits) - 1
    positions = entry_positions(codes, enc.shape)
    # Only entries with the maximal code can be fillers; a count above that is corrupt.
    if enc.num_fillers > int(np.count_nonzero(codes == max_code)):
        raise ValueError(f"num_fillers={enc.num_fillers} exceeds the entries that can be fillers")
    dense = dense_zeros(numel, dense_dtype)
    # Fillers write their 0 onto a zero position, so no mask is needed.
    dense[torch.from_numpy(positions)] = values.detach().cpu().to(dense_dtype)
    return dense.reshape(enc.shape)
