"""Authentication: basic auth (plain and hashed), the login throttle, client-certificate scopes."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fake_clock import FakeClock

from controller.config.schema import Http
from web import auth as auth_module
from web.auth import (
    ALL_SCOPES,
    BasicAuth,
    ClientCertAuth,
    Principal,
    Scope,
    Throttle,
    basic_credentials,
    hash_password,
)
from web.errors import ApiError

PASSWORD = "s3cret-pass"
CLIENT = "192.168.1.5"


def header(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def refused(auth: Any, environ: dict[str, str], client: str = CLIENT) -> ApiError:
    with pytest.raises(ApiError) as info:
        auth.authenticate(environ, client)
    return info.value


# --------------------------------------------------------------------------- header parsing


@pytest.mark.parametrize(("value", "expected"), [
    ("Basic " + base64.b64encode(b"admin:pw").decode(), ("admin", "pw")),
    ("basic " + base64.b64encode(b"admin:p:w:").decode(), ("admin", "p:w:")),  # ':' in a password
    ("Basic " + base64.b64encode("admin:päss".encode()).decode(), ("admin", "päss")),
    ("Basic " + base64.b64encode(b"admin:").decode(), ("admin", "")),
    ("  Basic   " + base64.b64encode(b"a:b").decode() + " ", ("a", "b")),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic !!!notbase64", None),
    ("Basic " + base64.b64encode(b"admin:\xff\xfe").decode(), None),  # not UTF-8
    ("Basic ÿÿÿ", None),  # a latin-1 header (werkzeug's parser raises on this one)
    ("Bearer abc", None),
    ("Basic", None),
    ("", None),
])
def test_basic_credentials(value: str, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(value) == expected


# --------------------------------------------------------------------------- plain password


def test_plain_password_accepts_the_admin() -> None:
    auth = BasicAuth("admin", password=PASSWORD)
    principal = auth.authenticate(header("admin", PASSWORD), CLIENT)
    assert principal == Principal("admin", ALL_SCOPES)
    assert all(principal.may(s) for s in Scope)


@pytest.mark.parametrize(("user", "password"), [
    ("admin", "wrong"), ("root", PASSWORD), ("Admin", PASSWORD), ("admin", PASSWORD + " "), ("admin", ""),
    ("", ""), ("admin", PASSWORD[:-1]),
])
def test_wrong_credentials_are_401_with_the_basic_challenge(user: str, password: str) -> None:
    error = refused(BasicAuth("admin", password=PASSWORD), header(user, password))
    assert error.status == 401
    assert error.headers["WWW-Authenticate"].startswith('Basic realm="gridcharge"')
    assert "wrong user name or password" in error.message


def test_missing_header_is_401_and_not_a_failed_login() -> None:
    auth = BasicAuth("admin", password=PASSWORD, throttle=Throttle(free_failures=1))
    for _ in range(5):
        error = refused(auth, {})
        assert error.status == 401 and "WWW-Authenticate" in error.headers
    assert len(auth.throttle) == 0


def test_malformed_header_is_401_and_counts() -> None:
    auth = BasicAuth("admin", password=PASSWORD)
    error = refused(auth, {"HTTP_AUTHORIZATION": "Bearer xyz"})
    assert error.status == 401 and "malformed" in error.message
    assert len(auth.throttle) == 1


def test_exactly_one_password_form() -> None:
    with pytest.raises(ValueError):
        BasicAuth("admin")
    with pytest.raises(ValueError):
        BasicAuth("admin", password="x", password_hash="y")


# --------------------------------------------------------------------------- hashed password


@pytest.fixture(scope="module")
def hashed() -> str:
    return hash_password(PASSWORD)


def test_hash_password_makes_a_werkzeug_scrypt_hash_the_config_accepts(hashed: str) -> None:
    assert hashed.startswith("scrypt:")
    http = Http(password_hash=hashed)  # the config's own validator
    auth = BasicAuth.from_config(http)
    assert auth.authenticate(header("admin", PASSWORD), CLIENT).name == "admin"
    with pytest.raises(ValueError):
        hash_password("")


def test_hashed_password_checks_once_then_uses_the_cache(hashed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = auth_module.check_password_hash

    def counting(pwhash: str, password: str) -> bool:
        calls.append(password)
        return real(pwhash, password)

    monkeypatch.setattr(auth_module, "check_password_hash", counting)
    auth = BasicAuth("admin", password_hash=hashed)
    for _ in range(3):
        assert auth.check("admin", PASSWORD)
    assert calls == [PASSWORD]  # scrypt ran once: later requests are an HMAC compare
    for _ in range(2):
        assert not auth.check("admin", "wrong")
    assert calls == [PASSWORD, "wrong", "wrong"]  # failures are never cached
    assert not auth.check("root", PASSWORD)  # the cache holds the password, the user is still checked


def test_unreadable_hash_lets_nobody_in() -> None:
    auth = BasicAuth("admin", password_hash="scrypt:x$y$00")
    assert not auth.check("admin", "anything")


def test_from_config_with_plain_password() -> None:
    auth = BasicAuth.from_config(Http(user="operator", password="longenough"))
    assert auth.check("operator", "longenough") and not auth.check("admin", "longenough")


# --------------------------------------------------------------------------- throttle


def fail(throttle: Throttle, n: int, client: str = CLIENT) -> None:
    for _ in range(n):
        throttle.failure(client)


def retry_after(throttle: Throttle, client: str = CLIENT) -> int | None:
    try:
        throttle.check(client)
    except ApiError as exc:
        assert exc.status == 429 and "too many failed logins" in exc.message
        return int(exc.headers["Retry-After"])
    return None


def test_lockout_starts_after_five_failures_and_doubles_up_to_a_minute() -> None:
    clock = FakeClock()
    throttle = Throttle(clock=clock)
    fail(throttle, 4)
    assert retry_after(throttle) is None
    expected = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for lockout in expected:
        fail(throttle, 1)
        assert retry_after(throttle) == lockout
        clock.advance(lockout - 0.5)
        assert retry_after(throttle) == 1  # half a second left: rounded up
        clock.advance(0.5)
        assert retry_after(throttle) is None


def test_success_resets_and_quiet_addresses_start_afresh() -> None:
    clock = FakeClock()
    throttle = Throttle(clock=clock)
    fail(throttle, 4)
    throttle.success(CLIENT)
    fail(throttle, 4)
    assert retry_after(throttle) is None
    clock.advance(901)  # 15 minutes quiet: the count starts again
    fail(throttle, 4)
    assert retry_after(throttle) is None
    fail(throttle, 1)
    assert retry_after(throttle) == 1


def test_addresses_are_throttled_separately_and_ipv6_per_64() -> None:
    throttle = Throttle(clock=FakeClock())
    fail(throttle, 5, "10.0.0.1")
    assert retry_after(throttle, "10.0.0.1") == 1
    assert retry_after(throttle, "10.0.0.2") is None
    fail(throttle, 3, "2001:db8:1:2::1")
    fail(throttle, 2, "2001:db8:1:2:ffff::9")  # same /64
    assert retry_after(throttle, "2001:db8:1:2::77") == 1
    assert retry_after(throttle, "2001:db8:1:3::1") is None
    assert Throttle.key("::ffff:10.0.0.1") == "10.0.0.1"


def test_memory_is_bounded() -> None:
    throttle = Throttle(clock=FakeClock(), max_clients=3)
    for i in range(10):
        throttle.failure(f"10.0.0.{i}")
    assert len(throttle) == 3
    fail(throttle, 4, "10.0.0.9")  # the most recent ones are kept
    assert retry_after(throttle, "10.0.0.9") == 1


def test_basic_auth_answers_429_during_a_lockout_even_with_the_right_password() -> None:
    clock = FakeClock()
    auth = BasicAuth("admin", password=PASSWORD, throttle=Throttle(clock=clock))
    for _ in range(5):
        assert refused(auth, header("admin", "guess")).status == 401
    error = refused(auth, header("admin", PASSWORD))
    assert error.status == 429 and error.headers["Retry-After"] == "1"
    assert auth.authenticate(header("admin", PASSWORD), "10.9.9.9").name == "admin"  # others unaffected
    clock.advance(1)
    assert auth.authenticate(header("admin", PASSWORD), CLIENT).name == "admin"
    assert len(auth.throttle) == 0


# --------------------------------------------------------------------------- client certificates


def tls_environ(**extra: str) -> dict[str, str]:
    environ = {"wsgi.url_scheme": "https", "SSL_CLIENT_VERIFY": "SUCCESS",
               "SSL_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\n...", "SSL_CLIENT_S_DN_CN": "smgw-client"}
    environ.update(extra)
    return environ


def test_client_certificate_grants_the_configured_functions() -> None:
    principal = ClientCertAuth(("vars",)).authenticate(tls_environ(), "10.0.0.7")
    assert principal.name == "smgw-client"
    assert principal.may(Scope.VARS)
    assert not principal.may(Scope.STATUS) and not principal.may(Scope.ADMIN)


@pytest.mark.parametrize(("functions", "allowed"), [
    ((), set()),
    (("vars",), {Scope.VARS}),
    (("status",), {Scope.STATUS}),
    (("vars", "status"), {Scope.VARS, Scope.STATUS}),
    (("admin",), set(Scope)),
    (("ocpp",), {Scope.OCPP}),
])
def test_scopes(functions: tuple[str, ...], allowed: set[Scope]) -> None:
    principal = ClientCertAuth(functions).authenticate(tls_environ(), "10.0.0.7")
    assert {s for s in Scope if principal.may(s)} == allowed


@pytest.mark.parametrize("environ", [
    {},
    {"wsgi.url_scheme": "http", "SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "x"},
    {"wsgi.url_scheme": "https", "SSL_CLIENT_VERIFY": "NONE"},
    {"wsgi.url_scheme": "https", "SSL_CLIENT_VERIFY": "SUCCESS"},  # no certificate reported
    {"wsgi.url_scheme": "https", "SSL_CLIENT_VERIFY": "FAILED", "SSL_CLIENT_CERT": "x"},
])
def test_no_verified_certificate_is_403(environ: dict[str, str]) -> None:
    error = refused(ClientCertAuth(("admin",)), environ)
    assert error.status == 403 and "client certificate" in error.message


def test_unknown_function_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        ClientCertAuth(("everything",))
