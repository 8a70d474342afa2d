"""One OCPP wallbox as the controller sees it: a ``hal.types.Charger``.

The box talks first (it connects, it sends its status and meter values); this object keeps the
latest of what it said, under a lock, for ``read()`` on a worker thread, and hands ``apply()``
and ``setup()`` to the central system's asyncio loop as coroutines of the box's current
session, waiting for the answer with a timeout.

What it takes from the protocol (docs/devices.md, "OCPP 1.6J wallboxes"):

* A box without a watchdog: a disconnected box keeps its last charging profile, so ``fallback``
  is None and the controller keeps its last limit reserved while it is away.
* ``read()`` of a disconnected box raises CommError; of a box whose last MeterValues are older
  than ``stale_s``, DeviceError, after asking the box for fresh ones with TriggerMessage (once
  the values are half that old, at most once per ``stale_s``).
* A box that never sent MeterValues is read from its StatusNotification alone: while it is
  Charging it is taken to draw the limit it acknowledged (on its phases), the most it can.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hal.ocpp.mapping import MeterSample, iec_state
from hal.types import ChargerReading, CommCause, CommError, DeviceError, Fallback, IecState, SessionEvent

if TYPE_CHECKING:
    from hal.ocpp.session import BoxSession

log = logging.getLogger(__name__)


class Runner(Protocol):
    """The central system's loop, seen from a worker thread."""

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


@dataclass(frozen=True)
class BoxSpec:
    """What the config says of one box that the driver needs."""

    charge_box_id: str
    password: str | None
    connector: int
    phases: int
    phase_index: int  # the phase a 1-phase box is wired to
    id_tags: frozenset[str] | None  # None: every tag is accepted
    unknown_limit_a: float  # drawn by a Charging box never metered and never given a limit


class OcppCharger:
    """``hal.types.Charger`` for one OCPP box (see the module docstring)."""

    keepalive_s: float | None = None  # a charging profile stays in force until replaced
    fallback: Fallback | None = None  # no watchdog: a disconnected box keeps its last profile

    def __init__(self, id: str, spec: BoxSpec, runner: Runner, *, stale_s: float, sample_interval_s: int,
                 call_timeout_s: float, on_event: Callable[[str], None] | None = None,
                 on_session: Callable[[SessionEvent], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.id = id
        self.spec = spec
        self.stale_s = stale_s
        self.sample_interval_s = sample_interval_s
        self.call_timeout_s = call_timeout_s
        self._runner = runner
        self._on_event = on_event
        self._on_session = on_session
        self._clock = clock
        self._lock = threading.Lock()
        self._session: BoxSession | None = None
        self._ever_connected = False
        self._status: str | None = None
        self._meter: MeterSample | None = None
        self._fresh_s: float | None = None  # when the box last told us something new
        #: When the box measured its last MeterValues, on our clock (``ChargerReading.measured_s``).
        self._measured_s: float | None = None
        self._trigger_s: float | None = None
        self._commanded_a: float | None = None  # the last limit gridcharge asked for
        self._applied_a: float | None = None  # the last limit the box acknowledged (this connection)

    # ---- the controller's side (worker threads) ---------------------------------------------
    def read(self) -> ChargerReading:
        with self._lock:
            session = self._session
            if session is None:
                if self._ever_connected:
                    raise CommError(f"{self.spec.charge_box_id} is not connected", CommCause.LINK_LOST)
                raise CommError(f"{self.spec.charge_box_id} has not connected yet", CommCause.NO_ANSWER)
            if self._status is None:
                raise DeviceError(f"{self.spec.charge_box_id} sent no StatusNotification yet")
            now = self._clock()
            age = now - (self._fresh_s if self._fresh_s is not None else now)
            trigger = (self._meter is not None and age > self.stale_s / 2
                       and (self._trigger_s is None or now - self._trigger_s >= self.stale_s))
            if trigger:
                self._trigger_s = now
            stale = self._meter is not None and age > self.stale_s
            reading = self._reading()
        if trigger:
            self._runner.spawn(session.trigger("MeterValues"))
        if stale:
            raise DeviceError(f"no MeterValues from {self.spec.charge_box_id} for {age:.0f} s "
                              f"(TriggerMessage sent)")
        return reading

    def _reading(self) -> ChargerReading:
        status = self._status or ""
        state = iec_state(status)
        meter = self._meter
        if meter is not None and meter.current_a is not None:
            current = meter.current_a
        elif state.charging:  # never metered: it draws what it may
            limit = self._applied_a if self._applied_a is not None else self.spec.unknown_limit_a
            on = (0, 1, 2) if self.spec.phases == 3 else (self.spec.phase_index,)
            c = [limit if i in on else 0.0 for i in range(3)]
            current = (c[0], c[1], c[2])
        else:
            current = (0.0, 0.0, 0.0)
        return ChargerReading(
            state, current, power_w=meter.power_w if meter else None,
            energy_wh=meter.energy_wh if meter else None, limit_a=self._applied_a, raw_state=status,
            measured_s=self._measured_s if meter else None,
        )

    def apply(self, current_a: float) -> None:
        with self._lock:
            self._commanded_a = current_a
            session = self._session
            if session is not None and self._applied_a == current_a:
                return  # in force on this connection already
        if session is None:
            raise CommError(f"{self.spec.charge_box_id} is not connected (its limit is written when it connects)",
                            CommCause.LINK_LOST)
        self._runner.run(session.set_limit(current_a), self.call_timeout_s)

    def setup(self, watchdog_s: float, failsafe_current_a: float) -> None:
        """OCPP has no watchdog: ask the box for the meter values the controller needs (also done
        on every connection and boot). A box that refuses is read from what it sends."""
        with self._lock:
            session = self._session
        if session is None:
            raise CommError(f"{self.spec.charge_box_id} is not connected", CommCause.LINK_LOST)
        self._runner.run(session.configure(), 3 * self.call_timeout_s)

    # ---- the session's side (the central system's loop) ----------------------------------------
    @property
    def session(self) -> BoxSession | None:
        with self._lock:
            return self._session

    def connected(self, session: BoxSession) -> None:
        """A new connection took over: what was in force on the old one is not known on it."""
        with self._lock:
            self._session, self._ever_connected = session, True
            self._applied_a, self._trigger_s = None, None

    def limit_to_write(self) -> float:
        """The limit a box gets when it connects or boots: the last one gridcharge commanded, or
        0 before any (a box without a profile would give the car its full rating)."""
        with self._lock:
            return self._commanded_a if self._commanded_a is not None else 0.0

    def disconnected(self, session: BoxSession) -> None:
        with self._lock:
            if self._session is not session:
                return  # an old connection that was replaced
            self._session = None
        self._notify()

    def rebooted(self) -> None:
        """A BootNotification: the box may have lost its profile and configuration."""
        with self._lock:
            self._applied_a = None

    def limit_acknowledged(self, session: BoxSession, current_a: float) -> None:
        with self._lock:
            if self._session is session:
                self._applied_a = current_a

    def status_received(self, status: str) -> None:
        with self._lock:
            changed = status != self._status
            self._status, self._fresh_s = status, self._clock()
        if changed:
            self._notify()

    def meter_received(self, sample: MeterSample) -> None:
        """The latest MeterValues. A sample the box measured before the one held (a periodic
        sample that was on its way while a triggered one overtook it) is dropped: it would put
        the box's draw from before a limit change back in place of the draw after it."""
        with self._lock:
            old = self._meter
            if (old is not None and old.measured_s is not None and sample.measured_s is not None
                    and sample.measured_s < old.measured_s):
                log.debug("%s: MeterValues measured before the last ones, dropped", self.id)
                return
            self._meter = MeterSample(
                sample.current_a if sample.current_a is not None else (old.current_a if old else None),
                sample.power_w if sample.power_w is not None else (old.power_w if old else None),
                sample.energy_wh if sample.energy_wh is not None else (old.energy_wh if old else None),
                sample.measured_s if sample.measured_s is not None else (old.measured_s if old else None),
            )
            self._fresh_s = self._clock()
            self._measured_s = self._fresh_s - self._sample_age_s(sample.measured_s)

    def _sample_age_s(self, box_ts: float | None) -> float:
        """How long before arriving the box measured a sample, from its own timestamp (unix
        seconds). A box's clock may be wrong, so the age counts only from 0 to half of
        ``stale_s``: a sample is never made stale by a clock, only placed before the limit
        changes that landed after it was measured (controller/ordering.py)."""
        if box_ts is None:
            return 0.0
        return min(max(0.0, time.time() - box_ts), self.stale_s / 2)

    @property
    def energy_wh(self) -> float | None:
        with self._lock:
            return self._meter.energy_wh if self._meter else None

    def session_event(self, event: SessionEvent) -> None:
        if self._on_session is not None:
            try:
                self._on_session(event)
            except Exception:  # the recorder's fault must not cost the box its answer
                log.exception("%s: the session event could not be recorded", self.id)
        self._notify()

    def _notify(self) -> None:
        if self._on_event is not None:
            self._on_event(self.id)
