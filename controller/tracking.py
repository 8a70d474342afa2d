"""Every reading is a value or a fault with an age.

A ``DeviceTracker`` remembers a device's last good reading and when it was taken, and the fault
in force with the time it started. It logs a fault once when it starts and once when it ends
(Home Assistant's rule: never a log line per failed poll). Used by the loop thread only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("gridcharge.faults")
R = TypeVar("R")


@dataclass
class DeviceTracker(Generic[R]):
    id: str
    reading: R | None = None
    read_at_s: float | None = None  # when the reading was taken
    read_seq: int | None = None  # its place in the order of reads and writes (controller/write_plan.py)
    error: str | None = None
    error_since_s: float | None = None
    #: The last write to the box (limit or setup) failed: a fault until a write lands, whatever
    #: the reads say (a box that rejects its limit still answers reads).
    write_error: str | None = None

    def ok(self, reading: R, now_s: float, seq: int | None = None) -> None:
        """A good reading taken at ``now_s``; ``seq`` orders it against the limit writes."""
        if self.error is not None:
            lasted = now_s - (self.error_since_s or now_s)
            log.warning("%s: back after %.1f s (%s)", self.id, lasted, self.error)
        self.reading, self.read_at_s, self.read_seq = reading, now_s, seq
        self.error, self.error_since_s = None, None

    def fail(self, error: str, now_s: float) -> None:
        if self.error is None:
            log.warning("%s: fault: %s", self.id, error)
            self.error_since_s = now_s
        self.error = error

    def write_failed(self, error: str, now_s: float) -> None:
        if self.write_error is None:
            log.warning("%s: fault: %s", self.id, error)
        self.write_error = error

    def write_landed(self) -> None:
        if self.write_error is not None:
            log.warning("%s: write fault over (%s)", self.id, self.write_error)
        self.write_error = None

    def age_s(self, now_s: float) -> float | None:
        """Seconds since the reading was taken (0 for one taken during this cycle's reads)."""
        return None if self.read_at_s is None else max(0.0, now_s - self.read_at_s)

    def fresh(self, now_s: float, stale_s: float) -> bool:
        """A usable reading: one no older than ``stale_s``."""
        age = self.age_s(now_s)
        return age is not None and age <= stale_s

    def error_s(self, now_s: float) -> float:
        return 0.0 if self.error_since_s is None else now_s - self.error_since_s

    def fault_key(self, now_s: float, stale_s: float) -> str | None:
        """The fault in force without what changes while it lasts (a stale reading's age): the
        same text from one cycle to the next, for records that note a fault once."""
        text = self.fault_text(now_s, stale_s)
        if text is not None and self.error is None and self.read_at_s is not None:
            return "stale"
        return text

    def fault_text(self, now_s: float, stale_s: float) -> str | None:
        """The fault in force for the status API: an error, a reading too old to use, or a
        write that failed."""
        text = self._read_fault(now_s, stale_s)
        return self.write_error if text is None else text

    def _read_fault(self, now_s: float, stale_s: float) -> str | None:
        if self.error is not None and not self.fresh(now_s, stale_s):
            return self.error
        if self.read_at_s is None:
            return self.error or "not read yet"
        if not self.fresh(now_s, stale_s):
            return f"stale ({self.age_s(now_s):.1f} s)"
        return None


class FaultLog:
    """Logs named conditions (formula errors, fail-safe) once at start and once at end."""

    def __init__(self) -> None:
        self._active: dict[str, str] = {}

    def update(self, current: dict[str, str]) -> None:
        for key, text in current.items():
            if key not in self._active:
                log.warning("%s: %s", key, text)
        for key, text in self._active.items():
            if key not in current:
                log.warning("%s: cleared (was: %s)", key, text)
        self._active = dict(current)
