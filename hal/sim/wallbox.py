"""One simulated charging point and the car in it.

This module owns the *behaviour* of a wallbox, independent of any protocol: the limit its
controller writes, the offer it signals (pause, hardware clamp, fail-safe), its communication
watchdog, the car that draws what is offered (IEC 61851: nothing below 6 A) after its own delay,
and the box's own energy counter. ``hal.sim.bank`` turns these values into Modbus registers.

It is separate from ``hal.sim.physics`` (the site: house load, grid meter, contacts) because a
wallbox is complete on its own: a lone box runs on a private :class:`~hal.sim.timeline.SimTimeline`
and only joins a site's timeline when installed there. Integration is exact for
piecewise-constant draws: the box tells its timeline the instants at which its draw changes by
itself (watchdog expiry, a car following a new limit after its delay).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from hal.sim.timeline import Clock, SimTimeline
from hal.types import IecState, Phases3

log = logging.getLogger(__name__)

#: IEC 61851-1: a car does not charge on an offered current below 6 A.
MIN_DRAW_A = 6.0
#: Slightly uneven phase voltages, deterministic, so that code assuming exactly 230 V shows up.
DEFAULT_VOLTAGE_V: Phases3 = (231.2, 229.6, 230.4)
_PHASE_INDEX = {"L1": 0, "L2": 1, "L3": 2}


def phase_index(phase: str | int) -> int:
    """``"L2"`` or ``2`` → 1. A typo in a scenario must fail loudly, not land on L1."""
    if isinstance(phase, int):
        if phase not in (1, 2, 3):
            raise ValueError(f"phase must be 1, 2 or 3, not {phase!r}")
        return phase - 1
    try:
        return _PHASE_INDEX[phase.upper()]
    except KeyError:
        raise ValueError(f"phase must be L1, L2 or L3, not {phase!r}") from None


class KeepaliveOn(str, enum.Enum):
    """What refreshes a wallbox's communication watchdog.

    Heidelberg: any Modbus request. Alfen: only a rewrite of the current limit (its validity time).
    """

    ANY = "any"
    WRITE = "write"


@dataclass(frozen=True)
class SimCar:
    """A car as the wallbox sees it: how much it can draw, on how many phases, how fast it reacts.

    ``follow_delay_s`` is the time the car needs to follow a changed offer (IEC 61851 allows a few
    seconds); 0 means it follows at once. ``wants_charge=False`` is a full battery: plugged in,
    state B, draws nothing.
    """

    max_current_a: float = 16.0
    phases: int = 3
    follow_delay_s: float = 0.0
    wants_charge: bool = True

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError(f"a car charges on 1 or 3 phases, not {self.phases}")
        if self.max_current_a < 0 or self.follow_delay_s < 0:
            raise ValueError("max_current_a and follow_delay_s must not be negative")

    def draw_a(self, offered_a: float) -> float:
        """What this car draws per phase when ``offered_a`` is offered (pilot PWM)."""
        if not self.wants_charge or offered_a < MIN_DRAW_A:
            return 0.0
        return min(offered_a, self.max_current_a)


@dataclass(frozen=True)
class WallboxConfig:
    """The fixed properties of a simulated wallbox (what its rotary switch and wiring say)."""

    phases: int = 3
    phase: str = "L1"  # where a 1-phase box, or a 1-phase car in a 3-phase box, draws
    max_current_a: float = 16.0  # hardware maximum (Heidelberg rotary switch)
    keepalive_on: KeepaliveOn = KeepaliveOn.WRITE

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError(f"a wallbox has 1 or 3 phases, not {self.phases}")
        phase_index(self.phase)
        object.__setattr__(self, "keepalive_on", KeepaliveOn(self.keepalive_on))


class SimWallbox:
    """One charging point: the limit its controller writes, its own watchdog, and the car in it.

    Fail-safe rule (both vendors' documents leave the detail open, this is the conservative
    reading): once the watchdog has expired the box offers its fail-safe current until the limit is
    *written* again; a mere read after expiry does not restore the old limit. So a restarted
    controller must write its limits, which it does.

    Before any controller writes, the box offers ``initial_limit_a`` (default: its hardware
    maximum, like a box that nobody manages).
    """

    def __init__(
        self,
        config: WallboxConfig | None = None,
        *,
        watchdog_timeout_s: float = 0.0,
        failsafe_current_a: float = 0.0,
        initial_limit_a: float | None = None,
        clock: Clock = time.monotonic,
        voltage_v: Phases3 = DEFAULT_VOLTAGE_V,
    ) -> None:
        if watchdog_timeout_s < 0 or failsafe_current_a < 0:
            raise ValueError("watchdog_timeout_s and failsafe_current_a must not be negative")
        self.config = config or WallboxConfig()
        self._timeline = SimTimeline(clock)
        self._on_change: Callable[[], None] | None = None  # the site's grid meter, once installed
        self.scheduled_at_s: float | None = None
        self._voltage_v = voltage_v
        self._limit_a = self.config.max_current_a if initial_limit_a is None else initial_limit_a
        self._enabled = True
        self._standby_enabled = True
        self._watchdog_timeout_s = watchdog_timeout_s
        self._failsafe_current_a = failsafe_current_a
        self._failsafe_active = False
        self._last_keepalive_s = self._timeline.now_s
        self._car: SimCar | None = None
        self._seen_offer_a = 0.0  # the offer the car is currently following
        self._pending: deque[tuple[float, float]] = deque()  # (when the car follows, offer)
        self._last_offer_a = 0.0  # the latest offer queued for the car
        self._energy_wh = 0.0
        self._energy_t_s = self._timeline.now_s  # energy is integrated up to here
        self._timeline.schedule(self)

    # -- wiring ------------------------------------------------------------------------------

    def join(self, timeline: SimTimeline, voltage_v: Phases3, on_change: Callable[[], None]) -> None:
        """Move this box onto a site's timeline, as if it were powered up there now.

        ``on_change`` is called (lock held) whenever the box's phase currents change.
        """
        with self._timeline.lock:
            self._catch_up(self._timeline.sync())
        with timeline.lock:
            now_s = timeline.sync()
            self._timeline = timeline
            self._on_change = on_change
            self._voltage_v = voltage_v
            self._energy_t_s = now_s
            self._last_keepalive_s = now_s
            self._pending.clear()
            self._seen_offer_a = self._last_offer_a = self._offer_a() if self._car is not None else 0.0
            self.scheduled_at_s = None
            timeline.schedule(self)

    @property
    def lock(self) -> threading.RLock:
        """The lock that guards this box (shared with its site)."""
        return self._timeline.lock

    # -- controller side (what Modbus requests do) ---------------------------------------------

    def set_limit(self, current_a: float) -> None:
        """The controller writes the current limit; 0 pauses. A write always feeds the watchdog."""
        if current_a < 0:
            raise ValueError(f"a current limit cannot be negative: {current_a}")
        with self._change() as now_s:
            self._limit_a = current_a
            self._last_keepalive_s = now_s
            self._failsafe_active = False

    def touch(self) -> None:
        """Any Modbus request reached the box: feeds the watchdog where the model counts reads.

        Cheap on purpose (no queue entry): it runs on every request to every simulated box.
        """
        with self.lock:
            now_s = self._timeline.sync()
            if self.config.keepalive_on is KeepaliveOn.ANY and not self._failsafe_active:
                self._last_keepalive_s = now_s

    def configure_watchdog(self, timeout_s: float | None = None, failsafe_current_a: float | None = None) -> None:
        """Setup writes: watchdog timeout (0 = off) and fail-safe current. Restarts the timer."""
        if timeout_s is not None and timeout_s < 0:
            raise ValueError(f"watchdog timeout cannot be negative: {timeout_s}")
        if failsafe_current_a is not None and failsafe_current_a < 0:
            raise ValueError(f"fail-safe current cannot be negative: {failsafe_current_a}")
        with self._change() as now_s:
            if timeout_s is not None:
                self._watchdog_timeout_s = timeout_s
                self._last_keepalive_s = now_s
            if failsafe_current_a is not None:
                self._failsafe_current_a = failsafe_current_a

    def set_enabled(self, enabled: bool) -> None:
        """Pause/resume as a separate switch (cFos ``charging_enable``); the limit is kept."""
        with self._change():
            self._enabled = enabled

    def set_standby(self, enabled: bool) -> None:
        """Heidelberg register 258. Stored and reported only; its effect on a real box is unclear."""
        with self.lock:
            self._timeline.sync()
            self._standby_enabled = enabled

    # -- scenario side -----------------------------------------------------------------------

    def plug(self, car: SimCar) -> None:
        """A car is plugged in. It starts following the offer after its own delay."""
        with self._change():
            self._car = car
            self._pending.clear()
            self._seen_offer_a = self._last_offer_a = 0.0

    def unplug(self) -> None:
        with self._change():
            self._car = None
            self._pending.clear()
            self._seen_offer_a = self._last_offer_a = 0.0

    def set_car_wants_charge(self, wants_charge: bool) -> None:
        """The car in the box becomes full (False) or asks for charge again, without replugging."""
        with self._change():
            if self._car is None:
                raise ValueError("no car plugged in")
            self._car = dataclasses.replace(self._car, wants_charge=wants_charge)

    @property
    def car(self) -> SimCar | None:
        with self.lock:
            return self._car

    # -- readings ----------------------------------------------------------------------------

    def phase_currents_a(self) -> Phases3:
        """Per-phase current the car draws through this box right now."""
        with self.lock:
            self._timeline.sync()
            return self._currents_a()

    def state(self) -> IecState:
        with self.lock:
            self._timeline.sync()
            return self._state()

    def values(self) -> dict[str, object]:
        """Every named value a register bank may ask for, consistent at one instant."""
        with self.lock:
            self._catch_up(self._timeline.sync())
            currents = self._currents_a()
            values: dict[str, object] = {
                "state": self._state(),
                "power_w": self._power_w(currents),
                "energy_wh": self._energy_wh,
                "limit_a": self._offer_a(),  # what the box applies (fail-safe, clamp, pause)
                "limit_written_a": self._limit_a,  # what the controller last wrote
                "car_connected": self._car is not None,
                "max_current_a": self.config.max_current_a,
                "min_current_a": MIN_DRAW_A,
                "failsafe_current_a": self._failsafe_current_a,
                "watchdog_timeout_s": self._watchdog_timeout_s,
                "watchdog_remaining_s": self._watchdog_remaining_s(),
                "failsafe_active": self._failsafe_active,
                "enabled": self._enabled,
                "standby_enabled": self._standby_enabled,
                "phases": self.config.phases,
            }
            for i in range(3):
                values[f"current_l{i + 1}_a"] = currents[i]
                values[f"voltage_l{i + 1}_v"] = self._voltage_v[i]
                values[f"power_l{i + 1}_w"] = currents[i] * self._voltage_v[i]
            return values

    @property
    def failsafe_active(self) -> bool:
        with self.lock:
            self._timeline.sync()
            return self._failsafe_active

    @property
    def energy_wh(self) -> float:
        with self.lock:
            self._catch_up(self._timeline.sync())
            return self._energy_wh

    # -- timeline ----------------------------------------------------------------------------

    def next_event_s(self) -> float | None:
        events: list[float] = []
        if self._watchdog_armed():
            events.append(self._last_keepalive_s + self._watchdog_timeout_s)
        if self._pending:
            events.append(self._pending[0][0])
        return min(events, default=None)

    def apply_events(self, now_s: float) -> None:
        self._catch_up(now_s)
        before = self._currents_a()
        if self._watchdog_armed() and now_s >= self._last_keepalive_s + self._watchdog_timeout_s:
            self._failsafe_active = True
            log.info("simulated wallbox: watchdog expired, fail-safe %.1f A", self._failsafe_current_a)
            self._offer_changed(now_s)
        while self._pending and self._pending[0][0] <= now_s:
            self._seen_offer_a = self._pending.popleft()[1]
        self._notify_if_changed(before)

    # -- internals (called with the lock held) -----------------------------------------------

    @contextlib.contextmanager
    def _change(self) -> Iterator[float]:
        """Around every change made from outside: integrate up to now, then tell whoever sums us."""
        with self.lock:
            now_s = self._timeline.sync()
            self._catch_up(now_s)
            before = self._currents_a()
            yield now_s
            self._offer_changed(now_s)
            self._notify_if_changed(before)
            self._timeline.schedule(self)

    def _catch_up(self, now_s: float) -> None:
        """Integrate this box's energy up to ``now_s``; its currents were constant since the last time."""
        if now_s > self._energy_t_s:
            self._energy_wh += self._power_w(self._currents_a()) * (now_s - self._energy_t_s) / 3600.0
            self._energy_t_s = now_s

    def _notify_if_changed(self, before: Phases3) -> None:
        if self._on_change is not None and self._currents_a() != before:
            self._on_change()

    def _watchdog_armed(self) -> bool:
        return self._watchdog_timeout_s > 0 and not self._failsafe_active

    def _watchdog_remaining_s(self) -> float:
        if not self._watchdog_armed():
            return 0.0
        return max(0.0, self._last_keepalive_s + self._watchdog_timeout_s - self._timeline.now_s)

    def _offer_a(self) -> float:
        """The current the box signals to the car (pilot PWM)."""
        if not self._enabled:
            return 0.0
        limit_a = self._failsafe_current_a if self._failsafe_active else self._limit_a
        return min(limit_a, self.config.max_current_a)

    def _offer_changed(self, now_s: float) -> None:
        """Queue the new offer for the car, which follows after its delay."""
        offer_a = self._offer_a()
        if self._car is None or offer_a == self._last_offer_a:
            return
        self._last_offer_a = offer_a
        follow_at_s = now_s + self._car.follow_delay_s
        if follow_at_s <= now_s:
            self._pending.clear()
            self._seen_offer_a = offer_a
        else:
            self._pending.append((follow_at_s, offer_a))

    def _draw_phases(self) -> tuple[int, ...]:
        if self._car is None:
            return ()
        if self.config.phases == 1 or self._car.phases == 1:
            return (phase_index(self.config.phase),)
        return (0, 1, 2)

    def _currents_a(self) -> Phases3:
        if self._car is None:
            return (0.0, 0.0, 0.0)
        draw_a = self._car.draw_a(self._seen_offer_a)
        phases = self._draw_phases()
        c = [draw_a if i in phases else 0.0 for i in range(3)]
        return (c[0], c[1], c[2])

    def _power_w(self, currents: Phases3) -> float:
        return sum(i * v for i, v in zip(currents, self._voltage_v))

    def _state(self) -> IecState:
        if self._car is None:
            return IecState.A
        if any(self._currents_a()):
            return IecState.C
        return IecState.B
