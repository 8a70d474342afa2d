"""``gridcharge status`` against a running service, and the demo's view, as an installer sees them.

The service is the real controller on the simulated site with its real HTTP API on loopback
(the password given only as a hash, as the installer writes it); ``gridcharge status`` runs as
a separate process, in a pipe or in a real terminal (a tmux pane), and is compared with what
``get_dev_info`` answers at the same time.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from site_helpers import BASE_SITE
from tmux_pane import TmuxPane
from web_helpers import PASSWORD, USER, Client, http_section, lan_client
from werkzeug.security import generate_password_hash

from controller.config import parse_config
from controller.service import Service
from controller.commands.status_client import PASSWORD_ENV, StatusClient, StatusUnavailable
from controller.commands.status_view import STATE_WORDS
from hal.sim.site import SimulatedSite
from web.runtime import start_web

ROOT = Path(__file__).resolve().parents[2]
GRIDCHARGE = [sys.executable, "-m", "controller.cli"]
SITE = {**BASE_SITE, "grid_limit_w": "20000 * AVAIL / 100"}
WIDTH = 120  # wide enough that no charger's reason wraps


@dataclass
class Running:
    service: Service
    api: Client
    config: Path  # the config file ``gridcharge status`` reads: the listener's address, the hash


@pytest.fixture()
def running(tmp_path: Path, sim: SimulatedSite) -> Iterator[Running]:
    """The controller running on its own thread (real clock), its LAN API on a free port."""
    data = sim.config_dict(timeout_s=0.3)
    data.update(site=SITE, variables={"AVAIL": 100}, state_dir=str(tmp_path / "state"))
    service = Service(parse_config(data, source="test"))
    password_hash = generate_password_hash(PASSWORD, method="scrypt")
    servers = start_web(service, http=http_section(password=None, password_hash=password_hash))
    service.start()
    data["http"] = {"listen": f"127.0.0.1:{servers.lan_port}", "user": USER, "password_hash": password_hash}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    api = lan_client(servers)
    try:
        yield Running(service, api, config)
    finally:
        api.close()
        service.stop()
        service.close()


def environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    env.update(COLUMNS=str(WIDTH), **extra)
    return env


def status(*args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
    env = environ(**({PASSWORD_ENV: password} if password is not None else {}))
    return subprocess.run([*GRIDCHARGE, "status", *args], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL)


def signature(info: dict[str, Any]) -> tuple[Any, ...]:
    """What the view shows as numbers, without the cycle counter and the clock."""
    p = info["params"]
    keys = ("grid_current_l1", "grid_current_l2", "grid_current_l3", "grid_power_w", "grid_limit_w",
            "power_headroom_w", "max_total_current", "failsafe")
    chargers = tuple((d["dev_id"], d["state"], d["current_l1"], d["current_l2"], d["current_l3"], d["assigned_cur"],
                      d["lreason"]) for d in info["devices"] if d["is_evse"])
    return tuple(p[k] for k in keys) + chargers


def steady(api: Client, timeout_s: float = 10.0) -> dict[str, Any]:
    """get_dev_info once two cycles in a row show the same numbers (the cars have settled)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    while True:
        info = api.get("get_dev_info").json()
        settled = (last is not None and info["params"]["cycle_count"] > last["params"]["cycle_count"]
                   and signature(info) == signature(last) and info["devices"])
        if settled:
            return info
        assert time.monotonic() < deadline, f"the site did not settle: {info}"
        last = info
        time.sleep(0.5)


def cycle_on(screen: str) -> int:
    """The cycle number in the view's title line."""
    found = re.search(r"· cycle (\d+) at", screen)
    assert found is not None, screen
    return int(found.group(1))


def amps(milliamps: int | None) -> str:
    return "-" if milliamps is None else f"{milliamps / 1000:.1f}"


def row(screen: str, start: str) -> list[str]:
    line = next((line for line in screen.splitlines() if line.startswith(start)), None)
    assert line is not None, f"no line starting with {start!r} in:\n{screen}"
    return line.split()


def assert_shows(screen: str, info: dict[str, Any]) -> None:
    """Every number of the view is the one get_dev_info gave."""
    p = info["params"]
    assert row(screen, "current")[1:] == [amps(p["grid_current_l1"]), "A", amps(p["grid_current_l2"]), "A",
                                          amps(p["grid_current_l3"]), "A", str(p["grid_power_w"]), "W"]
    assert row(screen, "main fuse")[2:] == ["25", "A"] * 3
    assert f"house limit        {p['grid_limit_w']} W  (grid_limit_w)" in screen
    assert f"{p['power_headroom_w']} W (power limits), {amps(p['max_total_current'])} A (fuse" in screen
    for d in (d for d in info["devices"] if d["is_evse"]):
        cells = row(screen, d["dev_id"] + " ")
        limit = "paused" if d["assigned_cur"] == 0 else f"{amps(d['assigned_cur'])} A"
        state = f"{d['iec_state']} ({STATE_WORDS[d['iec_state']]})"
        expected = [d["dev_id"], d["model"], *state.split(), *(amps(d[f"current_l{i}"]) for i in (1, 2, 3)),
                    *limit.split(), amps(d["max_charging_cur"]), "A", *d["lreason"].split()]
        assert cells == expected, (cells, d)


def test_status_prints_what_get_dev_info_says(running: Running) -> None:
    before = steady(running.api)
    res = status("--config", str(running.config))
    after = running.api.get("get_dev_info").json()
    assert res.returncode == 0, res.stderr
    assert signature(after) == signature(before)  # nothing moved while status asked
    assert "\x1b" not in res.stdout  # a pipe gets plain text
    assert_shows(res.stdout, after)
    assert "RSE1 inactive" in res.stdout and "faults  none" in res.stdout and "fail-safe          off" in res.stdout


def test_wrong_password_hash_alone_and_no_service_are_one_clear_line(running: Running, tmp_path: Path) -> None:
    res = status("--config", str(running.config), password="not-the-password")
    assert res.returncode == 7 and res.stdout == ""
    assert res.stderr.count("\n") == 1, res.stderr
    assert f"refused the login: wrong user name or password (user 'admin', password from {PASSWORD_ENV})" \
        in res.stderr

    res = status("--config", str(running.config), password=None)  # a hash in the config, no terminal to ask
    assert res.returncode == 7 and res.stderr.count("\n") == 1, res.stderr
    assert f"only a hash of the API password: set {PASSWORD_ENV}" in res.stderr

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    stopped = tmp_path / "stopped.yaml"
    stopped.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port}", running.config.read_text()))
    res = status("--config", str(stopped))
    assert res.returncode == 7 and res.stderr.count("\n") == 1, res.stderr
    assert f"cannot reach gridcharge at http://127.0.0.1:{free_port}: connection refused: is gridcharge running?" \
        in res.stderr


class _NotGridcharge(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "silent" in self.path:
            time.sleep(1.0)
        body = b"<html>a router's login page</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_another_server_or_a_silent_one_is_named_as_such() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotGridcharge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(StatusUnavailable, match="answered, but not as gridcharge's API"):
            StatusClient(base, USER, PASSWORD).fetch()
        with pytest.raises(StatusUnavailable, match="no answer within 0.3 s") as caught:
            StatusClient(base + "/silent", USER, PASSWORD, timeout_s=0.3).fetch()
        assert not caught.value.login_refused
    finally:
        server.shutdown()
        server.server_close()


def test_watch_in_a_terminal_redraws_in_place_and_follows_the_site(running: Running) -> None:
    steady(running.api)
    pane = TmuxPane([*GRIDCHARGE, "status", "--watch", "--interval", "0.3", "--config", str(running.config)],
                    cwd=ROOT, env=environ(), width=WIDTH)
    try:
        pane.wait_for(lambda s: "password:" in s, 10, "the password prompt")  # only a hash in the config
        pane.send(PASSWORD, "Enter")
        first = pane.wait_for(lambda s: "20000 W  (grid_limit_w)" in s and "E2 " in s, 10, "the first frame")
        scrolled = pane.history_size()
        cycle = cycle_on(first)
        limits_before = {d["dev_id"]: d["assigned_cur"] for d in steady(running.api)["devices"] if d["is_evse"]}

        running.api.get("set_cm_vars", name="AVAIL", val="50")  # the grid operator: half the house connection
        info = steady(running.api)
        assert info["params"]["grid_limit_w"] == 10000
        limits_after = {d["dev_id"]: d["assigned_cur"] for d in info["devices"] if d["is_evse"]}
        assert sum(limits_after.values()) < sum(limits_before.values())  # the chargers' limits dropped

        def shows_now(screen: str) -> bool:
            try:
                assert_shows(screen, running.api.get("get_dev_info").json())
            except AssertionError:
                return False
            return True

        screen = pane.wait_for(shows_now, 10, "the frame of the lower limit")
        assert "10000 W  (grid_limit_w)" in screen
        assert cycle_on(screen) > cycle + 2
        assert pane.history_size() == scrolled  # many frames, drawn in place: nothing scrolled
        assert pane.everything().count("(grid_limit_w)") == 1  # one frame on screen and in the scrollback

        pane.send("C-c")
        assert pane.wait_for_exit(10) == 0, pane.everything()  # Ctrl-C ends the watch cleanly
    finally:
        pane.close()


def test_demo_draws_in_place_in_a_terminal_and_prints_plain_lines_into_a_pipe() -> None:
    """The same short demo twice at once (the suite's time): in a tmux pane and into a pipe."""
    piped = subprocess.Popen([sys.executable, "tests/integration/demo_short.py", "4"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=environ())
    pane = TmuxPane([sys.executable, "tests/integration/demo_short.py", "6"], cwd=ROOT, env=environ())
    try:
        pane.wait_for(lambda s: "scenario finished: all 2 steps played" in s, 12, "the end of the scenario")
        scrolled = pane.history_size()
        cycle = cycle_on(pane.screen())
        later = pane.wait_for(lambda s: cycle_on(s) >= cycle + 2, 6, "two more cycles")
        assert pane.history_size() == scrolled  # redrawn in place
        everything = pane.everything()
        assert everything.count("main fuse") == 1  # one frame, however many cycles were drawn
        assert everything.count(">>> short scenario") == 2  # each step a line above the view
        assert "E2 " in later and "C (charging)" in later
        e3 = re.search(r"^E3 +ocpp +C \(charging\) .*? (\d+\.\d) A +16\.0 A", later, re.M)
        assert e3 is not None and float(e3.group(1)) < 16.0, later  # the OCPP box charges, limited
        assert pane.wait_for_exit(10) == 0, pane.everything()
        assert "demo stopped: wallboxes left at their fail-safe current" in pane.screen()

        out, err = piped.communicate(timeout=20)
        assert piped.returncode == 0, err
        assert "\x1b" not in out  # no colours, no cursor movement
        lines = out.splitlines()
        assert any(re.fullmatch(r"\[ *\d+\.\d s\] >>> short scenario: AVAIL=75", line) for line in lines)
        assert any(re.fullmatch(r"\[ *\d+\.\d s\] scenario finished: all 2 steps played; .*", line) for line in lines)
        assert out.count("main fuse") >= 2  # a frame now and then, one under the other
        assert lines[-1] == "demo stopped: wallboxes left at their fail-safe current"
    finally:
        pane.close()
        piped.kill()


def read_then_close(command: list[str], lines: int, env: dict[str, str]) -> tuple[int, str]:
    """Run ``command`` into a pipe, read ``lines`` lines, close the pipe as ``| head`` does."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env=env, text=True)
    try:
        assert proc.stdout is not None
        for _ in range(lines):
            proc.stdout.readline()
        proc.stdout.close()
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return proc.returncode, err


def test_a_closed_pipe_stops_demo_and_watch_quietly(running: Running) -> None:
    code, err = read_then_close([*GRIDCHARGE, "demo"], 3, environ())
    assert code == 0 and "Traceback" not in err, err
    assert "stopped: fail-safe currents written" in err  # the loop ended through its last cycle

    code, err = read_then_close([*GRIDCHARGE, "status", "--watch", "--interval", "0.2", "--config",
                                 str(running.config)], 1, environ(**{PASSWORD_ENV: PASSWORD}))
    assert code == 0 and err == "", err
