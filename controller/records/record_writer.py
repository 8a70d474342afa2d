"""One writer thread for a record's SQLite file, behind a bounded queue: what the grid log and
the session log share (``controller.records.gridlog``, ``controller.records.sessions``).

- Callers only append rows to an in-memory queue (a lock and a list append), so the control loop
  never waits for the SD card. The writer inserts whatever is queued in one transaction (what a
  row means and how it is inserted is the record's ``_insert``), prunes old rows at start and then
  every ``prune_every_s``, and is the only user of its connection. Readers open their own
  connection (``_read``; WAL: readers and the writer do not block each other).
- **Full queue: never silent.** A row that finds the queue full is dropped with ``log.error``
  once per streak, counted for the status, and the record may write a row that marks the gap
  (``_gap_row``) as soon as it can write again.
- **A failed insert** (disk full, I/O error) keeps its rows and retries with backoff, with a
  status fault until a write works again. **A damaged file** ("malformed", seen by the writer or a
  reader) is checked with ``quick_check`` on a fresh connection and, when it is damaged (or the
  writer sees it twice), renamed aside and replaced, at most once per failure streak.
- The file itself (open, check, set aside) is ``controller.records.sqlite_file``, described by the
  record's ``FileSpec``.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controller.records import sqlite_file
from controller.records.sqlite_file import CHECK_BUDGET_S, FileSpec, RecordFileError, SetAside, Unusable, is_corrupt
from controller.records.statedir import one_line, utc_text

DAY_S = 86400.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 60.0

#: A queued row: a tuple whose first item is its unix time (the record decides the rest).
Row = tuple[Any, ...]
#: Rows lost to a full queue: how many, the first and the last time.
Gap = tuple[int, float, float]


class RecordUnavailable(Exception):
    """A reader cannot read the record now (a damaged file being replaced, an I/O error);
    ``str()`` is one line (the API answers 503 with it)."""


class RecordWriter:
    """A record's file behind a queue and one writer thread (module doc). Subclasses give the
    ``FileSpec``, ``_insert`` and ``_prune_rows``, and may mark gaps and kept-aside files with
    rows of their own (``_gap_row``, ``_set_aside_row``)."""

    spec: FileSpec
    thread_name = "record-writer"
    unavailable: type[RecordUnavailable] = RecordUnavailable

    def __init__(self, path: Path, *, retention_s: float, clock: Callable[[], float] = time.time,
                 max_queue: int, prune_every_s: float = DAY_S,
                 check_budget_s: float = CHECK_BUDGET_S) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._clock = clock
        self._max_queue = max_queue
        self._prune_every_s = prune_every_s
        self._check_budget_s = check_budget_s
        self._log = self.spec.log
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the writer waits for work
        self._space = threading.Condition(self._lock)  # waiting callers wait for room in the queue
        self._queue: list[Row] = []
        self._waiters: list[threading.Event] = []
        self._dropped = 0
        self._dropped_span: tuple[float, float] | None = None
        self._lost = 0  # rows dropped since start (status)
        self._stopping = False
        self._closed = False
        self._suspect: str | None = None  # a reader saw a damaged file: the writer checks it
        self._set_asides: list[str] = []  # status lines, one per file kept aside since start
        self._notes: list[Row] = []  # rows about files kept aside, written with the next batch
        self._write_fault: str | None = None  # status line while inserts fail
        self._next_prune = -math.inf
        self._failures = 0  # failed inserts in a row (writer thread only)
        self._replaced_in_streak = False  # at most one set-aside per failure streak (writer only)
        self._damage_seen = False  # the writer met a damaged file in this streak (writer only)
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    # ---- what a record decides ---------------------------------------------------------------
    def _insert(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        """Write ``rows`` in one transaction. Raises sqlite3.Error."""
        raise NotImplementedError

    def _prune_rows(self, conn: sqlite3.Connection, cutoff: float) -> int:
        """Delete what is older than ``cutoff`` (in a transaction); how many rows went."""
        raise NotImplementedError

    def _gap_row(self, gap: Gap) -> Row | None:
        """A row that marks rows lost to a full queue, or None (the loss is only logged)."""
        count, first, last = gap
        self._log.error("%s: %d record(s) between %s and %s were lost (queue full)", self.spec.label,
                        count, utc_text(first), utc_text(last))
        return None

    def _set_aside_row(self, kept: SetAside) -> Row | None:
        """A row, first in a new file, that says where the earlier record is, or None."""
        return None

    def _after_write(self) -> None:
        """Called on the writer thread after each successful write (a size budget)."""

    def _lost_line(self, lost: int) -> str:
        return f"{self.spec.label}: {lost} record(s) lost since start (the write queue was full)"

    def _after_open(self, conn: sqlite3.Connection) -> None:
        """Called by ``open()`` on the caller's thread with the writer's connection (read state)."""

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open (create) the file now, on the caller's thread (idempotent).

        A corrupt or foreign file, or a directory in its place, is renamed aside with log.error
        and a status fault, and a new file is started. Raises the spec's ``RecordFileError`` when
        the file cannot be written at all (read-only, no permission, no space).
        """
        if self._conn is not None:
            return
        conn, kept = sqlite_file.open_for_writing(self.spec, self.path, budget_s=self._check_budget_s,
                                                  clock=self._clock)
        self._conn = conn
        if kept is not None:
            self._note_set_aside(kept)
        self._after_open(conn)

    def start(self) -> None:
        """``open()`` if not done yet, then start the writer thread, which prunes first."""
        self.open()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then end the writer (idempotent). A file that was opened but
        never started is only closed."""
        with self._lock:
            self._stopping = True
            self._cond.notify()
            self._space.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._log.error("%s writer did not stop within %.1f s", self.spec.label, timeout_s)
        elif self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._lock:
            self._closed = True
            lost = len(self._queue)
            self._queue.clear()
        if lost:
            self._log.error("%s stopped with %d record(s) not written", self.spec.label, lost)

    def close(self) -> None:
        """Close the file of a record that was opened but whose writer never ran (tests that
        drive cycles by hand, a start that failed later), without the error ``stop()`` logs for
        the rows still queued; a started writer is stopped."""
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
        """Status lines: files kept aside since start, failing writes, lost rows."""
        with self._lock:
            lines = list(self._set_asides)
            if self._write_fault is not None:
                lines.append(self._write_fault)
            if self._lost:
                lines.append(self._lost_line(self._lost))
        return tuple(lines)

    # ---- queueing ----------------------------------------------------------------------------
    def _enqueue(self, row: Row, what: str) -> None:
        """Queue one row (never blocks, never touches the disk)."""
        with self._lock:
            if self._closed:
                self._log.error("%s closed: %s not recorded", self.spec.label, what)
                return
            if len(self._queue) >= self._max_queue:
                self._drop(row, what)
                return
            self._queue.append(row)
            self._cond.notify()

    def _enqueue_waiting(self, rows: Sequence[Row], what: str, wait_s: float) -> None:
        """Queue ``rows``, waiting up to ``wait_s`` in all for room in a full queue; what then
        still finds none is dropped. For API threads only: the loop must never wait for the disk."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            if self._closed:
                self._log.error("%s closed: %d record(s) from %s not recorded", self.spec.label,
                                len(rows), what)
                return
            for row in rows:
                while len(self._queue) >= self._max_queue and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.notify()
                    self._space.wait(left)
                if len(self._queue) >= self._max_queue:
                    self._drop(row, what)
                else:
                    self._queue.append(row)
            self._cond.notify()

    def _drop(self, row: Row, what: str) -> None:
        """Under the lock: count a row that found no room."""
        if self._dropped == 0:
            self._log.error("%s queue full (%d rows, the disk is not keeping up): dropping %s",
                            self.spec.label, self._max_queue, what)
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
            raise TimeoutError(f"{self.spec.label} not flushed within {timeout_s} s")

    # ---- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        carry: list[Row] = []  # rows whose insert failed: retried first, in order
        retry_s = RETRY_MIN_S
        try:
            self._prune()
            self._after_write()
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
                gap_row = self._gap_row(gap) if gap is not None else None
                rows = batch + ([gap_row] if gap_row is not None else [])
                carry = []
                if (rows or self._notes) and not self._write(rows):
                    carry = batch
                    if gap_row is not None and gap is not None:
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
                        self._log.error("%s: %d record(s) could not be written before stop",
                                        self.spec.label, len(carry))
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

    def _take_batch(self, carry: list[Row]) -> list[Row]:
        """Under the lock: the failed rows, then the queue; beyond ``max_queue`` rows (the disk
        has failed for long) the newest are dropped and counted."""
        batch = carry + self._queue
        self._queue = []
        for row in batch[self._max_queue:]:
            self._drop(row, "a row kept for a retry")
        return batch[:self._max_queue]

    def _take_gap(self) -> Gap | None:
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

    # ---- the writer's file (writer thread only, after start) ---------------------------------
    def _write(self, rows: list[Row]) -> bool:
        """Insert the pending notes and ``rows`` in one transaction; on a damaged file set it
        aside and insert into the new one. False when the rows are not written (the caller keeps
        them for a retry; the notes stay pending)."""
        try:
            if self._conn is None:
                self._reopen()
            assert self._conn is not None
            self._insert(self._conn, self._notes + rows)
        except RecordFileError as exc:
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
            self._log.exception("%s: writing failed unexpectedly", self.spec.label)
            self._failed(f"{type(exc).__name__}: {exc}", len(rows))
            return False
        self._notes = []
        self._written()
        self._after_write()
        return True

    def _failed(self, error: str, count: int) -> None:
        """A write failed: logged once per streak, a status fault until a write works."""
        self._failures += 1
        if self._failures == 1:
            what = f"writing {count} record(s) to {self.path}" if count else f"reopening {self.path}"
            self._log.error("%s: %s failed: %s; keeping the records and retrying (logged once "
                            "until it works again)", self.spec.label, what, error)
            with self._lock:
                self._write_fault = (f"{self.spec.label}: writing to {self.path} fails since "
                                     f"{utc_text(self._clock())} ({error}); records are kept in "
                                     f"memory (up to {self._max_queue}) and retried")
        else:
            self._log.debug("%s: write failed again (%d): %s", self.spec.label, self._failures, error)

    def _written(self) -> None:
        if self._failures:
            self._log.warning("%s: writing works again after %d failed attempt(s)", self.spec.label,
                              self._failures)
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
        self._log.error("%s: %s in %s; checking the file", self.spec.label, why, self.path)
        unusable, failed = self._inspect(why)
        if failed:
            unusable = Unusable("corrupt", why)
        if unusable is None and not self._damage_seen:
            self._damage_seen = True
            self._log.warning("%s: %s, but quick_check finds %s sound; reconnecting", self.spec.label,
                              why, self.path)
            self._close_conn()
            return self._try_reopen()
        self._replaced_in_streak = True
        return self._replace(unusable or Unusable("corrupt", f"{why}, twice in a row"))

    def _check_suspect(self, why: str) -> None:
        """A reader met a damaged file: check it on a fresh connection, replace it when damaged."""
        unusable, failed = self._inspect(f"a reader's '{why}'")
        if failed:
            return
        if unusable is None:
            self._log.warning("%s: a reader met '%s', but quick_check finds %s sound", self.spec.label,
                              why, self.path)
            return
        self._replace(unusable)

    def _inspect(self, after: str) -> tuple[Unusable | None, bool]:
        """``sqlite_file.inspect`` of our file, and whether the check itself failed (logged)."""
        try:
            return sqlite_file.inspect(self.spec, self.path, self._check_budget_s), False
        except (OSError, sqlite3.Error) as exc:
            self._log.error("%s: checking %s after %s failed: %s", self.spec.label, self.path, after,
                            one_line(exc))
            return None, True

    def _replace(self, unusable: Unusable) -> bool:
        """Close, set aside and reopen the file. True when a new file is open."""
        self._close_conn()
        try:
            kept = sqlite_file.set_aside(self.spec, self.path, unusable, self._clock)
        except OSError as exc:
            self._log.error("%s: %s is %s (%s) but could not be moved aside: %s", self.spec.label,
                            self.path, unusable.label, unusable.why, one_line(exc))
            return False
        self._note_set_aside(kept)
        return self._try_reopen()

    def _try_reopen(self) -> bool:
        """``_reopen``; a failure counts as a failed write. True when a file is open."""
        try:
            self._reopen()
        except RecordFileError as exc:
            self._failed(str(exc), 0)
            return False
        return True

    def _reopen(self) -> None:
        """Open the file again (writer thread). Raises RecordFileError."""
        conn, kept = sqlite_file.open_for_writing(self.spec, self.path, budget_s=self._check_budget_s,
                                                  clock=self._clock)
        self._conn = conn
        if kept is not None:
            self._note_set_aside(kept)

    def _note_set_aside(self, kept: SetAside) -> None:
        """A status line for the rest of the run, and the record's row about it, first in the
        new file (by ``open()`` before the writer runs, else on the writer thread)."""
        with self._lock:
            self._set_asides.append(f"{self.spec.label}: {kept.describe(self.path)}")
        row = self._set_aside_row(kept)
        if row is not None:
            self._notes.append(row)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:  # a damaged file may fail its last checkpoint
                self._log.debug("%s: closing the connection: %s", self.spec.label, exc)

    def _prune(self) -> None:
        now = self._clock()
        self._next_prune = now + self._prune_every_s
        if self._conn is None:
            return
        try:
            deleted = self._prune_rows(self._conn, now - self.retention_s)
        except sqlite3.Error as exc:
            self._log.error("%s: pruning rows older than %.0f days failed: %s", self.spec.label,
                            self.retention_s / DAY_S, exc)
            return
        if deleted:
            self._log.info("%s: pruned %d row(s) older than %.0f days", self.spec.label, deleted,
                           self.retention_s / DAY_S)

    # ---- reading -----------------------------------------------------------------------------
    def _read(self, sql: str, params: Sequence[object]) -> list[Any]:
        """Rows of ``sql`` on a connection of the caller's thread; an empty list when the file
        does not exist yet. Raises ``self.unavailable`` when the file cannot be read; a damaged
        one also wakes the writer, which checks it and sets it aside, so that the next read finds
        the new file."""
        if not self.path.exists():
            return []
        try:
            conn = sqlite_file.connect(self.path)  # never creates a file
            try:
                return conn.execute(sql, list(params)).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if is_corrupt(exc):
                self._report_damage(str(exc))
                raise self.unavailable(
                    f"the {self.spec.label} file is damaged ({one_line(exc)}); it is being kept aside "
                    f"and a new one started: ask again in a few seconds") from None
            raise self.unavailable(f"the {self.spec.label} cannot be read now: {one_line(exc)}") from None

    def _report_damage(self, why: str) -> None:
        with self._lock:
            if self._thread is not None and not self._stopping:
                self._suspect = why
                self._cond.notify()


def time_range(from_ts: float | None, to_ts: float | None, column: str = "ts") -> tuple[str, list[float]]:
    """A ``WHERE`` clause (or nothing) for ``from_ts <= column < to_ts`` and its parameters."""
    clauses: list[str] = []
    params: list[float] = []
    if from_ts is not None:
        clauses.append(f"{column} >= ?")
        params.append(from_ts)
    if to_ts is not None:
        clauses.append(f"{column} < ?")
        params.append(to_ts)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


__all__ = ["DAY_S", "Gap", "RETRY_MAX_S", "RETRY_MIN_S", "RecordUnavailable", "RecordWriter", "Row", "time_range"]
