"""What one cycle's snapshot means for load management (controller/cycle_inputs.py): pure tables."""

from __future__ import annotations

from typing import Any

import pytest

from controller.allocation.rules import Override
from controller.config import ModbusChargerConfig, Site
from controller.cycle_inputs import (
    BoxFacts,
    caps,
    charger_draw,
    charger_inputs,
    charger_maximum,
    silent_box,
    site_input,
)
from controller.formulas import compile_formula
from controller.formulas.evaluation import Evaluated, RuleFormulas, RuleResult
from hal.types import ChargerReading, Fallback, IecState, MeterReading

SITE = Site(main_fuse_a=32, grid_meter="M1", watchdog_s=15)
E1 = ModbusChargerConfig(model="heidelberg", bus="rs485", unit=2, min_current_a=6, max_current_a=16)
E3 = ModbusChargerConfig(model="alfen", host="10.0.0.3", phases=1, phase="L2", max_current_a="32 * AVAIL / 100")
CHARGING = ChargerReading(IecState.C, (10.0, 10.0, 10.0))


def evaluated(*, grid: Any = (None, None), chargers: Any = (None, None), maxima: dict[str, Any] | None = None,
              rules: tuple[RuleResult, ...] = ()) -> Evaluated:
    return Evaluated(variables=(), grid_limit_w=grid, chargers_limit_w=chargers,
                     charger_max_a=maxima or {"E1": (16, None), "E3": (32, None)}, rules=rules, errors=())


def rule(name: str, value: Any, *, when: Any = (True, None), chargers: tuple[str, ...] | None = None,
         power: bool = False) -> RuleResult:
    formula = compile_formula("1")
    spec = RuleFormulas(name, chargers, None, None if power else formula, formula if power else None)
    return RuleResult(spec, when, value)


def test_site_limits_and_the_fail_safe_reasons() -> None:
    meter = MeterReading(power_w=4600, current_a=(7.0, 6.0, 7.0))
    ok = site_input(SITE, meter, None, evaluated(grid=(11000, None)))
    assert (ok.grid_current_a, ok.grid_limit_w, ok.failsafe_reason) == ((7.0, 6.0, 7.0), 11000, None)
    silent = site_input(SITE, None, "stale (6.0 s)", evaluated(chargers=(None, "name 'TARIF' is not defined")))
    assert silent.grid_current_a is None
    assert silent.failsafe_reason == "grid meter M1: stale (6.0 s); chargers_limit_w: name 'TARIF' is not defined"
    no_phases = site_input(SITE, MeterReading(power_w=10.0), None, evaluated())
    assert no_phases.failsafe_reason == "grid meter M1: no phase currents"
    assert site_input(Site(main_fuse_a=32), None, None, evaluated()).failsafe_reason is None  # no grid meter


@pytest.mark.parametrize(("result", "reading", "expected"), [
    ((12.5, None), CHARGING, (12.5, None)),
    ((None, None), CHARGING, (32.0, None)),  # no limit: the fuse is the limit
    ((-3, None), None, (0.0, None)),
    ((None, "division by zero"), CHARGING, (6.0, "max_current_a error: division by zero")),  # charging: its minimum
    ((None, "division by zero"), None, (0.0, "max_current_a error: division by zero")),  # else 0
])
def test_a_charger_maximum_and_its_fail_safe(result: Any, reading: Any, expected: Any) -> None:
    assert charger_maximum(E1, result, reading, SITE.main_fuse_a) == expected


def test_caps_from_rules_their_fail_safe_and_overrides() -> None:
    ev = evaluated(rules=(
        rule("tariff", (8, None), chargers=("E1",)),
        rule("broken value", (None, "bad"), when=(False, None)),  # known not to apply: no cap
        rule("broken value, condition failed", (None, "bad"), when=(None, "bad too"), chargers=("E3",)),
        rule("power", (2300, None), power=True, chargers=("E3",)),  # 2300 W on one phase: 10 A
    ))
    got = caps(ev, {"E1": Override(current_a=10.0)}, {"E1": E1, "E3": E3}, {"E1": CHARGING, "E3": None}, 230.0)
    assert got["E1"] == (8, 'rule "tariff"')  # lower than the 10 A override
    assert got["E3"] == (0.0, 'rule "broken value, condition failed" (value error: bad)')  # not charging: 0
    off = caps(evaluated(), {"E1": Override(enabled=False)}, {"E1": E1}, {"E1": CHARGING}, 230.0)
    assert off["E1"] == (0.0, "disabled by override (flags=C)")


def test_a_one_phase_box_reports_on_its_own_l1_and_draws_on_its_site_phase() -> None:
    assert charger_draw(ChargerReading(IecState.C, (9.5, 0.0, 0.0)), 1, 1) == (0.0, 9.5, 0.0)
    assert charger_draw(CHARGING, 3, 0) == (10.0, 10.0, 10.0)


def test_what_is_known_of_a_silent_box() -> None:
    setup = BoxFacts(Fallback(timeout_s=None), 14.0, 100.0, 130.0, True, CHARGING)
    assert silent_box(E1, setup, 15.0, 32.0).fallback_s == 15.0  # the watchdog gridcharge configured
    no_setup = BoxFacts(Fallback(timeout_s=None), 14.0, 100.0, 130.0, False, CHARGING)
    assert silent_box(E1, no_setup, 15.0, 32.0).fallback_s is None  # not armed: keeps its limit
    fixed = BoxFacts(Fallback(timeout_s=60.0, fed_by_any_request=False), None, None, None, False, None)
    box = silent_box(E3, fixed, 15.0, 32.0)
    assert (box.fallback_s, box.fed_by_any_request, box.maximum_a) == (60.0, False, 32.0)  # formula max: fuse


def test_every_charger_as_allocate_sees_it() -> None:
    box = BoxFacts(None, 12.0, 100.0, 100.0, True, CHARGING)
    inputs = charger_inputs(evaluated(), {"E1": E1, "E3": E3}, {"E1": CHARGING, "E3": None}, {"E3": box},
                            {}, SITE, now_s=200.0)
    e1, e3 = inputs["E1"], inputs["E3"]
    assert e1.online and e1.drawn_a == (10.0, 10.0, 10.0) and e1.reserved_a == 0.0
    assert not e3.online and e3.phase == 1 and e3.reserved_a == 12.0  # no watchdog: its last limit
    assert e3.reserved_reason == "12 A as last given (it has no watchdog)"


def test_the_fail_safe_causes_stay_the_same_while_an_age_grows() -> None:
    from controller.tracking import DeviceTracker

    tracker: DeviceTracker[MeterReading] = DeviceTracker("M1")
    tracker.ok(MeterReading(power_w=1.0, current_a=(1.0, 1.0, 1.0)), 100.0)
    causes = []
    for now in (107.0, 108.0):  # stale for 7 s, then 8 s
        text, key = tracker.fault_text(now, 5.0), tracker.fault_key(now, 5.0)
        site = site_input(SITE, None, text, evaluated(), key)
        causes.append(site.failsafe_causes)
        assert site.failsafe_reason == f"grid meter M1: stale ({now - 100:.1f} s)"
    assert causes[0] == causes[1] == ("grid meter M1: stale",)
    tracker.fail("no answer within 0.3 s", 109.0)
    assert tracker.fault_key(109.0, 5.0) == "no answer within 0.3 s"  # another cause
