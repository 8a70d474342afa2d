"""Load allocation: how much current each charger may draw this cycle (SPEC §5, §6).

This module owns the pure function :func:`allocate` (ARCHITECTURE.md: "allocate() is pure"): it
gets one immutable snapshot of the site and the chargers, the previous cycle's memory and the time,
and returns one command per charger, each with the reason it got what it got, plus the memory for
the next cycle. No I/O, no clock reads, no logging, no randomness: the same input gives the same
output, whatever the order of the chargers.

How a cycle is decided
======================
1. **Site limits become linear constraints** on the chargers' currents ``x_i``:

   * ``fuse Lp`` (hard): ``sum of x_i on phase p <= main_fuse - max(0, other_p) - reserved_p``.
     ``other_p`` = grid meter current - the chargers' own measured draw on that phase. It is
     clamped at 0: generation (a negative reading) is never counted as headroom, because it can
     vanish within one cycle and the fuse must hold even then. Without a grid meter, or when the
     meter failed (``grid_current_a`` None), other loads are taken as 0, as SPEC §5 says; in the
     fail-safe case the total power limit below is what protects the site. ``reserved_p`` is the
     fail-safe current of every offline charger using that phase (it may be charging at that
     current on its own; we cannot know, so we assume it is, and also count what the meter saw).
   * ``power`` (soft, contractual): ``sum of phases_i * voltage * x_i <= min(grid_limit_w -
     other_power_w, chargers_limit_w, failsafe_limit_w if a fail-safe reason is set) - reserved``.
     ``other_power_w`` = grid power - the chargers' own power (drawn currents x voltage); it is
     signed (export counts), because these limits are about the net power at the connection.
   * ``phase imbalance Lp-Lq`` for every ordered phase pair, when ``unbalanced_limit_a`` is set:
     ``(base_p + load_p) - (base_q + load_q) <= max(limit, base_p - base_q)``, where ``base`` is the
     grid current minus the chargers' own draw (0 without meter) and ``load`` the commands. Only
     1-phase chargers change the difference; if other loads already exceed the limit we may not
     make that pair worse, but may improve it.

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
   and reduces (or pauses) the least preferred chargers if rounding or float error broke one.

Choices the brief left open (documented here, tested in tests/unit/test_allocation.py)
=======================================================================================
* Offline chargers get command 0 (the loop does not write to them) with reason "offline: reserving
  X A fail-safe". Their memory keeps the pause timer; on return the measured draw is taken as the
  last command, as after a start.
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
from dataclasses import dataclass, field

from hal.types import IecState, Phases3

#: Commands are rounded down to this (Heidelberg and most boxes take 0.1 A).
RESOLUTION_A = 0.1
#: A last command or first-cycle draw at or above this counts as "running" (below: a start).
RUNNING_A = 1.0
PHASE_NAMES = ("L1", "L2", "L3")
_EPS = 1e-9


# ---- inputs ------------------------------------------------------------------------------------


def _check_finite(owner: str, **values: float | None) -> None:
    """Measured values must be finite: the hardware layer rejects NaN/Inf readings as faults."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{owner}.{name} must be finite, got {value!r}")


def _check_limit(owner: str, **values: float | None) -> None:
    """Limits may be +inf (no limit) but never NaN or -inf, which would disable every check."""
    for name, value in values.items():
        if value is not None and (math.isnan(value) or value == -math.inf):
            raise ValueError(f"{owner}.{name} must be a number or +inf, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ChargerInput:
    """One charger as allocate() sees it this cycle (all values already evaluated and checked)."""

    id: str
    phases: int  # 1 or 3
    phase: int = 0  # 0, 1, 2 = L1, L2, L3: the site phase of a 1-phase charger (ignored for 3)
    min_current_a: float = 6.0  # IEC 61851
    max_current_a: float  # in force this cycle (the loop substitutes the §3 fail-safe value)
    max_reason: str | None = None  # set when the loop substituted, e.g. "max formula error: ..."
    priority: int = 0  # higher first
    online: bool  # read OK and fresh
    state: IecState | None  # None when offline
    drawn_a: Phases3 = (0.0, 0.0, 0.0)  # measured per-phase current (zeros when offline)
    failsafe_current_a: float = 0.0  # what the box falls back to on its own; reserved when offline
    cap_a: float | None = None  # from rules and overrides (0 pauses); None = no cap
    cap_reason: str | None = None

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError(f"charger {self.id}: phases must be 1 or 3, got {self.phases!r}")
        if self.phase not in (0, 1, 2):
            raise ValueError(f"charger {self.id}: phase must be 0, 1 or 2, got {self.phase!r}")
        _check_finite(f"charger {self.id}", min_current_a=self.min_current_a,
                      failsafe_current_a=self.failsafe_current_a,
                      drawn_l1=self.drawn_a[0], drawn_l2=self.drawn_a[1], drawn_l3=self.drawn_a[2])
        _check_limit(f"charger {self.id}", max_current_a=self.max_current_a, cap_a=self.cap_a)

    @property
    def phase_indices(self) -> tuple[int, ...]:
        """The site phases this charger loads."""
        return (0, 1, 2) if self.phases == 3 else (self.phase,)

    @property
    def draw_a(self) -> float:
        """The highest phase current the car draws (what it uses of its command)."""
        return max(0.0, *self.drawn_a)

    def draw_on_phases(self) -> Phases3:
        """Measured draw per site phase; a 1-phase charger's draw goes to its configured phase."""
        if self.phases == 3:
            return (max(0.0, self.drawn_a[0]), max(0.0, self.drawn_a[1]), max(0.0, self.drawn_a[2]))
        out = [0.0, 0.0, 0.0]
        out[self.phase] = self.draw_a
        return (out[0], out[1], out[2])


@dataclass(frozen=True, kw_only=True)
class SiteInput:
    """The site limits in force this cycle and the grid meter reading."""

    voltage_v: float
    main_fuse_a: float
    grid_current_a: Phases3 | None = None  # import positive; None = no grid meter or it failed
    grid_power_w: float | None = None  # signed, import positive
    grid_limit_w: float | None = None  # house connection capacity in force (None = no limit)
    chargers_limit_w: float | None = None  # total for all chargers (§14a dimming acts here)
    unbalanced_limit_a: float | None = None
    failsafe_limit_w: float = 4200.0  # chargers' total power while failsafe_reason is set
    failsafe_reason: str | None = None  # e.g. "grid meter M1 stale (7.0 s)"

    def __post_init__(self) -> None:
        if self.voltage_v <= 0:
            raise ValueError(f"site.voltage_v must be positive, got {self.voltage_v!r}")
        _check_finite("site", voltage_v=self.voltage_v, main_fuse_a=self.main_fuse_a,
                      grid_power_w=self.grid_power_w, failsafe_limit_w=self.failsafe_limit_w)
        if self.grid_current_a is not None:
            _check_finite("site", grid_l1=self.grid_current_a[0], grid_l2=self.grid_current_a[1],
                          grid_l3=self.grid_current_a[2])
        _check_limit("site", grid_limit_w=self.grid_limit_w, chargers_limit_w=self.chargers_limit_w,
                     unbalanced_limit_a=self.unbalanced_limit_a)


@dataclass(frozen=True)
class Settings:
    """Tuning of the allocation; defaults are what an installation needs."""

    increase_step_a: float = 2.0  # max increase per cycle per charger
    min_pause_s: float = 60.0  # a paused charger stays paused at least this long
    #: "Draws clearly less than given" means below command - hysteresis_a; released again at
    #: command - hysteresis_a / 2. 1.5 A: cars normally draw 0.2-0.7 A below their limit, and
    #: readings jitter by a few tenths; a smaller value would mistake that for a full battery.
    hysteresis_a: float = 1.5
    #: After a raise a car needs time to follow; its draw is not judged before this has passed.
    settle_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("increase_step_a", "min_pause_s", "hysteresis_a", "settle_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"settings.{name} must be finite and >= 0, got {value!r}")


# ---- memory and outputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargerMemory:
    """What allocate() remembers about one charger between cycles."""

    current_a: float  # last commanded (0 = paused)
    paused_since_s: float | None  # the pause timer; set when a running charger was paused
    started_s: float | None = None  # when its current run began (None: before our first cycle)
    increased_s: float | None = None  # when its command was last raised (the car needs settle_s)
    demand_a: float | None = None  # learned draw-limited demand; None = its maximum
    offline: bool = False  # it was offline: current_a is not what the box applies now


@dataclass(frozen=True)
class AllocationState:
    chargers: Mapping[str, ChargerMemory] = field(default_factory=dict)  # empty on the first cycle


@dataclass(frozen=True)
class Command:
    current_a: float  # 0 or within [min_current_a, max]
    reason: str  # why it got what it got


@dataclass(frozen=True)
class Allocation:
    commands: Mapping[str, Command]  # one per charger, offline ones included (0, not written)
    state: AllocationState
    headroom_a: Phases3  # per-phase current available to chargers in force this cycle
    power_headroom_w: float | None  # chargers' total power available, None = no power limit
    limiting: tuple[str, ...]  # site limits that limited a charger this cycle, and the fail-safe


# ---- constraints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Constraint:
    name: str
    bound: float  # what the sum of coefficient x current may reach (negative: nothing fits)

    @property
    def tolerance(self) -> float:
        return 1e-6 * max(1.0, abs(self.bound))


@dataclass(frozen=True)
class _Site:
    constraints: tuple[_Constraint, ...]
    power_index: int | None  # index of the power constraint, if any
    imbalance: tuple[tuple[int, int, int], ...]  # (constraint index, p, q)
    headroom_a: Phases3
    power_headroom_w: float | None


def _site_constraints(site: SiteInput, chargers: Sequence[ChargerInput]) -> _Site:
    """Turn the site limits into linear constraints on the online chargers' commands."""
    own = [0.0, 0.0, 0.0]
    reserved = [0.0, 0.0, 0.0]
    reserved_power_w = 0.0
    for c in chargers:
        if c.online:
            for p, draw in enumerate(c.draw_on_phases()):
                own[p] += draw
        else:
            for p in c.phase_indices:
                reserved[p] += max(0.0, c.failsafe_current_a)
            reserved_power_w += max(0.0, c.failsafe_current_a) * c.phases * site.voltage_v
    base = [0.0, 0.0, 0.0]
    if site.grid_current_a is not None:
        base = [site.grid_current_a[p] - own[p] for p in range(3)]
    fuse = [site.main_fuse_a - max(0.0, base[p]) - reserved[p] for p in range(3)]
    constraints = [_Constraint(f"fuse {PHASE_NAMES[p]}", fuse[p]) for p in range(3)]

    power_w = _power_limit(site, sum(own) * site.voltage_v)
    power_index = None
    power_headroom_w = None
    if power_w is not None:
        bound_w, name = power_w
        power_headroom_w = bound_w - reserved_power_w
        power_index = len(constraints)
        constraints.append(_Constraint(name, power_headroom_w))

    imbalance = []
    if site.unbalanced_limit_a is not None and site.unbalanced_limit_a != math.inf:
        for p in range(3):
            for q in range(3):
                if p != q:
                    diff = base[p] - base[q]
                    bound = max(site.unbalanced_limit_a, diff) - diff
                    imbalance.append((len(constraints), p, q))
                    constraints.append(_Constraint(f"phase imbalance {PHASE_NAMES[p]}-{PHASE_NAMES[q]}", bound))
    return _Site(
        constraints=tuple(constraints),
        power_index=power_index,
        imbalance=tuple(imbalance),
        headroom_a=(max(0.0, fuse[0]), max(0.0, fuse[1]), max(0.0, fuse[2])),
        power_headroom_w=None if power_headroom_w is None else max(0.0, power_headroom_w),
    )


def _power_limit(site: SiteInput, own_power_w: float) -> tuple[float, str] | None:
    """The tightest total power limit for the chargers, with its name; None when there is none."""
    candidates: list[tuple[float, str]] = []
    if site.grid_limit_w is not None:
        other_w = site.grid_power_w - own_power_w if site.grid_power_w is not None else 0.0
        candidates.append((site.grid_limit_w - other_w, "grid limit"))
    if site.chargers_limit_w is not None:
        candidates.append((site.chargers_limit_w, "chargers limit"))
    if site.failsafe_reason is not None:
        candidates.append((site.failsafe_limit_w, f"fail-safe: {site.failsafe_reason}"))
    candidates = [c for c in candidates if c[0] != math.inf]
    return min(candidates, key=lambda c: c[0]) if candidates else None


def _coefficients(c: ChargerInput, site: SiteInput, layout: _Site) -> tuple[float, ...]:
    """How much one ampere of this charger's command loads each constraint."""
    coeffs = [0.0] * len(layout.constraints)
    for p in c.phase_indices:
        coeffs[p] = 1.0
    if layout.power_index is not None:
        coeffs[layout.power_index] = c.phases * site.voltage_v
    if c.phases == 1:
        for k, p, q in layout.imbalance:
            coeffs[k] = 1.0 if c.phase == p else -1.0 if c.phase == q else 0.0
    return tuple(coeffs)


# ---- per-charger preparation -------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    """An online charger with a car that may get a current in [min_a, upper_a] this cycle."""

    charger: ChargerInput
    min_a: float
    upper_a: float
    upper_reason: str
    coeffs: tuple[float, ...]
    order: tuple[int, float, str]  # admission order: lower is served first, paused last


@dataclass(frozen=True)
class _Prepared:
    last_a: float  # the last command (or the measured draw when there is none)
    fixed: Command | None  # set when the charger gets 0 whatever the site has
    upper: tuple[float, str] | None  # (upper bound, its reason) otherwise
    demand_a: float | None  # learned draw-limited demand to remember
    no_car: bool


def _fmt(value: float) -> str:
    return f"{round(value, 1):g}"


def _last_command(c: ChargerInput, mem: ChargerMemory | None) -> float:
    """The command in force: remembered, or the measured draw on the first cycle / after offline."""
    if mem is None or mem.offline:
        return c.draw_a
    return mem.current_a


def _charger_limit(c: ChargerInput) -> tuple[float, str, str]:
    """The smaller of the charger's maximum and its cap: (value, reason, reason when below min)."""
    below = f" < min {_fmt(c.min_current_a)} A"
    if c.cap_a is not None and c.cap_a < c.max_current_a:
        cap_a = max(0.0, c.cap_a)
        reason = c.cap_reason or f"cap {_fmt(cap_a)} A"
        return cap_a, reason, reason if cap_a <= 0 else f"{reason}: {_fmt(cap_a)} A{below}"
    max_a = max(0.0, c.max_current_a)
    text = f"max {_fmt(max_a)} A"
    if c.max_reason:
        return max_a, f"{c.max_reason} ({text})", f"{c.max_reason} ({text}{below})"
    return max_a, text, text + below


def _prepare(c: ChargerInput, mem: ChargerMemory | None, settings: Settings, now_s: float) -> _Prepared:
    """Decide what the charger alone allows: 0 with a reason, or an upper bound with a reason."""
    last_a = _last_command(c, mem)
    if c.state is None or c.state in (IecState.A, IecState.E, IecState.F):
        reason = "no car" if c.state is IecState.A else "state unknown" if c.state is None \
            else f"error state {c.state.value}"
        return _Prepared(last_a, Command(0.0, reason), None, None, no_car=True)
    limit_a, limit_reason, below_min_reason = _charger_limit(c)
    if limit_a < c.min_current_a - _EPS:
        return _Prepared(last_a, Command(0.0, below_min_reason), None, None, no_car=False)
    if mem is not None and mem.paused_since_s is not None:
        left_s = mem.paused_since_s + settings.min_pause_s - now_s
        if left_s > 0:
            left_s = min(left_s, settings.min_pause_s)
            return _Prepared(last_a, Command(0.0, f"min pause ({math.ceil(left_s)} s left)"), None, None, False)
    demand_a, demand_reason = _demand(c, mem, settings, now_s)
    ramp_a = max(last_a + settings.increase_step_a, c.min_current_a)  # a start may go straight to min
    if last_a < RUNNING_A:
        ramp = (ramp_a, f"starting at min {_fmt(c.min_current_a)} A")
    else:
        ramp = (ramp_a, f"ramp +{_fmt(settings.increase_step_a)} A/cycle")
    terms = [(limit_a, limit_reason)]
    if demand_a is not None:
        terms.append((demand_a, demand_reason))
    terms.append(ramp)
    upper = min(terms, key=lambda t: t[0])  # first of equals wins: max/cap before demand before ramp
    learned = demand_a if c.state is not IecState.B else None
    return _Prepared(last_a, None, upper, learned, no_car=False)


def _demand(c: ChargerInput, mem: ChargerMemory | None, settings: Settings, now_s: float) -> tuple[float | None, str]:
    """What the car can use: None = its maximum. See the module docstring for the hysteresis."""
    if c.state is IecState.B:
        return c.min_current_a, f"car connected, not charging: min {_fmt(c.min_current_a)} A offered"
    if mem is None or mem.offline or mem.current_a < RUNNING_A:
        return None, ""
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
        return None, ""
    return learned, f"car draws {_fmt(draw_a)} A"


# ---- sharing -----------------------------------------------------------------------------------


def _first_refusal(cand: _Candidate, constraints: Sequence[_Constraint], usage: Sequence[float]) -> int | None:
    """Index of the first constraint that cannot take this candidate at its minimum, or None."""
    for k, a in enumerate(cand.coeffs):
        con = constraints[k]
        if a > 0 and usage[k] + a * cand.min_a > con.bound + con.tolerance:
            return k
    return None


def _admit(cands: Sequence[_Candidate], constraints: Sequence[_Constraint],
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


def _fill(admitted: Sequence[_Candidate], constraints: Sequence[_Constraint],
          usage: list[float]) -> dict[str, tuple[float, str]]:
    """Raise all admitted candidates together from their minimum (progressive filling).

    Each round raises every active candidate by the largest amount that keeps all constraints and
    upper bounds, then freezes those at their bound and those loading a constraint that became
    tight. Every round freezes at least one candidate, so there are at most len(admitted) rounds.
    """
    current = {c.charger.id: c.min_a for c in admitted}
    reasons: dict[str, str] = {}
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
                reasons[cid] = constraints[hit].name
            else:
                still.append(c)
        active = still
    out: dict[str, tuple[float, str]] = {}
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


def _enforce(cands: Mapping[str, _Candidate], result: dict[str, tuple[float, str]],
             constraints: Sequence[_Constraint], preference: Sequence[str]) -> set[int]:
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
            result[cid] = (min(reduced, result[cid][0] - RESOLUTION_A), constraints[k].name)
    raise RuntimeError("allocation safety net did not converge")  # cannot happen: every step reduces


def _pause_reason(con: _Constraint, min_a: float) -> str:
    return f"paused: {con.name} (min {_fmt(min_a)} A not available)"


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
    layout = _site_constraints(site, ordered)
    constraints = layout.constraints

    commands: dict[str, Command] = {}
    preps: dict[str, _Prepared] = {}
    cands: dict[str, _Candidate] = {}
    for c in ordered:
        prev = state.chargers.get(c.id)
        if not c.online:
            commands[c.id] = Command(0.0, f"offline: reserving {_fmt(c.failsafe_current_a)} A fail-safe")
            continue
        prep = _prepare(c, prev, settings, now_s)
        preps[c.id] = prep
        if prep.fixed is not None:
            commands[c.id] = prep.fixed
            continue
        assert prep.upper is not None
        cands[c.id] = _Candidate(c, c.min_current_a, prep.upper[0], prep.upper[1],
                                 _coefficients(c, site, layout), _order_key(c, prep, prev))

    usage = [0.0] * len(constraints)
    result: dict[str, tuple[float, str]] = {}
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
    limiting |= _enforce(cands, result, constraints, preference)
    names = {con.name: k for k, con in enumerate(constraints)}
    for cid, (current_a, reason) in result.items():
        commands[cid] = Command(current_a, reason)
        if reason in names:
            limiting.add(names[reason])

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
