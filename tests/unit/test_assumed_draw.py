"""What a silent wallbox is assumed to draw (controller/allocation/assumed_draw.py): tables and properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.allocation.assumed_draw import FALLBACK_MARGIN_S, SilentBox, assumed_draw

# A Heidelberg written at t=100 with 14 A, read every second until t=130, then silent;
# gridcharge configured its 15 s watchdog (any request feeds it), fail-safe 6 A.
HEIDELBERG = SilentBox(landed_a=14.0, landed_s=100.0, contact_s=130.0, measured_a=13.6, fallback_s=15.0,
                       fed_by_any_request=True, failsafe_a=6.0, maximum_a=16.0)
# An Alfen last given 20 A at t=100 (validity 60 s, only a limit write feeds it), safe current 6 A.
ALFEN = SilentBox(landed_a=20.0, landed_s=100.0, contact_s=130.0, measured_a=19.5, fallback_s=60.0,
                  fed_by_any_request=False, failsafe_a=6.0, maximum_a=32.0)


@pytest.mark.parametrize(("name", "box", "now_s", "current_a", "why"), [
    ("any-request box: last limit while its watchdog runs (from the last answer, not the last write)",
     HEIDELBERG, 146.0, 14.0, "14 A as last given until its watchdog falls back (1 s)"),
    ("any-request box: fail-safe once watchdog + margin have passed since the last answer",
     HEIDELBERG, 130.0 + 15.0 + FALLBACK_MARGIN_S, 6.0, "6 A fail-safe (its watchdog has fallen back)"),
    ("write-fed box: counted from the last acknowledged write, not the last read",
     ALFEN, 161.0, 20.0, "20 A as last given until its watchdog falls back (1 s)"),
    ("write-fed box: fail-safe after validity time + margin",
     ALFEN, 162.0, 6.0, "6 A fail-safe"),
    ("the car drew more than the limit (a reading before the write landed): the larger counts",
     replace(HEIDELBERG, measured_a=16.0), 140.0, 16.0, "16 A as last measured"),
    ("no watchdog armed: the last limit, for as long as it is silent",
     replace(HEIDELBERG, fallback_s=None), 1e6, 14.0, "14 A as last given (it has no watchdog)"),
    ("paused box with a watchdog: its fail-safe current may come early, so it is reserved",
     replace(HEIDELBERG, landed_a=0.0, measured_a=0.0), 140.0, 6.0, "6 A fail-safe, as its watchdog may"),
    ("never written, read before: what it was measured drawing (a box keeps charging across a restart)",
     replace(HEIDELBERG, landed_a=None, landed_s=None), 1e6, 13.6, "13.6 A as last measured (never written)"),
    ("never written, never read: its maximum",
     replace(HEIDELBERG, landed_a=None, landed_s=None, contact_s=None, measured_a=None), 1e6, 16.0,
     "16 A, its maximum (never read)"),
])
def test_assumed_draw(name: str, box: SilentBox, now_s: float, current_a: float, why: str) -> None:
    got = assumed_draw(box, now_s)
    assert got.current_a == pytest.approx(current_a), name
    assert why in got.why, (name, got.why)


def test_invalid_facts_are_refused() -> None:
    with pytest.raises(ValueError, match="failsafe_a"):
        replace(HEIDELBERG, failsafe_a=float("nan"))
    with pytest.raises(ValueError, match="maximum_a"):
        replace(HEIDELBERG, maximum_a=-1.0)


amps = st.floats(min_value=0.0, max_value=63.0, allow_nan=False)
times = st.floats(min_value=0.0, max_value=1e5, allow_nan=False)


@st.composite
def boxes(draw: st.DrawFn) -> SilentBox:
    written = draw(st.booleans())
    landed_s = draw(times)
    return SilentBox(
        landed_a=draw(amps) if written else None,
        landed_s=landed_s if written else None,
        contact_s=draw(st.one_of(st.none(), times.map(lambda t: landed_s + t))),
        measured_a=draw(st.one_of(st.none(), amps)),
        fallback_s=draw(st.one_of(st.none(), st.floats(min_value=1.0, max_value=600.0))),
        fed_by_any_request=draw(st.booleans()),
        failsafe_a=draw(amps),
        maximum_a=draw(amps),
    )


@given(boxes(), times)
def test_never_less_than_the_box_may_draw(box: SilentBox, since_s: float) -> None:
    """The reservation covers what the box can draw at that moment, whatever the facts.

    Before its fall-back has surely happened a box may draw up to the larger of its last limit and
    its last measured draw (and its fail-safe current, if it falls back early); after, its
    fail-safe current. A box never written may draw what it was measured drawing, or its maximum.
    """
    now_s = (box.landed_s or 0.0) + since_s
    got = assumed_draw(box, now_s).current_a
    assert got >= 0.0
    if box.landed_a is None:
        assert got == (box.measured_a if box.measured_a is not None else box.maximum_a)
        return
    held = max(box.landed_a, box.measured_a or 0.0)
    fed = box.landed_s if not box.fed_by_any_request else max(box.landed_s or 0.0, box.contact_s or 0.0)
    fallen = box.fallback_s is not None and fed is not None and now_s >= fed + box.fallback_s + FALLBACK_MARGIN_S
    assert got == (box.failsafe_a if fallen else max(held, box.failsafe_a) if box.fallback_s is not None else held)


@given(boxes(), times, times)
def test_the_reservation_only_drops_once(box: SilentBox, t1: float, t2: float) -> None:
    """As time passes while the box stays silent, the reservation never rises again."""
    early, late = sorted((t1, t2))
    start = box.landed_s or 0.0
    assert assumed_draw(box, start + late).current_a <= assumed_draw(box, start + early).current_a
