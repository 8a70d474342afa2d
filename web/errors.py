"""The API's error type and its one JSON shape: ``{"error": "..."}`` with the right status.

Every refusal of the web layer (bad input, authentication, scope, size, throttling) is raised as
an ``ApiError`` and turned into a response in one place (``web.app``), so that no path answers
with an HTML page or a bare text: cFos clients and curl users read ``error``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Response

#: Error texts are cut here: a message that echoes a 60 KiB hostile name helps nobody.
MAX_ERROR_CHARS = 400


class ApiError(Exception):
    """A request refused with ``status`` and a message that says what is wrong."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters with a visible mark, so errors stay readable."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response; ``allow_nan=False`` because NaN/Infinity are not JSON (callers clean them)."""
    text = json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    response = Response(text + "\n", status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": short(message)}, status, headers)
