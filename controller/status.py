"""The immutable status the loop publishes after every cycle.

The web threads, the demo view and the tests read it; nobody changes it. Everything a grid
operator or an installer wants to know is here: what each device reads, which limits are in
force and why each charger got what it got, every fault with the time it started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controller.allocation.types import Reason, Why
from hal.types import ChargerReading, InputReading, LinkStats, MeterReading, Phases3

if TYPE_CHECKING:
    from controller.allocation import Allocation, ChargerInput, SiteInput
    from controller.allocation.rules import Override
    from controller.formulas.evaluation import Evaluated
    from controller.hardware import DeviceHandle, Hardware
    from controller.tracking import DeviceTracker


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
    reason: Reason  # str(reason) is the lreason
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
class ChargePointStatus:
    """One charger as the supplier's OCPP backend sees it (the gateway, docs/backend.md)."""

    charger_id: str
    backend_id: str
    connected: bool  # the WebSocket is open and BootNotification was accepted
    state: str  # "connected", "connecting", "reconnecting in 8 s", "boot pending", "off"
    reason: str | None  # why not connected (the last error, in plain words)
    since: float | None  # unix time of the last change of ``connected``
    queued: int  # transaction messages stored and not yet delivered
    ocpp_status: str | None  # the last StatusNotification status sent
    transaction_id: int | None  # the backend's transactionId of the running transaction
    cap_a: float | None  # the backend's cap in force (profile, remote stop, availability)
    cap_reason: str | None


@dataclass(frozen=True)
class BackendStatus:
    """The gateway to the supplier's OCPP backend, for ``get_dev_info`` params ``backend``."""

    url: str
    proxy: str | None
    enabled: bool
    reason: str | None  # why it is off (None: it runs)
    charge_points: tuple[ChargePointStatus, ...] = ()
    dropped: int = 0  # transaction messages the backend refused for good

    @property
    def connected(self) -> int:
        return sum(1 for cp in self.charge_points if cp.connected)


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
    failsafe_causes: tuple[str, ...] = ()  # the fail-safe's causes, each the same while it lasts
    backend: BackendStatus | None = None  # the gateway to the supplier's backend (None: not configured)

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


# ---------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class CycleFacts:
    """What one cycle decided and knew, for :func:`cycle_status`."""

    cycle_count: int
    overruns: int
    failed_cycles: int
    started_s: float
    ended_s: float
    site: SiteInput
    chargers: Mapping[str, ChargerInput]
    allocation: Allocation
    evaluated: Evaluated
    faults: Mapping[str, str]  # condition → text (fail-safe, formula errors)
    held: Mapping[str, str]  # charger → why its increase was held back this cycle
    overrides: Mapping[str, Override]
    stale_s: float


def device_status(handle: DeviceHandle, tracker: DeviceTracker[Any], now_s: float, stale_s: float) -> DeviceStatus:
    """One device as the status shows it: its last good reading, and the fault in force."""
    fault = tracker.fault_text(now_s, stale_s)
    return DeviceStatus(
        id=handle.id,
        kind=handle.kind,
        model=handle.model,
        address=handle.address,
        online=fault is None,
        age_s=tracker.age_s(now_s),
        error=fault,
        error_s=tracker.error_s(now_s),
        reading=tracker.reading,
    )


def cycle_status(facts: CycleFacts, hw: Hardware, trackers: Mapping[str, DeviceTracker[Any]],
                 written_a: Callable[[str], float | None]) -> Status:
    """The status a cycle publishes: its decisions, every device, every link, every fault."""
    now, stale_s = facts.started_s, facts.stale_s

    def device(h: DeviceHandle) -> DeviceStatus:
        return device_status(h, trackers[h.id], now, stale_s)

    charger_status = []
    for cid, h in hw.chargers.items():
        ci = facts.chargers[cid]
        cmd = facts.allocation.commands[cid]
        ov = facts.overrides.get(cid)
        charger_status.append(ChargerStatus(
            device=device(h),
            phases=ci.phases,
            phase=ci.phase,
            priority=ci.priority,
            min_current_a=ci.min_current_a,
            max_current_a=ci.max_current_a,
            command_a=cmd.current_a,
            written_a=written_a(cid),
            reason=Reason(Why.HELD, facts.held[cid]) if cid in facts.held else cmd.reason,
            enabled=ov.enabled if ov else True,
            override_a=ov.current_a if ov else None,
        ))
    fault_lines = tuple(f"{k}: {v}" for k, v in sorted(facts.faults.items()))
    device_faults = tuple(f"{h.id}: {t}" for h in hw.all()
                          if (t := trackers[h.id].fault_text(now, stale_s)) is not None)
    site, alloc = facts.site, facts.allocation
    return Status(
        cycle_count=facts.cycle_count,
        overruns=facts.overruns,
        failed_cycles=facts.failed_cycles,
        cycle_time_s=facts.ended_s - now,
        monotonic_s=now,
        wall_time=time.time(),
        failsafe=site.failsafe_reason,
        failsafe_causes=site.failsafe_causes,
        grid_limit_w=site.grid_limit_w,
        chargers_limit_w=site.chargers_limit_w,
        headroom_a=alloc.headroom_a,
        power_headroom_w=alloc.power_headroom_w,
        limiting=tuple(alloc.limiting),
        grid_power_w=site.grid_power_w,
        grid_current_a=site.grid_current_a,
        meters=tuple(device(h) for h in hw.meters.values()),
        chargers=tuple(charger_status),
        inputs=tuple(device(h) for h in hw.inputs.values()),
        variables=facts.evaluated.variables,
        formula_errors=facts.evaluated.errors,
        links=tuple(link.link_stats() for link in hw.links.values()),
        faults=fault_lines + device_faults,
    )
