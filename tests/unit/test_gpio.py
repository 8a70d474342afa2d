"""GPIO ripple-receiver contacts: polarity is configuration, an edge wakes the loop at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from hal.gpio import GpioInput
from hal.types import DeviceError


@pytest.fixture()
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.mark.parametrize(
    "pull_up, active_low, normally_closed, drive_low, expected",
    [
        (True, True, False, True, True),    # contact to GND closed → active
        (True, True, False, False, False),  # open → inactive
        (True, True, True, True, False),    # NC contact: closed is the normal state
        (True, True, True, False, True),    # NC contact opened → active
        (False, False, False, False, True),  # pull-down, contact to 3V3 closed (high) → active
        (False, False, False, True, False),
    ],
)
def test_polarity(factory: MockFactory, pull_up: bool, active_low: bool, normally_closed: bool,
                  drive_low: bool, expected: bool) -> None:
    rse = GpioInput("RSE1", 17, pull_up=pull_up, active_low=active_low, normally_closed=normally_closed,
                    bounce_s=None, pin_factory=factory)
    pin = factory.pin(17)
    pin.drive_low() if drive_low else pin.drive_high()
    assert rse.read().active is expected
    rse.close()


def test_edge_calls_back_at_once(factory: MockFactory) -> None:
    edges: list[str] = []
    rse = GpioInput("RSE1", 17, bounce_s=None, on_edge=edges.append, pin_factory=factory)
    factory.pin(17).drive_low()
    factory.pin(17).drive_high()
    assert edges == ["RSE1", "RSE1"]
    rse.close()


def test_unavailable_pin_has_no_value(factory: MockFactory) -> None:
    first = GpioInput("RSE1", 17, bounce_s=None, pin_factory=factory)
    second = GpioInput("RSE2", 17, bounce_s=None, pin_factory=factory)  # pin already in use
    with pytest.raises(DeviceError):
        second.read()
    first.close()
    with pytest.raises(DeviceError):
        first.read()  # closed: no value either
