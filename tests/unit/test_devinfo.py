"""``get_dev_info``: the mapping from a hand-built ``Status`` to the cFos shape and units."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from controller.status import EMPTY_STATUS, ChargerStatus, DeviceStatus, Status
from hal.types import ChargerReading, IecState, InputReading, MeterReading
from web.devinfo import dev_info, milliamps

CHARGER_KEYS = {
    "dev_id", "dev_type", "model", "name", "address", "is_evse", "com_err", "com_err_secs", "last_error",
    "state", "current_l1", "current_l2", "current_l3", "cur_charging_power", "total_energy",
    "charging_enabled", "paused", "last_set_charging_cur", "min_charging_cur", "max_charging_cur", "prio",
    "lreason",
}
METER_KEYS = {
    "dev_id", "dev_type", "model", "name", "address", "is_evse", "com_err", "com_err_secs", "last_error",
    "power_w", "import", "export", "current_l1", "current_l2", "current_l3", "voltage_l1", "voltage_l2",
    "voltage_l3",
}
PARAM_KEYS = {"max_total_current", "cycle_time", "version", "grid_limit_w", "chargers_limit_w", "failsafe",
              "overruns", "cycle_count"}


def device(id: str, kind: str, reading: Any, *, error: str | None = None, error_s: float = 0.0,
           model: str = "sdm630") -> DeviceStatus:
    return DeviceStatus(id=id, kind=kind, model=model, address=f"tcp:10.0.0.1:502 unit 1 ({id})",
                        online=error is None, age_s=0.4 if reading else None, error=error, error_s=error_s,
                        reading=reading)


def charger(id: str = "E1", reading: Any = None, **kw: Any) -> ChargerStatus:
    dev_kw = {k: kw.pop(k) for k in ("error", "error_s") if k in kw}
    defaults: dict[str, Any] = dict(
        phases=3, phase=0, priority=2, min_current_a=6.0, max_current_a=16.0, command_a=10.0,
        written_a=10.0, reason="fuse L1", enabled=True, override_a=None,
    )
    defaults.update(kw)
    reading = reading if reading is not None else ChargerReading(
        state=IecState.C, current_a=(9.8766, 10.0, 10.0004), power_w=6899.6, energy_wh=12345.4)
    return ChargerStatus(device=device(id, "charger", reading, model="heidelberg", **dev_kw), **defaults)


def status(**kw: Any) -> Status:
    base = replace(
        EMPTY_STATUS, cycle_count=42, overruns=1, failed_cycles=0, cycle_time_s=0.0834, wall_time=1767614400.25,
        failsafe=None, grid_limit_w=11000.0, chargers_limit_w=4200.0, headroom_a=(12.5, 7.25, 9.0),
        power_headroom_w=4000.0, limiting=("chargers_limit_w",), grid_power_w=5230.7,
        grid_current_a=(10.0, 8.0, 7.0),
    )
    return replace(base, **kw)


def find(info: dict[str, Any], dev_id: str) -> dict[str, Any]:
    return next(d for d in info["devices"] if d["dev_id"] == dev_id)


def test_params_in_cfos_units() -> None:
    info = dev_info(status(), "1.2.3")
    params = info["params"]
    assert PARAM_KEYS <= set(params)
    assert params["max_total_current"] == 7250  # the lowest phase's headroom, mA
    assert params["cycle_time"] == 83  # ms
    assert params["version"] == "1.2.3"
    assert params["grid_limit_w"] == 11000 and params["chargers_limit_w"] == 4200
    assert params["failsafe"] is None and params["overruns"] == 1 and params["cycle_count"] == 42
    assert params["power_headroom_w"] == 4000 and params["grid_power_w"] == 5231
    assert params["limiting"] == ["chargers_limit_w"] and params["time"] == 1767614400


def test_grid_per_phase_and_the_fuse_are_added_keys() -> None:
    """The keys ``gridcharge status`` needs beside the cFos ones: grid currents per phase and the fuse."""
    params = dev_info(status(), "v", main_fuse_a=25)["params"]
    assert PARAM_KEYS <= set(params)
    assert (params["grid_current_l1"], params["grid_current_l2"], params["grid_current_l3"]) == (10000, 8000, 7000)
    assert params["main_fuse_cur"] == 25000
    params = dev_info(status(grid_current_a=None), "v")["params"]  # no grid meter reading; fuse not given
    assert params["grid_current_l1"] is None and params["grid_current_l3"] is None
    assert params["main_fuse_cur"] is None


def test_before_the_first_cycle() -> None:
    info = dev_info(EMPTY_STATUS, "v")
    assert info == {"params": info["params"], "devices": [], "inputs": []}
    assert info["params"]["failsafe"] == "not started"
    assert info["params"]["max_total_current"] == 0
    assert info["params"]["grid_limit_w"] is None and info["params"]["cycle_count"] == 0


def test_charging_charger() -> None:
    info = dev_info(status(chargers=(charger(),)), "v")
    e1 = find(info, "E1")
    assert CHARGER_KEYS <= set(e1)
    assert e1["is_evse"] is True and e1["dev_type"] == "evse_heidelberg" and e1["name"] == "E1"
    assert e1["state"] == 3  # IEC C = charging
    assert (e1["current_l1"], e1["current_l2"], e1["current_l3"]) == (9877, 10000, 10000)
    assert e1["cur_charging_power"] == 6900 and e1["total_energy"] == 12345
    assert e1["com_err"] is False and e1["com_err_secs"] == 0 and e1["last_error"] == ""
    assert e1["charging_enabled"] is True and e1["paused"] is False
    assert e1["last_set_charging_cur"] == 10000
    assert e1["min_charging_cur"] == 6000 and e1["max_charging_cur"] == 16000
    assert e1["prio"] == 2 and e1["lreason"] == "fuse L1"
    assert e1["used_phases"] == 7 and e1["override_cur"] is None and e1["assigned_cur"] == 10000


@pytest.mark.parametrize(("iec", "code"), [(IecState.A, 1), (IecState.B, 2), (IecState.C, 3), (IecState.D, 4),
                                           (IecState.E, 5), (IecState.F, 5)])
def test_state_codes(iec: IecState, code: int) -> None:
    info = dev_info(status(chargers=(charger(reading=ChargerReading(state=iec)),)), "v")
    assert find(info, "E1")["state"] == code
    assert find(info, "E1")["iec_state"] == iec.value  # added key: tells E from F, which share 5


def test_state_in_words_with_the_vendor_code() -> None:
    reading = ChargerReading(state=IecState.C, raw_state=7)
    e1 = find(dev_info(status(chargers=(charger(reading=reading),)), "v"), "E1")
    assert e1["state_text"] == "C (charging)" == IecState.C.label and e1["state_raw"] == 7
    offline = find(dev_info(status(chargers=(charger(error="no answer"),)), "v"), "E1")
    assert offline["state_text"] == "offline" and offline["state_raw"] is None


def test_offline_charger_shows_state_6_and_no_stale_values() -> None:
    ch = charger(error="no answer in time", error_s=12.7, written_a=None, command_a=0.0,
                 reason="offline: fail-safe current reserved")
    e1 = find(dev_info(status(chargers=(ch,)), "v"), "E1")
    assert e1["state"] == 6 and e1["iec_state"] is None
    assert e1["com_err"] is True and e1["com_err_secs"] == 12 and e1["last_error"] == "no answer in time"
    assert e1["current_l1"] is None and e1["cur_charging_power"] is None and e1["total_energy"] is None
    assert e1["last_set_charging_cur"] == -1  # never written (cFos convention)
    assert e1["paused"] is True


def test_override_and_disabled_charger() -> None:
    ch = charger(enabled=False, override_a=10.0, command_a=0.0, reason="disabled by override (flags=C)")
    e1 = find(dev_info(status(chargers=(ch,)), "v"), "E1")
    assert e1["charging_enabled"] is False and e1["paused"] is True
    assert e1["override_cur"] == 10000 and e1["lreason"] == "disabled by override (flags=C)"


@pytest.mark.parametrize(("phase", "mask"), [(0, 1), (1, 2), (2, 4)])
def test_single_phase_charger_phase_mask(phase: int, mask: int) -> None:
    e1 = find(dev_info(status(chargers=(charger(phases=1, phase=phase),)), "v"), "E1")
    assert e1["used_phases"] == mask


def test_charger_without_power_or_energy_registers() -> None:
    reading = ChargerReading(state=IecState.B, current_a=(0.0, 0.0, 0.0))
    e1 = find(dev_info(status(chargers=(charger(reading=reading),)), "v"), "E1")
    assert e1["cur_charging_power"] is None and e1["total_energy"] is None and e1["current_l1"] == 0


def test_meter() -> None:
    reading = MeterReading(power_w=-1234.56, current_a=(5.0, 0.0015, 2.2), voltage_v=(231.24, 229.96, 230.0),
                           import_wh=98765.4, export_wh=1.6)
    info = dev_info(status(meters=(device("M1", "meter", reading),)), "v")
    m1 = find(info, "M1")
    assert METER_KEYS <= set(m1)
    assert m1["is_evse"] is False and m1["dev_type"] == "meter_sdm630"
    assert m1["power_w"] == -1235 and m1["import"] == 98765 and m1["export"] == 2
    assert (m1["current_l1"], m1["current_l2"], m1["current_l3"]) == (5000, 2, 2200)
    assert (m1["voltage_l1"], m1["voltage_l2"], m1["voltage_l3"]) == (231.2, 230.0, 230.0)


def test_meter_with_power_only_and_offline_meter() -> None:
    power_only = device("M2", "meter", MeterReading(power_w=100.0))
    offline = device("M3", "meter", MeterReading(power_w=5.0, current_a=(1.0, 1.0, 1.0)),
                     error="stale: 7.0 s old", error_s=7.0)
    info = dev_info(status(meters=(power_only, offline)), "v")
    m2, m3 = find(info, "M2"), find(info, "M3")
    assert m2["power_w"] == 100 and m2["current_l1"] is None and m2["voltage_l3"] is None and m2["import"] is None
    assert m3["com_err"] is True and m3["com_err_secs"] == 7 and m3["power_w"] is None and m3["current_l2"] is None


def test_inputs() -> None:
    inputs = (
        device("RSE1", "input", InputReading(active=True), model="modbus_io"),
        device("RSE2", "input", InputReading(active=False), model="gpio"),
        device("RSE3", "input", None, error="I/O module silent", error_s=3.0, model="modbus_io"),
    )
    info = dev_info(status(inputs=inputs), "v")
    assert [(i["id"], i["active"], i["com_err"]) for i in info["inputs"]] == [
        ("RSE1", True, False), ("RSE2", False, False), ("RSE3", None, True)]
    assert info["inputs"][2]["last_error"] == "I/O module silent"


def test_chargers_come_before_meters_in_config_order() -> None:
    st = status(chargers=(charger("E2"), charger("E1")), meters=(device("M1", "meter", MeterReading(power_w=1.0)),))
    assert [d["dev_id"] for d in dev_info(st, "v")["devices"]] == ["E2", "E1", "M1"]


def test_non_finite_values_become_null_and_the_body_is_strict_json() -> None:
    reading = MeterReading(power_w=math.nan, current_a=(math.inf, 1.0, 1.0), voltage_v=None)
    st = status(meters=(device("M1", "meter", reading),), grid_power_w=math.nan, headroom_a=(math.inf, 5.0, 6.0))
    info = dev_info(st, "v")
    m1 = find(info, "M1")
    assert m1["power_w"] is None and m1["current_l1"] is None and m1["current_l2"] == 1000
    assert info["params"]["grid_power_w"] is None and info["params"]["max_total_current"] == 5000
    json.dumps(info, allow_nan=False)


def test_whole_status_is_strict_json() -> None:
    st = status(chargers=(charger(), charger("E2", error="x", error_s=1.0)),
                meters=(device("M1", "meter", MeterReading(power_w=1.0)),),
                inputs=(device("RSE1", "input", InputReading(active=True)),))
    json.dumps(dev_info(st, "v"), allow_nan=False)


@pytest.mark.parametrize(("amps", "ma"), [(0.0, 0), (6.0, 6000), (0.0004, 0), (0.0005, 0), (15.9996, 16000),
                                          (None, None), (math.nan, None), (-1.5, -1500)])
def test_milliamps(amps: float | None, ma: int | None) -> None:
    assert milliamps(amps) == ma


def test_session_energy_of_the_open_session() -> None:
    from controller.records.sessions import Session

    def session(**kw: Any) -> Session:
        fields: dict[str, Any] = dict(id=1, charger_id="E1", start_ts=1.0, end_ts=None, start_wh=12000.0,
                                      end_wh=None, energy_wh=None, energy_source="register")
        fields.update(kw)
        return Session(**fields)

    def shown(open_session: Session | None) -> Any:
        info = dev_info(status(chargers=(charger("E1"),)), "1.0",
                        sessions={"E1": open_session} if open_session is not None else None)
        return find(info, "E1")["session_energy"]

    assert shown(None) is None  # no session open
    assert shown(session(energy_wh=1234.6)) == 1235  # a derived session: its energy so far
    assert shown(session()) == 345  # a box's own session: its register now (12345.4) minus at the start
    assert shown(session(start_wh=None)) is None  # not known until the box's stop
    assert shown(session(start_wh=20000.0)) is None  # a register that went back is no energy
    assert shown(session(end_ts=2.0, energy_wh=50.0)) is None  # ended: not the open one
