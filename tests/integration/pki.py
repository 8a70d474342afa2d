"""A small test PKI made with ``cryptography``: the certificates the SMGW TLS tests need.

Owns nothing of the product: it makes, in a temporary directory, what an electrician and a grid
operator would bring: a CA that signs the SMGW client certificates and our
server certificate, a server leaf for 127.0.0.1/localhost, a second server leaf (the "new" pair
of an upload), client leaves, a rogue CA with its own client, and the broken material every
validation rule of ``web.tls_checks`` must reject (expired, not yet valid, a key that does not
match, small RSA, RSA with e=3, an unsupported key type, an encrypted key, a client-only
certificate, a CA certificate as leaf, a key usage without digitalSignature, MD5 and SHA-1
signatures).

EC P-256 keys throughout (fast to make); one RSA-2048 leaf so the RSA path is exercised too.
Both the unit tests (``tests/unit/test_tls.py``) and the integration tests use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
DAY = dt.timedelta(days=1)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey, password: bytes | None = None) -> str:
    """PKCS#8 PEM text, encrypted when ``password`` is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


def cert_pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER form: what ``getpeercert(binary_form=True)`` hashes to."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridcharge tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Leaf:
    """An issued certificate (with the chain up to, not including, the root) and its key."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> str:
        return cert_pem(self.cert, *self.chain)

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.cert)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.pem`` and ``stem.key``; returns their paths (for ``load_cert_chain``)."""
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_text(self.cert_pem)
        key_path.write_text(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


class CertAuthority:
    """A self-signed CA (or an intermediate when ``parent`` is given) that issues leaves."""

    def __init__(self, common_name: str, parent: CertAuthority | None = None,
                 key: PrivateKey | None = None, signature_hash: hashes.HashAlgorithm | None = None) -> None:
        self.key = key if key is not None else ec_key()
        now = utcnow()
        issuer_name = parent.cert.subject if parent else _name(common_name)
        signing_key = parent.key if parent else self.key
        self.parent = parent
        self.cert: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(issuer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True,
                              crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True,
            )
            .sign(signing_key, signature_hash or hashes.SHA256())
        )

    @property
    def cert_pem(self) -> str:
        return cert_pem(self.cert)

    def write(self, path: Path) -> Path:
        path.write_text(self.cert_pem)
        return path

    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA and its parents below the root: what a leaf sends after itself."""
        return (self.cert, *self.parent.chain()) if self.parent else ()

    def issue(
        self,
        common_name: str,
        *,
        usage: str = "server",
        key: PrivateKey | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        sans: Sequence[str] = ("localhost", "127.0.0.1"),
        ca: bool = False,
        key_usage: x509.KeyUsage | None = None,
    ) -> Leaf:
        """A leaf for TLS ``usage`` ``"server"``, ``"client"`` or ``"none"`` (no EKU extension);
        ``ca`` sets basic constraints CA:TRUE, ``key_usage`` adds that (critical) extension."""
        key = key if key is not None else ec_key()
        now = utcnow()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - DAY)
            .not_valid_after(not_after or now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if key_usage is not None:
            builder = builder.add_extension(key_usage, critical=True)
        if usage != "none":
            oid = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
        if usage == "server" and sans:
            names: list[x509.GeneralName] = []
            for san in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(san)))
                except ValueError:
                    names.append(x509.DNSName(san))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Leaf(builder.sign(self.key, hashes.SHA256()), key, self.chain())


@dataclass(frozen=True)
class Pki:
    """Everything the TLS tests use, with the CA files already written to ``directory``."""

    directory: Path
    ca: CertAuthority  # signs our server certificates and the SMGW client certificates
    ca_path: Path
    rogue_ca: CertAuthority  # another CA: its clients must be refused
    rogue_ca_path: Path
    server: Leaf  # the pair an electrician installs (config smgw.cert/smgw.key)
    server_paths: tuple[Path, Path]
    server2: Leaf  # a second valid pair: an upload that must replace ``server``
    client: Leaf  # the SMGW's client certificate (from ``ca``)
    client_paths: tuple[Path, Path]
    rogue_client: Leaf  # a client certificate from ``rogue_ca``
    rogue_client_paths: tuple[Path, Path]

    def client_leaf(self, common_name: str) -> Leaf:
        return self.ca.issue(common_name, usage="client")


def make_pki(directory: Path) -> Pki:
    """Make the CAs and the common leaves in ``directory`` (a test's temporary directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertAuthority("gridcharge test CA")
    rogue_ca = CertAuthority("rogue CA")
    server = ca.issue("gridcharge smgw listener")
    client = ca.issue("smgw-client", usage="client")
    rogue_client = rogue_ca.issue("rogue-client", usage="client")
    return Pki(
        directory=directory,
        ca=ca,
        ca_path=ca.write(directory / "ca.pem"),
        rogue_ca=rogue_ca,
        rogue_ca_path=rogue_ca.write(directory / "rogue-ca.pem"),
        server=server,
        server_paths=server.write(directory, "server"),
        server2=ca.issue("gridcharge smgw listener (uploaded)"),
        client=client,
        client_paths=client.write(directory, "client"),
        rogue_client=rogue_client,
        rogue_client_paths=rogue_client.write(directory, "rogue-client"),
    )


# --------------------------------------------------------------------------- broken material


def expired(ca: CertAuthority) -> Leaf:
    now = utcnow()
    return ca.issue("expired", not_before=now - 400 * DAY, not_after=now - 30 * DAY)


def not_yet_valid(ca: CertAuthority) -> Leaf:
    now = utcnow()
    return ca.issue("not yet valid", not_before=now + 30 * DAY, not_after=now + 400 * DAY)


def rsa_leaf(ca: CertAuthority, key_size: int = 2048) -> Leaf:
    return ca.issue(f"rsa-{key_size}", key=rsa.generate_private_key(public_exponent=65537, key_size=key_size))


def ed25519_leaf(ca: CertAuthority) -> Leaf:
    return ca.issue("ed25519", key=ed25519.Ed25519PrivateKey.generate())


def p521_leaf(ca: CertAuthority) -> Leaf:
    return ca.issue("p521", key=ec.generate_private_key(ec.SECP521R1()))


def rsa_e3_leaf(ca: CertAuthority) -> Leaf:
    return ca.issue("rsa-e3", key=rsa.generate_private_key(public_exponent=3, key_size=2048))


def key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension allowing exactly the named usages (``key_cert_sign=True``, ...)."""
    flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                 encipher_only=False, decipher_only=False)
    flags.update(allowed)
    return x509.KeyUsage(**flags)


# The DER of the signature algorithm identifiers of RSA PKCS#1 v1.5 signatures: all the same
# length, so one can be swapped for another without re-encoding the certificate.
_RSA_SIGNATURE_OIDS = {
    "sha256": bytes.fromhex("06092a864886f70d01010b"),
    "sha1": bytes.fromhex("06092a864886f70d010105"),
    "md5": bytes.fromhex("06092a864886f70d010104"),
}
_WEAK_HASHES: dict[str, hashes.HashAlgorithm] = {"sha1": hashes.SHA1(), "md5": hashes.MD5()}


def weakly_signed(ca: CertAuthority, common_name: str, hash_name: str) -> Leaf:
    """A server leaf that ``ca`` (an RSA CA) signed with ``"md5"`` or ``"sha1"``.

    cryptography refuses to sign certificates with these hashes, but old CAs did and ``openssl``
    still can. So the leaf is issued with SHA-256, its two signature algorithm identifiers are
    swapped for the weak one (same length in DER), and the TBS part is signed again.
    """
    assert isinstance(ca.key, rsa.RSAPrivateKey), "the weak-hash leaves need an RSA CA"
    leaf = ca.issue(common_name)
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    old, new = _RSA_SIGNATURE_OIDS["sha256"], _RSA_SIGNATURE_OIDS[hash_name]
    assert der.count(old) == 2, "expected the algorithm in the TBS part and after it"
    swapped = x509.load_der_x509_certificate(der.replace(old, new))
    signature = ca.key.sign(swapped.tbs_certificate_bytes, padding.PKCS1v15(), _WEAK_HASHES[hash_name])
    assert der.endswith(leaf.cert.signature) and len(signature) == len(leaf.cert.signature)
    cert = x509.load_der_x509_certificate(der.replace(old, new)[: -len(signature)] + signature)
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == hash_name
    return Leaf(cert, leaf.key, leaf.chain)
