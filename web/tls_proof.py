"""Proof that an uploaded pair works: real TLS handshakes over 127.0.0.1 before it is installed.

The checks in ``web.tls_checks`` read the certificate; they cannot see everything a TLS stack
minds (a chain whose certificates do not belong together, a key usage or a key strength that
OpenSSL refuses, a key that cannot sign what the handshake needs). So before an uploaded pair
replaces the one in force, ``prove_handshake`` serves it the way the SMGW listener will (the same
server context, on a loopback socket) and connects as a client once with TLS 1.2 and once with
TLS 1.3 (SMGW gateways speak 1.2; newer clients 1.3). The client:

- verifies the served certificate against the uploaded chain: the certificates after the leaf
  are its trust anchors (a leaf uploaded alone is its own anchor), with OpenSSL's "partial chain"
  so that an intermediate may be an anchor, OpenSSL's default purpose check (a TLS server) and
  security level (RSA ≥ 2048 bit, no SHA-1);
- does not check host names (the name the SMGW calls this host by is not known here) nor dates
  (``check_dates`` judged them with the store's clock and its clock-skew allowance);
- must be served exactly the uploaded leaf.

Every socket has a timeout (``PROOF_TIMEOUT_S``), so a proof never hangs an upload: it takes a
few milliseconds (an RSA-4096 key, the slowest allowed, about 15). Another local process that
connects to the proof's port in those milliseconds can only make the proof fail (the upload is
refused), never pass: the client verifies what it is served, and only the uploaded key signs.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from web.tls_checks import TlsError

log = logging.getLogger(__name__)

PROOF_TIMEOUT_S = 5.0
PROOF_VERSIONS: tuple[ssl.TLSVersion, ...] = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python's ``ssl.VerifyFlags`` has no name for it).
_NO_CHECK_TIME = 0x200000
_PING = b"gridcharge-tls-proof"
_ACCEPT_POLL_S = 0.02  # how soon the server thread notices a proof that gave up early

_VERSION_TEXT = {ssl.TLSVersion.TLSv1_2: "TLS 1.2", ssl.TLSVersion.TLSv1_3: "TLS 1.3"}


def prove_handshake(server_context: ssl.SSLContext, certs: Sequence[x509.Certificate],
                    timeout_s: float = PROOF_TIMEOUT_S) -> None:
    """Raise ``TlsError`` unless a client completes a handshake with ``server_context`` for each
    TLS version, verifies the served certificate against ``certs`` (leaf first) and is served
    ``certs[0]``."""
    versions = [v for v in PROOF_VERSIONS if v != ssl.TLSVersion.TLSv1_3 or ssl.HAS_TLSv1_3]
    leaf_der = certs[0].public_bytes(serialization.Encoding.DER)
    anchors = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in (certs[1:] or certs[:1]))
    server = _ProofServer(server_context, len(versions), timeout_s)
    server.start()
    try:
        for version in versions:
            error, verified = _client_handshake(server.port, _client_context(anchors, version), leaf_der, timeout_s)
            if error is None:
                continue
            server_side = None if not verified else server.error_after(version)  # else: the alert echoed
            detail = f"{error}; server: {server_side}" if server_side else error
            raise TlsError(f"the pair fails a {_VERSION_TEXT[version]} handshake on 127.0.0.1 ({detail})")
    finally:
        server.stop()
    log.debug("the new pair completed %s handshakes on 127.0.0.1", " and ".join(_VERSION_TEXT[v] for v in versions))


def _client_context(anchors_pem: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, OpenSSL's default purpose checks
    context.check_hostname = False
    context.minimum_version = context.maximum_version = version
    context.load_verify_locations(cadata=anchors_pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VerifyFlags(_NO_CHECK_TIME)
    return context


def _client_handshake(port: int, context: ssl.SSLContext, leaf_der: bytes,
                      timeout_s: float) -> tuple[str | None, bool]:
    """(None, True) when the handshake completed and the leaf was served, else (why not, whether
    the client got as far as accepting the certificate: if not, the server only saw its alert)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw) as tls_socket:
            served = tls_socket.getpeercert(binary_form=True)
            tls_socket.sendall(_PING)  # TLS 1.3: the server finishes its handshake on this
            if _read_exactly(tls_socket, len(_PING)) != _PING:
                return "the server did not answer after the handshake", True
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}", False
    except ssl.SSLError as exc:
        return str(exc.reason or exc), True
    except OSError as exc:  # a timeout or a reset
        return f"{type(exc).__name__}: {exc}", True
    if served != leaf_der:
        return "the server did not serve the uploaded certificate", True
    return None, True


def _read_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _ProofServer:
    """A loopback TLS server for one proof: answers ``connections`` connections (each one's ping),
    records their errors, then ends; ``stop`` ends it early."""

    def __init__(self, context: ssl.SSLContext, connections: int, timeout_s: float) -> None:
        self._context = context
        self._connections = connections
        self._timeout_s = timeout_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._errors: list[str] = []
        self._done = threading.Condition()
        self._handled = 0
        self._thread = threading.Thread(target=self._serve, name="tls-proof", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout_s + _ACCEPT_POLL_S)
        self._listener.close()

    def error_after(self, version: ssl.TLSVersion) -> str | None:
        """The server's error for the connection just tried (waits until it was handled)."""
        index = PROOF_VERSIONS.index(version)
        deadline = time.monotonic() + self._timeout_s
        with self._done:
            while self._handled <= index and time.monotonic() < deadline:
                self._done.wait(_ACCEPT_POLL_S)
            return self._errors[index] if index < len(self._errors) and self._errors[index] else None

    def _serve(self) -> None:
        while not self._stop.is_set() and self._handled < self._connections:
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            error = self._answer(raw)
            with self._done:
                self._errors.append(error)
                self._handled += 1
                self._done.notify_all()

    def _answer(self, raw: socket.socket) -> str:
        """"" when the client's ping was answered, else the server side's error."""
        raw.settimeout(self._timeout_s)
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls_socket:
                ping = _read_exactly(tls_socket, len(_PING))
                if ping == _PING:
                    tls_socket.sendall(_PING)
                return ""
        except ssl.SSLError as exc:
            return str(exc.reason or exc)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            raw.close()
