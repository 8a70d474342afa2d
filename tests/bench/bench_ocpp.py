"""Benchmark: ``gridcharge run`` with N OCPP 1.6J wallboxes connected at once (default 50).

Site: an SDM630 grid meter (Modbus TCP) and N simulated OCPP boxes (``hal.sim.ocpp_box``: 3-phase,
16 A, a 3-phase 16 A car plugged in, its draw on the simulated grid meter), all in a **separate
process** (``bench_ocpp.py sim``), so their CPU is never counted as the controller's. The
controller is the real command ``gridcharge run --config <generated yaml>``: the meter, N
``model: ocpp`` chargers with passwords, ``ocpp.listen`` and ``http.listen`` on 127.0.0.1 (ports
from the OS), ``chargers_limit_w = N * 11500 * AVAIL / 100`` (AVAIL=100: every box its 16 A;
AVAIL=40: 6.6 A each), ``increase_step_a = 16`` (a raise is written in one cycle), ``cycle_s = 1``.
gridcharge sets every box's MeterValueSampleInterval to the cycle: MeterValues at 1 Hz each.

Steady window (``--window-s``, 30 s), after every box is connected, has acknowledged its first
charging profile and the limits have not changed for 3 s: CPU % of one core of the
``gridcharge run`` process (utime + stime from ``/proc/PID/stat``, all threads) and of the
simulator process, VmRSS / VmHWM from ``/proc/PID/status``, cycle overruns and failed cycles
(``get_dev_info``), and the MeterValues the boxes sent per box and second (1.0 expected).

Then ``--changes`` (20) variable changes: ``GET /cnf?cmd=set_cm_vars&name=AVAIL&val=40|100``
over HTTP (t0 just before the request) → the instant the LAST of the N boxes accepted a
SetChargingProfile with its new limit (noted in the simulator process inside the box's handler,
before it answers Accepted; ``time.monotonic()`` is CLOCK_MONOTONIC, one clock for all
processes). AVAIL alternates 40/100, so every change moves all N limits (checked); a random
(seeded) 1.0-2.0 s after each completed change, so changes land at every phase of the cycle.
p50/p95/max for all changes, decreases and increases.

Targets (a Raspberry Pi-class budget at 50 boxes, docs/performance.md): CPU < 25 % of one core,
RSS < 100 MiB, all profiles acknowledged p95 < 1 s. A figure above its target is printed as
MISSED; the script exits 1 only when the run did not work (a box that never connected or never
got its limit, a wrong limit, a failed cycle, ``gridcharge run`` not exiting 0 on SIGTERM).

Run: ``.venv/bin/python tests/bench/bench_ocpp.py [--boxes 50] [--window-s 30] [--changes 20]``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import common
from bench_memory import gridcharge_run

CPU_TARGET_PERCENT = 25.0
RSS_TARGET_MIB = 100.0
ACK_P95_TARGET_S = 1.0
BOX_MAX_A = 16.0
BOX_PASSWORD = "bench-box-secret"
HTTP_PASSWORD = "bench-http-secret"
CONNECT_TIMEOUT_S = 90.0
WARM_UP_TIMEOUT_S = 90.0
CHANGE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
STEADY_S = 3.0


# --------------------------------------------------------------------------- the site

def sim_spec() -> dict[str, Any]:
    """The Modbus part of the site (the grid meter); the OCPP boxes are added on ``boxes``."""
    return {"meter": {"id": "M1", "model": "sdm630", "link": "tcp"}, "chargers": [],
            "base_load_a": [4.0, 2.5, 3.5], "tcp_layout": "per_device"}


def charger_id(i: int) -> str:
    return f"E{i + 1}"


def charge_box_id(i: int) -> str:
    return f"BENCH-{i + 1:03d}"


def site_section(boxes: int) -> dict[str, Any]:
    return {
        "voltage_v": 230, "main_fuse_a": max(63.0, 20.0 * boxes), "grid_meter": "M1",
        "chargers_limit_w": f"{boxes * 11500} * AVAIL / 100",
        "unbalanced_limit_a": 20, "stale_s": 5, "cycle_s": 1.0, "increase_step_a": BOX_MAX_A,
    }


def expected_limit_a(avail: float) -> float:
    """Each box's equal share of ``chargers_limit_w`` (11.5 kW a box at AVAIL=100), rounded down to 0.1 A."""
    share_a = 11500 * avail / 100 / (3 * 230)
    return min(BOX_MAX_A, int(share_a * 10 + 1e-9) / 10)


def controller_config(sim_config: Mapping[str, Any], boxes: int, *, ocpp_port: int, http_port: int,
                      state_dir: str) -> dict[str, Any]:
    config = common.site_config(sim_config, site_section(boxes), state_dir=state_dir, variables={"AVAIL": 100})
    config["chargers"] = {
        charger_id(i): {"model": "ocpp", "charge_box_id": charge_box_id(i), "password": BOX_PASSWORD,
                        "phases": 3, "min_current_a": 6, "max_current_a": BOX_MAX_A}
        for i in range(boxes)
    }
    config["ocpp"] = {"listen": f"127.0.0.1:{ocpp_port}"}
    config["http"] = {"listen": f"127.0.0.1:{http_port}", "user": "admin", "password": HTTP_PASSWORD}
    return config


# --------------------------------------------------------------------------- simulator process side

class OcppFleet:
    """N simulated OCPP boxes on the simulated site, their accepted limits noted by a recorder."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self.boxes: list[Any] = []
        self.recorder: common.WriteRecorder | None = None
        self._samples = 0
        self._lock = threading.Lock()

    def start(self, url: str, count: int, password: str) -> dict[str, Any]:
        from hal.sim.ocpp_box import SimOcppBox
        from hal.sim.physics import SimCar
        from hal.sim.wallbox import SimWallbox, WallboxConfig

        for i in range(count):
            wallbox = SimWallbox(WallboxConfig(phases=3, max_current_a=BOX_MAX_A))
            self.site.physics.add_wallbox(charger_id(i), wallbox)
            box = SimOcppBox(url, charge_box_id(i), password=password, wallbox=wallbox)
            box.plug(SimCar(max_current_a=BOX_MAX_A, phases=3))
            self._count_samples(box)
            self.boxes.append(box)
        # The box's SetChargingProfile handler sets its wallbox's limit before it answers Accepted:
        # the recorder's hook on set_limit notes that instant.
        self.recorder = common.WriteRecorder(charger_id(i) for i in range(count))
        self.recorder.install(self.site)
        for box in self.boxes:
            box.start()
        return {"started": len(self.boxes)}

    def _count_samples(self, box: Any) -> None:
        """Count every MeterValues the box sends (wraps its coroutine, an instance attribute)."""
        send = box._send_sample  # noqa: SLF001 - the benchmark's own simulator

        async def counted(connection: Any, sample: Any) -> None:
            with self._lock:
                self._samples += 1
            await send(connection, sample)

        box._send_sample = counted  # noqa: SLF001

    def state(self) -> dict[str, Any]:
        with self._lock:
            samples = self._samples
        return {
            "boxes": len(self.boxes),
            "connected": sum(b.connected for b in self.boxes),
            "with_profile": sum(b.has_profile for b in self.boxes),
            "interval_1s": sum(b.configuration.get("MeterValueSampleInterval") == "1" for b in self.boxes),
            "connections": sum(b.connections for b in self.boxes),
            "samples": samples,
            "cpu_s": sum(os.times()[:2]),
        }

    def stop(self) -> None:
        for box in self.boxes:
            box.stop()


def serve_sim(spec: Mapping[str, Any], *, out: Any = sys.stdout, commands: Iterable[str] = sys.stdin) -> int:
    """The simulator process: the site's grid meter, then ``boxes URL N PASSWORD`` connects the
    OCPP boxes; ``state``, ``arm``, ``wait T``, ``limits`` (see common.py), ``quit``."""
    site = common._build_site(spec)  # noqa: SLF001 - the benchmarks' shared site builder
    fleet = OcppFleet(site)
    site.start()
    try:
        out.write(json.dumps({"config": site.config_dict(), "pid": os.getpid()}) + "\n")
        out.flush()
        for command in commands:
            word, _, arg = command.strip().partition(" ")
            if not word:
                continue
            if word == "quit":
                break
            answer: dict[str, Any] | None
            if word == "boxes":
                url, count, password = arg.split()
                answer = fleet.start(url, int(count), password)
            elif word == "state":
                answer = fleet.state()
            elif fleet.recorder is None:
                answer = {"error": "no boxes yet"}
            else:
                answer = common._answer(command, fleet.recorder)  # noqa: SLF001
                if answer is None:
                    break
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        fleet.stop()
        site.stop()
    return 0


class OcppSimProcess(common.SimProcess):
    """The simulator process of this benchmark (this script's ``sim`` command)."""

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "sim", "--spec", json.dumps(self.spec)]


# --------------------------------------------------------------------------- benchmark process side

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """The running controller's cFos-compatible API (basic auth, one keep-alive connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        token = base64.b64encode(f"admin:{HTTP_PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self._conn: http.client.HTTPConnection | None = None

    def get(self, query: str, timeout_s: float = 10.0) -> Any:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
            try:
                self._conn.request("GET", f"/cnf?{query}", headers=self.headers)
                response = self._conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET /cnf?{query}: HTTP {response.status} {body[:200]!r}")
                return json.loads(body) if body else None
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        return None

    def wait_up(self, proc: subprocess.Popen[Any], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gridcharge run exited with {proc.returncode} before its API answered")
            try:
                self.get("cmd=get_dev_info", timeout_s=2.0)
                return
            except (OSError, http.client.HTTPException, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after "(comm)"


def proc_status_mib(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def wait_until(check: Any, timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def fleet_ready(state: Mapping[str, Any], boxes: int) -> bool:
    """Every box connected, told to sample every second, and holding its first charging profile."""
    return bool(state["connected"] == state["with_profile"] == state["interval_1s"] == boxes)


def all_online(info: Mapping[str, Any], boxes: int) -> bool:
    """No fail-safe, every device (the meter and the N boxes) answering."""
    return (len(info["devices"]) == boxes + 1 and not info["params"]["failsafe"]
            and all(not d.get("com_err") for d in info["devices"]))


def run(boxes: int, window_s: float, changes: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    ocpp_port, http_port = free_port(), free_port()
    reactions: dict[str, list[float]] = {"decrease": [], "increase": []}
    wrong: list[str] = []
    clk_tck = os.sysconf("SC_CLK_TCK")
    with OcppSimProcess(sim_spec()) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-ocpp-") as tmp:
        config = controller_config(sim.config, boxes, ocpp_port=ocpp_port, http_port=http_port,
                                   state_dir=f"{tmp}/state")
        with gridcharge_run(config, tmp) as (proc, log_path):
            api = Api(http_port)
            api.wait_up(proc, CONNECT_TIMEOUT_S)
            connect_t0 = time.monotonic()
            sim.request(f"boxes ws://127.0.0.1:{ocpp_port}/ocpp {boxes} {BOX_PASSWORD}", timeout_s=120)
            wait_until(lambda: fleet_ready(sim.request("state"), boxes), CONNECT_TIMEOUT_S,
                       f"all {boxes} boxes connected, configured, with a profile")
            all_connected_s = time.monotonic() - connect_t0
            # Warm-up: every box at AVAIL=100's limit, every device online, no change for STEADY_S.
            full = expected_limit_a(100)
            wait_until(lambda: all(v is not None and abs(v - full) < 0.05 for v in sim.limits().values())
                       and all_online(api.get("cmd=get_dev_info"), boxes),
                       WARM_UP_TIMEOUT_S, f"every box at {full} A and online")
            warm_s = time.monotonic() - connect_t0
            time.sleep(STEADY_S)

            # Steady window.
            info0, state0 = api.get("cmd=get_dev_info"), sim.request("state")
            ticks0, sim_ticks0, t0 = cpu_ticks(proc.pid), cpu_ticks(sim.pid), time.monotonic()
            time.sleep(window_s)
            ticks1, sim_ticks1, t1 = cpu_ticks(proc.pid), cpu_ticks(sim.pid), time.monotonic()
            info1, state1 = api.get("cmd=get_dev_info"), sim.request("state")
            memory = proc_status_mib(proc.pid)
            wall_s = t1 - t0

            # Variable changes over HTTP.
            for i in range(changes):
                avail = 40 if i % 2 == 0 else 100
                sim.request("arm")
                t_set = time.monotonic()
                api.get(f"cmd=set_cm_vars&name=AVAIL&val={avail}")
                answer = sim.request(f"wait {CHANGE_TIMEOUT_S}", timeout_s=CHANGE_TIMEOUT_S + 20)
                if not answer["done"]:
                    raise RuntimeError(f"change {i + 1} (AVAIL={avail}): only {answer['changed']} of {boxes} "
                                       f"boxes accepted a new limit within {CHANGE_TIMEOUT_S:g} s")
                reactions["decrease" if avail == 40 else "increase"].append(answer["last_s"] - t_set)
                want = expected_limit_a(avail)
                wrong += [f"change {i + 1}: {cid} got {a} A, expected {want} A"
                          for cid, a in answer["limits"].items() if a is None or abs(a - want) > 0.05]
                time.sleep(rng.uniform(1.0, 2.0))
            info2, state2 = api.get("cmd=get_dev_info"), sim.request("state")
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=STOP_TIMEOUT_S)
        log_tail = log_path.read_text().splitlines()[-5:]
    cpu_percent = 100.0 * (ticks1 - ticks0) / clk_tck / wall_s
    sim_cpu_percent = 100.0 * (sim_ticks1 - sim_ticks0) / clk_tck / wall_s
    every = reactions["decrease"] + reactions["increase"]
    p0, p1, p2 = info0["params"], info1["params"], info2["params"]

    def rounded(values: list[float]) -> dict[str, float]:
        return {k: (round(v, 4) if k != "n" else v) for k, v in common.summary(values).items()}

    ack = rounded(every)
    rss = memory.get("VmRSS", 0.0)
    return {
        "boxes": boxes,
        "all_connected_s": round(all_connected_s, 2),
        "warm_up_s": round(warm_s, 2),
        "window_s": round(wall_s, 2),
        "cpu_percent": round(cpu_percent, 2),
        "sim_cpu_percent": round(sim_cpu_percent, 2),
        "rss_mib": round(rss, 1),
        "peak_rss_mib": round(memory.get("VmHWM", 0.0), 1),
        "meter_values_per_box_s": round((state1["samples"] - state0["samples"]) / boxes / wall_s, 3),
        "cycles_in_window": p1["cycle_count"] - p0["cycle_count"],
        "overruns_window": p1["overruns"] - p0["overruns"],
        "overruns_total": p2["overruns"],
        "failed_cycles": p2["failed_cycles"],
        "reconnects": state2["connections"] - boxes,
        "changes": len(every),
        "ack_s": ack,
        "by_direction_s": {name: rounded(values) for name, values in reactions.items() if values},
        "wrong_limits": wrong[:10],
        "exit_code": rc,
        "targets": {"cpu_percent": CPU_TARGET_PERCENT, "rss_mib": RSS_TARGET_MIB, "ack_p95_s": ACK_P95_TARGET_S},
        "met": {"cpu": cpu_percent < CPU_TARGET_PERCENT, "rss": rss < RSS_TARGET_MIB,
                "ack_p95": ack["p95"] < ACK_P95_TARGET_S},
        "log_tail": log_tail,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        parser = argparse.ArgumentParser(description="simulator process of bench_ocpp")
        parser.add_argument("--spec", required=True)
        common.quiet_logging()
        return serve_sim(json.loads(parser.parse_args(argv[1:]).spec))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=50, help="simulated OCPP boxes")
    parser.add_argument("--window-s", type=float, default=30.0, help="steady window for CPU and overruns")
    parser.add_argument("--changes", type=int, default=20, help="AVAIL changes over HTTP (half down, half up)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random spacing between changes")
    args = parser.parse_args(argv)
    common.quiet_logging()
    r = run(args.boxes, args.window_s, args.changes, args.seed)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"`gridcharge run` with {r['boxes']} OCPP 1.6J boxes (simulated in a separate process, MeterValues "
          f"{r['meter_values_per_box_s']:g}/s per box); all connected with a profile after {r['all_connected_s']:g} s")
    rows: list[list[Any]] = [
        ["CPU of gridcharge run (% of one core)", f"{r['cpu_percent']:.1f}", f"< {CPU_TARGET_PERCENT:g}",
         verdict(r["met"]["cpu"])],
        ["simulator process CPU (% of one core)", f"{r['sim_cpu_percent']:.1f}", "", ""],
        ["VmRSS / VmHWM MiB", f"{r['rss_mib']} / {r['peak_rss_mib']}", f"< {RSS_TARGET_MIB:g}",
         verdict(r["met"]["rss"])],
        [f"overruns in {r['window_s']:g} s window / total", f"{r['overruns_window']} / {r['overruns_total']}", "", ""],
    ]
    for name, d in [("all", r["ack_s"]), *r["by_direction_s"].items()]:
        rows.append([f"set_cm_vars -> all {r['boxes']} profiles acked, {name} (n={d['n']}) p50/p95/max ms",
                     f"{1000 * d['p50']:.0f} / {1000 * d['p95']:.0f} / {1000 * d['max']:.0f}",
                     f"p95 < {1000 * ACK_P95_TARGET_S:g}" if name == "all" else "",
                     verdict(r["met"]["ack_p95"]) if name == "all" else ""])
    common.print_table(["figure", "measured", "target", "result"], rows)
    for line in r["wrong_limits"]:
        print("WRONG LIMIT:", line)
    broken = bool(r["wrong_limits"]) or r["failed_cycles"] or r["exit_code"] != 0
    if broken:
        print("BROKEN RUN; last log lines:", *r["log_tail"], sep="\n  ")
    common.emit_json({
        "bench": "ocpp",
        "measured": "gridcharge run --config with N simulated OCPP 1.6J boxes (separate process): CPU from "
                    "/proc/PID/stat over a steady window, VmRSS/VmHWM, overruns from get_dev_info, and "
                    "set_cm_vars over HTTP -> last SetChargingProfile accepted (CLOCK_MONOTONIC)",
        **{k: v for k, v in r.items() if k != "log_tail"},
    })
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
