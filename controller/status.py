"""The immutable status the loop publishes after every cycle.

The web threads, the demo view and the tests read it; nobody changes it. Everything a grid
operator or an installer wants to know is here: what each device reads, which limits are in
force and why each charger got what it got, every fault with the time it started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hal.types import ChargerReading, InputReading, LinkStats, MeterReading, Phases3


@dataclass(frozen=True)
class DeviceStatus:
    id: str
    kind: str  # "meter" | "charger" | "input"
    model: str
    address: str
    online: bool
    age_s: float | None  # seconds since the last good reading; None = never read
    error: str | None  # the fault in force, None when healthy
    error_s: float  # how long the fault has lasted (cFos com_err_secs)
    reading: MeterReading | ChargerReading | InputReading | None


@dataclass(frozen=True)
class ChargerStatus:
    device: DeviceStatus
    phases: int
    phase: int
    priority: int
    min_current_a: float
    max_current_a: float  # in force this cycle
    command_a: float  # what the allocation decided (0 = paused)
    written_a: float | None  # what was last written to the box (None = not yet)
    reason: str
    enabled: bool  # False when disabled by an override (flags=C)
    override_a: float | None

    @property
    def paused(self) -> bool:
        return self.command_a == 0


@dataclass(frozen=True)
class VariableStatus:
    name: str
    expr: Any
    value: Any
    error: str | None


@dataclass(frozen=True)
class FormulaStatus:
    """A site limit, a charger maximum or a rule condition that failed this cycle."""

    where: str  # "site.grid_limit_w", "chargers.E2.max_current_a", 'rules[0].when'
    error: str


@dataclass(frozen=True)
class Status:
    cycle_count: int
    overruns: int
    failed_cycles: int
    cycle_time_s: float  # how long the last cycle took
    monotonic_s: float  # when it started (monotonic clock)
    wall_time: float  # when it started (unix time)
    failsafe: str | None  # why the fail-safe limit is in force, None when not
    grid_limit_w: float | None
    chargers_limit_w: float | None
    headroom_a: Phases3
    power_headroom_w: float | None
    limiting: tuple[str, ...]
    grid_power_w: float | None
    grid_current_a: Phases3 | None
    meters: tuple[DeviceStatus, ...] = ()
    chargers: tuple[ChargerStatus, ...] = ()
    inputs: tuple[DeviceStatus, ...] = ()
    variables: tuple[VariableStatus, ...] = ()
    formula_errors: tuple[FormulaStatus, ...] = ()
    links: tuple[LinkStats, ...] = ()  # every bus or other channel, with its driver's own details
    faults: tuple[str, ...] = field(default=())  # every fault in force, one line each

    def charger(self, id: str) -> ChargerStatus:
        return next(c for c in self.chargers if c.device.id == id)


EMPTY_STATUS = Status(
    cycle_count=0,
    overruns=0,
    failed_cycles=0,
    cycle_time_s=0.0,
    monotonic_s=0.0,
    wall_time=0.0,
    failsafe="not started",
    grid_limit_w=None,
    chargers_limit_w=None,
    headroom_a=(0.0, 0.0, 0.0),
    power_headroom_w=None,
    limiting=(),
    grid_power_w=None,
    grid_current_a=None,
)
