"""One cycle's snapshot turned into what ``allocate()`` takes: the site and every charger.

Pure functions: the loop gathers the facts (the readings that are fresh, the evaluated formulas,
what the writer knows of each box) and these decide what they mean for load management, so the
meaning is tested without devices (``tests/unit/test_cycle_inputs.py``):

* the site's limits in force, and the fail-safe reason when the grid meter or a site limit
  formula failed (then the chargers' total is held at ``failsafe_limit_w``);
* each charger's maximum in force (a failed formula takes its fail-safe value: the minimum
  while the car charges, else 0), its cap from the rules and overrides (``allocation.rules``),
  its measured draw on the site's phases, and, when it is silent, what it is assumed to draw
  (``allocation.assumed_draw``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.allocation import ChargerInput, SiteInput
from controller.allocation.assumed_draw import Assumed, SilentBox, assumed_draw
from controller.allocation.rules import CapFacts, Override, RuleOutcome, RuleSpec, cycle_caps
from controller.config import Loadpoint, Site
from controller.formulas.evaluation import Evaluated, RuleResult, truthy
from hal.types import ChargerReading, Fallback, MeterReading, Phases3


def charger_draw(reading: ChargerReading, phases: int, phase: int) -> Phases3:
    """Per-phase draw at the grid: a 1-phase box reports its current on L1, whatever it is wired to."""
    if phases == 3:
        return reading.current_a
    draw = [0.0, 0.0, 0.0]
    draw[phase] = max(reading.current_a)
    return (draw[0], draw[1], draw[2])


def site_input(site: Site, grid: MeterReading | None, grid_fault: str | None, ev: Evaluated,
               grid_fault_key: str | None = None) -> SiteInput:
    """The site limits in force; ``grid``: the grid meter's fresh reading (None: none, or failed,
    ``grid_fault`` says why, ``grid_fault_key`` the same without its changing numbers)."""
    reasons: list[str] = []
    causes: list[str] = []
    grid_current: Phases3 | None = None
    grid_power: float | None = None
    if site.grid_meter is not None:
        if grid is None or grid.current_a is None:
            reasons.append(f"grid meter {site.grid_meter}: {grid_fault or 'no phase currents'}")
            causes.append(f"grid meter {site.grid_meter}: {grid_fault_key or grid_fault or 'no phase currents'}")
        else:
            grid_current, grid_power = grid.current_a, grid.power_w
    grid_limit, error = ev.grid_limit_w
    if error is not None:
        reasons.append(f"grid_limit_w: {error}")
        causes.append(reasons[-1])
    chargers_limit, error = ev.chargers_limit_w
    if error is not None:
        reasons.append(f"chargers_limit_w: {error}")
        causes.append(reasons[-1])
    return SiteInput(
        voltage_v=site.voltage_v,
        main_fuse_a=site.main_fuse_a,
        grid_current_a=grid_current,
        grid_power_w=grid_power,
        grid_limit_w=grid_limit,
        chargers_limit_w=chargers_limit,
        unbalanced_limit_a=site.unbalanced_limit_a,
        failsafe_limit_w=site.failsafe_limit_w,
        failsafe_reason="; ".join(reasons) or None,
        failsafe_causes=tuple(causes),
    )


def rule_outcomes(ev: Evaluated) -> list[RuleOutcome]:
    """The rules' evaluated formulas, for ``allocation.rules.cycle_caps``."""
    return [_outcome(rr) for rr in ev.rules]


def _outcome(rr: RuleResult) -> RuleOutcome:
    value, value_error = rr.value
    is_current = rr.rule.max_current_a is not None
    limit = value if value_error is None else None
    spec = RuleSpec(name=rr.rule.name, chargers=rr.rule.chargers,
                    max_current_a=limit if is_current else None, max_power_w=None if is_current else limit)
    return RuleOutcome(spec, truthy(rr.when), rr.when[1], value_error)


def caps(ev: Evaluated, overrides: Mapping[str, Override], chargers: Mapping[str, Loadpoint],
         readings: Mapping[str, ChargerReading | None], voltage_v: float,
         external: Mapping[str, tuple[float, str]] | None = None) -> dict[str, tuple[float | None, str | None]]:
    """Every charger's cap from the rules, the overrides and other sources (``allocation.rules``)."""
    facts = {cid: CapFacts(cc.phases, voltage_v, cc.min_current_a, _charging(readings.get(cid)))
             for cid, cc in chargers.items()}
    return cycle_caps(rule_outcomes(ev), overrides, facts, external)


def _charging(reading: ChargerReading | None) -> bool:
    return reading is not None and reading.state.charging


def charger_maximum(cc: Loadpoint, result: tuple[Any, str | None], reading: ChargerReading | None,
                    main_fuse_a: float) -> tuple[float, str | None]:
    """The maximum in force and, when a fail-safe value stands in, why."""
    value, error = result
    if error is not None:
        return (cc.min_current_a if _charging(reading) else 0.0), f"max_current_a error: {error}"
    if value is None:
        return float(main_fuse_a), None
    return max(0.0, float(value)), None


@dataclass(frozen=True)
class BoxFacts:
    """What the loop knows of one charger's box beyond its reading (for a silent box)."""

    fallback: Fallback | None  # its own fall-back (the profile's), None: it has none
    landed_a: float | None  # its last acknowledged limit since it appeared
    landed_s: float | None
    contact_s: float | None  # its last answered request of any kind
    setup_done: bool  # the watchdog gridcharge configures is armed
    last_reading: ChargerReading | None  # its last good reading, however old


def silent_box(cc: Loadpoint, box: BoxFacts, watchdog_s: float, main_fuse_a: float) -> SilentBox:
    """The facts ``assumed_draw`` needs of a charger that does not answer."""
    fallback = box.fallback
    fallback_s: float | None = None
    if fallback is not None:
        # A watchdog that gridcharge configures is armed only once its setup was acknowledged.
        fallback_s = fallback.timeout_s if fallback.timeout_s is not None else (watchdog_s if box.setup_done else None)
    # A maximum given as a formula may be low now and was perhaps not when the box was set.
    maximum = cc.max_current_a if isinstance(cc.max_current_a, (int, float)) else main_fuse_a
    return SilentBox(
        landed_a=box.landed_a,
        landed_s=box.landed_s,
        contact_s=box.contact_s,
        measured_a=max(box.last_reading.current_a) if box.last_reading is not None else None,
        fallback_s=fallback_s,
        fed_by_any_request=fallback.fed_by_any_request if fallback is not None else True,
        failsafe_a=cc.failsafe_current_a,
        maximum_a=float(maximum),
    )


def charger_input(cid: str, cc: Loadpoint, reading: ChargerReading | None, maximum: tuple[float, str | None],
                  cap: tuple[float | None, str | None], reserved: Assumed | None) -> ChargerInput:
    """One charger as allocate() sees it; ``reserved``: what it is assumed to draw when silent."""
    max_a, max_reason = maximum
    cap_a, cap_reason = cap
    return ChargerInput(
        id=cid,
        phases=cc.phases,
        phase=cc.phase_index,
        min_current_a=cc.min_current_a,
        max_current_a=max_a,
        max_reason=max_reason,
        priority=cc.priority,
        online=reading is not None,
        state=reading.state if reading is not None else None,
        drawn_a=charger_draw(reading, cc.phases, cc.phase_index) if reading is not None else (0.0, 0.0, 0.0),
        reserved_a=reserved.current_a if reserved is not None else 0.0,
        reserved_reason=(reserved.why or None) if reserved is not None else None,
        cap_a=cap_a,
        cap_reason=cap_reason,
    )


def charger_inputs(ev: Evaluated, chargers: Mapping[str, Loadpoint], readings: Mapping[str, ChargerReading | None],
                   boxes: Mapping[str, BoxFacts], overrides: Mapping[str, Override], site: Site,
                   now_s: float, external: Mapping[str, tuple[float, str]] | None = None) -> dict[str, ChargerInput]:
    """Every charger as allocate() sees it this cycle (``external``: caps of other sources)."""
    capped = caps(ev, overrides, chargers, readings, site.voltage_v, external)
    out: dict[str, ChargerInput] = {}
    for cid, cc in chargers.items():
        reading = readings.get(cid)
        reserved = None
        if reading is None:
            reserved = assumed_draw(silent_box(cc, boxes[cid], site.watchdog_s, site.main_fuse_a), now_s)
        maximum = charger_maximum(cc, ev.charger_max_a[cid], reading, site.main_fuse_a)
        out[cid] = charger_input(cid, cc, reading, maximum, capped.get(cid, (None, None)), reserved)
    return out


__all__: Sequence[str] = (
    "BoxFacts", "caps", "charger_draw", "charger_input", "charger_inputs", "charger_maximum", "rule_outcomes",
    "silent_box", "site_input",
)
