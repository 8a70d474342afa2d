"""The state directory's ground rules: it must be writable at start, renames in it are made
durable, and a file that cannot be used is renamed aside, never deleted.

The variables file (``controller.records.persistence``), the grid log, the session log and the
backend outbox (``controller.records.sqlite_file``) all keep an unusable file under a new name and
start afresh, so that the service keeps controlling the site while the old content stays on the
card for whoever investigates (the grid log is a §14a EnWG record). ``set_aside`` is the one place that does this rename (and
``put_back`` the one that undoes it); both sync the directory, so the new names survive a power cut.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PROBE_NAME = ".gridcharge-write-probe"

# What lives in the state directory. The modules that own these files take the names from here,
# and ``gridcharge backup``/``restore`` (``controller.records.backup_manifest``) find them by them.
VARIABLES_FILE = "variables.json"  # controller.records.persistence
GRID_LOG_FILE = "gridlog.sqlite3"  # controller.records.gridlog
SESSIONS_FILE = "sessions.sqlite3"  # controller.records.sessions
BACKEND_OUTBOX_FILE = "backend_outbox.sqlite3"  # controller.records.backend_outbox
TLS_DIR = "tls"  # web.tls: the SMGW pair uploaded over the API
TLS_CERT_FILE = "cm.pem"
TLS_KEY_FILE = "cm.key"


class StateDirError(OSError):
    """The state directory cannot be used; ``str()`` is one line saying which and why."""


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def utc_text(unix_s: float) -> str:
    """A time for a log or status line: ``2026-01-05T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def one_line(exc: BaseException) -> str:
    """An exception as one log line: its errno text and file name, no newlines."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": '{exc.filename}'" if exc.filename else "")
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def check_writable(state_dir: Path) -> None:
    """Create ``state_dir`` if needed and prove that a file can be written and synced in it.

    A probe file is created, one byte written and fsynced, then removed, and the directory is
    synced: a read-only file system, a missing permission, a full card or a file where the
    directory should be all fail here, at start, instead of at the first save. Raises
    StateDirError.
    """
    probe = state_dir / PROBE_NAME
    try:
        if state_dir.exists() and not state_dir.is_dir():
            raise NotADirectoryError(20, "not a directory", str(state_dir))
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
        fsync_dir(state_dir)
    except OSError as exc:
        raise StateDirError(f"state_dir {state_dir} cannot be written: {one_line(exc)}") from exc


def set_aside(path: Path, *, label: str = "corrupt", sidecars: Sequence[str] = (),
              clock: Callable[[], float] = time.time) -> Path:
    """Rename ``path`` to ``<name>.<label>-<YYYYmmddTHHMMSSZ>`` (``-1``, ``-2`` … when that name
    is taken: two bad files in one second are both kept) and sync the directory. Returns the
    new path. Raises OSError when a rename fails; ``path`` itself is then still in place.

    ``sidecars`` are suffixes of files that belong to ``path`` (SQLite's ``-wal``/``-shm``). They
    are renamed first, to ``<new name><suffix>``: a stale ``-wal`` left next to a new database
    would be replayed into it.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    base = f"{path.name}.{label}-{stamp}"
    target = path.with_name(base)
    n = 1
    while target.exists() or any(target.with_name(target.name + s).exists() for s in sidecars):
        target = path.with_name(f"{base}-{n}")
        n += 1
    _rename_with_sidecars(path, target, sidecars)
    return target


def put_back(kept: Path, path: Path, *, sidecars: Sequence[str] = ()) -> None:
    """Undo ``set_aside``: rename ``kept`` (and its ``sidecars``) back to ``path`` and sync the
    directory. For an all-or-nothing change that failed after setting a file aside (``restore``).
    Raises OSError."""
    _rename_with_sidecars(kept, path, sidecars)


def _rename_with_sidecars(source: Path, target: Path, sidecars: Sequence[str]) -> None:
    """Sidecars first, then the file, then one directory sync for all the renames."""
    for suffix in sidecars:
        side = source.with_name(source.name + suffix)
        if side.exists():
            os.rename(side, target.with_name(target.name + suffix))
    os.rename(source, target)
    fsync_dir(source.parent)


__all__ = ["BACKEND_OUTBOX_FILE", "GRID_LOG_FILE", "PROBE_NAME", "SESSIONS_FILE", "TLS_CERT_FILE", "TLS_DIR",
           "TLS_KEY_FILE", "VARIABLES_FILE", "StateDirError", "check_writable", "fsync_dir", "one_line", "put_back",
           "set_aside", "utc_text"]
