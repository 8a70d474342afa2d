"""The control loop: read → evaluate → allocate → write → publish, at a fixed rate.

One thread owns the cycle. Device I/O runs on one worker per bus (``hal.executor``) with a
deadline, so a dead bus only makes its own readings age. Time comes from an injected clock;
tests call ``run_once()`` and move a ``FakeClock`` instead of sleeping.

Three kinds of cycle, so that grid signals act at once without polling the devices more often
than their buses allow:

* the **tick**, every ``cycle_s``: read every device, decide, write;
* a grid signal (a variable set over the API, an override, a GPIO edge) wakes the loop at once:
  the first signal after ``cycle_s`` without one gets a prompt cycle (below: its decreases go
  out at once) and then a **full cycle** like the tick (fresh readings, every write), at most
  one such extra cycle per ``cycle_s``;
* any other signal, and a reading that a slow bus delivers after the read deadline, gets a
  **prompt cycle**: no device is read (the latest readings are used, GPIO contacts are read, as
  they cost no bus time), everything is decided again and only decreases are written; increases
  wait for the next full cycle. Prompt cycles are at least ``PROMPT_SPACING_S`` apart. So a
  client setting variables in a loop cannot multiply the polling, and a decrease still reaches
  the boxes within a fraction of a second of the set or of the late reading that calls for it.

Safety rules implemented here: writes of decreases are acknowledged before any increase is
written, and increases only go out from readings taken after the last write (the writer and
controller/write_plan.py); a grid meter older than ``stale_s`` puts the chargers under
``failsafe_limit_w``; a silent charger keeps what it is assumed to draw reserved
(controller/allocation/assumed_draw.py); a failed formula takes its fail-safe value; no exception escapes
a cycle; on stop every charger is left at (at most) its fail-safe current.

Every reading and every write that lands gets a number from one counter (``_next_seq``), so the
writer can tell whether a reading was taken before or after a limit changed, whatever the clock.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from controller.allocation import (
    Allocation,
    AllocationState,
    ChargerInput,
    Settings,
    SiteInput,
    acknowledge,
    allocate,
)
from controller.allocation.assumed_draw import Assumed, SilentBox, assumed_draw
from controller.hardware import DeviceHandle, Hardware
from controller.clock import Clock, SystemClock
from controller.formulas.evaluation import Evaluated, compile_limits, evaluate_cycle, truthy
from controller.formulas import Evaluator
from controller.allocation.rules import RuleSpec, rule_caps
from controller.status import (
    EMPTY_STATUS,
    ChargerStatus,
    DeviceStatus,
    Status,
)
from controller.formulas.symbols import device_symbols, time_symbols
from controller.tracking import DeviceTracker, FaultLog
from controller.records.variables import VariableStore
from controller.writer import LimitWriter, Observed, WriteReport
from hal.executor import GroupExecutor
from hal.types import ChargerReading, IecState, MeterReading, Phases3

log = logging.getLogger(__name__)
TICK_TOLERANCE_S = 0.005  # a timed wait may return a hair early: that is still the tick
#: Prompt cycles (decreases only, no reads) are at least this far apart: a storm of signals
#: costs at most 20 evaluations a second, and a decrease waits at most this long.
PROMPT_SPACING_S = 0.05
PROMPT_HELD = "waiting for the next cycle (signals between two cycles lower only)"


@dataclass(frozen=True)
class Sample:
    """A reading with the moment it was taken and its place in the order of reads and writes."""

    seq: int
    taken_s: float
    value: Any


@dataclass(frozen=True)
class Override:
    """An API override of one charger, kept until its car is unplugged (cFos override_device)."""

    current_a: float | None = None
    enabled: bool = True


def charger_draw(reading: ChargerReading, phases: int, phase: int) -> Phases3:
    """Per-phase draw at the grid: a 1-phase box reports its current on L1, whatever it is wired to."""
    if phases == 3:
        return reading.current_a
    draw = [0.0, 0.0, 0.0]
    draw[phase] = max(reading.current_a)
    return (draw[0], draw[1], draw[2])


class ControlLoop:
    def __init__(
        self,
        cfg: Any,
        hardware: Hardware,
        store: VariableStore,
        *,
        clock: Clock | None = None,
        executor: GroupExecutor | None = None,
    ) -> None:
        self.cfg = cfg
        self.hw = hardware
        self.store = store
        self.clock = clock or SystemClock()
        self.executor = executor or GroupExecutor(hardware.groups())
        self.executor.on_late = self._late_reading  # a slow bus's reading: act on it at once
        self.site = cfg.site
        self.limits = compile_limits(cfg)
        self.evaluator = Evaluator()
        self.settings = Settings(increase_step_a=self.site.increase_step_a, min_pause_s=self.site.min_pause_s)
        self.trackers: dict[str, DeviceTracker[Any]] = {h.id: DeviceTracker(h.id) for h in hardware.all()}
        self._alloc_state = AllocationState(chargers={})
        self._next_seq = itertools.count(1).__next__
        self.writer = LimitWriter(cfg, hardware, self.executor, self.trackers, self.clock, self._next_seq)
        self._report = WriteReport()
        self._charger_phases = {cid: (cc.phases, self.site.voltage_v) for cid, cc in cfg.chargers.items()}
        self._overrides: dict[str, Override] = {}
        self._pending_overrides: list[tuple[str, Override | None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._signal = threading.Event()  # a grid signal, as opposed to a late reading
        self._stop = threading.Event()
        self._status: Status = EMPTY_STATUS
        self._listeners: list[Callable[[Status], None]] = []
        self._faults = FaultLog()
        self._cycle_count = 0
        self.reading_cycles = 0  # cycles that read the buses (ticks and extra full cycles)
        self._last_prompt = -float("inf")
        self._overruns = 0
        self._failed = 0
        self._thread: threading.Thread | None = None
        store.add_listener(lambda old, new, source: self.wake(f"variables ({source})"))

    # ---- interface for the other threads -------------------------------------------------
    @property
    def status(self) -> Status:
        return self._status

    def add_cycle_listener(self, callback: Callable[[Status], None]) -> None:
        """Called on the loop thread after every cycle (sd_notify watchdog, demo view, logs)."""
        self._listeners.append(callback)

    def wake(self, reason: str = "") -> None:
        """Run a cycle at once (a grid signal arrived); see the module docstring."""
        log.debug("wake: %s", reason)
        self._signal.set()
        self._wake.set()

    def _late_reading(self, group: str, key: object) -> None:
        """A bus worker finished a read after the deadline: a prompt cycle uses it at once."""
        log.debug("late reading: %s on %s", key, group)
        self._wake.set()

    def set_override(self, charger_id: str, override: Override | None) -> None:
        """Queue an override for the next cycle (None removes it) and wake the loop."""
        if charger_id not in self.hw.chargers:
            raise KeyError(charger_id)
        with self._lock:
            self._pending_overrides.append((charger_id, override))
        self.wake(f"override {charger_id}")

    # ---- running ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="control-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the cycle in progress, leave every charger at its fail-safe current."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run_forever(self) -> None:
        next_tick = self.clock.monotonic()
        cycle_s = self.site.cycle_s
        last_extra = -float("inf")
        while not self._stop.is_set():
            self.clock.wait(self._wake, next_tick - self.clock.monotonic())
            if self._stop.is_set():
                break
            self._wake.clear()
            start = self.clock.monotonic()
            signal = self._signal.is_set()
            self._signal.clear()
            if start >= next_tick - TICK_TOLERANCE_S:  # the scheduled cycle
                self.run_once()
                next_tick += cycle_s
                end = self.clock.monotonic()
                if end > next_tick:
                    self._overruns += 1
                    next_tick = end
            elif signal and start - last_extra >= cycle_s:  # the first signal in a while
                last_extra = start
                self._prompt_now()  # its decreases at once, from the readings we have
                self.run_once()  # then fresh readings, and everything else
            else:
                self._prompt_now()
        self.write_failsafe()

    def run_once(self, *, prompt: bool = False) -> Status:
        """One cycle (a prompt one: no reads, decreases only). Never raises: a failing cycle is
        counted, logged and survived."""
        start = self.clock.monotonic()
        try:
            status = self._cycle(start, prompt)
        except Exception:
            self._failed += 1
            log.exception("cycle %d failed", self._cycle_count + 1)
            status = replace(self._status, failed_cycles=self._failed, failsafe="cycle failed")
        self._status = status
        for callback in self._listeners:
            try:
                callback(status)
            except Exception:
                log.exception("cycle listener failed")
        return status

    # ---- one cycle -------------------------------------------------------------------------
    def _cycle(self, now: float, prompt: bool = False) -> Status:
        self._signal.clear()  # this cycle takes every signal so far; a later one cuts its reads short
        self._take_overrides()
        if prompt:
            self._read_late_and_local(now)
        else:
            self.reading_cycles += 1
            self._read_all(now)
        symbols = self._symbols(now)
        varset = self.store.snapshot()
        ev = evaluate_cycle(self.evaluator, varset, self.limits, symbols)
        site, faults = self._site_input(now, ev)
        chargers = self._charger_inputs(now, ev)
        alloc = allocate(site, list(chargers.values()), self.settings, self._alloc_state, now)
        commands = {cid: cmd.current_a for cid, cmd in alloc.commands.items()}
        observed = {cid: Observed(c.online, c.draw_a if c.online else 0.0, self.trackers[cid].read_seq)
                    for cid, c in chargers.items()}
        meter_seq = self.trackers[self.site.grid_meter].read_seq if site.grid_current_a is not None else None
        self._report = self.writer.write(now, commands, observed, meter_seq, site.grid_current_a,
                                         hold_increases=PROMPT_HELD if prompt else None, interrupt=self._signal)
        self._alloc_state = acknowledge(alloc.state, {cid: self.writer.written_a(cid) for cid in chargers})
        faults.update({f"formula {e.where}": e.error for e in ev.errors})
        self._faults.update(faults)
        self._cycle_count += 1
        return self._build_status(now, site, chargers, alloc, ev, faults)

    def _take_overrides(self) -> None:
        with self._lock:
            pending, self._pending_overrides = self._pending_overrides, []
        for cid, override in pending:
            if override is None:
                self._overrides.pop(cid, None)
            else:
                self._overrides[cid] = override

    def _prompt_now(self) -> None:
        """A prompt cycle from inside another cycle's reads, keeping the prompt spacing."""
        wait_s = self._last_prompt + PROMPT_SPACING_S - self.clock.monotonic()
        if wait_s > 0:
            self.clock.wait(self._stop, wait_s)
        self._last_prompt = self.clock.monotonic()
        self.run_once(prompt=True)

    def _read_late_and_local(self, now: float) -> None:
        """A prompt cycle's reading: what slow buses delivered late, and the local contacts."""
        for key, res in self.executor.collect_late("read").items():
            if isinstance(key, str) and key in self.trackers:
                self._record(key, res.value, res.error, now)
        for h in self.hw.all():
            if h.group is None:
                self._record(h.id, *self._call(functools.partial(self._sample, h.device.read)), now)

    def _sample(self, read: Callable[[], Any]) -> Sample:
        """Run one read, noting when it started: what it returns describes that moment or later."""
        seq, taken_s = self._next_seq(), self.clock.monotonic()
        return Sample(seq, taken_s, read())

    def _read_all(self, now: float) -> None:
        jobs: dict[str, list[tuple[str, Callable[[], Any]]]] = {}
        for h in self.hw.all():
            read = functools.partial(self._sample, h.device.read)
            if h.group is None:  # local inputs (GPIO): no bus, read here
                self._record(h.id, *self._call(read), now)
            else:
                jobs.setdefault(h.group, []).append((h.id, read))
        busy = {g for g in jobs if self.executor.busy(g)}
        batch = self.executor.submit(jobs, late_tag="read")
        deadline = time.monotonic() + self.read_budget_s  # the executor's waits are in real time
        while not batch.wait(deadline - time.monotonic(), interrupt=self._signal) and self._signal.is_set():
            # A grid signal while a slow bus is still being read: its decreases go out now, from
            # the readings so far; this cycle then goes on waiting and decides again in full.
            self._prompt_now()
        results = batch.results()
        for group, items in jobs.items():
            for key, _ in items:
                res = results[key]
                if res.done:
                    self._record(key, res.value, res.error, now)
                elif not self.trackers[key].fresh(now, self.site.stale_s):
                    # A slow bus delivers next cycle (late results); only a reading that has
                    # grown stale is a fault.
                    why = "bus busy (previous request unfinished)" if group in busy else "no answer in time"
                    self.trackers[key].fail(why, now)

    @property
    def read_budget_s(self) -> float:
        return 0.7 * self.site.cycle_s

    @staticmethod
    def _call(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        try:
            return fn(), None
        except Exception as exc:
            return None, exc

    def _record(self, dev_id: str, sample: Sample | None, error: BaseException | None, now: float) -> None:
        tracker = self.trackers[dev_id]
        if error is None and sample is not None:
            if tracker.read_seq is not None and sample.seq < tracker.read_seq:
                return  # older than what we have (cannot happen with one worker per bus; be sure)
            value = sample.value
            tracker.ok(value, sample.taken_s, sample.seq)
            if dev_id in self._overrides and isinstance(value, ChargerReading) and value.state == IecState.A:
                log.info("%s: car unplugged, override ends", dev_id)
                del self._overrides[dev_id]
        else:
            tracker.fail(str(error) or type(error).__name__, now)

    def _fresh(self, dev_id: str, now: float) -> Any:
        tracker = self.trackers[dev_id]
        return tracker.reading if tracker.fresh(now, self.site.stale_s) else None

    def _symbols(self, now: float) -> dict[str, Any]:
        symbols: dict[str, Any] = time_symbols(self.clock.now())
        for h in self.hw.all():
            symbols.update(device_symbols(h.id, h.kind, self._fresh(h.id, now)))
        return symbols

    def _site_input(self, now: float, ev: Evaluated) -> tuple[SiteInput, dict[str, str]]:
        faults: dict[str, str] = {}
        reasons: list[str] = []
        grid_current: Phases3 | None = None
        grid_power: float | None = None
        meter_id = self.site.grid_meter
        if meter_id is not None:
            reading: MeterReading | None = self._fresh(meter_id, now)
            if reading is None or reading.current_a is None:
                tracker = self.trackers[meter_id]
                why = tracker.fault_text(now, self.site.stale_s) or "no phase currents"
                reasons.append(f"grid meter {meter_id}: {why}")
            else:
                grid_current, grid_power = reading.current_a, reading.power_w
        grid_limit, error = ev.grid_limit_w
        if error is not None:
            reasons.append(f"grid_limit_w: {error}")
        chargers_limit, error = ev.chargers_limit_w
        if error is not None:
            reasons.append(f"chargers_limit_w: {error}")
        failsafe = "; ".join(reasons) or None
        if failsafe:
            faults["fail-safe"] = failsafe
        site = SiteInput(
            voltage_v=self.site.voltage_v,
            main_fuse_a=self.site.main_fuse_a,
            grid_current_a=grid_current,
            grid_power_w=grid_power,
            grid_limit_w=grid_limit,
            chargers_limit_w=chargers_limit,
            unbalanced_limit_a=self.site.unbalanced_limit_a,
            failsafe_limit_w=self.site.failsafe_limit_w,
            failsafe_reason=failsafe,
        )
        return site, faults

    def _charger_inputs(self, now: float, ev: Evaluated) -> dict[str, ChargerInput]:
        readings: dict[str, ChargerReading | None] = {cid: self._fresh(cid, now) for cid in self.hw.chargers}
        caps = self._caps(ev, readings)
        out: dict[str, ChargerInput] = {}
        for cid, cc in self.cfg.chargers.items():
            reading = readings[cid]
            phase = cc.phase_index
            charging = reading is not None and reading.state.charging
            value, error = ev.charger_max_a[cid]
            max_reason = None
            if error is not None:
                max_a = cc.min_current_a if charging else 0.0
                max_reason = f"max_current_a error: {error}"
            elif value is None:
                max_a = float(self.site.main_fuse_a)
            else:
                max_a = max(0.0, float(value))
            cap_a, cap_reason = caps.get(cid, (None, None))
            reserved = self._assumed_draw(cid, now) if reading is None else Assumed(0.0, "")
            out[cid] = ChargerInput(
                id=cid,
                phases=cc.phases,
                phase=phase,
                min_current_a=cc.min_current_a,
                max_current_a=max_a,
                max_reason=max_reason,
                priority=cc.priority,
                online=reading is not None,
                state=reading.state if reading is not None else None,
                drawn_a=charger_draw(reading, cc.phases, phase) if reading is not None else (0.0, 0.0, 0.0),
                reserved_a=reserved.current_a,
                reserved_reason=reserved.why or None,
                cap_a=cap_a,
                cap_reason=cap_reason,
            )
        return out

    def _assumed_draw(self, cid: str, now: float) -> Assumed:
        """What a charger without a fresh reading is taken to draw (controller/allocation/assumed_draw.py)."""
        cc = self.cfg.chargers[cid]
        tracker = self.trackers[cid]
        landed = self.writer.landed(cid)
        fallback = self.hw.chargers[cid].device.fallback
        fallback_s: float | None = None
        if fallback is not None:
            # A watchdog that gridcharge configures is armed only once its setup was acknowledged.
            fallback_s = fallback.timeout_s if fallback.timeout_s is not None else (
                self.site.watchdog_s if landed.setup_done else None)
        contact = [t for t in (tracker.read_at_s, landed.contact_s) if t is not None]
        last = tracker.reading
        # A maximum given as a formula may be low now and was perhaps not when the box was set.
        maximum = cc.max_current_a if isinstance(cc.max_current_a, (int, float)) else self.site.main_fuse_a
        return assumed_draw(SilentBox(
            landed_a=landed.landed_a,
            landed_s=landed.landed_s,
            contact_s=max(contact) if contact else None,
            measured_a=max(last.current_a) if isinstance(last, ChargerReading) else None,
            fallback_s=fallback_s,
            fed_by_any_request=fallback.fed_by_any_request if fallback is not None else True,
            failsafe_a=cc.failsafe_current_a,
            maximum_a=float(maximum),
        ), now)

    def _caps(
        self, ev: Evaluated, readings: Mapping[str, ChargerReading | None]
    ) -> dict[str, tuple[float | None, str | None]]:
        specs: list[tuple[RuleSpec, bool | None, str | None]] = []
        forced: dict[str, list[tuple[float, str]]] = {}
        for rr in ev.rules:
            when = truthy(rr.when)
            value, error = rr.value
            if error is not None:  # the rule's value failed: §3 fail-safe for the chargers it covers
                if when is False:
                    continue
                for cid in rr.rule.chargers or tuple(self.hw.chargers):
                    r = readings.get(cid)
                    cap = self.cfg.chargers[cid].min_current_a if r is not None and r.state.charging else 0.0
                    forced.setdefault(cid, []).append((cap, f'rule "{rr.rule.name}" (value error: {error})'))
                continue
            if value is None:
                continue  # the rule's value is None: no limit
            is_current = rr.rule.max_current_a is not None
            spec = RuleSpec(name=rr.rule.name, chargers=rr.rule.chargers,
                            max_current_a=value if is_current else None,
                            max_power_w=None if is_current else value)
            specs.append((spec, when, rr.when[1]))
        for cid, ov in self._overrides.items():
            if not ov.enabled:
                forced.setdefault(cid, []).append((0.0, "disabled by override (flags=C)"))
            elif ov.current_a is not None:
                forced.setdefault(cid, []).append((ov.current_a, f"override {ov.current_a:g} A"))
        lowest = {cid: min(items, key=lambda item: item[0]) for cid, items in forced.items()}
        return rule_caps(specs, self._charger_phases, lowest)

    def write_failsafe(self) -> None:
        """On stop: leave each charger at no more than its fail-safe current (SPEC §4, SIGTERM)."""
        self.writer.write_failsafe()

    # ---- status ----------------------------------------------------------------------------
    def _device_status(self, h: DeviceHandle, now: float) -> DeviceStatus:
        tracker = self.trackers[h.id]
        fault = tracker.fault_text(now, self.site.stale_s)
        return DeviceStatus(
            id=h.id,
            kind=h.kind,
            model=h.model,
            address=h.address,
            online=fault is None,
            age_s=tracker.age_s(now),
            error=fault,
            error_s=tracker.error_s(now),
            reading=tracker.reading,
        )

    def _build_status(
        self, now: float, site: SiteInput, chargers: Mapping[str, ChargerInput], alloc: Allocation,
        ev: Evaluated, faults: dict[str, str],
    ) -> Status:
        charger_status = []
        for cid, h in self.hw.chargers.items():
            ci = chargers[cid]
            cmd = alloc.commands[cid]
            ov = self._overrides.get(cid)
            charger_status.append(ChargerStatus(
                device=self._device_status(h, now),
                phases=ci.phases,
                phase=ci.phase,
                priority=ci.priority,
                min_current_a=ci.min_current_a,
                max_current_a=ci.max_current_a,
                command_a=cmd.current_a,
                written_a=self.writer.written_a(cid),
                reason=self._report.held.get(cid, cmd.reason),
                enabled=ov.enabled if ov else True,
                override_a=ov.current_a if ov else None,
            ))
        fault_lines = tuple(f"{k}: {v}" for k, v in sorted(faults.items()))
        device_faults = tuple(
            f"{h.id}: {t}" for h in self.hw.all()
            if (t := self.trackers[h.id].fault_text(now, self.site.stale_s)) is not None
        )
        return Status(
            cycle_count=self._cycle_count,
            overruns=self._overruns,
            failed_cycles=self._failed,
            cycle_time_s=self.clock.monotonic() - now,
            monotonic_s=now,
            wall_time=time.time(),
            failsafe=site.failsafe_reason,
            grid_limit_w=site.grid_limit_w,
            chargers_limit_w=site.chargers_limit_w,
            headroom_a=alloc.headroom_a,
            power_headroom_w=alloc.power_headroom_w,
            limiting=tuple(alloc.limiting),
            grid_power_w=site.grid_power_w,
            grid_current_a=site.grid_current_a,
            meters=tuple(self._device_status(h, now) for h in self.hw.meters.values()),
            chargers=tuple(charger_status),
            inputs=tuple(self._device_status(h, now) for h in self.hw.inputs.values()),
            variables=ev.variables,
            formula_errors=ev.errors,
            links=tuple(link.link_stats() for link in self.hw.links.values()),
            faults=fault_lines + device_faults,
        )
