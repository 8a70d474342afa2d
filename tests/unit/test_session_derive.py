"""Unit tests for controller.records.session_derive: what starts and ends a session, and its
energy, as table tests and hypothesis properties of the pure functions."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.records.session_derive import (
    STOP_CAR_GONE,
    STOP_NEW_START,
    Track,
    box_event,
    resume,
    step,
)
from controller.records.sessions import Session
from hal.types import ChargerReading, IecState, SessionEvent, SessionEventKind

T0 = 1_767_225_600.0
A, B, C, E = IecState.A, IecState.B, IecState.C, IecState.E
Reading = ChargerReading | None


def run(readings: Sequence[tuple[float, Reading]], track: Track | None = None,
        **kwargs: float) -> tuple[Track, list[Session]]:
    """Feed ``(seconds after T0, reading)`` to ``step``; the final track and every saved row."""
    ids = itertools.count(1)
    track = track or Track()
    saved: list[Session] = []
    for dt, reading in readings:
        track, rows = step(track, reading, T0 + dt, charger_id="E1", new_id=lambda: next(ids), **kwargs)
        saved.extend(rows)
    return track, saved


def r(state: IecState, wh: float | None = None, power_w: float | None = None,
      current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> ChargerReading:
    return ChargerReading(state, current_a=current_a, power_w=power_w, energy_wh=wh)


def final(saved: list[Session]) -> dict[int, Session]:
    """The last row saved of each session: what the file holds."""
    return {s.id: s for s in saved}


@pytest.mark.parametrize("readings, expected", [
    # (start offset, end offset or None, energy, source)
    ([(0, r(A, 100)), (1, r(B, 100)), (2, r(C, 150)), (3, r(A, 400))], [(1, 3, 300.0, "register")]),
    ([(0, r(C, 100)), (1, r(C, 200))], [(0, None, 0.0, "register")]),  # found connected at start
    ([(0, r(A, 100)), (1, None), (2, r(B, 100)), (3, None), (4, r(A, 160))], [(2, 4, 60.0, "register")]),
    ([(0, r(B, 100)), (1, r(E, 150)), (2, r(C, 200)), (3, r(A, 200))], [(0, 3, 100.0, "register")]),
    ([(0, r(A)), (1, r(B)), (2, r(A)), (3, r(C)), (4, r(A))],
     [(1, 2, 0.0, "counted"), (3, 4, 0.0, "counted")]),
    ([(0, r(A, 100)), (1, r(E, 100)), (2, r(A, 100))], []),  # an error state starts nothing
    ([(0, None), (1, None)], []),  # an offline charger starts nothing
])
def test_what_starts_and_ends_a_session(readings: list[tuple[float, Reading]],
                                        expected: list[tuple[float, float | None, float, str]]) -> None:
    _, saved = run(readings)
    got = [(s.start_ts - T0 if s.start_ts else 0.0, None if s.end_ts is None else s.end_ts - T0, s.energy_wh,
            s.energy_source) for s in final(saved).values()]
    assert got == expected


def test_an_offline_charger_neither_ends_nor_loses_its_session() -> None:
    track, saved = run([(0, r(C, 1000)), (10, None), (20, None), (30, r(C, 1500))], progress_s=1e9)
    assert track.session is not None and track.session.energy_wh == 500.0 and track.session.open
    assert [s.end_ts for s in saved] == [None]  # only the start was saved


def test_a_register_that_goes_back_counts_on_from_its_new_value() -> None:
    _, saved = run([(0, r(C, 5000)), (1, r(C, 5400)), (2, r(C, 20)), (3, r(C, 120)), (4, r(A, 120))])
    (session,) = final(saved).values()
    assert session.energy_wh == 500.0 and session.end_wh == 120.0 and session.start_wh == 5000.0


def test_a_missing_register_value_waits_for_the_next() -> None:
    _, saved = run([(0, r(C, 100)), (1, r(C, None)), (2, r(A, 130))])
    assert final(saved)[1].energy_wh == 30.0


def test_counted_energy_integrates_power_and_skips_long_gaps() -> None:
    readings: list[tuple[float, Reading]] = [(0, r(C, power_w=3600.0)), (10, r(C, power_w=3600.0)),
                                             (20, r(C, power_w=0.0)), (200, r(C, power_w=3600.0)),
                                             (210, r(A, power_w=0.0))]
    _, saved = run(readings, max_gap_s=60)
    (session,) = final(saved).values()
    # 10 s at 3600 W = 10 Wh, 10 s ramp to 0 = 5 Wh, the 180 s gap counts nothing, 10 s ramp = 5 Wh
    assert session.energy_source == "counted" and session.energy_wh == pytest.approx(20.0)


def test_counted_energy_from_currents_when_there_is_no_power() -> None:
    _, saved = run([(0, r(C, current_a=(10.0, 10.0, 10.0))), (36, r(C, current_a=(10.0, 10.0, 10.0))),
                    (72, r(A))], max_gap_s=60)
    # 6900 W for 36 s = 69 Wh, then a ramp to 0 over 36 s = 34.5 Wh
    assert final(saved)[1].energy_wh == pytest.approx(103.5)


def test_progress_is_saved_every_progress_s() -> None:
    _, saved = run([(t, r(C, 100 + t)) for t in range(0, 1000, 10)], progress_s=300)
    assert [s.updated_ts - T0 for s in saved] == [0, 300, 600, 900]


def test_a_resumed_session_goes_on_or_ends_as_one_session() -> None:
    _, before = run([(0, r(A, 100)), (1, r(C, 100)), (2, r(C, 250))], progress_s=0)
    left_open = before[-1]
    assert left_open.open and left_open.energy_wh == 150.0
    track, after = run([(100, r(C, 400)), (101, r(A, 400))], track=resume(left_open))
    assert {s.id for s in after} == {left_open.id}
    assert after[-1].energy_wh == 300.0 and after[-1].end_ts == T0 + 101 and track.session is None
    _, gone = run([(100, r(A, 400))], track=resume(left_open))
    assert [(s.id, s.end_ts, s.energy_wh, s.stop_reason) for s in gone] == [
        (left_open.id, T0 + 100, 300.0, STOP_CAR_GONE)]


# --------------------------------------------------------------------------- properties

readings = st.one_of(
    st.none(),
    st.builds(lambda state, wh, power: ChargerReading(state, power_w=power, energy_wh=wh),
              st.sampled_from(list(IecState)),
              st.one_of(st.none(), st.floats(0, 1e7, allow_nan=False)),
              st.one_of(st.none(), st.floats(-1000, 22000, allow_nan=False))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 120), readings), max_size=40), st.floats(0, 600))
def test_sessions_are_well_formed(steps: list[tuple[float, Reading]], progress_s: float) -> None:
    t = 0.0
    timed = []
    for dt, reading in steps:
        t += dt
        timed.append((t, reading))
    track, saved = run(timed, progress_s=progress_s)
    ends: dict[int, int] = {}
    last_ts: dict[int, float] = {}
    for s in saved:
        assert s.energy_wh is not None and s.energy_wh >= 0  # never negative
        assert s.id not in ends, "a row after the session ended"
        if s.end_ts is not None:
            ends[s.id] = 1
            assert s.start_ts is not None and s.end_ts >= s.start_ts
        assert s.updated_ts >= last_ts.get(s.id, 0.0)  # rows of one session in time order
        last_ts[s.id] = s.updated_ts
    ids = [s.id for s in saved]
    assert ids == sorted(ids)  # sessions one after the other, never interleaved
    assert sum(1 for s in final(saved).values() if s.open) <= 1
    if track.session is not None:
        assert track.session.open and track.session.id in last_ts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(SessionEventKind)),
                          st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))), max_size=20))
def test_box_events_never_give_negative_energy_or_two_ends(events: list[tuple[SessionEventKind, float | None]]) -> None:
    ids = itertools.count(1)
    open_session: Session | None = None
    saved: list[Session] = []
    for i, (kind, meter) in enumerate(events):
        open_session, rows = box_event(open_session, SessionEvent("E9", kind, T0 + i, meter), lambda: next(ids))
        saved.extend(rows)
    ended: set[int] = set()
    for s in saved:
        assert s.energy_wh is None or s.energy_wh >= 0
        if s.end_ts is not None:
            assert s.id not in ended
            ended.add(s.id)
    assert sum(1 for s in final(saved).values() if s.open) == (open_session is not None)


# --------------------------------------------------------------------------- box events


def ev(kind: SessionEventKind, dt: float, meter: float | None, **kwargs: object) -> SessionEvent:
    return SessionEvent("E9", kind, T0 + dt, meter, **kwargs)  # type: ignore[arg-type]


START, STOP = SessionEventKind.START, SessionEventKind.STOP


def test_box_start_and_stop_make_one_session() -> None:
    ids = itertools.count(7)
    open_session, rows = box_event(None, ev(START, 0, 1000.0, id_tag="TAG1", transaction_id=42), lambda: next(ids))
    assert open_session is not None and rows == (open_session,) and open_session.energy_wh is None
    after, rows = box_event(open_session, ev(STOP, 60, 7500.0, reason="EVDisconnected"), lambda: next(ids))
    (done,) = rows
    assert after is None
    assert (done.id, done.energy_wh, done.id_tag, done.transaction_id, done.stop_reason, done.end_ts) == (
        7, 6500.0, "TAG1", 42, "EVDisconnected", T0 + 60)


def test_box_stop_without_start_is_a_session_with_unknown_start() -> None:
    after, (row,) = box_event(None, ev(STOP, 5, 900.0, transaction_id=3, reason="Local"), lambda: 1)
    assert after is None and row.start_ts is None and row.end_ts == T0 + 5 and row.energy_wh is None
    assert row.end_wh == 900.0 and row.transaction_id == 3


def test_box_start_over_an_open_session_closes_it_first() -> None:
    ids = itertools.count(1)
    first, _ = box_event(None, ev(START, 0, 10.0), lambda: next(ids))
    second, rows = box_event(first, ev(START, 9, 20.0), lambda: next(ids))
    assert [(s.id, s.end_ts, s.stop_reason) for s in rows] == [(1, T0 + 9, STOP_NEW_START), (2, None, None)]
    assert second is not None and second.id == 2


def test_box_register_reset_gives_unknown_not_negative_energy() -> None:
    first, _ = box_event(None, ev(START, 0, 5000.0), lambda: 1)
    _, (row,) = box_event(first, ev(STOP, 9, 10.0), lambda: 2)
    assert row.energy_wh is None and row.end_wh == 10.0
