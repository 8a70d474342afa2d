"""One connected OCPP 1.6J box: the answers to what it sends, and the calls gridcharge makes.

Built on the ``ocpp`` package's ``ChargePoint`` (the central system's side of one connection):
its ``start()`` is the receive loop, which must run for ``call()`` to get its answers, and it
makes one call at a time. What the box says goes to its :class:`~hal.ocpp.charger.OcppCharger`;
what gridcharge says (the meter configuration, the limit as a charging profile, triggers) goes
out from here, each call counted in the central system's statistics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Any, Protocol

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    ChargingProfileStatus,
    ConfigurationStatus,
    DataTransferStatus,
    MessageTrigger,
    RegistrationStatus,
)
from websockets.exceptions import ConnectionClosed

from hal.ocpp.charger import OcppCharger
from hal.ocpp.mapping import SAMPLED_DATA, MappingError, charging_profile, parse_meter_values, parse_timestamp
from hal.types import CommCause, CommError, DeviceAnswerError, DeviceError, SessionEvent, SessionEventKind

log = logging.getLogger(__name__)


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class CallStats(Protocol):
    """What the central system counts of each call (``record`` runs on its loop)."""

    def record(self, latency_s: float, error: str | None) -> None: ...


class BoxSession(ChargePoint):
    """The handlers for one connection of one box (see the module docstring)."""

    def __init__(self, charger: OcppCharger, connection: Any, *, heartbeat_s: int, stats: CallStats,
                 next_transaction_id: Callable[[], int], call_timeout_s: float) -> None:
        super().__init__(charger.spec.charge_box_id, connection, response_timeout=call_timeout_s)
        self.charger = charger
        self.heartbeat_s = heartbeat_s
        self.stats = stats
        self.next_transaction_id = next_transaction_id
        self._bring_up_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- calls to the box --------------------------------------------------------------------
    async def _call(self, payload: Any) -> Any:
        """One call; CommError when the connection is gone or the box does not answer in time,
        DeviceAnswerError when it answers with a CallError."""
        what = type(payload).__name__
        started = time.monotonic()
        try:
            result = await self.call(payload, suppress=False)
        except ConnectionClosed as exc:
            self.stats.record(time.monotonic() - started, f"{what}: connection lost")
            raise CommError(f"{self.id}: {what}: connection lost", CommCause.LINK_LOST) from exc
        except asyncio.TimeoutError as exc:
            self.stats.record(time.monotonic() - started, f"{what}: no answer")
            raise CommError(f"{self.id}: {what}: no answer in {self._response_timeout:g} s",
                            CommCause.NO_ANSWER) from exc
        except Exception as exc:  # a CallError from the box, or an answer that is not OCPP
            self.stats.record(time.monotonic() - started, f"{what}: {exc}")
            raise DeviceAnswerError(f"{self.id}: {what}: {exc}") from exc
        self.stats.record(time.monotonic() - started, None)
        return result

    async def set_limit(self, current_a: float) -> None:
        """SetChargingProfile: the connector's TxDefaultProfile at ``current_a`` (0 pauses).

        Once the box has accepted it, MeterValues are asked for at once (TriggerMessage, not
        waited for): its periodic samples come up to one interval late (and a slow box later
        still), so until the next one the controller would see the box's draw from before the
        change next to a grid meter that sees the change. The old draw would be counted as
        other consumption, and a limit just raised would be lowered again the next cycle, and
        raised again once a sample from after the change came: a limit that never settles."""
        spec = self.charger.spec
        result = await self._call(call.SetChargingProfile(
            connector_id=spec.connector, cs_charging_profiles=charging_profile(current_a, phases=spec.phases)))
        if result.status != ChargingProfileStatus.accepted:
            raise DeviceAnswerError(f"{self.id}: SetChargingProfile {current_a:g} A: {result.status}")
        self.charger.limit_acknowledged(self, current_a)
        self._spawn(self.trigger("MeterValues"))

    async def configure(self) -> None:
        """Ask for the meter values the controller needs, every ``sample_interval_s``. A refusal
        is logged, not an error: the box is then read from what it sends anyway."""
        for key, value in (("MeterValuesSampledData", SAMPLED_DATA),
                           ("MeterValueSampleInterval", str(self.charger.sample_interval_s))):
            result = await self._call(call.ChangeConfiguration(key=key, value=value))
            if result.status not in (ConfigurationStatus.accepted, ConfigurationStatus.reboot_required):
                log.warning("%s: the box refused %s=%s (%s); it is read from what it sends",
                            self.charger.id, key, value, result.status)

    async def trigger(self, message: str) -> None:
        """TriggerMessage (MeterValues or StatusNotification) for the box's connector; failures
        only logged: whoever asked sees the missing answer as a stale reading."""
        try:
            await self._call(call.TriggerMessage(requested_message=MessageTrigger(message),
                                                 connector_id=self.charger.spec.connector))
        except DeviceError as exc:
            log.debug("%s: TriggerMessage %s: %s", self.charger.id, message, exc)

    async def bring_up(self) -> None:
        """On a new connection or a boot: configuration, the limit in force, the status.

        The limit is the one commanded when it is written; should ``apply()`` command another
        while this write is on the way, it is written again, so the last write is the last command.
        """
        async with self._bring_up_lock:
            try:
                await self.configure()
                while True:
                    limit_a = self.charger.limit_to_write()
                    await self.set_limit(limit_a)
                    if self.charger.limit_to_write() == limit_a:
                        break
                await self.trigger("StatusNotification")
            except DeviceError as exc:
                log.warning("%s: setting up the box failed: %s", self.charger.id, exc)

    def start_bring_up(self) -> None:
        self._spawn(self.bring_up())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on this loop without waiting for it (kept referenced until it ends)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- what the box sends -------------------------------------------------------------------
    @on(Action.boot_notification)
    def on_boot_notification(self, **_: Any) -> Any:
        return call_result.BootNotification(current_time=_now_text(), interval=self.heartbeat_s,
                                            status=RegistrationStatus.accepted)

    @after(Action.boot_notification)
    def after_boot_notification(self, charge_point_vendor: str = "", charge_point_model: str = "", **_: Any) -> None:
        log.info("%s: boot of %s %s (%s)", self.charger.id, charge_point_vendor, charge_point_model, self.id)
        self.charger.rebooted()
        self.start_bring_up()

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=_now_text())

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, status: str, error_code: str = "", **_: Any) -> Any:
        if connector_id == self.charger.spec.connector:
            self.charger.status_received(str(status))
        elif connector_id == 0 and status in ("Faulted", "Unavailable"):
            self.charger.status_received(str(status))  # the whole box is out of order
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], **_: Any) -> Any:
        if connector_id == self.charger.spec.connector:
            spec = self.charger.spec
            try:
                sample = parse_meter_values(meter_value, phases=spec.phases, phase_index=spec.phase_index)
            except MappingError as exc:
                log.warning("%s: MeterValues not understood: %s", self.charger.id, exc)
            else:
                self.charger.meter_received(sample)
        return call_result.MeterValues()

    def _tag_info(self, id_tag: str | None) -> IdTagInfo:
        allowed = self.charger.spec.id_tags
        ok = allowed is None or (id_tag is not None and id_tag in allowed)
        return IdTagInfo(status=AuthorizationStatus.accepted if ok else AuthorizationStatus.invalid)

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return call_result.Authorize(id_tag_info=self._tag_info(id_tag))

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                             **_: Any) -> Any:
        transaction_id = self.next_transaction_id()
        info = self._tag_info(id_tag)
        if connector_id == self.charger.spec.connector and info.status == AuthorizationStatus.accepted:
            self.charger.session_event(SessionEvent(
                self.charger.id, SessionEventKind.START, _plausible_ts(timestamp), float(meter_start),
                id_tag=id_tag, transaction_id=transaction_id))
        return call_result.StartTransaction(transaction_id=transaction_id, id_tag_info=info)

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None,
                            id_tag: str | None = None, **_: Any) -> Any:
        self.charger.session_event(SessionEvent(
            self.charger.id, SessionEventKind.STOP, _plausible_ts(timestamp), float(meter_stop),
            id_tag=id_tag, transaction_id=transaction_id, reason=str(reason) if reason is not None else None))
        return call_result.StopTransaction(id_tag_info=self._tag_info(id_tag) if id_tag is not None else None)

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status: str, **_: Any) -> Any:
        log.info("%s: firmware %s", self.charger.id, status)
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, status: str, **_: Any) -> Any:
        log.info("%s: diagnostics %s", self.charger.id, status)
        return call_result.DiagnosticsStatusNotification()


#: A box's clock is believed within this much of ours; otherwise the event is stamped on receipt.
PLAUSIBLE_CLOCK_S = 24 * 3600.0


def _plausible_ts(text: str) -> float:
    now = time.time()
    ts = parse_timestamp(text)
    return ts if ts is not None and abs(ts - now) <= PLAUSIBLE_CLOCK_S else now
