"""Property: after every single write, no phase is over the fuse and no imbalance is widened past
its limit, on random sites with random bus latencies and random faults at random times.

Each example is a whole site on real sockets: a grid meter and two or three wallboxes (Heidelberg
on the RS485 line, Alfen, ABB and cFos on Modbus TCP), 1- or 3-phase, some already charging when
gridcharge starts, each device answering after its own latency (some longer than the loop's
deadlines, so readings arrive a cycle late and writes miss their deadline). During the run,
boxes and the meter fall silent and come back, the house load steps, cars arrive and leave.
The simulator and the loop share one FakeClock (a 3 s watchdog is six 0.5 s cycles); the
latencies are real. GridWatch (grid_watch.py) judges every change of the grid currents that the
world did not make itself.

The examples are fixed (derandomized) so CI is repeatable; set GRIDCHARGE_PROPERTY_EXAMPLES to
run more, with a fresh seed each run, e.g. ``GRIDCHARGE_PROPERTY_EXAMPLES=200 make test``.

Without a grid meter reading (the meter silent, or not read yet at start) gridcharge cannot know
the house's load; its promise then is the fail-safe limit on the chargers' total
(``failsafe_limit_w``), and whether that fits under the fuse is the installer's choice. The
examples set it to 0, so the fuse and imbalance promises hold in that state too.

Known limit, kept out of the examples: a 3-phase box with a car that charges on one phase
(the allocation counts it on all three phases, which is safe for the fuse but not for the
imbalance; see docs/load-management.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from fake_clock import FakeClock
from grid_watch import GridWatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from site_helpers import make_config

from controller.service import Service
from hal.modbus.profile import PROFILE_NAMES, Kind, load_profile
from hal.sim.physics import SimCar
from hal.sim.site import SimChargerSpec, SimMeterSpec, SimulatedSite

CYCLE_S = 0.5
CYCLES = 16
EXAMPLES = int(os.environ.get("GRIDCHARGE_PROPERTY_EXAMPLES", "6"))
LATENCIES_S = (0.0, 0.0, 0.01, 0.05, 0.3)  # 0.3 s: beyond the read deadline (0.35 s with the line)
#: Every packaged charger model, on the link its profile says it speaks.
MODELS = {name: load_profile(name).link.protocol for name in PROFILE_NAMES if load_profile(name).kind is Kind.CHARGER}


@dataclass(frozen=True)
class Event:
    cycle: int
    what: str  # silent | back | base | plug | unplug | latency
    target: str = ""
    value: Any = None


@dataclass(frozen=True)
class Scenario:
    fuse_a: float
    imbalance_a: float | None
    step_a: float
    base_a: tuple[float, float, float]
    meter: SimMeterSpec
    chargers: tuple[SimChargerSpec, ...]
    events: tuple[Event, ...]


amps = st.sampled_from([0.0, 2.0, 5.0, 8.0, 12.0])


@st.composite
def chargers(draw: st.DrawFn, cid: str) -> SimChargerSpec:
    model = draw(st.sampled_from(sorted(MODELS)))
    phases = draw(st.sampled_from([1, 3]))
    car = draw(st.one_of(st.none(), st.builds(SimCar, max_current_a=st.sampled_from([10.0, 16.0, 32.0]),
                                              phases=st.just(phases))))
    return SimChargerSpec(cid, model, MODELS[model], phases=phases, phase=draw(st.sampled_from(["L1", "L2", "L3"])),
                          max_current_a=16.0, car=car, initial_limit_a=draw(st.sampled_from([0.0, 6.0, 10.0, 16.0])),
                          latency_s=draw(st.sampled_from(LATENCIES_S)))


@st.composite
def events(draw: st.DrawFn, ids: list[str]) -> tuple[Event, ...]:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        cycle = draw(st.integers(0, CYCLES - 2))
        what = draw(st.sampled_from(["silent", "silent", "base", "plug", "unplug", "latency"]))
        target = draw(st.sampled_from(ids + ["M1"])) if what in ("silent", "latency") else draw(st.sampled_from(ids))
        if what == "silent":
            out.append(Event(cycle, "silent", target))
            out.append(Event(cycle + draw(st.integers(1, 12)), "back", target))
        elif what == "base":
            out.append(Event(cycle, "base", value=(draw(amps), draw(amps), draw(amps))))
        elif what == "latency":
            out.append(Event(cycle, "latency", target, draw(st.sampled_from(LATENCIES_S))))
        else:
            out.append(Event(cycle, what, target))
    return tuple(sorted(out, key=lambda e: e.cycle))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ids = [f"E{i + 1}" for i in range(draw(st.integers(2, 3)))]
    return Scenario(
        fuse_a=draw(st.sampled_from([25.0, 32.0, 40.0])),
        imbalance_a=draw(st.sampled_from([None, 20.0, 10.0])),
        step_a=draw(st.sampled_from([2.0, 16.0])),
        base_a=(draw(amps), draw(amps), draw(amps)),
        meter=SimMeterSpec("M1", "sdm630", draw(st.sampled_from(["tcp", "rtu"])),
                           latency_s=draw(st.sampled_from(LATENCIES_S))),
        chargers=tuple(draw(chargers(cid)) for cid in ids),
        events=draw(events(ids)),
    )


def run(scenario: Scenario) -> tuple[list[str], Any]:
    clock = FakeClock()
    site = SimulatedSite(meter=scenario.meter, chargers=list(scenario.chargers), base_load_a=scenario.base_a,
                         clock=clock.monotonic)
    watch = GridWatch(site)
    service = None
    try:
        site.start()
        cfg = make_config(site, site={
            "main_fuse_a": scenario.fuse_a, "unbalanced_limit_a": scenario.imbalance_a, "chargers_limit_w": None,
            "increase_step_a": scenario.step_a, "cycle_s": CYCLE_S, "stale_s": 1.5, "watchdog_s": 3,
            "failsafe_limit_w": 0,
        })
        service = Service(cfg, clock=clock)
        pending = list(scenario.events)
        status = None
        for cycle in range(CYCLES):
            while pending and pending[0].cycle == cycle:
                apply(site, watch, pending.pop(0), scenario)
            status = service.loop.run_once()
            clock.advance(CYCLE_S)
        return watch.violations(scenario.fuse_a, scenario.imbalance_a), status
    finally:
        if service is not None:
            service.close()
        site.stop()


def apply(site: SimulatedSite, watch: GridWatch, event: Event, scenario: Scenario) -> None:
    if event.what == "silent":
        site.set_silent(event.target, True)
    elif event.what == "back":
        site.set_silent(event.target, False)
    elif event.what == "latency":
        site.set_latency(event.target, event.value)
    with watch.world():
        if event.what == "base":
            site.set_base_load(*event.value)
        elif event.what == "plug" and site.wallbox(event.target).car is None:
            phases = next(c.phases for c in scenario.chargers if c.id == event.target)
            site.plug_car(event.target, SimCar(max_current_a=16.0, phases=phases))
        elif event.what == "unplug":
            site.unplug(event.target)


@settings(max_examples=EXAMPLES, deadline=None, derandomize="GRIDCHARGE_PROPERTY_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_no_write_puts_a_phase_over_the_fuse_or_widens_the_imbalance(scenario: Scenario) -> None:
    violations, status = run(scenario)
    assert violations == [], (violations, [c.reason for c in status.chargers])
    assert status.failed_cycles == 0
