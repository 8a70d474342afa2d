"""Tests for controller.allocation.rules: which rules apply, how power becomes current, which cap wins."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.allocation.rules import RuleSpec, rule_applies, rule_caps

SITE = {"E1": (3, 230.0), "E2": (1, 230.0), "E3": (3, 230.0)}


def amps(name: str, value: float | None, chargers: tuple[str, ...] | None = None) -> RuleSpec:
    return RuleSpec(name=name, chargers=chargers, max_current_a=value, max_power_w=None)


def watts(name: str, value: float | None, chargers: tuple[str, ...] | None = None) -> RuleSpec:
    return RuleSpec(name=name, chargers=chargers, max_current_a=None, max_power_w=value)


TARIFF = amps("charge only at the reduced tariff", 0.0, ("E1",))

# (name, rules, overrides, expected: id → (cap, reason))
TABLE = [
    ("no rules: no caps", [], {}, {"E1": (None, None), "E2": (None, None), "E3": (None, None)}),
    ("condition true: the rule applies to its chargers only", [(TARIFF, True, None)], {},
     {"E1": (0.0, 'rule "charge only at the reduced tariff"'), "E2": (None, None), "E3": (None, None)}),
    ("condition false: the rule does not apply", [(TARIFF, False, None)], {}, {"E1": (None, None)}),
    ("condition error: the rule applies and says so", [(TARIFF, None, "name 'TARIF' is not defined")], {},
     {"E1": (0.0, 'rule "charge only at the reduced tariff" (condition error: name \'TARIF\' is not defined)')}),
    ("condition error applies even with a when value", [(TARIFF, False, "stale")], {},
     {"E1": (0.0, 'rule "charge only at the reduced tariff" (condition error: stale)')}),
    ("no condition: always applies", [(amps("always", 10.0), None, None)], {},
     {"E1": (10.0, 'rule "always"'), "E2": (10.0, 'rule "always"')}),
    ("a truthy number counts as true", [(amps("r", 10.0), 1, None)], {}, {"E1": (10.0, 'rule "r"')}),
    ("power becomes current per phase count", [(watts("4.2 kW", 4140.0), True, None)], {},
     {"E1": (6.0, 'rule "4.2 kW"'), "E2": (18.0, 'rule "4.2 kW"')}),
    ("the lowest cap wins with its reason",
     [(amps("ten", 10.0), True, None), (amps("eight", 8.0), True, None), (amps("twelve", 12.0), True, None)], {},
     {"E1": (8.0, 'rule "eight"')}),
    ("equal caps: the first keeps the reason", [(amps("a", 8.0), True, None), (amps("b", 8.0), True, None)], {},
     {"E1": (8.0, 'rule "a"')}),
    ("a value of None is no limit", [(amps("none", None), True, None)], {}, {"E1": (None, None)}),
    ("a NaN value restricts", [(amps("nan", math.nan), True, None)], {},
     {"E1": (0.0, 'rule "nan" (invalid value nan A)')}),
    ("a negative value restricts", [(watts("neg", -5.0), True, None)], {},
     {"E1": (0.0, 'rule "neg" (negative value -5 W)')}),
    ("override below the rules wins", [(amps("ten", 10.0), True, None)], {"E1": (7.0, "override 7 A")},
     {"E1": (7.0, "override 7 A"), "E2": (10.0, 'rule "ten"')}),
    ("override above the rules loses", [(amps("ten", 10.0), True, None)], {"E1": (16.0, "override 16 A")},
     {"E1": (10.0, 'rule "ten"')}),
    ("disable override (flags=C) caps at 0", [], {"E2": (0.0, "disabled by override (flags=C)")},
     {"E2": (0.0, "disabled by override (flags=C)")}),
    ("override without a current is no cap", [], {"E1": (None, "enabled")}, {"E1": (None, None)}),
    ("unknown ids are ignored", [(amps("x", 5.0, ("E9",)), True, None)], {"E9": (0.0, "o")},
     {"E1": (None, None), "E2": (None, None)}),
]


@pytest.mark.parametrize(("name", "rules", "overrides", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_table(name: str, rules: list, overrides: dict, expected: dict) -> None:
    caps = rule_caps(rules, SITE, overrides)
    assert set(caps) == set(SITE)
    for cid, (cap, reason) in expected.items():
        got_cap, got_reason = caps[cid]
        assert (got_cap is None) == (cap is None), caps
        if cap is not None:
            assert got_cap == pytest.approx(cap)
        assert got_reason == reason


def test_overrides_default_to_none() -> None:
    assert rule_caps([(amps("x", 5.0), True, None)], {"E1": (3, 230.0)}) == {"E1": (5.0, 'rule "x"')}


def test_a_rule_has_one_value_kind() -> None:
    with pytest.raises(ValueError):
        RuleSpec(name="both", chargers=None, max_current_a=6.0, max_power_w=4200.0)
    RuleSpec(name="none yet", chargers=None, max_current_a=None, max_power_w=None)  # evaluated to None


def test_rule_applies() -> None:
    assert rule_applies(True, None) and rule_applies(None, None) and rule_applies(False, "err")
    assert not rule_applies(False, None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=64.0), st.one_of(st.none(), st.booleans()),
                          st.one_of(st.none(), st.just("err"))), max_size=6),
       st.one_of(st.none(), st.floats(min_value=0.0, max_value=64.0)))
def test_the_cap_is_the_minimum_of_all_that_apply(items: list[tuple[float, bool | None, str | None]],
                                                 override: float | None) -> None:
    rules = [(amps(f"r{i}", value), when, err) for i, (value, when, err) in enumerate(items)]
    caps = rule_caps(rules, {"E1": (3, 230.0)}, {"E1": (override, "override")})
    applying = [value for value, when, err in items if err is not None or when is None or when]
    if override is not None:
        applying.append(override)
    cap, reason = caps["E1"]
    if applying:
        assert cap == min(applying) and reason
    else:
        assert (cap, reason) == (None, None)
