"""The write step of a cycle: put the allocation's limits on the wallboxes, safely.

What to write and in which order is decided by :func:`controller.write_plan.plan_writes` (read
its docstring: decreases first on every bus, increases only after every decrease was
acknowledged and only from a consistent snapshot); this module executes that plan on the bus
workers and remembers, per box, what it acknowledged and when:

* the limit it last acknowledged (the limit in force; kept while the box is silent, because a
  silent box keeps charging at it, and forgotten when the box comes back, since it may have
  rebooted), when, and the sequence number of the write that last changed it;
* whether a write is still on the wire (a slow or hung bus);
* whether its setup (watchdog, fail-safe current) was acknowledged since it appeared.

The records are written by the jobs themselves on the bus workers, so a write that lands after
the cycle's deadline is still known, with the moment it landed. On stop, each box is left at no
more than its fail-safe current.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from controller.hardware import Hardware
from controller.clock import Clock
from controller.tracking import DeviceTracker
from controller.write_plan import BoxState, Write, plan_writes
from hal.executor import GroupExecutor

if TYPE_CHECKING:
    from controller.config import Config

log = logging.getLogger(__name__)
JobKey = str | tuple[str, str]  # a charger's limit write, or (charger, "setup")
Jobs = dict[str, list[tuple[JobKey, Callable[[], Any]]]]
SETUP_EXTRA_S = 2.0  # a box's setup is several writes with the bus's gaps between them


@dataclass(frozen=True)
class Observed:
    """What the loop read of one charger this cycle."""

    online: bool  # a fresh reading
    draw_a: float  # its highest phase current (0 when offline)
    read_seq: int | None  # sequence number of that reading


@dataclass(frozen=True)
class WriteReport:
    """What the cycle could not write: charger → why its increase was held back."""

    held: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Record:
    """The writer's memory of one box (guarded by the writer's lock; jobs update it)."""

    landed_a: float | None = None
    landed_s: float | None = None
    changed_seq: int | None = None
    contact_s: float | None = None  # last acknowledged write of any kind
    in_flight: bool = False
    setup_done: bool = False
    away: bool = False  # offline now: forget the limit once it is back


@dataclass(frozen=True)
class Landed:
    """A snapshot of one record for the loop: what the box acknowledged and when."""

    landed_a: float | None
    landed_s: float | None
    contact_s: float | None
    setup_done: bool


class LimitWriter:
    def __init__(self, cfg: Config, hw: Hardware, executor: GroupExecutor,
                 trackers: Mapping[str, DeviceTracker[Any]], clock: Clock,
                 sequence: Callable[[], int] | None = None) -> None:
        self.cfg = cfg
        self.hw = hw
        self.executor = executor
        self.trackers = trackers
        self.clock = clock
        self._next_seq = sequence or itertools.count(1).__next__
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {cid: _Record() for cid in hw.chargers}
        self._phase = {cid: cc.phase_index for cid, cc in cfg.chargers.items() if cc.phases == 1}

    @property
    def budget_s(self) -> float:
        return 0.4 * self.cfg.site.cycle_s

    # ---- what the loop reads ---------------------------------------------------------------
    def landed(self, charger_id: str) -> Landed:
        with self._lock:
            r = self._records[charger_id]
            return Landed(r.landed_a, r.landed_s, r.contact_s, r.setup_done)

    def written_a(self, charger_id: str) -> float | None:
        """The limit the box last acknowledged (None: not written since it appeared)."""
        return self.landed(charger_id).landed_a

    # ---- one cycle -------------------------------------------------------------------------
    def write(self, now: float, commands: Mapping[str, float], observed: Mapping[str, Observed],
              meter_read_seq: int | None, phase_load_a: Sequence[float] | None = None, *,
              hold_increases: str | None = None, interrupt: threading.Event | None = None) -> WriteReport:
        """Write this cycle's limits (see controller/write_plan.py for the order).

        ``meter_read_seq``: the sequence number of the grid meter reading the allocation used;
        ``phase_load_a``: its per-phase currents (the heaviest phase is lowered first).
        ``hold_increases``: None writes increases as the plan allows; a text holds them all back
        this cycle with that reason (a prompt cycle between two ticks writes decreases only).
        ``interrupt``: a new grid signal; it ends the wait for the increases (they still land,
        and the next cycle sees them), so that the signal's own decreases need not wait.
        """
        boxes = self._box_states(observed)
        plan = plan_writes(commands, boxes, meter_read_seq, now, phase_load_a)
        if hold_increases is not None:
            plan = replace(plan, held={w.charger_id: plan.held.get(w.charger_id, hold_increases)
                                       for w in plan.increases})
        failed: list[str] = []
        for step in plan.decreases:  # the fuse comes first: a later step goes even if one failed
            failed += self._run(self._limit_jobs(step), self.budget_s)
        increases = [w for w in plan.increases if w.charger_id not in plan.held]
        held = dict(plan.held)
        if failed and increases:
            why = f"waiting for {', '.join(sorted(failed))} to lower"
            held.update({w.charger_id: why for w in increases})
            increases = []
        jobs = self._setup_jobs(plan.setups)
        for group, items in self._limit_jobs(tuple(increases)).items():
            jobs.setdefault(group, []).extend(items)  # a box's setup before its increase
        if jobs:
            self._run(jobs, self.budget_s + (SETUP_EXTRA_S if plan.setups else 0.0), interrupt)
        return WriteReport({cid: f"{why} ({commands[cid]:g} A held back)" for cid, why in held.items()})

    def _box_states(self, observed: Mapping[str, Observed]) -> dict[str, BoxState]:
        out: dict[str, BoxState] = {}
        with self._lock:
            for cid, h in self.hw.chargers.items():
                r = self._records[cid]
                obs = observed[cid]
                if not obs.online:
                    r.away = True
                elif r.away:  # back: it may have rebooted, so its limit and setup are unknown
                    r.away, r.landed_a, r.landed_s, r.changed_seq, r.setup_done = False, None, None, None, False
                out[cid] = BoxState(
                    online=obs.online, landed_a=r.landed_a, landed_s=r.landed_s, changed_seq=r.changed_seq,
                    in_flight=r.in_flight, needs_setup=not r.setup_done, draw_a=obs.draw_a,
                    read_seq=obs.read_seq, keepalive_s=h.device.keepalive_s, phase=self._phase.get(cid),
                )
        return out

    def _group(self, cid: str) -> str:
        group = self.hw.chargers[cid].group
        assert group is not None, cid  # controller/build.py gives every charger a worker group
        return group

    def _limit_jobs(self, writes: tuple[Write, ...]) -> Jobs:
        jobs: Jobs = {}
        for w in writes:
            job = functools.partial(self._apply, w.charger_id, w.current_a)
            jobs.setdefault(self._group(w.charger_id), []).append((w.charger_id, job))
        return jobs

    def _setup_jobs(self, charger_ids: tuple[str, ...]) -> Jobs:
        jobs: Jobs = {}
        for cid in charger_ids:
            jobs.setdefault(self._group(cid), []).append(((cid, "setup"), functools.partial(self._setup, cid)))
        return jobs

    def _run(self, jobs: Jobs, timeout_s: float, interrupt: threading.Event | None = None) -> list[str]:
        """Run the jobs; the chargers whose write did not land in time or failed."""
        if not jobs:
            return []
        # urgent: ahead of a slow bus's queued reads
        results = self.executor.run(jobs, timeout_s, urgent=True, interrupt=interrupt)
        failed = []
        now = self.clock.monotonic()
        for key, res in results.items():
            cid, what = (key, "write") if isinstance(key, str) else key
            if not res.done:
                # Its bus is still busy (a slow line): due again next cycle. Not a device fault.
                log.debug("%s: %s not done this cycle", cid, what)
                failed.append(cid)
            elif res.error is not None:
                self.trackers[cid].write_failed(f"{what} failed: {res.error}", now)
                failed.append(cid)
            else:
                self.trackers[cid].write_landed()
        return failed

    # ---- the jobs (run on the bus workers) ----------------------------------------------------
    def _apply(self, cid: str, current_a: float) -> None:
        record = self._records[cid]
        with self._lock:
            record.in_flight = True
        try:
            self.hw.chargers[cid].device.apply(current_a)
        except BaseException:
            with self._lock:  # it may or may not have reached the box: its limit changed, maybe
                record.in_flight = False
                record.changed_seq = self._next_seq()
            raise
        seq, t = self._next_seq(), self.clock.monotonic()
        with self._lock:
            record.in_flight = False
            if record.landed_a != current_a:
                record.changed_seq = seq
            record.landed_a, record.landed_s, record.contact_s = current_a, t, t

    def _setup(self, cid: str) -> None:
        self.hw.chargers[cid].device.setup(self.cfg.site.watchdog_s, self.cfg.chargers[cid].failsafe_current_a)
        t = self.clock.monotonic()
        with self._lock:
            record = self._records[cid]
            record.setup_done, record.contact_s = True, t

    # ---- stop --------------------------------------------------------------------------------
    def write_failsafe(self) -> None:
        """On stop: leave each charger at no more than its fail-safe current."""
        jobs: Jobs = {}
        for cid, h in self.hw.chargers.items():
            last = self.written_a(cid)
            failsafe = self.cfg.chargers[cid].failsafe_current_a
            target = failsafe if last is None else min(last, failsafe)
            jobs.setdefault(self._group(cid), []).append((cid, functools.partial(h.device.apply, target)))
        results = self.executor.run(jobs, 2.0, urgent=True)
        failed = [str(k) for k, r in results.items() if not r.done or r.error is not None]
        log.info("stopped: fail-safe currents written%s", f" (failed: {', '.join(failed)})" if failed else "")

