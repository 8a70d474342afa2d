"""Golden tests: every model decodes a register dump written by hand from devices.md.

The dumps are raw words as the device would answer (floats worked out from their IEEE-754
layout, integers from the vendor scaling), never generated from the profile under test. They
are served by an in-memory bus, so the tests also pin the exact requests: one read per block,
and FC06 versus FC16 for every write.
"""

from __future__ import annotations

import pytest

from hal.modbus.devices import ModbusInput, ProfileCharger, ProfileMeter, device_for
from hal.modbus.profile import load_profile, parse_profile
from hal.types import Charger, CommError, DeviceAnswerError, IecState, Input, Meter
from hal.modbus.types import RequestPolicy, Table
from memory_bus import MemoryBus, Read, Write

IN, HOLD = Table.INPUT, Table.HOLDING
NAN32 = [0xFFFF, 0xFFFF]  # what Alfen serves for reserved registers (and a float32 NaN)

# -- float32 words used below (big-endian, most significant register first) ------------------
F_230_0 = [0x4366, 0x0000]
F_231_5 = [0x4367, 0x8000]
F_229_0 = [0x4365, 0x0000]
F_10_5 = [0x4128, 0x0000]
F_4_25 = [0x4088, 0x0000]
F_999_0 = [0x4479, 0xC000]
F_MINUS_1500 = [0xC4BB, 0x8000]
F_1234_5 = [0x449A, 0x5000]
F_12_25 = [0x4144, 0x0000]
F_5_0 = [0x40A0, 0x0000]
F_1150_0 = [0x448F, 0xC000]
F_100_0 = [0x42C8, 0x0000]
F_16_0 = [0x4180, 0x0000]
F_15_5 = [0x4178, 0x0000]
F_16_25 = [0x4182, 0x0000]
F_11000_0 = [0x462B, 0xE000]
F_6_5 = [0x40D0, 0x0000]


def _bus(unit: int, *dumps: tuple[Table, int, list[int]], strict: bool = True) -> MemoryBus:
    bus = MemoryBus(strict=strict)
    for table, address, words in dumps:
        bus.set(table, unit, address, words)
    return bus


def _zeros(count: int) -> list[int]:
    return [0] * count


# ==============================================================================================
# Meters
# ==============================================================================================


def _sdm630_dump(power: list[int] = F_999_0) -> MemoryBus:
    # Input registers 0x00-0x0B (V, I), 0x34 (total power), 0x36-0x47 (other values), 0x48/0x4A.
    return _bus(
        1,
        (IN, 0x00, F_230_0 + F_231_5 + F_229_0 + F_10_5 + _zeros(2) + F_4_25),
        (IN, 0x34, power),
        (IN, 0x36, _zeros(0x48 - 0x36)),
        (IN, 0x48, F_1234_5 + F_12_25),
    )


def test_sdm630_reading() -> None:
    bus = _sdm630_dump()
    meter = ProfileMeter("M1", load_profile("sdm630"), bus, unit=1)
    reading = meter.read()
    assert reading.power_w == 999.0
    assert reading.current_a == (10.5, 0.0, 4.25)
    assert reading.voltage_v == (230.0, 231.5, 229.0)
    assert reading.import_wh == 1_234_500.0  # 1234.5 kWh
    assert reading.export_wh == 12_250.0
    assert bus.reads == [Read(IN, 0x00, 12, 1), Read(IN, 0x34, 24, 1)]  # one read per block
    assert isinstance(meter, Meter)


def test_sdm630_export_is_negative_power() -> None:
    assert ProfileMeter("M1", load_profile("sdm630"), _sdm630_dump(F_MINUS_1500), 1).read().power_w == -1500.0


def test_sdm630_nan_power_is_a_device_answer_error() -> None:
    with pytest.raises(DeviceAnswerError, match="power_w"):
        ProfileMeter("M1", load_profile("sdm630"), _sdm630_dump(NAN32), 1).read()


def test_sdm630_garbage_outside_the_plausible_range() -> None:
    huge = [0x7F00, 0x0000]  # 1.7e38 W: no meter can show it
    with pytest.raises(DeviceAnswerError, match="power_w.*plausible"):
        ProfileMeter("M1", load_profile("sdm630"), _sdm630_dump(huge), 1).read()


def test_sdm630_optional_voltage_may_fail_alone() -> None:
    bus = _sdm630_dump()
    bus.set(IN, 1, 0x02, NAN32)  # L2 voltage NaN
    meter = ProfileMeter("M1", load_profile("sdm630"), bus, 1)
    reading = meter.read()
    assert reading.voltage_v is None and reading.current_a == (10.5, 0.0, 4.25)
    assert meter.read_values()["voltage_l2_v"] is None
    assert meter.read_values()["voltage_l1_v"] == 230.0


def test_sdm72_reads_at_most_ten_registers_per_request() -> None:
    bus = _bus(
        3,
        (IN, 0x00, F_230_0 + F_230_0 + F_230_0 + F_5_0 + F_5_0 + F_5_0),
        (IN, 0x34, F_MINUS_1500),
        (IN, 0x48, F_100_0 + F_12_25),
    )
    reading = ProfileMeter("M2", load_profile("sdm72"), bus, unit=3).read()
    assert reading == reading.__class__(
        power_w=-1500.0,
        current_a=(5.0, 5.0, 5.0),
        voltage_v=(230.0, 230.0, 230.0),
        import_wh=100_000.0,
        export_wh=12_250.0,
    )
    assert [(r.address, r.count) for r in bus.reads] == [(0x00, 10), (0x0A, 2), (0x34, 2), (0x48, 4)]


def test_sdm120_single_phase() -> None:
    bus = _bus(
        1,
        # 0x00 V, 0x06 I, 0x0C P; the words between are other quantities (apparent power etc.).
        (IN, 0x00, F_230_0 + _zeros(4) + F_5_0 + _zeros(4) + F_1150_0),
        (IN, 0x48, F_100_0 + _zeros(2)),
    )
    reading = ProfileMeter("M3", load_profile("sdm120"), bus, 1).read()
    assert reading.power_w == 1150.0
    assert reading.current_a == (5.0, 0.0, 0.0)
    assert reading.voltage_v == (230.0, 0.0, 0.0)
    assert reading.import_wh == 100_000.0 and reading.export_wh == 0.0
    assert [(r.address, r.count) for r in bus.reads] == [(0x00, 14), (0x48, 4)]


def _b23_dump(current_l2: list[int] | None = None, power: list[int] | None = None) -> MemoryBus:
    return _bus(
        1,
        # 0x5000 import uint64 123456 (x0.01 kWh), 0x5004 export 0.
        (HOLD, 0x5000, [0x0000, 0x0000, 0x0001, 0xE240] + _zeros(4)),
        # 0x5B00.. voltages 2301/2290/0xFFFFFFFF (L3 not available) x0.1 V,
        (HOLD, 0x5B00, [0x0000, 0x08FD, 0x0000, 0x08F2, 0xFFFF, 0xFFFF]),
        (HOLD, 0x5B06, _zeros(6)),  # line-to-line voltages
        # currents 1234 / 0 / 567 x0.01 A; total power int32 -123456 x0.01 W.
        (HOLD, 0x5B0C, [0x0000, 0x04D2] + (current_l2 or [0x0000, 0x0000]) + [0x0000, 0x0237]),
        (HOLD, 0x5B12, _zeros(2)),  # current N
        (HOLD, 0x5B14, power or [0xFFFE, 0x1DC0]),
    )


def test_abb_b23_reading() -> None:
    bus = _b23_dump()
    reading = ProfileMeter("M4", load_profile("abb_b23"), bus, 1).read()
    assert reading.power_w == pytest.approx(-1234.56)
    assert reading.current_a == pytest.approx((12.34, 0.0, 5.67))
    assert reading.voltage_v is None  # L3 sent the "not available" sentinel; voltages are optional
    assert reading.import_wh == 1_234_560.0  # 1234.56 kWh
    assert reading.export_wh == 0.0
    assert bus.reads == [Read(HOLD, 0x5000, 8, 1), Read(HOLD, 0x5B00, 22, 1)]


@pytest.mark.parametrize(
    ("dump", "name"),
    [
        (_b23_dump(current_l2=[0xFFFF, 0xFFFF]), "current_l2_a"),  # unsigned: all 0xFF
        (_b23_dump(power=[0x7FFF, 0xFFFF]), "power_w"),  # signed: 0x7FFF…
    ],
)
def test_abb_b23_sentinels(dump: MemoryBus, name: str) -> None:
    with pytest.raises(DeviceAnswerError, match=f"M4: {name}: not available"):
        ProfileMeter("M4", load_profile("abb_b23"), dump, 1).read()


# ==============================================================================================
# Chargers
# ==============================================================================================


def _heidelberg_dump(state: int = 7) -> MemoryBus:
    return _bus(
        2,
        # input 4 layout 0x0108, 5 state, 6-8 currents 0.1 A, 9 PCB temperature 25.0 °C,
        # 10-12 voltages, 13 lock, 14 power, 15-16 energy since power-on, 17-18 since installation.
        (IN, 4, [0x0108, state, 160, 158, 161, 250, 230, 231, 229, 1, 11040, 0x0000, 0x01F4, 0x0001, 0x86A0]),
        (HOLD, 261, [160]),
    )


def test_heidelberg_reading() -> None:
    bus = _heidelberg_dump()
    box = ProfileCharger("E1", load_profile("heidelberg"), bus, unit=2)
    reading = box.read()
    assert reading.state is IecState.C
    assert reading.current_a == pytest.approx((16.0, 15.8, 16.1))
    assert reading.power_w == 11040.0
    assert reading.energy_wh == 100_000.0
    assert reading.limit_a is None  # holding 261 is not polled: one block read per cycle
    assert bus.reads == [Read(IN, 5, 14, 2)]
    assert isinstance(box, Charger) and box.keepalive_s is None


@pytest.mark.parametrize(
    ("raw", "state"),
    [(2, IecState.A), (3, IecState.A), (4, IecState.B), (5, IecState.B), (6, IecState.C),
     (8, IecState.C), (9, IecState.E), (10, IecState.F), (11, IecState.F)],
)  # fmt: skip
def test_heidelberg_state_codes(raw: int, state: IecState) -> None:
    assert ProfileCharger("E1", load_profile("heidelberg"), _heidelberg_dump(raw), 2).read().state is state


def test_heidelberg_unknown_state_code() -> None:
    with pytest.raises(DeviceAnswerError, match="E1: state: unknown state code 12"):
        ProfileCharger("E1", load_profile("heidelberg"), _heidelberg_dump(12), 2).read()


def test_heidelberg_comm_error_propagates() -> None:
    bus = _heidelberg_dump()
    bus.errors[(IN, 5)] = CommError("timeout")
    with pytest.raises(CommError):
        ProfileCharger("E1", load_profile("heidelberg"), bus, 2).read()


@pytest.mark.parametrize(("current_a", "raw"), [(16.0, 160), (6.0, 60), (6.75, 67), (13.99, 139), (0.0, 0)])
def test_heidelberg_apply_writes_tenths_with_fc06(current_a: float, raw: int) -> None:
    bus = _heidelberg_dump()
    ProfileCharger("E1", load_profile("heidelberg"), bus, 2).apply(current_a)
    assert bus.writes == [Write(261, (raw,), 2, single=True)]


def test_heidelberg_setup_writes_watchdog_failsafe_and_standby() -> None:
    bus = _heidelberg_dump()
    ProfileCharger("E1", load_profile("heidelberg"), bus, 2).setup(watchdog_s=15, failsafe_current_a=6)
    assert bus.writes == [
        Write(257, (15000,), 2, True),  # watchdog ms
        Write(262, (60,), 2, True),  # fail-safe 6.0 A in 0.1 A
        Write(258, (4,), 2, True),  # standby disabled
    ]


def test_heidelberg_watchdog_too_long_for_its_register() -> None:
    with pytest.raises(ValueError, match="E1: setup register 257"):
        ProfileCharger("E1", load_profile("heidelberg"), _heidelberg_dump(), 2).setup(70, 6)


def test_apply_refuses_negative_and_nan() -> None:
    box = ProfileCharger("E1", load_profile("heidelberg"), _heidelberg_dump(), 2)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            box.apply(bad)


def _alfen_dump(state: str = "C2", current_l1: list[int] = F_16_0) -> MemoryBus:
    text = state.encode("ascii").ljust(10, b"\x00")
    state_words = [int.from_bytes(text[i : i + 2], "big") for i in range(0, 10, 2)]
    return _bus(
        1,
        # 320/322/324 currents, 326-343 other values (reserved read as NaN), 344 power sum,
        # 346-373 apparent/reactive/energies per phase, 374 energy sum FLOAT64 123456.5 Wh.
        (HOLD, 320, current_l1 + F_15_5 + F_16_25),
        (HOLD, 326, [0xFFFF] * (344 - 326)),
        (HOLD, 344, F_11000_0),
        (HOLD, 346, [0xFFFF] * (374 - 346)),
        (HOLD, 374, [0x40FE, 0x2408, 0x0000, 0x0000]),
        (HOLD, 1201, state_words + F_16_0),  # 1201-1205 mode-3 state, 1206 applied max current
    )


def test_alfen_reading() -> None:
    bus = _alfen_dump()
    box = ProfileCharger("E2", load_profile("alfen"), bus, unit=1)
    reading = box.read()
    assert reading.state is IecState.C
    assert reading.current_a == (16.0, 15.5, 16.25)
    assert reading.power_w == 11000.0
    assert reading.energy_wh == 123456.5
    assert reading.limit_a == 16.0
    assert bus.reads == [Read(HOLD, 320, 58, 1), Read(HOLD, 1201, 7, 1)]
    assert box.keepalive_s == 25


@pytest.mark.parametrize(
    ("text", "state"),
    [("A", IecState.A), ("B1", IecState.B), ("B2", IecState.B), ("C1", IecState.C),
     ("D2", IecState.D), ("E", IecState.E), ("F", IecState.F)],
)  # fmt: skip
def test_alfen_string_states(text: str, state: IecState) -> None:
    assert ProfileCharger("E2", load_profile("alfen"), _alfen_dump(text), 1).read().state is state


def test_alfen_unknown_string_state() -> None:
    with pytest.raises(DeviceAnswerError, match="unknown state code 'X9'"):
        ProfileCharger("E2", load_profile("alfen"), _alfen_dump("X9"), 1).read()


def test_alfen_nan_current_fails_the_reading() -> None:
    with pytest.raises(DeviceAnswerError, match="E2: current_l1_a"):
        ProfileCharger("E2", load_profile("alfen"), _alfen_dump(current_l1=NAN32), 1).read()


@pytest.mark.parametrize(("current_a", "words"), [(16.0, F_16_0), (6.5, F_6_5), (0.0, [0, 0])])
def test_alfen_apply_writes_float32_with_fc16(current_a: float, words: list[int]) -> None:
    bus = _alfen_dump()
    ProfileCharger("E2", load_profile("alfen"), bus, 1).apply(current_a)
    assert bus.writes == [Write(1210, tuple(words), 1, single=False)]


def test_alfen_has_no_setup_writes() -> None:
    bus = _alfen_dump()
    ProfileCharger("E2", load_profile("alfen"), bus, 1).setup(15, 6)
    assert bus.writes == []


def _terra_dump(state: list[int], socket_lock: tuple[int, int] = (0x0000, 0x0101)) -> MemoryBus:
    return _bus(
        1,
        (HOLD, 0x400A, list(socket_lock)),
        (HOLD, 0x400C, state),
        (HOLD, 0x400E, [0x0000, 0x3E80]),  # applied limit 16000 mA
        (HOLD, 0x4010, [0x0000, 0x3E1C, 0x0000, 0x3E1C, 0x0000, 0x0000]),  # 15900 / 15900 / 0 mA
        (HOLD, 0x4016, [0x0000, 0x08FC] * 3),  # voltages 230.0 V (0.1 V)
        (HOLD, 0x401C, [0x0000, 0x1CC0]),  # 7360 W
        (HOLD, 0x401E, [0x0001, 0x0000]),  # 65536 Wh this session
    )


def test_abb_terra_reading_masks_the_state_byte() -> None:
    # byte[2] = 0x84: bit 7 is not part of the state; & 0x7F gives 4 = C2 charging.
    bus = _terra_dump([0x1234, 0x8456])
    reading = ProfileCharger("E3", load_profile("abb_terra_ac"), bus, 1).read()
    assert reading.state is IecState.C
    assert reading.current_a == pytest.approx((15.9, 15.9, 0.0))
    assert reading.power_w == 7360.0
    assert reading.energy_wh == 65536.0
    assert reading.limit_a == pytest.approx(16.0)
    assert bus.reads == [Read(HOLD, 0x400A, 22, 1)]


@pytest.mark.parametrize(
    ("state", "socket_lock", "expected"),
    [
        ([0x0000, 0x0000], [0, 0x0101], IecState.A),
        ([0x0000, 0x0100], [0, 0x0101], IecState.B),  # B1 pending authorisation
        ([0x0000, 0x0300], [0, 0x0101], IecState.C),  # C1
        ([0x0000, 0x0500], [0, 0x0101], IecState.B),  # session stopped, cable connected
        ([0x0000, 0x0500], [0, 0x0000], IecState.A),  # session stopped, nothing plugged
    ],
)
def test_abb_terra_state_codes(state: list[int], socket_lock: list[int], expected: IecState) -> None:
    assert ProfileCharger("E3", load_profile("abb_terra_ac"), _terra_dump(state, socket_lock), 1).read().state is expected


@pytest.mark.parametrize(
    ("current_a", "words"),
    [(16.0, (0x0000, 0x3E80)), (6.0, (0x0000, 0x1770)), (10.0005, (0x0000, 0x2710)), (0.0, (0, 0))],
)
def test_abb_terra_apply_writes_milliamps_with_fc16(current_a: float, words: tuple[int, int]) -> None:
    bus = _terra_dump([0, 0x0400])
    ProfileCharger("E3", load_profile("abb_terra_ac"), bus, 1).apply(current_a)
    assert bus.writes == [Write(0x4100, words, 1, single=False)]


def _cfos_dump(state: int = 0x0302) -> MemoryBus:
    return _bus(
        1,
        # 8058 energy uint64 1234567 Wh, 8062 power uint32 7360 W, 8064-8068 currents 0.1 A.
        (HOLD, 8058, [0x0000, 0x0000, 0x0012, 0xD687, 0x0000, 0x1CC0, 0, 320, 0, 320, 0, 0]),
        (HOLD, 8083, [300]),  # fail_safe_duration (factory default 300 s)
        (HOLD, 8085, [0]),  # fail_safe_current
        (HOLD, 8092, [state, 160, 1]),  # state (low byte), charging_cur_limit, charging_enable
    )


def test_cfos_reading() -> None:
    bus = _cfos_dump()
    reading = ProfileCharger("E4", load_profile("cfos_powerbrain"), bus, 1).read()
    assert reading.state is IecState.C  # low byte 2; the high byte 0x03 is ignored
    assert reading.current_a == pytest.approx((32.0, 32.0, 0.0))
    assert reading.power_w == 7360.0
    assert reading.energy_wh == 1_234_567.0
    assert reading.limit_a is None
    assert bus.reads == [Read(HOLD, 8058, 12, 1), Read(HOLD, 8092, 1, 1)]


@pytest.mark.parametrize(("raw", "state"), [(0, IecState.A), (1, IecState.B), (2, IecState.C), (5, IecState.F)])
def test_cfos_state_codes(raw: int, state: IecState) -> None:
    assert ProfileCharger("E4", load_profile("cfos_powerbrain"), _cfos_dump(raw), 1).read().state is state


def test_cfos_pause_and_resume_use_charging_enable() -> None:
    bus = _cfos_dump()
    box = ProfileCharger("E4", load_profile("cfos_powerbrain"), bus, 1)
    box.apply(0)
    assert bus.writes == [Write(8094, (0,), 1, True)]  # the limit register is left alone
    bus.writes.clear()
    box.apply(16.0)
    assert bus.writes == [Write(8093, (160,), 1, True), Write(8094, (1,), 1, True)]  # limit first


def test_cfos_setup_writes_flash_registers_only_when_different() -> None:
    bus = _cfos_dump()
    box = ProfileCharger("E4", load_profile("cfos_powerbrain"), bus, 1)
    box.setup(watchdog_s=300, failsafe_current_a=6)
    assert bus.writes == [Write(8085, (60,), 1, True)]  # 8083 already holds 300 s
    assert Read(HOLD, 8083, 1, 1) in bus.reads
    bus.writes.clear()
    box.setup(watchdog_s=300, failsafe_current_a=6)
    assert bus.writes == []  # a restart does not wear the flash


def test_cfos_setup_writes_when_the_read_back_is_refused() -> None:
    bus = _cfos_dump()
    bus.errors[(HOLD, 8083)] = DeviceAnswerError("exception 2")
    ProfileCharger("E4", load_profile("cfos_powerbrain"), bus, 1).setup(120, 0)
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
    reading = ProfileCharger("X", no_power, _heidelberg_dump(), 2).read()
    assert reading.current_a == pytest.approx((16.0, 0.0, 0.0))
    assert reading.power_w == pytest.approx(16.0 * 230)
    assert reading.energy_wh is None and reading.limit_a is None


# ==============================================================================================
# Inputs and construction
# ==============================================================================================


@pytest.mark.parametrize(
    ("bit", "active_low", "active"), [(1, False, True), (0, False, False), (1, True, False), (0, True, True)]
)
def test_modbus_input_polarity(bit: int, active_low: bool, active: bool) -> None:
    bus = _bus(5, (Table.DISCRETE, 3, [bit]))
    contact = ModbusInput("RSE2", bus, 5, 3, active_low=active_low)
    assert contact.read().active is active
    assert bus.reads == [Read(Table.DISCRETE, 3, 1, 5)]
    assert isinstance(contact, Input)


def test_modbus_input_on_a_coil() -> None:
    bus = _bus(5, (Table.COIL, 0, [1]))
    contact = ModbusInput("RSE2", bus, 5, 0, table="coil", policy=RequestPolicy(timeout_s=0.2))
    assert contact.read().active
    assert contact.read_values() == {"coil_0": 1, "active": 1}


def test_modbus_input_refuses_register_tables_and_bad_answers() -> None:
    with pytest.raises(ValueError, match="coils or discrete inputs"):
        ModbusInput("RSE2", MemoryBus(), 5, 0, table=Table.HOLDING)
    bus = _bus(5, (Table.DISCRETE, 0, [2]))
    with pytest.raises(DeviceAnswerError):
        ModbusInput("RSE2", bus, 5, 0).read()


def test_modbus_input_profile_gives_the_defaults() -> None:
    prof = load_profile("modbus_io")
    assert prof.inputs is not None
    contact = ModbusInput("RSE2", _bus(1, (prof.inputs.table, 0, [1])), 1, 0, table=prof.inputs.table,
                          active_low=prof.inputs.active_low, policy=prof.request)  # fmt: skip
    assert contact.read().active


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
