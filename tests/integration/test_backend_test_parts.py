"""The test backend (``backend_csms.BackendCsms``) and the test proxies (``proxies``) work.

They are what the OCPP gateway's tests will run against, so they are proven here on their own,
with clients that are not gridcharge: an ``ocpp`` ChargePoint over ``websockets``' own client
(directly, over TLS, through each proxy), ``python-socks``' client, and raw sockets for what a
well-behaved client never sends. Each scenario runs in ``asyncio.run`` on the test's thread while
the backend and the proxies run on their own loops; what blocks (``BackendCsms.call``,
``wait_for``) goes through ``asyncio.to_thread`` so that the client keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_csms import SUBPROTOCOL, BackendCsms, NotConnectedError, server_ssl_context
from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, ChargePointErrorCode, ChargePointStatus, RegistrationStatus, RemoteStartStopStatus
from pki import Pki, make_pki
from proxies import HttpConnectProxy, Socks5Proxy, SocksReply
from python_socks import ProxyError as SocksClientError
from python_socks.sync import Proxy as SyncSocksClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidProxyStatus, InvalidStatus, ProxyError
from websockets.headers import build_authorization_basic

CP = "E1"
PASSWORD = "cp-secret"
TIMEOUT_S = 5.0  # the bound of every scenario; they take well under a second
T0 = "2025-01-01T10:00:00Z"


class Box(ChargePoint):
    """The charge point side: answers RemoteStopTransaction and remembers what it was asked."""

    def __init__(self, cp_id: str, connection: Any) -> None:
        super().__init__(cp_id, connection, response_timeout=TIMEOUT_S)
        self.remote_stops: list[int] = []
        self.receiving: asyncio.Task[None] | None = None

    @on(Action.remote_stop_transaction)
    async def on_remote_stop_transaction(self, transaction_id: int, **_: Any) -> Any:
        self.remote_stops.append(transaction_id)
        return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.unlock_connector)
    async def on_unlock_connector(self, **_: Any) -> Any:
        await asyncio.sleep(TIMEOUT_S)  # a box that never gets round to answering
        return call_result.UnlockConnector(status="Unlocked")

    async def boot(self) -> Any:
        return await self.call(call.BootNotification(charge_point_model="T1", charge_point_vendor="tests"),
                               suppress=False)

    async def start_transaction(self) -> int:
        result = await self.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0, timestamp=T0),
                                 suppress=False)
        return int(result.transaction_id)


@contextlib.asynccontextmanager
async def box(url: str, cp_id: str = CP, *, password: str | None = None, **connect_kw: Any) -> AsyncIterator[Box]:
    """A charge point connected to ``<url>/<cp_id>`` with its receive loop running."""
    connect_kw.setdefault("proxy", None)  # no proxy from the environment unless a test names one
    headers = {"Authorization": build_authorization_basic(cp_id, password)} if password is not None else None
    async with connect(f"{url}/{cp_id}", subprotocols=[SUBPROTOCOL], additional_headers=headers,
                       open_timeout=TIMEOUT_S, close_timeout=1, **connect_kw) as connection:
        charge_point = Box(cp_id, connection)
        charge_point.receiving = asyncio.create_task(charge_point.start())
        try:
            yield charge_point
        finally:
            charge_point.receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await charge_point.receiving


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(TIMEOUT_S * 2):
            return await scenario
    return asyncio.run(bounded())


async def session(charge_point: Box) -> int:
    """Boot, status, start, meter values, stop: the calls of one charging session."""
    await charge_point.boot()
    await charge_point.call(call.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error,
                                                    status=ChargePointStatus.charging))
    transaction_id = await charge_point.start_transaction()
    await charge_point.call(call.MeterValues(connector_id=1, transaction_id=transaction_id, meter_value=[
        {"timestamp": T0, "sampledValue": [{"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}]}]))
    await charge_point.call(call.StopTransaction(meter_stop=1500, timestamp=T0, transaction_id=transaction_id,
                                                 reason="EVDisconnected"))
    return transaction_id


def closed_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def csms() -> Iterator[BackendCsms]:
    with BackendCsms(heartbeat_s=120) as backend:
        yield backend


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_tls(ca_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_path))


# ------------------------------------------------------------------------------------ the backend


def test_a_session_reaches_the_backend_in_order_with_its_payloads(csms: BackendCsms) -> None:
    async def scenario() -> tuple[Any, int]:
        async with box(csms.url) as charge_point:
            boot = await charge_point.boot()
            transaction_id = await session(charge_point)
            await charge_point.call(call.Heartbeat())
            await charge_point.call(call.Authorize(id_tag="TAG1"))
            await charge_point.call(call.DataTransfer(vendor_id="tests", message_id="m", data="d"), suppress=False)
            await charge_point.call(call.FirmwareStatusNotification(status="Idle"), suppress=False)
            await charge_point.call(call.DiagnosticsStatusNotification(status="Idle"), suppress=False)
            return boot, transaction_id

    boot, transaction_id = run(scenario())
    assert boot.status == RegistrationStatus.accepted and boot.interval == 120
    assert transaction_id == 1000
    assert csms.actions(CP) == ["BootNotification", "BootNotification", "StatusNotification", "StartTransaction",
                                "MeterValues", "StopTransaction", "Heartbeat", "Authorize", "DataTransfer",
                                "FirmwareStatusNotification", "DiagnosticsStatusNotification"]
    assert csms.of("BootNotification")[0].payload == {"charge_point_model": "T1", "charge_point_vendor": "tests"}
    assert csms.of("StartTransaction", CP)[0].payload == {"connector_id": 1, "id_tag": "TAG1", "meter_start": 0,
                                                          "timestamp": T0}
    (meter,) = csms.of("MeterValues")
    assert meter.payload["transaction_id"] == 1000
    assert meter.payload["meter_value"][0]["sampled_value"][0] == {"value": "7200", "measurand": "Power.Active.Import",
                                                                   "unit": "W"}
    assert csms.of("StopTransaction")[0].payload["meter_stop"] == 1500
    times = [m.at for m in csms.messages]
    assert times == sorted(times) and all(m.error is None for m in csms.messages)
    assert csms.connections == 1 and csms.of("Heartbeat", "other") == []
    csms.clear()
    assert csms.messages == [] and csms.connections == 1


def test_basic_auth_right_connects_and_wrong_or_missing_gets_401_recorded() -> None:
    async def attempt(backend: BackendCsms, cp_id: str, password: str | None) -> int:
        try:
            async with box(backend.url, cp_id, password=password):
                return 101
        except InvalidStatus as exc:
            assert exc.response.headers["WWW-Authenticate"].startswith("Basic")
            return exc.response.status_code

    async def scenario(backend: BackendCsms) -> list[int]:
        statuses = [await attempt(backend, CP, "wrong"), await attempt(backend, CP, None),
                    await attempt(backend, "E2", PASSWORD.upper())]
        async with box(backend.url, password=PASSWORD) as charge_point:
            await charge_point.boot()
            assert backend.connected(CP)
        return statuses

    with BackendCsms(password=PASSWORD) as backend:
        assert run(scenario(backend)) == [401, 401, 401]
        assert backend.refused == [(CP, 401), (CP, 401), ("E2", 401)]
        assert len(backend.refused_at) == 3 and backend.refused_at == sorted(backend.refused_at)
        assert backend.actions() == ["BootNotification"] and backend.connections == 1


def test_other_paths_get_404_and_a_client_without_the_subprotocol_400(csms: BackendCsms) -> None:
    async def status(url: str, **kw: Any) -> int:
        try:
            async with connect(url, proxy=None, open_timeout=TIMEOUT_S, **kw):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def scenario() -> list[int]:
        base = csms.url.removesuffix("/cs")
        return [await status(f"{base}/ocpp/{CP}", subprotocols=[SUBPROTOCOL]),
                await status(f"{csms.url}/", subprotocols=[SUBPROTOCOL]),
                await status(f"{csms.url}/{CP}")]

    assert run(scenario()) == [404, 404, 400]
    assert csms.refused == [(f"/ocpp/{CP}", 404), ("/cs/", 404)] and csms.connections == 0


def test_wss_with_the_test_ca_works_and_a_client_that_does_not_trust_it_fails(pki: Pki) -> None:
    async def scenario(backend: BackendCsms) -> None:
        async with box(backend.url, password=PASSWORD, ssl=client_tls(pki.ca_path)) as charge_point:
            assert (await charge_point.boot()).status == RegistrationStatus.accepted
        with pytest.raises(ssl.SSLCertVerificationError):
            async with box(backend.url, password=PASSWORD, ssl=client_tls(pki.rogue_ca_path)):
                pass

    with BackendCsms(password=PASSWORD, ssl_context=server_ssl_context(*pki.server_paths)) as backend:
        assert backend.url == f"wss://localhost:{backend.port}/cs"
        run(scenario(backend))
        assert backend.actions(CP) == ["BootNotification"] and backend.connections == 1


def test_stop_and_start_keep_the_port_and_the_transaction_ids_count_on(csms: BackendCsms) -> None:
    port = csms.port

    async def until_closed(charge_point: Box) -> ConnectionClosed:
        assert charge_point.receiving is not None
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(charge_point.receiving, TIMEOUT_S)
        return closed.value

    async def scenario() -> list[int]:
        ids = []
        async with box(csms.url) as charge_point:
            ids.append(await charge_point.start_transaction())
            await asyncio.to_thread(csms.stop)  # goes away politely: a close frame, 1001
            assert (await until_closed(charge_point)).rcvd is not None
        with pytest.raises(OSError):  # nobody listens while the backend is down
            async with box(csms.url):
                pass
        await asyncio.to_thread(csms.start)
        async with box(csms.url) as charge_point:
            ids.append(await charge_point.start_transaction())
            await asyncio.to_thread(csms.stop, abort=True)  # its host died: no close frame
            assert (await until_closed(charge_point)).rcvd is None
        await asyncio.to_thread(csms.start)
        async with box(csms.url) as charge_point:
            ids.append(await charge_point.start_transaction())
        return ids

    assert run(scenario()) == [1000, 1001, 1002]
    assert csms.port == port and csms.connections == 3
    assert csms.actions(CP) == ["StartTransaction"] * 3


def test_call_reaches_the_charge_points_handler(csms: BackendCsms) -> None:
    with pytest.raises(NotConnectedError, match="'E1' is not connected"):
        csms.call(CP, call.RemoteStopTransaction(transaction_id=1000))

    async def scenario() -> tuple[Any, list[int]]:
        async with box(csms.url) as charge_point:
            await asyncio.to_thread(csms.wait_connected, CP, TIMEOUT_S)
            result = await asyncio.to_thread(csms.call, CP, call.RemoteStopTransaction(transaction_id=1000))
            with pytest.raises(TimeoutError, match="'E1' did not answer UnlockConnector in 0.2 s"):
                await asyncio.to_thread(csms.call, CP, call.UnlockConnector(connector_id=1), 0.2)
            return result, charge_point.remote_stops

    result, remote_stops = run(scenario())
    assert isinstance(result, call_result.RemoteStopTransaction) and result.status == RemoteStartStopStatus.accepted
    assert remote_stops == [1000]
    csms.wait_disconnected(CP, TIMEOUT_S)


def test_fault_knobs_fail_the_next_calls_and_delay_answers(csms: BackendCsms) -> None:
    csms.fail_next("StartTransaction", times=2)
    csms.delay("Heartbeat", 0.3)

    async def scenario() -> tuple[list[str], int, float]:
        errors = []
        async with box(csms.url) as charge_point:
            for _ in range(2):
                with pytest.raises(InternalError) as failed:
                    await charge_point.start_transaction()
                errors.append(failed.value.code)
            transaction_id = await charge_point.start_transaction()
            began = time.monotonic()
            await charge_point.call(call.Heartbeat(), suppress=False)
            return errors, transaction_id, time.monotonic() - began

    errors, transaction_id, heartbeat_s = run(scenario())
    assert errors == ["InternalError", "InternalError"]
    assert transaction_id == 1000  # failed calls use up no transaction id
    assert 0.3 <= heartbeat_s < 2.0
    assert [m.error for m in csms.of("StartTransaction")] == ["InternalError", "InternalError", None]
    with pytest.raises(AssertionError, match=r"last ones:\n  E1 StartTransaction .* -> InternalError"):
        csms.wait_for(lambda messages: len(messages) > 10, timeout_s=0.1)


# ------------------------------------------------------------------------------------ the proxies


@pytest.mark.parametrize("kind", [Socks5Proxy, HttpConnectProxy])
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_through_each_proxy_the_session_works_and_stopping_the_proxy_cuts_it(
        kind: type[Socks5Proxy | HttpConnectProxy], tls: bool, pki: Pki) -> None:
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(
            BackendCsms(password=PASSWORD, ssl_context=server_ssl_context(*pki.server_paths) if tls else None))
        proxy = stack.enter_context(kind())
        # socks5h: the proxy resolves "localhost" (a domain name target); socks5: an IPv4 target
        proxy_url = proxy.url.replace("socks5:", "socks5h:") if tls else proxy.url
        tls_kw: dict[str, Any] = {"ssl": client_tls(pki.ca_path)} if tls else {}

        async def scenario() -> None:
            async with box(backend.url, password=PASSWORD, proxy=proxy_url, **tls_kw) as charge_point:
                assert await session(charge_point) == 1000
                await asyncio.to_thread(proxy.stop)
                assert charge_point.receiving is not None
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(charge_point.receiving, TIMEOUT_S)
            await asyncio.to_thread(backend.wait_disconnected, CP, TIMEOUT_S)
            await asyncio.to_thread(proxy.start)  # the same port: the same URL works again
            async with box(backend.url, password=PASSWORD, proxy=proxy_url, **tls_kw) as charge_point:
                await charge_point.boot()

        run(scenario())
        host = "localhost" if tls else "127.0.0.1"
        assert proxy.targets == [(host, backend.port)] * 2 and proxy.tunnels == 2
        assert backend.actions(CP)[:5] == ["BootNotification", "StatusNotification", "StartTransaction",
                                           "MeterValues", "StopTransaction"]


def test_socks5_username_and_password_right_and_wrong(csms: BackendCsms) -> None:
    async def scenario(proxy: Socks5Proxy) -> list[BaseException]:
        async with box(csms.url, proxy=proxy.url_for("gw", "s3cret:/@")) as charge_point:
            await charge_point.boot()
        refusals: list[BaseException] = []
        for url in (proxy.url_for("gw", "wrong"), proxy.url):  # wrong password; no credentials offered
            with pytest.raises(ProxyError) as refused:
                async with box(csms.url, proxy=url):
                    pass
            refusals.append(refused.value)
        return refusals

    with Socks5Proxy(username="gw", password="s3cret:/@") as proxy:
        refusals = run(scenario(proxy))
        assert proxy.tunnels == 1 and proxy.targets == [("127.0.0.1", csms.port)] and proxy.auth_failures == 2
    assert all(isinstance(r.__cause__, SocksClientError) for r in refusals)
    assert csms.connections == 1


def test_http_connect_proxy_authorization_right_and_wrong(csms: BackendCsms) -> None:
    async def scenario(proxy: HttpConnectProxy) -> list[int]:
        async with box(csms.url, proxy=proxy.url_for("gw", "s3cret")) as charge_point:
            await charge_point.boot()
        statuses = []
        for url in (proxy.url_for("gw", "wrong"), proxy.url):
            with pytest.raises(InvalidProxyStatus) as refused:
                async with box(csms.url, proxy=url):
                    pass
            assert refused.value.response.headers["Proxy-Authenticate"].startswith("Basic")
            statuses.append(refused.value.response.status_code)
        return statuses

    with HttpConnectProxy(username="gw", password="s3cret") as proxy:
        assert run(scenario(proxy)) == [407, 407]
        assert proxy.tunnels == 1 and proxy.targets == [("127.0.0.1", csms.port)] and proxy.auth_failures == 2


def http_proxy_answer(port: int, request: bytes) -> bytes:
    """Send a raw request head to the HTTP proxy and read its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def test_http_connect_proxy_refuses_other_methods_bad_targets_and_unreachable_ones() -> None:
    with HttpConnectProxy() as proxy:
        answer = http_proxy_answer(proxy.port, b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: CONNECT\r\n" in answer
        assert http_proxy_answer(proxy.port, b"CONNECT nocolon HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert http_proxy_answer(proxy.port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        port = closed_port()
        answer = http_proxy_answer(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert proxy.targets == [("127.0.0.1", port)] and proxy.tunnels == 0


def test_socks5_reaches_ipv4_domain_and_ipv6_targets_and_answers_refused_ones() -> None:
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(Socks5Proxy())
        v4 = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        v6 = stack.enter_context(socket.create_server(("::1", 0), family=socket.AF_INET6))
        client = SyncSocksClient.from_url(proxy.url, rdns=True)
        targets = [("127.0.0.1", v4), ("localhost", v4), ("::1", v6)]
        for host, server in targets:
            with client.connect(host, server.getsockname()[1], timeout=TIMEOUT_S) as tunnel:
                accepted, _ = server.accept()
                with accepted:
                    tunnel.sendall(b"ping")
                    assert accepted.recv(4) == b"ping"
                    accepted.sendall(b"pong")
                    assert tunnel.recv(4) == b"pong"
        port = closed_port()
        with pytest.raises(SocksClientError) as refused:
            client.connect("127.0.0.1", port, timeout=TIMEOUT_S)
        assert refused.value.error_code == SocksReply.CONNECTION_REFUSED
        assert proxy.targets == [(host, server.getsockname()[1]) for host, server in targets] + [("127.0.0.1", port)]
        assert proxy.tunnels == 3


def socks_exchange(port: int, *messages: bytes) -> bytes:
    """Send raw SOCKS5 messages one after another and read everything the proxy answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        for message in messages:
            s.sendall(message)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def test_socks5_answers_what_it_does_not_do_with_its_reply_codes() -> None:
    no_auth, target = b"\x05\x01\x00", b"\x01\x7f\x00\x00\x01\x00\x50"  # 127.0.0.1:80
    with Socks5Proxy() as proxy:
        bind = socks_exchange(proxy.port, no_auth, b"\x05\x02\x00" + target)
        assert bind[:2] == b"\x05\x00" and bind[2:4] == bytes([0x05, SocksReply.COMMAND_NOT_SUPPORTED])
        odd_address = socks_exchange(proxy.port, no_auth, b"\x05\x01\x00\x09")
        assert odd_address[2:4] == bytes([0x05, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED])
        assert socks_exchange(proxy.port, b"\x05\x01\x02") == b"\x05\xff"  # only username/password offered
    with Socks5Proxy(username="gw", password="pw") as proxy:
        assert socks_exchange(proxy.port, no_auth) == b"\x05\xff"  # credentials required, none offered
        assert socks_exchange(proxy.port, b"\x05\x01\x02", b"\x01\x02gw\x02pw", b"\x05\x01\x00" + b"\x01\x7f\x00\x00\x01"
                              + closed_port().to_bytes(2, "big"))[:6] == b"\x05\x02\x01\x00\x05\x05"
        assert proxy.auth_failures == 1 and proxy.tunnels == 0
