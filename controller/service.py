"""Wire one running controller together: variable store, hardware, control loop.

``gridcharge run`` and ``gridcharge demo`` both build a ``Service``; the HTTP API of issue #3
will hang off the same object (it reads ``loop.status`` and writes through ``store``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from controller.build import Hardware, build_hardware
from controller.clock import Clock
from controller.loop import ControlLoop
from controller.sdnotify import Notifier
from controller.status import Status
from controller.variables import VariableStore

log = logging.getLogger(__name__)


def reserved_names(cfg: Any) -> set[str]:
    """Ids a variable may not take: every meter, charger and input."""
    return {*cfg.meters, *cfg.chargers, *cfg.inputs}


class Service:
    def __init__(self, cfg: Any, *, clock: Clock | None = None, pin_factory: Any = None) -> None:
        self.cfg = cfg
        self.store = VariableStore(dict(cfg.variables), reserved=reserved_names(cfg))
        self._loop: ControlLoop | None = None
        self.hw: Hardware = build_hardware(cfg, on_edge=self._edge, pin_factory=pin_factory)
        self._loop = ControlLoop(cfg, self.hw, self.store, clock=clock)
        self._thread: threading.Thread | None = None
        self.notifier = Notifier()
        self._ready = False
        self._failed_cycles = 0
        self.loop.add_cycle_listener(self._notify_systemd)

    def _notify_systemd(self, status: Status) -> None:
        """READY after the first cycle, then WATCHDOG after every cycle that completed.

        Sent from the loop thread itself, so a loop that hangs (a stuck call, a deadlock) stops
        feeding systemd's watchdog and gets restarted, even though the process is alive.
        """
        completed = status.failed_cycles == self._failed_cycles
        self._failed_cycles = status.failed_cycles
        if not self._ready and completed:
            self._ready = True
            self.notifier.notify(f"READY=1\nSTATUS=control loop running, {len(self.hw.chargers)} charger(s)")
        elif completed:
            self.notifier.notify("WATCHDOG=1")

    @property
    def loop(self) -> ControlLoop:
        assert self._loop is not None
        return self._loop

    def _edge(self, input_id: str) -> None:
        if self._loop is not None:
            self._loop.wake(f"input {input_id} changed")

    def run(self) -> None:
        """Run the loop on this thread until ``stop()``; then release the hardware."""
        log.info("gridcharge running: %d meter(s), %d charger(s), %d input(s), cycle %.2f s",
                 len(self.hw.meters), len(self.hw.chargers), len(self.hw.inputs), self.cfg.site.cycle_s)
        try:
            self.loop.run_forever()
        finally:
            self.notifier.notify("STOPPING=1")
            self.hw.close()
            self.loop.executor.shutdown()

    def start(self) -> None:
        """Run the loop on a background thread (demo, tests)."""
        self._thread = threading.Thread(target=self.run, name="control-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.loop.stop(timeout_s=0)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
