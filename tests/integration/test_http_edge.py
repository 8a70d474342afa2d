"""The server edge over real sockets: framing the listener refuses itself, deadlines, keep-alive.

A real LAN listener (``web.server.WebServers``, the real Flask app and basic auth) on 127.0.0.1,
spoken to with raw sockets, because these requests are exactly what ordinary clients never send.
Every refusal must be a JSON error with ``Connection: close``, come at once (not after a
timeout), and change nothing in the variable store. The deadline tests use a listener with short
deadlines (0.5 s) so that they stay fast; the defaults are the same code with other numbers.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.config.schema import Http
from controller.status import EMPTY_STATUS
from controller.records.variables import VariableStore
from web.app import ApiContext
from web.limits import ListenerLimits
from web.server import WebServers

USER, PASSWORD = "admin", "edge-test-pass-1234"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
AT_ONCE_S = 1.0  # "at once" on a loaded 2-core machine; the deadlines involved are 5 s and more
SHORT = ListenerLimits(handshake_s=0.5, head_s=0.5, idle_s=0.5, body_s=0.5, linger_s=0.3)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    def json(self) -> dict[str, object]:
        return dict(json.loads(self.body))


@dataclass
class Edge:
    servers: WebServers
    store: VariableStore

    @property
    def port(self) -> int:
        assert self.servers.lan_port is not None
        return self.servers.lan_port

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def unchanged(self, generation: int) -> bool:
        return self.store.snapshot().generation == generation


def read_answer(sock: socket.socket, start_s: float, buffered: bytes = b"") -> tuple[Answer, bytes]:
    """One response (Content-Length framed) from ``sock``; and what came after it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a complete answer: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Answer(status, headers, rest[:length], time.monotonic() - start_s), rest[length:]


def exchange(edge: Edge, data: bytes, *, shut_write: bool = False) -> Answer:
    """Send ``data`` on a new connection (then half-close if asked); the first answer."""
    with edge.connect() as sock:
        start = time.monotonic()
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock, start)[0]


def assert_refused(answer: Answer, status: int, *words: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    message = str(answer.json()["error"])
    for word in words:
        assert word in message, message
    assert answer.elapsed_s < AT_ONCE_S, answer.elapsed_s


def start_edge(limits: ListenerLimits | None = None) -> Edge:
    store = VariableStore({"AVAIL": 100})
    ctx = ApiContext(store=store, status=lambda: EMPTY_STATUS, update_override=lambda dev_id, **change: None,
                     grid_log=None, tls=None, version="test")
    http = Http.model_construct(listen="127.0.0.1:0", user=USER, password=PASSWORD, password_hash=None)
    servers = WebServers(ctx, http, None, None, limits={"lan": limits} if limits else None)
    servers.start()
    return Edge(servers, store)


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    e = start_edge()
    yield e
    e.servers.stop()


@pytest.fixture()
def short() -> Iterator[Edge]:
    e = start_edge(SHORT)
    yield e
    e.servers.stop()


def post(path: str, *headers: str, body: bytes = b"", version: str = "1.1", host: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/{version}", *(["Host: pi"] if host else []), f"Authorization: {AUTH}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SET = "/cnf?cmd=set_cm_vars"
BODY = b'{"vars": [{"name": "X", "expr": 1}]}'


# --------------------------------------------------------------------------- framing


def test_negative_content_length_is_400_at_once(edge: Edge) -> None:
    generation = edge.store.snapshot().generation
    assert_refused(exchange(edge, post(SET, "Content-Length: -1", body=BODY)), 400, "Content-Length")
    assert edge.unchanged(generation)


def test_body_shorter_than_its_content_length_is_400_when_the_client_stops(edge: Edge) -> None:
    generation = edge.store.snapshot().generation
    answer = exchange(edge, post(SET, f"Content-Length: {len(BODY) + 10}", body=BODY), shut_write=True)
    assert_refused(answer, 400, "expected")
    assert edge.unchanged(generation)


def test_transfer_encoding_with_content_length_is_400(edge: Edge) -> None:
    generation = edge.store.snapshot().generation
    chunked = f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n"
    answer = exchange(edge, post(SET, "Transfer-Encoding: chunked", f"Content-Length: {len(chunked)}", body=chunked))
    assert_refused(answer, 400, "Transfer-Encoding", "Content-Length")
    assert edge.unchanged(generation)


def test_http11_without_host_is_400_and_http10_needs_none(edge: Edge) -> None:
    assert_refused(exchange(edge, post(SET, f"Content-Length: {len(BODY)}", body=BODY, host=False)), 400, "Host")
    answer = exchange(edge, b"GET /cnf?cmd=get_cm_vars HTTP/1.0\r\nAuthorization: " + AUTH.encode() + b"\r\n\r\n")
    assert answer.status == 200 and answer.json()["vars"]


def test_chunked_bodies_work_and_over_64_kib_are_413(edge: Edge) -> None:
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (BODY[:10], BODY[10:])) + b"0\r\n\r\n"
    answer = exchange(edge, post(SET, "Transfer-Encoding: chunked", body=chunks))
    assert answer.status == 200 and edge.store.snapshot().exprs["X"] == 1
    generation = edge.store.snapshot().generation
    big = b"".join(f"{4096:x}\r\n".encode() + b" " * 4096 + b"\r\n" for _ in range(17)) + b"0\r\n\r\n"
    assert_refused(exchange(edge, post(SET, "Transfer-Encoding: chunked", body=big)), 413, "65536")
    assert edge.unchanged(generation)


def test_other_transfer_codings_are_501_and_huge_heads_431(edge: Edge) -> None:
    assert_refused(exchange(edge, post(SET, "Transfer-Encoding: gzip", body=b"x")), 501, "chunked")
    huge = post("/cnf?cmd=get_cm_vars", "X-Big: " + "a" * 40000)
    assert_refused(exchange(edge, huge), 431, "32768")


def test_expect_100_continue_gets_a_go_ahead(edge: Edge) -> None:
    with edge.connect() as sock:
        start = time.monotonic()
        sock.sendall(post(SET, f"Content-Length: {len(BODY)}", "Expect: 100-continue"))
        interim, rest = read_answer(sock, start)
        assert interim.status == 100
        sock.sendall(BODY)
        answer, _ = read_answer(sock, start, rest)
    assert answer.status == 200 and answer.elapsed_s < AT_ONCE_S


def test_pipelined_requests_are_answered_in_order(edge: Edge) -> None:
    one = b"GET /cnf?cmd=get_cm_vars HTTP/1.1\r\nHost: pi\r\nAuthorization: " + AUTH.encode() + b"\r\n\r\n"
    two = b"GET /cnf?cmd=nope HTTP/1.1\r\nHost: pi\r\nAuthorization: " + AUTH.encode() + b"\r\n\r\n"
    with edge.connect() as sock:
        start = time.monotonic()
        sock.sendall(one + two)
        first, rest = read_answer(sock, start)
        second, _ = read_answer(sock, start, rest)
    assert (first.status, second.status) == (200, 400) and "unknown cmd" in str(second.json()["error"])


def test_no_static_route_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "secret.txt").write_text("not for the network")
    monkeypatch.chdir(tmp_path)  # Flask's default static folder would be relative to this
    e = start_edge()
    try:
        answer = exchange(e, b"GET /static/secret.txt HTTP/1.1\r\nHost: pi\r\nAuthorization: "
                          + AUTH.encode() + b"\r\n\r\n")
    finally:
        e.servers.stop()
    assert answer.status == 404 and b"not for the network" not in answer.body
    assert "/cnf" in str(answer.json()["error"])


# --------------------------------------------------------------------------- deadlines


def closed_by_server(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """Everything the server sent until it closed; and when it closed (s after the call)."""
    start = time.monotonic()
    sock.settimeout(within_s)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def trickle(sock: socket.socket, data: bytes, every_s: float) -> Callable[[], None]:
    """Send ``data`` one byte at a time, ``every_s`` apart, until the server closes."""
    def run() -> None:
        for i in range(len(data)):
            try:
                sock.sendall(data[i:i + 1])
            except OSError:
                return
            time.sleep(every_s)
    return run


def test_a_silent_connection_is_closed_without_a_word(short: Edge) -> None:
    with short.connect() as sock:
        data, after_s = closed_by_server(sock, 5)
    assert data == b"" and 0.4 < after_s < 0.5 + AT_ONCE_S


def test_a_trickled_head_gets_408_at_its_deadline_whatever_it_sends(short: Edge) -> None:
    with short.connect() as sock:
        sender = threading.Thread(target=trickle(sock, b"GET /cnf?cmd=get_cm_vars HTTP/1.1\r\nX: " + b"a" * 100, 0.05))
        start = time.monotonic()
        sender.start()
        data, _ = closed_by_server(sock, 5)
        closed_s = time.monotonic() - start
        sender.join()
    assert data.startswith(b"HTTP/1.1 408") and b"request head not complete within 0.5 s" in data
    assert 0.4 < closed_s < 0.5 + AT_ONCE_S  # not extended by the bytes that kept arriving


def test_a_trickled_body_gets_408(short: Edge) -> None:
    generation = short.store.snapshot().generation
    with short.connect() as sock:
        sock.sendall(post(SET, f"Content-Length: {len(BODY)}"))
        sender = threading.Thread(target=trickle(sock, BODY, 0.05))
        start = time.monotonic()
        sender.start()
        data, _ = closed_by_server(sock, 5)
        closed_s = time.monotonic() - start
        sender.join()
    assert data.startswith(b"HTTP/1.1 408") and b"request body not complete within 0.5 s" in data
    assert closed_s < 0.5 + AT_ONCE_S + SHORT.linger_s
    assert short.unchanged(generation)


def test_an_idle_keep_alive_connection_is_closed_after_idle_s(short: Edge) -> None:
    with short.connect() as sock:
        start = time.monotonic()
        sock.sendall(b"GET /cnf?cmd=get_cm_vars HTTP/1.1\r\nHost: pi\r\nAuthorization: " + AUTH.encode() + b"\r\n\r\n")
        answer, rest = read_answer(sock, start)
        assert answer.status == 200 and answer.headers.get("connection") != "close" and rest == b""
        data, after_s = closed_by_server(sock, 5)
    assert data == b"" and 0.4 < after_s < 0.5 + AT_ONCE_S
