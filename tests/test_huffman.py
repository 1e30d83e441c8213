"""Canonical Huffman coding (prunelab.export.huffman): exact round trips, optimality bounds,
deterministic tables, length limits, and a decoder that refuses corrupt streams."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunelab.export.huffman import (
    MAX_CODE_LENGTH,
    HuffmanCoded,
    canonical_codes,
    coded_nbits,
    entropy_bits,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
    symbol_counts,
)

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def kraft(lengths: np.ndarray) -> float:
    used = np.asarray(lengths, dtype=np.int64)
    used = used[used > 0]
    return float(np.sum(2.0 ** -used))


def reference_decode(lengths: np.ndarray, stream: np.ndarray, count: int) -> list[int]:
    """Bit-by-bit decoder written from the canonical-code definition (no tables)."""
    codes = canonical_codes(lengths)
    words = {(int(lengths[s]), int(codes[s])): s for s in np.flatnonzero(lengths)}
    bits = np.unpackbits(stream).tolist()
    out, length, value = [], 0, 0
    for bit in bits:
        if len(out) == count:
            break
        length, value = length + 1, (value << 1) | bit
        if (length, value) in words:
            out.append(words[(length, value)])
            length, value = 0, 0
    return out


# Skewed streams: symbols drawn from a geometric-like pool so that code lengths vary.
def skewed_streams() -> st.SearchStrategy[list[int]]:
    return st.integers(1, 40).flatmap(
        lambda alphabet: st.lists(
            st.integers(0, alphabet - 1).map(lambda s: s * s // max(1, alphabet - 1)),
            max_size=2000,
        )
    )


STREAMS = st.one_of(
    st.lists(st.integers(0, 300), max_size=2000),
    skewed_streams(),
    st.lists(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 31]), max_size=2000),
)


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(STREAMS)
def test_round_trip_and_length_equals_sum_of_code_lengths(stream: list[int]) -> None:
    symbols = np.array(stream, dtype=np.int64)
    coded = huffman_encode(symbols)
    assert huffman_decode(coded).tolist() == stream
    counts = symbol_counts(symbols)
    lengths = coded.code_lengths.astype(np.int64)
    assert coded.nbits == int((counts * lengths).sum()) == coded_nbits(counts, lengths)
    assert coded.stream.size == math.ceil(coded.nbits / 8)
    assert coded.count == len(stream)
    assert np.all((lengths > 0) == (counts > 0)) or len(set(stream)) <= 1


@SETTINGS
@given(STREAMS)
def test_within_one_bit_of_the_entropy(stream: list[int]) -> None:
    # At most 2000 symbols: no Huffman code is deeper than 16 bits (that needs counts summing
    # to at least Fibonacci(19) = 4181), so the length limit never binds here.
    symbols = np.array(stream, dtype=np.int64)
    if symbols.size == 0:
        return
    coded = huffman_encode(symbols)
    counts = symbol_counts(symbols)
    entropy = entropy_bits(counts)
    average = coded.nbits / symbols.size
    assert average >= entropy - 1e-9  # no prefix code beats the entropy
    if np.count_nonzero(counts) >= 2:
        assert average < entropy + 1  # Huffman's bound
        assert kraft(coded.code_lengths) == pytest.approx(1.0)  # a complete code
    else:
        assert average == 1.0  # a lone symbol takes one bit


@SETTINGS
@given(STREAMS, st.randoms(use_true_random=False))
def test_lengths_are_deterministic_and_ignore_stream_order(stream: list[int], rnd) -> None:
    shuffled = list(stream)
    rnd.shuffle(shuffled)
    a = huffman_encode(np.array(stream, dtype=np.int64))
    b = huffman_encode(np.array(shuffled, dtype=np.int64))
    assert a.code_lengths.tolist() == b.code_lengths.tolist()
    assert a.nbits == b.nbits
    assert huffman_decode(b).tolist() == shuffled


@SETTINGS
@given(STREAMS)
def test_matches_a_bit_by_bit_reference_decoder(stream: list[int]) -> None:
    coded = huffman_encode(np.array(stream, dtype=np.int64))
    assert reference_decode(coded.code_lengths, coded.stream, coded.count) == stream


@SETTINGS
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=300), st.integers(1, 16))
def test_length_limit(counts: list[int], max_length: int) -> None:
    counts_array = np.array(counts, dtype=np.int64)
    present = int(np.count_nonzero(counts_array))
    if present > 1 << max_length:
        with pytest.raises(ValueError, match="cannot be told apart"):
            huffman_code_lengths(counts_array, max_length)
        return
    limited = huffman_code_lengths(counts_array, max_length)
    free = huffman_code_lengths(counts_array, MAX_CODE_LENGTH)
    assert int(limited.max(initial=0)) <= max_length
    assert np.all((limited > 0) == (counts_array > 0))
    if present >= 2:
        assert kraft(limited) == pytest.approx(1.0)
    # a limit can only cost bits; without a binding limit the lengths are Huffman's
    assert coded_nbits(counts_array, limited) >= coded_nbits(counts_array, free)
    if int(free.max(initial=0)) <= max_length:
        assert coded_nbits(counts_array, limited) == coded_nbits(counts_array, free)
    # more frequent symbols never get longer codes
    order = np.argsort(-counts_array[counts_array > 0], kind="stable")
    assert np.all(np.diff(limited[counts_array > 0][order].astype(int)) >= 0)


def test_length_limit_binds_on_fibonacci_counts() -> None:
    fib = [1, 1]
    while len(fib) < 24:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib, dtype=np.int64)
    free = huffman_code_lengths(counts)
    assert int(free.max()) == MAX_CODE_LENGTH  # the default limit already binds (23 unlimited)
    for limit in (5, 8, 12):
        lengths = huffman_code_lengths(counts, limit)
        assert int(lengths.max()) == limit and kraft(lengths) == pytest.approx(1.0)
        symbols = np.repeat(np.arange(counts.size), np.minimum(counts, 50))
        np.random.default_rng(limit).shuffle(symbols)
        coded = huffman_encode(symbols, max_length=limit)
        assert int(coded.code_lengths.max()) <= limit
        assert np.array_equal(huffman_decode(coded), symbols)


# ----------------------------------------------------------------------------- known values


def test_known_code_and_bits() -> None:
    coded = huffman_encode(np.array([0, 0, 0, 1, 2, 0]))
    assert coded.code_lengths.tolist() == [1, 2, 2]
    # canonical: 0 -> 0, 1 -> 10, 2 -> 11; stream 0 0 0 10 11 0, MSB first
    assert [format(int(c), "b") for c in canonical_codes(coded.code_lengths)] == ["0", "10", "11"]
    assert coded.nbits == 8 and coded.stream.tolist() == [0b00010110]


def test_canonical_codes_follow_deflate() -> None:
    # RFC 1951's example: lengths (3, 3, 3, 3, 3, 2, 4, 4) give these codes
    codes = canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4]))
    expected = ["010", "011", "100", "101", "110", "00", "1110", "1111"]
    lengths = [3, 3, 3, 3, 3, 2, 4, 4]
    assert [format(int(c), f"0{n}b") for c, n in zip(codes, lengths, strict=True)] == expected


def test_ties_are_broken_by_symbol() -> None:
    # four equal counts: a full tree of depth 2, whatever the order of the symbols
    assert huffman_code_lengths(np.array([3, 3, 3, 3])).tolist() == [2, 2, 2, 2]
    # three equal counts: one symbol gets 1 bit, the smallest one
    assert huffman_code_lengths(np.array([3, 3, 3])).tolist() == [1, 2, 2]
    assert huffman_code_lengths(np.array([0, 7, 7, 7])).tolist() == [0, 1, 2, 2]
    # a leaf before an internal node of equal weight: the flat tree, not 1-2-3-3 (same cost)
    assert huffman_code_lengths(np.array([1, 1, 2, 2])).tolist() == [2, 2, 2, 2]


def test_edge_cases() -> None:
    empty = huffman_encode(np.array([], dtype=np.int64))
    assert (empty.count, empty.nbits, empty.stream.size, empty.code_lengths.size) == (0, 0, 0, 0)
    assert huffman_decode(empty).tolist() == []

    lone = huffman_encode(np.array([5]))
    assert lone.code_lengths.tolist() == [0, 0, 0, 0, 0, 1] and lone.nbits == 1
    assert huffman_decode(lone).tolist() == [5]

    same = huffman_encode(np.full(1001, 3), alphabet_size=10)
    assert same.code_lengths.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert same.nbits == 1001 and same.stream.size == 126
    assert huffman_decode(same).tolist() == [3] * 1001

    wide = huffman_encode(np.arange(1 << 16))  # the whole 16-bit alphabet: 16 bits each
    assert set(wide.code_lengths.tolist()) == {16} and wide.nbits == 16 << 16
    assert np.array_equal(huffman_decode(wide), np.arange(1 << 16))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        huffman_encode(np.array([-1, 2]))
    with pytest.raises(ValueError, match="must lie in"):
        huffman_encode(np.array([1 << 16]))
    with pytest.raises(TypeError, match="integers"):
        huffman_encode(np.array([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        huffman_encode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="alphabet_size"):
        huffman_encode(np.array([4]), alphabet_size=3)
    with pytest.raises(ValueError, match="max_length"):
        huffman_encode(np.array([1]), max_length=17)
    with pytest.raises(ValueError, match="cannot be told apart"):
        huffman_encode(np.arange(5), max_length=2)
    with pytest.raises(ValueError, match="non-negative"):
        huffman_code_lengths(np.array([1, -1]))


# ----------------------------------------------------------------------------- corrupt input


def _coded(**changes: object) -> HuffmanCoded:
    good = huffman_encode(np.array([0, 1, 1, 2, 2, 2, 2, 3] * 5))
    return HuffmanCoded(**{**good.__dict__, **changes})


def test_decoder_refuses_inconsistent_streams() -> None:
    good = _coded()
    cases = {
        "bytes, expected": {"stream": good.stream[:-1]},
        "for 0 symbols": {"count": 0},
        "cannot fill": {"count": good.count * 10},
        "over-subscribed": {"code_lengths": np.array([1, 1, 1, 1], dtype=np.uint8)},
        "code lengths must lie": {"code_lengths": np.array([17, 1], dtype=np.uint8)},
        "no symbol has a code": {"code_lengths": np.zeros(4, dtype=np.uint8)},
        "non-negative int": {"nbits": -1},
        "1-D uint8": {"stream": good.stream.astype(np.int16)},
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            huffman_decode(_coded(**change))
    # 70 bits in 9 bytes; claiming 69 turns the last codeword's final bit (a 1: symbol 3 is
    # "111") into a padding bit
    assert (good.nbits, good.stream.size, good.code_lengths.tolist()) == (70, 9, [3, 2, 1, 3])
    with pytest.raises(ValueError, match="padding"):
        huffman_decode(_coded(nbits=69))


def test_decoder_refuses_a_pattern_that_is_no_codeword() -> None:
    lone = huffman_encode(np.array([2, 2, 2]))  # code "0" only: a 1 bit is no codeword
    with pytest.raises(ValueError, match="invalid codeword"):
        huffman_decode(HuffmanCoded(lone.code_lengths, np.array([0b0100_0000], np.uint8), 3, 3))
    with pytest.raises(ValueError, match="padding"):
        huffman_decode(HuffmanCoded(lone.code_lengths, np.array([0b0001_0000], np.uint8), 3, 3))


def test_decoder_refuses_codewords_that_do_not_end_at_nbits() -> None:
    coded = huffman_encode(np.array([0, 1, 2, 3, 3, 3, 3, 3]))
    assert coded.code_lengths.tolist() == [2, 3, 3, 1]  # equal counts: the smaller symbol first
    assert coded.nbits == 13
    # one bit more than the codewords use (a zero padding bit): they end before nbits
    longer = HuffmanCoded(coded.code_lengths, coded.stream, coded.count, coded.nbits + 1)
    with pytest.raises(ValueError, match="do not end exactly at bit 14"):
        huffman_decode(longer)
    # one codeword fewer claimed than the stream holds
    fewer = HuffmanCoded(coded.code_lengths, coded.stream, coded.count - 1, coded.nbits)
    with pytest.raises(ValueError, match="do not end exactly"):
        huffman_decode(fewer)


@SETTINGS
@given(st.lists(st.integers(0, 20), min_size=1, max_size=400), st.data())
def test_flipped_bits_decode_to_some_stream_or_raise(stream: list[int], data) -> None:
    coded = huffman_encode(np.array(stream, dtype=np.int64))
    bad = coded.stream.copy()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, coded.nbits - 1))
        bad[at // 8] ^= 1 << (7 - at % 8)
    try:
        out = huffman_decode(HuffmanCoded(coded.code_lengths, bad, coded.count, coded.nbits))
    except ValueError:
        return
    assert out.shape == (len(stream),)
    assert np.all((out >= 0) & (out < coded.code_lengths.size))
    assert np.all(coded.code_lengths[out] > 0)


# ----------------------------------------------------------------------------- speed


def test_decodes_a_lenet300_layer_fast() -> None:
    # fc1 of LeNet-300-100 at Han's 8% density: about 19k nonzeros plus fillers, 30k symbols
    rng = np.random.default_rng(0)
    gaps = np.minimum(rng.geometric(0.08, size=30_000) - 1, 31)
    clusters = np.clip(np.round(rng.normal(16, 5, size=30_000)), 0, 31).astype(np.int64)
    for symbols in (gaps, clusters):
        coded = huffman_encode(symbols)
        start = time.process_time()  # CPU time: other jobs on a shared machine do not count
        out = huffman_decode(coded)
        elapsed = time.process_time() - start
        assert np.array_equal(out, symbols)
        assert elapsed < 0.25, f"decoding {symbols.size} symbols took {elapsed:.3f}s"


@pytest.mark.slow
def test_decodes_four_million_symbols() -> None:
    symbols = np.random.default_rng(1).integers(0, 256, size=4_000_000)
    coded = huffman_encode(symbols)
    start = time.process_time()
    assert np.array_equal(huffman_decode(coded), symbols)
    assert time.process_time() - start < 10.0
