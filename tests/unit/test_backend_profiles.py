"""The supplier backend's OCPP 1.6 charging profiles as a cap: tables for every rule, then properties.

Tables: reading a SetChargingProfile (and every refusal's text), the JSON record, installing and
clearing, the cap for each purpose, stack level, kind, recurrence, validity window and unit, and
when the cap can next change. Properties (hypothesis): the cap is never negative; one
ChargePointMaxProfile of L keeps the cap at or below L whatever else is installed; the JSON round
trip is exact; the cap is constant from any instant up to the next change the module names.
"""

from __future__ import annotations

import ast
import json
import math
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.backend.profiles import (
    MAX_PERIODS,
    MAX_PROFILES,
    ChargingProfile,
    ProfileError,
    Profiles,
    SchedulePeriod,
    cap_at,
    clear,
    end_transaction,
    install,
    next_change_ts,
    parse_profile,
    profile_from_json,
    profile_to_json,
)

HOUR, DAY, WEEK = 3600, 86_400, 7 * 86_400
DROP = object()  # a field value that removes the field


def ts(text: str) -> float:
    """Unix seconds of an ISO 8601 date-time with its zone."""
    return datetime.fromisoformat(text).timestamp()


T0 = ts("2026-12-02T10:00:00Z")


# ---------------------------------------------------------------------------------------------
# Reading SetChargingProfile


def ocpp(*, schedule: dict[str, Any] | None = None, periods: list[Any] | None = None,
         **fields: Any) -> dict[str, Any]:
    """A csChargingProfiles as the ocpp library hands it, with ``fields`` changed (DROP removes)."""
    data: dict[str, Any] = {
        "charging_profile_id": 7, "stack_level": 1, "charging_profile_purpose": "TxDefaultProfile",
        "charging_profile_kind": "Absolute", "valid_from": "2026-12-02T10:00:00Z",
        "charging_schedule": {
            "charging_rate_unit": "A", "start_schedule": "2026-12-02T10:00:00Z", "duration": 3600,
            "charging_schedule_period": [{"start_period": 0, "limit": Decimal("10.0"), "number_phases": 3}],
            "min_charging_rate": Decimal("6.0")}}
    data.update(fields)
    if isinstance(data["charging_schedule"], dict):
        data["charging_schedule"].update(schedule or {})
        if periods is not None:
            data["charging_schedule"]["charging_schedule_period"] = periods
        data["charging_schedule"] = {k: v for k, v in data["charging_schedule"].items() if v is not DROP}
    return {k: v for k, v in data.items() if v is not DROP}


def make(*, connector: int = 1, tx: bool = False, tx_id: int | None = None, **changes: Any) -> ChargingProfile:
    return parse_profile(connector, ocpp(**changes), T0 - 5, transaction_active=tx, transaction_id=tx_id)


def test_a_set_charging_profile_as_the_library_hands_it() -> None:
    assert make() == ChargingProfile(
        connector_id=1, charging_profile_id=7, stack_level=1, charging_profile_purpose="TxDefaultProfile",
        charging_profile_kind="Absolute", charging_rate_unit="A",
        charging_schedule_period=(SchedulePeriod(0, 10.0, 3),), received_ts=T0 - 5,
        valid_from_ts=T0, start_schedule_ts=T0, duration=3600, min_charging_rate=6.0)


def test_times_with_an_offset_or_without_a_zone() -> None:
    assert make(valid_from="2026-12-02T11:00:00+01:00").valid_from_ts == T0
    assert make(valid_from="2026-12-02T10:00:00").valid_from_ts == T0  # no zone: UTC, as OCPP's times are


def test_a_tx_profile_is_bound_to_the_running_transaction() -> None:
    assert make(charging_profile_purpose="TxProfile", tx=True, tx_id=42).transaction_id == 42
    assert make(charging_profile_purpose="TxProfile", transaction_id=42, tx=True, tx_id=42).transaction_id == 42
    # the backend's id is kept while gridcharge does not know the transaction's id yet
    assert make(charging_profile_purpose="TxProfile", transaction_id=42, tx=True).transaction_id == 42


def test_what_is_accepted_beyond_the_example() -> None:
    assert make(connector=0).connector_id == 0  # a TxDefaultProfile for the whole charge point
    assert make(connector=0, charging_profile_purpose="ChargePointMaxProfile").connector_id == 0
    relative = make(charging_profile_kind="Relative", schedule={"start_schedule": DROP})
    assert relative.start_schedule_ts is None
    assert make(recurrency_kind="Daily").recurrency_kind == "Daily"  # kept; only Recurring uses it
    assert make(periods=[{"start_period": 0, "limit": 0}]).charging_schedule_period[0].limit == 0.0
    assert make(periods=[{"start_period": i, "limit": 6} for i in range(MAX_PERIODS)])


WRONG = [
    ({"charging_profile_purpose": "Bogus"}, "chargingProfilePurpose 'Bogus' is unknown (expected "
                                            "ChargePointMaxProfile, TxDefaultProfile, TxProfile)"),
    ({"charging_profile_kind": "Sometimes"}, "chargingProfileKind 'Sometimes' is unknown"),
    ({"schedule": {"charging_rate_unit": "kW"}}, "chargingRateUnit 'kW' is unknown (expected A, W)"),
    ({"charging_profile_kind": "Recurring", "recurrency_kind": "Monthly"}, "recurrencyKind 'Monthly' is unknown"),
    ({"periods": []}, "chargingSchedulePeriod is empty"),
    ({"periods": [{"start_period": 60, "limit": 10}]}, "the first period starts at startPeriod 60, not 0"),
    ({"periods": [{"start_period": s, "limit": 10} for s in (0, 600, 300)]},
     "periods are not in ascending order: startPeriod 300 follows 600"),
    ({"periods": [{"start_period": 0, "limit": 10}, {"start_period": 0, "limit": 6}]},
     "startPeriod 0 follows 0"),
    ({"periods": [{"start_period": 0, "limit": Decimal("-1.0")}]},
     "limit -1.0 of the period at startPeriod 0 is negative"),
    ({"periods": [{"start_period": 0, "limit": float("nan")}]}, "limit is nan, not a finite number"),
    ({"periods": [{"start_period": 0, "limit": Decimal("NaN")}]}, "not a finite number"),
    ({"periods": [{"start_period": i, "limit": 6} for i in range(MAX_PERIODS + 1)]},
     f"chargingSchedulePeriod has {MAX_PERIODS + 1} periods, at most {MAX_PERIODS}"),
    ({"periods": [{"start_period": 0, "limit": 6, "number_phases": 4}]},
     "numberPhases 4 of the period at startPeriod 0 is not 1, 2 or 3"),
    ({"charging_profile_kind": "Recurring"}, "a Recurring profile needs recurrencyKind (Daily or Weekly)"),
    ({"schedule": {"start_schedule": DROP}}, "startSchedule is missing: Absolute profiles need one"),
    ({"charging_profile_kind": "Recurring", "recurrency_kind": "Daily", "schedule": {"start_schedule": DROP}},
     "startSchedule is missing: Recurring profiles need one"),
    ({"charging_profile_purpose": "TxProfile"}, "a TxProfile needs an active transaction, and none runs"),
    ({"charging_profile_purpose": "TxProfile", "transaction_id": 5, "tx": True, "tx_id": 6},
     "the TxProfile is for transaction 5, but the running transaction is 6"),
    ({"transaction_id": 5}, "transactionId is only for a TxProfile, not a TxDefaultProfile"),
    ({"valid_to": "2026-12-02T10:00:00Z"},
     "validTo 2026-12-02T10:00:00Z is not after validFrom 2026-12-02T10:00:00Z"),
    ({"valid_from": "yesterday"}, "validFrom is 'yesterday', not an ISO 8601 date-time"),
    ({"valid_to": 1796205600}, "validTo is 1796205600, not an ISO 8601 date-time"),
    ({"schedule": {"duration": -1}}, "duration -1 is negative"),
    ({"schedule": {"min_charging_rate": Decimal("-6.0")}}, "minChargingRate -6.0 is negative"),
    ({"stack_level": -1}, "stackLevel -1 is outside 0 - 99"),
    ({"stack_level": 100}, "stackLevel 100 is outside 0 - 99"),
    ({"connector": 2}, "connectorId 2 does not exist: this charge point has connector 1"),
    ({"connector": 1, "charging_profile_purpose": "ChargePointMaxProfile"},
     "a ChargePointMaxProfile can only be set on connectorId 0"),
    ({"stack_level": DROP}, "csChargingProfiles lacks stackLevel"),
    ({"schedule": {"charging_rate_unit": DROP}}, "chargingSchedule lacks chargingRateUnit"),
    ({"periods": [{"limit": 6}]}, "chargingSchedulePeriod lacks startPeriod"),
    ({"colour": "red"}, "csChargingProfiles has unknown field colour"),
    ({"schedule": {"colour": "red"}}, "chargingSchedule has unknown field colour"),
    ({"periods": [{"start_period": 0, "limit": 6, "phase_to_use": 1}]},
     "chargingSchedulePeriod has unknown field phaseToUse"),
    ({"charging_profile_id": "7"}, "chargingProfileId is '7', not an integer"),
    ({"charging_profile_id": True}, "chargingProfileId is True, not an integer"),
    ({"periods": [{"start_period": 0, "limit": "10"}]}, "limit is '10', not a number"),
    ({"periods": [{"start_period": 0.0, "limit": 10}]}, "startPeriod is 0.0, not an integer"),
    ({"charging_profile_purpose": 3}, "chargingProfilePurpose is 3, not text"),
    ({"charging_schedule": []}, "chargingSchedule is list, not an object"),
    ({"periods": {"start_period": 0}}, "chargingSchedulePeriod is {'start_period': 0}, not a list"),
]


@pytest.mark.parametrize("changes, message", WRONG, ids=[m.split(":")[0][:40] for _, m in WRONG])
def test_a_wrong_profile_is_refused_with_one_line_saying_why(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as error:
        make(**changes)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_profile_cannot_be_built_wrong_either() -> None:
    with pytest.raises(ProfileError, match="chargingSchedulePeriod is empty"):
        prof(periods=())


# ---------------------------------------------------------------------------------------------
# The JSON record in the state directory


def prof(pid: int = 1, purpose: str = "TxDefaultProfile", periods: tuple[tuple[int, float], ...] = ((0, 10),),
         *, stack: int = 0, kind: str = "Absolute", start: float | None = T0, unit: str = "A",
         recurrency: str | None = None, duration: int | None = None, valid_from: float | None = None,
         valid_to: float | None = None, tx_id: int | None = None, connector: int | None = None,
         phases: int | None = None) -> ChargingProfile:
    """A profile built directly (the tables about the cap need many)."""
    return ChargingProfile(
        connector_id=(0 if purpose == "ChargePointMaxProfile" else 1) if connector is None else connector,
        charging_profile_id=pid, stack_level=stack, charging_profile_purpose=purpose,
        charging_profile_kind=kind, charging_rate_unit=unit,
        charging_schedule_period=tuple(SchedulePeriod(s, limit, phases) for s, limit in periods),
        received_ts=T0 - DAY, recurrency_kind=recurrency, transaction_id=tx_id,
        valid_from_ts=valid_from, valid_to_ts=valid_to, start_schedule_ts=start, duration=duration)


def test_the_json_record_reads_back_exactly() -> None:
    for p in (make(), make(charging_profile_purpose="TxProfile", tx=True, tx_id=3, valid_to="2026-12-03T00:00:00.123456Z"),
              prof(kind="Recurring", recurrency="Weekly", unit="W", periods=((0, 11000.5), (60, 0)), phases=1)):
        record = profile_to_json(p)
        assert json.loads(json.dumps(record)) == record  # plain JSON types only
        assert profile_from_json(json.loads(json.dumps(record))) == p


@pytest.mark.parametrize("change, message", [
    ({"stack_level": DROP}, "the stored profile lacks stack_level"),
    ({"received_ts": "yesterday"}, "received_ts is 'yesterday', not a number"),
    ({"colour": "red"}, "the stored profile has unknown field colour"),
    ({"charging_schedule_period": [{"start_period": 0, "limit": -1.0, "number_phases": None}]},
     "limit -1.0 of the period at startPeriod 0 is negative"),
    ({"charging_profile_kind": "Recurring"}, "a Recurring profile needs recurrencyKind"),
])
def test_a_damaged_record_is_refused(change: dict[str, Any], message: str) -> None:
    record = {k: v for k, v in {**profile_to_json(make()), **change}.items() if v is not DROP}
    with pytest.raises(ProfileError, match=message):
        profile_from_json(record)


# ---------------------------------------------------------------------------------------------
# Installing, clearing, the end of a transaction


def ids(profiles: Profiles) -> list[int]:
    return [p.charging_profile_id for p in profiles]


def test_the_same_id_replaces_whatever_its_level_and_purpose() -> None:
    installed = install((prof(1, stack=0), prof(2, stack=1)), prof(1, "ChargePointMaxProfile", stack=5))
    assert ids(installed) == [2, 1] and installed[1].charging_profile_purpose == "ChargePointMaxProfile"


def test_the_same_stack_level_and_purpose_replaces_on_either_connector() -> None:
    assert ids(install((prof(1, stack=2, connector=0), prof(2, stack=3)), prof(3, stack=2, connector=1))) == [2, 3]


def test_another_purpose_on_the_same_level_stays() -> None:
    assert ids(install((prof(1, stack=2),), prof(2, "ChargePointMaxProfile", stack=2))) == [1, 2]


def test_a_tx_profile_replaces_those_of_another_transaction() -> None:
    old = (prof(1, "TxProfile", stack=0, tx_id=8), prof(2, "TxProfile", stack=1, tx_id=None), prof(3, stack=0))
    assert ids(install(old, prof(4, "TxProfile", stack=2, tx_id=9))) == [2, 3, 4]
    assert ids(install(old, prof(4, "TxProfile", stack=2, tx_id=8))) == [1, 2, 3, 4]


def test_at_most_max_profiles_are_installed() -> None:
    full: Profiles = ()
    for n in range(MAX_PROFILES):
        full = install(full, prof(n, stack=n))
    with pytest.raises(ProfileError, match=f"{MAX_PROFILES} profiles are installed, at most {MAX_PROFILES}"):
        install(full, prof(99, stack=99))
    assert len(install(full, prof(5, stack=50))) == MAX_PROFILES  # a replacement still fits


FOUR = (prof(1, "ChargePointMaxProfile", stack=0), prof(2, stack=0, connector=0), prof(3, stack=1),
        prof(4, "TxProfile", stack=1, tx_id=9))


@pytest.mark.parametrize("criteria, left, removed", [
    ({"profile_id": 3}, [1, 2, 4], True),
    ({"profile_id": 3, "purpose": "ChargePointMaxProfile"}, [1, 2, 4], True),  # the id decides alone
    ({"profile_id": 99}, [1, 2, 3, 4], False),
    ({"connector_id": 0}, [3, 4], True),
    ({"connector_id": 1}, [1, 2], True),
    ({"purpose": "TxDefaultProfile"}, [1, 4], True),
    ({"stack_level": 1}, [1, 2], True),
    ({"connector_id": 1, "purpose": "TxDefaultProfile"}, [1, 2, 4], True),
    ({"purpose": "TxDefaultProfile", "stack_level": 5}, [1, 2, 3, 4], False),
    ({}, [], True),
])
def test_clear_by_each_criterion(criteria: dict[str, Any], left: list[int], removed: bool) -> None:
    remaining, did = clear(FOUR, **criteria)
    assert (ids(remaining), did) == (left, removed)


def test_clear_on_nothing_and_with_an_unknown_purpose() -> None:
    assert clear(()) == ((), False)
    with pytest.raises(ProfileError, match="chargingProfilePurpose 'Tx' is unknown"):
        clear(FOUR, purpose="Tx")


def test_the_end_of_a_transaction_drops_its_tx_profiles() -> None:
    assert ids(end_transaction(FOUR)) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# The cap


def cap(profiles: Profiles | ChargingProfile, at: float | str, *, phases: int = 3, voltage: float = 230.0,
        tx_start: float | None = None) -> tuple[float | None, str | None]:
    many = (profiles,) if isinstance(profiles, ChargingProfile) else profiles
    return cap_at(many, ts(at) if isinstance(at, str) else at, phases=phases, voltage_v=voltage,
                  transaction_start_ts=tx_start)


def amps(profiles: Profiles | ChargingProfile, at: float | str, **kw: Any) -> float | None:
    return cap(profiles, at, **kw)[0]


def test_no_profile_no_cap() -> None:
    assert cap((), T0) == (None, None)


def test_an_absolute_profile_from_its_start() -> None:
    p = prof(7)
    assert cap(p, T0 - 0.001) == (None, None)
    assert cap(p, T0) == (10.0, "backend profile 7: 10 A")
    assert cap(p, T0 + 300 * DAY) == (10.0, "backend profile 7: 10 A")  # no duration: for good


def test_the_period_in_force_is_the_last_one_started() -> None:
    p = prof(periods=((0, 16), (1800, 8), (3600, 0)))
    assert [amps(p, T0 + dt) for dt in (0, 1799.999, 1800, 3599, 3600, 10 * DAY)] == [16, 16, 8, 8, 0, 0]
    assert cap(p, T0 + 3600) == (0.0, "backend profile 1: 0 A")  # 0 A is a cap (pause), not "no cap"


def test_duration_ends_the_schedule() -> None:
    p = prof(duration=3600)
    assert [amps(p, T0 + dt) for dt in (0, 3599.999, 3600, 2 * DAY)] == [10, 10, None, None]


def test_the_validity_window() -> None:
    p = prof(valid_from=T0 + 100, valid_to=T0 + 200)
    assert [amps(p, T0 + dt) for dt in (99.999, 100, 199.999, 200)] == [None, 10, 10, None]


def test_the_highest_stack_level_wins_even_when_it_allows_more() -> None:
    assert cap((prof(1, stack=0, periods=((0, 16),)), prof(2, stack=1, periods=((0, 20),))), T0) == (
        20.0, "backend profile 2: 20 A")


def test_a_lower_level_takes_over_when_the_higher_schedule_ends_or_has_not_begun() -> None:
    low, high = prof(1, stack=0, periods=((0, 16),)), prof(2, stack=3, periods=((0, 6),), start=T0 + 600, duration=600)
    assert [amps((low, high), T0 + dt) for dt in (0, 600, 1199, 1200)] == [16, 6, 6, 16]


def test_the_higher_level_outside_its_validity_lets_the_lower_through() -> None:
    low, high = prof(1, stack=0, periods=((0, 16),)), prof(2, stack=3, periods=((0, 6),), valid_to=T0 + 60)
    assert [amps((low, high), T0 + dt) for dt in (0, 60)] == [6, 16]


def test_on_one_stack_level_the_lower_limit_wins() -> None:
    assert cap((prof(1, periods=((0, 16),)), prof(2, periods=((0, 12),))), T0) == (12, "backend profile 2: 12 A")


def test_a_tx_profile_takes_precedence_over_tx_default_profiles() -> None:
    default, tx = prof(1, stack=5, periods=((0, 6),)), prof(2, "TxProfile", stack=0, periods=((0, 20),), tx_id=3)
    assert cap((default, tx), T0, tx_start=T0 - 60) == (20, "backend profile 2: 20 A")
    assert cap((default, tx), T0, tx_start=None) == (6, "backend profile 1: 6 A")  # no transaction: not in force


def test_a_tx_profile_whose_schedule_ended_leaves_the_default() -> None:
    default, tx = prof(1, periods=((0, 6),)), prof(2, "TxProfile", periods=((0, 20),), duration=60)
    assert [amps((default, tx), T0 + dt, tx_start=T0) for dt in (0, 60)] == [20, 6]


@pytest.mark.parametrize("others, expected", [
    ((), (12, "backend profile 1: 12 A")),
    ((prof(2, periods=((0, 16),)),), (12, "backend profile 1: 12 A")),
    ((prof(2, periods=((0, 8),)),), (8, "backend profile 2: 8 A")),
    ((prof(2, periods=((0, 16),)), prof(3, "TxProfile", periods=((0, 10),))), (10, "backend profile 3: 10 A")),
    ((prof(2, periods=((0, 6),)), prof(3, "TxProfile", periods=((0, 32),))), (12, "backend profile 1: 12 A")),
])
def test_the_charge_point_maximum_bounds_the_transaction_limit(others: Profiles, expected: tuple[float, str]) -> None:
    assert cap((prof(1, "ChargePointMaxProfile", periods=((0, 12),)),) + others, T0, tx_start=T0) == expected


def test_a_relative_profile_runs_from_the_transaction_start() -> None:
    p = prof(kind="Relative", start=None, periods=((0, 6), (900, 16)), duration=HOUR)
    start = T0 + 1234.5
    assert [amps(p, start + dt, tx_start=start) for dt in (-1, 0, 899, 900, 3599, 3600)] == [None, 6, 6, 16, 16, None]
    assert amps(p, start + 60, tx_start=None) is None  # no transaction: not in force


DAILY = prof(3, kind="Recurring", recurrency="Daily", start=ts("2026-12-01T22:00:00Z"),
             periods=((0, 6), (2 * HOUR, 16)), duration=8 * HOUR)  # 22:00 - 06:00, 16 A from midnight


@pytest.mark.parametrize("at, expected", [
    ("2026-12-01T21:59:59Z", None),  # before its first day
    ("2026-12-01T23:00:00Z", 6),
    ("2026-12-02T00:00:00Z", 16),  # across midnight
    ("2026-12-02T05:59:59Z", 16),
    ("2026-12-02T06:00:00Z", None),  # duration over until the next day's start
    ("2026-12-02T21:59:59Z", None),
    ("2026-12-02T22:00:00Z", 6),
    ("2026-12-03T00:30:00Z", 16),
    ("2026-12-31T23:30:00Z", 6),
    ("2027-01-01T00:30:00Z", 16),  # across the year
    ("2027-03-28T01:30:00+01:00", 16),  # 00:30 UTC: a day is 24 h of UTC, whatever the local time does
])
def test_a_daily_profile_across_midnight(at: str, expected: float | None) -> None:
    assert amps(DAILY, at) == expected


WEEKLY = prof(4, kind="Recurring", recurrency="Weekly", start=ts("2026-12-06T20:00:00Z"),  # a Sunday
              periods=((0, 8), (8 * HOUR, 12)))  # 8 A from Sunday 20:00, 12 A from Monday 04:00 on


@pytest.mark.parametrize("at, expected", [
    ("2026-12-06T19:59:59Z", None),
    ("2026-12-06T23:59:59Z", 8),
    ("2026-12-07T00:00:01Z", 8),  # across the week's boundary
    ("2026-12-07T04:00:00Z", 12),
    ("2026-12-12T23:00:00Z", 12),
    ("2026-12-13T19:59:59Z", 12),
    ("2026-12-13T20:00:00Z", 8),  # the next week
    ("2026-12-14T04:00:00Z", 12),
    ("2027-06-06T20:30:00Z", 8),  # 26 weeks on
])
def test_a_weekly_profile_across_the_week(at: str, expected: float | None) -> None:
    assert amps(WEEKLY, at) == expected


@pytest.mark.parametrize("watts, number_phases, phases, expected", [
    (11040, 3, 3, 16.0),
    (11040, None, 3, 16.0),
    (3680, None, 1, 16.0),
    (3680, 1, 1, 16.0),
    (11040, 1, 3, 16.0),  # the box draws on three phases: 11 040 W over three, or it would draw 33 kW
    (11040, 3, 1, 16.0),  # the period names three phases: 11 040 W over three (one phase draws 3.7 kW)
    (7360, 2, 1, 16.0),
])
def test_watts_become_amperes_per_phase(watts: float, number_phases: int | None, phases: int, expected: float) -> None:
    p = prof(7, unit="W", periods=((0, watts),), phases=number_phases)
    assert cap(p, T0, phases=phases) == (pytest.approx(expected), f"backend profile 7: 16 A ({watts} W)")


def test_the_reason_of_a_watt_limit_rounds_to_a_tenth() -> None:
    assert cap(prof(7, unit="W", periods=((0, 11000),)), T0) == (pytest.approx(15.942, abs=1e-3),
                                                                  "backend profile 7: 15.9 A (11000 W)")
    assert cap(prof(7, periods=((0, 10.5),)), T0)[1] == "backend profile 7: 10.5 A"


def test_the_charger_facts_must_make_sense() -> None:
    for kw in ({"phases": 0}, {"phases": 4}, {"voltage": 0.0}, {"voltage": float("nan")}):
        with pytest.raises(ValueError):
            cap(prof(), T0, **kw)


# ---------------------------------------------------------------------------------------------
# When the cap can next change


def change(profiles: Profiles | ChargingProfile, at: float | str, tx_start: float | None = None) -> float | None:
    many = (profiles,) if isinstance(profiles, ChargingProfile) else profiles
    return next_change_ts(many, ts(at) if isinstance(at, str) else at, transaction_start_ts=tx_start)


def test_next_change_period_starts_and_the_end() -> None:
    p = prof(periods=((0, 16), (1800, 8)), duration=HOUR)
    assert [change(p, T0 + dt) for dt in (-10, 0, 1000, 1800, HOUR)] == [T0, T0 + 1800, T0 + 1800, T0 + HOUR, None]
    assert change(prof(), T0) is None  # started, one period, no end: nothing will change
    assert change((), T0) is None


def test_next_change_validity_bounds() -> None:
    p = prof(start=T0 - DAY, valid_from=T0 + 100, valid_to=T0 + 200)
    assert [change(p, T0 + dt) for dt in (0, 100, 150, 200)] == [T0 + 100, T0 + 200, T0 + 200, None]


def test_next_change_of_a_relative_profile_needs_a_transaction() -> None:
    p = prof(kind="Relative", start=None, periods=((0, 6), (900, 16)))
    assert change(p, T0 + 60, tx_start=T0) == T0 + 900
    assert change(p, T0 + 60) is None  # a transaction starting is an input change, not a moment
    assert change(prof(2, "TxProfile", periods=((0, 6), (900, 16))), T0 + 60) is None


def test_next_change_of_recurring_profiles() -> None:
    assert change(DAILY, "2026-12-01T12:00:00Z") == ts("2026-12-01T22:00:00Z")
    assert change(DAILY, "2026-12-01T23:00:00Z") == ts("2026-12-02T00:00:00Z")
    assert change(DAILY, "2026-12-02T06:00:00Z") == ts("2026-12-02T22:00:00Z")
    assert change(WEEKLY, "2026-12-08T12:00:00Z") == ts("2026-12-13T20:00:00Z")


def test_next_change_is_the_first_among_all_profiles() -> None:
    assert change((prof(1, periods=((0, 6), (HOUR, 8))), prof(2, stack=1, start=T0 + 600)), T0) == T0 + 600


# ---------------------------------------------------------------------------------------------
# Properties

# mostly close together (so that profiles overlap and give limits), some far apart
offsets = st.one_of(st.integers(-2 * DAY, 2 * DAY), st.floats(-2 * DAY, 2 * DAY),
                    st.floats(-3 * WEEK, 3 * WEEK))
instants = offsets.map(lambda dt: T0 + dt)


@st.composite
def profiles(draw: st.DrawFn, purposes: tuple[str, ...] = ("ChargePointMaxProfile", "TxDefaultProfile",
                                                             "TxProfile")) -> ChargingProfile:
    """Any valid profile: every kind and purpose, both units, validity windows, durations."""
    purpose = draw(st.sampled_from(purposes))
    kind = draw(st.sampled_from(["Absolute", "Recurring", "Relative"]))
    starts = sorted(draw(st.sets(st.integers(1, 2 * DAY), max_size=4)))
    unit = draw(st.sampled_from(["A", "W"]))
    limits = st.floats(0, 40) if unit == "A" else st.floats(0, 30_000)
    valid_from, valid_to = draw(st.none() | instants), draw(st.none() | instants)
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        valid_to = None
    return ChargingProfile(
        connector_id=0 if purpose == "ChargePointMaxProfile" else draw(st.sampled_from([0, 1])),
        charging_profile_id=draw(st.integers(1, 20)), stack_level=draw(st.integers(0, 5)),
        charging_profile_purpose=purpose, charging_profile_kind=kind,
        charging_rate_unit=unit,
        charging_schedule_period=tuple(SchedulePeriod(s, draw(limits), draw(st.none() | st.integers(1, 3)))
                                       for s in [0, *starts]),
        received_ts=draw(instants),
        recurrency_kind=draw(st.sampled_from(["Daily", "Weekly"]) if kind == "Recurring" else st.none()),
        transaction_id=draw(st.none() | st.integers(0, 9)) if purpose == "TxProfile" else None,
        valid_from_ts=valid_from, valid_to_ts=valid_to,
        start_schedule_ts=draw(instants if kind != "Relative" else st.none() | instants),
        duration=draw(st.none() | st.integers(0, 3 * DAY)),
        min_charging_rate=draw(st.none() | st.floats(0, 32)))


def installed(many: list[ChargingProfile]) -> Profiles:
    result: Profiles = ()
    for p in many:
        result = install(result, p)
    return result


situations = st.fixed_dictionaries({"phases": st.integers(1, 3), "voltage_v": st.floats(100, 250),
                                    "transaction_start_ts": st.none() | instants})


@given(st.lists(profiles(), max_size=6), instants, situations)
def test_the_cap_is_never_negative(many: list[ChargingProfile], now: float, situation: dict[str, Any]) -> None:
    value, reason = cap_at(installed(many), now, **situation)
    assert (value is None) == (reason is None)
    assert value is None or value >= 0


@given(st.lists(profiles(("TxDefaultProfile", "TxProfile")), max_size=6), st.floats(0, 64), instants, situations)
def test_one_charge_point_maximum_bounds_the_cap(many: list[ChargingProfile], limit: float, now: float,
                                                  situation: dict[str, Any]) -> None:
    maximum = prof(1, "ChargePointMaxProfile", periods=((0, limit),), start=T0 - 10 * WEEK, stack=3)
    value, _ = cap_at(install(installed(many), maximum), now, **situation)
    assert value is not None and value <= limit


@given(profiles())
def test_the_json_round_trip_is_exact(p: ChargingProfile) -> None:
    assert profile_from_json(json.loads(json.dumps(profile_to_json(p)))) == p


@settings(max_examples=300)
@given(st.lists(profiles(), min_size=1, max_size=4), instants, situations,
       st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=4))
def test_the_cap_holds_until_the_next_change(many: list[ChargingProfile], now: float, situation: dict[str, Any],
                                             fractions: list[float]) -> None:
    profiles_now = installed(many)
    upcoming = next_change_ts(profiles_now, now, transaction_start_ts=situation["transaction_start_ts"])
    assert upcoming is None or upcoming > now
    span = 12 * WEEK if upcoming is None else upcoming - now
    expected = cap_at(profiles_now, now, **situation)
    samples = [now + fraction * span for fraction in fractions]
    if upcoming is not None:
        samples.append(math.nextafter(upcoming, now))  # the last instant before the change
    for later in samples:
        if upcoming is None or later < upcoming:
            assert cap_at(profiles_now, later, **situation) == expected, (later - now, upcoming)


def test_the_core_is_pure() -> None:
    """The module reads no files, sockets or clocks: it imports the standard library only, and
    neither time nor anything that does I/O."""
    path = Path(__file__).resolve().parents[2] / "controller" / "backend" / "profiles.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names
    assert not names & {"time", "os", "io", "socket", "threading", "asyncio", "logging"}, names
