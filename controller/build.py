"""Build the hardware a validated config describes: buses, profile devices, GPIO inputs.

The only place where config meets ``hal``: everything after this talks to devices through the
small protocols in ``hal.types``. A device given by ``host:`` instead of ``bus:`` gets an implicit
TCP bus of its own (``tcp:HOST:PORT``), which is also its worker group, so every TCP box is read
in parallel with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.config import GpioInputConfig, device_profile
from hal.modbus.devices import ModbusInput, ProfileCharger, ProfileMeter
from hal.gpio import GpioInput
from hal.modbus.bus import BusSpec, ModbusBus
from hal.modbus.profile import load_profile
from hal.modbus.types import RequestPolicy, Table

log = logging.getLogger(__name__)


@dataclass
class DeviceHandle:
    id: str
    kind: str  # "meter" | "charger" | "input"
    model: str
    address: str  # for humans: "rs485 unit 2", "192.168.1.50:502 unit 1", "GPIO17"
    group: str | None  # worker group (the bus name); None = read on the loop thread (GPIO)
    device: Any


@dataclass
class Hardware:
    meters: dict[str, DeviceHandle] = field(default_factory=dict)
    chargers: dict[str, DeviceHandle] = field(default_factory=dict)
    inputs: dict[str, DeviceHandle] = field(default_factory=dict)
    buses: dict[str, ModbusBus] = field(default_factory=dict)
    gpio: list[GpioInput] = field(default_factory=list)

    def all(self) -> list[DeviceHandle]:
        return [*self.meters.values(), *self.chargers.values(), *self.inputs.values()]

    def groups(self) -> list[str]:
        return sorted({h.group for h in self.all() if h.group is not None} | {"local"})

    def close(self) -> None:
        for bus in self.buses.values():
            bus.close()
        for pin in self.gpio:
            pin.close()


def bus_spec(name: str, bus_cfg: Any) -> BusSpec:
    kind = bus_cfg.type
    common = dict(name=name, kind=kind, timeout_s=bus_cfg.timeout_s, retries=bus_cfg.retries)
    if kind == "rtu":
        return BusSpec(port=bus_cfg.port, baudrate=bus_cfg.baudrate, parity=bus_cfg.parity,
                       stopbits=bus_cfg.stopbits, **common)
    if kind == "rtu-over-tcp":
        return BusSpec(host=bus_cfg.host, tcp_port=bus_cfg.port, baudrate=bus_cfg.baudrate,
                       parity=bus_cfg.parity, stopbits=bus_cfg.stopbits, **common)
    return BusSpec(host=bus_cfg.host, tcp_port=bus_cfg.port, **common)


class _Builder:
    def __init__(self, cfg: Any, *, one_shot: bool = False) -> None:
        self.cfg = cfg
        self.bus_configs = cfg.all_buses()  # declared ones plus the implicit tcp:HOST:PORT ones
        self.one_shot = one_shot
        self.hw = Hardware()

    def bus_for(self, dev_cfg: Any) -> tuple[str, ModbusBus, Any]:
        """The bus a device talks on, created on first use; and the bus's config."""
        name = dev_cfg.bus_name
        bus_cfg = self.bus_configs[name]
        if name not in self.hw.buses:
            self.hw.buses[name] = ModbusBus(bus_spec(name, bus_cfg), one_shot=self.one_shot)
        return name, self.hw.buses[name], bus_cfg

    def policy(self, dev_cfg: Any, profile_policy: RequestPolicy, bus_cfg: Any) -> RequestPolicy:
        """The device's own timeout and gap where given, else the bus's timeout and retries and
        the profile's gap (a device need, e.g. the SDM630's 60 ms)."""
        gap = profile_policy.gap_s if dev_cfg.gap_s is None else dev_cfg.gap_s
        return RequestPolicy(timeout_s=dev_cfg.timeout_s or bus_cfg.timeout_s, gap_s=gap, retries=bus_cfg.retries)

    def profile_device(self, kind: str, dev_id: str, dev_cfg: Any) -> DeviceHandle:
        profile = device_profile(dev_cfg, f"{kind}s.{dev_id}")
        group, bus, bus_cfg = self.bus_for(dev_cfg)
        unit = dev_cfg.unit
        policy = self.policy(dev_cfg, profile.request, bus_cfg)
        cls = ProfileMeter if kind == "meter" else ProfileCharger
        device = cls(dev_id, profile, bus, unit, policy)
        return DeviceHandle(dev_id, kind, profile.model, f"{group} unit {unit}", group, device)

    def input_device(self, dev_id: str, in_cfg: Any, on_edge: Callable[[str], None] | None,
                     pin_factory: Any) -> DeviceHandle:
        if isinstance(in_cfg, GpioInputConfig):
            pin = GpioInput(dev_id, in_cfg.gpio, pull_up=in_cfg.pull_up, active_low=in_cfg.active_low,
                            normally_closed=in_cfg.normally_closed, bounce_s=in_cfg.bounce_s,
                            on_edge=on_edge, pin_factory=pin_factory)
            self.hw.gpio.append(pin)
            return DeviceHandle(dev_id, "input", "gpio", f"GPIO{in_cfg.gpio}", None, pin)
        group, bus, bus_cfg = self.bus_for(in_cfg)
        table, index = Table(in_cfg.table), in_cfg.index
        active_low = in_cfg.active_low != in_cfg.normally_closed
        profile = load_profile(in_cfg.model or "modbus_io")
        device = ModbusInput(dev_id, bus, in_cfg.unit, index, table=table, active_low=active_low,
                             policy=self.policy(in_cfg, profile.request, bus_cfg))
        return DeviceHandle(dev_id, "input", profile.model, f"{group} unit {in_cfg.unit} {table.value} {index}",
                            group, device)


def build_hardware(cfg: Any, *, on_edge: Callable[[str], None] | None = None,
                   pin_factory: Any = None) -> Hardware:
    """Create every bus and device of ``cfg``; nothing is contacted yet."""
    b = _Builder(cfg)
    for dev_id, dev_cfg in cfg.meters.items():
        b.hw.meters[dev_id] = b.profile_device("meter", dev_id, dev_cfg)
    for dev_id, dev_cfg in cfg.chargers.items():
        b.hw.chargers[dev_id] = b.profile_device("charger", dev_id, dev_cfg)
    for dev_id, in_cfg in cfg.inputs.items():
        b.hw.inputs[dev_id] = b.input_device(dev_id, in_cfg, on_edge, pin_factory)
    return b.hw


class UnknownDevice(KeyError):
    """``build_device`` was asked for an id the config does not have."""


def build_device(cfg: Any, dev_id: str) -> tuple[Hardware, DeviceHandle]:
    """Only ``dev_id`` and the bus it is on, for one read (``gridcharge read``).

    Nothing else of the site is built: no other bus is opened and no GPIO pin is claimed, so
    reading a meter on a machine without GPIO logs nothing about GPIO, and a pin another program
    holds does not matter. The bus is ``one_shot``: a link that does not open fails with its
    reason, without a reconnect schedule. Raises UnknownDevice.
    """
    b = _Builder(cfg, one_shot=True)
    if dev_id in cfg.meters:
        handle = b.hw.meters[dev_id] = b.profile_device("meter", dev_id, cfg.meters[dev_id])
    elif dev_id in cfg.chargers:
        handle = b.hw.chargers[dev_id] = b.profile_device("charger", dev_id, cfg.chargers[dev_id])
    elif dev_id in cfg.inputs:
        handle = b.hw.inputs[dev_id] = b.input_device(dev_id, cfg.inputs[dev_id], None, None)
    else:
        raise UnknownDevice(dev_id)
    return b.hw, handle

