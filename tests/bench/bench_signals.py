"""Benchmark: grid signals arriving in a storm, and a grid meter that answers late.

Two attacks on the loop's timing, each against a simulated site in its own process
(``common.SimProcess``) and the real controller in this process:

``storm``: the typical home (SDM630 and a Heidelberg on one RS485 line, an Alfen on Modbus TCP).
A client sets a variable 20 times a second for ``--seconds`` (a counter that no limit uses, as
an over-eager home automation would), while every 1.3 s AVAIL alternates 40 / 100 (the grid
operator). Measured: control cycles per second (and how many read the buses), register reads per
second of each device (a single-register write's read-back counts as a read too), the time from
each AVAIL=40 to the last box receiving its lower limit, and from each AVAIL=100 to the last box
receiving its higher one (each change waits for the one before to be complete). Without
coalescing, each set wakes a cycle that polls every device again.

``slow_meter``: the typical home again, its SDM630 on the RS485 line answering every request
after 0.9 x its timeout (0.27 s of 0.3 s), so one round of the line (SDM630 two requests, the
Heidelberg one, with their gaps) outlasts the loop's read deadline and arrives a cycle late;
both cars charging with the site at its 32 A fuse; then the house load steps up by 8 A per phase. Measured: how long the grid stays over the fuse (+0.5 A meter tolerance), from
the simulator's own record of every change of the grid currents, and how often the limits
change in the 20 s after (oscillation). Target: overload gone within cycle + meter latency +
0.5 s (here 1 + 0.54 + 0.5 = 2.04 s, the SDM630 being two requests), no oscillation.

Run: ``.venv/bin/python tests/bench/bench_signals.py [--seconds 10] [--scenarios storm,slow_meter]``.
Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import common

STORM_HZ = 20.0
OPERATOR_PERIOD_S = 1.3
FUSE_A = 32.0
TOLERANCE_A = 0.5
METER_TIMEOUT_S = 0.3


def storm(seconds: float) -> dict[str, Any]:
    spec = common.home_site()
    site = {**common.HOME_SITE, "grid_limit_w": "30000 * AVAIL / 100", "increase_step_a": 16, "min_pause_s": 0}
    reactions: dict[str, list[float]] = {"decrease": [], "increase": []}
    with common.SimProcess(spec) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-") as state:
        config = common.site_config(sim.config, site, state_dir=state, variables={"AVAIL": 100, "NOISE": 0})
        service, watcher = common.start_controller(config)
        try:
            common.warm_up(watcher, 60.0)
            stop = threading.Event()

            def noise() -> None:
                n = 0
                while not stop.wait(1.0 / STORM_HZ):
                    n += 1
                    service.store.set_many([("NOISE", n)], source="bench")

            reads0 = sim.request("reads")["reads"]
            cycles0, reading0 = watcher.status.cycle_count, _reading_cycles(service)
            t0 = time.monotonic()
            thread = threading.Thread(target=noise, daemon=True)
            thread.start()
            avail = 100
            while time.monotonic() - t0 < seconds:
                time.sleep(OPERATOR_PERIOD_S)
                avail = 40 if avail == 100 else 100
                sim.request("arm")
                t_set = time.monotonic()
                service.store.set_many([("AVAIL", avail)], source="bench")
                answer = sim.request("wait 10", timeout_s=20)
                if answer["done"]:
                    reactions["decrease" if avail == 40 else "increase"].append(answer["last_s"] - t_set)
            stop.set()
            thread.join()
            elapsed = time.monotonic() - t0
            reads1 = sim.request("reads")["reads"]
            status = watcher.status
            cycles = status.cycle_count - cycles0
            reading = _reading_cycles(service) - reading0
        finally:
            service.stop()
    return {
        "scenario": "storm", "seconds": round(elapsed, 1), "sets_per_s": STORM_HZ,
        "cycles_per_s": round(cycles / elapsed, 2),
        "reading_cycles_per_s": round(reading / elapsed, 2) if reading >= 0 else None,
        "reads_per_s": {d: round((reads1[d] - reads0[d]) / elapsed, 2) for d in reads1},
        **{f"{name}_s": {k: round(v, 4) if k != "n" else v for k, v in common.summary(values).items()}
           for name, values in reactions.items()},
        "overruns": status.overruns, "failed_cycles": status.failed_cycles,
    }


def _reading_cycles(service: Any) -> int:
    """Cycles that read the buses, where the loop counts them (-1 where it does not)."""
    return int(getattr(service.loop, "reading_cycles", -1))


def slow_meter(seconds: float) -> dict[str, Any]:
    from hal.sim.site import RS485_LINE

    # The answer to the larger block (24 registers) comes 0.9 x the timeout after the request:
    # the device's own latency plus both frames on the wire at 19200 8E1.
    request_s, response_s = RS485_LINE.read_s(4, 24)
    latency_s = 0.9 * METER_TIMEOUT_S - request_s - response_s
    spec = common.home_site()
    spec["meter"] = {**spec["meter"], "latency_s": latency_s}
    spec["chargers"][1]["car"] = common.car_spec()  # both cars 3-phase: the site sits at its fuse
    spec["base_load_a"] = [10.0, 10.0, 10.0]
    site = {"voltage_v": 230, "main_fuse_a": FUSE_A, "grid_meter": "M1", "unbalanced_limit_a": 20, "stale_s": 5,
            "cycle_s": 1.0, "increase_step_a": 2, "min_pause_s": 0}
    with common.SimProcess(spec) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-") as state:
        config = common.site_config(sim.config, site, state_dir=state)
        for bus in config["buses"].values():
            bus["timeout_s"] = METER_TIMEOUT_S
        for device in (*config["meters"].values(), *config["chargers"].values()):
            device.setdefault("timeout_s", METER_TIMEOUT_S)
        service, watcher = common.start_controller(config)
        try:
            common.warm_up(watcher, 60.0)
            before = sim.limits()
            sim.request("watch")
            writes0 = sim.request("limits")["writes"]
            time.sleep(0.37)  # any phase of the cycle
            t_step = time.monotonic()
            sim.request("base 18 18 18")
            time.sleep(seconds)
            changes = sim.request("grid")["changes"]
            after = sim.request("limits")
            status = watcher.status
        finally:
            service.stop()
    over = _time_over(changes, t_step, FUSE_A + TOLERANCE_A)
    settle_from = t_step + 5.0
    late_changes = [c for c in changes if c[0] >= settle_from]
    return {
        "scenario": "slow_meter", "meter_latency_s": round(latency_s, 4), "limits_before": before,
        "limits_after": after["limits"], "over_fuse_s": round(over, 3),
        "peak_a": round(max((max(c[1]) for c in changes if c[0] >= t_step), default=0.0), 1),
        "limit_writes_after_step": {k: after["writes"][k] - writes0[k] for k in writes0},
        "grid_changes_5_to_end_s": len(late_changes),
        "target_s": round(1.0 + 2 * 0.9 * METER_TIMEOUT_S + 0.5, 2),
        "overruns": status.overruns, "failed_cycles": status.failed_cycles,
    }


def _time_over(changes: Sequence[Any], t_step: float, limit_a: float) -> float:
    """Seconds after ``t_step`` during which some phase was above ``limit_a`` (piecewise constant)."""
    total = 0.0
    points = [c for c in changes if c[0] >= t_step]
    for (t, currents), nxt in zip(points, [*points[1:], None]):
        end = nxt[0] if nxt is not None else t
        if max(currents) > limit_a:
            total += end - t
    if points and max(points[-1][1]) > limit_a:
        total = float("inf")
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each attack")
    parser.add_argument("--scenarios", default="storm,slow_meter")
    args = parser.parse_args(argv)
    common.quiet_logging()
    results = []
    for name in args.scenarios.split(","):
        try:
            results.append({"storm": storm, "slow_meter": slow_meter}[name](args.seconds))
        except RuntimeError as exc:  # e.g. the site never settles: that is the figure
            results.append({"scenario": name, "error": str(exc), "failed_cycles": 0})
    for r in results:
        if "error" in r:
            print(f"{r['scenario']}: FAILED: {r['error']}")
        elif r["scenario"] == "storm":
            d, i = r["decrease_s"], r["increase_s"]
            print(f"storm: {r['sets_per_s']:g} sets/s for {r['seconds']} s -> {r['cycles_per_s']} cycles/s "
                  f"({r['reading_cycles_per_s']} reading the buses); reads/s per device {r['reads_per_s']}; "
                  f"AVAIL=40 -> all boxes lower: p50 {1000 * d['p50']:.0f} ms, max {1000 * d['max']:.0f} ms "
                  f"(n={d['n']}); AVAIL=100 -> all higher: p50 {1000 * i['p50']:.0f} ms, max "
                  f"{1000 * i['max']:.0f} ms (n={i['n']}); overruns {r['overruns']}")
        else:
            print(f"slow_meter: meter answers in {0.9 * METER_TIMEOUT_S:.2f} s of its {METER_TIMEOUT_S:g} s timeout "
                  f"({r['meter_latency_s']:.3f} s latency + the wire); +8 A step: over the "
                  f"fuse for {r['over_fuse_s']} s (target <= {r['target_s']} s), peak {r['peak_a']} A; limit writes "
                  f"after the step {r['limit_writes_after_step']}; grid changes from 5 s on: "
                  f"{r['grid_changes_5_to_end_s']}; limits {r['limits_before']} -> {r['limits_after']}")
    common.emit_json({"bench": "signals", "results": results})
    return 1 if any(r["failed_cycles"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
