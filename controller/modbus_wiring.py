"""The Modbus driver's part of building: buses as links, profile meters, chargers and inputs.

A device given by ``host:`` instead of ``bus:`` gets an implicit TCP bus of its own
(``tcp:HOST:PORT``), which is also its worker group, so every TCP box is read in parallel with
the others; the devices on one RS485 line share its bus and its worker.
"""

from __future__ import annotations

from typing import NamedTuple

from controller.config import (
    BusConfig,
    MeterConfig,
    ModbusChargerConfig,
    ModbusDeviceConfig,
    ModbusInputConfig,
    RtuBus,
    RtuOverTcpBus,
    all_buses,
    device_profile,
)
from controller.hardware import BuildContext, DeviceHandle
from hal.modbus.bus import BusSpec, ModbusBus
from hal.modbus.devices import ModbusInput, ProfileCharger, ProfileMeter
from hal.modbus.profile import Profile, load_profile
from hal.modbus.types import RequestPolicy, Table
from hal.types import Charger, Input, Meter


def bus_spec(name: str, bus_cfg: BusConfig) -> BusSpec:
    if isinstance(bus_cfg, RtuBus):
        return BusSpec(name=name, kind="rtu", port=bus_cfg.port, baudrate=bus_cfg.baudrate, parity=bus_cfg.parity,
                       stopbits=bus_cfg.stopbits, timeout_s=bus_cfg.timeout_s, retries=bus_cfg.retries)
    if isinstance(bus_cfg, RtuOverTcpBus):
        return BusSpec(name=name, kind="rtu-over-tcp", host=bus_cfg.host, tcp_port=bus_cfg.port,
                       baudrate=bus_cfg.baudrate, parity=bus_cfg.parity, stopbits=bus_cfg.stopbits,
                       timeout_s=bus_cfg.timeout_s, retries=bus_cfg.retries)
    return BusSpec(name=name, kind="tcp", host=bus_cfg.host, tcp_port=bus_cfg.port,
                   timeout_s=bus_cfg.timeout_s, retries=bus_cfg.retries)


class _Buses:
    """The buses of one build, created on first use."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.configs = all_buses(ctx.cfg)  # declared ones plus the implicit tcp:HOST:PORT ones

    def bus_for(self, dev_cfg: ModbusDeviceConfig) -> tuple[str, ModbusBus, BusConfig]:
        """The bus a device talks on, and the bus's config."""
        name = dev_cfg.bus_name
        bus_cfg = self.configs[name]
        bus = self.ctx.hw.links.get(name)
        if not isinstance(bus, ModbusBus):
            bus = self.ctx.hw.links[name] = ModbusBus(bus_spec(name, bus_cfg), one_shot=self.ctx.one_shot)
        return name, bus, bus_cfg

    @staticmethod
    def policy(dev_cfg: ModbusDeviceConfig, profile_policy: RequestPolicy, bus_cfg: BusConfig) -> RequestPolicy:
        """The device's own timeout and gap where given, else the bus's timeout and retries and
        the profile's gap (a device need, e.g. the SDM630's 60 ms)."""
        gap = profile_policy.gap_s if dev_cfg.gap_s is None else dev_cfg.gap_s
        return RequestPolicy(timeout_s=dev_cfg.timeout_s or bus_cfg.timeout_s, gap_s=gap, retries=bus_cfg.retries)


def _buses(ctx: BuildContext) -> _Buses:
    buses = ctx.scratch.get("modbus")
    if not isinstance(buses, _Buses):
        buses = ctx.scratch["modbus"] = _Buses(ctx)
    return buses


class _Placed(NamedTuple):
    """A profile device's place: its bus (also its worker group), profile and request policy."""

    group: str
    bus: ModbusBus
    profile: Profile
    policy: RequestPolicy


def _place(ctx: BuildContext, dev_cfg: ModbusDeviceConfig, where: str) -> _Placed:
    buses = _buses(ctx)
    profile = device_profile(dev_cfg, where)
    group, bus, bus_cfg = buses.bus_for(dev_cfg)
    return _Placed(group, bus, profile, buses.policy(dev_cfg, profile.request, bus_cfg))


def build_meter(ctx: BuildContext, dev_id: str, dev_cfg: MeterConfig) -> DeviceHandle[Meter]:
    at = _place(ctx, dev_cfg, f"meters.{dev_id}")
    device = ProfileMeter(dev_id, at.profile, at.bus, dev_cfg.unit, at.policy)
    return DeviceHandle(dev_id, "meter", at.profile.model, f"{at.group} unit {dev_cfg.unit}", at.group, device)


def build_charger(ctx: BuildContext, dev_id: str, dev_cfg: ModbusChargerConfig) -> DeviceHandle[Charger]:
    at = _place(ctx, dev_cfg, f"chargers.{dev_id}")
    device = ProfileCharger(dev_id, at.profile, at.bus, dev_cfg.unit, at.policy)
    return DeviceHandle(dev_id, "charger", at.profile.model, f"{at.group} unit {dev_cfg.unit}", at.group, device)


def build_input(ctx: BuildContext, dev_id: str, in_cfg: ModbusInputConfig) -> DeviceHandle[Input]:
    buses = _buses(ctx)
    group, bus, bus_cfg = buses.bus_for(in_cfg)
    table, index = Table(in_cfg.table), in_cfg.index
    active_low = in_cfg.active_low != in_cfg.normally_closed
    profile = load_profile(in_cfg.model or "modbus_io")
    device = ModbusInput(dev_id, bus, in_cfg.unit, index, table=table, active_low=active_low,
                         policy=buses.policy(in_cfg, profile.request, bus_cfg))
    return DeviceHandle(dev_id, "input", profile.model, f"{group} unit {in_cfg.unit} {table.value} {index}",
                        group, device)
