"""A test OCPP 1.6J backend (CSMS): the energy supplier's central system that gridcharge's OCPP
gateway connects to, as one charge point per wallbox.

It is a real central system, not a mock: a ``websockets`` server on 127.0.0.1 with ``ocpp``
handlers, on its own asyncio loop in a thread (:mod:`loop_thread`). It answers every call a
charge point sends (BootNotification, Heartbeat, StatusNotification, Start/StopTransaction,
MeterValues, Authorize, DataTransfer, Firmware/DiagnosticsStatusNotification) and records each
one in the order it arrived, so a gateway test asserts on what reached the backend rather than
on how gridcharge meant to send it.

What it models, and why:

- Basic auth of OCPP security profiles 1 and 2 (``charge_point_id:password``; profile 2 is the
  same over TLS): a wrong or missing password gets 401 before the upgrade, and every refusal is
  recorded with its time, so a test can see the client's retry backoff.
- A backend that goes down and comes back: ``stop()`` closes every connection and the server,
  ``start()`` listens again on the same port, and transaction ids keep counting (1000, 1001, ...)
  across restarts, as a backend's database would.
- Faults on demand: the next calls of an action answered with an OCPP InternalError
  (``fail_next``), or answered late (``delay``). Like a single-threaded backend, the ``ocpp``
  library handles one message of a charge point at a time, so a delayed answer also holds up
  that charge point's later messages.
- Calls from the backend (RemoteStopTransaction, ChangeConfiguration, ...) to a connected
  charge point with :meth:`BackendCsms.call`.

All times (``Received.at``, ``refused_at``) are ``time.monotonic()`` values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import itertools
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loop_thread import LoopServer
from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PATH_PREFIX = "/cs/"
SUBPROTOCOL = Subprotocol("ocpp1.6")
REALM = "test backend"
FIRST_TRANSACTION_ID = 1000
POLL_S = 0.02


@dataclass(frozen=True)
class Received:
    """One call a charge point sent, as the handler got it: snake_case keys, every field.

    ``error`` is the OCPP error code the backend answered with when a fault was asked for
    (``"InternalError"``), None for a normal answer.
    """

    cp_id: str
    action: str
    payload: dict[str, Any]
    at: float
    error: str | None = None


class NotConnectedError(RuntimeError):
    """A backend call to a charge point that has no open connection to the backend."""


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS server context for ``BackendCsms(ssl_context=...)`` from a PEM pair (e.g. the
    ``server_paths`` of ``pki.make_pki``, issued for localhost and 127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cp_id_of(path: str) -> str | None:
    """The charge point id in ``/cs/<id>`` (URL-decoded), None for any other path."""
    route = urllib.parse.urlsplit(path).path
    if not route.startswith(PATH_PREFIX):
        return None
    cp_id = urllib.parse.unquote(route[len(PATH_PREFIX):])
    return cp_id if cp_id and "/" not in cp_id else None


@dataclass
class _Faults:
    """The fault knobs, per action: answers still to fail, and a delay before each answer."""

    fail: dict[str, int] = field(default_factory=dict)
    delay_s: dict[str, float] = field(default_factory=dict)


class _RecordingChargePoint(ChargePoint):
    """The backend's side of one charge point connection: every handler records its call in
    the backend, then answers as an accepting backend does."""

    def __init__(self, cp_id: str, connection: ServerConnection, backend: BackendCsms) -> None:
        super().__init__(cp_id, connection, response_timeout=60)  # call() has its own timeout
        self.connection = connection
        self._backend = backend

    async def _arrived(self, action: str, payload: dict[str, Any]) -> None:
        await self._backend._arrived(self.id, action, payload)

    @on(Action.boot_notification)
    async def on_boot_notification(self, **payload: Any) -> Any:
        await self._arrived(Action.boot_notification, payload)
        return call_result.BootNotification(current_time=_now_iso(), interval=self._backend.heartbeat_s,
                                            status=RegistrationStatus(self._backend.boot_status))

    @on(Action.heartbeat)
    async def on_heartbeat(self, **payload: Any) -> Any:
        await self._arrived(Action.heartbeat, payload)
        return call_result.Heartbeat(current_time=_now_iso())

    @on(Action.status_notification)
    async def on_status_notification(self, **payload: Any) -> Any:
        await self._arrived(Action.status_notification, payload)
        return call_result.StatusNotification()

    @on(Action.start_transaction)
    async def on_start_transaction(self, **payload: Any) -> Any:
        await self._arrived(Action.start_transaction, payload)
        return call_result.StartTransaction(transaction_id=self._backend._next_transaction_id(),
                                            id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.meter_values)
    async def on_meter_values(self, **payload: Any) -> Any:
        await self._arrived(Action.meter_values, payload)
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    async def on_stop_transaction(self, **payload: Any) -> Any:
        await self._arrived(Action.stop_transaction, payload)
        return call_result.StopTransaction(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.authorize)
    async def on_authorize(self, **payload: Any) -> Any:
        await self._arrived(Action.authorize, payload)
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.data_transfer)
    async def on_data_transfer(self, **payload: Any) -> Any:
        await self._arrived(Action.data_transfer, payload)
        return call_result.DataTransfer(status=DataTransferStatus.accepted)

    @on(Action.firmware_status_notification)
    async def on_firmware_status_notification(self, **payload: Any) -> Any:
        await self._arrived(Action.firmware_status_notification, payload)
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    async def on_diagnostics_status_notification(self, **payload: Any) -> Any:
        await self._arrived(Action.diagnostics_status_notification, payload)
        return call_result.DiagnosticsStatusNotification()


CLOSE_WAIT_S = 2.0  # how long stop() lets the connections close cleanly before it cuts them


class BackendCsms(LoopServer[Server]):
    """The test backend (see the module docstring). ``start()`` before use, or ``with``."""

    label = "test backend"

    def __init__(self, *, password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 boot_status: str = "Accepted", heartbeat_s: int = 300, port: int = 0) -> None:
        RegistrationStatus(boot_status)  # Accepted, Pending or Rejected; anything else is a test's typo
        self.password = password
        self.ssl_context = ssl_context
        self.boot_status = boot_status
        self.heartbeat_s = heartbeat_s
        super().__init__(port)
        self._abort = False
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._refused: list[tuple[str, int]] = []
        self._refused_at: list[float] = []
        self._connections = 0
        self._charge_points: dict[str, _RecordingChargePoint] = {}
        self._faults = _Faults()
        self._transaction_ids = itertools.count(FIRST_TRANSACTION_ID)

    # ---- life -------------------------------------------------------------------------------------
    def stop(self, *, abort: bool = False) -> None:
        """Close every connection (a close frame, 1001 going away; or, with ``abort``, a cut TCP
        connection as when the backend's host dies) and the server."""
        self._abort = abort
        super().stop()

    def _after_stop(self) -> None:
        with self._lock:
            self._charge_points.clear()

    async def _open(self) -> Server:
        server = await serve(self._serve, HOST, self._port, subprotocols=[SUBPROTOCOL],
                             process_request=self._process_request, ssl=self.ssl_context, close_timeout=1)
        self._port = server.sockets[0].getsockname()[1]
        return server

    async def _close(self, server: Server) -> None:
        if self._abort:
            with self._lock:
                charge_points = list(self._charge_points.values())
            for charge_point in charge_points:
                charge_point.connection.transport.abort()
        server.close()
        try:
            await asyncio.wait_for(asyncio.shield(server.wait_closed()), CLOSE_WAIT_S)
        except TimeoutError:
            # A client that never finishes its closing handshake (one still opening, say) must not
            # hold the test up: its TCP connection is cut, as when the backend's host dies.
            slow = list(server.connections)
            log.warning("test backend: %d connection(s) did not close in %g s; cut", len(slow), CLOSE_WAIT_S)
            for connection in slow:
                connection.transport.abort()
            await server.wait_closed()

    # ---- where charge points connect ------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the backend has no port before its first start()")
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/cs`` (``wss://localhost:PORT/cs`` with TLS); a charge point
        connects to ``<url>/<charge_point_id>``."""
        if self.ssl_context is not None:
            return f"wss://localhost:{self.port}/cs"
        return f"ws://{HOST}:{self.port}/cs"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse before the upgrade: 404 for a path that names no charge point, 401 for wrong
        or missing basic auth when a password is set."""
        cp_id = cp_id_of(request.path)
        if cp_id is None:
            self._refuse(request.path, 404)
            return connection.respond(404, "connect to /cs/<charge point id>\n")
        if self.password is not None and not self._authorized(cp_id, request.headers.get("Authorization")):
            self._refuse(cp_id, 401)
            response = connection.respond(401, "wrong or missing basic auth\n")
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            return response
        return None

    def _authorized(self, cp_id: str, header: str | None) -> bool:
        if header is None or self.password is None:
            return False
        try:
            username, password = parse_authorization_basic(header)
        except InvalidHeader:
            return False
        return username == cp_id and hmac.compare_digest(password.encode(errors="surrogateescape"),
                                                         self.password.encode())

    def _refuse(self, who: str, status: int) -> None:
        with self._lock:
            self._refused.append((who, status))
            self._refused_at.append(time.monotonic())

    async def _serve(self, connection: ServerConnection) -> None:
        """One charge point's connection: its receive loop runs until the connection ends. A
        charge point that connects again while its old connection is open takes over."""
        assert connection.request is not None  # the handler runs after the handshake
        cp_id = cp_id_of(connection.request.path)
        assert cp_id is not None  # refused in _process_request otherwise
        charge_point = _RecordingChargePoint(cp_id, connection, self)
        with self._lock:
            old = self._charge_points.get(cp_id)
            self._charge_points[cp_id] = charge_point
            self._connections += 1
        if old is not None:
            await old.connection.close(1000, "replaced by a new connection")
        try:
            await charge_point.start()
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                if self._charge_points.get(cp_id) is charge_point:
                    del self._charge_points[cp_id]

    async def _arrived(self, cp_id: str, action: str, payload: dict[str, Any]) -> None:
        """Record one call; then apply the fault knobs of its action (delay, then fail)."""
        action = str(action)  # the handlers pass the Action enum
        with self._lock:
            failing = self._faults.fail.get(action, 0) > 0
            if failing:
                self._faults.fail[action] -= 1
            delay_s = self._faults.delay_s.get(action, 0.0)
            self._messages.append(Received(cp_id, action, dict(payload), time.monotonic(),
                                           InternalError.code if failing else None))
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if failing:
            raise InternalError(description=f"the test backend was told to fail {action}")

    def _next_transaction_id(self) -> int:
        with self._lock:
            return next(self._transaction_ids)

    # ---- what arrived -------------------------------------------------------------------------------
    @property
    def messages(self) -> list[Received]:
        """Every call received, in order (a copy)."""
        return self.received()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def refused(self) -> list[tuple[str, int]]:
        """``(charge point id, status)`` of every refused attempt (the path for a 404), in order."""
        with self._lock:
            return list(self._refused)

    @property
    def refused_at(self) -> list[float]:
        """When each refused attempt came (``time.monotonic()``), parallel to ``refused``."""
        with self._lock:
            return list(self._refused_at)

    @property
    def connections(self) -> int:
        """Connections accepted since this object was made (not reset by ``clear()``)."""
        with self._lock:
            return self._connections

    def actions(self, cp_id: str | None = None) -> list[str]:
        return [m.action for m in self.received() if cp_id is None or m.cp_id == cp_id]

    def of(self, action: str, cp_id: str | None = None) -> list[Received]:
        return [m for m in self.received() if m.action == action and (cp_id is None or m.cp_id == cp_id)]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout_s: float) -> list[Received]:
        """Poll until ``predicate(received())`` holds and return those messages; AssertionError
        listing the last messages when it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.received()
            if predicate(messages):
                return messages
            if time.monotonic() > deadline:
                last = "\n".join(f"  {m.cp_id} {m.action} {m.payload}" + (f" -> {m.error}" if m.error else "")
                                 for m in messages[-20:])
                raise AssertionError(f"the backend did not see what was expected in {timeout_s:g} s; "
                                     f"{len(messages)} messages, the last ones:\n{last or '  (none)'}")
            time.sleep(POLL_S)

    def connected(self, cp_id: str) -> bool:
        with self._lock:
            return cp_id in self._charge_points

    def wait_connected(self, cp_id: str, timeout_s: float) -> None:
        self._wait_connection(cp_id, True, timeout_s)

    def wait_disconnected(self, cp_id: str, timeout_s: float) -> None:
        self._wait_connection(cp_id, False, timeout_s)

    def _wait_connection(self, cp_id: str, want: bool, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.connected(cp_id) != want:
            if time.monotonic() > deadline:
                with self._lock:
                    now = sorted(self._charge_points)
                raise AssertionError(f"{cp_id!r} is {'not ' if want else 'still '}connected after {timeout_s:g} s "
                                     f"(connected: {now}; refused: {self.refused[-5:]})")
            time.sleep(POLL_S)

    def clear(self) -> None:
        """Forget the received messages and refused attempts (the fault knobs stay)."""
        with self._lock:
            self._messages.clear()
            self._refused.clear()
            self._refused_at.clear()

    # ---- what the backend does ----------------------------------------------------------------------
    def call(self, cp_id: str, request: Any, timeout_s: float = 5.0) -> Any:
        """Send ``request`` (an ``ocpp.v16.call`` object) to the connected charge point and
        return its ``call_result`` object; a CallError answer is raised as its ``OCPPError``,
        no answer in ``timeout_s`` as TimeoutError, no connection as NotConnectedError."""
        with self._lock:
            charge_point = self._charge_points.get(cp_id)
            connected = sorted(self._charge_points)
        loop_thread = self._loop_thread
        if charge_point is None or loop_thread is None:
            raise NotConnectedError(f"{cp_id!r} is not connected to the test backend (connected: {connected})")
        try:
            return loop_thread.run(charge_point.call(request, suppress=False), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{cp_id!r} did not answer {type(request).__name__} in {timeout_s:g} s") from None

    def fail_next(self, action: str, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``action`` with an OCPP CallError InternalError."""
        Action(action)
        with self._lock:
            self._faults.fail[action] = self._faults.fail.get(action, 0) + times

    def delay(self, action: str, seconds: float) -> None:
        """Sleep ``seconds`` before answering each call of ``action`` (0 answers at once again)."""
        Action(action)
        with self._lock:
            self._faults.delay_s[action] = seconds
