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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_clock import FakeClock
from ocpp_helpers import BOX_PASSWORD, box_for, run_until
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
from ocpp.v16 import call

PASSWORD = BOX_PASSWORD
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


def service_for(cfg: Any, cleanup: list[Callable[[], None]]) -> tuple[Service, FakeClock]:
    clock = FakeClock()
    service = Service(cfg, clock=clock)
    cleanup.append(service.close)
    return service, clock


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
    # the box applies the profile before its answer reaches the central system, which counts it then
    assert box.wait_for(lambda: service.hw.links["ocpp"].link_stats().requests >= 3)
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
    assert reading.energy_wh is not None and reading.measured_s is not None and 0 <= time.monotonic() - reading.measured_s <= 3
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


def test_modbus_and_ocpp_boxes_share_one_fuse(cleanup: list) -> None:
    """Two Modbus boxes and an OCPP box under one grid meter: the meter sees the OCPP box's
    draw (its wallbox is part of the simulated site's physics), and the fuse holds."""
    sim = home_site(base_load_a=(4.0, 2.0, 2.0))  # 21 A left on L1: three boxes of at least 6 A
    sim.start()
    cleanup.append(sim.stop)
    port = free_port()
    data = sim.config_dict(timeout_s=0.3)
    data["site"] = {**BASE_SITE, "chargers_limit_w": None}
    data["variables"] = {"AVAIL": 100, "TARIF": 0}
    data["state_dir"] = tempfile.mkdtemp(prefix="gc-ocpp-mixed-")
    data["ocpp"] = {"listen": f"127.0.0.1:{port}"}
    data["chargers"]["E3"] = ocpp_entry()
    service, clock = service_for(parse_config(data, source="test"), cleanup)
    box = box_for(port, cleanup)
    sim.physics.add_wallbox("E3", box.wallbox)
    box.plug(SimCar(max_current_a=16))
    peaks: list[float] = []
    sim.physics.watch(lambda _t, currents: peaks.append(max(currents)))
    status = run_until(service, clock, lambda s: s.charger("E3").device.reading is not None
                       and s.charger("E3").device.reading.power_w is not None and s.cycle_count >= 6)
    for _ in range(6):  # settle: every box follows its share
        status = cycles(service, clock, 1)[-1]
        time.sleep(0.25)
    commands = {c.device.id: c.command_a for c in status.chargers}
    assert commands["E3"] >= 6 and sum(commands.values()) <= 25 - 4 + EPS, commands  # 25 A fuse, 4 A base on L1
    grid = sim.physics.grid_currents_a()
    assert max(grid) <= 25 + EPS, (grid, commands)
    assert box.wallbox.phase_currents_a()[0] == pytest.approx(commands["E3"], abs=0.05)
    assert grid[0] == pytest.approx(4 + sum(commands.values()), abs=0.3)  # the meter sees all three boxes
    late = peaks[len(peaks) // 2:]
    assert max(late) <= 25 + EPS


def test_a_rejected_profile_is_a_fault_in_the_status(port: int, cleanup: list) -> None:
    service, clock = service_for(ocpp_config(port), cleanup)
    box = box_for(port, cleanup)
    assert box.wait_for(lambda: box.has_profile)
    box.reject_profiles = True
    box.plug(SimCar(max_current_a=16))
    status = run_until(service, clock, lambda s: any("SetChargingProfile" in f for f in s.faults))
    assert any("E3" in f and "Rejected" in f for f in status.faults), status.faults
    assert box.limit_a == 0.0  # it kept the last profile it accepted
    box.reject_profiles = False
    status = run_until(service, clock, lambda s: box.limit_a == 16.0)
    assert box.limit_a == 16.0 and not any("E3" in f for f in status.faults)


def test_disconnect_and_reconnect_write_the_profile_again(port: int, cleanup: list) -> None:
    cfg = ocpp_config(port, extra={"variables": {"CAP": 10}, "rules": [{"name": "cap", "max_current_a": "CAP"}]})
    service, clock = service_for(cfg, cleanup)
    box = box_for(port, cleanup)
    box.plug(SimCar(max_current_a=16))
    run_until(service, clock, lambda s: box.limit_a == 10.0)
    writes = len(box.calls("SetChargingProfile"))
    box.disconnect()
    status = run_until(service, clock, lambda s: not s.charger("E3").device.online)
    assert not status.charger("E3").device.online and "not connected" in (status.charger("E3").device.error or "")
    assert box.wallbox.phase_currents_a() == (10.0, 10.0, 10.0)  # it keeps charging at its last profile
    assert service.hw.links["ocpp"].link_stats().details["connected"] == 0
    box.reconnect()
    assert box.wait_for(lambda: len(box.calls("SetChargingProfile")) > writes)
    assert profile_limits(box)[writes] == 10.0  # the last commanded limit, at once
    assert box.boots == 1  # a reconnect, not a reboot
    status = run_until(service, clock, lambda s: s.charger("E3").device.online)
    assert status.charger("E3").device.online


def test_a_reboot_mid_session_gets_profile_and_configuration_again(port: int, cleanup: list) -> None:
    events: list[SessionEvent] = []
    cfg = ocpp_config(port, extra={"variables": {"CAP": 8}, "rules": [{"name": "cap", "max_current_a": "CAP"}]})
    hw = build_hardware(cfg, on_session=events.append)
    cleanup.append(hw.close)
    box = box_for(port, cleanup)
    charger = hw.chargers["E3"].device
    assert hw.chargers["E3"].reports_sessions and hw.chargers["E3"].group == "ocpp:EVB-P2231"
    assert box.wait_for(lambda: box.has_profile)
    charger.apply(8.0)
    box.plug(SimCar(max_current_a=16))
    assert box.wait_for(lambda: len(events) == 1 and box.wallbox.phase_currents_a()[0] == 8.0)
    start = events[0]
    assert start.kind is SessionEventKind.START and start.charger_id == "E3" and start.id_tag == "SIMTAG01"
    assert start.transaction_id is not None and start.meter_wh is not None
    box.reboot()  # the box forgets its profile: a car would get its full rating
    assert box.wait_for(lambda: box.boots == 2 and box.has_profile and box.limit_a == 8.0)
    assert box.configuration["MeterValueSampleInterval"] == "1"
    box.unplug()
    assert box.wait_for(lambda: len(events) == 2)
    stop = events[1]
    assert stop.kind is SessionEventKind.STOP and stop.transaction_id == start.transaction_id
    assert stop.reason == "EVDisconnected"


# --------------------------------------------------------------------------- who may connect


def test_unknown_ids_get_404_and_wrong_passwords_401_before_the_upgrade(port: int, cleanup: list) -> None:
    service_for(ocpp_config(port), cleanup)

    def raw(path: str, auth: str | None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
                   "Sec-WebSocket-Protocol": "ocpp1.6"}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    assert raw("/ocpp/NOT-A-BOX", f"NOT-A-BOX:{PASSWORD}").status == 404
    assert raw("/elsewhere", None).status == 404
    wrong = raw("/ocpp/EVB-P2231", "EVB-P2231:wrong-password")
    assert wrong.status == 401 and wrong.getheader("WWW-Authenticate", "").startswith("Basic realm=")
    assert raw("/ocpp/EVB-P2231", None).status == 401
    assert raw("/ocpp/EVB-P2231", f"OTHER:{PASSWORD}").status == 401
    assert raw("/ocpp/EVB-P2231", f"EVB-P2231:{PASSWORD}").status == 101  # the upgrade itself
    for url, code in ((f"ws://127.0.0.1:{port}/ocpp/NOT-A-BOX", 404), (f"ws://127.0.0.1:{port}/ocpp/EVB-P2231", 401)):
        with pytest.raises(InvalidStatus) as err:
            ws_connect(url, subprotocols=["ocpp1.6"], open_timeout=3)  # type: ignore[list-item]
        assert err.value.response.status_code == code


def test_a_box_connecting_twice_replaces_the_old_connection(port: int, cleanup: list) -> None:
    service, clock = service_for(ocpp_config(port), cleanup)
    box = box_for(port, cleanup)
    assert box.wait_for(lambda: box.has_profile)
    box.connect_again()
    assert box.wait_for(lambda: box.connections == 2 and len(box._live) == 1, 5)
    box.plug(SimCar(max_current_a=16))
    status = run_until(service, clock, lambda s: box.limit_a == 16.0 and s.charger("E3").device.online)
    assert status.charger("E3").device.online and box.connections == 2
    assert service.hw.links["ocpp"].link_stats().details["connected"] == 1


def test_wss_with_a_certificate(tmp_path: Path, port: int, cleanup: list) -> None:
    pki = make_pki(tmp_path)
    service, clock = service_for(ocpp_config(port, tls=pki.server_paths), cleanup)
    client = ssl.create_default_context(cafile=str(pki.ca_path))
    box = box_for(port, cleanup, ssl_context=client)
    box.plug(SimCar(max_current_a=16))
    run_until(service, clock, lambda s: box.limit_a == 16.0)
    assert box.limit_a == 16.0 and box.url.startswith("wss://")
    untrusting = box_for(port, cleanup, box_id="EVB-P2231", ssl_context=ssl.create_default_context())
    time.sleep(0.5)
    assert untrusting.connections == 0 and "CERTIFICATE_VERIFY_FAILED" in (untrusting.last_error or "")


# --------------------------------------------------------------------------- what a box does not send


def test_a_box_without_meter_values_is_controlled_from_its_status(port: int, cleanup: list) -> None:
    cfg = ocpp_config(port, {"E3": ocpp_entry(phases=1, phase="L2")},
                      extra={"variables": {"CAP": 12}, "rules": [{"name": "cap", "max_current_a": "CAP"}]})
    service, clock = service_for(cfg, cleanup)
    box = box_for(port, cleanup, send_meter_values=False, config=WallboxConfig(phases=1, phase="L2"))
    box.plug(SimCar(max_current_a=16, phases=1))
    status = run_until(service, clock, lambda s: s.charger("E3").device.reading is not None
                       and s.charger("E3").device.reading.current_a[1] == 12.0)
    reading = status.charger("E3").device.reading
    assert reading.state is IecState.C and box.limit_a == 12.0
    assert reading.current_a == (0.0, 12.0, 0.0) and reading.power_w is None  # its limit, on its phase
    assert status.charger("E3").device.online
    time.sleep(1.0)  # no MeterValues ever: the status alone keeps it fresh
    status = cycles(service, clock, 1)[-1]
    assert status.charger("E3").device.online


def test_stale_meter_values_trigger_a_request_then_a_fault(port: int, cleanup: list) -> None:
    cfg = ocpp_config(port, site={"stale_s": 1.0})
    hw = build_hardware(cfg)
    cleanup.append(hw.close)
    box = box_for(port, cleanup)
    charger = hw.chargers["E3"].device
    assert box.wait_for(lambda: box.has_profile)
    assert box.wait_for(lambda: _reads(charger))
    box.send_meter_values = False  # and it ignores triggers for MeterValues from now on
    asked = _meter_value_triggers(box)  # one after every limit it accepted
    time.sleep(0.7)
    charger.read()  # half stale: still fine, but a TriggerMessage went out
    assert box.wait_for(lambda: _meter_value_triggers(box) == asked + 1)
    time.sleep(0.5)
    with pytest.raises(Exception, match="no MeterValues from EVB-P2231"):
        charger.read()


def _meter_value_triggers(box: SimOcppBox) -> int:
    return sum(1 for c in box.calls("TriggerMessage") if c["requested_message"] == "MeterValues")


def _reads(charger: Any) -> bool:
    try:
        return charger.read().power_w is not None
    except Exception:
        return False


# --------------------------------------------------------------------------- the other messages


def test_id_tags_other_messages_and_transaction_ids(port: int, cleanup: list) -> None:
    events: list[SessionEvent] = []
    cfg = ocpp_config(port, {"E3": ocpp_entry(id_tags=["04A1B2C3"])})
    hw = build_hardware(cfg, on_session=events.append)
    cleanup.append(hw.close)
    box = box_for(port, cleanup)
    assert box.wait_for(lambda: box.has_profile)
    assert box.send(call.Authorize(id_tag="04A1B2C3")).id_tag_info["status"] == "Accepted"
    assert box.send(call.Authorize(id_tag="DEADBEEF")).id_tag_info["status"] == "Invalid"
    refused = box.send(call.StartTransaction(connector_id=1, id_tag="DEADBEEF", meter_start=0,
                                             timestamp="2026-01-01T00:00:00Z"))
    assert refused.id_tag_info["status"] == "Invalid" and not events
    first = box.send(call.StartTransaction(connector_id=1, id_tag="04A1B2C3", meter_start=1500,
                                           timestamp="2026-01-01T00:00:00Z"))
    assert first.id_tag_info["status"] == "Accepted" and first.transaction_id > refused.transaction_id
    assert events[0].meter_wh == 1500.0 and events[0].transaction_id == first.transaction_id
    assert events[0].ts == pytest.approx(time.time(), abs=5)  # an implausible box clock: stamped on receipt
    assert box.send(call.Heartbeat()).current_time.endswith("Z")
    assert box.send(call.DataTransfer(vendor_id="com.example")).status == "UnknownVendorId"
    box.send(call.FirmwareStatusNotification(status="Idle"))
    box.send(call.DiagnosticsStatusNotification(status="Idle"))
    stop = box.send(call.StopTransaction(meter_stop=2500, timestamp="2026-01-01T01:00:00Z",
                                         transaction_id=first.transaction_id, reason="Local"))
    assert stop is not None and events[1].kind is SessionEventKind.STOP and events[1].reason == "Local"


def test_read_refuses_an_ocpp_box_and_check_config_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "site": {"main_fuse_a": 25}, "state_dir": str(tmp_path / "state"),
        "ocpp": {"listen": "127.0.0.1:8887"}, "chargers": {"E3": ocpp_entry()}}))
    cli = [sys.executable, "-m", "controller.cli"]
    read = subprocess.run([*cli, "read", "E3", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert read.returncode != 0
    assert "E3 is an OCPP box (EVB-P2231)" in read.stderr and "cannot be read one-shot" in read.stderr
    assert "gridcharge status" in read.stderr
    check = subprocess.run([*cli, "check-config", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "OCPP EVB-P2231 connector 1" in check.stdout + check.stderr


def test_close_stops_the_server_and_its_thread(port: int, cleanup: list) -> None:
    hw = build_hardware(ocpp_config(port))
    box = box_for(port, cleanup)
    assert box.wait_for(lambda: box.has_profile)
    assert any(t.name == "ocpp" for t in threading.enumerate())
    started = time.monotonic()
    hw.close()
    assert time.monotonic() - started < 3
    assert not any(t.name == "ocpp" for t in threading.enumerate())
    assert box.wait_for(lambda: not box.connected)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with pytest.raises(Exception, match="not connected"):
        hw.chargers["E3"].device.read()
