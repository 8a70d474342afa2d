"""One charger as a charge point of the supplier's backend: what it tells the backend and what it
does with what the backend asks (the delegate of its ``hal.ocpp.backend_link.BackendLink``).

Everything here runs on the gateway's thread, except ``cap_now`` (the control loop asks it every
cycle: it reads one immutable snapshot, never the disk, never a lock held by I/O).

**Transactions** follow gridcharge's charging sessions (the session log): a session that opens
starts a transaction (meterStart from the session), one that ends stops it (reason
EVDisconnected). A session row seen again (progress saves, a restart continuing the session)
starts nothing: the outbox knows the session's transaction (``transaction_for_session``), so a
restart never sends a second StartTransaction. An open transaction of an earlier session (its
end was never seen: gridcharge was down when the car left) is stopped (reason Other) before the
next one starts.

**From the backend** (each change kept in the outbox's state table, so it survives a restart,
and recorded in the grid log by the gateway when it changes what the charger may draw):

- RemoteStopTransaction of the running transaction: the charger is paused (``lreason``
  "backend") and the transaction stopped (reason Remote), as a charge point does; the pause lasts
  until RemoteStartTransaction or until the car leaves.
- RemoteStartTransaction: the pause ends; with a car connected and no transaction, one starts at
  once with the given idTag (otherwise the idTag is used for the next car).
- SetChargingProfile / ClearChargingProfile: the profiles in force cap the charger
  (``controller.backend.profiles``; ``lreason`` "backend profile ...").
- ChangeAvailability Inoperative: paused (``lreason`` "backend: unavailable") until Operative.
- GetConfiguration / ChangeConfiguration: the keys of ``CONFIGURATION`` (HeartbeatInterval and
  MeterValueSampleInterval can be changed), TriggerMessage (BootNotification, Heartbeat,
  StatusNotification, MeterValues), Reset (the connection is closed and boots again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from controller.backend import profiles as profile_rules
from controller.backend.ocpp_status import (
    charger_reading,
    connector_status,
    meter_start_wh,
    meter_stop_wh,
    meter_values_payload,
    ocpp_time,
)
from controller.records.backend_outbox import BackendOutbox, Transaction
from controller.records.sessions import Session
from controller.status import ChargePointStatus, ChargerStatus
from hal.ocpp.backend_link import StoredCall

log = logging.getLogger(__name__)

VENDOR = "gridcharge"
MAX_REFUSALS = 3  # a stored message the backend refuses this often is dropped (with a log line)
SAMPLED_DATA = "Energy.Active.Import.Register,Power.Active.Import,Current.Import"
REMOTE_REASON = "backend"
UNAVAILABLE_REASON = "backend: unavailable"


@dataclass(frozen=True)
class BackendAsks:
    """What the backend asks of the charger's current, as of the last change (immutable, read by
    the control loop)."""

    inoperative: bool = False
    remote_paused: bool = False
    profiles: tuple[profile_rules.ChargingProfile, ...] = ()
    transaction_start_ts: float | None = None


@dataclass(frozen=True)
class ChargePointSettings:
    charger_id: str
    backend_id: str
    model: str
    phases: int
    voltage_v: float
    id_tag: str
    meter_values_interval_s: int
    heartbeat_s: int
    firmware: str


class GatewayHooks(Protocol):
    """What a charge point tells the gateway (on the gateway's thread)."""

    def cap_changed(self, charger_id: str, before: tuple[float | None, str | None],
                    after: tuple[float | None, str | None], what: str) -> None: ...
    def wake_link(self, charger_id: str) -> None: ...


class BackendChargePoint:
    """One charger's charge point (module doc)."""

    def __init__(self, settings: ChargePointSettings, outbox: BackendOutbox, hooks: GatewayHooks, *,
                 set_backend_transaction_id: Callable[[int, str | None], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.outbox = outbox
        self.hooks = hooks
        self._set_backend_tx = set_backend_transaction_id
        self._clock = clock
        self.latest: ChargerStatus | None = None
        self.open_session: Session | None = None
        self.next_id_tag: str | None = None
        self.meter_values_interval_s = int(self._state("meter_values_interval_s", settings.meter_values_interval_s))
        self.heartbeat_interval_s = int(self._state("heartbeat_s", settings.heartbeat_s))
        saved_profiles = tuple(profile_rules.profile_from_json(p) for p in self._state("profiles", []) or [])
        open_tx = outbox.open_transaction(settings.charger_id)
        self.facts = BackendAsks(inoperative=bool(self._state("inoperative", False)),
                              remote_paused=bool(self._state("remote_paused", False)),
                              profiles=saved_profiles,
                              transaction_start_ts=open_tx.started_ts if open_tx is not None else None)
        # the link's state, for the status
        self.connected = False
        self.state = "connecting"
        self.reason: str | None = None
        self.since: float | None = None
        self.sent_status: str | None = None

    # ---- persisted state ---------------------------------------------------------------------
    def _state(self, key: str, default: Any) -> Any:
        value = self.outbox.get_state(self.s.backend_id, key)
        return default if value is None else value

    def _set_facts(self, facts: BackendAsks, what: str) -> None:
        """Keep, persist and publish what the backend asks; the gateway records a change of the cap."""
        before = self.cap_now()
        self.outbox.set_state(self.s.backend_id, "inoperative", facts.inoperative)
        self.outbox.set_state(self.s.backend_id, "remote_paused", facts.remote_paused)
        self.outbox.set_state(self.s.backend_id, "profiles",
                              [profile_rules.profile_to_json(p) for p in facts.profiles])
        self.facts = facts
        after = self.cap_now()
        if before != after:
            self.hooks.cap_changed(self.s.charger_id, before, after, what)

    # ---- the control loop's view ---------------------------------------------------------------
    def cap_now(self, now: float | None = None) -> tuple[float | None, str | None]:
        """The backend's cap on the charger now (any thread): (None, None) when none."""
        facts = self.facts
        if facts.inoperative:
            return 0.0, UNAVAILABLE_REASON
        if facts.remote_paused:
            return 0.0, REMOTE_REASON
        if not facts.profiles:
            return None, None
        return profile_rules.cap_at(facts.profiles, self._clock() if now is None else now, phases=self.s.phases,
                                    voltage_v=self.s.voltage_v, transaction_start_ts=facts.transaction_start_ts)

    def status(self) -> ChargePointStatus:
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        cap_a, cap_reason = self.cap_now()
        return ChargePointStatus(
            charger_id=self.s.charger_id, backend_id=self.s.backend_id, connected=self.connected, state=self.state,
            reason=self.reason, since=self.since, queued=self.outbox.pending(self.s.backend_id),
            ocpp_status=self.sent_status, transaction_id=open_tx.backend_tx_id if open_tx is not None else None,
            cap_a=cap_a, cap_reason=cap_reason)

    # ---- sessions → transactions --------------------------------------------------------------
    def on_session(self, session: Session) -> None:
        """A session row of this charger was saved (module doc: how it maps to transactions)."""
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        if session.open:
            self.open_session = session
            if open_tx is not None and open_tx.session_id == session.id:
                return
            if self.outbox.transaction_for_session(self.s.charger_id, session.id) is not None:
                return  # stopped by the backend; the session goes on without a transaction
            if open_tx is not None:
                self._stop(open_tx, meter_start_wh(session) if session.energy_source == "register"
                           else open_tx.meter_start_wh, session.start_ts or self._clock(), "Other")
            self._start(session, meter_start_wh(session), session.start_ts or self._clock())
            return
        if self.open_session is not None and self.open_session.id == session.id:
            self.open_session = None
        self.next_id_tag = None
        if self.facts.remote_paused:  # a remote stop lasts until the car leaves
            self._set_facts(replace(self.facts, remote_paused=False), "the car left")
        if open_tx is not None and open_tx.session_id == session.id:
            self._stop(open_tx, meter_stop_wh(session), session.end_ts or self._clock(),
                       "EVDisconnected" if session.stop_reason in (None, "car gone") else "Other")
            return
        if self.outbox.transaction_for_session(self.s.charger_id, session.id) is not None:
            return
        if session.start_ts is None:
            log.warning("backend %s: session %d ended, but its start is not known: no transaction sent",
                        self.s.backend_id, session.id)
            return
        tx = self._start(session, meter_start_wh(session), session.start_ts)  # both ends missed while down
        self._stop(tx, meter_stop_wh(session), session.end_ts or self._clock(), "EVDisconnected")

    def _start(self, session: Session | None, meter_wh: int, ts: float) -> Transaction:
        id_tag = self.next_id_tag or (session.id_tag if session is not None and session.id_tag else self.s.id_tag)
        tx = self.outbox.start_transaction(charge_point=self.s.backend_id, charger_id=self.s.charger_id,
                                           session_id=session.id if session is not None else None,
                                           id_tag=id_tag[:20], meter_start_wh=meter_wh, timestamp=ocpp_time(ts))
        self.facts = replace(self.facts, transaction_start_ts=ts)
        log.info("backend %s: transaction %d started (session %s, meter %d Wh)", self.s.backend_id, tx.tx_key,
                 session.id if session is not None else "-", meter_wh)
        self.hooks.wake_link(self.s.charger_id)
        return tx

    def _stop(self, tx: Transaction, meter_wh: int, ts: float, reason: str) -> None:
        self.outbox.stop_transaction(tx.tx_key, meter_stop_wh=max(meter_wh, tx.meter_start_wh),
                                     timestamp=ocpp_time(ts), reason=reason)
        profiles_left = profile_rules.end_transaction(self.facts.profiles)
        facts = replace(self.facts, transaction_start_ts=None)
        if profiles_left != self.facts.profiles:
            self._set_facts(replace(facts, profiles=profiles_left), "transaction ended")
        else:
            self.facts = facts
        log.info("backend %s: transaction %d stopped (%s, meter %d Wh)", self.s.backend_id, tx.tx_key, reason,
                 meter_wh)
        self.hooks.wake_link(self.s.charger_id)

    def _meter_now_wh(self) -> int:
        """The register now (the latest reading), else the open session's estimate."""
        reading = charger_reading(self.latest) if self.latest is not None else None
        if reading is not None and reading.energy_wh is not None:
            return int(round(reading.energy_wh))
        if self.open_session is not None:
            return meter_stop_wh(self.open_session)
        return 0

    def sample_meter_values(self) -> None:
        """The periodic MeterValues of a running transaction (stored, then sent)."""
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        reading = charger_reading(self.latest) if self.latest is not None else None
        if open_tx is None or reading is None:
            return
        payload = meter_values_payload(reading, self._clock())
        if payload is not None:
            self.outbox.add_meter_values(open_tx.tx_key, payload)
            self.hooks.wake_link(self.s.charger_id)

    # ---- hal.ocpp.backend_link.ChargePointDelegate ------------------------------------------------
    def boot_payload(self) -> dict[str, Any]:
        return {"charge_point_vendor": VENDOR, "charge_point_model": self.s.model[:20],
                "charge_point_serial_number": self.s.backend_id[:25], "firmware_version": self.s.firmware[:50]}

    def status_now(self) -> tuple[str, str, str]:
        return connector_status(self.latest, inoperative=self.facts.inoperative)

    def meter_values_now(self) -> dict[str, Any] | None:
        reading = charger_reading(self.latest) if self.latest is not None else None
        if reading is None:
            return None
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        tx_id = open_tx.backend_tx_id if open_tx is not None else None
        return meter_values_payload(reading, self._clock(), context="Trigger", transaction_id=tx_id)

    def next_stored(self) -> StoredCall | None:
        while (message := self.outbox.first(self.s.backend_id)) is not None:
            payload = dict(message.payload)
            if message.action != "StartTransaction":
                tx = self.outbox.transaction(message.tx_key) if message.tx_key is not None else None
                if tx is None or tx.backend_tx_id is None:
                    self.outbox.drop(message.seq, "its StartTransaction was never answered with a transactionId")
                    continue
                payload["transactionId"] = tx.backend_tx_id
                if message.action == "StopTransaction":
                    payload.setdefault("idTag", tx.id_tag)
            return StoredCall(message.seq, message.action, payload, message.tx_key)
        return None

    def stored_delivered(self, stored: StoredCall, answer: dict[str, Any]) -> None:
        if stored.action != "StartTransaction":
            self.outbox.delivered(stored.seq)
            return
        backend_tx = int(answer.get("transaction_id") or 0)
        self.outbox.delivered(stored.seq, backend_tx_id=backend_tx)
        status = (answer.get("id_tag_info") or {}).get("status", "Accepted")
        if status != "Accepted":
            log.warning("backend %s: the backend answered the transaction's idTag with %s", self.s.backend_id, status)
        tx = self.outbox.transaction(stored.tx_key) if stored.tx_key is not None else None
        if tx is not None and tx.session_id is not None:
            self._set_backend_tx(tx.session_id, str(backend_tx))
        log.info("backend %s: StartTransaction delivered, the backend's transactionId is %d", self.s.backend_id,
                 backend_tx)

    def stored_refused(self, stored: StoredCall, error: str) -> None:
        attempts = self.outbox.failed(stored.seq)
        if attempts >= MAX_REFUSALS:
            self.outbox.drop(stored.seq, f"the backend refused it {attempts} times, last: {error}")

    def link_changed(self, connected: bool, state: str, reason: str | None) -> None:
        if connected != self.connected:
            self.since = self._clock()
        self.connected = connected
        self.state = state
        if reason is not None or connected:
            self.reason = reason
        if not connected:
            self.sent_status = None

    def status_sent(self, connector_status: str) -> None:
        self.sent_status = connector_status

    def heartbeat_s(self) -> int:
        return self.heartbeat_interval_s

    def handle(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"_on_{action}", None)
        if handler is None:
            return {"status": "Rejected"}
        answer: dict[str, Any] = handler(**request)
        log.info("backend %s: %s %s → %s", self.s.backend_id, action, request, answer.get("status", "answered"))
        return answer

    # ---- the backend's calls ---------------------------------------------------------------------
    def _on_RemoteStartTransaction(self, id_tag: str, connector_id: int | None = None, **_: Any) -> dict[str, Any]:
        if connector_id not in (None, 1):
            return {"status": "Rejected"}
        if self.facts.inoperative:
            return {"status": "Rejected"}
        self.next_id_tag = id_tag
        if self.facts.remote_paused:
            self._set_facts(replace(self.facts, remote_paused=False), "RemoteStartTransaction")
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        reading = charger_reading(self.latest) if self.latest is not None else None
        if open_tx is None and self.open_session is not None and reading is not None and reading.state.connected:
            self._start(self.open_session, self._meter_now_wh(), self._clock())
        return {"status": "Accepted"}

    def _on_RemoteStopTransaction(self, transaction_id: int, **_: Any) -> dict[str, Any]:
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        if open_tx is None or open_tx.backend_tx_id != transaction_id:
            return {"status": "Rejected"}
        self._set_facts(replace(self.facts, remote_paused=True), "RemoteStopTransaction")
        self._stop(open_tx, self._meter_now_wh(), self._clock(), "Remote")
        return {"status": "Accepted"}

    def _on_SetChargingProfile(self, connector_id: int, cs_charging_profiles: dict[str, Any],
                               **_: Any) -> dict[str, Any]:
        open_tx = self.outbox.open_transaction(self.s.charger_id)
        if connector_id not in (0, 1):
            return {"status": "Rejected"}
        try:
            profile = profile_rules.parse_profile(
                connector_id, cs_charging_profiles, self._clock(), transaction_active=open_tx is not None,
                transaction_id=open_tx.backend_tx_id if open_tx is not None else None)
            installed = profile_rules.install(self.facts.profiles, profile)
        except profile_rules.ProfileError as exc:
            log.warning("backend %s: charging profile rejected: %s", self.s.backend_id, exc)
            return {"status": "Rejected"}
        self._set_facts(replace(self.facts, profiles=installed), f"SetChargingProfile {profile.charging_profile_id}")
        return {"status": "Accepted"}

    def _on_ClearChargingProfile(self, id: int | None = None, connector_id: int | None = None,
                                 charging_profile_purpose: str | None = None, stack_level: int | None = None,
                                 **_: Any) -> dict[str, Any]:
        remaining, removed = profile_rules.clear(self.facts.profiles, profile_id=id, connector_id=connector_id,
                                                 purpose=charging_profile_purpose, stack_level=stack_level)
        if not removed:
            return {"status": "Unknown"}
        self._set_facts(replace(self.facts, profiles=remaining), "ClearChargingProfile")
        return {"status": "Accepted"}

    def _on_ChangeAvailability(self, connector_id: int, type: str, **_: Any) -> dict[str, Any]:
        if connector_id not in (0, 1):
            return {"status": "Rejected"}
        inoperative = type == "Inoperative"
        if inoperative != self.facts.inoperative:
            self._set_facts(replace(self.facts, inoperative=inoperative), f"ChangeAvailability {type}")
            self.hooks.wake_link(self.s.charger_id)
        return {"status": "Accepted"}

    def _configuration(self) -> dict[str, tuple[str, bool]]:
        """Key → (value, read-only)."""
        return {
            "HeartbeatInterval": (str(self.heartbeat_interval_s), False),
            "MeterValueSampleInterval": (str(self.meter_values_interval_s), False),
            "MeterValuesSampledData": (SAMPLED_DATA, True),
            "NumberOfConnectors": ("1", True),
            "SupportedFeatureProfiles": ("Core,SmartCharging,RemoteTrigger", True),
            "AuthorizeRemoteTxRequests": ("false", True),
            "StopTransactionOnEVSideDisconnect": ("true", True),
            "ChargeProfileMaxStackLevel": (str(profile_rules.MAX_STACK_LEVEL), True),
            "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", True),
            "ChargingScheduleMaxPeriods": (str(profile_rules.MAX_PERIODS), True),
            "MaxChargingProfilesInstalled": (str(profile_rules.MAX_PROFILES), True),
            "TransactionMessageAttempts": (str(MAX_REFUSALS), True),
        }

    def _on_GetConfiguration(self, key: list[str] | None = None, **_: Any) -> dict[str, Any]:
        known = self._configuration()
        asked = key or list(known)
        return {"configuration_key": [{"key": k, "readonly": known[k][1], "value": known[k][0]}
                                      for k in asked if k in known],
                "unknown_key": [k for k in asked if k not in known]}

    def _on_ChangeConfiguration(self, key: str, value: str, **_: Any) -> dict[str, Any]:
        known = self._configuration()
        if key not in known:
            return {"status": "NotSupported"}
        if known[key][1]:
            return {"status": "Rejected"}
        try:
            seconds = int(value)
        except ValueError:
            return {"status": "Rejected"}
        if key == "HeartbeatInterval" and 30 <= seconds <= 86400:
            self.heartbeat_interval_s = seconds
            self.outbox.set_state(self.s.backend_id, "heartbeat_s", seconds)
            return {"status": "Accepted"}
        if key == "MeterValueSampleInterval" and 1 <= seconds <= 3600:
            self.meter_values_interval_s = seconds
            self.outbox.set_state(self.s.backend_id, "meter_values_interval_s", seconds)
            return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _on_TriggerMessage(self, requested_message: str, connector_id: int | None = None, **_: Any) -> dict[str, Any]:
        if requested_message in ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues"):
            return {"status": "Accepted"}
        return {"status": "NotImplemented"}

    def _on_Reset(self, type: str, **_: Any) -> dict[str, Any]:
        return {"status": "Accepted"}


__all__ = ["BackendChargePoint", "BackendAsks", "ChargePointSettings", "GatewayHooks", "REMOTE_REASON",
           "UNAVAILABLE_REASON"]
