"""Meters, chargers and digital inputs built from a device profile and a register bus.

These are the Modbus implementations of the small interfaces in ``hal.types`` (``Meter``,
``Charger``, ``Input``). All model knowledge is in the profile (``hal/modbus/profiles/*.yaml``); the code
here only reads the profile's blocks, decodes them, and writes limits and setup registers the
way the profile says. A device does no retrying, caching or logging of outages: bus errors
propagate unchanged (``CommError`` / ``DeviceAnswerError``) and the control loop decides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from hal.modbus.profile import Block, InvalidValue, Kind, Profile, WriteSpec
from hal.types import (
    ChargerReading,
    DeviceAnswerError,
    Fallback,
    IecState,
    InputReading,
    MeterReading,
    Phases3,
)
from hal.modbus.types import RegisterBus, RequestPolicy, Table

log = logging.getLogger(__name__)

#: Used to estimate a charger's power from its currents when the box does not report power.
NOMINAL_VOLTAGE_V = 230.0

Values = dict[str, float | int | str | None]


class _ProfileDevice:
    """What meters and chargers share: one bus read per block, then decoding."""

    _kind: Kind

    def __init__(
        self, id: str, profile: Profile, bus: RegisterBus, unit: int, policy: RequestPolicy | None = None
    ) -> None:
        if profile.kind is not self._kind:
            raise ValueError(f"{id}: profile {profile.model!r} is a {profile.kind.value}, not a {self._kind.value}")
        self.id = id
        self.profile = profile
        self.bus = bus
        self.unit = unit
        self.policy = policy if policy is not None else profile.request

    def read_values(self) -> Values:
        """Every value of the profile, decoded; None where the device gave garbage.

        For ``gridcharge read``: unlike ``read()`` an invalid value does not fail the whole
        reading, so the installer sees which register is wrong. Bus errors still propagate.
        """
        return self._decode(self._read_blocks(), strict=False)

    def _read(self) -> Values:
        """Decoded values; a required value that is garbage raises DeviceAnswerError."""
        return self._decode(self._read_blocks(), strict=True)

    def _read_blocks(self) -> dict[str, list[int] | None]:
        """Exactly one bus read per block → the words of each value (None: optional block refused)."""
        words_by_name: dict[str, list[int] | None] = {}
        for block in self.profile.blocks:
            words = self._read_block(block)
            for name in block.values:
                words_by_name[name] = None if words is None else block.words_of(self.profile.values[name], words)
        return words_by_name

    def _read_block(self, block: Block) -> list[int] | None:
        try:
            words = self.bus.read(block.table, block.address, block.count, self.unit, self.policy)
        except DeviceAnswerError as exc:
            # A block of optional values only (e.g. Heidelberg's read-back of the limit) may be
            # refused by some firmware; that must not make the whole box unreadable.
            if any(self.profile.values[name].required for name in block.values):
                raise
            log.debug("%s: optional block %s %d refused: %s", self.id, block.table.value, block.address, exc)
            return None
        if len(words) != block.count:
            raise DeviceAnswerError(
                f"{self.id}: asked for {block.count} words at {block.table.value} {block.address}, got {len(words)}"
            )
        return list(words)

    def _decode(self, words_by_name: Mapping[str, list[int] | None], strict: bool) -> Values:
        values: Values = {}
        for name, words in words_by_name.items():
            spec = self.profile.values[name]
            if words is None:
                values[name] = None
                continue
            try:
                values[name] = spec.decode(words)
            except ValueError as exc:  # InvalidValue, or CodecError for words out of 0..0xFFFF
                if strict and (spec.required or not isinstance(exc, InvalidValue)):
                    raise DeviceAnswerError(f"{self.id}: {name}: {exc}") from exc
                log.debug("%s: %s: %s", self.id, name, exc)
                values[name] = None
        return values

    def _phases(self, values: Values, pattern: str) -> Phases3 | None:
        """(L1, L2, L3) from ``current_l{n}_a``-style names; absent phases are 0 (SDM120: (I, 0, 0)).

        None when the profile has no such value at all or an optional one has no value now.
        """
        names = [pattern.format(n) for n in (1, 2, 3)]
        if not any(name in self.profile.values for name in names):
            return None
        phases = [values.get(name, 0.0) if name in self.profile.values else 0.0 for name in names]
        numbers = [float(p) for p in phases if isinstance(p, (int, float))]
        if len(numbers) != 3:
            return None
        return (numbers[0], numbers[1], numbers[2])

    def _write(self, address: int, words: Sequence[int], single: bool) -> None:
        self.bus.write(address, list(words), self.unit, self.policy, single=single)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, {self.profile.model}, {self.bus.name} unit {self.unit})"


class ProfileMeter(_ProfileDevice):
    """An electricity meter described by a profile (implements ``hal.types.Meter``)."""

    _kind = Kind.METER

    def read(self) -> MeterReading:
        values = self._read()
        power_w = values["power_w"]
        if not isinstance(power_w, (int, float)):  # required by the schema, so decode raised already
            raise DeviceAnswerError(f"{self.id}: power_w: no value")
        return MeterReading(
            power_w=float(power_w),
            current_a=self._phases(values, "current_l{}_a"),
            voltage_v=self._phases(values, "voltage_l{}_v"),
            import_wh=_number(values.get("import_wh")),
            export_wh=_number(values.get("export_wh")),
        )


class ProfileCharger(_ProfileDevice):
    """A wallbox described by a profile (implements ``hal.types.Charger``)."""

    _kind = Kind.CHARGER

    def __init__(
        self, id: str, profile: Profile, bus: RegisterBus, unit: int, policy: RequestPolicy | None = None
    ) -> None:
        super().__init__(id, profile, bus, unit, policy)
        if profile.state is None or profile.limit is None:  # parse_profile guarantees both
            raise ValueError(f"{id}: profile {profile.model!r} has no state map or no limit")
        self.keepalive_s: float | None = profile.keepalive_s
        self.fallback: Fallback | None = profile.fallback
        self._state = profile.state
        self._limit = profile.limit

    def read(self) -> ChargerReading:
        values = self._read()
        try:
            state = self.state_of(values)
        except InvalidValue as exc:
            raise DeviceAnswerError(f"{self.id}: state: {exc}") from exc
        current_a = self._phases(values, "current_l{}_a") or (0.0, 0.0, 0.0)
        power_w = _number(values.get("power_w"))
        if power_w is None:
            power_w = sum(current_a) * NOMINAL_VOLTAGE_V
        return ChargerReading(
            state=state,
            current_a=current_a,
            power_w=power_w,
            energy_wh=_number(values.get("energy_wh")),
            limit_a=_number(values.get("limit_a")),
            raw_state=_raw_code(values["state"]),
        )

    def state_of(self, values: Values) -> IecState:
        """The IEC state of decoded ``values`` (from ``read_values()``); raises InvalidValue for a
        code the profile's state map does not know."""
        return self._state.resolve(values.get("state"), values)

    def apply(self, current_a: float) -> None:
        """Write the limit, floored to the register resolution; 0 pauses.

        A box with pause/resume writes (cFos charging_enable) gets its enable flag written after
        every non-zero limit, not only on a change, so a box that rebooted disabled resumes. The
        limit goes first so that the box never runs enabled with an old, higher limit.
        """
        if not math.isfinite(current_a) or current_a < 0:
            raise ValueError(f"{self.id}: cannot apply {current_a} A")
        words = self._limit.words_for(current_a)
        if not any(words):
            self._pause()
            return
        log.debug("%s: limit %.2f A → %s", self.id, current_a, words)
        self._write(self._limit.address, words, self._limit.single)
        for spec in self._limit.resume:
            self._write(spec.address, spec.words(), spec.single)

    def _pause(self) -> None:
        log.debug("%s: pause", self.id)
        if not self._limit.pause:
            self._write(self._limit.address, self._limit.words_for(0.0), self._limit.single)
        for spec in self._limit.pause:
            self._write(spec.address, spec.words(), spec.single)

    def setup(self, watchdog_s: float, failsafe_current_a: float) -> None:
        """Write the profile's setup registers (watchdog, fail-safe current, standby); no-op if none.

        Registers marked ``flash`` (cFos) are read first and written only when different, so a
        restart of gridcharge does not wear the box's flash.
        """
        for spec in self.profile.setup:
            try:
                words = spec.words(watchdog_s, failsafe_current_a)
            except ValueError as exc:
                raise ValueError(f"{self.id}: setup register {spec.address} ({spec.value}): {exc}") from exc
            if spec.flash and self._holds(spec, words):
                log.debug("%s: setup register %d already %s", self.id, spec.address, words)
                continue
            log.info("%s: setup register %d ← %s (%s)", self.id, spec.address, words, spec.value)
            self._write(spec.address, words, spec.single)

    def _holds(self, spec: WriteSpec, words: list[int]) -> bool:
        try:
            current = self.bus.read(Table.HOLDING, spec.address, len(words), self.unit, self.policy)
        except DeviceAnswerError:
            return False  # cannot read it back: write it
        return list(current) == words


class ModbusInput:
    """One digital input of a Modbus I/O module (implements ``hal.types.Input``).

    ``active`` honours the polarity: with ``active_low`` a 0 bit is the active state.
    """

    def __init__(
        self,
        id: str,
        bus: RegisterBus,
        unit: int,
        index: int,
        *,
        table: Table | str = Table.DISCRETE,
        active_low: bool = False,
        policy: RequestPolicy | None = None,
    ) -> None:
        table = Table(table)
        if table not in (Table.DISCRETE, Table.COIL):
            raise ValueError(f"{id}: inputs are coils or discrete inputs, not {table.value} registers")
        if not 0 <= index <= 0xFFFF:
            raise ValueError(f"{id}: input index {index} is outside 0..65535")
        self.id = id
        self.bus = bus
        self.unit = unit
        self.index = index
        self.table = table
        self.active_low = active_low
        self.policy = policy if policy is not None else RequestPolicy()

    def read(self) -> InputReading:
        bits = self.bus.read(self.table, self.index, 1, self.unit, self.policy)
        if len(bits) != 1 or bits[0] not in (0, 1):
            raise DeviceAnswerError(f"{self.id}: {self.table.value} {self.index}: answer {bits!r} is not one bit")
        return InputReading(active=bool(bits[0]) != self.active_low)

    def read_values(self) -> Values:
        """The raw bit and the resulting state, for ``gridcharge read``."""
        bits = self.bus.read(self.table, self.index, 1, self.unit, self.policy)
        raw = bits[0] if len(bits) == 1 else None
        return {f"{self.table.value}_{self.index}": raw, "active": None if raw is None else int(bool(raw) != self.active_low)}

    def __repr__(self) -> str:
        return f"ModbusInput({self.id!r}, {self.bus.name} unit {self.unit} {self.table.value} {self.index})"


def device_for(
    id: str, profile: Profile, bus: RegisterBus, unit: int, policy: RequestPolicy | None = None
) -> ProfileMeter | ProfileCharger:
    """The meter or charger for a profile (inputs need an index: build ``ModbusInput`` directly)."""
    if profile.kind is Kind.METER:
        return ProfileMeter(id, profile, bus, unit, policy)
    if profile.kind is Kind.CHARGER:
        return ProfileCharger(id, profile, bus, unit, policy)
    raise ValueError(f"{id}: profile {profile.model!r} is an input module; build a ModbusInput")


def _raw_code(value: float | int | str | None) -> int | str | None:
    """A vendor state code as the box sent it (the profile schema allows integers and text)."""
    return value if isinstance(value, (int, str)) else None


def _number(value: float | int | str | None) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
