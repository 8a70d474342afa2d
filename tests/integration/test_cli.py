"""The command line as an installer uses it: real processes, real sockets, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hal.sim.site import SimulatedSite
from site_helpers import BASE_SITE

ROOT = Path(__file__).resolve().parents[2]
GRIDCHARGE = [sys.executable, "-m", "controller.cli"]


def gridcharge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GRIDCHARGE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write_config(tmp_path: Path, sim: SimulatedSite, **site: object) -> Path:
    data = sim.config_dict(timeout_s=0.3)
    data["site"] = {**BASE_SITE, **site}
    data["variables"] = {"AVAIL": 100}
    data["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_config_accepts_the_example() -> None:
    res = gridcharge("check-config", "--config", "deploy/config.example.yaml")
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout and "charger E1: heidelberg" in res.stdout


def test_check_config_lists_every_error_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "site:\n  main_fuse_a: 35\n  paritty: 1\n"
        "buses:\n  rs485: {type: rtu, port: /dev/ttyUSB0, baudrate: 19200, parity: E}\n"
        "chargers:\n  E1: {model: heidelberg, bus: rs4855, unit: 2, max_current_a: '16 * (AVAIL'}\n"
        "  E2: {model: alfenn, bus: rs485, unit: 3}\n"
    )
    res = gridcharge("check-config", "--config", str(bad))
    assert res.returncode == 1
    assert "site.paritty" in res.stderr
    assert "chargers.E1.max_current_a" in res.stderr and "parse" in res.stderr
    assert "chargers.E1.bus: no bus named 'rs4855'" in res.stderr  # reported along with the formula
    assert "chargers.E2.model" in res.stderr


def test_usage_error_exits_2() -> None:
    assert gridcharge("frobnicate").returncode == 2


def test_read_prints_one_device(tmp_path: Path, sim: SimulatedSite) -> None:
    config = write_config(tmp_path, sim)
    res = gridcharge("read", "M1", "--config", str(config))
    assert res.returncode == 0, res.stderr
    assert "power_w" in res.stdout and "sdm630" in res.stdout
    sim.set_silent("E2", True)
    res = gridcharge("read", "E2", "--config", str(config))
    assert res.returncode == 3 and "E2" in res.stderr


def test_run_stops_on_sigterm_leaving_failsafe_currents(tmp_path: Path, sim: SimulatedSite) -> None:
    config = write_config(tmp_path, sim)
    proc = subprocess.Popen([*GRIDCHARGE, "run", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sim.wallbox("E1").values()["limit_written_a"] < 16:  # the controller is writing
                break
            time.sleep(0.1)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "fail-safe currents written" in err
    failsafe = 6.0  # the default fail-safe current of a charger (see README)
    for cid in ("E1", "E2"):
        assert sim.wallbox(cid).values()["limit_written_a"] <= failsafe + 0.01, (cid, err[-3000:])


def test_demo_runs_a_short_while() -> None:
    res = gridcharge("demo", "--duration", "3", timeout=60)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout  # not a terminal: plain text, no colours or cursor movement
    assert re.search(r"^E1 +heidelberg +C \(charging\)", res.stdout, re.M), res.stdout
    assert re.search(r"^main fuse +25 A +25 A +25 A", res.stdout, re.M)
    assert "demo stopped" in res.stdout


def test_hash_password_prints_a_werkzeug_hash() -> None:
    from werkzeug.security import check_password_hash

    res = subprocess.run([*GRIDCHARGE, "hash-password", "--stdin"], input="correct horse battery\n",
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    hashed = res.stdout.strip()
    assert hashed.startswith("scrypt:") and check_password_hash(hashed, "correct horse battery")
    short = subprocess.run([*GRIDCHARGE, "hash-password", "--stdin"], input="short\n",
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert short.returncode == 2
