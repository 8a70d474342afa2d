"""Wire one running controller together: variables (restored from the state directory),
hardware, control loop, the variable saver, the grid signal log and systemd notification.

``gridcharge run`` and ``gridcharge demo`` build a ``Service``; the HTTP listeners (``web``) hang
off it from the command line (``web.runtime``), reading ``loop.status`` and writing through
``store``, and are stopped through ``add_stop_hook`` before the loop's last cycle ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.build import Hardware, build_hardware
from controller.clock import Clock
from controller.gridlog import GridLog, GridSignalRecorder
from controller.loop import ControlLoop
from controller.persistence import VariableFile, VariableSaver, initial_variables
from controller.sdnotify import Notifier
from controller.status import Status
from controller.variables import VariableStore

log = logging.getLogger(__name__)


GRID_LOG_FILE = "gridlog.sqlite3"


class Service:
    """One controller. Raises OSError when the state directory cannot be created or used."""

    def __init__(self, cfg: Any, *, clock: Clock | None = None, pin_factory: Any = None) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.variable_file = VariableFile(self.state_dir)
        reserved = cfg.device_ids  # a variable may not take a device's or an input's name
        initial = initial_variables(dict(cfg.variables), self.variable_file.load(), reserved=reserved)
        self.store = VariableStore(initial, reserved=reserved, max_variables=cfg.max_variables)
        self.saver = VariableSaver(self.variable_file, self.store)
        self._loop: ControlLoop | None = None
        self.hw: Hardware = build_hardware(cfg, on_edge=self._edge, pin_factory=pin_factory)
        self._loop = ControlLoop(cfg, self.hw, self.store, clock=clock)
        self.grid_log = GridLog(self.state_dir / GRID_LOG_FILE)
        GridSignalRecorder(self.grid_log).attach(self.store, self.loop)
        self._stop_hooks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._background = False  # saver and grid log threads run (only under run())
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
            message = f"READY=1\nSTATUS=control loop running, {len(self.hw.chargers)} charger(s)"
            watchdog_s = self.notifier.watchdog_s  # half of WatchdogSec=
            if watchdog_s is not None and 2 * watchdog_s < 3 * self.cfg.site.cycle_s:
                # A slow cycle must not look like a hung loop: allow three cycles between pings.
                message += f"\nWATCHDOG_USEC={int(3 * self.cfg.site.cycle_s * 1e6)}"
            self.notifier.notify(message)
        elif completed:
            self.notifier.notify("WATCHDOG=1")

    @property
    def loop(self) -> ControlLoop:
        assert self._loop is not None
        return self._loop

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """Called first when the service stops (the HTTP listeners), before the final writes."""
        self._stop_hooks.append(hook)

    def _edge(self, input_id: str) -> None:
        if self._loop is not None:
            self._loop.wake(f"input {input_id} changed")

    def run(self) -> None:
        """Run the loop on this thread until ``stop()``; then release the hardware."""
        log.info("gridcharge running: %d meter(s), %d charger(s), %d input(s), cycle %.2f s",
                 len(self.hw.meters), len(self.hw.chargers), len(self.hw.inputs), self.cfg.site.cycle_s)
        self.grid_log.start()
        self.saver.start()
        self._background = True
        try:
            self.loop.run_forever()
        finally:
            self.notifier.notify("STOPPING=1")
            self.close()

    def close(self) -> None:
        """Release everything: stop hooks first, then flush the saver and the grid log, then the
        hardware. Idempotent; ``run()`` ends with it, tests that drive cycles by hand call it."""
        hooks, self._stop_hooks = self._stop_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("stop hook %r failed", hook)
        self.saver.stop()  # flushes a pending save, also when never started
        if self._background:
            self.grid_log.stop()
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
