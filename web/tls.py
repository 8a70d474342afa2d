"""The SMGW listener's TLS material: server certificate and key, client CA, and their uploads.

This module owns which certificate/key pair the SMGW listener serves, how an uploaded pair is
stored, and the ``ssl.SSLContext`` the listener uses (mutual TLS). What an upload
must be (parsing and every check) is ``web.tls_checks``.

- The electrician installs a pair at ``smgw.cert`` / ``smgw.key``. An admin may later upload a new
  pair (``POST /cnf?cmd=set_tls_cert``); it goes to ``state_dir/tls/cm.pem`` + ``cm.key`` (directory
  0700, files 0600) because the systemd unit makes ``/etc`` read-only. Once an uploaded pair
  exists it wins over the config pair.
- An upload is checked completely before anything is written (``web.tls_checks``), and the
  written files are loaded by ``ssl`` and proven by real handshakes on 127.0.0.1
  (``web.tls_proof``) before they replace the old ones: a bad upload raises ``TlsError`` (the API
  answers 400) and the pair in force stays exactly as it was. The proof runs under the store's
  lock (uploads are serialised by it anyway); it takes milliseconds, at most its timeouts.
- Two files cannot be replaced in one atomic step. Both are written to temporary files and
  fsynced, then the key is renamed, the directory fsynced, the certificate renamed, the directory
  fsynced. A crash between the two renames leaves the new key with the old certificate and the
  complete new certificate in ``cm.pem.tmp``; the next start finishes the rename (roll forward).
  A pair in ``state_dir`` that still does not match is logged loudly and the config pair is used.
- ``server_context()`` never builds a context that accepts clients without a certificate from
  ``smgw.client_ca``: a missing or unreadable CA is an error, not a fallback.

The web layer reads this; it never imports ``hal``.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from controller.config.schema import Smgw
from controller.records.statedir import TLS_CERT_FILE, TLS_DIR, TLS_KEY_FILE, fsync_dir
from web.tls_checks import (
    CheckedUpload,
    TlsError,
    check_key_matches,
    check_upload,
    describe_certificate,
    parse_certificates,
    parse_private_key,
    utc_text,
)
from web.tls_proof import prove_handshake

__all__ = ["TlsError", "TlsStore"]

log = logging.getLogger(__name__)

EXPIRY_WARNING_S = 30 * 86400.0  # warn at start when the certificate in force expires sooner
CERT_FILE = TLS_CERT_FILE
KEY_FILE = TLS_KEY_FILE
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class _Pair:
    """Where the pair in force lives and where it came from (``"config"`` or ``"upload"``)."""

    cert_path: Path
    key_path: Path
    source: str


# --------------------------------------------------------------------------- files


def _no_password() -> bytes:
    """``load_cert_chain`` would otherwise ask for a passphrase on the terminal of a daemon."""
    raise TlsError("the private key is encrypted; a key without a passphrase is needed")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file and fsync it. A leftover file (or a planted symlink) of
    that name is removed first, so the key never lands in a file someone else opened or linked."""
    _unlink_quietly(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_pair(cert_path: Path, key_path: Path) -> tuple[list[x509.Certificate], object]:
    """Parse a stored pair (no date checks: an expired pair in force is reported, not dropped)."""
    certs = parse_certificates(cert_path.read_bytes())
    key = parse_private_key(key_path.read_bytes())
    check_key_matches(certs, key)
    return certs, key


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


# --------------------------------------------------------------------------- the store


class TlsStore:
    """The SMGW listener's certificate, key and client CA (thread-safe).

    ``clock`` (wall time in seconds) is injectable so the date checks can be tested.
    """

    def __init__(self, smgw: Smgw, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._smgw = smgw
        self._dir = Path(state_dir) / TLS_DIR
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._config_pair = _Pair(Path(smgw.cert), Path(smgw.key), "config")
        self._pair = self._settle()
        self._warn_if_expiring()

    # ------------------------------------------------------------------ public

    @property
    def source(self) -> str:
        """``"upload"`` when an uploaded pair is in force, else ``"config"``."""
        return self._pair.source

    @property
    def cert_path(self) -> Path:
        return self._pair.cert_path

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs after each successful ``install`` (the server swaps its context)."""
        with self._lock:
            self._listeners.append(callback)

    def server_context(self) -> ssl.SSLContext:
        """A server context: TLS ≥ 1.2, the pair in force, client certificates from
        ``smgw.client_ca`` required. Raises ``TlsError`` when any part is unusable."""
        with self._lock:
            pair = self._pair
            context = _pair_context(pair.cert_path, pair.key_path, f"the {pair.source} pair")
        _require_clients(context, Path(self._smgw.client_ca))
        return context

    def install(self, cert_pem: str | bytes, key_pem: str | bytes) -> None:
        """Check, store (0600, atomically) and activate an uploaded pair, then notify listeners.

        Raises ``TlsError`` (nothing changed) when the upload is not usable. An ``OSError`` means
        the state directory could not be written.
        """
        checked = check_upload(cert_pem, key_pem, self._clock())
        with self._lock:
            try:
                self._store(checked)
            except OSError:  # e.g. between the renames: settle on a pair that loads, as a restart would
                self._pair = self._settle()
                raise
            self._pair = self._upload_pair()
            listeners = list(self._listeners)
        log.warning("SMGW TLS certificate replaced by an upload: %s (valid until %s, SHA-256 %s)",
                    checked.leaf.subject.rfc4514_string(), utc_text(checked.leaf.not_valid_after_utc),
                    checked.leaf.fingerprint(hashes.SHA256()).hex(":").upper())
        for callback in listeners:
            try:
                callback()
            except Exception:  # the pair is stored; a listener's failure must not undo that
                log.exception("TLS listener %r failed after a certificate upload", callback)

    def describe(self) -> dict[str, object]:
        """The pair in force, for status and admin: subject, issuer, serial, validity,
        SHA-256 fingerprint, source; ``error`` instead when it cannot be read."""
        with self._lock:
            pair = self._pair
        info: dict[str, object] = {
            "source": pair.source,
            "cert_path": str(pair.cert_path),
            "client_ca": str(self._smgw.client_ca),
        }
        try:
            certs = parse_certificates(pair.cert_path.read_bytes())
        except (OSError, TlsError) as exc:
            info["error"] = f"cannot read {pair.cert_path}: {exc}"
            return info
        info.update(describe_certificate(certs[0]))
        info["expired"] = certs[0].not_valid_after_utc.timestamp() <= self._clock()
        return info

    # ------------------------------------------------------------------ internals

    def _warn_if_expiring(self) -> None:
        """At start: an expired certificate locks the SMGW out; say so before anyone wonders."""
        try:
            leaf = parse_certificates(self._pair.cert_path.read_bytes())[0]
        except (OSError, TlsError):
            return  # server_context() reports it when the listener starts
        left_s = leaf.not_valid_after_utc.timestamp() - self._clock()
        if left_s <= 0:
            log.error("the SMGW TLS certificate %s expired on %s; SMGW clients will refuse it",
                      self._pair.cert_path, utc_text(leaf.not_valid_after_utc))
        elif left_s < EXPIRY_WARNING_S:
            log.warning("the SMGW TLS certificate %s expires on %s; upload a new one (set_tls_cert)",
                        self._pair.cert_path, utc_text(leaf.not_valid_after_utc))

    def _settle(self) -> _Pair:
        """The pair to serve, from what is on disk now (``_find_pair``, never raising)."""
        try:
            return self._find_pair()
        except OSError as exc:  # e.g. state_dir/tls unreadable: the config pair is still usable
            log.error("cannot inspect the uploaded TLS pair in %s (%s); serving the config pair", self._dir, exc)
            return self._config_pair

    def _upload_pair(self) -> _Pair:
        return _Pair(self._dir / CERT_FILE, self._dir / KEY_FILE, "upload")

    def _store(self, checked: CheckedUpload) -> None:
        """Write both temporary files, prove ``ssl`` loads them and a client completes handshakes
        with them (``web.tls_proof``), then rename key and certificate."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        final = self._upload_pair()
        tmp_cert = final.cert_path.with_name(CERT_FILE + TMP_SUFFIX)
        tmp_key = final.key_path.with_name(KEY_FILE + TMP_SUFFIX)
        try:
            _write_private(tmp_key, checked.key_pem)
            _write_private(tmp_cert, checked.cert_pem)
            context = _pair_context(tmp_cert, tmp_key, "the uploaded pair")
            prove_handshake(context, checked.certs)
        except BaseException:
            _unlink_quietly(tmp_key)
            _unlink_quietly(tmp_cert)
            raise
        # From here a crash leaves a state _find_pair() resolves (module docstring).
        os.replace(tmp_key, final.key_path)
        fsync_dir(self._dir)
        os.replace(tmp_cert, final.cert_path)
        fsync_dir(self._dir)

    def _find_pair(self) -> _Pair:
        """At start: the uploaded pair when it is usable (after finishing an interrupted
        install), else the config pair. Stale temporary files are removed."""
        upload = self._upload_pair()
        tmp_cert = upload.cert_path.with_name(CERT_FILE + TMP_SUFFIX)
        tmp_key = upload.key_path.with_name(KEY_FILE + TMP_SUFFIX)
        if not upload.key_path.exists() and not upload.cert_path.exists():
            _unlink_quietly(tmp_cert)
            _unlink_quietly(tmp_key)
            return self._config_pair
        problem = _pair_problem(upload.cert_path, upload.key_path)
        if problem and tmp_cert.exists() and not _pair_problem(tmp_cert, upload.key_path):
            try:
                os.replace(tmp_cert, upload.cert_path)
                fsync_dir(self._dir)
                log.warning("finished an interrupted TLS certificate install in %s", self._dir)
                problem = None
            except OSError as exc:
                problem = f"could not finish an interrupted install: {exc}"
        _unlink_quietly(tmp_cert)
        _unlink_quietly(tmp_key)
        if problem:
            log.error("the uploaded TLS pair in %s is not usable (%s); serving the config pair %s",
                      self._dir, problem, self._config_pair.cert_path)
            return self._config_pair
        return upload


def _pair_problem(cert_path: Path, key_path: Path) -> str | None:
    """Why a stored pair cannot be served, or None."""
    try:
        _read_pair(cert_path, key_path)
    except (OSError, TlsError) as exc:
        return str(exc)
    return None


def _pair_context(cert_path: Path, key_path: Path, what: str) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context with this pair loaded (no client verification yet)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert_path, key_path):  # ssl's own FileNotFoundError does not name the file
        if not path.is_file():
            raise TlsError(f"{what} cannot be loaded: {path} does not exist or is not a file")
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_password)
    except PermissionError:
        raise TlsError(f"{what} cannot be loaded: no permission to read {cert_path} or {key_path}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{what} ({cert_path}, {key_path}) cannot be loaded: {exc}") from None
    return context


def _require_clients(context: ssl.SSLContext, client_ca: Path) -> None:
    """Mutual TLS: only clients with a certificate from ``client_ca`` complete the handshake."""
    try:
        context.load_verify_locations(cafile=client_ca)
    except FileNotFoundError:
        raise TlsError(f"the SMGW client CA {client_ca} does not exist; "
                       "the SMGW listener never accepts clients without verification") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"the SMGW client CA {client_ca} cannot be loaded: {exc}") from None
    if not context.cert_store_stats().get("x509_ca"):
        log.warning("the SMGW client CA file %s holds no CA certificate; clients will fail to verify", client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
