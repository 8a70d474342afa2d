"""What ``gridcharge read`` prints for a device that answered: each value rounded to what its
unit means, and a charger's state in the IEC vocabulary with the vendor's own code beside it.

The unit is the value name's suffix, the convention every profile follows (``power_w``,
``voltage_l1_v``, ``import_wh``, ``frequency_hz``). The resolution per unit is what an installer
compares with a display or a clamp meter, not what a float register happens to hold
(``231.1999969482422`` is 231.2 V):

======== ====== ==========================================================================
suffix   shown  why
======== ====== ==========================================================================
``_v``   0.1 V  meter displays show tenths; mains voltage moves by more than that anyway
``_a``   0.01 A the resolution of a clamp meter; limits are set in tenths of an ampere
``_w``   1 W    power registers resolve whole watts at best
``_wh``  1 Wh   energy counters count whole watt-hours
``_kwh`` 0.001  the same watt-hour, in kWh
``_hz``  0.01 Hz grid frequency is specified to hundredths
``_pf``  0.01   power factor (also a name ``power_factor`` or ending in ``_cosphi``)
======== ====== ==========================================================================

``_kw`` (0.001 kW), ``_va``/``_var``/``_varh`` (whole), ``_s`` (0.1 s), ``_ms`` (whole),
``_pct`` (0.1 %) and ``_c`` (0.1 °C) follow the same reasoning. A name without a known suffix is
shown as it came (at most six significant digits for a float). A value the device sent as
invalid (a "not available" sentinel, out of range) shows as ``no valid value``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hal.types import IecState, InputReading

Value = float | int | str | None

#: suffix → (unit symbol, decimals)
UNITS: Mapping[str, tuple[str, int]] = {
    "v": ("V", 1),
    "a": ("A", 2),
    "w": ("W", 0),
    "wh": ("Wh", 0),
    "kwh": ("kWh", 3),
    "kw": ("kW", 3),
    "hz": ("Hz", 2),
    "pf": ("", 2),
    "va": ("VA", 0),
    "var": ("var", 0),
    "varh": ("varh", 0),
    "s": ("s", 1),
    "ms": ("ms", 0),
    "pct": ("%", 1),
    "c": ("°C", 1),
}
POWER_FACTOR_NAMES = ("power_factor", "cosphi", "cos_phi")
NO_VALUE = "no valid value"
NAME_WIDTH = 16


def unit_of(name: str) -> tuple[str, int] | None:
    """(unit symbol, decimals) for a value name, or None when its suffix says nothing."""
    if name in POWER_FACTOR_NAMES or name.endswith(("_power_factor", "_cosphi")):
        return UNITS["pf"]
    if "_" not in name:
        return None
    return UNITS.get(name.rsplit("_", 1)[1])


def quantity(name: str, value: Value) -> str:
    """One value as text: ``231.2 V``, ``16.00 A``, ``11059 W``; see the module doc."""
    if value is None:
        return NO_VALUE
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return NO_VALUE
    unit = unit_of(name)
    if unit is None:
        return str(value) if isinstance(value, int) else f"{value:.6g}"
    symbol, decimals = unit
    number = round(float(value), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    text = f"{number:.{decimals}f}"
    return f"{text} {symbol}" if symbol else text


def state_text(state: IecState | None, raw: Value, why: str | None = None) -> str:
    """A charger state the way every view shows it: ``C (charging)   raw 7``.

    ``state`` None: the raw code is not in the profile's state map (``why`` says more).
    """
    raw_text = "no valid value" if raw is None else f"raw {raw}"
    if state is None:
        return f"unknown   {raw_text}" + (f" ({why})" if why else "")
    return f"{state.label}   {raw_text}"


@dataclass(frozen=True)
class Line:
    name: str
    text: str

    def __str__(self) -> str:
        return f"  {self.name:{NAME_WIDTH}} {self.text}"


def value_lines(values: Mapping[str, Value] | InputReading,
                state: tuple[IecState | None, str | None] | None = None) -> list[Line]:
    """The lines of one reading, in the profile's order.

    ``state``: for a charger, the IEC state its ``state`` value maps to (None when it maps to
    none) and why not. An input's ``active`` shows as yes/no.
    """
    if isinstance(values, InputReading):
        return [Line("active", "yes" if values.active else "no")]
    lines = []
    for name, value in values.items():
        if name == "state" and state is not None:
            lines.append(Line(name, state_text(state[0], value, state[1])))
        elif name == "active" and isinstance(value, int):
            lines.append(Line(name, "yes" if value else "no"))
        else:
            lines.append(Line(name, quantity(name, value)))
    return lines


__all__ = ["Line", "NO_VALUE", "UNITS", "quantity", "state_text", "unit_of", "value_lines"]
