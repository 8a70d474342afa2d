"""Site limits as linear constraints on the chargers' commands (docs/load-management.md; step 1 of allocate()).

This module owns turning one :class:`SiteInput` snapshot and the chargers into
:class:`SiteConstraints`: a list of named bounds ``sum of coefficient_i x x_i <= bound`` on the
chargers' currents ``x_i``, plus the headroom shown in the status, and each charger's coefficients
in them. It is separate from the sharing algorithm (controller/allocation/) because it is where
the electrical safety rules live, which are read and reviewed on their own; the algorithm only sees
numbers and names.

* ``fuse Lp`` (hard): ``sum of x_i on phase p <= main_fuse - max(0, other_p) - reserved_p``.
  ``other_p`` = grid meter current - the chargers' own measured draw on that phase. It is
  clamped at 0: generation (a negative reading) is never counted as headroom, because it can
  vanish within one cycle and the fuse must hold even then. Without a grid meter, or when the
  meter failed (``grid_current_a`` None), other loads are taken as 0; in the fail-safe case the
  total power limit below is what protects the site. ``reserved_p`` is what every offline
  charger on that phase is assumed to draw (``ChargerInput.reserved_a``: a silent box keeps its
  last limit until its own watchdog falls back). That same assumed draw counts as the charger's
  own draw in ``other_p``, so the meter's view of it is not counted twice, and an assumption
  above the real draw errs on the safe side.
* ``power`` (soft, contractual): ``sum of phases_i * voltage * x_i <= min(grid_limit_w -
  other_power_w, chargers_limit_w, failsafe_limit_w if a fail-safe reason is set) - reserved``.
  ``other_power_w`` = grid power - the chargers' own power (drawn currents x voltage); it is
  signed (export counts), because these limits are about the net power at the connection.
* ``phase imbalance Lp-Lq`` for every ordered phase pair, when ``unbalanced_limit_a`` is set:
  ``(base_p + load_p) - (base_q + relief_q) <= max(limit, base_p - base_q)``, where ``base`` is
  the grid current minus the online chargers' measured draw (0 without meter; a silent box's
  real current stays in it, as the meter sees it), ``load_p`` the commands of the 1-phase
  chargers on p, and ``relief_q`` what the 1-phase chargers on q *draw now*, not what they are
  commanded: a car on the lighter phase that was just allowed more has not taken it yet when the
  heavier phase's increase lands, a car may draw less than its limit, and a charger on q that is
  lowered this cycle relieves only its new command (allocate() lowers the bound for that after
  filling, see ``relief_shortfall``). So the difference never widens past the limit at any moment
  between two writes, not only once every box has followed. Only 1-phase chargers change the
  difference; if other loads already exceed the limit we may not make that pair worse, but may
  improve it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.allocation.types import ChargerInput, SiteInput
from hal.types import Phases3

PHASE_NAMES = ("L1", "L2", "L3")


@dataclass(frozen=True)
class Constraint:
    """One named linear limit on the commands."""

    name: str
    bound: float  # what the sum of coefficient x current may reach (negative: nothing fits)

    @property
    def tolerance(self) -> float:
        """Float slack when checking the bound, relative to its size."""
        return 1e-6 * max(1.0, abs(self.bound))


@dataclass(frozen=True)
class SiteConstraints:
    """The constraints of one cycle and what the status shows of them."""

    constraints: tuple[Constraint, ...]
    power_index: int | None  # index of the power constraint, if any
    imbalance: tuple[tuple[int, int, int], ...]  # (constraint index, p, q): p may not exceed q by more
    headroom_a: Phases3
    power_headroom_w: float | None


def site_constraints(site: SiteInput, chargers: Sequence[ChargerInput]) -> SiteConstraints:
    """Turn the site limits into linear constraints on the online chargers' commands."""
    own = [0.0, 0.0, 0.0]  # online: measured; offline: assumed (the reservation)
    reserved = [0.0, 0.0, 0.0]
    relief = [0.0, 0.0, 0.0]  # what the online 1-phase chargers draw now, per phase
    reserved_power_w = 0.0
    for c in chargers:
        draw = c.draw_on_phases()
        for p in range(3):
            own[p] += draw[p]
        if not c.online:
            for p in range(3):
                reserved[p] += draw[p]
            reserved_power_w += sum(draw) * site.voltage_v
        elif c.phases == 1:
            relief[c.phase] += draw[c.phase]
    base = [0.0, 0.0, 0.0]
    unbalanced = reserved  # without a meter, the silent boxes are all we know of
    if site.grid_current_a is not None:
        base = [site.grid_current_a[p] - own[p] for p in range(3)]
        unbalanced = [base[p] + reserved[p] for p in range(3)]  # the meter's view of everything else
    fuse = [site.main_fuse_a - max(0.0, base[p]) - reserved[p] for p in range(3)]
    constraints = [Constraint(f"fuse {PHASE_NAMES[p]}", fuse[p]) for p in range(3)]

    power_w = _power_limit(site, sum(own) * site.voltage_v)
    power_index = None
    power_headroom_w = None
    if power_w is not None:
        bound_w, name = power_w
        power_headroom_w = bound_w - reserved_power_w
        power_index = len(constraints)
        constraints.append(Constraint(name, power_headroom_w))

    imbalance = []
    if site.unbalanced_limit_a is not None and site.unbalanced_limit_a != math.inf:
        for p in range(3):
            for q in range(3):
                if p != q:
                    diff = unbalanced[p] - unbalanced[q]
                    bound = max(site.unbalanced_limit_a, diff) - diff + relief[q]
                    imbalance.append((len(constraints), p, q))
                    constraints.append(Constraint(f"phase imbalance {PHASE_NAMES[p]}-{PHASE_NAMES[q]}", bound))
    return SiteConstraints(
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


def coefficients(c: ChargerInput, site: SiteInput, layout: SiteConstraints) -> tuple[float, ...]:
    """How much one ampere of this charger's command loads each constraint."""
    coeffs = [0.0] * len(layout.constraints)
    for p in c.phase_indices:
        coeffs[p] = 1.0
    if layout.power_index is not None:
        coeffs[layout.power_index] = c.phases * site.voltage_v
    if c.phases == 1:
        for k, p, _ in layout.imbalance:  # the lighter phase's relief is in the bound (its draw)
            coeffs[k] = 1.0 if c.phase == p else 0.0
    return tuple(coeffs)


def relief_shortfall(layout: SiteConstraints, chargers: Sequence[ChargerInput],
                     commands: Mapping[str, float]) -> tuple[Constraint, ...]:
    """The constraints with each imbalance bound lowered by the relief that will not be there.

    The bound counts a 1-phase charger on the lighter phase at its measured draw; one commanded
    below that draw this cycle (lowered, or paused) will draw only its command, so the heavier
    phase may take that much less. ``commands``: charger id → this cycle's command (absent: 0).
    """
    out = list(layout.constraints)
    for k, _, q in layout.imbalance:
        short = sum(max(0.0, c.draw_a - commands.get(c.id, 0.0))
                    for c in chargers if c.online and c.phases == 1 and c.phase == q)
        if short > 0:
            out[k] = Constraint(out[k].name, out[k].bound - short)
    return tuple(out)
