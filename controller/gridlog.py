"""The grid signal log (SPEC §1 item 7): every grid signal and every change of a limit in force,
with time, source, old and new value and the grid power at that moment, kept at least two years
(§14a EnWG wants this record).

This module owns ``state_dir/gridlog.sqlite3`` (one table ``events``, an index on ``ts``, values
as JSON text) and the observer that fills it:

- ``GridLog.record()`` only appends to a bounded in-memory queue (a lock and a list append), so
  the control loop and the API threads never wait for the SD card. One writer thread inserts
  whatever is queued in one transaction, prunes rows older than ``retention_s`` at start and then
  once a day, and is the only user of its connection. ``query()`` opens its own connection on the
  caller's thread (WAL: readers and the writer do not block each other).
- **Full queue: never silent.** Blocking would stall the control loop behind a hung disk, so a
  record that finds the queue full (``max_queue`` rows, hours of normal traffic) is dropped, with
  ``log.error`` once per streak, and the writer inserts a ``gap`` row (``new`` = how many rows
  were lost between which times) as soon as it can write again: the record itself says where it
  is incomplete. A failed insert (disk full, I/O error) keeps its rows and retries with backoff.
- **synchronous=FULL**, not NORMAL. With WAL, NORMAL skips the fsync at commit, so a power cut
  may lose the last seconds of commits; for a §14a record those are the interesting ones (the
  grid operator dims, the power fails). Grid signals are rare (a few rows a day, a burst when a
  signal arrives) and one transaction carries everything queued, so FULL costs a handful of
  fsyncs a day, not SD card wear.
- Kinds: ``input`` (an input's active state changed; ``None`` = unreadable; source ``input``),
  ``variable`` (one row per added, changed or deleted variable; ``None`` = absent; source as
  given to ``set_many``, e.g. ``lan:192.168.1.5``), ``limit`` (``grid_limit_w`` or
  ``chargers_limit_w`` in force changed; source ``loop``), ``failsafe`` (entered, left, or its
  reason changed other than by a number, e.g. an age; ``None`` = not in fail-safe; source
  ``loop``), ``gap`` (see above; source ``gridlog``).
- A database file that SQLite calls not a database or corrupt is renamed aside at start
  (``gridlog.sqlite3.corrupt-<UTC time>``, with its ``-wal``/``-shm``), never deleted, with a loud
  ``log.error``, and a new log is started: the service keeps running and the old record is kept.
- **Start values**: ``GridSignalRecorder.attach`` records every variable in force, and the first
  cycle records each input, both limits and the fail-safe state, with their usual ``kind``,
  ``old`` = None and source ``start``. So the log alone tells the state at any moment since the
  start, not only the changes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.status import DeviceStatus, Status
from controller.variables import VariableSet, VariableStore, same_exprs
from hal.types import InputReading

log = logging.getLogger(__name__)

FILE_NAME = "gridlog.sqlite3"
KINDS = frozenset({"input", "variable", "limit", "failsafe", "gap"})
DAY_S = 86400.0
RETENTION_S = (2 * 365 + 31) * DAY_S  # two years (§14a) and a month of margin
MAX_QUEUE = 10_000
FILE_MODE = 0o640
RETRY_MIN_S = 0.5
RETRY_MAX_S = 60.0
SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL,"
    " name TEXT NOT NULL, old TEXT, new TEXT, source TEXT NOT NULL, grid_power_w REAL)",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
)
_INSERT = ("INSERT INTO events(ts, kind, name, old, new, source, grid_power_w)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
_SELECT = "SELECT ts, kind, name, old, new, source, grid_power_w FROM events"

_Row = tuple[float, str, str, str, str, str, "float | None"]


@dataclass(frozen=True)
class GridEvent:
    """One row of the log. ``old``/``new`` are the decoded JSON values (None = absent/none)."""

    ts: float  # unix time
    kind: str
    name: str
    old: object
    new: object
    source: str
    grid_power_w: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _encode(value: object) -> str:
    """JSON text of a value; anything JSON cannot hold becomes its ``str`` (never raises)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    try:
        return json.dumps(value, default=str, allow_nan=False)
    except ValueError:  # a non-finite float inside a container
        return json.dumps(str(value))


def _decode(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _utc(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def _power(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class GridLog:
    """SQLite ``state_dir/gridlog.sqlite3`` behind a queue and one writer thread (module doc)."""

    def __init__(self, path: Path, *, retention_s: float = RETENTION_S,
                 clock: Callable[[], float] = time.time, max_queue: int = MAX_QUEUE,
                 prune_every_s: float = DAY_S) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._clock = clock
        self._max_queue = max_queue
        self._prune_every_s = prune_every_s
        self._cond = threading.Condition()
        self._queue: list[_Row] = []
        self._waiters: list[threading.Event] = []
        self._dropped = 0
        self._dropped_span: tuple[float, float] | None = None
        self._stopping = False
        self._closed = False
        self._next_prune = -math.inf
        self._failures = 0  # failed inserts in a row (writer thread only)
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Open (create) the database now, then start the writer thread, which prunes first.

        A file that is not a database or is corrupt is renamed aside (``<name>.corrupt-<UTC
        time>``, never deleted: it is a §14a record) with log.error, and a new one is started.
        Anything else (a bad path, no permission) raises OSError or sqlite3.Error here.
        """
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise
            self._set_aside(str(exc))
            conn = self._open()
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="grid-log", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        # Used by the writer thread only, after this thread has set it up.
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            with conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("SELECT count(*) FROM events WHERE ts > 0").fetchone()
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _set_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.rename(self.path, target)
        for suffix in ("-wal", "-shm"):  # they belong to the old file
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.rename(side, target.with_name(target.name + suffix))
        log.error("GRID LOG UNREADABLE: %s (%s); kept as %s; starting a new grid log", self.path,
                  why, target)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then end the writer (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("grid log writer did not stop within %.1f s", timeout_s)
        with self._cond:
            self._closed = True
            lost = len(self._queue)
            self._queue.clear()
        if lost:
            log.error("grid log stopped with %d record(s) not written", lost)

    # ---- writing -----------------------------------------------------------------------------
    def record(self, kind: str, name: str, old: object, new: object, source: str,
               grid_power_w: float | None, ts: float | None = None) -> None:
        """Queue one event (never blocks, never touches the disk). ``ts`` defaults to now."""
        if kind not in KINDS:
            raise ValueError(f"unknown grid log kind {kind!r}")
        row: _Row = (self._clock() if ts is None else ts, kind, name, _encode(old), _encode(new),
                     source, _power(grid_power_w))
        with self._cond:
            if self._closed:
                log.error("grid log closed: %s %s %r -> %r (%s) not recorded", kind, name, old, new,
                          source)
                return
            if len(self._queue) >= self._max_queue:
                self._drop(row)
                return
            self._queue.append(row)
            self._cond.notify()

    def _drop(self, row: _Row) -> None:
        if self._dropped == 0:
            log.error("grid log queue full (%d rows, the disk is not keeping up): dropping %s %s; "
                      "a gap row will mark the loss", self._max_queue, row[1], row[2])
        self._merge_gap(1, row[0], row[0])

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until the writer has tried to insert everything queued before this call (and run
        a prune that was due): written, or kept for a retry when the disk failed. Raises
        TimeoutError. Before ``start`` (or after ``stop``) there is nothing to wait for."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        with self._cond:
            self._waiters.append(done)
            self._cond.notify()
        if not done.wait(timeout_s):
            raise TimeoutError(f"grid log not flushed within {timeout_s} s")

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        carry: list[_Row] = []  # rows whose insert failed: retried first, in order
        retry_s = RETRY_MIN_S
        try:
            self._prune(conn)
            while True:
                with self._cond:
                    self._wait_for_work(bool(carry), retry_s)
                    batch = self._take_batch(carry)
                    waiters, self._waiters = self._waiters, []
                    gap = self._take_gap()
                    stopping = self._stopping
                rows = batch + ([self._gap_row(gap)] if gap is not None else [])
                carry = []
                if rows and not self._insert(conn, rows):
                    carry = batch
                    if gap is not None:
                        with self._cond:
                            self._merge_gap(*gap)
                    retry_s = min(retry_s * 2, RETRY_MAX_S)
                else:
                    retry_s = RETRY_MIN_S
                if self._clock() >= self._next_prune:
                    self._prune(conn)
                for waiter in waiters:
                    waiter.set()
                if stopping:
                    if carry:
                        log.error("grid log: %d record(s) could not be written before stop",
                                  len(carry))
                    return
        finally:
            conn.close()

    def _wait_for_work(self, retrying: bool, retry_s: float) -> None:
        """Under the lock: after a failed insert, back off (only stop cuts it short); else wait
        for records, a flush, stop, or a due prune."""
        if retrying:
            deadline = time.monotonic() + retry_s
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return
        while not (self._queue or self._waiters or self._stopping or self._dropped):
            until_prune = self._next_prune - self._clock()
            if until_prune <= 0:
                return
            self._cond.wait(min(until_prune, 3600.0))

    def _take_batch(self, carry: list[_Row]) -> list[_Row]:
        """Under the lock: the failed rows, then the queue; beyond ``max_queue`` rows (the disk
        has failed for long) the newest are dropped and counted for the gap row."""
        batch = carry + self._queue
        self._queue = []
        for row in batch[self._max_queue:]:
            self._drop(row)
        return batch[:self._max_queue]

    def _take_gap(self) -> tuple[int, float, float] | None:
        if not self._dropped:
            return None
        assert self._dropped_span is not None
        gap = (self._dropped, *self._dropped_span)
        self._dropped, self._dropped_span = 0, None
        return gap

    def _merge_gap(self, count: int, first: float, last: float) -> None:
        """Under the lock: put back a gap whose row could not be written."""
        if self._dropped_span is not None:
            first, last = min(first, self._dropped_span[0]), max(last, self._dropped_span[1])
        self._dropped += count
        self._dropped_span = (first, last)

    @staticmethod
    def _gap_row(gap: tuple[int, float, float]) -> _Row:
        count, first, last = gap
        log.error("grid log: %d record(s) between %s and %s were lost (queue full); a gap row "
                  "marks it", count, _utc(first), _utc(last))
        return (first, "gap", "gridlog", "null",
                _encode({"dropped": count, "first_ts": first, "last_ts": last}), "gridlog", None)

    def _insert(self, conn: sqlite3.Connection, rows: list[_Row]) -> bool:
        """One transaction; on failure the caller keeps the rows. Logged once per streak."""
        try:
            with conn:
                conn.executemany(_INSERT, rows)
        except sqlite3.Error as exc:
            self._failures += 1
            if self._failures == 1:
                log.error("grid log: writing %d record(s) to %s failed: %s; keeping them and "
                          "retrying (logged once until it works again)", len(rows), self.path, exc)
            else:
                log.debug("grid log: write failed again (%d): %s", self._failures, exc)
            return False
        if self._failures:
            log.warning("grid log: writing works again after %d failed attempt(s)", self._failures)
            self._failures = 0
        return True

    def _prune(self, conn: sqlite3.Connection) -> None:
        now = self._clock()
        self._next_prune = now + self._prune_every_s
        cutoff = now - self.retention_s
        try:
            with conn:
                deleted = conn.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
        except sqlite3.Error as exc:
            log.error("grid log: pruning rows older than %.0f days failed: %s",
                      self.retention_s / DAY_S, exc)
            return
        if deleted:
            log.info("grid log: pruned %d row(s) older than %.0f days", deleted,
                     self.retention_s / DAY_S)

    # ---- reading -----------------------------------------------------------------------------
    def query(self, from_ts: float | None = None, to_ts: float | None = None,
              limit: int = 10000) -> list[GridEvent]:
        """Events with ``from_ts <= ts < to_ts`` (either bound may be None), oldest first, at
        most ``limit``. Runs on the caller's thread with its own connection; an empty list when
        the database does not exist yet. What is still queued is not seen (``flush`` first)."""
        if not self.path.exists():
            return []
        clauses: list[str] = []
        params: list[float | int] = []
        if from_ts is not None:
            clauses.append("ts >= ?")
            params.append(from_ts)
        if to_ts is not None:
            clauses.append("ts < ?")
            params.append(to_ts)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(max(0, int(limit)))
        uri = self.path.resolve().as_uri() + "?mode=rw"  # never create a file when reading
        conn = sqlite3.connect(uri, uri=True, timeout=10.0)
        try:
            rows = conn.execute(f"{_SELECT}{where} ORDER BY ts, id LIMIT ?", params).fetchall()
        finally:
            conn.close()
        return [GridEvent(ts, kind, name, _decode(old), _decode(new), source, power)
                for ts, kind, name, old, new, source, power in rows]


# ---------------------------------------------------------------------------- the observer


class StatusSource(Protocol):
    """What the recorder needs of the control loop."""

    @property
    def status(self) -> Status: ...

    def add_cycle_listener(self, callback: Callable[[Status], None]) -> None: ...


LIMIT_NAMES = ("grid_limit_w", "chargers_limit_w")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_UNSET = object()


def _reason_shape(reason: str) -> str:
    """A fail-safe reason without its numbers: "stale (7.0 s)" and "stale (8.0 s)" are the same
    reason, so an age growing every cycle is not a new row every cycle."""
    return _NUMBER.sub("#", reason)


def input_state(device: DeviceStatus) -> bool | None:
    """An input's state for the log: its active state, None while it cannot be read."""
    reading = device.reading
    if not device.online or not isinstance(reading, InputReading):
        return None
    return bool(reading.active)


class GridSignalRecorder:
    """Fills a ``GridLog``: variable changes (a store listener, on the API's thread) and, once
    per cycle (a cycle listener, on the loop's thread), input edges and changes of the limits in
    force. Per cycle it costs a few comparisons; all writes go through ``GridLog.record``.

    ``limit_resolution_w``: a limit counts as changed when it moved by at least this much from
    the value last recorded (float noise of formulas on device values is not a signal).
    """

    def __init__(self, grid_log: GridLog, *, limit_resolution_w: float = 1.0) -> None:
        self._log = grid_log
        self._resolution_w = limit_resolution_w
        self._loop: StatusSource | None = None
        self._started = False
        self._inputs: dict[str, bool | None] = {}
        self._limits: dict[str, float | None] = {}
        self._failsafe: str | None = None

    def attach(self, store: VariableStore, loop: StatusSource) -> None:
        """Record the variables in force (source ``start``) and listen to the store and loop."""
        self._loop = loop
        power = self._latest_power()
        for name, expr in store.snapshot().exprs.items():
            self._log.record("variable", name, None, expr, "start", power)
        store.add_listener(self.on_variables)
        loop.add_cycle_listener(self.on_cycle)

    def _latest_power(self) -> float | None:
        return self._loop.status.grid_power_w if self._loop is not None else None

    # ---- variables (store listener) ----------------------------------------------------------
    def on_variables(self, old: VariableSet, new: VariableSet, source: str) -> None:
        """One ``variable`` row per name whose expr was added, changed or deleted."""
        if same_exprs(old.exprs, new.exprs):
            return
        power = self._latest_power()
        for name in _changed_names(old.exprs, new.exprs):
            self._log.record("variable", name, old.exprs.get(name), new.exprs.get(name), source,
                             power)

    # ---- the loop's status (cycle listener) --------------------------------------------------
    def on_cycle(self, status: Status) -> None:
        first = not self._started
        self._started = True
        ts, power = status.wall_time, status.grid_power_w
        for device in status.inputs:
            state = input_state(device)
            previous = self._inputs.get(device.id, _UNSET)
            if previous is _UNSET or previous != state:
                self._inputs[device.id] = state
                source = "input" if previous is not _UNSET else "start"
                self._log.record("input", device.id, None if previous is _UNSET else previous,
                                 state, source, power, ts=ts)
        for name in LIMIT_NAMES:
            value: float | None = getattr(status, name)
            if first or self._limit_changed(name, value):
                self._log.record("limit", name, None if first else self._limits.get(name), value,
                                 "start" if first else "loop", power, ts=ts)
                self._limits[name] = value
        self._check_failsafe(status.failsafe, first, ts, power)

    def _limit_changed(self, name: str, value: float | None) -> bool:
        last = self._limits.get(name)
        if (last is None) != (value is None):
            return True
        return last is not None and value is not None and abs(value - last) >= self._resolution_w

    def _check_failsafe(self, reason: str | None, first: bool, ts: float, power: float | None) -> None:
        last = self._failsafe
        if first:
            self._log.record("failsafe", "failsafe", None, reason, "start", power, ts=ts)
        elif (last is None) != (reason is None) or (
                last is not None and reason is not None and _reason_shape(last) != _reason_shape(reason)):
            self._log.record("failsafe", "failsafe", last, reason, "loop", power, ts=ts)
        else:
            return
        self._failsafe = reason


def _changed_names(old: Any, new: Any) -> list[str]:
    names = [n for n, expr in new.items() if n not in old or type(old[n]) is not type(expr)
             or old[n] != expr]
    names.extend(n for n in old if n not in new)
    return names


__all__ = ["FILE_NAME", "GridEvent", "GridLog", "GridSignalRecorder", "KINDS", "RETENTION_S",
           "StatusSource", "input_state"]
