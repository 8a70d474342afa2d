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


EVERY_KIND = """\
site:
  main_fuse_a: 25
  cycle_s: fast                      # schema: not a number
  grid_meter: E1                     # cross-reference: a charger, not a meter
  grid_limit_w: "55000 * AVIAL / 100"   # unknown name
buses:
  rs485: {type: rtu, port: /dev/ttyUSB0, baudrate: 9600}
meters:
  M1: {model: sdm630, bus: rs485, unit: 1}
chargers:
  E1: {model: heidelberg, bus: rs485, unit: 1, max_current_a: 20, priorty: 2}
  E2: {model: alfen, host: 192.168.1.50, min_current_a: 4, max_current_a: 32}
inputs:
  RSE1: {gpio: 17, pull_up: no}
variables:
  AVAIL: 100
  A: "B + 1"
  B: "A * 2"
rules:
  - name: cheap hours
    chargers: [E9]
    when: "E1.stat == 3"
    max_current_a: 0
"""


def test_check_config_reports_every_kind_of_error_in_one_run(tmp_path: Path) -> None:
    """One file, one mistake of every kind: YAML, schema, cross-reference, unknown name and
    plausibility, all in one run, sorted by path, with the warnings beside them."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(EVERY_KIND)
    res = gridcharge("check-config", "--config", str(bad))
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.splitlines()
    errors = [line.strip() for line in lines[1:] if not line.strip().startswith("warning: ")]
    expected = [
        ("chargers.E1.bus", "'heidelberg' speaks only 19200 8E1 (fixed on the box), but bus 'rs485' runs 9600 8N1"),
        ("chargers.E1.max_current_a", "20 A is above what 'heidelberg' accepts (16 A)"),
        ("chargers.E1.priorty", "unknown key (did you mean 'priority'?)"),
        ("chargers.E1.unit", "unit 1 on bus 'rs485' is already meters.M1"),
        ("chargers.E2.min_current_a", "must be at least 6 A: IEC 61851"),
        ("inputs.RSE1.pull_up", "'no' is read by YAML as false"),
        ("rules.0.chargers.0", "no charger named 'E9'"),
        ("rules.0.when", "unknown name 'E1.stat' (did you mean 'E1.state'?)"),
        ("site.cycle_s", "Input should be a valid number"),
        ("site.grid_limit_w", "unknown name 'AVIAL' (did you mean 'AVAIL'?); a variable set later over the API must "
                              "be declared under variables: with its starting value"),
        ("site.grid_meter", "'E1' is a charger, not a meter"),
        ("variables", "dependency cycle: A -> B -> A"),
    ]
    assert lines[0].startswith(f"{bad}: {len(expected)} errors, "), res.stderr  # the warnings depend on the machine
    assert [e.split(": ", 1)[0] for e in errors] == [path for path, _ in expected], res.stderr
    for error, (path, fragment) in zip(errors, expected):
        assert fragment in error, (error, fragment)
    assert "  warning: chargers.E2.max_current_a: 32 A is above main_fuse_a (25 A)" in res.stderr
    assert "  warning: buses.rs485.port: /dev/ttyUSB0 does not exist on this machine" in res.stderr


def test_check_config_accepts_the_simulated_site(tmp_path: Path, sim: SimulatedSite) -> None:
    """The simulator's config (a Heidelberg box on an RS485 line) passes, warnings at most."""
    res = gridcharge("check-config", "--config", str(write_config(tmp_path, sim)))
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout


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
    failsafe = 6.0  # the default fail-safe current of a charger (see docs/configuration.md)
    for cid in ("E1", "E2"):
        assert sim.wallbox(cid).values()["limit_written_a"] <= failsafe + 0.01, (cid, err[-3000:])


def test_demo_runs_a_short_while() -> None:
    res = gridcharge("demo", "--duration", "3", timeout=60)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout  # not a terminal: plain text, no colours or cursor movement
    assert re.search(r"^E1 +heidelberg +C \(charging\)", res.stdout, re.M), res.stdout
    assert re.search(r"^E3 +ocpp ", res.stdout, re.M), res.stdout  # the OCPP box, shown like the others
    assert "an OCPP 1.6J box E3 on ws://127.0.0.1:" in res.stdout
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
