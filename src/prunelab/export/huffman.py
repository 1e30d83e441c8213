"""Canonical Huffman coding of integer symbol streams (Deep Compression's last stage).

Han et al. 2016 Huffman-code two streams of a pruned, weight-shared layer: the codebook index
of every stored weight and the relative-index gaps. Both have skewed distributions, so a
variable-length prefix code stores them in fewer bits than a fixed width.

Code construction
-----------------
Code lengths come from the symbol counts by Huffman's algorithm (two queues over the leaves
sorted by ``(count, symbol)``; on equal weights a leaf is merged before an internal node), so
the same counts always give the same lengths. Lengths are limited to ``max_length`` bits
(default and most :data:`MAX_CODE_LENGTH` = 16) by JPEG's adjustment (ITU T.81 Annex K.3): the
multiset of lengths is moved toward shorter ones keeping the Kraft sum at 1, then lengths are
handed out again, shortest first, to the symbols ordered by count (descending) and symbol
(ascending). A lone symbol gets length 1; an empty stream has no codes (all lengths 0).

Codes are *canonical* (as in DEFLATE): symbols sorted by ``(length, symbol)`` receive
consecutive code values, each shifted left whenever the length grows. The code lengths alone
therefore define the code, and that is all a file stores of the table.

Bit stream
----------
Codewords are concatenated most significant bit first, and the stream is read the same way:
stream bit ``k`` is bit ``7 - k % 8`` of byte ``k // 8`` (``numpy.packbits``' default order).
This is unlike the fixed-width index stream of :mod:`prunelab.export.relative_index` (LSB
first): a prefix code is decoded first bit first. The stream is padded with zero bits to whole
bytes; ``nbits`` (the exact bit length, ``sum(count * length)``) is kept beside it.

Decoding is vectorised: one table lookup at *every* bit position gives the symbol and the
length of the codeword that would start there, and pointer doubling over "next codeword
starts at ``p + length``" finds the positions where codewords really start in
``ceil(log2(count))`` NumPy passes, with no Python loop over symbols.

Example (codes ``0`` -> 0, ``1`` -> 10, ``2`` -> 11):
    >>> import numpy as np
    >>> coded = huffman_encode(np.array([0, 0, 0, 1, 2, 0]))
    >>> coded.code_lengths.tolist(), coded.nbits, format(int(coded.stream[0]), "08b")
    ([1, 2, 2], 8, '00010110')
    >>> huffman_decode(coded).tolist()
    [0, 0, 0, 1, 2, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_ALPHABET",
    "MAX_CODE_LENGTH",
    "HuffmanCoded",
    "canonical_codes",
    "coded_nbits",
    "entropy_bits",
    "huffman_code_lengths",
    "huffman_decode",
    "huffman_encode",
    "symbol_counts",
]

#: Longest code allowed: the decoder's lookup table has ``2**max(lengths)`` entries.
MAX_CODE_LENGTH = 16
#: Most symbols an alphabet may have (every symbol fits a 16-bit code at the length limit).
MAX_ALPHABET = 1 << MAX_CODE_LENGTH

# Symbols encoded (or bit positions decoded) per chunk, bounding the temporary arrays.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HuffmanCoded:
    """A Huffman-coded symbol stream.

    Attributes:
        code_lengths: 1-D ``uint8`` array, the code length of each symbol ``0..n-1`` (0: the
            symbol does not occur); the whole code table (codes are canonical).
        stream: 1-D ``uint8`` array of ``ceil(nbits / 8)`` bytes, MSB first, zero padded.
        count: number of symbols coded.
        nbits: exact length of the stream in bits, ``sum(count_s * code_lengths[s])``.
    """

    code_lengths: np.ndarray
    stream: np.ndarray
    count: int
    nbits: int

    @property
    def stream_nbytes(self) -> int:
        """Bytes of the packed stream."""
        return int(self.stream.size)

    @property
    def table_nbytes(self) -> int:
        """Bytes of the stored table (one byte per code length)."""
        return int(self.code_lengths.size)


def _check_max_length(max_length: int) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer):
        raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length={max_length} is out of range; allowed 1..{MAX_CODE_LENGTH}")
    return int(max_length)


def _as_symbols(symbols: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {symbols.shape}")
    if symbols.size == 0:
        return symbols.astype(np.int64)
    if not np.issubdtype(symbols.dtype, np.integer):
        raise TypeError(f"symbols must be integers, got dtype {symbols.dtype}")
    lo, hi = int(symbols.min()), int(symbols.max())
    if lo < 0 or hi >= MAX_ALPHABET:
        raise ValueError(f"symbols must lie in [0, {MAX_ALPHABET - 1}], got [{lo}, {hi}]")
    return symbols.astype(np.int64, copy=False)


def symbol_counts(symbols: np.ndarray, alphabet_size: int | None = None) -> np.ndarray:
    """How often each symbol ``0..alphabet_size-1`` occurs.

    Args:
        symbols: 1-D array of non-negative integers below :data:`MAX_ALPHABET`.
        alphabet_size: length of the result; default ``max(symbols) + 1`` (0 when empty).

    Returns:
        1-D ``int64`` array of counts.

    Raises:
        ValueError: a symbol out of range or not below ``alphabet_size``.
        TypeError: non-integer symbols.

    Example:
        >>> symbol_counts(np.array([2, 0, 2])).tolist()
        [1, 0, 2]
    """
    symbols = _as_symbols(symbols)
    top = int(symbols.max()) + 1 if symbols.size else 0
    if alphabet_size is None:
        alphabet_size = top
    elif not 0 <= alphabet_size <= MAX_ALPHABET or top > alphabet_size:
        raise ValueError(
            f"alphabet_size={alphabet_size} must lie in [{top}, {MAX_ALPHABET}] for symbols "
            f"up to {top - 1}"
        )
    return np.bincount(symbols, minlength=alphabet_size).astype(np.int64)


def _huffman_depths(weights: list[int]) -> list[int]:
    """Depth of each leaf in the Huffman tree of ``weights`` (sorted ascending, >= 2 leaves).

    Two queues: the sorted leaves and the internal nodes, which are created in non-decreasing
    weight order, so the two smallest nodes are always at the queues' fronts. On equal weights
    the leaf is taken first, which keeps the tree shallow (minimum-variance Huffman).
    """
    n = len(weights)
    internal = [0] * (n - 1)
    parent = [0] * (2 * n - 1)  # leaves 0..n-1, internal nodes n..2n-2
    leaf, node = 0, 0
    for k in range(n - 1):
        pair = 0
        for _ in range(2):
            if leaf < n and (node >= k or weights[leaf] <= internal[node]):
                parent[leaf] = n + k
                pair += weights[leaf]
                leaf += 1
            else:
                parent[n + node] = n + k
                pair += internal[node]
                node += 1
        internal[k] = pair
    depth = [0] * (2 * n - 1)
    for index in range(2 * n - 3, -1, -1):  # the root (2n-2) has depth 0; parents come later
        depth[index] = depth[parent[index]] + 1
    return depth[:n]


def _limit_length_counts(per_length: list[int], max_length: int) -> list[int]:
    """JPEG's Annex K.3 adjustment: no code longer than ``max_length``, Kraft sum unchanged.

    Two codes at the longest length ``i`` are siblings; one moves up to ``i - 1`` and the other
    pairs with a code at the longest length ``j <= i - 2`` that has codes, both becoming
    ``j + 1``: the number of codes and the Kraft sum stay the same.
    """
    counts = list(per_length)
    for i in range(len(counts) - 1, max_length, -1):
        while counts[i] > 0:
            j = i - 2
            while counts[j] == 0:
                j -= 1
            counts[i] -= 2
            counts[i - 1] += 1
            counts[j + 1] += 2
            counts[j] -= 1
    return counts[: max_length + 1]


def huffman_code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Code length of every symbol from its count (deterministic; see the module docstring).

    Args:
        counts: 1-D array of non-negative symbol counts (index = symbol).
        max_length: longest code allowed, 1..16.

    Returns:
        1-D ``uint8`` array of lengths (0 for symbols that do not occur; 1 for a lone symbol).

    Raises:
        ValueError: negative counts, more than :data:`MAX_ALPHABET` symbols, or more
            occurring symbols than ``2**max_length`` codes of that length can tell apart.

    Example:
        >>> huffman_code_lengths(np.array([5, 1, 1, 0, 2])).tolist()
        [1, 3, 3, 0, 2]
        >>> huffman_code_lengths(np.array([1, 1, 2, 4, 8, 16]), max_length=3).tolist()
        [3, 3, 3, 3, 2, 2]
    """
    max_length = _check_max_length(max_length)
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
        raise ValueError(f"counts must be a 1-D integer array, got {counts.dtype} {counts.shape}")
    if counts.size > MAX_ALPHABET:
        raise ValueError(f"{counts.size} symbols exceed the most allowed, {MAX_ALPHABET}")
    if counts.size and int(counts.min()) < 0:
        raise ValueError("counts must be non-negative")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    present = np.flatnonzero(counts)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    if present.size > 1 << max_length:
        raise ValueError(
            f"{present.size} distinct symbols cannot be told apart by codes of at most "
            f"{max_length} bits (at most {1 << max_length})"
        )
    weights = counts[present].astype(np.int64)
    ascending = present[np.lexsort((present, weights))]
    depths = _huffman_depths([int(counts[s]) for s in ascending])
    per_length = [0] * (max(depths) + 1)
    for d in depths:
        per_length[d] += 1
    per_length = _limit_length_counts(per_length, max_length)
    # Shortest codes to the most frequent symbols (ties: the smaller symbol first).
    by_frequency = present[np.lexsort((present, -weights))]
    lengths[by_frequency] = np.repeat(
        np.arange(len(per_length), dtype=np.uint8), per_length
    )
    return lengths


def _check_lengths(code_lengths: np.ndarray) -> np.ndarray:
    lengths = np.asarray(code_lengths)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(
            f"code lengths must be a 1-D integer array, got {lengths.dtype} {lengths.shape}"
        )
    if lengths.size > MAX_ALPHABET:
        raise ValueError(f"{lengths.size} code lengths exceed the most allowed, {MAX_ALPHABET}")
    if lengths.size and (int(lengths.min()) < 0 or int(lengths.max()) > MAX_CODE_LENGTH):
        raise ValueError(f"code lengths must lie in [0, {MAX_CODE_LENGTH}]")
    lengths = lengths.astype(np.int64)
    used = lengths[lengths > 0]
    # Kraft's inequality in integers: sum 2**(L - l) <= 2**L; above it no prefix code exists.
    if used.size and int(np.left_shift(1, MAX_CODE_LENGTH - used).sum()) > 1 << MAX_CODE_LENGTH:
        raise ValueError("code lengths are over-subscribed (their Kraft sum exceeds 1)")
    return lengths


def canonical_codes(code_lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol from the code lengths alone.

    Args:
        code_lengths: 1-D array of lengths 0..16 (0: no code) satisfying Kraft's inequality.

    Returns:
        1-D ``uint32`` array: the code of symbol ``s`` is the low ``code_lengths[s]`` bits of
        entry ``s`` (0 for symbols without a code).

    Raises:
        ValueError: lengths out of range or over-subscribed.

    Example:
        >>> [format(int(c), "b") for c in canonical_codes(np.array([2, 1, 3, 3]))]
        ['10', '0', '110', '111']
    """
    lengths = _check_lengths(code_lengths)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    sorted_lengths = lengths[order]
    per_length = np.bincount(sorted_lengths, minlength=MAX_CODE_LENGTH + 1)
    # First code of each length (DEFLATE, RFC 1951 3.2.2): next = (next + count[l-1]) << 1.
    first = np.zeros(MAX_CODE_LENGTH + 1, dtype=np.int64)
    code = 0
    for length in range(1, MAX_CODE_LENGTH + 1):
        code = (code + int(per_length[length - 1])) << 1
        first[length] = code
    rank_in_length = np.arange(order.size) - np.searchsorted(sorted_lengths, sorted_lengths)
    codes[order] = (first[sorted_lengths] + rank_in_length).astype(np.uint32)
    return codes


def coded_nbits(counts: np.ndarray, code_lengths: np.ndarray) -> int:
    """Bits of a stream with these symbol counts under these code lengths.

    Example:
        >>> coded_nbits(np.array([4, 1, 1]), np.array([1, 2, 2]))
        8
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.asarray(code_lengths, dtype=np.int64)
    return int((counts * lengths[: counts.size]).sum())


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy of the empirical distribution, in bits per symbol (0 when empty).

    Example:
        >>> entropy_bits(np.array([1, 1, 2]))
        1.5
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def huffman_encode(
    symbols: np.ndarray,
    *,
    alphabet_size: int | None = None,
    max_length: int = MAX_CODE_LENGTH,
) -> HuffmanCoded:
    """Huffman-code a stream of integer symbols (vectorised).

    Args:
        symbols: 1-D integer array, values in ``[0, alphabet_size)``.
        alphabet_size: length of the stored table; default ``max(symbols) + 1``.
        max_length: longest code allowed, 1..16.

    Returns:
        The :class:`HuffmanCoded` stream (lengths, packed bits, count, exact bit length).

    Raises:
        ValueError, TypeError: as :func:`symbol_counts` and :func:`huffman_code_lengths`.

    Example:
        >>> coded = huffman_encode(np.array([7, 7, 7]))
        >>> coded.code_lengths.tolist()[-1], coded.nbits, coded.stream.tolist()
        (1, 3, [0])
    """
    symbols = _as_symbols(symbols)
    counts = symbol_counts(symbols, alphabet_size)
    lengths = huffman_code_lengths(counts, max_length)
    codes = canonical_codes(lengths).astype(np.int64)
    wide_lengths = lengths.astype(np.int64)
    nbits = coded_nbits(counts, lengths)
    bits = np.zeros(nbits, dtype=np.uint8)
    offset = 0
    for start in range(0, symbols.size, _CHUNK):
        chunk = symbols[start : start + _CHUNK]
        chunk_lengths = wide_lengths[chunk]
        total = int(chunk_lengths.sum())
        # For every bit of the chunk: which codeword it belongs to and its place in it.
        owner = np.repeat(np.arange(chunk.size), chunk_lengths)
        starts = np.cumsum(chunk_lengths) - chunk_lengths
        place = np.arange(total) - starts[owner]
        shift = chunk_lengths[owner] - 1 - place  # most significant bit first
        bits[offset : offset + total] = (codes[chunk][owner] >> shift) & 1
        offset += total
    return HuffmanCoded(
        code_lengths=lengths,
        stream=np.packbits(bits),
        count=int(symbols.size),
        nbits=nbits,
    )


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup tables indexed by the next ``width`` stream bits: symbol and code length there
    (length 0 where no codeword matches, which only an incomplete code has)."""
    width = int(lengths.max())
    codes = canonical_codes(lengths).astype(np.int64)
    used = np.flatnonzero(lengths)
    spans = np.left_shift(1, width - lengths[used])  # table entries each code covers
    first = np.left_shift(codes[used], width - lengths[used])
    entry = np.repeat(first - np.cumsum(spans) + spans, spans) + np.arange(int(spans.sum()))
    table_symbol = np.zeros(1 << width, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    table_symbol[entry] = np.repeat(used, spans)
    table_length[entry] = np.repeat(lengths[used], spans)
    return table_symbol, table_length, width


def _windows(words: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` stream bits starting at each bit position, as integers (MSB first)."""
    word = words[positions >> 3]
    return (word >> (24 - width - (positions & 7))) & ((1 << width) - 1)


def huffman_decode(coded: HuffmanCoded) -> np.ndarray:
    """Decode a Huffman-coded stream exactly, checking it is consistent.

    Args:
        coded: a :class:`HuffmanCoded` (from :func:`huffman_encode` or read from a file).

    Returns:
        1-D ``int64`` array of ``coded.count`` symbols.

    Raises:
        ValueError: bad code lengths, a stream whose size does not match ``nbits``, nonzero
            padding bits, a bit pattern that is no codeword, codewords that run past
            ``nbits`` or end before it.

    Example:
        >>> huffman_decode(huffman_encode(np.arange(5) % 3)).tolist()
        [0, 1, 2, 0, 1]
    """
    lengths = _check_lengths(coded.code_lengths)
    count, nbits = coded.count, coded.nbits
    for name, value in (("count", count), ("nbits", nbits)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative int")
    count, nbits = int(count), int(nbits)
    stream = np.asarray(coded.stream)
    if stream.ndim != 1 or stream.dtype != np.uint8:
        raise ValueError(f"stream must be a 1-D uint8 array, got {stream.dtype} {stream.shape}")
    if stream.size != (nbits + 7) // 8:
        raise ValueError(
            f"stream has {stream.size} bytes, expected {(nbits + 7) // 8} for {nbits} bits"
        )
    pad = stream.size * 8 - nbits
    if pad and int(stream[-1]) & ((1 << pad) - 1):
        raise ValueError("nonzero padding bits at the end of the Huffman stream")
    if count == 0:
        if nbits:
            raise ValueError(f"{nbits} bits for 0 symbols")
        return np.zeros(0, dtype=np.int64)
    used = lengths[lengths > 0]
    if used.size == 0:
        raise ValueError(f"{count} symbols but no symbol has a code")
    # Each codeword takes between min(used) and max(used) bits: this bounds the work below.
    if not count * int(used.min()) <= nbits <= count * int(used.max()):
        raise ValueError(
            f"{count} codewords of {int(used.min())}..{int(used.max())} bits cannot fill "
            f"{nbits} bits"
        )
    table_symbol, table_length, width = _decode_table(lengths)
    padded = np.concatenate([stream, np.zeros(3, dtype=np.uint8)]).astype(np.int64)
    words = (padded[:-2] << 16) | (padded[1:-1] << 8) | padded[2:]  # 24 bits from each byte
    index_dtype = np.int32 if nbits + 2 < np.iinfo(np.int32).max else np.int64
    end, bad = nbits, nbits + 1  # absorbing states: the stream's end, an invalid codeword
    following = np.empty(nbits + 2, dtype=index_dtype)
    following[end], following[bad] = end, bad
    for start in range(0, nbits, _CHUNK):
        positions = np.arange(start, min(start + _CHUNK, nbits), dtype=np.int64)
        step = table_length[_windows(words, positions, width)]
        after = positions + step
        after[(step == 0) | (after > nbits)] = bad
        following[start : start + positions.size] = after
    # Pointer doubling: starts holds the first 2**k codeword positions, jump = following^(2**k).
    starts = np.zeros(1, dtype=index_dtype)
    jump = following
    while starts.size < count:
        starts = np.concatenate([starts, jump[starts[: count - starts.size]]])
        if starts.size < count:
            jump = jump[jump]
    if int(starts[-1]) >= nbits:
        raise ValueError(
            f"the stream holds an invalid codeword or fewer than {count} codewords in {nbits} bits"
        )
    if int(following[starts[-1]]) != end:
        raise ValueError(f"{count} codewords do not end exactly at bit {nbits}")
    return table_symbol[_windows(words, starts.astype(np.int64), width)]

