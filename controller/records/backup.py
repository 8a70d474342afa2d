"""``gridcharge backup FILE``: the config, the saved variables, the grid log, the session log and
the TLS files in one ``.tar.gz`` with a manifest (``controller.records.backup_manifest``).

Safe while the service runs: the grid log and the session log are copied with SQLite's online
backup, which gives one
consistent snapshot even while the writer commits (a plain file copy of a WAL database can tear),
and ``variables.json`` is only ever replaced by a rename, so reading it sees one whole version.

The file holds private keys and the API password's hash: it is written with mode 0600, to a
temporary name first and renamed when complete, so a failed backup never leaves a half file
under the name asked for.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import socket
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.records import sqlite_file
from controller.records.backup_manifest import MANIFEST_NAME, SQLITE_ROLES, Entry, Manifest, Role, destinations
from controller.records.statedir import fsync_dir
from controller.version import version

if TYPE_CHECKING:
    from controller.config import Config

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BackupResult:
    manifest: Manifest
    path: Path
    size: int
    missing: tuple[str, ...]  # files the config names that were not there (one line each)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite record (the grid log, the session log) at ``target``
    (SQLite's online backup).

    The source connection is the writer's usual one (read-write, never creating the file), not
    a read-only one: a read-only connection cannot clean up the ``-wal``/``-shm`` files it
    creates when the service is not running, and would leave them behind in the state directory.
    """
    src = sqlite_file.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _collect(cfg: Config, config_path: Path, work: Path) -> tuple[dict[Role, tuple[Path, Path]], list[str]]:
    """Copy every file of the backup into ``work`` first, so that what is hashed is what is
    archived even if the service replaces a file meanwhile. Returns role → (where it came from,
    its copy), and one line for each file the config names that is absent."""
    found: dict[Role, tuple[Path, Path]] = {}
    missing: list[str] = []
    for role, path in destinations(cfg, config_path).items():
        if not path.is_file():
            if role.value.startswith("smgw_"):
                missing.append(f"{role.value}: {path} does not exist (smgw section of the config)")
            continue
        copy = work / role.value
        if role in SQLITE_ROLES:
            snapshot_sqlite(path, copy)
        else:
            shutil.copyfile(path, copy)
        found[role] = (path, copy)
    return found, missing


def _add(tar: tarfile.TarFile, name: str, data: bytes | Path, mode: int, mtime: float) -> None:
    """One member with neutral owner fields (restore sets owners from the place it writes to)."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = mode, int(mtime)
    if isinstance(data, bytes):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    info.size = data.stat().st_size
    with open(data, "rb") as f:
        tar.addfile(info, f)


def create_backup(cfg: Config, config_path: Path, out: Path, *, clock: Any = time.time) -> BackupResult:
    """Write the backup of ``cfg`` (read from ``config_path``) to ``out``. Raises OSError or
    sqlite3.Error; ``out`` is then untouched."""
    out = out.absolute()
    with tempfile.TemporaryDirectory(prefix=".gridcharge-backup-", dir=out.parent) as tmp:
        work = Path(tmp)
        found, missing = _collect(cfg, config_path, work)
        entries = []
        for role, (origin, copy) in found.items():
            entries.append(Entry(role, str(origin), copy.stat().st_size, sha256_of(copy),
                                 origin.stat().st_mode & 0o777))
        manifest = Manifest(clock(), version(), socket.gethostname(), str(config_path),
                            str(cfg.state_dir), tuple(entries))
        partial = work / "backup.tar.gz"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            _add(tar, MANIFEST_NAME, manifest.to_json(), 0o644, manifest.created)
            for entry in entries:
                origin, copy = found[entry.role]
                _add(tar, entry.name, copy, entry.mode, origin.stat().st_mtime)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        size = partial.stat().st_size
        os.replace(partial, out)
        fsync_dir(out.parent)
    log.debug("backup %s: %d file(s), %d bytes", out, len(entries), size)
    return BackupResult(manifest, out, size, tuple(missing))


__all__ = ["BackupResult", "create_backup", "sha256_of", "snapshot_sqlite"]
