"""The configuration's schema (docs/configuration.md): field types, frozen section models and ``Config``.

This module owns what one field or one section may hold: strict types (``5`` is a number, ``"5"``
and ``true`` are not), ranges, host names, listen addresses, formula strings checked by
``controller.formulas``, and the frozen pydantic models (``extra="forbid"``) that the rest of the
code reads. It is separate from the YAML reader (``reader``) and from the checks that span
sections (``checks``) because it is the part every consumer of a config imports, and it
must stay readable as the one place that says what a config looks like.

Build a ``Config`` only through ``controller.config.load_config()`` or ``parse_config()``:
``Config.model_validate()`` alone checks each field but not the rules that span sections.

Defaults that are decisions (documented again in ``deploy/config.example.yaml``):
``unbalanced_limit_a`` 20 A (VDE-AR-N 4100 allows 4.6 kVA of imbalance = 20 A at 230 V, the cFos
default; ``null`` switches the limit off); a charger's ``max_current_a`` 16 A (the common 11 kW
box; set it to the box's real rating); ``smgw.functions`` ``[vars]`` (least privilege); no
``http`` section means no LAN API; ``max_variables`` 1000 (far more than a site uses, a handful
of grid signals and limits; the cap keeps a client in a loop from growing the work of every
cycle without end).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

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
)

from controller import formulas
from controller.records.variables import DEFAULT_MAX_VARIABLES
from hal.modbus import profile as profiles

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
IEC_MIN_CURRENT_A = 6.0  # IEC 61851-1: the lowest current a pilot signal can offer
#: The most ``max_variables`` may allow. Every variable is evaluated every cycle: 5000 typical
#: formulas take ~41 ms per cycle on the development machine and a Pi is several times slower,
#: so more would eat into a 1 s cycle (``tests/bench/bench_variables.py``, docs/performance.md).
MAX_VARIABLES_LIMIT = 5000
MAX_CURRENT_A = 80.0  # IEC 61851-1 AC charging tops out at 80 A

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
    if not sep or not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"must be 'host:port' with a port 1..65535, not '{listen}'")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    _host(host)
    return host, int(port_text)


def _listen(value: str) -> str:
    split_listen(value)
    return value


Listen = Annotated[str, Strict(), AfterValidator(_listen)]


def _formula_value(value: Any, *, allow_bool: bool, non_negative: bool) -> Any:
    """A number or a formula string, checked by ``controller.formulas`` (docs/configuration.md).

    Kept as given: the control loop compiles it once at start. FormulaError is a ValueError, so
    pydantic reports it at the field's path.
    """
    if isinstance(value, bool):
        if allow_bool:
            return value
        raise ValueError("must be a number or a formula, not true/false")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        problem = formulas.number_problem(value)  # the same bound as a formula's constants
        if problem:
            raise ValueError(problem)
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
VariableValue = ConditionFormula  # docs/api.md: a variable is a number, a boolean or a formula


MaxVariables = Annotated[int, Strict(), Field(ge=1, le=MAX_VARIABLES_LIMIT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- sections


class Site(_Strict):
    """The grid connection and the control loop's timing (docs/configuration.md, docs/load-management.md)."""

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


class _Listener(_Strict):
    """A section with a ``listen: "host:port"`` address."""

    listen: Listen

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class Http(_Listener):
    """LAN listener of the cFos-compatible API (basic auth). Absent section: no LAN API."""

    listen: Listen = "0.0.0.0:80"
    user: Annotated[str, Strict(), AfterValidator(_user)] = "admin"
    password: Annotated[str, Strict(), Field(min_length=8, max_length=256)] | None = Field(None, repr=False)
    password_hash: Annotated[str, Strict(), AfterValidator(_password_hash)] | None = Field(None, repr=False)
    #: ``GET /metrics`` (Prometheus) asks for the same basic auth as the API; false: it answers
    #: without a password, for a Prometheus on the LAN that should not hold the admin password.
    metrics_auth: Bool = True


SmgwFunction = Literal["vars", "status", "admin", "ocpp"]


class Smgw(_Listener):
    """The smart meter gateway's CLS channel: HTTPS with a client certificate (docs/api.md)."""

    listen: Listen = "0.0.0.0:8443"
    cert: AbsPath
    key: AbsPath
    client_ca: AbsPath
    functions: tuple[SmgwFunction, ...] = ("vars",)


class OcppServer(_Listener):
    """The OCPP 1.6J central system that OCPP wallboxes connect to (``ws://HOST:PORT/ocpp/<id>``);
    with ``cert`` and ``key`` it speaks ``wss`` (TLS, OCPP security profile 2)."""

    listen: Listen = "0.0.0.0:8887"
    cert: AbsPath | None = None
    key: AbsPath | None = None


def _backend_url(value: str) -> str:
    """``ws://`` or ``wss://``, a host, no query: each charger connects to ``<url>/<backend_id>``."""
    match = re.fullmatch(r"(wss?)://([^/?#\s]+)(/[^?#\s]*)?", value)
    if match is None:
        raise ValueError("must be ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH (each charger connects as "
                         "<url>/<backend_id>)")
    return value.rstrip("/")


def _proxy_url(value: str) -> str:
    """The SMGW's CLS proxy: ``socks5://[user:password@]HOST:PORT`` or ``http://HOST:PORT`` (HTTP CONNECT)."""
    if not re.fullmatch(r"(socks5h?|http)://([^/@\s]+@)?[^/@\s:]+(:\d{1,5})?/?", value) \
            and not re.fullmatch(r"(socks5h?|http)://([^/@\s]+@)?\[[0-9A-Fa-f:.]+\](:\d{1,5})?/?", value):
        raise ValueError("must be socks5://HOST:PORT or http://HOST:PORT (HTTP CONNECT)")
    return value.rstrip("/")


class OcppBackend(_Strict):
    """The gateway to the energy supplier's OCPP 1.6J backend: every charger is one charge point
    that connects to ``<url>/<backend_id>`` (docs/backend.md). ``proxy``: the smart meter
    gateway's CLS proxy (SOCKS5 or HTTP CONNECT), none: direct. ``through_smgw``: the connection
    runs through the SMGW (default: when a ``proxy`` and an ``smgw:`` section are both set); it
    is then enabled only by ``ocpp`` in ``smgw.functions``."""

    url: Annotated[str, Strict(), AfterValidator(_backend_url)]
    proxy: Annotated[str, Strict(), AfterValidator(_proxy_url)] | None = None
    through_smgw: Bool | None = None
    password: Annotated[str, Strict(), Field(min_length=1, max_length=40)] | None = Field(None, repr=False)
    ca: AbsPath | None = None
    cert: AbsPath | None = None
    key: AbsPath | None = None
    id_tag: Annotated[str, Strict(), Field(min_length=1, max_length=20)] = "gridcharge"
    meter_values_interval_s: Annotated[int, Strict(), Field(ge=1, le=3600)] = 60
    heartbeat_s: Annotated[int, Strict(), Field(ge=30, le=86400)] = 300


def runs_through_smgw(backend: OcppBackend, smgw: Smgw | None) -> bool:
    """The gateway's connection goes through the SMGW: ``through_smgw`` as given, else when it
    has a ``proxy`` and an ``smgw:`` section exists (the SMGW's CLS proxy is the usual proxy)."""
    if backend.through_smgw is not None:
        return backend.through_smgw
    return backend.proxy is not None and smgw is not None


def backend_disabled_reason(backend: OcppBackend, smgw: Smgw | None) -> str | None:
    """Why the configured gateway stays off (None: it runs): through the SMGW it needs ``ocpp``
    in ``smgw.functions``."""
    if runs_through_smgw(backend, smgw) and (smgw is None or "ocpp" not in smgw.functions):
        return "off: it runs through the SMGW, and smgw.functions does not list ocpp"
    return None


GRID_LOG_MAX_BYTES = 1_000_000_000  # 1 GB: years of a busy site's record on any SD card


class GridLogConfig(_Strict):
    """The grid signal log in ``state_dir`` (``controller.records.gridlog``): its size budget. The log
    warns (log and status) when its last two years near the budget, and over it deletes the
    oldest rows, those older than two years first."""

    max_bytes: Annotated[int, Strict(), Field(ge=1_000_000, le=1_000_000_000_000)] = GRID_LOG_MAX_BYTES


def _topic_prefix(value: str) -> str:
    """An MQTT topic prefix: levels of letters, digits, ``_ - .`` joined by ``/``; no wildcard
    (``+``, ``#``), no empty level, no ``/`` at either end."""
    if len(value) > 100 or not re.fullmatch(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*", value):
        raise ValueError("must be topic levels of letters, digits, '_', '-' or '.' joined by '/' "
                         f"(no '+', '#', spaces or '/' at either end), at most 100 characters, not '{value}'")
    return value


TopicPrefix = Annotated[str, Strict(), AfterValidator(_topic_prefix)]
#: Topic levels of their own under ``<prefix>/``: a charger may not have one as its id.
MQTT_RESERVED_LEVELS = frozenset({"site", "set", "status"})


class MqttTls(_Strict):
    """TLS to the broker: ``ca`` (default: the system's trusted CAs), a client certificate as
    ``cert`` and ``key`` (both or neither)."""

    ca: AbsPath | None = None
    cert: AbsPath | None = None
    key: AbsPath | None = None


class Mqtt(_Strict):
    """The MQTT bridge (docs/mqtt.md): state out as retained topics under ``prefix``, Home
    Assistant discovery under ``discovery_prefix`` when ``homeassistant``, and sets of the
    variables named in ``writable`` (default: none) from ``<prefix>/set/<VAR>``."""

    host: Host
    port: Port = 1883
    user: Annotated[str, Strict(), Field(min_length=1, max_length=256)] | None = None
    password: Annotated[str, Strict(), Field(min_length=1, max_length=256)] | None = Field(None, repr=False)
    tls: MqttTls | None = None
    prefix: TopicPrefix = "gridcharge"
    homeassistant: Bool = True
    discovery_prefix: TopicPrefix = "homeassistant"
    writable: tuple[Text, ...] = ()


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
    model: Text | None = None  # a name from hal.modbus.profile.PROFILE_NAMES ...
    profile: dict[Text, Any] | None = None  # ... or an inline custom profile (same schema)


class MeterConfig(_ProfileDevice):
    """An electricity meter; ``site.grid_meter`` names the one at the grid connection."""


PhaseName = Literal["L1", "L2", "L3"]


def _iec_minimum(value: float) -> float:
    if value < IEC_MIN_CURRENT_A:
        raise ValueError(f"must be at least {IEC_MIN_CURRENT_A:g} A: IEC 61851 charging cannot be offered less")
    return value


def _failsafe_current(value: float) -> float:
    if 0 < value < IEC_MIN_CURRENT_A:
        raise ValueError(f"must be 0 (stop) or at least {IEC_MIN_CURRENT_A:g} A (IEC 61851)")
    return value


def _charge_box_id(value: str) -> str:
    """OCPP CiString48, printable ASCII, and never a ``/``: it is the last segment of the URL."""
    if not (1 <= len(value) <= 48) or not all(" " < ch < "\x7f" for ch in value) or "/" in value:
        raise ValueError("1 to 48 printable characters without spaces or '/' (OCPP CiString48, "
                         "the last part of the box's URL)")
    return value


class Loadpoint(_Strict):
    """What load management needs of a charger, whatever protocol reaches it: how it is wired
    (phases) and what it may be given. Each driver's charger entry is a subclass that adds how
    its box is reached (``ModbusChargerConfig``: a profile, a bus or host, a unit)."""

    phases: Annotated[Literal[1, 3], IntOnly] = 3
    phase: PhaseName = "L1"  # the phase a 1-phase box is wired to
    min_current_a: Annotated[float, Strict(), Field(le=32), AfterValidator(_iec_minimum)] = IEC_MIN_CURRENT_A
    max_current_a: LimitFormula = 16.0
    priority: Int = Field(1, ge=0, le=100)
    failsafe_current_a: Annotated[
        float, Strict(), Field(ge=0, le=MAX_CURRENT_A), AfterValidator(_failsafe_current)
    ] = 6.0
    #: The charge point id at the supplier's OCPP backend (``ocpp_backend:``); default: the charger's name.
    backend_id: Annotated[str, Strict(), AfterValidator(_charge_box_id)] | None = None

    @property
    def phase_index(self) -> int:
        """0, 1, 2 for L1, L2, L3."""
        return int(self.phase[1]) - 1

    @property
    def driver_model(self) -> str:
        """The ``model:`` as written (for humans: check-config, the status)."""
        return str(getattr(self, "model", None) or "custom")

    def connection_text(self) -> str:
        """How the box is reached, in a few words (``rs485 unit 2``); each driver says its own."""
        raise NotImplementedError


class ModbusChargerConfig(Loadpoint, _ProfileDevice):
    """A wallbox reached over Modbus: its loadpoint settings and its Modbus connection (a packaged
    profile by ``model`` or an inline ``profile``, a ``bus`` or a ``host``, a ``unit``)."""

    def connection_text(self) -> str:
        where = self.bus if self.bus is not None else f"{self.host}:{self.tcp_port}"
        return f"{where} unit {self.unit}"


IdTag = Annotated[str, Strict(), Field(min_length=1, max_length=20)]  # OCPP IdToken: CiString20


class OcppChargerConfig(Loadpoint):
    """A wallbox that connects to gridcharge's OCPP central system (``ocpp:`` section) by its
    ``charge_box_id``; ``password`` is the HTTP basic auth password it presents (none: no
    authentication), ``connector`` the connector that is this loadpoint, ``id_tags`` the RFID tags
    it may accept (none: every tag)."""

    model: Literal["ocpp"]
    charge_box_id: Annotated[str, Strict(), AfterValidator(_charge_box_id)]
    password: Annotated[str, Strict(), Field(min_length=8, max_length=40)] | None = Field(None, repr=False)
    connector: Annotated[int, Strict(), Field(ge=1, le=99)] = 1
    id_tags: tuple[IdTag, ...] | None = None

    def connection_text(self) -> str:
        return f"OCPP {self.charge_box_id} connector {self.connector}"


#: Charger entries of other drivers, by the ``model:`` that selects them (``controller/drivers.py``
#: registers them); any other model names a Modbus profile. The OCPP entry type lives here, so
#: any config with ``model: ocpp`` parses, whether or not the driver's builder was imported.
CHARGER_MODELS: dict[str, type[Loadpoint]] = {"ocpp": OcppChargerConfig}


def charger_model(entry: Any) -> type[Loadpoint]:
    """The entry type of a charger, by its ``model:``."""
    model = entry.get("model") if isinstance(entry, Mapping) else None
    return CHARGER_MODELS.get(model, ModbusChargerConfig) if isinstance(model, str) else ModbusChargerConfig


def _charger(value: Any) -> Loadpoint:
    if isinstance(value, Loadpoint):
        return value
    return charger_model(value).model_validate(value)


#: A charger entry: validated as the type its ``model:`` selects (looked up when validating, so
#: a driver registered later is found).
ChargerConfig = Annotated[Loadpoint, PlainValidator(_charger, json_schema_input_type=dict[str, Any])]


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
        """``"coil"`` or ``"discrete"`` (hal.modbus.types.Table values)."""
        return "coil" if self.coil is not None else "discrete"

    @property
    def index(self) -> int:
        return self.coil if self.coil is not None else int(self.discrete_input or 0)


_GPIO_ONLY = frozenset({"gpio", "pull_up", "bounce_s"})


def input_kind(value: Any) -> str:
    """GPIO when the entry says so by a GPIO-only key (so a forgotten ``gpio:`` is reported as
    missing, not as a Modbus input with unknown keys)."""
    if isinstance(value, Mapping) and _GPIO_ONLY.intersection(value):
        return "gpio"
    return "modbus"


InputConfig = Annotated[
    Union[Annotated[GpioInputConfig, Tag("gpio")], Annotated[ModbusInputConfig, Tag("modbus")]],
    Discriminator(input_kind),
]


class Rule(_Strict):
    """A charging rule (docs/load-management.md): while ``when`` holds, cap the chargers it names."""

    name: Annotated[str, Strict(), Field(min_length=1, max_length=100)]
    chargers: tuple[Text, ...] | None = None  # None: all chargers
    when: ConditionFormula | None = None  # None: always
    max_current_a: LimitFormula | None = None
    max_power_w: LimitFormula | None = None


class Config(_Strict):
    """The whole validated configuration. Treat its dicts as read-only."""

    site: Site
    state_dir: AbsPath = Path("/var/lib/gridcharge")
    grid_log: GridLogConfig = Field(default_factory=GridLogConfig)
    http: Http | None = None
    smgw: Smgw | None = None
    ocpp: OcppServer | None = None
    ocpp_backend: OcppBackend | None = None
    buses: dict[Text, BusConfig] = Field(default_factory=dict)
    meters: dict[Text, MeterConfig] = Field(default_factory=dict)
    chargers: dict[Text, ChargerConfig] = Field(default_factory=dict)
    inputs: dict[Text, InputConfig] = Field(default_factory=dict)
    variables: dict[Text, VariableValue] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    max_variables: MaxVariables = DEFAULT_MAX_VARIABLES  # the API refuses to add more (VariableStore)
    mqtt: Mqtt | None = None  # the MQTT bridge and Home Assistant discovery (docs/mqtt.md)

    @property
    def backend_ids(self) -> dict[str, str]:
        """Charger id → its charge point id at the supplier's backend (``backend_id``, default the id)."""
        return {cid: c.backend_id or cid for cid, c in self.chargers.items()}

    @property
    def device_ids(self) -> frozenset[str]:
        """Meter, charger and input ids: names a variable may not take (VariableStore ``reserved``)."""
        return frozenset(self.meters) | frozenset(self.chargers) | frozenset(self.inputs)


# --------------------------------------------------------------------------- the Modbus devices


def modbus_devices(cfg: Config) -> Iterator[tuple[str, ModbusDeviceConfig]]:
    """Every device that talks Modbus: meters, Modbus chargers, Modbus inputs (not GPIO)."""
    yield from cfg.meters.items()
    yield from ((i, c) for i, c in cfg.chargers.items() if isinstance(c, ModbusDeviceConfig))
    yield from ((i, d) for i, d in cfg.inputs.items() if isinstance(d, ModbusInputConfig))


def all_buses(cfg: Config) -> dict[str, RtuBus | TcpBus | RtuOverTcpBus]:
    """Declared buses plus the implicit ``tcp:HOST:PORT`` ones of devices that give ``host``."""
    return {**cfg.buses, **implicit_buses(cfg)}


def devices_on_bus(cfg: Config) -> dict[str, tuple[str, ...]]:
    """Bus name → ids of the devices on it (config order); buses without devices are absent."""
    result: dict[str, list[str]] = {}
    for device_id, device in modbus_devices(cfg):
        result.setdefault(device.bus_name, []).append(device_id)
    return {name: tuple(ids) for name, ids in result.items()}


def implicit_buses(cfg: Config) -> dict[str, TcpBus]:
    """One TCP bus per distinct ``host:port`` given on devices, named ``tcp:HOST:PORT``."""
    return {
        device.bus_name: TcpBus(type="tcp", host=device.host, port=device.tcp_port)
        for _, device in modbus_devices(cfg)
        if device.bus is None and device.host is not None
    }


def device_profile(device: ModbusDeviceConfig, path: str = "") -> profiles.Profile:
    """The device's profile: the packaged model, or its inline custom profile."""
    inline = getattr(device, "profile", None)
    if inline is not None:
        return profiles.parse_profile(inline, f"{path}.profile" if path else "profile")
    return profiles.load_profile(str(getattr(device, "model", None)))
