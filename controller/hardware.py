"""What the drivers built for one config: the devices, each behind its small protocol, and the
links they opened.

The controller talks to devices only through ``hal.types`` (``Meter``, ``Charger``, ``Input``)
and to links only as ``hal.types.Link`` (stats for the status, close on stop). Which protocol is
behind a device is the business of the driver that built it (``controller/build.py`` picks the
driver, ``controller/modbus_wiring.py`` is the Modbus one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from hal.types import Charger, Input, Link, Meter, SessionEvent

if TYPE_CHECKING:
    from controller.config import Config

#: The protocol of the device behind a handle: ``Meter``, ``Charger`` or ``Input``.
D = TypeVar("D", Meter, Charger, Input, covariant=False)


@dataclass
class DeviceHandle(Generic[D]):
    id: str
    kind: str  # "meter" | "charger" | "input"
    model: str
    address: str  # for humans: "rs485 unit 2", "192.168.1.50:502 unit 1", "GPIO17"
    #: The worker group that does this device's I/O: a bus, or a group of the driver's own. Every
    #: charger has one; None (only local inputs such as GPIO) = read on the loop thread.
    group: str | None
    device: D  # hal.types.Meter | Charger | Input, by ``kind``
    #: The box reports its own sessions (``hal.types.SessionEvent`` through
    #: ``BuildContext.on_session``); otherwise the controller derives them from its readings.
    reports_sessions: bool = False


@dataclass
class Hardware:
    meters: dict[str, DeviceHandle[Meter]] = field(default_factory=dict)
    chargers: dict[str, DeviceHandle[Charger]] = field(default_factory=dict)
    inputs: dict[str, DeviceHandle[Input]] = field(default_factory=dict)
    #: Every channel the drivers opened (Modbus buses, ...): reported each cycle, closed on stop.
    links: dict[str, Link] = field(default_factory=dict)
    #: Anything else to release on stop (GPIO pins).
    closers: list[Callable[[], None]] = field(default_factory=list)

    def all(self) -> list[DeviceHandle[Meter] | DeviceHandle[Charger] | DeviceHandle[Input]]:
        return [*self.meters.values(), *self.chargers.values(), *self.inputs.values()]

    def groups(self) -> list[str]:
        """The worker groups the devices need: one worker each (``hal.executor``)."""
        return sorted({h.group for h in self.all() if h.group is not None})

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        for close in self.closers:
            close()


@dataclass
class BuildContext:
    """What a driver gets to build its devices for one config."""

    cfg: Config
    hw: Hardware
    #: Pushed news of a device (a GPIO edge; a message a box sends): wakes the control loop.
    on_event: Callable[[str], None] | None = None
    #: A box reported a session start or end itself (OCPP): recorded by the session log.
    on_session: Callable[[SessionEvent], None] | None = None
    one_shot: bool = False  # ``gridcharge read``: links fail once with their reason, no backoff
    pin_factory: Any = None  # gpiozero's, for tests
    #: Per-driver state while building (the Modbus driver keeps its buses by name here).
    scratch: dict[str, Any] = field(default_factory=dict)
