"""One order for reads and landed writes, with the moment each place in it was handed out.

The writer lets an increase go out only from readings taken after the last limit change landed
(controller/write_plan.py). For a reading taken during ``read()`` the order is the moment the
read started. A box that pushes its values (an OCPP box sends MeterValues every sample interval,
up to one interval late) hands back a reading measured earlier than it was fetched: it must take
its place in the order at the moment it was measured, or a limit change that landed in between
would look already seen, and "other consumption" (grid − chargers) would swing with the lag.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable

#: How many places are remembered: at a few reads and writes per device and cycle this spans
#: minutes, far longer than any reading stays fresh (``stale_s``).
KEEP = 4096


class Sequence:
    """Hands out 1, 2, 3, ... (thread-safe) and can say which number was current at a moment."""

    def __init__(self, monotonic: Callable[[], float], keep: int = KEEP) -> None:
        self._monotonic = monotonic
        self._keep = keep
        self._count = itertools.count(1)
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._numbers: list[int] = []

    def __call__(self) -> int:
        with self._lock:
            number = next(self._count)
            self._times.append(self._monotonic())
            self._numbers.append(number)
            if len(self._numbers) > 2 * self._keep:
                del self._times[: self._keep], self._numbers[: self._keep]
            return number

    def at(self, moment: float) -> int:
        """The last number handed out at or before ``moment`` (0 when none is remembered): a
        reading measured then is ordered after it and before everything that came later."""
        with self._lock:
            i = bisect.bisect_right(self._times, moment)
            return self._numbers[i - 1] if i else 0
