"""Benchmark: what the gateway to the supplier's OCPP 1.6J backend costs ``gridcharge run``, and
whether it ever disturbs the control loop (docs/performance.md "The OCPP backend gateway").

Two sites, each simulated in a **separate process** (``common.py serve``, as every bench):

- ``home``: the typical home (SDM630 + Heidelberg on an RS485 pty line, an Alfen on Modbus TCP,
  a car charging at each box), ``common.home_site()``;
- ``tcp``: 1 SDM630 + ``--chargers`` (20) Alfen boxes, each its own Modbus TCP server, a car at
  each, ``common.tcp_chargers_site()``.

The controller is the real command ``gridcharge run --config <generated yaml>`` (``http.listen``
on 127.0.0.1 for ``get_dev_info``, state directory on the disk). The backend side lives in THIS
process (threads), so its CPU is never counted as gridcharge's: a real OCPP 1.6J central system
(``tests/integration/backend_csms.py``), a real SOCKS5 proxy (``tests/integration/proxies.py``)
and a black hole. Scenarios (``--scenarios``):

- ``baseline``: no ``ocpp_backend:`` section;
- ``direct_1s`` / ``direct_60s``: connected to the backend on loopback, MeterValues every 1 s
  (the worst case the configuration allows) / every 60 s (the default);
- ``socks5_1s``: the same at 1 s through the SOCKS5 proxy (an SMGW's CLS proxy);
- ``down_1s``: nothing listens at the backend's address (connection refused, backoff);
- ``blackhole_1s``: a TCP listener that accepts and never answers (the WebSocket handshake times
  out after 20 s, then backoff);
- ``slow_1s``: the backend answers every call ``--delay-s`` (2 s) late.

After a warm-up (every box has its limit; with a reachable backend every charge point is
connected and its StartTransaction arrived; then ``--steady-s``, 3 s), over ``--seconds`` (20):

- CPU % of one core of ``gridcharge run`` (utime + stime of all its threads, ``/proc/PID/stat``);
- VmRSS at the start and the end of the window (``/proc/PID/status``): the growth shows a leak;
- cycle time p50/p95/max: ``get_dev_info`` ``cycle_time`` (the last cycle's duration) polled every
  ``--poll-s`` (0.5 s), one sample per ``cycle_count`` (the table says how many cycles were
  sampled); the same polling runs in every scenario, baseline included, so its cost (a few ms of
  CPU a request) is in every CPU figure alike;
- overruns and failed cycles in the window (``get_dev_info``);
- messages the backend received per second (all calls; MeterValues apart), connection attempts;
- transaction messages waiting in the outbox at the end (``get_dev_info`` ``backend.chargers.*.queued``);
- threads and open file descriptors of ``gridcharge run`` at the end (a socket leak shows there);
- log lines gridcharge wrote at WARNING and above during the window (a backend that is away must
  not fill the journal).

Every run ends with SIGTERM; ``gridcharge run`` must exit 0 (the time that took: ``stop_s``). The
script exits 1 only when a run did not work (a box without a limit, a failed cycle, a charge
point that never connected to a reachable backend, a non-zero exit); a figure that looks bad is
printed, not an error.

Run: ``.venv/bin/python tests/bench/bench_backend.py [--seconds 20] [--chargers 20]
[--sites home,tcp] [--scenarios baseline,direct_1s,...] [--delay-s 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from bench_memory import gridcharge_run
from bench_ocpp import HTTP_PASSWORD, Api, cpu_ticks, free_port, proc_status_mib, wait_until

sys.path.insert(0, str(common.REPO_ROOT / "tests" / "integration"))
from backend_csms import BackendCsms  # noqa: E402  (the test backend lives with the integration tests)
from proxies import Socks5Proxy  # noqa: E402

API_UP_TIMEOUT_S = 60.0
WARM_UP_TIMEOUT_S = 90.0
STEADY_S = 3.0
STOP_TIMEOUT_S = 30.0
SLOW_ACTIONS = ("BootNotification", "Heartbeat", "StatusNotification", "StartTransaction", "MeterValues",
                "StopTransaction")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    backend: str | None  # None: no gateway; "direct", "socks5", "down", "blackhole", "slow"
    meter_values_s: int = 1

    @property
    def reachable(self) -> bool:
        return self.backend in ("direct", "socks5", "slow")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("baseline", "no gateway", None),
    Scenario("direct_1s", "backend on loopback, MeterValues 1 s", "direct", 1),
    Scenario("direct_60s", "backend on loopback, MeterValues 60 s", "direct", 60),
    Scenario("socks5_1s", "through a SOCKS5 proxy, MeterValues 1 s", "socks5", 1),
    Scenario("down_1s", "backend down (refused), MeterValues 1 s", "down", 1),
    Scenario("blackhole_1s", "backend black-holed, MeterValues 1 s", "blackhole", 1),
    Scenario("slow_1s", "backend answers late, MeterValues 1 s", "slow", 1),
)}


# --------------------------------------------------------------------------- the backend side

class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts every connection and never says a word (a backend
    whose host is up and whose application hangs, or a firewall that swallows the traffic)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # kept open, never read: the client waits for an answer

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        for conn in self._held:
            conn.close()


@dataclass
class BackendSide:
    """What the gateway talks to in one scenario, and the ``ocpp_backend:`` section for it."""

    section: dict[str, Any] | None
    csms: BackendCsms | None = None
    attempts: Callable[[], int | None] = lambda: None  # connection attempts that reached the backend's
    # address (None: nothing there to count them, as when nothing listens)


@contextlib.contextmanager
def backend_side(scenario: Scenario, delay_s: float) -> Iterator[BackendSide]:
    if scenario.backend is None:
        yield BackendSide(None)
        return
    section: dict[str, Any] = {"meter_values_interval_s": scenario.meter_values_s}
    if scenario.backend == "down":
        port = free_port()  # bound once, then closed: nothing listens there
        yield BackendSide({"url": f"ws://127.0.0.1:{port}/cs", **section})
        return
    if scenario.backend == "blackhole":
        hole = BlackHole()
        try:
            yield BackendSide({"url": f"ws://127.0.0.1:{hole.port}/cs", **section}, attempts=lambda: hole.accepted)
        finally:
            hole.close()
        return
    with BackendCsms() as csms:
        if scenario.backend == "slow":
            for action in SLOW_ACTIONS:
                csms.delay(action, delay_s)
        side = BackendSide({"url": csms.url, **section}, csms, attempts=lambda: csms.connections)
        if scenario.backend == "socks5":
            with Socks5Proxy() as proxy:
                side.section = {**side.section, "proxy": f"socks5://127.0.0.1:{proxy.port}"}
                side.attempts = lambda: proxy.tunnels
                yield side
        else:
            yield side


# --------------------------------------------------------------------------- the sites

def sites(chargers: int) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """name → (description, simulator spec, site section)."""
    return {
        "home": ("typical home (1 meter + 2 chargers, RS485 pty + TCP)", common.home_site(), common.HOME_SITE),
        "tcp": (f"1 meter + {chargers} TCP chargers", common.tcp_chargers_site(chargers),
                common.many_site(chargers)),
    }


# --------------------------------------------------------------------------- one run

class CycleSampler:
    """Polls ``get_dev_info`` every ``poll_s`` on a thread: one (cycle_time ms) per cycle_count."""

    def __init__(self, api: Api, poll_s: float) -> None:
        self.api = api
        self.poll_s = poll_s
        self.times_ms: dict[int, int] = {}
        self.last: dict[str, Any] | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cycle-sampler", daemon=True)

    def start(self) -> CycleSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                info = self.api.get("cmd=get_dev_info")
            except Exception:  # counted: a poll that failed is a figure, not a crash
                self.errors += 1
            else:
                params = info["params"]
                if params.get("cycle_time") is not None:
                    self.times_ms[int(params["cycle_count"])] = int(params["cycle_time"])
                self.last = info
            next_at += self.poll_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def backend_params(info: Mapping[str, Any]) -> dict[str, Any]:
    return info["params"].get("backend") or {}


def all_connected(info: Mapping[str, Any], chargers: int) -> bool:
    return int(backend_params(info).get("connected") or 0) == chargers


def queued(info: Mapping[str, Any]) -> int:
    return sum(int(cp.get("queued") or 0) for cp in (backend_params(info).get("chargers") or {}).values())


def states(info: Mapping[str, Any]) -> str:
    """The charge points' states, summed up ("20 connected", "2 reconnecting in N s", ...)."""
    seen: dict[str, int] = {}
    for cp in (backend_params(info).get("chargers") or {}).values():
        state = str(cp.get("state"))
        key = "reconnecting" if state.startswith("reconnecting") else state
        seen[key] = seen.get(key, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(seen.items())) or "-"


def log_lines(path: Path) -> int:
    try:
        return len(path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


def run(site_name: str, scenario: Scenario, *, chargers: int, seconds: float, poll_s: float,
        delay_s: float, steady_s: float = STEADY_S) -> dict[str, Any]:
    title, sim_spec, site = sites(chargers)[site_name]
    http_port = free_port()
    clk_tck = os.sysconf("SC_CLK_TCK")
    with (backend_side(scenario, delay_s) as side, common.SimProcess(sim_spec) as sim,
          tempfile.TemporaryDirectory(prefix="gc-bench-backend-") as tmp):
        config = common.site_config(sim.config, site, state_dir=f"{tmp}/state", variables={"AVAIL": 100})
        config["http"] = {"listen": f"127.0.0.1:{http_port}", "user": "admin", "password": HTTP_PASSWORD}
        if side.section is not None:
            config["ocpp_backend"] = side.section
        n_chargers = len(config["chargers"])
        with gridcharge_run(config, tmp) as (proc, log_path):
            api = Api(http_port)
            api.wait_up(proc, API_UP_TIMEOUT_S)
            t_start = time.monotonic()
            wait_until(lambda: all(v is not None for v in sim.limits().values()), WARM_UP_TIMEOUT_S,
                       "every box has its limit", poll_s=0.2)
            if side.csms is not None:
                csms = side.csms
                wait_until(lambda: all_connected(api.get("cmd=get_dev_info"), n_chargers)
                           and len({m.cp_id for m in csms.of("StartTransaction")}) == n_chargers,
                           WARM_UP_TIMEOUT_S, f"all {n_chargers} charge points connected, each with a transaction",
                           poll_s=0.2)
            time.sleep(steady_s)
            warm_up_s = time.monotonic() - t_start

            sampler = CycleSampler(api, poll_s)
            info0 = api.get("cmd=get_dev_info")
            received0 = side.csms.received() if side.csms is not None else []
            attempts0, lines0 = side.attempts(), log_lines(log_path)
            rss0 = proc_status_mib(proc.pid)
            ticks0, t0 = cpu_ticks(proc.pid), time.monotonic()
            sampler.start()
            time.sleep(seconds)
            sampler.stop()
            ticks1, t1 = cpu_ticks(proc.pid), time.monotonic()
            rss1 = proc_status_mib(proc.pid)
            info1 = api.get("cmd=get_dev_info")
            received1 = side.csms.received() if side.csms is not None else []
            attempts1, lines1 = side.attempts(), log_lines(log_path)
            threads = _threads(proc.pid)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            limits = sim.limits()
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=STOP_TIMEOUT_S)
            stop_s = time.monotonic() - t_term
        log_tail = log_path.read_text(errors="replace").splitlines()[-5:]
    wall_s = t1 - t0
    p0, p1 = info0["params"], info1["params"]
    window = [ms for count, ms in sampler.times_ms.items() if p0["cycle_count"] < count <= p1["cycle_count"]]
    new = received1[len(received0):]
    cycle = common.summary([float(ms) for ms in window])
    return {
        "site": site_name,
        "site_title": title,
        "scenario": scenario.name,
        "what": scenario.what if scenario.backend != "slow" else f"backend answers {delay_s:g} s late, MeterValues 1 s",
        "chargers": n_chargers,
        "warm_up_s": round(warm_up_s, 1),
        "window_s": round(wall_s, 2),
        "cpu_percent": round(100.0 * (ticks1 - ticks0) / clk_tck / wall_s, 2),
        "rss_mib": round(rss1.get("VmRSS", 0.0), 1),
        "rss_growth_mib": round(rss1.get("VmRSS", 0.0) - rss0.get("VmRSS", 0.0), 2),
        "peak_rss_mib": round(rss1.get("VmHWM", 0.0), 1),
        "threads": threads,
        "open_fds": fds,
        "cycles": p1["cycle_count"] - p0["cycle_count"],
        "cycles_sampled": len(window),
        "cycle_ms": {k: (round(v, 1) if k != "n" else v) for k, v in cycle.items()},
        "overruns": p1["overruns"] - p0["overruns"],
        "failed_cycles": p1["failed_cycles"],
        "delivered_per_s": round(len(new) / wall_s, 2),
        "meter_values_per_s": round(sum(m.action == "MeterValues" for m in new) / wall_s, 2),
        "connection_attempts": None if attempts0 is None or attempts1 is None else attempts1 - attempts0,
        "outbox_pending_start": queued(info0),
        "outbox_pending_end": queued(info1),
        "backend_state": states(info1),
        "log_lines": lines1 - lines0,
        "poll_errors": sampler.errors,
        "limits_written": sum(v is not None for v in limits.values()),
        "exit_code": rc,
        "stop_s": round(stop_s, 2),
        "log_tail": log_tail,
    }


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def broken(r: Mapping[str, Any], scenario: Scenario) -> list[str]:
    """Why a run did not work (not: a figure that looks bad)."""
    why = []
    if r["exit_code"] != 0:
        why.append(f"gridcharge run exited {r['exit_code']}")
    if r["failed_cycles"]:
        why.append(f"{r['failed_cycles']} failed cycle(s)")
    if r["limits_written"] != r["chargers"]:
        why.append(f"only {r['limits_written']} of {r['chargers']} boxes got a limit")
    if r["cycles_sampled"] == 0:
        why.append("no cycle sampled")
    if scenario.reachable and not r["backend_state"].startswith(f"{r['chargers']} connected"):
        why.append(f"charge points not all connected at the end: {r['backend_state']}")
    return why


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--chargers", type=int, default=20, help="TCP wallboxes of the tcp site")
    parser.add_argument("--sites", default="home,tcp", help="comma-separated: home, tcp")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--delay-s", type=float, default=2.0, help="how late the slow backend answers each call")
    parser.add_argument("--poll-s", type=float, default=0.5, help="get_dev_info polling period for cycle times")
    parser.add_argument("--steady-s", type=float, default=STEADY_S, help="wait after the warm-up, before the window")
    args = parser.parse_args(argv)
    common.quiet_logging()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    site_names = [s for s in args.sites.split(",") if s]
    if unknown or any(s not in ("home", "tcp") for s in site_names):
        parser.error(f"unknown scenario or site: {unknown or site_names}")
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    for site_name in site_names:
        for name in names:
            r = run(site_name, SCENARIOS[name], chargers=args.chargers, seconds=args.seconds, poll_s=args.poll_s,
                    delay_s=args.delay_s, steady_s=args.steady_s)
            results.append(r)
            for why in broken(r, SCENARIOS[name]):
                problems.append(f"{site_name}/{name}: {why}; last log lines: {r['log_tail']}")
    for site_name in site_names:
        rows = [r for r in results if r["site"] == site_name]
        if not rows:
            continue
        print(f"\n{rows[0]['site_title']}: `gridcharge run`, {args.seconds:g} s window per scenario "
              f"(cycle times: get_dev_info every {args.poll_s:g} s)")
        common.print_table(
            ["scenario", "CPU %", "RSS MiB (+window)", "cycle p50/p95/max ms", "sampled", "overruns",
             "msgs/s (MV/s)", "attempts", "outbox end", "log lines", "fds", "stop s", "state at end"],
            [[f"{r['scenario']}: {r['what']}", f"{r['cpu_percent']:.2f}",
              f"{r['rss_mib']} ({r['rss_growth_mib']:+.1f})",
              f"{r['cycle_ms']['p50']:g} / {r['cycle_ms']['p95']:g} / {r['cycle_ms']['max']:g}",
              f"{r['cycles_sampled']}/{r['cycles']}", r["overruns"],
              f"{r['delivered_per_s']:g} ({r['meter_values_per_s']:g})",
              "-" if r["connection_attempts"] is None else r["connection_attempts"],
              r["outbox_pending_end"], r["log_lines"], r["open_fds"], f"{r['stop_s']:.1f}", r["backend_state"]] for r in rows],
        )
    for line in problems:
        print("BROKEN RUN:", line)
    common.emit_json({
        "bench": "backend",
        "measured": "gridcharge run --config against simulators (separate process) and an OCPP 1.6J backend, "
                    "SOCKS5 proxy or black hole in the benchmark process: CPU from /proc/PID/stat and VmRSS over "
                    "the window, cycle_time/overruns from get_dev_info, messages as the backend received them",
        "cpu_count": os.cpu_count(),
        "seconds": args.seconds,
        "results": [{k: v for k, v in r.items() if k != "log_tail"} for r in results],
    })
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
