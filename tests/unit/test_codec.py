"""hal.codec: register words ↔ numbers and text, with tables of known words and round-trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal.modbus import codec
from hal.modbus.codec import CodecError, decode, encode, register_count

# (type, word order, words as a device sends them, value). Words worked out by hand from the
# IEEE-754 / two's-complement layouts, not produced by the codec.
KNOWN = [
    ("uint16", "big", [0x1234], 0x1234),
    ("int16", "big", [0xFFFF], -1),
    ("int16", "big", [0x8000], -32768),
    ("uint32", "big", [0x0001, 0x0002], 0x0001_0002),
    ("uint32", "little", [0x0002, 0x0001], 0x0001_0002),
    ("int32", "big", [0xFFFE, 0x1DC0], -123456),
    ("int32", "little", [0x1DC0, 0xFFFE], -123456),
    ("uint64", "big", [0, 0, 0x0001, 0xE240], 123456),
    ("uint64", "little", [0xE240, 0x0001, 0, 0], 123456),
    ("int64", "big", [0xFFFF] * 4, -1),
    ("float32", "big", [0x4479, 0xC000], 999.0),
    ("float32", "little", [0xC000, 0x4479], 999.0),
    ("float32", "big", [0xC4BB, 0x8000], -1500.0),
    ("float64", "big", [0x40FE, 0x2408, 0, 0], 123456.5),
    ("float64", "little", [0, 0, 0x2408, 0x40FE], 123456.5),
    ("string5", "big", [0x4332, 0, 0, 0, 0], "C2"),
    ("string2", "big", [0x4142, 0x4344], "ABCD"),
    ("string1", "big", [0x4100], "A"),
    ("bit", "big", [1], 1),
    ("bit", "big", [0], 0),
]


@pytest.mark.parametrize(("type_", "order", "words", "value"), KNOWN)
def test_decode_known_words(type_: str, order: str, words: list[int], value: object) -> None:
    assert decode(words, type_, order) == value


@pytest.mark.parametrize(("type_", "order", "words", "value"), KNOWN)
def test_encode_gives_the_known_words(type_: str, order: str, words: list[int], value: object) -> None:
    assert encode(value, type_, order) == words


@pytest.mark.parametrize(
    ("words", "text"),
    [
        ([0x4120, 0x2020], "A"),  # space padding
        ([0x2041, 0x4200], "AB"),  # leading space, trailing NUL
        ([0x4100, 0x5858], "A"),  # text ends at the first NUL; what follows is garbage
        ([0x0000, 0x0000], ""),
        ([0x41FF], "A\ufffd"),  # a non-ASCII byte does not fail the read
    ],
)
def test_string_padding_is_stripped(words: list[int], text: str) -> None:
    assert decode(words, f"string{len(words)}") == text


def test_nan_and_infinity_decode_as_floats() -> None:
    # Rejecting them is the profile's job (ValueSpec.decode); the codec only decodes.
    assert math.isnan(decode([0xFFFF, 0xFFFF], "float32"))
    assert decode([0x7F80, 0x0000], "float32") == math.inf


@pytest.mark.parametrize(
    ("type_", "count"),
    [("uint16", 1), ("int16", 1), ("bit", 1), ("uint32", 2), ("int32", 2), ("float32", 2),
     ("uint64", 4), ("int64", 4), ("float64", 4), ("string1", 1), ("string5", 5), ("string125", 125)],
)  # fmt: skip
def test_register_count(type_: str, count: int) -> None:
    assert register_count(type_) == count


@pytest.mark.parametrize("type_", ["flaot32", "uint8", "string0", "string", "string126", "String5", "", 16])
def test_unknown_types_are_errors(type_: object) -> None:
    with pytest.raises(CodecError):
        register_count(type_)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decode([1], "uint32"), "needs 2 words"),
        (lambda: decode([0x10000], "uint16"), "not in 0..65535"),
        (lambda: decode([-1], "uint16"), "not in 0..65535"),
        (lambda: decode([2], "bit"), "not in 0..1"),
        (lambda: decode([1, 2], "uint32", "middle"), "unknown word order"),
        (lambda: encode(65536, "uint16"), "does not fit"),
        (lambda: encode(-1, "uint32"), "does not fit"),
        (lambda: encode(2**63, "int64"), "does not fit"),
        (lambda: encode(1.5, "uint16"), "needs an integer"),
        (lambda: encode("1", "uint16"), "needs a number"),
        (lambda: encode(True, "uint16"), "needs a number"),
        (lambda: encode(1e39, "float32"), "does not fit"),
        (lambda: encode("é", "string1"), "not ASCII"),
        (lambda: encode("ABC", "string1"), "longer than 2"),
        (lambda: encode(5, "string1"), "needs text"),
        (lambda: encode(2, "bit"), "0 or 1"),
    ],
)
def test_errors(call: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        call()  # type: ignore[operator]


def test_integral_float_encodes_as_integer() -> None:
    assert encode(160.0, "uint16") == [160]


def test_words_to_unsigned_reads_raw_bits() -> None:
    assert codec.words_to_unsigned([0x7FFF, 0xFFFF]) == 0x7FFFFFFF
    assert codec.words_to_unsigned([0xFFFF, 0x7FFF], "little") == 0x7FFFFFFF


# -- round trips: what a simulator encodes, a device decodes ------------------------------------

ORDERS = st.sampled_from(codec.WORD_ORDERS)
INT_RANGES = {
    "uint16": (0, 2**16 - 1), "int16": (-(2**15), 2**15 - 1),
    "uint32": (0, 2**32 - 1), "int32": (-(2**31), 2**31 - 1),
    "uint64": (0, 2**64 - 1), "int64": (-(2**63), 2**63 - 1),
}  # fmt: skip


@st.composite
def int_cases(draw: st.DrawFn) -> tuple[str, int]:
    type_ = draw(st.sampled_from(sorted(INT_RANGES)))
    lo, hi = INT_RANGES[type_]
    return type_, draw(st.integers(lo, hi))


@given(int_cases(), ORDERS)
def test_integers_round_trip(case: tuple[str, int], order: str) -> None:
    type_, value = case
    words = encode(value, type_, order)
    assert len(words) == register_count(type_)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, type_, order) == value


@given(st.floats(width=32), ORDERS)
def test_float32_round_trips(value: float, order: str) -> None:
    back = decode(encode(value, "float32", order), "float32", order)
    assert back == value or (math.isnan(back) and math.isnan(value))


@given(st.floats(), ORDERS)
def test_float64_round_trips(value: float, order: str) -> None:
    back = decode(encode(value, "float64", order), "float64", order)
    assert back == value or (math.isnan(back) and math.isnan(value))


@given(st.integers(1, 8), st.data())
def test_strings_round_trip(count: int, data: st.DataObject) -> None:
    printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
    text = data.draw(st.text(st.one_of(printable, st.just(" ")), max_size=2 * count))
    text = text.strip(" ")  # padding is not part of the text
    assert decode(encode(text, f"string{count}"), f"string{count}") == text


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), ORDERS)
def test_any_words_survive_decode_then_encode(words: list[int], order: str) -> None:
    for type_ in ("uint32", "int32"):
        assert encode(decode(words, type_, order), type_, order) == words
