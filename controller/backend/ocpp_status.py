"""What the supplier's backend is told about a charger, as pure functions of its status.

- **Status** (StatusNotification of connector 1): no car → Available; a car connected and not
  charging → SuspendedEVSE when gridcharge pauses it (its command is 0), else SuspendedEV (the car
  does not take what it may); charging → Charging; IEC E/F or offline → Faulted (error code
  OtherError, or EVCommunicationError for F); made Inoperative by the backend → Unavailable
  (while no car charges). Connector 0 (the charge point as a whole) is Available, or Unavailable
  when Inoperative.
- **Meter values**: Energy.Active.Import.Register (Wh, the box's register), Power.Active.Import
  (W) and Current.Import per phase (A) of the latest reading, context Sample.Periodic (or
  Trigger).
- **meterStart / meterStop** of a session: the box's energy register in Wh; a box without one
  counts from 0 at the session's start (the energy gridcharge integrated from its power).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from controller.records.sessions import Session
from controller.status import ChargerStatus
from hal.types import ChargerReading, IecState


def ocpp_time(ts: float) -> str:
    """An OCPP timestamp (UTC, ISO 8601 with Z)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def charger_reading(charger: ChargerStatus) -> ChargerReading | None:
    device = charger.device
    if not device.online or not isinstance(device.reading, ChargerReading):
        return None
    return device.reading


def connector_status(charger: ChargerStatus | None, *, inoperative: bool) -> tuple[str, str, str]:
    """(connector 0 status, connector 1 status, connector 1 error code)."""
    whole = "Unavailable" if inoperative else "Available"
    reading = charger_reading(charger) if charger is not None else None
    if reading is None:
        return whole, "Faulted", "OtherError"
    if reading.state is IecState.F:
        return whole, "Faulted", "EVCommunicationError"
    if reading.state is IecState.E:
        return whole, "Faulted", "OtherError"
    if reading.state.charging:
        return whole, "Charging", "NoError"
    if inoperative:
        return whole, "Unavailable", "NoError"
    if reading.state is IecState.A:
        return whole, "Available", "NoError"
    assert charger is not None
    return whole, "SuspendedEVSE" if charger.command_a == 0 else "SuspendedEV", "NoError"


def sampled_values(reading: ChargerReading, context: str) -> list[dict[str, Any]]:
    """The sampled values of one reading (camelCase, as sent)."""
    values: list[dict[str, Any]] = []
    if reading.energy_wh is not None:
        values.append({"value": f"{reading.energy_wh:.0f}", "context": context,
                       "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
    if reading.power_w is not None:
        values.append({"value": f"{max(0.0, reading.power_w):.0f}", "context": context, "measurand": "Power.Active.Import",
                       "unit": "W"})
    for index, current in enumerate(reading.current_a):
        values.append({"value": f"{current:.2f}", "context": context, "measurand": "Current.Import",
                       "phase": f"L{index + 1}", "unit": "A"})
    return values


def meter_values_payload(reading: ChargerReading, ts: float, *, context: str = "Sample.Periodic",
                         transaction_id: int | None = None) -> dict[str, Any] | None:
    """A MeterValues payload for connector 1 (camelCase; ``transactionId`` only when given)."""
    values = sampled_values(reading, context)
    if not values:
        return None
    payload: dict[str, Any] = {"connectorId": 1, "meterValue": [{"timestamp": ocpp_time(ts), "sampledValue": values}]}
    if transaction_id is not None:
        payload["transactionId"] = transaction_id
    return payload


def meter_start_wh(session: Session) -> int:
    """meterStart: the register at the start, or 0 for energy counted by gridcharge."""
    if session.energy_source == "register" and session.start_wh is not None:
        return int(round(session.start_wh))
    return 0


def meter_stop_wh(session: Session) -> int:
    """meterStop: the register at the end (start + energy where the end is not known), or the
    counted energy."""
    if session.energy_source == "register" and session.start_wh is not None:
        if session.end_wh is not None:
            return int(round(session.end_wh))
        return int(round(session.start_wh + (session.energy_wh or 0.0)))
    return int(round(session.energy_wh or 0.0))


__all__ = ["charger_reading", "connector_status", "meter_start_wh", "meter_stop_wh", "meter_values_payload",
           "ocpp_time", "sampled_values"]
