"""``get_dev_info``: the published ``Status`` in the shape and units of the cFos call (docs/api.md).

Pure: a ``Status`` in, a JSON-ready dict out. Units are cFos units: currents in mA (integers),
power in W, energy in Wh, voltage in V, times in ms or s as named.

Decisions where the cFos documentation is silent (also in docs/api.md):

- ``params.max_total_current`` (mA) is the per-phase current the main fuse leaves for the
  chargers this cycle: the lowest of the three phases of ``Status.headroom_a`` (fuse minus the
  house's own load on that phase minus the reserve of silent chargers). The power limits in force
  are ``grid_limit_w``, ``chargers_limit_w`` and ``power_headroom_w``; before the first cycle it
  is 0 and ``failsafe`` says "not started".
- A value a device does not report, or cannot report now (offline, fault), is ``null``, never a
  made-up 0: a grid operator must not read a stale current as a live one. ``state`` 6 and
  ``com_err`` say that a device is offline; ``com_err_secs`` how long.
- ``name`` is the device id (the config has no display names), ``dev_type`` is ``evse_<model>``,
  ``meter_<model>`` or ``input_<model>``, ``model`` is the profile name.
- ``last_set_charging_cur`` is -1 before the first write (the cFos convention).
- Extras of ours, beside those docs/api.md lists: params ``power_headroom_w``, ``grid_power_w``,
  ``limiting``, ``faults``, ``failed_cycles``, ``time`` (unix, as cFos); per device ``age_s``
  (seconds since the last good reading); per charger ``used_phases`` (cFos bitmask L1=1 L2=2
  L3=4), ``override_cur`` (mA or null) and ``assigned_cur`` (mA, what the allocation decided),
  ``state_text`` (``C (charging)``, or ``offline``: the words ``gridcharge read`` and the status
  view use, from ``IecState.label``) and ``state_raw`` (the vendor's own code, e.g. 7 or "C2").
- Added for ``gridcharge status``, which must show the grid per phase against the fuse without
  knowing which meter is the grid meter: params ``grid_current_l1``..``grid_current_l3`` (mA, the
  grid meter's currents this cycle, null without a reading) and ``main_fuse_cur`` (mA, the
  config's ``main_fuse_a``; null when the caller does not know it); per charger ``iec_state``
  (``"A"``..``"F"``, null while offline), because cFos ``state`` 5 is both E and F.
- Added for the status page: per charger ``session_energy`` (Wh charged in the session open now,
  null when none is open or its energy is not known yet), from the session recorder's open
  sessions. A box that reports its own sessions (OCPP) says its energy only at the stop; until
  then it is the box's register now minus the register at the start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from controller.cfos import CFOS_OFFLINE, cfos_state
from controller.records.sessions import Session
from controller.records.session_derive import energy_so_far
from controller.status import BackendStatus, ChargerStatus, DeviceStatus, Status

OFFLINE_STATE = CFOS_OFFLINE
OFFLINE_TEXT = "offline"


def _finite(value: float | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def milliamps(current_a: float | None) -> int | None:
    value = _finite(current_a)
    return None if value is None else int(round(value * 1000))


def whole(value: float | None) -> int | None:
    """Rounded to an integer (W, Wh), None when unknown or not finite."""
    number = _finite(value)
    return None if number is None else int(round(number))


def _tenth(value: float | None) -> float | None:
    number = _finite(value)
    return None if number is None else round(number, 1)


def _phases(values: tuple[float, float, float] | None, convert: Any, prefix: str) -> dict[str, Any]:
    items = values if values is not None else (None, None, None)
    return {f"{prefix}_l{i + 1}": convert(v) for i, v in enumerate(items)}


def _common(dev: DeviceStatus, kind: str) -> dict[str, Any]:
    return {
        "dev_id": dev.id,
        "dev_type": f"{kind}_{dev.model}",
        "model": dev.model,
        "name": dev.id,
        "address": dev.address,
        "device_enabled": 1,
        "com_err": dev.error is not None,
        "com_err_secs": int(dev.error_s) if dev.error is not None else 0,
        "last_error": dev.error or "",
        "age_s": _tenth(dev.age_s),
    }


def _live(dev: DeviceStatus, field: str) -> Any:
    """The reading when it is current, None while the device is in a fault.

    Read by attribute (``field`` proves the kind of reading): the web layer does not import
    ``hal``, where the reading types live.
    """
    reading = dev.reading if dev.error is None else None
    return reading if hasattr(reading, field) else None


def session_energy_wh(session: Session | None, register_wh: float | None) -> float | None:
    """Wh charged so far in an open session (see the module docstring), None when not known."""
    if session is None or not session.open:
        return None
    return energy_so_far(session, register_wh)


def charger_info(ch: ChargerStatus, session: Session | None = None) -> dict[str, Any]:
    dev = ch.device
    live = _live(dev, "state")
    out = _common(dev, "evse")
    out.update(
        is_evse=True,
        state=cfos_state(live.state) if live is not None else OFFLINE_STATE,
        state_text=live.state.label if live is not None else OFFLINE_TEXT,
        state_raw=live.raw_state if live is not None else None,
        iec_state=live.state.value if live is not None else None,
        **_phases(live.current_a if live is not None else None, milliamps, "current"),
        cur_charging_power=whole(live.power_w) if live is not None else None,
        total_energy=whole(live.energy_wh) if live is not None else None,
        charging_enabled=ch.enabled,
        paused=ch.paused,
        last_set_charging_cur=milliamps(ch.written_a) if ch.written_a is not None else -1,
        min_charging_cur=milliamps(ch.min_current_a),
        max_charging_cur=milliamps(ch.max_current_a),
        prio=ch.priority,
        lreason=str(ch.reason),
        used_phases=7 if ch.phases == 3 else 1 << ch.phase,
        override_cur=milliamps(ch.override_a),
        assigned_cur=milliamps(ch.command_a),
        session_energy=whole(session_energy_wh(session, live.energy_wh if live is not None else None)),
    )
    return out


def meter_info(dev: DeviceStatus) -> dict[str, Any]:
    live = _live(dev, "import_wh")
    out = _common(dev, "meter")
    out.update(
        is_evse=False,
        power_w=whole(live.power_w) if live is not None else None,
        **{"import": whole(live.import_wh) if live is not None else None},
        export=whole(live.export_wh) if live is not None else None,
        **_phases(live.current_a if live is not None else None, milliamps, "current"),
        **_phases(live.voltage_v if live is not None else None, _tenth, "voltage"),
    )
    return out


def input_info(dev: DeviceStatus) -> dict[str, Any]:
    live = _live(dev, "active")
    return {
        "id": dev.id,
        "active": live.active if live is not None else None,
        "com_err": dev.error is not None,
        "com_err_secs": int(dev.error_s) if dev.error is not None else 0,
        "last_error": dev.error or "",
        "dev_type": f"input_{dev.model}",
        "address": dev.address,
    }


def params(status: Status, version: str, main_fuse_a: float | None = None) -> dict[str, Any]:
    headroom = [_finite(a) for a in status.headroom_a]
    known = [a for a in headroom if a is not None]
    return {
        "max_total_current": milliamps(min(known)) if known else None,
        "cycle_time": int(round(status.cycle_time_s * 1000)) if _finite(status.cycle_time_s) is not None else None,
        "version": version,
        "time": whole(status.wall_time),
        "grid_limit_w": whole(status.grid_limit_w),
        "chargers_limit_w": whole(status.chargers_limit_w),
        "power_headroom_w": whole(status.power_headroom_w),
        "grid_power_w": whole(status.grid_power_w),
        "failsafe": status.failsafe,
        "limiting": list(status.limiting),
        "faults": list(status.faults),
        "overruns": status.overruns,
        "failed_cycles": status.failed_cycles,
        "cycle_count": status.cycle_count,
        "main_fuse_cur": milliamps(main_fuse_a),
        **_phases(status.grid_current_a, milliamps, "grid_current"),
        **({"backend": backend_info(status.backend)} if status.backend is not None else {}),
    }


def backend_info(backend: BackendStatus) -> dict[str, Any]:
    """params ``backend``: the gateway to the supplier's OCPP backend, one entry per charger."""
    return {
        "url": backend.url,
        "proxy": backend.proxy,
        "enabled": backend.enabled,
        "reason": backend.reason,
        "connected": backend.connected,
        "charge_points": len(backend.charge_points),
        "dropped": backend.dropped,
        "chargers": {cp.charger_id: {
            "backend_id": cp.backend_id,
            "connected": cp.connected,
            "state": cp.state,
            "reason": cp.reason,
            "since": whole(cp.since),
            "queued": cp.queued,
            "ocpp_status": cp.ocpp_status,
            "transaction_id": cp.transaction_id,
            "cap": milliamps(cp.cap_a),
            "cap_reason": cp.cap_reason,
        } for cp in backend.charge_points},
    }


def dev_info(status: Status, version: str, *, main_fuse_a: float | None = None,
             sessions: Mapping[str, Session] | None = None) -> dict[str, Any]:
    """The ``get_dev_info`` body: ``{"params": ..., "devices": [...], "inputs": [...]}``.

    Devices are the chargers, then the meters, each in config order (as the loop publishes them).
    ``main_fuse_a`` is the config's fuse (the status does not carry it): ``params.main_fuse_cur``.
    ``sessions``: each charger's open session (``session_energy``; None: not known).
    """
    open_now = sessions or {}
    devices = [charger_info(ch, open_now.get(ch.device.id)) for ch in status.chargers] \
        + [meter_info(m) for m in status.meters]
    return {
        "params": params(status, version, main_fuse_a),
        "devices": devices,
        "inputs": [input_info(i) for i in status.inputs],
    }
