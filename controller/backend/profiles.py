"""The supplier backend's OCPP 1.6 charging profiles as one current cap on one charger.

Towards the energy supplier's backend every wallbox gridcharge manages is one OCPP 1.6J charge
point with one connector (id 1). The backend sends SetChargingProfile and ClearChargingProfile;
this module turns the profiles installed on a charger into the current (A per phase) they allow
now. Pure: no I/O, no clock (time is a parameter, unix seconds), no threads.

Reading a profile (:func:`parse_profile`). The input is ``csChargingProfiles`` as the ``ocpp``
library hands it to a handler: snake_case keys, numbers as ``int``, ``float`` or ``Decimal``
(the library parses SetChargingProfile's decimals as ``Decimal``), date-times as ISO 8601 text
with ``Z`` or an offset (one without a zone is read as UTC, as OCPP's times are). A profile is
refused with a :class:`ProfileError` (one line saying what is wrong; the backend then gets
``Rejected``) when:

* a field is unknown, a required one is missing, or a value has the wrong type;
* ``connectorId`` is not 0 (the whole charge point) or 1 (its connector); a
  ChargePointMaxProfile is set on connector 1 (OCPP allows it on connector 0 only);
* the purpose is not ChargePointMaxProfile, TxDefaultProfile or TxProfile; the kind not
  Absolute, Recurring or Relative; ``recurrencyKind`` not Daily or Weekly; the unit not A or W;
* ``stackLevel`` is outside 0 – :data:`MAX_STACK_LEVEL`;
* the schedule has no periods or more than :data:`MAX_PERIODS`, its first period does not start
  at 0, the period starts are not strictly ascending, a limit is negative (or not finite),
  ``numberPhases`` is not 1, 2 or 3, ``duration`` or ``minChargingRate`` is negative;
* a Recurring profile has no ``recurrencyKind``; an Absolute or Recurring one has no
  ``startSchedule`` (a Relative one's ``startSchedule``, and a non-Recurring one's
  ``recurrencyKind``, are kept but play no part);
* ``validTo`` is not after ``validFrom``;
* a TxProfile arrives while no transaction runs, or names another transaction than the running
  one; ``transactionId`` is given on a profile that is not a TxProfile. A TxProfile without
  ``transactionId`` is bound to the running transaction.

Installing (:func:`install`): a profile with the same ``chargingProfileId`` is replaced, and so
is one with the same stack level and purpose (on either connector id: both are this charger, and
two profiles of one purpose on one stack level would leave no winner). A TxProfile also replaces
the TxProfiles of another transaction. At most :data:`MAX_PROFILES` profiles are installed; one
more is refused. :func:`clear` is ClearChargingProfile: by ``id`` (the other criteria are then
ignored), else every profile that matches all of the criteria given (connector id as the profile
was set, purpose, stack level), all of them when none is given; it says whether it removed one
(``Accepted``) or not (``Unknown``). :func:`end_transaction` drops the TxProfiles when the
transaction ends.

When a profile gives a limit (:func:`cap_at`):

* it is valid from ``validFrom`` (inclusive; without one, from any time: a wrong clock at boot
  must not hold a profile back) to ``validTo`` (exclusive; without one, until it is replaced);
* its schedule starts at ``startSchedule`` (Absolute), at the start of the running transaction
  (Relative: while none runs it gives no limit), or at ``startSchedule`` and again every 24 h
  (Daily) or 7 × 24 h (Weekly) after it (Recurring). Before its (first) start it gives no
  limit. A day is 86 400 s of UTC: a daily profile does not move with daylight saving time;
* ``duration`` (seconds from the start, or from the start of each recurrence) ends the schedule:
  from then on it gives no limit (until the next recurrence);
* the period in force is the last one whose ``startPeriod`` has been reached;
* a TxProfile gives a limit only while a transaction runs (it belongs to that transaction).

Which limit is the cap: for each purpose, the profile with the highest stack level among those
that give a limit now wins (a higher profile whose schedule has ended, or not yet begun, lets the
next lower one through; of two on one stack level the lower limit wins). A TxProfile that gives
a limit takes precedence over every TxDefaultProfile. The cap is the lower of the
ChargePointMaxProfile's limit and the TxProfile's or TxDefaultProfile's; with none of them, no cap
(``(None, None)``). ``minChargingRate`` is kept but never raises or lowers the cap.

Units: a limit in A is per phase. A limit in W becomes amperes per phase as
``W / (voltage × phases)`` where phases is the larger of the period's ``numberPhases`` (or the
charger's phase count when it gives none) and the charger's phase count: a box charging on more
phases than the period names would otherwise draw more power than the limit allows. A cap is
never below 0. The reason reads ``backend profile 7: 10 A`` (the profile's id and the cap), for
a W limit ``backend profile 7: 15.9 A (11000 W)``.

:func:`next_change_ts` says when the cap can next change (a validity bound, a period start, the
end of a schedule, the start of a schedule or of its next recurrence), so the gateway evaluates
again at that moment instead of polling; None when nothing will change unless the inputs do
(a new profile, a transaction starting or ending, the charger's phases). The cap is the same at
every instant from ``now_ts`` up to (not including) that moment.

:func:`profile_to_json` / :func:`profile_from_json` store a profile as plain JSON types (times as
unix seconds) and read it back exactly, with the same checks.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast

Purpose = Literal["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]
Kind = Literal["Absolute", "Recurring", "Relative"]
Recurrency = Literal["Daily", "Weekly"]
RateUnit = Literal["A", "W"]

PURPOSES: Final[tuple[Purpose, ...]] = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
KINDS: Final[tuple[Kind, ...]] = ("Absolute", "Recurring", "Relative")
#: The length of one recurrence in seconds.
RECURRENCE_S: Final[Mapping[Recurrency, int]] = {"Daily": 86_400, "Weekly": 7 * 86_400}
RATE_UNITS: Final[tuple[RateUnit, ...]] = ("A", "W")

#: The highest stack level accepted (OCPP configuration key ChargeProfileMaxStackLevel).
MAX_STACK_LEVEL: Final = 99
#: The most periods one schedule may have (ChargingScheduleMaxPeriods): two days of quarter hours.
MAX_PERIODS: Final = 192
#: The most profiles installed on one charger at a time (MaxChargingProfilesInstalled).
MAX_PROFILES: Final = 32

_CONNECTORS = (0, 1)
_T = TypeVar("_T")


class ProfileError(Exception):
    """A charging profile that cannot be installed; ``str()`` is one line saying why."""


@dataclass(frozen=True)
class SchedulePeriod:
    """One step of a schedule: from ``start_period`` seconds after the start on, ``limit``."""

    start_period: int
    limit: float  # A per phase or W, as the profile's charging_rate_unit says
    number_phases: int | None = None


@dataclass(frozen=True)
class ChargingProfile:
    """One installed profile, checked on construction: no invalid profile can exist.

    The fields are OCPP's (snake_case), the schedule's flattened in; times are unix seconds.
    """

    connector_id: int
    charging_profile_id: int
    stack_level: int
    charging_profile_purpose: Purpose
    charging_profile_kind: Kind
    charging_rate_unit: RateUnit
    charging_schedule_period: tuple[SchedulePeriod, ...]
    received_ts: float
    recurrency_kind: Recurrency | None = None
    transaction_id: int | None = None
    valid_from_ts: float | None = None
    valid_to_ts: float | None = None
    start_schedule_ts: float | None = None
    duration: int | None = None
    min_charging_rate: float | None = None

    def __post_init__(self) -> None:
        for check in (_check_identity, _check_kind, _check_times, _check_periods):
            check(self)


# ---------------------------------------------------------------------------------------------
# Checks: each raises ProfileError with one line naming the OCPP field.


def _check_identity(p: ChargingProfile) -> None:
    if p.connector_id not in _CONNECTORS:
        raise ProfileError(f"connectorId {p.connector_id} does not exist: this charge point has "
                           "connector 1 (0 is the whole charge point)")
    _require_choice("chargingProfilePurpose", p.charging_profile_purpose, PURPOSES)
    if p.charging_profile_purpose == "ChargePointMaxProfile" and p.connector_id != 0:
        raise ProfileError("a ChargePointMaxProfile can only be set on connectorId 0")
    if not 0 <= p.stack_level <= MAX_STACK_LEVEL:
        raise ProfileError(f"stackLevel {p.stack_level} is outside 0 - {MAX_STACK_LEVEL}")
    if p.transaction_id is not None and p.charging_profile_purpose != "TxProfile":
        raise ProfileError(f"transactionId is only for a TxProfile, not a {p.charging_profile_purpose}")


def _check_kind(p: ChargingProfile) -> None:
    _require_choice("chargingProfileKind", p.charging_profile_kind, KINDS)
    if p.recurrency_kind is not None:
        _require_choice("recurrencyKind", p.recurrency_kind, tuple(RECURRENCE_S))
    if p.charging_profile_kind == "Recurring" and p.recurrency_kind is None:
        raise ProfileError("a Recurring profile needs recurrencyKind (Daily or Weekly)")
    if p.charging_profile_kind != "Relative" and p.start_schedule_ts is None:
        raise ProfileError(f"startSchedule is missing: {p.charging_profile_kind} profiles need one")


def _check_times(p: ChargingProfile) -> None:
    for name, value in (("received_ts", p.received_ts), ("validFrom", p.valid_from_ts),
                        ("validTo", p.valid_to_ts), ("startSchedule", p.start_schedule_ts)):
        if value is not None and not math.isfinite(value):
            raise ProfileError(f"{name} is not a finite time: {value!r}")
    if p.valid_from_ts is not None and p.valid_to_ts is not None and p.valid_to_ts <= p.valid_from_ts:
        raise ProfileError(f"validTo {_iso(p.valid_to_ts)} is not after validFrom {_iso(p.valid_from_ts)}")
    if p.duration is not None and p.duration < 0:
        raise ProfileError(f"duration {p.duration} is negative")


def _check_periods(p: ChargingProfile) -> None:
    _require_choice("chargingRateUnit", p.charging_rate_unit, RATE_UNITS)
    periods = p.charging_schedule_period
    if not periods:
        raise ProfileError("chargingSchedulePeriod is empty: a schedule needs at least one period")
    if len(periods) > MAX_PERIODS:
        raise ProfileError(f"chargingSchedulePeriod has {len(periods)} periods, at most {MAX_PERIODS}")
    if periods[0].start_period != 0:
        raise ProfileError(f"the first period starts at startPeriod {periods[0].start_period}, not 0")
    for before, after in zip(periods, periods[1:]):
        if after.start_period <= before.start_period:
            raise ProfileError(f"periods are not in ascending order: startPeriod {after.start_period} "
                               f"follows {before.start_period}")
    for period in periods:
        _check_period(period)
    if p.min_charging_rate is not None and not (math.isfinite(p.min_charging_rate) and p.min_charging_rate >= 0):
        raise ProfileError(f"minChargingRate {p.min_charging_rate} is negative or not finite")


def _check_period(period: SchedulePeriod) -> None:
    if not math.isfinite(period.limit) or period.limit < 0:
        raise ProfileError(f"limit {period.limit} of the period at startPeriod {period.start_period} "
                           "is negative or not finite")
    if period.number_phases is not None and period.number_phases not in (1, 2, 3):
        raise ProfileError(f"numberPhases {period.number_phases} of the period at startPeriod "
                           f"{period.start_period} is not 1, 2 or 3")


def _require_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ProfileError(f"{name} {value!r} is unknown (expected {', '.join(allowed)})")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Reading JSON-like input strictly: known keys only, each value of its type.


class _Fields:
    """One JSON object's fields, read strictly; ``label`` names a key in the error messages."""

    def __init__(self, data: Any, where: str, known: tuple[str, ...], label: Callable[[str], str]) -> None:
        if not isinstance(data, Mapping):
            raise ProfileError(f"{where} is {type(data).__name__}, not an object")
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ProfileError(f"{where} has unknown field {label(unknown[0])}")
        self._data, self._where, self._label = data, where, label

    def required(self, key: str, read: Callable[[Any, str], _T]) -> _T:
        if key not in self._data:
            raise ProfileError(f"{self._where} lacks {self._label(key)}")
        return read(self._data[key], self._label(key))

    def optional(self, key: str, read: Callable[[Any, str], _T]) -> _T | None:
        value = self._data.get(key)
        return None if value is None else read(value, self._label(key))


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{name} is {value!r}, not an integer")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ProfileError(f"{name} is {value!r}, not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ProfileError(f"{name} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise ProfileError(f"{name} is {value!r}, not a finite number")
    return number


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ProfileError(f"{name} is {value!r}, not text")
    return value


def _date_time(value: Any, name: str) -> float:
    """An ISO 8601 date-time as unix seconds; one without a zone is UTC."""
    try:
        when = datetime.fromisoformat(_text(value, name))
    except (ProfileError, ValueError):
        raise ProfileError(f"{name} is {value!r}, not an ISO 8601 date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _objects(value: Any, name: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ProfileError(f"{name} is {value!r}, not a list")
    return list(value)


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


def _same(key: str) -> str:
    return key


# ---------------------------------------------------------------------------------------------
# From the backend's SetChargingProfile, and to and from the state directory.

_PROFILE_KEYS = ("charging_profile_id", "transaction_id", "stack_level", "charging_profile_purpose",
                 "charging_profile_kind", "recurrency_kind", "valid_from", "valid_to", "charging_schedule")
_SCHEDULE_KEYS = ("duration", "start_schedule", "charging_rate_unit", "charging_schedule_period",
                  "min_charging_rate")
_PERIOD_KEYS = ("start_period", "limit", "number_phases")


def parse_profile(connector_id: int, data: Mapping[str, Any], received_ts: float, *,
                  transaction_active: bool, transaction_id: int | None) -> ChargingProfile:
    """The checked profile of one SetChargingProfile (``connectorId``, ``csChargingProfiles``).

    ``transaction_active`` / ``transaction_id``: whether a transaction runs on the charger now
    and its id (None while the backend has not given one yet); a TxProfile is bound to it.
    """
    fields = _Fields(data, "csChargingProfiles", _PROFILE_KEYS, _camel)
    schedule = fields.required("charging_schedule", lambda value, name: _Fields(
        value, name, _SCHEDULE_KEYS, _camel))
    purpose = fields.required("charging_profile_purpose", _text)
    bound = _bound_transaction(purpose, fields.optional("transaction_id", _integer),
                               transaction_active, transaction_id)
    return ChargingProfile(
        connector_id=_integer(connector_id, "connectorId"),
        charging_profile_id=fields.required("charging_profile_id", _integer),
        stack_level=fields.required("stack_level", _integer),
        charging_profile_purpose=cast(Purpose, purpose),
        charging_profile_kind=cast(Kind, fields.required("charging_profile_kind", _text)),
        recurrency_kind=cast(Recurrency | None, fields.optional("recurrency_kind", _text)),
        transaction_id=bound,
        valid_from_ts=fields.optional("valid_from", _date_time),
        valid_to_ts=fields.optional("valid_to", _date_time),
        start_schedule_ts=schedule.optional("start_schedule", _date_time),
        duration=schedule.optional("duration", _integer),
        charging_rate_unit=cast(RateUnit, schedule.required("charging_rate_unit", _text)),
        charging_schedule_period=_periods(schedule.required("charging_schedule_period", _objects), _camel),
        min_charging_rate=schedule.optional("min_charging_rate", _number),
        received_ts=_number(received_ts, "received_ts"),
    )


def _bound_transaction(purpose: str, given: int | None, active: bool, running: int | None) -> int | None:
    """The transaction a TxProfile belongs to; other purposes keep what they were given (and
    are refused by the checks when that is an id)."""
    if purpose != "TxProfile":
        return given
    if not active:
        raise ProfileError("a TxProfile needs an active transaction, and none runs")
    if given is not None and running is not None and given != running:
        raise ProfileError(f"the TxProfile is for transaction {given}, but the running transaction is {running}")
    return given if given is not None else running


def _periods(items: list[Any], label: Callable[[str], str]) -> tuple[SchedulePeriod, ...]:
    periods = []
    for item in items:
        fields = _Fields(item, label("charging_schedule_period"), _PERIOD_KEYS, label)
        periods.append(SchedulePeriod(start_period=fields.required("start_period", _integer),
                                      limit=fields.required("limit", _number),
                                      number_phases=fields.optional("number_phases", _integer)))
    return tuple(periods)


_JSON_KEYS = ("connector_id", "charging_profile_id", "stack_level", "charging_profile_purpose",
              "charging_profile_kind", "charging_rate_unit", "charging_schedule_period", "received_ts",
              "recurrency_kind", "transaction_id", "valid_from_ts", "valid_to_ts", "start_schedule_ts",
              "duration", "min_charging_rate")


def profile_to_json(p: ChargingProfile) -> dict[str, Any]:
    """The profile as plain JSON types (dict, list, str, int, float, None) for the state file."""
    return {
        "connector_id": p.connector_id,
        "charging_profile_id": p.charging_profile_id,
        "stack_level": p.stack_level,
        "charging_profile_purpose": p.charging_profile_purpose,
        "charging_profile_kind": p.charging_profile_kind,
        "charging_rate_unit": p.charging_rate_unit,
        "charging_schedule_period": [
            {"start_period": x.start_period, "limit": x.limit, "number_phases": x.number_phases}
            for x in p.charging_schedule_period],
        "received_ts": p.received_ts,
        "recurrency_kind": p.recurrency_kind,
        "transaction_id": p.transaction_id,
        "valid_from_ts": p.valid_from_ts,
        "valid_to_ts": p.valid_to_ts,
        "start_schedule_ts": p.start_schedule_ts,
        "duration": p.duration,
        "min_charging_rate": p.min_charging_rate,
    }


def profile_from_json(d: Mapping[str, Any]) -> ChargingProfile:
    """The profile :func:`profile_to_json` stored, exactly; ProfileError for a damaged record."""
    fields = _Fields(d, "the stored profile", _JSON_KEYS, _same)
    return ChargingProfile(
        connector_id=fields.required("connector_id", _integer),
        charging_profile_id=fields.required("charging_profile_id", _integer),
        stack_level=fields.required("stack_level", _integer),
        charging_profile_purpose=cast(Purpose, fields.required("charging_profile_purpose", _text)),
        charging_profile_kind=cast(Kind, fields.required("charging_profile_kind", _text)),
        charging_rate_unit=cast(RateUnit, fields.required("charging_rate_unit", _text)),
        charging_schedule_period=_periods(fields.required("charging_schedule_period", _objects), _same),
        received_ts=fields.required("received_ts", _number),
        recurrency_kind=cast(Recurrency | None, fields.optional("recurrency_kind", _text)),
        transaction_id=fields.optional("transaction_id", _integer),
        valid_from_ts=fields.optional("valid_from_ts", _number),
        valid_to_ts=fields.optional("valid_to_ts", _number),
        start_schedule_ts=fields.optional("start_schedule_ts", _number),
        duration=fields.optional("duration", _integer),
        min_charging_rate=fields.optional("min_charging_rate", _number),
    )


# ---------------------------------------------------------------------------------------------
# The installed set: SetChargingProfile, ClearChargingProfile, the end of a transaction.

Profiles = tuple[ChargingProfile, ...]


def install(profiles: Profiles, new: ChargingProfile) -> Profiles:
    """The profiles after installing ``new`` (it goes last; those it replaces go)."""
    kept = tuple(old for old in profiles if not _replaced_by(old, new))
    if len(kept) >= MAX_PROFILES:
        raise ProfileError(f"{len(kept)} profiles are installed, at most {MAX_PROFILES}: clear one first")
    return kept + (new,)


def _replaced_by(old: ChargingProfile, new: ChargingProfile) -> bool:
    if old.charging_profile_id == new.charging_profile_id:
        return True
    if (old.stack_level, old.charging_profile_purpose) == (new.stack_level, new.charging_profile_purpose):
        return True
    return (new.charging_profile_purpose == old.charging_profile_purpose == "TxProfile"
            and None not in (old.transaction_id, new.transaction_id)
            and old.transaction_id != new.transaction_id)


def clear(profiles: Profiles, *, profile_id: int | None = None, connector_id: int | None = None,
          purpose: str | None = None, stack_level: int | None = None) -> tuple[Profiles, bool]:
    """ClearChargingProfile: the profiles that remain, and whether any was removed."""
    if purpose is not None:
        _require_choice("chargingProfilePurpose", purpose, PURPOSES)

    def matches(p: ChargingProfile) -> bool:
        if profile_id is not None:
            return p.charging_profile_id == profile_id
        return ((connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.charging_profile_purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level))

    remaining = tuple(p for p in profiles if not matches(p))
    return remaining, len(remaining) < len(profiles)


def end_transaction(profiles: Profiles) -> Profiles:
    """The profiles that outlive the transaction that just ended: all but its TxProfiles."""
    return tuple(p for p in profiles if p.charging_profile_purpose != "TxProfile")


# ---------------------------------------------------------------------------------------------
# The cap in force, and when it can next change. Every instant is computed as ``start + offset``
# the same way in both, so that the cap is exactly constant up to the instant next_change_ts names.


class _Limit(NamedTuple):
    amps: float
    profile: ChargingProfile
    period: SchedulePeriod


def cap_at(profiles: Profiles, now_ts: float, *, phases: int, voltage_v: float,
           transaction_start_ts: float | None) -> tuple[float | None, str | None]:
    """The cap in A per phase the profiles put on the charger at ``now_ts``, and its reason.

    ``phases`` / ``voltage_v``: the charger's phase count and phase voltage (for W limits);
    ``transaction_start_ts``: when the running transaction started, None while none runs.
    """
    if phases not in (1, 2, 3) or not (math.isfinite(voltage_v) and voltage_v > 0):
        raise ValueError(f"phases {phases} must be 1, 2 or 3 and voltage_v {voltage_v} positive")
    limits = [limit for p in profiles
              if (limit := _limit_at(p, now_ts, phases, voltage_v, transaction_start_ts)) is not None]
    maximum = _winner(limits, "ChargePointMaxProfile")
    transaction = _winner(limits, "TxProfile")
    if transaction is None:  # a TxProfile in force takes precedence over every TxDefaultProfile
        transaction = _winner(limits, "TxDefaultProfile")
    chosen = min((x for x in (maximum, transaction) if x is not None), key=lambda x: x.amps, default=None)
    if chosen is None:
        return None, None
    return chosen.amps, _reason(chosen)


def _winner(limits: list[_Limit], purpose: Purpose) -> _Limit | None:
    """The highest stack level of a purpose; on one level the lowest limit (then the lowest id)."""
    return max((x for x in limits if x.profile.charging_profile_purpose == purpose),
               key=lambda x: (x.profile.stack_level, -x.amps, -x.profile.charging_profile_id), default=None)


def _limit_at(p: ChargingProfile, now: float, phases: int, voltage_v: float,
              tx_start: float | None) -> _Limit | None:
    period = _period_at(p, now, tx_start)
    if period is None:
        return None
    return _Limit(_amps(p.charging_rate_unit, period, phases, voltage_v), p, period)


def _period_at(p: ChargingProfile, now: float, tx_start: float | None) -> SchedulePeriod | None:
    """The period in force at ``now``; None when the profile gives no limit then."""
    if not _valid(p, now):
        return None
    start = _schedule_start(p, now, tx_start)
    if start is None or now < start:
        return None
    if p.duration is not None and now >= start + p.duration:
        return None
    periods = p.charging_schedule_period
    return periods[bisect_right(periods, now, key=lambda x: start + x.start_period) - 1]


def _valid(p: ChargingProfile, now: float) -> bool:
    return ((p.valid_from_ts is None or p.valid_from_ts <= now)
            and (p.valid_to_ts is None or now < p.valid_to_ts))


def _schedule_start(p: ChargingProfile, now: float, tx_start: float | None) -> float | None:
    """When the schedule (for a Recurring one: its recurrence) in force at ``now`` started or
    starts; None while it cannot run (a Relative profile or a TxProfile without a transaction)."""
    if p.charging_profile_purpose == "TxProfile" and tx_start is None:
        return None
    if p.charging_profile_kind == "Relative":
        return tx_start
    assert p.start_schedule_ts is not None  # checked on construction
    if p.charging_profile_kind == "Absolute":
        return p.start_schedule_ts
    return _recurrence_start(p, now, 0)


def _recurrence_start(p: ChargingProfile, now: float, later: int) -> float:
    """The start of the recurrence in force at ``now`` (its first one before it has begun), or
    of the ``later``-th one after it."""
    assert p.start_schedule_ts is not None and p.recurrency_kind is not None  # a Recurring profile
    first, length = p.start_schedule_ts, RECURRENCE_S[p.recurrency_kind]
    index = max(0, math.floor((now - first) / length))
    while index > 0 and first + index * length > now:
        index -= 1
    while first + (index + 1) * length <= now:
        index += 1
    return first + (index + later) * length


def _amps(unit: RateUnit, period: SchedulePeriod, phases: int, voltage_v: float) -> float:
    if unit == "A":
        amps = period.limit
    else:
        amps = period.limit / (voltage_v * max(period.number_phases or phases, phases))
    return amps if amps > 0 else 0.0


def _reason(limit: _Limit) -> str:
    text = f"backend profile {limit.profile.charging_profile_id}: {_figure(limit.amps)} A"
    if limit.profile.charging_rate_unit == "W":
        text += f" ({_figure(limit.period.limit)} W)"
    return text


def _figure(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def next_change_ts(profiles: Profiles, now_ts: float, *, transaction_start_ts: float | None) -> float | None:
    """The first instant after ``now_ts`` at which :func:`cap_at` can give another answer (the
    same ``transaction_start_ts`` and charger assumed); None when it never will."""
    return min((t for p in profiles for t in _changes(p, now_ts, transaction_start_ts) if t > now_ts),
               default=None)


def _changes(p: ChargingProfile, now: float, tx_start: float | None) -> Iterator[float]:
    """The instants around ``now`` at which ``p`` can start or stop giving a limit or change it."""
    yield from (t for t in (p.valid_from_ts, p.valid_to_ts) if t is not None)
    start = _schedule_start(p, now, tx_start)
    if start is None:
        return
    yield from (start + x.start_period for x in p.charging_schedule_period)
    if p.duration is not None:
        yield start + p.duration
    if p.charging_profile_kind == "Recurring":
        yield _recurrence_start(p, now, 1)
