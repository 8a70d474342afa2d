"""The OCPP message mapping: statuses to IEC states, MeterValues to readings, limits to profiles."""

from __future__ import annotations

import pytest

from hal.ocpp.mapping import (
    MappingError,
    charging_profile,
    iec_state,
    parse_meter_values,
    parse_timestamp,
    profile_limit,
)
from hal.types import IecState


@pytest.mark.parametrize("status, state", [
    ("Available", IecState.A), ("Preparing", IecState.B), ("SuspendedEV", IecState.B),
    ("SuspendedEVSE", IecState.B), ("Finishing", IecState.B), ("Charging", IecState.C),
    ("Faulted", IecState.F), ("Unavailable", IecState.E), ("Reserved", IecState.A), ("Bogus", IecState.F),
])
def test_status_to_iec_state(status: str, state: IecState) -> None:
    assert iec_state(status) is state


def sv(value: str, measurand: str | None = None, phase: str | None = None, unit: str | None = None) -> dict:
    out = {"value": value}
    for key, v in (("measurand", measurand), ("phase", phase), ("unit", unit)):
        if v is not None:
            out[key] = v
    return out


def test_three_phase_meter_values() -> None:
    sample = parse_meter_values([{"timestamp": "2026-01-02T03:04:05Z", "sampled_value": [
        sv("7.9", "Current.Import", "L1", "A"), sv("8.0", "Current.Import", "L2", "A"),
        sv("8.1", "Current.Import", "L3-N", "A"), sv("5.5", "Power.Active.Import", unit="kW"),
        sv("12.5", unit="kWh"),  # no measurand: the energy register
    ]}], phases=3, phase_index=0)
    assert sample.current_a == (7.9, 8.0, 8.1)
    assert sample.power_w == pytest.approx(5500.0) and sample.energy_wh == pytest.approx(12500.0)
    assert sample.measured_s == parse_timestamp("2026-01-02T03:04:05+00:00")


def test_a_current_without_phase_goes_on_a_one_phase_box_phase_only() -> None:
    values = [{"timestamp": "x", "sampled_value": [sv("10", "Current.Import"), sv("2300", "Power.Active.Import", unit="W")]}]
    one = parse_meter_values(values, phases=1, phase_index=1)
    assert one.current_a == (0.0, 10.0, 0.0) and one.power_w == 2300.0 and one.measured_s is None
    assert parse_meter_values(values, phases=3, phase_index=0).current_a is None


def test_bad_values_are_errors() -> None:
    with pytest.raises(MappingError):
        parse_meter_values([{"sampled_value": [sv("abc", "Current.Import", "L1")]}], phases=3, phase_index=0)
    with pytest.raises(MappingError):
        parse_meter_values([{"sampled_value": [sv("5", "Power.Active.Import", unit="varh")]}], phases=3, phase_index=0)
    with pytest.raises(MappingError):
        parse_meter_values([{"sampled_value": [sv("nan", unit="Wh")]}], phases=3, phase_index=0)


def test_timestamps() -> None:
    assert parse_timestamp("2026-01-02T03:04:05.5Z") == pytest.approx(1767323045.5)
    assert parse_timestamp("2026-01-02T04:04:05+01:00") == pytest.approx(1767323045.0)
    assert parse_timestamp("yesterday") is None and parse_timestamp(None) is None


def test_profile_round_trip() -> None:
    profile = charging_profile(10.04, phases=3)
    assert profile["chargingProfilePurpose"] == "TxDefaultProfile" and profile["stackLevel"] == 1
    assert profile["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10.0, "numberPhases": 3}]
    assert profile_limit(profile) == (10.0, 3)
    with pytest.raises(MappingError):
        profile_limit({"chargingSchedule": {"chargingRateUnit": "W", "chargingSchedulePeriod": [{"limit": 1}]}})
