"""Device profile schema: the strict validator that turns plain data into a :class:`Profile`.

Owns the schema (which keys exist, their types and ranges, the rules between them) and its error
messages. Every unknown key, misspelt type, overlapping register or write to a read-only table is
an error that names its path, e.g. ``values.power_w.type: unknown type 'flaot32'``, and one run
collects all of them. :func:`parse_profile` serves both the packaged YAML files (``hal.modbus.profile``
loads them) and a custom device declared inline in the config.

Separate from the value types (``hal.modbus.profile_types``) because validation is only needed once, at
load time, and is most of the code: the devices and simulators never touch it.

The schema in brief (every key not listed is an error; see ``hal/modbus/profiles/heidelberg.yaml``)::

    model: name                      # = file name for packaged profiles; default "custom"
    kind: meter | charger | input
    manufacturer: text; description: text
    link: {protocol: rtu|tcp, baudrate, parity: N|E|O, stopbits, port, default_unit,
           fixed: true|false}        # fixed: the box cannot be set to other serial settings
    phases: 1 | 3                    # meters and chargers: works on that many phases only
    max_current_a: amperes           # chargers: the most the box accepts as its limit
    request: {timeout_s, gap_s, retries, max_registers (1..125), max_gap}
    word_order: big | little         # default for every value and write
    values:                          # meters need power_w, chargers state
      NAME: {table: input|holding|coil|discrete, address, type, scale, offset, word_order,
             invalid: [raw sentinels], range: [min, max], mask, shift, required: true|false}
    state:                           # chargers
      map: {RAW: A..F}               # RAW is an int, or a text for string state values
      preferred: {LETTER: RAW}       # what a simulator serves for that letter (optional)
      by_value: {codes: [RAW], value: NAME, min: N, then: LETTER, else: LETTER}   # optional
    limit: {address, type, scale, word_order, write: single|multiple, pause: [WRITE], resume: [WRITE]}
    keepalive_s: seconds | null      # chargers: rewrite the limit at least this often
    fallback: {timeout_s: seconds | watchdog_s, fed_by: any_request | limit_write,
               factory_timeout_s: seconds, failsafe_current_a: amperes}
                                     # chargers: when the box leaves its limit for its fail-safe
                                     # current on its own; watchdog_s = the one setup writes.
                                     # factory_*: the box as it ships, before any setup (only
                                     # with watchdog_s; 0 = no watchdog), and the current it
                                     # then falls back to (0 = stop, else 6..80): simulator facts
    setup: [WRITE]                   # chargers, once at start; value may be watchdog_s,
                                     # watchdog_ms or failsafe_current; flash: true = read first
    inputs: {table: discrete|coil, count, active_low}   # input modules
    # WRITE = {address, type, value, scale, word_order, write, table: holding}

Types: uint16 int16 uint32 int32 uint64 int64 float32 float64 string<N> bit (``hal.modbus.codec``).
Unquoted hex (``0x5B00``) is fine; YAML 1.1 floats need a signed exponent (``1.0e+12``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from hal.modbus import codec
from hal.modbus.profile_types import (
    SETUP_SYMBOLS,
    FactoryFallback,
    Kind,
    InputSpec,
    LimitSpec,
    LinkDefaults,
    Packing,
    Profile,
    ProfileError,
    StateByValue,
    StateSpec,
    ValueSpec,
    WriteSpec,
    pack_blocks,
)
from hal.types import Fallback, IecState
from hal.modbus.types import RequestPolicy, Table

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BIT_TABLES = {Table.COIL, Table.DISCRETE}
_TOP_KEYS = frozenset({
    "model", "kind", "manufacturer", "description", "link", "request", "word_order", "values",
    "state", "limit", "keepalive_s", "setup", "fallback", "inputs", "phases", "max_current_a",
})  # fmt: skip
_CHARGER_ONLY = ("state", "limit", "keepalive_s", "setup", "fallback", "max_current_a")
_FALLBACK_KEYS = frozenset({"timeout_s", "fed_by", "factory_timeout_s", "failsafe_current_a"})
_FED_BY = ("any_request", "limit_write")
_VALUE_KEYS = frozenset({
    "table", "address", "type", "scale", "offset", "word_order", "invalid", "range", "mask",
    "shift", "required",
})  # fmt: skip
_REQUEST_KEYS = frozenset({"gap_s", "timeout_s", "retries", "max_registers", "max_gap"})
_LINK_KEYS = frozenset({"protocol", "baudrate", "parity", "stopbits", "port", "default_unit", "fixed"})
_IEC_MIN_A, _IEC_MAX_A = 6, 80  # IEC 61851-1: the range a pilot signal can offer
_STATE_KEYS = frozenset({"map", "by_value", "preferred"})
_BY_VALUE_KEYS = frozenset({"codes", "value", "min", "then", "else"})
_LIMIT_KEYS = frozenset({"table", "address", "type", "scale", "word_order", "write", "pause", "resume"})
_WRITE_KEYS = frozenset({"table", "address", "type", "value", "scale", "word_order", "write"})
_INPUTS_KEYS = frozenset({"table", "count", "active_low"})
_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_IEC_LETTERS = tuple(s.value for s in IecState)
_MISSING: Any = object()


def parse_profile(data: Mapping[str, Any], source: str = "") -> Profile:
    """Validate a profile given as plain data (a packaged file or an inline config entry).

    Collects every error before raising :class:`ProfileError`, so one run shows them all.
    ``source`` names the origin in the exception text; the ``errors`` themselves carry only
    the path inside the profile, so a config loader can prefix its own path.
    """
    return _Parser(source).profile(data)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class _Parser:
    """One validation run: typed getters that record ``path: message`` errors and go on."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    # -- the whole profile -------------------------------------------------------------------

    def profile(self, data: Any) -> Profile:
        if not isinstance(data, Mapping):
            raise ProfileError(["profile: must be a mapping"], self.source)
        self.keys(data, "", _TOP_KEYS, required=("kind",))
        kind_name = self.choice(data, "kind", "", tuple(k.value for k in Kind), _MISSING)
        kind = Kind(kind_name) if kind_name else None
        word_order = self.choice(data, "word_order", "", codec.WORD_ORDERS, "big") or "big"
        request, packing = self.request(data.get("request"))
        values = self.values(data.get("values", {}), word_order, packing)
        parts: dict[str, Any] = {}
        if kind is not None:
            parts = self.kind_parts(data, kind, values, word_order)
        about: dict[str, Any] = {
            "model": self.text(data, "model", "", "custom"),
            "manufacturer": self.text(data, "manufacturer", "", ""),
            "description": self.text(data, "description", "", ""),
            "link": self.link(data.get("link")),
            "phases": self.phases(data, kind),
        }
        if self.errors or kind is None:
            raise ProfileError(self.errors, self.source)
        return Profile(
            kind=kind,
            values=MappingProxyType(dict(values)),
            blocks=pack_blocks(values.values(), packing),
            request=request,
            packing=packing,
            word_order=word_order,
            source=self.source,
            **about,
            **parts,
        )

    def kind_parts(
        self, data: Mapping[str, Any], kind: Kind, values: dict[str, ValueSpec], word_order: str
    ) -> dict[str, Any]:
        """The kind-specific sections: what a meter, charger or input module must (not) have."""
        for key in _CHARGER_ONLY:
            if key in data and kind is not Kind.CHARGER:
                self.err(key, f"only chargers have '{key}'")
        if "inputs" in data and kind is not Kind.INPUT:
            self.err("inputs", "only input modules have 'inputs'")
        if kind is Kind.METER:
            self.require_value(values, "power_w", "a meter", data.get("values"))
            return {}
        if kind is Kind.INPUT:
            if "inputs" not in data:
                self.err("inputs", "required for an input module")
                return {}
            return {"inputs": self.inputs(data["inputs"])}
        self.require_value(values, "state", "a charger", data.get("values"))
        for key in ("state", "limit"):
            if key not in data:
                self.err(key, "required for a charger")
        state_spec = values.get("state")
        if state_spec is not None and codec.type_info(state_spec.type).is_float:
            self.err("values.state.type", "a state code is an integer or a text, not a float")
        if state_spec is not None and (state_spec.scaled or state_spec.range is not None):
            self.err("values.state", "a state code is not scaled or range-checked")
        keepalive = self.number(data, "keepalive_s", "", None, gt=0)
        max_current = self.number(data, "max_current_a", "", None, lo=_IEC_MIN_A, hi=_IEC_MAX_A)
        setup = self.writes(data.get("setup"), "setup", word_order, setup=True)
        fallback, factory_fallback = self.fallback(data.get("fallback"), setup, max_current)
        return {
            "state": self.state(data["state"], state_spec, values) if "state" in data else None,
            "limit": self.limit(data["limit"], word_order) if "limit" in data else None,
            "setup": setup,
            "keepalive_s": float(keepalive) if keepalive is not None else None,
            "fallback": fallback,
            "factory_fallback": factory_fallback,
            "max_current_a": float(max_current) if max_current is not None else None,
        }

    def require_value(self, values: Mapping[str, ValueSpec], name: str, what: str, declared: Any) -> None:
        spec = values.get(name)
        if spec is None:
            if not (isinstance(declared, Mapping) and name in declared):  # else: already reported
                self.err(f"values.{name}", f"required for {what}")
        elif not spec.required:
            self.err(f"values.{name}.required", f"{name} cannot be optional for {what}")

    # -- sections ----------------------------------------------------------------------------

    def request(self, data: Any) -> tuple[RequestPolicy, Packing]:
        if data is None:
            return RequestPolicy(), Packing()
        if not self.keys(data, "request", _REQUEST_KEYS):
            return RequestPolicy(), Packing()
        d_pol, d_pack = RequestPolicy(), Packing()
        timeout_s = self.number(data, "timeout_s", "request", d_pol.timeout_s, gt=0, hi=10)
        gap_s = self.number(data, "gap_s", "request", d_pol.gap_s, lo=0, hi=10)
        retries = self.integer(data, "retries", "request", d_pol.retries, lo=0, hi=10)
        max_registers = self.integer(data, "max_registers", "request", d_pack.max_registers, 1, 125)
        max_gap = self.integer(data, "max_gap", "request", d_pack.max_gap, 0, 124)
        if None in (timeout_s, gap_s, retries, max_registers, max_gap):
            return d_pol, d_pack  # the errors are recorded; the profile will not be built
        return (
            RequestPolicy(timeout_s=float(timeout_s), gap_s=float(gap_s), retries=retries),
            Packing(max_registers=max_registers, max_gap=max_gap),
        )

    def link(self, data: Any) -> LinkDefaults:
        if data is None or not self.keys(data, "link", _LINK_KEYS):
            return LinkDefaults()
        link = LinkDefaults(
            protocol=self.choice(data, "protocol", "link", ("rtu", "tcp"), "rtu") or "rtu",
            baudrate=self.choice(data, "baudrate", "link", _BAUDRATES, None),
            parity=self.choice(data, "parity", "link", ("N", "E", "O"), None),
            stopbits=self.choice(data, "stopbits", "link", (1, 2), None),
            port=self.integer(data, "port", "link", None, 1, 65535),
            default_unit=self.integer(data, "default_unit", "link", 1, 1, 255) or 1,
            fixed=bool(self.boolean(data, "fixed", "link", False)),
        )
        if link.fixed and None in (link.baudrate, link.parity, link.stopbits):
            self.err("link.fixed", "fixed serial settings need baudrate, parity and stopbits")
        return link

    def phases(self, data: Mapping[str, Any], kind: Kind | None) -> int | None:
        """1 or 3 when the model works on that many phases only; None when either."""
        if "phases" in data and kind is Kind.INPUT:
            self.err("phases", "only meters and chargers have 'phases'")
            return None
        return self.choice(data, "phases", "", (1, 3), None)

    def inputs(self, data: Any) -> InputSpec | None:
        if not self.keys(data, "inputs", _INPUTS_KEYS, required=("count",)):
            return None
        table = self.choice(data, "table", "inputs", ("discrete", "coil"), "discrete")
        count = self.integer(data, "count", "inputs", _MISSING, 1, 2000)
        active_low = self.boolean(data, "active_low", "inputs", False)
        if table is None or count is None or active_low is None:
            return None
        return InputSpec(Table(table), count, active_low)

    def values(self, data: Any, word_order: str, packing: Packing) -> dict[str, ValueSpec]:
        if not isinstance(data, Mapping):
            self.err("values", "must be a mapping of value names")
            return {}
        values: dict[str, ValueSpec] = {}
        for name, item in data.items():
            spec = self.value(str(name), item, f"values.{name}", word_order)
            if spec is not None:
                values[spec.name] = spec
        self.check_overlaps(values.values())
        for spec in values.values():
            if spec.count > packing.max_registers:
                self.err(
                    f"values.{spec.name}.type",
                    f"{spec.count} registers exceed request.max_registers {packing.max_registers}",
                )
        return values

    def value(self, name: str, data: Any, path: str, word_order: str) -> ValueSpec | None:
        before = len(self.errors)
        if not _NAME_RE.fullmatch(name):
            self.err(path, "value names are lower case letters, digits and _ (e.g. power_w)")
        if not self.keys(data, path, _VALUE_KEYS, required=("table", "address", "type")):
            return None
        table = self.choice(data, "table", path, tuple(t.value for t in Table), _MISSING)
        address = self.integer(data, "address", path, _MISSING, 0, 65535)
        type_name = self.type_name(data, path, numeric_only=False)
        spec_args = {
            "scale": self.number(data, "scale", path, 1.0, nonzero=True),
            "offset": self.number(data, "offset", path, 0.0),
            "word_order": self.choice(data, "word_order", path, codec.WORD_ORDERS, word_order),
            "invalid": self.int_list(data, "invalid", path),
            "range": self.range(data, path),
            "mask": self.integer(data, "mask", path, None, lo=1),
            "shift": self.integer(data, "shift", path, 0, lo=0, hi=63),
            "required": self.boolean(data, "required", path, True),
        }
        if len(self.errors) > before:
            return None
        spec = ValueSpec(name, Table(table), address, type_name, **spec_args)
        self.check_value(spec, path)
        return spec if len(self.errors) == before else None

    def check_value(self, spec: ValueSpec, path: str) -> None:
        """Rules between the fields of one value."""
        info = codec.type_info(spec.type)
        if info.is_bit != (spec.table in _BIT_TABLES):
            self.err(f"{path}.type", "bit values live in coil/discrete tables, registers elsewhere")
        if (info.is_string or info.is_bit) and (spec.scaled or spec.range or spec.mask or spec.shift):
            self.err(path, f"a {spec.type} value takes no scale, offset, range, mask or shift")
        if info.is_float and (spec.mask is not None or spec.shift):
            self.err(f"{path}.mask", "mask and shift are for integer types")
        if spec.mask is not None and (spec.mask << spec.shift) >> (16 * spec.count):
            self.err(f"{path}.mask", f"mask 0x{spec.mask:X} << {spec.shift} does not fit in {spec.type}")
        if spec.end > 0x10000:
            self.err(f"{path}.address", "value runs past register 65535")
        for sentinel in spec.invalid:
            if not 0 <= sentinel < 1 << (16 * spec.count):
                self.err(f"{path}.invalid", f"{sentinel} does not fit in {spec.count} registers")

    def check_overlaps(self, values: Iterable[ValueSpec]) -> None:
        """Two values may share registers only as bit fields of the same word(s)."""
        by_table: dict[Table, list[ValueSpec]] = {}
        for spec in values:
            by_table.setdefault(spec.table, []).append(spec)
        for specs in by_table.values():
            widest: ValueSpec | None = None
            for spec in sorted(specs, key=lambda s: (s.address, s.end)):
                if widest is not None and spec.address < widest.end and not _bit_fields(widest, spec):
                    self.err(
                        f"values.{spec.name}.address",
                        f"overlaps {widest.name} ({spec.table.value} {widest.address}..{widest.end - 1})",
                    )
                if widest is None or spec.end > widest.end:
                    widest = spec

    def state(self, data: Any, spec: ValueSpec | None, values: Mapping[str, ValueSpec]) -> StateSpec | None:
        if not self.keys(data, "state", _STATE_KEYS, required=("map",)):
            return None
        string_codes = spec is not None and codec.type_info(spec.type).is_string
        raw_map = data.get("map")
        if not isinstance(raw_map, Mapping) or not raw_map:
            self.err("state.map", "must map raw state codes to IEC 61851 letters A..F")
            return None
        mapping: dict[Any, IecState] = {}
        for code, letter in raw_map.items():
            path = f"state.map.{code}"
            if self.state_code(code, path, string_codes) and self.iec(letter, path):
                mapping[code] = IecState(letter)
        preferred = self.preferred(data.get("preferred"), mapping)
        by_value = None
        if "by_value" in data:
            by_value = self.by_value(data["by_value"], mapping, values, string_codes)
        return StateSpec(MappingProxyType(mapping), by_value, MappingProxyType(preferred))

    def preferred(self, data: Any, mapping: Mapping[Any, IecState]) -> dict[IecState, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            self.err("state.preferred", "must map IEC letters to raw codes")
            return {}
        result: dict[IecState, Any] = {}
        for letter, code in data.items():
            path = f"state.preferred.{letter}"
            if not self.iec(letter, path):
                continue
            if not isinstance(code, (int, str)) or mapping.get(code) != IecState(letter):
                self.err(path, f"{code!r} is not a code that state.map maps to {letter}")
                continue
            result[IecState(letter)] = code
        return result

    def by_value(
        self, data: Any, mapping: Mapping[Any, IecState], values: Mapping[str, ValueSpec], string_codes: bool
    ) -> StateByValue | None:
        path = "state.by_value"
        if not self.keys(data, path, _BY_VALUE_KEYS, required=sorted(_BY_VALUE_KEYS)):
            return None
        before = len(self.errors)
        codes = data["codes"]
        if not isinstance(codes, list) or not codes:
            self.err(f"{path}.codes", "must be a non-empty list of raw state codes")
            codes = []
        for code in codes:
            if not self.state_code(code, f"{path}.codes", string_codes):
                continue
            if code in mapping:
                self.err(f"{path}.codes", f"{code!r} is already in state.map")
        name = data["value"]
        other = values.get(name) if isinstance(name, str) else None
        if other is None or codec.type_info(other.type).is_string:
            self.err(f"{path}.value", f"{name!r} is not a numeric value of this profile")
        minimum = self.number(data, "min", path, _MISSING)
        then_ok = self.iec(data["then"], f"{path}.then")
        else_ok = self.iec(data["else"], f"{path}.else")
        if len(self.errors) > before or not (then_ok and else_ok) or minimum is None:
            return None
        return StateByValue(tuple(codes), name, float(minimum), IecState(data["then"]), IecState(data["else"]))

    def limit(self, data: Any, word_order: str) -> LimitSpec | None:
        path = "limit"
        if not self.keys(data, path, _LIMIT_KEYS, required=("address", "type")):
            return None
        before = len(self.errors)
        address, type_name, scale, order, single = self.register_write(data, path, word_order)
        pause = self.writes(data.get("pause"), f"{path}.pause", word_order, setup=False)
        resume = self.writes(data.get("resume"), f"{path}.resume", word_order, setup=False)
        if bool(pause) != bool(resume):
            self.err(path, "pause and resume writes come together (a paused box must resume)")
        if len(self.errors) > before:
            return None
        return LimitSpec(address, type_name, float(scale), order, single, pause, resume)

    def register_write(self, data: Any, path: str, word_order: str) -> tuple[Any, Any, Any, Any, Any]:
        """The fields every holding-register write has: address, type, scale, word order, FC06/16."""
        self.writable_table(data, path)
        address = self.integer(data, "address", path, _MISSING, 0, 65535)
        type_name = self.type_name(data, path, numeric_only=True)
        scale = self.number(data, "scale", path, 1.0, gt=0)
        order = self.choice(data, "word_order", path, codec.WORD_ORDERS, word_order)
        return address, type_name, scale, order, self.single(data, path, type_name)

    def fallback(
        self, data: Any, setup: Sequence[WriteSpec], max_current_a: float | None
    ) -> tuple[Fallback | None, FactoryFallback | None]:
        """The box's own fall-back, and the same as the box ships from the factory.

        ``timeout_s: watchdog_s`` needs a setup write that sets it; until that setup the box runs
        on ``factory_timeout_s`` (default 0: no watchdog, as a fresh Heidelberg). A fixed
        ``timeout_s`` is the factory's already, so ``factory_timeout_s`` beside it would be a
        second, contradicting fact and is refused. ``failsafe_current_a`` (default 0: the box
        stops) is what the box offers when its own watchdog expires before any setup changed it.
        """
        path = "fallback"
        if data is None:
            return None, None
        if not self.keys(data, path, _FALLBACK_KEYS, required=("timeout_s", "fed_by")):
            return None, None
        before = len(self.errors)
        fed_by = self.choice(data, "fed_by", path, _FED_BY, _MISSING)
        factory_timeout_s = self.number(data, "factory_timeout_s", path, 0.0, lo=0, hi=86400)
        failsafe_a = self.number(data, "failsafe_current_a", path, 0.0, lo=0, hi=_IEC_MAX_A)
        timeout_s: float | None = None
        if data["timeout_s"] == "watchdog_s":
            if not any(spec.value in ("watchdog_s", "watchdog_ms") for spec in setup):
                self.err(f"{path}.timeout_s", "watchdog_s needs a setup write of watchdog_s or watchdog_ms")
        else:
            timeout_s = self.number(data, "timeout_s", path, None, gt=0, hi=86400)
            factory_timeout_s = timeout_s
            if "factory_timeout_s" in data:
                self.err(f"{path}.factory_timeout_s",
                         "only beside timeout_s: watchdog_s (a fixed timeout_s is the factory's already)")
        if failsafe_a is not None and 0 < failsafe_a < _IEC_MIN_A:
            self.err(f"{path}.failsafe_current_a",
                     f"{failsafe_a} A: 0 (the box stops) or {_IEC_MIN_A}..{_IEC_MAX_A} A (IEC 61851)")
        elif failsafe_a is not None and max_current_a is not None and failsafe_a > max_current_a:
            self.err(f"{path}.failsafe_current_a", f"{failsafe_a} A is above max_current_a ({max_current_a} A)")
        if len(self.errors) > before or factory_timeout_s is None or failsafe_a is None:
            return None, None
        return (
            Fallback(timeout_s=None if timeout_s is None else float(timeout_s),
                     fed_by_any_request=fed_by == "any_request"),
            FactoryFallback(timeout_s=float(factory_timeout_s), failsafe_current_a=float(failsafe_a)),
        )

    def writes(self, data: Any, path: str, word_order: str, *, setup: bool) -> tuple[WriteSpec, ...]:
        if data is None:
            return ()
        if not isinstance(data, list):
            self.err(path, "must be a list of writes")
            return ()
        specs = (self.write(item, f"{path}[{i}]", word_order, setup) for i, item in enumerate(data))
        return tuple(spec for spec in specs if spec is not None)

    def write(self, data: Any, path: str, word_order: str, setup: bool) -> WriteSpec | None:
        allowed = _WRITE_KEYS | {"flash"} if setup else _WRITE_KEYS
        if not self.keys(data, path, allowed, required=("address", "type", "value")):
            return None
        before = len(self.errors)
        address, type_name, scale, order, single = self.register_write(data, path, word_order)
        flash = self.boolean(data, "flash", path, False)
        value = data["value"]
        if isinstance(value, str):
            if not setup or value not in SETUP_SYMBOLS:
                known = f"a number or one of {', '.join(SETUP_SYMBOLS)}" if setup else "a number"
                self.err(f"{path}.value", f"{value!r} is not {known}")
        elif not _is_number(value):
            self.err(f"{path}.value", f"{value!r} is not a number")
        if len(self.errors) > before:
            return None
        spec = WriteSpec(address, type_name, value, float(scale), order, single, bool(flash))
        if not isinstance(value, str):
            try:
                spec.words()
            except (codec.CodecError, ValueError) as exc:
                self.err(f"{path}.value", str(exc))
                return None
        return spec

    # -- typed getters: record an error and return None (or the default) ---------------------

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path or 'profile'}: {message}")

    def keys(self, data: Any, path: str, allowed: frozenset[str], required: Sequence[str] = ()) -> bool:
        """Report unknown and missing keys; True when ``data`` is a mapping with all required keys."""
        if not isinstance(data, Mapping):
            self.err(path, "must be a mapping")
            return False
        for key in data:
            if key not in allowed:
                self.err(_join(path, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        missing = [key for key in required if key not in data]
        for key in missing:
            self.err(_join(path, key), "required")
        return not missing

    def fetch(self, data: Mapping[str, Any], key: str, default: Any) -> tuple[bool, Any]:
        """(present, value). A missing required key is reported once, by :meth:`keys`."""
        if key in data and not (data[key] is None and default is None):
            return True, data[key]  # an explicit null counts as absent where None is the default
        return False, None if default is _MISSING else default

    def integer(self, data: Mapping[str, Any], key: str, path: str, default: Any,
                lo: int | None = None, hi: int | None = None) -> Any:  # fmt: skip
        present, value = self.fetch(data, key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(_join(path, key), f"{value!r} is not an integer")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.err(_join(path, key), f"{value} is outside {lo}..{hi if hi is not None else ''}")
            return None
        return value

    def number(self, data: Mapping[str, Any], key: str, path: str, default: Any, *,
               lo: float | None = None, hi: float | None = None, gt: float | None = None,
               nonzero: bool = False) -> Any:  # fmt: skip
        present, value = self.fetch(data, key, default)
        if not present:
            return value
        where = _join(path, key)
        if not _is_number(value):
            self.err(where, f"{value!r} is not a number")
        elif (lo is not None and value < lo) or (hi is not None and value > hi):
            self.err(where, f"{value} is outside {lo}..{hi if hi is not None else ''}")
        elif gt is not None and value <= gt:
            self.err(where, f"{value} must be greater than {gt}")
        elif nonzero and value == 0:
            self.err(where, "must not be 0")
        else:
            return value
        return None

    def boolean(self, data: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        present, value = self.fetch(data, key, default)
        if present and not isinstance(value, bool):
            self.err(_join(path, key), f"{value!r} is not true or false")
            return None
        return value

    def text(self, data: Mapping[str, Any], key: str, path: str, default: str) -> str:
        present, value = self.fetch(data, key, default)
        if present and (not isinstance(value, str) or not value.strip()):
            self.err(_join(path, key), f"{value!r} is not a non-empty text")
            return default
        return value

    def choice(self, data: Mapping[str, Any], key: str, path: str, choices: Sequence[Any], default: Any) -> Any:
        present, value = self.fetch(data, key, default)
        if present and (isinstance(value, bool) or value not in choices):
            self.err(_join(path, key), f"{value!r} is not one of {', '.join(map(str, choices))}")
            return None
        return value

    def type_name(self, data: Mapping[str, Any], path: str, *, numeric_only: bool) -> Any:
        if "type" not in data:
            return None  # reported by keys()
        value = data["type"]
        try:
            info = codec.type_info(value)
        except codec.CodecError as exc:
            self.err(f"{path}.type", str(exc))
            return None
        if numeric_only and (info.is_string or info.is_bit):
            self.err(f"{path}.type", f"a written register must be numeric, not {value}")
            return None
        return value

    def single(self, data: Mapping[str, Any], path: str, type_name: str | None) -> bool:
        """FC06 for a one-register value unless ``write: multiple``; FC16 needed for more."""
        count = codec.register_count(type_name) if type_name else 1
        write = self.choice(data, "write", path, ("single", "multiple"), "single" if count == 1 else "multiple")
        if write == "single" and count > 1:
            self.err(f"{path}.write", f"single (FC06) writes one register; {type_name} needs {count}")
        return write == "single"

    def writable_table(self, data: Mapping[str, Any], path: str) -> None:
        if "table" in data and data["table"] != Table.HOLDING.value:
            self.err(f"{path}.table", f"{data['table']!r}: only holding registers can be written")

    def int_list(self, data: Mapping[str, Any], key: str, path: str) -> Any:
        value = data.get(key, [])
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            self.err(_join(path, key), "must be a list of raw integers (e.g. [0xFFFF])")
            return None
        return tuple(value)

    def range(self, data: Mapping[str, Any], path: str) -> Any:
        value = data.get("range")
        if value is None:
            return None
        if not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value)) and value[0] <= value[1]):
            self.err(f"{path}.range", "must be [min, max] with min <= max")
            return None
        return (float(value[0]), float(value[1]))

    def state_code(self, code: Any, path: str, string_codes: bool) -> bool:
        ok = isinstance(code, str) if string_codes else isinstance(code, int) and not isinstance(code, bool)
        if not ok:
            self.err(path, f"a raw code must be {'a text' if string_codes else 'an integer'}, like the state value")
        return ok

    def iec(self, letter: Any, path: str) -> bool:
        if letter not in _IEC_LETTERS:
            self.err(path, f"{letter!r} is not an IEC 61851 state ({', '.join(_IEC_LETTERS)})")
            return False
        return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bit_fields(a: ValueSpec, b: ValueSpec) -> bool:
    """Two masked values of the same register(s): bytes packed into one word are fine."""
    return (
        a.mask is not None
        and b.mask is not None
        and (a.address, a.type, a.word_order) == (b.address, b.type, b.word_order)
    )
