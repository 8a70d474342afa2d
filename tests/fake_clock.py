"""The one clock double of the test suite: time moves only when a test moves it (or sleeps on it).

The code under test takes time in three shapes, and one ``FakeClock`` serves them all, so that a
test which drives the simulator, the bus and the loop together moves one time for all of them:

- ``controller.clock.Clock`` (the loop): ``monotonic()``, ``now()`` and ``wait(event, timeout_s)``;
- a bare ``Callable[[], float]`` (``hal.sim``, ``web.auth``'s throttle, the grid log, the variable
  saver, ``hal.modbus.bus``'s ``clock=``): the clock itself is callable; ``monotonic`` and
  ``time`` are the same reading under the names those parameters suggest;
- ``sleep`` (``hal.modbus.bus``'s ``sleep=``): moves time instead of waiting, and records each
  sleep in ``sleeps`` so that a test can check the gaps that were asked for.

``real_time=True`` lets the machine's monotonic time flow on top of the moves: for tests that do
real I/O whose latency the code measures on its clock, but that must skip backoffs and gaps.

The number is whatever the test starts it at: ``1000.0`` by default (a monotonic reading), or a
Unix time such as 2026-01-01T00:00:00Z for code that stamps records with it. ``now()`` is the
wall clock for time-of-day formulas: ``wall`` (a Monday at noon by default) plus the seconds moved.
"""

from __future__ import annotations

import threading
import time as _time
from datetime import datetime, timedelta

MONDAY_NOON = datetime(2026, 1, 5, 12, 0, 0)


class FakeClock:
    """A clock for tests; thread-safe, since the simulator and the loop read it from threads."""

    def __init__(self, t_s: float = 1000.0, *, wall: datetime | None = None, real_time: bool = False) -> None:
        self._start_s = t_s
        self._moved_s = 0.0
        self._wall0 = wall or MONDAY_NOON
        self._real0 = _time.monotonic() if real_time else None
        self._lock = threading.Lock()
        self.sleeps: list[float] = []  # every ``sleep`` asked for, in order

    def _elapsed_s(self) -> float:
        real_s = _time.monotonic() - self._real0 if self._real0 is not None else 0.0
        return self._moved_s + real_s

    def __call__(self) -> float:
        """The current reading, in seconds."""
        with self._lock:
            return self._start_s + self._elapsed_s()

    def monotonic(self) -> float:
        return self()

    def time(self) -> float:
        return self()

    def now(self) -> datetime:
        """Local wall-clock time: ``wall`` plus the seconds since the start."""
        with self._lock:
            return self._wall0 + timedelta(seconds=self._elapsed_s())

    def advance(self, seconds: float) -> None:
        """Move time forward (or back, for a test of a clock that jumps)."""
        with self._lock:
            self._moved_s += seconds

    def sleep(self, seconds: float) -> None:
        """Return at once, ``seconds`` later on this clock; recorded in ``sleeps``."""
        with self._lock:
            self.sleeps.append(seconds)
            self._moved_s += max(0.0, seconds)

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """``Clock.wait`` at once: True without moving time when ``event`` is set, else time
        moves by ``timeout_s`` as if the wait had run out."""
        if event.is_set():
            return True
        self.advance(max(0.0, timeout_s))
        return False
