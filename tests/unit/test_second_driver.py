"""A second charger driver, added from outside the controller, joins load management unchanged.

The in-memory driver here is what an OCPP driver will be, minus the protocol: its own config
entry type (the loadpoint settings every charger has, plus its own ``slot`` key, selected by
``model: memory``), its own device (``hal.types.Charger``) and its own worker group per box. It
is registered through ``controller/drivers.py`` alone; the config checks, the build, the loop,
the allocation, the status and the formulas take it as they take a Modbus box.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from fake_clock import FakeClock

from controller.config import ConfigError, Loadpoint, parse_config
from controller.drivers import register_charger_driver, unregister_charger_driver
from controller.hardware import BuildContext, DeviceHandle
from controller.service import Service
from hal.types import ChargerReading, Fallback, IecState


class MemoryChargerConfig(Loadpoint):
    """``model: memory`` and where the box lives (its ``slot``)."""

    model: Literal["memory"]
    slot: str

    def connection_text(self) -> str:
        return f"memory slot {self.slot}"


class MemoryCharger:
    """A box whose car draws what it is given (up to 16 A), on three phases."""

    keepalive_s: float | None = None
    fallback: Fallback | None = None

    def __init__(self, id: str) -> None:
        self.id = id
        self.limit_a: float | None = None
        self.setups: list[tuple[float, float]] = []
        #: > 0: the box pushes its values and the last ones were measured this long ago (real
        #: seconds), as an OCPP box's MeterValues are.
        self.lag_s = 0.0

    def read(self) -> ChargerReading:
        draw = min(self.limit_a or 0.0, 16.0)
        measured_s = time.monotonic() - self.lag_s if self.lag_s else None
        return ChargerReading(IecState.C, (draw, draw, draw), power_w=3 * 230.0 * draw, energy_wh=0.0,
                              measured_s=measured_s)

    def apply(self, current_a: float) -> None:
        self.limit_a = current_a

    def setup(self, watchdog_s: float, failsafe_current_a: float) -> None:
        self.setups.append((watchdog_s, failsafe_current_a))


BOXES: dict[str, MemoryCharger] = {}


def build(ctx: BuildContext, dev_id: str, cc: Any) -> DeviceHandle:
    box = BOXES[dev_id] = MemoryCharger(dev_id)
    return DeviceHandle(dev_id, "charger", "memory", cc.connection_text(), f"memory:{dev_id}", box)


@pytest.fixture()
def memory_driver() -> Iterator[None]:
    register_charger_driver(models=["memory"], config=MemoryChargerConfig, build=build)
    yield
    unregister_charger_driver(models=["memory"], config=MemoryChargerConfig)
    BOXES.clear()


def config(**chargers: dict[str, Any]) -> Any:
    return parse_config({
        "site": {"main_fuse_a": 20, "cycle_s": 1.0, "min_pause_s": 0, "increase_step_a": 16},
        "state_dir": tempfile.mkdtemp(prefix="gc-second-driver-"),
        "chargers": chargers,
        "variables": {"E1_KW": "E1.power_w / 1000"},
    })


def test_the_config_knows_its_keys(memory_driver: None) -> None:
    cfg = config(E1={"model": "memory", "slot": "a", "max_current_a": 16})
    assert isinstance(cfg.chargers["E1"], MemoryChargerConfig) and cfg.chargers["E1"].slot == "a"
    with pytest.raises(ConfigError) as err:
        config(E1={"model": "memory", "slit": "a", "unit": 2})
    text = "\n".join(err.value.errors)
    assert "chargers.E1.slot: required, but missing" in text
    assert "chargers.E1.slit: unknown key (did you mean 'slot'?)" in text
    assert "chargers.E1.unit: unknown key" in text  # a Modbus key means nothing to this driver


def test_memory_boxes_share_the_fuse_like_any_charger(memory_driver: None) -> None:
    cfg = config(E1={"model": "memory", "slot": "a"}, E2={"model": "memory", "slot": "b", "priority": 1})
    service = Service(cfg, clock=(clock := FakeClock()))
    try:
        for _ in range(3):
            status = service.loop.run_once()
            clock.advance(1.0)
    finally:
        service.close()
    assert BOXES["E1"].limit_a == BOXES["E2"].limit_a == 10.0  # 20 A fuse, equal share
    e1 = status.charger("E1")
    assert e1.device.address == "memory slot a" and e1.device.online and str(e1.reason) == "fuse L1"
    assert BOXES["E1"].setups == [(cfg.site.watchdog_s, cfg.chargers["E1"].failsafe_current_a)]
    kw = next(v for v in status.variables if v.name == "E1_KW")
    assert kw.value == pytest.approx(3 * 230 * 10 / 1000)  # formulas read the new box's values


def test_without_the_driver_the_model_is_an_unknown_profile() -> None:
    with pytest.raises(ConfigError) as err:
        config(E1={"model": "memory", "slot": "a"})
    assert any(line.startswith("chargers.E1.model: unknown model 'memory'") for line in err.value.errors)


def test_a_reading_measured_before_the_last_write_holds_the_next_increase(memory_driver: None) -> None:
    """A box that pushes its values late (OCPP MeterValues) is not taken as having seen a limit
    that landed after it measured: the next increase waits for a reading measured after it."""
    cfg = parse_config({
        "site": {"main_fuse_a": 32, "cycle_s": 1.0, "min_pause_s": 0, "increase_step_a": 16},
        "state_dir": tempfile.mkdtemp(prefix="gc-second-driver-"),
        "variables": {"CAP": 10},
        "chargers": {"E1": {"model": "memory", "slot": "a", "max_current_a": "CAP"}},
    })
    service = Service(cfg, clock=(clock := FakeClock()))
    box = BOXES["E1"]
    try:
        for _ in range(2):
            service.loop.run_once()
            clock.advance(1.0)
        assert box.limit_a == 10.0
        service.store.set_many([("CAP", 12)], source="test")
        service.loop.run_once()  # 10 -> 12 lands now
        clock.advance(1.0)
        box.lag_s = 1.5  # the values the box pushes next were measured before that write landed
        service.store.set_many([("CAP", 16)], source="test")
        status = service.loop.run_once()
        assert box.limit_a == 12.0
        assert "waiting for readings taken after the last write (E1)" in str(status.charger("E1").reason)
        clock.advance(1.0)
        box.lag_s = 0.2  # a sample measured after the write landed arrives
        service.loop.run_once()
        assert box.limit_a == 16.0
    finally:
        service.close()
