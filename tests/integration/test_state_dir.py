"""``gridcharge run`` against a state directory as a failing SD card leaves it: the real process,
its real HTTP API, real signals, real file systems.

The promises are about the process, so that is what is attacked:

- A state directory that cannot be written makes ``run`` exit 4 with a one-line reason on
  stderr before any listener opens (the port stays closed). The read-only file system is a
  read-only bind mount in a private mount namespace (``unshare -rm``): chmod does not stop root,
  and CI runs as root. Where unshare is not allowed those tests are skipped; a file in place of
  the directory attacks the same path everywhere.
- A grid log that cannot be used (another ``user_version``, a directory in its place, a damaged
  b-tree page) is kept aside at start, the service runs, the status says so, the log goes on.
- A page damaged at run time: ``get_grid_log`` is 503 at most until the file is replaced, then
  200 with a gap row saying where the earlier record is.
- A save that fails (a directory in place of ``variables.json.tmp``, which stops root too; and a
  full 8 MiB tmpfs in a private mount namespace, looked into through ``/proc/<pid>/root``):
  ``"saved": false``, a fault in ``get_dev_info``, the value acts; freed, both clear.
- SIGTERM ends the process with 0 in every one of these states.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from site_helpers import BASE_SITE

from controller.records.gridlog import GridLog
from hal.sim.site import SimulatedSite

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "state-password-1"
AUTH = ("admin", PASSWORD)
EXIT_STATE = 4
STAMP_GLOB = "gridlog.sqlite3.{}-*"


@functools.lru_cache(maxsize=1)
def namespaces_work() -> bool:
    """Whether this machine lets us mount a tmpfs in a private user + mount namespace."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as target:
        try:
            res = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1"', "sh",
                                  target], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return res.returncode == 0


NEEDS_NAMESPACES = pytest.mark.skipif(not namespaces_work(),
                                      reason="unshare -rm (user + mount namespace) is not allowed here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


class Run:
    """One ``gridcharge run`` process (optionally inside ``unshare -rm`` after ``mount_script``),
    its stderr in a file, and a client for its API."""

    def __init__(self, tmp_path: Path, sim: SimulatedSite, *, mount_script: str | None = None) -> None:
        self.state = tmp_path / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/cnf"
        data: dict[str, Any] = sim.config_dict(timeout_s=0.3)
        data["site"] = {**BASE_SITE, "chargers_limit_w": "9200 * AVAIL / 100", "increase_step_a": 16}
        data["variables"] = {"AVAIL": 100}
        data["state_dir"] = str(self.state)
        data["http"] = {"listen": f"127.0.0.1:{self.port}", "user": "admin", "password": PASSWORD}
        self.config = tmp_path / "site.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.log_path = tmp_path / "gridcharge.log"
        command = [sys.executable, "-m", "controller.cli", "run", "--config", str(self.config)]
        if mount_script is not None:  # exec: the process we signal is gridcharge itself
            command = ["unshare", "-rm", "sh", "-c", f'{mount_script} && exec "$@"', "sh", *command]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                         env={**os.environ, "STATE": str(self.state)})
        self.session = requests.Session()
        self.session.auth = AUTH

    @property
    def stderr(self) -> str:
        return self.log_path.read_text()

    def exit_code(self, timeout_s: float = 30) -> int:
        return self.proc.wait(timeout_s)

    def call(self, cmd: str, **params: Any) -> requests.Response:
        return self.session.get(self.url, params={"cmd": cmd, **params}, timeout=10)

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gridcharge run exited early:\n{self.stderr[-3000:]}"
            try:
                if self.call("get_dev_info").json()["params"]["cycle_count"] >= 1:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError("controller did not come up")

    def faults(self) -> list[str]:
        return list(self.call("get_dev_info").json()["params"]["faults"])

    def until(self, what: str, check: Any, timeout_s: float = 10) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} not within {timeout_s} s:\n{self.stderr[-3000:]}"
            time.sleep(0.1)

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.exit_code(20) == 0, self.stderr[-3000:]

    def close(self) -> None:
        self.session.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.close()


def start(runs: list[Run], tmp_path: Path, sim: SimulatedSite, **kwargs: Any) -> Run:
    run = Run(tmp_path, sim, **kwargs)
    runs.append(run)
    return run


def assert_refused_to_start(run: Run, reason: str) -> None:
    """Exit 4, the reason as the last line of stderr (one line, no traceback), nothing listening."""
    assert run.exit_code() == EXIT_STATE, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert " ERROR gridcharge: cannot start: " in last and reason in last, run.stderr
    assert "Traceback" not in run.stderr and "listening" not in run.stderr
    assert port_closed(run.port)


# --------------------------------------------------------------------------- exit before listening


def test_a_file_in_place_of_the_state_directory_stops_the_start(tmp_path: Path, sim: SimulatedSite,
                                                                runs: list[Run]) -> None:
    (tmp_path / "state").write_text("not a directory")
    run = start(runs, tmp_path, sim)
    assert_refused_to_start(run, f"state_dir {tmp_path / 'state'} cannot be written: not a directory")


@NEEDS_NAMESPACES
def test_a_read_only_state_directory_stops_the_start(tmp_path: Path, sim: SimulatedSite,
                                                     runs: list[Run]) -> None:
    (tmp_path / "state").mkdir()
    run = start(runs, tmp_path, sim,
                mount_script='mount --bind "$STATE" "$STATE" && mount -o remount,ro,bind "$STATE"')
    assert_refused_to_start(run, "cannot be written: Read-only file system: "
                                 f"'{tmp_path / 'state' / '.gridcharge-write-probe'}'")


# --------------------------------------------------------------------------- kept aside at start


def foreign_version(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, ts REAL NOT NULL)")
    conn.execute("PRAGMA user_version=9")
    conn.commit()
    conn.close()
    return path.read_bytes()


def a_directory(path: Path) -> None:
    path.mkdir()
    return None


def damaged_table(path: Path) -> bytes:
    filled = GridLog(path)
    filled.start()
    for i in range(2000):
        filled.record("variable", "AVAIL", i, i + 1, "lan:10.0.0.1", 1000.0, ts=1.7e9 + i)
    filled.stop()
    damage(path, root_page(path, "events"))
    return path.read_bytes()


def root_page(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0])
    finally:
        conn.close()


def damage(path: Path, page: int) -> None:
    """Junk over one b-tree page, as a failing card leaves it."""
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(b"\xa5" * size)


BAD_GRID_LOGS = [("another user_version", foreign_version, "foreign", "user_version 9"),
                 ("a directory", a_directory, "corrupt", "not a regular file but a directory"),
                 ("a damaged page", damaged_table, "corrupt", "")]


@pytest.mark.parametrize("make, label, why", [c[1:] for c in BAD_GRID_LOGS], ids=[c[0] for c in BAD_GRID_LOGS])
def test_a_grid_log_that_cannot_be_used_is_kept_aside_and_the_service_runs(
        tmp_path: Path, sim: SimulatedSite, runs: list[Run], make: Any, label: str, why: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    before = make(state / "gridlog.sqlite3")
    run = start(runs, tmp_path, sim)
    run.wait_ready()
    [kept] = state.glob(STAMP_GLOB.format(label))
    if before is not None:
        assert kept.read_bytes() == before  # never deleted: it is a §14a record
    [fault] = [f for f in run.faults() if "kept as" in f]
    assert f"gridlog.sqlite3 was {label} ({why}" in fault and kept.name in fault
    events = run.until("the gap row", lambda: run.call("get_grid_log").json()["events"])
    assert events[0]["kind"] == "gap" and events[0]["new"]["set_aside"] == kept.name
    assert run.call("set_cm_vars", name="AVAIL", val="80").status_code == 200
    run.until("the variable row", lambda: any(e["kind"] == "variable" and e["new"] == 80
                                              for e in run.call("get_grid_log").json()["events"]))
    run.sigterm()


# --------------------------------------------------------------------------- at run time


def test_a_page_damaged_at_run_time_gets_a_new_log_not_endless_500s(tmp_path: Path, sim: SimulatedSite,
                                                                    runs: list[Run]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    log_file = state / "gridlog.sqlite3"
    filled = GridLog(log_file)
    filled.start()
    for i in range(3000):
        filled.record("variable", "AVAIL", i, i + 1, "lan:10.0.0.1", 1000.0, ts=1.7e9 + i)
    filled.stop()
    run = start(runs, tmp_path, sim)
    run.wait_ready()
    assert run.call("get_grid_log", limit="1").status_code == 200
    conn = sqlite3.connect(log_file)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file, then damage two
    conn.close()
    damage(log_file, root_page(log_file, "events"))
    damage(log_file, root_page(log_file, "events_ts"))
    first = run.call("get_grid_log")
    if first.status_code == 503:  # the reader met it first (else the writer did, and replaced it)
        assert "damaged" in first.json()["error"] and first.headers["Retry-After"] == "5"
    else:
        assert first.status_code == 200, first.text
    events = run.until("a readable new log", lambda: (r := run.call("get_grid_log")).status_code == 200
                       and r.json()["events"])
    [kept] = state.glob(STAMP_GLOB.format("corrupt"))
    assert events[0]["kind"] == "gap" and events[0]["new"]["set_aside"] == kept.name
    assert any(f"kept as {kept.name}" in f for f in run.faults())
    assert run.call("set_cm_vars", name="AVAIL", val="70").status_code == 200
    run.until("the variable row", lambda: any(e["kind"] == "variable" and e["new"] == 70
                                              for e in run.call("get_grid_log").json()["events"]))
    assert len(list(state.glob("gridlog.sqlite3.corrupt-*"))) == 1
    run.sigterm()


def test_a_failing_save_is_visible_and_clears_when_saving_works(tmp_path: Path, sim: SimulatedSite,
                                                                runs: list[Run]) -> None:
    run = start(runs, tmp_path, sim)
    run.wait_ready()
    assert "saved" not in run.call("set_cm_vars", name="AVAIL", val="90").json()
    saved = run.state / "variables.json"
    blocker = run.state / "variables.json.tmp"
    run.until("the save", lambda: saved.exists() and '"AVAIL": 90' in saved.read_text() and not blocker.exists(), 5)
    blocker.mkdir()  # every save fails from now on (for root too)
    value = itertools.cycle(range(50, 90))  # each set a change, so each one is saved
    answer = run.until("saved: false", lambda: (a := run.call("set_cm_vars", name="AVAIL", val=str(next(value)))
                                                .json()).get("saved") is False and a)
    acting = {v["name"]: v["expr"] for v in answer["vars"]}["AVAIL"]
    [fault] = [f for f in run.faults() if f.startswith("state_dir: saving the variables")]
    assert "Is a directory" in fault
    assert run.call("set_cm_vars", name="T", val="1", tmp="1").json().get("saved") is None  # tmp: nothing to save
    blocker.rmdir()
    run.until("the fault to clear", lambda: not [f for f in run.faults() if f.startswith("state_dir")], 5)
    assert "saved" not in run.call("get_cm_vars").json()
    assert "saved" not in run.call("set_cm_vars", name="LAST", val="1").json()
    run.until("the file", lambda: '"LAST": 1' in (run.state / "variables.json").read_text(), 5)
    assert f'"AVAIL": {acting}' in (run.state / "variables.json").read_text()
    run.sigterm()


@NEEDS_NAMESPACES
def test_a_full_card_keeps_control_and_says_so_until_there_is_room(tmp_path: Path, sim: SimulatedSite,
                                                                  runs: list[Run]) -> None:
    (tmp_path / "state").mkdir()
    run = start(runs, tmp_path, sim, mount_script='mount -t tmpfs -o size=8m tmpfs "$STATE"')
    run.wait_ready()
    inside = Path(f"/proc/{run.proc.pid}/root") / str(run.state).lstrip("/")  # the process's tmpfs
    filler = inside / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    values = itertools.cycle(range(20, 40))
    run.until("saved: false", lambda: run.call("set_cm_vars", name="AVAIL", val=str(next(values))).json()
              .get("saved") is False)
    # 9200 W * <= 39 % over two 3-phase boxes: under 6 A each, both paused: the signal acts.
    run.until("the boxes to follow", lambda: all(sim.wallbox(c).values()["limit_written_a"] == 0
                                                 for c in ("E1", "E2")))
    faults = run.until("both faults", lambda: (f := run.faults()) and any("No space left" in x for x in f)
                       and any(x.startswith("grid log: writing to") for x in f) and f)
    assert any(x.startswith("state_dir: saving the variables") for x in faults), faults
    filler.unlink()
    run.until("the faults to clear", lambda: run.faults() == [], 20)
    assert "saved" not in run.call("set_cm_vars", name="AVAIL", val="100").json()
    changes = [e["new"] for e in run.call("get_grid_log").json()["events"]
               if e["kind"] == "variable" and e["name"] == "AVAIL" and e["source"].startswith("lan:")]
    # the rows made while the card was full were kept and written once there was room
    assert changes[-1] == 100 and any(20 <= value < 40 for value in changes[:-1]), changes
    run.sigterm()
