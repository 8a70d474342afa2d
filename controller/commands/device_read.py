"""One read of one device and its report, for ``gridcharge read``.

The installer at the meter cabinet wants to know two things: does the device answer, and do
its values make sense. So a device that answered shows every value of its profile rounded to
its meaning (``controller.commands.readout``), a charger's state as ``C (charging)   raw 7``; one that did
not shows what the bus saw and the likely causes in plain words (``controller.commands.read_failure``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from controller.hardware import DeviceHandle, Hardware
from controller.commands.read_failure import likely_causes
from controller.commands.readout import value_lines
from hal.modbus.bus import ModbusBus
from hal.modbus.profile import InvalidValue
from hal.types import DeviceAnswerError, DeviceError, IecState


@dataclass(frozen=True)
class ReadReport:
    ok: bool  # the device answered
    text: str


def _state(device: Any, values: Any) -> tuple[IecState | None, str | None] | None:
    """A charger's IEC state for its ``values``; None for a device without a state."""
    state_of = getattr(device, "state_of", None)
    if state_of is None or not isinstance(values, dict):
        return None
    try:
        return state_of(values), None
    except InvalidValue as exc:
        return None, str(exc)


def read_once(hw: Hardware, handle: DeviceHandle) -> ReadReport:
    """Read ``handle`` once (every value of its profile) and describe the outcome."""
    device = handle.device
    reader = getattr(device, "read_values", device.read)
    started = time.monotonic()
    try:
        values = reader()
    except DeviceError as exc:
        return ReadReport(False, failure_text(hw, handle, exc))
    elapsed_ms = (time.monotonic() - started) * 1000
    lines = [f"{handle.id}: {handle.model} at {handle.address}, answered in {elapsed_ms:.0f} ms"]
    lines += [str(line) for line in value_lines(values, _state(device, values))]
    return ReadReport(True, "\n".join(lines))


def failure_text(hw: Hardware, handle: DeviceHandle, exc: DeviceError) -> str:
    link = hw.links.get(handle.group) if handle.group is not None else None
    bus = link.spec if isinstance(link, ModbusBus) else None
    what = "answered with an error" if isinstance(exc, DeviceAnswerError) else "did not answer"
    lines = [f"{handle.id}: {handle.model} at {handle.address} {what}: {exc}", "likely causes:"]
    lines += [f"  - {cause}" for cause in likely_causes(exc, bus, getattr(handle.device, "unit", None))]
    return "\n".join(lines)


__all__ = ["ReadReport", "failure_text", "read_once"]
