"""What a gridcharge backup holds and where each file lives: the manifest, shared by
``controller.records.backup`` (writes one) and ``controller.records.restore`` (checks one and puts it back).

A backup is one ``.tar.gz`` with ``manifest.json`` and up to nine files, each under a fixed
name for its role (never the path it came from, so a crafted archive cannot name a place to
write to). The manifest lists every file with its role, its size, SHA-256 and mode, and the path
it was saved from (for the reader; ``restore`` writes to where the *restored* config says).

Where a role lives (``destinations``):

========================= ========================================= ============================
role                      file                                      archive name
========================= ========================================= ============================
``config``                the ``--config`` path                     ``config.yaml``
``variables``             ``state_dir/variables.json``              ``state/variables.json``
``grid_log``              ``state_dir/gridlog.sqlite3``             ``state/gridlog.sqlite3``
``sessions``              ``state_dir/sessions.sqlite3``            ``state/sessions.sqlite3``
``upload_cert``/``_key``  ``state_dir/tls/cm.pem``/``cm.key``       ``state/tls/cm.pem``/``.key``
``smgw_cert``/``_key``    the config's ``smgw.cert``/``smgw.key``   ``smgw/cert.pem``/``key.pem``
``smgw_client_ca``        the config's ``smgw.client_ca``           ``smgw/client_ca.pem``
========================= ========================================= ============================
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.records import gridlog_file, sessions
from controller.records.sqlite_file import FileSpec
from controller.records.statedir import (
    GRID_LOG_FILE,
    SESSIONS_FILE,
    TLS_CERT_FILE,
    TLS_DIR,
    TLS_KEY_FILE,
    VARIABLES_FILE,
)

if TYPE_CHECKING:
    from controller.config import Config

FORMAT = "gridcharge-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 1024


class BackupError(Exception):
    """A backup that cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Role(str, enum.Enum):
    CONFIG = "config"
    VARIABLES = "variables"
    GRID_LOG = "grid_log"
    SESSIONS = "sessions"
    UPLOAD_CERT = "upload_cert"
    UPLOAD_KEY = "upload_key"
    SMGW_CERT = "smgw_cert"
    SMGW_KEY = "smgw_key"
    SMGW_CLIENT_CA = "smgw_client_ca"


ARCHIVE_NAMES: Mapping[Role, str] = {
    Role.CONFIG: "config.yaml",
    Role.VARIABLES: f"state/{VARIABLES_FILE}",
    Role.GRID_LOG: f"state/{GRID_LOG_FILE}",
    Role.SESSIONS: f"state/{SESSIONS_FILE}",
    Role.UPLOAD_CERT: f"state/{TLS_DIR}/{TLS_CERT_FILE}",
    Role.UPLOAD_KEY: f"state/{TLS_DIR}/{TLS_KEY_FILE}",
    Role.SMGW_CERT: "smgw/cert.pem",
    Role.SMGW_KEY: "smgw/key.pem",
    Role.SMGW_CLIENT_CA: "smgw/client_ca.pem",
}

#: The files of the state directory: restore makes them exactly the backup's, so one the backup
#: does not have is kept aside (an uploaded pair would otherwise win over the restored config's).
STATE_ROLES = (Role.VARIABLES, Role.GRID_LOG, Role.SESSIONS, Role.UPLOAD_CERT, Role.UPLOAD_KEY)

#: The SQLite records (copied with SQLite's online backup, checked against their schema on
#: restore, set aside with their ``-wal``/``-shm``), by role.
SQLITE_ROLES: Mapping[Role, FileSpec] = {Role.GRID_LOG: gridlog_file.SPEC, Role.SESSIONS: sessions.SPEC}


def destinations(cfg: Config, config_path: Path) -> dict[Role, Path]:
    """Where each role lives for the config ``cfg`` read from ``config_path``."""
    state_dir = Path(cfg.state_dir)
    places = {
        Role.CONFIG: config_path,
        Role.VARIABLES: state_dir / VARIABLES_FILE,
        Role.GRID_LOG: state_dir / GRID_LOG_FILE,
        Role.SESSIONS: state_dir / SESSIONS_FILE,
        Role.UPLOAD_CERT: state_dir / TLS_DIR / TLS_CERT_FILE,
        Role.UPLOAD_KEY: state_dir / TLS_DIR / TLS_KEY_FILE,
    }
    if cfg.smgw is not None:
        places[Role.SMGW_CERT] = Path(cfg.smgw.cert)
        places[Role.SMGW_KEY] = Path(cfg.smgw.key)
        places[Role.SMGW_CLIENT_CA] = Path(cfg.smgw.client_ca)
    return places


@dataclass(frozen=True)
class Entry:
    """One file of a backup."""

    role: Role
    source: str  # the path it was saved from
    size: int
    sha256: str
    mode: int  # permission bits of the source

    @property
    def name(self) -> str:
        return ARCHIVE_NAMES[self.role]


@dataclass(frozen=True)
class Manifest:
    created: float  # unix time
    gridcharge: str  # the version that wrote it
    host: str
    config_path: str
    state_dir: str
    entries: tuple[Entry, ...]

    def entry(self, role: Role) -> Entry | None:
        return next((e for e in self.entries if e.role is role), None)

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created": self.created,
            "gridcharge": self.gridcharge, "host": self.host, "config_path": self.config_path,
            "state_dir": self.state_dir,
            "files": [{"role": e.role.value, "name": e.name, "source": e.source, "size": e.size,
                       "sha256": e.sha256, "mode": f"{e.mode:04o}"} for e in self.entries],
        }
        return (json.dumps(data, indent=2) + "\n").encode()


_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODE = re.compile(r"0[0-7]{3}")


def _text(data: Mapping[str, Any], key: str, problems: list[str], where: str = "manifest") -> str:
    value = data.get(key)
    if not isinstance(value, str):
        problems.append(f"{where}: {key} is missing or not a text")
        return ""
    return value


def _entry(item: Any, index: int, problems: list[str]) -> Entry | None:
    where = f"manifest files[{index}]"
    if not isinstance(item, dict):
        problems.append(f"{where}: not an object")
        return None
    try:
        role = Role(item.get("role"))
    except ValueError:
        problems.append(f"{where}: unknown role {item.get('role')!r}")
        return None
    if item.get("name") != ARCHIVE_NAMES[role]:
        problems.append(f"{where}: {role.value} must be stored as {ARCHIVE_NAMES[role]}, not {item.get('name')!r}")
    size, sha, mode = item.get("size"), item.get("sha256"), item.get("mode")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"{where}: size {size!r} is not a byte count")
        size = 0
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        problems.append(f"{where}: sha256 {sha!r} is not a SHA-256 in hex")
    if not isinstance(mode, str) or not _MODE.fullmatch(mode):
        problems.append(f"{where}: mode {mode!r} is not like 0640")
        mode = "0600"
    return Entry(role, _text(item, "source", problems, where), size, str(sha), int(mode, 8))


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest of a backup; raises BackupError listing everything wrong with it."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=lambda c: math.nan)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BackupError([f"manifest is not JSON: {exc}"]) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(["manifest: not a gridcharge backup (format is not 'gridcharge-backup')"])
    if data.get("format_version") != FORMAT_VERSION:
        raise BackupError([f"manifest: format_version {data.get('format_version')!r}; this gridcharge "
                           f"reads {FORMAT_VERSION} (a newer gridcharge wrote it?)"])
    problems: list[str] = []
    created = data.get("created")
    if not isinstance(created, (int, float)) or isinstance(created, bool) or not math.isfinite(created):
        problems.append(f"manifest: created {created!r} is not a time")
        created = 0.0
    files = data.get("files")
    if not isinstance(files, list):
        raise BackupError(problems + ["manifest: files is not a list"])
    entries = [e for i, item in enumerate(files) if (e := _entry(item, i, problems)) is not None]
    roles = [e.role for e in entries]
    for role in {r for r in roles if roles.count(r) > 1}:
        problems.append(f"manifest: {role.value} listed {roles.count(role)} times")
    if Role.CONFIG not in roles:
        problems.append("manifest: the backup has no config")
    manifest = Manifest(float(created), _text(data, "gridcharge", problems), _text(data, "host", problems),
                        _text(data, "config_path", problems), _text(data, "state_dir", problems), tuple(entries))
    if problems:
        raise BackupError(problems)
    return manifest


__all__ = ["ARCHIVE_NAMES", "BackupError", "Entry", "FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest",
           "Role", "SQLITE_ROLES", "STATE_ROLES", "destinations", "parse_manifest"]
