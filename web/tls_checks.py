"""What an uploaded SMGW certificate/key pair must be: PEM parsing and every check, no files.

This module owns the policy half of ``set_tls_cert``: it turns the uploaded text into
certificates and a key, and refuses (``TlsError``, which the API answers with 400) anything a
TLS server must not serve. It reads no files and holds no state, so each rule can be tested on
its own; ``web.tls`` (the store) runs ``check_upload`` before it writes anything.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

MAX_CERT_PEM_BYTES = 48 * 1024  # a leaf and a few intermediates; the whole request is ≤ 64 KiB
MAX_KEY_PEM_BYTES = 16 * 1024  # an RSA-4096 PKCS#8 PEM key is ~3.3 KiB
MAX_CHAIN_CERTS = 8
CLOCK_SKEW_S = 300.0  # a certificate issued minutes ago on a host whose clock runs a bit ahead
MIN_RSA_BITS = 2048
RSA_EXPONENT = 65537  # what every key generator makes; e=3 keys invite signature-forgery bugs
ALLOWED_CURVES = ("secp256r1", "secp384r1")
#: Signature hashes a certificate of the chain may be signed with. MD5 and SHA-1 have practical
#: collision attacks (forged certificates); anything else (SHA-224, SHA-3) is unusual in TLS.
ALLOWED_SIGNATURE_HASHES = ("sha256", "sha384", "sha512")
BROKEN_SIGNATURE_HASHES = ("md5", "sha1")
#: Signature algorithms without a separate hash (cryptography reports ``None`` for them).
HASHLESS_SIGNATURES = (x509.SignatureAlgorithmOID.ED25519, x509.SignatureAlgorithmOID.ED448)

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class TlsError(ValueError):
    """A certificate, key or CA that cannot be used; the message says why (shown to the admin)."""


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that passed every check, in the canonical PEM form that will be stored."""

    cert_pem: bytes
    key_pem: bytes
    certs: tuple[x509.Certificate, ...]  # leaf first

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]


# --------------------------------------------------------------------------- parsing


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


def parse_private_key(key_pem: str | bytes) -> PrivateKey:
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


def _check_key_type(key: object) -> PrivateKey:
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


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _label(cert: x509.Certificate, index: int) -> str:
    return "certificate" if index == 0 else f"certificate {index + 1} of the chain ({cert.subject.rfc4514_string()})"


def check_dates(certs: Sequence[x509.Certificate], now_s: float, skew_s: float = CLOCK_SKEW_S) -> None:
    """Every certificate of the chain is valid now (``not_before`` may be ``skew_s`` ahead)."""
    now = dt.datetime.fromtimestamp(now_s, dt.UTC)
    for index, cert in enumerate(certs):
        if cert.not_valid_after_utc <= now:
            raise TlsError(f"{_label(cert, index)} expired on {utc_text(cert.not_valid_after_utc)}")
        if cert.not_valid_before_utc > now + dt.timedelta(seconds=skew_s):
            raise TlsError(f"{_label(cert, index)} is not valid before {utc_text(cert.not_valid_before_utc)} "
                           f"(this host's clock says {utc_text(now)})")


def check_key_matches(certs: Sequence[x509.Certificate], key: PrivateKey) -> None:
    """The key belongs to the leaf, i.e. the first certificate (the order ``ssl`` requires)."""
    key_der = _public_der(key.public_key())
    if _public_der(certs[0].public_key()) == key_der:
        return
    if any(_public_der(c.public_key()) == key_der for c in certs[1:]):
        raise TlsError("the certificate that matches the private key must come first in the chain")
    raise TlsError("private key does not match the certificate")


def check_rsa_exponent(key: PrivateKey) -> None:
    """An RSA key's public exponent is 65537.

    e=3 is the exponent of the classic signature-forgery attacks on sloppy verifiers, and
    exponents other than 65537 are refused by some TLS stacks: either way the SMGW could not
    trust the listener. Every ``openssl``/``cryptography`` key generator makes 65537.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        exponent = key.public_key().public_numbers().e
        if exponent != RSA_EXPONENT:
            raise TlsError(f"RSA public exponent {exponent} refused (use {RSA_EXPONENT}, what "
                           "every key generator makes)")


def _is_root(cert: x509.Certificate, index: int, count: int) -> bool:
    """A self-signed CA certificate at the end of a chain: clients trust it as it is, they never
    check its own signature, so how it is signed does not matter."""
    return index > 0 and index == count - 1 and cert.issuer == cert.subject and _is_ca(cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_signature_hashes(certs: Sequence[x509.Certificate]) -> None:
    """Every certificate a client verifies is signed with SHA-256, SHA-384 or SHA-512 (or
    Ed25519/Ed448); a root at the end of the chain is exempt (``_is_root``)."""
    for index, cert in enumerate(certs):
        if _is_root(cert, index, len(certs)):
            continue
        try:
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            raise TlsError(f"{_label(cert, index)} is signed with an algorithm this controller does "
                           f"not know ({cert.signature_algorithm_oid.dotted_string})") from None
        if algorithm is None:
            if cert.signature_algorithm_oid in HASHLESS_SIGNATURES:
                continue
            raise TlsError(f"{_label(cert, index)} is signed with an algorithm this controller does "
                           f"not know ({cert.signature_algorithm_oid.dotted_string})")
        name = algorithm.name
        if name in BROKEN_SIGNATURE_HASHES:
            raise TlsError(f"{_label(cert, index)} is signed with {_hash_text(name)}, which is "
                           "broken (have it signed with SHA-256 or stronger)")
        if name not in ALLOWED_SIGNATURE_HASHES:
            raise TlsError(f"{_label(cert, index)} is signed with {_hash_text(name)}, which is not "
                           "accepted (have it signed with SHA-256, SHA-384 or SHA-512)")


def _hash_text(name: str) -> str:
    """``sha1`` → ``SHA-1``, ``sha224`` → ``SHA-224``, ``md5`` → ``MD5``: how admins spell them."""
    upper = name.upper()
    return "SHA-" + upper[3:] if upper.startswith("SHA") and upper[3:].isdigit() else upper


def check_end_entity(leaf: x509.Certificate) -> None:
    """The served certificate is not a CA: a CA certificate as a server certificate is a
    mix-up (the CA file uploaded instead of the leaf), and strict clients refuse it."""
    if _is_ca(leaf):
        raise TlsError("the certificate is a CA certificate (basic constraints CA:TRUE); "
                       "the listener needs the server (end-entity) certificate the CA issued")


_KEY_USAGE_NAMES = (
    ("digital_signature", "digitalSignature"), ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"), ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"), ("key_cert_sign", "keyCertSign"), ("crl_sign", "cRLSign"),
)


def _usage_names(usage: x509.KeyUsage) -> list[str]:
    names = [label for attribute, label in _KEY_USAGE_NAMES if getattr(usage, attribute)]
    if usage.key_agreement:  # the two flags exist only with keyAgreement (cryptography raises)
        names += [label for attribute, label in (("encipher_only", "encipherOnly"),
                                                 ("decipher_only", "decipherOnly"))
                  if getattr(usage, attribute)]
    return names


def check_key_usage(leaf: x509.Certificate) -> None:
    """When the leaf has a KeyUsage extension, it allows ``digitalSignature``.

    The listener offers only (EC)DHE key exchange (TLS 1.2 ECDHE/DHE suites, and TLS 1.3, which
    has nothing else), in which the server's key does one thing: sign the handshake. So
    ``digitalSignature`` is required, and ``keyEncipherment`` (needed only for the static-RSA
    key exchange, which this listener never offers) is optional. No extension means no limit.
    """
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        has = ", ".join(_usage_names(usage)) or "nothing"
        raise TlsError(f"the certificate's key usage lacks digitalSignature (it allows only {has}); "
                       "a TLS server signs its handshakes with the key")


def check_server_usage(leaf: x509.Certificate) -> None:
    """A leaf whose extended key usage excludes TLS servers is refused by every client."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usage:
        raise TlsError("the certificate is not for a TLS server (its extended key usage lacks serverAuth)")


def check_upload(cert_pem: str | bytes, key_pem: str | bytes, now_s: float) -> CheckedUpload:
    """Everything ``install`` checks before writing anything; the canonical PEM to store."""
    certs = parse_certificates(cert_pem)
    key = parse_private_key(key_pem)
    check_rsa_exponent(key)
    check_key_matches(certs, key)
    check_dates(certs, now_s)
    check_signature_hashes(certs)
    check_end_entity(certs[0])
    check_key_usage(certs[0])
    check_server_usage(certs[0])
    return CheckedUpload(
        cert_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        certs=tuple(certs),
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
