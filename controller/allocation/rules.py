"""Charging rules and overrides turned into one current cap per charger (the ``rules:`` section).

This module owns :func:`cycle_caps` and :func:`rule_caps`: pure, no I/O. The loop evaluates each
rule's formulas (its ``when`` condition and its ``max_current_a`` / ``max_power_w`` value) and
passes them here as :class:`RuleOutcome`, with the API overrides (:class:`Override`); allocate()
then treats the cap as an upper bound with its reason (a cap between 0 and the charger's minimum
pauses it there, since nothing between 0 and the minimum is ever written).

Semantics, chosen to restrict rather than release when something is unknown:

* A rule applies when its condition is true. A condition that failed to evaluate (``when_error``
  set) APPLIES the rule, and the reason says so: ``rule "x" (condition error: ...)``. A broken wire
  to the tariff signal must not let every car charge at full power.
* ``when`` None without an error means the rule has no condition: it always applies. (The loop
  passes True for that; a condition that evaluated to None reaches us as False, see
  ``controller.formulas.evaluation.truthy``.)
* ``max_power_w`` becomes a current with the charger's phase count and voltage:
  ``power / (phases x voltage)``.
* A value of None means "no limit" (a value formula may evaluate to None); a NaN value or a
  negative one caps at 0 (restrict).
* Several caps on one charger: the lowest wins, with its reason; among equal caps the first one
  (config order of the rules, then the override) wins, so the reason is stable.
* A rule whose *value* failed to evaluate caps the chargers it covers at their fail-safe value
  (their minimum while charging, else 0) unless its condition is known to be false: the same
  fail-safe as a charger maximum that fails.
* An override (cFos ``override_device``) caps at its current, or at 0 when it disables charging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Override:
    """An API override of one charger, kept until its car is unplugged (cFos override_device)."""

    current_a: float | None = None
    enabled: bool = True


@dataclass(frozen=True)
class CapFacts:
    """What the caps need to know of one charger this cycle."""

    phases: int
    voltage_v: float
    min_current_a: float
    charging: bool  # a car draws now (its fail-safe value is then its minimum, else 0)


@dataclass(frozen=True)
class RuleOutcome:
    """One rule this cycle: its condition and its value, evaluated (or why they could not be)."""

    spec: RuleSpec  # with the value in force (None = no limit)
    when: bool | None  # None: no condition, or it failed (``when_error``)
    when_error: str | None = None
    value_error: str | None = None


@dataclass(frozen=True)
class RuleSpec:
    """One charging rule with its value already evaluated (the loop evaluates the formulas)."""

    name: str
    chargers: tuple[str, ...] | None  # None = all chargers
    max_current_a: float | None  # exactly one of these two is configured; None value = no limit
    max_power_w: float | None

    def __post_init__(self) -> None:
        if self.max_current_a is not None and self.max_power_w is not None:
            raise ValueError(f'rule "{self.name}": give max_current_a or max_power_w, not both')

    def covers(self, charger_id: str) -> bool:
        return self.chargers is None or charger_id in self.chargers


def rule_reason(name: str, when_error: str | None = None) -> str:
    """The ``lreason`` text of a rule cap."""
    if when_error is not None:
        return f'rule "{name}" (condition error: {when_error})'
    return f'rule "{name}"'


def rule_applies(when: bool | None, when_error: str | None) -> bool:
    """True when the rule restricts this cycle: its condition is true, failed, or absent."""
    if when_error is not None:
        return True
    return True if when is None else bool(when)


def _cap_a(rule: RuleSpec, phases: int, voltage_v: float) -> tuple[float | None, str | None]:
    """The rule's cap in amperes for one charger, and a note when the value was unusable."""
    if rule.max_current_a is not None:
        value, unit = rule.max_current_a, "A"
    elif rule.max_power_w is not None:
        value, unit = rule.max_power_w, "W"
    else:
        return None, None
    if math.isnan(value):
        return 0.0, f"invalid value {value!r} {unit}"
    if value < 0:
        return 0.0, f"negative value {value:g} {unit}"
    if unit == "W":
        return value / (phases * voltage_v), None
    return value, None


def rule_caps(
    rules: Sequence[tuple[RuleSpec, bool | None, str | None]],
    chargers: Mapping[str, tuple[int, float]],
    overrides: Mapping[str, tuple[float | None, str]] | None = None,
) -> dict[str, tuple[float | None, str | None]]:
    """Each charger's cap from the rules in force and the overrides: id → (cap_a, reason).

    ``rules``: (rule, when-value, when-error) in config order. ``chargers``: id → (phases,
    voltage_v), every charger of the site (each gets an entry, (None, None) when uncapped).
    ``overrides``: id → (cap_a or None, reason), e.g. an API ``mamps`` override or flags=C (cap 0).
    Ids in rules or overrides that are not in ``chargers`` are ignored (config validation rejects
    them; an override can outlive a charger removed by a config reload).
    """
    caps: dict[str, tuple[float | None, str | None]] = {cid: (None, None) for cid in chargers}
    for rule, when, when_error in rules:
        if not rule_applies(when, when_error):
            continue
        reason = rule_reason(rule.name, when_error)
        for cid, (phases, voltage_v) in chargers.items():
            if not rule.covers(cid):
                continue
            cap_a, note = _cap_a(rule, phases, voltage_v)
            if cap_a is not None:
                caps[cid] = _lower(caps[cid], cap_a, f"{reason} ({note})" if note else reason)
    for cid, (cap_a, reason) in (overrides or {}).items():
        if cid in caps and cap_a is not None:
            caps[cid] = _lower(caps[cid], 0.0 if math.isnan(cap_a) else max(0.0, cap_a), reason)
    return caps


def _lower(current: tuple[float | None, str | None], cap_a: float, reason: str) -> tuple[float | None, str | None]:
    """Keep the lower cap; the earlier one wins a tie so the reason does not flip between cycles."""
    if current[0] is None or cap_a < current[0]:
        return cap_a, reason
    return current


def cycle_caps(outcomes: Sequence[RuleOutcome], overrides: Mapping[str, Override],
               chargers: Mapping[str, CapFacts],
               external: Mapping[str, tuple[float, str]] | None = None) -> dict[str, tuple[float | None, str | None]]:
    """Every charger's cap this cycle from the rules, their fail-safe, the overrides and the
    caps of other sources (``external``: id → (cap_a, reason), e.g. the supplier's backend)."""
    specs: list[tuple[RuleSpec, bool | None, str | None]] = []
    forced: dict[str, list[tuple[float, str]]] = {}
    for outcome in outcomes:
        rule = outcome.spec
        if outcome.value_error is not None:
            if outcome.when is False and outcome.when_error is None:
                continue  # known not to apply: its value does not matter
            reason = f'rule "{rule.name}" (value error: {outcome.value_error})'
            for cid, facts in chargers.items():
                if rule.covers(cid):
                    forced.setdefault(cid, []).append((facts.min_current_a if facts.charging else 0.0, reason))
            continue
        specs.append((rule, outcome.when, outcome.when_error))
    for cid, override in overrides.items():
        if not override.enabled:
            forced.setdefault(cid, []).append((0.0, "disabled by override (flags=C)"))
        elif override.current_a is not None:
            forced.setdefault(cid, []).append((override.current_a, f"override {override.current_a:g} A"))
    for cid, (cap_a, reason) in (external or {}).items():
        forced.setdefault(cid, []).append((cap_a, reason))
    lowest = {cid: min(items, key=lambda item: item[0]) for cid, items in forced.items()}
    return rule_caps(specs, {cid: (f.phases, f.voltage_v) for cid, f in chargers.items()}, lowest)
