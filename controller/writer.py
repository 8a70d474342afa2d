"""The write step of a cycle: put the allocation's limits on the wallboxes, safely.

Every decrease is on the wire before any increase, so no moment between two writes exceeds a
limit. Only changes are written, plus each profile's keep-alive (Alfen's validity time). A box
gets its own watchdog and fail-safe current configured before its first limit, and again after
it was offline (it may have rebooted). On stop, each box is left at no more than its fail-safe
current. The writer remembers what each box was last given; the loop owns everything else.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from controller.allocation import Command
from controller.build import Hardware
from controller.tracking import DeviceTracker
from hal.executor import GroupExecutor

log = logging.getLogger(__name__)
Jobs = dict[str, list[tuple[str, Callable[[], Any]]]]
SETUP_EXTRA_S = 2.0  # a box's setup is several writes with the bus's gaps between them


class LimitWriter:
    def __init__(self, cfg: Any, hw: Hardware, executor: GroupExecutor,
                 trackers: Mapping[str, DeviceTracker[Any]]) -> None:
        self.cfg = cfg
        self.hw = hw
        self.executor = executor
        self.trackers = trackers
        self._written: dict[str, tuple[float, float]] = {}  # charger → (current_a, when written)
        self._needs_setup: set[str] = set(hw.chargers)

    @property
    def budget_s(self) -> float:
        return 0.4 * self.cfg.site.cycle_s

    def written_a(self, charger_id: str) -> float | None:
        """The limit last written to the box (None: not yet, or forgotten while it was offline)."""
        last = self._written.get(charger_id)
        return None if last is None else last[0]

    def write(self, now: float, commands: Mapping[str, Command], online: Callable[[str], bool]) -> None:
        first: Jobs = {}
        later: Jobs = {}
        pending: dict[str, float] = {}
        for cid, h in self.hw.chargers.items():
            if not online(cid):
                # Offline: forget what it had, so it is configured and written again on return.
                self._written.pop(cid, None)
                self._needs_setup.add(cid)
                continue
            group = h.group or "local"
            if cid in self._needs_setup:
                first.setdefault(group, []).append((f"{cid}:setup", functools.partial(
                    h.device.setup, self.cfg.site.watchdog_s, self.cfg.chargers[cid].failsafe_current_a)))
            target = commands[cid].current_a
            last = self._written.get(cid)
            keepalive = h.device.keepalive_s
            due = last is None or last[0] != target or (keepalive is not None and now - last[1] >= keepalive)
            if not due:
                continue
            batch = first if last is None or target <= last[0] else later
            batch.setdefault(group, []).append((cid, functools.partial(h.device.apply, target)))
            pending[cid] = target
        for batch in (first, later):  # every decrease is on the wire before any increase
            if batch:
                self._run(batch, pending, now)

    def _run(self, batch: Jobs, pending: Mapping[str, float], now: float) -> None:
        setups = any(key.endswith(":setup") for items in batch.values() for key, _ in items)
        results = self.executor.run(batch, self.budget_s + (SETUP_EXTRA_S if setups else 0.0))
        for key, res in results.items():
            cid, _, what = key.partition(":")
            if not res.done:
                # Its bus is still busy (a slow line): the write is due again next cycle, since
                # nothing was recorded as written. Not a fault of the device.
                log.debug("%s: %s not done this cycle", cid, what or "write")
            elif res.error is not None:
                self.trackers[cid].fail(f"{what or 'write'} failed: {res.error}", now)
            elif what == "setup":
                self._needs_setup.discard(cid)
            else:
                self._written[cid] = (pending[cid], now)

    def write_failsafe(self) -> None:
        """On stop: leave each charger at no more than its fail-safe current (SPEC §4, SIGTERM)."""
        jobs: Jobs = {}
        for cid, h in self.hw.chargers.items():
            last = self.written_a(cid)
            failsafe = self.cfg.chargers[cid].failsafe_current_a
            target = failsafe if last is None else min(last, failsafe)
            jobs.setdefault(h.group or "local", []).append((cid, functools.partial(h.device.apply, target)))
        results = self.executor.run(jobs, 2.0)
        failed = [k for k, r in results.items() if not r.done or r.error is not None]
        log.info("stopped: fail-safe currents written%s", f" (failed: {', '.join(failed)})" if failed else "")
