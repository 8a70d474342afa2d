"""What is wrong with a config beyond a single field, and how every problem is reported.

This module owns:

- ``Problem`` (a path into the config and a reason) and ``ConfigError``, which carries every problem
  as ``path.to.field: reason`` sorted by path; the YAML reader and the field validation report in
  the same shape, so one run of ``gridcharge check-config`` lists everything;
- the checks that span sections: ids are valid and unique, a device's bus exists, a model is a
  profile of the right kind, two devices do not share a unit on one bus, rules name real chargers,
  formulas name real devices and variables form no cycle.

It is separate from the schema (``config_schema``) because these checks need the whole config at
once, and they still run on the items that validated when others did not (``Parts.salvage``): a
file with three mistakes gives three messages, not one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from controller import formulas
from controller.config_schema import (
    MAX_CURRENT_A,
    BusConfig,
    ChargerConfig,
    Config,
    GpioInputConfig,
    Http,
    InputConfig,
    MeterConfig,
    ModbusDeviceConfig,
    ModbusInputConfig,
    Rule,
    RtuBus,
    MaxVariables,
    RtuOverTcpBus,
    Site,
    Smgw,
    TcpBus,
    VariableValue,
)
from controller.variables import DEFAULT_MAX_VARIABLES
from hal import profile as profiles

ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
BUS_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # never a ':', so never an implicit "tcp:..." name
RTU_UNITS = range(1, 248)  # Modbus serial line: 0 is broadcast, 248..255 reserved

# --------------------------------------------------------------------------- problems

Loc = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: where (keys and list indexes) and why, in plain words."""

    path: Loc
    message: str

    def render(self) -> str:
        where = ".".join(str(part) for part in self.path) if self.path else "top level"
        return f"{where}: {self.message}"


def _sort_key(problem: Problem) -> tuple[Any, ...]:
    parts = tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in problem.path)
    return parts, problem.message


class ConfigError(Exception):
    """The configuration is unusable. ``errors`` lists every problem as ``path: reason``."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = errors
        self.source = source
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  {e}" for e in errors))


def raise_if(problems: Iterable[Problem], source: str) -> None:
    """Raise one ConfigError with every distinct problem, sorted by path (list indexes numerically)."""
    unique = sorted(set(problems), key=_sort_key)
    if unique:
        raise ConfigError([p.render() for p in unique], source)


# --------------------------------------------------------------------------- cross-reference checks


@dataclass
class Parts:
    """The sections that validated, item by item, so that cross-reference checks run even when
    some other item is broken (a file with three mistakes gives three messages)."""

    site: Site | None
    http: Http | None
    smgw: Smgw | None
    buses: dict[str, Any]
    meters: dict[str, MeterConfig]
    chargers: dict[str, ChargerConfig]
    inputs: dict[str, Any]
    variables: dict[str, Any]
    rules: dict[int, Rule]
    present: dict[str, frozenset[str]]  # raw keys per section: what exists, valid or not
    max_variables: int | None = None  # None: the value given is invalid (reported by the schema)

    @classmethod
    def of(cls, cfg: Config) -> Parts:
        present = {s: frozenset(getattr(cfg, s)) for s in ("buses", "meters", "chargers", "inputs", "variables")}
        return cls(cfg.site, cfg.http, cfg.smgw, cfg.buses, cfg.meters, cfg.chargers, cfg.inputs,
                   cfg.variables, dict(enumerate(cfg.rules)), present, cfg.max_variables)

    @classmethod
    def salvage(cls, data: Mapping[str, Any]) -> Parts:
        sections = {name: data.get(name) for name in _ITEM_ADAPTERS}
        good = {name: _good_items(adapter, sections[name]) for name, adapter in _ITEM_ADAPTERS.items()}
        raw_rules = data.get("rules")
        rules = dict(enumerate(raw_rules)) if isinstance(raw_rules, list) else {}
        present = {n: frozenset(k for k in s if isinstance(k, str)) if isinstance(s, Mapping) else frozenset()
                   for n, s in sections.items()}
        return cls(_good(Site, data.get("site")), _good(Http, data.get("http")), _good(Smgw, data.get("smgw")),
                   good["buses"], good["meters"], good["chargers"], good["inputs"], good["variables"],
                   _good_items(_RULE, rules), present, _good_max_variables(data))


_ITEM_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "buses": TypeAdapter(BusConfig),
    "meters": TypeAdapter(MeterConfig),
    "chargers": TypeAdapter(ChargerConfig),
    "inputs": TypeAdapter(InputConfig),
    "variables": TypeAdapter(VariableValue),
}
_RULE = TypeAdapter(Rule)
_MAX_VARIABLES = TypeAdapter(MaxVariables)


def _good_max_variables(data: Mapping[str, Any]) -> int | None:
    try:
        return int(_MAX_VARIABLES.validate_python(data.get("max_variables", DEFAULT_MAX_VARIABLES)))
    except ValidationError:
        return None


def _good(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw) if raw is not None else None
    except ValidationError:
        return None


def dangling_bus_references(data: Mapping[str, Any], parts: Parts) -> Iterator[Problem]:
    """``bus:`` references of devices that failed validation for another reason.

    A device with a bad formula still gets its unknown bus reported, so one run of check-config
    lists every mistake (the checks on valid devices report the rest)."""
    for section in ("meters", "chargers", "inputs"):
        raw = data.get(section)
        good = getattr(parts, section)
        for dev_id, item in (raw.items() if isinstance(raw, Mapping) else ()):
            if dev_id in good or not isinstance(item, Mapping):
                continue
            bus = item.get("bus")
            if isinstance(bus, str) and bus not in parts.present["buses"]:
                known = ", ".join(sorted(parts.present["buses"])) or "none"
                yield Problem((section, dev_id, "bus"), f"no bus named '{bus}' (buses: {known})")


def _good_items(adapter: TypeAdapter[Any], raw: Any) -> dict[Any, Any]:
    result = {}
    for key, value in (raw.items() if isinstance(raw, Mapping) else ()):
        try:
            result[key] = adapter.validate_python(value)
        except ValidationError:
            pass
    return result


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
    if site.stale_s < site.cycle_s:
        yield Problem(("site", "stale_s"), f"must be at least cycle_s ({site.cycle_s:g} s)")
    if site.watchdog_s < 2 * site.cycle_s:
        yield Problem(("site", "watchdog_s"), f"must be at least twice cycle_s ({2 * site.cycle_s:g} s)")


def _check_listeners(parts: Parts) -> Iterator[Problem]:
    http, smgw = parts.http, parts.smgw
    if http is not None and (http.password is None) == (http.password_hash is None):
        yield Problem(("http", "password"), "give exactly one of password or password_hash")
    if http is not None and smgw is not None and http.port == smgw.port:
        wildcard = {"0.0.0.0", "::"}
        if http.host == smgw.host or http.host in wildcard or smgw.host in wildcard:
            yield Problem(("smgw", "listen"), f"port {smgw.port} is already http.listen")
    if smgw is not None and len(set(smgw.functions)) != len(smgw.functions):
        yield Problem(("smgw", "functions"), "lists a function twice")
    if smgw is not None and not smgw.functions:
        yield Problem(("smgw", "functions"), "is empty: leave out the smgw section to switch the channel off")


def _check_buses(parts: Parts) -> Iterator[Problem]:
    ports: dict[str, str] = {}
    for name, bus in parts.buses.items():
        if isinstance(bus, RtuBus):
            if bus.port in ports:
                yield Problem(("buses", name, "port"), f"{bus.port} is already bus '{ports[bus.port]}'")
            ports.setdefault(bus.port, name)


def _check_address(parts: Parts, path: Loc, device: ModbusDeviceConfig) -> Iterator[Problem]:
    """bus XOR host; the bus exists; port only with host; RTU unit range; one connection per endpoint."""
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
        if isinstance(bus, (RtuBus, RtuOverTcpBus)) and device.unit not in RTU_UNITS:
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


def _check_model(path: Loc, device: Any, kind: str) -> Iterator[Problem]:
    """A packaged model of the right kind, or an inline profile that validates."""
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
    for section, kind, items in (("meters", "meter", parts.meters), ("chargers", "charger", parts.chargers)):
        for device_id, device in items.items():
            path: Loc = (section, device_id)
            address = list(_check_address(parts, path, device))
            yield from address
            yield from _check_model(path, device, kind)
            if address:
                continue
            key = (device.bus_name, device.unit)
            if key in units:
                reason = f"unit {device.unit} on bus '{device.bus_name}' is already {units[key]}"
                yield Problem(path + ("unit",), reason)
            else:
                units[key] = ".".join(path)
    for charger_id, charger in parts.chargers.items():
        yield from _check_charger(("chargers", charger_id), charger)


def _check_charger(path: Loc, charger: ChargerConfig) -> Iterator[Problem]:
    if charger.phases == 3 and "phase" in charger.model_fields_set:
        yield Problem(path + ("phase",), "only for a 1-phase charger (phases: 1)")
    maximum = charger.max_current_a
    if isinstance(maximum, (int, float)):
        if maximum > MAX_CURRENT_A:
            yield Problem(path + ("max_current_a",), f"must be at most {MAX_CURRENT_A:g} A")
        if maximum < charger.min_current_a:
            reason = f"{maximum:g} A is below min_current_a ({charger.min_current_a:g} A)"
            yield Problem(path + ("max_current_a",), reason)
        elif charger.failsafe_current_a > maximum:
            reason = f"{charger.failsafe_current_a:g} A is above max_current_a ({maximum:g} A)"
            yield Problem(path + ("failsafe_current_a",), reason)


def _check_inputs(parts: Parts) -> Iterator[Problem]:
    pins: dict[int, str] = {}
    for input_id, item in parts.inputs.items():
        path: Loc = ("inputs", input_id)
        if isinstance(item, GpioInputConfig):
            if item.gpio in pins:
                yield Problem(path + ("gpio",), f"GPIO {item.gpio} is already inputs.{pins[item.gpio]}")
            pins.setdefault(item.gpio, input_id)
            continue
        yield from _check_address(parts, path, item)
        model_problems = list(_check_model(path, item, "input"))
        yield from model_problems
        if (item.discrete_input is None) == (item.coil is None):
            yield Problem(path + ("discrete_input",), "give exactly one of discrete_input or coil")
        elif not model_problems:
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
        if rule.name in names:
            yield Problem(path + ("name",), f"duplicate rule name '{rule.name}' (also rules.{names[rule.name]})")
        names.setdefault(rule.name, index)
        if rule.chargers is not None and not rule.chargers:
            yield Problem(path + ("chargers",), "is empty: leave it out to mean all chargers")
        for position, charger_id in enumerate(rule.chargers or ()):
            if charger_id not in parts.present["chargers"]:
                yield Problem(path + ("chargers", position), f"no charger named '{charger_id}'")
        if (rule.max_current_a is None) == (rule.max_power_w is None):
            yield Problem(path + ("max_current_a",), "give exactly one of max_current_a or max_power_w")


def _formula_fields(parts: Parts) -> Iterator[tuple[Loc, Any]]:
    """Every formula of the config with its path (constants included)."""
    if parts.site is not None:
        yield ("site", "grid_limit_w"), parts.site.grid_limit_w
        yield ("site", "chargers_limit_w"), parts.site.chargers_limit_w
    for charger_id, charger in parts.chargers.items():
        yield ("chargers", charger_id, "max_current_a"), charger.max_current_a
    for index, rule in parts.rules.items():
        for name in ("when", "max_current_a", "max_power_w"):
            yield ("rules", index, name), getattr(rule, name)
    for name, value in parts.variables.items():
        yield ("variables", name), value


def compiled_formulas(parts: Parts) -> Iterator[tuple[Loc, formulas.Formula]]:
    """Every formula string of the config, compiled, with its path (config_warnings reads them too)."""
    for path, value in _formula_fields(parts):
        if isinstance(value, str):
            try:
                yield path, formulas.compile_formula(value)
            except formulas.FormulaError:
                pass  # already reported by the field's own validation


def _check_variable_count(parts: Parts) -> Iterator[Problem]:
    """The config's variables fit under ``max_variables``: the store would refuse to add any."""
    count = len(parts.present["variables"])
    if parts.max_variables is not None and count > parts.max_variables:
        yield Problem(("variables",), f"{count} variables, more than max_variables ({parts.max_variables})")


def _check_formulas(parts: Parts) -> Iterator[Problem]:
    """``X.attr`` needs a device X: a variable never has attributes, so it is a typo, not a name
    that may be defined later. Variables must not depend on each other in a cycle."""
    devices = parts.present["meters"] | parts.present["chargers"] | parts.present["inputs"]
    for path, formula in compiled_formulas(parts):
        for name in sorted(formula.names):
            owner = name.split(".", 1)[0]
            if "." in name and owner not in devices:
                yield Problem(path, f"'{name}': no device named '{owner}'")
    variable_formulas = {path[1]: f for path, f in compiled_formulas(parts) if path[0] == "variables"}
    try:
        formulas.evaluation_order(variable_formulas)
    except formulas.FormulaError as exc:
        yield Problem(("variables",), str(exc))


_CHECKS = (
    _check_ids, _check_site, _check_listeners, _check_buses, _check_devices, _check_inputs, _check_rules,
    _check_formulas, _check_variable_count,
)


def cross_problems(parts: Parts) -> list[Problem]:
    """Every problem that spans sections, from whatever part of the config validated."""
    return [problem for check in _CHECKS for problem in check(parts)]
