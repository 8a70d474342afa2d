"""Ripple-control receiver contacts on GPIO pins, through gpiozero.

A potential-free relay contact sits between a GPIO pin and GND (pull-up on) or 3.3 V (pull-down).
Whether a closed contact means "restrict" or "release" is configuration, never code:
``active_low`` says which pin level is a closed contact, ``normally_closed`` inverts the meaning.
An edge calls ``on_edge`` at once (from gpiozero's thread) so the control loop can run a cycle
immediately. A pin that cannot be opened (no pin factory on this machine, pin busy) makes the
input unreadable: ``read()`` raises, and every formula that uses it fails to its fail-safe value,
so a broken input restricts charging rather than releasing it (docs/configuration.md).

Pin factory: gpiozero's default order already tries lgpio first, which is what a Raspberry Pi 5
needs; tests set ``GPIOZERO_PIN_FACTORY=mock`` or pass a MockFactory.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from hal.types import DeviceError, InputReading

log = logging.getLogger(__name__)


class GpioInput:
    """One contact on one BCM GPIO pin; implements ``hal.types.Input``."""

    def __init__(
        self,
        id: str,
        pin: int,
        *,
        pull_up: bool = True,
        active_low: bool = True,
        normally_closed: bool = False,
        bounce_s: float | None = 0.05,
        on_edge: Callable[[str], None] | None = None,
        pin_factory: Any = None,
    ) -> None:
        self.id = id
        self.pin = pin
        self._pull_up = pull_up
        self._active_low = active_low
        self._normally_closed = normally_closed
        self._on_edge = on_edge
        self._device: Any = None
        self._error: str | None = None
        try:
            from gpiozero import DigitalInputDevice

            with warnings.catch_warnings():
                # gpiozero warns once per pin factory it falls back from; the error below says
                # the same in one line when none works.
                warnings.simplefilter("ignore")
                self._device = DigitalInputDevice(
                    pin, pull_up=pull_up, bounce_time=bounce_s or None, pin_factory=pin_factory
                )
            self._device.when_activated = self._edge
            self._device.when_deactivated = self._edge
        except Exception as exc:  # BadPinFactory, pin in use, no /dev/gpiochip*
            self._error = f"GPIO{pin} unavailable: {exc}"
            log.error("input %s: %s; it has no value until fixed (charging restricted)", id, self._error)

    def _edge(self, *_: Any) -> None:
        if self._on_edge is not None:
            self._on_edge(self.id)

    def pin_is_high(self) -> bool:
        """The electrical level of the pin, whatever gpiozero thinks "active" means."""
        value = bool(self._device.value)
        # gpiozero reports value 1 for a low pin when pull_up=True (its active_state is inverted).
        return (not value) if self._pull_up else value

    def read(self) -> InputReading:
        if self._device is None:
            raise DeviceError(self._error or "GPIO unavailable")
        try:
            high = self.pin_is_high()
        except Exception as exc:
            raise DeviceError(f"GPIO{self.pin} read failed: {exc}") from exc
        closed = (not high) if self._active_low else high
        return InputReading(active=closed != self._normally_closed)

    def read_values(self) -> dict[str, str | int]:
        """The pin level and the resulting state, for ``gridcharge read``."""
        reading = self.read()
        return {"pin": "high" if self.pin_is_high() else "low", "active": int(reading.active)}

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None
            self._error = "closed"
