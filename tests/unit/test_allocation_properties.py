"""Hypothesis properties of controller.allocation over random sites, chargers and cycle sequences.

The checks below recompute every limit from the inputs on their own (they do not reuse the
module's helpers), so a mistake in the allocation's bookkeeping cannot hide itself:

* never above the fuse on any phase, even on the first cycle after start with arbitrary draws;
* never above the power limits, never above the imbalance limit because of our commands;
* every command is 0 or within [min, max] and below its cap;
* no increase above the step (a start may go straight to the minimum);
* a charger paused with a car present stays paused for min_pause_s;
* reasons are never empty; the result does not depend on the order of the chargers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.allocation import (
    Allocation,
    AllocationState,
    ChargerInput,
    Settings,
    SiteInput,
    allocate,
)
from hal.types import IecState

TOL = 1e-6
IDS = ["E1", "E2", "E3", "E4", "E5", "E6"]
CAR_PRESENT = (IecState.B, IecState.C, IecState.D)
Cycle = tuple[float, SiteInput, list[ChargerInput]]  # (now_s, site, chargers)

current = st.floats(min_value=0.0, max_value=40.0, allow_nan=False)
signed_current = st.floats(min_value=-30.0, max_value=80.0, allow_nan=False)
phases3 = st.tuples(signed_current, signed_current, signed_current)


@dataclass(frozen=True)
class Static:
    """What does not change between cycles: the charger's wiring and configuration."""

    id: str
    phases: int
    phase: int
    min_a: float
    priority: int
    reserved_a: float  # what it is assumed to draw while offline


@st.composite
def statics(draw: st.DrawFn) -> list[Static]:
    n = draw(st.integers(min_value=0, max_value=len(IDS)))
    return [
        Static(cid, phases=draw(st.sampled_from([1, 3])), phase=draw(st.integers(0, 2)),
               min_a=draw(st.sampled_from([6.0, 6.0, 8.0, 10.0])), priority=draw(st.integers(0, 2)),
               reserved_a=draw(st.sampled_from([0.0, 6.0, 10.0, 16.0])))
        for cid in IDS[:n]
    ]


@st.composite
def charger_inputs(draw: st.DrawFn, static: Static) -> ChargerInput:
    online = draw(st.booleans().map(lambda b: b or draw(st.booleans())))  # mostly online
    state = draw(st.sampled_from([IecState.A, IecState.B, IecState.C, IecState.C, IecState.C, IecState.D,
                                  IecState.E, IecState.F])) if online else None
    drawn = draw(st.tuples(current, current, current)) if online else (0.0, 0.0, 0.0)
    cap = draw(st.one_of(st.none(), st.none(), current))
    return ChargerInput(
        id=static.id, phases=static.phases, phase=static.phase, min_current_a=static.min_a,
        max_current_a=draw(st.sampled_from([0.0, 3.0, 6.0, 10.0, 16.0, 32.0])),
        max_reason=draw(st.one_of(st.none(), st.just("max formula error: x"))),
        priority=static.priority, online=online, state=state, drawn_a=drawn,
        reserved_a=0.0 if online else static.reserved_a, cap_a=cap, cap_reason=None if cap is None else 'rule "r"',
    )


@st.composite
def sites(draw: st.DrawFn, main_fuse_a: float) -> SiteInput:
    meter = draw(st.sampled_from(["ok", "ok", "none", "failed"]))
    limit_w = st.one_of(st.none(), st.floats(min_value=-2000.0, max_value=40000.0, allow_nan=False))
    return SiteInput(
        voltage_v=230.0,
        main_fuse_a=main_fuse_a,
        grid_current_a=draw(phases3) if meter == "ok" else None,
        grid_power_w=draw(st.floats(min_value=-20000.0, max_value=60000.0)) if meter == "ok" else None,
        grid_limit_w=draw(limit_w),
        chargers_limit_w=draw(limit_w),
        unbalanced_limit_a=draw(st.one_of(st.none(), st.floats(min_value=0.0, max_value=32.0))),
        failsafe_limit_w=draw(st.sampled_from([0.0, 4200.0, 11000.0])),
        failsafe_reason="grid meter M1 stale" if meter == "failed" else draw(st.sampled_from([None, None, "f err"])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Settings, list[Cycle]]:
    static = draw(statics())
    fuse_a = draw(st.sampled_from([10.0, 16.0, 25.0, 35.0, 63.0]))
    setting = Settings(
        increase_step_a=draw(st.sampled_from([0.0, 1.0, 2.0, 6.0])),
        min_pause_s=draw(st.sampled_from([0.0, 10.0, 60.0])),
        hysteresis_a=draw(st.sampled_from([0.5, 1.5, 3.0])),
        settle_s=draw(st.sampled_from([0.0, 5.0, 10.0])),
    )
    cycles = []
    now_s = draw(st.floats(min_value=0.0, max_value=1e6))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        now_s += draw(st.sampled_from([0.5, 1.0, 1.0, 3.0, 9.0, 30.0, 61.0]))
        cycles.append((now_s, draw(sites(fuse_a)), [draw(charger_inputs(s)) for s in static]))
    return setting, cycles


# ---- independent checks --------------------------------------------------------------------


def phases_of(c: ChargerInput) -> list[int]:
    return [0, 1, 2] if c.phases == 3 else [c.phase]


def own_draw(chargers: list[ChargerInput]) -> list[float]:
    """Measured draw of the online chargers plus what the offline ones are assumed to draw."""
    own = [0.0, 0.0, 0.0]
    for c in chargers:
        if not c.online:
            for p in phases_of(c):
                own[p] += c.reserved_a
        elif c.phases == 3:
            for p in range(3):
                own[p] += max(0.0, c.drawn_a[p])
        else:
            own[c.phase] += max(0.0, *c.drawn_a)
    return own


def check_limits(site: SiteInput, chargers: list[ChargerInput], result: Allocation) -> None:
    cmd = {cid: command.current_a for cid, command in result.commands.items()}
    own = own_draw(chargers)
    others = [site.grid_current_a[p] - own[p] for p in range(3)] if site.grid_current_a else [0.0, 0.0, 0.0]
    reserved = [0.0, 0.0, 0.0]
    load = [0.0, 0.0, 0.0]
    for c in chargers:
        for p in phases_of(c):
            if c.online:
                load[p] += cmd[c.id]
            else:
                reserved[p] += c.reserved_a
    for p in range(3):  # the fuse: only what we command counts against us
        if load[p] > 0:
            assert load[p] + reserved[p] + max(0.0, others[p]) <= site.main_fuse_a + TOL, (p, load, reserved, others)

    power_w = sum(cmd[c.id] * c.phases * site.voltage_v for c in chargers if c.online)
    reserved_w = sum(c.reserved_a * c.phases * site.voltage_v for c in chargers if not c.online)
    if power_w > 0:
        own_w = sum(own) * site.voltage_v
        if site.grid_limit_w is not None:
            other_w = site.grid_power_w - own_w if site.grid_power_w is not None else 0.0
            assert power_w + reserved_w + other_w <= site.grid_limit_w + 1e-3
        if site.chargers_limit_w is not None:
            assert power_w + reserved_w <= site.chargers_limit_w + 1e-3
        if site.failsafe_reason is not None:
            assert power_w + reserved_w <= site.failsafe_limit_w + 1e-3

    if site.unbalanced_limit_a is not None:
        # Between two writes: the heavier phase at its new commands, the lighter one at what its
        # 1-phase chargers draw now or their new command, whichever is lower (decreases first).
        meter = [others[p] + reserved[p] for p in range(3)]  # all but the online chargers' draw
        heavy = [meter[p] for p in range(3)]
        light = [meter[p] for p in range(3)]
        for c in chargers:
            if c.online and c.phases == 1:
                heavy[c.phase] += cmd[c.id]
                light[c.phase] += min(cmd[c.id], c.draw_a)
        for p in range(3):
            for q in range(3):
                if p == q:
                    continue
                base = meter[p] - meter[q]
                assert heavy[p] - light[q] <= max(site.unbalanced_limit_a, base) + TOL, (p, q, heavy, light, base)


def check_each(chargers: list[ChargerInput], result: Allocation) -> None:
    assert set(result.commands) == {c.id for c in chargers}
    for c in chargers:
        command = result.commands[c.id]
        assert command.reason.text.strip(), c.id
        if not c.online or c.state not in CAR_PRESENT:
            assert command.current_a == 0
            continue
        x = command.current_a
        assert x == 0 or c.min_current_a - TOL <= x, (c, command)
        assert x <= c.max_current_a + TOL, (c, command)
        if c.cap_a is not None:
            assert x <= c.cap_a + TOL, (c, command)


@dataclass
class Tracker:
    """What the test remembers on its own: last online command and running pause timers."""

    last: dict[str, float]
    pause_start: dict[str, float]

    def check_and_update(self, setting: Settings, now_s: float, chargers: list[ChargerInput],
                         result: Allocation) -> None:
        for c in chargers:
            x = result.commands[c.id].current_a
            if not c.online:
                self.last.pop(c.id, None)  # on return its measured draw is the last command
                continue
            last = self.last.get(c.id, max(0.0, *c.drawn_a))
            assert x <= max(last + setting.increase_step_a, c.min_current_a) + TOL, (c, last, x)
            started = self.pause_start.get(c.id)
            if c.state not in CAR_PRESENT:
                self.pause_start.pop(c.id, None)
            elif started is not None and now_s - started < setting.min_pause_s:
                assert x == 0, (c.id, now_s, started)
            elif c.id in self.last and self.last[c.id] > 0 and x == 0:
                self.pause_start[c.id] = now_s
            self.last[c.id] = x


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_cycles_never_break_a_limit(scenario: tuple[Settings, list[Cycle]]) -> None:
    setting, cycles = scenario
    state = AllocationState()
    tracker = Tracker({}, {})
    for now_s, site, chargers in cycles:
        result = allocate(site, chargers, setting, state, now_s)
        check_each(chargers, result)
        check_limits(site, chargers, result)
        tracker.check_and_update(setting, now_s, chargers, result)
        assert allocate(site, list(reversed(chargers)), setting, state, now_s) == result
        state = result.state


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_first_cycle_never_above_the_fuse(data: st.DataObject) -> None:
    """First cycle after start: arbitrary measured draws, everything charging, no memory."""
    static = data.draw(statics())
    fuse_a = data.draw(st.sampled_from([10.0, 16.0, 35.0]))
    site = SiteInput(voltage_v=230.0, main_fuse_a=fuse_a, grid_current_a=data.draw(phases3))
    chargers = [replace(data.draw(charger_inputs(s)), online=True, state=IecState.C, drawn_a=data.draw(
        st.tuples(current, current, current)), max_current_a=32.0, cap_a=None, cap_reason=None) for s in static]
    result = allocate(site, chargers, Settings(increase_step_a=32.0), AllocationState(), 0.0)
    check_each(chargers, result)
    check_limits(site, chargers, result)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.floats(min_value=16.0, max_value=200.0))
def test_a_lone_site_is_used_fully(n: int, fuse_a: float) -> None:
    """Equal chargers without other limits: all get the same current and the fuse is used up to
    rounding (or each gets its max), or the surplus ones are paused because min cannot be met."""
    chargers = [ChargerInput(id=f"E{i}", phases=3, max_current_a=32.0, online=True, state=IecState.C,
                             drawn_a=(32.0, 32.0, 32.0)) for i in range(n)]
    state = AllocationState()
    for t in range(30):  # long enough for every ramp
        result = allocate(SiteInput(voltage_v=230.0, main_fuse_a=fuse_a), chargers, Settings(), state, float(t))
        state = result.state
    running = [c.current_a for c in result.commands.values() if c.current_a > 0]
    assert len(running) == min(n, int(fuse_a // 6 + 1e-9))
    assert len(set(running)) == 1
    assert running[0] == 32.0 or sum(running) > fuse_a - 0.1 * n - TOL
