"""The symbols a formula can read, built from one cycle's fresh readings.

Device values are flat names with a dot (``M1.power_w``), exactly as ``Formula.names`` reports
them. A device without a fresh reading maps its values to None, so every formula that reads one
fails and takes its fail-safe value; only ``X.online`` always has a value. An input maps to 1 when
active, 0 when not, None when unreadable (a broken wire restricts, docs/configuration.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.cfos import cfos_state
from hal.types import ChargerReading, MeterReading

METER_FIELDS = ("power_w", "current_a", "current_l1_a", "current_l2_a", "current_l3_a",
                "voltage_v", "import_wh", "export_wh")
CHARGER_FIELDS = ("state", "charging", "power_w", "current_a", "current_l1_a", "current_l2_a",
                  "current_l3_a", "energy_wh")
#: What a formula can read of each kind of device, after the dot (``M1.power_w``): exactly the
#: names ``device_symbols`` provides. An input has none: it is read bare (``RSE1``). The config
#: check refuses any other name, so a typo is found before the service starts.
DEVICE_VALUES: dict[str, tuple[str, ...]] = {
    "meter": ("online", *METER_FIELDS),
    "charger": ("online", *CHARGER_FIELDS),
}


def time_symbols(now: datetime) -> dict[str, Any]:
    """``weekday`` is 0 for Monday … 6 for Sunday (Python's convention, documented in docs/configuration.md)."""
    return {"hour": now.hour, "minute": now.minute, "weekday": now.weekday()}


def _phases(prefix: str, values: tuple[float, float, float] | None, name: str, unit: str) -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}.{name}_{unit}": values}
    for i in range(3):
        out[f"{prefix}.{name}_l{i + 1}_{unit}"] = None if values is None else values[i]
    return out


def device_symbols(dev_id: str, kind: str, reading: Any) -> dict[str, Any]:
    if kind == "input":
        return {dev_id: None if reading is None else int(bool(reading.active))}
    out: dict[str, Any] = {f"{dev_id}.online": reading is not None}
    if kind == "meter":
        if not isinstance(reading, MeterReading):
            out.update({f"{dev_id}.{f}": None for f in METER_FIELDS})
            return out
        out[f"{dev_id}.power_w"] = reading.power_w
        out.update(_phases(dev_id, reading.current_a, "current", "a"))
        out[f"{dev_id}.voltage_v"] = reading.voltage_v
        out[f"{dev_id}.import_wh"] = reading.import_wh
        out[f"{dev_id}.export_wh"] = reading.export_wh
        return out
    if not isinstance(reading, ChargerReading):
        out.update({f"{dev_id}.{f}": None for f in CHARGER_FIELDS})
        return out
    out[f"{dev_id}.state"] = cfos_state(reading.state)
    out[f"{dev_id}.charging"] = reading.state.charging
    out[f"{dev_id}.power_w"] = reading.power_w
    out.update(_phases(dev_id, reading.current_a, "current", "a"))
    out[f"{dev_id}.energy_wh"] = reading.energy_wh
    return out


