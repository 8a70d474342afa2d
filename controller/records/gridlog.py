"""The grid signal log (docs/api.md): every grid signal and every change of a limit in force,
with time, source, old and new value and the grid power at that moment, kept at least two years
(§14a EnWG wants this record).

This module owns ``state_dir/gridlog.sqlite3`` (one table ``events``, an index on ``ts``, values
as JSON text; the file itself: ``controller.records.gridlog_file``; its size: ``controller.records.gridlog_budget``;
the queue and the writer thread, shared with the session log: ``controller.records.record_writer``)
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
  when the earlier record is in a file kept aside; source ``gridlog``), ``backend`` (the supplier's
  OCPP backend changed a charger's cap: ``name`` = the charger, ``old``/``new`` =
  ``{"cap_a", "reason"}`` or ``None`` = no cap; source ``backend:<backend_id>``).
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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.records import gridlog_file
from controller.records.gridlog_budget import SizeBudget
from controller.records.gridlog_file import CHECK_BUDGET_S, GridLogFileError, SetAside
from controller.records.record_writer import DAY_S, Gap, RecordUnavailable, RecordWriter, time_range
from controller.records.statedir import GRID_LOG_FILE, one_line, utc_text
from controller.status import DeviceStatus, Status
from controller.records.variables import VariableSet, VariableStore, same_exprs
from hal.types import InputReading

log = logging.getLogger(__name__)

FILE_NAME = GRID_LOG_FILE
KINDS = frozenset({"input", "variable", "limit", "failsafe", "gap", "backend"})
RETENTION_S = (2 * 365 + 31) * DAY_S  # two years (§14a) and a month of margin
MAX_QUEUE = 10_000
MAX_BYTES = 1_000_000_000  # the default size budget (config grid_log.max_bytes)
RECORD_WAIT_S = 2.0  # how long one API call's rows may wait for room in a full queue
FILE_MODE = gridlog_file.FILE_MODE
SCHEMA_VERSION = gridlog_file.SCHEMA_VERSION
_INSERT = ("INSERT INTO events(ts, kind, name, old, new, source, grid_power_w)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
_SELECT = "SELECT ts, kind, name, old, new, source, grid_power_w FROM events"

_Row = tuple[float, str, str, str, str, str, "float | None"]
Event = tuple[str, str, object, object, str, "float | None"]  # kind, name, old, new, source, power


class GridLogUnavailable(RecordUnavailable):
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


class GridLog(RecordWriter):
    """SQLite ``state_dir/gridlog.sqlite3`` behind a queue and one writer thread (module doc;
    the queue, the writer and the file handling are ``RecordWriter``'s)."""

    spec = gridlog_file.SPEC
    thread_name = "grid-log"
    unavailable = GridLogUnavailable

    def __init__(self, path: Path, *, retention_s: float = RETENTION_S,
                 clock: Callable[[], float] = time.time, max_queue: int = MAX_QUEUE,
                 prune_every_s: float = DAY_S, max_bytes: int = MAX_BYTES,
                 check_budget_s: float = CHECK_BUDGET_S) -> None:
        super().__init__(path, retention_s=retention_s, clock=clock, max_queue=max_queue,
                         prune_every_s=prune_every_s, check_budget_s=check_budget_s)
        self._budget = SizeBudget(max_bytes)

    def faults(self) -> tuple[str, ...]:
        """Status lines: files kept aside since start, failing writes, lost rows, the budget."""
        return super().faults() + self._budget.faults()

    def _lost_line(self, lost: int) -> str:
        return (f"grid log: {lost} record(s) lost since start (the write queue was full); gap rows "
                "mark where")

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
        self._enqueue(row, f"{kind} {name} {old!r} -> {new!r} ({source})")

    def record_many(self, events: Sequence[Event], *, wait_s: float = RECORD_WAIT_S) -> None:
        """Queue the events of one change, waiting up to ``wait_s`` in all for room in a full
        queue; what then still finds none is dropped as ``record`` drops (a gap row). For API
        threads only: the control loop must never wait for the disk."""
        ts = self._clock()
        rows = [self._row(*event, ts) for event in events]
        self._enqueue_waiting(rows, rows[0][5] if rows else "?", wait_s)

    def _insert(self, conn: sqlite3.Connection, rows: list[Any]) -> None:
        """One transaction. Raises sqlite3.Error."""
        with conn:
            conn.executemany(_INSERT, rows)

    def _gap_row(self, gap: Gap) -> _Row:
        count, first, last = gap
        log.error("grid log: %d record(s) between %s and %s were lost (queue full); a gap row "
                  "marks it", count, utc_text(first), utc_text(last))
        return (first, "gap", "gridlog", "null",
                _encode({"dropped": count, "first_ts": first, "last_ts": last}), "gridlog", None)

    def _set_aside_row(self, kept: SetAside) -> _Row:
        """The ``gap`` row that says where the earlier record is."""
        return self._row("gap", "gridlog", None, {"set_aside": kept.kept_as.name, "label": kept.label,
                                                  "why": kept.why}, "gridlog", None, kept.at)

    def _after_write(self) -> None:
        if self._conn is None:
            return
        try:
            self._budget.check(self._conn, self._clock())
        except sqlite3.Error as exc:
            log.error("grid log: keeping %s under grid_log.max_bytes failed: %s", self.path,
                      one_line(exc))

    def _prune_rows(self, conn: sqlite3.Connection, cutoff: float) -> int:
        with conn:
            return int(conn.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount)

    # ---- reading -----------------------------------------------------------------------------
    def query(self, from_ts: float | None = None, to_ts: float | None = None,
              limit: int = 10000, *, newest_first: bool = False) -> list[GridEvent]:
        """Events with ``from_ts <= ts < to_ts`` (either bound may be None), oldest first (newest
        first with ``newest_first``: the last ``limit`` events), at most ``limit``. Runs on the
        caller's thread with its own connection; an empty list when the database does not exist
        yet. What is still queued is not seen (``flush`` first).

        Raises GridLogUnavailable when the file cannot be read; a damaged one also wakes the
        writer, which checks it and sets it aside, so that the next query reads the new log.
        """
        where, params = time_range(from_ts, to_ts)
        order = "ts DESC, id DESC" if newest_first else "ts, id"
        rows = self._read(f"{_SELECT}{where} ORDER BY {order} LIMIT ?", [*params, max(0, int(limit))])
        return [GridEvent(ts, kind, name, _decode(old), _decode(new), source, power)
                for ts, kind, name, old, new, source, power in rows]


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
