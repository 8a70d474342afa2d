"""The site's state as MQTT topics and payloads: a pure function of the loop's ``Status``.

Every value is its own retained topic with a plain-text payload (docs/mqtt.md has the table), so
that Home Assistant, Node-RED or ``mosquitto_sub`` read it without a template:

- numbers in the unit the topic's name ends with: whole W and Wh, A with three decimals (the
  same milliamperes ``get_dev_info`` shows, so the two always agree);
- ``None`` for a value that is not known now (a device offline or in a fault, a limit that is
  not set): Home Assistant shows that as "unknown", never as a made-up 0;
- ``ON``/``OFF`` for yes/no (Home Assistant's binary sensor defaults).

The names of the topics live in ``TopicNames`` so that the payloads, the discovery configs and
the subscriptions cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.status import ChargerStatus, DeviceStatus, Status

NONE = "None"  # Home Assistant's payload for "unknown" (sensors and binary sensors)
ON, OFF = "ON", "OFF"
ONLINE, OFFLINE = "online", "offline"
OFFLINE_STATE = "offline"  # a charger's state while it cannot be read (the get_dev_info word)
NO_FAILSAFE = "none"  # failsafe_reason while the fail-safe limit is not in force

PHASES = ("l1", "l2", "l3")
#: Topics under ``<prefix>/site/``, in the order of docs/mqtt.md.
SITE_KEYS = ("grid_power_w", *(f"grid_current_{p}_a" for p in PHASES), "grid_limit_w", "chargers_limit_w",
             "power_headroom_w", "chargers_power_w", "failsafe", "failsafe_reason")
#: Topics under ``<prefix>/<charger>/``.
CHARGER_KEYS = ("state", "power_w", *(f"current_{p}_a" for p in PHASES), "limit_a", "lreason",
                "session_energy_wh")


@dataclass(frozen=True)
class TopicNames:
    """Every topic gridcharge publishes or listens to, from the ``mqtt:`` section's prefixes."""

    prefix: str
    discovery_prefix: str = "homeassistant"

    @property
    def status(self) -> str:
        """``online``/``offline``, retained; ``offline`` is also the last will."""
        return f"{self.prefix}/status"

    def site(self, key: str) -> str:
        return f"{self.prefix}/site/{key}"

    def input(self, input_id: str) -> str:
        return f"{self.prefix}/site/input/{input_id}"

    def variable(self, name: str) -> str:
        """The value in force of a writable variable (the state of its Home Assistant number)."""
        return f"{self.prefix}/site/var/{name}"

    def charger(self, charger_id: str, key: str) -> str:
        return f"{self.prefix}/{charger_id}/{key}"

    def set(self, name: str) -> str:
        return f"{self.prefix}/set/{name}"

    def set_error(self, name: str) -> str:
        """Why the last set of ``name`` was refused (not retained; below ``set/+``'s reach)."""
        return f"{self.prefix}/set/{name}/error"

    @property
    def set_filter(self) -> str:
        return f"{self.prefix}/set/+"

    def set_name(self, topic: str) -> str | None:
        """The variable a ``<prefix>/set/<VAR>`` topic names, None for any other topic."""
        head = f"{self.prefix}/set/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        return name if name and "/" not in name else None

    # ---- Home Assistant discovery ------------------------------------------------------------
    @property
    def ha_status(self) -> str:
        """Where Home Assistant says ``online`` when it starts (then the configs are sent again)."""
        return f"{self.discovery_prefix}/status"

    @property
    def node_id(self) -> str:
        """The prefix as a discovery node id (letters, digits, ``_`` and ``-`` only)."""
        return object_id(self.prefix)

    def config(self, component: str, object_name: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_name}/config"

    @property
    def config_filter(self) -> str:
        """Every discovery config of this node: the retained ones that are not ours any more are
        deleted (a charger taken out of the config, a variable no longer writable)."""
        return f"{self.discovery_prefix}/+/{self.node_id}/+/config"

    def is_config(self, topic: str) -> bool:
        parts = topic.split("/")
        head = self.discovery_prefix.split("/")
        n = len(head)
        return (len(parts) == n + 4 and parts[:n] == head and parts[n + 1] == self.node_id
                and parts[n + 3] == "config")


def object_id(text: str) -> str:
    """``text`` with every character Home Assistant does not allow in an id replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


# ---------------------------------------------------------------------------- payloads


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def whole(value: float | None) -> str:
    """W and Wh: a whole number, ``None`` when unknown."""
    number = _finite(value)
    return NONE if number is None else str(int(round(number)))


def amperes(value: float | None) -> str:
    """A with three decimals: the milliamperes ``get_dev_info`` shows, divided by 1000."""
    number = _finite(value)
    return NONE if number is None else f"{int(round(number * 1000)) / 1000:.3f}"


def on_off(value: bool | None) -> str:
    return NONE if value is None else (ON if value else OFF)


def number(value: object) -> str:
    """A variable's value: as it is (``75``, ``0.5``), ``1``/``0`` for true/false, ``None`` for
    anything that is not a finite number."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    finite = _finite(value)
    if finite is None:
        return NONE
    return str(int(finite)) if finite.is_integer() and abs(finite) <= 1e15 else repr(finite)


def _live_reading(device: DeviceStatus, field: str) -> object | None:
    """The reading while the device is healthy (``get_dev_info``'s rule), else None."""
    reading = device.reading if device.error is None else None
    return reading if hasattr(reading, field) else None


def _phase_values(names: TopicNames, topic: str, currents: tuple[float, float, float] | None,
                  base: Iterable[str]) -> dict[str, str]:
    values = currents if currents is not None else (None, None, None)
    return {names.site(key) if topic == "site" else names.charger(topic, key): amperes(value)
            for key, value in zip(base, values)}


def site_payloads(status: Status, names: TopicNames) -> dict[str, str]:
    """``<prefix>/site/...``: the grid, the limits in force, the fail-safe, the inputs."""
    powers = [_finite(getattr(_live_reading(c.device, "power_w"), "power_w", None)) for c in status.chargers]
    known = [p for p in powers if p is not None]
    out = {
        names.site("grid_power_w"): whole(status.grid_power_w),
        **_phase_values(names, "site", status.grid_current_a, (f"grid_current_{p}_a" for p in PHASES)),
        names.site("grid_limit_w"): whole(status.grid_limit_w),
        names.site("chargers_limit_w"): whole(status.chargers_limit_w),
        names.site("power_headroom_w"): whole(status.power_headroom_w),
        names.site("chargers_power_w"): whole(sum(known)) if known else NONE,
        names.site("failsafe"): on_off(status.failsafe is not None),
        names.site("failsafe_reason"): status.failsafe if status.failsafe is not None else NO_FAILSAFE,
    }
    for device in status.inputs:
        reading = _live_reading(device, "active")
        out[names.input(device.id)] = on_off(bool(getattr(reading, "active")) if reading is not None else None)
    return out


def charger_payloads(charger: ChargerStatus, names: TopicNames, session_energy_wh: float | None) -> dict[str, str]:
    """``<prefix>/<charger>/...``: what the box does, what it may draw and why."""
    cid = charger.device.id
    live = _live_reading(charger.device, "state")
    state = getattr(live, "state", None)
    return {
        names.charger(cid, "state"): state.label if state is not None else OFFLINE_STATE,
        names.charger(cid, "power_w"): whole(getattr(live, "power_w", None)),
        **_phase_values(names, cid, getattr(live, "current_a", None), (f"current_{p}_a" for p in PHASES)),
        names.charger(cid, "limit_a"): amperes(charger.command_a),
        names.charger(cid, "lreason"): str(charger.reason),
        names.charger(cid, "session_energy_wh"): whole(session_energy_wh),
    }


def variable_payloads(status: Status, names: TopicNames, writable: Iterable[str]) -> dict[str, str]:
    """``<prefix>/site/var/<VAR>``: the value in force of each writable variable (``None`` while
    it has none: not set, or its formula fails)."""
    values = {v.name: v.value for v in status.variables if v.error is None}
    return {names.variable(name): number(values.get(name)) for name in writable}


def state_payloads(status: Status, names: TopicNames, *, session_energy_wh: Mapping[str, float | None],
                   writable: Iterable[str] = ()) -> dict[str, str]:
    """Every state topic with its payload for one cycle's status (the bridge publishes only the
    ones that changed)."""
    out = site_payloads(status, names)
    for charger in status.chargers:
        out.update(charger_payloads(charger, names, session_energy_wh.get(charger.device.id)))
    out.update(variable_payloads(status, names, writable))
    return out
