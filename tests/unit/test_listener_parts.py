"""The listener's pure parts: connection caps (``web.gate``), the descriptor budget
(``web.limits``), the accept backoff (``web.accept``), rate-limited logging (``web.lograte``),
the server-edge checks (``web.http_edge``) and the WSGI environ (``web.wsgi_bridge``).

The listener itself is tested over real sockets in ``tests/integration/test_http_edge.py`` and
``tests/integration/test_listener_attacks.py``.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import resource
from typing import Any

import h11
import pytest

from web.accept import AcceptBackoff
from web.gate import ConnectionGate, Phase, Refusal, Slot, client_key
from web.http_edge import EdgeError, declared_length, error_bytes
from web.limits import DEVICE_RESERVE, MIN_CONNECTIONS, ListenerLimits, descriptor_budget, fit_to_budget
from web.lograte import RateLimitedLog
from web.wsgi_bridge import Peer, build_environ, split_target

# --------------------------------------------------------------------------- gate


def admit(gate: ConnectionGate, address: str, now_s: float = 0.0, phase: Phase = Phase.WAITING) -> Slot:
    admission = gate.admit(address, now_s)
    assert admission.slot is not None, admission
    admission.slot.enter(phase, now_s)
    return admission.slot


def test_per_address_cap_refuses_the_extra_connection() -> None:
    gate = ConnectionGate(max_connections=10, max_per_address=2)
    admit(gate, "10.0.0.2")
    admit(gate, "10.0.0.2")
    assert gate.admit("10.0.0.2", 1.0).refusal is Refusal.PER_ADDRESS
    assert gate.admit("::ffff:10.0.0.2", 1.0).refusal is Refusal.PER_ADDRESS  # the same host over IPv6
    assert gate.admit("10.0.0.3", 1.0).slot is not None
    assert gate.refused[Refusal.PER_ADDRESS] == 2 and len(gate) == 3


def test_full_listener_takes_a_newcomer_in_place_of_the_most_loaded_address() -> None:
    gate = ConnectionGate(max_connections=6, max_per_address=4)
    dropped: list[str] = []
    attacker = []
    for i in range(4):
        slot = admit(gate, "10.0.0.66", now_s=i)
        slot.drop = functools.partial(dropped.append, f"attacker{i}")
        attacker.append(slot)
    admit(gate, "10.0.0.7", now_s=10)
    admit(gate, "10.0.0.7", now_s=11)
    admission = gate.admit("10.0.0.1", 20.0)  # a client with no connection yet
    assert admission.slot is not None and admission.evicted is attacker[0]
    assert dropped == ["attacker0"] and len(gate) == 6 and gate.count("10.0.0.66") == 3


def test_full_listener_refuses_an_address_that_holds_as_many_as_the_others() -> None:
    gate = ConnectionGate(max_connections=4, max_per_address=4)
    for address in ("10.0.0.2", "10.0.0.2", "10.0.0.3", "10.0.0.3"):
        admit(gate, address)
    assert gate.admit("10.0.0.2", 1.0).refusal is Refusal.FULL  # 2 vs 2: attackers do not churn
    assert gate.admit("10.0.0.3", 1.0).refusal is Refusal.FULL
    newcomer = gate.admit("10.0.0.9", 1.0)  # 0 vs 2: takes a place
    assert newcomer.slot is not None and newcomer.evicted is not None
    assert gate.refused[Refusal.FULL] == 2 and gate.evictions == 1 and len(gate) == 4


def test_connections_being_answered_are_never_evicted() -> None:
    gate = ConnectionGate(max_connections=3, max_per_address=3)
    busy = [admit(gate, "10.0.0.2", phase=Phase.ANSWERING) for _ in range(3)]
    assert gate.admit("10.0.0.1", 5.0).refusal is Refusal.FULL
    busy[1].enter(Phase.WAITING, 6.0)
    admission = gate.admit("10.0.0.1", 7.0)
    assert admission.evicted is busy[1]


def test_release_is_idempotent_and_frees_the_address() -> None:
    gate = ConnectionGate(max_connections=2, max_per_address=1)
    slot = admit(gate, "fe80::1%eth0")
    assert client_key("fe80::1%eth0") == "fe80::1" and gate.count("fe80::1") == 1
    assert gate.release(slot) and not gate.release(slot)
    assert len(gate) == 0 and gate.admit("fe80::1", 1.0).slot is not None


def test_shed_closes_the_longest_waiting_first() -> None:
    gate = ConnectionGate(max_connections=10, max_per_address=10)
    order: list[int] = []
    for i, since in enumerate((5.0, 1.0, 3.0)):
        slot = admit(gate, f"10.0.0.{i + 2}", now_s=since)
        slot.drop = functools.partial(order.append, i)
    admit(gate, "10.0.0.9", phase=Phase.ANSWERING)
    assert gate.shed(5) == 3 and order == [1, 2, 0] and len(gate) == 1


# --------------------------------------------------------------------------- descriptor budget


def test_caps_are_kept_when_they_fit_and_scaled_when_not(caplog: pytest.LogCaptureFixture) -> None:
    wanted = {"lan": ListenerLimits(max_connections=512), "smgw": ListenerLimits(max_connections=64, max_per_address=8)}
    assert fit_to_budget(wanted, 4000) == wanted
    assert fit_to_budget(wanted, None) == wanted
    with caplog.at_level(logging.WARNING):
        fitted = fit_to_budget(wanted, 288)
    assert fitted["lan"].max_connections == 256 and fitted["smgw"].max_connections == 32
    assert fitted["lan"].max_connections + fitted["smgw"].max_connections <= 288
    assert "LimitNOFILE" in caplog.text
    tiny = fit_to_budget(wanted, -50)  # less than nothing left: each still takes a few
    assert all(x.max_connections == MIN_CONNECTIONS and x.max_per_address <= MIN_CONNECTIONS for x in tiny.values())


def test_budget_leaves_the_device_reserve_free() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = descriptor_budget()
    assert budget is not None and budget <= soft - DEVICE_RESERVE
    assert descriptor_budget(reserve=0) == pytest.approx(budget + DEVICE_RESERVE, abs=3)


# --------------------------------------------------------------------------- accept backoff


def test_a_failure_streak_backs_off_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    backoff = AcceptBackoff(logging.getLogger("test.accept"), "LAN", quiet_s=10.0)
    emfile = OSError(errno.EMFILE, "Too many open files")
    now = 0.0
    delays = []
    with caplog.at_level(logging.INFO, logger="test.accept"):
        for _ in range(200):  # 200 failures with a few successes between them (shed connections)
            delays.append(backoff.failed(emfile, now, shed=16))
            now += delays[-1]
            backoff.succeeded(now)
        backoff.succeeded(now + 5.0)  # not yet quiet long enough
        backoff.succeeded(now + 10.0)
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.8] and max(delays) == 1.0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "accept() fails (out of file descriptors or memory" in lines[0] and "closed 16 idle" in lines[0]
    assert "works again after 200 failed tries" in lines[1]
    assert backoff.failures == 0 and backoff.streaks == 1
    backoff.failed(emfile, now + 30.0)
    assert backoff.streaks == 2 and backoff.failed(emfile, now + 30.1) == 0.1


def test_client_side_accept_errors_are_not_a_streak() -> None:
    assert AcceptBackoff.is_client_error(OSError(errno.ECONNABORTED, "aborted"))
    assert not AcceptBackoff.is_client_error(OSError(errno.EMFILE, "Too many open files"))


# --------------------------------------------------------------------------- rate-limited log


def test_rate_limited_log_says_how_many_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    notes = RateLimitedLog(logging.getLogger("test.notes"), window_s=60.0, max_keys=2, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.notes"):
        assert notes.log("a", logging.INFO, "refused %s", "a")
        assert not notes.log("a", logging.INFO, "refused %s", "a")
        assert not notes.log("a", logging.INFO, "refused %s", "a")
        assert notes.log("b", logging.INFO, "refused %s", "b")
        now[0] = 61.0
        assert notes.log("a", logging.INFO, "refused %s", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a", "refused b", "refused a (2 more like it in the last 60 s not logged)"]


# --------------------------------------------------------------------------- the server edge


def request(*headers: tuple[str, str], version: bytes = b"1.1") -> h11.Request:
    return h11.Request(method="POST", target="/cnf", headers=[("Host", "x"), *headers], http_version=version)


def test_framing_is_checked_before_the_body_is_read() -> None:
    assert declared_length(request(("Content-Length", "10")), 65536) == 10
    assert declared_length(request(("Transfer-Encoding", "chunked")), 65536) is None
    assert declared_length(request(), 65536) == 0
    with pytest.raises(EdgeError) as both:
        declared_length(request(("Content-Length", "3"), ("Transfer-Encoding", "chunked")), 65536)
    assert both.value.status == 400 and "together" in both.value.message
    with pytest.raises(EdgeError) as big:
        declared_length(request(("Content-Length", "65537")), 65536)
    assert big.value.status == 413 and "65536" in big.value.message


def test_error_answer_is_complete_json_and_closes() -> None:
    raw = error_bytes(408, "request head not complete within 5 s")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"error": "request head not complete within 5 s"}


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"/cnf?cmd=get_cm_vars", "/cnf", "cmd=get_cm_vars"),
    (b"/a%20b/%C3%A9?x=%20", "/a b/\u00c3\u00a9", "x=%20"),  # PEP 3333: bytes as latin-1
    (b"http://pi:80/cnf?cmd=x", "/cnf", "cmd=x"),
    (b"http://pi", "/", ""),
])
def test_target_to_path_and_query(target: bytes, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


def test_environ_headers_and_tls_variables() -> None:
    req = h11.Request(method="GET", target="/cnf?cmd=x", http_version=b"1.1", headers=[
        ("Host", "pi"), ("Authorization", "Basic eA=="), ("X-A", "1"), ("X-A", "2"), ("X_A", "evil"),
        ("Content-Type", "text/plain")])
    plain = build_environ(req, b"body", Peer("10.0.0.5", 50000, "0.0.0.0", 80))
    assert plain["HTTP_X_A"] == "1,2"  # the underscore spelling cannot pose as X-A
    assert plain["HTTP_AUTHORIZATION"] == "Basic eA==" and plain["CONTENT_TYPE"] == "text/plain"
    assert plain["CONTENT_LENGTH"] == "4" and plain["wsgi.input"].read() == b"body"
    assert plain["REMOTE_ADDR"] == "10.0.0.5" and plain["wsgi.url_scheme"] == "http"
    assert "SSL_CLIENT_VERIFY" not in plain
    tls: dict[str, Any] = {"HTTPS": "on", "SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": "PEM"}
    secure = build_environ(req, b"", Peer("10.0.0.5", 50000, "0.0.0.0", 8443, tls))
    assert secure["wsgi.url_scheme"] == "https" and secure["SSL_CLIENT_VERIFY"] == "SUCCESS"
