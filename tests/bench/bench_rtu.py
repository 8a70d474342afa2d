"""Benchmark: RS485 use per cycle, 1 SDM630 + 2 Heidelberg on one line at 19200 8E1 (docs/performance.md).

A pseudo-terminal refuses parity, so the line is served through the ``rtu-over-tcp`` bus kind
(an RS485-to-Ethernet gateway in transparent mode: RTU frames over TCP) configured with
``baudrate: 19200, parity: E``. The bus computes each transaction's wire time from the frame sizes
and those line settings (start + 8 data + parity + stop = 11 bits per byte, plus 2 × t3.5); the
loopback transport itself is not timed at 19200 baud.

Per cycle, in steady running (after every limit is written and the limits are unchanged for 3
cycles), at ``cycle_s = 1.0``: transactions (request frames) and wire time from the bus's
statistics (``ModbusBus.stats()``, diffed in a cycle listener on the loop thread), the controller's
own figure ``status.links[...].details["wire_time_s_per_cycle"]``, and the busy fraction of the line =
wire time / cycle_s.

Run: ``.venv/bin/python tests/bench/bench_rtu.py [--seconds 20]``.
Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import common
from hal.modbus.bus import rtu_frame_bytes, rtu_wire_time_s

BUS = "sim_gateway"  # hal.sim.site.GATEWAY_BUS
BAUDRATE = 19200
PARITY = "E"
WARM_UP_TIMEOUT_S = 60.0

RTU_SITE: dict[str, Any] = {
    "voltage_v": 230, "main_fuse_a": 35, "grid_meter": "M1", "grid_limit_w": "17000 * AVAIL / 100",
    "unbalanced_limit_a": 20, "stale_s": 5, "cycle_s": 1.0,
}


class BusSampler:
    """Per-cycle deltas of one bus's statistics, taken on the loop thread after each cycle."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._prev = bus.stats()
        self.samples: list[dict[str, Any]] = []
        self.recording = False

    def on_cycle(self, status: Any) -> None:
        st = self.bus.stats()
        reported = next((b.details.get("wire_time_s_per_cycle") for b in status.links if b.name == self.bus.name), None)
        sample = {
            "transactions": st.transactions - self._prev.transactions,
            "requests": st.requests - self._prev.requests,
            "errors": st.errors - self._prev.errors,
            "timeouts": st.timeouts - self._prev.timeouts,
            "wire_s": st.wire_time_s - self._prev.wire_time_s,
            "status_wire_s": reported,
        }
        self._prev = st
        with self._lock:
            if self.recording:
                self.samples.append(sample)

    def start(self) -> None:
        with self._lock:
            self.recording = True

    def stop(self) -> list[dict[str, Any]]:
        with self._lock:
            self.recording = False
            return list(self.samples)


class RequestLog:
    """Which requests the devices send (unit, function, address, count): wraps the bus's ``read``
    and ``write`` on this instance only, to explain the per-cycle figures device by device."""

    def __init__(self, bus: Any) -> None:
        self._lock = threading.Lock()
        self.recording = False
        self.requests: list[tuple[int, int, int, int]] = []  # (unit, fc, address, count)
        read, write = bus.read, bus.write

        def logged_read(table: Any, address: int, count: int, unit: int, policy: Any) -> list[int]:
            self._note(unit, READ_FC[table.value], address, count)
            return read(table, address, count, unit, policy)

        def logged_write(address: int, values: list[int], unit: int, policy: Any, *, single: bool = False) -> None:
            self._note(unit, 6 if single else 16, address, len(values))
            return write(address, values, unit, policy, single=single)

        bus.read, bus.write = logged_read, logged_write

    def _note(self, unit: int, fc: int, address: int, count: int) -> None:
        with self._lock:
            if self.recording:
                self.requests.append((unit, fc, address, count))

    def per_cycle(self, cycles: int) -> list[dict[str, Any]]:
        """Each distinct request with how often it was sent per cycle and its wire time."""
        with self._lock:
            requests = list(self.requests)
        out = []
        for key in sorted(set(requests)):
            unit, fc, address, count = key
            req_b, resp_b = rtu_frame_bytes(fc, count)
            out.append({"unit": unit, "fc": fc, "address": address, "count": count,
                        "per_cycle": round(requests.count(key) / max(1, cycles), 2),
                        "wire_ms": round(1000.0 * rtu_wire_time_s(req_b, resp_b, BAUDRATE, PARITY, 1), 2)})
        return out


READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def single_read_ms(function_code: int, registers: int) -> float:
    """Wire time of one read of ``registers`` at 19200 8E1, for the explanation line."""
    req, resp = rtu_frame_bytes(function_code, registers)
    return 1000.0 * rtu_wire_time_s(req, resp, BAUDRATE, PARITY, 1)


def run(seconds: float) -> dict[str, Any]:
    with common.SimProcess(common.rtu_gateway_site()) as sim, tempfile.TemporaryDirectory(prefix="gc-bench-") as state:
        config = common.site_config(sim.config, RTU_SITE, state_dir=state, variables={"AVAIL": 100})
        config["buses"][BUS].update(baudrate=BAUDRATE, parity=PARITY, stopbits=1)
        service, watcher = common.start_controller(config)
        sampler = BusSampler(service.hw.links[BUS])
        service.loop.add_cycle_listener(sampler.on_cycle)
        try:
            common.warm_up(watcher, WARM_UP_TIMEOUT_S)
            request_log = RequestLog(service.hw.links[BUS])
            watcher.wait_cycles(1, 10)  # start on a cycle boundary: the log and the sampler see whole cycles
            request_log.recording = True
            sampler.start()
            watcher.wait_cycles(max(1, round(seconds / RTU_SITE["cycle_s"])), seconds * 3 + 10)
            samples = sampler.stop()
            request_log.recording = False
            status = service.loop.status
        finally:
            service.stop()
    cycle_s = float(RTU_SITE["cycle_s"])
    tx = [float(s["transactions"]) for s in samples]
    wire_ms = [1000.0 * s["wire_s"] for s in samples]
    reported = [s["status_wire_s"] for s in samples]
    reported_ms = [1000.0 * v for v in reported if v is not None]
    bus_status = next(b for b in status.links if b.name == BUS)

    def rounded(values: list[float], digits: int) -> dict[str, float]:
        return {k: (round(v, digits) if k != "n" else v) for k, v in common.summary(values).items()}

    return {
        "bus": f"{BUS}: rtu-over-tcp, {BAUDRATE} 8{PARITY}1 (wire time computed from frame sizes)",
        "devices": {"M1": "sdm630 unit 1", "E1": "heidelberg unit 2", "E2": "heidelberg unit 3"},
        "cycle_s": cycle_s,
        "cycles": len(samples),
        "transactions_per_cycle": rounded(tx, 2),
        "wire_ms_per_cycle": rounded(wire_ms, 2),
        "busy_fraction": {"mean": round(sum(wire_ms) / len(wire_ms) / 1000.0 / cycle_s, 4) if wire_ms else None,
                          "max": round(max(wire_ms) / 1000.0 / cycle_s, 4) if wire_ms else None},
        "requests": request_log.per_cycle(len(samples)),
        "status_wire_time_s_per_cycle": rounded(reported_ms, 2) if reported_ms else None,
        "status_reports_wire_time": bool(reported_ms),
        "errors": sum(s["errors"] for s in samples),
        "timeouts": sum(s["timeouts"] for s in samples),
        "latency_p95_ms": round(1000.0 * bus_status.latency_p95_s, 2) if bus_status.latency_p95_s is not None else None,
        "failed_cycles": status.failed_cycles,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (cycles at 1 s)")
    args = parser.parse_args(argv)
    common.quiet_logging()
    r = run(args.seconds)
    tx, wire = r["transactions_per_cycle"], r["wire_ms_per_cycle"]
    status = r["status_wire_time_s_per_cycle"]
    print(f"RS485 use per cycle: 1 SDM630 + 2 Heidelberg on one line, {BAUDRATE} 8{PARITY}1, served through the "
          "rtu-over-tcp bus kind (a pty refuses parity); wire time computed by the bus from frame sizes")
    common.print_table(
        ["figure", "mean", "p50", "max"],
        [["transactions / cycle", tx["mean"], tx["p50"], tx["max"]],
         ["wire time ms / cycle (bus stats)", wire["mean"], wire["p50"], wire["max"]],
         ["wire time ms / cycle (status.links)", *([status["mean"], status["p50"], status["max"]]
                                                   if status else ["n/a", "n/a", "n/a"])],
         ["line busy fraction of cycle", r["busy_fraction"]["mean"], "", r["busy_fraction"]["max"]]],
    )
    print(f"cycles {r['cycles']}, errors {r['errors']}, timeouts {r['timeouts']}, "
          f"loopback latency p95 {r['latency_p95_ms']} ms; for scale: one FC04 read of 2 registers = "
          f"{single_read_ms(4, 2):.2f} ms, of 40 registers = {single_read_ms(4, 40):.2f} ms on the wire")
    print("requests per cycle (unit, function code, first register, count):")
    common.print_table(["unit", "fc", "address", "count", "per cycle", "wire ms each"],
                       [[q["unit"], q["fc"], q["address"], q["count"], q["per_cycle"], q["wire_ms"]]
                        for q in r["requests"]])
    if not r["status_reports_wire_time"]:
        print("NOTE: status.buses[].wire_time_s_per_cycle was None in every cycle: the controller does not "
              "report the RTU wire time of this bus (see tests/bench/README.md)")
    common.emit_json({"bench": "rtu", **r})
    return 1 if r["failed_cycles"] or r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
