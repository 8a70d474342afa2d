"""The Modbus driver's own values: register tables, how a device wants to be talked to, and
what a profile device needs from a bus.

Generic readings, errors and the device protocols the controller sees are in ``hal.types``;
these are what only the Modbus driver (``hal.modbus``) and its simulators use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class Table(str, enum.Enum):
    """Modbus data tables, named as the profiles name them."""

    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"


@dataclass(frozen=True)
class RequestPolicy:
    """How one device wants to be talked to on its bus."""

    timeout_s: float = 0.5
    gap_s: float = 0.0  # silence required before a request to this device (SDM630: 0.06 s)
    retries: int = 0


@runtime_checkable
class RegisterBus(Protocol):
    """What a profile device needs from a Modbus bus. ``hal.modbus.bus`` implements it.

    Coils and discrete inputs come back as a list of 0/1 ints, registers as 16-bit ints.
    Every error is raised as a DeviceError subclass.
    """

    name: str

    def read(self, table: Table, address: int, count: int, unit: int, policy: RequestPolicy) -> list[int]:
        ...

    def write(self, address: int, values: list[int], unit: int, policy: RequestPolicy, *, single: bool = False) -> None:
        """Write holding registers: FC06 when ``single`` (one register), else FC16."""
        ...
