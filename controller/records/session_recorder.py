"""Fills the session log from the two places sessions come from: each control cycle's status
(chargers that report nothing: the session rules of ``session_derive.step``) and the sessions a
box reports itself (``record_event``, the ``on_session`` callback of ``build_hardware``).

Thread safety: ``on_cycle`` runs on the loop thread, ``record_event`` on whatever thread the
box's driver runs (OCPP: its asyncio thread). Both only take this recorder's lock for a few
comparisons and hand rows to ``SessionLog.save``, which appends to a queue: neither ever waits
for the disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from controller.records.session_derive import Track, box_event, energy_so_far, resume, step
from controller.records.sessions import Session, SessionLog
from controller.status import ChargerStatus, Status
from hal.types import ChargerReading, SessionEvent

log = logging.getLogger(__name__)


def charger_reading(charger: ChargerStatus) -> ChargerReading | None:
    """This cycle's reading of a charger, None while it is offline (its last reading is old)."""
    device = charger.device
    if not device.online or not isinstance(device.reading, ChargerReading):
        return None
    return device.reading


class SessionRecorder:
    """Derives and records the sessions of every charger (module doc). Sessions left open in the
    file at start are continued: those of reporting boxes wait for their STOP, the others for
    the next cycle's reading."""

    def __init__(self, sessions: SessionLog, *, reporting: Iterable[str] = ()) -> None:
        self._log = sessions
        self._lock = threading.Lock()
        self._reporting = frozenset(reporting)
        left_open = sessions.open_sessions()
        self._tracks: dict[str, Track] = {cid: resume(s) for cid, s in left_open.items()}
        self._box_open: dict[str, Session] = dict(left_open)
        self._row_listeners: list[Callable[[Session], None]] = []
        self._last_energy: dict[str, float | None] = {}  # each charger's last ended session (this run)

    def add_row_listener(self, callback: Callable[[Session], None]) -> None:
        """Called with every session row handed to the log, on the thread that made it (the
        gateway to the supplier's backend turns them into transactions); it must not block."""
        self._row_listeners.append(callback)

    def attach(self, loop: _CycleSource, reporting: Iterable[str]) -> None:
        """Know which chargers report their own sessions, and listen to the loop's cycles."""
        with self._lock:
            self._reporting = frozenset(reporting)
        loop.add_cycle_listener(self.on_cycle)

    def on_cycle(self, status: Status) -> None:
        """The loop's cycle listener: one ``step`` per charger that reports no sessions itself."""
        for charger in status.chargers:
            charger_id = charger.device.id
            with self._lock:
                if charger_id in self._reporting:
                    continue
                track, rows = step(self._tracks.get(charger_id, Track()), charger_reading(charger),
                                   status.wall_time, charger_id=charger_id, new_id=self._log.new_id)
                self._tracks[charger_id] = track
            self._save(rows)

    def record_event(self, event: SessionEvent) -> None:
        """A box's own START or STOP (any thread; never blocks on the disk)."""
        with self._lock:
            open_session, rows = box_event(self._box_open.get(event.charger_id), event, self._log.new_id)
            if open_session is None:
                self._box_open.pop(event.charger_id, None)
            else:
                self._box_open[event.charger_id] = open_session
        self._save(rows)

    def session_energy_wh(self, status: Status) -> dict[str, float | None]:
        """Each charger's session energy now, in Wh, for the live views (MQTT): the open
        session's (one derived here is counted every cycle; a box's own is its register now
        minus its register at the start, None when either is unknown), else the energy of its
        last session since the service started (until the next car arrives), else 0."""
        out: dict[str, float | None] = {}
        with self._lock:
            for charger in status.chargers:
                charger_id = charger.device.id
                box = self._box_open.get(charger_id) if charger_id in self._reporting else None
                track = self._tracks.get(charger_id) if charger_id not in self._reporting else None
                session = box if box is not None else track.session if track is not None else None
                if session is not None:
                    reading = charger_reading(charger)
                    out[charger_id] = energy_so_far(session, reading.energy_wh if reading is not None else None)
                else:
                    out[charger_id] = self._last_energy.get(charger_id, 0.0)
        return out

    def open_sessions(self) -> dict[str, Session]:
        """Each charger's open session as it is now (any thread): the status page shows its
        energy so far. A derived session's energy is this cycle's; a box's own has none until
        its STOP."""
        with self._lock:
            derived = {cid: track.session for cid, track in self._tracks.items()
                       if track.session is not None and cid not in self._reporting}
            reported = {cid: session for cid, session in self._box_open.items() if cid in self._reporting}
        return {**derived, **reported}

    def save_open(self) -> None:
        """Save every open session as it is now (at stop: the energy since the last save)."""
        with self._lock:
            rows = [track.session for cid, track in self._tracks.items()
                    if track.session is not None and cid not in self._reporting]
        self._save(rows)

    def _save(self, rows: Iterable[Session]) -> None:
        for session in rows:
            if not session.open:
                with self._lock:
                    self._last_energy[session.charger_id] = session.energy_wh
            self._log.save(session)
            for listener in self._row_listeners:
                listener(session)


class _CycleSource(Protocol):
    """What ``attach`` needs of the control loop (``ControlLoop.add_cycle_listener``)."""

    def add_cycle_listener(self, callback: Callable[[Status], None]) -> None: ...


__all__ = ["SessionRecorder", "charger_reading"]
