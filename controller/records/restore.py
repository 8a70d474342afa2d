"""``gridcharge restore FILE``: check a backup completely, and only then put its files back.

In this order, and nothing is changed until step 4:

1. **Not while the service runs.** A running service holds the grid log open and would keep
   writing to the replaced file, and its variable saver would overwrite the restored
   ``variables.json`` at the next change. So restore refuses when a process has the grid log of
   the target state directory open (found in ``/proc``; the service itself, or any other
   program), or when systemd says ``gridcharge`` is active.
2. **The archive.** ``manifest.json`` parses, every file it lists is in the archive exactly
   once as a regular file under its role's fixed name, with the size and SHA-256 the manifest
   says, and the archive holds nothing else. Each file is extracted into a private staging
   directory, never to a path the archive names.
3. **The content**, every check run and every problem reported together: the config parses and
   passes every check of ``check-config``; ``variables.json`` parses as the service reads it; the
   grid log and the session log open as our schema and pass ``PRAGMA quick_check``; each certificate pair loads
   with its key (``ssl``), the client CA loads.
4. **Replace, one file at a time, atomically.** Each file is first written next to its
   destination under a temporary name (owner and mode of the file it replaces, else of its
   directory and the mode it was saved with), fsynced; only when all are written does each
   existing file get renamed aside (``<name>.before-restore-<UTC>``, the SQLite logs with
   their ``-wal``/``-shm``) and the new one renamed into place. A file of the state directory that the
   backup does not have (no variables saved yet, no uploaded pair) is renamed aside too, so the
   state is the backup's. Nothing is deleted. Should a rename fail midway, the ones done are
   undone.

Where the files go: the config to ``--config``; the state files to the ``state_dir`` of the
*restored* config; the SMGW files to the paths in its ``smgw`` section.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.records import sqlite_file
from controller.records.sqlite_file import FileSpec
from controller.records.backup_manifest import (
    ARCHIVE_NAMES,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SQLITE_ROLES,
    STATE_ROLES,
    BackupError,
    Manifest,
    Role,
    destinations,
    parse_manifest,
)
from controller.records.statedir import GRID_LOG_FILE, fsync_dir, one_line, put_back, set_aside

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
ASIDE_LABEL = "before-restore"
SERVICE = "gridcharge"


class RestoreRefused(Exception):
    """Restore did not change anything; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


RESTORED, UNCHANGED, NOT_IN_BACKUP = "restored", "unchanged", "not in the backup"


@dataclass(frozen=True)
class Replaced:
    role: Role
    path: Path
    kept_as: Path | None  # where the file it replaced now is; None when there was none
    outcome: str  # RESTORED; UNCHANGED (the same bytes were there); NOT_IN_BACKUP (only kept aside)


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    files: tuple[Replaced, ...]
    warnings: tuple[str, ...]


# --------------------------------------------------------------------------- 1. the service


def _holders(paths: list[Path], proc: Path = Path("/proc")) -> list[str]:
    """Processes other than this one that have one of ``paths`` open, as ``1234 (cmdline)``."""
    wanted = {str(p) for p in paths}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            targets = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:  # gone meanwhile, or another user's process without root
            continue
        if targets & wanted:
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmdline = "?"
            found.append(f"{entry.name} ({cmdline[:120]})")
    return found


def _systemd_active() -> bool:
    if shutil.which("systemctl") is None:
        return False
    try:
        done = subprocess.run(["systemctl", "is-active", "--quiet", SERVICE], timeout=10,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def service_running(state_dirs: list[Path], *,
                    systemd_active: Callable[[], bool] = _systemd_active) -> list[str]:
    """Why the service seems to be running on one of ``state_dirs`` (empty: it is not)."""
    reasons = []
    for state_dir in dict.fromkeys(d.resolve() for d in state_dirs):
        grid_log = state_dir / GRID_LOG_FILE
        reasons += [f"process {who} has the grid log {grid_log} open"
                    for who in _holders([grid_log, Path(f"{grid_log}-wal")])]
    if systemd_active():
        reasons.append(f"systemd says the {SERVICE} service is active")
    return reasons


# --------------------------------------------------------------------------- 2. the archive


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, size: int) -> str:
    """Copy one member to ``target`` (mode 0600) and return its SHA-256."""
    source = tar.extractfile(member)
    if source is None:
        raise BackupError([f"{member.name}: cannot be read"])
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        remaining = size
        while remaining > 0 and (chunk := source.read(min(CHUNK, remaining))):
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def read_backup(archive: Path, staging: Path) -> tuple[Manifest, dict[Role, Path]]:
    """The manifest, and each file extracted into ``staging`` and checked against it.
    Raises BackupError listing every problem; OSError when ``archive`` cannot be read."""
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except OSError as exc:
        raise BackupError([f"cannot read {archive}: {one_line(exc)}"]) from None
    except (tarfile.TarError, EOFError) as exc:
        raise BackupError([f"{archive} is not a gridcharge backup (.tar.gz): {exc}"]) from None
    with tar:
        try:
            members = tar.getmembers()
        except Exception as exc:  # TarError, EOFError, zlib.error, BadGzipFile: a damaged archive
            raise BackupError([f"{archive} is damaged: {one_line(exc)}"]) from None
        by_name: dict[str, list[tarfile.TarInfo]] = {}
        for member in members:
            by_name.setdefault(member.name, []).append(member)
        heads = by_name.get(MANIFEST_NAME, [])
        if len(heads) != 1 or not heads[0].isfile() or heads[0].size > MAX_MANIFEST_BYTES:
            raise BackupError([f"{archive} has no usable {MANIFEST_NAME}: not a gridcharge backup"])
        manifest_file = tar.extractfile(heads[0])
        manifest = parse_manifest(manifest_file.read() if manifest_file is not None else b"")
        problems: list[str] = []
        expected = {e.name for e in manifest.entries} | {MANIFEST_NAME}
        problems += [f"{name}: in the archive but not in the manifest" for name in sorted(set(by_name) - expected)]
        staged: dict[Role, Path] = {}
        for entry in manifest.entries:
            found = by_name.get(entry.name, [])
            if len(found) != 1:
                problems.append(f"{entry.name}: {'missing from' if not found else 'more than once in'} the archive")
                continue
            member = found[0]
            if not member.isfile():
                problems.append(f"{entry.name}: not a regular file")
                continue
            if member.size != entry.size:
                problems.append(f"{entry.name}: {member.size} bytes, the manifest says {entry.size}")
                continue
            target = staging / entry.role.value
            try:
                digest = _extract(tar, member, target, entry.size)
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the staging disk (full, I/O), not the archive
                problems.append(f"{entry.name}: damaged in the archive ({one_line(exc)})")
                continue
            if digest != entry.sha256:
                problems.append(f"{entry.name}: its SHA-256 differs from the manifest's (damaged or altered)")
                continue
            staged[entry.role] = target
    if problems:
        raise BackupError(problems)
    return manifest, staged


# --------------------------------------------------------------------------- 3. the content


def _check_config(path: Path) -> tuple[Any | None, list[str], list[str]]:
    from controller.config import ConfigError, config_warnings, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, [f"{ARCHIVE_NAMES[Role.CONFIG]}: {line}" for line in exc.errors], []
    return cfg, [], [f"config: {w}" for w in config_warnings(cfg)]


def _check_variables(path: Path) -> list[str]:
    from controller.records.persistence import CorruptFile, parse_saved

    try:
        parse_saved(path.read_text(encoding="utf-8"))
    except (CorruptFile, UnicodeDecodeError) as exc:
        return [f"{ARCHIVE_NAMES[Role.VARIABLES]}: unusable ({exc})"]
    return []


def _check_sqlite(role: Role, spec: FileSpec, path: Path) -> list[str]:
    try:
        unusable = sqlite_file.inspect(spec, path)
    except (OSError, sqlite3.Error) as exc:  # not about the content: reported all the same
        return [f"{ARCHIVE_NAMES[role]}: cannot be opened ({one_line(exc)})"]
    return [f"{ARCHIVE_NAMES[role]}: {unusable.label} ({unusable.why})"] if unusable else []


def _no_passphrase() -> bytes:
    raise ValueError("the private key is encrypted")


def _check_pair(cert: Path | None, key: Path | None, what: str) -> list[str]:
    if cert is None and key is None:
        return []
    if cert is None or key is None:
        return [f"{what}: the backup has the {'key' if cert is None else 'certificate'} without the other half"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except (ssl.SSLError, ValueError, OSError) as exc:
        return [f"{what}: the certificate and key do not load as a pair ({one_line(exc)})"]
    return []


def _check_ca(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError) as exc:
        return [f"{ARCHIVE_NAMES[Role.SMGW_CLIENT_CA]}: not a usable CA certificate ({one_line(exc)})"]
    return []


def check_content(staged: dict[Role, Path]) -> tuple[Any, list[str]]:
    """The restored config and the warnings; raises BackupError with every problem found."""
    cfg, problems, warnings = _check_config(staged[Role.CONFIG])
    if Role.VARIABLES in staged:
        problems += _check_variables(staged[Role.VARIABLES])
    for role, spec in SQLITE_ROLES.items():
        if role in staged:
            problems += _check_sqlite(role, spec, staged[role])
    problems += _check_pair(staged.get(Role.UPLOAD_CERT), staged.get(Role.UPLOAD_KEY), "state/tls (uploaded pair)")
    problems += _check_pair(staged.get(Role.SMGW_CERT), staged.get(Role.SMGW_KEY), "smgw cert/key")
    problems += _check_ca(staged.get(Role.SMGW_CLIENT_CA))
    if problems:
        raise BackupError(problems)
    return cfg, warnings


# --------------------------------------------------------------------------- 4. replace


@dataclass
class _Step:
    role: Role
    dest: Path
    temp: Path | None  # the new file beside dest; None: only keep the existing one aside
    kept_as: Path | None = None
    done: bool = False


def _owner_and_mode(dest: Path, saved_mode: int) -> tuple[int, int, int]:
    """uid, gid, mode for the new file: those of the file it replaces, else of its directory
    with the mode the file was saved with."""
    if dest.exists():
        st = dest.stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o777
    st = dest.parent.stat()
    return st.st_uid, st.st_gid, saved_mode


def _write_beside(source: Path, dest: Path, saved_mode: int) -> Path:
    temp = dest.with_name(f".{dest.name}.restore-{os.getpid()}")
    uid, gid, mode = _owner_and_mode(dest, saved_mode)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        if os.geteuid() == 0:
            os.chown(temp, uid, gid)
        os.chmod(temp, mode)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _same_content(path: Path, sha256: str) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _steps(manifest: Manifest, staged: dict[Role, Path],
           places: dict[Role, Path]) -> tuple[list[_Step], list[Replaced]]:
    """What to do: write every staged file that differs from the one in place, and keep aside a
    state file the backup does not have. Also the files left alone because they are the same."""
    steps, unchanged = [], []
    for role, dest in places.items():
        entry = manifest.entry(role)
        if role in staged and entry is not None and _same_content(dest, entry.sha256):
            unchanged.append(Replaced(role, dest, None, UNCHANGED))
        elif role in staged or (role in STATE_ROLES and os.path.lexists(dest)):
            steps.append(_Step(role, dest, None))
    return steps, unchanged


def _commit(steps: list[_Step], clock: Callable[[], float]) -> None:
    """Keep each existing file aside and rename the new one in; undo all on a failure."""
    try:
        for step in steps:
            sidecars = sqlite_file.SIDECARS if step.role in SQLITE_ROLES else ()
            if os.path.lexists(step.dest):
                step.kept_as = set_aside(step.dest, label=ASIDE_LABEL, sidecars=sidecars, clock=clock)
            if step.temp is not None:
                os.replace(step.temp, step.dest)
                fsync_dir(step.dest.parent)
            step.done = True
    except OSError:
        for step in reversed(steps):
            _undo(step)
        raise


def _undo(step: _Step) -> None:
    try:
        if step.done and step.temp is not None and step.dest.exists():
            os.replace(step.dest, step.temp)
        if step.kept_as is not None:
            sidecars = sqlite_file.SIDECARS if step.role in SQLITE_ROLES else ()
            put_back(step.kept_as, step.dest, sidecars=sidecars)
    except OSError as exc:
        log.error("restore: could not undo %s (%s); the previous file is %s", step.dest, one_line(exc),
                  step.kept_as)


def restore_backup(archive: Path, config_path: Path, *, clock: Callable[[], float] = time.time,
                   systemd_active: Callable[[], bool] = _systemd_active) -> RestoreResult:
    """Restore ``archive`` (module doc). Raises RestoreRefused (nothing changed) or OSError (a
    file could not be written; nothing changed, or every change undone)."""
    with tempfile.TemporaryDirectory(prefix="gridcharge-restore-") as tmp:
        try:
            manifest, staged = read_backup(archive, Path(tmp))
            cfg, warnings = check_content(staged)
        except BackupError as exc:
            raise RestoreRefused(exc.problems) from None
        places = destinations(cfg, config_path.absolute())
        running = service_running([Path(cfg.state_dir), *_current_state_dir(config_path)],
                                  systemd_active=systemd_active)
        if running:
            raise RestoreRefused([f"the service is running ({'; '.join(running)}): stop it first "
                                  f"(sudo systemctl stop {SERVICE}), restore, then start it again"])
        steps, unchanged = _steps(manifest, staged, places)
        created: list[Path] = []
        try:
            for step in steps:
                if step.role in staged:
                    created += _make_dirs(step.dest.parent)
                    entry = manifest.entry(step.role)
                    step.temp = _write_beside(staged[step.role], step.dest, entry.mode if entry else 0o600)
            _commit(steps, clock)
        except BaseException:
            for step in steps:  # every change is undone by now: only the new files are left over
                if step.temp is not None:
                    step.temp.unlink(missing_ok=True)
            for directory in reversed(created):
                _remove_if_empty(directory)
            raise
    done = [Replaced(s.role, s.dest, s.kept_as, RESTORED if s.role in staged else NOT_IN_BACKUP) for s in steps]
    order = list(places)
    files = sorted(done + unchanged, key=lambda f: order.index(f.role))
    return RestoreResult(manifest, tuple(files), tuple(warnings))


def _current_state_dir(config_path: Path) -> list[Path]:
    """The state directory of the config in place now, which a running service uses."""
    from controller.config import ConfigError, load_config

    try:
        return [Path(load_config(config_path).state_dir)] if config_path.exists() else []
    except (ConfigError, OSError):
        return []


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and missing parents, each with the owner of its parent and mode 0700
    (like the service's own ``tls`` directory); return those created, outermost first."""
    missing = []
    for parent in [directory, *directory.parents]:
        if parent.exists():
            break
        missing.append(parent)
    made: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700)
            made.append(path)
            if os.geteuid() == 0:
                st = path.parent.stat()
                os.chown(path, st.st_uid, st.st_gid)
    except OSError:
        for path in reversed(made):
            _remove_if_empty(path)
        raise
    return made


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


__all__ = ["RestoreRefused", "RestoreResult", "Replaced", "read_backup", "restore_backup", "service_running"]
