"""Which writes a cycle makes and in which order (controller/write_plan.py): tables and properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.write_plan import BoxState, Write, limit_in_force, plan_writes

NOW = 1000.0
# Written earlier (seq 5 changed it to 10 A), read afterwards (seq 9), healthy.
WRITTEN = BoxState(online=True, landed_a=10.0, landed_s=NOW - 1, changed_seq=5, in_flight=False,
                   needs_setup=False, draw_a=9.8, read_seq=9, keepalive_s=None)
# Not written since gridcharge started; charging at 16 A at its old setpoint.
UNWRITTEN = BoxState(online=True, landed_a=None, landed_s=None, changed_seq=None, in_flight=False,
                     needs_setup=True, draw_a=16.0, read_seq=3, keepalive_s=None)


def test_a_box_not_yet_written_draws_what_it_measures() -> None:
    assert limit_in_force(UNWRITTEN) == 16.0
    assert limit_in_force(WRITTEN) == 10.0


def test_at_start_the_lowering_of_a_charging_box_goes_first_and_its_setup_after() -> None:
    """The issue's start: a Heidelberg already at 16 A must drop to 14 before the Alfen may start."""
    boxes = {"E1": UNWRITTEN, "E2": replace(UNWRITTEN, draw_a=0.0)}
    plan = plan_writes({"E1": 14.0, "E2": 8.0}, boxes, meter_read_seq=4, now_s=NOW)
    assert plan.decreases == ((Write("E1", 14.0),),)
    assert plan.increases == (Write("E2", 8.0),)
    assert plan.setups == ("E1", "E2")  # second step: a setup never delays a decrease
    assert plan.held == {}


@pytest.mark.parametrize(("name", "box", "target", "kind"), [
    ("lower than the limit in force", WRITTEN, 8.0, "decrease"),
    ("pause", WRITTEN, 0.0, "decrease"),
    ("higher", WRITTEN, 12.0, "increase"),
    ("unchanged: not written", WRITTEN, 10.0, None),
    ("unchanged but keep-alive due: a decrease (it raises nothing)",
     replace(WRITTEN, keepalive_s=1.0, landed_s=NOW - 1.0), 10.0, "decrease"),
    ("unchanged, keep-alive not due yet", replace(WRITTEN, keepalive_s=25.0), 10.0, None),
    ("never written, target at its draw: a decrease (it raises nothing)", UNWRITTEN, 16.0, "decrease"),
    ("never written, car drawing nothing: a start is an increase", replace(UNWRITTEN, draw_a=0.0), 6.0, "increase"),
    ("offline: nothing", replace(WRITTEN, online=False), 0.0, None),
])
def test_classification(name: str, box: BoxState, target: float, kind: str | None) -> None:
    plan = plan_writes({"E1": target}, {"E1": box}, meter_read_seq=10, now_s=NOW)
    got = "decrease" if plan.decreases else "increase" if plan.increases else None
    assert got == kind, name


@pytest.mark.parametrize(("name", "boxes", "meter_seq", "held_by"), [
    ("every reading after the last write: increases go", {"E1": WRITTEN}, 10, None),
    ("grid meter read before E1's limit changed (a late reading from a slow bus)", {"E1": WRITTEN}, 4, "grid meter"),
    ("E1 read before its own limit changed", {"E1": replace(WRITTEN, read_seq=4)}, 10, "(E1)"),
    ("no grid meter reading used: only the chargers' own readings matter", {"E1": WRITTEN}, None, None),
    ("a write still on the wire: its box's limit is unknown", {"E1": replace(WRITTEN, in_flight=True)}, 10,
     "E1 to acknowledge its last write"),
])
def test_increases_need_a_consistent_snapshot(name: str, boxes: dict[str, BoxState], meter_seq: int | None,
                                               held_by: str | None) -> None:
    boxes = {**boxes, "E2": replace(WRITTEN, landed_a=6.0, changed_seq=2)}
    plan = plan_writes({"E1": 8.0 if "E1" in boxes else 0.0, "E2": 8.0}, boxes, meter_seq, NOW)
    assert plan.increases == (Write("E2", 8.0),), name
    if held_by is None:
        assert plan.held == {}, name
    else:
        assert held_by in plan.held["E2"], (name, plan.held)
    assert all(w.charger_id != "E1" or not boxes["E1"].in_flight for step in plan.decreases for w in step)


states = st.builds(
    BoxState,
    online=st.booleans(),
    landed_a=st.one_of(st.none(), st.sampled_from([0.0, 6.0, 10.0, 16.0])),
    landed_s=st.just(NOW - 5),
    changed_seq=st.one_of(st.none(), st.integers(0, 20)),
    in_flight=st.booleans(),
    needs_setup=st.booleans(),
    draw_a=st.sampled_from([0.0, 5.9, 10.0, 16.0]),
    read_seq=st.one_of(st.none(), st.integers(0, 20)),
    keepalive_s=st.one_of(st.none(), st.just(1.0)),
)


@given(st.dictionaries(st.sampled_from(["E1", "E2", "E3", "E4"]), st.tuples(states, st.sampled_from([0.0, 6.0, 8.0, 16.0])),
                       min_size=1),
       st.one_of(st.none(), st.integers(0, 20)))
def test_after_the_decreases_no_phase_carries_more_than_before(
        cases: dict[str, tuple[BoxState, float]], meter_seq: int | None) -> None:
    """Writing the first step alone never raises any box's limit above the limit in force; the
    second step holds only increases; each box gets at most one limit write; a box whose write is
    on the wire or that is offline gets none."""
    boxes = {cid: box for cid, (box, _) in cases.items()}
    commands = {cid: target for cid, (_, target) in cases.items()}
    plan = plan_writes(commands, boxes, meter_seq, NOW)
    decreases = [w for step in plan.decreases for w in step]
    for w in decreases:
        assert w.current_a <= limit_in_force(boxes[w.charger_id]) + 1e-6
    for w in plan.increases:
        assert w.current_a > limit_in_force(boxes[w.charger_id])
    ids = [w.charger_id for w in decreases + list(plan.increases)]
    assert len(ids) == len(set(ids))
    assert all(boxes[cid].online and not boxes[cid].in_flight for cid in ids + list(plan.setups))
    assert set(plan.held) <= {w.charger_id for w in plan.increases}


def test_decreases_of_one_phase_boxes_go_heaviest_phase_first() -> None:
    """Lowering a box on the light phase first would widen the gap to the heavy one meanwhile."""
    one = {cid: replace(WRITTEN, phase=p) for cid, p in (("L1box", 0), ("L2box", 1), ("L3box", 2))}
    boxes = {**one, "three": WRITTEN}
    plan = plan_writes({cid: 6.0 for cid in boxes}, boxes, 10, NOW, phase_load_a=(12.0, 25.0, 18.0))
    assert [[w.charger_id for w in step] for step in plan.decreases] == [["L2box", "three"], ["L3box"], ["L1box"]]
    assert len(plan_writes({cid: 6.0 for cid in boxes}, boxes, 10, NOW).decreases) == 1  # no meter: one step
