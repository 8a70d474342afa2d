"""The configuration file (docs/configuration.md): the entry points that read, validate and warn.

``load_config()`` reads ``/etc/gridcharge/config.yaml``, ``parse_config()`` validates a dict, and
``config_warnings()`` lists what is odd but usable: what only the target machine has (serial
ports, TLS files, GPIO), so a config can be checked on a laptop before it goes to the Pi, and
what the device profiles make implausible. Every problem of every stage is collected and
reported at once, each as ``path.to.field: reason`` sorted by path, because an electrician at the
meter cabinet wants one run of ``gridcharge check-config`` to list everything.

The work is split by stage; this module runs them in order and turns pydantic's errors into
readable problems (unknown keys get a "did you mean"):

- ``reader``: the YAML reader (``hal.strict_yaml``: it refuses YAML 1.1's silent guesses and
  duplicate keys) turning its findings into problems;
- ``schema``: field types, the frozen section models and ``Config``;
- ``parts``: what validated, field by field, when the whole did not;
- ``checks``: the checks that span sections, with ``names`` (every name a formula reads exists)
  and ``plausibility`` (the profiles' facts);
- ``problems``: ``Problem`` and ``ConfigError``, the one shape every stage reports in.

Other modules import from ``controller.config``, which re-exports the names below.
Build a ``Config`` only through ``load_config()`` or ``parse_config()``: ``Config.model_validate()``
alone checks each field but not the rules that span sections.
"""

from __future__ import annotations

import difflib
import glob
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from controller.config.checks import cross_problems
from controller.config.parts import Parts
from controller.config.problems import ConfigError, Loc, Problem, raise_if, rendered
from controller.config.schema import (
    BUS_MODELS,
    IEC_MIN_CURRENT_A,
    MAX_CURRENT_A,
    CHARGER_MODELS,
    BusConfig,
    ChargerConfig,
    Config,
    GpioInputConfig,
    GridLogConfig,
    Http,
    InputConfig,
    Loadpoint,
    MeterConfig,
    ModbusChargerConfig,
    ModbusDeviceConfig,
    ModbusInputConfig,
    Mqtt,
    OcppChargerConfig,
    OcppServer,
    Rule,
    RtuBus,
    RtuOverTcpBus,
    Site,
    Smgw,
    TcpBus,
    all_buses,
    charger_model,
    device_profile,
    devices_on_bus,
    implicit_bus_name,
    implicit_buses,
    input_kind,
    modbus_devices,
    split_listen,
)
from controller.config.reader import read_yaml

__all__ = [
    "BUS_MODELS", "CHARGER_MODELS", "IEC_MIN_CURRENT_A", "MAX_CURRENT_A", "BusConfig", "ChargerConfig", "Config",
    "ConfigError", "GpioInputConfig", "GridLogConfig", "Http", "InputConfig", "Loadpoint", "MeterConfig",
    "ModbusChargerConfig", "ModbusDeviceConfig", "ModbusInputConfig", "OcppChargerConfig", "OcppServer", "Rule", "RtuBus", "RtuOverTcpBus", "Site",
    "Smgw", "TcpBus", "all_buses", "charger_model", "config_warnings", "device_profile", "devices_on_bus",
    "implicit_bus_name", "implicit_buses", "load_config", "modbus_devices", "parse_config", "split_listen",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- pydantic errors


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's bookkeeping: union tags (``buses.X.rtu.port``) and ``[key]`` markers."""
    parts = [part for part in loc if part != "[key]"]
    if len(parts) >= 3 and parts[0] in ("buses", "inputs"):
        del parts[2]
    return tuple(parts)


_SECTION_MODELS: dict[str, type[BaseModel]] = {"site": Site, "http": Http, "smgw": Smgw,
                                               "ocpp": OcppServer, "grid_log": GridLogConfig, "mqtt": Mqtt}
_ITEM_MODELS: dict[str, type[BaseModel]] = {"meters": MeterConfig, "rules": Rule}


def _model_at(parent: Loc, data: Mapping[str, Any]) -> type[BaseModel] | None:
    """The model whose keys live at ``parent`` (to suggest the key that was meant)."""
    if not parent:
        return Config
    if len(parent) == 1:
        return _SECTION_MODELS.get(str(parent[0]))
    if len(parent) != 2:
        return None
    section, key = parent
    if section in _ITEM_MODELS:
        return _ITEM_MODELS[section]
    raw = data.get(section)
    raw = raw.get(key) if isinstance(raw, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    if section == "chargers":
        return charger_model(raw)
    if section == "buses":
        return BUS_MODELS.get(str(raw.get("type")))
    if section == "inputs":
        return GpioInputConfig if input_kind(raw) == "gpio" else ModbusInputConfig
    return None


def _unknown_key(loc: Loc, data: Mapping[str, Any]) -> str:
    model = _model_at(loc[:-1], data)
    if model is None:
        return "unknown key"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return f"unknown key (allowed: {', '.join(allowed)})"


_MAPPING_ERRORS = {"dict_type", "model_type", "model_attributes_type"}


def _pydantic_problems(exc: ValidationError, data: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc, kind, ctx = _clean_loc(error["loc"]), error["type"], error.get("ctx", {})
        message = error["msg"]
        if kind == "extra_forbidden":
            message = _unknown_key(loc, data)
        elif kind == "missing":
            message = "required, but missing"
        elif kind in _MAPPING_ERRORS:
            message = "must be a mapping (key: value)"
        elif kind in ("list_type", "tuple_type"):
            message = "must be a list"
        elif kind == "union_tag_invalid" and loc[:1] == ("buses",):
            loc, message = loc + ("type",), f"unknown bus type '{ctx.get('tag')}' (rtu, tcp or rtu-over-tcp)"
        elif kind == "union_tag_not_found" and loc[:1] == ("buses",):
            loc, message = loc + ("type",), "required, but missing (rtu, tcp or rtu-over-tcp)"
        for noise in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(noise)
        problems.append(Problem(loc, message))
    return problems


# --------------------------------------------------------------------------- public entry points


def _validate(data: Any, source: str, yaml_problems: list[Problem], void: set[Loc]) -> Config:
    """The config, or ConfigError with every error of every stage (and the warnings beside them)."""
    if not isinstance(data, Mapping):
        what = {type(None): "empty", list: "a list", str: "text", int: "a number", float: "a number"}.get(
            type(data), type(data).__name__)
        raise ConfigError([f"top level: must be a mapping of sections (site:, buses:, ...), not {what}"], source)
    problems = list(yaml_problems)
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        for problem in _pydantic_problems(exc, data):
            if not any(problem.path[: len(v)] == v for v in void):  # the YAML message says it better
                problems.append(problem)
    parts = Parts.of(cfg) if cfg is not None else Parts.salvage(data)
    problems += cross_problems(parts)
    if cfg is None or any(not p.warning for p in problems):
        raise_if(problems + _machine_warnings(parts, _GPIOCHIPS), source)
    assert cfg is not None
    return cfg


def parse_config(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Validate a config given as a dict (tests, the simulator's generated site). Raises ConfigError."""
    return _validate(data, source, [], set())


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file. Raises ConfigError listing every problem found."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"top level: cannot read the file: {exc.strerror or exc}"], source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (save the file as UTF-8)"], source) from None
    data, yaml_problems, void = read_yaml(text, source)
    cfg = _validate(data, source, yaml_problems, void)
    log.debug("config %s: %d meters, %d chargers, %d inputs",
              source, len(cfg.meters), len(cfg.chargers), len(cfg.inputs))
    return cfg


# --------------------------------------------------------------------------- warnings

_GPIOCHIPS = "/dev/gpiochip*"


def _state_dir_writable(state_dir: Path) -> bool:
    probe = state_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def _machine_warnings(parts: Parts, gpiochip_glob: str) -> list[Problem]:
    """What this machine lacks but the target may have, and a site without chargers."""
    warnings: list[Problem] = []
    for name, bus in parts.buses.items():
        if isinstance(bus, RtuBus) and not os.path.exists(bus.port):
            warnings.append(Problem(("buses", name, "port"), f"{bus.port} does not exist on this machine", True))
    if parts.smgw is not None:
        for name in ("cert", "key", "client_ca"):
            file = getattr(parts.smgw, name)
            if parts.intact(("smgw",), name) and not file.is_file():
                warnings.append(Problem(("smgw", name), f"{file} does not exist on this machine", True))
    if parts.ocpp is not None:
        for name in ("cert", "key"):
            file = getattr(parts.ocpp, name)
            if file is not None and parts.intact(("ocpp",), name) and not file.is_file():
                warnings.append(Problem(("ocpp", name), f"{file} does not exist on this machine", True))
    if parts.mqtt is not None and parts.mqtt.tls is not None and parts.intact(("mqtt",), "tls"):
        for name in ("ca", "cert", "key"):
            file = getattr(parts.mqtt.tls, name)
            if file is not None and not file.is_file():
                warnings.append(Problem(("mqtt", "tls", name), f"{file} does not exist on this machine", True))
    if parts.state_dir is not None and not _state_dir_writable(parts.state_dir):
        warnings.append(Problem(("state_dir",), f"{parts.state_dir} is not writable by this user", True))
    gpio_inputs = sorted(i for i, d in parts.inputs.items()
                         if isinstance(d, GpioInputConfig) and parts.intact(("inputs", i), "gpio"))
    if gpio_inputs and not glob.glob(gpiochip_glob):
        for input_id in gpio_inputs:
            warnings.append(Problem(("inputs", input_id, "gpio"), f"this machine has no GPIO chip ({gpiochip_glob}); "
                                    "the input will have no value", True))
    if not parts.present["chargers"]:
        warnings.append(Problem(("chargers",), "none configured", True))
    return warnings


def config_warnings(cfg: Config, *, gpiochip_glob: str = _GPIOCHIPS) -> list[str]:
    """What is odd but usable, sorted by path: missing serial ports, TLS files and GPIO chips on
    this machine, an unwritable state directory, no chargers, and the plausibility warnings
    (``plausibility``)."""
    parts = Parts.of(cfg)
    found = [p for p in cross_problems(parts) if p.warning] + _machine_warnings(parts, gpiochip_glob)
    return rendered(found)
