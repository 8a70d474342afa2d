"""The grid log's SQLite file: its table (``events``), its ``user_version``, and the file
operations of ``controller.records.sqlite_file`` bound to it.

A grid log file that is corrupt or foreign is kept aside as ``gridlog.sqlite3.corrupt-<UTC>`` or
``.foreign-<UTC>`` and a new log started (``sqlite_file`` says when and how); anything a new file
would not cure raises ``GridLogFileError``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from controller.records import sqlite_file
from controller.records.sqlite_file import (
    CHECK_BUDGET_S,
    FILE_MODE,
    SIDECARS,
    FileSpec,
    RecordFileError,
    SetAside,
    Unusable,
    connect,
    is_corrupt,
    used_bytes,
)

SCHEMA_VERSION = 1
COLUMNS = (("id", "INTEGER"), ("ts", "REAL"), ("kind", "TEXT"), ("name", "TEXT"), ("old", "TEXT"),
           ("new", "TEXT"), ("source", "TEXT"), ("grid_power_w", "REAL"))
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL,"
    " name TEXT NOT NULL, old TEXT, new TEXT, source TEXT NOT NULL, grid_power_w REAL)",
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)",
)


class GridLogFileError(RecordFileError):
    """The grid log cannot be opened for writing, for a reason a new file would not cure (a
    read-only file system, no permission, no space, an I/O error). ``str()`` is one line."""


SPEC = FileSpec(label="grid log", table="events", columns=COLUMNS, schema=_SCHEMA,
                version=SCHEMA_VERSION, logger="controller.records.gridlog", error=GridLogFileError)


def quick_check(conn: sqlite3.Connection, budget_s: float) -> str | None:
    """``sqlite_file.quick_check`` with the grid log's words."""
    return sqlite_file.quick_check(conn, budget_s, SPEC.label, SPEC.log)


def inspect(path: Path, budget_s: float = CHECK_BUDGET_S) -> Unusable | None:
    """Why the existing ``path`` cannot be used as the grid log, or None when it can."""
    return sqlite_file.inspect(SPEC, path, budget_s)


def set_aside(path: Path, unusable: Unusable, clock: Callable[[], float]) -> SetAside:
    """Keep the grid log ``path`` aside, loudly. Raises OSError."""
    return sqlite_file.set_aside(SPEC, path, unusable, clock)


def open_for_writing(path: Path, *, budget_s: float = CHECK_BUDGET_S,
                     clock: Callable[[], float] = time.time) -> tuple[sqlite3.Connection, SetAside | None]:
    """Open (create) the grid log for its writer (``sqlite_file.open_for_writing``)."""
    return sqlite_file.open_for_writing(SPEC, path, budget_s=budget_s, clock=clock)


__all__ = ["CHECK_BUDGET_S", "COLUMNS", "FILE_MODE", "GridLogFileError", "SCHEMA_VERSION", "SIDECARS", "SPEC",
           "SetAside", "Unusable", "connect", "inspect", "is_corrupt", "open_for_writing",
           "quick_check", "set_aside", "used_bytes"]
