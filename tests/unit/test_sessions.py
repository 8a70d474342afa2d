"""Unit tests for controller.records.sessions (the SQLite session log: temp dir, real SQLite, real
writer thread, injected clock) and controller.records.session_recorder fed with hand-built
``Status`` objects and events pushed from other threads."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_clock import FakeClock
from record_writers import writers

from controller.records.record_writer import DAY_S
from controller.records.session_recorder import SessionRecorder
from controller.records.sessions import RETENTION_S, Session, SessionLog, SessionLogFileError
from controller.records.sqlite_file import used_bytes
from controller.status import EMPTY_STATUS, ChargerStatus, DeviceStatus, Status
from controller.allocation.types import Reason, Why
from hal.types import ChargerReading, IecState, SessionEvent, SessionEventKind

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "sessions.sqlite3"


@pytest.fixture()
def make_log(path: Path, clock: FakeClock) -> Iterator[Callable[..., SessionLog]]:
    with writers(SessionLog, path, clock) as build:
        yield build


def session(sid: int, start: float | None, end: float | None = None, charger: str = "E1",
            energy: float | None = 0.0) -> Session:
    return Session(sid, charger, start, end, 100.0, 100.0 + (energy or 0.0), energy, "register",
                   updated_ts=end or start or T0)


def test_a_session_saved_again_is_one_row_with_its_latest_values(make_log: Callable[..., SessionLog]) -> None:
    log = make_log()
    first = session(log.new_id(), T0)
    log.save(first)
    log.save(dataclasses.replace(first, end_ts=T0 + 60, energy_wh=1234.5, end_wh=1334.5, stop_reason="car gone"))
    log.flush()
    (row,) = log.query()
    assert (row.id, row.end_ts, row.energy_wh, row.stop_reason, row.open) == (first.id, T0 + 60, 1234.5,
                                                                              "car gone", False)


def test_query_by_start_time_and_limit(make_log: Callable[..., SessionLog]) -> None:
    log = make_log()
    for i in range(5):
        log.save(session(log.new_id(), T0 + 100 * i, T0 + 100 * i + 50))
    log.save(session(log.new_id(), None, T0 + 250))  # unknown start: counts by its end
    log.flush()
    assert [s.id for s in log.query()] == [1, 2, 3, 6, 4, 5]
    assert [s.id for s in log.query(T0 + 100, T0 + 300)] == [2, 3, 6]
    assert [s.id for s in log.query(limit=2)] == [1, 2]


def test_backend_transaction_id_is_set_by_session_id_and_kept_by_later_saves(
        make_log: Callable[..., SessionLog]) -> None:
    log = make_log()
    open_one = session(log.new_id(), T0)
    log.save(open_one)
    log.set_backend_transaction_id(open_one.id, "backend-77")
    log.set_backend_transaction_id(999, "nobody")  # changes nothing
    log.save(dataclasses.replace(open_one, end_ts=T0 + 5))
    log.flush()
    (row,) = log.query()
    assert row.backend_transaction_id == "backend-77" and row.end_ts == T0 + 5


def test_open_sessions_and_ids_go_on_after_a_restart(make_log: Callable[..., SessionLog]) -> None:
    log = make_log()
    log.save(session(log.new_id(), T0, T0 + 10))
    log.save(session(log.new_id(), T0 + 20, charger="E2"))
    log.stop()
    again = make_log()
    assert list(again.open_sessions()) == ["E2"] and again.open_sessions()["E2"].id == 2
    assert again.new_id() == 3


def test_prune_keeps_open_sessions_and_bounds_the_rows(make_log: Callable[..., SessionLog],
                                                       clock: FakeClock) -> None:
    log = make_log(max_rows=3)
    log.save(session(log.new_id(), T0 - RETENTION_S - 2 * DAY_S, T0 - RETENTION_S - DAY_S))  # too old
    log.save(session(log.new_id(), T0 - RETENTION_S - 2 * DAY_S))  # too old, but still open
    for i in range(4):
        log.save(session(log.new_id(), T0 + i, T0 + i + 1))
    log.stop()
    clock.advance(1.0)
    log = make_log(max_rows=3)  # prunes at start
    log.flush()
    assert [s.id for s in log.query()] == [2, 5, 6]


def test_a_corrupt_file_is_kept_aside_and_reported(path: Path, make_log: Callable[..., SessionLog]) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    log = make_log()
    (fault,) = log.faults()
    assert "session log: sessions.sqlite3 was corrupt" in fault and "a new session log was started" in fault
    assert len(list(path.parent.glob("sessions.sqlite3.corrupt-*"))) == 1
    log.save(session(log.new_id(), T0))
    log.flush()
    assert len(log.query()) == 1


def test_a_foreign_file_is_kept_aside(path: Path, make_log: Callable[..., SessionLog]) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sessions(id INTEGER PRIMARY KEY, x TEXT)")
        conn.execute("PRAGMA user_version=1")
    make_log()
    assert len(list(path.parent.glob("sessions.sqlite3.foreign-*"))) == 1


def test_a_state_dir_that_is_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(SessionLogFileError, match="session log .* cannot be used"):
        SessionLog(tmp_path / "state" / "sessions.sqlite3").open()


# --------------------------------------------------------------------------- the recorder


def charger(cid: str, reading: ChargerReading | None) -> ChargerStatus:
    device = DeviceStatus(cid, "charger", "sim", "sim", reading is not None, 0.0, None, 0.0, reading)
    return ChargerStatus(device, 3, 1, 1, 6.0, 16.0, 0.0, None, Reason(Why.MAXIMUM, "test"), True, None)


def cycle(ts: float, **readings: ChargerReading | None) -> Status:
    return dataclasses.replace(EMPTY_STATUS, wall_time=ts,
                               chargers=tuple(charger(cid, r) for cid, r in readings.items()))


def test_recorder_derives_modbus_sessions_and_takes_box_events(make_log: Callable[..., SessionLog]) -> None:
    log = make_log()
    recorder = SessionRecorder(log, reporting={"OC1"})
    recorder.on_cycle(cycle(T0, E1=ChargerReading(IecState.A, energy_wh=10.0), OC1=None))
    recorder.on_cycle(cycle(T0 + 1, E1=ChargerReading(IecState.C, energy_wh=10.0),
                            OC1=ChargerReading(IecState.C, energy_wh=0.0)))  # a reporting box: ignored here
    start = SessionEvent("OC1", SessionEventKind.START, T0 + 2, 500.0, id_tag="TAG", transaction_id=9)
    pusher = threading.Thread(target=recorder.record_event, args=(start,))  # as the OCPP thread would
    pusher.start()
    pusher.join()
    recorder.on_cycle(cycle(T0 + 3, E1=ChargerReading(IecState.A, energy_wh=70.0), OC1=None))
    recorder.record_event(SessionEvent("OC1", SessionEventKind.STOP, T0 + 4, 800.0, reason="Local"))
    log.flush()
    got = {(s.charger_id, s.start_ts, s.end_ts, s.energy_wh, s.id_tag) for s in log.query()}
    assert got == {("E1", T0 + 1, T0 + 3, 60.0, None), ("OC1", T0 + 2, T0 + 4, 300.0, "TAG")}


def test_recorder_continues_a_session_left_open(make_log: Callable[..., SessionLog]) -> None:
    log = make_log()
    recorder = SessionRecorder(log)
    recorder.on_cycle(cycle(T0, E1=ChargerReading(IecState.C, energy_wh=100.0)))
    recorder.on_cycle(cycle(T0 + 1, E1=ChargerReading(IecState.C, energy_wh=150.0)))
    recorder.save_open()
    log.stop()
    log = make_log()
    recorder = SessionRecorder(log)
    recorder.on_cycle(cycle(T0 + 50, E1=ChargerReading(IecState.C, energy_wh=300.0)))
    recorder.on_cycle(cycle(T0 + 51, E1=ChargerReading(IecState.A, energy_wh=300.0)))
    log.flush()
    (only,) = log.query()
    assert (only.start_ts, only.end_ts, only.energy_wh) == (T0, T0 + 51, 200.0)


def test_a_session_takes_about_130_bytes(make_log: Callable[..., SessionLog], path: Path) -> None:
    """The figure behind the retention bound (docs/sessions.md): 20,000 sessions with an idTag,
    a transaction id and a stop reason, both indexes counted."""
    log = make_log(max_queue=30_000)
    for i in range(20_000):
        start = T0 + i * 3600.123
        log.save(Session(log.new_id(), f"E{i % 10}", start, start + 7000.456, 1203311.0 + i, 1221733.0 + i,
                         18422.0, "register", id_tag="04A2B3C4D5E6F7", transaction_id=100_000 + i,
                         stop_reason="EVDisconnected", updated_ts=start + 7000.456))
    log.flush(30)
    conn = sqlite3.connect(path)
    try:
        per_session = used_bytes(conn) / 20_000
    finally:
        conn.close()
    print(f"bytes per session: {per_session:.0f}")
    assert 100 <= per_session <= 160


def test_session_energy_now_for_the_live_views(make_log: Callable[..., SessionLog]) -> None:
    """The open session's energy (derived ones counted every cycle, a box's own from its register),
    the last session's after it ended, until the next car; 0 before any session."""
    recorder = SessionRecorder(make_log(), reporting={"OC1"})
    recorder.on_cycle(cycle(T0, E1=ChargerReading(IecState.A, energy_wh=10.0), E2=None, OC1=None))
    status = cycle(T0, E1=ChargerReading(IecState.A, energy_wh=10.0), E2=None, OC1=None)
    assert recorder.session_energy_wh(status) == {"E1": 0.0, "E2": 0.0, "OC1": 0.0}
    recorder.on_cycle(cycle(T0 + 1, E1=ChargerReading(IecState.C, energy_wh=10.0)))
    recorder.on_cycle(cycle(T0 + 2, E1=ChargerReading(IecState.C, energy_wh=35.0)))
    recorder.record_event(SessionEvent("OC1", SessionEventKind.START, T0 + 2, 500.0))
    status = cycle(T0 + 2, E1=ChargerReading(IecState.C, energy_wh=35.0), OC1=ChargerReading(IecState.C, energy_wh=620.0))
    assert recorder.session_energy_wh(status) == {"E1": 25.0, "OC1": 120.0}
    offline = cycle(T0 + 2, OC1=None)  # a box's register cannot be read: the energy is not known now
    assert recorder.session_energy_wh(offline) == {"OC1": None}
    recorder.on_cycle(cycle(T0 + 3, E1=ChargerReading(IecState.A, energy_wh=40.0)))
    recorder.record_event(SessionEvent("OC1", SessionEventKind.STOP, T0 + 4, 700.0))
    status = cycle(T0 + 4, E1=ChargerReading(IecState.A, energy_wh=40.0), OC1=ChargerReading(IecState.A, energy_wh=700.0))
    assert recorder.session_energy_wh(status) == {"E1": 30.0, "OC1": 200.0}  # kept after the car left
    recorder.on_cycle(cycle(T0 + 5, E1=ChargerReading(IecState.B, energy_wh=40.0)))  # the next car
    assert recorder.session_energy_wh(cycle(T0 + 5, E1=ChargerReading(IecState.B, energy_wh=40.0))) == {"E1": 0.0}
