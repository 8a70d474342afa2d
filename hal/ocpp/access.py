"""Who may open an OCPP connection: decided from the HTTP upgrade request alone (pure).

A box connects to ``/ocpp/<charge_box_id>``. Only configured ids get past the HTTP request (any
other gets 404 before the WebSocket upgrade), and a box with a password must present it as HTTP
basic auth with its charge_box_id as the user (OCPP 1.6 security whitepaper, profiles 1 and 2),
else 401. Nothing of the WebSocket is set up for a request that is refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

PATH_PREFIX = "/ocpp/"
REALM = "gridcharge OCPP"


@dataclass(frozen=True)
class Verdict:
    """``status`` None: let the upgrade go ahead for ``charge_box_id``; else answer with it."""

    charge_box_id: str | None
    status: HTTPStatus | None
    reason: str = ""


def charge_box_id_of(path: str) -> str | None:
    """``/ocpp/EVB-P2231`` (a query string ignored, percent-escapes decoded) → ``EVB-P2231``."""
    path = path.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        return None
    box_id = unquote(path[len(PATH_PREFIX):])
    return box_id if box_id and "/" not in box_id else None


def basic_auth_matches(header: str | None, user: str, password: str) -> bool:
    """The ``Authorization`` header carries ``user:password`` (compared in constant time)."""
    if header is None:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = decoded.partition(":")
    if not sep:
        return False
    same_user = hmac.compare_digest(given_user.encode(), user.encode())
    same_password = hmac.compare_digest(given_password.encode(), password.encode())
    return same_user and same_password


def decide(path: str, authorization: str | None, passwords: Mapping[str, str | None]) -> Verdict:
    """The verdict on one upgrade request; ``passwords``: every configured id → its password
    (None: the box connects without one)."""
    box_id = charge_box_id_of(path)
    if box_id is None or box_id not in passwords:
        return Verdict(box_id, HTTPStatus.NOT_FOUND, "not a configured charge box")
    password = passwords[box_id]
    if password is not None and not basic_auth_matches(authorization, box_id, password):
        why = "no credentials" if authorization is None else "wrong credentials"
        return Verdict(box_id, HTTPStatus.UNAUTHORIZED, why)
    return Verdict(box_id, None)
