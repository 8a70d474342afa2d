"""The checks that span sections: what is wrong with a config beyond a single field.

Ids are valid and unique, a device's bus exists, a model is a profile of the right kind, two
devices do not share a unit on one bus, rules name real chargers, variables form no cycle; and,
from their own modules, the names formulas read (``names``) and what the profiles' facts
make implausible (``plausibility``). ``cross_problems`` runs them all.

They run on whatever part of the config validated (``parts.Parts``), field by field, so a
file with ten mistakes of different kinds gives ten messages in one run. A check that compares
fields skips a field that did not validate (``Parts.intact``): its own error says enough.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from controller import formulas
from controller.config.names import check_names
from controller.config.parts import Parts, compiled_formulas
from controller.config.plausibility import check_plausibility
from controller.config.problems import Loc, Problem
from controller.config.schema import (
    MAX_CURRENT_A,
    Loadpoint,
    GpioInputConfig,
    ModbusDeviceConfig,
    ModbusInputConfig,
    OcppChargerConfig,
    MQTT_RESERVED_LEVELS,
    RtuBus,
    RtuOverTcpBus,
    TcpBus,
    runs_through_smgw,
)
from hal.modbus import profile as profiles

ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
BUS_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # never a ':', so never an implicit "tcp:..." name
RTU_UNITS = range(1, 248)  # Modbus serial line: 0 is broadcast, 248..255 reserved

# --------------------------------------------------------------------------- cross-reference checks


def _check_ids(parts: Parts) -> Iterator[Problem]:
    """Ids are formula symbols (``M1.power_w``, ``RSE1``): valid names, unique across sections."""
    owner: dict[str, str] = {}
    for section in ("meters", "chargers", "inputs", "variables"):
        for name in sorted(parts.present[section]):
            try:
                if section != "variables" and not ID_RE.fullmatch(name):
                    raise formulas.FormulaError("an id is a letter, then letters, digits or _ (at most 64)")
                formulas.check_name(name)
            except formulas.FormulaError as exc:
                yield Problem((section, name), str(exc))
            if name in owner:
                yield Problem((section, name), f"id '{name}' is already used by {owner[name]}.{name}")
            else:
                owner[name] = section
    for name in sorted(parts.present["buses"]):
        if not BUS_NAME_RE.fullmatch(name):
            yield Problem(("buses", name), "a bus name is a letter, then letters, digits, _ or - (at most 64)")


def _check_site(parts: Parts) -> Iterator[Problem]:
    site = parts.site
    if site is None:
        return
    if site.grid_meter is not None and site.grid_meter not in parts.present["meters"]:
        what = "a charger, not a meter" if site.grid_meter in parts.present["chargers"] else "not a meter"
        yield Problem(("site", "grid_meter"), f"'{site.grid_meter}' is {what}")
    if parts.intact(("site",), "stale_s", "cycle_s") and site.stale_s < site.cycle_s:
        yield Problem(("site", "stale_s"), f"must be at least cycle_s ({site.cycle_s:g} s)")
    if parts.intact(("site",), "watchdog_s", "cycle_s") and site.watchdog_s < 2 * site.cycle_s:
        yield Problem(("site", "watchdog_s"), f"must be at least twice cycle_s ({2 * site.cycle_s:g} s)")


def _check_listeners(parts: Parts) -> Iterator[Problem]:
    http, smgw = parts.http, parts.smgw
    if http is not None and parts.intact(("http",), "password", "password_hash") \
            and (http.password is None) == (http.password_hash is None):
        yield Problem(("http", "password"), "give exactly one of password or password_hash")
    listens = parts.intact(("http",), "listen") and parts.intact(("smgw",), "listen")
    if http is not None and smgw is not None and listens and http.port == smgw.port:
        wildcard = {"0.0.0.0", "::"}
        if http.host == smgw.host or http.host in wildcard or smgw.host in wildcard:
            yield Problem(("smgw", "listen"), f"port {smgw.port} is already http.listen")
    if smgw is not None and len(set(smgw.functions)) != len(smgw.functions):
        yield Problem(("smgw", "functions"), "lists a function twice")
    if smgw is not None and not smgw.functions:
        yield Problem(("smgw", "functions"), "is empty: leave out the smgw section to switch the channel off")


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check_ocpp(parts: Parts) -> Iterator[Problem]:
    """OCPP boxes need the ``ocpp:`` section, each its own charge_box_id; TLS needs cert and key;
    a box reachable from the LAN without a password is allowed, but said."""
    server = parts.ocpp
    boxes = {i: c for i, c in parts.chargers.items() if isinstance(c, OcppChargerConfig)}
    if boxes and server is None:
        for charger_id in sorted(boxes):
            yield Problem(("chargers", charger_id, "model"), "model 'ocpp' needs the ocpp: section (listen: ...)")
    owners: dict[str, str] = {}
    for charger_id, box in boxes.items():
        path: Loc = ("chargers", charger_id)
        if parts.intact(path, "charge_box_id"):
            if box.charge_box_id in owners:
                yield Problem(path + ("charge_box_id",),
                              f"'{box.charge_box_id}' is already chargers.{owners[box.charge_box_id]}")
            owners.setdefault(box.charge_box_id, charger_id)
        if server is not None and box.password is None and parts.intact(path, "password") \
                and parts.intact(("ocpp",), "listen") and server.host not in _LOOPBACK:
            yield Problem(path + ("password",), f"none: anyone on the network can connect as "
                          f"'{box.charge_box_id}' (ocpp.listen is {server.listen})", True)
    if server is not None and parts.intact(("ocpp",), "cert", "key") and (server.cert is None) != (server.key is None):
        yield Problem(("ocpp", "cert" if server.cert is None else "key"), "give both cert and key (wss), or neither (ws)")
    if server is not None and parts.intact(("ocpp",), "listen"):
        wildcard = {"0.0.0.0", "::"}
        for name, other in (("http", parts.http), ("smgw", parts.smgw)):
            if other is None or not parts.intact((name,), "listen") or other.port != server.port:
                continue
            if other.host == server.host or other.host in wildcard or server.host in wildcard:
                yield Problem(("ocpp", "listen"), f"port {server.port} is already {name}.listen")


def _check_backend(parts: Parts) -> Iterator[Problem]:
    """The gateway to the supplier's backend: one charge point id per charger, client TLS as a
    pair, and through the SMGW only with ``ocpp`` among its functions (else it stays off: a
    warning, the rest of the site works)."""
    backend = parts.ocpp_backend
    owners: dict[str, str] = {}
    for charger_id, charger in sorted(parts.chargers.items()):
        if not parts.intact(("chargers", charger_id), "backend_id"):
            continue
        backend_id = charger.backend_id or charger_id
        if backend_id in owners:
            yield Problem(("chargers", charger_id, "backend_id"),
                          f"'{backend_id}' is already the backend id of chargers.{owners[backend_id]}")
        owners.setdefault(backend_id, charger_id)
    if backend is None:
        return
    if parts.intact(("ocpp_backend",), "cert", "key") and (backend.cert is None) != (backend.key is None):
        yield Problem(("ocpp_backend", "cert" if backend.cert is None else "key"),
                      "give both cert and key (a client certificate), or neither")
    if (backend.ca is not None or backend.cert is not None) and backend.url.startswith("ws://"):
        yield Problem(("ocpp_backend", "url"), "ws:// uses no TLS: ca, cert and key need a wss:// url")
    if not parts.intact(("ocpp_backend",), "proxy", "through_smgw") or not parts.intact(("smgw",), "functions"):
        return
    if backend.through_smgw and parts.smgw is None:
        yield Problem(("ocpp_backend", "through_smgw"), "true, but there is no smgw: section")
    elif runs_through_smgw(backend, parts.smgw) and parts.smgw is not None and "ocpp" not in parts.smgw.functions:
        yield Problem(("ocpp_backend",), "runs through the SMGW (proxy "
                      f"{backend.proxy or 'none'}), but smgw.functions does not list ocpp: the gateway "
                      "stays off (add ocpp to smgw.functions, or through_smgw: false)", True)
    if backend.password is not None and backend.url.startswith("ws://"):
        yield Problem(("ocpp_backend", "password"), "sent in clear text over ws://: use a wss:// url", True)


def _check_mqtt(parts: Parts) -> Iterator[Problem]:
    """The MQTT bridge: credentials and client TLS as pairs, topic trees that do not overlap,
    charger ids that are not topic levels of their own, and writable names that a set can
    really use (a name no formula reads is a warning: the set would change nothing)."""
    mqtt = parts.mqtt
    if mqtt is None:
        return
    path: Loc = ("mqtt",)
    if parts.intact(path, "user", "password") and mqtt.password is not None and mqtt.user is None:
        yield Problem(path + ("password",), "needs user (the broker's account name)")
    tls = mqtt.tls
    if tls is not None and parts.intact(path, "tls") and (tls.cert is None) != (tls.key is None):
        yield Problem(path + ("tls", "cert" if tls.cert is None else "key"),
                      "give both cert and key (a client certificate), or neither")
    if tls is None and mqtt.password is not None and parts.intact(path, "host", "tls", "password") \
            and mqtt.host not in _LOOPBACK:
        yield Problem(path + ("password",), f"sent in clear text to {mqtt.host}: add tls: (port 8883)", True)
    if mqtt.homeassistant and parts.intact(path, "prefix", "discovery_prefix"):
        a, b = mqtt.prefix, mqtt.discovery_prefix
        if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
            yield Problem(path + ("prefix",), f"'{a}' overlaps discovery_prefix '{b}': give them "
                          "separate topic trees")
    for charger_id in sorted(parts.present["chargers"] & MQTT_RESERVED_LEVELS):
        yield Problem(("chargers", charger_id), f"'{charger_id}' is an MQTT topic of its own "
                      f"(<prefix>/{charger_id}): give the charger another id")
    if not parts.intact(path, "writable"):
        return
    seen: set[str] = set()
    reserved = parts.present["meters"] | parts.present["chargers"] | parts.present["inputs"]
    for index, name in enumerate(mqtt.writable):
        where = path + ("writable", index)
        if name in seen:
            yield Problem(where, f"'{name}' is listed twice")
            continue
        seen.add(name)
        try:
            formulas.check_name(name, reserved)
        except formulas.FormulaError as exc:
            yield Problem(where, str(exc))
            continue
        if name not in parts.present["variables"]:
            yield Problem(where, f"'{name}' is not under variables: no formula reads it, so a set "
                          "over MQTT would change nothing", True)


def _check_buses(parts: Parts) -> Iterator[Problem]:
    ports: dict[str, str] = {}
    for name, bus in parts.buses.items():
        if isinstance(bus, RtuBus):
            if bus.port in ports:
                yield Problem(("buses", name, "port"), f"{bus.port} is already bus '{ports[bus.port]}'")
            ports.setdefault(bus.port, name)


def _check_address(parts: Parts, path: Loc, device: ModbusDeviceConfig) -> Iterator[Problem]:
    """bus XOR host; the bus exists; port only with host; RTU unit range; one connection per endpoint."""
    if not parts.intact(path, "bus", "host", "port"):
        return
    if device.bus is not None and device.host is not None:
        yield Problem(path + ("host",), "give either bus or host, not both")
        return
    if device.bus is None and device.host is None:
        yield Problem(path + ("bus",), "required: give bus (a name under buses) or host (a TCP device)")
        return
    if device.bus is not None:
        if device.port is not None:
            yield Problem(path + ("port",), "only with host (the bus has the port)")
        if device.bus not in parts.present["buses"]:
            known = ", ".join(sorted(parts.present["buses"])) or "none"
            yield Problem(path + ("bus",), f"no bus named '{device.bus}' (buses: {known})")
        bus = parts.buses.get(device.bus)
        if isinstance(bus, (RtuBus, RtuOverTcpBus)) and parts.intact(path, "unit") and device.unit not in RTU_UNITS:
            yield Problem(path + ("unit",), f"must be 1..247 on an RS485 bus, not {device.unit}")
        return
    endpoint = (str(device.host).lower(), device.tcp_port)
    for name, bus in parts.buses.items():
        if isinstance(bus, (TcpBus, RtuOverTcpBus)) and (bus.host.lower(), bus.port) == endpoint:
            yield Problem(path + ("host",), f"{device.host}:{device.tcp_port} is bus '{name}': write bus: {name} instead")


def _text(kind: Any) -> str:
    return str(getattr(kind, "value", kind))


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _check_model(parts: Parts, path: Loc, device: Any, kind: str) -> Iterator[Problem]:
    """A packaged model of the right kind, or an inline profile that validates."""
    if not parts.intact(path, "model", "profile"):
        return
    inline = getattr(device, "profile", None)
    if inline is not None and getattr(device, "model", None) is not None:
        yield Problem(path + ("profile",), "give either model or profile, not both")
        return
    if inline is not None:
        try:
            found = profiles.parse_profile(inline, ".".join(map(str, path + ("profile",)))).kind
        except profiles.ProfileError as exc:
            if not exc.errors:
                yield Problem(path + ("profile",), str(exc) or "not a valid profile")
            for message in exc.errors:  # "values.power_w.type: unknown type", path inside the profile
                inner, sep, reason = message.partition(": ")
                where = path + ("profile", *inner.split(".")) if sep else path + ("profile",)
                yield Problem(where, reason if sep else message)
            return
        if found != kind:
            yield Problem(path + ("profile", "kind"), f"is '{_text(found)}', but {_a(kind)} is needed here")
        return
    if device.model is None:
        names = ", ".join(profiles.PROFILE_NAMES)
        yield Problem(path + ("model",), f"required: give model (one of {names}) or profile")
        return
    if device.model not in profiles.PROFILE_NAMES:
        close = difflib.get_close_matches(device.model, profiles.PROFILE_NAMES, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(profiles.PROFILE_NAMES)}"
        yield Problem(path + ("model",), f"unknown model '{device.model}' ({hint})")
        return
    try:
        found = profiles.load_profile(device.model).kind
    except (profiles.ProfileError, OSError) as exc:  # a packaging bug, but say so rather than crash
        yield Problem(path + ("model",), f"packaged profile '{device.model}' cannot be loaded: {exc}")
        return
    if found != kind:
        reason = f"'{device.model}' is {_a(_text(found))} profile, but {_a(kind)} is needed here"
        yield Problem(path + ("model",), reason)


def _check_devices(parts: Parts) -> Iterator[Problem]:
    units: dict[tuple[str, int], str] = {}
    modbus_chargers = {i: c for i, c in parts.chargers.items() if isinstance(c, ModbusDeviceConfig)}
    for section, kind, items in (("meters", "meter", parts.meters), ("chargers", "charger", modbus_chargers)):
        for device_id, device in items.items():
            path: Loc = (section, device_id)
            address = list(_check_address(parts, path, device))
            yield from address
            yield from _check_model(parts, path, device, kind)
            if address or not parts.intact(path, "bus", "host", "port", "unit"):
                continue
            key = (device.bus_name, device.unit)
            if key in units:
                reason = f"unit {device.unit} on bus '{device.bus_name}' is already {units[key]}"
                yield Problem(path + ("unit",), reason)
            else:
                units[key] = ".".join(path)
    for charger_id, charger in parts.chargers.items():
        yield from _check_charger(parts, ("chargers", charger_id), charger)


def _check_charger(parts: Parts, path: Loc, charger: Loadpoint) -> Iterator[Problem]:
    if parts.intact(path, "phases") and charger.phases == 3 and "phase" in charger.model_fields_set:
        yield Problem(path + ("phase",), "only for a 1-phase charger (phases: 1)")
    maximum = charger.max_current_a
    if isinstance(maximum, (int, float)) and parts.intact(path, "max_current_a"):
        if maximum > MAX_CURRENT_A:
            yield Problem(path + ("max_current_a",), f"must be at most {MAX_CURRENT_A:g} A")
        if parts.intact(path, "min_current_a") and maximum < charger.min_current_a:
            reason = f"{maximum:g} A is below min_current_a ({charger.min_current_a:g} A)"
            yield Problem(path + ("max_current_a",), reason)
        elif parts.intact(path, "failsafe_current_a") and charger.failsafe_current_a > maximum:
            reason = f"{charger.failsafe_current_a:g} A is above max_current_a ({maximum:g} A)"
            yield Problem(path + ("failsafe_current_a",), reason)


def _check_inputs(parts: Parts) -> Iterator[Problem]:
    pins: dict[int, str] = {}
    for input_id, item in parts.inputs.items():
        path: Loc = ("inputs", input_id)
        if isinstance(item, GpioInputConfig):
            if not parts.intact(path, "gpio"):
                continue
            if item.gpio in pins:
                yield Problem(path + ("gpio",), f"GPIO {item.gpio} is already inputs.{pins[item.gpio]}")
            pins.setdefault(item.gpio, input_id)
            continue
        yield from _check_address(parts, path, item)
        model_problems = list(_check_model(parts, path, item, "input"))
        yield from model_problems
        if not parts.intact(path, "discrete_input", "coil"):
            continue
        if (item.discrete_input is None) == (item.coil is None):
            yield Problem(path + ("discrete_input",), "give exactly one of discrete_input or coil")
        elif not model_problems and parts.intact(path, "model"):
            yield from _check_input_index(path, item)


def _check_input_index(path: Loc, item: ModbusInputConfig) -> Iterator[Problem]:
    """The index must exist on the module (its profile declares how many inputs it has)."""
    spec = getattr(profiles.load_profile(item.model), "inputs", None)
    count = getattr(spec, "count", None)
    if isinstance(count, int) and item.index >= count:
        key = "coil" if item.coil is not None else "discrete_input"
        yield Problem(path + (key,), f"{item.index} is beyond the {count} inputs of '{item.model}' (counted from 0)")


def _check_rules(parts: Parts) -> Iterator[Problem]:
    names: dict[str, int] = {}
    for index, rule in sorted(parts.rules.items()):
        path: Loc = ("rules", index)
        if parts.intact(path, "name"):
            if rule.name in names:
                yield Problem(path + ("name",), f"duplicate rule name '{rule.name}' (also rules.{names[rule.name]})")
            names.setdefault(rule.name, index)
        if rule.chargers is not None and not rule.chargers:
            yield Problem(path + ("chargers",), "is empty: leave it out to mean all chargers")
        for position, charger_id in enumerate(rule.chargers or ()):
            if charger_id not in parts.present["chargers"]:
                yield Problem(path + ("chargers", position), f"no charger named '{charger_id}'")
        if parts.intact(path, "max_current_a", "max_power_w") and (rule.max_current_a is None) == (rule.max_power_w is None):
            yield Problem(path + ("max_current_a",), "give exactly one of max_current_a or max_power_w")


def _check_variable_count(parts: Parts) -> Iterator[Problem]:
    """The config's variables fit under ``max_variables``: the store would refuse to add any."""
    count = len(parts.present["variables"])
    if parts.max_variables is not None and count > parts.max_variables:
        yield Problem(("variables",), f"{count} variables, more than max_variables ({parts.max_variables})")


def _check_cycles(parts: Parts) -> Iterator[Problem]:
    """Variables must not depend on each other in a cycle: none of them could ever be evaluated."""
    variable_formulas = {path[1]: f for path, f in compiled_formulas(parts) if path[0] == "variables"}
    try:
        formulas.evaluation_order(variable_formulas)
    except formulas.FormulaError as exc:
        yield Problem(("variables",), str(exc))


_CHECKS = (
    _check_ids, _check_site, _check_listeners, _check_ocpp, _check_backend, _check_buses, _check_devices, _check_inputs, _check_rules,
    check_names, _check_cycles, _check_variable_count, check_plausibility, _check_mqtt,
)


def cross_problems(parts: Parts) -> list[Problem]:
    """Every problem that spans sections (errors and warnings), from whatever part of the config
    validated."""
    return [problem for check in _CHECKS for problem in check(parts)]
