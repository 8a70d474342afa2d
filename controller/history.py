"""The last 24 hours of the site in memory, for the status page's chart (``get_history``).

A cycle listener (``History.on_cycle``, on the loop thread) folds every cycle into the bucket of
its time: grid power and the chargers' total power as min / max / average, and the two site
limits in force (``grid_limit_w``, ``chargers_limit_w``) as the lowest of the bucket, because a
chart of limits must show the tightest one that acted. A bucket is ``bucket_s`` (30 s) wide; the
finished ones go into a ring of ``span_s / bucket_s`` (2880) entries, so memory is bounded
(about 0.5 MiB) whatever the uptime, and a cycle costs a few comparisons and additions under a
lock held for microseconds: the loop never notices it. ``snapshot()`` (any thread) copies the
ring under the same lock.

Why in memory and not in SQLite: the chart is for looking at the site now and today; it need not
survive a restart, and a write per cycle would wear the SD card for nothing. The grid signal log
keeps what must be kept.

Times are wall-clock unix seconds (``clock``, ``time.time`` by default), the time a person
reads on the chart. When the clock jumps back (an NTP correction after a boot without network),
the buckets from the future are dropped, so the times in the ring always increase.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from controller.status import ChargerStatus, Status
from hal.types import ChargerReading

log = logging.getLogger(__name__)

BUCKET_S = 30.0
SPAN_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Spread:
    """Min, max and average of one value over a bucket's cycles that knew it."""

    min: float
    max: float
    avg: float


@dataclass(frozen=True, slots=True)
class Bucket:
    """One ``bucket_s`` of the site. A value no cycle of the bucket knew is None."""

    t: float  # start of the bucket, unix seconds (a multiple of bucket_s)
    cycles: int
    grid_w: Spread | None
    chargers_w: Spread | None
    grid_limit_w: float | None  # the lowest in force during the bucket; None: no limit all along
    chargers_limit_w: float | None
    failsafe: bool  # the fail-safe limit was in force in at least one cycle


class _Stat:
    """A running min / max / sum of one value (mutable, loop thread only)."""

    __slots__ = ("count", "low", "high", "total")

    def __init__(self) -> None:
        self.count = 0
        self.low = math.inf
        self.high = -math.inf
        self.total = 0.0

    def add(self, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        self.count += 1
        self.total += value
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value

    def spread(self) -> Spread | None:
        return Spread(self.low, self.high, self.total / self.count) if self.count else None

    def lowest(self) -> float | None:
        return self.low if self.count else None


class _OpenBucket:
    """The bucket the cycles are folded into now."""

    __slots__ = ("t", "cycles", "grid", "chargers", "grid_limit", "chargers_limit", "failsafe")

    def __init__(self, t: float) -> None:
        self.t = t
        self.cycles = 0
        self.grid = _Stat()
        self.chargers = _Stat()
        self.grid_limit = _Stat()
        self.chargers_limit = _Stat()
        self.failsafe = False

    def add(self, status: Status, chargers_w: float | None) -> None:
        self.cycles += 1
        self.grid.add(status.grid_power_w)
        self.chargers.add(chargers_w)
        self.grid_limit.add(status.grid_limit_w)
        self.chargers_limit.add(status.chargers_limit_w)
        self.failsafe = self.failsafe or status.failsafe is not None

    def frozen(self) -> Bucket:
        return Bucket(t=self.t, cycles=self.cycles, grid_w=self.grid.spread(), chargers_w=self.chargers.spread(),
                      grid_limit_w=self.grid_limit.lowest(), chargers_limit_w=self.chargers_limit.lowest(),
                      failsafe=self.failsafe)


def charger_power_w(charger: ChargerStatus, voltage_v: float) -> float | None:
    """What a charger draws now (W): its power reading, else its currents times the voltage;
    None while it is offline (its last reading is old)."""
    device = charger.device
    reading = device.reading
    if not device.online or not isinstance(reading, ChargerReading):
        return None
    if reading.power_w is not None and math.isfinite(reading.power_w):
        return max(0.0, reading.power_w)
    return max(0.0, sum(reading.current_a) * voltage_v)


def chargers_power_w(status: Status, voltage_v: float) -> float | None:
    """The chargers' total power (W) over those that are online; None when none is."""
    powers = [p for ch in status.chargers if (p := charger_power_w(ch, voltage_v)) is not None]
    return sum(powers) if powers else None


class History:
    """The ring of buckets (module docstring). ``on_cycle`` is the loop's cycle listener."""

    def __init__(self, *, voltage_v: float = 230.0, bucket_s: float = BUCKET_S, span_s: float = SPAN_S,
                 clock: Callable[[], float] = time.time) -> None:
        if bucket_s <= 0 or span_s < bucket_s:
            raise ValueError("bucket_s must be positive and span_s at least one bucket")
        self.bucket_s = bucket_s
        self.span_s = span_s
        self.voltage_v = voltage_v
        self._clock = clock
        self._lock = threading.Lock()
        self._done: deque[Bucket] = deque(maxlen=int(math.ceil(span_s / bucket_s)))
        self._open: _OpenBucket | None = None
        self._last_cycle = -1

    def now(self) -> float:
        """The history's clock (unix seconds): the answer's ``now`` beside its buckets."""
        return self._clock()

    @property
    def capacity(self) -> int:
        """The most buckets kept (the ring's size)."""
        return self._done.maxlen or 0

    def on_cycle(self, status: Status) -> None:
        """Fold one cycle in (loop thread). A status seen before (a failed cycle republishes the
        last one) adds nothing."""
        if status.cycle_count == self._last_cycle or status.cycle_count == 0:
            return
        self._last_cycle = status.cycle_count
        chargers_w = chargers_power_w(status, self.voltage_v)
        now = self._clock()
        start = math.floor(now / self.bucket_s) * self.bucket_s
        with self._lock:
            current = self._open
            if current is None or start != current.t:
                if current is not None and start < current.t:
                    self._clock_went_back(start)
                elif current is not None:
                    self._done.append(current.frozen())  # a full ring drops its oldest: O(1)
                current = self._open = _OpenBucket(start)
            current.add(status, chargers_w)

    def _clock_went_back(self, start: float) -> None:
        """Drop what lies at or after ``start`` (lock held; rare: a clock correction)."""
        dropped = 1
        while self._done and self._done[-1].t >= start:
            self._done.pop()
            dropped += 1
        log.warning("history: the clock went back; dropped %d bucket(s) from the future", dropped)

    def snapshot(self, since: float | None = None) -> list[Bucket]:
        """The buckets of the last ``span_s`` (oldest first), the one being filled last; only
        those starting at or after ``since`` when given (a page that has the rest already)."""
        cutoff = self._clock() - self.span_s
        if since is not None:
            cutoff = max(cutoff, since - 1e-6)
        with self._lock:
            buckets: list[Bucket] = []
            for bucket in reversed(self._done):  # newest first: a page asking for the last few stops early
                if bucket.t < cutoff:
                    break
                buckets.append(bucket)
            current = self._open.frozen() if self._open is not None and self._open.t >= cutoff else None
        buckets.reverse()
        if current is not None:
            buckets.append(current)
        return buckets
