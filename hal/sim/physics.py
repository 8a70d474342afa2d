"""Physics of a simulated site: a grid connection with its meter, and a ripple-control contact.

This module owns what the *site* adds to its wallboxes: the house base load per phase, the grid
meter that sees base load plus every car, the meter's import/export energies, and potential-free
contacts. The wallbox and its car are ``hal.sim.wallbox``; the clock and event queue they share
are ``hal.sim.timeline``; ``hal.sim.bank`` turns all of these values into Modbus registers.

The grid meter is a timeline observer: the timeline calls it before anything changes, so it
integrates only over intervals in which every current was constant, and a limit written between
two meter reads, or a watchdog that expired between them, is billed to the right interval.

The names that moved to ``hal.sim.wallbox`` and ``hal.sim.timeline`` are re-exported here, so
``from hal.sim.physics import SimCar, SimWallbox, ...`` keeps working.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hal.sim.timeline import Clock, SimTimeline
from hal.sim.wallbox import (
    DEFAULT_VOLTAGE_V,
    MIN_DRAW_A,
    KeepaliveOn,
    SimCar,
    SimWallbox,
    WallboxConfig,
    phase_index,
)
from hal.types import Phases3

__all__ = [
    "DEFAULT_VOLTAGE_V",
    "MIN_DRAW_A",
    "NOMINAL_FREQUENCY_HZ",
    "Clock",
    "KeepaliveOn",
    "SimCar",
    "SimContact",
    "SimGridMeter",
    "SimSite",
    "SimTimeline",
    "SimWallbox",
    "WallboxConfig",
    "phase_index",
]

NOMINAL_FREQUENCY_HZ = 50.0


class SimSite:
    """A grid connection: house base load per phase, the wallboxes, and the grid meter's view.

    The grid meter sees base load + every car's draw per phase. Positive current is import; a
    negative base load is a PV system feeding in (the meter then reports the current's magnitude,
    as a real meter does, and signed powers).
    """

    def __init__(
        self,
        *,
        base_load_a: Phases3 = (0.0, 0.0, 0.0),
        voltage_v: Phases3 = DEFAULT_VOLTAGE_V,
        import_wh: float = 0.0,
        export_wh: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.timeline = SimTimeline(clock)
        self.voltage_v = voltage_v
        self._base_load_a = base_load_a
        self._import_wh = import_wh
        self._export_wh = export_wh
        self._energy_t_s = self.timeline.now_s
        self._wallboxes: dict[str, SimWallbox] = {}
        self._grid_currents_cache: Phases3 = base_load_a
        self._watchers: list[Callable[[float, Phases3], None]] = []
        self.timeline.observe(self._integrate_to)
        #: The grid meter as a value source (``values()``), for a register bank.
        self.grid_meter = SimGridMeter(self)

    @property
    def lock(self) -> threading.RLock:
        return self.timeline.lock

    def add_wallbox(self, name: str, box: SimWallbox | None = None) -> SimWallbox:
        """Install a wallbox (a new default one when ``box`` is None) on this site's timeline."""
        box = box or SimWallbox()
        with self.lock:
            if name in self._wallboxes:
                raise ValueError(f"wallbox {name!r} already installed")
            box.join(self.timeline, self.voltage_v, self._currents_changed)
            self._wallboxes[name] = box
            self._currents_changed()
        return box

    def watch(self, callback: Callable[[float, Phases3], None]) -> None:
        """``callback(t, grid_currents)`` after every change of the grid currents (lock held).

        For tests that check a limit at every instant, not only when a meter happens to be read:
        each write to a box, each watchdog expiry, each step of the house load.
        """
        with self.lock:
            self._watchers.append(callback)

    def wallbox(self, name: str) -> SimWallbox:
        with self.lock:
            return self._wallboxes[name]

    @property
    def wallboxes(self) -> dict[str, SimWallbox]:
        with self.lock:
            return dict(self._wallboxes)

    # -- scenario hooks ----------------------------------------------------------------------

    def plug_car(self, box: SimWallbox | str, car: SimCar | None = None) -> None:
        self._box(box).plug(car or SimCar())

    def unplug(self, box: SimWallbox | str) -> None:
        self._box(box).unplug()

    def set_base_load(self, l1_a: float, l2_a: float, l3_a: float) -> None:
        with self.lock:
            self.timeline.sync()
            self._base_load_a = (l1_a, l2_a, l3_a)
            self._currents_changed()

    def update(self, now_s: float | None = None) -> float:
        """Integrate everything up to ``now_s`` (default: the clock)."""
        return self.timeline.sync(now_s)

    advance = update

    # -- grid meter --------------------------------------------------------------------------

    @property
    def base_load_a(self) -> Phases3:
        """The house's own load per phase, without the wallboxes."""
        with self.lock:
            return self._base_load_a

    def grid_currents_a(self) -> Phases3:
        """Signed per-phase current at the grid connection (positive = import)."""
        with self.lock:
            self.timeline.sync()
            return self._grid_currents_cache

    def grid_power_w(self) -> float:
        with self.lock:
            self.timeline.sync()
            return self._grid_power_w()

    def meter_values(self) -> dict[str, object]:
        """Every named value of the grid meter, consistent at one instant."""
        with self.lock:
            self.timeline.sync()
            currents = self._grid_currents_cache
            values: dict[str, object] = {
                "power_w": self._grid_power_w(),
                "import_wh": self._import_wh,
                "export_wh": self._export_wh,
                "frequency_hz": NOMINAL_FREQUENCY_HZ,
                "power_factor": 1.0,
            }
            for i in range(3):
                values[f"current_l{i + 1}_a"] = abs(currents[i])
                values[f"voltage_l{i + 1}_v"] = self.voltage_v[i]
                values[f"power_l{i + 1}_w"] = currents[i] * self.voltage_v[i]
                values[f"power_factor_l{i + 1}"] = 1.0
            values["current_sum_a"] = sum(abs(c) for c in currents)
            values["voltage_avg_v"] = sum(self.voltage_v) / 3
            return values

    # -- internals (lock held) ---------------------------------------------------------------

    def _integrate_to(self, t_s: float) -> None:
        """Timeline observer: the grid power was constant since the last call."""
        dt_s = t_s - self._energy_t_s
        if dt_s <= 0:
            return
        power_w = self._grid_power_w()
        if power_w >= 0:
            self._import_wh += power_w * dt_s / 3600.0
        else:
            self._export_wh += -power_w * dt_s / 3600.0
        self._energy_t_s = t_s

    def _currents_changed(self) -> None:
        """A wallbox's or the house's currents changed: sum again (exactly, no running float sum)."""
        totals = list(self._base_load_a)
        for box in self._wallboxes.values():
            for i, current_a in enumerate(box._currents_a()):
                totals[i] += current_a
        before, self._grid_currents_cache = self._grid_currents_cache, (totals[0], totals[1], totals[2])
        if self._watchers and self._grid_currents_cache != before:
            for callback in self._watchers:
                callback(self.timeline.now_s, self._grid_currents_cache)

    def _box(self, box: SimWallbox | str) -> SimWallbox:
        return self.wallbox(box) if isinstance(box, str) else box

    def _grid_power_w(self) -> float:
        return sum(i * v for i, v in zip(self._grid_currents_cache, self.voltage_v))


class SimGridMeter:
    """The grid meter of a :class:`SimSite` as a value source: ``values()`` like a wallbox has."""

    def __init__(self, site: SimSite) -> None:
        self.site = site

    def values(self) -> dict[str, object]:
        return self.site.meter_values()


class SimContact:
    """A potential-free relay contact, e.g. of a ripple-control receiver (closed or open).

    Whether a closed contact means "restrict" is the input's configuration, never the simulator's.
    A broken wire or a dead I/O module is simulated at the server (a silent unit), not here.
    """

    def __init__(self, closed: bool = False) -> None:
        self._lock = threading.Lock()
        self._closed = closed

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def set(self, closed: bool) -> None:
        with self._lock:
            self._closed = closed
