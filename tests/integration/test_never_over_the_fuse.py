"""Never over the fuse, not even between two writes: the installer's scenarios on real sockets.

The simulated boxes behave as real ones do: a box keeps charging at its last setpoint across a
restart of gridcharge, a silent box keeps its setpoint until its own watchdog falls back, and
the RS485 line is slower than TCP (wire time at 19200 baud plus the Heidelberg's 100 ms gap).
The grid currents are checked at every change (tests/integration/grid_watch.py). The simulator
and the loop share one FakeClock, so a 15 s watchdog is 15 cycles of the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_clock import FakeClock
from grid_watch import GridWatch
from site_helpers import cycles, make_config

from controller.service import Service
from hal.sim.physics import SimCar
from hal.sim.site import SimChargerSpec, SimMeterSpec, SimulatedSite

FUSE_A = 32.0
IMBALANCE_A = 20.0


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def started() -> Iterator[list[Any]]:
    """Sites and services to stop at the end of the test."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        (thing.close if isinstance(thing, Service) else thing.stop)()


def heidelberg_and_alfen(clock: FakeClock, *, phases: int = 3, base: tuple[float, float, float] = (10, 10, 10),
                         alfen_car: bool = True) -> SimulatedSite:
    """The issue's site: a Heidelberg on RS485 already charging at 16 A when gridcharge starts
    (a restart after an update), an Alfen on Modbus TCP left paused by the previous run."""
    phase = "L1"
    return SimulatedSite(
        meter=SimMeterSpec("M1", "sdm630", "tcp", unit=1),
        chargers=[
            SimChargerSpec("E1", "heidelberg", "rtu", unit=2, phases=phases, phase=phase,
                           car=SimCar(max_current_a=16, phases=phases), initial_limit_a=16.0),
            SimChargerSpec("E2", "alfen", "tcp", unit=1, phases=phases, phase=phase,
                           car=SimCar(max_current_a=16, phases=phases) if alfen_car else None,
                           initial_limit_a=0.0, max_current_a=16.0),
        ],
        base_load_a=base,
        clock=clock.monotonic,
    )


def start(site: SimulatedSite, clock: FakeClock, started: list[Any], *, rules: list[Any] | None = None,
          **site_cfg: Any) -> Service:
    site.start()
    started.append(site)
    cfg = make_config(site, site={"main_fuse_a": FUSE_A, "unbalanced_limit_a": IMBALANCE_A,
                                  "increase_step_a": 2, "chargers_limit_w": None, **site_cfg}, rules=rules or [])
    service = Service(cfg, clock=clock)
    started.append(service)
    return service


def test_at_start_the_charging_box_is_lowered_before_the_other_starts(clock: FakeClock, started: list[Any]) -> None:
    """20 A left for the cars: the Heidelberg must drop 16 -> 14 A before the Alfen starts at 6 A
    (its three setup writes on the slow line come after the decrease, not before it)."""
    site = heidelberg_and_alfen(clock, base=(12, 12, 12))
    watch = GridWatch(site)
    assert max(site.physics.grid_currents_a()) == pytest.approx(28.0)  # 12 A house + 16 A car
    service = start(site, clock, started)
    first = cycles(service, clock, 1)[0]
    assert (first.charger("E1").written_a, first.charger("E2").written_a) == (14.0, 6.0)
    statuses = cycles(service, clock, 7)
    assert watch.violations(FUSE_A, IMBALANCE_A) == []
    assert max(watch.peak()) <= FUSE_A + 0.5
    e1, e2 = statuses[-1].charger("E1"), statuses[-1].charger("E2")
    assert e2.written_a is not None and e2.written_a >= 6, e2.reason  # the Alfen did start
    assert e1.written_a is not None and e1.written_a + e2.written_a <= FUSE_A - 12 + 0.01


def test_two_one_phase_boxes_on_l1_at_start_keep_the_imbalance(clock: FakeClock, started: list[Any]) -> None:
    """L1 already carries 22 A more than L2 at start (over the 20 A limit): the first write must
    narrow it, never widen it to 24 A."""
    site = heidelberg_and_alfen(clock, phases=1, base=(8, 2, 2))
    watch = GridWatch(site)
    service = start(site, clock, started)
    statuses = cycles(service, clock, 8)
    assert watch.violations(FUSE_A, IMBALANCE_A) == []
    grid = site.physics.grid_currents_a()
    assert grid[0] - grid[1] <= IMBALANCE_A + 0.01
    assert statuses[-1].charger("E2").written_a, statuses[-1].charger("E2").reason  # it charges too


def test_a_silent_box_keeps_its_last_limit_until_its_own_watchdog_falls_back(
        clock: FakeClock, started: list[Any]) -> None:
    site = heidelberg_and_alfen(clock)
    watch = GridWatch(site)
    service = start(site, clock, started, watchdog_s=6)
    before = cycles(service, clock, 8)[-1]  # the last request reaches E1 at t = 7 s (from 0)
    e1_limit = before.charger("E1").written_a
    assert e1_limit is not None and e1_limit >= 6 and before.charger("E2").written_a
    site.set_silent("E1")
    during = cycles(service, clock, 4)  # offline after stale_s (3 s); its own watchdog ends at 13 s
    e1 = during[-1].charger("E1")
    assert not e1.device.online
    assert f"offline: reserving {e1_limit:g} A as last given until its watchdog falls back" in e1.reason.text, e1.reason
    assert site.wallbox("E1").failsafe_active is False  # the box itself still charges at its limit
    assert max(s.charger("E2").command_a for s in during) <= before.charger("E2").command_a + 0.01
    after = cycles(service, clock, 6)  # fallen back to 6 A at 13 s; from 15 s (the margin) E2 may rise
    assert site.wallbox("E1").failsafe_active
    assert "6 A fail-safe (its watchdog has fallen back)" in after[-1].charger("E1").reason.text
    assert after[-1].charger("E2").command_a > before.charger("E2").command_a
    assert watch.violations(FUSE_A, IMBALANCE_A) == []
    assert max(watch.peak()) <= FUSE_A + 0.5


def test_a_box_that_comes_back_draws_what_it_measures_until_written(clock: FakeClock, started: list[Any]) -> None:
    site = heidelberg_and_alfen(clock)
    watch = GridWatch(site)
    service = start(site, clock, started, watchdog_s=6)
    cycles(service, clock, 8)
    site.set_silent("E1")
    cycles(service, clock, 12)  # fallen back to 6 A; E2 raised meanwhile
    site.set_silent("E1", False)
    back = cycles(service, clock, 1)[0]
    assert back.charger("E1").device.online
    status = cycles(service, clock, 6)[-1]
    assert status.charger("E1").written_a is not None and status.charger("E1").written_a >= 6
    assert watch.violations(FUSE_A, IMBALANCE_A) == []


def test_an_increase_held_back_by_a_failed_decrease_says_why(clock: FakeClock, started: list[Any]) -> None:
    site = heidelberg_and_alfen(clock)
    watch = GridWatch(site)
    rules = [{"name": "E1 low", "chargers": ["E1"], "when": "TARIF == 1", "max_current_a": 6}]
    service = start(site, clock, started, rules=rules)
    before = cycles(service, clock, 10)[-1]
    e2_before = before.charger("E2").written_a
    assert e2_before is not None and before.charger("E1").written_a > 6

    def refuse(*_: Any) -> None:
        from hal.modbus.server import device_answer_error
        raise device_answer_error("write refused", 4)

    site.bank("E1").write = refuse  # type: ignore[method-assign]  # E1 answers reads, refuses writes
    service.store.set_many([("TARIF", 1)], source="test")  # E1 must drop to 6 A, E2 may rise
    status = cycles(service, clock, 3)[-1]
    e1, e2 = status.charger("E1"), status.charger("E2")
    assert e1.command_a == 6 and e1.written_a == before.charger("E1").written_a
    assert e2.command_a > e2_before and e2.written_a == e2_before
    assert e2.reason.text.startswith("waiting for E1 to lower"), e2.reason
    assert watch.violations(FUSE_A, IMBALANCE_A) == []
