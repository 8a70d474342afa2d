"""OCPP 1.6 messages as gridcharge values: pure functions, no I/O.

A StatusNotification's status becomes an IEC 61851 state; a MeterValues message becomes the
per-phase currents, the power and the energy register of one instant; a limit becomes the
``TxDefaultProfile`` that SetChargingProfile carries. Payloads arrive as the ``ocpp`` package
hands them to handlers: snake_case keys (``sampled_value``), values as strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hal.types import IecState, Phases3

#: OCPP 1.6 ChargePointStatus → IEC 61851 state. Preparing, SuspendedEV(SE) and Finishing have
#: a car in the plug that is not drawing; Reserved has none; Faulted and Unavailable give no
#: power (E/F: the status view says "error").
STATUS_STATES: Mapping[str, IecState] = {
    "Available": IecState.A,
    "Reserved": IecState.A,
    "Preparing": IecState.B,
    "SuspendedEV": IecState.B,
    "SuspendedEVSE": IecState.B,
    "Finishing": IecState.B,
    "Charging": IecState.C,
    "Faulted": IecState.F,
    "Unavailable": IecState.E,
}

#: What gridcharge asks a box to sample (ChangeConfiguration ``MeterValuesSampledData``).
SAMPLED_DATA = "Current.Import,Power.Active.Import,Energy.Active.Import.Register"
_PHASES = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}
_ENERGY = "Energy.Active.Import.Register"  # OCPP 1.6: the measurand when none is given


class MappingError(ValueError):
    """A message that cannot be read as OCPP 1.6 says it should be."""


def iec_state(status: str) -> IecState:
    """The IEC state of an OCPP ChargePointStatus; an unknown status is an error (F)."""
    return STATUS_STATES.get(status, IecState.F)


@dataclass(frozen=True)
class MeterSample:
    """What one MeterValues message said; None where it said nothing about a quantity."""

    current_a: Phases3 | None
    power_w: float | None
    energy_wh: float | None
    measured_s: float | None  # unix seconds, the box's timestamp of the sample


def parse_timestamp(text: Any) -> float | None:
    """An OCPP dateTime (ISO 8601, ``Z`` or an offset) as unix seconds; None when unreadable.
    A timestamp without a zone is taken as UTC, as OCPP requires UTC."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MappingError(f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise MappingError(f"not a finite number: {value!r}")
    return number


def _scaled(value: float, unit: str | None, base: str) -> float:
    """W/kW and Wh/kWh to the base unit; a missing unit is the base unit (OCPP's default)."""
    if unit in (None, base):
        return value
    if unit == f"k{base}":
        return value * 1000.0
    raise MappingError(f"unit {unit!r} where {base} or k{base} was expected")


def parse_meter_values(meter_value: Iterable[Mapping[str, Any]], *, phases: int,
                       phase_index: int) -> MeterSample:
    """The latest values of a MeterValues message (its ``meter_value`` list).

    ``Current.Import`` with a phase goes on that phase; without one it goes on the box's own
    phase when the box is wired to one phase, and is ignored on a 3-phase box (it could be a sum
    or an average: the box does not say). Later entries override earlier ones.
    Raises MappingError for a value that is not a number or has a unit of the wrong kind.
    """
    currents: list[float | None] = [None, None, None]
    power_w: float | None = None
    energy_wh: float | None = None
    measured_s: float | None = None
    for entry in meter_value:
        when = parse_timestamp(entry.get("timestamp"))
        if when is not None:
            measured_s = when if measured_s is None else max(measured_s, when)
        for sample in entry.get("sampled_value") or ():
            measurand = sample.get("measurand") or _ENERGY
            phase = sample.get("phase")
            unit = sample.get("unit")
            if measurand == "Current.Import":
                value = _number(sample.get("value"))
                if unit not in (None, "A"):
                    raise MappingError(f"unit {unit!r} where A was expected")
                if phase in _PHASES:
                    currents[_PHASES[phase]] = value
                elif phase is None and phases == 1:
                    currents[phase_index] = value
            elif measurand == "Power.Active.Import" and phase is None:
                power_w = _scaled(_number(sample.get("value")), unit, "W")
            elif measurand == _ENERGY and phase is None:
                energy_wh = _scaled(_number(sample.get("value")), unit, "Wh")
    current: Phases3 | None = None
    if any(c is not None for c in currents):
        current = (currents[0] or 0.0, currents[1] or 0.0, currents[2] or 0.0)
    return MeterSample(current, power_w, energy_wh, measured_s)


def charging_profile(current_a: float, *, phases: int, profile_id: int = 1) -> dict[str, Any]:
    """The ``csChargingProfiles`` of SetChargingProfile for a limit (0 pauses): the connector's
    default for every transaction, stack level 1, in amperes per phase, from now on."""
    return {
        "chargingProfileId": profile_id,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(float(current_a), 1),
                                        "numberPhases": phases}],
        },
    }


def profile_limit(profile: Mapping[str, Any]) -> tuple[float, int | None]:
    """The limit (A) and phases of a profile as :func:`charging_profile` writes it (the
    simulated box reads it back; snake_case or camelCase keys alike)."""
    schedule = profile.get("charging_schedule") or profile.get("chargingSchedule") or {}
    unit = schedule.get("charging_rate_unit") or schedule.get("chargingRateUnit")
    periods = schedule.get("charging_schedule_period") or schedule.get("chargingSchedulePeriod") or []
    if unit != "A" or not periods:
        raise MappingError("only an ampere schedule with at least one period is understood")
    first = periods[0]
    phases = first.get("number_phases", first.get("numberPhases"))
    return _number(first.get("limit")), int(phases) if phases is not None else None
