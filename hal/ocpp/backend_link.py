"""One charge point's connection to the supplier's OCPP 1.6J backend (the gateway's protocol side).

gridcharge presents each charger it manages to the backend as one OCPP charge point; this module
is the WebSocket client of one of them, on the ``ocpp`` package's ``ChargePoint`` (the charge
point's side here). What to say and how to answer comes from a :class:`ChargePointDelegate`
(``controller.backend``): this module knows the protocol, the delegate knows the charger.

**Connecting.** ``<url>/<charge_point_id>`` with subprotocol ``ocpp1.6``; HTTP basic auth
``<charge_point_id>:<password>`` when a password is given (OCPP security profiles 1 and 2);
TLS with the given context (``wss``; a client certificate makes profile 3); through a proxy
when one is given: ``socks5://`` (the SMGW's CLS proxy) or ``http://`` (HTTP CONNECT), both
handled by ``websockets`` (SOCKS through ``python-socks``). Without a proxy none is used, whatever
the environment says: a service must not change its route because of a shell variable.

**Backoff.** After a failed attempt or a lost connection: 1 s, doubling to 5 min, each wait
jittered to 75-100 % so that a fleet that lost its backend at once does not come back at once;
back to 1 s after a BootNotification was accepted. The first failure of a streak is logged as a
warning with its reason in plain words (a refused password says so: HTTP 401), the repeats at
debug level; the delegate hears every change (``link_changed``) for the status.

**Talking.** After the WebSocket opens: BootNotification until Accepted (Pending/Rejected: again
after the interval the backend gave, at least 10 s); then StatusNotification for connectors 0
and 1, then, in a loop: the stored transaction messages in order (``next_stored`` /
``stored_delivered`` / ``stored_refused``: a message is removed only after the backend answered
it), a StatusNotification whenever the status differs from the last one sent, and a Heartbeat
every heartbeat interval. A call not answered within ``call_timeout_s`` ends the connection (the
backend or the way to it is unwell): the stored message stays stored and goes again after the
reconnect. Incoming calls go to ``delegate.handle`` (answers as plain dicts); actions the
gateway does not offer get the OCPP CallError NotSupported.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, ProxyError

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
JITTER = (0.75, 1.0)
MIN_BOOT_RETRY_S = 10.0
OPEN_TIMEOUT_S = 20.0


def backoff_s(attempt: int, rand: Callable[[float, float], float] = random.uniform) -> float:
    """The wait before reconnect attempt ``attempt`` (0 = after the first failure): 1 s doubling to
    5 min, jittered to 75-100 %."""
    base = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** min(attempt, 20))
    return base * rand(*JITTER)


def describe_failure(exc: BaseException) -> str:
    """A connection failure in plain words, for the log and the status."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            return "the backend refused the password (HTTP 401): check ocpp_backend.password"
        if status == 404:
            return "the backend does not know this charge point (HTTP 404): check its backend_id"
        return f"the backend refused the connection (HTTP {status})"
    if isinstance(exc, ProxyError):
        return f"the proxy refused the connection: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the backend's certificate is not trusted: {exc.verify_message} (check ocpp_backend.ca)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there, or the proxy is down)"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "no answer in time"
    if isinstance(exc, ConnectionClosed):
        return f"the connection was closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
    if isinstance(exc, InvalidHandshake):
        return f"the WebSocket handshake failed: {exc}"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class StoredCall:
    """A stored transaction message, ready to send (``payload``: camelCase, as it goes out)."""

    seq: int
    action: str  # "StartTransaction" | "MeterValues" | "StopTransaction"
    payload: dict[str, Any]
    tx_key: int | None = None  # the local transaction it belongs to


class ChargePointDelegate(Protocol):
    """What one connection asks of the gateway (called on the gateway's loop, must not block
    for long: a few SQLite statements at most)."""

    def boot_payload(self) -> dict[str, Any]: ...  # BootNotification, snake_case keys
    def status_now(self) -> tuple[str, str, str]: ...  # (connector 0 status, connector 1 status, error code)
    def meter_values_now(self) -> dict[str, Any] | None: ...  # a MeterValues payload (not stored), None: no reading
    def next_stored(self) -> StoredCall | None: ...
    def stored_delivered(self, stored: StoredCall, answer: dict[str, Any]) -> None: ...
    def stored_refused(self, stored: StoredCall, error: str) -> None: ...
    def handle(self, action: str, request: dict[str, Any]) -> dict[str, Any]: ...  # snake_case both ways
    def link_changed(self, connected: bool, state: str, reason: str | None) -> None: ...
    def status_sent(self, connector_status: str) -> None: ...
    def heartbeat_s(self) -> int: ...


@dataclass(frozen=True)
class Route:
    """Where and how to connect (shared by every charge point of the gateway)."""

    url: str  # the backend's base URL; the charge point id is appended
    proxy: str | None
    password: str | None
    ssl_context: ssl.SSLContext | None
    call_timeout_s: float = 30.0

    def uri(self, charge_point_id: str) -> str:
        return f"{self.url}/{charge_point_id}"


class _Handlers(ChargePoint):
    """The answers to what the backend asks (all through the delegate)."""

    def __init__(self, cp_id: str, connection: ClientConnection, link: BackendLink, timeout_s: float) -> None:
        super().__init__(cp_id, connection, response_timeout=timeout_s)
        self.link = link

    def _ask(self, action: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return self.link.delegate.handle(action, kwargs)

    @on(Action.remote_start_transaction)
    def _remote_start(self, **kw: Any) -> call_result.RemoteStartTransaction:
        return call_result.RemoteStartTransaction(**self._ask("RemoteStartTransaction", kw))

    @on(Action.remote_stop_transaction)
    def _remote_stop(self, **kw: Any) -> call_result.RemoteStopTransaction:
        return call_result.RemoteStopTransaction(**self._ask("RemoteStopTransaction", kw))

    @on(Action.set_charging_profile)
    def _set_profile(self, **kw: Any) -> call_result.SetChargingProfile:
        return call_result.SetChargingProfile(**self._ask("SetChargingProfile", kw))

    @on(Action.clear_charging_profile)
    def _clear_profile(self, **kw: Any) -> call_result.ClearChargingProfile:
        return call_result.ClearChargingProfile(**self._ask("ClearChargingProfile", kw))

    @on(Action.change_availability)
    def _availability(self, **kw: Any) -> call_result.ChangeAvailability:
        return call_result.ChangeAvailability(**self._ask("ChangeAvailability", kw))

    @on(Action.get_configuration)
    def _get_configuration(self, **kw: Any) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(**self._ask("GetConfiguration", kw))

    @on(Action.change_configuration)
    def _change_configuration(self, **kw: Any) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(**self._ask("ChangeConfiguration", kw))

    @on(Action.trigger_message)
    def _trigger(self, **kw: Any) -> call_result.TriggerMessage:
        return call_result.TriggerMessage(**self._ask("TriggerMessage", kw))

    @after(Action.trigger_message)
    def _after_trigger(self, requested_message: str, **_: Any) -> None:
        self.link.triggered(requested_message)

    @on(Action.reset)
    def _reset(self, **kw: Any) -> call_result.Reset:
        return call_result.Reset(**self._ask("Reset", kw))

    @after(Action.reset)
    def _after_reset(self, **_: Any) -> None:
        self.link.reset()



#: Everything else a 1.6 backend may ask of a charge point: recognised, not offered (CallError
#: NotSupported rather than the library's NotImplemented, which says "unknown action").
NOT_OFFERED = (Action.cancel_reservation, Action.clear_cache, Action.data_transfer, Action.get_composite_schedule,
               Action.get_diagnostics, Action.get_local_list_version, Action.reserve_now, Action.send_local_list,
               Action.unlock_connector, Action.update_firmware)


def _not_supported(self: _Handlers, **_: Any) -> None:
    raise NotSupportedError("not offered by this charge point (a gridcharge gateway)")


def _route_not_offered(action: Action) -> None:
    """One routed method per action: the library keeps one route per method, found by its name."""
    def handler(self: _Handlers, **kw: Any) -> None:
        _not_supported(self, **kw)

    handler.__name__ = f"_not_offered_{action.value}"
    setattr(_Handlers, handler.__name__, on(action)(handler))


for _action in NOT_OFFERED:
    _route_not_offered(_action)


class BackendLink:
    """One charge point's connection, kept up for as long as ``run()`` runs (module doc)."""

    def __init__(self, cp_id: str, route: Route, delegate: ChargePointDelegate, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 min_boot_retry_s: float = MIN_BOOT_RETRY_S) -> None:
        self.cp_id = cp_id
        self.route = route
        self.delegate = delegate
        self._sleep = sleep
        self.min_boot_retry_s = min_boot_retry_s
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None  # the open connection, None between two
        self._pending_triggers: list[str] = []
        self._reset_asked = False
        self._sent_status: tuple[str, str, str] | None = None
        self.attempts = 0  # connection attempts so far (tests read it)
        self._booted = False  # BootNotification accepted on the current connection

    def wake(self) -> None:
        """Something to send (a stored message, a status change); on the gateway's loop."""
        self._wake.set()

    def triggered(self, requested: str) -> None:
        self._pending_triggers.append(requested)
        self._wake.set()

    def reset(self) -> None:
        """The backend asked for a Reset: close the connection; the reconnect boots again."""
        self._reset_asked = True
        self._wake.set()

    def _headers(self) -> dict[str, str]:
        if self.route.password is None:
            return {}
        token = base64.b64encode(f"{self.cp_id}:{self.route.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def run(self) -> None:
        """Connect, talk, reconnect with backoff, until cancelled."""
        failures = 0
        while True:
            self.attempts += 1
            self.delegate.link_changed(False, "connecting", None)
            self._booted = False
            error: BaseException | None = None
            try:
                async with connect(self.route.uri(self.cp_id), subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                   additional_headers=self._headers(), ssl=self.route.ssl_context,
                                   proxy=self.route.proxy, open_timeout=OPEN_TIMEOUT_S, ping_interval=30,
                                   ping_timeout=30, close_timeout=2, user_agent_header="gridcharge") as ws:
                    await self._talk(ws)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is a reason to retry; none may end the gateway
                error = exc
            if self._booted:  # a connection that booted and later broke starts a new streak
                failures = 0
            reason = describe_failure(error) if error is not None else "the connection ended"
            if self._reset_asked:
                self._reset_asked = False
                reason = "reset by the backend"
            delay = backoff_s(failures)
            failures += 1
            if failures == 1:
                log.warning("backend %s: %s; retrying in %.0f s", self.cp_id, reason, delay)
            else:
                log.debug("backend %s: %s; retrying in %.0f s", self.cp_id, reason, delay)
            self.delegate.link_changed(False, f"reconnecting in {delay:.0f} s", reason)
            await self._sleep(delay)

    async def _talk(self, ws: ClientConnection) -> None:
        """One connection's life (``_booted`` once BootNotification was accepted on it)."""
        handlers = _Handlers(self.cp_id, ws, self, self.route.call_timeout_s)
        self._ws = ws
        receiver = asyncio.create_task(handlers.start())
        try:
            interval = await self._boot(handlers)
            self._booted = True
            log.info("backend %s: connected to %s%s", self.cp_id, self.route.uri(self.cp_id),
                     f" through {self.route.proxy}" if self.route.proxy else "")
            self.delegate.link_changed(True, "connected", None)
            self._sent_status = None
            await self._serve(handlers, interval, receiver)
        finally:
            self._ws = None
            receiver.cancel()
            try:
                await receiver
            except (asyncio.CancelledError, ConnectionClosed):
                pass

    async def _boot(self, handlers: _Handlers) -> float:
        """BootNotification until Accepted; the heartbeat interval to use."""
        while True:
            answer = await handlers.call(call.BootNotification(**self.delegate.boot_payload()), suppress=False)
            interval = float(answer.interval or 0)
            if answer.status == RegistrationStatus.accepted:
                return interval if interval > 0 else float(self.delegate.heartbeat_s())
            self.delegate.link_changed(False, f"boot {answer.status.lower()}", f"BootNotification {answer.status}")
            await self._sleep(max(self.min_boot_retry_s, interval))

    async def _serve(self, handlers: _Handlers, heartbeat_s: float, receiver: asyncio.Task[Any]) -> None:
        next_heartbeat = time.monotonic() + heartbeat_s
        while not receiver.done():
            self._wake.clear()
            if self._reset_asked:
                if self._ws is not None:
                    await self._ws.close(1000, "reset")
                return
            await self._send_status(handlers)
            await self._send_triggered(handlers)
            sent_any = await self._send_stored(handlers)
            if time.monotonic() >= next_heartbeat:
                await handlers.call(call.Heartbeat(), suppress=False)
                next_heartbeat = time.monotonic() + heartbeat_s
            if sent_any:
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({waiter, receiver}, timeout=max(0.0, next_heartbeat - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        exc = receiver.exception() if not receiver.cancelled() else None
        if exc is not None:
            raise exc

    async def _send_status(self, handlers: _Handlers, *, force: bool = False) -> None:
        now = self.delegate.status_now()
        if now == self._sent_status and not force:
            return
        connector0, connector1, error_code = now
        if self._sent_status is None or force or self._sent_status[0] != connector0:
            await handlers.call(call.StatusNotification(connector_id=0, error_code="NoError",
                                                        status=connector0), suppress=False)
        await handlers.call(call.StatusNotification(connector_id=1, error_code=error_code, status=connector1),
                            suppress=False)
        self._sent_status = now
        self.delegate.status_sent(connector1)

    @property
    def sent_status(self) -> tuple[str, str, str] | None:
        """The status last sent on this connection (None: none yet)."""
        return self._sent_status

    async def _send_triggered(self, handlers: _Handlers) -> None:
        while self._pending_triggers:
            requested = self._pending_triggers.pop(0)
            if requested == "BootNotification":
                await handlers.call(call.BootNotification(**self.delegate.boot_payload()), suppress=False)
            elif requested == "Heartbeat":
                await handlers.call(call.Heartbeat(), suppress=False)
            elif requested == "StatusNotification":
                await self._send_status(handlers, force=True)
            elif requested == "MeterValues":
                payload = self.delegate.meter_values_now()
                if payload is not None:
                    await handlers.call(call.MeterValues(**payload), suppress=False)

    async def _send_stored(self, handlers: _Handlers) -> bool:
        """The oldest stored message; True when one went (answered or refused). One per pass of
        ``_serve``, so that a status change, a trigger or a heartbeat never waits for a whole
        backlog (a backend slower than the MeterValues would make that wait endless)."""
        stored = self.delegate.next_stored()
        if stored is None:
            return False
        request = getattr(call, stored.action)(**_snake_keys(stored.payload))
        try:
            answer = await handlers.call(request, suppress=False)
        except OCPPError as exc:  # the backend answered with a CallError: its judgement, not the link's
            self.delegate.stored_refused(stored, f"{type(exc).__name__}: {exc.description}")
            return True
        self.delegate.stored_delivered(stored, _as_dict(answer))
        return True

    async def close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close(1001, "gridcharge stops")


def _snake_keys(payload: dict[str, Any]) -> dict[str, Any]:
    """The top-level keys of a camelCase payload in snake_case (the ``call`` classes' fields;
    nested values go out as they are, camelCase)."""
    out = {}
    for key, value in payload.items():
        snake = "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in key)
        out[snake] = value
    return out


def _as_dict(answer: Any) -> dict[str, Any]:
    if answer is None:
        return {}
    return {k: v for k, v in vars(answer).items()}


__all__ = ["BackendLink", "ChargePointDelegate", "Route", "StoredCall", "backoff_s", "describe_failure"]
