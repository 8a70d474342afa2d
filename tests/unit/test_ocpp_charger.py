"""The OCPP charger's bookkeeping of MeterValues, without a connection."""

from __future__ import annotations

from typing import Any

from hal.ocpp.charger import BoxSpec, OcppCharger
from hal.ocpp.mapping import MeterSample


class _NoRunner:
    def run(self, coro: Any, timeout_s: float) -> Any:
        coro.close()
        raise AssertionError("no call expected")

    def spawn(self, coro: Any) -> None:
        coro.close()


def charger() -> OcppCharger:
    spec = BoxSpec("BOX", None, 1, 3, 0, None, 16.0)
    return OcppCharger("E3", spec, _NoRunner(), stale_s=3.0, sample_interval_s=1, call_timeout_s=1.0)


def test_a_sample_measured_before_the_one_held_is_dropped() -> None:
    """A periodic sample still on its way when a triggered one overtook it must not put the old
    draw back: the newest measurement wins, whatever order they arrive in."""
    box = charger()
    box.meter_received(MeterSample((13.0, 13.0, 13.0), 9000.0, 1500.0, measured_s=1_000_001.0))
    box.meter_received(MeterSample((6.0, 6.0, 6.0), 4100.0, 1499.0, measured_s=1_000_000.5))
    assert box.energy_wh == 1500.0
    box.meter_received(MeterSample((13.0, 13.0, 13.0), 9000.0, 1502.0, measured_s=1_000_002.0))
    assert box.energy_wh == 1502.0


def test_samples_without_a_timestamp_are_taken_in_the_order_they_come() -> None:
    box = charger()
    box.meter_received(MeterSample((13.0, 13.0, 13.0), None, 1500.0, measured_s=1_000_001.0))
    box.meter_received(MeterSample(None, None, 1501.0, measured_s=None))
    assert box.energy_wh == 1501.0
