"""Wire one running controller together: variables (restored from the state directory),
hardware, control loop, the variable saver, the grid signal log, the session log and systemd
notification.

``gridcharge run`` and ``gridcharge demo`` build a ``Service``; the HTTP listeners (``web``) hang
off it from the command line (``web.runtime``), reading ``status()`` and writing through
``store``, and are stopped through ``add_stop_hook`` before the loop's last cycle ends.

**All or nothing at start.** The constructor first proves the state directory writable
(``statedir.check_writable``), loads the saved variables and opens the grid log and the session
log (a corrupt or foreign file in any is kept aside and replaced, with a status fault); only then
does it build
the hardware. When the state cannot be used it raises ``StartError`` (one line), before anything
listens or talks to a device, and ``gridcharge run`` exits with it.

**Faults outside the loop.** The loop's ``Status`` knows the devices and formulas; the state
directory (failing saves, a file kept aside), the grid log (failing writes, lost rows, the
size budget) and the session log (failing writes, lost rows) report through ``faults()``, and ``status()`` is the loop's status with those lines
appended to ``faults``: what the API shows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.backend.gateway import Gateway
from controller.build import build_hardware
from controller.records.backend_outbox import BackendOutbox
from controller.hardware import Hardware
from controller.history import History
from controller.clock import Clock
from controller.records.gridlog import GridLog, GridLogFileError, GridSignalRecorder
from controller.loop import ControlLoop
from controller.records.session_recorder import SessionRecorder
from controller.records.sessions import SessionLog
from controller.records.sqlite_file import RecordFileError
from controller.records.persistence import SavedVariables, VariableFile, VariableSaver, initial_variables
from controller.sdnotify import Notifier
from controller.mqtt.bridge import MqttBridge, charger_devices
from controller.version import version
from controller.records.statedir import BACKEND_OUTBOX_FILE, GRID_LOG_FILE, SESSIONS_FILE, check_writable, one_line
from controller.status import Status
from controller.records.variables import VariableStore

if TYPE_CHECKING:
    from controller.config import Config

log = logging.getLogger(__name__)


class StartError(Exception):
    """The state directory, the grid log or the session log cannot be used; ``str()`` is one
    line saying why."""


class Service:
    """One controller. Raises StartError when the state directory cannot be used (see above)."""

    def __init__(self, cfg: Config, *, clock: Clock | None = None, pin_factory: Any = None) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        self.variable_file = VariableFile(self.state_dir)
        self.grid_log = GridLog(self.state_dir / GRID_LOG_FILE, max_bytes=cfg.grid_log.max_bytes)
        self.sessions = SessionLog(self.state_dir / SESSIONS_FILE)
        self.outbox = BackendOutbox(self.state_dir / BACKEND_OUTBOX_FILE) if cfg.ocpp_backend is not None else None
        try:
            check_writable(self.state_dir)
            try:
                saved = self.variable_file.load()
            except OSError as exc:
                raise StartError(f"{self.variable_file.path} is unusable and cannot be kept aside: "
                                 f"{one_line(exc)}") from exc
            self.grid_log.open()
            self.sessions.open()
            if self.outbox is not None:
                self.outbox.open()
        except (OSError, GridLogFileError, RecordFileError) as exc:
            self.grid_log.close()
            self.sessions.close()
            raise StartError(str(exc)) from exc
        try:
            self._build(cfg, saved, clock, pin_factory)
        except BaseException:
            self.grid_log.close()
            self.sessions.close()
            if self.outbox is not None:
                self.outbox.close()
            raise

    def _build(self, cfg: Config, saved: SavedVariables | None, clock: Clock | None,
               pin_factory: Any) -> None:
        reserved = cfg.device_ids  # a variable may not take a device's or an input's name
        initial = initial_variables(dict(cfg.variables), saved, reserved=reserved)
        self.store = VariableStore(initial, reserved=reserved, max_variables=cfg.max_variables)
        self.saver = VariableSaver(self.variable_file, self.store)
        self._loop: ControlLoop | None = None
        self.session_recorder = SessionRecorder(self.sessions)
        self._sessions_closed = False
        self.hw: Hardware = build_hardware(cfg, on_event=self._device_event,
                                           on_session=self.session_recorder.record_event,
                                           pin_factory=pin_factory)
        self._loop = ControlLoop(cfg, self.hw, self.store, clock=clock)
        GridSignalRecorder(self.grid_log).attach(self.store, self.loop)
        self.session_recorder.attach(self.loop, reporting=[cid for cid, handle in self.hw.chargers.items()
                                                          if handle.reports_sessions])
        self._stop_hooks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self.notifier = Notifier()
        self._ready = False
        self._failed_cycles = 0
        self.loop.add_cycle_listener(self._notify_systemd)
        self.gateway: Gateway | None = None
        if cfg.ocpp_backend is not None and self.outbox is not None:
            self.gateway = Gateway(cfg, self.outbox, self.sessions, record=self._record_backend,
                                   wake_loop=self.loop.wake,
                                   models={cid: h.model for cid, h in self.hw.chargers.items()})
            self.session_recorder.add_row_listener(self.gateway.on_session)
            self.loop.add_cap_source(self.gateway.caps)
            self.loop.add_cycle_listener(self.gateway.on_cycle)
        self.mqtt: MqttBridge | None = None  # the MQTT bridge (docs/mqtt.md): after the session recorder
        if cfg.mqtt is not None:
            self.mqtt = MqttBridge(cfg.mqtt, store=self.store, chargers=charger_devices(cfg), inputs=tuple(cfg.inputs),
                                   version=version(), session_energy_wh=self.session_recorder.session_energy_wh)
            self.loop.add_cycle_listener(self.mqtt.on_cycle)
        self.history = History(voltage_v=cfg.site.voltage_v)  # the status page's 24 h chart
        self.loop.add_cycle_listener(self.history.on_cycle)

    def _record_backend(self, kind: str, name: str, old: object, new: object, source: str) -> None:
        """A change the backend made to a charger's cap, in the grid log (with the grid power now)."""
        self.grid_log.record(kind, name, old, new, source, self.loop.status.grid_power_w)

    def faults(self) -> tuple[str, ...]:
        """Status lines of the state directory, the grid log and the session log (empty when all
        is well)."""
        kept = self.variable_file.set_aside_note
        outbox = self.outbox.faults() if self.outbox is not None else ()
        mqtt = self.mqtt.faults() if self.mqtt is not None else ()
        return ((kept,) if kept else ()) + self.saver.faults() + self.grid_log.faults() + self.sessions.faults() \
            + outbox + mqtt

    def status(self) -> Status:
        """The loop's latest status with ``faults()`` appended to its ``faults``."""
        status = self.loop.status
        extra = self.faults()
        if self.gateway is not None:
            status = replace(status, backend=self.gateway.status())
        return replace(status, faults=status.faults + extra) if extra else status

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

    def _device_event(self, device_id: str) -> None:
        """A device pushed news (a GPIO edge; later a message from a box): a cycle at once."""
        if self._loop is not None:
            self._loop.wake(f"event from {device_id}")

    def run(self) -> None:
        """Run the loop on this thread until ``stop()``; then release the hardware."""
        log.info("gridcharge running: %d meter(s), %d charger(s), %d input(s), cycle %.2f s",
                 len(self.hw.meters), len(self.hw.chargers), len(self.hw.inputs), self.cfg.site.cycle_s)
        try:
            self.grid_log.start()
            self.sessions.start()
            if self.gateway is not None:
                self.gateway.start()
            if self.mqtt is not None:
                self.mqtt.start()
            self.saver.start()
            self.loop.run_forever()
        finally:
            self.notifier.notify("STOPPING=1")
            self.close()

    def close(self) -> None:
        """Release everything: stop hooks first, then flush the saver, the grid log and the session
        log (open sessions saved as they are now: a restart continues them), then the hardware. Idempotent; ``run()`` ends with it, tests that drive cycles by hand call it."""
        hooks, self._stop_hooks = self._stop_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("stop hook %r failed", hook)
        if self.gateway is not None:
            self.gateway.close()  # before the session log closes: it sets backend transaction ids there
        if self.mqtt is not None:
            self.mqtt.close()  # the last cycle's state, then offline (retained)
        self.saver.stop()  # flushes a pending save, also when never started
        self.grid_log.close()  # writes what is queued when its writer runs (under run())
        if not self._sessions_closed:  # once: a second close must not save into a closed log
            self._sessions_closed = True
            self.session_recorder.save_open()
            self.sessions.close()
        if self.outbox is not None:
            self.outbox.close()
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
