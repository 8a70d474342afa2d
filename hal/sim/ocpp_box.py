"""A simulated OCPP 1.6J charge point: a wallbox with physics that connects to a central system.

It is written with the same ``ocpp`` package as the central system, on the charge point's side,
and it models the world, not gridcharge's assumptions: the charging limit is whatever charging
profile the box last accepted (a box without one gives the car its full rating), a box that
lost its connection keeps charging at that profile, and a reboot forgets it. Behind it is a
:class:`~hal.sim.wallbox.SimWallbox` (the car follows the offered current after its own delay), so
the box can join a :class:`~hal.sim.physics.SimSite` and its draw reaches the site's grid meter:
``site.physics.add_wallbox("E3", box.wallbox)``.

What it sends: BootNotification on its first connection and after a reboot, StatusNotification on
every change of state, MeterValues every ``MeterValueSampleInterval`` (as set by
ChangeConfiguration; ``meter_delay_s`` holds each sample back, as a slow box does, stamped with
the time it was taken), Start/StopTransaction when a car is plugged in or out, Heartbeat. What
it answers: SetChargingProfile and ChangeConfiguration (or rejects them when told to),
TriggerMessage. It runs its own asyncio loop in a thread; tests and the demo use the small
synchronous API (``plug``, ``unplug``, ``limit_a``, ``disconnect``, ``reconnect``, ``reboot``,
``connect_again``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    ChargePointErrorCode,
    ChargingProfileStatus,
    ConfigurationStatus,
    MessageTrigger,
    Reason,
    TriggerMessageStatus,
)
from websockets.asyncio.client import ClientConnection, connect

from hal.ocpp.mapping import MappingError, profile_limit
from hal.sim.wallbox import MIN_DRAW_A, SimCar, SimWallbox, WallboxConfig
from hal.types import IecState

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_INTERVAL_S = 60.0  # a factory box's MeterValueSampleInterval
POLL_S = 0.05  # how often the box looks at its own state (status changes, plug and unplug)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Box(ChargePoint):
    """The charge point's side of one connection (handlers for what the central system sends)."""

    def __init__(self, sim: SimOcppBox, connection: ClientConnection) -> None:
        super().__init__(sim.charge_box_id, connection, response_timeout=5)
        self.sim = sim

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        self.sim.received.append(("SetChargingProfile", {"connector_id": connector_id, **cs_charging_profiles}))
        if self.sim.reject_profiles or connector_id != self.sim.connector:
            return call_result.SetChargingProfile(status=ChargingProfileStatus.rejected)
        try:
            limit, _phases = profile_limit(cs_charging_profiles)
        except MappingError:
            return call_result.SetChargingProfile(status=ChargingProfileStatus.rejected)
        self.sim._set_profile(limit)
        return call_result.SetChargingProfile(status=ChargingProfileStatus.accepted)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        self.sim.received.append(("ChangeConfiguration", {"key": key, "value": value}))
        if self.sim.reject_configuration:
            return call_result.ChangeConfiguration(status=ConfigurationStatus.rejected)
        self.sim.configuration[key] = value
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, **_: Any) -> Any:
        self.sim.received.append(("TriggerMessage", {"requested_message": requested_message}))
        if requested_message not in (MessageTrigger.meter_values, MessageTrigger.status_notification,
                                     MessageTrigger.heartbeat):
            return call_result.TriggerMessage(status=TriggerMessageStatus.not_implemented)
        return call_result.TriggerMessage(status=TriggerMessageStatus.accepted)

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message: str, **_: Any) -> None:
        if requested_message == MessageTrigger.meter_values and self.sim.send_meter_values:
            await self.sim._send_meter_values(self, time.time())
        elif requested_message == MessageTrigger.status_notification:
            await self.sim._send_status(self)
        elif requested_message == MessageTrigger.heartbeat:
            await self.call(call.Heartbeat())


class SimOcppBox:
    """One simulated OCPP box (see the module docstring). ``start()`` connects it."""

    def __init__(self, url: str, charge_box_id: str, *, password: str | None = None, connector: int = 1,
                 wallbox: SimWallbox | None = None, config: WallboxConfig | None = None,
                 ssl_context: ssl.SSLContext | None = None, meter_delay_s: float = 0.0,
                 send_meter_values: bool = True, id_tag: str = "SIMTAG01") -> None:
        self.url = url.rstrip("/") + "/" + charge_box_id
        self.charge_box_id = charge_box_id
        self.password = password
        self.connector = connector
        self.wallbox = wallbox or SimWallbox(config)
        self.ssl_context = ssl_context
        self.meter_delay_s = meter_delay_s
        self.send_meter_values = send_meter_values
        self.id_tag = id_tag
        #: Told to refuse (tests): every SetChargingProfile, every ChangeConfiguration.
        self.reject_profiles = False
        self.reject_configuration = False
        #: Every call the central system made, in order: (action, payload).
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.configuration: dict[str, str] = {}
        self.boots = 0
        self.connections = 0  # connections opened (the handshake succeeded)
        self.last_error: str | None = None
        self.transactions: list[dict[str, Any]] = []
        self._profile_a: float | None = None  # the charging profile in force; None: none
        self._want_connected = False
        self._boot_pending = True
        self._live: list[tuple[ClientConnection, _Box]] = []
        self._extra_connection = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._transaction_id: int | None = None
        self._set_profile(None)

    # ---- the synchronous control API (any thread) ---------------------------------------------
    def start(self) -> SimOcppBox:
        self._want_connected = True
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=f"sim-ocpp-{self.charge_box_id}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> SimOcppBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return bool(self._live)

    @property
    def limit_a(self) -> float:
        """The current the box offers: its charging profile's limit, or its rating without one."""
        with self._lock:
            return self._profile_a if self._profile_a is not None else self.wallbox.config.max_current_a

    @property
    def has_profile(self) -> bool:
        with self._lock:
            return self._profile_a is not None

    @property
    def sample_interval_s(self) -> float:
        try:
            return max(1.0, float(self.configuration.get("MeterValueSampleInterval", DEFAULT_SAMPLE_INTERVAL_S)))
        except ValueError:
            return DEFAULT_SAMPLE_INTERVAL_S

    def plug(self, car: SimCar | None = None) -> None:
        self.wallbox.plug(car or SimCar())

    def unplug(self) -> None:
        self.wallbox.unplug()

    def disconnect(self) -> None:
        """The network goes away: the connection closes and the box stays away (it keeps
        charging at its last profile) until :meth:`reconnect`."""
        self._want_connected = False
        self._call_soon(self._close_all)

    def reconnect(self) -> None:
        self._want_connected = True

    def reboot(self) -> None:
        """Power cycle: the connection drops, the profile and the configuration are forgotten,
        and the box connects again with a BootNotification."""
        self._want_connected = False
        self._call_soon(self._close_all)
        with self._lock:
            self._boot_pending = True
            self.configuration.clear()
        self._set_profile(None)
        self._want_connected = True

    def connect_again(self) -> None:
        """Open a second connection while the first is still open (a box whose network flapped)."""
        self._extra_connection = True

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def send(self, payload: Any, timeout_s: float = 5.0) -> Any:
        """Send one call (an ``ocpp.v16.call`` payload) on the current connection; its answer."""
        box, loop = self._current_box(), self._loop
        if box is None or loop is None:
            raise ConnectionError(f"{self.charge_box_id} is not connected")
        return asyncio.run_coroutine_threadsafe(box.call(payload), loop).result(timeout_s)

    def calls(self, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in list(self.received) if name == action]

    # ---- the box's loop -------------------------------------------------------------------------------
    def _call_soon(self, fn: Callable[[], Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(fn()))

    async def _close_all(self) -> None:
        for connection, _ in list(self._live):
            await connection.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready.set()
        tasks: set[asyncio.Task[None]] = set()
        watcher = asyncio.ensure_future(self._watch())
        while not self._stopping.is_set():
            if self._want_connected and (not self._live and not tasks or self._extra_connection):
                self._extra_connection = False
                task = asyncio.ensure_future(self._connection())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            try:
                await asyncio.wait_for(self._stopping.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        watcher.cancel()
        await self._close_all()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, watcher, return_exceptions=True)

    async def _connection(self) -> None:
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.charge_box_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            async with connect(self.url, subprotocols=["ocpp1.6"], additional_headers=headers,  # type: ignore[list-item]
                               ssl=self.ssl_context, open_timeout=3, close_timeout=1) as connection:
                box = _Box(self, connection)
                self._live.append((connection, box))
                self.connections += 1
                receiver = asyncio.ensure_future(box.start())
                meter = asyncio.ensure_future(self._meter_loop(box))
                try:
                    if self._boot_pending:
                        self._boot_pending = False
                        await box.call(call.BootNotification(charge_point_vendor="gridcharge",
                                                             charge_point_model="SimOcppBox"))
                        self.boots += 1
                    await self._send_status(box)
                    await receiver
                except Exception as exc:  # the connection closed under a call, ...
                    self.last_error = repr(exc)
                finally:
                    meter.cancel()
                    receiver.cancel()
                    await asyncio.gather(meter, receiver, return_exceptions=True)
                    self._live = [(c, b) for c, b in self._live if c is not connection]
        except Exception as exc:  # refused, reset, no server yet: try again later
            self.last_error = repr(exc)
            await asyncio.sleep(0.2)

    def _current_box(self) -> _Box | None:
        return self._live[-1][1] if self._live else None

    async def _watch(self) -> None:
        """StatusNotification on every change of state; transactions on plug and unplug."""
        last_status: str | None = None
        while True:
            await asyncio.sleep(POLL_S)
            box = self._current_box()
            if box is None:
                last_status = None
                continue
            try:
                plugged = self.wallbox.car is not None
                if plugged and self._transaction_id is None:
                    result = await box.call(call.StartTransaction(
                        connector_id=self.connector, id_tag=self.id_tag,
                        meter_start=int(self.wallbox.energy_wh), timestamp=_iso(time.time())))
                    self._transaction_id = result.transaction_id
                    self.transactions.append({"start": result.transaction_id})
                elif not plugged and self._transaction_id is not None:
                    transaction_id, self._transaction_id = self._transaction_id, None
                    await box.call(call.StopTransaction(
                        meter_stop=int(self.wallbox.energy_wh), timestamp=_iso(time.time()),
                        transaction_id=transaction_id, reason=Reason.ev_disconnected))
                    self.transactions.append({"stop": transaction_id})
                status = self._status_text()
                if status != last_status:
                    await self._send_status(box)
                    last_status = status
            except Exception as exc:  # the connection went away under the call
                self.last_error = repr(exc)

    async def _meter_loop(self, box: _Box) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(POLL_S)  # the interval may change at any time (ChangeConfiguration)
            if time.monotonic() - last < self.sample_interval_s:
                continue
            last = time.monotonic()
            if self.send_meter_values:
                taken = time.time()
                sample = self._sample(taken)
                if self.meter_delay_s:
                    await asyncio.sleep(self.meter_delay_s)
                await self._send_sample(box, sample)

    def _status_text(self) -> str:
        state = self.wallbox.state()
        if state is IecState.A:
            return "Available"
        if state.charging:
            return "Charging"
        return "SuspendedEVSE" if self.limit_a < MIN_DRAW_A else "SuspendedEV"

    async def _send_status(self, box: _Box) -> None:
        await box.call(call.StatusNotification(connector_id=self.connector, error_code=ChargePointErrorCode.no_error,
                                               status=self._status_text(), timestamp=_iso(time.time())))

    def _sample(self, taken: float) -> list[dict[str, Any]]:
        values = self.wallbox.values()
        sampled = [{"value": f"{values[f'current_l{i}_a']:.2f}", "measurand": "Current.Import",
                    "phase": f"L{i}", "unit": "A"} for i in (1, 2, 3)]
        sampled.append({"value": f"{values['power_w']:.1f}", "measurand": "Power.Active.Import", "unit": "W"})
        sampled.append({"value": f"{values['energy_wh']:.1f}", "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh"})
        return [{"timestamp": _iso(taken), "sampledValue": sampled}]

    async def _send_meter_values(self, box: _Box, taken: float) -> None:
        await self._send_sample(box, self._sample(taken))

    async def _send_sample(self, box: _Box, sample: list[dict[str, Any]]) -> None:
        await box.call(call.MeterValues(connector_id=self.connector, meter_value=sample,
                                        transaction_id=self._transaction_id))

    def _set_profile(self, limit_a: float | None) -> None:
        with self._lock:
            self._profile_a = limit_a
        self.wallbox.set_limit(self.wallbox.config.max_current_a if limit_a is None else limit_a)
