"""Helpers for running the controller against a simulated site (imported by tests and conftest)."""

from __future__ import annotations

import tempfile
from typing import Any

from fake_clock import FakeClock

from controller.config import parse_config
from controller.service import Service
from hal.sim.physics import SimCar
from hal.sim.site import SimChargerSpec, SimInputModuleSpec, SimMeterSpec, SimulatedSite

BASE_SITE: dict[str, Any] = {
    "voltage_v": 230,
    "main_fuse_a": 25,
    "grid_meter": "M1",
    "chargers_limit_w": "4200 if RSE1 else None",
    "min_pause_s": 0,
    "stale_s": 3,
    "cycle_s": 1.0,
    "increase_step_a": 32,
    "failsafe_limit_w": 4200,
}


def home_site(**kw: Any) -> SimulatedSite:
    """An SDM630, two 3-phase wallboxes with a 16 A car each and an I/O module, all on TCP."""
    return SimulatedSite(
        meter=SimMeterSpec("M1", "sdm630", "tcp", unit=1),
        chargers=[
            SimChargerSpec("E1", "heidelberg", "tcp", unit=2, car=SimCar(max_current_a=16)),
            SimChargerSpec("E2", "alfen", "tcp", unit=1, max_current_a=32.0, car=SimCar(max_current_a=16)),
        ],
        input_modules=[SimInputModuleSpec("IO1", "modbus_io", "tcp", unit=5, inputs=("RSE1",))],
        base_load_a=kw.pop("base_load_a", (10.0, 5.0, 5.0)),
        **kw,
    )


def make_config(sim: SimulatedSite, **overrides: Any) -> Any:
    data = sim.config_dict(timeout_s=0.3)
    data["site"] = {**BASE_SITE, **overrides.pop("site", {})}
    data["variables"] = overrides.pop("variables", {"AVAIL": 100, "TARIF": 0})
    data["rules"] = overrides.pop("rules", [])
    data["state_dir"] = overrides.pop("state_dir", None) or tempfile.mkdtemp(prefix="gridcharge-test-")
    for charger_id, patch in overrides.pop("chargers", {}).items():
        data["chargers"][charger_id].update(patch)
    for key, value in overrides.items():
        data[key] = value
    return parse_config(data, source="test")


def cycles(service: Service, clock: FakeClock, n: int, step_s: float = 1.0) -> list[Any]:
    out = []
    for _ in range(n):
        out.append(service.loop.run_once())
        clock.advance(step_s)
    return out
