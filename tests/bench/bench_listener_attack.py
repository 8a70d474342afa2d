"""Benchmark: do the HTTP listeners keep answering while they are attacked from the LAN?

The controller (``Service`` on 1 SDM630 + 2 Alfen wallboxes, each its own Modbus TCP server in a
child process, ``cycle_s = 1.0``) runs in this process with both listeners, started the way
``gridcharge run`` starts them (``web.runtime.start_web``): the LAN listener (basic auth) and the
SMGW listener (mutual TLS, certificates made for the run by ``tests/integration/pki.py``), on
127.0.0.1. The file-descriptor limit of this process is first lowered to ``--nofile`` (1024,
what a systemd unit without ``LimitNOFILE`` gets).

Each scenario runs ``attackers.py`` in a separate process (see its docstring): the attack, and
meanwhile the authorised probes, ``get_cm_vars`` on a new connection every 0.25 s on each
listener, plus one keep-alive SMGW connection asking every 0.5 s. Scenarios:

- ``baseline``: no attack.
- ``idle``: 400 silent TCP connections to the LAN port.
- ``slow``: 20 clients trickling a request head and 20 trickling a body, 1 byte/s, on the LAN.
- ``stalled_tls``: 20 connections to the SMGW port that never send a ClientHello.
- ``mixed``: all of the above at once.
- ``fd_flood``: 1,100 silent connections to the LAN port (more than 1024 descriptors).

Attackers reconnect 0.2 s after the server closes them, from source addresses 127.0.x.y (8
sockets per address); the probes come from 127.0.0.1.

Figures per scenario: probe latency p50/p95/max and failures per listener (a failed probe counts
with the time it took to fail, at most 15 s); the keep-alive SMGW probe's p95 and dropped
connections; the control loop's overruns and cycle-start jitter (``common.CycleStarts``) in the
window; this process's CPU (all threads) over the attack; the most descriptors open and the
fewest left free (sampled every 0.1 s); log records at INFO and above and their size; and how
often a new TCP connection to a simulated wallbox (what a Modbus reconnect needs) failed, tried
every 0.5 s. Target: under ``mixed``, p95 < 1 s on both listeners, no overrun.

Run: ``.venv/bin/python tests/bench/bench_listener_attack.py [--seconds 8] [--scenarios a,b]
[--nofile 1024] [--log FILE] [--settle 3]``. Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

sys.path.insert(0, str(common.REPO_ROOT / "tests" / "integration"))
from pki import make_pki  # noqa: E402  (the test PKI helper lives with the integration tests)

ATTACKERS = Path(__file__).resolve().with_name("attackers.py")
USER = "admin"
P95_TARGET_S = 1.0
WARM_UP_TIMEOUT_S = 60.0
SETTLE_S = 3.0  # between scenarios: the attackers' sockets are gone, the deadlines passed

SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "baseline": [],
    "idle": [{"kind": "idle", "target": "lan", "count": 400}],
    "slow": [{"kind": "slow_head", "target": "lan", "count": 20},
             {"kind": "slow_body", "target": "lan", "count": 20}],
    "stalled_tls": [{"kind": "idle", "target": "smgw", "count": 20}],
    "mixed": [{"kind": "idle", "target": "lan", "count": 400},
              {"kind": "slow_head", "target": "lan", "count": 20},
              {"kind": "slow_body", "target": "lan", "count": 20},
              {"kind": "idle", "target": "smgw", "count": 20}],
    "fd_flood": [{"kind": "flood", "target": "lan", "count": 1100}],
}


class LogCounter(logging.Handler):
    """Counts the records the service would write (INFO and up) and their formatted size."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.records = 0
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        self.bytes += len(self.format(record)) + 1


class Sampler:
    """Every 0.1 s: descriptors open in this process; every 0.5 s: a new TCP connection to a
    simulated wallbox, as a Modbus client reconnecting would need."""

    def __init__(self, device: tuple[str, int]) -> None:
        self.device = device
        self.fds_max = 0
        self.reconnects = 0
        self.reconnect_failures: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.1):
            try:
                self.fds_max = max(self.fds_max, len(os.listdir("/proc/self/fd")))
            except OSError:  # EMFILE: listing /proc/self/fd needs a descriptor itself
                self.fds_max = max(self.fds_max, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            n += 1
            if n % 5 == 0:
                self.reconnects += 1
                try:
                    socket.create_connection(self.device, timeout=1.0).close()
                except OSError as exc:
                    key = os.strerror(exc.errno) if exc.errno else type(exc).__name__
                    self.reconnect_failures[key] = self.reconnect_failures.get(key, 0) + 1


def tcp_device(sim_config: dict[str, Any]) -> tuple[str, int]:
    """The address of one simulated wallbox's Modbus TCP server."""
    for charger in sim_config["chargers"].values():
        if "port" in charger:
            return str(charger.get("host", "127.0.0.1")), int(charger["port"])
    raise RuntimeError(f"no TCP wallbox in the simulator's config: {sim_config['chargers']}")


def start_listeners(service: Any, password: str, pki: Any) -> tuple[int, int]:
    from controller.config.schema import Http, Smgw
    from web.runtime import start_web

    http = Http.model_construct(listen="127.0.0.1:0", user=USER, password=password, password_hash=None)
    cert, key = pki.server_paths
    smgw = Smgw.model_construct(listen="127.0.0.1:0", cert=cert, key=key, client_ca=pki.ca_path,
                                functions=("vars",))
    servers = start_web(service, http=http, smgw=smgw)
    if servers.lan_port is None or servers.smgw_port is None:
        raise RuntimeError("a listener did not start")
    return servers.lan_port, servers.smgw_port


def run_attack(plan: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(ATTACKERS)], input=json.dumps(plan), capture_output=True,
                          text=True, timeout=timeout_s, check=False, cwd=str(common.REPO_ROOT))
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"attackers exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def scenario(name: str, attacks: list[dict[str, Any]], *, ports: tuple[int, int], auth: str, pki: Any,
             seconds: float, service: Any, starts: common.CycleStarts, counter: LogCounter,
             device: tuple[str, int]) -> dict[str, Any]:
    lan, smgw = ports
    tls = {"cert": str(pki.client_paths[0]), "key": str(pki.client_paths[1]), "ca": str(pki.ca_path)}
    plan = {
        "seconds": seconds, "warmup_s": 1.5, "per_address": 8, "probe_timeout_s": 15.0,
        "targets": {"lan": {"port": lan}, "smgw": {"port": smgw}},
        "attacks": attacks,
        "probes": [{"target": "lan", "interval_s": 0.25, "authorization": auth},
                   {"target": "smgw", "interval_s": 0.25, "tls": tls},
                   {"target": "smgw", "interval_s": 0.5, "tls": tls, "keep_alive": True}],
    }
    before = service.loop.status
    records0, bytes0 = counter.records, counter.bytes
    wall0, cpu0 = time.monotonic(), time.process_time()
    with Sampler(device) as sampler:
        result = run_attack(plan, timeout_s=seconds + 120)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    after = service.loop.status
    jitter = starts.jitter_s(1.0, result["window_start_s"], result["window_end_s"])
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    probes = {("ka_" if p["keep_alive"] else "") + p["target"]: p for p in result["probes"]}
    return {
        "scenario": name,
        "attacks": result["attacks"],
        "probes": probes,
        "loop": {"overruns": after.overruns - before.overruns,
                 "failed_cycles": after.failed_cycles - before.failed_cycles,
                 "jitter_s": {"n": len(jitter), "p95": common.percentile(jitter, 95) if jitter else None,
                              "max": max(jitter, default=None)},
                 "devices_offline": sum(not d.online for d in (*after.meters, *(c.device for c in after.chargers)))},
        "cpu_pct": round(100 * cpu / wall, 1),
        "fds": {"limit": soft, "max_open": sampler.fds_max, "min_free": soft - sampler.fds_max},
        "log": {"records": counter.records - records0, "bytes": counter.bytes - bytes0},
        "device_reconnects": {"tries": sampler.reconnects, "failures": sampler.reconnect_failures},
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def print_report(results: Sequence[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        lan, smgw, ka = r["probes"]["lan"], r["probes"]["smgw"], r["probes"]["ka_smgw"]
        jit = r["loop"]["jitter_s"]
        rows.append([
            r["scenario"],
            f"{_ms(lan['latency_s']['p50'])}/{_ms(lan['latency_s']['p95'])}/{_ms(lan['latency_s']['max'])}",
            f"{lan['n'] - lan['ok']}/{lan['n']}",
            f"{_ms(smgw['latency_s']['p50'])}/{_ms(smgw['latency_s']['p95'])}/{_ms(smgw['latency_s']['max'])}",
            f"{smgw['n'] - smgw['ok']}/{smgw['n']}",
            f"{_ms(ka['latency_s']['p95'])} ({ka['drops']})",
            f"{_ms(jit['max'])} / {r['loop']['overruns']}",
            f"{r['cpu_pct']:.0f}",
            f"{r['fds']['max_open']} / {r['fds']['min_free']}",
            f"{r['log']['records']} / {r['log']['bytes'] / 1024:.0f}",
            f"{sum(r['device_reconnects']['failures'].values())}/{r['device_reconnects']['tries']}",
        ])
    common.print_table(["scenario", "LAN p50/p95/max ms", "LAN failed", "SMGW p50/p95/max ms", "SMGW failed",
                        "SMGW keep-alive p95 ms (drops)", "jitter max ms / overruns", "CPU %",
                        "fds open max / free min", "log lines / KiB", "device reconnects failed"], rows)


def run(names: Sequence[str], seconds: float, nofile: int, log_file: str | None,
        settle_s: float = SETTLE_S) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    counter = LogCounter()
    root.addHandler(counter)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(counter.formatter)
        root.addHandler(file_handler)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    password = secrets.token_urlsafe(12)
    auth = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode("ascii")
    starts = common.CycleStarts()
    results = []
    with common.SimProcess(common.tcp_chargers_site(2)) as sim, \
            tempfile.TemporaryDirectory(prefix="gc-bench-attack-") as state:
        pki = make_pki(Path(state) / "pki")
        config = common.site_config(sim.config, common.many_site(2), state_dir=str(Path(state) / "state"),
                                    variables={"AVAIL": 100})
        service, watcher = common.start_controller(config, listeners=[starts.on_cycle])
        try:
            ports = start_listeners(service, password, pki)
            common.warm_up(watcher, WARM_UP_TIMEOUT_S)
            device = tcp_device(sim.config)
            for name in names:
                results.append(scenario(name, SCENARIOS[name], ports=ports, auth=auth, pki=pki, seconds=seconds,
                                        service=service, starts=starts, counter=counter, device=device))
                time.sleep(settle_s)
        finally:
            service.stop()
    mixed = next((r for r in results if r["scenario"] == "mixed"), None)
    met = None
    if mixed is not None:
        p95s = [mixed["probes"][k]["latency_s"]["p95"] for k in ("lan", "smgw")]
        met = all(p is not None and p < P95_TARGET_S for p in p95s) and mixed["loop"]["overruns"] == 0
    return {"nofile": min(nofile, hard), "seconds": seconds, "results": results,
            "target": {"mixed_p95_s": P95_TARGET_S, "met": met}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="probing window of each scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: "
                        + ", ".join(SCENARIOS))
    parser.add_argument("--nofile", type=int, default=1024, help="RLIMIT_NOFILE of the controller process")
    parser.add_argument("--log", default=None, help="also write the controller's log (INFO and up) to this file")
    parser.add_argument("--settle", type=float, default=SETTLE_S, help="pause between scenarios (s)")
    args = parser.parse_args(argv)
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    r = run(names, args.seconds, args.nofile, args.log, args.settle)
    print(f"listeners under attack: controller with 1 meter + 2 TCP wallboxes (simulators in a separate "
          f"process), RLIMIT_NOFILE {r['nofile']}; attackers and probes in a separate process, "
          f"{args.seconds:g} s per scenario")
    print_report(r["results"])
    if r["target"]["met"] is not None:
        print(f"mixed attack: p95 < {P95_TARGET_S:g} s on both listeners and no overrun: "
              f"{'met' if r['target']['met'] else 'MISSED'}")
    common.emit_json({"bench": "listener_attack", **r})
    return 0


if __name__ == "__main__":
    sys.exit(main())
