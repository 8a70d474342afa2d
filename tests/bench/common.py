"""Shared helpers of the benchmarks in ``tests/bench/``: a simulated site in its own process, the
controller in the benchmark process, and the small printing/statistics helpers.

Why a separate process for the simulators: the benchmarks measure the controller's CPU time,
memory and reaction. Simulated wallboxes are Modbus *servers* with physics behind them; in the
same process they would share the GIL and the CPU clock with the controller and inflate every
figure. So this file is also a script: ``python tests/bench/common.py serve --spec JSON`` starts a
:class:`hal.sim.site.SimulatedSite`, prints one JSON line ``{"config": ...}`` (the
``buses``/``meters``/``chargers`` sections for a controller, docs/configuration.md) and then answers one JSON
line per command line on stdin (the control channel, see :func:`serve`):

- ``limits``: every simulated box's last written limit and its count of limit writes;
- ``arm``: remember the current limits as the baseline of a reaction measurement;
- ``wait TIMEOUT_S``: block until every box has received a limit different from its baseline;
  answer the ``time.monotonic()`` of the first and the last such write (CLOCK_MONOTONIC is one
  clock for all processes on Linux, so the benchmark can subtract its own timestamps);
- ``base L1 L2 L3``: set the house's base load (A per phase);
- ``latency DEVICE SECONDS``: the device answers that much later from now on;
- ``watch``: from now on, note every change of the grid currents (``grid`` answers them);
- ``grid``: the changes noted since ``watch``, as ``[time.monotonic(), [L1, L2, L3]]``;
- ``reads``: every device's count of register reads so far;
- ``quit``: stop the servers and exit.

The recorder wraps each :class:`hal.sim.physics.SimWallbox`'s ``set_limit``, which the register
bank calls when a limit register is written: the time noted is the instant the box got it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SIM_START_TIMEOUT_S = 60.0
SIM_REPLY_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- site specifications
# JSON-able dicts, so that the benchmark process can describe the site to the simulator process.

def car_spec(max_current_a: float = 16.0, phases: int = 3) -> dict[str, Any]:
    """A car that follows the offer at once (follow_delay_s 0): limits are never draw-limited."""
    return {"max_current_a": max_current_a, "phases": phases}


def tcp_chargers_site(chargers: int, *, model: str = "alfen") -> dict[str, Any]:
    """1 SDM630 grid meter + ``chargers`` wallboxes, every device its own Modbus TCP server.

    Each box (16 A) has a 3-phase 16 A car plugged in and offers 6 A until the controller writes
    (100 boxes at their hardware maximum would be 1.1 MW, beyond the meter's plausible range).
    Per-device servers (own port) are what a real site has: one IP address per wallbox, so the
    controller gets one TCP bus and one worker per box.
    """
    return {
        "meter": {"id": "M1", "model": "sdm630", "link": "tcp"},
        "chargers": [
            {"id": f"E{i + 1}", "model": model, "link": "tcp", "max_current_a": 16.0,
             "initial_limit_a": 6.0, "car": car_spec()}
            for i in range(chargers)
        ],
        "base_load_a": [4.0, 2.5, 3.5],
        "tcp_layout": "per_device",
    }


def home_site() -> dict[str, Any]:
    """The typical home (as ``gridcharge demo``, without the I/O module): an SDM630 and a
    Heidelberg on one RS485 line (pseudo-terminal pair, 8N1) and an Alfen on Modbus TCP."""
    return {
        "meter": {"id": "M1", "model": "sdm630", "link": "rtu", "unit": 1},
        "chargers": [
            {"id": "E1", "model": "heidelberg", "link": "rtu", "unit": 2, "car": car_spec()},
            {"id": "E2", "model": "alfen", "link": "tcp", "max_current_a": 32.0, "car": car_spec(16.0, 1)},
        ],
        "base_load_a": [4.0, 2.5, 3.5],
        "tcp_layout": "per_device",
    }


def rtu_gateway_site() -> dict[str, Any]:
    """1 SDM630 + 2 Heidelberg on one RS485 line reached through an RTU-over-TCP gateway."""
    return {
        "meter": {"id": "M1", "model": "sdm630", "link": "rtu-over-tcp", "unit": 1},
        "chargers": [
            {"id": "E1", "model": "heidelberg", "link": "rtu-over-tcp", "unit": 2, "car": car_spec()},
            {"id": "E2", "model": "heidelberg", "link": "rtu-over-tcp", "unit": 3, "car": car_spec()},
        ],
        "base_load_a": [4.0, 2.5, 3.5],
        "tcp_layout": "per_device",
    }


def many_site(chargers: int) -> dict[str, Any]:
    """The ``site`` section for :func:`tcp_chargers_site`: a garage-sized connection the chargers
    must share. The power limit binds: the house's 10 A (2.3 kW, see ``base_load_a``) plus about
    8.7 A for each box, whatever their number (so the start-up ramp is short at every size)."""
    return {
        "voltage_v": 230, "main_fuse_a": 10.0 * chargers + 10.0, "grid_meter": "M1",
        "grid_limit_w": f"{chargers * 8.5 * 3 * 230 + 2800:.0f} * AVAIL / 100",
        "unbalanced_limit_a": 20, "stale_s": 5, "cycle_s": 1.0,
    }


#: The ``site`` section for :func:`home_site` (``gridcharge demo``'s, without the ripple contact).
HOME_SITE: dict[str, Any] = {
    "voltage_v": 230, "main_fuse_a": 25, "grid_meter": "M1", "grid_limit_w": "17000 * AVAIL / 100",
    "unbalanced_limit_a": 20, "min_pause_s": 10, "stale_s": 5, "cycle_s": 1.0,
}


def site_config(sim_config: Mapping[str, Any], site: Mapping[str, Any], *, state_dir: str,
                variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole controller config: the simulator's device sections plus ``site`` and ``variables``."""
    data = {key: dict(value) for key, value in sim_config.items()}
    data.update(site=dict(site), state_dir=state_dir, variables=dict(variables or {}))
    return data


def write_yaml(data: Mapping[str, Any], path: Path) -> Path:
    """Write a config as YAML (what ``gridcharge run --config`` reads)."""
    import yaml

    path.write_text(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False))
    return path


# --------------------------------------------------------------------------- simulator process side

class WriteRecorder:
    """Notes every limit written to the simulated boxes: value, count, and when it changed.

    Runs on the simulator's server thread (the hook) and the control-channel thread (arm/wait).
    """

    def __init__(self, charger_ids: Iterable[str]) -> None:
        self._cond = threading.Condition()
        self.limits: dict[str, float | None] = {cid: None for cid in charger_ids}
        self.writes: dict[str, int] = {cid: 0 for cid in self.limits}
        self._baseline: dict[str, float | None] | None = None
        self._changed_at_s: dict[str, float] = {}

    def install(self, site: Any) -> None:
        """Wrap each box's ``set_limit`` (an instance attribute shadows the method)."""
        for cid in self.limits:
            box = site.wallbox(cid)
            box.set_limit = self._hook(cid, box.set_limit)

    def _hook(self, cid: str, set_limit: Callable[[float], None]) -> Callable[[float], None]:
        def hooked(current_a: float) -> None:
            set_limit(current_a)
            self.note(cid, current_a, time.monotonic())
        return hooked

    def note(self, cid: str, current_a: float, at_s: float) -> None:
        with self._cond:
            self.writes[cid] += 1
            self.limits[cid] = current_a
            base = self._baseline
            if base is not None and cid not in self._changed_at_s and current_a != base[cid]:
                self._changed_at_s[cid] = at_s
                self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {"limits": dict(self.limits), "writes": dict(self.writes)}

    def arm(self) -> dict[str, Any]:
        with self._cond:
            self._baseline = dict(self.limits)
            self._changed_at_s = {}
            return {"armed": True, "limits": dict(self.limits)}

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """Until every box got a limit other than its armed baseline (or the timeout)."""
        with self._cond:
            if self._baseline is None:
                return {"error": "not armed"}
            done = self._cond.wait_for(lambda: len(self._changed_at_s) == len(self.limits), timeout_s)
            times = list(self._changed_at_s.values())
            return {
                "done": done,
                "changed": len(times),
                "first_s": min(times) if times else None,
                "last_s": max(times) if times else None,
                "limits": dict(self.limits),
            }


def _build_site(spec: Mapping[str, Any]) -> Any:
    from hal.sim.physics import SimCar
    from hal.sim.site import SimChargerSpec, SimMeterSpec, SimulatedSite

    meter = spec.get("meter")
    chargers = []
    for c in spec.get("chargers", []):
        fields = {k: v for k, v in c.items() if k != "car"}
        car = SimCar(**c["car"]) if c.get("car") else None
        chargers.append(SimChargerSpec(**fields, car=car))
    return SimulatedSite(
        meter=SimMeterSpec(**meter) if meter else None,
        chargers=chargers,
        base_load_a=tuple(spec.get("base_load_a", (0.0, 0.0, 0.0))),
        tcp_layout=spec.get("tcp_layout", "per_device"),
    )


class SiteProbe:
    """The simulator-side answers beyond limits: grid changes and register reads per device."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self._lock = threading.Lock()
        self._grid: list[tuple[float, list[float]]] | None = None
        self.reads: dict[str, int] = {}
        site.physics.watch(self._changed)
        for device_id in site._devices:  # noqa: SLF001 - the bench's own simulator
            bank = site.bank(device_id)
            self.reads[device_id] = 0
            bank.read = self._counted(device_id, bank.read)

    def _counted(self, device_id: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            with self._lock:
                self.reads[device_id] += 1
            return read(*args)
        return counted

    def _changed(self, _: float, currents: Any) -> None:
        with self._lock:
            if self._grid is not None:
                self._grid.append((time.monotonic(), list(currents)))

    def watch(self) -> dict[str, Any]:
        with self._lock:
            self._grid = [(time.monotonic(), list(self.site.physics.grid_currents_a()))]
        return {"watching": True}

    def grid(self) -> dict[str, Any]:
        with self._lock:
            return {"changes": list(self._grid or [])}

    def count_reads(self) -> dict[str, Any]:
        with self._lock:
            return {"reads": dict(self.reads)}


def _answer(command: str, recorder: WriteRecorder, probe: SiteProbe | None = None) -> dict[str, Any] | None:
    """One control-channel command; None means quit."""
    word, _, arg = command.strip().partition(" ")
    if word == "quit":
        return None
    if probe is not None:
        if word == "base":
            probe.site.set_base_load(*(float(x) for x in arg.split()))
            return {"base": arg}
        if word == "latency":
            device_id, seconds = arg.split()
            probe.site.set_latency(device_id, float(seconds))
            return {"latency": arg}
        if word == "watch":
            return probe.watch()
        if word == "grid":
            return probe.grid()
        if word == "reads":
            return probe.count_reads()
    if word == "limits":
        return recorder.snapshot()
    if word == "arm":
        return recorder.arm()
    if word == "wait":
        return recorder.wait(float(arg or "5"))
    if word == "ping":
        return {"pong": True}
    return {"error": f"unknown command {command.strip()!r}"}


def serve(spec: Mapping[str, Any], *, out: Any = sys.stdout, commands: Iterable[str] = sys.stdin) -> int:
    """Run a simulated site until ``quit`` or end of input (the benchmark process died)."""
    site = _build_site(spec)
    recorder = WriteRecorder(site.physics.wallboxes)
    recorder.install(site)
    probe = SiteProbe(site)
    site.start()
    try:
        out.write(json.dumps({"config": site.config_dict(), "pid": os.getpid()}) + "\n")
        out.flush()
        for command in commands:
            if not command.strip():
                continue
            answer = _answer(command, recorder, probe)
            if answer is None:
                break
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        site.stop()
    return 0


# --------------------------------------------------------------------------- benchmark process side

class SimProcess:
    """The simulated site in a child process, with its control channel (stdin/stdout lines)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.config: dict[str, Any] = {}

    def command(self) -> list[str]:
        """The simulator's command line (a benchmark with simulators of its own overrides it)."""
        return [sys.executable, str(Path(__file__).resolve()), "serve", "--spec", json.dumps(self.spec)]

    def start(self) -> SimProcess:
        cmd = self.command()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      bufsize=1, cwd=str(REPO_ROOT))
        threading.Thread(target=self._pump, name="sim-stdout", daemon=True).start()
        first = self._next(SIM_START_TIMEOUT_S)
        self.config = first["config"]
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"simulator gave no answer within {timeout_s:g} s") from None
        if line is None:
            raise RuntimeError("simulator process ended unexpectedly (see its stderr above)")
        return json.loads(line)

    def request(self, command: str, timeout_s: float = SIM_REPLY_TIMEOUT_S) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._next(timeout_s)

    def limits(self) -> dict[str, float | None]:
        return self.request("limits")["limits"]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CycleWatcher:
    """Keeps the latest controller status (a cycle listener) and lets the benchmark wait on it."""

    def __init__(self, loop: Any) -> None:
        self._cond = threading.Condition()
        self.status: Any = None
        self.cycle_times_s: list[float] = []  # every cycle's duration, in order
        loop.add_cycle_listener(self._on_cycle)

    def _on_cycle(self, status: Any) -> None:
        with self._cond:
            self.status = status
            self.cycle_times_s.append(status.cycle_time_s)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Any], bool], timeout_s: float, what: str) -> Any:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.status is not None and predicate(self.status), timeout_s)
            if not ok:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}; last faults: "
                                   f"{getattr(self.status, 'faults', None)}")
            return self.status

    def wait_cycles(self, n: int, timeout_s: float) -> Any:
        start = self.status.cycle_count if self.status is not None else 0
        return self.wait_for(lambda s: s.cycle_count >= start + n, timeout_s, f"{n} more cycles")


class CycleStarts:
    """Every cycle's start, to tell scheduled cycles from woken ones and measure start jitter.

    A cycle listener (pass :meth:`on_cycle` to :func:`start_controller`'s ``listeners``): it notes
    ``status.monotonic_s`` (when the cycle started) and ``status.overruns`` of every cycle from the
    first. :func:`scheduled_jitter` replays ``ControlLoop.run_forever``'s schedule over them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.starts: list[tuple[float, int]] = []  # (monotonic_s, overruns) per cycle, in order

    def on_cycle(self, status: Any) -> None:
        with self._lock:
            self.starts.append((status.monotonic_s, status.overruns))

    def jitter_s(self, cycle_s: float, from_s: float, to_s: float) -> list[float]:
        """Start jitter of the scheduled cycles whose tick lies in ``[from_s, to_s]``."""
        with self._lock:
            starts = list(self.starts)
        return [j for tick, j in scheduled_jitter(starts, cycle_s) if from_s <= tick <= to_s]


def scheduled_jitter(starts: Sequence[tuple[float, int]], cycle_s: float) -> list[tuple[float, float]]:
    """(scheduled tick, actual start - tick) of each scheduled cycle; woken cycles are left out.

    Replays the loop's schedule: the ticks are the first cycle's start + k * ``cycle_s``; a cycle
    that starts before its tick (minus ``TICK_TOLERANCE_S``) was woken (a variable set, an input
    edge) and does not move the schedule. After an overrun the loop moves the tick to the end of
    the late cycle and runs the next one at once; that cycle (the first whose ``overruns`` count
    went up) becomes the new anchor and, like the very first cycle, is not counted.
    """
    from controller.loop import TICK_TOLERANCE_S  # the loop's own "a wait may return a hair early"

    out: list[tuple[float, float]] = []
    next_tick: float | None = None
    seen_overruns = 0
    for start_s, overruns in starts:
        anchor = next_tick is None or overruns > seen_overruns
        seen_overruns = overruns
        if anchor:
            next_tick = start_s
        assert next_tick is not None
        if start_s >= next_tick - TICK_TOLERANCE_S:
            if not anchor:
                out.append((next_tick, start_s - next_tick))
            next_tick += cycle_s
    return out


def all_written(status: Any) -> bool:
    """Every device online, no fail-safe, every charger has had its limit written."""
    devices = [*status.meters, *(c.device for c in status.chargers)]
    return (status.failsafe is None and all(d.online for d in devices)
            and all(c.written_a is not None for c in status.chargers))


def start_controller(config: Mapping[str, Any], *,
                     listeners: Iterable[Callable[[Any], None]] = ()) -> tuple[Any, CycleWatcher]:
    """Build the real ``Service`` from a config dict and run its loop on a background thread.

    ``listeners``: more cycle listeners, added before the first cycle (a :class:`CycleStarts`
    must see every cycle from the first to rebuild the loop's schedule).
    """
    from controller.config import parse_config
    from controller.service import Service

    service = Service(parse_config(config, source="bench"))
    watcher = CycleWatcher(service.loop)
    for listener in listeners:
        service.loop.add_cycle_listener(listener)
    service.start()
    return service, watcher


def warm_up(watcher: CycleWatcher, timeout_s: float, steady_cycles: int = 3) -> Any:
    """Until every device answers, every charger has its limit, and the written limits have not
    changed for ``steady_cycles`` seconds' worth of 1 s ticks (the ramp of ``increase_step_a``
    is over). Counted in time, not in cycles: prompt cycles between two ticks count as cycles."""
    watcher.wait_for(all_written, timeout_s, "every device online and every limit written")
    seen: dict[str, Any] = {"commands": None, "since": 0.0}

    def steady(status: Any) -> bool:
        commands = tuple(c.written_a for c in status.chargers)
        if commands != seen["commands"]:
            seen["commands"], seen["since"] = commands, status.monotonic_s
        return all_written(status) and status.monotonic_s - seen["since"] >= steady_cycles + 0.5

    return watcher.wait_for(steady, timeout_s, f"limits unchanged for {steady_cycles} s")


# --------------------------------------------------------------------------- figures and output

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was actually measured."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "mean": statistics.fmean(values) if values else float("nan"),
            "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else float("nan")}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = sys.stdout) -> None:
    """A plain fixed-width table (no dependency)."""
    text = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    for n, row in enumerate(text):
        out.write("  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    out.flush()


def emit_json(figures: Mapping[str, Any], out: Any = sys.stdout) -> None:
    """The final line of every benchmark: its figures as one JSON object."""
    out.write(json.dumps(figures, sort_keys=False) + "\n")
    out.flush()


def quiet_logging() -> None:
    """Benchmarks print their own figures; only warnings of the code under test go to stderr."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulator process of the benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="serve a simulated site; control channel on stdin/stdout")
    srv.add_argument("--spec", required=True, help="site spec as JSON (see tcp_chargers_site())")
    args = parser.parse_args(argv)
    quiet_logging()
    return serve(json.loads(args.spec))


if __name__ == "__main__":
    sys.exit(_main())
