"""Build the hardware a validated config describes, each device by its driver.

The only place where config meets ``hal``: everything after this talks to devices through the
small protocols in ``hal.types``. Meters and Modbus inputs are built by the Modbus driver
(``controller/modbus_wiring.py``), GPIO inputs here; a charger by the driver its entry type
selects (:data:`CHARGER_BUILDERS`, keyed by the config class its ``model:`` chose; a driver for
another protocol registers itself through ``controller/drivers.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Union

from controller import modbus_wiring
from controller.config import Config, GpioInputConfig, InputConfig, Loadpoint, ModbusChargerConfig
from controller.hardware import BuildContext, DeviceHandle, Hardware
from hal.gpio import GpioInput
from hal.types import Charger, Input, Meter, SessionEvent

log = logging.getLogger(__name__)

#: A driver's charger builder; it gets the entry of the config class it registered for.
ChargerBuilder = Callable[[BuildContext, str, Any], DeviceHandle[Charger]]
AnyHandle = Union[DeviceHandle[Meter], DeviceHandle[Charger], DeviceHandle[Input]]

#: The builder of each charger entry type. ``controller/drivers.py`` adds other protocols'.
CHARGER_BUILDERS: dict[type[Loadpoint], ChargerBuilder] = {ModbusChargerConfig: modbus_wiring.build_charger}


def _charger(ctx: BuildContext, dev_id: str, cc: Loadpoint) -> DeviceHandle[Charger]:
    for cls in type(cc).__mro__:
        builder = CHARGER_BUILDERS.get(cls)
        if builder is not None:
            handle = builder(ctx, dev_id, cc)
            if handle.group is None:
                raise ValueError(f"chargers.{dev_id}: the {type(cc).__name__} driver gave no worker group")
            return handle
    raise ValueError(f"chargers.{dev_id}: no driver builds a {type(cc).__name__}")


def _input(ctx: BuildContext, dev_id: str, in_cfg: InputConfig) -> DeviceHandle[Input]:
    if not isinstance(in_cfg, GpioInputConfig):
        return modbus_wiring.build_input(ctx, dev_id, in_cfg)
    pin = GpioInput(dev_id, in_cfg.gpio, pull_up=in_cfg.pull_up, active_low=in_cfg.active_low,
                    normally_closed=in_cfg.normally_closed, bounce_s=in_cfg.bounce_s,
                    on_edge=ctx.on_event, pin_factory=ctx.pin_factory)
    ctx.hw.closers.append(pin.close)
    return DeviceHandle(dev_id, "input", "gpio", f"GPIO{in_cfg.gpio}", None, pin)


def build_hardware(cfg: Config, *, on_event: Callable[[str], None] | None = None,
                   on_session: Callable[[SessionEvent], None] | None = None,
                   pin_factory: Any = None) -> Hardware:
    """Create every link and device of ``cfg``; nothing is contacted yet.

    ``on_event(device_id)``: a device pushed news (a GPIO edge): the loop should run at once.
    ``on_session(event)``: a box reported a session start or end itself (its handle says
    ``reports_sessions``).
    """
    ctx = BuildContext(cfg, Hardware(), on_event=on_event, on_session=on_session, pin_factory=pin_factory)
    for dev_id, dev_cfg in cfg.meters.items():
        ctx.hw.meters[dev_id] = modbus_wiring.build_meter(ctx, dev_id, dev_cfg)
    for dev_id, cc in cfg.chargers.items():
        ctx.hw.chargers[dev_id] = _charger(ctx, dev_id, cc)
    for dev_id, in_cfg in cfg.inputs.items():
        ctx.hw.inputs[dev_id] = _input(ctx, dev_id, in_cfg)
    return ctx.hw


class OneShotUnsupported(Exception):
    """``build_device`` was asked for a device that cannot be read once on its own (an OCPP box:
    it connects to the running service). ``str()`` says so for the installer."""


class UnknownDevice(KeyError):
    """``build_device`` was asked for an id the config does not have."""


def build_device(cfg: Config, dev_id: str) -> tuple[Hardware, AnyHandle]:
    """Only ``dev_id`` and the link it is on, for one read (``gridcharge read``).

    Nothing else of the site is built: no other bus is opened and no GPIO pin is claimed, so
    reading a meter on a machine without GPIO logs nothing about GPIO, and a pin another program
    holds does not matter. The link is ``one_shot``: one that does not open fails with its
    reason, without a reconnect schedule. Raises UnknownDevice, or OneShotUnsupported for a
    device its driver cannot read this way.
    """
    ctx = BuildContext(cfg, Hardware(), one_shot=True)
    if dev_id in cfg.meters:
        meter = ctx.hw.meters[dev_id] = modbus_wiring.build_meter(ctx, dev_id, cfg.meters[dev_id])
        return ctx.hw, meter
    if dev_id in cfg.chargers:
        charger = ctx.hw.chargers[dev_id] = _charger(ctx, dev_id, cfg.chargers[dev_id])
        return ctx.hw, charger
    if dev_id in cfg.inputs:
        contact = ctx.hw.inputs[dev_id] = _input(ctx, dev_id, cfg.inputs[dev_id])
        return ctx.hw, contact
    raise UnknownDevice(dev_id)



# The other protocols' drivers (controller/drivers.py registers them), so that every build knows
# them. At the end: the drivers import this module's CHARGER_BUILDERS and OneShotUnsupported.
from controller import drivers  # noqa: E402,F401
