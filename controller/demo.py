"""``gridcharge demo``: the real controller against a simulated site on loopback.

Nothing to configure: a simulated SDM630 grid meter and Heidelberg wallbox share an RS485 line
(emulated over a pseudo-terminal pair, 8N1), an Alfen wallbox answers on Modbus TCP, and the
ripple-control receiver's contact sits on a Modbus I/O module. A one-minute scenario shows every
function at work: a car arrives, the house load rises, the grid operator dims by contact and by
variable, the supplier flips the tariff. A compact live view is printed after every cycle.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from controller.config import Http, parse_config
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


def demo_config(site: SimulatedSite, state_dir: str) -> Any:
    data = site.config_dict()
    data.update(site=DEMO_SITE, variables=DEMO_VARIABLES, rules=DEMO_RULES, state_dir=state_dir)
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


DEMO_LISTEN = "127.0.0.1:8080"


def curl_lines(port: int, password: str) -> str:
    """Ready-to-paste calls of the cFos-compatible API against the demo."""
    base = f"http://127.0.0.1:{port}/cnf"
    auth = f"--user admin:{password}"
    return "\n".join([
        f"  curl {auth} '{base}?cmd=get_cm_vars'",
        f"  curl {auth} '{base}?cmd=set_cm_vars&name=AVAIL&val=50'        # grid operator: house at 50 %",
        f"  curl {auth} '{base}?cmd=set_cm_vars&name=TARIF&val=1'         # supplier: reduced tariff",
        f"  curl {auth} -d '{{\"vars\": [{{\"name\": \"AVAIL\", \"expr\": 100}}]}}' '{base}?cmd=set_cm_vars'",
        f"  curl {auth} '{base}?cmd=override_device&dev_id=E1&mamps=8000'",
        f"  curl {auth} '{base}?cmd=get_dev_info'",
        f"  curl {auth} '{base}?cmd=get_grid_log&format=csv'",
    ])


def _start_api(service: Service, password: str) -> int | None:
    """The demo's API on 127.0.0.1:8080, or on a free port when 8080 is taken."""
    from web.runtime import start_web  # the entry point wires the web layer onto the controller

    for listen in (DEMO_LISTEN, "127.0.0.1:0"):
        http = Http.model_construct(listen=listen, user="admin", password=password, password_hash=None)
        try:
            return start_web(service, http=http).lan_port
        except OSError as exc:
            log.warning("demo API on %s: %s", listen, exc)
    return None


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
    state_dir = tempfile.mkdtemp(prefix="gridcharge-demo-")
    service: Service | None = None
    try:
        cfg = demo_config(site, state_dir)
        service = Service(cfg)
        password = secrets.token_urlsafe(9)
        port = _start_api(service, password)
        started = time.monotonic()
        steps = list(SCENARIO if scenario else ())

        def show(status: Status) -> None:
            elapsed = time.monotonic() - started
            while steps and elapsed >= steps[0].at_s:
                step = steps.pop(0)
                out.write(f"\n  >>> {step.text}\n")
                step.action(site, service)
            out.write(render(status, elapsed, cfg.site.main_fuse_a) + "\n")
            out.flush()
            if duration_s is not None and elapsed >= duration_s:
                service.stop(timeout_s=0)

        service.loop.add_cycle_listener(show)
        out.write(
            "gridcharge demo: simulated SDM630 + Heidelberg on RS485 (pty, 8N1), Alfen on Modbus TCP,\n"
            "ripple receiver contact RSE1 on a Modbus I/O module. Ctrl-C stops.\n"
            f"house connection: grid_limit_w = {DEMO_SITE['grid_limit_w']}, "
            f"chargers_limit_w = {DEMO_SITE['chargers_limit_w']}\n"
        )
        if port is not None:
            out.write(f"HTTP API on http://127.0.0.1:{port} (user admin, password {password}); try:\n"
                      f"{curl_lines(port, password)}\n")
        if on_signal is not None:
            on_signal(service.stop)
        service.run()
        out.write("demo stopped: wallboxes left at their fail-safe current\n")
        return 0
    finally:
        if service is not None:
            service.close()
        site.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
