"""Ask a running gridcharge for its status over its own HTTP API (``gridcharge status``).

The service is reached the way any LAN client reaches it: ``GET /cnf?cmd=get_dev_info`` on the
LAN listener (``http.listen``; a listener on every address, ``0.0.0.0`` or ``[::]``, is asked on
loopback) with HTTP basic auth. There is no side door: status obeys the same login and the same
throttle as every other caller.

**The password.** An installed config holds only a hash of it, which cannot be sent. So the
password comes from, in this order: the environment variable ``GRIDCHARGE_PASSWORD``; the
config's plain ``http.password`` when it has one; a prompt when standard input is a terminal.
Without any of them ``status`` says so in one line. There is deliberately no ``--password``
option: a password on the command line is readable by every user in ``ps`` and stays in the
shell history.

Every failure is a ``StatusUnavailable`` with one line saying what happened and what to check;
``login_refused`` tells a wrong password (or a lockout) apart from a service that cannot be
reached, because asking again cannot fix the former.
"""

from __future__ import annotations

import base64
import getpass
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PASSWORD_ENV = "GRIDCHARGE_PASSWORD"
TIMEOUT_S = 5.0
#: Listen addresses that mean "every address": the service is asked on loopback then.
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class StatusUnavailable(Exception):
    """The status cannot be had; ``str()`` is one line for the user."""

    def __init__(self, message: str, *, login_refused: bool = False) -> None:
        super().__init__(message)
        self.login_refused = login_refused


def api_base(host: str, port: int) -> str:
    """``http://host:port`` of the LAN listener on ``host`` (from ``http.listen``) and ``port``."""
    host = ANY_ADDRESS.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def password_from(plain: str | None, environ: Mapping[str, str],
                  ask: Callable[[str], str] | None) -> tuple[str, str]:
    """The password to log in with and where it came from (the order: the module docstring)."""
    given = environ.get(PASSWORD_ENV)
    if given:
        return given, PASSWORD_ENV
    if plain:
        return plain, "http.password"
    if ask is not None:
        return ask("gridcharge API password: "), "the prompt"
    raise StatusUnavailable(
        f"the config holds only a hash of the API password: set {PASSWORD_ENV}, "
        "or run gridcharge status on a terminal to be asked for it")


def terminal_prompt() -> Callable[[str], str] | None:
    """``getpass`` when standard input is a terminal (someone can answer), else None."""
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        interactive = False
    return getpass.getpass if interactive else None


@dataclass
class StatusClient:
    """``get_dev_info`` of one service; ``fetch()`` returns the JSON body or raises."""

    base_url: str
    user: str
    password: str = field(repr=False)
    timeout_s: float = TIMEOUT_S
    password_source: str = "the caller"  # named when the login is refused

    def __post_init__(self) -> None:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        # No proxy: the service is on this machine or the LAN; an http_proxy from the
        # environment would send the password elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"{self.base_url}/cnf?cmd=get_dev_info"

    def fetch(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url, headers={"Authorization": self._auth})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                body = answer.read(16 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc.code, _error_text(exc)) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        try:
            info = json.loads(body)
        except ValueError:
            info = None
        if not isinstance(info, dict) or not isinstance(info.get("params"), dict):
            raise StatusUnavailable(f"{self.base_url} answered, but not as gridcharge's API "
                                    "(no get_dev_info body): is http.listen the right address?")
        return info

    def _refusal(self, code: int, error: str) -> StatusUnavailable:
        if code == 401:
            return StatusUnavailable(
                f"{self.base_url} refused the login: wrong user name or password "
                f"(user {self.user!r}, password from {self.password_source})",
                login_refused=True)
        if code == 429:
            return StatusUnavailable(f"{self.base_url}: {error or 'too many failed logins'}", login_refused=True)
        return StatusUnavailable(f"{self.base_url} answered HTTP {code}: {error or 'no reason given'}")

    def _unreachable(self, reason: object) -> StatusUnavailable:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused: is gridcharge running? (systemctl status gridcharge)"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"no answer within {self.timeout_s:g} s"
        elif isinstance(reason, socket.gaierror):
            why = f"unknown host ({reason.strerror})"
        else:
            why = str(reason) or type(reason).__name__
        return StatusUnavailable(f"cannot reach gridcharge at {self.base_url}: {why}")


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The ``{"error": ...}`` of an API refusal, or nothing."""
    try:
        body = json.loads(exc.read(64 * 1024))
    except (ValueError, OSError):
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def client_for(http: Any, *, user: str | None = None, environ: Mapping[str, str] = os.environ,
               ask: Callable[[str], str] | None = None) -> StatusClient:
    """A client for the config's ``http`` section (None: the config has no LAN API)."""
    if http is None:
        raise StatusUnavailable("the config has no http: section, so the service has no LAN API to ask")
    password, source = password_from(http.password, environ, ask)
    return StatusClient(api_base(http.host, http.port), user or http.user, password, password_source=source)
