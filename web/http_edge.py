"""The checks a request meets before the app sees it, and the answers the listener gives itself.

A request is refused at the server edge, with the API's JSON error shape and
``Connection: close``, when its framing is wrong or unsafe (ambiguous framing is how requests
are smuggled past a proxy):

- 400: a request line or header h11 cannot parse, HTTP/1.1 without ``Host``, a bad
  ``Content-Length`` (``-1``, two different values), ``Transfer-Encoding`` together with
  ``Content-Length``, a body that ends (the client closed its side) before its
  ``Content-Length``;
- 408: a request head or body not complete within its deadline;
- 413: a declared or chunked body over the API's 64 KiB (before it is read);
- 431: request line and headers over 32 KiB;
- 501: a transfer coding other than ``chunked``.

The answer is written without h11 (h11 may be in an error state by then), as a complete
HTTP/1.1 response, so that clients and tests read the same JSON as from the app.
"""

from __future__ import annotations

import email.utils
import json
from http import HTTPStatus

import h11

SERVER_NAME = "gridcharge"


class EdgeError(Exception):
    """A request refused by the listener itself: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def declared_length(request: h11.Request, max_body_bytes: int) -> int | None:
    """The body length the request declares (None: chunked); raises EdgeError when the framing
    is ambiguous or the declared body is too large."""
    lengths = [v for n, v in request.headers if n == b"content-length"]
    chunked = any(n == b"transfer-encoding" for n, _ in request.headers)
    if chunked and lengths:
        raise EdgeError(400, "Transfer-Encoding and Content-Length together: send one of them")
    if chunked:
        return None
    length = int(lengths[0]) if lengths else 0  # h11 checked that it is digits and consistent
    if length > max_body_bytes:
        raise EdgeError(413, f"request body too large: at most {max_body_bytes} bytes")
    return length


def from_protocol_error(exc: h11.RemoteProtocolError) -> EdgeError:
    """h11's complaint about what the client sent, as an answer (h11 suggests the status)."""
    status = exc.error_status_hint if 400 <= exc.error_status_hint < 600 else 400
    return EdgeError(status, f"malformed HTTP request: {exc}")


def http_date() -> str:
    return email.utils.formatdate(usegmt=True)


def error_bytes(status: int, message: str, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with ``{"error": message}``."""
    body = (json.dumps({"error": message[:400]}, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        ("Date", http_date()),
        ("Server", SERVER_NAME),
        *extra_headers,
    ]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body
