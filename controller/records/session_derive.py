"""What makes a charging session, as pure functions: a charger's previous track and this
cycle's reading (or a box's own start/stop report) in, the new track and the session rows to
save out. No clock, no I/O, no locks: ``SessionRecorder`` feeds them and saves what they return.

**Boxes that report nothing (Modbus): ``step``**

- A session starts when a car is found connected (IEC B, C or D) and none is open: after state A,
  or at the controller's start with a car already connected and no open session in the file.
- It ends when the state returns to A (no car), at the time of that reading.
- E and F (no power, error) neither start nor end one; nor does a charger that is offline (no
  reading this cycle): its session goes on, and the register measures what was charged meanwhile.
- Energy: from the box's energy register (``energy_source = register``) when the box has one at
  the start, as the sum of its increases during the session. A register that goes backwards (a
  reset, a replaced box) adds nothing: its new value is the base from then on, so the energy is
  never negative and never counts the jump. A box without a register gets ``counted`` energy:
  power integrated over time (the reading's ``power_w``, else the phase currents × ``VOLTAGE_V``),
  trapezoids between readings, and nothing across a gap longer than ``max_gap_s`` (offline).
- An open session is saved when it starts, when it ends, and every ``progress_s`` while it
  lasts, so that a restart continues it: the track rebuilt from the saved row (``resume``) takes
  the next reading as the next step, connected (the session goes on; the register's increase
  while the controller was down is counted) or A (it ends at that reading).

**Boxes that report their own sessions (OCPP): ``box_event``**

- START opens a session with the box's meter value, idTag and transaction id; an open session of
  that charger (its STOP was lost) is closed first at that time (``stop_reason`` says so).
- STOP closes the charger's open session: energy = stop meter - start meter (None when either is
  missing or the difference is negative: a reset register is not a negative charge).
- A STOP without an open session (its START came before our restart and was never saved, or was
  lost) is still recorded: a session with an unknown start (``start_ts`` None) and unknown
  energy, so that the box's transaction is not silently missing from the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from controller.records.sessions import Session
from hal.types import ChargerReading, IecState, SessionEvent, SessionEventKind

log = logging.getLogger(__name__)

VOLTAGE_V = 230.0  # the nominal phase voltage for power from currents, where a box gives no power
PROGRESS_S = 300.0  # an open session is saved at least this often
MAX_GAP_S = 60.0  # counted energy is not integrated across a longer gap between readings

STOP_CAR_GONE = "car gone"
STOP_NEW_START = "a new session started without a stop"


@dataclass(frozen=True)
class Track:
    """A charger as the derivation remembers it between cycles."""

    session: Session | None = None  # the open session
    last_ts: float | None = None  # the time of the last reading (counted energy)
    last_power_w: float | None = None
    saved_ts: float | None = None  # when the open session was last handed out to be saved


def resume(session: Session | None) -> Track:
    """The track of a charger whose open session was read from the file at start."""
    return Track(session=session, saved_ts=None if session is None else session.updated_ts)


def reading_power_w(reading: ChargerReading) -> float:
    """What the car draws now, in W, never negative (for counted energy)."""
    power = reading.power_w if reading.power_w is not None else sum(reading.current_a) * VOLTAGE_V
    return max(0.0, power)


def _add_energy(track: Track, session: Session, reading: ChargerReading, ts: float,
                max_gap_s: float) -> Session:
    """The session with this reading's energy added (never less than before)."""
    energy = session.energy_wh or 0.0
    if session.energy_source == "register":
        now = reading.energy_wh
        if now is None:
            return session  # no register value this time: the next one measures the increase
        last = session.end_wh
        if last is not None and now < last:
            log.warning("charger %s: energy register went back from %.0f to %.0f Wh (reset or "
                        "replaced?); counting on from the new value", session.charger_id, last, now)
        elif last is not None:
            energy += now - last
        return replace(session, end_wh=now, energy_wh=energy, updated_ts=ts)
    power = reading_power_w(reading)
    if track.last_ts is not None and 0.0 < ts - track.last_ts <= max_gap_s:
        before = track.last_power_w if track.last_power_w is not None else power
        energy += (before + power) / 2.0 * (ts - track.last_ts) / 3600.0
    return replace(session, energy_wh=energy, updated_ts=ts)


def step(track: Track, reading: ChargerReading | None, ts: float, *, charger_id: str,
         new_id: Callable[[], int], progress_s: float = PROGRESS_S,
         max_gap_s: float = MAX_GAP_S) -> tuple[Track, tuple[Session, ...]]:
    """One cycle of a charger that does not report its sessions (module doc). ``reading`` None:
    the charger is offline. Returns the new track and the session rows to save."""
    if reading is None or reading.state in (IecState.E, IecState.F):
        return track, ()
    power = reading_power_w(reading)
    session = track.session
    if session is None:
        if not reading.state.connected:
            return Track(), ()
        register = reading.energy_wh
        started = Session(id=new_id(), charger_id=charger_id, start_ts=ts, end_ts=None,
                          start_wh=register, end_wh=register, energy_wh=0.0,
                          energy_source="register" if register is not None else "counted",
                          updated_ts=ts)
        return Track(started, ts, power, ts), (started,)
    session = _add_energy(track, session, reading, ts, max_gap_s)
    if reading.state is IecState.A:
        ended = replace(session, end_ts=ts, stop_reason=STOP_CAR_GONE, updated_ts=ts)
        return Track(), (ended,)
    if track.saved_ts is None or ts - track.saved_ts >= progress_s:
        return Track(session, ts, power, ts), (session,)
    return Track(session, ts, power, track.saved_ts), ()


def energy_so_far(session: Session, register_wh: float | None) -> float | None:
    """Wh charged so far in an open session: its own count (a derived session is counted every
    cycle), else the box's register now minus its register at the start (a box that reports
    its sessions gives its energy only at STOP); None when neither is known."""
    if session.energy_wh is not None:
        return session.energy_wh
    if session.start_wh is not None and register_wh is not None and register_wh >= session.start_wh:
        return register_wh - session.start_wh
    return None


def box_event(open_session: Session | None, event: SessionEvent,
              new_id: Callable[[], int]) -> tuple[Session | None, tuple[Session, ...]]:
    """A box's own START or STOP (module doc): the charger's open session afterwards (None when
    none) and the session rows to save."""
    if event.kind is SessionEventKind.START:
        closed: tuple[Session, ...] = ()
        if open_session is not None:
            closed = (replace(open_session, end_ts=event.ts, stop_reason=STOP_NEW_START,
                              updated_ts=event.ts),)
        started = Session(id=new_id(), charger_id=event.charger_id, start_ts=event.ts, end_ts=None,
                          start_wh=event.meter_wh, end_wh=None, energy_wh=None, energy_source="register",
                          id_tag=event.id_tag, transaction_id=event.transaction_id, updated_ts=event.ts)
        return started, (*closed, started)
    if open_session is None:
        unknown_start = Session(id=new_id(), charger_id=event.charger_id, start_ts=None, end_ts=event.ts,
                                start_wh=None, end_wh=event.meter_wh, energy_wh=None,
                                energy_source="register", id_tag=event.id_tag,
                                transaction_id=event.transaction_id, stop_reason=event.reason,
                                updated_ts=event.ts)
        return None, (unknown_start,)
    if (event.transaction_id is not None and open_session.transaction_id is not None
            and event.transaction_id != open_session.transaction_id):
        log.warning("charger %s: stop of transaction %s closes the open session of transaction %s",
                    event.charger_id, event.transaction_id, open_session.transaction_id)
    energy = None
    if event.meter_wh is not None and open_session.start_wh is not None:
        difference = event.meter_wh - open_session.start_wh
        energy = difference if difference >= 0 else None
    ended = replace(open_session, end_ts=event.ts, end_wh=event.meter_wh, energy_wh=energy,
                    id_tag=open_session.id_tag or event.id_tag,
                    transaction_id=open_session.transaction_id if open_session.transaction_id is not None
                    else event.transaction_id,
                    stop_reason=event.reason, updated_ts=event.ts)
    return None, (ended,)


__all__ = ["MAX_GAP_S", "PROGRESS_S", "STOP_CAR_GONE", "STOP_NEW_START", "Track", "VOLTAGE_V", "box_event", "energy_so_far",
           "reading_power_w", "resume", "step"]
