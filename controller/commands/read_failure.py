"""The likely causes of a failed ``gridcharge read``, in the words of an electrician at the
meter cabinet, chosen by what failed (``hal.types.CommCause``) and how the device is connected.

The bus says what it saw (no answer, connection refused, port in use, a Modbus exception); this
module says what usually causes that on site, most likely first, with the concrete settings
(the unit id, the line's baud rate and parity, the host and port) filled in, so the installer
can compare them with the device's menu.
"""

from __future__ import annotations

from hal.modbus.bus import BusSpec
from hal.types import CommCause, CommError, DeviceAnswerError, DeviceError

STOP_SERVICE = "sudo systemctl stop gridcharge"


def _line_settings(bus: BusSpec) -> str:
    return f"{bus.baudrate} 8{bus.parity}{bus.stopbits}"


def _no_answer_rs485(bus: BusSpec, unit: int | None) -> list[str]:
    return [
        "A/B swapped: swap the two RS485 wires at the adapter (vendors label A/B and D+/D- differently)",
        f"wrong unit id: the device's own Modbus address must be {unit} (its menu or DIP switches)",
        f"wrong baud rate/parity: the device must be set to {_line_settings(bus)}, like the bus in the config",
        f"the service still holds the port: {STOP_SERVICE}, then read again",
        "the device has no power, or the line is not terminated (120 ohm at both ends)",
    ]


def _no_answer_gateway(bus: BusSpec, unit: int | None) -> list[str]:
    return [
        "A/B swapped between the gateway and the device",
        f"wrong unit id: the device's own Modbus address must be {unit}",
        f"the gateway's RS485 side is not set to the device's baud rate/parity (config: {_line_settings(bus)})",
        "the gateway is not in transparent mode (Modbus RTU over TCP); a gateway that converts to "
        "Modbus TCP is a bus of type: tcp",
    ]


def _no_answer_tcp(bus: BusSpec, unit: int | None) -> list[str]:
    return [
        f"wrong unit id: the box answers on another unit than {unit} (see its Modbus manual)",
        "the box accepts the connection but its Modbus server is switched off or serves one client "
        f"at a time (the service: {STOP_SERVICE})",
        "a Modbus TCP gateway that gets no answer on its RS485 side (wiring, unit id, baud rate)",
    ]


def _tcp_refused(bus: BusSpec) -> list[str]:
    return [
        f"wrong host/port: nothing accepts connections at {bus.host}:{bus.tcp_port} "
        "(Modbus TCP is usually port 502)",
        "Modbus TCP disabled on the box: switch it on in the box's settings or app",
    ]


def _tcp_unreachable(bus: BusSpec) -> list[str]:
    return [
        f"host not reachable / wrong address: check {bus.host} (ping {bus.host}), that the box is "
        "on, and that it is on this network",
    ]


def _answered_but_refused(unit: int | None) -> list[str]:
    return [
        "the unit answered but refused: wrong model/profile or register map for this device "
        f"(another device at unit {unit}? other firmware?)",
    ]


def likely_causes(exc: DeviceError, bus: BusSpec | None, unit: int | None) -> list[str]:
    """The likely causes of ``exc``, most likely first; ``bus`` None for a GPIO input."""
    if bus is None:
        return ["no GPIO on this machine (not a Raspberry Pi), python3-lgpio missing, or the pin "
                f"is held by another program (the service: {STOP_SERVICE})"]
    if isinstance(exc, DeviceAnswerError):
        return _answered_but_refused(unit)
    cause = exc.cause if isinstance(exc, CommError) else CommCause.CANNOT_OPEN
    if cause is CommCause.NO_ANSWER:
        if bus.kind == "rtu":
            return _no_answer_rs485(bus, unit)
        if bus.kind == "rtu-over-tcp":
            return _no_answer_gateway(bus, unit)
        return _no_answer_tcp(bus, unit)
    by_cause = {
        CommCause.REFUSED: lambda: _tcp_refused(bus),
        CommCause.UNREACHABLE: lambda: _tcp_unreachable(bus),
        CommCause.UNKNOWN_HOST: lambda: [f"the host name {bus.host} does not resolve: check its "
                                         "spelling, or use the box's IP address"],
        CommCause.NO_PORT: lambda: [f"the RS485 adapter is not plugged in, or {bus.port} is not its "
                                    "name: ls -l /dev/gridcharge-* /dev/ttyUSB*"],
        CommCause.PORT_BUSY: lambda: [f"another program holds {bus.port}, usually the service: "
                                      f"{STOP_SERVICE}, read, then sudo systemctl start gridcharge"],
        CommCause.NO_PERMISSION: lambda: [f"this user may not open {bus.port}: run the command with "
                                          "sudo, or add the user to the dialout group"],
        CommCause.LINK_LOST: lambda: ["the connection broke during the read: a loose cable, the box "
                                      "restarted, or it allows one Modbus client only (the service: "
                                      f"{STOP_SERVICE})"],
    }
    if cause in by_cause:
        return by_cause[cause]()
    if bus.kind == "rtu":
        return [f"the serial port {bus.port} cannot be opened: is the adapter plugged in?"]
    return _tcp_refused(bus) + _tcp_unreachable(bus)


__all__ = ["likely_causes"]
