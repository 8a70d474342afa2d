"""Home Assistant MQTT discovery: one retained config per entity, so the site appears in Home
Assistant by itself (docs/mqtt.md, "See it in Home Assistant").

A pure function of the configuration: the same site gives byte-for-byte the same configs, so
sending them again (at every connect and whenever Home Assistant announces ``online``) changes
nothing in Home Assistant. The layout:

- a device "gridcharge" for the site: grid power and currents, the limits in force, the power
  left, the chargers' power, the fail-safe (a ``problem`` binary sensor and its reason), each
  ripple-control input, and a ``number`` for each variable in ``mqtt.writable`` (its
  ``command_topic`` is ``<prefix>/set/<VAR>``);
- a device per charger (linked to the site's through ``via_device``): state, power, currents,
  the current it may draw, why, and the open session's energy;
- every entity is unavailable while gridcharge is (``<prefix>/status``, its last will).

Units and classes are the pairs Home Assistant accepts (power in W, current in A, energy in Wh
with ``total_increasing``: a new session starting at 0 is a reset, not a negative charge).
``unique_id`` is ``<node>_<object>``, the node being the prefix: two controllers on one broker
need two prefixes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.formulas import MAX_ABS_NUMBER
from controller.mqtt.topics import OFFLINE_STATE, PHASES, TopicNames, object_id
from hal.types import IecState

#: The step of a writable variable's number entity: fine enough for any limit or price.
NUMBER_STEP = 0.01
#: Every state a charger's ``state`` topic can hold (an ``enum`` sensor lists them).
CHARGER_STATES = (*(s.label for s in IecState), OFFLINE_STATE)


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: where its value is and how Home Assistant should show it."""

    component: str  # "sensor" | "binary_sensor" | "number"
    key: str  # the topic's last level, and the object id's
    name: str
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    precision: int | None = None  # suggested_display_precision
    category: str | None = None  # entity_category ("diagnostic")
    options: tuple[str, ...] | None = None  # an enum sensor's states


def _power(key: str, name: str) -> Entity:
    return Entity("sensor", key, name, "power", "measurement", "W", 0)


def _current(key: str, name: str) -> Entity:
    return Entity("sensor", key, name, "current", "measurement", "A", 1)


SITE_ENTITIES = (
    _power("grid_power_w", "Grid power"),
    *(_current(f"grid_current_{p}_a", f"Grid current {p.upper()}") for p in PHASES),
    _power("grid_limit_w", "Grid limit"),
    _power("chargers_limit_w", "Chargers limit"),
    _power("power_headroom_w", "Power headroom"),
    _power("chargers_power_w", "Chargers power"),
    Entity("binary_sensor", "failsafe", "Fail-safe", device_class="problem"),
    Entity("sensor", "failsafe_reason", "Fail-safe reason", category="diagnostic"),
)

CHARGER_ENTITIES = (
    Entity("sensor", "state", "State", device_class="enum", options=CHARGER_STATES),
    _power("power_w", "Power"),
    *(_current(f"current_{p}_a", f"Current {p.upper()}") for p in PHASES),
    _current("limit_a", "Current limit"),
    Entity("sensor", "lreason", "Limit reason"),
    Entity("sensor", "session_energy_wh", "Session energy", "energy", "total_increasing", "Wh", 0),
)


@dataclass(frozen=True)
class ChargerDevice:
    """What Home Assistant's device registry shows of a charger."""

    model: str
    manufacturer: str = ""


def _config(entity: Entity, unique_id: str, state_topic: str, device: dict[str, Any],
            common: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entity.name, "unique_id": unique_id, "state_topic": state_topic,
                           **common, "device": device}
    for key, value in (("device_class", entity.device_class), ("state_class", entity.state_class),
                       ("unit_of_measurement", entity.unit), ("suggested_display_precision", entity.precision),
                       ("entity_category", entity.category)):
        if value is not None:
            out[key] = value
    if entity.options is not None:
        out["options"] = list(entity.options)
    return out


def discovery_configs(names: TopicNames, *, chargers: Mapping[str, ChargerDevice], inputs: Iterable[str],
                      writable: Iterable[str], version: str) -> dict[str, str]:
    """Config topic → JSON payload for every entity of the site (see the module text)."""
    node = names.node_id
    common = {"availability_topic": names.status,
              "origin": {"name": "gridcharge", "sw_version": version}}
    site_name = "gridcharge" if names.prefix == "gridcharge" else f"gridcharge {names.prefix}"
    site_device = {"identifiers": [node], "name": site_name, "manufacturer": "gridcharge",
                   "model": "EV charging manager", "sw_version": version}
    configs: dict[str, dict[str, Any]] = {}

    def add(entity: Entity, object_name: str, state_topic: str, device: dict[str, Any]) -> None:
        configs[names.config(entity.component, object_name)] = _config(
            entity, f"{node}_{object_name}", state_topic, device, common)

    for entity in SITE_ENTITIES:
        add(entity, f"site_{entity.key}", names.site(entity.key), site_device)
    for input_id in inputs:
        add(Entity("binary_sensor", input_id, f"Input {input_id}"), f"input_{object_id(input_id)}",
            names.input(input_id), site_device)
    for charger_id, info in chargers.items():
        device = {"identifiers": [f"{node}_{object_id(charger_id)}"], "name": f"Wallbox {charger_id}",
                  "model": info.model, "via_device": node}
        if info.manufacturer:
            device["manufacturer"] = info.manufacturer
        for entity in CHARGER_ENTITIES:
            add(entity, f"charger_{object_id(charger_id)}_{entity.key}", names.charger(charger_id, entity.key),
                device)
    for name in writable:
        object_name = f"variable_{object_id(name)}"
        configs[names.config("number", object_name)] = {
            "name": name, "unique_id": f"{node}_{object_name}", "state_topic": names.variable(name),
            "command_topic": names.set(name), **common, "device": site_device,
            "min": -MAX_ABS_NUMBER, "max": MAX_ABS_NUMBER, "step": NUMBER_STEP, "mode": "box",
        }
    return {topic: json.dumps(config, sort_keys=True, separators=(",", ":")) for topic, config in configs.items()}
