"""The grid log's size budget (``grid_log.max_bytes``, default 1 GB): a full SD card would stop
the whole state directory (saved variables too), so the log keeps itself under a fixed size,
and it says so well before that costs any of the two-year record that §14a EnWG asks for.

- **Counted:** the pages in use, ``(page_count - freelist_count) * page_size``. SQLite reuses
  freed pages, so the file stays at its high-water mark and never grows much past the budget; it
  is not shrunk (``VACUUM`` needs the space twice and minutes on an SD card).
- **Warning first:** when the rows of the last two years take ``WARN_FRACTION`` (80 %) of the
  budget, a warning in the log (once) and a status fault (while it lasts): raise
  ``grid_log.max_bytes`` before the record has to be cut.
- **Over budget:** the oldest rows go until the log is back under ``TRIM_FRACTION`` (95 %) of
  the budget: first rows older than two years (the month of margin the daily prune keeps), then,
  only when that is not enough, the oldest rows within two years, with ``log.error`` and a status
  fault that stays until the process restarts.
- **Cheap:** row counts are estimated from the id range (ids only grow, and rows leave oldest
  first), so a check is a few index lookups, never a scan; the writer runs it after each insert.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import dataclass

from controller.records.gridlog_file import used_bytes
from controller.records.statedir import utc_text

log = logging.getLogger("controller.records.gridlog")

DAY_S = 86400.0
TWO_YEARS_S = 730 * DAY_S
WARN_FRACTION = 0.8
TRIM_FRACTION = 0.95
MAX_PASSES = 8  # each pass deletes the estimated excess; estimates may fall short


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class Trim:
    """What one budget check deleted."""

    old_rows: int = 0  # older than two years
    recent_rows: int = 0  # within the last two years
    recent_first_ts: float | None = None
    recent_last_ts: float | None = None


class SizeBudget:
    """Keeps one log under ``max_bytes`` (module docstring). Used by the writer thread only,
    except ``faults()``, which reads two attributes any thread may read."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.warning: str | None = None  # the status line while the two-year record nears the budget
        self.recent_deleted = 0  # rows within two years deleted since start
        self.recent_deleted_last_ts: float | None = None

    def faults(self) -> tuple[str, ...]:
        lines = [self.warning] if self.warning else []
        if self.recent_deleted:
            last = self.recent_deleted_last_ts
            lines.append(f"grid log: {self.recent_deleted} row(s) within the last two years deleted "
                         f"since start to stay under grid_log.max_bytes ({megabytes(self.max_bytes)}), "
                         f"the newest from {utc_text(last) if last is not None else 'unknown'}; "
                         "raise grid_log.max_bytes")
        return tuple(lines)

    def check(self, conn: sqlite3.Connection, now: float) -> Trim:
        """Trim when over budget, then update the warning. Raises sqlite3.Error."""
        used = used_bytes(conn)
        trim = Trim()
        if used > self.max_bytes:
            trim = self._trim(conn, now, used)
            used = used_bytes(conn)
        self._update_warning(conn, now, used)
        return trim

    def _trim(self, conn: sqlite3.Connection, now: float, used: int) -> Trim:
        cutoff = now - TWO_YEARS_S
        target = self.max_bytes * TRIM_FRACTION
        old = recent = 0
        first: float | None = None
        last: float | None = None
        for _ in range(MAX_PASSES):
            if used <= target:
                break
            rows = _row_estimate(conn)
            if rows == 0:
                break
            need = max(1, math.ceil((used - target) / (used / rows)))
            with conn:
                n_old = conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? ORDER BY ts, id LIMIT ?)",
                    (cutoff, need)).rowcount
                n_recent = 0
                if n_old < need:
                    span = conn.execute("SELECT min(ts), max(ts) FROM (SELECT ts FROM events ORDER BY ts, id "
                                        "LIMIT ?)", (need - n_old,)).fetchone()
                    n_recent = conn.execute(
                        "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts, id LIMIT ?)",
                        (need - n_old,)).rowcount
                    if n_recent:
                        first = span[0] if first is None else first
                        last = span[1]
            old += n_old
            recent += n_recent
            if n_old + n_recent == 0:
                break
            used = used_bytes(conn)
        if old:
            log.warning("grid log over grid_log.max_bytes (%s): deleted the %d oldest row(s), older "
                        "than two years", megabytes(self.max_bytes), old)
        if recent:
            self.recent_deleted += recent
            self.recent_deleted_last_ts = last
            log.error("GRID LOG OVER BUDGET: deleted %d row(s) WITHIN THE LAST TWO YEARS (%s to %s) "
                      "to stay under grid_log.max_bytes (%s); raise grid_log.max_bytes", recent,
                      utc_text(first or 0.0), utc_text(last or 0.0), megabytes(self.max_bytes))
        return Trim(old, recent, first, last)

    def _update_warning(self, conn: sqlite3.Connection, now: float, used: int) -> None:
        threshold = self.max_bytes * WARN_FRACTION
        recent_bytes = 0.0
        if used >= threshold:  # the two-year part cannot be larger than the whole
            rows = _row_estimate(conn)
            recent_rows = _recent_row_estimate(conn, now - TWO_YEARS_S)
            recent_bytes = used * recent_rows / rows if rows else 0.0
        if recent_bytes >= threshold:
            share = 100.0 * recent_bytes / self.max_bytes
            line = (f"grid log: the last two years of records take about {megabytes(recent_bytes)}, "
                    f"{share:.0f} % of grid_log.max_bytes ({megabytes(self.max_bytes)}); at the limit "
                    "the oldest rows within two years are deleted: raise grid_log.max_bytes")
            if self.warning is None:
                log.warning("%s", line)
            self.warning = line
        elif self.warning is not None:
            log.info("grid log: the last two years of records fit grid_log.max_bytes again")
            self.warning = None


def _row_estimate(conn: sqlite3.Connection) -> int:
    low = conn.execute("SELECT min(id) FROM events").fetchone()[0]
    high = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    return 0 if low is None or high is None else int(high - low + 1)


def _recent_row_estimate(conn: sqlite3.Connection, cutoff: float) -> int:
    first = conn.execute("SELECT id FROM events WHERE ts >= ? ORDER BY ts, id LIMIT 1", (cutoff,)).fetchone()
    if first is None:
        return 0
    high = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    return max(0, int(high - first[0] + 1))


__all__ = ["SizeBudget", "TRIM_FRACTION", "TWO_YEARS_S", "Trim", "WARN_FRACTION", "megabytes"]
