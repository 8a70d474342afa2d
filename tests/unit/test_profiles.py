"""Device profiles: the contract test over every packaged profile, the validator, the packer."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hal.modbus.profile import (
    CHARGER_VALUES,
    METER_VALUES,
    PROFILE_NAMES,
    Block,
    FactoryFallback,
    InvalidValue,
    Kind,
    LimitSpec,
    Packing,
    ProfileError,
    ValueSpec,
    WriteSpec,
    load_profile,
    pack_blocks,
    parse_profile,
    profile_from_yaml,
)
from hal.types import IecState
from hal.modbus.types import Table
from golden_fixture import load_golden


# -- contract: every packaged profile ------------------------------------------------------------


def test_profile_names_match_the_files() -> None:
    files = {p.name for p in resources.files("hal.modbus").joinpath("profiles").iterdir() if p.name.endswith(".yaml")}
    assert {f"{name}.yaml" for name in PROFILE_NAMES} == files


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_loads_and_keeps_the_contract(name: str) -> None:
    prof = load_profile(name)
    assert prof.model == name
    kind = load_golden(name).kind  # the kind the golden fixture states from the vendor's document
    assert prof.kind is kind and prof.kind == kind.value
    assert prof.source == f"hal/modbus/profiles/{name}.yaml"
    assert prof.manufacturer and prof.description
    known = {Kind.METER: METER_VALUES, Kind.CHARGER: CHARGER_VALUES, Kind.INPUT: ()}[prof.kind]
    # A value outside the kind's names is only there to decide a state code (ABB Terra's socket lock).
    deciding = {prof.state.by_value.value} if prof.state is not None and prof.state.by_value is not None else set()
    assert set(prof.values) <= set(known) | deciding
    if prof.kind is Kind.METER:
        assert prof.values["power_w"].required
    if prof.kind is Kind.CHARGER:
        assert prof.state is not None and prof.limit is not None
        assert prof.values["state"].required
        assert set(prof.state.values()) <= set(IecState)
        for letter, raw in prof.state.preferred.items():
            assert prof.state[raw] is letter
    if prof.kind is Kind.INPUT:
        assert prof.inputs is not None and prof.inputs.table in (Table.DISCRETE, Table.COIL)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_blocks_cover_every_value_once_within_limits(name: str) -> None:
    prof = load_profile(name)
    golden = load_golden(name)
    if prof.kind is Kind.INPUT:  # contacts are read one by one at the config's index: no blocks
        assert prof.blocks == () and prof.inputs is not None
        assert all((r.table, r.count) == (prof.inputs.table, 1) for r in golden.reads)
    else:  # the reads per cycle (the bus budget the model costs) are the fixture's, in order
        assert [(b.table, b.address, b.count) for b in prof.blocks] == [(r.table, r.address, r.count) for r in golden.reads]
    carried = [n for block in prof.blocks for n in block.values]
    assert sorted(carried) == sorted(prof.values)
    for block in prof.blocks:
        assert block.count <= prof.packing.max_registers
        for value_name in block.values:
            spec = prof.values[value_name]
            assert spec.table is block.table
            assert block.address <= spec.address and spec.end <= block.end


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profiles_are_cached_and_frozen(name: str) -> None:
    prof = load_profile(name)
    assert load_profile(name) is prof
    assert {prof: name}[load_profile(name)] == name  # hashable, e.g. as a simulator's key
    with pytest.raises(AttributeError):
        prof.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        prof.values["x"] = prof.values[next(iter(prof.values))] if prof.values else None  # type: ignore[index]


def test_sdm630_blocks_pack_the_phases_and_the_totals() -> None:
    blocks = load_profile("sdm630").blocks
    assert [(b.table, b.address, b.count) for b in blocks] == [(Table.INPUT, 0x00, 12), (Table.INPUT, 0x34, 24)]


def test_unknown_profile_name() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'sdm999'"):
        load_profile("sdm999")


def test_duplicate_yaml_keys_are_refused() -> None:
    with pytest.raises(ProfileError, match=r"values\.power_w: duplicate key \(line 3, first at line 2\)"):
        profile_from_yaml("values:\n  power_w: 1\n  power_w: 2\n", "dup.yaml")


# -- the validator ------------------------------------------------------------------------------

METER: dict[str, Any] = {
    "model": "my_meter",
    "kind": "meter",
    "request": {"max_registers": 10, "max_gap": 2},
    "values": {
        "power_w": {"table": "input", "address": 0, "type": "float32"},
        "import_wh": {"table": "input", "address": 2, "type": "float32", "scale": 1000, "required": False},
    },
}
CHARGER: dict[str, Any] = {
    "kind": "charger",
    "values": {
        "state": {"table": "input", "address": 5, "type": "uint16"},
        "current_l1_a": {"table": "input", "address": 6, "type": "uint16", "scale": 0.1},
    },
    "state": {"map": {2: "A", 4: "B", 7: "C"}},
    "limit": {"address": 261, "type": "uint16", "scale": 0.1},
    "setup": [{"address": 257, "type": "uint16", "value": "watchdog_ms"}],
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``path`` (dot-separated; '-' deletes) set to ``value``."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value == "-":
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_base_profiles_are_valid() -> None:
    meter = parse_profile(METER, "config")
    assert meter.model == "my_meter" and meter.kind is Kind.METER
    assert meter.blocks == (Block(Table.INPUT, 0, 4, ("power_w", "import_wh")),)
    charger = parse_profile(CHARGER)
    assert charger.model == "custom"
    assert charger.setup == (WriteSpec(257, "uint16", "watchdog_ms"),)


ERRORS = [
    (METER, "values.power_w.type", "flaot32", "values.power_w.type: unknown type 'flaot32'"),
    (METER, "colour", "red", "colour: unknown key"),
    (METER, "values.power_w.sclae", 2, "values.power_w.sclae: unknown key"),
    (METER, "values.power_w.table", "inputs", "values.power_w.table: 'inputs' is not one of"),
    (METER, "values.power_w.address", 70000, "values.power_w.address: 70000 is outside 0..65535"),
    (METER, "values.power_w.address", "0x10", "values.power_w.address: '0x10' is not an integer"),
    (METER, "values.power_w.address", True, "values.power_w.address: True is not an integer"),
    (METER, "values.power_w.address", "-", "values.power_w.address: required"),
    (METER, "values.import_wh.address", 1, "values.import_wh.address: overlaps power_w (input 0..1)"),
    (METER, "values.power_w.type", "bit", "values.power_w.type: bit values live in coil/discrete"),
    (METER, "values.import_wh.type", "string2", "values.import_wh: a string2 value takes no scale"),
    (METER, "values.power_w.mask", 0xFF, "values.power_w.mask: mask and shift are for integer types"),
    (METER, "values.power_w.scale", 0, "values.power_w.scale: must not be 0"),
    (METER, "values.power_w.scale", "1000", "values.power_w.scale: '1000' is not a number"),
    (METER, "values.power_w.invalid", [0x1FFFFFFFF], "values.power_w.invalid: 8589934591 does not fit"),
    (METER, "values.power_w.invalid", 0xFFFF, "values.power_w.invalid: must be a list"),
    (METER, "values.power_w.range", [10, 0], "values.power_w.range: must be [min, max]"),
    (METER, "values.power_w.required", "yes", "values.power_w.required: 'yes' is not true or false"),
    (METER, "values.power_w.required", False, "values.power_w.required: power_w cannot be optional"),
    (METER, "values.power_w.type", "float64", "values.import_wh.address: overlaps power_w (input 0..3)"),
    (METER, "values.power_w", "-", "values.power_w: required for a meter"),
    (METER, "values.Power_W", {"table": "input", "address": 9, "type": "uint16"}, "values.Power_W: value names"),
    (METER, "values.energy", {"table": "input", "address": 20, "type": "string12"}, "values.energy.type: 12 registers exceed request.max_registers 10"),
    (METER, "request.max_registers", 200, "request.max_registers: 200 is outside 1..125"),
    (METER, "request.gap_s", -1, "request.gap_s: -1 is outside 0..10"),
    (METER, "request.timeout", 1, "request.timeout: unknown key"),
    (METER, "word_order", "middle", "word_order: 'middle' is not one of big, little"),
    (METER, "link", {"baudrate": 9601}, "link.baudrate: 9601 is not one of"),
    (METER, "kind", "wallbox", "kind: 'wallbox' is not one of meter, charger, input"),
    (METER, "kind", "-", "kind: required"),
    (METER, "limit", {"address": 1, "type": "uint16"}, "limit: only chargers have 'limit'"),
    (METER, "inputs", {"count": 8}, "inputs: only input modules have 'inputs'"),
    (METER, "values", [], "values: must be a mapping"),
    (METER, "values.flags", {"table": "input", "address": 10, "type": "uint16", "mask": 0xFF, "shift": 12},
     "values.flags.mask: mask 0xFF << 12 does not fit in uint16"),
    (CHARGER, "values.state.type", "float32", "values.state.type: a state code is an integer or a text"),
    (CHARGER, "state", "-", "state: required for a charger"),
    (CHARGER, "limit", "-", "limit: required for a charger"),
    (CHARGER, "values.state", "-", "values.state: required for a charger"),
    (CHARGER, "values.state.scale", 0.1, "values.state: a state code is not scaled"),
    (CHARGER, "state.map", {12: "G"}, "state.map.12: 'G' is not an IEC 61851 state"),
    (CHARGER, "state.map", {"A": "A"}, "state.map.A: a raw code must be an integer"),
    (CHARGER, "state.map", {}, "state.map: must map raw state codes"),
    (CHARGER, "state.preferred", {"C": 4}, "state.preferred.C: 4 is not a code that state.map maps to C"),
    (CHARGER, "state.by_value", {"codes": [5], "value": "lock", "min": 1, "then": "B", "else": "A"},
     "state.by_value.value: 'lock' is not a numeric value"),
    (CHARGER, "state.by_value", {"codes": [2], "value": "current_l1_a", "min": 1, "then": "B", "else": "A"},
     "state.by_value.codes: 2 is already in state.map"),
    (CHARGER, "limit.table", "input", "limit.table: 'input': only holding registers can be written"),
    (CHARGER, "limit", {"address": 1, "type": "uint32", "write": "single"},
     "limit.write: single (FC06) writes one register; uint32 needs 2"),
    (CHARGER, "limit.type", "string2", "limit.type: a written register must be numeric"),
    (CHARGER, "limit.scale", -0.1, "limit.scale: -0.1 must be greater than 0"),
    (CHARGER, "limit.write", "double", "limit.write: 'double' is not one of single, multiple"),
    (CHARGER, "limit.pause", [{"address": 8094, "type": "uint16", "value": 0}], "limit: pause and resume writes"),
    (CHARGER, "limit.resume", [{"address": 8094, "type": "uint16", "value": "watchdog_s"}],
     "limit.resume[0].value: 'watchdog_s' is not a number"),
    (CHARGER, "setup.0.table", "discrete", "setup[0].table: 'discrete': only holding registers"),
    (CHARGER, "setup.0.value", "watchdog", "setup[0].value: 'watchdog' is not a number or one of watchdog_s"),
    (CHARGER, "setup.0.value", 70000, "setup[0].value: 70000 does not fit in uint16"),
    (CHARGER, "setup.0.value", "-", "setup[0].value: required"),
    (CHARGER, "setup.0.flsh", True, "setup[0].flsh: unknown key"),
    (CHARGER, "setup", {"address": 1}, "setup: must be a list of writes"),
    (CHARGER, "keepalive_s", 0, "keepalive_s: 0 must be greater than 0"),
    # facts the config check compares a device's entry with
    (METER, "link", {"baudrate": 9600, "fixed": True}, "link.fixed: fixed serial settings need baudrate, parity and stopbits"),
    (METER, "link", {"fixed": "yes"}, "link.fixed: 'yes' is not true or false"),
    (METER, "phases", 2, "phases: 2 is not one of 1, 3"),
    (METER, "max_current_a", 16, "max_current_a: only chargers have 'max_current_a'"),
    (CHARGER, "max_current_a", 5, "max_current_a: 5 is outside 6..80"),
    (CHARGER, "max_current_a", "16", "max_current_a: '16' is not a number"),
    # the box's own fall-back, and the same as it ships (facts for the simulators)
    (CHARGER, "fallback", {"timeout_s": 60}, "fallback.fed_by: required"),
    (CHARGER, "fallback", {"timeout_s": 60, "fed_by": "any_read"}, "fallback.fed_by: 'any_read' is not one of"),
    (CHARGER, "fallback", {"timeout_s": 0, "fed_by": "limit_write"}, "fallback.timeout_s: 0 must be greater than 0"),
    (CHARGER, "fallback", {"timeout_s": "watchdog", "fed_by": "limit_write"}, "fallback.timeout_s: 'watchdog' is not a number"),
    (CHARGER, "fallback", {"timeout_s": 60, "fed_by": "limit_write", "factory_timeout": 60}, "fallback.factory_timeout: unknown key"),
    (CHARGER, "fallback", {"timeout_s": 60, "fed_by": "limit_write", "factory_timeout_s": 60},
     "fallback.factory_timeout_s: only beside timeout_s: watchdog_s"),
    (CHARGER, "fallback", {"timeout_s": "watchdog_s", "fed_by": "any_request", "factory_timeout_s": -1},
     "fallback.factory_timeout_s: -1 is outside 0..86400"),
    (CHARGER, "fallback", {"timeout_s": "watchdog_s", "fed_by": "any_request", "factory_timeout_s": "300"},
     "fallback.factory_timeout_s: '300' is not a number"),
    (CHARGER, "fallback", {"timeout_s": "watchdog_s", "fed_by": "any_request", "factory_timeout_s": None},
     "fallback.factory_timeout_s: None is not a number"),
    (CHARGER, "fallback", {"timeout_s": 60, "fed_by": "limit_write", "failsafe_current_a": 3},
     "fallback.failsafe_current_a: 3 A: 0 (the box stops) or 6..80 A"),
    (CHARGER, "fallback", {"timeout_s": 60, "fed_by": "limit_write", "failsafe_current_a": 81},
     "fallback.failsafe_current_a: 81 is outside 0..80"),
    (CHARGER, "fallback", {"timeout_s": 60, "fed_by": "limit_write", "failsafe_current_a": True},
     "fallback.failsafe_current_a: True is not a number"),
    (_with(CHARGER, "max_current_a", 16), "fallback", {"timeout_s": 60, "fed_by": "limit_write", "failsafe_current_a": 20},
     "fallback.failsafe_current_a: 20 A is above max_current_a (16 A)"),
    (_with(CHARGER, "setup", []), "fallback", {"timeout_s": "watchdog_s", "fed_by": "any_request"},
     "fallback.timeout_s: watchdog_s needs a setup write"),
    (METER, "fallback", {"timeout_s": 60, "fed_by": "limit_write"}, "fallback: only chargers have 'fallback'"),
]


@pytest.mark.parametrize(("base", "path", "value", "message"), ERRORS)
def test_validation_errors_name_their_path(base: dict[str, Any], path: str, value: Any, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(_with(base, path, value), "test")
    assert any(err.startswith(message) for err in info.value.errors), info.value.errors
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("test: ")


def test_profile_facts_for_the_config_check() -> None:
    """Serial settings that cannot change, the phases a model works on, the most a charger accepts."""
    heidelberg = load_profile("heidelberg")
    assert heidelberg.link.fixed and heidelberg.link.serial_text() == "19200 8E1" and heidelberg.max_current_a == 16
    assert load_profile("sdm120").phases == 1
    assert not load_profile("sdm630").link.fixed and load_profile("sdm630").phases is None
    box = parse_profile({**CHARGER, "phases": 1, "max_current_a": 32,
                         "link": {"baudrate": 9600, "parity": "N", "stopbits": 1, "fixed": True}})
    assert (box.phases, box.max_current_a, box.link.fixed) == (1, 32.0, True)
    with pytest.raises(ProfileError) as info:
        parse_profile({"kind": "input", "inputs": {"count": 8}, "phases": 1})
    assert info.value.errors == ["phases: only meters and chargers have 'phases'"]


@pytest.mark.parametrize(
    ("fallback", "factory"),
    [
        (None, None),  # no fall-back known (ABB Terra AC)
        ({"timeout_s": "watchdog_s", "fed_by": "any_request"}, FactoryFallback(0.0, 0.0)),  # defaults: none, stop
        ({"timeout_s": "watchdog_s", "fed_by": "any_request", "factory_timeout_s": 300, "failsafe_current_a": 0},
         FactoryFallback(300.0, 0.0)),  # cFos: 300 s as shipped
        ({"timeout_s": 60, "fed_by": "limit_write", "failsafe_current_a": 6}, FactoryFallback(60.0, 6.0)),  # Alfen
    ],
)
def test_factory_fallback_facts(fallback: dict[str, Any] | None, factory: FactoryFallback | None) -> None:
    """A fixed timeout_s is the factory's; a watchdog_s box runs on factory_timeout_s until its setup."""
    data = CHARGER if fallback is None else _with(CHARGER, "fallback", fallback)
    prof = parse_profile(data)
    assert prof.factory_fallback == factory
    assert (prof.fallback is None) == (factory is None)


def test_packaged_factory_fallbacks() -> None:
    """The facts the simulator builds its boxes from (see hal/sim/site.py)."""
    facts = {name: load_profile(name).factory_fallback for name in ("heidelberg", "alfen", "cfos_powerbrain", "abb_terra_ac")}
    assert facts == {
        "heidelberg": FactoryFallback(timeout_s=0.0, failsafe_current_a=0.0),  # 257 = 0: watchdog off
        "alfen": FactoryFallback(timeout_s=60.0, failsafe_current_a=6.0),  # validity time, safe current
        "cfos_powerbrain": FactoryFallback(timeout_s=300.0, failsafe_current_a=0.0),  # fail_safe_duration
        "abb_terra_ac": None,  # no watchdog known
    }


def test_input_module_needs_its_inputs() -> None:
    with pytest.raises(ProfileError, match="inputs: required for an input module"):
        parse_profile({"kind": "input"})
    prof = parse_profile({"kind": "input", "inputs": {"count": 4, "table": "coil", "active_low": True}})
    assert prof.inputs is not None and (prof.inputs.table, prof.inputs.count, prof.inputs.active_low) == (
        Table.COIL,
        4,
        True,
    )


def test_all_errors_are_collected_in_one_run() -> None:
    data = _with(_with(METER, "colour", "red"), "values.power_w.type", "flaot32")
    with pytest.raises(ProfileError) as info:
        parse_profile(data)
    assert len(info.value.errors) == 2


def test_a_profile_that_is_not_a_mapping() -> None:
    with pytest.raises(ProfileError, match="profile: must be a mapping"):
        parse_profile(["kind", "meter"])  # type: ignore[arg-type]


def test_masked_fields_may_share_a_register() -> None:
    data = _with(METER, "values.flags_a", {"table": "input", "address": 8, "type": "uint16", "mask": 0xFF})
    data = _with(data, "values.flags_b", {"table": "input", "address": 8, "type": "uint16", "mask": 0xFF, "shift": 8})
    prof = parse_profile(data)
    assert prof.values["flags_b"].decode([0xAB12]) == 0xAB
    assert prof.values["flags_a"].decode([0xAB12]) == 0x12


# -- values: decode rules ---------------------------------------------------------------------


def test_value_decode_rules() -> None:
    spec = ValueSpec("p", Table.HOLDING, 0, "int32", scale=0.01, invalid=(0x7FFFFFFF,), range=(-1e6, 1e6))
    assert spec.decode([0xFFFE, 0x1DC0]) == pytest.approx(-1234.56)
    with pytest.raises(InvalidValue, match="not available"):
        spec.decode([0x7FFF, 0xFFFF])
    with pytest.raises(InvalidValue, match="outside the plausible range"):
        spec.decode([0x7FFF, 0xFFFE])
    nan = ValueSpec("f", Table.INPUT, 0, "float32")
    with pytest.raises(InvalidValue, match="nan is not a number"):
        nan.decode([0x7FC0, 0])
    with pytest.raises(InvalidValue, match="inf is not a number"):
        nan.decode([0x7F80, 0])
    assert ValueSpec("s", Table.INPUT, 0, "uint16").decode([7]) == 7  # unscaled ints stay ints
    assert ValueSpec("t", Table.INPUT, 0, "int16", invalid=(0x8000,)).decode([0x8001]) == -32767


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.01, 0.001, 1, 10, 1000]), st.sampled_from(["big", "little"]))
def test_value_encode_inverts_decode(raw: int, scale: float, order: str) -> None:
    spec = ValueSpec("v", Table.HOLDING, 0, "uint32", scale=scale, word_order=order)
    words = [raw >> 16, raw & 0xFFFF] if order == "big" else [raw & 0xFFFF, raw >> 16]
    assert spec.encode(spec.decode(words)) == words


def test_masked_value_encodes_into_its_field() -> None:
    spec = ValueSpec("state", Table.HOLDING, 0, "uint32", mask=0x7F, shift=8)
    assert spec.encode(4) == [0x0000, 0x0400]
    assert spec.decode([0x1234, 0x8456]) == 4


@pytest.mark.parametrize(
    ("current_a", "scale", "type_", "words"),
    [
        (16.0, 0.1, "uint16", [160]),
        (6.75, 0.1, "uint16", [67]),  # floored: never above the requested current
        (0.7, 0.1, "uint16", [7]),  # 0.7 / 0.1 = 6.999… must still give 7
        (6.0, 0.001, "uint32", [0, 6000]),
        (10.0005, 0.001, "uint32", [0, 10000]),
        (16.0, 1, "float32", [0x4180, 0]),
        (0.0, 0.1, "uint16", [0]),
    ],
)
def test_limit_words_floor_to_the_resolution(current_a: float, scale: float, type_: str, words: list[int]) -> None:
    limit = LimitSpec(1, type_, scale)
    assert limit.words_for(current_a) == words
    assert limit.current_from(words) == pytest.approx(int(current_a / scale + 1e-6) * scale if type_ != "float32" else current_a)


def test_setup_write_symbols() -> None:
    assert WriteSpec(257, "uint16", "watchdog_ms").words(15, 6) == [15000]
    assert WriteSpec(8083, "uint16", "watchdog_s").words(15, 6) == [15]
    assert WriteSpec(262, "uint16", "failsafe_current", scale=0.1).words(15, 6) == [60]
    assert WriteSpec(262, "uint16", "failsafe_current", scale=0.1).decode([60]) == pytest.approx(6.0)
    assert WriteSpec(258, "uint16", 4).words() == [4]


def test_state_spec_behaves_as_a_mapping_with_extras() -> None:
    state = load_profile("abb_terra_ac").state
    assert state is not None
    assert dict(state) == {0: IecState.A, 1: IecState.B, 2: IecState.B, 3: IecState.C, 4: IecState.C}
    assert state.resolve(5, {"socket_lock": 0x0101}) is IecState.B
    assert state.resolve(5, {"socket_lock": 0x0000}) is IecState.A
    with pytest.raises(InvalidValue, match="needs socket_lock"):
        state.resolve(5, {"socket_lock": None})
    with pytest.raises(InvalidValue, match="unknown state code 6"):
        state.resolve(6, {})
    assert state.raw_for(IecState.C) == 4 and state.raw_for(IecState.A) == 0
    heidelberg = load_profile("heidelberg").state
    assert heidelberg is not None and heidelberg.raw_for(IecState.C) == 7 and heidelberg.raw_for(IecState.E) == 9
    alfen = load_profile("alfen").state
    assert alfen is not None and alfen.raw_for(IecState.C) == "C2"


# -- the packer ---------------------------------------------------------------------------------


def _spec(name: str, address: int, type_: str = "uint16", table: Table = Table.INPUT, **kw: Any) -> ValueSpec:
    return ValueSpec(name, table, address, type_, **kw)


PACKING_CASES = [
    # (values, max_registers, max_gap, expected [(table, address, count, names)])
    ([], 40, 0, []),
    ([_spec("a", 0), _spec("b", 1)], 40, 0, [(Table.INPUT, 0, 2, ("a", "b"))]),
    ([_spec("a", 0), _spec("b", 2)], 40, 0, [(Table.INPUT, 0, 1, ("a",)), (Table.INPUT, 2, 1, ("b",))]),
    ([_spec("a", 0), _spec("b", 2)], 40, 1, [(Table.INPUT, 0, 3, ("a", "b"))]),  # gap == max_gap
    ([_spec("b", 10, "float32"), _spec("a", 0, "float32")], 40, 8, [(Table.INPUT, 0, 12, ("a", "b"))]),  # sorted
    ([_spec("a", 0, "float32"), _spec("b", 2, "float32"), _spec("c", 4, "float32")], 4, 0,
     [(Table.INPUT, 0, 4, ("a", "b")), (Table.INPUT, 4, 2, ("c",))]),  # max_registers splits
    ([_spec("a", 0), _spec("b", 1, table=Table.HOLDING)], 40, 10,
     [(Table.HOLDING, 1, 1, ("b",)), (Table.INPUT, 0, 1, ("a",))]),  # tables never mix
    ([_spec("lo", 8, mask=0xFF), _spec("hi", 8, mask=0xFF, shift=8)], 40, 0,
     [(Table.INPUT, 8, 1, ("hi", "lo"))]),  # bit fields of one register share it
    ([_spec("x", 0, "bit", Table.DISCRETE), _spec("y", 1, "bit", Table.DISCRETE)], 40, 0,
     [(Table.DISCRETE, 0, 2, ("x", "y"))]),
    # SDM630: phases at 0x00-0x0B, total power 0x34, energies 0x48-0x4B with max_gap 24.
    ([_spec("v1", 0x00, "float32"), _spec("i3", 0x0A, "float32"), _spec("p", 0x34, "float32"),
      _spec("imp", 0x48, "float32"), _spec("exp", 0x4A, "float32")], 80, 24,
     [(Table.INPUT, 0x00, 12, ("v1", "i3")), (Table.INPUT, 0x34, 24, ("p", "imp", "exp"))]),
]  # fmt: skip


@pytest.mark.parametrize(("values", "max_registers", "max_gap", "expected"), PACKING_CASES)
def test_pack_blocks(values: list[ValueSpec], max_registers: int, max_gap: int, expected: list[tuple[Any, ...]]) -> None:
    blocks = pack_blocks(values, Packing(max_registers=max_registers, max_gap=max_gap))
    assert [(b.table, b.address, b.count, b.values) for b in blocks] == expected


@given(
    st.lists(st.tuples(st.integers(0, 300), st.sampled_from(["uint16", "uint32", "float64"])), max_size=30),
    st.integers(4, 125),
    st.integers(0, 20),
)
def test_packed_blocks_cover_all_values_within_limits(items: list[tuple[int, str]], max_registers: int, max_gap: int) -> None:
    specs, taken = [], set()
    for i, (address, type_) in enumerate(items):  # keep only non-overlapping values, as the validator does
        span = set(range(address, address + {"uint16": 1, "uint32": 2, "float64": 4}[type_]))
        if not span & taken:
            taken |= span
            specs.append(_spec(f"v{i}", address, type_))
    blocks = pack_blocks(specs, Packing(max_registers=max_registers, max_gap=max_gap))
    assert sorted(n for b in blocks for n in b.values) == sorted(s.name for s in specs)
    by_name = {s.name: s for s in specs}
    for block in blocks:
        assert block.count <= max_registers
        assert all(block.address <= by_name[n].address and by_name[n].end <= block.end for n in block.values)
    for first, second in zip(blocks, blocks[1:]):
        assert first.end <= second.address  # no register read twice


# -- robustness: an inline profile in a user's config is arbitrary data ----------------------------

_ATOMS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    st.sampled_from(["float32", "uint16", "holding", "input", "A", "C2", "watchdog_s", "single"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.lists(st.integers(), max_size=1), max_size=2),
)  # fmt: skip


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        paths += _leaf_paths(child, prefix + (key,))
    return paths


def _raw(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("hal.modbus").joinpath("profiles", f"{name}.yaml").read_text())


@given(st.sampled_from(PROFILE_NAMES), st.data())
def test_any_edit_gives_a_profile_or_path_errors_never_a_crash(name: str, data: st.DataObject) -> None:
    doc = _raw(name)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _leaf_paths(doc)
        path = data.draw(st.sampled_from(paths))
        node = doc
        for key in path[:-1]:
            node = node[key]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(_ATOMS)
    try:
        parse_profile(doc, "fuzz")
    except ProfileError as exc:
        assert exc.errors and all(": " in err for err in exc.errors)
