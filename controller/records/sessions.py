"""The session log: every charging session of every charger (car connected → car gone), in
``state_dir/sessions.sqlite3`` (docs/sessions.md says what starts and ends one).

One table ``sessions``, one row per session, written as a whole (an upsert by ``id``) whenever
the session starts, ends, or has made progress worth keeping (``SessionRecorder``). A row whose
``end_ts`` is NULL is a session still open: after a restart the recorder continues it instead of
starting another. ``backend_transaction_id`` is never written by those upserts: only
``set_backend_transaction_id`` sets it (a backend gateway that learns its own id for a session).

The file, the queue and the writer thread are the grid log's (``RecordWriter``,
``sqlite_file``): the control loop and the OCPP thread only append to a queue, a corrupt or
foreign file is kept aside (``sessions.sqlite3.corrupt-<UTC>``) with a status fault and a new one
started, a failing write is retried with a status fault, a full queue is logged and counted.

**Retention, bounded.** Sessions are billing records and small (about 130 bytes a row, measured
by ``tests/unit/test_sessions.py::test_a_session_takes_about_130_bytes``): they are
kept ``RETENTION_S`` (ten years, as long as bookkeeping records are kept in Germany) after their
end, and at most ``MAX_ROWS`` (one million rows, about 130 MB: ten sessions a day on each of
ten chargers for 27 years); beyond that the oldest ended sessions go first, with ``log.warning``. Open
sessions are never pruned.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.records.record_writer import DAY_S, RecordUnavailable, RecordWriter, Row, time_range
from controller.records.sqlite_file import CHECK_BUDGET_S, FileSpec, RecordFileError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RETENTION_S = 3653 * DAY_S  # ten years
MAX_ROWS = 1_000_000
MAX_QUEUE = 10_000
ENERGY_SOURCES = ("register", "counted")

#: The columns a session row is written with, in this order (``backend_transaction_id`` apart).
FIELDS = ("id", "charger_id", "start_ts", "end_ts", "start_wh", "end_wh", "energy_wh", "energy_source",
          "id_tag", "transaction_id", "stop_reason", "updated_ts")
COLUMNS = (("id", "INTEGER"), ("charger_id", "TEXT"), ("start_ts", "REAL"), ("end_ts", "REAL"),
           ("start_wh", "REAL"), ("end_wh", "REAL"), ("energy_wh", "REAL"), ("energy_source", "TEXT"),
           ("id_tag", "TEXT"), ("transaction_id", "INTEGER"), ("stop_reason", "TEXT"),
           ("updated_ts", "REAL"), ("backend_transaction_id", "TEXT"))
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions(id INTEGER PRIMARY KEY, charger_id TEXT NOT NULL,"
    " start_ts REAL, end_ts REAL, start_wh REAL, end_wh REAL, energy_wh REAL,"
    " energy_source TEXT NOT NULL, id_tag TEXT, transaction_id INTEGER, stop_reason TEXT,"
    " updated_ts REAL NOT NULL, backend_transaction_id TEXT)",
    "CREATE INDEX IF NOT EXISTS sessions_start ON sessions(coalesce(start_ts, end_ts))",
    "CREATE INDEX IF NOT EXISTS sessions_open ON sessions(end_ts)",
)
_UPSERT = (f"INSERT INTO sessions({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"
           " ON CONFLICT(id) DO UPDATE SET "
           + ", ".join(f"{name} = excluded.{name}" for name in FIELDS[1:]))
_SET_BACKEND = "UPDATE sessions SET backend_transaction_id = ? WHERE id = ?"
_SELECT = f"SELECT {', '.join(FIELDS)}, backend_transaction_id FROM sessions"
_ORDER = "coalesce(start_ts, end_ts)"
# Row kinds in the queue (the second item of a row; the first is its time).
_SESSION, _BACKEND = "session", "backend"


class SessionLogFileError(RecordFileError):
    """The session log cannot be opened for writing (read-only, no permission, no space)."""


class SessionLogUnavailable(RecordUnavailable):
    """``query()`` cannot read the session log now; the API answers 503 with ``str()``."""


SPEC = FileSpec(label="session log", table="sessions", columns=COLUMNS, schema=_SCHEMA,
                version=SCHEMA_VERSION, logger=__name__, error=SessionLogFileError)


@dataclass(frozen=True)
class Session:
    """One charging session. ``end_ts`` None: still open. ``start_ts`` None: the start is not
    known (a box reported a stop we never saw the start of). ``energy_wh`` None: not known (a
    box's register that went backwards between start and stop). ``start_wh``/``end_wh`` are the
    energy register at start and at the end (while open: the latest seen); for ``counted``
    energy there is no register and both are None."""

    id: int
    charger_id: str
    start_ts: float | None
    end_ts: float | None
    start_wh: float | None
    end_wh: float | None
    energy_wh: float | None
    energy_source: str  # "register" | "counted"
    id_tag: str | None = None
    transaction_id: int | None = None  # the box's own (OCPP)
    stop_reason: str | None = None
    updated_ts: float = 0.0
    backend_transaction_id: str | None = None  # the backend's; set only by set_backend_transaction_id

    @property
    def open(self) -> bool:
        return self.end_ts is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fields(self) -> tuple[Any, ...]:
        """The values of ``FIELDS``, in that order."""
        return tuple(getattr(self, name) for name in FIELDS)


class SessionLog(RecordWriter):
    """SQLite ``state_dir/sessions.sqlite3`` behind a queue and one writer thread (module doc).

    ``open()`` also reads the sessions still open in the file (``open_sessions``) and where the
    ids go on from (``new_id``), so that the recorder can continue them after a restart.
    """

    spec = SPEC
    thread_name = "session-log"
    unavailable = SessionLogUnavailable

    def __init__(self, path: Path, *, retention_s: float = RETENTION_S, max_rows: int = MAX_ROWS,
                 clock: Callable[[], float] = time.time, max_queue: int = MAX_QUEUE,
                 prune_every_s: float = DAY_S, check_budget_s: float = CHECK_BUDGET_S) -> None:
        super().__init__(path, retention_s=retention_s, clock=clock, max_queue=max_queue,
                         prune_every_s=prune_every_s, check_budget_s=check_budget_s)
        self.max_rows = max_rows
        self._open_at_start: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()

    def _after_open(self, conn: sqlite3.Connection) -> None:
        """Where ids go on from, and the sessions left open (the newest of each charger; an older
        open one of the same charger, which cannot happen unless the file was edited, is left)."""
        high = conn.execute("SELECT max(id) FROM sessions").fetchone()[0]
        self._ids = itertools.count(int(high or 0) + 1)
        rows = conn.execute(f"{_SELECT} WHERE end_ts IS NULL ORDER BY id").fetchall()
        self._open_at_start = {session.charger_id: session for session in map(_session, rows)}
        if self._open_at_start:
            log.info("session log: %d session(s) open at start: %s", len(rows),
                     ", ".join(sorted(self._open_at_start)))

    def open_sessions(self) -> dict[str, Session]:
        """The sessions that were open in the file at ``open()``, by charger."""
        return dict(self._open_at_start)

    def new_id(self) -> int:
        """A session id never used in this file (thread-safe)."""
        with self._id_lock:
            return next(self._ids)

    # ---- writing -----------------------------------------------------------------------------
    def save(self, session: Session) -> None:
        """Queue the session's row as it is now (never blocks, never touches the disk)."""
        if session.energy_source not in ENERGY_SOURCES:
            raise ValueError(f"unknown energy source {session.energy_source!r}")
        self._enqueue((session.updated_ts, _SESSION, *session.fields()),
                      f"session {session.id} of {session.charger_id}")

    def set_backend_transaction_id(self, session_id: int, backend_transaction_id: str | None) -> None:
        """Set (None: clear) the backend's transaction id of a session, after any save of it
        queued before. An id that no session has changes nothing."""
        self._enqueue((self._clock(), _BACKEND, backend_transaction_id, session_id),
                      f"the backend transaction id of session {session_id}")

    def _insert(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        with conn:
            for row in rows:
                conn.execute(_UPSERT if row[1] == _SESSION else _SET_BACKEND, row[2:])

    def _prune_rows(self, conn: sqlite3.Connection, cutoff: float) -> int:
        """Ended sessions older than the retention, then the oldest ended ones beyond ``max_rows``."""
        with conn:
            old = conn.execute("DELETE FROM sessions WHERE end_ts IS NOT NULL AND end_ts < ?",
                               (cutoff,)).rowcount
            count = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
            excess = max(0, int(count) - self.max_rows)
            over = conn.execute(f"DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE end_ts IS "
                                f"NOT NULL ORDER BY {_ORDER}, id LIMIT ?)", (excess,)).rowcount if excess else 0
        if over:
            log.warning("session log: over %d rows; deleted the %d oldest ended session(s)",
                        self.max_rows, over)
        return int(old) + int(over)

    # ---- reading -----------------------------------------------------------------------------
    def query(self, from_ts: float | None = None, to_ts: float | None = None,
              limit: int = 10000, *, newest_first: bool = False) -> list[Session]:
        """Sessions that started in ``from_ts <= start < to_ts`` (a session whose start is not
        known counts by its end), oldest first (newest first with ``newest_first``), at most
        ``limit``; open sessions included, as last saved. What is still queued is not seen
        (``flush`` first). Raises SessionLogUnavailable when the file cannot be read now."""
        where, params = time_range(from_ts, to_ts, _ORDER)
        order = f"{_ORDER} DESC, id DESC" if newest_first else f"{_ORDER}, id"
        rows = self._read(f"{_SELECT}{where} ORDER BY {order} LIMIT ?", [*params, max(0, int(limit))])
        return [_session(row) for row in rows]


def _session(row: tuple[Any, ...]) -> Session:
    return Session(*row)


__all__ = ["ENERGY_SOURCES", "FIELDS", "MAX_ROWS", "RETENTION_S", "SPEC", "Session", "SessionLog",
           "SessionLogFileError", "SessionLogUnavailable"]
