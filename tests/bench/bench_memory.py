"""Benchmark: resident memory of ``gridcharge run`` (docs/performance.md: ≤ 80 MB).

For each site (the typical home, and 1 meter + N TCP wallboxes, default 100) a simulated site is
started in a child process, a config file is generated from it, and the real command
``gridcharge run --config <file>`` is started as a subprocess. After ``--wait-s`` seconds
(default 10) its ``VmRSS`` (resident now) and ``VmHWM`` (peak resident) are read from
``/proc/PID/status``; the simulator is asked how many wallboxes got a limit (proof that the
controller was working, not just importing); then SIGTERM, and the exit code must be 0 with every
box left at no more than its fail-safe current (docs/load-management.md).

Run: ``.venv/bin/python tests/bench/bench_memory.py [--chargers 100] [--wait-s 10]``.
Prints a table, then one JSON line with the figures. Exits 1 when a run did not work (exit code,
limits not written); a figure above its target is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import common

RSS_TARGET_MIB = 80.0
FAILSAFE_CURRENT_A = 6.0  # the config default of chargers.*.failsafe_current_a
READY_TIMEOUT_S = 30.0  # at most this much longer until every box has its limit
STOP_TIMEOUT_S = 20.0


def gridcharge_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "gridcharge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controller.cli"]


@contextlib.contextmanager
def gridcharge_run(config: Mapping[str, Any], tmp: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``gridcharge run`` on ``config`` (written into ``tmp``), its output in ``tmp/run.log``;
    killed on leaving if still running. Yields the process and the log's path."""
    path = common.write_yaml(config, Path(tmp) / "config.yaml")
    log_path = Path(tmp) / "run.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([*gridcharge_command(), "--log-level", "WARNING", "run", "--config", str(path)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            yield proc, log_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def proc_status_kib(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/PID/status, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def measure(name: str, sim_spec: Mapping[str, Any], site: Mapping[str, Any], wait_s: float) -> dict[str, Any]:
    with common.SimProcess(sim_spec) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-") as tmp:
        config = common.site_config(sim.config, site, state_dir=f"{tmp}/state", variables={"AVAIL": 100})
        with gridcharge_run(config, tmp) as (proc, log_path):
            deadline = time.monotonic() + wait_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            # A loaded machine may take longer to start: measure a controller that is running
            # (every box written), never one still importing its modules.
            deadline = time.monotonic() + READY_TIMEOUT_S
            while (proc.poll() is None and time.monotonic() < deadline
                   and any(v is None for v in sim.limits().values())):
                time.sleep(0.2)
            alive = proc.poll() is None
            vm = proc_status_kib(proc.pid) if alive else {}
            written = sim.limits()
            if alive:
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=STOP_TIMEOUT_S)
        after = sim.limits()
        log_tail = log_path.read_text().splitlines()[-5:]
    n_written = sum(v is not None for v in written.values())
    rss_mib = vm.get("VmRSS", 0) / 1024.0
    return {
        "scenario": name,
        "chargers": len(written),
        "wait_s": wait_s,
        "alive_at_measurement": alive,
        "rss_mib": round(rss_mib, 1),
        "peak_rss_mib": round(vm.get("VmHWM", 0) / 1024.0, 1),
        "vm_size_mib": round(vm.get("VmSize", 0) / 1024.0, 1),
        "chargers_written": n_written,
        "exit_code": rc,
        "failsafe_left": all(v is not None and v <= FAILSAFE_CURRENT_A for v in after.values()),
        "target_mib": RSS_TARGET_MIB,
        "target_met": alive and rss_mib <= RSS_TARGET_MIB,
        "log_tail": log_tail,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=100, help="TCP wallboxes of the large site")
    parser.add_argument("--wait-s", type=float, default=10.0, help="run time before VmRSS is read")
    args = parser.parse_args(argv)
    common.quiet_logging()
    results = [
        measure("typical home (1 meter + 2 chargers)", common.home_site(), common.HOME_SITE, args.wait_s),
        measure(f"1 meter + {args.chargers} TCP chargers", common.tcp_chargers_site(args.chargers),
                common.many_site(args.chargers), args.wait_s),
    ]
    print(f"Resident memory of `gridcharge run` after {args.wait_s:g} s against simulators "
          "(VmRSS / VmHWM from /proc/PID/status; 1 MiB = 1024 KiB)")
    common.print_table(
        ["scenario", "VmRSS MiB", "VmHWM MiB", "limits written", "exit code", "fail-safe left", "target",
         "result"],
        [[r["scenario"], r["rss_mib"], r["peak_rss_mib"], f'{r["chargers_written"]}/{r["chargers"]}',
          r["exit_code"], "yes" if r["failsafe_left"] else "NO", f'<= {r["target_mib"]:g} MiB',
          "met" if r["target_met"] else "MISSED"] for r in results],
    )
    broken = [r for r in results if not r["alive_at_measurement"] or r["exit_code"] != 0
              or r["chargers_written"] != r["chargers"] or not r["failsafe_left"]]
    for r in broken:
        print(f"BROKEN RUN: {r['scenario']}; last log lines:", *r["log_tail"], sep="\n  ")
    common.emit_json({
        "bench": "memory",
        "measured": "VmRSS of a `gridcharge run --config` subprocess against simulators (separate process)",
        "results": [{k: v for k, v in r.items() if k != "log_tail"} for r in results],
    })
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
