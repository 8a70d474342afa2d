"""The SMGW listener's TLS material: server certificate and key, client CA, and their uploads.

This module owns which certificate/key pair the SMGW listener serves, how an uploaded pair is
checked and stored, and the ``ssl.SSLContext`` the listener uses (mutual TLS, SPEC §1.4, §2).

- The electrician installs a pair at ``smgw.cert`` / ``smgw.key``. An admin may later upload a new
  pair (``POST /cnf?cmd=set_tls_cert``); it goes to ``state_dir/tls/cm.pem`` + ``cm.key`` (directory
  0700, files 0600) because the systemd unit makes ``/etc`` read-only. Once an uploaded pair
  exists it wins over the config pair.
- An upload is checked completely before anything is written, and the written files are loaded
  by ``ssl`` before they replace the old ones: a bad upload raises ``TlsError`` (the API answers
  400) and the pair in force stays exactly as it was.
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

import datetime as dt
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.config_schema import Smgw

log = logging.getLogger(__name__)

MAX_CERT_PEM_BYTES = 48 * 1024  # a leaf and a few intermediates; the whole request is ≤ 64 KiB
MAX_KEY_PEM_BYTES = 16 * 1024  # an RSA-4096 PKCS#8 PEM key is ~3.3 KiB
MAX_CHAIN_CERTS = 8
CLOCK_SKEW_S = 300.0  # a certificate issued minutes ago on a host whose clock runs a bit ahead
EXPIRY_WARNING_S = 30 * 86400.0  # warn at start when the certificate in force expires sooner
MIN_RSA_BITS = 2048
ALLOWED_CURVES = ("secp256r1", "secp384r1")
TLS_DIR = "tls"
CERT_FILE = "cm.pem"
KEY_FILE = "cm.key"
TMP_SUFFIX = ".tmp"

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


class TlsError(ValueError):
    """A certificate, key or CA that cannot be used; the message says why (shown to the admin)."""


@dataclass(frozen=True)
class _Pair:
    """Where the pair in force lives and where it came from (``"config"`` or ``"upload"``)."""

    cert_path: Path
    key_path: Path
    source: str


@dataclass(frozen=True)
class _Checked:
    """An upload that passed every check, in the canonical PEM form that will be stored."""

    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate


# --------------------------------------------------------------------------- parsing and checks


def _text(value: str | bytes, what: str, limit: int) -> str:
    """The upload as text, within its size limit (checked before any parsing)."""
    if isinstance(value, bytes):
        if len(value) > limit:
            raise TlsError(f"{what} too large: {len(value)} bytes (at most {limit})")
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise TlsError(f"not a PEM {what}: it contains bytes that are not ASCII") from None
    if not isinstance(value, str):
        raise TlsError(f"the {what} must be PEM text, not {type(value).__name__}")
    if len(value) > limit:
        raise TlsError(f"{what} too large: {len(value)} bytes (at most {limit})")
    if not value.strip():
        raise TlsError(f"no {what} given")
    if not value.isascii():
        raise TlsError(f"not a PEM {what}: it contains characters that are not ASCII")
    return value


def _blocks(text: str) -> list[tuple[str, str]]:
    """(label, whole block) for each PEM block; text around the blocks (openssl's "Bag
    Attributes", comments) is ignored, as ``openssl`` itself does."""
    return [(m.group(1), m.group(0) + "\n") for m in _PEM_BLOCK.finditer(text)]


def parse_certificates(cert_pem: str | bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain, leaf first. Raises ``TlsError``."""
    text = _text(cert_pem, "certificate", MAX_CERT_PEM_BYTES)
    blocks = [block for label, block in _blocks(text) if label == "CERTIFICATE"]
    if not blocks:
        raise TlsError("not a PEM certificate (no '-----BEGIN CERTIFICATE-----' block)")
    if len(blocks) > MAX_CHAIN_CERTS:
        raise TlsError(f"too many certificates in the chain: {len(blocks)} (at most {MAX_CHAIN_CERTS})")
    certs = []
    for index, block in enumerate(blocks, start=1):
        try:
            certs.append(x509.load_pem_x509_certificate(block.encode("ascii")))
        except ValueError as exc:
            raise TlsError(f"certificate {index} of the chain is not a valid X.509 certificate: {exc}") from None
    return certs


def parse_private_key(key_pem: str | bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """An unencrypted RSA (≥ 2048 bit) or EC P-256/P-384 private key. Raises ``TlsError``."""
    text = _text(key_pem, "private key", MAX_KEY_PEM_BYTES)
    blocks = [(label, block) for label, block in _blocks(text) if label.endswith("PRIVATE KEY")]
    if not blocks:
        raise TlsError("not a PEM private key (no '-----BEGIN PRIVATE KEY-----' block)")
    if len(blocks) > 1:
        raise TlsError(f"{len(blocks)} private keys given; upload exactly one")
    label, block = blocks[0]
    if label == "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED" in block:
        raise TlsError("the private key is encrypted; upload it without a passphrase")
    try:
        key = serialization.load_pem_private_key(block.encode("ascii"), password=None)
    except TypeError:  # cryptography's "password was not given but private key is encrypted"
        raise TlsError("the private key is encrypted; upload it without a passphrase") from None
    except UnsupportedAlgorithm as exc:
        raise TlsError(f"unsupported private key type: {exc}") from None
    except ValueError:
        raise TlsError("not a valid PEM private key (the data in the block does not decode)") from None
    return _check_key_type(key)


def _check_key_type(key: object) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Only what every TLS 1.2 client of an SMGW handles and what is still considered strong."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise TlsError(f"RSA key too small: {key.key_size} bits (at least {MIN_RSA_BITS})")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise TlsError(f"unsupported elliptic curve {key.curve.name} (use P-256 or P-384)")
        return key
    raise TlsError(f"unsupported private key type {type(key).__name__.lstrip('_')} "
                   "(use RSA ≥ 2048 bit or EC P-256/P-384)")


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _label(cert: x509.Certificate, index: int) -> str:
    return "certificate" if index == 0 else f"certificate {index + 1} of the chain ({cert.subject.rfc4514_string()})"


def check_dates(certs: Sequence[x509.Certificate], now_s: float, skew_s: float = CLOCK_SKEW_S) -> None:
    """Every certificate of the chain is valid now (``not_before`` may be ``skew_s`` ahead)."""
    now = dt.datetime.fromtimestamp(now_s, dt.UTC)
    for index, cert in enumerate(certs):
        if cert.not_valid_after_utc <= now:
            raise TlsError(f"{_label(cert, index)} expired on {_when(cert.not_valid_after_utc)}")
        if cert.not_valid_before_utc > now + dt.timedelta(seconds=skew_s):
            raise TlsError(f"{_label(cert, index)} is not valid before {_when(cert.not_valid_before_utc)} "
                           f"(this host's clock says {_when(now)})")


def check_key_matches(certs: Sequence[x509.Certificate], key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    """The key belongs to the leaf, i.e. the first certificate (the order ``ssl`` requires)."""
    key_der = _public_der(key.public_key())
    if _public_der(certs[0].public_key()) == key_der:
        return
    if any(_public_der(c.public_key()) == key_der for c in certs[1:]):
        raise TlsError("the certificate that matches the private key must come first in the chain")
    raise TlsError("private key does not match the certificate")


def check_server_usage(leaf: x509.Certificate) -> None:
    """A leaf whose extended key usage excludes TLS servers is refused by every client."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usage:
        raise TlsError("the certificate is not for a TLS server (its extended key usage lacks serverAuth)")


def check_upload(cert_pem: str | bytes, key_pem: str | bytes, now_s: float) -> _Checked:
    """Everything ``install`` checks before writing anything; the canonical PEM to store."""
    certs = parse_certificates(cert_pem)
    key = parse_private_key(key_pem)
    check_key_matches(certs, key)
    check_dates(certs, now_s)
    check_server_usage(certs[0])
    return _Checked(
        cert_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        leaf=certs[0],
    )


def describe_certificate(cert: x509.Certificate) -> dict[str, object]:
    """What an admin needs to recognise a certificate: names, serial, dates, fingerprint."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


# --------------------------------------------------------------------------- files


def _no_password() -> bytes:
    """``load_cert_chain`` would otherwise ask for a passphrase on the terminal of a daemon."""
    raise TlsError("the private key is encrypted; a key without a passphrase is needed")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                    checked.leaf.subject.rfc4514_string(), _when(checked.leaf.not_valid_after_utc),
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
                      self._pair.cert_path, _when(leaf.not_valid_after_utc))
        elif left_s < EXPIRY_WARNING_S:
            log.warning("the SMGW TLS certificate %s expires on %s; upload a new one (set_tls_cert)",
                        self._pair.cert_path, _when(leaf.not_valid_after_utc))

    def _settle(self) -> _Pair:
        """The pair to serve, from what is on disk now (``_find_pair``, never raising)."""
        try:
            return self._find_pair()
        except OSError as exc:  # e.g. state_dir/tls unreadable: the config pair is still usable
            log.error("cannot inspect the uploaded TLS pair in %s (%s); serving the config pair", self._dir, exc)
            return self._config_pair

    def _upload_pair(self) -> _Pair:
        return _Pair(self._dir / CERT_FILE, self._dir / KEY_FILE, "upload")

    def _store(self, checked: _Checked) -> None:
        """Write both temporary files, prove ``ssl`` loads them, then rename key and certificate."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        final = self._upload_pair()
        tmp_cert = final.cert_path.with_name(CERT_FILE + TMP_SUFFIX)
        tmp_key = final.key_path.with_name(KEY_FILE + TMP_SUFFIX)
        try:
            _write_private(tmp_key, checked.key_pem)
            _write_private(tmp_cert, checked.cert_pem)
            _pair_context(tmp_cert, tmp_key, "the uploaded pair")
        except BaseException:
            _unlink_quietly(tmp_key)
            _unlink_quietly(tmp_cert)
            raise
        # From here a crash leaves a state _find_pair() resolves (module docstring).
        os.replace(tmp_key, final.key_path)
        _fsync_dir(self._dir)
        os.replace(tmp_cert, final.cert_path)
        _fsync_dir(self._dir)

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
                _fsync_dir(self._dir)
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
