"""One charger as a charge point of the supplier's backend, without a network: sessions become
transactions in a real outbox file (none started twice, across a restart too), the stored
messages go out with the backend's transactionId, and what the backend asks (remote stop and
start, profiles, availability, configuration) becomes a cap that survives a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fake_clock import FakeClock

from controller.allocation.types import Reason, Why
from controller.backend.charge_point import BackendChargePoint, ChargePointSettings
from controller.backend.ocpp_status import connector_status
from controller.records.backend_outbox import BackendOutbox
from controller.records.sessions import Session
from controller.status import ChargerStatus, DeviceStatus
from hal.ocpp.backend_link import StoredCall, backoff_s
from hal.types import ChargerReading, IecState

T0 = 1_790_000_000.0
SETTINGS = ChargePointSettings(charger_id="E1", backend_id="DE-E1", model="heidelberg", phases=3, voltage_v=230.0,
                               id_tag="gridcharge", meter_values_interval_s=60, heartbeat_s=300, firmware="gc test")


class Hooks:
    def __init__(self) -> None:
        self.caps: list[tuple[Any, Any, str]] = []
        self.wakes = 0

    def cap_changed(self, charger_id: str, before: Any, after: Any, what: str) -> None:
        self.caps.append((before, after, what))

    def wake_link(self, charger_id: str) -> None:
        self.wakes += 1


class Point:
    """A charge point on an outbox file, with the backend ids its sessions got."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.outbox = BackendOutbox(path, clock=clock)
        self.outbox.open()
        self.hooks = Hooks()
        self.backend_ids: dict[int, str | None] = {}
        self.cp = BackendChargePoint(SETTINGS, self.outbox, self.hooks, clock=clock,
                                     set_backend_transaction_id=self.backend_ids.__setitem__)

    def deliver_all(self, first_tx_id: int = 1000) -> list[StoredCall]:
        """Play a backend that answers everything (transaction ids from ``first_tx_id``)."""
        sent = []
        tx_id = first_tx_id
        while (stored := self.cp.next_stored()) is not None:
            sent.append(stored)
            answer = {"transaction_id": tx_id, "id_tag_info": {"status": "Accepted"}} \
                if stored.action == "StartTransaction" else {}
            tx_id += stored.action == "StartTransaction"
            self.cp.stored_delivered(stored, answer)
        return sent


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(T0)


def session(sid: int = 1, *, start_wh: float | None = 1000.0, end_ts: float | None = None,
            end_wh: float | None = None, energy: float = 0.0, source: str = "register") -> Session:
    return Session(id=sid, charger_id="E1", start_ts=T0, end_ts=end_ts, start_wh=start_wh, end_wh=end_wh,
                   energy_wh=energy, energy_source=source, updated_ts=end_ts or T0)


def charger(state: IecState | None, command_a: float = 10.0, energy_wh: float | None = 1500.0) -> ChargerStatus:
    reading = ChargerReading(state, (8.0, 8.0, 8.0), 5520.0, energy_wh) if state is not None else None
    device = DeviceStatus("E1", "charger", "heidelberg", "rs485 unit 2", reading is not None, 0.0, None, 0.0, reading)
    return ChargerStatus(device, 3, 0, 1, 6.0, 16.0, command_a, command_a, Reason(Why.CAP, "test"), True, None)


def test_a_session_is_one_transaction_with_the_register_meter_values(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session())
    p.cp.on_session(replace(session(), end_wh=1200.0, energy_wh=200.0))  # a progress save: nothing new
    p.cp.latest = charger(IecState.C, energy_wh=1300.0)
    p.cp.sample_meter_values()
    p.cp.on_session(session(end_ts=T0 + 600, end_wh=1500.0, energy=500.0))
    sent = p.deliver_all()
    assert [s.action for s in sent] == ["StartTransaction", "MeterValues", "StopTransaction"]
    assert sent[0].payload["meterStart"] == 1000 and sent[0].payload["idTag"] == "gridcharge"
    assert sent[1].payload["transactionId"] == 1000 and sent[2].payload["transactionId"] == 1000
    assert sent[2].payload["meterStop"] == 1500 and sent[2].payload["reason"] == "EVDisconnected"
    assert p.backend_ids == {1: "1000"}


def test_a_restart_continues_the_transaction(tmp_path: Path, clock: FakeClock) -> None:
    first = Point(tmp_path / "o.sqlite3", clock)
    first.cp.on_session(session())
    first.deliver_all()
    first.outbox.close()
    again = Point(tmp_path / "o.sqlite3", clock)
    again.cp.on_session(session())  # the recorder resumes the open session at start
    again.cp.on_session(session(end_ts=T0 + 60, end_wh=1100.0, energy=100.0))
    sent = again.deliver_all(first_tx_id=2000)
    assert [s.action for s in sent] == ["StopTransaction"]
    assert sent[0].payload["transactionId"] == 1000


def test_an_earlier_transaction_left_open_is_stopped_before_the_next_starts(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session(1))
    p.cp.on_session(session(2, start_wh=1400.0))  # its end was never seen
    sent = p.deliver_all()
    assert [(s.action, s.payload.get("reason")) for s in sent] == [
        ("StartTransaction", None), ("StopTransaction", "Other"), ("StartTransaction", None)]
    assert sent[1].payload["meterStop"] == 1400


def test_a_session_seen_only_at_its_end_is_started_and_stopped(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session(end_ts=T0 + 60, end_wh=1100.0, energy=100.0))
    p.cp.on_session(replace(session(2, end_ts=T0 + 60), start_ts=None))  # unknown start: nothing to send
    sent = p.deliver_all()
    assert [s.action for s in sent] == ["StartTransaction", "StopTransaction"]
    assert sent[1].payload["meterStop"] - sent[0].payload["meterStart"] == 100


def test_counted_energy_counts_from_zero(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session(start_wh=None, source="counted"))
    p.cp.on_session(session(start_wh=None, source="counted", end_ts=T0 + 60, energy=250.4))
    sent = p.deliver_all()
    assert sent[0].payload["meterStart"] == 0 and sent[1].payload["meterStop"] == 250


def test_a_message_the_backend_refuses_three_times_is_dropped(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session())
    for _ in range(3):
        stored = p.cp.next_stored()
        assert stored is not None and stored.action == "StartTransaction"
        p.cp.stored_refused(stored, "InternalError: no")
    assert p.outbox.dropped() == 1
    p.cp.latest = charger(IecState.C)
    p.cp.sample_meter_values()  # its transaction never got an id: dropped too, never sent without one
    assert p.cp.next_stored() is None and p.outbox.dropped() == 2


def test_remote_stop_pauses_until_remote_start_or_the_car_leaves(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session())
    p.cp.latest = charger(IecState.C, energy_wh=1300.0)
    p.deliver_all()
    assert p.cp.handle("RemoteStopTransaction", {"transaction_id": 999}) == {"status": "Rejected"}
    assert p.cp.handle("RemoteStopTransaction", {"transaction_id": 1000}) == {"status": "Accepted"}
    assert p.cp.cap_now() == (0.0, "backend")
    p.cp.on_session(replace(session(), energy_wh=300.0))  # progress: no new transaction
    stop = p.deliver_all()
    assert [(s.action, s.payload["reason"], s.payload["meterStop"]) for s in stop] == [
        ("StopTransaction", "Remote", 1300)]
    assert p.cp.handle("RemoteStartTransaction", {"id_tag": "CARD-1"}) == {"status": "Accepted"}
    assert p.cp.cap_now() == (None, None)
    started = p.deliver_all(first_tx_id=1001)
    assert [(s.action, s.payload["idTag"], s.payload["meterStart"]) for s in started] == [
        ("StartTransaction", "CARD-1", 1300)]
    assert [what for _, _, what in p.hooks.caps] == ["RemoteStopTransaction", "RemoteStartTransaction"]
    p.cp.handle("RemoteStopTransaction", {"transaction_id": 1001})
    p.cp.on_session(session(end_ts=T0 + 60, end_wh=1400.0, energy=400.0))  # the car leaves: the pause ends
    assert p.cp.cap_now() == (None, None)


PROFILE = {"charging_profile_id": 3, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
           "charging_profile_kind": "Relative",
           "charging_schedule": {"charging_rate_unit": "A", "charging_schedule_period": [{"start_period": 0,
                                                                                          "limit": 8}]}}


def test_profiles_availability_and_configuration_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    p = Point(tmp_path / "o.sqlite3", clock)
    p.cp.on_session(session())
    p.deliver_all()
    bad = {**PROFILE, "charging_profile_purpose": "Nonsense"}
    assert p.cp.handle("SetChargingProfile", {"connector_id": 1, "cs_charging_profiles": bad}) == {
        "status": "Rejected"}
    assert p.cp.cap_now() == (None, None)
    assert p.cp.handle("SetChargingProfile", {"connector_id": 1, "cs_charging_profiles": PROFILE}) == {
        "status": "Accepted"}
    cap_a, reason = p.cp.cap_now()
    assert cap_a == 8 and reason is not None and reason.startswith("backend profile")
    assert p.cp.handle("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "120"}) == {"status": "Accepted"}
    assert p.cp.handle("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "abc"}) == {"status": "Rejected"}
    p.outbox.close()

    again = Point(tmp_path / "o.sqlite3", clock)
    assert again.cp.cap_now()[0] == 8 and again.cp.heartbeat_s() == 120
    assert again.cp.handle("ClearChargingProfile", {"id": 99}) == {"status": "Unknown"}
    assert again.cp.handle("ClearChargingProfile", {"id": 3}) == {"status": "Accepted"}
    assert again.cp.cap_now() == (None, None)
    assert again.cp.handle("ChangeAvailability", {"connector_id": 0, "type": "Inoperative"}) == {"status": "Accepted"}
    assert again.cp.cap_now() == (0.0, "backend: unavailable")
    again.cp.latest = charger(IecState.B)
    assert again.cp.status_now() == ("Unavailable", "Unavailable", "NoError")
    assert again.cp.handle("RemoteStartTransaction", {"id_tag": "X"}) == {"status": "Rejected"}


@pytest.mark.parametrize(("state", "command_a", "expected"), [
    (IecState.A, 10.0, "Available"),
    (IecState.B, 0.0, "SuspendedEVSE"),
    (IecState.B, 10.0, "SuspendedEV"),
    (IecState.C, 10.0, "Charging"),
    (IecState.D, 10.0, "Charging"),
    (IecState.E, 10.0, "Faulted"),
    (IecState.F, 10.0, "Faulted"),
    (None, 10.0, "Faulted"),
])
def test_the_status_the_backend_is_told(state: IecState | None, command_a: float, expected: str) -> None:
    assert connector_status(charger(state, command_a), inoperative=False)[1] == expected


def test_backoff_doubles_from_one_second_to_five_minutes_jittered() -> None:
    top = [backoff_s(n, lambda low, high: high) for n in range(12)]
    assert top[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and top[-1] == 300.0 and max(top) == 300.0
    assert backoff_s(3, lambda low, high: low) == 6.0  # 75 % of 8 s
