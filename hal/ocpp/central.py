"""The OCPP 1.6J central system: the WebSocket server that OCPP wallboxes connect to.

One thread runs one asyncio loop with a ``websockets`` server on ``listen`` (``wss`` with a TLS
context). Before the upgrade, ``hal.ocpp.access`` decides: an unknown charge_box_id gets 404
(logged once per id), a wrong or missing password 401. Each accepted connection gets a
:class:`~hal.ocpp.session.BoxSession` whose receive loop runs until the connection ends; a box
that connects again while its old connection is open takes over: the old one is closed and
its session no longer speaks for the box.

It is the driver's ``hal.types.Link`` named ``ocpp``: the status shows its calls (requests,
errors, the 95th percentile of their latency) and how many boxes are connected. ``close()``
stops the server, closes every connection and ends the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from hal.ocpp.access import REALM, decide
from hal.ocpp.charger import OcppCharger
from hal.ocpp.session import BoxSession
from hal.types import CommCause, CommError, LinkStats

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
LATENCY_WINDOW = 200  # calls kept for the latency percentile
START_TIMEOUT_S = 5.0
REFUSED_LOGGED_MAX = 1000  # refusals remembered for logging once; past that, the rest are not logged


class _Stats:
    """Counters of the calls gridcharge made (recorded on the loop, read by the control loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.last_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, latency_s: float, error: str | None) -> None:
        with self._lock:
            self.requests += 1
            self._latencies.append(latency_s)
            if error is not None:
                self.errors += 1
                self.last_error = error

    def snapshot(self) -> tuple[int, int, float | None, str | None]:
        with self._lock:
            lat = sorted(self._latencies)
            p95 = lat[max(0, math.ceil(0.95 * len(lat)) - 1)] if lat else None
            return self.requests, self.errors, p95, self.last_error


class CentralSystem:
    """The server and its thread (see the module docstring). ``start()`` before use."""

    name = "ocpp"

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 heartbeat_s: int = 60, call_timeout_s: float = 5.0) -> None:
        self.host = host
        self.port = port  # the bound port once started (0 asks the system for a free one)
        self.ssl_context = ssl_context
        self.heartbeat_s = heartbeat_s
        self.call_timeout_s = call_timeout_s
        self._boxes: dict[str, OcppCharger] = {}
        self._stats = _Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._server: Server | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._refused_logged: set[tuple[str, int]] = set()
        self._connections: dict[str, ServerConnection] = {}
        self._tx_ids = itertools.count(int(time.time()))  # unique across restarts, one a second at most

    # ---- setup (before start) ---------------------------------------------------------------------
    def add_box(self, charger: OcppCharger) -> None:
        box_id = charger.spec.charge_box_id
        if box_id in self._boxes:
            raise ValueError(f"charge_box_id {box_id!r} is already {self._boxes[box_id].id}")
        self._boxes[box_id] = charger

    @property
    def scheme(self) -> str:
        return "wss" if self.ssl_context is not None else "ws"

    def url(self, charge_box_id: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}/ocpp/{charge_box_id}"

    # ---- the thread -------------------------------------------------------------------------------
    def start(self) -> CentralSystem:
        """Listen; raises OSError (port taken, ...) when the server cannot start."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="ocpp", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise OSError(f"the OCPP server on {self.host}:{self.port} did not start in {START_TIMEOUT_S:g} s")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # a start failure is raised in start(); anything later is logged
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                log.exception("the OCPP server stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, self.host, self.port, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                         process_request=self._process_request, ssl=self.ssl_context,
                         ping_interval=20, ping_timeout=20, close_timeout=2) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            log.info("OCPP central system listening on %s://%s:%d/ocpp/<charge_box_id>",
                     self.scheme, self.host, self.port)
            self._started.set()
            await self._stop.wait()
            server.close()
            await server.wait_closed()

    def close(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has just ended
                pass
        thread.join(timeout=10)
        self._thread = None

    # ---- what the chargers use (worker threads) ---------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        """Run ``coro`` on the loop and wait for it; DeviceError when it takes longer."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._thread is None:
            coro.close()
            raise CommError("the OCPP server is not running", CommCause.CANNOT_OPEN)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise CommError(f"no answer in {timeout_s:g} s", CommCause.NO_ANSWER) from None
        except concurrent.futures.CancelledError:
            raise CommError("the OCPP server stopped", CommCause.LINK_LOST) from None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` on the loop without waiting (a trigger)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return
        asyncio.run_coroutine_threadsafe(coro, loop)

    # ---- hal.types.Link ------------------------------------------------------------------------------
    def link_stats(self) -> LinkStats:
        requests, errors, p95, last_error = self._stats.snapshot()
        connected = sum(1 for box in self._boxes.values() if box.session is not None)
        return LinkStats(self.name, requests, errors, p95, last_error,
                         {"connected": float(connected), "boxes": float(len(self._boxes))})

    # ---- the server (the loop) -------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        passwords: Mapping[str, str | None] = {i: b.spec.password for i, b in self._boxes.items()}
        verdict = decide(request.path, request.headers.get("Authorization"), passwords)
        if verdict.status is None:
            return None
        peer = _peer(connection)
        key = (verdict.charge_box_id or request.path, int(verdict.status))
        if key not in self._refused_logged and len(self._refused_logged) < REFUSED_LOGGED_MAX:
            self._refused_logged.add(key)  # once per id and answer: a box retries forever
            log.warning("OCPP: refused %s from %s: %s (%d)", verdict.charge_box_id or request.path, peer,
                        verdict.reason, int(verdict.status))
        response = connection.respond(verdict.status, f"{verdict.reason}\n")
        if verdict.status == 401:
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
        return response

    async def _handle(self, connection: ServerConnection) -> None:
        verdict = decide(connection.request.path if connection.request else "", None,
                         {i: None for i in self._boxes})
        charger = self._boxes.get(verdict.charge_box_id or "")
        if charger is None:  # cannot happen: refused before the upgrade
            await connection.close()
            return
        box_id = charger.spec.charge_box_id
        old = self._connections.get(box_id)
        session = BoxSession(charger, connection, heartbeat_s=self.heartbeat_s, stats=self._stats,
                             next_transaction_id=self._next_transaction_id, call_timeout_s=self.call_timeout_s)
        self._connections[box_id] = connection
        charger.connected(session)  # from now on the new connection speaks for the box
        if old is not None:
            log.info("%s: connected again; the old connection is closed", charger.id)
            await old.close(1000, "replaced by a new connection")
        log.info("%s: %s connected from %s", charger.id, box_id, _peer(connection))
        session.start_bring_up()
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            if self._connections.get(box_id) is connection:
                del self._connections[box_id]
            charger.disconnected(session)
            log.info("%s: %s disconnected", charger.id, box_id)

    def _next_transaction_id(self) -> int:
        return next(self._tx_ids) % 2**31  # OCPP integer


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

