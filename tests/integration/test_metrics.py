"""``GET /metrics`` on a running controller: the real listeners (``web.runtime.start_web``) around a
real ``Service`` on the simulated site, scraped with ``requests`` and read back with
prometheus-client's own parser.

What is proven here (docs/api.md "Prometheus metrics"):
- the metrics show the numbers ``get_dev_info`` shows for the same cycle (grid power and currents,
  each device online, the chargers' currents, power, energy, state, limits, the meter, the input,
  a variable), and follow a change (a new AVAIL, a new house load) at the next cycle, a silent box once it is stale;
- the cycle histogram counts every cycle the loop completed, and its sum is real time;
- every answer of both listeners is counted by listener, command and status (the SMGW's too), and
  only the LAN listener serves ``/metrics``;
- a wrong or missing password gets 401 and no metrics; with ``metrics_auth: false`` no password is
  needed for ``/metrics`` while ``/cnf`` still needs one;
- ``gridcharge run`` serves them from its config file.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fake_clock import FakeClock
from pki import make_pki
from prometheus_client.parser import text_string_to_metric_families
from site_helpers import BASE_SITE, make_config

from controller.config.schema import Http, Smgw
from controller.service import Service
from hal.sim.site import SimulatedSite
from web.runtime import start_web
from web.server import WebServers

ROOT = Path(__file__).resolve().parents[2]
USER = "admin"
PASSWORD = "metrics-pass-1234"
TIMEOUT_S = 10.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (sample name, labels), read with prometheus-client's parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def has(samples: Samples, metric: str, /, **labels: str) -> bool:
    return (metric, frozenset(labels.items())) in samples


def lan_section(*, metrics_auth: bool = True) -> Http:
    """An ``http`` section on a free port (model_construct: the config accepts ports 1..65535 only)."""
    return Http.model_construct(listen="127.0.0.1:0", user=USER, password=PASSWORD, password_hash=None,
                                metrics_auth=metrics_auth)


@dataclass
class Site:
    """The controller on a FakeClock whose time also flows (cycle durations are real), the
    simulated site, and the listeners ``start_web`` started."""

    sim: SimulatedSite
    service: Service
    clock: FakeClock
    servers: WebServers

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.servers.lan_port}"

    def cycles(self, n: int) -> None:
        for _ in range(n):
            self.service.loop.run_once()
            self.clock.advance(1.0)

    def scrape(self, auth: tuple[str, str] | None = (USER, PASSWORD)) -> Samples:
        response = requests.get(f"{self.base}/metrics", auth=auth, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return parse(response.text)

    def cnf(self, cmd: str, auth: tuple[str, str] | None = (USER, PASSWORD), **params: Any) -> requests.Response:
        return requests.get(f"{self.base}/cnf", params={"cmd": cmd, **params}, auth=auth, timeout=TIMEOUT_S)


StartSite = Callable[..., Site]


@pytest.fixture()
def start_site(sim: SimulatedSite) -> Iterator[StartSite]:
    made: list[Service] = []

    def start(http: Http | None = None, smgw: Smgw | None = None) -> Site:
        clock = FakeClock(real_time=True)
        service = Service(make_config(sim), clock=clock)
        made.append(service)
        servers = start_web(service, http=http or lan_section(), smgw=smgw)  # stopped by service.close()
        return Site(sim, service, clock, servers)

    yield start
    for service in made:
        service.close()


def test_the_metrics_show_what_get_dev_info_shows(start_site: StartSite) -> None:
    site = start_site()
    site.cycles(3)
    info = site.cnf("get_dev_info").json()
    samples = site.scrape()
    params = info["params"]
    assert value(samples, "gridcharge_cycles_total") == params["cycle_count"] == 3
    assert round(value(samples, "gridcharge_grid_power_watts")) == params["grid_power_w"] > 0
    for i, phase in enumerate(("L1", "L2", "L3"), start=1):
        grid_a = value(samples, "gridcharge_grid_current_amperes", phase=phase)
        assert round(grid_a * 1000) == params[f"grid_current_l{i}"]
    assert value(samples, "gridcharge_main_fuse_amperes") * 1000 == params["main_fuse_cur"] == 25000
    assert min(value(samples, "gridcharge_headroom_amperes", phase=p) for p in ("L1", "L2", "L3")) * 1000 \
        == pytest.approx(params["max_total_current"], abs=0.5)
    assert value(samples, "gridcharge_failsafe_active") == 0 and params["failsafe"] is None
    assert value(samples, "gridcharge_variable_value", name="AVAIL") == 100

    devices = {d["dev_id"]: d for d in info["devices"]}
    for dev_id, dev in devices.items():
        kind = "charger" if dev["is_evse"] else "meter"
        assert value(samples, "gridcharge_device_online", device=dev_id, kind=kind) == (0 if dev["com_err"] else 1)
    assert set(devices) == {"M1", "E1", "E2"}
    m1 = devices["M1"]
    assert round(value(samples, "gridcharge_meter_power_watts", device="M1")) == m1["power_w"]
    assert round(value(samples, "gridcharge_meter_import_watt_hours_total", device="M1")) == m1["import"]
    for dev_id in ("E1", "E2"):
        dev = devices[dev_id]
        for i, phase in enumerate(("L1", "L2", "L3"), start=1):
            amps = value(samples, "gridcharge_charger_current_amperes", device=dev_id, phase=phase)
            assert round(amps * 1000) == dev[f"current_l{i}"]
        assert round(value(samples, "gridcharge_charger_power_watts", device=dev_id)) == dev["cur_charging_power"]
        assert round(value(samples, "gridcharge_charger_energy_watt_hours_total", device=dev_id)) \
            == dev["total_energy"]
        assert value(samples, "gridcharge_charger_state", device=dev_id) == dev["state"]
        assert value(samples, "gridcharge_charger_iec_state", device=dev_id, state=dev["iec_state"]) == 1
        assert round(value(samples, "gridcharge_charger_command_amperes", device=dev_id) * 1000) == dev["assigned_cur"]
        assert round(value(samples, "gridcharge_charger_written_amperes", device=dev_id) * 1000) \
            == dev["last_set_charging_cur"]
        assert round(value(samples, "gridcharge_charger_max_current_amperes", device=dev_id) * 1000) \
            == dev["max_charging_cur"]
    assert devices["E1"]["state_text"] == "C (charging)" and devices["E1"]["current_l1"] > 0  # not a trivial 0 == 0
    (rse1,) = info["inputs"]
    assert value(samples, "gridcharge_device_online", device="RSE1", kind="input") == 1
    assert value(samples, "gridcharge_input_active", device="RSE1") == int(rse1["active"])
    # every link (each TCP box its own bus here) with its counters
    links = {dict(labels)["link"] for name, labels in samples if name == "gridcharge_link_requests_total"}
    assert len(links) >= 3 and all(value(samples, "gridcharge_link_requests_total", link=x) > 0 for x in links)
    assert all(has(samples, "gridcharge_link_timeouts_total", link=x) for x in links)
    assert value(samples, "gridcharge_build_info", version=params["version"]) == 1
    assert value(samples, "process_resident_memory_bytes") > 1e6


def test_the_metrics_follow_a_change_at_the_next_cycle(start_site: StartSite) -> None:
    site = start_site()
    site.cycles(3)
    site.sim.set_base_load(14.0, 5.0, 5.0)
    assert site.cnf("set_cm_vars", name="AVAIL", val="40").status_code == 200
    site.cycles(1)
    info = site.cnf("get_dev_info").json()
    samples = site.scrape()
    assert value(samples, "gridcharge_variable_value", name="AVAIL") == 40
    assert round(value(samples, "gridcharge_grid_current_amperes", phase="L1") * 1000) \
        == info["params"]["grid_current_l1"]
    assert value(samples, "gridcharge_cycles_total") == info["params"]["cycle_count"] == 4

    site.sim.set_silent("E2", True)
    site.cycles(4)  # E2 counts as offline once its reading is older than stale_s (3 s)
    info = site.cnf("get_dev_info").json()
    samples = site.scrape()
    e2 = next(d for d in info["devices"] if d["dev_id"] == "E2")
    assert e2["com_err"] and e2["state"] == 6
    assert value(samples, "gridcharge_device_online", device="E2", kind="charger") == 0
    assert value(samples, "gridcharge_device_fault_seconds", device="E2", kind="charger") > 0
    assert value(samples, "gridcharge_charger_state", device="E2") == 6
    assert value(samples, "gridcharge_charger_iec_state", device="E2", state="offline") == 1
    assert value(samples, "gridcharge_charger_iec_state", device="E2", state="C") == 0
    assert not has(samples, "gridcharge_charger_current_amperes", device="E2", phase="L1")  # no stale value
    assert value(samples, "gridcharge_charger_limited_by", device="E2", why="offline", subject="") == 1


def test_the_histogram_counts_every_cycle(start_site: StartSite) -> None:
    site = start_site()
    site.cycles(2)
    before = site.scrape()
    assert value(before, "gridcharge_cycle_duration_seconds_count") == 2  # start_web came before the first cycle
    site.cycles(5)
    after = site.scrape()
    count = value(after, "gridcharge_cycle_duration_seconds_count")
    assert count == value(after, "gridcharge_cycles_total") == site.service.loop.status.cycle_count == 7
    assert value(after, "gridcharge_cycle_duration_seconds_bucket", le="+Inf") == count
    buckets = sorted((float(dict(labels)["le"]), n) for (name, labels), n in after.items()
                     if name == "gridcharge_cycle_duration_seconds_bucket")
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
    assert 0 < value(after, "gridcharge_cycle_duration_seconds_sum") < 7 * 5.0  # real reads over loopback


def test_every_answer_is_counted_by_listener_command_and_status(start_site: StartSite) -> None:
    site = start_site()
    site.cycles(1)

    def requests_total(samples: Samples, command: str, status: str) -> float:
        key = ("gridcharge_api_requests_total", frozenset({"listener": "lan", "command": command,
                                                            "status": status}.items()))
        return samples.get(key, 0.0)

    first = site.scrape()
    for _ in range(3):
        assert site.cnf("get_cm_vars").status_code == 200
    assert site.cnf("get_cm_vars", auth=(USER, "wrong-password")).status_code == 401
    assert site.cnf("no_such_command").status_code == 400
    assert requests.get(f"{site.base}/nowhere", auth=(USER, PASSWORD), timeout=TIMEOUT_S).status_code == 404
    assert requests.post(f"{site.base}/metrics", auth=(USER, PASSWORD), timeout=TIMEOUT_S).status_code == 405
    second = site.scrape()
    assert requests_total(second, "get_cm_vars", "200") == requests_total(first, "get_cm_vars", "200") + 3
    assert requests_total(second, "get_cm_vars", "401") == requests_total(first, "get_cm_vars", "401") + 1
    assert requests_total(second, "unknown", "400") == 1  # the cmd itself is never a label
    assert requests_total(second, "unmatched", "404") == 1
    assert requests_total(second, "/metrics", "200") == 1  # the first scrape (a scrape is counted once answered)
    assert requests_total(second, "/metrics", "405") == 1
    assert not any("no_such_command" in str(labels) for _, labels in second)


def test_a_wrong_password_gets_401_and_no_metrics(start_site: StartSite) -> None:
    site = start_site()
    site.cycles(1)
    for auth in ((USER, "wrong-password"), None, ("root", PASSWORD)):
        response = requests.get(f"{site.base}/metrics", auth=auth, timeout=TIMEOUT_S)
        assert response.status_code == 401, auth
        assert "error" in response.json() and "gridcharge_" not in response.text
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_metrics_auth_false_opens_metrics_and_nothing_else(start_site: StartSite) -> None:
    site = start_site(http=lan_section(metrics_auth=False))
    site.cycles(2)
    samples = site.scrape(auth=None)
    assert value(samples, "gridcharge_cycles_total") == 2
    assert site.scrape(auth=(USER, "wrong-password"))  # credentials are not looked at there
    assert site.cnf("get_dev_info", auth=None).status_code == 401
    assert site.cnf("get_dev_info", auth=(USER, "wrong-password")).status_code == 401
    assert site.cnf("get_dev_info").status_code == 200
    post = requests.post(f"{site.base}/metrics", timeout=TIMEOUT_S)
    assert post.status_code == 405 and "error" in post.json()


def test_openmetrics_when_the_scraper_asks_for_it(start_site: StartSite) -> None:
    site = start_site()
    site.cycles(1)
    response = requests.get(f"{site.base}/metrics", auth=(USER, PASSWORD), timeout=TIMEOUT_S,
                            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n") and "gridcharge_cycles_total 1.0" in response.text


def test_the_smgw_listener_is_counted_but_serves_no_metrics(start_site: StartSite, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.server_paths
    smgw = Smgw.model_construct(listen="127.0.0.1:0", cert=cert, key=key, client_ca=pki.ca_path,
                                functions=("vars", "status"))
    site = start_site(smgw=smgw)
    site.cycles(1)
    assert site.servers.smgw_port is not None
    url = f"https://127.0.0.1:{site.servers.smgw_port}"
    tls: dict[str, Any] = {"cert": tuple(str(p) for p in pki.client_paths), "verify": str(pki.ca_path),
                           "timeout": TIMEOUT_S}
    assert requests.get(f"{url}/cnf", params={"cmd": "get_cm_vars"}, **tls).status_code == 200
    assert requests.get(f"{url}/metrics", **tls).status_code == 404
    samples = site.scrape()
    smgw_counts = {dict(labels)["command"]: n for (name, labels), n in samples.items()
                   if name == "gridcharge_api_requests_total" and dict(labels)["listener"] == "smgw"}
    assert smgw_counts == {"get_cm_vars": 1, "unmatched": 1}


# --------------------------------------------------------------------------- gridcharge run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gridcharge_run_serves_metrics_as_its_config_says(tmp_path: Path, sim: SimulatedSite) -> None:
    """The real process with ``metrics_auth: false`` in its YAML: a Prometheus without the password."""
    port = free_port()
    data: dict[str, Any] = sim.config_dict(timeout_s=0.3)
    data["site"] = dict(BASE_SITE)
    data["state_dir"] = str(tmp_path / "state")
    data["http"] = {"listen": f"127.0.0.1:{port}", "user": USER, "password": PASSWORD, "metrics_auth": False}
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    with (tmp_path / "gridcharge.log").open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        samples: Samples = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "gridcharge.log").read_text()
            try:
                response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.1)
                continue
            assert response.status_code == 200, response.text
            samples = parse(response.text)
            if value(samples, "gridcharge_cycles_total") >= 2:
                break
            time.sleep(0.2)
        assert value(samples, "gridcharge_cycles_total") >= 2, "no two cycles in 30 s"
        assert value(samples, "gridcharge_cycle_duration_seconds_count") >= 2  # every cycle since the start
        assert math.isfinite(value(samples, "gridcharge_grid_power_watts"))
        assert value(samples, "gridcharge_device_online", device="E1", kind="charger") == 1
        assert requests.get(f"http://127.0.0.1:{port}/cnf", params={"cmd": "get_dev_info"},
                            timeout=2).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
