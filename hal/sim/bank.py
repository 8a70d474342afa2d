"""Register banks that serve any device profile from the simulated physics.

This module owns the translation between ``hal.sim.physics`` and Modbus registers, driven only by
the profile (``hal/modbus/profiles/*.yaml``): the same data that tells a real device how to decode a
register tells the simulator how to encode it, so a profile and its simulator cannot disagree.
A :class:`ProfileBank` implements ``hal.modbus.server.RegisterBank``:

- **read**: ask the physics object for its named values (``power_w``, ``current_l1_a``,
  ``state`` …) at one instant and encode each declared value at its address with the profile's
  type, scale and word order. The IEC state goes back through the profile's state map
  (Heidelberg C → 7, Alfen C → "C2"). Addresses inside one of the profile's read blocks but not
  declared read 0; writable registers (limit, setup, pause/resume) read back what the box holds;
  any other address is an illegal address (Modbus exception 2), as on a real device.
- **write**: the limit register sets the wallbox limit; setup writes configure the simulated
  watchdog (timeout, fail-safe current) so that the controller's setup really configures it;
  pause/resume writes switch the box off and on (cFos ``charging_enable``).
- Every request feeds a watchdog that counts any request (Heidelberg); see ``physics``.

Input modules (``kind: input``) serve their contacts from :class:`~hal.sim.physics.SimContact`
objects. A broken wire is a silent unit at the server, not something a bank does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from hal.modbus import codec
from hal.modbus.bus import device_answer_error
from hal.modbus.profile import Kind, Profile, ValueSpec, WriteSpec, scale_to_words
from hal.sim.physics import SimContact, SimWallbox
from hal.types import IecState
from hal.modbus.types import Table

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

#: Setup registers whose value is a plain number but which mean something to the simulated box.
#: Only real quirks live here (docs/architecture.md "code only for real quirks").
_STANDBY_REGISTERS: dict[str, int] = {"heidelberg": 258}
_HEIDELBERG_STANDBY_OFF = 4
#: Values some profiles declare that are a vendor's encoding of a physics value.
_DERIVED: dict[str, Callable[[Mapping[str, object]], object]] = {
    # ABB Terra AC: >= 0x0101 means cable and vehicle connected (decides its state code 5).
    "socket_lock": lambda v: 0x0101 if v.get("car_connected") else 0,
}


class ValueSource(Protocol):
    """A physics object: every named value at one instant (``hal.sim.physics`` units: A, V, W, Wh)."""

    def values(self) -> Mapping[str, object]:
        ...


class ProfileBank:
    """The registers of one simulated unit, described by ``profile``, computed from ``source``.

    ``source`` is a :class:`~hal.sim.physics.SimWallbox` for a charger, anything with
    ``values()`` (e.g. ``SimSite.grid_meter``) for a meter, and a sequence of
    :class:`~hal.sim.physics.SimContact` for an input module. ``constants`` gives values the
    physics does not know (serial numbers, firmware versions); anything else unknown reads 0.
    """

    def __init__(
        self,
        profile: Profile,
        source: ValueSource | SimWallbox | Sequence[SimContact],
        constants: Mapping[str, object] | None = None,
    ) -> None:
        self.profile = profile
        self.source = source
        self.constants = dict(constants or {})
        self._lock = threading.Lock()
        self._raw: dict[int, int] = {}  # holding registers written with plain numbers (read back)
        self._warned: set[str] = set()
        self.reads = 0
        self.writes = 0
        self._check_source()
        self._targets = self._write_targets()  # the profile is frozen: work these out once
        self._legal = {table: frozenset(self._legal_addresses(table)) for table in Table}
        self._holding_value_addresses = frozenset(
            a for s in profile.values.values() if s.table is Table.HOLDING for a in range(s.address, s.end)
        )

    # -- RegisterBank --------------------------------------------------------------------------

    def read(self, table: Table, address: int, count: int) -> list[int]:
        with self._lock:
            self.reads += 1
        self._touch()
        if self.profile.kind is Kind.INPUT and self._is_input_table(table):
            return self._read_inputs(address, count)
        self._check_readable(table, address, count)
        words = [0] * count
        values = self._values()
        for spec in self._specs_in(table, address, count):
            self._merge(words, address, spec.address, self._encode_value(spec, values))
        if table is Table.HOLDING:
            for write_address, write_words in self._writable_words(address, count, values).items():
                if write_address in self._holding_value_addresses:
                    continue  # a declared value wins over the write spec's read-back
                self._merge(words, address, write_address, write_words)
        return words

    def write(self, table: Table, address: int, values: list[int]) -> None:
        with self._lock:
            self.writes += 1
        self._touch()
        if table is not Table.HOLDING:
            raise device_answer_error(f"{self.profile.model}: cannot write {table.value}", ILLEGAL_FUNCTION)
        end = address + len(values)
        handled: set[int] = set()
        for spec_address, spec_count, apply in self._targets:
            if spec_address + spec_count <= address or spec_address >= end:
                continue
            if spec_address < address or spec_address + spec_count > end:
                raise device_answer_error(
                    f"{self.profile.model}: register {spec_address} must be written whole", ILLEGAL_ADDRESS
                )
            apply(values[spec_address - address : spec_address - address + spec_count])
            handled.update(range(spec_address, spec_address + spec_count))
        if handled != set(range(address, end)):
            raise device_answer_error(
                f"{self.profile.model}: registers {sorted(set(range(address, end)) - handled)} are not writable",
                ILLEGAL_ADDRESS,
            )

    # -- reads ---------------------------------------------------------------------------------

    def _values(self) -> Mapping[str, object]:
        if self.profile.kind is Kind.INPUT:
            return dict(self.constants)
        merged = dict(self.constants)
        merged.update(self.source.values())  # type: ignore[union-attr]
        for name, derive in _DERIVED.items():
            if name in self.profile.values and name not in self.constants:
                merged[name] = derive(merged)
        return merged

    def _check_readable(self, table: Table, address: int, count: int) -> None:
        if count < 1:
            raise device_answer_error(f"{self.profile.model}: read of {count} registers", ILLEGAL_VALUE)
        legal = self._legal[table]
        missing = [a for a in range(address, address + count) if a not in legal]
        if missing:
            raise device_answer_error(
                f"{self.profile.model}: no {table.value} register at {missing[0]}", ILLEGAL_ADDRESS
            )

    def _legal_addresses(self, table: Table) -> set[int]:
        legal: set[int] = set()
        for block in self.profile.blocks:
            if block.table is table:
                legal.update(range(block.address, block.end))
        for spec in self.profile.values.values():
            if spec.table is table:
                legal.update(range(spec.address, spec.end))
        if table is Table.HOLDING:
            for spec_address, spec_count, _ in self._targets:
                legal.update(range(spec_address, spec_address + spec_count))
        return legal

    def _specs_in(self, table: Table, address: int, count: int) -> list[ValueSpec]:
        end = address + count
        return [s for s in self.profile.values.values()
                if s.table is table and s.address < end and s.end > address]

    def _encode_value(self, spec: ValueSpec, values: Mapping[str, object]) -> list[int]:
        value = values.get(spec.name)
        if spec.name == "state" and self.profile.state is not None:
            value = self._raw_state(value)
        if value is None:
            self._warn_once(spec.name, "no simulated value: serving 0")
            return [0] * spec.count
        if isinstance(value, bool):
            value = int(value)
        try:
            return spec.encode(value)  # type: ignore[arg-type]
        except (codec.CodecError, ValueError, TypeError, OverflowError) as exc:
            self._warn_once(spec.name, f"cannot encode {value!r} ({exc}): serving 0")
            return [0] * spec.count

    def _raw_state(self, state: object) -> object:
        assert self.profile.state is not None
        if not isinstance(state, IecState):
            return state
        try:
            return self.profile.state.raw_for(state)
        except KeyError:
            self._warn_once("state", f"no code for {state.value}: serving the code of A")
            return self.profile.state.raw_for(IecState.A)

    def _writable_words(self, address: int, count: int, values: Mapping[str, object]) -> dict[int, list[int]]:
        """What the writable holding registers in the range read back: the box's settings, else raw.

        ``values`` is the snapshot of this read, so one answer never mixes two instants.
        """
        end = address + count
        result: dict[int, list[int]] = {}
        for spec in self._fixed_writes():
            if spec.address < end and spec.address + codec.register_count(spec.type) > address:
                result[spec.address] = self._read_back(spec, values)
        limit = self.profile.limit
        in_range = limit is not None and limit.address < end and limit.address + limit.count > address
        if limit is not None and in_range and "limit_written_a" in values:
            limit_a = _number(values, "limit_written_a")
            result[limit.address] = _words_or_zero(lambda: limit.words_for(limit_a), limit.count)
        return result

    def _read_back(self, spec: WriteSpec, values: Mapping[str, object]) -> list[int]:
        count = codec.register_count(spec.type)
        box = self.source if isinstance(self.source, SimWallbox) else None
        if box is not None and isinstance(spec.value, str):
            quantity = {
                "watchdog_s": _number(values, "watchdog_timeout_s"),
                "watchdog_ms": _number(values, "watchdog_timeout_s") * 1000.0,
                "failsafe_current": _number(values, "failsafe_current_a"),
            }[spec.value]
            return _words_or_zero(lambda: scale_to_words(quantity, spec.type, spec.scale, spec.word_order), count)
        if box is not None and self._is_pause_register(spec.address):
            enabled = bool(values["enabled"])
            flag = self._flag_spec(spec.address, paused=not enabled)
            if flag is not None:
                return flag.words()
        with self._lock:
            return [self._raw.get(spec.address + i, 0) for i in range(count)]

    # -- writes --------------------------------------------------------------------------------

    def _write_targets(self) -> list[tuple[int, int, _Apply]]:
        """(address, registers, how to apply) for every register the controller may write."""
        targets: dict[int, tuple[int, int, _Apply]] = {}
        for spec in self._fixed_writes():
            targets[spec.address] = (spec.address, codec.register_count(spec.type), self._setup_applier(spec))
        limit = self.profile.limit
        if limit is not None:
            targets[limit.address] = (limit.address, limit.count, self._apply_limit)
        return list(targets.values())

    def _fixed_writes(self) -> list[WriteSpec]:
        specs = list(self.profile.setup)
        if self.profile.limit is not None:
            specs += [*self.profile.limit.pause, *self.profile.limit.resume]
        return specs

    def _apply_limit(self, words: list[int]) -> None:
        assert self.profile.limit is not None
        current_a = self.profile.limit.current_from(words)
        box = self._box()
        try:
            box.set_limit(current_a)
        except ValueError as exc:
            raise device_answer_error(f"{self.profile.model}: {exc}", ILLEGAL_VALUE) from exc

    def _setup_applier(self, spec: WriteSpec) -> _Apply:
        def apply(words: list[int]) -> None:
            self._apply_fixed_write(spec, words)

        return apply

    def _apply_fixed_write(self, spec: WriteSpec, words: list[int]) -> None:
        box = self._box()
        quantity = spec.decode(words)
        if spec.value == "watchdog_ms":
            box.configure_watchdog(timeout_s=quantity / 1000.0)
        elif spec.value == "watchdog_s":
            box.configure_watchdog(timeout_s=quantity)
        elif spec.value == "failsafe_current":
            box.configure_watchdog(failsafe_current_a=quantity)
        elif self._is_pause_register(spec.address):
            pause = self._flag_spec(spec.address, paused=True)
            box.set_enabled(pause is None or words != pause.words())
        elif _STANDBY_REGISTERS.get(self.profile.model) == spec.address:
            box.set_standby(int(quantity) != _HEIDELBERG_STANDBY_OFF)
        with self._lock:
            for i, word in enumerate(words):
                self._raw[spec.address + i] = word

    def _is_pause_register(self, address: int) -> bool:
        limit = self.profile.limit
        return limit is not None and any(s.address == address for s in (*limit.pause, *limit.resume))

    def _flag_spec(self, address: int, *, paused: bool) -> WriteSpec | None:
        limit = self.profile.limit
        assert limit is not None
        specs = limit.pause if paused else limit.resume
        return next((s for s in specs if s.address == address), None)

    def _box(self) -> SimWallbox:
        if not isinstance(self.source, SimWallbox):
            raise device_answer_error(f"{self.profile.model}: nothing to write to", ILLEGAL_ADDRESS)
        return self.source

    def _touch(self) -> None:
        if isinstance(self.source, SimWallbox):
            self.source.touch()

    # -- inputs --------------------------------------------------------------------------------

    def _is_input_table(self, table: Table) -> bool:
        """The profile's input table; a contact may be configured as a coil too (``coil: 0``)."""
        return self.profile.inputs is not None and table in (self.profile.inputs.table, Table.COIL, Table.DISCRETE)

    def _read_inputs(self, address: int, count: int) -> list[int]:
        assert self.profile.inputs is not None
        n_inputs = self.profile.inputs.count
        if count < 1 or address < 0 or address + count > n_inputs:
            raise device_answer_error(
                f"{self.profile.model}: inputs {address}..{address + count - 1} outside 0..{n_inputs - 1}",
                ILLEGAL_ADDRESS,
            )
        contacts = self.source if isinstance(self.source, Sequence) else ()
        return [int(contacts[i].closed) if i < len(contacts) else 0 for i in range(address, address + count)]

    # -- helpers -------------------------------------------------------------------------------

    def _check_source(self) -> None:
        kind = self.profile.kind
        if kind is Kind.CHARGER and not isinstance(self.source, SimWallbox):
            raise TypeError(f"{self.profile.model} is a charger: its source must be a SimWallbox")
        if kind is Kind.INPUT and not isinstance(self.source, Sequence):
            raise TypeError(f"{self.profile.model} is an input module: its source must be a list of SimContact")
        if kind is Kind.METER and not hasattr(self.source, "values"):
            raise TypeError(f"{self.profile.model} is a meter: its source needs values()")

    @staticmethod
    def _merge(words: list[int], start: int, at: int, value_words: Sequence[int]) -> None:
        """OR ``value_words`` (which begin at address ``at``) into ``words`` (which begin at ``start``)."""
        for i, word in enumerate(value_words):
            index = at + i - start
            if 0 <= index < len(words):
                words[index] |= word

    def _warn_once(self, name: str, detail: str) -> None:
        """Log a simulator gap once per value, not on every read."""
        if name not in self._warned:
            self._warned.add(name)
            log.debug("simulated %s.%s: %s", self.profile.model, name, detail)


class _Apply(Protocol):
    def __call__(self, words: list[int]) -> None:
        ...


def _words_or_zero(make: Callable[[], list[int]], count: int) -> list[int]:
    """A read-back that cannot be encoded (a value outside the register's range) reads 0."""
    try:
        return make()
    except (codec.CodecError, ValueError, OverflowError):
        return [0] * count


def _number(values: Mapping[str, object], name: str) -> float:
    """A numeric quantity of the simulated box (its values are typed loosely as ``object``)."""
    value = values[name]
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} is {value!r}, not a number")
    return float(value)
