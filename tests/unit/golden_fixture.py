"""Golden fixtures: ``tests/unit/golden/<model>.yaml``, loaded and checked strictly.

A fixture is data written by hand from the vendor's register table (format and rules in
``tests/unit/golden/README.md``): the words a device answers, what they must decode to, the exact
requests of one cycle and, for a charger, the exact writes. This module only turns the YAML into
frozen values and refuses anything it does not know, so a typo in a key fails instead of
silently testing nothing; the checks against the driver are in ``test_golden_devices.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from hal.modbus.profile import Kind
from hal.modbus.types import Table
from hal.strict_yaml import YamlSyntaxError, read_strict_yaml
from hal.types import IecState
from memory_bus import MemoryBus, Read, Write

GOLDEN_DIR = Path(__file__).parent / "golden"

#: The fields of ``MeterReading`` / ``ChargerReading``: a fixture's ``reading`` states all of them.
READING_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    Kind.METER: ("power_w", "current_a", "voltage_v", "import_wh", "export_wh"),
    Kind.CHARGER: ("state", "current_a", "power_w", "energy_wh", "limit_a", "raw_state"),
}
_PHASES = {"current_a", "voltage_v"}

Expected = Mapping[str, Any]


class FixtureError(AssertionError):
    """A golden fixture is missing or malformed; the message names the file and every problem."""


@dataclass(frozen=True)
class Words:
    """Consecutive words (or bits) of one table from ``address`` on."""

    table: Table
    address: int
    words: tuple[int, ...]


@dataclass(frozen=True)
class Case:
    """A variation of the dump: ``patch`` overwrites words; then the reading (partly) or the error."""

    name: str
    patch: tuple[Words, ...]
    reading: Expected | None
    values: Expected | None
    error: str | None


@dataclass(frozen=True)
class ApplyCase:
    limit_a: float
    writes: tuple[Write, ...]


@dataclass(frozen=True)
class SetupCase:
    watchdog_s: float
    failsafe_current_a: float
    writes: tuple[Write, ...] | None
    error: str | None


@dataclass(frozen=True)
class Golden:
    """One model's golden fixture."""

    model: str
    source: str
    kind: Kind
    unit: int
    dump: tuple[Words, ...]
    reads: tuple[Read, ...]
    reading: Expected | None = None  # meters and chargers
    cases: tuple[Case, ...] = ()
    keepalive_s: float | None = None  # chargers
    apply: tuple[ApplyCase, ...] = ()  # chargers
    setup: tuple[SetupCase, ...] = ()  # chargers
    inputs: tuple[bool, ...] = ()  # input modules: the active state of each contact

    def bus(self, *patches: Words) -> MemoryBus:
        """A strict in-memory bus serving the dump (then ``patches``): an unlisted word is an
        illegal address, so the dump must cover every word the driver reads."""
        bus = MemoryBus(strict=True)
        for block in self.dump + patches:
            bus.set(block.table, self.unit, block.address, block.words)
        return bus


def fixture_path(model: str) -> Path:
    return GOLDEN_DIR / f"{model}.yaml"


def fixture_models() -> list[str]:
    """The models that have a fixture file (for the check that no fixture is orphaned)."""
    return sorted(p.stem for p in GOLDEN_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_golden(model: str) -> Golden:
    """The fixture of ``model``; FixtureError naming the file when it is missing or malformed."""
    path = fixture_path(model)
    source = f"tests/unit/golden/{model}.yaml"
    if not path.is_file():
        raise FixtureError(
            f"{source} is missing: every profile in hal/modbus/profiles/ needs a golden fixture "
            "written by hand from the vendor's register table (see tests/unit/golden/README.md)"
        )
    return parse_golden_text(path.read_text(encoding="utf-8"), model, source)


def parse_golden_text(text: str, model: str, source: str) -> Golden:
    """A fixture from its YAML text, read as strictly as a profile (``hal.strict_yaml``: duplicate
    keys and YAML 1.1 guesses fail)."""
    try:
        read = read_strict_yaml(text)
    except YamlSyntaxError as exc:
        raise FixtureError(f"{source}: YAML: {exc}") from exc
    if read.problems:
        raise FixtureError(f"{source}:\n  " + "\n  ".join(p.render(top="fixture") for p in read.problems))
    return parse_golden(read.data, model, source)


def parse_golden(data: Any, model: str, source: str) -> Golden:
    """A fixture from its parsed YAML; FixtureError listing every problem with its path."""
    check = _Checker()
    golden = check.golden(data, model, source)
    if check.errors or golden is None:
        raise FixtureError(f"{source}:\n  " + "\n  ".join(check.errors))
    return golden


class _Checker:
    """Builds a :class:`Golden` and collects every problem with its path (like the profile check)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    # -- shapes ----------------------------------------------------------------------------------

    def mapping(self, node: Any, path: str, required: Set[str], optional: Set[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(node, dict):
            self.fail(path, "must be a mapping")
            return {}
        for key in node:
            if key not in required | optional:
                self.fail(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(required | optional))})")
        for key in sorted(required - set(node)):
            self.fail(f"{path}.{key}", "required")
        return {k: v for k, v in node.items() if k in required | optional}

    def items(self, node: Any, path: str, *, empty: bool = True) -> list[Any]:
        if not isinstance(node, list) or (not empty and not node):
            self.fail(path, "must be a list" if empty else "must be a non-empty list")
            return []
        return node

    def integer(self, node: Any, path: str, low: int = 0, high: int = 0xFFFF) -> int:
        if type(node) is not int or not low <= node <= high:
            self.fail(path, f"{node!r} is not an integer in {low}..{high}")
            return low
        return node

    def number(self, node: Any, path: str, *, none: bool = False) -> Any:
        if node is None and none:
            return None
        if type(node) not in (int, float):
            self.fail(path, f"{node!r} is not a number")
            return 0.0
        return node

    def table(self, node: Any, path: str) -> Table:
        try:
            return Table(node)
        except ValueError:
            self.fail(path, f"{node!r} is not one of {', '.join(t.value for t in Table)}")
            return Table.HOLDING

    def text(self, node: Any, path: str) -> str:
        if not isinstance(node, str) or not node:
            self.fail(path, f"{node!r} is not a text")
            return ""
        return node

    # -- parts ------------------------------------------------------------------------------------

    def words(self, node: Any, path: str) -> Words:
        data = self.mapping(node, path, {"table", "address", "words"})
        table = self.table(data.get("table"), f"{path}.table")
        address = self.integer(data.get("address"), f"{path}.address")
        top = 1 if table in (Table.COIL, Table.DISCRETE) else 0xFFFF
        words = tuple(
            self.integer(w, f"{path}.words[{i}]", 0, top)
            for i, w in enumerate(self.items(data.get("words"), f"{path}.words", empty=False))
        )
        return Words(table, address, words)

    def read(self, node: Any, path: str, unit: int) -> Read:
        data = self.mapping(node, path, {"table", "address", "count"})
        return Read(self.table(data.get("table"), f"{path}.table"), self.integer(data.get("address"), f"{path}.address"),
                    self.integer(data.get("count"), f"{path}.count", 1, 125), unit)  # fmt: skip

    def write(self, node: Any, path: str, unit: int) -> Write:
        data = self.mapping(node, path, {"address", "words", "fc"})
        fc = data.get("fc")
        if fc not in (6, 16):
            self.fail(f"{path}.fc", f"{fc!r} is not 6 (write single register) or 16 (write multiple)")
        words = tuple(self.integer(w, f"{path}.words[{i}]") for i, w in enumerate(self.items(data.get("words"), f"{path}.words", empty=False)))
        return Write(self.integer(data.get("address"), f"{path}.address"), words, unit, single=fc == 6)

    def writes(self, node: Any, path: str, unit: int) -> tuple[Write, ...]:
        return tuple(self.write(w, f"{path}[{i}]", unit) for i, w in enumerate(self.items(node, path)))

    def expected(self, node: Any, path: str, kind: Kind, *, complete: bool) -> Expected:
        fields = set(READING_FIELDS[kind])
        data = self.mapping(node, path, fields if complete else set(), set() if complete else fields)
        if not data and not complete:
            self.fail(path, "states nothing")
        out: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{path}.{key}"
            if key == "state":
                if value not in {s.value for s in IecState}:
                    self.fail(where, f"{value!r} is not an IEC 61851 state letter A..F")
                out[key] = value
            elif key == "raw_state":
                if type(value) not in (int, str):
                    self.fail(where, f"{value!r} is not a vendor state code (integer or text)")
                out[key] = value
            elif key in _PHASES and value is not None:
                phases = self.items(value, where)
                if len(phases) != 3:
                    self.fail(where, "must be [L1, L2, L3]")
                out[key] = tuple(self.number(p, f"{where}[{i}]") for i, p in enumerate(phases))
            else:
                out[key] = self.number(value, where, none=key != "power_w" or kind is Kind.CHARGER)
        return out

    def values(self, node: Any, path: str) -> Expected:
        if not isinstance(node, dict) or not node:
            self.fail(path, "must map value names to what read_values() gives")
            return {}
        return {str(k): v if v is None or isinstance(v, str) else self.number(v, f"{path}.{k}") for k, v in node.items()}

    def case(self, node: Any, path: str, kind: Kind) -> Case:
        data = self.mapping(node, path, {"name", "patch"}, {"reading", "values", "error"})
        if ("error" in data) == ("reading" in data or "values" in data):
            self.fail(path, "states either an error or a reading (and/or values)")
        return Case(
            name=self.text(data.get("name"), f"{path}.name"),
            patch=tuple(self.words(w, f"{path}.patch[{i}]") for i, w in enumerate(self.items(data.get("patch"), f"{path}.patch", empty=False))),
            reading=self.expected(data["reading"], f"{path}.reading", kind, complete=False) if "reading" in data else None,
            values=self.values(data["values"], f"{path}.values") if "values" in data else None,
            error=self.text(data["error"], f"{path}.error") if "error" in data else None,
        )  # fmt: skip

    def apply_case(self, node: Any, path: str, unit: int) -> ApplyCase:
        data = self.mapping(node, path, {"limit_a", "writes"})
        return ApplyCase(self.number(data.get("limit_a"), f"{path}.limit_a"), self.writes(data.get("writes"), f"{path}.writes", unit))

    def setup_case(self, node: Any, path: str, unit: int) -> SetupCase:
        data = self.mapping(node, path, {"watchdog_s", "failsafe_current_a"}, {"writes", "error"})
        if ("writes" in data) == ("error" in data):
            self.fail(path, "states either the writes or an error")
        return SetupCase(
            self.number(data.get("watchdog_s"), f"{path}.watchdog_s"),
            self.number(data.get("failsafe_current_a"), f"{path}.failsafe_current_a"),
            self.writes(data["writes"], f"{path}.writes", unit) if "writes" in data else None,
            self.text(data["error"], f"{path}.error") if "error" in data else None,
        )

    # -- the whole file ---------------------------------------------------------------------------

    def golden(self, node: Any, model: str, source: str) -> Golden | None:
        if not isinstance(node, dict):
            self.fail("fixture", "must be a mapping")
            return None
        try:
            kind = Kind(node.get("kind"))
        except ValueError:
            self.fail("kind", f"{node.get('kind')!r} is not one of meter, charger, input")
            return None
        base = {"kind", "unit", "dump", "reads"}
        by_kind = {
            Kind.METER: ({"reading"}, {"cases"}),
            Kind.CHARGER: ({"reading", "keepalive_s", "apply", "setup"}, {"cases"}),
            Kind.INPUT: ({"inputs"}, set()),
        }
        required, optional = by_kind[kind]
        data = self.mapping(node, "fixture", base | required, optional)
        unit = self.integer(data.get("unit"), "unit", 0, 255)
        golden = Golden(
            model=model,
            source=source,
            kind=kind,
            unit=unit,
            dump=tuple(self.words(w, f"dump[{i}]") for i, w in enumerate(self.items(data.get("dump"), "dump", empty=False))),
            reads=tuple(self.read(r, f"reads[{i}]", unit) for i, r in enumerate(self.items(data.get("reads"), "reads", empty=False))),
        )  # fmt: skip
        if kind is Kind.INPUT:
            inputs = self.items(data.get("inputs"), "inputs", empty=False)
            for i, state in enumerate(inputs):
                if not isinstance(state, bool):
                    self.fail(f"inputs[{i}]", f"{state!r} is not true or false")
            return replace(golden, inputs=tuple(inputs))
        golden = replace(
            golden,
            reading=self.expected(data.get("reading"), "reading", kind, complete=True),
            cases=tuple(self.case(c, f"cases[{i}]", kind) for i, c in enumerate(self.items(data.get("cases", []), "cases"))),
        )  # fmt: skip
        if kind is Kind.CHARGER:
            applies = tuple(self.apply_case(a, f"apply[{i}]", unit) for i, a in enumerate(self.items(data.get("apply"), "apply")))
            if not any(a.limit_a == 0 for a in applies) or not any(a.limit_a > 0 for a in applies):
                self.fail("apply", "must state the writes of a limit above 0 and of 0 (the pause)")
            setups = tuple(self.setup_case(s, f"setup[{i}]", unit) for i, s in enumerate(self.items(data.get("setup"), "setup")))
            if not any(s.writes is not None for s in setups):
                self.fail("setup", "must state the writes of at least one setup (an empty list when there are none)")
            golden = replace(golden, keepalive_s=self.number(data.get("keepalive_s"), "keepalive_s", none=True),
                              apply=applies, setup=setups)  # fmt: skip
        return golden
