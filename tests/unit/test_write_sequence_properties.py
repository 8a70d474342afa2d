"""Property: the allocation's commands, written in the writer's order, never put a phase over the
fuse or widen a phase difference past its limit at any moment between two writes.

Pure and exhaustive over orders: a random site (house load per phase, 1- and 3-phase boxes
with cars that charge, are full or absent, each at some limit in force) is allocated, the
writes are planned (controller/write_plan.py), and then every order in which the writes can
land is checked: the decrease steps one after the other, the writes within a step in any order,
then the increases in any order. A car draws min(its limit, what it can take), 0 below 6 A.

The site starts within its limits (the steady state between two cycles): every phase at or
under the fuse, every difference within its limit. Then no write may put a phase over the fuse
or a difference past its limit. (From a state already over a limit, e.g. after a step of the
house load, a correction may have to widen one difference for a moment while it narrows another;
the integration property test covers those with the "never widened past the limit" rule.) For the imbalance the limit is the larger of
``unbalanced_limit_a`` and the house's own difference without the chargers, as the allocation
promises (a house that is unbalanced on its own is not gridcharge's to fix).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.allocation import AllocationState, ChargerInput, ChargerMemory, Settings, SiteInput, allocate
from controller.write_plan import BoxState, Write, plan_writes
from hal.types import IecState

TOL = 1e-6
NOW = 100.0


@dataclass(frozen=True)
class Box:
    id: str
    phases: int
    phase: int
    limit_a: float  # in force (acknowledged)
    car: str  # "charging" | "full" | "none"
    car_max_a: float

    def draw(self, limit_a: float) -> float:
        if self.car != "charging" or limit_a < 6.0:
            return 0.0
        return min(limit_a, self.car_max_a)

    def phases_loaded(self) -> tuple[int, ...]:
        return (0, 1, 2) if self.phases == 3 else (self.phase,)


@st.composite
def boxes(draw: st.DrawFn) -> list[Box]:
    return [Box(f"E{i}", draw(st.sampled_from([1, 1, 3])), draw(st.integers(0, 2)),
                draw(st.sampled_from([0.0, 6.0, 8.0, 10.0, 16.0])),
                draw(st.sampled_from(["charging", "charging", "full", "none"])),
                draw(st.sampled_from([10.0, 16.0, 32.0])))
            for i in range(draw(st.integers(1, 4)))]


def currents(base: tuple[float, ...], limits: dict[str, float], all_boxes: list[Box]) -> list[float]:
    out = list(base)
    for b in all_boxes:
        for p in b.phases_loaded():
            out[p] += b.draw(limits[b.id])
    return out


def judge(before: list[float], after: list[float], fuse_a: float, limit_a: float | None,
          house: tuple[float, ...]) -> list[str]:
    bad = [f"L{p + 1} {before[p]:.1f} -> {after[p]:.1f} over {fuse_a}" for p in range(3)
           if after[p] > fuse_a + TOL and after[p] > before[p] + TOL]
    if limit_a is not None:
        for p, q in itertools.permutations(range(3), 2):
            allowed = max(limit_a, house[p] - house[q])
            d0, d1 = before[p] - before[q], after[p] - after[q]
            if d1 > allowed + TOL and d1 > d0 + TOL:
                bad.append(f"L{p + 1}-L{q + 1} {d0:.1f} -> {d1:.1f} over {allowed}")
    return bad


def within_limits(grid: list[float], fuse_a: float, limit_a: float | None, house: tuple[float, ...]) -> bool:
    if max(grid) > fuse_a:
        return False
    return limit_a is None or all(grid[p] - grid[q] <= max(limit_a, house[p] - house[q])
                                  for p, q in itertools.permutations(range(3), 2))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boxes(), st.tuples(*[st.sampled_from([0.0, 2.0, 5.0, 8.0, 12.0, 20.0])] * 3),
       st.sampled_from([25.0, 32.0]), st.sampled_from([None, 10.0, 20.0]), st.sampled_from([2.0, 16.0]),
       st.sampled_from([None, 7000.0, 11000.0]))
def test_every_order_of_landing_keeps_the_fuse_and_the_imbalance(
        all_boxes: list[Box], base: tuple[float, float, float], fuse_a: float, limit_a: float | None,
        step_a: float, chargers_limit_w: float | None) -> None:
    old = {b.id: b.limit_a for b in all_boxes}
    grid = currents(base, old, all_boxes)
    assume(within_limits(grid, fuse_a, limit_a, base))
    inputs = []
    for b in all_boxes:
        d = b.draw(b.limit_a)
        state = {"charging": IecState.C if d > 0 else IecState.B, "full": IecState.B,
                 "none": IecState.A}[b.car]
        drawn = (d, d, d) if b.phases == 3 else (d, 0.0, 0.0)  # a 1-phase box reports on its own L1
        inputs.append(ChargerInput(id=b.id, phases=b.phases, phase=b.phase, max_current_a=16.0, online=True,
                                   state=state, drawn_a=drawn))
    site = SiteInput(voltage_v=230.0, main_fuse_a=fuse_a, grid_current_a=(grid[0], grid[1], grid[2]),
                     grid_power_w=sum(grid) * 230.0, unbalanced_limit_a=limit_a, chargers_limit_w=chargers_limit_w)
    memory = {b.id: ChargerMemory(current_a=b.limit_a, paused_since_s=None, started_s=0.0) for b in all_boxes}
    result = allocate(site, inputs, Settings(increase_step_a=step_a, min_pause_s=0.0), AllocationState(memory), NOW)
    commands = {cid: c.current_a for cid, c in result.commands.items()}
    states = {b.id: BoxState(online=True, landed_a=b.limit_a, landed_s=NOW - 1, changed_seq=1, in_flight=False,
                             needs_setup=False, draw_a=b.draw(b.limit_a), read_seq=5, keepalive_s=None,
                             phase=b.phase if b.phases == 1 else None) for b in all_boxes}
    plan = plan_writes(commands, states, 5, NOW, grid)
    assert plan.held == {}
    steps: list[tuple[Write, ...]] = [*plan.decreases, plan.increases]
    house = base
    done = dict(old)
    for step in steps:  # every order within a step, the steps one after the other
        for order in itertools.permutations(step):
            limits = dict(done)
            for w in order:
                before = currents(base, limits, all_boxes)
                limits[w.charger_id] = w.current_a
                after = currents(base, limits, all_boxes)
                bad = judge(before, after, fuse_a, limit_a, house)
                assert not bad, (bad, w, order, plan, commands, all_boxes, base)
        for w in step:
            done[w.charger_id] = w.current_a
