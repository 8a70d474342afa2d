"""Golden tests: every packaged model decodes a register dump written by hand from its vendor's
register table, asks for exactly the requests it should, and writes exactly what it should.

The data is in ``tests/unit/golden/<model>.yaml`` (format and rules: the README there): raw words
as the device would answer them, never generated from the profile under test. One generic test
per aspect runs over every profile found in ``hal/modbus/profiles/``, so adding a model is adding
its profile and its fixture; a profile without a fixture fails here, naming the missing file.
The dumps are served by an in-memory bus, so the tests also pin the exact requests: one read
per block, and FC06 versus FC16 for every write. Below the generic tests are the few checks data
cannot say (a flash register read back before it is written, a box without a power register),
and the tests of the device classes themselves.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import yaml

from golden_fixture import (
    READING_FIELDS,
    FixtureError,
    Golden,
    fixture_models,
    fixture_path,
    load_golden,
    parse_golden,
    parse_golden_text,
)
from hal.modbus.devices import ModbusInput, ProfileCharger, ProfileMeter, device_for
from hal.modbus.profile import PROFILE_NAMES, Kind, load_profile, parse_profile
from hal.modbus.types import RequestPolicy, Table
from hal.types import Charger, CommError, DeviceAnswerError, IecState, Input, Meter
from memory_bus import MemoryBus, Read, Write

HOLD = Table.HOLDING
CHARGERS = [n for n in PROFILE_NAMES if load_profile(n).kind is Kind.CHARGER]
READERS = [n for n in PROFILE_NAMES if load_profile(n).kind is not Kind.INPUT]  # meters and chargers


def _device(golden: Golden, bus: MemoryBus) -> ProfileMeter | ProfileCharger:
    """The model's device, named after the model so error messages say which fixture failed."""
    return device_for(golden.model, load_profile(golden.model), bus, golden.unit)


def _check_reading(reading: object, expected: Mapping[str, Any], where: str) -> None:
    """Each stated field equals the expected one (floats to 1e-9 relative: scaled integers such
    as 0.01 x 123456 are not exact in binary); ``state`` is a letter, ``raw_state`` exact."""
    for name, want in expected.items():
        got = getattr(reading, name)
        if name == "state":
            assert got is IecState(want), f"{where}: state {got} != {want}"
        elif name == "raw_state":
            assert got == want and type(got) is type(want), f"{where}: raw_state {got!r} != {want!r}"
        elif want is None:
            assert got is None, f"{where}: {name} {got!r} != None"
        else:
            assert got is not None and got == pytest.approx(want, rel=1e-9), f"{where}: {name} {got!r} != {want!r}"


def _check_values(values: Mapping[str, object], expected: Mapping[str, Any], where: str) -> None:
    for name, want in expected.items():
        assert name in values, f"{where}: the profile has no value {name!r}"
        got = values[name]
        ok = got is None if want is None else got == pytest.approx(want, rel=1e-9)
        assert ok, f"{where}: read_values()[{name!r}] {got!r} != {want!r}"


def _check_error(exc: BaseException, golden: Golden, text: str, where: str) -> None:
    """The device's message starts with its id (here the model) and then the fixture's text."""
    message = str(exc)
    assert message.startswith(f"{golden.model}: {text}"), f"{where}: {message!r} does not start with {text!r}"


# ==============================================================================================
# The generic golden test: one per aspect, over every packaged profile
# ==============================================================================================


def test_every_fixture_belongs_to_a_profile() -> None:
    """A fixture whose name matches no profile (a typo, a renamed model) would test nothing."""
    orphans = sorted(set(fixture_models()) - set(PROFILE_NAMES))
    assert not orphans, f"fixtures without a profile in hal/modbus/profiles/: {orphans}"


@pytest.mark.parametrize("model", PROFILE_NAMES)
def test_golden_decode_and_requests(model: str) -> None:
    """The dump decodes to the stated reading, with exactly the stated reads."""
    golden = load_golden(model)
    profile = load_profile(model)
    assert golden.kind is profile.kind, f"{golden.source}: kind {golden.kind.value}, the profile says {profile.kind.value}"
    bus = golden.bus()
    if golden.kind is Kind.INPUT:
        assert profile.inputs is not None and len(golden.inputs) == profile.inputs.count
        for index, active in enumerate(golden.inputs):
            contact = ModbusInput(model, bus, golden.unit, index, table=profile.inputs.table,
                                  active_low=profile.inputs.active_low, policy=profile.request)  # fmt: skip
            assert isinstance(contact, Input)
            assert contact.read().active is active, f"{golden.source}: input {index}"
    else:
        device = _device(golden, bus)
        assert golden.reading is not None and set(golden.reading) == set(READING_FIELDS[golden.kind])
        _check_reading(device.read(), golden.reading, golden.source)
        if isinstance(device, ProfileCharger):
            assert isinstance(device, Charger) and device.keepalive_s == golden.keepalive_s
        else:
            assert isinstance(device, Meter)
    assert bus.reads == list(golden.reads)
    assert bus.writes == []  # reading never writes


@pytest.mark.parametrize("model", READERS)
def test_golden_cases(model: str) -> None:
    """Each variation of the dump: what it decodes to, or the error it must raise."""
    golden = load_golden(model)
    for case in golden.cases:
        where = f"{golden.source}: {case.name}"
        device = _device(golden, golden.bus(*case.patch))
        if case.error is not None:
            with pytest.raises(DeviceAnswerError) as info:
                device.read()
            _check_error(info.value, golden, case.error, where)
            continue
        if case.reading is not None:
            _check_reading(device.read(), case.reading, where)
        if case.values is not None:
            _check_values(device.read_values(), case.values, where)


@pytest.mark.parametrize("model", CHARGERS)
def test_golden_apply_writes(model: str) -> None:
    """apply(limit) writes exactly the stated registers, with FC06 or FC16 as stated; 0 pauses."""
    golden = load_golden(model)
    for case in golden.apply:
        bus = golden.bus()
        charger = _device(golden, bus)
        assert isinstance(charger, ProfileCharger)
        charger.apply(case.limit_a)
        assert bus.writes == list(case.writes), f"{golden.source}: apply({case.limit_a})"


@pytest.mark.parametrize("model", CHARGERS)
def test_golden_setup_writes(model: str) -> None:
    """setup(watchdog_s, failsafe_current_a) writes exactly the stated registers, or refuses."""
    golden = load_golden(model)
    for case in golden.setup:
        where = f"{golden.source}: setup({case.watchdog_s}, {case.failsafe_current_a})"
        bus = golden.bus()
        charger = _device(golden, bus)
        assert isinstance(charger, ProfileCharger)
        if case.error is not None:
            with pytest.raises(ValueError) as info:
                charger.setup(case.watchdog_s, case.failsafe_current_a)
            _check_error(info.value, golden, case.error, where)
            continue
        charger.setup(watchdog_s=case.watchdog_s, failsafe_current_a=case.failsafe_current_a)
        assert bus.writes == list(case.writes or ()), where


@pytest.mark.parametrize("model", READERS)
def test_comm_error_propagates(model: str) -> None:
    """A bus outage is not the device's to handle: it reaches the control loop unchanged."""
    golden = load_golden(model)
    bus = golden.bus()
    first = golden.reads[0]
    bus.errors[(first.table, first.address)] = CommError("timeout")
    with pytest.raises(CommError):
        _device(golden, bus).read()


@pytest.mark.parametrize("model", CHARGERS)
def test_apply_refuses_negative_and_nan(model: str) -> None:
    golden = load_golden(model)
    bus = golden.bus()
    charger = _device(golden, bus)
    assert isinstance(charger, ProfileCharger)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            charger.apply(bad)
    assert bus.writes == []


# -- the fixtures themselves are checked strictly -----------------------------------------------


def test_a_profile_without_a_fixture_fails_naming_the_file() -> None:
    assert not fixture_path("no_such_model").exists()
    with pytest.raises(FixtureError, match=r"tests/unit/golden/no_such_model\.yaml is missing"):
        load_golden("no_such_model")


def _raw(model: str) -> dict[str, Any]:
    return yaml.safe_load(fixture_path(model).read_text(encoding="utf-8"))


Edit = Callable[[dict[str, Any]], Any]


def _edited(model: str, edit: Edit) -> dict[str, Any]:
    data = copy.deepcopy(_raw(model))
    edit(data)
    return data


FIXTURE_ERRORS = [
    ("sdm630", lambda d: d.update(colour="red"), "colour: unknown key"),
    ("sdm630", lambda d: d["reading"].update(power=1.0), "reading.power: unknown key"),
    ("sdm630", lambda d: d["reading"].pop("export_wh"), "reading.export_wh: required"),
    ("sdm630", lambda d: d.pop("reads"), "reads: required"),
    ("sdm630", lambda d: d["dump"][0].update(tabel="input"), "dump[0].tabel: unknown key"),
    ("sdm630", lambda d: d["dump"][0].update(table="inputs"), "dump[0].table: 'inputs' is not one of"),
    ("sdm630", lambda d: d["dump"][1].update(words=[0x10000, 0]), "dump[1].words[0]: 65536 is not an integer"),
    ("sdm630", lambda d: d["dump"][1].update(words=[True, 0]), "dump[1].words[0]: True is not an integer"),
    ("sdm630", lambda d: d["reading"].update(current_a=[1.0, 2.0]), "reading.current_a: must be [L1, L2, L3]"),
    ("sdm630", lambda d: d["cases"][0].pop("reading"), "cases[0]: states either an error or a reading"),
    ("sdm630", lambda d: d["cases"][0].update(error="x"), "cases[0]: states either an error or a reading"),
    ("sdm630", lambda d: d["cases"][0].update(reading={}), "cases[0].reading: states nothing"),
    ("sdm630", lambda d: d.update(apply=[]), "fixture.apply: unknown key"),
    ("sdm630", lambda d: d.update(kind="wallbox"), "kind: 'wallbox' is not one of"),
    ("heidelberg", lambda d: d["apply"][0]["writes"][0].update(fc=3), "apply[0].writes[0].fc: 3 is not 6"),
    ("heidelberg", lambda d: d["reading"].update(state="G"), "reading.state: 'G' is not an IEC 61851 state"),
    ("heidelberg", lambda d: d["reading"].update(raw_state=7.0), "reading.raw_state: 7.0 is not a vendor state code"),
    ("heidelberg", lambda d: d.pop("keepalive_s"), "fixture.keepalive_s: required"),
    ("heidelberg", lambda d: d.update(apply=d["apply"][:1]), "apply: must state the writes of a limit above 0 and of 0"),
    ("heidelberg", lambda d: d.update(setup=d["setup"][1:]), "setup: must state the writes of at least one setup"),
    ("heidelberg", lambda d: d["setup"][0].update(error="x"), "setup[0]: states either the writes or an error"),
    ("modbus_io", lambda d: d.update(inputs=[1, 0]), "inputs[0]: 1 is not true or false"),
    ("modbus_io", lambda d: d.update(reading={}), "fixture.reading: unknown key"),
]


@pytest.mark.parametrize(("model", "edit", "message"), FIXTURE_ERRORS)
def test_fixture_typos_fail(model: str, edit: Edit, message: str) -> None:
    with pytest.raises(FixtureError) as info:
        parse_golden(_edited(model, edit), model, f"tests/unit/golden/{model}.yaml")
    assert message in str(info.value), str(info.value)


def test_fixture_duplicate_keys_fail() -> None:
    text = fixture_path("sdm72").read_text(encoding="utf-8") + "unit: 4\n"
    with pytest.raises(FixtureError, match=r"unit: duplicate key \(line \d+, first at line \d+\)"):
        parse_golden_text(text, "sdm72", "tests/unit/golden/sdm72.yaml")


# ==============================================================================================
# What data cannot say
# ==============================================================================================


def test_cfos_setup_reads_flash_registers_back_and_skips_equal_ones() -> None:
    """Flash registers are read before they are written, so a restart does not wear the flash."""
    golden = load_golden("cfos_powerbrain")
    bus = golden.bus()
    box = _device(golden, bus)
    assert isinstance(box, ProfileCharger)
    box.setup(watchdog_s=300, failsafe_current_a=6)
    assert Read(HOLD, 8083, 1, 1) in bus.reads and Read(HOLD, 8085, 1, 1) in bus.reads
    assert bus.writes == [Write(8085, (60,), 1, True)]
    bus.writes.clear()
    box.setup(watchdog_s=300, failsafe_current_a=6)
    assert bus.writes == []  # now both hold the wanted values


def test_cfos_setup_writes_when_the_read_back_is_refused() -> None:
    golden = load_golden("cfos_powerbrain")
    bus = golden.bus()
    bus.errors[(HOLD, 8083)] = DeviceAnswerError("exception 2")
    _device(golden, bus).setup(120, 0)  # type: ignore[union-attr]
    assert bus.writes == [Write(8083, (120,), 1, True)]  # 8085 already 0


def test_charger_without_power_register_estimates_it() -> None:
    # A custom profile (inline in a config) for a box that reports no power: sum(I) x 230 V.
    no_power = parse_profile(
        {
            "kind": "charger",
            "values": {
                "state": {"table": "input", "address": 5, "type": "uint16"},
                "current_l1_a": {"table": "input", "address": 6, "type": "uint16", "scale": 0.1},
            },
            "state": {"map": {7: "C"}},
            "limit": {"address": 261, "type": "uint16", "scale": 0.1},
        },
        "chargers.X.profile",
    )
    heidelberg = load_golden("heidelberg")  # its dump: state 7 at input 5, 16.0 A at input 6
    reading = ProfileCharger("X", no_power, heidelberg.bus(), heidelberg.unit).read()
    assert reading.current_a == pytest.approx((16.0, 0.0, 0.0))
    assert reading.power_w == pytest.approx(16.0 * 230)
    assert reading.energy_wh is None and reading.limit_a is None


# ==============================================================================================
# The device classes
# ==============================================================================================


def _bus(unit: int, table: Table, address: int, words: list[int]) -> MemoryBus:
    bus = MemoryBus(strict=True)
    bus.set(table, unit, address, words)
    return bus


@pytest.mark.parametrize(
    ("bit", "active_low", "active"), [(1, False, True), (0, False, False), (1, True, False), (0, True, True)]
)
def test_modbus_input_polarity(bit: int, active_low: bool, active: bool) -> None:
    bus = _bus(5, Table.DISCRETE, 3, [bit])
    contact = ModbusInput("RSE2", bus, 5, 3, active_low=active_low)
    assert contact.read().active is active
    assert bus.reads == [Read(Table.DISCRETE, 3, 1, 5)]
    assert isinstance(contact, Input)


def test_modbus_input_on_a_coil() -> None:
    bus = _bus(5, Table.COIL, 0, [1])
    contact = ModbusInput("RSE2", bus, 5, 0, table="coil", policy=RequestPolicy(timeout_s=0.2))
    assert contact.read().active
    assert contact.read_values() == {"coil_0": 1, "active": 1}


def test_modbus_input_refuses_register_tables_and_bad_answers() -> None:
    with pytest.raises(ValueError, match="coils or discrete inputs"):
        ModbusInput("RSE2", MemoryBus(), 5, 0, table=Table.HOLDING)
    bus = _bus(5, Table.DISCRETE, 0, [2])
    with pytest.raises(DeviceAnswerError):
        ModbusInput("RSE2", bus, 5, 0).read()


def test_profile_kind_must_match_the_device() -> None:
    with pytest.raises(ValueError, match="is a charger, not a meter"):
        ProfileMeter("M1", load_profile("heidelberg"), MemoryBus(), 1)
    with pytest.raises(ValueError, match="is a meter, not a charger"):
        ProfileCharger("E1", load_profile("sdm630"), MemoryBus(), 1)
    assert isinstance(device_for("M1", load_profile("sdm630"), MemoryBus(), 1), ProfileMeter)
    assert isinstance(device_for("E1", load_profile("alfen"), MemoryBus(), 1), ProfileCharger)
    with pytest.raises(ValueError, match="ModbusInput"):
        device_for("I1", load_profile("modbus_io"), MemoryBus(), 1)


def test_policy_defaults_to_the_profile_request() -> None:
    meter = ProfileMeter("M1", load_profile("sdm630"), MemoryBus(), 1)
    assert meter.policy.gap_s == 0.06
    custom = RequestPolicy(timeout_s=1.0, gap_s=0.2)
    assert ProfileMeter("M1", load_profile("sdm630"), MemoryBus(), 1, custom).policy is custom


def test_short_answer_is_a_device_answer_error() -> None:
    class ShortBus(MemoryBus):
        def read(self, table, address, count, unit, policy):  # type: ignore[no-untyped-def]
            return super().read(table, address, count, unit, policy)[:-1]

    with pytest.raises(DeviceAnswerError, match="asked for 12 words"):
        ProfileMeter("M1", load_profile("sdm630"), ShortBus(), 1).read()
