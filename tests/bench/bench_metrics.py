"""Benchmark: what ``GET /metrics`` costs (docs/performance.md, docs/api.md "Prometheus metrics").

Three figures:

- ``home``: the typical home (SDM630 + Heidelberg on an RS485 pty line, Alfen on Modbus TCP; the
  simulators in a separate process, see ``common.py``), the real ``Service`` with its loop running
  at ``cycle_s = 1.0`` and the real LAN listener (``web.runtime.start_web``). Measured: the CPU of
  building one exposition in this thread (``time.thread_time``: the collector reading the latest
  status and prometheus-client writing the text), then ``--seconds`` of scrapes over HTTP back to
  back on a keep-alive ``requests`` session, far more than any Prometheus asks (round trip p50/p95,
  and the server's CPU per scrape: process CPU over the window, less the client thread's own CPU,
  less the loop's CPU rate measured in an idle window of the same length before), and the loop's
  overruns and cycle durations in both windows.
- ``100 chargers``: a hand-built ``Status`` of 1 meter, 100 three-phase chargers on 101 Modbus TCP
  links and 3 variables (what a 100-box site publishes), rendered ``--renders`` times.
- the cycle listener (``CycleDurations.observe``, the only per-cycle work of the metrics), timed
  over ``--observes`` calls.

The CPU share at a scrape interval (Prometheus's default 15 s, ``--interval-s``) is the server's
CPU per scrape / the interval.

Run: ``.venv/bin/python tests/bench/bench_metrics.py [--seconds 10] [--renders 200]``. Prints a
table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import common

WARM_UP_TIMEOUT_S = 60.0
USER = "admin"
PASSWORD = "bench-metrics-1234"


def many_status(chargers: int) -> Any:
    """The ``Status`` a site of 1 meter + ``chargers`` TCP boxes publishes, built by hand."""
    from controller.allocation.types import Reason, Why
    from controller.status import EMPTY_STATUS, ChargerStatus, DeviceStatus, VariableStatus
    from hal.types import ChargerReading, IecState, LinkStats, MeterReading

    def device(dev_id: str, kind: str, model: str, host: str, reading: Any) -> DeviceStatus:
        return DeviceStatus(id=dev_id, kind=kind, model=model, address=f"tcp:{host}:502 unit 1", online=True,
                            age_s=0.2, error=None, error_s=0.0, reading=reading)

    meter = device("M1", "meter", "sdm630", "10.0.0.2",
                   MeterReading(power_w=150000.0, current_a=(210.0, 215.0, 220.0), voltage_v=(230.0, 231.0, 229.0),
                                import_wh=9.9e7, export_wh=0.0))
    boxes = tuple(ChargerStatus(
        device=device(f"E{i}", "charger", "alfen", f"10.0.1.{i}",
                      ChargerReading(state=IecState.C, current_a=(8.5, 8.5, 8.5), power_w=5865.0,
                                     energy_wh=1.0e6 + i, raw_state="C2")),
        phases=3, phase=0, priority=1, min_current_a=6.0, max_current_a=16.0, command_a=8.5, written_a=8.5,
        reason=Reason(Why.SITE_LIMIT, "grid_limit_w: 8.5 A", "grid_limit_w"), enabled=True, override_a=None,
    ) for i in range(1, chargers + 1))
    links = tuple(LinkStats(f"tcp:10.0.1.{i}:502", 86400 * 2, 3, 0.004, None, {"timeouts": 1.0})
                  for i in range(chargers + 1))
    return replace(
        EMPTY_STATUS, cycle_count=86400, cycle_time_s=0.06, wall_time=time.time(), failsafe=None,
        grid_limit_w=600000.0, chargers_limit_w=None, headroom_a=(40.0, 35.0, 30.0), power_headroom_w=2000.0,
        limiting=("grid_limit_w",), grid_power_w=150000.0, grid_current_a=(210.0, 215.0, 220.0),
        meters=(meter,), chargers=boxes, links=links,
        variables=(VariableStatus("AVAIL", 100, 100, None), VariableStatus("TARIF", 0, 0, None),
                   VariableStatus("PV", "M1.power_w", 150000.0, None)),
    )


def render_cost(metrics: Any, n: int) -> dict[str, Any]:
    """CPU and wall time of ``n`` expositions built in this thread."""
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    body = b""
    for _ in range(n):
        c0, w0 = time.thread_time(), time.perf_counter()
        body, _ = metrics.render()
        cpu_ms.append((time.thread_time() - c0) * 1000.0)
        wall_ms.append((time.perf_counter() - w0) * 1000.0)
    samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {"renders": n, "cpu_ms": rounded(common.summary(cpu_ms)), "wall_ms": rounded(common.summary(wall_ms)),
            "bytes": len(body), "samples": samples}


def rounded(summary: dict[str, float], digits: int = 3) -> dict[str, float]:
    return {k: (round(v, digits) if k != "n" else v) for k, v in summary.items()}


def home(seconds: float, renders: int) -> dict[str, Any]:
    import requests

    from controller.config import Http
    from controller.version import version
    from web.metrics import Metrics
    from web.runtime import start_web

    with common.SimProcess(common.home_site()) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-") as state:
        config = common.site_config(sim.config, common.HOME_SITE, state_dir=state, variables={"AVAIL": 100})
        service, watcher = common.start_controller(config)
        try:
            http = Http.model_construct(listen="127.0.0.1:0", user=USER, password=PASSWORD, password_hash=None)
            port = start_web(service, http=http).lan_port
            common.warm_up(watcher, WARM_UP_TIMEOUT_S)
            # the same collector start_web wires, rendered in this thread for its own CPU time
            metrics = Metrics(service.status, version=version(), main_fuse_a=service.cfg.site.main_fuse_a)
            render = render_cost(metrics, renders)
            session = requests.Session()
            session.auth = (USER, PASSWORD)
            url = f"http://127.0.0.1:{port}/metrics"
            # idle window: the loop's own CPU rate, to take out of the scraping window
            n_idle = len(watcher.cycle_times_s)
            before = service.loop.status
            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(seconds)
            idle_cpu_rate = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            idle_times_ms = [t * 1000.0 for t in watcher.cycle_times_s[n_idle:]]
            # open the connection now: kept idle through that window, the listener would close it (idle_s)
            if session.get(url, timeout=10).status_code != 200:
                raise RuntimeError("/metrics did not answer 200")
            # scraping window: back to back over one keep-alive connection
            n_busy = len(watcher.cycle_times_s)
            round_trip_ms: list[float] = []
            cpu0, client0, wall0 = time.process_time(), time.thread_time(), time.monotonic()
            while time.monotonic() - wall0 < seconds:
                t0 = time.perf_counter()
                response = session.get(url, timeout=10)
                round_trip_ms.append((time.perf_counter() - t0) * 1000.0)
                if response.status_code != 200:
                    raise RuntimeError(f"/metrics answered {response.status_code}")
            window_s = time.monotonic() - wall0
            process_cpu_s = time.process_time() - cpu0
            client_cpu_s = time.thread_time() - client0
            busy_times_ms = [t * 1000.0 for t in watcher.cycle_times_s[n_busy:]]
            after = service.loop.status
            session.close()
        finally:
            service.stop()
    server_cpu_s = max(0.0, process_cpu_s - client_cpu_s - idle_cpu_rate * window_s)
    scrapes = len(round_trip_ms)
    return {
        "render": render,
        "http": {
            "scrapes": scrapes, "window_s": round(window_s, 2), "round_trip_ms": rounded(common.summary(round_trip_ms)),
            "server_cpu_ms_per_scrape": round(1000.0 * server_cpu_s / scrapes, 3),
            "client_cpu_ms_per_scrape": round(1000.0 * client_cpu_s / scrapes, 3),
            "loop_idle_cpu_pct": round(100.0 * idle_cpu_rate, 2),
        },
        "loop": {
            "overruns": after.overruns - before.overruns, "failed_cycles": after.failed_cycles - before.failed_cycles,
            "cycle_ms_idle": rounded(common.summary(idle_times_ms), 1),
            "cycle_ms_scraping": rounded(common.summary(busy_times_ms), 1),
        },
    }


def many(chargers: int, renders: int) -> dict[str, Any]:
    from web.metrics import Metrics

    status = many_status(chargers)
    metrics = Metrics(lambda: status, version="bench", main_fuse_a=400.0)
    return {"chargers": chargers, "render": render_cost(metrics, renders)}


def observe_cost(n: int) -> dict[str, Any]:
    from controller.status import EMPTY_STATUS
    from web.metrics import CycleDurations

    cycles = CycleDurations()
    statuses = [replace(EMPTY_STATUS, cycle_count=i + 1, cycle_time_s=0.001 * (i % 2000)) for i in range(n)]
    c0 = time.perf_counter()
    for status in statuses:
        cycles.observe(status)
    return {"observes": n, "us_per_cycle": round(1e6 * (time.perf_counter() - c0) / n, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="typical home: idle window, then as long scraping back to back")
    parser.add_argument("--renders", type=int, default=200, help="expositions built in-process, per site")
    parser.add_argument("--chargers", type=int, default=100, help="chargers of the hand-built status")
    parser.add_argument("--observes", type=int, default=100000, help="cycle listener calls timed")
    parser.add_argument("--interval-s", type=float, default=15.0, help="scrape interval for the CPU share")
    args = parser.parse_args(argv)
    common.quiet_logging()
    home_figures = home(args.seconds, args.renders)
    many_figures = many(args.chargers, args.renders)
    observe = observe_cost(args.observes)
    interval = args.interval_s
    server_ms = home_figures["http"]["server_cpu_ms_per_scrape"]
    rows = [
        ["typical home: build one exposition (this thread's CPU)", f'{home_figures["render"]["cpu_ms"]["p50"]} ms',
         f'{home_figures["render"]["cpu_ms"]["p95"]} ms', f'{home_figures["render"]["samples"]} samples, '
         f'{home_figures["render"]["bytes"]} B'],
        [f'typical home: {home_figures["http"]["scrapes"]} HTTP scrapes back to back, round trip', f'{home_figures["http"]["round_trip_ms"]["p50"]} ms',
         f'{home_figures["http"]["round_trip_ms"]["p95"]} ms',
         f'server CPU {server_ms} ms/scrape = {100.0 * server_ms / 1000.0 / interval:.4f} % at {interval:g} s'],
        [f"{args.chargers} chargers: build one exposition (this thread's CPU)",
         f'{many_figures["render"]["cpu_ms"]["p50"]} ms', f'{many_figures["render"]["cpu_ms"]["p95"]} ms',
         f'{many_figures["render"]["samples"]} samples, {many_figures["render"]["bytes"]} B; '
         f'{100.0 * many_figures["render"]["cpu_ms"]["p50"] / 1000.0 / interval:.3f} % at {interval:g} s'],
        ["cycle listener (CycleDurations.observe)", f'{observe["us_per_cycle"]} us', "", "per cycle"],
    ]
    print("Cost of GET /metrics (the loop runs at cycle_s = 1.0; simulators in a separate process)")
    common.print_table(["what", "p50", "p95", "notes"], rows)
    loop = home_figures["loop"]
    print(f'loop while scraping back to back: {loop["overruns"]} overruns, cycle p95 '
          f'{loop["cycle_ms_scraping"]["p95"]} ms (idle window: {loop["cycle_ms_idle"]["p95"]} ms)')
    common.emit_json({
        "bench": "metrics",
        "measured": "render: time.thread_time of Metrics.render(); http: requests keep-alive scrapes back to back, "
                    "server CPU = process CPU - client thread CPU - idle loop CPU rate x window",
        "cpu_count": os.cpu_count(),
        "interval_s": interval,
        "home": home_figures,
        "many": many_figures,
        "observe": observe,
    })
    return 1 if loop["failed_cycles"] else 0


if __name__ == "__main__":
    sys.exit(main())
