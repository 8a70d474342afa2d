"""Encode and decode Modbus register words: the one place that knows how numbers sit in registers.

Pure functions, no pymodbus (``struct`` only), so that device profiles, the devices built from
them and the simulators that serve the same profiles agree bit for bit: a simulator encodes with
:func:`encode` what a device decodes with :func:`decode`, and the two must round-trip.

Conventions (Modbus application protocol):

* A register is a 16-bit word; within a word the high byte comes first.
* ``word_order`` says which register of a multi-register number comes first: ``"big"`` (most
  significant register first, the Modbus default and what SDM, ABB, Alfen, Heidelberg use) or
  ``"little"`` (least significant register first).
* ``string<N>`` occupies N registers, two ASCII characters per register, high byte first; on
  decode, NUL and space padding is stripped and the text ends at the first NUL. Word order does not
  apply to strings.
* ``bit`` is one coil or discrete input, carried as the int 0 or 1.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

WORD_ORDERS: tuple[str, ...] = ("big", "little")

#: Fixed-size types: name → (struct format character, registers).
_NUMERIC: dict[str, tuple[str, int]] = {
    "uint16": ("H", 1),
    "int16": ("h", 1),
    "uint32": ("I", 2),
    "int32": ("i", 2),
    "uint64": ("Q", 4),
    "int64": ("q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
_STRING_RE = re.compile(r"string([1-9][0-9]*)")
#: 125 registers is the most one Modbus read can return, so a longer string could never be read.
MAX_STRING_REGISTERS = 125

TYPE_NAMES: tuple[str, ...] = (*_NUMERIC, "string<N>", "bit")


class CodecError(ValueError):
    """A type name, word order, word list or value that cannot be encoded or decoded."""


@dataclass(frozen=True)
class TypeInfo:
    """What the codec knows about one type name."""

    name: str
    count: int  # registers (or bits, for ``bit``)
    fmt: str = ""  # struct format character; "" for string and bit
    is_string: bool = False
    is_bit: bool = False

    @property
    def is_float(self) -> bool:
        return self.fmt in ("f", "d")

    @property
    def is_integer(self) -> bool:
        return bool(self.fmt) and not self.is_float


def type_info(type: str) -> TypeInfo:
    """Parse a type name; raise :class:`CodecError` for an unknown one (profiles validate with it)."""
    if not isinstance(type, str):
        raise CodecError(f"type must be a string, not {type!r}")
    return _type_info(type)


@lru_cache(maxsize=None)
def _type_info(type: str) -> TypeInfo:
    if type in _NUMERIC:
        fmt, count = _NUMERIC[type]
        return TypeInfo(type, count, fmt)
    if type == "bit":
        return TypeInfo(type, 1, is_bit=True)
    match = _STRING_RE.fullmatch(type)
    if match and int(match.group(1)) <= MAX_STRING_REGISTERS:
        return TypeInfo(type, int(match.group(1)), is_string=True)
    raise CodecError(f"unknown type {type!r} (known: {', '.join(TYPE_NAMES)})")


def register_count(type: str) -> int:
    """Registers one value of ``type`` occupies (1 for ``bit``: one coil or discrete input)."""
    return type_info(type).count


def check_word_order(word_order: str) -> str:
    if word_order not in WORD_ORDERS:
        raise CodecError(f"unknown word order {word_order!r} (known: big, little)")
    return word_order


def decode(words: Sequence[int], type: str, word_order: str = "big") -> float | int | str:
    """Turn the registers of one value, as the device sent them, into a number or text.

    Integers come back as ``int``, floats as ``float`` (NaN and infinities included: rejecting
    them is the profile's job), strings as ``str``, bits as 0 or 1.
    """
    info = type_info(type)
    check_word_order(word_order)
    _check_words(words, info)
    if info.is_bit:
        return int(words[0])
    if info.is_string:
        return _decode_string(words)
    ordered = list(words) if word_order == "big" else list(reversed(words))
    raw = b"".join(w.to_bytes(2, "big") for w in ordered)
    return struct.unpack(">" + info.fmt, raw)[0]


def encode(value: float | int | str, type: str, word_order: str = "big") -> list[int]:
    """Turn a number or text into the registers a device would send for it (inverse of decode).

    Integer types accept ints and integral floats only; a value outside the type's range is an
    error, never silently wrapped, so a wrong scale in a profile shows up instead of writing
    garbage to a wallbox.
    """
    info = type_info(type)
    check_word_order(word_order)
    if info.is_bit:
        return [_encode_bit(value)]
    if info.is_string:
        return _encode_string(value, info.count)
    packed = _pack_number(value, info)
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return words if word_order == "big" else list(reversed(words))


def words_to_unsigned(words: Sequence[int], word_order: str = "big") -> int:
    """The registers read as one unsigned integer, most significant register first.

    This is how a sentinel such as ``0xFFFFFFFF`` or ``0x8000`` is written in a profile, whatever
    the value's own type: compare raw bits, not decoded numbers.
    """
    check_word_order(word_order)
    ordered = list(words) if word_order == "big" else list(reversed(words))
    result = 0
    for word in ordered:
        result = (result << 16) | (word & 0xFFFF)
    return result


def _check_words(words: Sequence[int], info: TypeInfo) -> None:
    if len(words) != info.count:
        raise CodecError(f"{info.name} needs {info.count} words, got {len(words)}")
    limit = 1 if info.is_bit else 0xFFFF
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= limit:
            raise CodecError(f"{info.name}: word {word!r} is not in 0..{limit}")


def _decode_string(words: Sequence[int]) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in words).strip(b"\x00 ")
    raw = raw.split(b"\x00", 1)[0].rstrip(b" ")
    # A device may send bytes above 0x7F; show them as U+FFFD rather than failing the whole read.
    return raw.decode("ascii", errors="replace")


def _encode_string(value: object, count: int) -> list[int]:
    if not isinstance(value, str):
        raise CodecError(f"string{count} needs text, not {value!r}")
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise CodecError(f"string{count}: {value!r} is not ASCII") from exc
    if len(raw) > 2 * count:
        raise CodecError(f"string{count}: {value!r} is longer than {2 * count} characters")
    raw = raw.ljust(2 * count, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _encode_bit(value: object) -> int:
    if value in (0, 1) and isinstance(value, (int, float)):
        return int(value)
    raise CodecError(f"bit needs 0 or 1, not {value!r}")


def _pack_number(value: object, info: TypeInfo) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"{info.name} needs a number, not {value!r}")
    if info.is_integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise CodecError(f"{info.name} needs an integer, not {value!r}")
            value = int(value)
        try:
            return struct.pack(">" + info.fmt, value)
        except struct.error as exc:
            raise CodecError(f"{value} does not fit in {info.name}") from exc
    try:
        return struct.pack(">" + info.fmt, float(value))
    except (OverflowError, struct.error) as exc:
        raise CodecError(f"{value} does not fit in {info.name}") from exc
