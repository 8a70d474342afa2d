"""The configuration file (SPEC §4): strict schema, careful YAML loading, cross-reference checks.

This module owns everything about ``/etc/gridcharge/config.yaml``:

- a YAML reader that refuses YAML 1.1's silent guesses (``no`` read as false, ``010`` read as
  octal 8, ``1:30`` read as 90) and duplicate keys, each reported with its path and line;
- frozen pydantic models (``extra="forbid"``, strict types) that the rest of the code reads;
- the checks that span sections (a charger's bus exists, ids are unique, a model is a meter
  profile, variables form no cycle, two devices do not share a unit on one bus);
- ``config_warnings()`` for what only the target machine has (serial ports, TLS files, GPIO), so a
  config can be checked on a laptop before it goes to the Pi (SPEC §4a).

Every problem is collected and reported at once, each as ``path.to.field: reason`` sorted by path,
because an electrician at the meter cabinet wants one run of ``gridcharge check-config`` to list
everything. Build a ``Config`` only through ``load_config()`` or ``parse_config()``:
``Config.model_validate()`` alone checks each field but not the rules that span sections.

Defaults that are decisions (documented again in ``deploy/config.example.yaml``):
``unbalanced_limit_a`` 20 A (VDE-AR-N 4100 allows 4.6 kVA of imbalance = 20 A at 230 V, the cFos
default; ``null`` switches the limit off); a charger's ``max_current_a`` 16 A (the common 11 kW
box; set it to the box's real rating); ``smgw.functions`` ``[vars]`` (least privilege); no
``http`` section means no LAN API.
"""

from __future__ import annotations

import difflib
import glob
import ipaddress
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
)

from controller import formulas
from hal import profile as profiles

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/gridcharge/config.yaml")
ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
BUS_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # never a ':', so never an implicit "tcp:..." name
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
IEC_MIN_CURRENT_A = 6.0  # IEC 61851-1: the lowest current a pilot signal can offer
MAX_CURRENT_A = 80.0  # IEC 61851-1 AC charging tops out at 80 A
RTU_UNITS = range(1, 248)  # Modbus serial line: 0 is broadcast, 248..255 reserved

# --------------------------------------------------------------------------- field types

Num = Annotated[float, Strict()]  # int or float, never bool or "5"
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


def _whole_number(value: Any) -> Any:
    """Literal[1, 3] alone would accept true and 1.0; a config value must be written as a number."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("Input should be a valid integer")
    return value


IntOnly = BeforeValidator(_whole_number)


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, not '{path}'")
    return path


AbsPath = Annotated[Path, Field(strict=False), AfterValidator(_absolute)]


def _absolute_text(value: str) -> str:
    _absolute(Path(value))
    return value


def _host(value: str) -> str:
    """A host name or IP address, not a URL: 'http://x' or 'x:502' are common slips."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(value):
        raise ValueError(f"not a host name or IP address: '{value}'")
    return value


Host = Annotated[str, Strict(), AfterValidator(_host)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]


def split_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::]:8443"``) → (host, port). Raises ValueError."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"must be 'host:port' with a port 1..65535, not '{listen}'")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    _host(host)
    return host, int(port_text)


def _listen(value: str) -> str:
    split_listen(value)
    return value


Listen = Annotated[str, Strict(), AfterValidator(_listen)]


def _formula_value(value: Any, *, allow_bool: bool, non_negative: bool) -> Any:
    """A number or a formula string, checked by ``controller.formulas`` (SPEC §3).

    Kept as given: the control loop compiles it once at start. FormulaError is a ValueError, so
    pydantic reports it at the field's path.
    """
    if isinstance(value, bool):
        if allow_bool:
            return value
        raise ValueError("must be a number or a formula, not true/false")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if non_negative and value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        try:
            constant = formulas.compile_formula(value).constant
        except ValueError:
            raise
        except Exception as exc:  # a checker bug must not crash check-config
            raise ValueError(f"formula could not be checked: {exc!r}") from exc
        if constant is not None:  # "16" or "-5" in quotes: check it as the number it is
            _formula_value(constant, allow_bool=allow_bool, non_negative=non_negative)
        return value
    raise ValueError(f"must be a number or a formula string, not {type(value).__name__}")


def _limit(value: Any) -> Any:
    return _formula_value(value, allow_bool=False, non_negative=True)


def _condition(value: Any) -> Any:
    return _formula_value(value, allow_bool=True, non_negative=False)


FormulaLike = Union[float, str]
LimitFormula = Annotated[FormulaLike, PlainValidator(_limit, json_schema_input_type=FormulaLike)]
ConditionLike = Union[bool, float, str]
ConditionFormula = Annotated[ConditionLike, PlainValidator(_condition, json_schema_input_type=ConditionLike)]
VariableValue = ConditionFormula  # SPEC §2: a variable is a number, a boolean or a formula


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- sections


class Site(_Strict):
    """The grid connection and the control loop's timing (SPEC §4, §5, §6)."""

    voltage_v: Num = Field(230.0, ge=100, le=260)
    main_fuse_a: Num = Field(gt=0, le=4000)
    grid_limit_w: LimitFormula | None = None
    chargers_limit_w: LimitFormula | None = None
    unbalanced_limit_a: Num | None = Field(20.0, gt=0)
    min_pause_s: Num = Field(60.0, ge=0)
    stale_s: Num = Field(5.0, gt=0)
    grid_meter: Text | None = None
    failsafe_limit_w: Num = Field(4200.0, ge=0)
    cycle_s: Num = Field(1.0, ge=0.1, le=60)
    increase_step_a: Num = Field(2.0, gt=0, le=MAX_CURRENT_A)
    watchdog_s: Num = Field(15.0, gt=0, le=60)  # Heidelberg's watchdog register holds at most 65.5 s


def _user(value: str) -> str:
    if not re.fullmatch(r"[^:\s]{1,64}", value):
        raise ValueError("1 to 64 characters without ':' or spaces (HTTP basic auth cannot carry them)")
    return value


def _password_hash(value: str) -> str:
    if not re.fullmatch(r"(scrypt|pbkdf2)(:[^$]*)?\$[^$]+\$[0-9a-f]+", value):
        raise ValueError("must be a werkzeug hash like 'scrypt:32768:8:1$salt$hex' "
                         "(werkzeug.security.generate_password_hash)")
    return value


class Http(_Strict):
    """LAN listener of the cFos-compatible API (basic auth). Absent section: no LAN API."""

    listen: Listen = "0.0.0.0:80"
    user: Annotated[str, Strict(), AfterValidator(_user)] = "admin"
    password: Annotated[str, Strict(), Field(min_length=8, max_length=256)] | None = Field(None, repr=False)
    password_hash: Annotated[str, Strict(), AfterValidator(_password_hash)] | None = Field(None, repr=False)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


SmgwFunction = Literal["vars", "status", "admin", "ocpp"]


class Smgw(_Strict):
    """The smart meter gateway's CLS channel: HTTPS with a client certificate (SPEC §1.4)."""

    listen: Listen = "0.0.0.0:8443"
    cert: AbsPath
    key: AbsPath
    client_ca: AbsPath
    functions: tuple[SmgwFunction, ...] = ("vars",)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


Baudrate = Annotated[Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200], IntOnly]
Parity = Literal["N", "E", "O"]
Stopbits = Annotated[Literal[1, 2], IntOnly]
TimeoutS = Annotated[float, Strict(), Field(gt=0, le=10)]
Retries = Annotated[int, Strict(), Field(ge=0, le=5)]


class RtuBus(_Strict):
    """An RS485 line on a local serial adapter; all its devices share one connection."""

    type: Literal["rtu"]
    port: Annotated[str, Strict(), AfterValidator(_absolute_text)]  # e.g. /dev/gridcharge-rs485-0 (udev/)
    baudrate: Baudrate = 9600
    parity: Parity = "N"
    stopbits: Stopbits = 1
    bytesize: Annotated[Literal[8], IntOnly] = 8
    timeout_s: TimeoutS = 0.5
    retries: Retries = 0


class TcpBus(_Strict):
    """A Modbus TCP endpoint (a wallbox, or a gateway that translates to RTU itself)."""

    type: Literal["tcp"]
    host: Host
    port: Port = 502
    timeout_s: TimeoutS = 0.5
    retries: Retries = 0


class RtuOverTcpBus(_Strict):
    """RTU frames through a transparent RS485-to-Ethernet gateway; the serial settings are the
    gateway's line settings, used for the wire-time statistics."""

    type: Literal["rtu-over-tcp"]
    host: Host
    port: Port = 502
    baudrate: Baudrate = 9600
    parity: Parity = "N"
    stopbits: Stopbits = 1
    timeout_s: TimeoutS = 0.5
    retries: Retries = 0


BusConfig = Annotated[Union[RtuBus, TcpBus, RtuOverTcpBus], Field(discriminator="type")]
BUS_MODELS: dict[str, type[_Strict]] = {"rtu": RtuBus, "tcp": TcpBus, "rtu-over-tcp": RtuOverTcpBus}


def implicit_bus_name(host: str, port: int) -> str:
    """The bus a device gets when it gives ``host:`` instead of ``bus:``."""
    return f"tcp:{host}:{port}"


class ModbusDeviceConfig(_Strict):
    """How a Modbus device is reached: ``bus`` XOR ``host`` (+``port``), and its unit id."""

    bus: Text | None = None
    host: Host | None = None
    port: Port | None = None  # only with host; 502 when omitted
    unit: Annotated[int, Strict(), Field(ge=0, le=255)] = 1  # 1..247 on RTU, checked per bus
    timeout_s: TimeoutS | None = None  # overrides the profile's request policy
    gap_s: Annotated[float, Strict(), Field(ge=0, le=1)] | None = None

    @property
    def tcp_port(self) -> int:
        return self.port if self.port is not None else 502

    @property
    def bus_name(self) -> str:
        """The explicit bus, or the implicit ``tcp:HOST:PORT`` one."""
        if self.bus is not None:
            return self.bus
        return implicit_bus_name(str(self.host), self.tcp_port)


class _ProfileDevice(ModbusDeviceConfig):
    model: Text | None = None  # a name from hal.profile.PROFILE_NAMES ...
    profile: dict[Text, Any] | None = None  # ... or an inline custom profile (same schema)


class MeterConfig(_ProfileDevice):
    """An electricity meter; ``site.grid_meter`` names the one at the grid connection."""


PhaseName = Literal["L1", "L2", "L3"]


def _failsafe_current(value: float) -> float:
    if 0 < value < IEC_MIN_CURRENT_A:
        raise ValueError(f"must be 0 (stop) or at least {IEC_MIN_CURRENT_A:g} A (IEC 61851)")
    return value


class ChargerConfig(_ProfileDevice):
    """A wallbox: how it is wired (phases) and what it may be given (SPEC §5)."""

    phases: Annotated[Literal[1, 3], IntOnly] = 3
    phase: PhaseName = "L1"  # the phase a 1-phase box is wired to
    min_current_a: Num = Field(IEC_MIN_CURRENT_A, ge=IEC_MIN_CURRENT_A, le=32)
    max_current_a: LimitFormula = 16.0
    priority: Int = Field(1, ge=0, le=100)
    failsafe_current_a: Annotated[
        float, Strict(), Field(ge=0, le=MAX_CURRENT_A), AfterValidator(_failsafe_current)
    ] = 6.0

    @property
    def phase_index(self) -> int:
        """0, 1, 2 for L1, L2, L3."""
        return int(self.phase[1]) - 1


class GpioInputConfig(_Strict):
    """A ripple-control relay contact on a BCM GPIO pin (hal.gpio.GpioInput)."""

    gpio: Annotated[int, Strict(), Field(ge=0, le=27)]
    pull_up: Bool = True
    active_low: Bool = True
    bounce_s: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.05
    normally_closed: Bool = False


class ModbusInputConfig(ModbusDeviceConfig):
    """A contact read from a Modbus I/O module: one discrete input or one coil, by index."""

    model: Text = "modbus_io"
    discrete_input: Annotated[int, Strict(), Field(ge=0, le=65535)] | None = None
    coil: Annotated[int, Strict(), Field(ge=0, le=65535)] | None = None
    active_low: Bool = False
    normally_closed: Bool = False

    @property
    def table(self) -> str:
        """``"coil"`` or ``"discrete"`` (hal.types.Table values)."""
        return "coil" if self.coil is not None else "discrete"

    @property
    def index(self) -> int:
        return self.coil if self.coil is not None else int(self.discrete_input or 0)


_GPIO_ONLY = frozenset({"gpio", "pull_up", "bounce_s"})


def _input_kind(value: Any) -> str:
    """GPIO when the entry says so by a GPIO-only key (so a forgotten ``gpio:`` is reported as
    missing, not as a Modbus input with unknown keys)."""
    if isinstance(value, Mapping) and _GPIO_ONLY.intersection(value):
        return "gpio"
    return "modbus"


InputConfig = Annotated[
    Union[Annotated[GpioInputConfig, Tag("gpio")], Annotated[ModbusInputConfig, Tag("modbus")]],
    Discriminator(_input_kind),
]


class Rule(_Strict):
    """A charging rule (SPEC §5): while ``when`` holds, cap the chargers it names."""

    name: Annotated[str, Strict(), Field(min_length=1, max_length=100)]
    chargers: tuple[Text, ...] | None = None  # None: all chargers
    when: ConditionFormula | None = None  # None: always
    max_current_a: LimitFormula | None = None
    max_power_w: LimitFormula | None = None


class Config(_Strict):
    """The whole validated configuration. Treat its dicts as read-only."""

    site: Site
    state_dir: AbsPath = Path("/var/lib/gridcharge")
    http: Http | None = None
    smgw: Smgw | None = None
    buses: dict[Text, BusConfig] = Field(default_factory=dict)
    meters: dict[Text, MeterConfig] = Field(default_factory=dict)
    chargers: dict[Text, ChargerConfig] = Field(default_factory=dict)
    inputs: dict[Text, InputConfig] = Field(default_factory=dict)
    variables: dict[Text, VariableValue] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()

    @property
    def device_ids(self) -> frozenset[str]:
        """Meter, charger and input ids: names a variable may not take (VariableStore ``reserved``)."""
        return frozenset(self.meters) | frozenset(self.chargers) | frozenset(self.inputs)

    def modbus_devices(self) -> Iterator[tuple[str, ModbusDeviceConfig]]:
        """Every device that talks Modbus: meters, chargers, Modbus inputs (not GPIO)."""
        yield from self.meters.items()
        yield from self.chargers.items()
        yield from ((i, d) for i, d in self.inputs.items() if isinstance(d, ModbusInputConfig))

    def all_buses(self) -> dict[str, RtuBus | TcpBus | RtuOverTcpBus]:
        """Declared buses plus the implicit ``tcp:HOST:PORT`` ones of devices that give ``host``."""
        return {**self.buses, **implicit_buses(self)}

    def devices_on_bus(self) -> dict[str, tuple[str, ...]]:
        """Bus name → ids of the devices on it (config order); buses without devices are absent."""
        result: dict[str, list[str]] = {}
        for device_id, device in self.modbus_devices():
            result.setdefault(device.bus_name, []).append(device_id)
        return {name: tuple(ids) for name, ids in result.items()}


def implicit_buses(cfg: Config) -> dict[str, TcpBus]:
    """One TCP bus per distinct ``host:port`` given on devices, named ``tcp:HOST:PORT``."""
    return {
        device.bus_name: TcpBus(type="tcp", host=device.host, port=device.tcp_port)
        for _, device in cfg.modbus_devices()
        if device.bus is None and device.host is not None
    }


def device_profile(device: ModbusDeviceConfig, path: str = "") -> profiles.Profile:
    """The device's profile: the packaged model, or its inline custom profile."""
    inline = getattr(device, "profile", None)
    if inline is not None:
        return profiles.parse_profile(inline, f"{path}.profile" if path else "profile")
    return profiles.load_profile(str(getattr(device, "model", None)))


# --------------------------------------------------------------------------- errors

Loc = tuple[Any, ...]


@dataclass(frozen=True)
class _Problem:
    path: Loc
    message: str

    def render(self) -> str:
        where = ".".join(str(part) for part in self.path) if self.path else "top level"
        return f"{where}: {self.message}"


def _sort_key(problem: _Problem) -> tuple[Any, ...]:
    parts = tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in problem.path)
    return parts, problem.message


class ConfigError(Exception):
    """The configuration is unusable. ``errors`` lists every problem as ``path: reason``."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = errors
        self.source = source
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  {e}" for e in errors))


def _raise_if(problems: Iterable[_Problem], source: str) -> None:
    unique = sorted(set(problems), key=_sort_key)
    if unique:
        raise ConfigError([p.render() for p in unique], source)


# --------------------------------------------------------------------------- YAML


_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML11_BOOL = re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")
_YAML11_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_YAML11_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


def _ambiguity(node: yaml.ScalarNode, value: Any) -> str | None:
    """Why a plain scalar means something else than it seems under YAML 1.1, or None."""
    if node.style is not None:  # quoted or block scalars are always text
        return None
    text = node.value
    if node.tag == _BOOL_TAG and _YAML11_BOOL.fullmatch(text):
        word = "true" if value else "false"
        return f"'{text}' is read by YAML as {word}: write {word} if you mean that, or \"{text}\" in quotes for text"
    if node.tag == _INT_TAG and _YAML11_OCTAL.fullmatch(text):
        decimal = int(text.replace("_", ""), 10)
        return (
            f"{text} is read by YAML as the octal number {value}: write {value}, or {decimal} without "
            f"the leading zero, or \"{text}\" in quotes for text"
        )
    if node.tag in (_INT_TAG, _FLOAT_TAG) and _YAML11_BASE60.fullmatch(text):
        return f"{text} is read by YAML as {value} (base 60): write \"{text}\" in quotes"
    return None


@dataclass
class _Scan:
    """What the node walk found: problems with their path, and data paths whose value is void."""

    loader: yaml.SafeLoader
    problems: list[_Problem] = field(default_factory=list)
    void: set[Loc] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)

    def walk(self, node: yaml.Node, path: Loc, data_path: Loc) -> None:
        if id(node) in self.seen:  # an alias: checked where its anchor is; keeps the walk linear
            return
        self.seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            self._scalar(node, path, data_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                self.walk(child, path + (index,), data_path + (index,))
        elif isinstance(node, yaml.MappingNode):
            self._mapping(node, path, data_path)

    def _scalar(self, node: yaml.ScalarNode, path: Loc, data_path: Loc) -> None:
        reason = _ambiguity(node, self.loader.construct_object(node))
        if reason is not None:
            self.problems.append(_Problem(path, f"{reason} (line {node.start_mark.line + 1})"))
            self.void.add(data_path)

    def _mapping(self, node: yaml.MappingNode, path: Loc, data_path: Loc) -> None:
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                self.walk(value_node, path, data_path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(_Problem(path, f"a key must be plain text (line {line})"))
                continue
            text = key_node.value
            key = self.loader.construct_object(key_node)
            key_path, key_data_path = path + (text,), data_path + (key,)
            reason = _ambiguity(key_node, key)
            if reason is not None:
                self.problems.append(_Problem(key_path, f"{reason} (line {line})"))
                self.void.add(key_data_path)
            if text in first_line:
                reason = f"duplicate key (line {line}, first at line {first_line[text]})"
                self.problems.append(_Problem(key_path, reason))
            else:
                first_line[text] = line
            self.walk(value_node, key_path, key_data_path)


def _yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        return f"{where}: {exc.problem}{context}"
    return f"YAML: {exc}"


def _read_yaml(text: str, source: str) -> tuple[Any, list[_Problem], set[Loc]]:
    """Parse one YAML document; return data, YAML-level problems and the paths they void."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [], set()
        scan = _Scan(loader)
        scan.walk(node, (), ())
        data = loader.construct_document(node)
        return data, scan.problems, scan.void
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(exc)], source) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- pydantic errors


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's bookkeeping: union tags (``buses.X.rtu.port``) and ``[key]`` markers."""
    parts = [part for part in loc if part != "[key]"]
    if len(parts) >= 3 and parts[0] in ("buses", "inputs"):
        del parts[2]
    return tuple(parts)


_SECTION_MODELS: dict[str, type[BaseModel]] = {"site": Site, "http": Http, "smgw": Smgw}
_ITEM_MODELS: dict[str, type[BaseModel]] = {"meters": MeterConfig, "chargers": ChargerConfig, "rules": Rule}


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
    if section == "buses":
        return BUS_MODELS.get(raw.get("type"))  # type: ignore[arg-type]
    if section == "inputs":
        return GpioInputConfig if _input_kind(raw) == "gpio" else ModbusInputConfig
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


def _pydantic_problems(exc: ValidationError, data: Mapping[str, Any]) -> list[_Problem]:
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
        problems.append(_Problem(loc, message))
    return problems


# --------------------------------------------------------------------------- cross-reference checks


@dataclass
class _Parts:
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

    @classmethod
    def of(cls, cfg: Config) -> _Parts:
        present = {s: frozenset(getattr(cfg, s)) for s in ("buses", "meters", "chargers", "inputs", "variables")}
        return cls(cfg.site, cfg.http, cfg.smgw, cfg.buses, cfg.meters, cfg.chargers, cfg.inputs,
                   cfg.variables, dict(enumerate(cfg.rules)), present)

    @classmethod
    def salvage(cls, data: Mapping[str, Any]) -> _Parts:
        sections = {name: data.get(name) for name in _ITEM_ADAPTERS}
        good = {name: _good_items(adapter, sections[name]) for name, adapter in _ITEM_ADAPTERS.items()}
        raw_rules = data.get("rules")
        rules = dict(enumerate(raw_rules)) if isinstance(raw_rules, list) else {}
        present = {n: frozenset(k for k in s if isinstance(k, str)) if isinstance(s, Mapping) else frozenset()
                   for n, s in sections.items()}
        return cls(_good(Site, data.get("site")), _good(Http, data.get("http")), _good(Smgw, data.get("smgw")),
                   good["buses"], good["meters"], good["chargers"], good["inputs"], good["variables"],
                   _good_items(_RULE, rules), present)


_ITEM_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "buses": TypeAdapter(BusConfig),
    "meters": TypeAdapter(MeterConfig),
    "chargers": TypeAdapter(ChargerConfig),
    "inputs": TypeAdapter(InputConfig),
    "variables": TypeAdapter(VariableValue),
}
_RULE = TypeAdapter(Rule)


def _good(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw) if raw is not None else None
    except ValidationError:
        return None


def _good_items(adapter: TypeAdapter[Any], raw: Any) -> dict[Any, Any]:
    result = {}
    for key, value in (raw.items() if isinstance(raw, Mapping) else ()):
        try:
            result[key] = adapter.validate_python(value)
        except ValidationError:
            pass
    return result


def _check_ids(parts: _Parts) -> Iterator[_Problem]:
    """Ids are formula symbols (``M1.power_w``, ``RSE1``): valid names, unique across sections."""
    owner: dict[str, str] = {}
    for section in ("meters", "chargers", "inputs", "variables"):
        for name in sorted(parts.present[section]):
            try:
                if section != "variables" and not ID_RE.fullmatch(name):
                    raise formulas.FormulaError("an id is a letter, then letters, digits or _ (at most 64)")
                formulas.check_name(name)
            except formulas.FormulaError as exc:
                yield _Problem((section, name), str(exc))
            if name in owner:
                yield _Problem((section, name), f"id '{name}' is already used by {owner[name]}.{name}")
            else:
                owner[name] = section
    for name in sorted(parts.present["buses"]):
        if not BUS_NAME_RE.fullmatch(name):
            yield _Problem(("buses", name), "a bus name is a letter, then letters, digits, _ or - (at most 64)")


def _check_site(parts: _Parts) -> Iterator[_Problem]:
    site = parts.site
    if site is None:
        return
    if site.grid_meter is not None and site.grid_meter not in parts.present["meters"]:
        what = "a charger, not a meter" if site.grid_meter in parts.present["chargers"] else "not a meter"
        yield _Problem(("site", "grid_meter"), f"'{site.grid_meter}' is {what}")
    if site.stale_s < site.cycle_s:
        yield _Problem(("site", "stale_s"), f"must be at least cycle_s ({site.cycle_s:g} s)")
    if site.watchdog_s < 2 * site.cycle_s:
        yield _Problem(("site", "watchdog_s"), f"must be at least twice cycle_s ({2 * site.cycle_s:g} s)")


def _check_listeners(parts: _Parts) -> Iterator[_Problem]:
    http, smgw = parts.http, parts.smgw
    if http is not None and (http.password is None) == (http.password_hash is None):
        yield _Problem(("http", "password"), "give exactly one of password or password_hash")
    if http is not None and smgw is not None and http.port == smgw.port:
        wildcard = {"0.0.0.0", "::"}
        if http.host == smgw.host or http.host in wildcard or smgw.host in wildcard:
            yield _Problem(("smgw", "listen"), f"port {smgw.port} is already http.listen")
    if smgw is not None and len(set(smgw.functions)) != len(smgw.functions):
        yield _Problem(("smgw", "functions"), "lists a function twice")
    if smgw is not None and not smgw.functions:
        yield _Problem(("smgw", "functions"), "is empty: leave out the smgw section to switch the channel off")


def _check_buses(parts: _Parts) -> Iterator[_Problem]:
    ports: dict[str, str] = {}
    for name, bus in parts.buses.items():
        if isinstance(bus, RtuBus):
            if bus.port in ports:
                yield _Problem(("buses", name, "port"), f"{bus.port} is already bus '{ports[bus.port]}'")
            ports.setdefault(bus.port, name)


def _check_address(parts: _Parts, path: Loc, device: ModbusDeviceConfig) -> Iterator[_Problem]:
    """bus XOR host; the bus exists; port only with host; RTU unit range; one connection per endpoint."""
    if device.bus is not None and device.host is not None:
        yield _Problem(path + ("host",), "give either bus or host, not both")
        return
    if device.bus is None and device.host is None:
        yield _Problem(path + ("bus",), "required: give bus (a name under buses) or host (a TCP device)")
        return
    if device.bus is not None:
        if device.port is not None:
            yield _Problem(path + ("port",), "only with host (the bus has the port)")
        if device.bus not in parts.present["buses"]:
            known = ", ".join(sorted(parts.present["buses"])) or "none"
            yield _Problem(path + ("bus",), f"no bus named '{device.bus}' (buses: {known})")
        bus = parts.buses.get(device.bus)
        if isinstance(bus, (RtuBus, RtuOverTcpBus)) and device.unit not in RTU_UNITS:
            yield _Problem(path + ("unit",), f"must be 1..247 on an RS485 bus, not {device.unit}")
        return
    endpoint = (str(device.host).lower(), device.tcp_port)
    for name, bus in parts.buses.items():
        if isinstance(bus, (TcpBus, RtuOverTcpBus)) and (bus.host.lower(), bus.port) == endpoint:
            yield _Problem(path + ("host",), f"{device.host}:{device.tcp_port} is bus '{name}': write bus: {name} instead")


def _text(kind: Any) -> str:
    return str(getattr(kind, "value", kind))


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _check_model(path: Loc, device: Any, kind: str) -> Iterator[_Problem]:
    """A packaged model of the right kind, or an inline profile that validates."""
    inline = getattr(device, "profile", None)
    if inline is not None and getattr(device, "model", None) is not None:
        yield _Problem(path + ("profile",), "give either model or profile, not both")
        return
    if inline is not None:
        try:
            found = profiles.parse_profile(inline, ".".join(map(str, path + ("profile",)))).kind
        except profiles.ProfileError as exc:
            if not exc.errors:
                yield _Problem(path + ("profile",), str(exc) or "not a valid profile")
            for message in exc.errors:  # "values.power_w.type: unknown type", path inside the profile
                inner, sep, reason = message.partition(": ")
                where = path + ("profile", *inner.split(".")) if sep else path + ("profile",)
                yield _Problem(where, reason if sep else message)
            return
        if found != kind:
            yield _Problem(path + ("profile", "kind"), f"is '{_text(found)}', but {_a(kind)} is needed here")
        return
    if device.model is None:
        names = ", ".join(profiles.PROFILE_NAMES)
        yield _Problem(path + ("model",), f"required: give model (one of {names}) or profile")
        return
    if device.model not in profiles.PROFILE_NAMES:
        close = difflib.get_close_matches(device.model, profiles.PROFILE_NAMES, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(profiles.PROFILE_NAMES)}"
        yield _Problem(path + ("model",), f"unknown model '{device.model}' ({hint})")
        return
    try:
        found = profiles.load_profile(device.model).kind
    except (profiles.ProfileError, OSError) as exc:  # a packaging bug, but say so rather than crash
        yield _Problem(path + ("model",), f"packaged profile '{device.model}' cannot be loaded: {exc}")
        return
    if found != kind:
        reason = f"'{device.model}' is {_a(_text(found))} profile, but {_a(kind)} is needed here"
        yield _Problem(path + ("model",), reason)


def _check_devices(parts: _Parts) -> Iterator[_Problem]:
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
                yield _Problem(path + ("unit",), reason)
            else:
                units[key] = ".".join(path)
    for charger_id, charger in parts.chargers.items():
        yield from _check_charger(("chargers", charger_id), charger)


def _check_charger(path: Loc, charger: ChargerConfig) -> Iterator[_Problem]:
    if charger.phases == 3 and "phase" in charger.model_fields_set:
        yield _Problem(path + ("phase",), "only for a 1-phase charger (phases: 1)")
    maximum = charger.max_current_a
    if isinstance(maximum, (int, float)):
        if maximum > MAX_CURRENT_A:
            yield _Problem(path + ("max_current_a",), f"must be at most {MAX_CURRENT_A:g} A")
        if maximum < charger.min_current_a:
            reason = f"{maximum:g} A is below min_current_a ({charger.min_current_a:g} A)"
            yield _Problem(path + ("max_current_a",), reason)
        elif charger.failsafe_current_a > maximum:
            reason = f"{charger.failsafe_current_a:g} A is above max_current_a ({maximum:g} A)"
            yield _Problem(path + ("failsafe_current_a",), reason)


def _check_inputs(parts: _Parts) -> Iterator[_Problem]:
    pins: dict[int, str] = {}
    for input_id, item in parts.inputs.items():
        path: Loc = ("inputs", input_id)
        if isinstance(item, GpioInputConfig):
            if item.gpio in pins:
                yield _Problem(path + ("gpio",), f"GPIO {item.gpio} is already inputs.{pins[item.gpio]}")
            pins.setdefault(item.gpio, input_id)
            continue
        yield from _check_address(parts, path, item)
        model_problems = list(_check_model(path, item, "input"))
        yield from model_problems
        if (item.discrete_input is None) == (item.coil is None):
            yield _Problem(path + ("discrete_input",), "give exactly one of discrete_input or coil")
        elif not model_problems:
            yield from _check_input_index(path, item)


def _check_input_index(path: Loc, item: ModbusInputConfig) -> Iterator[_Problem]:
    """The index must exist on the module (its profile declares how many inputs it has)."""
    spec = getattr(profiles.load_profile(item.model), "inputs", None)
    count = getattr(spec, "count", None)
    if isinstance(count, int) and item.index >= count:
        key = "coil" if item.coil is not None else "discrete_input"
        yield _Problem(path + (key,), f"{item.index} is beyond the {count} inputs of '{item.model}' (counted from 0)")


def _check_rules(parts: _Parts) -> Iterator[_Problem]:
    names: dict[str, int] = {}
    for index, rule in sorted(parts.rules.items()):
        path: Loc = ("rules", index)
        if rule.name in names:
            yield _Problem(path + ("name",), f"duplicate rule name '{rule.name}' (also rules.{names[rule.name]})")
        names.setdefault(rule.name, index)
        if rule.chargers is not None and not rule.chargers:
            yield _Problem(path + ("chargers",), "is empty: leave it out to mean all chargers")
        for position, charger_id in enumerate(rule.chargers or ()):
            if charger_id not in parts.present["chargers"]:
                yield _Problem(path + ("chargers", position), f"no charger named '{charger_id}'")
        if (rule.max_current_a is None) == (rule.max_power_w is None):
            yield _Problem(path + ("max_current_a",), "give exactly one of max_current_a or max_power_w")


def _formula_fields(parts: _Parts) -> Iterator[tuple[Loc, Any]]:
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


def _compiled(parts: _Parts) -> Iterator[tuple[Loc, formulas.Formula]]:
    for path, value in _formula_fields(parts):
        if isinstance(value, str):
            try:
                yield path, formulas.compile_formula(value)
            except formulas.FormulaError:
                pass  # already reported by the field's own validation


def _check_formulas(parts: _Parts) -> Iterator[_Problem]:
    """``X.attr`` needs a device X: a variable never has attributes, so it is a typo, not a name
    that may be defined later. Variables must not depend on each other in a cycle."""
    devices = parts.present["meters"] | parts.present["chargers"] | parts.present["inputs"]
    for path, formula in _compiled(parts):
        for name in sorted(formula.names):
            owner = name.split(".", 1)[0]
            if "." in name and owner not in devices:
                yield _Problem(path, f"'{name}': no device named '{owner}'")
    variable_formulas = {path[1]: f for path, f in _compiled(parts) if path[0] == "variables"}
    try:
        formulas.evaluation_order(variable_formulas)
    except formulas.FormulaError as exc:
        yield _Problem(("variables",), str(exc))


_CHECKS = (
    _check_ids, _check_site, _check_listeners, _check_buses, _check_devices, _check_inputs, _check_rules,
    _check_formulas,
)


def _cross_problems(parts: _Parts) -> list[_Problem]:
    return [problem for check in _CHECKS for problem in check(parts)]


# --------------------------------------------------------------------------- public entry points


def _validate(data: Any, source: str, yaml_problems: list[_Problem], void: set[Loc]) -> Config:
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
    problems += _cross_problems(_Parts.of(cfg) if cfg is not None else _Parts.salvage(data))
    _raise_if(problems, source)
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
    data, yaml_problems, void = _read_yaml(text, source)
    cfg = _validate(data, source, yaml_problems, void)
    log.debug("config %s: %d meters, %d chargers, %d inputs",
              source, len(cfg.meters), len(cfg.chargers), len(cfg.inputs))
    return cfg


# --------------------------------------------------------------------------- warnings


def _undefined_names(cfg: Config) -> Iterator[str]:
    """Formula names that nothing defines yet: allowed (SPEC §3), but usually a typo."""
    defined = set(cfg.variables) | set(cfg.inputs) | set(formulas.TIME_SYMBOLS)
    for path, formula in _compiled(_Parts.of(cfg)):
        where = ".".join(map(str, path))
        for name in sorted(formula.names - defined):
            if "." in name:
                continue
            if name in cfg.meters or name in cfg.chargers:
                yield f"{where}: '{name}' is a device; use one of its values, e.g. {name}.power_w"
            else:
                yield (f"{where}: '{name}' is not defined in variables "
                       "(an evaluation error until it is set over the API)")


def _state_dir_writable(state_dir: Path) -> bool:
    probe = state_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def config_warnings(cfg: Config, *, gpiochip_glob: str = "/dev/gpiochip*") -> list[str]:
    """What looks wrong on THIS machine but may be right on the target: missing serial ports, TLS
    files and GPIO chips, an unwritable state directory, and formula names nothing defines."""
    warnings: list[str] = []
    for name, bus in cfg.buses.items():
        if isinstance(bus, RtuBus) and not os.path.exists(bus.port):
            warnings.append(f"buses.{name}.port: {bus.port} does not exist on this machine")
    if cfg.smgw is not None:
        for name in ("cert", "key", "client_ca"):
            file = getattr(cfg.smgw, name)
            if not file.is_file():
                warnings.append(f"smgw.{name}: {file} does not exist on this machine")
    if not _state_dir_writable(cfg.state_dir):
        warnings.append(f"state_dir: {cfg.state_dir} is not writable by this user")
    gpio_inputs = sorted(i for i, d in cfg.inputs.items() if isinstance(d, GpioInputConfig))
    if gpio_inputs and not glob.glob(gpiochip_glob):
        for input_id in gpio_inputs:
            warnings.append(f"inputs.{input_id}.gpio: this machine has no GPIO chip ({gpiochip_glob}); "
                            "the input will have no value")
    if not cfg.chargers:
        warnings.append("chargers: none configured")
    warnings.extend(_undefined_names(cfg))
    return warnings
