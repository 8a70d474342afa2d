"""The grid signal log (docs/api.md): every grid signal and every change of a limit in force,
with time, source, old and new value and the grid power at that moment, kept at least two years
(§14a EnWG wants this record).

This module owns ``state_dir/gridlog.sqlite3`` (one table ``events``, an index on ``ts``, values
as JSON text; the file itself: ``controller.records.gridlog_file``; its size: ``controller.records.gridlog_budget``)
and the observer that fills it:

- ``GridLog.open()`` opens the file at start, before anything else of the service runs: a file
  that is corrupt (``PRAGMA quick_check``, bounded in time) or foreign (another ``user_version``
  or schema), or a directory in its place, is renamed aside (never deleted) and a new log is
  started, loudly: ``log.error``, a status fault (``faults()``) for as long as the process runs
  and a ``gap`` row in the new log. What a new file cannot cure (read-only, no permission, no
  space) raises ``GridLogFileError``, and the service does not start.
- ``GridLog.record()`` only appends to a bounded in-memory queue (a lock and a list append), so
  the control loop never waits for the SD card. One writer thread inserts whatever is queued in
  one transaction, prunes rows older than ``retention_s`` at start and then once a day, keeps the
  file under ``max_bytes`` after every insert, and is the only user of its connection.
  ``query()`` opens its own connection on the caller's thread (WAL: readers and the writer do not
  block each other).
- **Full queue: never silent.** Blocking would stall the control loop behind a hung disk, so a
  record that finds the queue full (``max_queue`` rows, hours of normal traffic) is dropped, with
  ``log.error`` once per streak, and the writer inserts a ``gap`` row (``new`` = how many rows
  were lost between which times) as soon as it can write again: the record itself says where it
  is incomplete. ``record_many()`` is the API threads' variant: one call's rows (a ``clear=1`` of
  a thousand variables) wait up to ``RECORD_WAIT_S`` for room instead, so a slow card slows the
  caller rather than losing rows; the control loop never calls it.
- **A failed insert** (disk full, I/O error) keeps its rows and retries with backoff, with a
  status fault until a write works again. **A damaged file** ("malformed", seen by the writer or
  by a ``query()``) is checked with ``quick_check`` on a fresh connection and, when it is damaged
  (or the writer sees it twice), renamed aside and replaced as at start, at most once per failure
  streak: never an endless loop of failing inserts. A query that hits it raises
  ``GridLogUnavailable`` (the API answers 503) and wakes the writer to do this.
- **synchronous=FULL**, not NORMAL. With WAL, NORMAL skips the fsync at commit, so a power cut
  may lose the last seconds of commits; for a §14a record those are the interesting ones (the
  grid operator dims, the power fails). Grid signals are rare (a few rows a day, a burst when a
  signal arrives) and one transaction carries everything queued, so FULL costs a handful of
  fsyncs a day, not SD card wear.
- Kinds: ``input`` (an input's active state changed; ``None`` = unreadable; source ``input``),
  ``variable`` (one row per added, changed or deleted variable; ``None`` = absent; source as
  given to ``set_many``, e.g. ``lan:192.168.1.5``), ``limit`` (``grid_limit_w`` or
  ``chargers_limit_w`` in force changed; source ``loop``), ``failsafe`` (entered, left, or its
  causes changed (an age that grows is no new cause); ``None`` = not in fail-safe; source
  ``loop``), ``gap`` (where the record is incomplete: ``new`` = ``{"dropped": n, "first_ts",
  "last_ts"}`` for rows lost to a full queue, or ``{"set_aside": file name, "label", "why"}``
  when the earlier record is in a file kept aside; source ``gridlog``).
- **Start values**: ``GridSignalRecorder.attach`` records every variable in force, and the first
  cycle records each input, both limits and the fail-safe state, with their usual ``kind``,
  ``old`` = None and source ``start``. So the log alone tells the state at any moment since the
  start, not only the changes.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.records import gridlog_file
from controller.records.gridlog_budget import SizeBudget
from controller.records.gridlog_file import CHECK_BUDGET_S, GridLogFileError, SetAside, Unusable, is_corrupt
from controller.records.statedir import GRID_LOG_FILE, one_line, utc_text
from controller.status import DeviceStatus, Status
from controller.records.variables import VariableSet, VariableStore, same_exprs
from hal.types import InputReading

log = logging.getLogger(__name__)

FILE_NAME = GRID_LOG_FILE
KINDS = frozenset({"input", "variable", "limit", "failsafe", "gap"})
DAY_S = 86400.0
RETENTION_S = (2 * 365 + 31) * DAY_S  # two years (§14a) and a month of margin
MAX_QUEUE = 10_000
MAX_BYTES = 1_000_000_000  # the default size budget (config grid_log.max_bytes)
RECORD_WAIT_S = 2.0  # how long one API call's rows may wait for room in a full queue
RETRY_MIN_S = 0.5
RETRY_MAX_S = 60.0
FILE_MODE = gridlog_file.FILE_MODE
SCHEMA_VERSION = gridlog_file.SCHEMA_VERSION
_INSERT = ("INSERT INTO events(ts, kind, name, old, new, source, grid_power_w)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
_SELECT = "SELECT ts, kind, name, old, new, source, grid_power_w FROM events"

_Row = tuple[float, str, str, str, str, str, "float | None"]
Event = tuple[str, str, object, object, str, "float | None"]  # kind, name, old, new, source, power


class GridLogUnavailable(Exception):
    """``query()`` cannot read the log now (a damaged file being replaced, an I/O error); the
    API answers 503 with ``str()``, which is one line."""


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


def _power(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class GridLog:
    """SQLite ``state_dir/gridlog.sqlite3`` behind a queue and one writer thread (module doc)."""

    def __init__(self, path: Path, *, retention_s: float = RETENTION_S,
                 clock: Callable[[], float] = time.time, max_queue: int = MAX_QUEUE,
                 prune_every_s: float = DAY_S, max_bytes: int = MAX_BYTES,
                 check_budget_s: float = CHECK_BUDGET_S) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._clock = clock
        self._max_queue = max_queue
        self._prune_every_s = prune_every_s
        self._check_budget_s = check_budget_s
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the writer waits for work
        self._space = threading.Condition(self._lock)  # record_many waits for room in the queue
        self._queue: list[_Row] = []
        self._waiters: list[threading.Event] = []
        self._dropped = 0
        self._dropped_span: tuple[float, float] | None = None
        self._lost = 0  # rows dropped since start (status)
        self._stopping = False
        self._closed = False
        self._suspect: str | None = None  # a reader saw a damaged file: the writer checks it
        self._set_asides: list[str] = []  # status lines, one per file kept aside since start
        self._notes: list[_Row] = []  # gap rows about files kept aside, written with the next batch
        self._write_fault: str | None = None  # status line while inserts fail
        self._next_prune = -math.inf
        self._failures = 0  # failed inserts in a row (writer thread only)
        self._replaced_in_streak = False  # at most one set-aside per failure streak (writer only)
        self._damage_seen = False  # the writer met a damaged file in this streak (writer only)
        self._budget = SizeBudget(max_bytes)
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open (create) the file now, on the caller's thread (idempotent).

        A corrupt or foreign file, or a directory in its place, is renamed aside with log.error,
        a status fault and a ``gap`` row, and a new log is started. Raises GridLogFileError when
        the log cannot be written at all (read-only, no permission, no space).
        """
        if self._conn is not None:
            return
        conn, kept = gridlog_file.open_for_writing(self.path, budget_s=self._check_budget_s,
                                                   clock=self._clock)
        self._conn = conn
        if kept is not None:
            self._note_set_aside(kept)

    def start(self) -> None:
        """``open()`` if not done yet, then start the writer thread, which prunes first."""
        self.open()
        self._thread = threading.Thread(target=self._run, name="grid-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then end the writer (idempotent). A log that was opened but never
        started only closes its file."""
        with self._lock:
            self._stopping = True
            self._cond.notify()
            self._space.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("grid log writer did not stop within %.1f s", timeout_s)
        elif self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._lock:
            self._closed = True
            lost = len(self._queue)
            self._queue.clear()
        if lost:
            log.error("grid log stopped with %d record(s) not written", lost)

    def close(self) -> None:
        """Close the file of a log that was opened but whose writer never ran (tests that drive
        cycles by hand, a start that failed later), without the error ``stop()`` logs for the
        rows still queued; a started log is stopped."""
        if self._thread is not None:
            self.stop()
            return
        with self._lock:
            self._closed = True
            self._queue.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def faults(self) -> tuple[str, ...]:
        """Status lines: files kept aside since start, failing writes, lost rows, the budget."""
        with self._lock:
            lines = list(self._set_asides)
            if self._write_fault is not None:
                lines.append(self._write_fault)
            if self._lost:
                lines.append(f"grid log: {self._lost} record(s) lost since start (the write queue "
                             "was full); gap rows mark where")
        lines.extend(self._budget.faults())
        return tuple(lines)

    # ---- writing -----------------------------------------------------------------------------
    def _row(self, kind: str, name: str, old: object, new: object, source: str,
             grid_power_w: float | None, ts: float | None) -> _Row:
        if kind not in KINDS:
            raise ValueError(f"unknown grid log kind {kind!r}")
        return (self._clock() if ts is None else ts, kind, name, _encode(old), _encode(new), source,
                _power(grid_power_w))

    def record(self, kind: str, name: str, old: object, new: object, source: str,
               grid_power_w: float | None, ts: float | None = None) -> None:
        """Queue one event (never blocks, never touches the disk). ``ts`` defaults to now."""
        row = self._row(kind, name, old, new, source, grid_power_w, ts)
        with self._lock:
            if self._closed:
                log.error("grid log closed: %s %s %r -> %r (%s) not recorded", kind, name, old, new,
                          source)
                return
            if len(self._queue) >= self._max_queue:
                self._drop(row)
                return
            self._queue.append(row)
            self._cond.notify()

    def record_many(self, events: Sequence[Event], *, wait_s: float = RECORD_WAIT_S) -> None:
        """Queue the events of one change, waiting up to ``wait_s`` in all for room in a full
        queue; what then still finds none is dropped as ``record`` drops (a gap row). For API
        threads only: the control loop must never wait for the disk."""
        ts = self._clock()
        rows = [self._row(*event, ts) for event in events]
        deadline = time.monotonic() + wait_s
        with self._lock:
            if self._closed:
                log.error("grid log closed: %d record(s) from %s not recorded", len(rows),
                          rows[0][5] if rows else "?")
                return
            for row in rows:
                while len(self._queue) >= self._max_queue and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.notify()
                    self._space.wait(left)
                if len(self._queue) >= self._max_queue:
                    self._drop(row)
                else:
                    self._queue.append(row)
            self._cond.notify()

    def _drop(self, row: _Row) -> None:
        """Under the lock: count a row that found no room."""
        if self._dropped == 0:
            log.error("grid log queue full (%d rows, the disk is not keeping up): dropping %s %s; "
                      "a gap row will mark the loss", self._max_queue, row[1], row[2])
        self._lost += 1
        self._merge_gap(1, row[0], row[0])

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until the writer has tried to insert everything queued before this call (and run
        a prune or a check that was due): written, or kept for a retry when the disk failed.
        Raises TimeoutError. Before ``start`` (or after ``stop``) there is nothing to wait for."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        with self._lock:
            self._waiters.append(done)
            self._cond.notify()
        if not done.wait(timeout_s):
            raise TimeoutError(f"grid log not flushed within {timeout_s} s")

    def _run(self) -> None:
        carry: list[_Row] = []  # rows whose insert failed: retried first, in order
        retry_s = RETRY_MIN_S
        try:
            self._prune()
            self._check_budget()
            while True:
                with self._lock:
                    self._wait_for_work(bool(carry), retry_s)
                    batch = self._take_batch(carry)
                    self._space.notify_all()
                    waiters, self._waiters = self._waiters, []
                    gap = self._take_gap()
                    stopping = self._stopping
                    suspect, self._suspect = self._suspect, None
                if suspect is not None:
                    self._check_suspect(suspect)
                rows = batch + ([self._gap_row(gap)] if gap is not None else [])
                carry = []
                if (rows or self._notes) and not self._write(rows):
                    carry = batch
                    if gap is not None:
                        with self._lock:
                            self._merge_gap(*gap)
                    retry_s = min(retry_s * 2, RETRY_MAX_S)
                else:
                    retry_s = RETRY_MIN_S
                if self._clock() >= self._next_prune:
                    self._prune()
                for waiter in waiters:
                    waiter.set()
                if stopping:
                    if carry:
                        log.error("grid log: %d record(s) could not be written before stop",
                                  len(carry))
                    return
        finally:
            self._close_conn()

    def _wait_for_work(self, retrying: bool, retry_s: float) -> None:
        """Under the lock: after a failed insert, back off (only stop cuts it short); else wait
        for records, a flush, stop, a damaged file to check, or a due prune."""
        if retrying:
            deadline = time.monotonic() + retry_s
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return
        while not (self._queue or self._waiters or self._stopping or self._dropped or self._suspect):
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
                  "marks it", count, utc_text(first), utc_text(last))
        return (first, "gap", "gridlog", "null",
                _encode({"dropped": count, "first_ts": first, "last_ts": last}), "gridlog", None)

    # ---- the writer's file (writer thread only, after start) ---------------------------------
    def _write(self, rows: list[_Row]) -> bool:
        """Insert the pending notes and ``rows`` in one transaction; on a damaged file set it
        aside and insert into the new one. False when the rows are not written (the caller keeps
        them for a retry; the notes stay pending)."""
        try:
            if self._conn is None:
                self._reopen()
            assert self._conn is not None
            self._insert(self._conn, self._notes + rows)
        except GridLogFileError as exc:
            self._failed(str(exc), len(rows))
            return False
        except sqlite3.Error as exc:
            if not (is_corrupt(exc) and self._on_damage(f"{exc} (writing)")):
                self._failed(one_line(exc), len(rows))
                return False
            try:  # a new file or a fresh connection: once more
                assert self._conn is not None
                self._insert(self._conn, self._notes + rows)
            except sqlite3.Error as again:
                self._failed(one_line(again), len(rows))
                return False
        except Exception as exc:  # a bug must not end the writer: the record would stop
            log.exception("grid log: writing failed unexpectedly")
            self._failed(f"{type(exc).__name__}: {exc}", len(rows))
            return False
        self._notes = []
        self._written()
        self._check_budget()
        return True

    def _insert(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        """One transaction. Raises sqlite3.Error."""
        with conn:
            conn.executemany(_INSERT, rows)

    def _failed(self, error: str, count: int) -> None:
        """A write failed: logged once per streak, a status fault until a write works."""
        self._failures += 1
        if self._failures == 1:
            what = f"writing {count} record(s) to {self.path}" if count else f"reopening {self.path}"
            log.error("grid log: %s failed: %s; keeping the records and retrying (logged once "
                      "until it works again)", what, error)
            with self._lock:
                self._write_fault = (f"grid log: writing to {self.path} fails since "
                                     f"{utc_text(self._clock())} ({error}); records are kept in "
                                     f"memory (up to {self._max_queue}) and retried")
        else:
            log.debug("grid log: write failed again (%d): %s", self._failures, error)

    def _written(self) -> None:
        if self._failures:
            log.warning("grid log: writing works again after %d failed attempt(s)", self._failures)
            self._failures = 0
        self._replaced_in_streak = self._damage_seen = False
        if self._write_fault is not None:
            with self._lock:
                self._write_fault = None

    def _on_damage(self, why: str) -> bool:
        """The writer met a damaged file. When ``quick_check`` (on a fresh connection) agrees, or
        the writer met damage before in this failure streak, set the file aside and open a new
        one; when the file checks sound, reconnect (a fresh page cache). True when there is a
        connection to try once more; at most one set-aside per failure streak."""
        if self._replaced_in_streak:
            return False
        log.error("grid log: %s in %s; checking the file", why, self.path)
        try:
            unusable = gridlog_file.inspect(self.path, self._check_budget_s)
        except (OSError, sqlite3.Error) as exc:
            log.error("grid log: checking %s after '%s' failed: %s", self.path, why, one_line(exc))
            unusable = Unusable("corrupt", why)
        if unusable is None and not self._damage_seen:
            self._damage_seen = True
            log.warning("grid log: %s, but quick_check finds %s sound; reconnecting", why, self.path)
            self._close_conn()
            return self._try_reopen()
        self._replaced_in_streak = True
        return self._replace(unusable or Unusable("corrupt", f"{why}, twice in a row"))

    def _check_suspect(self, why: str) -> None:
        """A reader met a damaged file: check it on a fresh connection, replace it when damaged."""
        try:
            unusable = gridlog_file.inspect(self.path, self._check_budget_s)
        except (OSError, sqlite3.Error) as exc:
            log.error("grid log: checking %s after a reader's '%s' failed: %s", self.path, why,
                      one_line(exc))
            return
        if unusable is None:
            log.warning("grid log: a reader met '%s', but quick_check finds %s sound", why, self.path)
            return
        self._replace(unusable)

    def _replace(self, unusable: Unusable) -> bool:
        """Close, set aside and reopen the file. True when a new file is open."""
        self._close_conn()
        try:
            kept = gridlog_file.set_aside(self.path, unusable, self._clock)
        except OSError as exc:
            log.error("grid log: %s is %s (%s) but could not be moved aside: %s", self.path,
                      unusable.label, unusable.why, one_line(exc))
            return False
        self._note_set_aside(kept)
        return self._try_reopen()

    def _try_reopen(self) -> bool:
        """Open the file again; False (and a fault) when that fails."""
        try:
            self._reopen()
        except GridLogFileError as exc:
            self._failed(str(exc), 0)
            return False
        return True

    def _reopen(self) -> None:
        """Open the file again (writer thread). Raises GridLogFileError."""
        conn, kept = gridlog_file.open_for_writing(self.path, budget_s=self._check_budget_s,
                                                   clock=self._clock)
        self._conn = conn
        if kept is not None:
            self._note_set_aside(kept)

    def _note_set_aside(self, kept: SetAside) -> None:
        """A status line for the rest of the run, and a gap row, first in the new file, that
        says where the earlier record is (by ``open()`` before the writer runs, else on the
        writer thread)."""
        with self._lock:
            self._set_asides.append(f"grid log: {kept.describe(self.path)}")
        self._notes.append(self._row("gap", "gridlog", None, {"set_aside": kept.kept_as.name,
                                                              "label": kept.label, "why": kept.why},
                                     "gridlog", None, kept.at))

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:  # a damaged file may fail its last checkpoint
                log.debug("grid log: closing the connection: %s", exc)

    def _check_budget(self) -> None:
        if self._conn is None:
            return
        try:
            self._budget.check(self._conn, self._clock())
        except sqlite3.Error as exc:
            log.error("grid log: keeping %s under grid_log.max_bytes failed: %s", self.path,
                      one_line(exc))

    def _prune(self) -> None:
        now = self._clock()
        self._next_prune = now + self._prune_every_s
        if self._conn is None:
            return
        cutoff = now - self.retention_s
        try:
            with self._conn:
                deleted = self._conn.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
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
        the database does not exist yet. What is still queued is not seen (``flush`` first).

        Raises GridLogUnavailable when the file cannot be read; a damaged one also wakes the
        writer, which checks it and sets it aside, so that the next query reads the new log.
        """
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
        try:
            conn = gridlog_file.connect(self.path)  # never creates a file
            try:
                rows = conn.execute(f"{_SELECT}{where} ORDER BY ts, id LIMIT ?", params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if is_corrupt(exc):
                self._report_damage(str(exc))
                raise GridLogUnavailable(
                    f"the grid log file is damaged ({one_line(exc)}); it is being kept aside and a "
                    "new log started: ask again in a few seconds") from None
            raise GridLogUnavailable(f"the grid log cannot be read now: {one_line(exc)}") from None
        return [GridEvent(ts, kind, name, _decode(old), _decode(new), source, power)
                for ts, kind, name, old, new, source, power in rows]

    def _report_damage(self, why: str) -> None:
        with self._lock:
            if self._thread is not None and not self._stopping:
                self._suspect = why
                self._cond.notify()


# ---------------------------------------------------------------------------- the observer


class StatusSource(Protocol):
    """What the recorder needs of the control loop."""

    @property
    def status(self) -> Status: ...

    def add_cycle_listener(self, callback: Callable[[Status], None]) -> None: ...


LIMIT_NAMES = ("grid_limit_w", "chargers_limit_w")
_UNSET = object()


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
        self._failsafe_causes: tuple[str, ...] = ()

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
        """One ``variable`` row per name whose expr was added, changed or deleted, all queued
        together (``record_many``: on a slow card the API caller waits, the rows are kept)."""
        if same_exprs(old.exprs, new.exprs):
            return
        power = self._latest_power()
        self._log.record_many([("variable", name, old.exprs.get(name), new.exprs.get(name), source, power)
                               for name in _changed_names(old.exprs, new.exprs)])

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
        self._check_failsafe(status.failsafe, status.failsafe_causes, first, ts, power)

    def _limit_changed(self, name: str, value: float | None) -> bool:
        last = self._limits.get(name)
        if (last is None) != (value is None):
            return True
        return last is not None and value is not None and abs(value - last) >= self._resolution_w

    def _check_failsafe(self, reason: str | None, causes: tuple[str, ...], first: bool, ts: float,
                        power: float | None) -> None:
        """A row when the fail-safe starts, ends or changes cause (not when only an age grows)."""
        last = self._failsafe
        if first:
            self._log.record("failsafe", "failsafe", None, reason, "start", power, ts=ts)
        elif (last is None) != (reason is None) or causes != self._failsafe_causes:
            self._log.record("failsafe", "failsafe", last, reason, "loop", power, ts=ts)
        else:
            return
        self._failsafe, self._failsafe_causes = reason, causes


def _changed_names(old: Any, new: Any) -> list[str]:
    names = [n for n, expr in new.items() if n not in old or type(old[n]) is not type(expr)
             or old[n] != expr]
    names.extend(n for n in old if n not in new)
    return names


__all__ = ["FILE_NAME", "GridEvent", "GridLog", "GridLogFileError", "GridLogUnavailable",
           "GridSignalRecorder", "KINDS", "MAX_BYTES", "RETENTION_S", "StatusSource", "input_state"]
