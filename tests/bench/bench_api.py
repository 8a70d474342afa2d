"""Benchmark: the cFos-compatible HTTP API under load while the control loop runs (docs/performance.md).

Site: the one of ``bench_reaction.py``: 1 SDM630 grid meter + N Alfen wallboxes (default 20),
each its own Modbus TCP server in a child process (``common.SimProcess``), every box with a
3-phase 16 A car, ``chargers_limit_w = N * 11500 * AVAIL / 100`` (N = 20: 230000 * AVAIL / 100),
``increase_step_a = 16``, ``cycle_s = 1.0``. The controller (``Service``) and its LAN listener
(``web.runtime.start_web``, asyncio + h11 + Flask, basic auth with the ``admin`` user) run in the
benchmark process, on 127.0.0.1 and a free port.

Three figures, measured after the warm-up of ``common.warm_up``:

1. ``get_cm_vars`` throughput: ``--clients`` (4) concurrent clients, each one persistent
   (keep-alive) ``http.client`` connection sending ``GET /cnf?cmd=get_cm_vars`` back to back for
   ``--seconds`` (10). The clients are threads of a **separate process** (this script with
   ``load``), so the load generator never competes for the server's GIL and is never counted in
   its CPU time; the client process reports its own measuring window (CLOCK_MONOTONIC, shared by
   all processes), per-request latency, status codes, transport errors and reconnections.
   Figures: requests/s over the window, latency p50/p99/max, non-200 + errors (must be 0), the
   CPU the benchmark process (controller + server), the client process and the simulators used
   meanwhile, and what the rest of the machine used (``/proc/stat``): on a shared machine a
   figure taken while another job ran can then be told from one taken on a quiet machine.
2. Cycle-start jitter during that load: every cycle's ``status.monotonic_s`` is noted by a cycle
   listener (``common.CycleStarts``); the loop's schedule is replayed (ticks = first start +
   k * cycle_s, woken cycles left out, ``common.scheduled_jitter``); jitter = actual start -
   tick for the ticks inside the load window. No variable is set during this window, so every
   cycle in it is a scheduled one. With 1 s cycles a 10 s window has ~10 ticks: its "p99" is
   its maximum; ``--seconds 120`` gives a p99 worth the name.
3. ``set_cm_vars`` → every limit written, through HTTP: ``GET /cnf?cmd=set_cm_vars&name=AVAIL&
   val=40|100`` on a keep-alive connection from this process, after the load (so that the woken
   cycles stay out of the jitter window). As in ``bench_reaction.py``: the simulator is armed,
   ``t0 = time.monotonic()`` just before the request, the simulator answers when the LAST box
   got a limit different from its armed one; latency = that instant - t0. The HTTP answer's own
   latency is noted too. ``--changes`` (40) changes, each after the previous one is complete plus
   a random (seeded) 1.0 .. 2.0 s, so they land at every phase of the cycle and each is the
   first grid signal for a whole cycle (closer ones are coalesced, see bench_reaction.py). Every box's new
   limit is checked (6.6 A at AVAIL=40, 16 A at 100).

Password: ``--auth plain`` (default) configures ``http.password``: every request compares the
password in constant time (~1 µs). ``--auth hash`` configures a werkzeug scrypt
``http.password_hash``: one request before the window pays the scrypt check (~0.15 s, reported as
``first_request_ms``); every later request with the same credentials hits
``web.auth.BasicAuth``'s cache (an HMAC-SHA256 and a compare, ~9 µs).

Targets: ≥ 500 requests/s, jitter p99 ≤ 50 ms, set → all limits p95 ≤ 0.3 s. A
figure that misses its target is reported ``MISSED``; the script exits 1 only when the run broke
(an HTTP error or non-200 answer, a wrong limit, a failed cycle, a box that never got its limit).

Run: ``.venv/bin/python tests/bench/bench_api.py [--chargers 20] [--clients 4] [--seconds 10]
[--changes 40] [--auth plain|hash]``. Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from bench_reaction import expected_limit_a, reaction_site

RPS_TARGET = 500.0
JITTER_P99_TARGET_S = 0.050
SET_P95_TARGET_S = 0.3
WARM_UP_TIMEOUT_S = 60.0
CHANGE_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 10.0
USER = "admin"
AUTH_ENV = "GC_BENCH_AUTHORIZATION"  # the Authorization header for the client process (not argv)
GET_PATH = "/cnf?cmd=get_cm_vars"
ERROR_SAMPLES = 5


def authorization(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


# --------------------------------------------------------------------------- load process side

@dataclass
class ClientResult:
    """What one client thread saw."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)  # the first few, not one per failed try
    bad_bodies: int = 0
    connects: int = 0
    end_s: float = 0.0


def _valid_vars_body(body: bytes) -> bool:
    """A ``get_cm_vars`` answer that lists AVAIL (checked on a client's first and last answer)."""
    try:
        return any(v.get("name") == "AVAIL" for v in json.loads(body)["vars"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def _client(port: int, auth: str, start: threading.Barrier, window: list[float], out: ClientResult) -> None:
    """Requests back to back on one keep-alive connection until the window's end."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    headers = {"Authorization": auth}
    last_body = b""
    start.wait()
    deadline_s = window[1]
    try:
        while time.monotonic() < deadline_s:
            if conn.sock is None:
                out.connects += 1  # http.client (re)connects inside request()
            t0_s = time.monotonic()
            try:
                conn.request("GET", GET_PATH, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                out.errors += 1
                if len(out.error_samples) < ERROR_SAMPLES:
                    out.error_samples.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            out.latencies_s.append(time.monotonic() - t0_s)
            out.statuses[response.status] += 1
            if len(out.latencies_s) == 1 and not _valid_vars_body(body):
                out.bad_bodies += 1
            last_body = body
        if not _valid_vars_body(last_body):
            out.bad_bodies += 1
    finally:
        out.end_s = time.monotonic()
        conn.close()


def load(port: int, auth: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads hammering ``get_cm_vars`` for ``seconds``; the figures of the window."""
    results = [ClientResult() for _ in range(clients)]
    window = [0.0, 0.0]

    def open_window() -> None:  # run by the barrier once every client is ready
        window[0] = time.monotonic()
        window[1] = window[0] + seconds

    barrier = threading.Barrier(clients, action=open_window)
    threads = [threading.Thread(target=_client, args=(port, auth, barrier, window, r), name=f"client-{i}")
               for i, r in enumerate(results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end_s = max(r.end_s for r in results)
    latencies = [x for r in results for x in r.latencies_s]
    statuses: Counter[int] = sum((r.statuses for r in results), Counter())
    return {
        "start_s": window[0], "end_s": end_s, "requests": len(latencies),
        "per_client": [len(r.latencies_s) for r in results],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "non_200": sum(v for k, v in statuses.items() if k != 200),
        "errors": sum(r.errors for r in results),
        "error_samples": [e for r in results for e in r.error_samples][:ERROR_SAMPLES],
        "bad_bodies": sum(r.bad_bodies for r in results),
        "connects": sum(r.connects for r in results),
        "latency_s": {"p50": common.percentile(latencies, 50), "p95": common.percentile(latencies, 95),
                      "p99": common.percentile(latencies, 99), "max": max(latencies, default=float("nan"))},
    }


def _load_main(args: argparse.Namespace) -> int:
    auth = os.environ.get(AUTH_ENV)
    if not auth:
        sys.stderr.write(f"{AUTH_ENV} is not set\n")
        return 2
    common.emit_json(load(args.port, auth, args.clients, args.seconds))
    return 0


# --------------------------------------------------------------------------- benchmark process side

def start_api(service: Any, password: str, auth_kind: str) -> int:
    """The LAN listener on a free loopback port, with a plain password or its scrypt hash."""
    from controller.config import Http
    from web.auth import hash_password
    from web.runtime import start_web

    if auth_kind == "hash":
        http = Http.model_construct(listen="127.0.0.1:0", user=USER, password=None,
                                    password_hash=hash_password(password))
    else:
        http = Http.model_construct(listen="127.0.0.1:0", user=USER, password=password, password_hash=None)
    port = start_web(service, http=http).lan_port
    if port is None:
        raise RuntimeError("the LAN listener did not start")
    return port


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (``/proc/stat``).

    Busy = user + nice + system + irq + softirq. Reported so that a figure taken while other
    programs ran (a CI job next door) can be told from one taken on a quiet machine.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) * tick_s, steal * tick_s


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (``/proc/PID/stat``)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port: int, auth: str, clients: int, seconds: float, sim_pid: int) -> dict[str, Any]:
    """The load client in its own process, and the CPU every party used over its lifetime: this
    process (controller + HTTP server), the simulator process, the whole machine."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "load", "--port", str(port),
           "--clients", str(clients), "--seconds", str(seconds)]
    wall0_s, cpu0_s, sim0_s = time.monotonic(), time.process_time(), process_cpu_s(sim_pid)
    busy0_s, steal0_s = machine_cpu_s()
    child0_s = _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(common.REPO_ROOT),
                          env={**os.environ, AUTH_ENV: auth}, timeout=seconds + 60, check=False)
    wall_s, cpu_s = time.monotonic() - wall0_s, time.process_time() - cpu0_s
    busy1_s, steal1_s = machine_cpu_s()
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"load client exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    client_s = _children_cpu_s() - child0_s  # the whole client process, start-up included
    sim_s = process_cpu_s(sim_pid) - sim0_s
    result["cpu_pct"] = {
        "server": 100 * cpu_s / wall_s,
        "client_process": 100 * client_s / wall_s,
        "simulators": 100 * sim_s / wall_s,
        "machine_busy": 100 * (busy1_s - busy0_s) / wall_s,
        "other_programs": 100 * max(0.0, busy1_s - busy0_s - cpu_s - client_s - sim_s) / wall_s,
        "steal": 100 * (steal1_s - steal0_s) / wall_s,
        "cores": os.cpu_count() or 1,
    }
    return result


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's waited-for children (the load client)."""
    times = os.times()
    return times.children_user + times.children_system


def first_request_s(port: int, auth: str) -> float:
    """One ``get_cm_vars`` on a fresh connection before the load: checks that the listener and
    the credentials work, and pays (and times) the one scrypt check of ``--auth hash`` outside
    the measuring window (later requests hit ``BasicAuth``'s cache)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        t0_s = time.monotonic()
        conn.request("GET", GET_PATH, headers={"Authorization": auth})
        response = conn.getresponse()
        body = response.read()
        took_s = time.monotonic() - t0_s
    finally:
        conn.close()
    if response.status != 200 or not _valid_vars_body(body):
        raise RuntimeError(f"first get_cm_vars: HTTP {response.status}: {body[:200]!r}")
    return took_s


def measure_sets(sim: common.SimProcess, port: int, auth: str, chargers: int, changes: int,
                 seed: int) -> dict[str, Any]:
    """``set_cm_vars`` over HTTP → the last box's new limit (see the module docstring, 3.)."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    headers = {"Authorization": auth}
    written_s: list[float] = []
    answered_s: list[float] = []
    wrong: list[str] = []
    try:
        for i in range(changes):
            avail = 40 if i % 2 == 0 else 100
            sim.request("arm")
            t0_s = time.monotonic()
            conn.request("GET", f"/cnf?cmd=set_cm_vars&name=AVAIL&val={avail}", headers=headers)
            response = conn.getresponse()
            body = response.read()
            answered_s.append(time.monotonic() - t0_s)
            if response.status != 200:
                raise RuntimeError(f"change {i + 1}: HTTP {response.status}: {body[:200]!r}")
            answer = sim.request(f"wait {CHANGE_TIMEOUT_S}", timeout_s=CHANGE_TIMEOUT_S + 10)
            if not answer["done"]:
                raise RuntimeError(f"change {i + 1} (AVAIL={avail}): only {answer['changed']} of "
                                   f"{chargers} boxes got a new limit within {CHANGE_TIMEOUT_S:g} s")
            written_s.append(answer["last_s"] - t0_s)
            want = expected_limit_a(chargers, avail)
            wrong += [f"change {i + 1}: {cid} got {a} A, expected {want} A"
                      for cid, a in answer["limits"].items() if a is None or abs(a - want) > 0.05]
            time.sleep(rng.uniform(1.0, 2.0))
    finally:
        conn.close()
    return {"written": common.summary(written_s), "answered": common.summary(answered_s), "wrong": wrong}


def run(chargers: int, clients: int, seconds: float, changes: int, seed: int, auth_kind: str) -> dict[str, Any]:
    password = secrets.token_urlsafe(12)
    auth = authorization(USER, password)
    starts = common.CycleStarts()
    with common.SimProcess(common.tcp_chargers_site(chargers)) as sim, \
            tempfile.TemporaryDirectory(prefix="gc-bench-") as state:
        site = reaction_site(chargers)
        config = common.site_config(sim.config, site, state_dir=state, variables={"AVAIL": 100})
        service, watcher = common.start_controller(config, listeners=[starts.on_cycle])
        try:
            port = start_api(service, password, auth_kind)
            common.warm_up(watcher, WARM_UP_TIMEOUT_S)
            first_s = first_request_s(port, auth)
            before = service.loop.status
            load_result = run_load(port, auth, clients, seconds, sim.pid)
            after_load = watcher.wait_cycles(1, 5.0)  # the cycle after the window is recorded
            jitter = starts.jitter_s(site["cycle_s"], load_result["start_s"], load_result["end_s"])
            sets = measure_sets(sim, port, auth, chargers, changes, seed)
            status = service.loop.status
        finally:
            service.stop()
    window_s = load_result["end_s"] - load_result["start_s"]
    rps = load_result["requests"] / window_s if window_s > 0 else 0.0
    jitter_stats = {"n": len(jitter), "p50": common.percentile(jitter, 50), "p95": common.percentile(jitter, 95),
                    "p99": common.percentile(jitter, 99), "max": max(jitter, default=float("nan"))}
    written = sets["written"]
    return {
        "chargers": chargers,
        "auth": auth_kind,
        "first_request_ms": round(1000 * first_s, 1),
        "load": {
            "clients": clients, "window_s": round(window_s, 3), "requests": load_result["requests"],
            "requests_per_s": round(rps, 1),
            "latency_ms": {k: round(1000 * v, 2) for k, v in load_result["latency_s"].items()},
            "non_200": load_result["non_200"], "statuses": load_result["statuses"],
            "errors": load_result["errors"], "error_samples": load_result["error_samples"],
            "bad_bodies": load_result["bad_bodies"], "connects": load_result["connects"],
            "per_client": load_result["per_client"],
            "cpu_pct": {k: round(v, 1) for k, v in load_result["cpu_pct"].items()},
            "overruns": after_load.overruns - before.overruns,
        },
        "jitter_ms": {**{k: round(1000 * v, 2) if k != "n" else v for k, v in jitter_stats.items()},
                      "worst": [round(1000 * v, 2) for v in sorted(jitter, reverse=True)[:5]]},
        "set": {
            "changes": written["n"],
            "written_ms": {k: round(1000 * v, 1) if k != "n" else v for k, v in written.items()},
            "answered_ms": {k: round(1000 * v, 2) if k != "n" else v for k, v in sets["answered"].items()},
            "wrong_limits": sets["wrong"][:10],
        },
        "overruns": status.overruns,
        "failed_cycles": status.failed_cycles,
        "targets": {"requests_per_s": RPS_TARGET, "jitter_p99_ms": 1000 * JITTER_P99_TARGET_S,
                    "set_p95_ms": 1000 * SET_P95_TARGET_S},
        "targets_met": {
            "requests_per_s": rps >= RPS_TARGET,
            "jitter_p99": bool(jitter) and jitter_stats["p99"] <= JITTER_P99_TARGET_S,
            "set_p95": written["n"] > 0 and written["p95"] <= SET_P95_TARGET_S,
        },
    }


def broken(r: dict[str, Any]) -> list[str]:
    """Why the run itself did not work (exit 1), as opposed to a missed target."""
    load_ = r["load"]
    why = []
    if load_["requests"] == 0:
        why.append("no request completed")
    if load_["non_200"] or load_["errors"] or load_["bad_bodies"]:
        why.append(f"{load_['non_200']} non-200 answers ({load_['statuses']}), {load_['errors']} transport "
                   f"errors {load_['error_samples']}, {load_['bad_bodies']} unreadable bodies")
    if r["jitter_ms"]["n"] == 0:
        why.append("no scheduled cycle in the load window")
    if r["set"]["wrong_limits"]:
        why.append(f"wrong limits: {r['set']['wrong_limits']}")
    if r["failed_cycles"]:
        why.append(f"{r['failed_cycles']} failed cycles")
    return why


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_report(r: dict[str, Any]) -> None:
    load_, jit, st = r["load"], r["jitter_ms"], r["set"]
    cpu = load_["cpu_pct"]
    met = r["targets_met"]
    print(f"HTTP API, {r['chargers']} simulated TCP wallboxes + 1 meter (separate process), cycle_s=1.0, "
          f"{r['auth']} password; load: {load_['clients']} keep-alive clients in a separate process, "
          f"{load_['window_s']:g} s")
    common.print_table(
        ["figure", "measured", "target", "result"],
        [
            ["get_cm_vars requests/s", f"{load_['requests_per_s']:.0f} ({load_['requests']} requests)",
             f">= {RPS_TARGET:g}", _verdict(met["requests_per_s"])],
            ["get_cm_vars latency p50/p99/max ms",
             f"{load_['latency_ms']['p50']:.2f} / {load_['latency_ms']['p99']:.2f} / {load_['latency_ms']['max']:.1f}",
             "-", "-"],
            ["first request (auth check, before the window) ms", f"{r['first_request_ms']:.1f}", "-", "-"],
            ["non-200 / errors / reconnects",
             f"{load_['non_200']} / {load_['errors']} / {load_['connects'] - load_['clients']}", "0 / 0", "-"],
            ["CPU % of one core during load: server / client / sims", f"{cpu['server']:.0f} / "
             f"{cpu['client_process']:.0f} / {cpu['simulators']:.0f}", "-", "-"],
            [f"machine busy / other programs / steal (% of one core, {cpu['cores']} cores)",
             f"{cpu['machine_busy']:.0f} / {cpu['other_programs']:.0f} / {cpu['steal']:.0f}", "-", "-"],
            ["cycle-start jitter p50/p99/max ms", f"{jit['p50']:.2f} / {jit['p99']:.2f} / {jit['max']:.2f} "
             f"({jit['n']} cycles)", f"p99 <= {1000 * JITTER_P99_TARGET_S:g}", _verdict(met["jitter_p99"])],
            ["set_cm_vars -> all limits p50/p95/max ms",
             f"{st['written_ms']['p50']:.1f} / {st['written_ms']['p95']:.1f} / {st['written_ms']['max']:.1f} "
             f"({st['changes']} changes)", f"p95 <= {1000 * SET_P95_TARGET_S:g}", _verdict(met["set_p95"])],
            ["set_cm_vars HTTP answer p50/p95/max ms",
             f"{st['answered_ms']['p50']:.2f} / {st['answered_ms']['p95']:.2f} / {st['answered_ms']['max']:.2f}",
             "-", "-"],
            ["overruns / failed cycles", f"{r['overruns']} / {r['failed_cycles']}", "-", "-"],
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("load", help="(internal) the load client process")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--clients", type=int, default=4)
    client.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chargers", type=int, default=20, help="TCP wallboxes")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the get_cm_vars load")
    parser.add_argument("--changes", type=int, default=40, help="set_cm_vars changes measured (>= 30 for a p95)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random spacing between changes")
    parser.add_argument("--auth", choices=("plain", "hash"), default="plain",
                        help="http.password (plain) or a werkzeug scrypt http.password_hash (hash)")
    args = parser.parse_args(argv)
    if args.command == "load":
        return _load_main(args)
    common.quiet_logging()
    r = run(args.chargers, args.clients, args.seconds, args.changes, args.seed, args.auth)
    print_report(r)
    why = broken(r)
    for line in why:
        print("BROKEN:", line)
    common.emit_json({
        "bench": "api",
        "measured": "get_cm_vars requests/s with N keep-alive clients (separate process) while the loop runs; "
                    "scheduled cycle-start jitter during that load; set_cm_vars over HTTP -> the last of N "
                    "simulated TCP wallboxes receiving its new limit; cycle_s=1.0",
        **r,
    })
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
