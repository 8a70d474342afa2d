"""Who may call the API, and what: HTTP basic auth on the LAN, client certificates on the SMGW.

Owns the ``Authenticator`` protocol the app calls once per request, its two implementations and
the per-address throttle of failed logins (docs/api.md):

- ``BasicAuth`` (LAN): the admin user and its password, given in the config as plain text or as a
  werkzeug hash (``hash_password`` makes one for ``gridcharge hash-password``). User name and
  password are compared in constant time (``hmac.compare_digest`` on bytes, both always
  compared). A werkzeug scrypt check costs ~0.1 s here and more on a Pi, which would cap the API
  at a few requests per second, so a *successful* check is remembered as an HMAC of the
  credentials under a per-process random key; the next request with the same credentials costs a
  microsecond. Failures are never cached: each one pays the full price.
- ``Throttle``: after ``free_failures`` (5) wrong credentials from one address, that address is
  locked out for 1 s, doubling with every further failure up to 60 s; during a lockout the answer
  is 429 with ``Retry-After`` at once, without checking the password and without sleeping (a
  sleeping worker would hand an attacker the thread pool). A success resets the address; an
  address quiet for 15 minutes starts afresh. IPv6 clients count per /64 (one host owns a whole
  /64). Memory is bounded: at most 4096 addresses, the least recently failed forgotten first.
  A request without an ``Authorization`` header (a browser's first try) is not a failure.
- ``ClientCertAuth`` (SMGW): the TLS layer has already refused clients without a certificate
  signed by ``smgw.client_ca``; the app only checks that the listener reports a verified
  certificate (``web.wsgi_bridge`` sets ``SSL_CLIENT_VERIFY=SUCCESS`` and ``SSL_CLIENT_CERT`` only
  then, with the mod_ssl names) and grants
  the configured ``smgw.functions`` as scopes. No password.

Scopes: ``vars`` (set_cm_vars, get_cm_vars), ``status`` (get_dev_info, get_grid_log,
get_sessions, get_history), ``admin`` (everything), ``ocpp`` (nothing in this API yet). The LAN admin has every scope.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from werkzeug.security import check_password_hash, generate_password_hash

from web.errors import ApiError

log = logging.getLogger(__name__)

REALM = "gridcharge"


class Scope(str, enum.Enum):
    """What a caller may do; the values are the words of ``smgw.functions``."""

    VARS = "vars"
    STATUS = "status"
    ADMIN = "admin"
    OCPP = "ocpp"


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name for the logs and the scopes it holds."""

    name: str
    scopes: frozenset[Scope]

    def may(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


class Authenticator(Protocol):
    def authenticate(self, environ: Mapping[str, Any], client: str) -> Principal:
        """The caller of this request, or raise ApiError (401, 403, 429). Called per request."""
        ...


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})


def hash_password(plain: str) -> str:
    """A werkzeug scrypt hash of ``plain`` for ``http.password_hash`` (``gridcharge hash-password``)."""
    if not plain:
        raise ValueError("the password must not be empty")
    return generate_password_hash(plain, method="scrypt")


# --------------------------------------------------------------------------- throttle


@dataclass
class _Failures:
    count: int
    last_s: float
    locked_until_s: float


class Throttle:
    """Per-address lockout after repeated failed logins; see the module docstring."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_lockout_s: float = 1.0,
        max_lockout_s: float = 60.0,
        forget_after_s: float = 900.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_lockout_s = base_lockout_s
        self.max_lockout_s = max_lockout_s
        self.forget_after_s = forget_after_s
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def key(client: str) -> str:
        """The throttled unit: the address, or its /64 for IPv6."""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return client[:64]
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)

    def check(self, client: str) -> None:
        """Raise 429 while ``client`` is locked out."""
        now = self._clock()
        with self._lock:
            entry = self._clients.get(self.key(client))
            wait_s = 0.0 if entry is None else entry.locked_until_s - now
        if wait_s > 0:
            retry = max(1, math.ceil(wait_s))
            raise ApiError(429, f"too many failed logins from this address: try again in {retry} s",
                           {"Retry-After": str(retry)})

    def failure(self, client: str) -> None:
        now = self._clock()
        key = self.key(client)
        with self._lock:
            entry = self._clients.pop(key, None)
            if entry is None or now - entry.last_s > self.forget_after_s:
                entry = _Failures(0, now, now)
            entry.count += 1
            entry.last_s = now
            beyond = entry.count - self.free_failures
            if beyond >= 0:
                lockout_s = min(self.max_lockout_s, self.base_lockout_s * 2.0 ** min(beyond, 32))
                entry.locked_until_s = now + lockout_s
            self._clients[key] = entry  # most recent last
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        if beyond >= 0:
            log.warning("%d failed logins from %s: locked out for %.0f s", entry.count, key,
                        entry.locked_until_s - now)

    def success(self, client: str) -> None:
        with self._lock:
            self._clients.pop(self.key(client), None)

    def __len__(self) -> int:
        return len(self._clients)


# --------------------------------------------------------------------------- basic auth


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` value, None when it is not one.

    Parsed here rather than by werkzeug, whose parser raises on a non-ASCII header.
    """
    scheme, _, rest = header.strip(" \t").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(rest.strip(" \t").encode("ascii"), validate=True)
        user, sep, password = raw.decode("utf-8").partition(":")
    except (ValueError, UnicodeError):
        return None
    return (user, password) if sep else None


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class BasicAuth:
    """LAN authentication: the admin user with a plain or hashed password, throttled per address."""

    def __init__(
        self,
        user: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        if (password is None) == (password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        self._user = _bytes(user)
        self._password = None if password is None else _bytes(password)
        self._hash = password_hash
        self._cache_key = secrets.token_bytes(32)
        self._verified: bytes | None = None  # HMAC of the last credentials the hash accepted
        self.throttle = throttle if throttle is not None else Throttle()

    @classmethod
    def from_config(cls, http: Any, throttle: Throttle | None = None) -> BasicAuth:
        """From the config's ``http`` section (``user`` and ``password`` or ``password_hash``)."""
        return cls(http.user, password=http.password, password_hash=http.password_hash, throttle=throttle)

    def authenticate(self, environ: Mapping[str, Any], client: str) -> Principal:
        header = environ.get("HTTP_AUTHORIZATION")
        if not header:
            raise unauthorized("authentication required: HTTP basic auth with the admin user")
        self.throttle.check(client)
        credentials = basic_credentials(str(header))
        if credentials is None or not self.check(*credentials):
            self.throttle.failure(client)
            log.info("failed login from %s", client)
            raise unauthorized("wrong user name or password" if credentials
                               else "malformed Authorization header: expected HTTP basic auth")
        self.throttle.success(client)
        return Principal(credentials[0], ALL_SCOPES)

    def check(self, user: str, password: str) -> bool:
        """True for the configured user and password; both are always compared (constant time)."""
        user_ok = hmac.compare_digest(_bytes(user), self._user)
        password_ok = self._check_password(password)
        return user_ok & password_ok

    def _check_password(self, password: str) -> bool:
        given = _bytes(password)
        if self._password is not None:
            return hmac.compare_digest(given, self._password)
        digest = hmac.new(self._cache_key, given, hashlib.sha256).digest()
        verified = self._verified
        if verified is not None and hmac.compare_digest(digest, verified):
            return True
        assert self._hash is not None
        try:
            ok = check_password_hash(self._hash, password)
        except (ValueError, TypeError):  # a hash werkzeug cannot read: nobody gets in, say why
            log.error("http.password_hash cannot be checked: not a werkzeug hash")
            return False
        if ok:
            self._verified = digest
        return ok


# --------------------------------------------------------------------------- client certificates


class ClientCertAuth:
    """SMGW authentication: a verified client certificate; the scopes are ``smgw.functions``."""

    def __init__(self, functions: Iterable[str]) -> None:
        self.scopes = frozenset(Scope(f) for f in functions)

    def authenticate(self, environ: Mapping[str, Any], client: str) -> Principal:
        verified = environ.get("SSL_CLIENT_VERIFY") == "SUCCESS" and bool(environ.get("SSL_CLIENT_CERT"))
        if environ.get("wsgi.url_scheme") != "https" or not verified:
            raise ApiError(403, "a client certificate signed by the SMGW client CA is required")
        name = str(environ.get("SSL_CLIENT_S_DN_CN") or "smgw client")
        return Principal(name, self.scopes)
