"""web.tls: upload validation (every rule with its message), the loopback handshake proof,
storage (0600, atomic, crash between the renames), the pair in force, the server context (mutual
TLS), listeners.

The handshakes that check what a client is served run in memory (``ssl.MemoryBIO``): real TLS
without sockets. The upload's own proof (``web.tls_proof``) uses real loopback sockets. The
socket-level tests through the listener are in ``tests/integration/test_smgw_tls.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import logging
import os
import ssl
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.config.schema import Smgw
from web import tls, tls_checks
from web.tls import TlsError, TlsStore
from web.tls_proof import prove_handshake


def _load_pki() -> ModuleType:
    """The shared test PKI lives with the integration tests; one module object for both."""
    if "pki" in sys.modules:
        return sys.modules["pki"]
    path = Path(__file__).resolve().parents[1] / "integration" / "pki.py"
    spec = importlib.util.spec_from_file_location("pki", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pki"] = module
    spec.loader.exec_module(module)
    return module


pki_mod = _load_pki()
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return pki_mod.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture()
def smgw(pki: Any) -> Smgw:
    cert, key = pki.server_paths
    return Smgw(listen="127.0.0.1:8443", cert=cert, key=key, client_ca=pki.ca_path, functions=("vars",))


@pytest.fixture()
def store(smgw: Smgw, state_dir: Path) -> TlsStore:
    return TlsStore(smgw, state_dir)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    """A full TLS handshake in memory; returns the DER certificate the client was served.

    Raises the ``ssl.SSLError`` of whichever side refuses.
    """
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        c_in.write(s_out.read())
        s_in.write(c_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    # TLS 1.3: the server's verdict on the client certificate reaches the client after its
    # handshake; a read makes a refusal visible on the client side too.
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der


def client_context(pki: Any, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    if with_cert:
        ctx.load_cert_chain(*pki.client_paths)
    return ctx


def served_fingerprint(store: TlsStore, pki: Any) -> bytes:
    import hashlib

    return hashlib.sha256(handshake(store.server_context(), client_context(pki))).digest()


def tls_files(state_dir: Path) -> dict[str, bytes]:
    directory = state_dir / "tls"
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.exists() else {}


# --------------------------------------------------------------------------- the pair in force


def test_config_pair_is_served_with_client_certificates_required(store: TlsStore, pki: Any) -> None:
    ctx = store.server_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.cert_store_stats()["x509_ca"] == 1
    assert store.source == "config"
    assert served_fingerprint(store, pki) == pki.server.fingerprint


def test_client_without_certificate_is_refused(store: TlsStore, pki: Any) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(store.server_context(), client_context(pki, with_cert=False))


def test_client_from_another_ca_is_refused(store: TlsStore, pki: Any) -> None:
    client = ssl.create_default_context(cafile=str(pki.ca_path))
    client.load_cert_chain(*pki.rogue_client_paths)
    with pytest.raises(ssl.SSLError):
        handshake(store.server_context(), client)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_client_is_refused(store: TlsStore, pki: Any) -> None:
    client = client_context(pki)
    try:
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises(ssl.SSLError):
        handshake(store.server_context(), client)


def test_describe_names_the_pair_in_force(store: TlsStore, pki: Any) -> None:
    info = store.describe()
    cert = pki.server.cert
    assert info["source"] == "config"
    assert info["cert_path"] == str(pki.server_paths[0])
    assert "CN=gridcharge smgw listener" in str(info["subject"])
    assert "CN=gridcharge test CA" in str(info["issuer"])
    assert info["serial"] == format(cert.serial_number, "x")
    assert info["not_before"] == cert.not_valid_before_utc.isoformat()
    assert info["not_after"] == cert.not_valid_after_utc.isoformat()
    assert info["fingerprint_sha256"] == pki.server.fingerprint.hex(":").upper()
    assert info["expired"] is False
    assert "error" not in info


@pytest.mark.parametrize(("days_after_expiry", "level", "text"), [
    (1, logging.ERROR, "expired on"), (-10, logging.WARNING, "expires on"),
])
def test_start_warns_about_an_expired_or_expiring_certificate(
    smgw: Smgw, pki: Any, state_dir: Path, caplog: pytest.LogCaptureFixture,
    days_after_expiry: int, level: int, text: str,
) -> None:
    moment = pki.server.cert.not_valid_after_utc + days_after_expiry * DAY
    with caplog.at_level(logging.WARNING, logger="web.tls"):
        store = TlsStore(smgw, state_dir, clock=moment.timestamp)
    assert [r.levelno for r in caplog.records] == [level]
    assert text in caplog.text
    assert store.describe()["expired"] is (days_after_expiry > 0)


def test_unreadable_state_dir_falls_back_to_the_config_pair(
    smgw: Smgw, pki: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    with caplog.at_level(logging.ERROR, logger="web.tls"):
        store = TlsStore(smgw, state_dir)
    monkeypatch.undo()
    assert "cannot inspect the uploaded TLS pair" in caplog.text
    assert store.source == "config"
    assert served_fingerprint(store, pki) == pki.server.fingerprint


def test_missing_client_ca_is_an_error_never_an_open_door(pki: Any, state_dir: Path) -> None:
    cert, key = pki.server_paths
    smgw = Smgw(cert=cert, key=key, client_ca=pki.directory / "absent-ca.pem")
    with pytest.raises(TlsError, match="client CA .* does not exist"):
        TlsStore(smgw, state_dir).server_context()


def test_empty_client_ca_is_an_error(pki: Any, tmp_path: Path, state_dir: Path) -> None:
    empty = tmp_path / "empty-ca.pem"
    empty.write_text("")
    cert, key = pki.server_paths
    with pytest.raises(TlsError, match="client CA .* cannot be loaded"):
        TlsStore(Smgw(cert=cert, key=key, client_ca=empty), state_dir).server_context()


def test_missing_config_pair_is_reported(pki: Any, tmp_path: Path, state_dir: Path) -> None:
    smgw = Smgw(cert=tmp_path / "no.pem", key=tmp_path / "no.key", client_ca=pki.ca_path)
    store = TlsStore(smgw, state_dir)
    with pytest.raises(TlsError, match="no.pem does not exist"):
        store.server_context()
    assert "cannot read" in str(store.describe()["error"])


def test_encrypted_config_key_fails_instead_of_prompting(pki: Any, tmp_path: Path, state_dir: Path) -> None:
    key = tmp_path / "enc.key"
    key.write_text(pki_mod.key_pem(pki.server.key, b"passphrase"))
    smgw = Smgw(cert=pki.server_paths[0], key=key, client_ca=pki.ca_path)
    with pytest.raises(TlsError, match="encrypted"):
        TlsStore(smgw, state_dir).server_context()


def test_mismatched_config_pair_is_reported(pki: Any, state_dir: Path) -> None:
    smgw = Smgw(cert=pki.server_paths[0], key=pki.client_paths[1], client_ca=pki.ca_path)
    with pytest.raises(TlsError, match="cannot be loaded"):
        TlsStore(smgw, state_dir).server_context()


# --------------------------------------------------------------------------- a successful upload


def test_install_stores_0600_files_switches_the_pair_and_notifies(store: TlsStore, pki: Any, state_dir: Path) -> None:
    calls: list[str] = []
    store.add_listener(lambda: calls.append("reload"))
    store.install(pki.server2.cert_pem, pki.server2.key_pem)

    directory = state_dir / "tls"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["cm.key", "cm.pem"]
    for name in ("cm.key", "cm.pem"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert b"-----BEGIN PRIVATE KEY-----" in (directory / "cm.key").read_bytes()
    assert calls == ["reload"]
    assert store.source == "upload"
    assert store.describe()["fingerprint_sha256"] == pki.server2.fingerprint.hex(":").upper()
    assert served_fingerprint(store, pki) == pki.server2.fingerprint


def test_uploaded_pair_wins_after_a_restart(store: TlsStore, smgw: Smgw, pki: Any, state_dir: Path) -> None:
    store.install(pki.server2.cert_pem, pki.server2.key_pem)
    again = TlsStore(smgw, state_dir)
    assert again.source == "upload"
    assert served_fingerprint(again, pki) == pki.server2.fingerprint


def test_second_upload_replaces_the_first(store: TlsStore, pki: Any) -> None:
    store.install(pki.server2.cert_pem, pki.server2.key_pem)
    store.install(pki.server.cert_pem, pki.server.key_pem)
    assert served_fingerprint(store, pki) == pki.server.fingerprint


def test_chain_with_intermediate_is_accepted_and_served(store: TlsStore, pki: Any) -> None:
    intermediate = pki_mod.CertAuthority("intermediate CA", parent=pki.ca)
    leaf = intermediate.issue("leaf via intermediate")
    assert leaf.cert_pem.count("BEGIN CERTIFICATE") == 2
    store.install(leaf.cert_pem, leaf.key_pem)
    assert "CN=leaf via intermediate" in str(store.describe()["subject"])
    assert served_fingerprint(store, pki) == leaf.fingerprint


def test_rsa_2048_and_p384_keys_are_accepted(store: TlsStore, pki: Any) -> None:
    rsa_leaf = pki_mod.rsa_leaf(pki.ca, 2048)
    store.install(rsa_leaf.cert_pem, rsa_leaf.key_pem)
    assert served_fingerprint(store, pki) == rsa_leaf.fingerprint
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = pki.ca.issue("p384", key=ec.generate_private_key(ec.SECP384R1()))
    store.install(p384.cert_pem, p384.key_pem)
    assert served_fingerprint(store, pki) == p384.fingerprint


def test_openssl_style_files_are_accepted(store: TlsStore, pki: Any) -> None:
    """Bytes, CRLF line ends, "Bag Attributes" text around blocks, a traditional EC key behind an
    EC PARAMETERS block (what ``openssl ecparam -genkey`` writes)."""
    cert_text = "Bag Attributes\n    friendlyName: cm\nsubject=CN = x\n" + pki.server2.cert_pem
    traditional = pki.server2.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    key_text = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" + traditional
    store.install(cert_text.replace("\n", "\r\n").encode(), key_text.encode())
    assert served_fingerprint(store, pki) == pki.server2.fingerprint


def test_a_failing_listener_does_not_undo_the_install(store: TlsStore, pki: Any, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(lambda: calls.append("second"))
    with caplog.at_level(logging.ERROR, logger="web.tls"):
        store.install(pki.server2.cert_pem, pki.server2.key_pem)
    assert calls == ["second"]
    assert store.source == "upload"
    assert "listener bug" in caplog.text


def test_not_before_within_the_clock_skew_is_accepted(smgw: Smgw, pki: Any, state_dir: Path) -> None:
    now = pki_mod.utcnow()
    fresh = pki.ca.issue("issued a minute ahead", not_before=now + dt.timedelta(seconds=60))
    store = TlsStore(smgw, state_dir, clock=now.timestamp)
    store.install(fresh.cert_pem, fresh.key_pem)
    assert store.source == "upload"


# --------------------------------------------------------------------------- rejected uploads


def _encrypted_traditional(pki: Any) -> str:
    pem: bytes = pki.server2.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    return pem.decode()


def _bad_block(label: str) -> str:
    return f"-----BEGIN {label}-----\nTm90IGEgcmVhbCBibG9jaw==\n-----END {label}-----\n"


Case = Callable[..., tuple[object, object]]
REJECTED: list[tuple[str, Case, str]] = [
    ("empty cert", lambda p: ("", p.server2.key_pem), "no certificate given"),
    ("blank cert", lambda p: ("  \n", p.server2.key_pem), "no certificate given"),
    ("cert not text", lambda p: (None, p.server2.key_pem), "the certificate must be PEM text, not NoneType"),
    ("cert is a dict", lambda p: ({"pem": "x"}, p.server2.key_pem), "must be PEM text, not dict"),
    ("cert is prose", lambda p: ("hello world", p.server2.key_pem), "not a PEM certificate"),
    ("cert field holds a key", lambda p: (p.server2.key_pem, p.server2.key_pem), "not a PEM certificate"),
    ("cert too large", lambda p: (p.server2.cert_pem + "#" * 50_000, p.server2.key_pem), "certificate too large"),
    ("cert bytes too large", lambda p: (b"#" * 50_000, p.server2.key_pem), "certificate too large"),
    ("cert not ascii", lambda p: (p.server2.cert_pem + "é", p.server2.key_pem), "not ASCII"),
    ("cert bytes not ascii", lambda p: (p.server2.cert_pem.encode() + b"\xff", p.server2.key_pem), "not ASCII"),
    ("cert block garbage", lambda p: (_bad_block("CERTIFICATE"), p.server2.key_pem),
     "certificate 1 of the chain is not a valid X.509 certificate"),
    ("chain too long", lambda p: (p.server2.cert_pem + p.ca.cert_pem * 8, p.server2.key_pem),
     "too many certificates in the chain: 9"),
    ("empty key", lambda p: (p.server2.cert_pem, ""), "no private key given"),
    ("key not text", lambda p: (p.server2.cert_pem, 42), "the private key must be PEM text, not int"),
    ("key is prose", lambda p: (p.server2.cert_pem, "secret"), "not a PEM private key"),
    ("key field holds the cert", lambda p: (p.server2.cert_pem, p.server2.cert_pem), "not a PEM private key"),
    ("key too large", lambda p: (p.server2.cert_pem, p.server2.key_pem + "#" * 17_000), "private key too large"),
    ("key block garbage", lambda p: (p.server2.cert_pem, _bad_block("PRIVATE KEY")), "not a valid PEM private key"),
    ("two keys", lambda p: (p.server2.cert_pem, p.server2.key_pem + p.server.key_pem), "2 private keys given"),
    ("encrypted PKCS#8 key", lambda p: (p.server2.cert_pem, pki_mod.key_pem(p.server2.key, b"secret")),
     "the private key is encrypted"),
    ("encrypted traditional key", lambda p: (p.server2.cert_pem, _encrypted_traditional(p)),
     "the private key is encrypted"),
    ("key does not match", lambda p: (p.server2.cert_pem, p.server.key_pem),
     "private key does not match the certificate"),
    ("leaf not first", lambda p: (p.ca.cert_pem + p.server2.cert_pem, p.server2.key_pem),
     "the certificate that matches the private key must come first"),
    ("client certificate", lambda p: (p.client.cert_pem, p.client.key_pem), "not for a TLS server"),
]


@pytest.mark.parametrize(("cert", "key", "message"), [(c, c, m) for _, c, m in REJECTED],
                         ids=[name for name, _, _ in REJECTED])
def test_bad_upload_is_rejected_with_its_reason_and_changes_nothing(
    store: TlsStore, pki: Any, state_dir: Path, cert: Case, key: Case, message: str
) -> None:
    cert_pem, key_pem = cert(pki)
    calls: list[str] = []
    store.add_listener(lambda: calls.append("reload"))
    with pytest.raises(TlsError) as info:
        store.install(cert_pem, key_pem)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert tls_files(state_dir) == {}
    assert calls == []
    assert store.source == "config"
    assert served_fingerprint(store, pki) == pki.server.fingerprint


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: pki_mod.expired(p.ca), r"certificate expired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"),
    (lambda p: pki_mod.not_yet_valid(p.ca), r"certificate is not valid before \d{4}-\d\d-\d\d .*clock says"),
    (lambda p: pki_mod.rsa_leaf(p.ca, 1024), r"RSA key too small: 1024 bits \(at least 2048\)"),
    (lambda p: pki_mod.ed25519_leaf(p.ca), r"unsupported private key type"),
    (lambda p: pki_mod.p521_leaf(p.ca), r"unsupported elliptic curve secp521r1"),
], ids=["expired", "not-yet-valid", "rsa-1024", "ed25519", "p521"])
def test_unusable_certificate_or_key_is_rejected(store: TlsStore, pki: Any, state_dir: Path, make: Callable[[Any], Any], message: str) -> None:
    leaf = make(pki)
    with pytest.raises(TlsError, match=message):
        store.install(leaf.cert_pem, leaf.key_pem)
    assert tls_files(state_dir) == {}
    assert store.source == "config"


@pytest.fixture(scope="module")
def rsa_ca() -> Any:
    """An RSA CA: old CAs signed with MD5/SHA-1 over RSA keys (ECDSA never had MD5)."""
    return pki_mod.CertAuthority("RSA test CA", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _sha224_intermediate_chain(p: Any) -> Any:
    intermediate = pki_mod.CertAuthority("SHA-224 intermediate", parent=p.ca, signature_hash=hashes.SHA224())
    return intermediate.issue("leaf under a SHA-224 intermediate")


WEAK: list[tuple[str, Callable[[Any, Any], Any], str]] = [
    ("rsa-e3", lambda p, r: pki_mod.rsa_e3_leaf(p.ca), r"RSA public exponent 3 refused \(use 65537"),
    ("md5-signature", lambda p, r: pki_mod.weakly_signed(r, "md5 leaf", "md5"),
     r"^certificate is signed with MD5, which is broken"),
    ("sha1-signature", lambda p, r: pki_mod.weakly_signed(r, "sha1 leaf", "sha1"),
     r"^certificate is signed with SHA-1, which is broken"),
    ("sha224-intermediate", lambda p, r: _sha224_intermediate_chain(p),
     r"^certificate 2 of the chain \(CN=SHA-224 intermediate,.*\) is signed with SHA-224, which is not accepted"),
    ("ca-leaf", lambda p, r: p.ca.issue("a CA as leaf", ca=True),
     r"the certificate is a CA certificate \(basic constraints CA:TRUE\)"),
    ("key-usage-keyCertSign-only", lambda p, r: p.ca.issue("cert signer", key_usage=pki_mod.key_usage(key_cert_sign=True)),
     r"key usage lacks digitalSignature \(it allows only keyCertSign\)"),
    ("key-usage-keyEncipherment-only", lambda p, r: p.ca.issue(
        "rsa encipher only", key=_rsa_key(), key_usage=pki_mod.key_usage(key_encipherment=True)),
     r"key usage lacks digitalSignature \(it allows only keyEncipherment\)"),
    ("key-usage-empty-of-signing", lambda p, r: p.ca.issue(
        "agreement only", key_usage=pki_mod.key_usage(key_agreement=True, encipher_only=True)),
     r"key usage lacks digitalSignature \(it allows only keyAgreement, encipherOnly\)"),
    ("eku-code-signing", lambda p, r: _code_signing_leaf(p), r"not for a TLS server \(its extended key usage lacks serverAuth\)"),
]


def _rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _code_signing_leaf(p: Any) -> Any:
    """A leaf whose extended key usage names a purpose, but not serverAuth."""
    leaf = p.ca.issue("code signer", usage="none")
    builder = (x509.CertificateBuilder().subject_name(leaf.cert.subject).issuer_name(leaf.cert.issuer)
               .public_key(leaf.key.public_key()).serial_number(leaf.cert.serial_number)
               .not_valid_before(leaf.cert.not_valid_before_utc).not_valid_after(leaf.cert.not_valid_after_utc)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False))
    return pki_mod.Leaf(builder.sign(p.ca.key, hashes.SHA256()), leaf.key, leaf.chain)


@pytest.mark.parametrize(("make", "message"), [(m, msg) for _, m, msg in WEAK], ids=[n for n, _, _ in WEAK])
def test_weak_or_unusable_pair_is_refused_and_the_old_one_kept(
    store: TlsStore, pki: Any, rsa_ca: Any, state_dir: Path, make: Callable[[Any, Any], Any], message: str
) -> None:
    """Each is a pair some client would refuse (or should): the one in force must stay."""
    store.install(pki.server2.cert_pem, pki.server2.key_pem)
    before = tls_files(state_dir)
    calls: list[str] = []
    store.add_listener(lambda: calls.append("reload"))
    leaf = make(pki, rsa_ca)
    with pytest.raises(TlsError, match=message):
        store.install(leaf.cert_pem, leaf.key_pem)
    assert tls_files(state_dir) == before
    assert calls == []
    assert served_fingerprint(store, pki) == pki.server2.fingerprint


def test_key_usage_with_digital_signature_only_is_enough_for_rsa(store: TlsStore, pki: Any) -> None:
    """keyEncipherment is optional: the listener offers no static-RSA key exchange, so an RSA key
    only signs, in TLS 1.2 (ECDHE-RSA) as in TLS 1.3."""
    leaf = pki.ca.issue("rsa signer", key=_rsa_key(), key_usage=pki_mod.key_usage(digital_signature=True))
    store.install(leaf.cert_pem, leaf.key_pem)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = client_context(pki)
        client.minimum_version = client.maximum_version = version
        assert hashlib.sha256(handshake(store.server_context(), client)).digest() == leaf.fingerprint


def test_a_root_at_the_end_of_the_chain_is_not_judged_by_its_own_signature(store: TlsStore, pki: Any) -> None:
    """Clients trust a root as it is; a SHA-224 self-signature on it refuses nothing."""
    root = pki_mod.CertAuthority("SHA-224 root", signature_hash=hashes.SHA224())
    leaf = root.issue("leaf under a SHA-224 root")
    store.install(leaf.cert_pem + root.cert_pem, leaf.key_pem)
    assert store.source == "upload"
    assert "CN=leaf under a SHA-224 root" in str(store.describe()["subject"])


# --------------------------------------------------------------------------- the loopback handshake proof


def _server_context(leaf: Any, directory: Path) -> ssl.SSLContext:
    cert, key = leaf.write(directory, "proof")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _proof_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "tls-proof"]


def test_proof_completes_tls_1_2_and_1_3_handshakes_quickly(pki: Any, tmp_path: Path) -> None:
    leaves = {"EC P-256 leaf": pki.server2, "RSA-2048 leaf": pki_mod.rsa_leaf(pki.ca, 2048),
              "leaf + intermediate": pki_mod.CertAuthority("proof intermediate", parent=pki.ca).issue("leaf")}
    for name, leaf in leaves.items():
        context = _server_context(leaf, tmp_path)
        start = time.perf_counter()
        prove_handshake(context, (leaf.cert, *leaf.chain))
        elapsed_ms = (time.perf_counter() - start) * 1000
        print(f"proof, {name}: {elapsed_ms:.1f} ms")
        assert elapsed_ms < 2000
    assert _proof_threads() == []


def test_proof_refuses_a_server_that_serves_another_certificate(pki: Any, tmp_path: Path) -> None:
    context = _server_context(pki.server, tmp_path)  # from the same CA, so it verifies
    with pytest.raises(TlsError, match="did not serve the uploaded certificate"):
        prove_handshake(context, (pki.server2.cert, pki.ca.cert))


def test_a_refused_proof_does_not_wait_for_its_timeouts(pki: Any, tmp_path: Path) -> None:
    context = _server_context(pki.server2, tmp_path)
    start = time.perf_counter()
    with pytest.raises(TlsError, match="unable to get local issuer certificate"):
        prove_handshake(context, (pki.server2.cert, pki.rogue_ca.cert))
    assert time.perf_counter() - start < 1.0
    assert _proof_threads() == []


def test_chain_that_does_not_belong_to_the_leaf_is_refused_by_the_handshake(
    store: TlsStore, pki: Any, state_dir: Path
) -> None:
    """Every static check passes (dates, key, usage); only a client can tell the chain is wrong."""
    with pytest.raises(TlsError, match=r"the pair fails a TLS 1\.2 handshake on 127\.0\.0\.1 \(certificate "
                                       r"verify failed: unable to get local issuer certificate\)"):
        store.install(pki.server2.cert_pem + pki.rogue_ca.cert_pem, pki.server2.key_pem)
    assert tls_files(state_dir) == {}
    assert served_fingerprint(store, pki) == pki.server.fingerprint


def test_handshake_refuses_a_signing_only_certificate_even_without_the_usage_check(
    store: TlsStore, pki: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst case: a keyCertSign-only leaf. With the static check switched off, the
    loopback handshake alone still keeps it from replacing the working pair."""
    monkeypatch.setattr(tls_checks, "check_key_usage", lambda leaf: None)
    leaf = pki.ca.issue("cert signer", key_usage=pki_mod.key_usage(key_cert_sign=True))
    with pytest.raises(TlsError, match=r"the pair fails a TLS 1\.2 handshake on 127\.0\.0\.1"):
        store.install(leaf.cert_pem, leaf.key_pem)
    assert tls_files(state_dir) == {}
    assert served_fingerprint(store, pki) == pki.server.fingerprint


def test_intermediate_with_a_weak_key_is_refused(store: TlsStore, pki: Any, state_dir: Path) -> None:
    weak = pki_mod.CertAuthority("RSA-1024 intermediate", parent=pki.ca,
                                 key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    leaf = weak.issue("leaf under a weak intermediate")
    with pytest.raises(TlsError, match="ca key too small"):
        store.install(leaf.cert_pem, leaf.key_pem)
    assert tls_files(state_dir) == {}


def test_expiry_is_judged_by_the_injected_clock(smgw: Smgw, pki: Any, state_dir: Path) -> None:
    later = pki.server2.cert.not_valid_after_utc + DAY
    store = TlsStore(smgw, state_dir, clock=later.timestamp)
    expected = pki.server2.cert.not_valid_after_utc.strftime("%Y-%m-%d")
    with pytest.raises(TlsError, match=f"certificate expired on {expected}"):
        store.install(pki.server2.cert_pem, pki.server2.key_pem)


def test_expired_certificate_in_the_chain_is_named(store: TlsStore, pki: Any) -> None:
    leaf = pki.server2
    expired_ca = pki_mod.expired(pki.ca)  # any expired certificate after the leaf
    with pytest.raises(TlsError, match=r"certificate 2 of the chain \(CN=expired,.*\) expired on"):
        store.install(leaf.cert_pem + expired_ca.cert_pem, leaf.key_pem)


def test_not_before_beyond_the_clock_skew_is_rejected(smgw: Smgw, pki: Any, state_dir: Path) -> None:
    now = pki_mod.utcnow()
    early = pki.ca.issue("issued ten minutes ahead", not_before=now + dt.timedelta(minutes=10))
    with pytest.raises(TlsError, match="not valid before"):
        TlsStore(smgw, state_dir, clock=now.timestamp).install(early.cert_pem, early.key_pem)


def test_bad_upload_keeps_a_previous_upload(store: TlsStore, pki: Any, state_dir: Path) -> None:
    store.install(pki.server2.cert_pem, pki.server2.key_pem)
    before = tls_files(state_dir)
    bad = pki_mod.expired(pki.ca)
    with pytest.raises(TlsError, match="expired"):
        store.install(bad.cert_pem, bad.key_pem)
    with pytest.raises(TlsError, match="does not match"):
        store.install(pki.server2.cert_pem, pki.server.key_pem)
    assert tls_files(state_dir) == before
    assert served_fingerprint(store, pki) == pki.server2.fingerprint


def test_pair_that_ssl_refuses_is_not_committed(store: TlsStore, pki: Any, state_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The last check loads the written temporary files with ``ssl``; its refusal changes nothing."""
    real = tls._pair_context

    def refuse(cert_path: Path, key_path: Path, what: str) -> ssl.SSLContext:
        if cert_path.name.endswith(".tmp"):
            raise TlsError(f"{what} cannot be loaded: simulated")
        return real(cert_path, key_path, what)

    monkeypatch.setattr(tls, "_pair_context", refuse)
    with pytest.raises(TlsError, match="simulated"):
        store.install(pki.server2.cert_pem, pki.server2.key_pem)
    assert tls_files(state_dir) == {}
    assert served_fingerprint(store, pki) == pki.server.fingerprint


# --------------------------------------------------------------------------- crashes


class Crash(BaseException):
    """The process dies here: no ``except Exception`` handler runs."""


def crash_at_replace(monkeypatch: pytest.MonkeyPatch, which: int) -> None:
    """Make the ``which``-th (1-based) ``os.replace`` (web.tls's renames) kill the "process"."""
    real = os.replace
    count = {"n": 0}

    def replace(src: object, dst: object) -> None:
        count["n"] += 1
        if count["n"] == which:
            raise Crash(f"crash at rename {which}")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)  # os is one module: web.tls sees this too


@pytest.mark.parametrize("previous_upload", [False, True], ids=["over-config", "over-upload"])
def test_crash_before_the_renames_leaves_the_old_pair(
    smgw: Smgw, pki: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch, previous_upload: bool
) -> None:
    old = pki.server2 if previous_upload else pki.server
    new = pki.ca.issue("never committed")
    if previous_upload:
        TlsStore(smgw, state_dir).install(old.cert_pem, old.key_pem)
    crash_at_replace(monkeypatch, 1)
    with pytest.raises(Crash):
        TlsStore(smgw, state_dir).install(new.cert_pem, new.key_pem)
    assert {"cm.pem.tmp", "cm.key.tmp"} <= set(tls_files(state_dir))
    monkeypatch.undo()

    restarted = TlsStore(smgw, state_dir)
    assert served_fingerprint(restarted, pki) == old.fingerprint
    assert not {"cm.pem.tmp", "cm.key.tmp"} & set(tls_files(state_dir))


@pytest.mark.parametrize("previous_upload", [False, True], ids=["over-config", "over-upload"])
def test_crash_between_the_renames_is_finished_at_start(
    smgw: Smgw, pki: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    previous_upload: bool,
) -> None:
    new = pki.ca.issue("committed halfway")
    if previous_upload:
        TlsStore(smgw, state_dir).install(pki.server2.cert_pem, pki.server2.key_pem)
    crash_at_replace(monkeypatch, 2)  # the key is renamed, the certificate is not
    with pytest.raises(Crash):
        TlsStore(smgw, state_dir).install(new.cert_pem, new.key_pem)
    assert "cm.pem.tmp" in tls_files(state_dir)
    monkeypatch.undo()

    with caplog.at_level(logging.WARNING, logger="web.tls"):
        restarted = TlsStore(smgw, state_dir)
    assert "finished an interrupted" in caplog.text
    assert restarted.source == "upload"
    assert served_fingerprint(restarted, pki) == new.fingerprint
    assert sorted(tls_files(state_dir)) == ["cm.key", "cm.pem"]


def test_disk_error_between_the_renames_settles_on_a_consistent_pair(
    store: TlsStore, pki: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    count = {"n": 0}

    def flaky(src: object, dst: object) -> None:
        count["n"] += 1
        if count["n"] == 2:  # the certificate's rename; the key is already in place
            raise OSError(5, "Input/output error")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="Input/output error"):
        store.install(pki.server2.cert_pem, pki.server2.key_pem)
    monkeypatch.undo()
    assert store.source == "upload"  # finished the way a restart would
    assert served_fingerprint(store, pki) == pki.server2.fingerprint
    assert sorted(tls_files(state_dir)) == ["cm.key", "cm.pem"]


def test_broken_pair_in_state_dir_falls_back_to_config_loudly(
    smgw: Smgw, pki: Any, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    TlsStore(smgw, state_dir).install(pki.server2.cert_pem, pki.server2.key_pem)
    (state_dir / "tls" / "cm.key").write_text(pki.server.key_pem)  # no cm.pem.tmp to finish with
    with caplog.at_level(logging.ERROR, logger="web.tls"):
        restarted = TlsStore(smgw, state_dir)
    assert "not usable (private key does not match the certificate)" in caplog.text
    assert restarted.source == "config"
    assert served_fingerprint(restarted, pki) == pki.server.fingerprint


def test_disk_error_while_writing_leaves_nothing_behind(
    store: TlsStore, pki: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tls._write_private

    def full_disk(path: Path, data: bytes) -> None:
        if path.name.startswith("cm.pem"):
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(tls, "_write_private", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.install(pki.server2.cert_pem, pki.server2.key_pem)
    assert tls_files(state_dir) == {}
    assert served_fingerprint(store, pki) == pki.server.fingerprint


def test_temporary_files_are_not_followed_through_symlinks(
    store: TlsStore, pki: Any, state_dir: Path, tmp_path: Path
) -> None:
    """A planted ``cm.key.tmp`` symlink must not make the key land elsewhere."""
    directory = state_dir / "tls"
    directory.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (directory / "cm.key.tmp").symlink_to(target)
    store.install(pki.server2.cert_pem, pki.server2.key_pem)
    assert not target.exists()
    assert not (directory / "cm.key").is_symlink()
    assert served_fingerprint(store, pki) == pki.server2.fingerprint
