"""Load allocation: how much current each charger may draw this cycle (docs/load-management.md).

This module owns the pure function :func:`allocate` (docs/architecture.md: "allocate() is pure"): it
gets one immutable snapshot of the site and the chargers, the previous cycle's memory and the time,
and returns one command per charger, each with the reason it got what it got, plus the memory for
the next cycle. No I/O, no clock reads, no logging, no randomness: the same input gives the same
output, whatever the order of the chargers.

The value types it takes and returns live in controller/allocation/types.py and the translation of
the site limits into constraints in controller/allocation/constraints.py; this module re-exports
the public types, so callers import everything from here.

How a cycle is decided
======================
1. **Site limits become linear constraints** on the chargers' currents ``x_i``: the fuse per phase
   (hard), the total power (soft, contractual) and the phase imbalance. How each bound follows
   from the meter, the offline chargers' fail-safe reservation and the limits in force is in
   controller/allocation/constraints.py.

2. **Each charger's bounds** come from its state, rules and memory (see :func:`_prepare`): a
   charger is either fixed at 0 (no car, error state, offline, cap or max below its minimum, pause
   timer running) or gets a range ``[min_current_a, upper]`` where ``upper`` = min(max, cap,
   demand, ramp) and carries the reason of the smallest term.

3. **Priority classes, highest first.** In a class, chargers are *admitted* at their minimum in a
   fixed order (running ones by earliest start, then waiting ones by id) as long as every
   constraint holds; the rest are paused with the constraint that refused them. Then the admitted
   ones are raised together from their minimum by the same amount (progressive filling = equal
   share, water-filling): a charger stops when it reaches its upper bound, or when a constraint it
   loads becomes tight; the others go on. So nobody is ever shared below its minimum, and the
   lowest priority / latest started is paused first. What a class leaves goes to the next.

4. **Rounding and a safety net.** Commands are rounded down to 0.1 A (what registers take, and
   what the status shows is then what is written). A final pass checks every constraint exactly
   and reduces (or pauses) the least preferred chargers if rounding or float error broke one, or
   if a 1-phase charger on a lighter phase was lowered below its draw (it then relieves an
   imbalance by less than its measured draw, which the imbalance bounds counted on).

Choices made here (tested in tests/unit/test_allocation.py)
===========================================================
* Offline chargers get command 0 (the loop does not write to them) with reason "offline: reserving
  ..." and the loop's reason for the current it reserves (``ChargerInput.reserved_a``, worked out
  in controller/allocation/assumed_draw.py). Their memory keeps the pause timer; on return the measured draw
  is taken as the last command, as after a start.
* The memory is about what the boxes *have*, not what was decided: after the write step the loop
  calls :func:`acknowledge` with the limits the boxes acknowledged, so a held-back increase ramps
  from the limit in force next cycle, and a box not yet written counts from its measured draw.
* The pause timer (``min_pause_s``) starts whenever a charger that was running (last command > 0)
  is set to 0 with a car present, whatever the reason (shortage, imbalance, rule cap 0, override,
  max below min): contactors and cars are spared in every case. "No car" / error state clears it,
  so a car that arrives is served at the next cycle.
* A car in state B (connected, not charging) is offered its minimum only: enough to start; once it
  draws, its demand is its maximum and it ramps up. This keeps parked full cars from holding
  current that others could use.
* Draw-limited demand, with hysteresis ``h`` (default 1.5 A) and ``settle_s`` (default 10 s): a
  charging car whose highest phase draw ``d`` is below ``last command - h`` when its command has
  not been raised for ``settle_s`` (a car needs seconds to follow a raise) gets demand ``max(min,
  d + h)``, remembered. The demand is released (back to its maximum) only when ``d >= last
  command - h/2``. Between the two thresholds nothing changes, so a steady car gets a steady
  command (no oscillation), and one that wants more again shows it by drawing near its command.
* Ramp: a command rises at most ``increase_step_a`` above the last command; a start (last command
  below 1 A) may go straight to the minimum. Decreases are immediate.
* A 1-phase charger's draw is the largest of its three readings, attributed to its configured
  phase (a 1-phase box reports its current on its own L1, whatever site phase it is wired to).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from controller.allocation.constraints import Constraint, coefficients, relief_shortfall, site_constraints
from controller.allocation.types import (
    Allocation,
    AllocationState,
    ChargerInput,
    ChargerMemory,
    Command,
    Reason,
    Settings,
    SiteInput,
    Why,
)
from hal.types import IecState

__all__ = [
    "RESOLUTION_A", "RUNNING_A", "Allocation", "AllocationState", "ChargerInput", "ChargerMemory", "Command",
    "Reason", "Settings", "SiteInput", "Why", "acknowledge", "allocate",
]

#: Commands are rounded down to this (Heidelberg and most boxes take 0.1 A).
RESOLUTION_A = 0.1
#: A last command or first-cycle draw at or above this counts as "running" (below: a start).
RUNNING_A = 1.0
_EPS = 1e-9


# ---- per-charger preparation -------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    """An online charger with a car that may get a current in [min_a, upper_a] this cycle."""

    charger: ChargerInput
    min_a: float
    upper_a: float
    upper_reason: Reason
    coeffs: tuple[float, ...]
    order: tuple[int, float, str]  # admission order: lower is served first, paused last


@dataclass(frozen=True)
class _Prepared:
    last_a: float  # the last command (or the measured draw when there is none)
    fixed: Command | None  # set when the charger gets 0 whatever the site has
    upper: tuple[float, Reason] | None  # (upper bound, its reason) otherwise
    demand_a: float | None  # learned draw-limited demand to remember
    no_car: bool


def _fmt(value: float) -> str:
    return f"{round(value, 1):g}"


def _last_command(c: ChargerInput, mem: ChargerMemory | None) -> float:
    """The command in force: remembered, or the measured draw on the first cycle / after offline."""
    if mem is None or mem.offline:
        return c.draw_a
    return mem.current_a


def _charger_limit(c: ChargerInput) -> tuple[float, Reason, Reason]:
    """The smaller of the charger's maximum and its cap: (value, reason, reason when below min)."""
    below = f" < min {_fmt(c.min_current_a)} A"
    if c.cap_a is not None and c.cap_a < c.max_current_a:
        cap_a = max(0.0, c.cap_a)
        text = c.cap_reason or f"cap {_fmt(cap_a)} A"
        paused = text if cap_a <= 0 else f"{text}: {_fmt(cap_a)} A{below}"
        return cap_a, Reason(Why.CAP, text, text), Reason(Why.BELOW_MINIMUM, paused, text)
    max_a = max(0.0, c.max_current_a)
    text = f"max {_fmt(max_a)} A"
    if c.max_reason:
        return (max_a, Reason(Why.MAXIMUM, f"{c.max_reason} ({text})", c.max_reason),
                Reason(Why.BELOW_MINIMUM, f"{c.max_reason} ({text}{below})", c.max_reason))
    return max_a, Reason(Why.MAXIMUM, text), Reason(Why.BELOW_MINIMUM, text + below)


def _prepare(c: ChargerInput, mem: ChargerMemory | None, settings: Settings, now_s: float) -> _Prepared:
    """Decide what the charger alone allows: 0 with a reason, or an upper bound with a reason."""
    last_a = _last_command(c, mem)
    if c.state is None or c.state in (IecState.A, IecState.E, IecState.F):
        reason = Reason(Why.NO_CAR, "no car") if c.state is IecState.A else \
            Reason(Why.STATE_UNKNOWN, "state unknown") if c.state is None else \
            Reason(Why.ERROR_STATE, f"error state {c.state.value}", c.state.value)
        return _Prepared(last_a, Command(0.0, reason), None, None, no_car=True)
    limit_a, limit_reason, below_min_reason = _charger_limit(c)
    if limit_a < c.min_current_a - _EPS:
        return _Prepared(last_a, Command(0.0, below_min_reason), None, None, no_car=False)
    if mem is not None and mem.paused_since_s is not None:
        left_s = mem.paused_since_s + settings.min_pause_s - now_s
        if left_s > 0:
            left_s = min(left_s, settings.min_pause_s)
            pause = Reason(Why.MIN_PAUSE, f"min pause ({math.ceil(left_s)} s left)")
            return _Prepared(last_a, Command(0.0, pause), None, None, False)
    demand_a, demand_reason = _demand(c, mem, settings, now_s)
    ramp_a = max(last_a + settings.increase_step_a, c.min_current_a)  # a start may go straight to min
    if last_a < RUNNING_A:
        ramp = (ramp_a, Reason(Why.STARTING, f"starting at min {_fmt(c.min_current_a)} A"))
    else:
        ramp = (ramp_a, Reason(Why.RAMP, f"ramp +{_fmt(settings.increase_step_a)} A/cycle"))
    terms = [(limit_a, limit_reason)]
    if demand_a is not None and demand_reason is not None:
        terms.append((demand_a, demand_reason))
    terms.append(ramp)
    upper = min(terms, key=lambda t: t[0])  # first of equals wins: max/cap before demand before ramp
    learned = demand_a if c.state is not IecState.B else None
    return _Prepared(last_a, None, upper, learned, no_car=False)


def _demand(c: ChargerInput, mem: ChargerMemory | None, settings: Settings,
            now_s: float) -> tuple[float | None, Reason | None]:
    """What the car can use: None = its maximum. See the module docstring for the hysteresis."""
    if c.state is IecState.B:
        text = f"car connected, not charging: min {_fmt(c.min_current_a)} A offered"
        return c.min_current_a, Reason(Why.CAR_CONNECTED, text)
    if mem is None or mem.offline or mem.current_a < RUNNING_A:
        return None, None
    given_a = mem.current_a
    draw_a = c.draw_a
    hysteresis_a = settings.hysteresis_a
    settled = mem.increased_s is None or now_s - mem.increased_s >= settings.settle_s
    learned = mem.demand_a
    if draw_a >= given_a - hysteresis_a / 2:
        learned = None  # it uses what it gets: it may want more
    elif draw_a < given_a - hysteresis_a and settled:
        learned = max(c.min_current_a, draw_a + hysteresis_a)
    if learned is None:
        return None, None
    return learned, Reason(Why.CAR_DRAWS_LESS, f"car draws {_fmt(draw_a)} A")


# ---- sharing -----------------------------------------------------------------------------------


def _first_refusal(cand: _Candidate, constraints: Sequence[Constraint], usage: Sequence[float]) -> int | None:
    """Index of the first constraint that cannot take this candidate at its minimum, or None."""
    for k, a in enumerate(cand.coeffs):
        con = constraints[k]
        if a > 0 and usage[k] + a * cand.min_a > con.bound + con.tolerance:
            return k
    return None


def _admit(cands: Sequence[_Candidate], constraints: Sequence[Constraint],
           usage: list[float]) -> tuple[list[_Candidate], dict[str, int]]:
    """Admit candidates at their minimum in preference order while every constraint holds.

    Passes repeat while someone is admitted: a 1-phase charger refused by an imbalance constraint
    may fit once one on another phase runs.
    """
    pending = sorted(cands, key=lambda c: c.order)
    admitted: list[_Candidate] = []
    refused: dict[str, int] = {}
    progress = True
    while progress and pending:
        progress = False
        still: list[_Candidate] = []
        for cand in pending:
            k = _first_refusal(cand, constraints, usage)
            if k is None:
                for j, a in enumerate(cand.coeffs):
                    usage[j] += a * cand.min_a
                admitted.append(cand)
                refused.pop(cand.charger.id, None)
                progress = True
            else:
                refused[cand.charger.id] = k
                still.append(cand)
        pending = still
    return admitted, refused


def _fill(admitted: Sequence[_Candidate], constraints: Sequence[Constraint],
          usage: list[float]) -> dict[str, tuple[float, Reason]]:
    """Raise all admitted candidates together from their minimum (progressive filling).

    Each round raises every active candidate by the largest amount that keeps all constraints and
    upper bounds, then freezes those at their bound and those loading a constraint that became
    tight. Every round freezes at least one candidate, so there are at most len(admitted) rounds.
    """
    current = {c.charger.id: c.min_a for c in admitted}
    reasons: dict[str, Reason] = {}
    active = []
    for c in admitted:
        if c.upper_a - c.min_a > _EPS:
            active.append(c)
        else:
            reasons[c.charger.id] = c.upper_reason
    n = len(constraints)
    while active:
        rates = [sum(c.coeffs[k] for c in active) for k in range(n)]
        delta = math.inf
        binding: int | None = None  # constraint index that set delta, None = an upper bound
        for c in active:
            delta = min(delta, c.upper_a - current[c.charger.id])
        for k in range(n):
            if rates[k] > _EPS:
                step = max(0.0, constraints[k].bound - usage[k]) / rates[k]
                if step < delta:
                    delta, binding = step, k
        delta = max(0.0, delta)
        for c in active:
            current[c.charger.id] += delta
        for k in range(n):
            usage[k] += rates[k] * delta
        tight = [k for k in range(n)
                 if rates[k] > _EPS and (k == binding or constraints[k].bound - usage[k] <= constraints[k].tolerance)]
        still = []
        for c in active:
            cid = c.charger.id
            if c.upper_a - current[cid] <= _EPS:
                reasons[cid] = c.upper_reason
            elif (hit := next((k for k in tight if c.coeffs[k] > 0), None)) is not None:
                reasons[cid] = _limit_reason(constraints[hit])
            else:
                still.append(c)
        active = still
    out: dict[str, tuple[float, Reason]] = {}
    for c in admitted:
        cid = c.charger.id
        out[cid] = (min(current[cid], c.upper_a), reasons[cid])
    return out


def _round_down(value_a: float, min_a: float) -> float:
    """Round down to RESOLUTION_A, never below the minimum the value already reached."""
    if value_a == math.inf:
        return value_a
    steps = math.floor(value_a / RESOLUTION_A + 1e-6)  # 6.1 stored as 6.0999999 is still 6.1
    rounded = round(steps * RESOLUTION_A, 6)
    return max(rounded, min_a) if value_a >= min_a - _EPS else rounded


def _enforce(cands: Mapping[str, _Candidate], result: dict[str, tuple[float, Reason]],
             constraints: Sequence[Constraint], preference: Sequence[str]) -> set[int]:
    """Safety net: reduce or pause the least preferred chargers until every constraint holds.

    Rounding a charger down can widen a phase difference by up to 0.1 A, and float sums can be a
    hair over; this pass makes "never above a limit" hold exactly. Returns the constraints it used.
    """
    used: set[int] = set()
    for _ in range(10 * (len(result) + 1) * len(constraints) + 10):
        violated = None
        for k, con in enumerate(constraints):
            lhs = sum(cands[cid].coeffs[k] * result[cid][0] for cid in result)
            if lhs > con.bound + con.tolerance:
                culprits = [cid for cid in reversed(preference) if cid in result
                            and result[cid][0] > 0 and cands[cid].coeffs[k] > 0]
                if culprits:
                    violated = (k, lhs - con.bound, culprits[0])
                    break
        if violated is None:
            return used
        k, excess, cid = violated
        used.add(k)
        cand = cands[cid]
        wanted = result[cid][0] - excess / cand.coeffs[k]
        reduced = round(math.floor(wanted / RESOLUTION_A - 1e-6) * RESOLUTION_A, 6)
        if reduced < cand.min_a - _EPS:
            result[cid] = (0.0, _pause_reason(constraints[k], cand.min_a))
        else:
            result[cid] = (min(reduced, result[cid][0] - RESOLUTION_A), _limit_reason(constraints[k]))
    raise RuntimeError("allocation safety net did not converge")  # cannot happen: every step reduces


def _pause_reason(con: Constraint, min_a: float) -> Reason:
    return Reason(Why.PAUSED, f"paused: {con.name} (min {_fmt(min_a)} A not available)", con.name)


def _limit_reason(con: Constraint) -> Reason:
    return Reason(Why.SITE_LIMIT, con.name, con.name)


# ---- memory ------------------------------------------------------------------------------------


def _remember(c: ChargerInput, prep: _Prepared | None, prev: ChargerMemory | None,
              current_a: float, now_s: float) -> ChargerMemory:
    """The memory for the next cycle, given this cycle's command."""
    if not c.online or prep is None:
        return ChargerMemory(
            current_a=prev.current_a if prev else 0.0,
            paused_since_s=prev.paused_since_s if prev else None,
            started_s=prev.started_s if prev else None,
            offline=True,
        )
    if prep.no_car:
        return ChargerMemory(current_a=0.0, paused_since_s=None)
    was_running = prep.last_a >= RUNNING_A
    if current_a > 0:
        started_s = (prev.started_s if prev is not None else None) if was_running else now_s
        raised = current_a > prep.last_a + _EPS
        return ChargerMemory(
            current_a=current_a,
            paused_since_s=None,
            started_s=started_s,
            increased_s=now_s if raised else (prev.increased_s if prev else None),
            demand_a=prep.demand_a,
        )
    paused_since_s = now_s if was_running else (prev.paused_since_s if prev else None)
    return ChargerMemory(current_a=0.0, paused_since_s=paused_since_s)


# ---- the function ------------------------------------------------------------------------------


def _order_key(c: ChargerInput, prep: _Prepared, prev: ChargerMemory | None) -> tuple[int, float, str]:
    """Running chargers first (earliest start first), then waiting ones, each by id."""
    if prep.last_a >= RUNNING_A:
        started = prev.started_s if prev is not None and prev.started_s is not None else -math.inf
        return (0, started, c.id)
    return (1, 0.0, c.id)


def allocate(site: SiteInput, chargers: Sequence[ChargerInput], settings: Settings,
             state: AllocationState, now_s: float) -> Allocation:
    """Compute every charger's current for this cycle. Pure and deterministic; see module doc."""
    ordered = sorted(chargers, key=lambda c: c.id)
    ids = [c.id for c in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate charger ids: {ids}")
    layout = site_constraints(site, ordered)
    constraints = layout.constraints

    commands: dict[str, Command] = {}
    preps: dict[str, _Prepared] = {}
    cands: dict[str, _Candidate] = {}
    for c in ordered:
        prev = state.chargers.get(c.id)
        if not c.online:
            text = f"offline: reserving {c.reserved_reason or _fmt(c.reserved_a) + ' A'}"
            commands[c.id] = Command(0.0, Reason(Why.OFFLINE, text))
            continue
        prep = _prepare(c, prev, settings, now_s)
        preps[c.id] = prep
        if prep.fixed is not None:
            commands[c.id] = prep.fixed
            continue
        assert prep.upper is not None
        cands[c.id] = _Candidate(c, c.min_current_a, prep.upper[0], prep.upper[1],
                                 coefficients(c, site, layout), _order_key(c, prep, prev))

    usage = [0.0] * len(constraints)
    result: dict[str, tuple[float, Reason]] = {}
    limiting: set[int] = set()
    preference: list[str] = []  # most preferred first, across priority classes
    for priority in sorted({cand.charger.priority for cand in cands.values()}, reverse=True):
        group = [cand for cand in cands.values() if cand.charger.priority == priority]
        admitted, refused = _admit(group, constraints, usage)
        for cid, k in refused.items():
            commands[cid] = Command(0.0, _pause_reason(constraints[k], cands[cid].min_a))
            limiting.add(k)
        filled = _fill(admitted, constraints, usage)
        for cand in admitted:
            cid = cand.charger.id
            current_a, reason = filled[cid]
            result[cid] = (_round_down(current_a, cand.min_a), reason)
        preference.extend(c.charger.id for c in sorted(group, key=lambda c: c.order))
    for _ in range(len(ordered) + 2):  # lowering a charger can only lower the relief it gives
        adjusted = relief_shortfall(layout, ordered, {cid: x for cid, (x, _) in result.items()})
        before = dict(result)
        limiting |= _enforce(cands, result, adjusted, preference)
        if result == before:
            break
    names = {con.name: k for k, con in enumerate(constraints)}
    for cid, (current_a, reason) in result.items():
        commands[cid] = Command(current_a, reason)
        if reason.kind is Why.SITE_LIMIT:
            limiting.add(names[reason.subject])

    memory = {c.id: _remember(c, preps.get(c.id), state.chargers.get(c.id), commands[c.id].current_a, now_s)
              for c in ordered}
    limits = [constraints[k].name for k in sorted(limiting)]
    if site.failsafe_reason is not None and f"fail-safe: {site.failsafe_reason}" not in limits:
        limits.insert(0, f"fail-safe: {site.failsafe_reason}")
    return Allocation(
        commands={cid: commands[cid] for cid in ids},
        state=AllocationState(chargers=memory),
        headroom_a=layout.headroom_a,
        power_headroom_w=layout.power_headroom_w,
        limiting=tuple(limits),
    )


def acknowledge(state: AllocationState, in_force: Mapping[str, float | None]) -> AllocationState:
    """The memory after the write step: each charger's last command is the limit its box has.

    ``in_force`` maps a charger to the limit its box acknowledged (None: not written since it
    appeared, so it draws what it measures). Chargers not in it, or remembered as offline, are
    kept as they are. Pure, like :func:`allocate`.
    """
    chargers = dict(state.chargers)
    for cid, mem in state.chargers.items():
        if cid not in in_force or mem.offline:
            continue
        applied = in_force[cid]
        if applied is None:
            chargers[cid] = replace(mem, offline=True)  # next cycle starts from the measured draw
        elif applied != mem.current_a:
            chargers[cid] = replace(mem, current_a=applied)
    return AllocationState(chargers=chargers)
