"""Unit tests for hal.sim.physics: draw rules, states, watchdog, energy integration, meter sums."""

from __future__ import annotations

import threading

import pytest
from fake_clock import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from hal.sim.physics import (
    DEFAULT_VOLTAGE_V,
    MIN_DRAW_A,
    KeepaliveOn,
    SimCar,
    SimContact,
    SimSite,
    SimWallbox,
    WallboxConfig,
    phase_index,
)
from hal.types import IecState

V = (230.0, 230.0, 230.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_site(clock: FakeClock, voltage_v=V, **kwargs) -> SimSite:
    return SimSite(clock=clock, voltage_v=voltage_v, **kwargs)


def install(site: SimSite, name: str = "E1", **kwargs) -> SimWallbox:
    config_keys = {"phases", "phase", "max_current_a", "keepalive_on"}
    config = WallboxConfig(**{k: v for k, v in kwargs.items() if k in config_keys})
    rest = {k: v for k, v in kwargs.items() if k not in config_keys}
    return site.add_wallbox(name, SimWallbox(config, **rest))


# -- the car -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered_a", "car_max_a", "wants", "expected_a"),
    [
        (0.0, 16.0, True, 0.0),
        (5.9, 16.0, True, 0.0),
        (6.0, 16.0, True, 6.0),
        (10.0, 16.0, True, 10.0),
        (16.0, 16.0, True, 16.0),
        (32.0, 16.0, True, 16.0),
        (32.0, 32.0, True, 32.0),
        (10.0, 16.0, False, 0.0),
        (20.0, 6.0, True, 6.0),
    ],
)
def test_car_draw_table(offered_a: float, car_max_a: float, wants: bool, expected_a: float) -> None:
    assert SimCar(max_current_a=car_max_a, wants_charge=wants).draw_a(offered_a) == expected_a


@given(st.floats(0, 80, allow_nan=False), st.floats(0, 63, allow_nan=False))
def test_car_never_draws_more_than_offered_or_its_max_nor_below_6a(offered_a: float, car_max_a: float) -> None:
    draw_a = SimCar(max_current_a=car_max_a).draw_a(offered_a)
    assert draw_a <= offered_a and draw_a <= car_max_a
    assert draw_a == 0.0 or draw_a >= MIN_DRAW_A or car_max_a < MIN_DRAW_A


@pytest.mark.parametrize("bad", [{"phases": 2}, {"max_current_a": -1.0}, {"follow_delay_s": -1.0}])
def test_car_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        SimCar(**bad)


def test_phase_names() -> None:
    assert [phase_index(p) for p in ("L1", "l2", "L3", 1, 2, 3)] == [0, 1, 2, 0, 1, 2]
    for bad in ("L4", "N", 0, 4):
        with pytest.raises(ValueError):
            phase_index(bad)
    with pytest.raises(ValueError):
        WallboxConfig(phases=2)
    with pytest.raises(ValueError):
        WallboxConfig(phase="L0")


# -- wallbox states and draw ---------------------------------------------------------------------


def test_states_a_b_c(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, initial_limit_a=0.0)
    assert box.state() is IecState.A
    site.plug_car("E1", SimCar(max_current_a=16))
    assert box.state() is IecState.B
    assert box.phase_currents_a() == (0.0, 0.0, 0.0)
    box.set_limit(10)
    assert box.state() is IecState.C
    assert box.phase_currents_a() == (10.0, 10.0, 10.0)
    box.set_limit(5)  # below 6 A: the car stops, stays connected
    assert box.state() is IecState.B
    assert box.phase_currents_a() == (0.0, 0.0, 0.0)
    box.set_limit(16)
    box.set_car_wants_charge(False)  # battery full
    assert box.state() is IecState.B
    box.set_car_wants_charge(True)
    assert box.state() is IecState.C
    site.unplug(box)
    assert box.state() is IecState.A
    assert box.phase_currents_a() == (0.0, 0.0, 0.0)


def test_initial_limit_is_hardware_max(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, max_current_a=16)
    site.plug_car(box, SimCar(max_current_a=32))
    assert box.phase_currents_a() == (16.0, 16.0, 16.0)


def test_box_clamps_limit_to_its_hardware_max(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, max_current_a=16)
    site.plug_car(box, SimCar(max_current_a=32))
    box.set_limit(25)
    assert box.phase_currents_a() == (16.0, 16.0, 16.0)
    assert box.values()["limit_written_a"] == 25
    assert box.values()["limit_a"] == 16  # what the box applies


@pytest.mark.parametrize(
    ("box_phases", "box_phase", "car_phases", "expected"),
    [
        (3, "L1", 3, (10.0, 10.0, 10.0)),
        (3, "L1", 1, (10.0, 0.0, 0.0)),
        (3, "L3", 1, (0.0, 0.0, 10.0)),
        (1, "L2", 3, (0.0, 10.0, 0.0)),
        (1, "L3", 1, (0.0, 0.0, 10.0)),
    ],
)
def test_draw_phases(clock: FakeClock, box_phases: int, box_phase: str, car_phases: int, expected) -> None:
    site = make_site(clock)
    box = install(site, phases=box_phases, phase=box_phase)
    site.plug_car(box, SimCar(phases=car_phases))
    box.set_limit(10)
    assert box.phase_currents_a() == expected
    assert site.grid_currents_a() == expected


def test_enable_switch_pauses_and_keeps_limit(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site)
    site.plug_car(box)
    box.set_limit(12)
    box.set_enabled(False)
    assert box.phase_currents_a() == (0.0, 0.0, 0.0)
    assert box.state() is IecState.B
    box.set_enabled(True)
    assert box.phase_currents_a() == (12.0, 12.0, 12.0)


def test_negative_limit_rejected(clock: FakeClock) -> None:
    box = install(make_site(clock))
    with pytest.raises(ValueError):
        box.set_limit(-1)
    with pytest.raises(ValueError):
        box.configure_watchdog(timeout_s=-1)
    with pytest.raises(ValueError):
        box.configure_watchdog(failsafe_current_a=-1)


def test_car_follows_after_its_delay(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, initial_limit_a=0.0)
    site.plug_car(box, SimCar(follow_delay_s=2.0))
    box.set_limit(10)
    assert box.phase_currents_a() == (0.0, 0.0, 0.0)
    clock.advance(1.999)
    assert box.state() is IecState.B
    clock.advance(0.001)
    assert box.phase_currents_a() == (10.0, 10.0, 10.0)
    box.set_limit(16)
    clock.advance(1.0)
    box.set_limit(8)  # two changes in flight: the car follows each in turn
    clock.advance(1.0)
    assert box.phase_currents_a() == (16.0, 16.0, 16.0)
    clock.advance(1.0)
    assert box.phase_currents_a() == (8.0, 8.0, 8.0)


def test_energy_integrates_exactly_across_a_delayed_change(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, initial_limit_a=0.0)
    site.plug_car(box, SimCar(follow_delay_s=10.0))
    box.set_limit(10)
    clock.advance(3610.0)  # 10 s at 0 A, then 3600 s at 10 A on three phases
    assert box.energy_wh == pytest.approx(10 * 690.0)
    assert site.meter_values()["import_wh"] == pytest.approx(10 * 690.0)


# -- watchdog ------------------------------------------------------------------------------------


def test_watchdog_off_keeps_last_limit_forever(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site)
    site.plug_car(box)
    box.set_limit(10)
    clock.advance(1e6)
    assert box.phase_currents_a() == (10.0, 10.0, 10.0)
    assert not box.failsafe_active


def test_watchdog_write_keepalive_ignores_reads(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, keepalive_on=KeepaliveOn.WRITE, watchdog_timeout_s=60, failsafe_current_a=6)
    site.plug_car(box)
    box.set_limit(16)
    for _ in range(5):  # reads every 10 s do not count for an Alfen
        clock.advance(10)
        box.touch()
    clock.advance(9.9)
    assert box.phase_currents_a() == (16.0, 16.0, 16.0)
    assert box.values()["watchdog_remaining_s"] == pytest.approx(0.1)
    clock.advance(0.1)
    assert box.failsafe_active
    assert box.phase_currents_a() == (6.0, 6.0, 6.0)
    assert box.values()["limit_written_a"] == 16  # the register keeps what was written
    assert box.values()["limit_a"] == 6
    box.set_limit(16)  # a rewrite restores control
    assert not box.failsafe_active
    assert box.phase_currents_a() == (16.0, 16.0, 16.0)


def test_watchdog_any_request_keepalive(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, keepalive_on="any", watchdog_timeout_s=15, failsafe_current_a=0)
    site.plug_car(box)
    box.set_limit(16)
    for _ in range(10):  # a Heidelberg stays alive on reads alone
        clock.advance(10)
        box.touch()
    assert not box.failsafe_active
    clock.advance(15)
    assert box.failsafe_active
    assert box.state() is IecState.B  # fail-safe 0 A: the car stops
    box.touch()  # a read after expiry does not bring the old limit back
    assert box.failsafe_active
    box.set_limit(10)
    assert box.phase_currents_a() == (10.0, 10.0, 10.0)


def test_setup_configures_watchdog(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site)
    site.plug_car(box)
    box.set_limit(16)
    clock.advance(100)
    box.configure_watchdog(timeout_s=5, failsafe_current_a=8)  # the timer starts now
    clock.advance(4.9)
    assert not box.failsafe_active
    clock.advance(0.1)
    assert box.phase_currents_a() == (8.0, 8.0, 8.0)
    values = box.values()
    assert values["watchdog_timeout_s"] == 5 and values["failsafe_current_a"] == 8


def test_energy_integrates_exactly_across_watchdog_expiry(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, watchdog_timeout_s=1800, failsafe_current_a=6)
    site.plug_car(box)
    box.set_limit(16)
    clock.advance(3600)  # one update: 1800 s at 16 A, then 1800 s at 6 A
    assert box.energy_wh == pytest.approx((16 + 6) * 690.0 / 2)
    assert site.meter_values()["import_wh"] == pytest.approx((16 + 6) * 690.0 / 2)


# -- site and grid meter -------------------------------------------------------------------------


def test_meter_sums_base_load_and_cars(clock: FakeClock) -> None:
    site = make_site(clock, voltage_v=DEFAULT_VOLTAGE_V, base_load_a=(2.0, 3.0, 4.0))
    e1 = install(site, "E1")
    e2 = install(site, "E2", phases=1, phase="L2", max_current_a=32)
    site.plug_car(e1)
    site.plug_car(e2, SimCar(phases=1, max_current_a=32))
    e1.set_limit(10)
    e2.set_limit(20)
    values = site.meter_values()
    currents = (12.0, 33.0, 14.0)
    assert [values[f"current_l{i}_a"] for i in (1, 2, 3)] == list(currents)
    expected_w = sum(i * v for i, v in zip(currents, DEFAULT_VOLTAGE_V))
    assert values["power_w"] == pytest.approx(expected_w)
    assert sum(values[f"power_l{i}_w"] for i in (1, 2, 3)) == pytest.approx(expected_w)
    assert [values[f"voltage_l{i}_v"] for i in (1, 2, 3)] == list(DEFAULT_VOLTAGE_V)
    assert e2.values()["power_w"] == pytest.approx(20 * DEFAULT_VOLTAGE_V[1])


def test_voltages_vary_a_little_by_default() -> None:
    assert len(set(DEFAULT_VOLTAGE_V)) == 3
    assert all(225 < v < 235 for v in DEFAULT_VOLTAGE_V)


def test_import_and_export_energy(clock: FakeClock) -> None:
    site = make_site(clock, base_load_a=(1.0, 1.0, 1.0), import_wh=1000.0)
    clock.advance(3600)
    assert site.meter_values()["import_wh"] == pytest.approx(1000 + 690)
    site.set_base_load(-2.0, -2.0, -2.0)  # PV feeding in
    clock.advance(1800)
    values = site.meter_values()
    assert values["import_wh"] == pytest.approx(1000 + 690)
    assert values["export_wh"] == pytest.approx(690)
    assert values["power_w"] == pytest.approx(-1380)
    assert values["current_l1_a"] == 2.0  # a meter shows the magnitude


def test_explicit_update_and_backwards_clock(clock: FakeClock) -> None:
    site = make_site(clock, base_load_a=(1.0, 0.0, 0.0))
    t0 = clock()
    assert site.update(t0 + 3600) == t0 + 3600
    assert site.meter_values()["import_wh"] == pytest.approx(230)  # clock still at t0: ignored
    site.advance(t0 + 7200)
    assert site.meter_values()["import_wh"] == pytest.approx(460)


def test_box_joining_a_site_takes_its_timeline(clock: FakeClock) -> None:
    other = FakeClock(5.0)
    box = SimWallbox(clock=other, watchdog_timeout_s=10, failsafe_current_a=6)
    site = make_site(clock)
    site.add_wallbox("E1", box)
    site.plug_car("E1")
    clock.advance(9)
    assert not box.failsafe_active
    clock.advance(1)
    assert box.failsafe_active
    with pytest.raises(ValueError):
        site.add_wallbox("E1")
    assert site.wallboxes == {"E1": box}


def test_set_car_wants_charge_needs_a_car(clock: FakeClock) -> None:
    box = install(make_site(clock))
    with pytest.raises(ValueError):
        box.set_car_wants_charge(True)


def test_concurrent_reads_and_writes(clock: FakeClock) -> None:
    site = make_site(clock, base_load_a=(1.0, 1.0, 1.0))
    box = install(site, watchdog_timeout_s=5, failsafe_current_a=6, keepalive_on="any")
    site.plug_car(box)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        last = 0.0
        try:
            while not stop.is_set():
                values = site.meter_values()
                assert values["import_wh"] >= last
                last = values["import_wh"]
                box.values()
                box.touch()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(2000):
        with site.lock:
            clock.advance(0.01)
        box.set_limit(6 + i % 11)
    stop.set()
    for t in threads:
        t.join(5)
    assert not errors
    assert site.meter_values()["import_wh"] > 0


def test_contact() -> None:
    contact = SimContact()
    assert not contact.closed
    contact.set(True)
    assert contact.closed


def test_many_boxes_expire_in_order_and_the_meter_integrates_exactly(clock: FakeClock) -> None:
    site = make_site(clock)
    boxes = [install(site, f"E{i}", watchdog_timeout_s=60.0 * (i + 1), failsafe_current_a=6.0) for i in range(20)]
    for box in boxes:
        site.plug_car(box)
        box.set_limit(16.0)
    clock.advance(3600.0)  # one update: box i ran at 16 A for 60·(i+1) s, then at 6 A
    expected_wh = sum(690.0 * (16.0 * 60 * (i + 1) + 6.0 * (3600 - 60 * (i + 1))) / 3600 for i in range(20))
    assert site.meter_values()["import_wh"] == pytest.approx(expected_wh)
    assert sum(box.energy_wh for box in boxes) == pytest.approx(expected_wh)
    assert all(box.failsafe_active for box in boxes)


def test_feeding_a_watchdog_costs_no_queue_entry(clock: FakeClock) -> None:
    site = make_site(clock)
    box = install(site, keepalive_on="any", watchdog_timeout_s=10.0, failsafe_current_a=6.0)
    site.plug_car(box)
    for _ in range(1000):  # a box polled 1000 times stays alive and the queue stays small
        clock.advance(0.5)
        box.touch()
    assert not box.failsafe_active
    assert len(site.timeline._queue) <= 2  # white-box: the scheduler's own queue
    clock.advance(10.0)
    assert box.failsafe_active
