"""OCPP 1.6J wallboxes under load management, over real WebSockets on loopback.

The simulated boxes (``hal.sim.ocpp_box``) are real OCPP clients written with the same ``ocpp``
package; the controller is the real ``Service``. Its loop runs on a FakeClock moved by the test,
the boxes and the central system in real time (MeterValues every second, as the cycle asks).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_clock import FakeClock
from pki import make_pki
from site_helpers import BASE_SITE, cycles, home_site
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from controller.build import build_hardware
from controller.config import parse_config
from controller.service import Service
from hal.sim.ocpp_box import SimOcppBox
from hal.sim.physics import SimCar
from hal.sim.wallbox import WallboxConfig
from hal.types import IecState, SessionEvent, SessionEventKind

PASSWORD = "box-secret"
EPS = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ocpp_entry(box_id: str = "EVB-P2231", **extra: Any) -> dict[str, Any]:
    return {"model": "ocpp", "charge_box_id": box_id, "password": PASSWORD, "phases": 3,
            "min_current_a": 6, "max_current_a": 16, **extra}


def ocpp_config(port: int, chargers: dict[str, Any] | None = None, *, tls: tuple[Path, Path] | None = None,
                site: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Any:
    ocpp: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if tls is not None:
        ocpp["cert"], ocpp["key"] = str(tls[0]), str(tls[1])
    data: dict[str, Any] = {
        "site": {"main_fuse_a": 32, "min_pause_s": 0, "stale_s": 3, "cycle_s": 1.0, "increase_step_a": 32,
                 **(site or {})},
        "state_dir": tempfile.mkdtemp(prefix="gc-ocpp-"),
        "ocpp": ocpp,
        "chargers": chargers if chargers is not None else {"E3": ocpp_entry()},
        **(extra or {}),
    }
    return parse_config(data, source="test")


@pytest.fixture()
def port() -> int:
    return free_port()


@pytest.fixture()
def cleanup() -> Iterator[list[Callable[[], None]]]:
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def service_for(cfg: Any, cleanup: list[Callable[[], None]]) -> tuple[Service, FakeClock]:
    clock = FakeClock()
    service = Service(cfg, clock=clock)
    cleanup.append(service.close)
    return service, clock


def box_for(port: int, cleanup: list[Callable[[], None]], box_id: str = "EVB-P2231", **kw: Any) -> SimOcppBox:
    kw.setdefault("password", PASSWORD)
    scheme = "wss" if kw.get("ssl_context") is not None else "ws"
    box = SimOcppBox(f"{scheme}://127.0.0.1:{port}/ocpp", box_id, **kw)
    cleanup.append(box.stop)
    return box.start()


def run_until(service: Service, clock: FakeClock, done: Callable[[Any], bool], timeout_s: float = 8.0) -> Any:
    """Cycles (one FakeClock second, a quarter of a real second each) until ``done(status)``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = service.loop.run_once()
        clock.advance(1.0)
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


def profile_limits(box: SimOcppBox) -> list[float]:
    return [p["charging_schedule"]["charging_schedule_period"][0]["limit"] for p in box.calls("SetChargingProfile")]


# --------------------------------------------------------------------------- boot, readings, limits


def test_boot_configures_the_box_and_writes_a_profile_at_once(port: int, cleanup: list) -> None:
    service, _ = service_for(ocpp_config(port), cleanup)
    box = box_for(port, cleanup)
    assert box.wait_for(lambda: box.has_profile and len(box.calls("ChangeConfiguration")) >= 2)
    assert box.boots == 1 and box.configuration == {
        "MeterValuesSampledData": "Current.Import,Power.Active.Import,Energy.Active.Import.Register",
        "MeterValueSampleInterval": "1"}
    first = box.calls("SetChargingProfile")[0]
    assert first["connector_id"] == 1 and first["charging_profile_purpose"] == "TxDefaultProfile"
    assert first["stack_level"] == 1 and first["charging_schedule"]["charging_rate_unit"] == "A"
    periods = first["charging_schedule"]["charging_schedule_period"]
    assert periods == [{"start_period": 0, "limit": 0.0, "number_phases": 3}]
    assert box.limit_a == 0.0  # before any cycle: paused, not the car's full rating
    link = service.hw.links["ocpp"].link_stats()
    assert link.details["connected"] == 1 and link.requests >= 3 and link.errors == 0


def test_status_and_meter_values_become_readings_and_limits_are_followed(port: int, cleanup: list) -> None:
    service, clock = service_for(ocpp_config(port), cleanup)
    box = box_for(port, cleanup)
    box.plug(SimCar(max_current_a=16))
    status = run_until(service, clock, lambda s: s.charger("E3").device.reading is not None
                       and s.charger("E3").device.reading.power_w is not None
                       and s.charger("E3").device.reading.current_a[0] > 15)
    e3 = status.charger("E3")
    reading = e3.device.reading
    assert e3.device.online and e3.device.address == "OCPP EVB-P2231 connector 1" and e3.device.model == "ocpp"
    assert reading.state is IecState.C and reading.raw_state == "Charging"
    assert reading.current_a == pytest.approx((16.0, 16.0, 16.0), abs=0.05)
    assert reading.power_w == pytest.approx(sum(16.0 * v for v in (231.2, 229.6, 230.4)), rel=0.01)
    assert reading.energy_wh is not None and reading.measured_s == pytest.approx(time.time(), abs=3)
    assert box.limit_a == 16.0 == e3.command_a and reading.limit_a == 16.0


def test_a_rule_lowers_the_box_and_it_follows(port: int, cleanup: list) -> None:
    cfg = ocpp_config(port, extra={"variables": {"CAP": 10}, "rules": [{"name": "cap", "max_current_a": "CAP"}]})
    service, clock = service_for(cfg, cleanup)
    box = box_for(port, cleanup)
    box.plug(SimCar(max_current_a=16))
    status = run_until(service, clock, lambda s: (s.charger("E3").device.reading or None) is not None
                       and s.charger("E3").device.reading.current_a[0] == pytest.approx(10, abs=0.05))
    assert status.charger("E3").command_a == 10 and box.limit_a == 10
    assert box.wallbox.phase_currents_a() == (10.0, 10.0, 10.0)
