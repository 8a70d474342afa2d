"""A complete request (head and body already read) through a WSGI app, into a complete answer.

The listener reads the whole request on its event loop and only then hands it to a worker
thread, which builds the WSGI environ (PEP 3333) and runs the app to the end: the app never
reads from a socket, so no worker ever waits on a slow client. The body is in memory (at most
64 KiB) and is given as ``wsgi.input`` with its real ``CONTENT_LENGTH``, also when it arrived
chunked. On the SMGW listener the verified client certificate is described with the mod_ssl
names ``web.auth`` reads (``SSL_CLIENT_VERIFY``, ``SSL_CLIENT_CERT``, ``SSL_CLIENT_S_DN_CN``).
"""

from __future__ import annotations

import io
import logging
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Framing is the listener's business: the app's own values of these are dropped.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-connection"})


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, and where it came in."""

    address: str
    port: int
    server_name: str
    server_port: int
    tls: Mapping[str, str] | None = None  # the SSL_* variables; None on a plain listener


@dataclass(frozen=True)
class AppAnswer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def tls_variables(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str]:
    """The mod_ssl-style description of a finished handshake (empty without one)."""
    if ssl_object is None:
        return {}
    variables = {"HTTPS": "on", "SSL_PROTOCOL": ssl_object.version() or "", "SSL_CLIENT_VERIFY": "NONE"}
    cipher = ssl_object.cipher()
    if cipher:
        variables["SSL_CIPHER"] = cipher[0]
    der = ssl_object.getpeercert(binary_form=True)
    if der:  # with CERT_REQUIRED, only a certificate the context verified gets this far
        variables["SSL_CLIENT_VERIFY"] = "SUCCESS"
        variables["SSL_CLIENT_CERT"] = ssl.DER_cert_to_PEM_cert(der)
        subject: Any = (ssl_object.getpeercert() or {}).get("subject", ())
        for rdn in subject:  # ((("commonName", "smgw-client"),), ...)
            for name, value in rdn:
                if name == "commonName":
                    variables["SSL_CLIENT_S_DN_CN"] = str(value)
    return variables


def split_target(target: bytes) -> tuple[str, str]:
    """(PATH_INFO, QUERY_STRING) of a request target, origin form or absolute form."""
    path, _, query = target.partition(b"?")
    if b"://" in path and not path.startswith(b"/"):
        rest = path.split(b"://", 1)[1]
        path = b"/" + rest.split(b"/", 1)[1] if b"/" in rest else b"/"
    return unquote_to_bytes(path).decode("latin-1"), query.decode("latin-1")


def build_environ(request: h11.Request, body: bytes, peer: Peer) -> dict[str, Any]:
    path, query = split_target(request.target)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": peer.server_name,
        "SERVER_PORT": str(peer.server_port),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": peer.address,
        "REMOTE_PORT": str(peer.port),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if peer.tls is not None else "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in request.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name in ("content-length", "transfer-encoding") or "_" in name:
            continue  # framing was handled; "_" names could pose as "-" names in the environ
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    if peer.tls is not None:
        environ.update(peer.tls)
    return environ


def run_app(app: WsgiApp, environ: dict[str, Any]) -> AppAnswer:
    """Run ``app`` to the end (in a worker thread) and collect its whole answer."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, headers)]
        return chunks.append

    chunks: list[bytes] = []
    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                chunks.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI app returned without calling start_response")
    status_line, headers = started[0]
    code, _, reason = status_line.partition(" ")
    kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    return AppAnswer(int(code), reason, kept, b"".join(chunks))
