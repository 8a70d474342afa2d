"""Table and scenario tests for controller.allocation (docs/load-management.md).

Each table row is one situation an electrician would check, with the expected current and a part
of the expected reason. Scenario tests run several cycles with a small car model to show the
behaviour over time: ramps, pause timers, draw-limited cars without oscillation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from controller.allocation import (
    Allocation,
    AllocationState,
    ChargerInput,
    ChargerMemory,
    Reason,
    Settings,
    SiteInput,
    Why,
    allocate,
)
from hal.types import IecState

A, B, C, D, E, F = IecState.A, IecState.B, IecState.C, IecState.D, IecState.E, IecState.F


def site(**kw: object) -> SiteInput:
    values: dict[str, object] = {"voltage_v": 230.0, "main_fuse_a": 35.0}
    values.update(kw)
    return SiteInput(**values)  # type: ignore[arg-type]


def ch(cid: str = "E1", *, phases: int = 3, phase: int = 0, max_a: float = 16.0, min_a: float = 6.0,
       state: IecState | None = C, draw: tuple[float, float, float] = (0.0, 0.0, 0.0), online: bool = True,
       prio: int = 0, cap: float | None = None, cap_reason: str | None = None, reserved: float = 6.0,
       max_reason: str | None = None, reserved_reason: str | None = None) -> ChargerInput:
    return ChargerInput(
        id=cid, phases=phases, phase=phase, min_current_a=min_a, max_current_a=max_a, max_reason=max_reason,
        priority=prio, online=online, state=state if online else None, drawn_a=draw if online else (0.0, 0.0, 0.0),
        reserved_a=reserved if not online else 0.0, reserved_reason=reserved_reason if not online else None,
        cap_a=cap, cap_reason=cap_reason,
    )


def mem(current_a: float, *, paused_since: float | None = None, started: float | None = None) -> ChargerMemory:
    return ChargerMemory(current_a=current_a, paused_since_s=paused_since, started_s=started)


@dataclass(frozen=True)
class Row:
    name: str
    site: SiteInput
    chargers: tuple[ChargerInput, ...]
    expect: dict[str, tuple[float, str]]  # id → (current, part of the reason)
    memory: dict[str, ChargerMemory] = field(default_factory=dict)
    now_s: float = 1000.0


FULL3 = (16.0, 16.0, 16.0)

ROWS = [
    # -- fuse and sharing --------------------------------------------------------------------
    Row("alone, no grid meter: its max", site(), (ch(draw=FULL3),), {"E1": (16, "max 16 A")}, {"E1": mem(16)}),
    Row("other loads on L2 leave 10 A (fuse L2)", site(grid_current_a=(18.0, 41.0, 18.0)),
        (ch(draw=FULL3),), {"E1": (10, "fuse L2")}, {"E1": mem(16)}),
    Row("two chargers share the fuse equally", site(main_fuse_a=20.0),
        (ch("E1"), ch("E2")), {"E1": (10, "fuse L1"), "E2": (10, "fuse L1")}, {"E1": mem(10), "E2": mem(10)}),
    Row("a charger whose max is below the share gets it, the rest goes to the other", site(main_fuse_a=25.0),
        (ch("E1", max_a=10), ch("E2", max_a=32)), {"E1": (10, "max 10 A"), "E2": (15, "fuse L1")},
        {"E1": mem(10), "E2": mem(16)}),
    Row("higher priority first, the lower one is paused", site(main_fuse_a=16.0),
        (ch("E1", prio=2), ch("E2", prio=1)),
        {"E1": (16, "max 16 A"), "E2": (0, "paused: fuse L1 (min 6 A not available)")},
        {"E1": mem(16), "E2": mem(6)}),
    Row("lower priority gets what the higher one leaves", site(main_fuse_a=25.0),
        (ch("E1", prio=2), ch("E2", prio=1)), {"E1": (16, "max 16 A"), "E2": (9, "fuse L1")},
        {"E1": mem(16), "E2": mem(10)}),
    Row("shortage in one priority: the latest started is paused", site(main_fuse_a=11.0),
        (ch("E1"), ch("E2")), {"E1": (0, "paused: fuse L1"), "E2": (10, "ramp +2 A/cycle")},
        {"E1": mem(8, started=100.0), "E2": mem(8, started=50.0)}),
    Row("same start: the highest id is paused", site(main_fuse_a=11.0),
        (ch("E1"), ch("E2")), {"E1": (10, "ramp"), "E2": (0, "paused: fuse L1")},
        {"E1": mem(8), "E2": mem(8)}),
    Row("a waiting charger does not displace a running one", site(main_fuse_a=11.0),
        (ch("A1"), ch("E2")), {"A1": (0, "paused: fuse L1"), "E2": (10, "ramp")},
        {"A1": mem(0), "E2": mem(8)}),
    Row("never shared below min: 3 chargers, room for 2 at min", site(main_fuse_a=13.0),
        (ch("E1"), ch("E2"), ch("E3")),
        {"E1": (6.5, "fuse L1"), "E2": (6.5, "fuse L1"), "E3": (0, "paused: fuse L1")},
        {"E1": mem(6), "E2": mem(6), "E3": mem(6)}),
    Row("1-phase chargers on other phases do not compete", site(main_fuse_a=16.0),
        (ch("E1", phases=1, phase=0), ch("E2", phases=1, phase=1)),
        {"E1": (16, "max 16 A"), "E2": (16, "max 16 A")}, {"E1": mem(16), "E2": mem(16)}),
    Row("generation (export) never adds fuse headroom", site(main_fuse_a=16.0, grid_current_a=(-20.0, -20.0, -20.0)),
        (ch(max_a=32),), {"E1": (16, "fuse L1")}, {"E1": mem(16)}),
    # -- no car, errors, offline -------------------------------------------------------------
    Row("no car", site(), (ch(state=A),), {"E1": (0, "no car")}, {"E1": mem(16)}),
    Row("error state E", site(), (ch(state=E),), {"E1": (0, "error state E")}),
    Row("error state F", site(), (ch(state=F),), {"E1": (0, "error state F")}),
    Row("car connected but not charging is offered min", site(), (ch(state=B),),
        {"E1": (6, "car connected, not charging")}, {"E1": mem(16)}),
    Row("state D charges like C", site(), (ch(state=D, draw=FULL3),), {"E1": (16, "max 16 A")}, {"E1": mem(16)}),
    Row("offline charger: what it is assumed to draw is reserved", site(main_fuse_a=16.0),
        (ch("E1", online=False, reserved=6.0, reserved_reason="6 A fail-safe (its watchdog has fallen back)"),
         ch("E2")),
        {"E1": (0, "offline: reserving 6 A fail-safe (its watchdog"), "E2": (10, "fuse L1")}, {"E2": mem(16)}),
    Row("offline 1-phase charger reserves only its phase", site(main_fuse_a=16.0),
        (ch("E1", phases=1, phase=1, online=False, reserved=10.0), ch("E2")),
        {"E1": (0, "offline: reserving 10 A"), "E2": (6, "fuse L2")}, {"E2": mem(16)}),
    Row("offline charger's assumed draw is its own, not other consumption (meter sees it)",
        site(main_fuse_a=32.0, grid_current_a=(30.0, 30.0, 30.0)),  # 10 A base + E1 14 A + E2 6 A
        (ch("E1", online=False, reserved=14.0), ch("E2")),
        {"E1": (0, "offline: reserving 14 A"), "E2": (8, "")}, {"E2": mem(6)}),
    # -- power limits ------------------------------------------------------------------------
    Row("grid limit minus other consumption (2000 W)", site(grid_limit_w=11000.0, grid_power_w=10970.0,
                                                             grid_current_a=(16.0, 16.0, 16.0)),
        (ch(draw=(13.0, 13.0, 13.0)),), {"E1": (13, "grid limit")}, {"E1": mem(13)}),
    Row("export (5000 W) counts for the grid limit", site(grid_limit_w=0.0, grid_power_w=6040.0),
        (ch(),), {"E1": (7.2, "grid limit")}, {"E1": mem(16)}),
    Row("chargers limit (§14a): 4200 W on 3 phases", site(chargers_limit_w=4200.0),
        (ch(draw=FULL3),), {"E1": (6, "chargers limit")}, {"E1": mem(16)}),
    Row("chargers limit below min pauses", site(chargers_limit_w=4000.0),
        (ch(draw=FULL3),), {"E1": (0, "paused: chargers limit (min 6 A not available)")}, {"E1": mem(16)}),
    Row("power limit on a 1-phase charger", site(chargers_limit_w=4200.0),
        (ch(phases=1, max_a=32),), {"E1": (18.2, "chargers limit")}, {"E1": mem(32)}),
    Row("two chargers share a power limit", site(chargers_limit_w=11000.0),
        (ch("E1"), ch("E2", phases=1, max_a=32)),
        {"E1": (11.9, "chargers limit"), "E2": (11.9, "chargers limit")}, {"E1": mem(16), "E2": mem(16)}),
    Row("fail-safe: grid meter stale", site(failsafe_reason="grid meter M1 stale (7.0 s)", failsafe_limit_w=4200.0),
        (ch(draw=FULL3),), {"E1": (6, "fail-safe: grid meter M1 stale (7.0 s)")}, {"E1": mem(16)}),
    Row("fail-safe keeps a lower chargers limit", site(failsafe_reason="x", failsafe_limit_w=11000.0,
                                                       chargers_limit_w=4200.0),
        (ch(draw=FULL3),), {"E1": (6, "chargers limit")}, {"E1": mem(16)}),
    Row("fail-safe: a meter still read keeps its per-phase limit", site(
        failsafe_reason="grid_limit_w: error", failsafe_limit_w=11000.0, grid_current_a=(41.0, 16.0, 16.0)),
        (ch(),), {"E1": (10, "fuse L1")}, {"E1": mem(16)}),
    # -- caps and maxima ---------------------------------------------------------------------
    Row("rule cap 0 pauses", site(), (ch(cap=0.0, cap_reason='rule "low tariff"'),),
        {"E1": (0, 'rule "low tariff"')}, {"E1": mem(16)}),
    Row("rule cap below min pauses", site(), (ch(cap=4.0, cap_reason='rule "x"'),),
        {"E1": (0, 'rule "x": 4 A < min 6 A')}, {"E1": mem(16)}),
    Row("rule cap limits", site(), (ch(cap=10.0, cap_reason='rule "x"'),), {"E1": (10, 'rule "x"')}, {"E1": mem(16)}),
    Row("cap above max: max wins", site(), (ch(cap=20.0, cap_reason='rule "x"'),), {"E1": (16, "max 16 A")},
        {"E1": mem(16)}),
    Row("override cap", site(), (ch(cap=8.0, cap_reason="override 8 A"),), {"E1": (8, "override 8 A")},
        {"E1": mem(16)}),
    Row("max formula failed (fail-safe 0)", site(), (ch(max_a=0.0, max_reason="max formula error: boom"),),
        {"E1": (0, "max formula error: boom")}, {"E1": mem(16)}),
    Row("max formula failed, below min", site(), (ch(max_a=3.0, max_reason="max formula error: boom"),),
        {"E1": (0, "max formula error: boom (max 3 A < min 6 A)")}, {"E1": mem(16)}),
    Row("max formula failed while charging: min", site(), (ch(max_a=6.0, max_reason="max formula error: boom"),),
        {"E1": (6, "max formula error: boom (max 6 A)")}, {"E1": mem(16)}),
    Row("max below min pauses", site(), (ch(max_a=3.2),), {"E1": (0, "max 3.2 A < min 6 A")}, {"E1": mem(16)}),
    Row("a higher min is respected", site(main_fuse_a=16.0), (ch("E1", min_a=8.0), ch("E2", min_a=8.0)),
        {"E1": (8, "fuse L1"), "E2": (8, "fuse L1")}, {"E1": mem(8), "E2": mem(8)}),
    # -- ramp, first cycle, pause timer ------------------------------------------------------
    Row("increase at most one step", site(), (ch(),), {"E1": (8, "ramp +2 A/cycle")}, {"E1": mem(6)}),
    Row("a start goes straight to min", site(), (ch(),), {"E1": (6, "starting at min 6 A")}, {"E1": mem(0)}),
    Row("decrease at once", site(main_fuse_a=7.0), (ch(draw=FULL3),), {"E1": (7, "fuse L1")}, {"E1": mem(16)}),
    Row("first cycle: the measured draw is the last command", site(), (ch(draw=(10.0, 10.0, 10.0)),),
        {"E1": (12, "ramp")}),
    Row("first cycle: a start from nothing", site(), (ch(),), {"E1": (6, "starting at min")}),
    Row("first cycle: never above the fuse", site(main_fuse_a=20.0, grid_current_a=(40.0, 40.0, 40.0)),
        (ch(max_a=32, draw=(30.0, 30.0, 30.0)),), {"E1": (10, "fuse L1")}),
    Row("min pause running", site(), (ch(),), {"E1": (0, "min pause (42 s left)")},
        {"E1": mem(0, paused_since=982.0)}),
    Row("min pause over", site(), (ch(),), {"E1": (6, "starting at min")}, {"E1": mem(0, paused_since=900.0)}),
    Row("no car wins over a pause timer", site(), (ch(state=A),), {"E1": (0, "no car")},
        {"E1": mem(0, paused_since=990.0)}),
    # -- phase imbalance ---------------------------------------------------------------------
    Row("1-phase charger limited by the imbalance limit", site(main_fuse_a=63.0, unbalanced_limit_a=20.0),
        (ch(phases=1, max_a=32),), {"E1": (20, "phase imbalance L1-L2")}, {"E1": mem(32)}),
    Row("3-phase chargers do not unbalance", site(main_fuse_a=63.0, unbalanced_limit_a=5.0),
        (ch(max_a=32),), {"E1": (32, "max 32 A")}, {"E1": mem(32)}),
    Row("1-phase chargers on all phases balance", site(unbalanced_limit_a=10.0),
        (ch("E1", phases=1, phase=0), ch("E2", phases=1, phase=1), ch("E3", phases=1, phase=2)),
        {"E1": (16, "max"), "E2": (16, "max"), "E3": (16, "max")}, {"E1": mem(16), "E2": mem(16), "E3": mem(16)}),
    Row("two 1-phase chargers, third phase empty", site(unbalanced_limit_a=10.0),
        (ch("E1", phases=1, phase=0), ch("E2", phases=1, phase=1)),
        {"E1": (10, "phase imbalance L1-L3"), "E2": (10, "phase imbalance L2-L3")},
        {"E1": mem(16), "E2": mem(16)}),
    Row("existing imbalance: not made worse, but may be improved",
        site(main_fuse_a=63.0, unbalanced_limit_a=20.0, grid_current_a=(37.0, 62.0, 5.0)),  # others: 5, 30, 5
        (ch("E1", phases=1, phase=0, max_a=32), ch("E2", phases=1, phase=1, max_a=32)),
        {"E1": (20, "phase imbalance L1-L3"), "E2": (0, "paused: phase imbalance L2-L3")},
        {"E1": mem(32), "E2": mem(32)}),
]


def drawing_what_it_got(c: ChargerInput, memory: dict[str, ChargerMemory]) -> ChargerInput:
    """Unless a row says otherwise, a charging car draws what it was last given (it is not full)."""
    m = memory.get(c.id)
    if not c.online or c.state not in (C, D) or m is None or any(c.drawn_a):
        return c
    if c.phases == 3:
        return replace(c, drawn_a=(m.current_a, m.current_a, m.current_a))
    return replace(c, drawn_a=(m.current_a, 0.0, 0.0))


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_table(row: Row) -> None:
    chargers = [drawing_what_it_got(c, row.memory) for c in row.chargers]
    result = allocate(row.site, chargers, Settings(), AllocationState(row.memory), row.now_s)
    got = {cid: (cmd.current_a, str(cmd.reason)) for cid, cmd in result.commands.items()}
    assert set(got) == {c.id for c in row.chargers}
    for cid, (current_a, reason_part) in row.expect.items():
        assert got[cid][0] == pytest.approx(current_a, abs=1e-9), got
        assert reason_part in got[cid][1], got


# ---- outputs besides the commands ----------------------------------------------------------


def test_headroom_limiting_and_power_headroom() -> None:
    s = site(main_fuse_a=16.0, grid_current_a=(16.0, 10.0, 10.0), chargers_limit_w=9000.0)
    chargers = [ch("E1", draw=(10.0, 10.0, 10.0)), ch("E2", phases=1, phase=2, online=False, reserved=6.0)]
    result = allocate(s, chargers, Settings(), AllocationState({"E1": mem(10)}), 0.0)
    assert result.headroom_a == (10.0, 16.0, 10.0)  # L1: 6 A others; L3: 6 A reserved for E2
    assert result.power_headroom_w == pytest.approx(9000.0 - 6 * 230.0)
    assert (result.commands["E1"].current_a, str(result.commands["E1"].reason)) == (10.0, "fuse L1")
    assert result.limiting == ("fuse L1",)


def test_limiting_names_the_fail_safe() -> None:
    result = allocate(site(failsafe_reason="grid meter M1 stale"), [ch(state=A)], Settings(), AllocationState(), 0.0)
    assert result.limiting == ("fail-safe: grid meter M1 stale",)
    assert result.power_headroom_w == 4200.0


def test_no_power_limit_reports_none() -> None:
    result = allocate(site(), [ch()], Settings(), AllocationState(), 0.0)
    assert result.power_headroom_w is None


def test_result_does_not_depend_on_input_order() -> None:
    s = site(main_fuse_a=20.0, unbalanced_limit_a=10.0, chargers_limit_w=9000.0)
    chargers = [ch("E1", phases=1, phase=0), ch("E2"), ch("E3", phases=1, phase=2, prio=1), ch("E4", state=B)]
    memory = AllocationState({"E1": mem(10), "E2": mem(8), "E3": mem(6)})
    one = allocate(s, chargers, Settings(), memory, 5.0)
    two = allocate(s, list(reversed(chargers)), Settings(), memory, 5.0)
    assert one == two


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError):
        ch(phases=2)
    with pytest.raises(ValueError):
        ch(phases=1, phase=3)
    with pytest.raises(ValueError):
        ch(draw=(float("nan"), 0.0, 0.0))
    with pytest.raises(ValueError):
        site(grid_limit_w=float("nan"))
    with pytest.raises(ValueError):
        site(chargers_limit_w=float("-inf"))
    with pytest.raises(ValueError):
        Settings(increase_step_a=-1.0)
    with pytest.raises(ValueError):
        allocate(site(), [ch("E1"), ch("E1")], Settings(), AllocationState(), 0.0)


def test_infinite_limits_mean_no_limit() -> None:
    s = site(grid_limit_w=float("inf"), unbalanced_limit_a=float("inf"))
    charger = ch(phases=1, max_a=float("inf"), draw=(32.0, 0.0, 0.0))
    result = allocate(s, [charger], Settings(), AllocationState({"E1": mem(32)}), 0.0)
    assert result.commands["E1"].current_a == 34.0  # ramp +2 A
    assert result.power_headroom_w is None


def test_memory_of_an_offline_charger_keeps_its_pause_timer() -> None:
    state = AllocationState({"E1": mem(0, paused_since=100.0)})
    result = allocate(site(), [ch(online=False)], Settings(), state, 110.0)
    assert result.state.chargers["E1"].offline
    assert result.state.chargers["E1"].paused_since_s == 100.0
    back = allocate(site(), [ch()], Settings(), result.state, 120.0)
    assert back.commands["E1"].reason.text == "min pause (40 s left)"


# ---- scenarios over many cycles ------------------------------------------------------------


@dataclass
class Car:
    """A car that follows its command one cycle late, up to what its battery takes."""

    accepts_a: float = 32.0
    phases: int = 3
    drawn_a: float = 0.0

    def draw(self) -> tuple[float, float, float]:
        if self.phases == 3:
            return (self.drawn_a, self.drawn_a, self.drawn_a)
        return (self.drawn_a, 0.0, 0.0)

    def follow(self, command_a: float) -> None:
        self.drawn_a = min(command_a, self.accepts_a)


class Sim:
    """Runs allocate() once a second over chargers with car models (no meter unless given)."""

    def __init__(self, s: SiteInput, specs: dict[str, ChargerInput], cars: dict[str, Car],
                 settings: Settings | None = None) -> None:
        self.site, self.specs, self.cars = s, specs, cars
        self.settings = settings or Settings()
        self.state = AllocationState()
        self.now_s = 0.0
        self.history: list[Allocation] = []

    def step(self, dt_s: float = 1.0, **changes: ChargerInput) -> Allocation:
        self.specs.update(changes)
        inputs = [replace(spec, drawn_a=self.cars[cid].draw()) if spec.online else spec
                  for cid, spec in self.specs.items()]
        result = allocate(self.site, inputs, self.settings, self.state, self.now_s)
        self.state = result.state
        for cid, car in self.cars.items():
            car.follow(result.commands[cid].current_a)
        self.history.append(result)
        self.now_s += dt_s
        return result

    def currents(self, cid: str) -> list[float]:
        return [a.commands[cid].current_a for a in self.history]


def test_ramp_up_by_step_from_a_start() -> None:
    sim = Sim(site(), {"E1": ch(max_a=16)}, {"E1": Car()})
    for _ in range(8):
        sim.step()
    assert sim.currents("E1") == [6, 8, 10, 12, 14, 16, 16, 16]


def test_draw_limited_car_frees_current_without_oscillation() -> None:
    sim = Sim(site(main_fuse_a=32.0), {"E1": ch("E1", max_a=32), "E2": ch("E2", max_a=32)},
              {"E1": Car(accepts_a=10.0), "E2": Car()})
    for _ in range(120):
        sim.step()
    e1, e2 = sim.currents("E1"), sim.currents("E2")
    assert e1[-1] == pytest.approx(11.5) and e2[-1] == pytest.approx(20.5)
    assert "car draws 10 A" in sim.history[-1].commands["E1"].reason.text
    assert len(set(e1[-90:])) == 1 and len(set(e2[-90:])) == 1  # settled, no oscillation
    assert all(a + b <= 32 + 1e-9 for a, b in zip(e1, e2, strict=True))


def test_draw_jitter_does_not_move_the_command() -> None:
    sim = Sim(site(), {"E1": ch(max_a=16)}, {"E1": Car(accepts_a=9.0)})
    for i in range(100):
        sim.cars["E1"].accepts_a = 9.0 + (0.3 if i % 2 else -0.3)
        sim.step()
    assert len(set(sim.currents("E1")[-70:])) == 1


def test_draw_limited_car_wanting_more_again_ramps_up() -> None:
    sim = Sim(site(main_fuse_a=32.0), {"E1": ch("E1", max_a=32), "E2": ch("E2", max_a=32)},
              {"E1": Car(accepts_a=10.0), "E2": Car()})
    for _ in range(60):
        sim.step()
    sim.cars["E1"].accepts_a = 32.0  # battery warmed up: the car takes everything it gets
    for _ in range(60):
        sim.step()
    assert sim.currents("E1")[-1] == 16 and sim.currents("E2")[-1] == 16


def test_full_car_in_state_b_holds_only_min() -> None:
    sim = Sim(site(main_fuse_a=32.0), {"E1": ch("E1", max_a=32, state=B), "E2": ch("E2", max_a=32)},
              {"E1": Car(accepts_a=0.0), "E2": Car()})
    for _ in range(30):
        sim.step()
    assert sim.currents("E1")[-1] == 6 and sim.currents("E2")[-1] == 26


def test_shortage_pause_lasts_min_pause() -> None:
    sim = Sim(site(main_fuse_a=32.0), {"E1": ch()}, {"E1": Car()})
    for _ in range(10):
        sim.step()
    sim.site = site(main_fuse_a=4.0)
    paused = sim.step()
    assert paused.commands["E1"].current_a == 0.0
    assert paused.commands["E1"].reason == Reason(Why.PAUSED, "paused: fuse L1 (min 6 A not available)", "fuse L1")
    sim.site = site(main_fuse_a=32.0)
    for _ in range(59):
        assert sim.step().commands["E1"].current_a == 0
    assert sim.history[-1].commands["E1"].reason.text == "min pause (1 s left)"
    started = sim.step().commands["E1"]
    assert (started.current_a, started.reason.kind, str(started.reason)) == (6.0, Why.STARTING, "starting at min 6 A")


def test_rule_pause_also_starts_the_timer() -> None:
    sim = Sim(site(), {"E1": ch()}, {"E1": Car()})
    for _ in range(5):
        sim.step()
    assert sim.step(E1=ch(cap=0.0, cap_reason='rule "tariff"')).commands["E1"].reason.text == 'rule "tariff"'
    resumed = sim.step(E1=ch())
    assert resumed.commands["E1"].current_a == 0 and resumed.commands["E1"].reason.text.startswith("min pause")


def test_unplugging_clears_the_timer_so_a_new_car_starts_at_once() -> None:
    sim = Sim(site(), {"E1": ch()}, {"E1": Car()})
    for _ in range(5):
        sim.step()
    sim.step(E1=ch(cap=0.0, cap_reason="override"))  # paused: timer runs
    assert sim.step(E1=ch(state=A)).commands["E1"].reason.text == "no car"
    assert sim.step(E1=ch(state=C)).commands["E1"].current_a == 6


def test_no_car_does_not_start_a_timer() -> None:
    sim = Sim(site(), {"E1": ch()}, {"E1": Car()})
    for _ in range(5):
        sim.step()
    sim.step(E1=ch(state=A))
    assert sim.step(E1=ch(state=C)).commands["E1"] == sim.history[0].commands["E1"]  # 6 A, starting


def test_the_latest_started_is_paused_when_current_runs_short() -> None:
    sim = Sim(site(main_fuse_a=32.0), {"E1": ch("E1"), "E2": ch("E2", state=A)}, {"E1": Car(), "E2": Car()})
    for _ in range(5):
        sim.step()
    for _ in range(5):
        sim.step(E2=ch("E2"))
    sim.site = site(main_fuse_a=10.0)
    result = sim.step()
    assert result.commands["E1"].current_a == 10 and result.commands["E2"].current_a == 0


def test_offline_charger_back_starts_from_its_measured_draw() -> None:
    sim = Sim(site(), {"E1": ch(max_a=32)}, {"E1": Car()})
    sim.step()
    sim.step(E1=ch(max_a=32, online=False))
    sim.cars["E1"].drawn_a = 6.0  # the box applied its own fail-safe current
    back = sim.step(E1=ch(max_a=32))
    assert back.commands["E1"].current_a == 8.0


def test_many_chargers_in_a_car_park_stay_fast() -> None:
    import time

    chargers = {f"E{i:03d}": ch(f"E{i:03d}", phases=1 if i % 3 else 3, phase=i % 3, prio=i % 2)
                for i in range(100)}
    sim = Sim(site(main_fuse_a=250.0, unbalanced_limit_a=20.0, chargers_limit_w=150000.0), chargers,
              {cid: Car(accepts_a=10.0 + i % 7, phases=c.phases) for i, (cid, c) in enumerate(chargers.items())})
    started = time.perf_counter()
    for _ in range(20):
        sim.step()
    per_cycle_s = (time.perf_counter() - started) / 20
    assert per_cycle_s < 0.1, per_cycle_s


def test_rounding_never_widens_an_imbalance() -> None:
    """E2 (L2) is rounded down from 7.25 to 7.2 A; E1 (L1) sits at E2 + 10.05 A = 17.3 A, which would
    then be 10.1 A apart. The final check takes E1 down to 17.2 A."""
    s = site(main_fuse_a=63.0, unbalanced_limit_a=10.05, grid_current_a=(32.0, 7.25, 30.0))  # others: 0, 0, 30
    chargers = [ch("E1", phases=1, phase=0, max_a=32, draw=(32.0, 0.0, 0.0)),
                ch("E2", phases=1, phase=1, max_a=7.25, draw=(7.25, 0.0, 0.0))]
    result = allocate(s, chargers, Settings(), AllocationState({"E1": mem(32), "E2": mem(7.25)}), 0.0)
    assert result.commands["E2"].current_a == 7.2
    assert result.commands["E1"].current_a == 17.2
    assert result.commands["E1"].reason.text == "phase imbalance L1-L2"
    assert "phase imbalance L1-L2" in result.limiting


# ---- after the write step ---------------------------------------------------------------------


def test_acknowledge_makes_the_memory_what_the_boxes_have() -> None:
    """A held-back increase ramps from the limit in force; a box not written counts from its draw."""
    from controller.allocation import acknowledge

    decided = AllocationState({"E1": mem(14), "E2": mem(8), "E3": mem(6), "E4": ChargerMemory(0.0, None, offline=True)})
    after = acknowledge(decided, {"E1": 14.0, "E2": 6.0, "E3": None, "E4": None})
    assert after.chargers["E1"] == decided.chargers["E1"]  # written as decided
    assert after.chargers["E2"].current_a == 6.0  # its increase was held back: still at 6 A
    assert after.chargers["E3"].offline  # never written: next cycle starts from its measured draw
    assert after.chargers["E4"] == decided.chargers["E4"]  # offline stays as it was
    # next cycle: E2 ramps from 6, not from the 8 A it never got
    result = allocate(site(), [ch("E2", draw=(6.0, 6.0, 6.0))], Settings(increase_step_a=2.0), after, 2000.0)
    assert result.commands["E2"].current_a == 8.0
