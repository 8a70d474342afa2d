"""The loop's sense of time, injectable so that tests move time instead of sleeping.

Two kinds of time: a monotonic clock for cycles, staleness and pauses (never jumps when NTP
corrects the wall clock), and the local wall clock for the formula symbols ``hour``, ``minute``
and ``weekday``.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def now(self) -> datetime:
        """Local wall-clock time (for time-of-day formulas)."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set or ``timeout_s`` has passed; True when the event was set."""
        ...


class SystemClock:
    """The real clocks of the machine."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))


class FakeClock:
    """A clock for tests: time only moves when told to, or when the loop waits on it.

    ``wait`` returns at once: if the event is set it returns True without moving time, else it
    advances time by ``timeout_s`` as if the wait had run out.
    """

    def __init__(self, start_s: float = 1000.0, wall: datetime | None = None) -> None:
        self._t = start_s
        self._wall0 = wall or datetime(2026, 1, 5, 12, 0, 0)  # a Monday at noon
        self._start = start_s
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._t

    def now(self) -> datetime:
        with self._lock:
            return self._wall0 + timedelta(seconds=self._t - self._start)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        self.advance(max(0.0, timeout_s))
        return False
