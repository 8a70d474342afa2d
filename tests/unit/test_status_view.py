"""The live view (``gridcharge status``, ``demo``): a ``get_dev_info`` body drawn as text.

Bodies are made by ``web.devinfo.dev_info`` from hand-built statuses, so the view is tested on
exactly what the API answers; the frame is rendered as plain text, 80 columns, as in a pipe.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace
from typing import Any

from rich.console import Console

from controller.status import EMPTY_STATUS, ChargerStatus, DeviceStatus, Status
from controller.commands.status_view import render
from hal.types import ChargerReading, IecState, InputReading, MeterReading
from web.devinfo import dev_info

NOW = 1767614400.0


def text(info: dict[str, Any], width: int = 80, **kw: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, legacy_windows=False).print(
        render(info, source="http://127.0.0.1:80", now=kw.pop("now", NOW + 0.5), **kw))
    return out.getvalue()


def device(id: str, kind: str, reading: Any, *, error: str | None = None, model: str = "sdm630") -> DeviceStatus:
    return DeviceStatus(id=id, kind=kind, model=model, address="tcp 10.0.0.1:502 unit 1", online=error is None,
                        age_s=0.3, error=error, error_s=4.0 if error else 0.0, reading=reading)


def charger(id: str, state: IecState = IecState.C, current: float = 10.0, **kw: Any) -> ChargerStatus:
    reading = ChargerReading(state=state, current_a=(current, current, current), power_w=6900.0)
    dev_kw = {"error": kw.pop("error")} if "error" in kw else {}
    fields: dict[str, Any] = dict(phases=3, phase=0, priority=1, min_current_a=6.0, max_current_a=16.0,
                                  command_a=current, written_a=current, reason="fuse L1", enabled=True,
                                  override_a=None)
    fields.update(kw)
    return ChargerStatus(device=device(id, "charger", reading, model="heidelberg", **dev_kw), **fields)


def site(**kw: Any) -> Status:
    base = replace(
        EMPTY_STATUS, cycle_count=7, wall_time=NOW, failsafe=None, grid_limit_w=17000.0, chargers_limit_w=None,
        headroom_a=(3.5, 11.0, 10.0), power_headroom_w=4650.0, limiting=("fuse L1",), grid_power_w=12220.4,
        grid_current_a=(21.5, 14.0, 15.0),
        chargers=(charger("E1", current=11.0), charger("E2", IecState.B, 0.0, reason="no car")),
        meters=(device("M1", "meter", MeterReading(power_w=12220.4, current_a=(21.5, 14.0, 15.0))),),
        inputs=(device("RSE1", "input", InputReading(active=False), model="modbus_io"),),
    )
    return replace(base, **kw)


def info(status: Status, fuse: float | None = 25) -> dict[str, Any]:
    return dev_info(status, "1.2.3", main_fuse_a=fuse)


def test_a_healthy_site() -> None:
    frame = text(info(site()))
    assert "gridcharge 1.2.3 · http://127.0.0.1:80 · cycle 7" in frame
    assert "21.5 A" in frame and "14.0 A" in frame and "15.0 A" in frame and "12220 W" in frame
    assert frame.count("25 A") == 3  # the fuse under every phase
    assert "17000 W  (grid_limit_w)" in frame and "none  (chargers_limit_w)" in frame
    assert "4650 W (power limits)" in frame and "3.5 A (fuse" in frame
    assert "limited by" in frame and "fuse L1" in frame
    assert "fail-safe          off" in frame
    e1 = next(line for line in frame.splitlines() if line.startswith("E1"))
    assert e1.split()[:10] == ["E1", "heidelberg", "C", "(charging)", "11.0", "11.0", "11.0", "11.0", "A", "16.0"]
    assert "fuse L1" in e1
    e2 = next(line for line in frame.splitlines() if line.startswith("E2"))
    assert "B (car connected)" in e2 and "paused" in e2 and "no car" in e2
    assert "RSE1 inactive" in frame and "faults  none" in frame
    assert "over the" not in frame
    assert max(len(line.rstrip()) for line in frame.splitlines()) <= 80


def test_a_phase_over_the_fuse_is_called_out_in_words() -> None:
    frame = text(info(site(grid_current_a=(26.34, 14.0, 15.0))))
    assert "26.3 A" in frame
    assert "L1 is 1.3 A over the 25 A main fuse" in frame


def test_over_the_fuse_is_highlighted_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system="standard")
    console.print(render(info(site(grid_current_a=(26.34, 14.0, 15.0))), source="x", now=NOW))
    line = next(line for line in out.getvalue().splitlines() if "26.3 A" in line)
    assert re.search(r"\x1b\[1;37;41m *26\.3 A\x1b\[0m", line), line  # bold white on red


def test_faults_failsafe_offline_charger_and_unreadable_input() -> None:
    status = site(
        failsafe="grid meter M1 offline", grid_current_a=None, grid_power_w=None,
        chargers=(charger("E1", error="no answer in time", command_a=6.0, reason="offline: fail-safe current reserved"),
                  charger("E2", IecState.F, 0.0, enabled=False, reason="disabled by override (flags=C)")),
        inputs=(device("RSE1", "input", None, error="I/O module silent", model="modbus_io"),),
        faults=("M1: no answer in time", "E1: no answer in time"),
    )
    frame = text(info(status))
    assert "grid meter offline" in frame
    assert "IN FORCE: grid meter M1 offline" in frame
    e1 = next(line for line in frame.splitlines() if line.startswith("E1"))
    assert "offline" in e1 and " - " in e1  # no stale currents of an offline box
    e2 = next(line for line in frame.splitlines() if line.startswith("E2"))
    assert "F (error)" in e2 and "disabled" in e2
    assert "RSE1 unreadable" in frame
    assert "faults  2" in frame and "  M1: no answer in time" in frame and "  E1: no answer in time" in frame


def test_before_the_first_cycle_and_a_stuck_loop() -> None:
    assert "no cycle yet" in text(info(EMPTY_STATUS))
    stuck = text(info(site()), now=NOW + 42)
    assert "no cycle for 42 s" in stuck


def test_notes_and_a_service_without_the_added_keys() -> None:
    """An older service sends neither the fuse nor the grid per phase nor ``iec_state``."""
    body = info(site())
    for key in ("main_fuse_cur", "grid_current_l1", "grid_current_l2", "grid_current_l3"):
        body["params"].pop(key)
    for dev in body["devices"]:
        dev.pop("iec_state", None)
    frame = text(body, notes=["no answer since 12:00:00"])
    assert "no answer since 12:00:00" in frame
    assert "grid meter offline" in frame  # nothing to show per phase
    assert "C (charging)" in frame and "main fuse" not in frame


def test_wide_terminal_keeps_a_long_reason_on_one_line() -> None:
    status = site(chargers=(charger("E2", reason='rule "E2 slower at the normal tariff"'),))
    line = next(line for line in text(info(status), width=120).splitlines() if line.startswith("E2"))
    assert line.rstrip().endswith('rule "E2 slower at the normal tariff"')


def test_the_suppliers_backend_per_charger() -> None:
    from controller.status import BackendStatus, ChargePointStatus

    def cp(cid: str, connected: bool, **kw: Any) -> ChargePointStatus:
        fields: dict[str, Any] = dict(charger_id=cid, backend_id=f"DE-{cid}", connected=connected,
                                      state="connected" if connected else "reconnecting in 8 s", reason=None,
                                      since=NOW, queued=0, ocpp_status="Charging" if connected else None,
                                      transaction_id=None, cap_a=None, cap_reason=None)
        fields.update(kw)
        return ChargePointStatus(**fields)

    backend = BackendStatus(url="wss://b.example/cs", proxy=None, enabled=True, reason=None, charge_points=(
        cp("E1", True), cp("E2", False, reason="the backend refused the password (HTTP 401)", queued=3)))
    frame = text(info(site(backend=backend)))
    assert "backend 1/2 connected" in frame
    assert "E1 as DE-E1: connected, Charging" in frame
    assert "E2 as DE-E2: reconnecting in 8 s: the backend refused the password (HTTP 401), 3 message(s) waiting" \
        in frame.replace("\n  ", " ").replace("\n", " ")
    off = BackendStatus(url="wss://b.example/cs", proxy="socks5://10.0.0.1:1080", enabled=False,
                        reason="off: it runs through the SMGW, and smgw.functions does not list ocpp")
    assert "backend off: it runs through the SMGW" in text(info(site(backend=off)))
    assert "backend" not in text(info(site()))
