"""The SMGW channel end to end: real listeners (``web.server.WebServers``), real TLS with
certificates made in the test (``pki``), real clients (``requests``, ``ssl`` sockets).

What is proven here (docs/api.md):
- the TLS layer refuses a client without a certificate, one from another CA, an expired one,
  and a plain-HTTP client; a client with a certificate from ``smgw.client_ca`` needs no password;
- ``smgw.functions`` scopes: ``[vars]`` may read and set variables, not read the status nor
  upload certificates (403);
- ``[admin]`` uploads a new pair over the SMGW channel itself: the listener reloads and a NEW
  connection is served the new certificate (fingerprint of ``getpeercert(binary_form=True)``);
  a bad upload (among them a weak or unusable pair: RSA e=3, SHA-1, a CA as leaf, a key usage
  without digitalSignature, a chain the loopback handshake cannot verify) answers 400 and the
  old certificate is still served; the uploaded pair is the one served after a restart;
- a client that opens TCP on the SMGW port and never says hello does not block the LAN API.

The controller is reduced to what the web layer uses: a real ``VariableStore`` and a status
callable returning ``EMPTY_STATUS`` (the simulated site is exercised in ``test_api.py``).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from pki import CertAuthority, Leaf, Pki, expired, key_usage, make_pki, rsa_e3_leaf, weakly_signed

from controller.config.schema import Http, Smgw
from controller.status import EMPTY_STATUS
from controller.records.variables import VariableStore
from web.app import ApiContext
from web.server import WebServers
from web.tls import TlsStore

USER = "admin"
PASSWORD = "tls-test-pass-1234"
FAST_S = 1.0  # a LAN answer while the SMGW port is stalled (its handshake deadline is 3 s)
TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Channel:
    """A running LAN + SMGW pair of listeners around a minimal API context."""

    servers: WebServers
    tls: TlsStore
    store: VariableStore
    pki: Pki

    @property
    def smgw_url(self) -> str:
        assert self.servers.smgw_port is not None, "the SMGW listener is not running"
        return f"https://127.0.0.1:{self.servers.smgw_port}/cnf"

    @property
    def lan_url(self) -> str:
        return f"http://127.0.0.1:{self.servers.lan_port}/cnf"

    def smgw(self, method: str, cmd: str, client: tuple[Path, Path] | None = None, **kwargs: Any) -> requests.Response:
        """One request on a new TLS connection, with the SMGW client certificate by default."""
        cert, key = client or self.pki.client_paths
        return requests.request(method, self.smgw_url, params={"cmd": cmd, **kwargs.pop("params", {})},
                                cert=(str(cert), str(key)), verify=str(self.pki.ca_path),
                                timeout=TIMEOUT_S, **kwargs)

    def upload(self, leaf: Leaf) -> requests.Response:
        return self.smgw("POST", "set_tls_cert", json={"cert": leaf.cert_pem, "key": leaf.key_pem})

    def served_fingerprint(self) -> bytes:
        """SHA-256 of the certificate a NEW connection is served."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_path))
        context.load_cert_chain(*self.pki.client_paths)
        assert self.servers.smgw_port is not None
        with socket.create_connection(("127.0.0.1", self.servers.smgw_port), timeout=TIMEOUT_S) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).digest()


StartChannel = Callable[..., Channel]


@pytest.fixture()
def channel(pki: Pki, tmp_path: Path) -> Iterator[StartChannel]:
    """``channel(functions)`` starts LAN + SMGW listeners on free ports; all are stopped after."""
    running: list[WebServers] = []

    def start(functions: tuple[str, ...] = ("vars",), state_dir: Path | None = None) -> Channel:
        cert, key = pki.server_paths
        # model_construct: the config accepts ports 1..65535; port 0 asks the OS for a free one
        smgw = Smgw.model_construct(listen="127.0.0.1:0", cert=cert, key=key, client_ca=pki.ca_path,
                                    functions=functions)
        http = Http.model_construct(listen="127.0.0.1:0", user=USER, password=PASSWORD, password_hash=None)
        tls = TlsStore(smgw, state_dir or tmp_path / "state")
        store = VariableStore({"AVAIL": 100})
        ctx = ApiContext(store=store, status=lambda: EMPTY_STATUS, update_override=lambda dev_id, **change: None,
                         grid_log=None, tls=tls, version="test")
        servers = WebServers(ctx, http, smgw, tls)
        servers.start()
        running.append(servers)
        assert servers.smgw_port is not None
        return Channel(servers, tls, store, pki)

    yield start
    for servers in running:
        servers.stop()


def get_on(connection: http.client.HTTPSConnection) -> int:
    """``get_cm_vars`` on an existing keep-alive connection; the status code."""
    connection.request("GET", "/cnf?cmd=get_cm_vars")
    response = connection.getresponse()
    response.read()
    return response.status


def assert_refused(call: Callable[[], object]) -> None:
    """The TLS layer refuses: no HTTP answer at all (TLS alert, reset or EOF)."""
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        call()


# --------------------------------------------------------------------------- who gets in


def test_valid_client_certificate_needs_no_password(channel: StartChannel) -> None:
    ch = channel(("vars",))
    r = ch.smgw("GET", "get_cm_vars")
    assert r.status_code == 200, r.text
    assert r.json()["vars"][0]["name"] == "AVAIL"
    assert ch.served_fingerprint() == ch.pki.server.fingerprint


def test_client_without_certificate_is_refused(channel: StartChannel, pki: Pki) -> None:
    ch = channel(("admin",))
    assert_refused(lambda: requests.get(ch.smgw_url, params={"cmd": "get_cm_vars"}, verify=str(pki.ca_path),
                                        timeout=TIMEOUT_S))
    assert_refused(lambda: requests.get(ch.smgw_url, params={"cmd": "get_cm_vars"}, verify=str(pki.ca_path),
                                        auth=(USER, PASSWORD), timeout=TIMEOUT_S))  # a password is no substitute


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_handshake_without_certificate_fails_at_the_tls_layer(channel: StartChannel, pki: Pki,
                                                               version: ssl.TLSVersion) -> None:
    """Raw socket: the server's alert arrives during the handshake (1.2) or at the first read (1.3)."""
    ch = channel(("admin",))
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    context.minimum_version = context.maximum_version = version
    assert ch.servers.smgw_port is not None
    with socket.create_connection(("127.0.0.1", ch.servers.smgw_port), timeout=TIMEOUT_S) as raw, \
            pytest.raises((ssl.SSLError, ConnectionError)), \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
        tls_sock.sendall(b"GET /cnf?cmd=get_cm_vars HTTP/1.1\r\nHost: x\r\n\r\n")
        data = tls_sock.recv(1024)
        if not data:
            raise ConnectionError("closed without an answer")
        pytest.fail(f"answered without a client certificate: {data[:80]!r}")


def test_client_certificate_from_another_ca_is_refused(channel: StartChannel, pki: Pki) -> None:
    ch = channel(("admin",))
    assert_refused(lambda: ch.smgw("GET", "get_cm_vars", client=pki.rogue_client_paths))


def test_expired_client_certificate_from_the_right_ca_is_refused(channel: StartChannel, pki: Pki,
                                                                 tmp_path: Path) -> None:
    ch = channel(("admin",))
    old = expired(pki.ca)
    paths = old.write(tmp_path, "expired-client")
    assert_refused(lambda: ch.smgw("GET", "get_cm_vars", client=paths))


def test_plain_http_on_the_smgw_port_gets_nothing(channel: StartChannel) -> None:
    ch = channel(("admin",))
    try:
        r = requests.get(ch.smgw_url.replace("https://", "http://"), params={"cmd": "get_cm_vars"},
                         auth=(USER, PASSWORD), timeout=TIMEOUT_S)
    except requests.exceptions.ConnectionError:
        return
    assert r.status_code == 400 and "vars" not in r.text  # a server may say "plain HTTP on a TLS port"


# --------------------------------------------------------------------------- scopes


def test_vars_scope(channel: StartChannel) -> None:
    ch = channel(("vars",))
    assert ch.smgw("GET", "get_cm_vars").status_code == 200
    r = ch.smgw("GET", "set_cm_vars", params={"name": "PWR", "val": "70"})
    assert r.status_code == 200, r.text
    assert ch.store.snapshot().exprs["PWR"] == 70
    r = ch.smgw("GET", "get_dev_info")
    assert r.status_code == 403 and "'status'" in r.json()["error"]
    r = ch.upload(ch.pki.server2)
    assert r.status_code == 403 and "'admin'" in r.json()["error"]
    assert ch.tls.source == "config"
    assert ch.served_fingerprint() == ch.pki.server.fingerprint


def test_the_status_page_is_served_on_the_lan_only(channel: StartChannel) -> None:
    ch = channel(("admin",))
    cert, key = ch.pki.client_paths
    for path in ("/", "/static/app.js"):
        r = requests.get(f"https://127.0.0.1:{ch.servers.smgw_port}{path}", cert=(str(cert), str(key)),
                         verify=str(ch.pki.ca_path), timeout=TIMEOUT_S)
        assert r.status_code == 404 and "error" in r.json()
    lan = requests.get(f"http://127.0.0.1:{ch.servers.lan_port}/", auth=(USER, PASSWORD), timeout=TIMEOUT_S)
    assert lan.status_code == 200 and lan.headers["Content-Type"].startswith("text/html")


def test_status_scope_reads_but_does_not_set(channel: StartChannel) -> None:
    ch = channel(("status",))
    assert ch.smgw("GET", "get_dev_info").status_code == 200
    assert ch.smgw("GET", "set_cm_vars", params={"name": "PWR", "val": "70"}).status_code == 403
    assert "PWR" not in ch.store.snapshot().exprs


# --------------------------------------------------------------------------- certificate upload


def test_admin_uploads_a_new_pair_over_the_smgw_channel(channel: StartChannel, pki: Pki, tmp_path: Path) -> None:
    ch = channel(("admin",))
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    context.load_cert_chain(*pki.client_paths)
    assert ch.servers.smgw_port is not None
    keep_alive = http.client.HTTPSConnection("127.0.0.1", ch.servers.smgw_port, context=context, timeout=TIMEOUT_S)
    assert get_on(keep_alive) == 200

    r = ch.upload(pki.server2)
    assert r.status_code == 200, r.text
    info = r.json()["tls"]
    assert info["source"] == "upload"
    assert info["fingerprint_sha256"] == pki.server2.fingerprint.hex(":").upper()
    assert ch.served_fingerprint() == pki.server2.fingerprint  # a new connection: the new certificate
    assert ch.smgw("GET", "get_cm_vars").status_code == 200  # and clients still verify it
    # a keep-alive connection opened before the upload goes on (with the old certificate)
    old_socket = keep_alive.sock
    assert get_on(keep_alive) == 200
    assert keep_alive.sock is old_socket
    keep_alive.close()
    stored = tmp_path / "state" / "tls"
    assert sorted(p.name for p in stored.iterdir()) == ["cm.key", "cm.pem"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in stored.iterdir())


@pytest.fixture(scope="module")
def rsa_ca() -> CertAuthority:
    """An RSA CA, for a leaf signed the way old CAs did (SHA-1 over RSA)."""
    return CertAuthority("RSA test CA", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.mark.parametrize(("make", "message"), [
    (lambda p, r: expired(p.ca), "certificate expired on"),
    (lambda p, r: Leaf(p.server2.cert, p.server.key), "private key does not match the certificate"),
    (lambda p, r: Leaf(p.client.cert, p.client.key), "not for a TLS server"),
    # weak or unusable pairs: each of these was once accepted and replaced the working pair
    (lambda p, r: p.ca.issue("cert signer", key_usage=key_usage(key_cert_sign=True)),
     "key usage lacks digitalSignature (it allows only keyCertSign)"),
    (lambda p, r: p.ca.issue("a CA as leaf", ca=True), "the certificate is a CA certificate"),
    (lambda p, r: rsa_e3_leaf(p.ca), "RSA public exponent 3 refused"),
    (lambda p, r: weakly_signed(r, "sha1 leaf", "sha1"), "certificate is signed with SHA-1, which is broken"),
    # refused by the loopback handshake: the second certificate did not issue the first
    (lambda p, r: Leaf(p.server2.cert, p.server2.key, (p.rogue_ca.cert,)),
     "the pair fails a TLS 1.2 handshake on 127.0.0.1 (certificate verify failed: unable to get local issuer"),
], ids=["expired", "wrong-key", "client-cert", "keyCertSign-only", "ca-leaf", "rsa-e3", "sha1", "foreign-chain"])
def test_bad_upload_is_400_and_the_old_certificate_is_still_served(
    channel: StartChannel, pki: Pki, rsa_ca: CertAuthority, make: Callable[[Pki, CertAuthority], Leaf], message: str
) -> None:
    ch = channel(("admin",))
    r = ch.upload(make(pki, rsa_ca))
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"].startswith("certificate not installed: ")
    assert message in r.json()["error"]
    assert ch.tls.source == "config"
    assert ch.served_fingerprint() == pki.server.fingerprint
    assert ch.smgw("GET", "get_cm_vars").status_code == 200


def test_not_pem_at_all_is_400(channel: StartChannel, pki: Pki) -> None:
    ch = channel(("admin",))
    r = ch.smgw("POST", "set_tls_cert", json={"cert": "hello", "key": pki.server2.key_pem})
    assert r.status_code == 400 and "not a PEM certificate" in r.json()["error"]
    assert ch.served_fingerprint() == pki.server.fingerprint


def test_uploaded_pair_is_served_after_a_restart(channel: StartChannel, pki: Pki, tmp_path: Path) -> None:
    state_dir = tmp_path / "persisted"
    first = channel(("admin",), state_dir=state_dir)
    assert first.upload(pki.server2).status_code == 200
    first.servers.stop()
    again = channel(("admin",), state_dir=state_dir)
    assert again.tls.source == "upload"
    assert again.served_fingerprint() == pki.server2.fingerprint


# --------------------------------------------------------------------------- isolation


def test_stalled_smgw_client_does_not_block_the_lan(channel: StartChannel) -> None:
    ch = channel(("vars",))
    assert ch.servers.smgw_port is not None
    with socket.create_connection(("127.0.0.1", ch.servers.smgw_port)):  # TCP open, never a ClientHello
        start = time.monotonic()
        r = requests.get(ch.lan_url, params={"cmd": "get_cm_vars"}, auth=(USER, PASSWORD), timeout=TIMEOUT_S)
        assert r.status_code == 200
        assert time.monotonic() - start < FAST_S
