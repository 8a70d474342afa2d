"""``gridcharge demo``: the real controller against a simulated site on loopback.

Nothing to configure: a simulated SDM630 grid meter and Heidelberg wallbox share an RS485 line
(emulated over a pseudo-terminal pair, 8N1), an Alfen wallbox answers on Modbus TCP, and the
ripple-control receiver's contact sits on a Modbus I/O module. A one-minute scenario shows every
function at work: a car arrives, the house load rises, the grid operator dims by contact and by
variable, the supplier flips the tariff. A compact live view is printed after every cycle.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from controller.config import parse_config
from controller.service import Service
from controller.status import Status
from hal.sim.physics import SimCar
from hal.sim.site import SimulatedSite, demo_site

log = logging.getLogger(__name__)

DEMO_SITE: dict[str, Any] = {
    "voltage_v": 230,
    "main_fuse_a": 25,
    "grid_meter": "M1",
    "grid_limit_w": "17000 * AVAIL / 100",  # house connection capacity, dimmed by the grid operator
    "chargers_limit_w": "4200 if RSE1 else None",  # §14a dimming by the ripple receiver
    "unbalanced_limit_a": 20,
    "min_pause_s": 10,
    "stale_s": 5,
    "failsafe_limit_w": 4200,
    "cycle_s": 1.0,
}
DEMO_VARIABLES: dict[str, Any] = {"AVAIL": 100, "TARIF": 0}
DEMO_RULES: list[dict[str, Any]] = [
    {"name": "E2 slower at the normal tariff", "chargers": ["E2"], "when": "TARIF == 0", "max_current_a": 10},
]


@dataclass(frozen=True)
class Step:
    at_s: float
    text: str
    action: Callable[[SimulatedSite, Service], None]


def _set_vars(**values: Any) -> Callable[[SimulatedSite, Service], None]:
    def act(_site: SimulatedSite, service: Service) -> None:
        service.store.set_many(list(values.items()), source="demo")
    return act


SCENARIO: tuple[Step, ...] = (
    Step(6, "a car arrives at E2 (a 1-phase car, draws on L1 only)",
         lambda site, _: site.plug_car("E2", SimCar(max_current_a=16, phases=1))),
    Step(16, "the house load rises: oven and kettle on L1 (+14 A)",
         lambda site, _: site.set_base_load(18.0, 2.5, 3.5)),
    Step(26, "the ripple-control receiver closes RSE1: §14a dimming to 4200 W",
         lambda site, _: site.set_contact("RSE1", True)),
    Step(36, "RSE1 opens again", lambda site, _: site.set_contact("RSE1", False)),
    Step(40, "the oven is off", lambda site, _: site.set_base_load(4.0, 2.5, 3.5)),
    Step(44, "the supplier flips TARIF to 1 (reduced): E2's rule no longer applies", _set_vars(TARIF=1)),
    Step(52, "the grid operator sets AVAIL=50: house connection 8500 W", _set_vars(AVAIL=50)),
)


def demo_config(site: SimulatedSite) -> Any:
    data = site.config_dict()
    data.update(site=DEMO_SITE, variables=DEMO_VARIABLES, rules=DEMO_RULES, state_dir="/tmp/gridcharge-demo")
    return parse_config(data, source="demo")


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f} {unit}"


def render(status: Status, elapsed_s: float, main_fuse_a: float) -> str:
    """A compact view of one cycle: grid, limits in force, one line per charger."""
    grid = status.grid_current_a
    grid_text = "grid meter offline" if grid is None else "  ".join(
        f"L{i + 1} {v:5.1f} A" for i, v in enumerate(grid))
    lines = [
        f"[{elapsed_s:5.1f} s] grid {grid_text}  (fuse {main_fuse_a:g} A)  {_fmt(status.grid_power_w, 'W')}",
        f"          limits: house {_fmt(status.grid_limit_w, 'W')}, chargers {_fmt(status.chargers_limit_w, 'W')}"
        + (f", FAIL-SAFE: {status.failsafe}" if status.failsafe else ""),
    ]
    for c in status.chargers:
        reading = c.device.reading
        state = reading.state.value if reading is not None and c.device.online else "offline"
        drawn = "/".join(f"{a:.1f}" for a in reading.current_a) if reading is not None else "-"
        lines.append(f"          {c.device.id} {c.device.model:<12} {state:<7} limit {c.command_a:4.1f} A "
                     f"draws {drawn} A  ({c.reason})")
    return "\n".join(lines)


def run_demo(
    *,
    duration_s: float | None = None,
    scenario: bool = True,
    on_signal: Callable[[Callable[[], None]], None] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    site = demo_site()
    site.start()
    if scenario:
        site.unplug("E2")  # the scenario brings its car
    service: Service | None = None
    try:
        cfg = demo_config(site)
        service = Service(cfg)
        started = time.monotonic()
        steps = list(SCENARIO if scenario else ())
        done = threading.Event()

        def show(status: Status) -> None:
            elapsed = time.monotonic() - started
            while steps and elapsed >= steps[0].at_s:
                step = steps.pop(0)
                out.write(f"\n  >>> {step.text}\n")
                step.action(site, service)
            out.write(render(status, elapsed, cfg.site.main_fuse_a) + "\n")
            out.flush()
            if duration_s is not None and elapsed >= duration_s:
                done.set()
                service.stop(timeout_s=0)

        service.loop.add_cycle_listener(show)
        out.write(
            "gridcharge demo: simulated SDM630 + Heidelberg on RS485 (pty, 8N1), Alfen on Modbus TCP,\n"
            "ripple receiver contact RSE1 on a Modbus I/O module. Ctrl-C stops.\n"
            f"house connection: grid_limit_w = {DEMO_SITE['grid_limit_w']}, "
            f"chargers_limit_w = {DEMO_SITE['chargers_limit_w']}\n"
        )
        if on_signal is not None:
            on_signal(service.stop)
        service.run()
        out.write("demo stopped: wallboxes left at their fail-safe current\n")
        return 0
    finally:
        if service is not None:
            service.hw.close()
        site.stop()
