"""The backend outbox's SQLite file: its three tables, its ``user_version``, and the
``sqlite_file.FileSpec`` that lets the shared code open, check and set it aside
(``controller.records.backend_outbox`` says what the outbox promises).

- ``messages``: one row per message not yet delivered. ``seq`` is ``AUTOINCREMENT``, so a number
  is never given twice, even after the newest message was delivered and deleted: the order of
  ``seq`` is the order of enqueueing, across restarts. ``payload`` is the OCPP payload as JSON.
- ``transactions``: one row per local transaction (``tx_key``, ``AUTOINCREMENT`` too: never
  reused). ``backend_tx_id`` is NULL until the backend answered its StartTransaction;
  ``closed_ts`` is NULL while it is open (set when its StopTransaction is enqueued).
- ``state``: a JSON value per (charge point, key), for whatever the gateway must remember about
  a charge point across a restart.
"""

from __future__ import annotations

from controller.records.sqlite_file import Columns, FileSpec, RecordFileError

SCHEMA_VERSION = 1
LABEL = "backend outbox"
LOGGER = "controller.records.backend_outbox"

MESSAGE_COLUMNS: Columns = (
    ("seq", "INTEGER"), ("charge_point", "TEXT"), ("action", "TEXT"), ("payload", "TEXT"),
    ("tx_key", "INTEGER"), ("attempts", "INTEGER"), ("created_ts", "REAL"))
TRANSACTION_COLUMNS: Columns = (
    ("tx_key", "INTEGER"), ("charge_point", "TEXT"), ("charger_id", "TEXT"), ("session_id", "INTEGER"),
    ("backend_tx_id", "INTEGER"), ("started_ts", "REAL"), ("meter_start_wh", "INTEGER"), ("id_tag", "TEXT"),
    ("closed_ts", "REAL"))
STATE_COLUMNS: Columns = (("charge_point", "TEXT"), ("key", "TEXT"), ("value", "TEXT"))

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages(seq INTEGER PRIMARY KEY AUTOINCREMENT, charge_point TEXT NOT NULL,"
    " action TEXT NOT NULL, payload TEXT NOT NULL, tx_key INTEGER, attempts INTEGER NOT NULL,"
    " created_ts REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_order ON messages(charge_point, seq)",
    "CREATE TABLE IF NOT EXISTS transactions(tx_key INTEGER PRIMARY KEY AUTOINCREMENT,"
    " charge_point TEXT NOT NULL, charger_id TEXT NOT NULL, session_id INTEGER, backend_tx_id INTEGER,"
    " started_ts REAL NOT NULL, meter_start_wh INTEGER NOT NULL, id_tag TEXT NOT NULL, closed_ts REAL)",
    "CREATE INDEX IF NOT EXISTS transactions_charger ON transactions(charger_id, tx_key)",
    "CREATE INDEX IF NOT EXISTS transactions_closed ON transactions(closed_ts)",
    "CREATE TABLE IF NOT EXISTS state(charge_point TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
    " PRIMARY KEY(charge_point, key))",
)

MESSAGE_FIELDS = ", ".join(name for name, _ in MESSAGE_COLUMNS)
TRANSACTION_FIELDS = ", ".join(name for name, _ in TRANSACTION_COLUMNS)


class BackendOutboxFileError(RecordFileError):
    """The backend outbox cannot be opened for writing, for a reason a new file would not cure (a
    read-only file system, no permission, no space, an I/O error). ``str()`` is one line."""


SPEC = FileSpec(label=LABEL, table="messages", columns=MESSAGE_COLUMNS, schema=_SCHEMA, version=SCHEMA_VERSION,
                logger=LOGGER, error=BackendOutboxFileError,
                more_tables=(("transactions", TRANSACTION_COLUMNS), ("state", STATE_COLUMNS)))

__all__ = ["BackendOutboxFileError", "LABEL", "MESSAGE_COLUMNS", "MESSAGE_FIELDS", "SCHEMA_VERSION", "SPEC",
           "STATE_COLUMNS", "TRANSACTION_COLUMNS", "TRANSACTION_FIELDS"]
