"""A whole simulated site on real Modbus servers: grid meter, wallboxes, ripple-control contacts.

This module owns the wiring of the simulator: which simulated device sits on which server, unit
and link, and the configuration a controller needs to reach them (``config_dict()``, docs/configuration.md).
The physics is ``hal.sim.physics``; the registers are ``hal.sim.bank``; the servers are
``hal.modbus.server``. Used by the integration tests, the benchmarks and ``gridcharge demo``.

Links, as in a real installation:

- ``tcp``: a Modbus TCP device. By default every TCP device gets its own server and port, as
  real boxes have their own IP addresses (``tcp_layout="per_device"``); ``"shared"`` puts all
  of them as units on one server.
- ``rtu``: one RS485 line over a :class:`~hal.sim.pty.PtyNullModem`, every RTU device a unit on
  it. A pseudo-terminal refuses parity, so the line runs 8N1 even for a Heidelberg (8E1 on a real
  bus); the configuration says so. A pseudo-terminal also moves bytes at once, so the server
  adds the wire time of every frame at 19200 baud 8E1 (:class:`~hal.modbus.server.LineTiming`):
  RS485 is slow, and a controller that forgets it shows up here.
- ``rtu-over-tcp``: one RS485-to-Ethernet gateway in transparent mode (RTU frames over TCP), with
  the same RS485 wire time behind it.

Every device may have a latency of its own (``latency_s`` in its spec, ``set_latency()`` at run
time): the time it takes before it answers. Devices on an RS485 line default to
:data:`RS485_LATENCY_S`, TCP devices to none.

Time flows without a thread of its own: every register read integrates the physics up to the
clock's now, so what a reader sees is always current, and nothing happens that nobody can see.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hal.modbus.server import LineTiming, ModbusServer, ServerLoop
from hal.modbus.profile import Kind, Profile, load_profile
from hal.sim.bank import ProfileBank
from hal.sim.physics import (
    DEFAULT_VOLTAGE_V,
    Clock,
    KeepaliveOn,
    SimCar,
    SimContact,
    SimSite,
    SimWallbox,
    WallboxConfig,
)
from hal.sim.pty import PtyNullModem
from hal.types import Phases3

log = logging.getLogger(__name__)

Link = Literal["tcp", "rtu", "rtu-over-tcp"]
LINKS: tuple[str, ...] = ("tcp", "rtu", "rtu-over-tcp")
HOST = "127.0.0.1"
RTU_BUS = "sim_rtu"
GATEWAY_BUS = "sim_gateway"
SHARED_TCP_BUS = "sim_tcp"
RTU_BAUDRATE = 19200
#: The RS485 line's timing: 19200 baud, 11 bits a character (8E1, as a Heidelberg needs).
RS485_LINE = LineTiming(RTU_BAUDRATE, 11)
#: A device's own time to answer on RS485 (docs/devices.md, RTU timing: typically 5-50 ms).
RS485_LATENCY_S = 0.01


#: The most a simulated box accepts when its profile states no ``max_current_a``: the Alfen, ABB
#: Terra AC and cFos boxes come in 16 A and 32 A variants, so their profiles leave it out and the
#: simulator builds the 16 A (11 kW) one. A scenario with a 32 A box says so in its spec.
DEFAULT_MAX_CURRENT_A = 16.0


@dataclass(frozen=True)
class ModelBehaviour:
    """How a wallbox model behaves beyond its registers, as it leaves the factory.

    Derived from the profile's facts only (:meth:`of`), so a new model needs no simulator edit:
    ``max_current_a`` from ``max_current_a``; the watchdog is fed by any request when the
    profile's ``fallback.fed_by`` is ``any_request`` (Heidelberg, cFos), else only by a write of
    the limit (Alfen's validity time; also a box with no known watchdog, where it never expires);
    the factory watchdog and fail-safe current from ``fallback.factory_timeout_s`` (or a fixed
    ``timeout_s``) and ``fallback.failsafe_current_a``. The controller's setup writes may change
    the last two, as on a real box.
    """

    max_current_a: float = DEFAULT_MAX_CURRENT_A
    keepalive_on: KeepaliveOn = KeepaliveOn.WRITE
    watchdog_timeout_s: float = 0.0  # 0: no watchdog
    failsafe_current_a: float = 0.0

    @classmethod
    def of(cls, profile: Profile) -> ModelBehaviour:
        """The behaviour a charger ``profile`` describes; defaults where it states nothing."""
        fallback, factory = profile.fallback, profile.factory_fallback
        return cls(
            max_current_a=_pick(profile.max_current_a, DEFAULT_MAX_CURRENT_A),
            keepalive_on=KeepaliveOn.ANY if fallback is not None and fallback.fed_by_any_request else KeepaliveOn.WRITE,
            watchdog_timeout_s=factory.timeout_s if factory is not None else 0.0,
            failsafe_current_a=factory.failsafe_current_a if factory is not None else 0.0,
        )


@dataclass(frozen=True)
class SimMeterSpec:
    """The grid meter of the site."""

    id: str = "M1"
    model: str = "sdm630"
    link: Link = "rtu"
    unit: int | None = None
    latency_s: float | None = None  # None: RS485_LATENCY_S on an RS485 line, 0 on TCP


@dataclass(frozen=True)
class SimChargerSpec:
    """One wallbox. ``None`` fields take the model's behaviour (:meth:`ModelBehaviour.of` its profile)."""

    id: str
    model: str
    link: Link = "tcp"
    unit: int | None = None
    phases: int = 3
    phase: str = "L1"
    max_current_a: float | None = None
    car: SimCar | None = None  # plugged in at start
    watchdog_timeout_s: float | None = None
    failsafe_current_a: float | None = None
    keepalive_on: KeepaliveOn | None = None
    initial_limit_a: float | None = None
    priority: int | None = None
    latency_s: float | None = None  # None: RS485_LATENCY_S on an RS485 line, 0 on TCP


@dataclass(frozen=True)
class SimInputModuleSpec:
    """A Modbus I/O module whose discrete inputs carry relay contacts (ripple-control receiver)."""

    id: str = "IO1"
    model: str = "modbus_io"
    link: Link = "rtu"
    unit: int | None = None
    inputs: tuple[str, ...] = ("RSE1",)  # input ids, on discrete inputs 0, 1, …
    latency_s: float | None = None  # None: RS485_LATENCY_S on an RS485 line, 0 on TCP


@dataclass(frozen=True)
class SimAddress:
    """Where a controller finds one simulated device."""

    link: Link
    unit: int
    host: str | None = None  # tcp, rtu-over-tcp
    port: int | None = None
    path: str | None = None  # rtu: the client end of the null modem
    baudrate: int | None = None


@dataclass
class _Device:
    id: str
    kind: Kind
    model: str
    link: Link
    unit: int
    bank: ProfileBank
    spec: Any
    server: ModbusServer | None = None
    latency_s: float = 0.0


@dataclass
class _Servers:
    loop: ServerLoop
    modem: PtyNullModem | None = None
    rtu: ModbusServer | None = None
    gateway: ModbusServer | None = None
    shared_tcp: ModbusServer | None = None
    per_device: dict[str, ModbusServer] = field(default_factory=dict)

    def all(self) -> list[ModbusServer]:
        shared = [s for s in (self.rtu, self.gateway, self.shared_tcp) if s is not None]
        return shared + list(self.per_device.values())


class SimulatedSite:
    """A meter, wallboxes and an I/O module on real Modbus servers, with physics behind them.

    ``start()`` and ``stop()`` are idempotent; ``start()`` after ``stop()`` serves again (same
    TCP ports, a new pseudo-terminal). Scenario hooks go to :attr:`physics` (plug a car, change
    the house load) or to this object (contacts, silent devices).
    """

    def __init__(
        self,
        *,
        meter: SimMeterSpec | None = SimMeterSpec(),
        chargers: Sequence[SimChargerSpec] = (),
        input_modules: Sequence[SimInputModuleSpec] = (),
        base_load_a: Phases3 = (0.0, 0.0, 0.0),
        voltage_v: Phases3 = DEFAULT_VOLTAGE_V,
        clock: Clock | None = None,
        tcp_layout: Literal["per_device", "shared"] = "per_device",
        host: str = HOST,
    ) -> None:
        if tcp_layout not in ("per_device", "shared"):
            raise ValueError(f"tcp_layout must be per_device or shared, not {tcp_layout!r}")
        self.physics = (SimSite(base_load_a=base_load_a, voltage_v=voltage_v) if clock is None
                        else SimSite(base_load_a=base_load_a, voltage_v=voltage_v, clock=clock))
        self.tcp_layout = tcp_layout
        self.host = host
        self.contacts: dict[str, SimContact] = {}
        self._lock = threading.RLock()
        self._servers: _Servers | None = None
        self._tcp_ports: dict[str, int] = {}  # remembered across restarts
        self._silent: set[str] = set()
        self._devices: dict[str, _Device] = {}
        self._units: dict[str, set[int]] = {}  # per shared server: units taken
        if meter is not None:
            self._add_meter(meter)
        for charger in chargers:
            self._add_charger(charger)
        for module in input_modules:
            self._add_input_module(module)

    # -- building ------------------------------------------------------------------------------

    def _add_meter(self, spec: SimMeterSpec) -> None:
        profile = self._profile(spec.model, Kind.METER)
        bank = ProfileBank(profile, self.physics.grid_meter)
        self._register(_Device(spec.id, Kind.METER, spec.model, spec.link, 0, bank, spec), spec.unit)

    def _add_charger(self, spec: SimChargerSpec) -> None:
        profile = self._profile(spec.model, Kind.CHARGER)
        behaviour = ModelBehaviour.of(profile)
        config = WallboxConfig(
            phases=spec.phases,
            phase=spec.phase,
            max_current_a=_pick(spec.max_current_a, behaviour.max_current_a),
            keepalive_on=_pick(spec.keepalive_on, behaviour.keepalive_on),
        )
        box = SimWallbox(
            config,
            watchdog_timeout_s=_pick(spec.watchdog_timeout_s, behaviour.watchdog_timeout_s),
            failsafe_current_a=_pick(spec.failsafe_current_a, behaviour.failsafe_current_a),
            initial_limit_a=spec.initial_limit_a,
        )
        self.physics.add_wallbox(spec.id, box)
        if spec.car is not None:
            box.plug(spec.car)
        bank = ProfileBank(profile, box)
        self._register(_Device(spec.id, Kind.CHARGER, spec.model, spec.link, 0, bank, spec), spec.unit)

    def _add_input_module(self, spec: SimInputModuleSpec) -> None:
        profile = self._profile(spec.model, Kind.INPUT)
        capacity = profile.inputs.count if profile.inputs is not None else 0
        if len(spec.inputs) > capacity:
            raise ValueError(f"{spec.id}: {spec.model} has {capacity} inputs, not {len(spec.inputs)}")
        contacts = []
        for input_id in spec.inputs:
            if input_id in self.contacts:
                raise ValueError(f"input {input_id!r} defined twice")
            contacts.append(self.contacts.setdefault(input_id, SimContact()))
        bank = ProfileBank(profile, contacts)
        self._register(_Device(spec.id, Kind.INPUT, spec.model, spec.link, 0, bank, spec), spec.unit)

    @staticmethod
    def _profile(model: str, kind: Kind) -> Profile:
        profile = load_profile(model)
        if profile.kind != kind:
            raise ValueError(f"{model} is a {profile.kind.value}, not a {kind.value}")
        return profile

    def _register(self, device: _Device, unit: int | None) -> None:
        if device.link not in LINKS:
            raise ValueError(f"{device.id}: link must be one of {LINKS}, not {device.link!r}")
        if device.id in self._devices:
            raise ValueError(f"device id {device.id!r} used twice")
        server_key = self._server_key(device)
        taken = self._units.setdefault(server_key, set())
        if unit is None:
            unit = device.bank.profile.link.default_unit if server_key.startswith("own:") else 1
            while unit in taken:
                unit += 1
        if unit in taken:
            raise ValueError(f"{device.id}: unit {unit} already used on {server_key}")
        if not 1 <= unit <= 247:
            raise ValueError(f"{device.id}: unit {unit} outside 1..247")
        taken.add(unit)
        device.unit = unit
        latency = getattr(device.spec, "latency_s", None)
        device.latency_s = (RS485_LATENCY_S if device.link != "tcp" else 0.0) if latency is None else latency
        self._devices[device.id] = device

    def _server_key(self, device: _Device) -> str:
        if device.link == "rtu":
            return RTU_BUS
        if device.link == "rtu-over-tcp":
            return GATEWAY_BUS
        return SHARED_TCP_BUS if self.tcp_layout == "shared" else f"own:{device.id}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SimulatedSite:
        """Start every server; returns once all listen. Idempotent."""
        with self._lock:
            if self._servers is not None:
                return self
            servers = _Servers(loop=ServerLoop().start())
            self._servers = servers
            try:
                self._start_servers(servers)
            except BaseException:
                self.stop()
                raise
            self._apply_behaviour()
            log.info("simulated site serving %d devices", len(self._devices))
            return self

    def _start_servers(self, servers: _Servers) -> None:
        groups: dict[str, dict[int, ProfileBank]] = {}
        for device in self._devices.values():
            groups.setdefault(self._server_key(device), {})[device.unit] = device.bank
        for key, banks in groups.items():
            if key == RTU_BUS:
                servers.modem = PtyNullModem()
                servers.rtu = ModbusServer.rtu(banks, servers.modem.port_b, RTU_BAUDRATE, "N", 1,
                                               loop=servers.loop, line=RS485_LINE).start()
            elif key == GATEWAY_BUS:
                servers.gateway = self._tcp(key, banks, servers.loop, rtu_framing=True, line=RS485_LINE)
            elif key == SHARED_TCP_BUS:
                servers.shared_tcp = self._tcp(key, banks, servers.loop)
            else:
                servers.per_device[key.removeprefix("own:")] = self._tcp(key, banks, servers.loop)
        for device in self._devices.values():
            device.server = self._server_of(device)

    def _tcp(self, key: str, banks: Mapping[int, ProfileBank], loop: ServerLoop, *,
             rtu_framing: bool = False, line: LineTiming | None = None) -> ModbusServer:
        server = ModbusServer.tcp(banks, self.host, self._tcp_ports.get(key, 0),
                                  rtu_framing=rtu_framing, loop=loop, line=line).start()
        self._tcp_ports[key] = int(server.port)
        return server

    def _server_of(self, device: _Device) -> ModbusServer | None:
        servers = self._servers
        if servers is None:
            return None
        key = self._server_key(device)
        if key == RTU_BUS:
            return servers.rtu
        if key == GATEWAY_BUS:
            return servers.gateway
        if key == SHARED_TCP_BUS:
            return servers.shared_tcp
        return servers.per_device.get(device.id)

    def stop(self) -> None:
        """Stop every server and close the pseudo-terminal. Idempotent."""
        with self._lock:
            servers, self._servers = self._servers, None
            if servers is None:
                return
            for server in servers.all():
                try:
                    server.stop()
                except Exception:  # keep stopping the others
                    log.exception("stopping a simulated server failed")
            servers.loop.stop()
            if servers.modem is not None:
                servers.modem.close()
            for device in self._devices.values():
                device.server = None

    @property
    def running(self) -> bool:
        return self._servers is not None

    def __enter__(self) -> SimulatedSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scenario hooks ------------------------------------------------------------------------

    def wallbox(self, charger_id: str) -> SimWallbox:
        return self.physics.wallbox(charger_id)

    def plug_car(self, charger_id: str, car: SimCar | None = None) -> None:
        self.physics.plug_car(charger_id, car)

    def unplug(self, charger_id: str) -> None:
        self.physics.unplug(charger_id)

    def set_base_load(self, l1_a: float, l2_a: float, l3_a: float) -> None:
        self.physics.set_base_load(l1_a, l2_a, l3_a)

    def set_contact(self, input_id: str, closed: bool) -> None:
        self.contacts[input_id].set(closed)

    def set_silent(self, device_id: str, silent: bool = True) -> None:
        """The device stops answering (dead unit, broken wire to the I/O module) or comes back."""
        with self._lock:
            if device_id not in self._devices:
                raise KeyError(device_id)
            if silent:
                self._silent.add(device_id)
            else:
                self._silent.discard(device_id)
            self._apply_behaviour()

    def set_input_broken(self, input_id: str, broken: bool = True) -> None:
        """A broken wire to a contact: the I/O module carrying it goes silent."""
        self.set_silent(self._module_of(input_id), broken)

    def _module_of(self, input_id: str) -> str:
        for device in self._devices.values():
            if device.kind is Kind.INPUT and input_id in device.spec.inputs:
                return device.id
        raise KeyError(input_id)

    def set_latency(self, device_id: str, seconds: float) -> None:
        """The device's own time to answer from now on (a busy or slow box)."""
        with self._lock:
            self._devices[device_id].latency_s = seconds
            self._apply_behaviour()

    def _apply_behaviour(self) -> None:
        for device in self._devices.values():
            if device.server is not None:
                device.server.set_silent(device.unit, device.id in self._silent)
                device.server.set_latency(device.unit, device.latency_s)

    # -- addresses and configuration -----------------------------------------------------------

    def bank(self, device_id: str) -> ProfileBank:
        return self._devices[device_id].bank

    def address(self, device_id: str) -> SimAddress:
        """Where the controller reaches ``device_id``; needs a started site."""
        with self._lock:
            device = self._devices[device_id]
            servers = self._servers
            if servers is None:
                raise RuntimeError("the simulated site is not started")
            if device.link == "rtu":
                assert servers.modem is not None
                return SimAddress("rtu", device.unit, path=servers.modem.port_a, baudrate=RTU_BAUDRATE)
            return SimAddress(device.link, device.unit, host=self.host,
                              port=self._tcp_ports[self._server_key(device)])

    def config_dict(self, *, timeout_s: float = 0.3) -> dict[str, Any]:
        """The ``buses``/``meters``/``chargers``/``inputs`` sections of a config (docs/configuration.md)."""
        with self._lock:
            if self._servers is None:
                raise RuntimeError("the simulated site is not started")
            config: dict[str, Any] = {"buses": {}, "meters": {}, "chargers": {}, "inputs": {}}
            for device in self._devices.values():
                entry = self._link_entry(device, config["buses"], timeout_s)
                if device.kind is Kind.METER:
                    config["meters"][device.id] = {"model": device.model, **entry}
                elif device.kind is Kind.CHARGER:
                    config["chargers"][device.id] = self._charger_entry(device, entry)
                else:
                    for index, input_id in enumerate(device.spec.inputs):
                        config["inputs"][input_id] = {**entry, "discrete_input": index}
            return config

    def _link_entry(self, device: _Device, buses: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        address = self.address(device.id)
        if device.link == "rtu":
            buses[RTU_BUS] = {"type": "rtu", "port": address.path, "baudrate": RTU_BAUDRATE,
                              "parity": "N", "stopbits": 1, "timeout_s": timeout_s}
            return {"bus": RTU_BUS, "unit": device.unit}
        if device.link == "rtu-over-tcp":
            buses[GATEWAY_BUS] = {"type": "rtu-over-tcp", "host": address.host, "port": address.port,
                                  "baudrate": RTU_BAUDRATE, "parity": "E", "stopbits": 1,  # as served
                                  "timeout_s": timeout_s}
            return {"bus": GATEWAY_BUS, "unit": device.unit}
        if self.tcp_layout == "shared":
            buses[SHARED_TCP_BUS] = {"type": "tcp", "host": address.host, "port": address.port,
                                     "timeout_s": timeout_s}
            return {"bus": SHARED_TCP_BUS, "unit": device.unit}
        if device.kind is Kind.INPUT:  # inputs always name a bus (docs/configuration.md shows no host form)
            bus = f"sim_{device.id.lower()}"
            buses[bus] = {"type": "tcp", "host": address.host, "port": address.port, "timeout_s": timeout_s}
            return {"bus": bus, "unit": device.unit}
        return {"host": address.host, "port": address.port, "unit": device.unit}

    def _charger_entry(self, device: _Device, entry: dict[str, Any]) -> dict[str, Any]:
        spec: SimChargerSpec = device.spec
        box = self.physics.wallbox(device.id)
        result: dict[str, Any] = {"model": device.model, **entry, "phases": spec.phases}
        if spec.phases == 1:
            result["phase"] = spec.phase
        result["min_current_a"] = 6
        result["max_current_a"] = box.config.max_current_a
        if spec.priority is not None:
            result["priority"] = spec.priority
        return result


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def demo_site(clock: Clock | None = None) -> SimulatedSite:
    """The site of ``gridcharge demo``: a typical home on one RS485 line plus a TCP wallbox.

    SDM630 grid meter, a Heidelberg on the RS485 line (unit 2) with a car plugged in, a 32 A Alfen
    on Modbus TCP with a car, and a ripple-control contact RSE1 on an I/O module (unit 5). House load
    about 2.3 kW, unbalanced.
    """
    return SimulatedSite(
        meter=SimMeterSpec("M1", "sdm630", "rtu", unit=1),
        chargers=[
            SimChargerSpec("E1", "heidelberg", "rtu", unit=2, car=SimCar(max_current_a=16)),
            SimChargerSpec("E2", "alfen", "tcp", max_current_a=32.0,
                           car=SimCar(max_current_a=16, phases=1, follow_delay_s=1.0)),
        ],
        input_modules=[SimInputModuleSpec("IO1", "modbus_io", "rtu", unit=5, inputs=("RSE1",))],
        base_load_a=(4.0, 2.5, 3.5),
        clock=clock,
    )


__all__ = [
    "DEFAULT_MAX_CURRENT_A",
    "LINKS",
    "ModelBehaviour",
    "SimAddress",
    "SimChargerSpec",
    "SimInputModuleSpec",
    "SimMeterSpec",
    "SimulatedSite",
    "demo_site",
]
