"""Nothing lost across a SIGKILL: the real ``gridcharge run`` process on the simulated home site
(its devices on loopback in this process), its gateway connected to a real OCPP backend
(``BackendCsms``), killed with SIGKILL at the worst moments and started again on the same state
directory.

1. Killed while a car charges (its StartTransaction delivered): after the restart the session
   goes on in the same transaction; no second StartTransaction.
2. The backend away, the car leaves (the StopTransaction stored, not delivered), killed: after
   the restart, with the backend back, the StopTransaction arrives, once, with the transaction's
   id and the register's energy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml
from backend_csms import BackendCsms
from site_helpers import BASE_SITE

from hal.sim.site import SimulatedSite

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "restart-test-pass"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    """One ``gridcharge run`` process with the gateway configured, its log in a file."""

    def __init__(self, tmp_path: Path, sim: SimulatedSite, csms: BackendCsms, n: int) -> None:
        self.port = free_port()
        data: dict[str, Any] = sim.config_dict(timeout_s=0.3)
        data["site"] = {**BASE_SITE, "chargers_limit_w": None}
        data["state_dir"] = str(tmp_path / "state")
        data["http"] = {"listen": f"127.0.0.1:{self.port}", "user": "admin", "password": PASSWORD}
        data["ocpp_backend"] = {"url": csms.url, "meter_values_interval_s": 1}
        config = tmp_path / "site.yaml"
        config.write_text(yaml.safe_dump(data))
        self.log_path = tmp_path / f"gridcharge-{n}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
                                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ))

    def backend(self, charger_id: str) -> dict[str, Any]:
        response = requests.get(f"http://127.0.0.1:{self.port}/cnf", params={"cmd": "get_dev_info"},
                                auth=("admin", PASSWORD), timeout=5)
        return dict(response.json()["params"]["backend"]["chargers"][charger_id])

    def sessions(self) -> list[dict[str, Any]]:
        response = requests.get(f"http://127.0.0.1:{self.port}/cnf", params={"cmd": "get_sessions"},
                                auth=("admin", PASSWORD), timeout=5)
        return list(response.json()["sessions"])

    def until(self, what: str, check: Any, timeout_s: float = 20) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"gridcharge exited:\n{self.log_path.read_text()[-3000:]}"
            try:
                value = check()
            except (requests.ConnectionError, KeyError):
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} not within {timeout_s} s:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_sigkill_loses_no_transaction_message_and_sends_no_start_twice(
        tmp_path: Path, sim: SimulatedSite, csms: BackendCsms, cleanup: list[Callable[[], None]]) -> None:
    first = Run(tmp_path, sim, csms, 1)
    cleanup.append(first.close)
    first.until("StartTransaction of E1", lambda: csms.of("StartTransaction", "E1"))
    first.until("transaction id known", lambda: first.backend("E1")["transaction_id"])
    tx_id = first.backend("E1")["transaction_id"]
    first.kill()  # 1. while the car charges

    second = Run(tmp_path, sim, csms, 2)
    cleanup.append(second.close)
    second.until("connected again", lambda: second.backend("E1")["connected"])
    meters_before = len(csms.of("MeterValues", "E1"))
    second.until("meter values go on", lambda: len(csms.of("MeterValues", "E1")) >= meters_before + 2)
    assert len(csms.of("StartTransaction", "E1")) == 1
    assert csms.of("MeterValues", "E1")[-1].payload["transaction_id"] == tx_id
    assert second.backend("E1")["transaction_id"] == tx_id

    csms.stop()  # 2. the backend away, the car leaves, killed before the stop is delivered
    second.until("link down", lambda: not second.backend("E1")["connected"])
    sim.unplug("E1")
    second.until("the session ended", lambda: any(
        s["charger"] == "E1" and s["end_ts"] is not None for s in second.sessions()))
    time.sleep(0.5)  # the gateway's thread stores the StopTransaction at once
    second.kill()
    assert not csms.of("StopTransaction", "E1")

    csms.start()
    third = Run(tmp_path, sim, csms, 3)
    cleanup.append(third.close)
    third.until("StopTransaction delivered", lambda: csms.of("StopTransaction", "E1"))
    third.until("queue empty", lambda: third.backend("E1")["queued"] == 0)
    stops = csms.of("StopTransaction", "E1")
    assert len(stops) == 1 and stops[0].payload["transaction_id"] == tx_id
    start = csms.of("StartTransaction", "E1")
    assert len(start) == 1
    assert stops[0].payload["meter_stop"] > start[0].payload["meter_start"]
    actions = [m.action for m in csms.received() if m.cp_id == "E1"
               and m.action in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction"
