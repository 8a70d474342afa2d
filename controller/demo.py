"""``gridcharge demo``: the real controller against a simulated site on loopback.

Nothing to configure: a simulated SDM630 grid meter and Heidelberg wallbox share an RS485 line
(emulated over a pseudo-terminal pair, 8N1), an Alfen wallbox answers on Modbus TCP, an OCPP 1.6J
wallbox connects to the controller's central system over a WebSocket on loopback
(``controller.demo_ocpp``), and the ripple-control receiver's contact sits on a Modbus I/O module.
All three boxes share the house connection: the grid meter sees the draw of each. A one-minute
scenario shows every function at work: a car arrives, the house load rises, the grid operator
dims by contact (4200 W for all chargers: some pause) and by variable (AVAIL=75: all three are
lowered, E3 through a new charging profile), the supplier flips the tariff.

The view is the one of ``gridcharge status`` (``controller.commands.status_view``), drawn after every
cycle from the ``get_dev_info`` body the demo's API would answer, with a line for the scenario
under it. On a terminal it is redrawn in place; in a pipe it is printed as plain text now and
then (``_Output``). Each step is a line above the view, and so is the end of the scenario
(``SCENARIO_FINISHED``, once its last step has had ``SETTLE_S`` to show its effect).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Group, RenderableType
from rich.text import Text

from controller.config import Config, Http, parse_config
from controller.commands.live_screen import LiveScreen, console_for
from controller.service import Service
from controller.status import Status
from controller.commands.status_view import render
from controller.demo_ocpp import DEMO_CHARGE_BOX_ID, DemoOcppBox
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


SETTLE_S = 5.0  # after the last step, the time its effect takes to show before "finished"
PLAIN_FRAME_S = 5.0  # not a terminal: a frame this often (and after every step)
SCENARIO_FINISHED = "scenario finished"


@dataclass(frozen=True)
class Step:
    at_s: float
    text: str
    action: Callable[[SimulatedSite, Service], None]


def set_vars(**values: Any) -> Callable[[SimulatedSite, Service], None]:
    """A step's action: set variables as the grid operator or the supplier would over the API."""

    def act(_site: SimulatedSite, service: Service) -> None:
        service.store.set_many(list(values.items()), source="demo")
    return act


SCENARIO: tuple[Step, ...] = (
    Step(6, "a car arrives at E2 (a 1-phase car, draws on L1 only)",
         lambda site, _: site.plug_car("E2", SimCar(max_current_a=16, phases=1))),
    Step(16, "the house load rises: oven and kettle on L1 (+14 A); E3 (OCPP) charges on L2 and goes on",
         lambda site, _: site.set_base_load(18.0, 2.5, 3.5)),
    Step(26, "the ripple-control receiver closes RSE1: §14a dimming to 4200 W for E1, E2, E3 together",
         lambda site, _: site.set_contact("RSE1", True)),
    Step(36, "RSE1 opens again", lambda site, _: site.set_contact("RSE1", False)),
    Step(40, "the oven is off", lambda site, _: site.set_base_load(4.0, 2.5, 3.5)),
    Step(44, "the supplier flips TARIF to 1 (reduced): E2's rule no longer applies", set_vars(TARIF=1)),
    Step(52, "the grid operator sets AVAIL=75: house connection 12750 W, all three boxes lowered (E3 over OCPP)",
         set_vars(AVAIL=75)),
)


def demo_config(site: SimulatedSite, state_dir: str, ocpp: DemoOcppBox | None = None) -> Config:
    """The simulated site's devices, plus the OCPP box E3 and the central system it connects to."""
    data = site.config_dict()
    data.update(site=DEMO_SITE, variables=DEMO_VARIABLES, rules=DEMO_RULES, state_dir=state_dir)
    if ocpp is not None:
        sections = ocpp.config_sections()
        data["ocpp"] = sections["ocpp"]
        data["chargers"]["E3"] = sections["charger"]
    return parse_config(data, source="demo")


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


class _Output:
    """The demo's terminal: the live view, step lines, and what to do when a pipe closes.

    On a terminal the view is redrawn in place after every cycle (``LiveScreen``); a step of the
    scenario and its end are lines above it. Anywhere else (a pipe, CI) a frame is printed every
    ``PLAIN_FRAME_S`` and after every step, between the step lines. When the reader of a pipe
    goes away (``gridcharge demo | head``), ``gone`` tells the demo to stop.
    """

    def __init__(self, out: TextIO) -> None:
        self.console = console_for(out)
        self.screen = LiveScreen(self.console)
        self._last_plain_s = -PLAIN_FRAME_S

    @property
    def gone(self) -> bool:
        return self.console.reader_gone

    def write(self, text: str) -> None:
        self.screen.note(text)

    def frame(self, frame: RenderableType, elapsed_s: float, *, stepped: bool) -> None:
        if not self.screen.redraws:
            if not stepped and elapsed_s - self._last_plain_s < PLAIN_FRAME_S:
                return
            self._last_plain_s = elapsed_s
        self.screen.show(frame)


def scenario_lines(steps: Sequence[Step], played: int, elapsed_s: float, finished: bool) -> Text:
    """The demo's own section under the status view: where the scenario stands."""
    text = Text()
    text.append("scenario ", style="bold")
    if not steps:
        text.append(f"none (--no-scenario), {elapsed_s:.0f} s")
        return text
    if finished:
        text.append(f"finished: all {len(steps)} steps played; the site runs on, Ctrl-C stops", style="green")
        return text
    text.append(f"{elapsed_s:4.0f} s, {played} of {len(steps)} steps played")
    if played:
        last = steps[played - 1]
        text.append(f"\n  {last.at_s:4.0f} s  {last.text}", style="dim")
    if played < len(steps):
        upcoming = steps[played]
        wait_s = max(0.0, upcoming.at_s - elapsed_s)
        text.append(f"\n  {upcoming.at_s:4.0f} s  {upcoming.text}  (in {wait_s:.0f} s)")
    return text


def run_demo(
    *,
    duration_s: float | None = None,
    scenario: bool = True,
    steps: Sequence[Step] | None = None,
    settle_s: float = SETTLE_S,
    on_signal: Callable[[Callable[[], None]], None] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo until Ctrl-C (or ``duration_s``). ``steps`` replaces the scripted scenario
    (tests play a short one, with a short ``settle_s``); ``scenario=False`` plays none."""
    from web.devinfo import dev_info  # the view is drawn from the body the API would answer
    from web.runtime import version

    steps = list(SCENARIO if steps is None else steps) if scenario else []
    site = demo_site()
    ocpp = DemoOcppBox()
    ocpp.install(site)  # E3's car is plugged in; its draw is on the grid meter from the start
    site.start()
    if steps:
        site.unplug("E2")  # a scenario starts with E2 free: the scripted one brings its car
    state_dir = tempfile.mkdtemp(prefix="gridcharge-demo-")
    service: Service | None = None
    output = _Output(out)
    try:
        cfg = demo_config(site, state_dir, ocpp)
        service = Service(cfg)  # the central system listens from here on
        if not ocpp.start():
            log.warning("demo: the OCPP box E3 has not connected yet; it keeps trying")
        password = secrets.token_urlsafe(9)
        port = _start_api(service, password)
        source = "demo" + (f", API http://127.0.0.1:{port}" if port is not None else "")
        release = version()
        started = time.monotonic()
        played = 0
        finished_at = steps[-1].at_s + settle_s if steps else None
        finished = False

        def show(_status: Status) -> None:
            nonlocal played, finished
            assert service is not None
            elapsed = time.monotonic() - started
            stepped = False
            while played < len(steps) and elapsed >= steps[played].at_s:
                step = steps[played]
                played += 1
                stepped = True
                output.write(f"[{elapsed:5.1f} s] >>> {step.text}")
                step.action(site, service)
            if not finished and finished_at is not None and elapsed >= finished_at:
                finished = True
                stepped = True
                output.write(f"[{elapsed:5.1f} s] {SCENARIO_FINISHED}: all {len(steps)} steps played; "
                             "the site runs on, Ctrl-C stops")
            ending = duration_s is not None and elapsed >= duration_s
            info = dev_info(service.status(), release, main_fuse_a=cfg.site.main_fuse_a)
            frame = Group(render(info, source=source), "", scenario_lines(steps, played, elapsed, finished))
            output.frame(frame, elapsed, stepped=stepped or ending)  # a run with --duration ends on a frame
            if output.gone or ending:
                service.stop(timeout_s=0)

        service.loop.add_cycle_listener(show)
        output.write(
            "gridcharge demo: simulated SDM630 + Heidelberg on RS485 (pty, 8N1), Alfen on Modbus TCP,\n"
            f"an OCPP 1.6J box E3 on {ocpp.url}/{DEMO_CHARGE_BOX_ID} (WebSocket, password),\n"
            "ripple receiver contact RSE1 on a Modbus I/O module. Ctrl-C stops.\n"
            f"house connection: grid_limit_w = {DEMO_SITE['grid_limit_w']}, "
            f"chargers_limit_w = {DEMO_SITE['chargers_limit_w']}"
        )
        if port is not None:
            output.write(f"HTTP API on http://127.0.0.1:{port} (user admin, password {password}); try:\n"
                         f"{curl_lines(port, password)}\n"
                         f"Status page: open http://127.0.0.1:{port}/ in a browser (user admin, the same password)")
        if on_signal is not None:
            on_signal(service.stop)
        with output.screen:
            service.run()
        output.write("demo stopped: wallboxes left at their fail-safe current")
        return 0
    finally:
        output.screen.close()
        if service is not None:
            service.close()
        ocpp.stop()  # after the service: E3 was left at its fail-safe current before it goes
        site.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
