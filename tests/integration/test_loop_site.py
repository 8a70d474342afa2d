"""The control loop against a simulated site over real Modbus TCP sockets.

Time for staleness and pauses is a FakeClock moved by the test; the devices answer in real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fake_clock import FakeClock

from controller.service import Service
from hal.sim.site import SimulatedSite
from site_helpers import cycles, make_config

Build = Callable[..., tuple[Service, FakeClock]]
EPS = 0.05


def total_power_w(status: Any) -> float:
    return sum(c.command_a * 230 * c.phases for c in status.chargers)


def test_two_cars_share_the_fuse_and_never_exceed_it(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller()
    for i, status in enumerate(cycles(service, clock, 8)):
        grid = sim.physics.grid_currents_a()
        # Before the first write the boxes offer their own maximum; from then on the fuse holds.
        assert max(grid) <= 25 + EPS, (i, grid, [c.reason for c in status.chargers])
    e1, e2 = status.charger("E1"), status.charger("E2")
    assert e1.command_a == pytest.approx(7.5, abs=0.11) and e2.command_a == pytest.approx(7.5, abs=0.11)
    assert "fuse L1" in e1.reason.text
    assert sim.wallbox("E1").values()["limit_written_a"] == pytest.approx(e1.command_a, abs=0.1)
    assert status.failsafe is None and status.cycle_count == 8 and status.failed_cycles == 0


def test_base_load_rise_is_answered_in_the_next_cycle(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller()
    cycles(service, clock, 4)
    sim.set_base_load(16.0, 5.0, 5.0)
    status = cycles(service, clock, 2)[-1]
    assert max(sim.physics.grid_currents_a()) <= 25 + EPS
    assert sum(c.command_a for c in status.chargers) <= 25 - 16 + EPS


def test_wallbox_watchdog_is_configured_at_start(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller(site={"watchdog_s": 20})
    cycles(service, clock, 1)
    box = sim.wallbox("E1").values()  # Heidelberg: registers 257 and 262 set by the setup
    assert box["watchdog_timeout_s"] == pytest.approx(20)
    assert box["failsafe_current_a"] == pytest.approx(service.cfg.chargers["E1"].failsafe_current_a)
    assert box["standby_enabled"] is False


def test_stale_grid_meter_puts_chargers_under_the_failsafe_limit(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller()
    cycles(service, clock, 3)
    sim.set_silent("M1", True)
    status = cycles(service, clock, 2)[-1]
    assert status.failsafe is None  # 2 s old: not stale yet (stale_s 3)
    status = cycles(service, clock, 3)[-1]
    assert status.failsafe is not None and "M1" in status.failsafe
    assert total_power_w(status) <= 4200 + EPS
    assert any("fail-safe" in line for line in status.faults)
    sim.set_silent("M1", False)
    status = cycles(service, clock, 1)[-1]
    assert status.failsafe is None


def test_meter_answering_garbage_is_a_meter_fault(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller()
    cycles(service, clock, 2)
    bank = sim.bank("M1")
    real = bank.source

    class Garbage:
        def values(self) -> dict[str, object]:
            return {**real.values(), "power_w": float("nan")}

    bank.source = Garbage()
    status = cycles(service, clock, 5)[-1]
    assert status.failsafe is not None and "M1" in status.failsafe
    assert not status.meters[0].online and status.failed_cycles == 0
    bank.source = real
    assert cycles(service, clock, 1)[-1].failsafe is None


def test_silent_charger_keeps_its_last_limit_reserved(sim: SimulatedSite, controller: Build) -> None:
    """The Alfen's validity time is 60 s: for that long it keeps charging at its last limit."""
    service, clock = controller()
    last = cycles(service, clock, 3)[-1].charger("E2").written_a
    assert last is not None and last > 0
    sim.set_silent("E2", True)
    status = cycles(service, clock, 5)[-1]
    e1, e2 = status.charger("E1"), status.charger("E2")
    assert not e2.device.online and f"offline: reserving {last:g} A as last given" in e2.reason.text
    assert e1.command_a <= 25 - 10 - last + EPS
    sim.set_silent("E2", False)
    status = cycles(service, clock, 2)[-1]
    assert status.charger("E2").device.online


def test_modbus_input_edge_is_seen_at_the_next_poll(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller()
    assert cycles(service, clock, 2)[-1].chargers_limit_w is None
    sim.set_contact("RSE1", True)
    status = cycles(service, clock, 1)[-1]
    assert status.chargers_limit_w == 4200
    assert total_power_w(status) <= 4200 + EPS


def test_broken_input_restricts_charging(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller()
    cycles(service, clock, 2)
    sim.set_input_broken("RSE1", True)
    status = cycles(service, clock, 5)[-1]
    assert status.failsafe is not None and "chargers_limit_w" in status.failsafe
    assert any(e.where == "site.chargers_limit_w" for e in status.formula_errors)
    assert total_power_w(status) <= 4200 + EPS


def test_rule_pauses_at_the_normal_tariff(sim: SimulatedSite, controller: Build) -> None:
    rule = {"name": "charge only at the reduced tariff", "chargers": ["E1"], "when": "TARIF == 0",
            "max_current_a": 0}
    service, clock = controller(rules=[rule])
    status = cycles(service, clock, 2)[-1]
    assert status.charger("E1").command_a == 0 and "reduced tariff" in status.charger("E1").reason.text
    service.store.set_many([("TARIF", 1)], source="test")
    status = cycles(service, clock, 2)[-1]
    assert status.charger("E1").command_a >= 6


def test_charger_max_formula_error_takes_the_failsafe_value(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller(chargers={"E1": {"max_current_a": "16 * AVAIL / 100"}})
    cycles(service, clock, 3)
    assert service.loop.status.charger("E1").command_a >= 6  # charging
    service.store.set_many([("AVAIL", "1/0")], source="test")
    status = cycles(service, clock, 1)[-1]
    avail = next(v for v in status.variables if v.name == "AVAIL")
    assert avail.value is None and avail.error
    e1 = status.charger("E1")
    assert e1.max_current_a == e1.min_current_a  # charging: its minimum (docs/configuration.md)
    assert any(e.where == "chargers.E1.max_current_a" for e in status.formula_errors)
    sim.unplug("E1")
    status = cycles(service, clock, 2)[-1]
    assert status.charger("E1").max_current_a == 0  # not charging: 0


def test_decreases_are_written_before_increases(sim: SimulatedSite, controller: Build) -> None:
    service, clock = controller(rules=[{"name": "E2 off", "chargers": ["E2"], "when": "TARIF == 1",
                                        "max_current_a": 0},
                                       {"name": "E1 off", "chargers": ["E1"], "when": "TARIF == 0",
                                        "max_current_a": 0}])
    cycles(service, clock, 3)  # E1 paused, E2 charging
    order: list[tuple[str, float]] = []
    for cid, handle in service.hw.chargers.items():
        real_apply = handle.device.apply
        handle.device.apply = lambda a, cid=cid, real=real_apply: (order.append((cid, a)), real(a))[1]
    service.store.set_many([("TARIF", 1)], source="test")  # now E2 must drop, E1 may start
    cycles(service, clock, 1)
    assert [cid for cid, _ in order][:2] == ["E2", "E1"], order
    assert order[0][1] == 0 and order[1][1] >= 6


def test_a_failing_cycle_is_counted_and_the_next_one_runs(
    sim: SimulatedSite, controller: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    import controller.loop as loop_module

    service, clock = controller()
    cycles(service, clock, 1)
    real = loop_module.allocate
    monkeypatch.setattr(loop_module, "allocate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    status = cycles(service, clock, 1)[-1]
    assert status.failed_cycles == 1
    monkeypatch.setattr(loop_module, "allocate", real)
    status = cycles(service, clock, 1)[-1]
    assert status.failed_cycles == 1 and status.cycle_count == 2


def test_variable_change_wakes_the_loop_at_once(sim: SimulatedSite) -> None:
    """Real clock, long cycle: only the wake-up can explain a fast reaction."""
    cfg = make_config(sim, site={"cycle_s": 5.0, "stale_s": 10, "grid_limit_w": "11500 * AVAIL / 100"})
    service = Service(cfg)
    done = threading.Event()
    service.loop.add_cycle_listener(lambda s: done.set() if s.grid_limit_w == 5750 else None)
    service.start()
    try:
        deadline = time.monotonic() + 10
        while service.loop.status.cycle_count < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        service.store.set_many([("AVAIL", 50)], source="test")
        assert done.wait(2.0)
        assert time.monotonic() - t0 < 1.5
    finally:
        service.stop()


def test_gpio_edge_wakes_the_loop_at_once(sim: SimulatedSite) -> None:
    """A ripple-receiver contact on GPIO (gpiozero MockFactory): the edge runs a cycle at once."""
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    cfg = make_config(sim, site={"cycle_s": 5.0, "stale_s": 10, "chargers_limit_w": "4200 if RSE9 else None"},
                      inputs={"RSE9": {"gpio": 17, "pull_up": True, "active_low": True, "bounce_s": 0.01}})
    service = Service(cfg, pin_factory=factory)
    dimmed = threading.Event()
    service.loop.add_cycle_listener(lambda s: dimmed.set() if s.chargers_limit_w == 4200 else None)
    service.start()
    try:
        deadline = time.monotonic() + 10
        while service.loop.status.cycle_count < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.loop.status.chargers_limit_w is None
        t0 = time.monotonic()
        factory.pin(17).drive_low()  # contact closes to GND
        assert dimmed.wait(2.0)
        assert time.monotonic() - t0 < 1.5
    finally:
        service.stop()
        factory.reset()


def test_status_reports_rtu_wire_time_per_cycle() -> None:
    """An SDM630 and a Heidelberg on one RS485 line (pty, 8N1): the status shows the line's use."""
    from hal.sim.physics import SimCar
    from hal.sim.site import SimChargerSpec, SimMeterSpec

    site = SimulatedSite(meter=SimMeterSpec("M1", "sdm630", "rtu", unit=1),
                         chargers=[SimChargerSpec("E1", "heidelberg", "rtu", unit=2, car=SimCar())],
                         base_load_a=(5.0, 5.0, 5.0))
    site.start()
    try:
        cfg = make_config(site, site={"chargers_limit_w": None})
        service = Service(cfg, clock=FakeClock())
        try:
            status = cycles(service, service.loop.clock, 3)[-1]  # type: ignore[arg-type]
        finally:
            service.close()
    finally:
        site.stop()
    (bus,) = [b for b in status.links if "wire_time_s_per_cycle" in b.details]
    # 2 SDM630 blocks + 2 Heidelberg reads at 19200 8N1: about 0.1 s of wire time per cycle.
    assert 0.05 < bus.details["wire_time_s_per_cycle"] < 0.3
    assert bus.errors == 0


def test_systemd_hears_ready_after_the_first_cycle_then_watchdog(sim: SimulatedSite, tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    service = Service(make_config(sim, site={"cycle_s": 0.5, "stale_s": 2}))
    service.start()
    try:
        messages = [sock.recv(4096).decode() for _ in range(3)]
    finally:
        service.stop()
    assert messages[0].startswith("READY=1") and service.loop.status.cycle_count >= 1
    assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
    rest = []
    sock.settimeout(0.5)
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    sock.close()
    assert rest[-1] == "STOPPING=1"


def test_a_slow_rs485_line_still_delivers_every_reading() -> None:
    """Four devices whose reads take longer than the loop's read deadline (real clock): readings
    arrive a cycle late instead of never, and nothing is reported as a fault."""
    from hal.sim.physics import SimCar
    from hal.sim.site import SimChargerSpec, SimMeterSpec

    site = SimulatedSite(meter=SimMeterSpec("M1", "sdm630", "rtu", unit=1),
                         chargers=[SimChargerSpec(f"E{i}", "heidelberg", "rtu", unit=i + 1, car=SimCar())
                                   for i in range(1, 4)],
                         base_load_a=(5.0, 5.0, 5.0))
    site.start()
    try:
        slow = {"gap_s": 0.25}  # 4 devices x >= 0.25 s > the 0.7 s read deadline of a 1 s cycle
        cfg = make_config(site, site={"chargers_limit_w": None, "main_fuse_a": 63},
                          chargers={f"E{i}": slow for i in range(1, 4)})
        service = Service(cfg)
        service.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                last = service.loop.status
                if last.cycle_count >= 5 and all(c.command_a >= 6 for c in last.chargers):
                    break
                time.sleep(0.2)
        finally:
            service.stop()
    finally:
        site.stop()
    assert all(c.device.online and c.device.reading is not None for c in last.chargers), last.faults
    assert last.meters[0].online and not last.faults
    assert all(c.command_a >= 6 for c in last.chargers)
