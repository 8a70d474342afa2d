"""OCPP boxes on a whole site, end to end.

- Sessions over the HTTP API carry the box's own meterStart/meterStop, idTag and transaction id,
  also when the box reboots in the middle of one.
- Limits settle after a base-load step although MeterValues arrive a sample interval late; with
  the ordering of readings by when they were measured switched off they swing over the fuse.
- The fuse holds with Modbus and OCPP boxes together under base-load steps and the grid
  operator's dimming, and a disconnected OCPP box keeps its last limit reserved.

Everything is real on loopback: the ``Service`` with its HTTP listener (``requests``), the
central system's WebSocket server, the simulated OCPP box (``hal.sim.ocpp_box``, an OCPP client
written with the same ``ocpp`` package) and, where a grid meter is needed, the simulated Modbus
site (an SDM630 and wallboxes on Modbus TCP) whose physics includes the OCPP box's draw. What the
box sent is taken from the wire (its outgoing calls are recorded), so the sessions are compared
with the box's own meter values, not with what the controller understood of them. The lag and
fuse tests run in real time (the box's samples and their delay are real seconds), so each takes
as long as its scenario: 6 to 14 s.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from fake_clock import FakeClock
from ocpp_helpers import BOX_ID, BOX_PASSWORD, box_for, run_until
from ocpp.routing import after
from ocpp.v16.enums import Action
from site_helpers import BASE_SITE, home_site
from web_helpers import PASSWORD as HTTP_PASSWORD
from web_helpers import USER, http_section

from controller.config import parse_config
from controller.service import Service
from hal.sim import ocpp_box
from hal.sim.ocpp_box import SimOcppBox
from hal.sim.physics import SimCar
from hal.sim.site import SimMeterSpec, SimulatedSite
from web.runtime import start_web



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ocpp_entry(box_id: str = BOX_ID) -> dict[str, Any]:
    return {"model": "ocpp", "charge_box_id": box_id, "password": BOX_PASSWORD, "phases": 3,
            "min_current_a": 6, "max_current_a": 16}


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, Any]]:
    """Every call the simulated boxes send, with its answer: (action, payload, result)."""
    calls: list[tuple[str, Any, Any]] = []
    real_call = ocpp_box._Box.call

    async def recording_call(self: Any, payload: Any, *args: Any, **kwargs: Any) -> Any:
        result = await real_call(self, payload, *args, **kwargs)
        calls.append((type(payload).__name__, payload, result))
        return result

    monkeypatch.setattr(ocpp_box._Box, "call", recording_call)
    return calls


def sent_of(sent: list[tuple[str, Any, Any]], action: str) -> list[tuple[Any, Any]]:
    return [(payload, result) for name, payload, result in list(sent) if name == action]


# --------------------------------------------------------------------------- sessions over HTTP


class SessionSite:
    """A Service with one OCPP box and its HTTP listener; ``get_sessions`` over ``requests``."""

    def __init__(self, cleanup: list[Callable[[], None]]) -> None:
        self.port = free_port()
        cfg = parse_config({
            "site": {"main_fuse_a": 32, "min_pause_s": 0, "stale_s": 3, "cycle_s": 1.0, "increase_step_a": 32},
            "state_dir": tempfile.mkdtemp(prefix="gc-ocpp-sessions-"),
            "ocpp": {"listen": f"127.0.0.1:{self.port}"},
            "chargers": {"E3": ocpp_entry()},
        }, source="test")
        self.clock = FakeClock()
        self.service = Service(cfg, clock=self.clock)
        cleanup.append(self.service.close)
        self.service.sessions.start()  # run() would; the test drives the cycles itself
        servers = start_web(self.service, http=http_section())
        self.url = f"http://127.0.0.1:{servers.lan_port}/cnf"

    def get(self, **params: Any) -> requests.Response:
        return requests.get(self.url, params={"cmd": "get_sessions", **params}, auth=(USER, HTTP_PASSWORD),
                            timeout=10)

    def sessions(self) -> list[dict[str, Any]]:
        response = self.get()
        assert response.status_code == 200, response.text
        return [s for s in response.json()["sessions"] if s["charger"] == "E3"]

    def wait_sessions(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The sessions once ``done`` holds (they are saved by the session log's own thread)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.sessions()
            if done(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def charging_box(self, cleanup: list[Callable[[], None]]) -> SimOcppBox:
        """A box with its profile and a car charging at 16 A for a second."""
        box = box_for(self.port, cleanup)
        assert box.wait_for(lambda: box.has_profile)
        box.plug(SimCar(max_current_a=16))
        run_until(self.service, self.clock, lambda s: box.wallbox.phase_currents_a()[0] == 16.0)
        self.charge(1.0)
        return box

    def charge(self, seconds: float) -> None:
        """Cycles for ``seconds`` of real time (the box's energy register counts real time)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.service.loop.run_once()
            self.clock.advance(1.0)
            time.sleep(0.25)


def test_a_charge_is_one_session_with_the_energy_the_box_sent(cleanup: list, sent: list) -> None:
    site = SessionSite(cleanup)
    box = box_for(site.port, cleanup)
    assert box.wait_for(lambda: box.has_profile)
    begun = time.time()
    box.plug(SimCar(max_current_a=16))
    run_until(site.service, site.clock, lambda s: box.limit_a == 16.0 and box.wallbox.phase_currents_a()[0] == 16.0)
    site.charge(3.0)  # ~11 kW for 3 s: ~9 Wh
    (open_one,) = site.wait_sessions(lambda rows: len(rows) == 1)
    assert open_one["open"] and open_one["end"] is None
    box.unplug()
    assert box.wait_for(lambda: len(sent_of(sent, "StopTransaction")) == 1)
    ended = time.time()
    (start, started), = sent_of(sent, "StartTransaction")
    (stop, _), = sent_of(sent, "StopTransaction")

    (session,) = site.wait_sessions(lambda rows: len(rows) == 1 and not rows[0]["open"])
    assert session["id"] == open_one["id"]
    assert session["id_tag"] == start.id_tag == "SIMTAG01"
    assert session["transaction_id"] == started.transaction_id == stop.transaction_id
    assert (session["start_wh"], session["end_wh"]) == (start.meter_start, stop.meter_stop)
    assert session["energy_wh"] == stop.meter_stop - start.meter_start >= 5  # whole Wh, as the box counts
    assert session["energy_source"] == "register" and session["stop_reason"] == "EVDisconnected"
    assert begun - 1 <= session["start_ts"] < session["end_ts"] <= ended + 1
    assert session["end_ts"] - session["start_ts"] >= 3.0

    response = site.get(format="csv")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    (row,) = [r for r in csv.DictReader(io.StringIO(response.text)) if r["charger"] == "E3"]
    assert row["energy_wh"] == str(stop.meter_stop - start.meter_start)
    assert row["id_tag"] == "SIMTAG01" and row["transaction_id"] == str(started.transaction_id)
    assert row["start_ts"] == str(int(session["start_ts"])) and row["end_ts"] == str(int(session["end_ts"]))


def test_a_reboot_that_keeps_the_transaction_is_still_one_session(cleanup: list, sent: list) -> None:
    """The simulated box keeps its transaction across a reboot (as a box that stores it does): it
    boots again, gets its profile again, and its StopTransaction closes the one session, with the
    energy charged across the reboot."""
    site = SessionSite(cleanup)
    box = site.charging_box(cleanup)
    box.reboot()
    assert box.wait_for(lambda: box.boots == 2 and box.has_profile)
    site.charge(1.0)
    assert len(site.wait_sessions(lambda rows: len(rows) == 1)) == 1
    box.unplug()
    assert box.wait_for(lambda: len(sent_of(sent, "StopTransaction")) == 1)
    (start, started), = sent_of(sent, "StartTransaction")  # no second start after the boot
    (stop, _), = sent_of(sent, "StopTransaction")
    (session,) = site.wait_sessions(lambda rows: len(rows) == 1 and not rows[0]["open"])
    assert session["transaction_id"] == started.transaction_id == stop.transaction_id
    assert session["energy_wh"] == stop.meter_stop - start.meter_start > 0


def test_a_reboot_that_forgets_the_transaction_closes_the_old_session(cleanup: list, sent: list) -> None:
    """A box that forgets its transaction when it reboots starts a new one for the car still
    plugged in, without a StopTransaction for the old one. The old session is closed at the new
    start (its end meter, hence its energy, unknown: null, never a guess and never negative), the
    new one is the only open session, and it ends with the energy between its own start and stop."""
    site = SessionSite(cleanup)
    box = site.charging_box(cleanup)
    assert len(site.wait_sessions(lambda rows: len(rows) == 1)) == 1
    box.reboot()
    box._transaction_id = None  # what this box forgets with its power (the simulator keeps it)
    assert box.wait_for(lambda: box.boots == 2 and len(sent_of(sent, "StartTransaction")) == 2)
    rows = site.wait_sessions(lambda rows: len(rows) == 2 and not rows[0]["open"])
    assert [r["open"] for r in rows] == [False, True]  # never two open sessions of one charger
    site.charge(1.0)
    box.unplug()
    assert box.wait_for(lambda: len(sent_of(sent, "StopTransaction")) == 1)
    (first_start, first), (second_start, second) = sent_of(sent, "StartTransaction")
    (stop, _), = sent_of(sent, "StopTransaction")
    assert stop.transaction_id == second.transaction_id != first.transaction_id
    old, new = site.wait_sessions(lambda rows: len(rows) == 2 and not any(r["open"] for r in rows))
    assert old["transaction_id"] == first.transaction_id and old["stop_reason"] == "a new session started without a stop"
    assert old["start_wh"] == first_start.meter_start and old["energy_wh"] is None and old["end_ts"] <= new["start_ts"]
    assert new["transaction_id"] == second.transaction_id and new["stop_reason"] == "EVDisconnected"
    assert new["energy_wh"] == stop.meter_stop - second_start.meter_start >= 0


# --------------------------------------------------------------------------- limits under MeterValues lag

FUSE_A = 25.0
EPS = 0.05


@dataclass
class LagRun:
    """What one run of the lag scenario did after the base-load step."""

    commands: list[float]  # the commanded limit of every cycle after the step
    writes: list[float]  # the limit in force at the step, then every limit the box was sent after it
    over_fuse_s: list[float]  # seconds after the step at which L1 went over the fuse (from not over)
    final_l1_a: float  # the grid current on L1 at the end

    @property
    def sign_changes(self) -> int:
        """How often the written limit turned from falling to rising or back."""
        steps = [b - a for a, b in zip(self.writes, self.writes[1:]) if b != a]
        return sum(1 for a, b in zip(steps, steps[1:]) if (a > 0) != (b > 0))

    def changes_after(self, settle_s: int) -> int:
        """How often the commanded limit changed after the first ``settle_s`` cycles."""
        late = self.commands[settle_s - 1:]
        return sum(1 for a, b in zip(late, late[1:]) if a != b)

    @property
    def late_over_fuse_s(self) -> list[float]:
        """Times over the fuse other than the step itself (which lasts until the decrease landed)."""
        return [t for t in self.over_fuse_s if t > 0.1]


def run_lag_scenario(*, house_a: tuple[float, float] = (12.0, 16.0), ordered: bool = True,
                     sample_on_trigger: bool = True, before_s: float = 3.0, after_s: float = 4.0) -> LagRun:
    """An SDM630 grid meter (Modbus TCP) and one OCPP box whose MeterValues come every second,
    each a second late. The house draws 12 A on L1 under a 25 A fuse, so the box is fuse-limited
    at 13 A; then the house steps to 16 A and the box must settle at 9 A. Real time throughout
    (the box's samples and their delay are real seconds), one cycle a second.

    ``ordered=False`` switches off the ordering of readings by when they were measured: the OCPP
    reading's ``measured_s`` is made None, so it counts as read when it was fetched.
    ``sample_on_trigger=False`` makes the box, from the step on, one that accepts TriggerMessage
    MeterValues but sends its samples only at its own pace (before the step it sends one at once,
    so that every run meets the step settled)."""
    stops: list[Callable[[], None]] = []
    try:
        sim = SimulatedSite(meter=SimMeterSpec("M1", "sdm630", "tcp", unit=1), base_load_a=(house_a[0], 4.0, 4.0))
        sim.start()
        stops.append(sim.stop)
        port = free_port()
        data = sim.config_dict(timeout_s=0.3)
        data["site"] = {**BASE_SITE, "chargers_limit_w": None, "unbalanced_limit_a": None}
        data["state_dir"] = tempfile.mkdtemp(prefix="gc-ocpp-lag-")
        data["ocpp"] = {"listen": f"127.0.0.1:{port}"}
        data["chargers"] = {"E3": ocpp_entry()}
        service = Service(parse_config(data, source="test"))  # the real clock
        stops.append(service.close)
        box = box_for(port, stops, meter_delay_s=1.0)
        box.sample_on_trigger = True  # type: ignore[attr-defined]  # read by _trigger_sample
        sim.physics.add_wallbox("E3", box.wallbox)
        if not ordered:
            charger = service.hw.chargers["E3"].device
            read = charger.read
            charger.read = lambda: dataclasses.replace(read(), measured_s=None)  # type: ignore[method-assign]
        over: list[float] = []
        was_over = [False]

        def watch(t: float, currents: tuple[float, float, float]) -> None:
            now_over = currents[0] > FUSE_A + EPS
            if now_over and not was_over[0]:
                over.append(t)
            was_over[0] = now_over

        sim.physics.watch(watch)
        box.plug(SimCar(max_current_a=16))
        assert box.wait_for(lambda: box.has_profile and box.configuration.get("MeterValueSampleInterval") == "1")

        def tick(until_s: float) -> list[float]:
            commands = []
            next_s = time.monotonic()
            while next_s < until_s:
                commands.append(service.loop.run_once().charger("E3").command_a)
                next_s += 1.0
                time.sleep(max(0.0, next_s - time.monotonic()))
            return commands

        tick(time.monotonic() + before_s)
        writes_before = len(box.calls("SetChargingProfile"))
        box.sample_on_trigger = sample_on_trigger  # type: ignore[attr-defined]
        step_s = time.monotonic()
        sim.set_base_load(house_a[1], 4.0, 4.0)
        commands = tick(step_s + after_s)
        writes = [profile_limit(p) for p in box.calls("SetChargingProfile")[writes_before - 1:]]
        return LagRun(commands, writes, [t - step_s for t in over if t >= step_s], sim.physics.grid_currents_a()[0])
    finally:
        for stop in reversed(stops):
            stop()


def profile_limit(profile: dict[str, Any]) -> float:
    return float(profile["charging_schedule"]["charging_schedule_period"][0]["limit"])


def test_after_a_base_load_step_up_the_limit_settles_and_the_fuse_holds() -> None:
    run = run_lag_scenario(house_a=(12.0, 16.0))
    assert run.writes == [13.0, 9.0], run  # fuse-limited before the step; one decrease after it
    assert run.commands[1:] == [9.0] * (len(run.commands) - 1), run  # the next cycle's 13 A is held back
    assert run.sign_changes == 0 and run.changes_after(2) == 0
    assert run.over_fuse_s and not run.late_over_fuse_s, run  # over only until the decrease landed
    assert run.final_l1_a == pytest.approx(FUSE_A, abs=EPS)


_real_after_trigger = ocpp_box._Box.after_trigger_message


@after(Action.trigger_message)
async def _trigger_sample(self: Any, requested_message: str, **kwargs: Any) -> None:
    """The simulated box's answer to TriggerMessage, unless its ``sample_on_trigger`` is False."""
    if getattr(self.sim, "sample_on_trigger", True) or requested_message != "MeterValues":
        await _real_after_trigger(self, requested_message, **kwargs)


@pytest.fixture()
def no_sample_on_trigger_possible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocpp_box._Box, "after_trigger_message", _trigger_sample)


def side_by_side(**runs: dict[str, Any]) -> dict[str, LagRun]:
    """Lag scenarios at the same time (each sleeps most of its time), by name."""
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_lag_scenario, **kw) for name, kw in runs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.usefixtures("no_sample_on_trigger_possible")
def test_without_the_ordering_a_step_up_swings_over_the_fuse() -> None:
    """The same step, with a box that sends no sample when asked (so only the ordering can help),
    with and without the ordering of readings by when they were measured (switched off by making
    the OCPP reading's ``measured_s`` None: it is then taken as read when it was fetched).

    Ordered, the cycle after the decrease sees the box's old draw next to a grid meter that sees
    the new one and computes 13 A, but that reading was measured before the decrease landed, so
    the increase is held back until a sample from after it comes. Unordered, the 13 A goes out,
    the fuse is over a second after the step, and the limit swings down to pauses."""
    runs = side_by_side(ordered={"sample_on_trigger": False},
                        unordered={"sample_on_trigger": False, "ordered": False})
    ordered, unordered = runs["ordered"], runs["unordered"]
    assert ordered.writes == [13.0, 9.0] and ordered.sign_changes == 0 and not ordered.late_over_fuse_s, ordered
    assert unordered.sign_changes >= 2 and unordered.late_over_fuse_s, unordered


@pytest.mark.usefixtures("no_sample_on_trigger_possible")
def test_after_a_step_down_the_limit_settles_because_a_sample_is_asked_for() -> None:
    """An increase is the other direction: the cycle after it sees the box's old (lower) draw next
    to a grid meter that sees the new one, so the box's own increase looks like other consumption
    and the limit is lowered again. The ordering cannot help (a decrease is never held back), so
    the driver asks the box for MeterValues as soon as it accepted a new limit: with that sample
    the limit settles; a box that sends none when asked swings between the two limits."""
    runs = side_by_side(asked={"house_a": (16.0, 12.0)},
                        late={"house_a": (16.0, 12.0), "sample_on_trigger": False})
    run, late = runs["asked"], runs["late"]
    assert run.writes == [9.0, 13.0] and run.commands == [13.0] * len(run.commands), run
    assert run.sign_changes == 0 and not run.over_fuse_s, run
    assert late.sign_changes >= 2 and not late.over_fuse_s, late  # safe, but it does not settle


# --------------------------------------------------------------------------- Modbus and OCPP boxes together


class MixedSite:
    """Two Modbus wallboxes (E1 Heidelberg, E2 Alfen) and the OCPP box E3 under one SDM630 on a
    25 A fuse, a 16 A car in each, the house at 4/2/2 A: 21 A left on L1, 7 A for each box.
    ``chargers_limit_w`` follows the grid operator's AVAIL (the §14a dimming, set over the API).
    Real time throughout, a cycle every ``CYCLE_S``. Every time L1 goes over the fuse is noted,
    with when it ended, and every base-load step, so that an overload can be traced to its cause."""

    CYCLE_S = 0.5

    def __init__(self, cleanup: list[Callable[[], None]]) -> None:
        self.sim = home_site(base_load_a=(4.0, 2.0, 2.0))
        self.sim.start()
        cleanup.append(self.sim.stop)
        self.port = free_port()
        data = self.sim.config_dict(timeout_s=0.2)
        data["site"] = {**BASE_SITE, "cycle_s": self.CYCLE_S,
                        "chargers_limit_w": "None if AVAIL >= 100 else AVAIL / 100 * 22000"}
        data["variables"] = {"AVAIL": 100}
        data["state_dir"] = tempfile.mkdtemp(prefix="gc-ocpp-mixed-")
        data["ocpp"] = {"listen": f"127.0.0.1:{self.port}"}
        data["chargers"]["E3"] = ocpp_entry()
        self.service = Service(parse_config(data, source="test"))  # the real clock
        cleanup.append(self.service.close)
        servers = start_web(self.service, http=http_section())
        self.url = f"http://127.0.0.1:{servers.lan_port}/cnf"
        self.box = box_for(self.port, cleanup)
        self.sim.physics.add_wallbox("E3", self.box.wallbox)
        self.box.plug(SimCar(max_current_a=16))
        self.steps_s: list[float] = []
        self.over: list[list[float]] = []  # [start, end] of every time L1 was over the fuse
        self.sim.physics.watch(self._watch)
        self.status: Any = None
        self.controlled_s: float | None = None  # the end of the first cycle: every box written
        assert self.box.wait_for(lambda: self.box.has_profile)

    def _watch(self, t: float, currents: tuple[float, float, float]) -> None:
        now_over = currents[0] > FUSE_A + EPS
        if now_over and (not self.over or self.over[-1][1] >= 0):
            self.over.append([t, -1.0])
        elif not now_over and self.over and self.over[-1][1] < 0:
            self.over[-1][1] = t

    def base_load(self, l1_a: float) -> None:
        self.steps_s.append(time.monotonic())
        self.sim.set_base_load(l1_a, 2.0, 2.0)

    def set_avail(self, value: int) -> None:
        response = requests.get(self.url, params={"cmd": "set_cm_vars", "name": "AVAIL", "val": str(value)},
                                auth=(USER, HTTP_PASSWORD), timeout=10)
        assert response.status_code == 200, response.text

    def run(self, seconds: float) -> Any:
        """Cycles at the cycle rate for ``seconds``; the last status."""
        next_s, end_s = time.monotonic(), time.monotonic() + seconds
        while next_s < end_s:
            self.status = self.service.loop.run_once()
            if self.controlled_s is None:
                self.controlled_s = time.monotonic()
            next_s += self.CYCLE_S
            time.sleep(max(0.0, next_s - time.monotonic()))
        return self.status

    def run_until(self, done: Callable[[Any], bool], timeout_s: float = 6.0) -> Any:
        """Cycles at the cycle rate until ``done(status)`` (at most ``timeout_s``); the last status."""
        end_s = time.monotonic() + timeout_s
        while not done(self.run(self.CYCLE_S)) and time.monotonic() < end_s:
            pass
        return self.status

    def commands(self) -> dict[str, float]:
        return {c.device.id: c.command_a for c in self.status.chargers}

    def draws(self) -> dict[str, float]:
        return {cid: self.sim.physics.wallbox(cid).phase_currents_a()[0] for cid in ("E1", "E2", "E3")}

    def overloads_not_caused_by_a_step(self, reaction_s: float) -> list[list[float]]:
        """Times over the fuse that did not begin at a base-load step, or outlasted the decrease
        that answers it (the next cycle and its write: ``reaction_s``). Before the first cycle
        the Modbus boxes offer their cars their full rating (nobody has written them yet): that
        overload ends with the first cycle's writes (an OCPP box's profile lands after the cycle
        returns: within ``reaction_s`` of it)."""
        def explained(start: float, end: float) -> bool:
            if self.controlled_s is not None and start < self.controlled_s:
                return 0 <= end <= self.controlled_s + reaction_s
            return any(abs(start - s) < 0.05 for s in self.steps_s) and 0 <= end - start <= reaction_s
        return [o for o in self.over if not explained(*o)]


def test_the_fuse_holds_with_modbus_and_ocpp_boxes_under_base_load_and_dimming(cleanup: list) -> None:
    site = MixedSite(cleanup)
    site.run(2.0)
    assert site.commands() == {"E1": 7.0, "E2": 7.0, "E3": 7.0}, site.commands()  # an equal share of 21 A
    site.base_load(7.0)  # 18 A left: 6 A each
    site.run(2.0)
    assert site.commands() == {"E1": 6.0, "E2": 6.0, "E3": 6.0}, site.commands()
    site.set_avail(40)  # 8.8 kW for all chargers: two boxes at their minimum (8.3 kW), one paused
    site.run(1.5)
    dimmed = site.commands()
    assert sorted(dimmed.values())[0] == 0.0 and sum(dimmed.values()) * 3 * 230 <= 8800, dimmed
    assert sum(site.draws().values()) * 3 * 230 <= 8800 + 10, site.draws()
    site.base_load(3.0)
    site.set_avail(100)  # 22 A left: the OCPP box and the Modbus boxes share it again
    site.run(2.0)
    commands = site.commands()
    assert all(6.0 <= a <= 8.0 for a in commands.values()) and sum(commands.values()) <= 22 + EPS, commands
    assert site.draws() == pytest.approx(commands, abs=0.05)
    assert site.over and not site.overloads_not_caused_by_a_step(reaction_s=site.CYCLE_S + 0.5), (
        site.over, site.steps_s)
    assert max(site.sim.physics.grid_currents_a()) <= FUSE_A + EPS


def test_a_disconnected_ocpp_box_keeps_its_last_limit_reserved(cleanup: list) -> None:
    site = MixedSite(cleanup)
    site.run(2.0)
    assert site.commands()["E3"] == 7.0 and site.box.limit_a == 7.0
    writes = len(site.box.calls("SetChargingProfile"))
    site.box.disconnect()
    assert site.box.wait_for(lambda: not site.box.connected)
    status = site.run_until(lambda s: not s.charger("E3").device.online)  # once its reading is stale
    e3 = status.charger("E3")
    assert not e3.device.online and "not connected" in (e3.device.error or "")
    assert site.draws()["E3"] == 7.0  # the box keeps charging at its last profile
    assert site.commands()["E1"] == site.commands()["E2"] == 7.0  # nobody took its share
    site.base_load(10.0)  # 15 A left, 7 A of it still E3's: the Modbus boxes make room alone
    site.run(1.5)
    others = site.commands()["E1"] + site.commands()["E2"]
    assert others <= 15 - 7 + EPS and site.draws()["E3"] == 7.0, site.commands()
    assert max(site.sim.physics.grid_currents_a()) <= FUSE_A + EPS
    site.box.reconnect()
    assert site.box.wait_for(lambda: len(site.box.calls("SetChargingProfile")) > writes)
    assert profile_limit(site.box.calls("SetChargingProfile")[writes]) == 7.0  # its last limit, at once
    status = site.run_until(lambda s: s.charger("E3").device.online)
    assert status.charger("E3").device.online
    assert not site.overloads_not_caused_by_a_step(reaction_s=site.CYCLE_S + 0.5), (site.over, site.steps_s)
