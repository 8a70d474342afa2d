"""Which limit writes a cycle makes, in which order, and which it must hold back.

The allocation's commands are safe as an end state: with every box at its new limit, no phase is
over the fuse and no limit is exceeded. The moments in between are the writer's business, and
this module decides them as a pure function (the writer in controller/writer.py only executes):

* **Decreases first, on every bus.** A write that does not raise what the box may draw (lower
  than the limit in force, or a keep-alive rewrite) is a decrease. Every decrease goes out before
  any increase; increases (and starts) only once every decrease has been acknowledged by its box.
  Setup writes (watchdog, fail-safe current) go with the increases, so they never delay a
  decrease on a slow bus.
* **Heavier phases lower first.** Lowering a 1-phase box widens the difference between the other
  phases and its own. So the decreases go in up to three steps: 3-phase boxes and the 1-phase
  boxes on the most loaded phase (by the grid meter), then those on the middle phase, then those
  on the least loaded one. A step starts when the one before has been acknowledged (or missed its
  deadline: the fuse comes first, so a later decrease is never held back).
* **The limit in force** is the last limit the box acknowledged. Until gridcharge has written a
  box (at start, or after the box was away and may have rebooted), it is what the box measurably
  draws: a box keeps charging at its old setpoint across a restart of gridcharge.
* **Increases need a consistent snapshot.** The headroom comes from "grid meter minus the
  chargers' own draw"; if the meter, or a charger, was read before a limit change landed (a slow
  bus delivers a reading one cycle late), the two do not describe the same moment and the
  headroom can be overstated by the change. Then no increase is written this cycle (decreases
  still are). Order is decided by sequence numbers handed out when a read starts and when a write
  lands, not by clocks, so it is exact whatever the clock does.
* A write still on the wire from an earlier cycle (a slow or hung bus) leaves that box's limit
  unknown: nothing more is written to it, and no increase goes out anywhere, until it finishes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_EPS = 1e-6


@dataclass(frozen=True)
class BoxState:
    """What the writer knows about one charger this cycle."""

    online: bool  # a fresh reading this cycle; offline boxes get no writes
    landed_a: float | None  # the limit the box last acknowledged; None: not written since it appeared
    landed_s: float | None  # when that write landed (for keep-alives)
    changed_seq: int | None  # sequence number of the write that last changed the box's limit
    in_flight: bool  # a write started in an earlier cycle has not finished yet
    needs_setup: bool  # its watchdog / fail-safe current is not configured since it appeared
    draw_a: float  # what it draws now (highest phase), the limit in force until it is written
    read_seq: int | None  # sequence number of the reading used this cycle
    keepalive_s: float | None  # the limit must be rewritten at least this often
    phase: int | None = None  # the site phase (0..2) of a 1-phase box; None for a 3-phase box


@dataclass(frozen=True)
class Write:
    charger_id: str
    current_a: float


@dataclass(frozen=True)
class WritePlan:
    decreases: tuple[tuple[Write, ...], ...] = ()  # steps, heaviest phase first
    setups: tuple[str, ...] = ()
    increases: tuple[Write, ...] = ()
    #: Increases that will not be written this cycle whatever happens, with the reason.
    held: Mapping[str, str] = field(default_factory=dict)


def limit_in_force(box: BoxState) -> float:
    """The limit the box applies now, as far as gridcharge knows."""
    return box.draw_a if box.landed_a is None else box.landed_a


def plan_writes(commands: Mapping[str, float], boxes: Mapping[str, BoxState], meter_read_seq: int | None,
                now_s: float, phase_load_a: Sequence[float] | None = None) -> WritePlan:
    """Split this cycle's due writes into decreases, setups and increases; see the module doc.

    ``meter_read_seq`` is the sequence number of the grid meter reading the allocation used
    (None: no grid meter reading was used); ``phase_load_a`` its per-phase currents (None: the
    decreases go in one step).
    """
    decreases: list[Write] = []
    increases: list[Write] = []
    setups: list[str] = []
    busy: list[str] = []
    for cid in sorted(boxes):
        box = boxes[cid]
        if not box.online:
            continue
        if box.in_flight:
            busy.append(cid)
            continue
        if box.needs_setup:
            setups.append(cid)
        target = commands[cid]
        if not _due(box, target, now_s):
            continue
        write = Write(cid, target)
        (decreases if target <= limit_in_force(box) + _EPS else increases).append(write)
    why = _hold_reason(boxes, meter_read_seq, busy)
    held = {w.charger_id: why for w in increases} if why else {}
    return WritePlan(_by_phase(decreases, boxes, phase_load_a), tuple(setups), tuple(increases), held)


def _by_phase(writes: list[Write], boxes: Mapping[str, BoxState],
              phase_load_a: Sequence[float] | None) -> tuple[tuple[Write, ...], ...]:
    """The decreases in steps: 3-phase boxes and the heaviest phase first, the lightest last."""
    if not writes:
        return ()
    if phase_load_a is None:
        return (tuple(writes),)
    order = sorted(range(3), key=lambda p: (-phase_load_a[p], p))
    rank = {p: i for i, p in enumerate(order)}
    steps: list[list[Write]] = [[], [], []]
    for w in writes:
        phase = boxes[w.charger_id].phase
        steps[0 if phase is None else rank[phase]].append(w)
    return tuple(tuple(step) for step in steps if step)


def _due(box: BoxState, target: float, now_s: float) -> bool:
    if box.landed_a is None or box.landed_a != target:
        return True
    return box.keepalive_s is not None and box.landed_s is not None and now_s - box.landed_s >= box.keepalive_s


def _hold_reason(boxes: Mapping[str, BoxState], meter_read_seq: int | None, busy: list[str]) -> str | None:
    """Why no increase may be written this cycle, or None."""
    if busy:
        return f"waiting for {', '.join(busy)} to acknowledge its last write"
    last_change = max((b.changed_seq for b in boxes.values() if b.changed_seq is not None), default=None)
    stale: list[str] = []
    if meter_read_seq is not None and last_change is not None and meter_read_seq < last_change:
        stale.append("grid meter")
    for cid in sorted(boxes):
        box = boxes[cid]
        if box.online and box.changed_seq is not None and (box.read_seq is None or box.read_seq < box.changed_seq):
            stale.append(cid)
    if stale:
        return f"waiting for readings taken after the last write ({', '.join(stale)})"
    return None
