"""Device profile value types: the frozen dataclasses a validated profile is made of.

Owns what a profile *is* once it has been checked: :class:`Profile` and its parts
(:class:`ValueSpec`, :class:`StateSpec`, :class:`LimitSpec`, :class:`WriteSpec`, ...), the
register arithmetic on them (``decode`` for the devices, ``encode`` for the simulators,
:func:`scale_to_words` for writes) and :func:`pack_blocks`, which merges values into as few block
reads as the device tolerates (``request.max_registers``, ``request.max_gap``), so a device costs
one request per block per cycle on a slow RS485 line.

Separate from the schema validator (``hal.modbus.profile_schema``) because the devices and simulators
work only with these values at run time and never with raw profile data. Import them from
``hal.modbus.profile``, which re-exports everything here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hal.modbus import codec
from hal.types import Fallback, IecState
from hal.modbus.types import RequestPolicy, Table


class Kind(str, enum.Enum):
    """What a device is to the controller. A str enum, so ``profile.kind == "meter"`` holds."""

    METER = "meter"
    CHARGER = "charger"
    INPUT = "input"


#: The names the controller reads, per kind. Other lower-case names are allowed as extras
#: (shown by ``gridcharge read``, used by state rules) but mean nothing to the controller.
METER_VALUES: tuple[str, ...] = (
    "power_w", "current_l1_a", "current_l2_a", "current_l3_a",
    "voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "import_wh", "export_wh",
)  # fmt: skip
CHARGER_VALUES: tuple[str, ...] = (
    "state", "current_l1_a", "current_l2_a", "current_l3_a", "power_w", "energy_wh", "limit_a",
)  # fmt: skip
#: Symbols a setup write may use as its value; the charger fills them in at ``setup()``.
SETUP_SYMBOLS: tuple[str, ...] = ("watchdog_s", "watchdog_ms", "failsafe_current")

#: Float tolerance when scaling to a register: 0.7 A / 0.1 must give 7, not 6.999….
_EPSILON = 1e-6


class ProfileError(ValueError):
    """A profile that does not follow the schema. ``errors`` are ``path: message`` strings."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(self.errors))


class InvalidValue(ValueError):
    """A register content no device can mean: a sentinel, NaN/Inf, or outside the plausible range."""


@dataclass(frozen=True)
class ValueSpec:
    """One readable value: where it is, how it is encoded, and what counts as garbage.

    Decoding order: sentinel check on the raw bits → decode → NaN/Inf check → ``(raw >> shift)
    & mask`` → ``raw * scale + offset`` → range check.
    """

    name: str
    table: Table
    address: int
    type: str
    scale: float = 1.0
    offset: float = 0.0
    word_order: str = "big"
    invalid: tuple[int, ...] = ()  # raw register contents, as one unsigned number (0xFFFFFFFF)
    range: tuple[float, float] | None = None  # plausible decoded values, inclusive
    mask: int | None = None
    shift: int = 0
    required: bool = True

    @property
    def count(self) -> int:
        return codec.register_count(self.type)

    @property
    def end(self) -> int:
        """First address after this value."""
        return self.address + self.count

    @property
    def scaled(self) -> bool:
        return self.scale != 1 or self.offset != 0

    def decode(self, words: Sequence[int]) -> float | int | str:
        """Registers → physical value; raise :class:`InvalidValue` for what no device can show."""
        if self.invalid:
            raw_bits = codec.words_to_unsigned(words, self.word_order)
            if raw_bits in self.invalid:
                raise InvalidValue(f"not available (raw 0x{raw_bits:X})")
        raw = codec.decode(words, self.type, self.word_order)
        if isinstance(raw, str):
            return raw
        if isinstance(raw, float) and not math.isfinite(raw):
            raise InvalidValue(f"{raw} is not a number")
        if isinstance(raw, int) and (self.mask is not None or self.shift):
            raw >>= self.shift
            if self.mask is not None:
                raw &= self.mask
        value: float | int = raw * self.scale + self.offset if self.scaled else raw
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise InvalidValue(f"{value} outside the plausible range {list(self.range)}")
        return value

    def encode(self, value: float | int | str) -> list[int]:
        """Physical value → registers, the inverse of :meth:`decode` (for simulators).

        Integer registers get the nearest raw value; masked values land in their bit field with
        the other bits 0.
        """
        info = codec.type_info(self.type)
        if info.is_string or info.is_bit:
            return codec.encode(value, self.type, self.word_order)
        if isinstance(value, str):
            raise codec.CodecError(f"{self.name} needs a number, not {value!r}")
        raw: float | int = (value - self.offset) / self.scale if self.scaled else value
        if info.is_integer:
            raw = int(round(raw))
            if self.mask is not None and not 0 <= raw <= self.mask:
                raise codec.CodecError(f"{self.name}: {raw} does not fit mask 0x{self.mask:X}")
            raw <<= self.shift
        return codec.encode(raw, self.type, self.word_order)


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers (or bits) from ``address`` in ``table``."""

    table: Table
    address: int
    count: int
    values: tuple[str, ...]  # names of the values it carries, in address order

    @property
    def end(self) -> int:
        return self.address + self.count

    def words_of(self, spec: ValueSpec, words: Sequence[int]) -> list[int]:
        """The slice of this block's answer that holds ``spec``."""
        start = spec.address - self.address
        return list(words[start : start + spec.count])


@dataclass(frozen=True)
class Packing:
    """How values may be merged into block reads."""

    max_registers: int = 40  # longest block (registers, or bits for coils/discrete inputs)
    max_gap: int = 0  # unused registers a block may span; 0 for devices that reject them


@dataclass(frozen=True)
class LinkDefaults:
    """The device's factory link settings: documentation and defaults for ``gridcharge read``.

    ``fixed``: the device cannot be set to other serial settings (a Heidelberg box speaks only
    19200 8E1), so an RS485 bus with other settings can never reach it: the config check says so.
    """

    protocol: str = "rtu"  # rtu | tcp
    baudrate: int | None = None
    parity: str | None = None  # N | E | O
    stopbits: int | None = None
    port: int | None = None  # TCP port
    default_unit: int = 1
    fixed: bool = False

    def serial_text(self) -> str:
        """``19200 8E1``: how an installer writes serial settings."""
        return f"{self.baudrate} 8{self.parity}{self.stopbits}"


@dataclass(frozen=True)
class StateByValue:
    """Raw state codes that do not decide the IEC state alone (ABB Terra "session stopped").

    For such a code the state is ``then`` if value ``value`` is ≥ ``min``, else ``otherwise``.
    """

    codes: tuple[int | str, ...]
    value: str
    min: float
    then: IecState
    otherwise: IecState


@dataclass(frozen=True)
class StateSpec(Mapping[Any, IecState]):
    """Raw state code → IEC 61851 state. Behaves as that mapping; the extras are optional."""

    map: Mapping[Any, IecState]
    by_value: StateByValue | None = None
    #: IEC state → the raw code a simulator serves for it (Heidelberg C → 7 "C2", not 6 "C1").
    preferred: Mapping[IecState, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, raw: Any) -> IecState:
        return self.map[raw]

    def __hash__(self) -> int:  # the mapping proxies are not hashable; the codes are
        return hash(tuple(self.map.items()))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.map)

    def __len__(self) -> int:
        return len(self.map)

    def resolve(self, raw: Any, values: Mapping[str, Any]) -> IecState:
        """The IEC state for a raw code; ``values`` are the other decoded values of the reading."""
        if raw in self.map:
            return self.map[raw]
        rule = self.by_value
        if rule is not None and raw in rule.codes:
            other = values.get(rule.value)
            if not isinstance(other, (int, float)):
                raise InvalidValue(f"state {raw!r} needs {rule.value}, which has no value")
            return rule.then if other >= rule.min else rule.otherwise
        raise InvalidValue(f"unknown state code {raw!r}")

    def raw_for(self, state: IecState) -> Any:
        """The raw code a simulator serves for ``state``: the preferred one, else the first."""
        if state in self.preferred:
            return self.preferred[state]
        for raw, mapped in self.map.items():
            if mapped == state:
                return raw
        raise KeyError(f"no state code for {state.value}")


@dataclass(frozen=True)
class WriteSpec:
    """One fixed register write: a pause/resume flag or a setup register.

    ``value`` is a number or one of :data:`SETUP_SYMBOLS`; the register gets
    ``value / scale`` (floored for integer types, so a current is never above the one asked for).
    """

    address: int
    type: str
    value: float | str
    scale: float = 1.0
    word_order: str = "big"
    single: bool = True  # FC06 (one register) rather than FC16
    flash: bool = False  # stored in flash: read first, write only when different

    def physical_value(self, watchdog_s: float = 0.0, failsafe_current_a: float = 0.0) -> float:
        """The quantity to write, with symbols filled in."""
        if isinstance(self.value, str):
            return {
                "watchdog_s": watchdog_s,
                "watchdog_ms": watchdog_s * 1000.0,
                "failsafe_current": failsafe_current_a,
            }[self.value]
        return self.value

    def words(self, watchdog_s: float = 0.0, failsafe_current_a: float = 0.0) -> list[int]:
        return scale_to_words(
            self.physical_value(watchdog_s, failsafe_current_a), self.type, self.scale, self.word_order
        )

    def decode(self, words: Sequence[int]) -> float:
        """Registers → the quantity written (seconds, ms or A per ``value``); for simulators."""
        return float(codec.decode(words, self.type, self.word_order)) * self.scale


@dataclass(frozen=True)
class LimitSpec:
    """How a charger's current limit is written (always a holding register)."""

    address: int
    type: str
    scale: float = 1.0
    word_order: str = "big"
    single: bool = True  # FC06 when True, FC16 otherwise
    pause: tuple[WriteSpec, ...] = ()  # written instead of a 0 limit, for boxes with an enable flag
    resume: tuple[WriteSpec, ...] = ()  # written after every non-zero limit when ``pause`` is used

    @property
    def count(self) -> int:
        return codec.register_count(self.type)

    def words_for(self, current_a: float) -> list[int]:
        """Registers for ``current_a``, floored to the register resolution (never above it)."""
        return scale_to_words(current_a, self.type, self.scale, self.word_order)

    def current_from(self, words: Sequence[int]) -> float:
        """Registers → amperes (for simulators)."""
        return float(codec.decode(words, self.type, self.word_order)) * self.scale


@dataclass(frozen=True)
class FactoryFallback:
    """A charger's own fall-back as it leaves the factory, before any setup write reaches it.

    Facts for the simulators: a simulated box must behave as a real one does before a controller
    has talked to it, so that a test of "gridcharge never configured this box" means something.
    ``timeout_s``: the watchdog the box starts with (0: none, e.g. a Heidelberg's register 257
    is 0 = off until written); ``failsafe_current_a``: what it offers once that watchdog has
    expired (0: it stops). The controller never uses these: it assumes a fall-back only from
    ``Profile.fallback`` and its own setup.
    """

    timeout_s: float = 0.0
    failsafe_current_a: float = 0.0


@dataclass(frozen=True)
class InputSpec:
    """A digital-input module: which table holds the inputs, how many, default polarity."""

    table: Table = Table.DISCRETE
    count: int = 8
    active_low: bool = False


@dataclass(frozen=True)
class Profile:
    """A validated device profile. Build with :func:`load_profile` or :func:`parse_profile`."""

    model: str
    kind: Kind
    values: Mapping[str, ValueSpec]
    blocks: tuple[Block, ...]
    request: RequestPolicy = RequestPolicy()
    packing: Packing = Packing()
    word_order: str = "big"
    state: StateSpec | None = None
    limit: LimitSpec | None = None
    setup: tuple[WriteSpec, ...] = ()
    keepalive_s: float | None = None
    fallback: Fallback | None = None
    #: The fall-back as the box ships (None: the profile knows of none); for the simulators.
    factory_fallback: FactoryFallback | None = None
    inputs: InputSpec | None = None
    link: LinkDefaults = LinkDefaults()
    #: Facts the config check compares a device's entry with: ``phases`` 1 or 3 when the model
    #: works on that many phases only (None: either), ``max_current_a`` the most a charger
    #: accepts as its limit (None: not known; the box's own rating decides).
    phases: int | None = None
    max_current_a: float | None = None
    manufacturer: str = ""
    description: str = ""
    source: str = ""

    def __hash__(self) -> int:  # usable as a dict key (the values mapping itself is not hashable)
        return hash((self.model, self.kind, self.source, self.blocks))


def scale_to_words(value: float, type: str, scale: float, word_order: str = "big") -> list[int]:
    """Physical value → registers for a write: ``value / scale``, floored for integer types."""
    if not math.isfinite(value):
        raise ValueError(f"cannot write {value}")
    info = codec.type_info(type)
    raw: float | int = value / scale
    if info.is_integer:
        raw = math.floor(raw + _EPSILON)
    return codec.encode(raw, type, word_order)


def pack_blocks(values: Iterable[ValueSpec], packing: Packing) -> tuple[Block, ...]:
    """Merge values into block reads: per table, in address order, greedily.

    A value joins the current block when the hole before it is at most ``max_gap`` and the block
    stays within ``max_registers``; otherwise it starts a new block. Values sharing registers
    (masked bit fields) share a block.
    """
    by_table: dict[Table, list[ValueSpec]] = {}
    for spec in values:
        by_table.setdefault(spec.table, []).append(spec)
    blocks: list[Block] = []
    for table in Table:
        start = end = -1
        names: list[str] = []
        for spec in sorted(by_table.get(table, ()), key=lambda s: (s.address, s.end, s.name)):
            joins = (
                names
                and spec.address - end <= packing.max_gap
                and max(end, spec.end) - start <= packing.max_registers
            )
            if not joins:
                if names:
                    blocks.append(Block(table, start, end - start, tuple(names)))
                start, end, names = spec.address, spec.end, []
            end = max(end, spec.end)
            names.append(spec.name)
        if names:
            blocks.append(Block(table, start, end - start, tuple(names)))
    return tuple(blocks)
