"""Evaluate every formula of one cycle, in dependency order, with the fail-safe rules of docs/configuration.md#formulas.

Variables first (each one's value becomes a symbol for the next), then the leaves that read
them: the site limits, each charger's maximum and each rule's condition and value. A formula
that fails yields ``(None, error)``; what that means for the site (fail-safe limit) or a
charger (its minimum if charging, else 0) is decided by the loop, which knows the devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.formulas import Evaluator, Formula, compile_formula
from controller.status import FormulaStatus, VariableStatus
from controller.records.variables import VariableSet, evaluate_variables

if TYPE_CHECKING:
    from controller.config import Config

Result = tuple[Any, str | None]


@dataclass(frozen=True)
class RuleFormulas:
    name: str
    chargers: tuple[str, ...] | None
    when: Formula | None
    max_current_a: Formula | None
    max_power_w: Formula | None


@dataclass(frozen=True)
class LimitFormulas:
    """The formulas of the config that are not variables, compiled once at start."""

    grid_limit_w: Formula | None
    chargers_limit_w: Formula | None
    charger_max_a: Mapping[str, Formula]
    rules: tuple[RuleFormulas, ...]


@dataclass(frozen=True)
class RuleResult:
    rule: RuleFormulas
    when: Result
    value: Result  # max_current_a or max_power_w, whichever the rule has


@dataclass(frozen=True)
class Evaluated:
    variables: tuple[VariableStatus, ...]
    grid_limit_w: Result
    chargers_limit_w: Result
    charger_max_a: Mapping[str, Result]
    rules: tuple[RuleResult, ...]
    errors: tuple[FormulaStatus, ...]


def _maybe(text: Any) -> Formula | None:
    return None if text is None else compile_formula(text)


def compile_limits(cfg: Config) -> LimitFormulas:
    """Compile the site, charger and rule formulas of a validated config."""
    rules = tuple(
        RuleFormulas(
            name=r.name,
            chargers=tuple(r.chargers) if r.chargers else None,
            when=_maybe(r.when),
            max_current_a=_maybe(r.max_current_a),
            max_power_w=_maybe(r.max_power_w),
        )
        for r in cfg.rules
    )
    return LimitFormulas(
        grid_limit_w=_maybe(cfg.site.grid_limit_w),
        chargers_limit_w=_maybe(cfg.site.chargers_limit_w),
        charger_max_a={cid: compile_formula(c.max_current_a) for cid, c in cfg.chargers.items()},
        rules=rules,
    )


def _number(result: Result) -> Result:
    """Limits must be numbers (or None = no limit); a boolean or anything else is an error."""
    value, error = result
    if error is not None or value is None:
        return result
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"not a number: {value!r}"
    return float(value), None


def evaluate_cycle(
    evaluator: Evaluator, varset: VariableSet, limits: LimitFormulas, symbols: Mapping[str, Any]
) -> Evaluated:
    """Evaluate everything for one cycle: variables first, then the limits that read them."""
    errors: list[FormulaStatus] = []
    results, symbols = evaluate_variables(evaluator, varset, symbols)
    ordered_vars = tuple(
        VariableStatus(name, varset.exprs[name], value, error)
        for name, (value, error) in sorted(results.items())
    )

    def run(where: str, formula: Formula | None, numeric: bool = True) -> Result:
        if formula is None:
            return None, None
        result = evaluator.evaluate(formula, symbols)
        if numeric:
            result = _number(result)
        if result[1] is not None:
            errors.append(FormulaStatus(where, result[1]))
        return result

    grid = run("site.grid_limit_w", limits.grid_limit_w)
    chargers = run("site.chargers_limit_w", limits.chargers_limit_w)
    maxima = {cid: run(f"chargers.{cid}.max_current_a", f) for cid, f in limits.charger_max_a.items()}
    rules: list[RuleResult] = []
    for i, rule in enumerate(limits.rules):
        when = run(f"rules[{i}] {rule.name!r}.when", rule.when, numeric=False) if rule.when else (True, None)
        value_formula = rule.max_current_a if rule.max_current_a is not None else rule.max_power_w
        value_key = "max_current_a" if rule.max_current_a is not None else "max_power_w"
        value = run(f"rules[{i}] {rule.name!r}.{value_key}", value_formula)
        rules.append(RuleResult(rule, when, value))
    return Evaluated(ordered_vars, grid, chargers, maxima, tuple(rules), tuple(errors))


def truthy(result: Result) -> bool | None:
    """A rule condition's truth; None when it could not be evaluated."""
    value, error = result
    if error is not None:
        return None
    return bool(value) if value is not None else False


