"""The backend outbox: the OCPP transaction messages for the supplier's backend
(StartTransaction, MeterValues of a transaction, StopTransaction), kept in
``state_dir/backend_outbox.sqlite3`` until the backend has answered them.

The supplier bills from these messages, so what this module promises is about not losing them:

- **Stored before sent.** Every write call is one SQLite transaction, committed (WAL,
  ``synchronous=FULL``) before it returns, on the caller's thread: a message the gateway can see
  (``first``) is already on the card. A call that cannot write raises ``BackendOutboxError`` and
  has changed nothing; a status fault says so until a write works again.
- **Order per charge point.** Each message gets ``seq``, the global order of enqueueing (never
  reused). ``first(charge_point)`` is the charge point's oldest message; the next one comes only
  after it was ``delivered`` or ``dropped`` (a backend that refuses it forever must not block the
  queue behind it), so the backend sees each charge point's messages in the order they happened.
- **No StartTransaction twice.** ``delivered`` of a StartTransaction deletes it and stores the
  backend's ``transactionId`` on its transaction in the same SQLite transaction: after a restart
  the Start is gone and the id is known; before that commit, the Start is still pending and is
  sent again (the backend then answered one Start that gridcharge never heard of: the one
  window OCPP's at-least-once delivery leaves open).
- **What survives.** A SIGKILL: everything a call returned from (the WAL is in the page cache;
  the next open replays it). A power loss: the same, because ``synchronous=FULL`` syncs the WAL
  at every commit (as far as the card honours a flush). A call interrupted by either is all or
  nothing.

The file (``backend_outbox_file``): ``messages`` (pending only: a delivered or dropped message
is deleted), ``transactions`` (``backend_tx_id`` once known, closed once its StopTransaction is
enqueued) and ``state`` (a JSON value per charge point and key). A corrupt or foreign file, or a
directory in its place, is kept aside at ``open()`` as ``backend_outbox.sqlite3.corrupt-<UTC>``
(or ``.foreign-``) and a new one started, with a status fault (the messages still pending in the
old file are then not sent, but kept for whoever rescues them), exactly like the grid log and the
session log (``controller.records.sqlite_file``); what a new file would not cure (read-only, no
permission, no space) raises ``BackendOutboxFileError``. A file damaged while running makes the
calls fail (``BackendOutboxError``); it is checked and set aside at the next ``open()``.

**Bounded.** At most ``max_pending`` (100,000) pending messages: beyond that, the oldest
MeterValues are deleted first, with ``log.error``, counted in ``dropped()`` and a status fault;
a StartTransaction or StopTransaction is never deleted that way (the queue then grows beyond the
budget instead). Transactions that are closed and have no pending message are deleted
``RETENTION_S`` (30 days) after they closed, at ``open()`` and then at most every
``PRUNE_EVERY_S`` (a day), from a write call. Pending messages are never pruned.

One connection (``check_same_thread=False``) behind a lock: safe from several threads, though
its only caller is the gateway's thread (never the control loop: a commit waits for the card).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.records import sqlite_file
from controller.records.backend_outbox_file import (
    LABEL,
    MESSAGE_FIELDS,
    SPEC,
    TRANSACTION_FIELDS,
    BackendOutboxFileError,
)
from controller.records.sqlite_file import CHECK_BUDGET_S, RecordFileError
from controller.records.statedir import BACKEND_OUTBOX_FILE, one_line, utc_text

log = logging.getLogger(__name__)

FILE_NAME = BACKEND_OUTBOX_FILE
DAY_S = 86400.0
RETENTION_S = 30 * DAY_S
PRUNE_EVERY_S = DAY_S
MAX_PENDING = 100_000
CONNECTOR_ID = 1  # each wallbox is one charge point with one connector towards the backend
START, METER_VALUES, STOP = "StartTransaction", "MeterValues", "StopTransaction"
ACTIONS = (START, METER_VALUES, STOP)

_INSERT_TRANSACTION = f"INSERT INTO transactions({TRANSACTION_FIELDS}) VALUES (NULL, ?, ?, ?, NULL, ?, ?, ?, NULL)"
_INSERT_MESSAGE = f"INSERT INTO messages({MESSAGE_FIELDS}) VALUES (NULL, ?, ?, ?, ?, 0, ?)"


class BackendOutboxError(Exception):
    """A call could not read or write the outbox file now (not open, disk full, I/O error, a
    damaged file); a write call that raises it has changed nothing. ``str()`` is one line."""


@dataclass(frozen=True)
class OutMessage:
    """One message waiting for the backend."""

    seq: int  # global order of enqueueing, never reused
    charge_point: str  # the backend_id it is sent as
    action: str  # "StartTransaction" | "MeterValues" | "StopTransaction"
    payload: dict[str, Any]  # the OCPP payload, camelCase keys, as sent (without transactionId)
    tx_key: int | None  # the local transaction it belongs to
    attempts: int  # sends that got an error answer from the backend
    created_ts: float


@dataclass(frozen=True)
class Transaction:
    """One local transaction: what the backend bills as one transactionId."""

    tx_key: int  # local, never reused
    charge_point: str
    charger_id: str  # gridcharge's charger ("E1")
    session_id: int | None  # gridcharge's session (the session log's id)
    backend_tx_id: int | None  # the backend's transactionId once StartTransaction was answered
    open: bool  # False once its StopTransaction is enqueued
    started_ts: float
    meter_start_wh: int
    id_tag: str


class BackendOutbox:
    """The durable queue of OCPP transaction messages (module doc)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, max_pending: int = MAX_PENDING,
                 retention_s: float = RETENTION_S, prune_every_s: float = PRUNE_EVERY_S,
                 check_budget_s: float = CHECK_BUDGET_S) -> None:
        self.path = Path(path)
        self.max_pending = max_pending
        self.retention_s = retention_s
        self._clock = clock
        self._prune_every_s = prune_every_s
        self._check_budget_s = check_budget_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pending = 0  # messages in the file (kept in step with every commit)
        self._dropped = 0  # since open(): drop() and the budget
        self._over_budget = 0  # MeterValues the budget dropped since open()
        self._set_aside: str | None = None  # status line: the file kept aside at open()
        self._write_fault: str | None = None  # status line while writes fail
        self._next_prune = -math.inf
        self._after_commit: list[Callable[[], None]] = []  # log lines of the write in progress

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open (create) the file now (idempotent), and prune.

        A corrupt or foreign file, or a directory in its place, is kept aside with log.error and
        a status fault, and a new file started. Raises ``BackendOutboxFileError`` (a
        ``RecordFileError``) when the file cannot be written at all."""
        with self._lock:
            if self._conn is not None:
                return
            conn, kept = sqlite_file.open_for_writing(SPEC, self.path, budget_s=self._check_budget_s,
                                                      clock=self._clock)
            try:
                self._pending = int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
                open_tx = int(conn.execute("SELECT count(*) FROM transactions WHERE closed_ts IS NULL").fetchone()[0])
            except sqlite3.Error as exc:
                conn.close()
                raise BackendOutboxFileError(f"{LABEL} {self.path} cannot be used: {one_line(exc)}") from exc
            self._conn = conn
            self._dropped = self._over_budget = 0
            if kept is not None:
                self._set_aside = (f"{LABEL}: {kept.describe(self.path)} (messages still pending in it are not "
                                   "sent)")
            log.info("%s: %d message(s) pending, %d transaction(s) open", LABEL, self._pending, open_tx)
            self._prune(conn)

    def close(self) -> None:
        """Close the file (idempotent); every call after this raises ``BackendOutboxError``."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def faults(self) -> tuple[str, ...]:
        """Status lines: the file kept aside at open(), failing writes, MeterValues dropped over
        the budget."""
        with self._lock:
            lines = [line for line in (self._set_aside, self._write_fault) if line is not None]
            if self._over_budget:
                lines.append(f"{LABEL}: {self._over_budget} MeterValues dropped since start (more than "
                             f"{self.max_pending} messages were waiting for the backend)")
        return tuple(lines)

    # ---- writing -----------------------------------------------------------------------------
    def start_transaction(self, *, charge_point: str, charger_id: str, session_id: int | None, id_tag: str,
                          meter_start_wh: int, timestamp: str) -> Transaction:
        """A new transaction and its StartTransaction, in one commit."""
        _text("charge_point", charge_point)
        _text("charger_id", charger_id)
        _text("id_tag", id_tag)
        _text("timestamp", timestamp)
        _whole("meter_start_wh", meter_start_wh)
        if session_id is not None:
            _whole("session_id", session_id)
        payload = {"connectorId": CONNECTOR_ID, "idTag": id_tag, "meterStart": meter_start_wh, "timestamp": timestamp}
        now = self._clock()
        with self._write(f"the StartTransaction of {charger_id}") as conn:
            cursor = conn.execute(_INSERT_TRANSACTION, (charge_point, charger_id, session_id, now, meter_start_wh,
                                                        id_tag))
            tx_key = int(cursor.lastrowid or 0)
            self._enqueue(conn, charge_point, START, payload, tx_key, now)
        return Transaction(tx_key, charge_point, charger_id, session_id, None, True, now, meter_start_wh, id_tag)

    def add_meter_values(self, tx_key: int, payload: dict[str, Any]) -> OutMessage:
        """Enqueue MeterValues of an open transaction. ``payload`` has no ``transactionId``: the
        sender fills it in from the transaction at send time. ValueError: an unknown or closed
        transaction, a payload that is not a JSON object."""
        if not isinstance(payload, dict) or "transactionId" in payload:
            raise ValueError("MeterValues payload must be a JSON object without transactionId")
        now = self._clock()
        with self._write(f"MeterValues of transaction {tx_key}") as conn:
            tx = self._open_transaction(conn, tx_key, METER_VALUES)
            seq = self._enqueue(conn, tx.charge_point, METER_VALUES, payload, tx_key, now)
        return OutMessage(seq, tx.charge_point, METER_VALUES, _copy(payload), tx_key, 0, now)

    def stop_transaction(self, tx_key: int, *, meter_stop_wh: int, timestamp: str, reason: str,
                         transaction_data: list[dict[str, Any]] | None = None) -> OutMessage:
        """Close the transaction and enqueue its StopTransaction, in one commit. ValueError (and
        nothing changed): an unknown transaction, or one already stopped."""
        _whole("meter_stop_wh", meter_stop_wh)
        _text("timestamp", timestamp)
        _text("reason", reason)
        if transaction_data is not None and not isinstance(transaction_data, list):
            raise ValueError("transaction_data must be a list of MeterValue objects")
        now = self._clock()
        with self._write(f"the StopTransaction of transaction {tx_key}") as conn:
            tx = self._open_transaction(conn, tx_key, STOP)
            payload: dict[str, Any] = {"meterStop": meter_stop_wh, "timestamp": timestamp, "reason": reason,
                                       "idTag": tx.id_tag}
            if transaction_data is not None:
                payload["transactionData"] = transaction_data
            conn.execute("UPDATE transactions SET closed_ts = ? WHERE tx_key = ?", (now, tx_key))
            seq = self._enqueue(conn, tx.charge_point, STOP, payload, tx_key, now)
        return OutMessage(seq, tx.charge_point, STOP, _copy(payload), tx_key, 0, now)

    def delivered(self, seq: int, *, backend_tx_id: int | None = None) -> None:
        """The backend answered message ``seq``: delete it; for a StartTransaction also store the
        backend's transactionId on its transaction, in the same commit (a restart never sends that
        Start again). ValueError: an unknown ``seq``; a StartTransaction without
        ``backend_tx_id``, or another message with one."""
        with self._write(f"the delivery of message {seq}") as conn:
            message = self._message(conn, seq)
            if message.action == START:
                if backend_tx_id is None:
                    raise ValueError(f"message {seq} is a StartTransaction: its backend_tx_id is needed")
                _whole("backend_tx_id", backend_tx_id)
                conn.execute("UPDATE transactions SET backend_tx_id = ? WHERE tx_key = ?",
                             (backend_tx_id, message.tx_key))
            elif backend_tx_id is not None:
                raise ValueError(f"message {seq} is a {message.action}: only a StartTransaction has a "
                                 "backend_tx_id")
            self._delete(conn, seq)

    def failed(self, seq: int) -> int:
        """A send of ``seq`` got an error answer: count it; returns the attempts so far."""
        with self._write(f"the failed attempt of message {seq}") as conn:
            attempts = self._message(conn, seq).attempts + 1
            conn.execute("UPDATE messages SET attempts = ? WHERE seq = ?", (attempts, seq))
        return attempts

    def drop(self, seq: int, reason: str) -> None:
        """Delete ``seq`` without delivery (the backend refuses it for good), loudly: log.error
        with the message and ``reason``, counted in ``dropped()``."""
        with self._write(f"the drop of message {seq}") as conn:
            message = self._message(conn, seq)
            self._delete(conn, seq)
            self._dropped += 1
            self._after_commit.append(lambda: log.error(
                "%s: message %d (%s of %s, transaction %s, %d failed attempt(s)) DROPPED without delivery: %s; "
                "payload %s", LABEL, seq, message.action, message.charge_point, message.tx_key, message.attempts,
                reason, json.dumps(message.payload, separators=(",", ":"))))

    def adopt(self, tx_key: int, session_id: int) -> None:
        """Bind transaction ``tx_key`` to session ``session_id`` (a session that continued after a
        restart under a new id). ValueError: an unknown transaction."""
        _whole("session_id", session_id)
        with self._write(f"the session of transaction {tx_key}") as conn:
            if conn.execute("UPDATE transactions SET session_id = ? WHERE tx_key = ?",
                            (session_id, tx_key)).rowcount == 0:
                raise ValueError(f"no transaction {tx_key}")

    def set_state(self, charge_point: str, key: str, value: Any) -> None:
        """Keep ``value`` (anything JSON can hold) under (charge point, key); None deletes it."""
        _text("charge_point", charge_point)
        _text("key", key)
        text = None if value is None else _json(value)
        with self._write(f"the state {key} of {charge_point}") as conn:
            if text is None:
                conn.execute("DELETE FROM state WHERE charge_point = ? AND key = ?", (charge_point, key))
            else:
                conn.execute("INSERT INTO state(charge_point, key, value) VALUES (?, ?, ?) ON CONFLICT(charge_point, "
                             "key) DO UPDATE SET value = excluded.value", (charge_point, key, text))

    # ---- reading -----------------------------------------------------------------------------
    def first(self, charge_point: str) -> OutMessage | None:
        """The charge point's oldest pending message (lowest ``seq``), or None."""
        row = self._read_one(f"SELECT {MESSAGE_FIELDS} FROM messages WHERE charge_point = ? ORDER BY seq LIMIT 1",
                             (charge_point,))
        return None if row is None else _message(row)

    def pending(self, charge_point: str | None = None) -> int:
        """How many messages are waiting (for one charge point, or for all)."""
        if charge_point is None:
            row = self._read_one("SELECT count(*) FROM messages", ())
        else:
            row = self._read_one("SELECT count(*) FROM messages WHERE charge_point = ?", (charge_point,))
        return int(row[0]) if row is not None else 0

    def dropped(self) -> int:
        """Messages deleted without delivery since ``open()`` (``drop`` and the budget)."""
        with self._lock:
            return self._dropped

    def transaction(self, tx_key: int) -> Transaction | None:
        """The transaction ``tx_key`` (open or closed, until pruned), or None."""
        row = self._read_one(f"SELECT {TRANSACTION_FIELDS} FROM transactions WHERE tx_key = ?", (tx_key,))
        return None if row is None else _transaction(row)

    def open_transaction(self, charger_id: str) -> Transaction | None:
        """The charger's open transaction (the newest, should there be several), or None."""
        row = self._read_one(f"SELECT {TRANSACTION_FIELDS} FROM transactions WHERE charger_id = ? AND closed_ts IS "
                             "NULL ORDER BY tx_key DESC LIMIT 1", (charger_id,))
        return None if row is None else _transaction(row)

    def transaction_for_session(self, charger_id: str, session_id: int) -> Transaction | None:
        """The charger's transaction of that session (the newest, should there be several)."""
        row = self._read_one(f"SELECT {TRANSACTION_FIELDS} FROM transactions WHERE charger_id = ? AND session_id = ?"
                             " ORDER BY tx_key DESC LIMIT 1", (charger_id, session_id))
        return None if row is None else _transaction(row)

    def get_state(self, charge_point: str, key: str) -> Any | None:
        """The value ``set_state`` kept under (charge point, key), or None."""
        row = self._read_one("SELECT value FROM state WHERE charge_point = ? AND key = ?", (charge_point, key))
        return None if row is None else json.loads(row[0])

    # ---- inside a write ----------------------------------------------------------------------
    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction under the lock, committed before the ``with`` ends. Anything
        raised inside rolls it back (and the counters with it); an SQLite error becomes
        ``BackendOutboxError`` and a status fault. Log lines of the write come after the commit."""
        with self._lock:
            conn = self._connection()
            counters = (self._pending, self._dropped, self._over_budget)
            self._after_commit = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.commit()
            except BaseException as exc:
                _rollback(conn)
                self._pending, self._dropped, self._over_budget = counters
                if isinstance(exc, sqlite3.Error):
                    raise self._write_failed(what, exc) from exc
                raise
            self._write_worked()
            for note in self._after_commit:
                note()
            if self._clock() >= self._next_prune:
                self._prune(conn)

    def _enqueue(self, conn: sqlite3.Connection, charge_point: str, action: str, payload: dict[str, Any],
                 tx_key: int | None, now: float) -> int:
        """Insert one message; the budget may then drop older MeterValues. Returns its seq."""
        cursor = conn.execute(_INSERT_MESSAGE, (charge_point, action, _json(payload), tx_key, now))
        seq = int(cursor.lastrowid or 0)
        self._pending += 1
        if self._pending > self.max_pending:
            self._keep_budget(conn, before_seq=seq)
        return seq

    def _keep_budget(self, conn: sqlite3.Connection, before_seq: int) -> None:
        """Delete the oldest MeterValues beyond ``max_pending`` (never Start/Stop, never the
        message just enqueued)."""
        excess = self._pending - self.max_pending
        rows = conn.execute("SELECT seq, charge_point FROM messages WHERE action = ? AND seq < ? ORDER BY seq LIMIT ?",
                            (METER_VALUES, before_seq, excess)).fetchall()
        if not rows:
            return
        conn.executemany("DELETE FROM messages WHERE seq = ?", [(row[0],) for row in rows])
        self._pending -= len(rows)
        self._dropped += len(rows)
        self._over_budget += len(rows)
        points = ", ".join(sorted({str(row[1]) for row in rows}))
        self._after_commit.append(lambda: log.error(
            "%s: more than %d messages waiting for the backend: DROPPED the %d oldest MeterValues (seq %d..%d, %s)",
            LABEL, self.max_pending, len(rows), rows[0][0], rows[-1][0], points))

    def _delete(self, conn: sqlite3.Connection, seq: int) -> None:
        conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        self._pending -= 1

    def _message(self, conn: sqlite3.Connection, seq: int) -> OutMessage:
        row = conn.execute(f"SELECT {MESSAGE_FIELDS} FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise ValueError(f"no pending message {seq}")
        return _message(row)

    def _open_transaction(self, conn: sqlite3.Connection, tx_key: int, action: str) -> Transaction:
        row = conn.execute(f"SELECT {TRANSACTION_FIELDS} FROM transactions WHERE tx_key = ?", (tx_key,)).fetchone()
        if row is None:
            raise ValueError(f"no transaction {tx_key}")
        tx = _transaction(row)
        if not tx.open:
            raise ValueError(f"transaction {tx_key} is already stopped: no {action} after its StopTransaction")
        return tx

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendOutboxError(f"{LABEL} {self.path} is not open")
        return self._conn

    def _write_failed(self, what: str, exc: sqlite3.Error) -> BackendOutboxError:
        """The error to raise; logged and a status fault once per streak of failing writes."""
        error = one_line(exc)
        if self._write_fault is None:
            log.error("%s: writing %s to %s failed: %s; nothing of it is stored (logged once until a write "
                      "works again)", LABEL, what, self.path, error)
            self._write_fault = (f"{LABEL}: writing to {self.path} fails since {utc_text(self._clock())} ({error}); "
                                 "new messages for the backend are not stored")
        return BackendOutboxError(f"{LABEL}: {what} was not stored: {error}")

    def _write_worked(self) -> None:
        if self._write_fault is not None:
            log.warning("%s: writing to %s works again", LABEL, self.path)
            self._write_fault = None

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Delete transactions closed longer than the retention that have no pending message.
        Under the lock; a failure is logged and tried again when the next prune is due."""
        now = self._clock()
        self._next_prune = now + self._prune_every_s  # a failure is not retried at every write
        try:
            with conn:
                deleted = conn.execute(
                    "DELETE FROM transactions WHERE closed_ts < ? AND tx_key NOT IN "
                    "(SELECT tx_key FROM messages WHERE tx_key IS NOT NULL)", (now - self.retention_s,)).rowcount
        except sqlite3.Error as exc:
            log.warning("%s: pruning old transactions failed: %s", LABEL, one_line(exc))
            return
        if deleted:
            log.info("%s: deleted %d transaction(s) closed before %s", LABEL, deleted,
                     utc_text(now - self.retention_s))

    # ---- reading -----------------------------------------------------------------------------
    def _read_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of a query, or None. Raises BackendOutboxError."""
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise BackendOutboxError(f"{LABEL}: reading {self.path} failed: {one_line(exc)}") from exc


def _message(row: tuple[Any, ...]) -> OutMessage:
    seq, charge_point, action, payload, tx_key, attempts, created_ts = row
    return OutMessage(seq, charge_point, action, json.loads(payload), tx_key, attempts, created_ts)


def _transaction(row: tuple[Any, ...]) -> Transaction:
    tx_key, charge_point, charger_id, session_id, backend_tx_id, started_ts, meter_start_wh, id_tag, closed_ts = row
    return Transaction(tx_key, charge_point, charger_id, session_id, backend_tx_id, closed_ts is None, started_ts,
                       meter_start_wh, id_tag)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.rollback()
    except sqlite3.Error as exc:  # the failure already being reported is the one that matters
        log.debug("%s: rollback failed: %s", LABEL, exc)


def _json(value: Any) -> str:
    """``value`` as compact JSON. ValueError: not JSON (a NaN, a set, an object)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc


def _copy(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as it was stored (a caller's later change of its dict is not in the message)."""
    result: dict[str, Any] = json.loads(_json(payload))
    return result


def _text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")


def _whole(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")


__all__ = ["ACTIONS", "BackendOutbox", "BackendOutboxError", "BackendOutboxFileError", "CONNECTOR_ID", "FILE_NAME",
           "MAX_PENDING", "METER_VALUES", "OutMessage", "PRUNE_EVERY_S", "RETENTION_S", "RecordFileError", "START",
           "STOP", "Transaction"]
