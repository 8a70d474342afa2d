"""Values and interfaces shared by the hardware layer and the controller.

The controller sees meters, chargers and inputs only through the small protocols at the end of
this file (docs/architecture.md: "interfaces, not protocols"). A Modbus profile device is one
implementation; an OCPP-connected wallbox will be another, with no change to ``controller/``.
Readings are frozen dataclasses so that a snapshot handed to the pure allocation code can never
be changed behind its back.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Phases3 = tuple[float, float, float]


class IecState(str, enum.Enum):
    """IEC 61851-1 control-pilot state of a charging point."""

    A = "A"  # no vehicle
    B = "B"  # vehicle connected, not charging
    C = "C"  # charging
    D = "D"  # charging with ventilation
    E = "E"  # no power / short circuit
    F = "F"  # error / not available

    @property
    def charging(self) -> bool:
        return self in (IecState.C, IecState.D)

    @property
    def connected(self) -> bool:
        return self in (IecState.B, IecState.C, IecState.D)

    @property
    def words(self) -> str:
        """What the state means, in the words ``gridcharge read``, ``get_dev_info`` and the
        status view all use (one vocabulary: the installer sees the same words everywhere)."""
        return IEC_WORDS[self.value]

    @property
    def label(self) -> str:
        """The letter with its words: ``C (charging)``."""
        return f"{self.value} ({self.words})"


#: The words of each IEC 61851-1 state (see ``IecState.words``).
IEC_WORDS: dict[str, str] = {
    "A": "no car",
    "B": "car connected",
    "C": "charging",
    "D": "charging with ventilation",
    "E": "no power",
    "F": "error",
}


class DeviceError(Exception):
    """A device did not give a usable value. Always a fault of that device, never of the loop."""


class CommCause(str, enum.Enum):
    """Why a device could not be reached, as far as its bus can tell.

    ``gridcharge read`` turns it into the likely causes in plain words; the value is a short
    description for logs.
    """

    NO_ANSWER = "no answer"  # the link is open, the unit stayed silent
    REFUSED = "connection refused"  # TCP: nothing listens at host:port
    UNREACHABLE = "host not reachable"  # TCP: the connect timed out, no route to the host
    UNKNOWN_HOST = "unknown host"  # TCP: the host name does not resolve
    NO_PORT = "no such serial port"
    PORT_BUSY = "serial port in use"  # another process holds its exclusive lock
    NO_PERMISSION = "permission denied"
    LINK_LOST = "connection lost"  # the link failed during a request
    CANNOT_OPEN = "cannot open"  # the link did not open, and why is not known


class CommError(DeviceError):
    """No answer: timeout, connection refused, serial port gone. ``cause`` says which, where known."""

    def __init__(self, message: str, cause: CommCause = CommCause.CANNOT_OPEN) -> None:
        super().__init__(message)
        self.cause = cause


class DeviceAnswerError(DeviceError):
    """The device answered, but with a Modbus exception or a value no device can show."""

    #: The protocol's error code to answer with, where one applies (a Modbus exception code).
    code: int | None = None


@dataclass(frozen=True)
class MeterReading:
    """One consistent reading of an electricity meter. Currents and voltages are per phase."""

    power_w: float
    current_a: Phases3 | None = None
    voltage_v: Phases3 | None = None
    import_wh: float | None = None
    export_wh: float | None = None


@dataclass(frozen=True)
class ChargerReading:
    """One reading of a wallbox: its IEC state and what the car draws on each phase."""

    state: IecState
    current_a: Phases3 = (0.0, 0.0, 0.0)
    power_w: float | None = None
    energy_wh: float | None = None
    limit_a: float | None = None  # the limit the box reports as applied, where it reports one
    #: The vendor's own state code the IEC state was mapped from (Heidelberg 7, Alfen "C2"):
    #: shown beside the IEC state so an installer can compare it with the box's manual.
    raw_state: int | str | None = field(default=None, compare=False)
    #: When the box measured the currents (unix seconds), where its protocol says (OCPP
    #: MeterValues carry a timestamp); None: they are as fresh as the read (Modbus registers).
    measured_s: float | None = field(default=None, compare=False)


class SessionEventKind(str, enum.Enum):
    START = "start"
    STOP = "stop"


@dataclass(frozen=True)
class SessionEvent:
    """A charging session's start or end as a box reports it itself (OCPP Start/StopTransaction).

    Boxes that report none (Modbus) get their sessions derived by the controller from the IEC
    state and the energy register; a box that reports them is trusted for its own sessions
    (``meter_wh`` is its energy register at that moment, in Wh).
    """

    charger_id: str
    kind: SessionEventKind
    ts: float  # unix seconds: the box's timestamp where it gave a plausible one, else receipt
    meter_wh: float | None
    id_tag: str | None = None
    transaction_id: int | None = None
    reason: str | None = None  # why it stopped, as the box says (OCPP: EVDisconnected, Local, ...)


@dataclass(frozen=True)
class Fallback:
    """What a wallbox does on its own when its controller falls silent.

    After ``timeout_s`` without being fed it leaves its last limit and offers its fail-safe
    current. ``timeout_s`` None means "the watchdog the controller configures with ``setup()``":
    such a box falls back only once that setup has been acknowledged (a factory-fresh box has no
    watchdog). ``fed_by_any_request``: any request restarts the timer (Heidelberg), otherwise only
    a write of the limit does (Alfen's validity time).
    """

    timeout_s: float | None = None
    fed_by_any_request: bool = True


@dataclass(frozen=True)
class InputReading:
    """A digital input after polarity: ``active`` already honours active_low / normally_closed."""

    active: bool


@runtime_checkable
class Meter(Protocol):
    id: str

    def read(self) -> MeterReading:
        """Read once; raise DeviceError when no usable value can be had."""
        ...


@runtime_checkable
class Charger(Protocol):
    id: str

    #: Seconds after which the current limit must be written again even if unchanged
    #: (e.g. Alfen's validity time); None when the box needs no keep-alive write.
    keepalive_s: float | None

    #: How the box falls back to its fail-safe current when nobody talks to it; None when it
    #: never does (it keeps its last limit for as long as it is silent).
    fallback: Fallback | None

    def read(self) -> ChargerReading:
        """Read once; raise DeviceError when no usable value can be had."""
        ...

    def apply(self, current_a: float) -> None:
        """Write the current limit; 0 pauses. Raise DeviceError when the write fails."""
        ...

    def setup(self, watchdog_s: float, failsafe_current_a: float) -> None:
        """Configure the box's own communication watchdog and fail-safe current, where it has them."""
        ...


@runtime_checkable
class Input(Protocol):
    id: str

    def read(self) -> InputReading:
        """Read once; raise DeviceError when the contact state cannot be known."""
        ...


@dataclass(frozen=True)
class LinkStats:
    """One channel to devices (a Modbus bus, later an OCPP server) as the status shows it.

    ``details`` holds what only that kind of link has, by name (a Modbus RS485 line:
    ``wire_time_s_per_cycle``), so the status carries it without the controller knowing it.
    """

    name: str
    requests: int
    errors: int
    latency_p95_s: float | None
    last_error: str | None
    details: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Link(Protocol):
    """A channel a driver opened: reported in the status every cycle, closed on stop."""

    name: str

    def link_stats(self) -> LinkStats:
        """The counters now; called once per control cycle (per-cycle figures are since the last call)."""
        ...

    def close(self) -> None:
        ...
