"""What ``gridcharge read`` prints: rounding by unit suffix, the one state vocabulary, and the
likely causes chosen by what failed and how the device is connected."""

from __future__ import annotations

import pytest

from controller.commands.read_failure import likely_causes
from controller.commands.readout import NO_VALUE, quantity, state_text, unit_of, value_lines
from hal.modbus.bus import BusSpec
from hal.types import CommCause, CommError, DeviceAnswerError, DeviceError, IecState, InputReading


@pytest.mark.parametrize(("name", "value", "text"), [
    ("voltage_l1_v", 231.1999969482422, "231.2 V"),
    ("current_l2_a", 16.0, "16.00 A"),
    ("current_l3_a", 0.004, "0.00 A"),
    ("power_w", 26730.400390625, "26730 W"),
    ("power_w", -0.3, "0 W"),  # no "-0 W"
    ("power_w", -1520.6, "-1521 W"),
    ("import_wh", 29.381776228547096, "29 Wh"),
    ("import_kwh", 1234.56789, "1234.568 kWh"),
    ("frequency_hz", 49.98765, "49.99 Hz"),
    ("power_factor", 0.98765, "0.99"),
    ("l1_cosphi", 0.951, "0.95"),
    ("reactive_power_var", 12.6, "13 var"),
    ("temperature_c", 41.25, "41.2 °C"),
    ("limit_a", 32, "32.00 A"),
    ("socket_lock", 257, "257"),  # no unit: as it came
    ("firmware", "1.0.7", "1.0.7"),
    ("odd_ratio", 1.23456789, "1.23457"),
    ("power_w", None, NO_VALUE),
    ("power_w", float("nan"), NO_VALUE),
])
def test_values_are_rounded_to_their_meaning(name: str, value: float | int | str | None, text: str) -> None:
    assert quantity(name, value) == text


def test_suffix_is_the_last_word_only() -> None:
    assert unit_of("export_wh") == ("Wh", 0) and unit_of("power_w") == ("W", 0)
    assert unit_of("energy_kwh") == ("kWh", 3)
    assert unit_of("state") is None and unit_of("wh") is None


def test_one_state_vocabulary() -> None:
    assert [s.label for s in IecState] == ["A (no car)", "B (car connected)", "C (charging)",
                                           "D (charging with ventilation)", "E (no power)", "F (error)"]
    assert state_text(IecState.C, 7) == "C (charging)   raw 7"
    assert state_text(None, 42, "unknown state code 42") == "unknown   raw 42 (unknown state code 42)"


def test_lines_of_a_charger_and_an_input() -> None:
    lines = [str(x) for x in value_lines({"state": "B2", "power_w": 0.0}, (IecState.B, None))]
    assert lines == ["  state            B (car connected)   raw B2", "  power_w          0 W"]
    assert [str(x) for x in value_lines({"discrete_0": 1, "active": 0})] == [
        "  discrete_0       1", "  active           no"]
    assert [str(x) for x in value_lines(InputReading(active=True))] == ["  active           yes"]


RTU = BusSpec(name="rs485", kind="rtu", port="/dev/gridcharge-rs485-0", baudrate=19200, parity="E")
TCP = BusSpec(name="tcp:192.168.1.50:502", kind="tcp", host="192.168.1.50", tcp_port=502)
GATEWAY = BusSpec(name="gw", kind="rtu-over-tcp", host="192.168.1.9", tcp_port=8899, baudrate=9600)


def causes(exc: DeviceError, bus: BusSpec | None, unit: int | None = 2) -> str:
    return "\n".join(likely_causes(exc, bus, unit))


def test_causes_by_kind() -> None:
    rs485 = causes(CommError("no answer", CommCause.NO_ANSWER), RTU)
    assert "A/B swapped" in rs485 and "address must be 2" in rs485 and "19200 8E1" in rs485
    assert "sudo systemctl stop gridcharge" in rs485
    gateway = causes(CommError("no answer", CommCause.NO_ANSWER), GATEWAY)
    assert "transparent mode" in gateway and "9600 8N1" in gateway
    assert "unit" in causes(CommError("no answer", CommCause.NO_ANSWER), TCP)
    refused = causes(CommError("refused", CommCause.REFUSED), TCP)
    assert "wrong host/port" in refused and "192.168.1.50:502" in refused and "Modbus TCP disabled" in refused
    assert "ping 192.168.1.50" in causes(CommError("timeout", CommCause.UNREACHABLE), TCP)
    assert "does not resolve" in causes(CommError("dns", CommCause.UNKNOWN_HOST), TCP)
    assert "not plugged in" in causes(CommError("enoent", CommCause.NO_PORT), RTU)
    assert "another program holds" in causes(CommError("locked", CommCause.PORT_BUSY), RTU)
    assert "dialout" in causes(CommError("eacces", CommCause.NO_PERMISSION), RTU)
    assert "broke during the read" in causes(CommError("lost", CommCause.LINK_LOST), TCP)
    assert "answered but refused" in causes(DeviceAnswerError("Modbus exception 2"), RTU)
    assert "GPIO" in causes(DeviceError("GPIO17 unavailable"), None, None)
