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

Every reading and every write that lands gets a number from one counter (``_next_seq``,
controller/ordering.py), so the writer can tell whether a reading was taken before or after a
limit changed, whatever the clock. A reading the box measured before it was fetched (its
``measured_s``: pushed values such as OCPP MeterValues) takes the number current when it was
measured.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from controller import cycle_inputs
from controller.ordering import Sequence
from controller.allocation import AllocationState, Settings, acknowledge, allocate
from controller.allocation.rules import Override
from controller.clock import Clock, SystemClock
from controller.formulas import Evaluator
from controller.formulas.evaluation import compile_limits, evaluate_cycle
from controller.formulas.symbols import device_symbols, time_symbols
from controller.hardware import Hardware
from controller.records.variables import VariableStore
from controller.status import EMPTY_STATUS, CycleFacts, Status, cycle_status
from controller.tracking import DeviceTracker, FaultLog
from controller.writer import LimitWriter, Observed, WriteReport
from hal.executor import GroupExecutor
from hal.types import ChargerReading, IecState, MeterReading

if TYPE_CHECKING:
    from controller.config import Config

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


_KEEP: Any = object()  # update_override: leave this part of the override as it is


class ControlLoop:
    def __init__(
        self,
        cfg: Config,
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
        self._next_seq = Sequence(self.clock.monotonic)
        self.writer = LimitWriter(cfg, hardware, self.executor, self.trackers, self.clock, self._next_seq)
        self._report = WriteReport()
        self._overrides: dict[str, Override] = {}  # the latest asked for (guarded by _lock)
        self._cycle_overrides: dict[str, Override] = {}  # this cycle's copy (loop thread only)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._signal = threading.Event()  # a grid signal, as opposed to a late reading
        self._stop = threading.Event()
        self._status: Status = EMPTY_STATUS
        self._listeners: list[Callable[[Status], None]] = []
        self._cap_sources: list[Callable[[], Mapping[str, tuple[float, str]]]] = []
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

    def add_cap_source(self, source: Callable[[], Mapping[str, tuple[float, str]]]) -> None:
        """Ask ``source`` every cycle (on the loop thread; it must answer at once, from memory)
        for caps of its own: charger id → (cap_a, reason), e.g. the supplier's backend's
        charging profiles. The lowest of all caps in force wins, its reason is the ``lreason``."""
        self._cap_sources.append(source)

    def wake(self, reason: str = "") -> None:
        """Run a cycle at once (a grid signal arrived); see the module docstring."""
        log.debug("wake: %s", reason)
        self._signal.set()
        self._wake.set()

    def _late_reading(self, group: str, key: object) -> None:
        """A bus worker finished a read after the deadline: a prompt cycle uses it at once."""
        log.debug("late reading: %s on %s", key, group)
        self._wake.set()

    def update_override(self, charger_id: str, *, current_a: float | None = _KEEP,
                        enabled: bool = _KEEP) -> Override | None:
        """Change a charger's override (cFos ``override_device``): its cap (None removes the
        cap) and/or whether it may charge; a part not given stays as it is, so a cap and a
        ``flags=C`` compose. Returns the override now in force (None: none) and wakes the loop.
        Raises KeyError for an unknown charger."""
        if charger_id not in self.hw.chargers:
            raise KeyError(charger_id)
        with self._lock:
            base = self._overrides.get(charger_id) or Override()
            cap = base.current_a if current_a is _KEEP else current_a
            on = base.enabled if enabled is _KEEP else enabled
            new = None if on and cap is None else Override(current_a=cap, enabled=on)
            if new is None:
                self._overrides.pop(charger_id, None)
            else:
                self._overrides[charger_id] = new
        self.wake(f"override {charger_id}")
        return new

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
        grid, grid_fault, grid_fault_key = self._grid_reading(now)
        site = cycle_inputs.site_input(self.site, grid, grid_fault, ev, grid_fault_key)
        readings: dict[str, ChargerReading | None] = {cid: self._fresh(cid, now) for cid in self.hw.chargers}
        chargers = cycle_inputs.charger_inputs(ev, self.cfg.chargers, readings, self._box_facts(readings),
                                               self._cycle_overrides, self.site, now, self._external_caps())
        alloc = allocate(site, list(chargers.values()), self.settings, self._alloc_state, now)
        commands = {cid: cmd.current_a for cid, cmd in alloc.commands.items()}
        observed = {cid: Observed(c.online, c.draw_a if c.online else 0.0, self.trackers[cid].read_seq)
                    for cid, c in chargers.items()}
        grid_meter = self.site.grid_meter
        meter_seq = (self.trackers[grid_meter].read_seq
                     if grid_meter is not None and site.grid_current_a is not None else None)
        self._report = self.writer.write(now, commands, observed, meter_seq, site.grid_current_a,
                                         hold_increases=PROMPT_HELD if prompt else None, interrupt=self._signal)
        self._alloc_state = acknowledge(alloc.state, {cid: self.writer.written_a(cid) for cid in chargers})
        faults = {f"formula {e.where}": e.error for e in ev.errors}
        if site.failsafe_reason:
            faults["fail-safe"] = site.failsafe_reason
        self._faults.update(faults)
        self._cycle_count += 1
        return cycle_status(CycleFacts(
            cycle_count=self._cycle_count, overruns=self._overruns, failed_cycles=self._failed,
            started_s=now, ended_s=self.clock.monotonic(), site=site, chargers=chargers, allocation=alloc,
            evaluated=ev, faults=faults, held=self._report.held, overrides=self._cycle_overrides,
            stale_s=self.site.stale_s), self.hw, self.trackers, self.writer.written_a)

    def _external_caps(self) -> dict[str, tuple[float, str]]:
        """The lowest cap per charger that the cap sources ask for now (``add_cap_source``)."""
        lowest: dict[str, tuple[float, str]] = {}
        for source in self._cap_sources:
            for cid, (cap_a, reason) in source().items():
                if cid not in lowest or cap_a < lowest[cid][0]:
                    lowest[cid] = (cap_a, reason)
        return lowest

    def _take_overrides(self) -> None:
        with self._lock:
            self._cycle_overrides = dict(self._overrides)

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
        value = read()
        measured_s = getattr(value, "measured_s", None)
        if measured_s is not None:  # measured before this read: place it when it was measured
            age_s = max(0.0, time.monotonic() - measured_s)  # on the box side's clock
            taken_s = min(taken_s, self.clock.monotonic() - age_s)
            seq = min(seq, self._next_seq.at(taken_s))
        return Sample(seq, taken_s, value)

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
            if isinstance(value, ChargerReading) and value.state == IecState.A:
                with self._lock:
                    ended = self._overrides.pop(dev_id, None)
                self._cycle_overrides.pop(dev_id, None)
                if ended is not None:
                    log.info("%s: car unplugged, override ends", dev_id)
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

    def _grid_reading(self, now: float) -> tuple[MeterReading | None, str | None, str | None]:
        """The grid meter's fresh reading, or why there is none (as text, and as its stable key)."""
        meter_id = self.site.grid_meter
        if meter_id is None:
            return None, None, None
        reading: MeterReading | None = self._fresh(meter_id, now)
        if reading is not None:
            return reading, None, None
        tracker = self.trackers[meter_id]
        return None, tracker.fault_text(now, self.site.stale_s), tracker.fault_key(now, self.site.stale_s)

    def _box_facts(self, readings: dict[str, ChargerReading | None]) -> dict[str, cycle_inputs.BoxFacts]:
        """What is known of the boxes without a fresh reading (for what they are assumed to draw)."""
        out = {}
        for cid, reading in readings.items():
            if reading is not None:
                continue
            tracker, landed = self.trackers[cid], self.writer.landed(cid)
            contact = [t for t in (tracker.read_at_s, landed.contact_s) if t is not None]
            last = tracker.reading if isinstance(tracker.reading, ChargerReading) else None
            out[cid] = cycle_inputs.BoxFacts(self.hw.chargers[cid].device.fallback, landed.landed_a, landed.landed_s,
                                             max(contact) if contact else None, landed.setup_done, last)
        return out

    def write_failsafe(self) -> None:
        """On stop: leave each charger at no more than its fail-safe current (docs/configuration.md, SIGTERM)."""
        self.writer.write_failsafe()
