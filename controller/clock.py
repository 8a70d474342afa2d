"""The loop's sense of time, injectable so that tests move time instead of sleeping (the
test suite's ``FakeClock`` in ``tests/fake_clock.py`` serves this protocol).

Two kinds of time: a monotonic clock for cycles, staleness and pauses (never jumps when NTP
corrects the wall clock), and the local wall clock for the formula symbols ``hour``, ``minute``
and ``weekday``.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
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

