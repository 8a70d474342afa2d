"""``gridcharge status``'s way to the service: the address from ``http.listen``, the password's
sources in their order. The answers of real servers are in tests/integration/test_status.py."""

from __future__ import annotations

import pytest

from controller.config.schema import Http
from controller.commands.status_client import PASSWORD_ENV, StatusUnavailable, api_base, client_for, password_from

HASH = "scrypt:32768:8:1$salt$" + "ab" * 32


@pytest.mark.parametrize(("listen", "url"), [
    ("0.0.0.0:80", "http://127.0.0.1:80"),
    ("[::]:8080", "http://[::1]:8080"),
    ("192.168.1.20:80", "http://192.168.1.20:80"),
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("[fe80::1]:80", "http://[fe80::1]:80"),
])
def test_the_lan_listener_is_asked_on_loopback_when_it_listens_everywhere(listen: str, url: str) -> None:
    http = Http(listen=listen, password="long enough")
    assert api_base(http.host, http.port) == url


def never_asked(prompt: str) -> str:
    raise AssertionError("asked for the password although it was given")


def test_the_environment_comes_first_then_the_plain_password_then_the_prompt() -> None:
    assert password_from("in-config", {PASSWORD_ENV: "from-env"}, never_asked) == ("from-env", PASSWORD_ENV)
    assert password_from("in-config", {}, never_asked) == ("in-config", "http.password")
    assert password_from(None, {PASSWORD_ENV: ""}, lambda prompt: "typed") == ("typed", "the prompt")


def test_a_hash_alone_without_a_terminal_says_what_to_do() -> None:
    with pytest.raises(StatusUnavailable) as caught:
        password_from(None, {}, None)
    assert PASSWORD_ENV in str(caught.value) and "hash" in str(caught.value)
    assert not caught.value.login_refused


def test_client_for_the_config() -> None:
    http = Http(listen="0.0.0.0:8080", user="installer", password_hash=HASH)
    client = client_for(http, environ={PASSWORD_ENV: "secret-1"})
    assert client.url == "http://127.0.0.1:8080/cnf?cmd=get_dev_info"
    assert client.user == "installer" and client.password == "secret-1" and client.password_source == PASSWORD_ENV
    assert client_for(http, user="other", environ={PASSWORD_ENV: "x"}).user == "other"
    assert "secret-1" not in repr(client)
    with pytest.raises(StatusUnavailable, match="no http: section"):
        client_for(None, environ={})
