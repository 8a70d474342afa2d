"""Charging sessions end to end: a ``Service`` on the simulated Modbus site (real Modbus TCP
sockets, the site's physics on the test's FakeClock so the box's energy register is known), its
real HTTP listener, ``get_sessions`` fetched with ``requests``.

- A car plugged in, charged and unplugged is one session with the energy the box's register
  counted, in JSON and in CSV, found by ``from``/``to``.
- A restart in the middle of that session continues it: one session, not two.
- A box that reports its own sessions (the OCPP driver will; here the ``on_session`` callback
  ``build_hardware`` got is called directly, from another thread, as that driver's thread would)
  gets its sessions from those reports, not from its readings.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from fake_clock import FakeClock
from site_helpers import cycles, home_site, make_config
from web_helpers import PASSWORD, USER, http_section

from controller import service as service_module
from controller.hardware import Hardware
from controller.service import Service
from hal.sim.physics import SimCar
from hal.sim.site import SimulatedSite
from hal.types import SessionEvent, SessionEventKind
from web.runtime import start_web

REPORTING = "E2"  # flagged as a box that reports its own sessions


class Site:
    """The simulated site, the services run on it one after the other (a restart), and the
    ``on_session`` callback each got."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = FakeClock(1000.0)
        self.sim: SimulatedSite = home_site(clock=self.clock.monotonic)
        self.state = tmp_path / "state"
        self.on_session: Callable[[SessionEvent], None] | None = None
        self.services: list[Service] = []
        self.url = ""
        real_build = service_module.build_hardware

        def build(cfg: Any, **kwargs: Any) -> Hardware:
            hw = real_build(cfg, **kwargs)
            hw.chargers[REPORTING].reports_sessions = True  # what an OCPP box's handle says
            self.on_session = kwargs["on_session"]
            return hw

        monkeypatch.setattr(service_module, "build_hardware", build)

    def start_service(self) -> Service:
        service = Service(make_config(self.sim, state_dir=str(self.state)), clock=self.clock)
        self.services.append(service)
        service.sessions.start()  # run() would; the test drives the cycles itself
        servers = start_web(service, http=http_section())
        self.url = f"http://127.0.0.1:{servers.lan_port}/cnf"
        return service

    def get(self, **params: Any) -> requests.Response:
        return requests.get(self.url, params={"cmd": "get_sessions", **params}, auth=(USER, PASSWORD), timeout=10)

    def sessions(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get(**params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["truncated"] is False
        return list(body["sessions"])


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    made = Site(tmp_path, monkeypatch)
    made.sim.start()
    yield made
    for service in made.services:
        service.close()
    made.sim.stop()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_charge_across_a_restart_is_one_session_with_the_registers_energy(site: Site) -> None:
    site.sim.unplug("E1")
    service = site.start_service()
    cycles(service, site.clock, 2)
    begun = time.time()
    register_at_start = site.sim.wallbox("E1").energy_wh  # no car: it stays at this
    site.sim.plug_car("E1", SimCar(max_current_a=16))
    cycles(service, site.clock, 8)
    (open_one,) = [s for s in site.sessions() if s["charger"] == "E1"]
    assert open_one["open"] and open_one["end"] is None and open_one["energy_source"] == "register"

    service.close()  # the restart, in the middle of the charge
    service = site.start_service()
    cycles(service, site.clock, 8)
    site.sim.unplug("E1")
    register_at_end = site.sim.wallbox("E1").energy_wh
    cycles(service, site.clock, 2)
    ended = time.time()

    (session,) = [s for s in site.sessions() if s["charger"] == "E1"]
    assert session["id"] == open_one["id"] and not session["open"]
    # the box's register (whole Wh) at the plug and after the unplug: ~16 s at ~5 kW in between
    assert (session["start_wh"], session["end_wh"]) == (round(register_at_start), round(register_at_end))
    assert session["energy_wh"] == session["end_wh"] - session["start_wh"] > 10
    assert begun <= session["start_ts"] <= session["end_ts"] <= ended
    assert session["stop_reason"] == "car gone"
    assert site.sessions(**{"from": iso(ended + 60)}) == []
    assert [s["id"] for s in site.sessions(**{"from": iso(begun - 1), "to": f"{ended + 1:.3f}"})
            if s["charger"] == "E1"] == [session["id"]]

    response = site.get(format="csv", **{"from": iso(begun - 1)})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    (row,) = [r for r in rows if r["charger"] == "E1"]
    assert row["energy_wh"] == str(round(session["energy_wh"])) and row["start"].endswith("Z")
    assert row["start_ts"] == str(int(session["start_ts"])) and row["end_ts"] == str(int(session["end_ts"]))


def test_a_box_that_reports_its_sessions_gets_them_from_its_reports(site: Site) -> None:
    service = site.start_service()
    cycles(service, site.clock, 3)  # E2 charges, but its readings make no session
    assert [s for s in site.sessions() if s["charger"] == REPORTING] == []
    assert site.on_session is not None
    now = time.time()
    events = [SessionEvent(REPORTING, SessionEventKind.START, now - 30, 12000.0, id_tag="=TAG", transaction_id=7),
              SessionEvent(REPORTING, SessionEventKind.STOP, now, 15250.0, transaction_id=7, reason="EVDisconnected"),
              SessionEvent(REPORTING, SessionEventKind.STOP, now + 1, 15300.0, transaction_id=8)]
    pusher = threading.Thread(target=lambda: [site.on_session(e) for e in events if site.on_session])
    pusher.start()
    pusher.join()
    cycles(service, site.clock, 1)
    first, unknown_start = [s for s in site.sessions() if s["charger"] == REPORTING]
    assert (first["energy_wh"], first["id_tag"], first["transaction_id"], first["stop_reason"]) == (
        3250.0, "=TAG", 7, "EVDisconnected")
    assert unknown_start["start"] is None and unknown_start["energy_wh"] is None
    assert unknown_start["transaction_id"] == 8
    rows = list(csv.DictReader(io.StringIO(site.get(format="csv").text)))
    assert [r["id_tag"] for r in rows if r["charger"] == REPORTING] == ["'=TAG", ""]  # no formula


def test_bad_parameters_are_400_and_the_status_scope_is_needed(site: Site) -> None:
    site.start_service()
    for params, words in [({"from": "yesterday"}, "parameter from"), ({"format": "xml"}, "json or csv"),
                          ({"limit": "0"}, "parameter limit"), ({"from": "200", "to": "100"}, "after to")]:
        response = site.get(**params)
        assert response.status_code == 400 and words in response.json()["error"], (params, response.text)
    assert requests.get(site.url, params={"cmd": "get_sessions"}, timeout=10).status_code == 401


def test_a_corrupt_sessions_file_is_kept_aside_and_is_a_fault_in_the_status(site: Site) -> None:
    site.state.mkdir(parents=True)
    (site.state / "sessions.sqlite3").write_bytes(b"SQLite format 3\0" + b"x" * 4000)
    service = site.start_service()
    cycles(service, site.clock, 1)
    info = requests.get(site.url, params={"cmd": "get_dev_info"}, auth=(USER, PASSWORD), timeout=10).json()
    assert any(f.startswith("session log: sessions.sqlite3 was corrupt") for f in info["params"]["faults"])
    assert len(list(site.state.glob("sessions.sqlite3.corrupt-*"))) == 1
    assert [s["charger"] for s in site.sessions()] == ["E1"]  # the new log records at once
