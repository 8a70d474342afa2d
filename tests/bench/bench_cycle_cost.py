"""Benchmark: CPU cost of the control loop (docs/performance.md "Cost").

Two sites, each at ``cycle_s = 1.0``:

- ``chargers``: 1 SDM630 grid meter + N Alfen wallboxes (default 100), every device its own
  Modbus TCP server (one IP per box, as on a real site). Target: ≤ 25 % of one core.
- ``home``: the typical home of ``gridcharge demo``: SDM630 + Heidelberg on one RS485 line
  (pseudo-terminal pair, 8N1) and an Alfen on Modbus TCP. Target: ≤ 2 %.

What is measured: the process CPU time (user + system, all threads: loop, bus workers, pymodbus
clients) of THIS process, which runs only the controller (``controller.service.Service``), over
``--seconds`` of steady running after a warm-up (every device online, every limit written, limits
unchanged for 3 cycles). The simulated devices run in a child process (``common.py serve``) and
are not counted. CPU % = CPU seconds / wall seconds × 100 (100 % = one core).

Run: ``.venv/bin/python tests/bench/bench_cycle_cost.py [--chargers 100] [--seconds 30]
[--home-seconds 20]``. Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import common

CPU_TARGET_MANY_PCT = 25.0
CPU_TARGET_HOME_PCT = 2.0
WARM_UP_TIMEOUT_S = 60.0


def measure(name: str, sim_spec: Mapping[str, Any], site: Mapping[str, Any], seconds: float,
            target_pct: float) -> dict[str, Any]:
    """Run the controller against the simulated site; CPU time of this process over the window."""
    with common.SimProcess(sim_spec) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-") as state:
        config = common.site_config(sim.config, site, state_dir=state, variables={"AVAIL": 100})
        service, watcher = common.start_controller(config)
        try:
            warm0 = time.monotonic()
            common.warm_up(watcher, WARM_UP_TIMEOUT_S)
            warm_up_s = time.monotonic() - warm0
            before = service.loop.status
            n_times = len(watcher.cycle_times_s)
            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(seconds)
            cpu1, wall1 = time.process_time(), time.monotonic()
            after = service.loop.status
            times_ms = [t * 1000.0 for t in watcher.cycle_times_s[n_times:]]
            threads = threading.active_count()
        finally:
            service.stop()
    cpu_s, wall_s = cpu1 - cpu0, wall1 - wall0
    cycles = after.cycle_count - before.cycle_count
    cpu_pct = 100.0 * cpu_s / wall_s
    return {
        "scenario": name,
        "meters": len(sim_spec.get("meter") and [1] or []),
        "chargers": len(sim_spec["chargers"]),
        "seconds": round(wall_s, 2),
        "cycles": cycles,
        "cpu_s": round(cpu_s, 3),
        "cpu_pct_one_core": round(cpu_pct, 2),
        "cpu_ms_per_cycle": round(1000.0 * cpu_s / cycles, 2) if cycles else None,
        "cycle_time_ms": {k: round(v, 1) for k, v in common.summary(times_ms).items() if k != "n"},
        "overruns": after.overruns - before.overruns,
        "failed_cycles": after.failed_cycles - before.failed_cycles,
        "threads": threads,
        "warm_up_s": round(warm_up_s, 1),
        "target_pct": target_pct,
        "target_met": cpu_pct <= target_pct,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=100, help="TCP wallboxes of the large site")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window, large site")
    parser.add_argument("--home-seconds", type=float, default=20.0, help="measured window, typical home")
    args = parser.parse_args(argv)
    common.quiet_logging()
    results = [
        measure(f"1 meter + {args.chargers} TCP chargers", common.tcp_chargers_site(args.chargers),
                common.many_site(args.chargers), args.seconds, CPU_TARGET_MANY_PCT),
        measure("typical home (1 meter + 2 chargers, RS485 pty + TCP)", common.home_site(), common.HOME_SITE,
                args.home_seconds, CPU_TARGET_HOME_PCT),
    ]
    print("CPU cost of the controller at cycle_s = 1.0 (process CPU time of the benchmark process, which")
    print("runs only the controller; the simulators run in a separate process and are not counted)")
    common.print_table(
        ["scenario", "window s", "cycles", "CPU %", "CPU ms/cycle", "cycle p50 ms", "cycle max ms",
         "overruns", "target", "result"],
        [[r["scenario"], r["seconds"], r["cycles"], f'{r["cpu_pct_one_core"]:.2f}', r["cpu_ms_per_cycle"],
          r["cycle_time_ms"]["p50"], r["cycle_time_ms"]["max"], r["overruns"], f'<= {r["target_pct"]:g} %',
          "met" if r["target_met"] else "MISSED"] for r in results],
    )
    common.emit_json({
        "bench": "cycle_cost",
        "measured": "process CPU time (user+sys, all threads) of the controller-only benchmark process "
                    "over a steady window at cycle_s=1.0; simulators in a separate process, not counted",
        "cpu_count": os.cpu_count(),
        "results": results,
    })
    failed = [r for r in results if r["failed_cycles"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
