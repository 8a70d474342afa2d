"""The value types of load allocation: what allocate() takes, remembers and returns.

This module owns the frozen inputs (:class:`ChargerInput`, :class:`SiteInput`, :class:`Settings`),
the memory carried between cycles (:class:`ChargerMemory`, :class:`AllocationState`) and the
outputs (:class:`Command`, :class:`Allocation`), with the checks that reject NaN or -inf values
before they reach the arithmetic. It is separate from the algorithm (controller/allocation/) and
the site constraints (controller/allocation/constraints.py) because both of those, and the control
loop, share these types, while the types need nothing from them. Import them from
controller.allocation, which re-exports them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from hal.types import IecState, Phases3


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
    max_current_a: float  # in force this cycle (the loop substitutes the configured fail-safe value)
    max_reason: str | None = None  # set when the loop substituted, e.g. "max formula error: ..."
    priority: int = 0  # higher first
    online: bool  # read OK and fresh
    state: IecState | None  # None when offline
    drawn_a: Phases3 = (0.0, 0.0, 0.0)  # measured per-phase current (zeros when offline)
    #: Offline only: what the silent box is taken to draw on each of its phases (its last limit
    #: until its own watchdog falls back, see controller/allocation/assumed_draw.py), and why.
    reserved_a: float = 0.0
    reserved_reason: str | None = None
    cap_a: float | None = None  # from rules and overrides (0 pauses); None = no cap
    cap_reason: str | None = None

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError(f"charger {self.id}: phases must be 1 or 3, got {self.phases!r}")
        if self.phase not in (0, 1, 2):
            raise ValueError(f"charger {self.id}: phase must be 0, 1 or 2, got {self.phase!r}")
        _check_finite(f"charger {self.id}", min_current_a=self.min_current_a,
                      reserved_a=self.reserved_a,
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
        """Its draw per site phase: measured when online, the reservation when offline.

        A 1-phase charger's draw goes to its configured phase.
        """
        if not self.online:
            reserved = max(0.0, self.reserved_a)
            return (reserved if 0 in self.phase_indices else 0.0, reserved if 1 in self.phase_indices else 0.0,
                    reserved if 2 in self.phase_indices else 0.0)
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
    #: What caused the fail-safe, each the same from cycle to cycle (no ages, no values), so
    #: that a record notes a change of cause and not every cycle's new age.
    failsafe_causes: tuple[str, ...] = ()

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


class Why(str, enum.Enum):
    """What decided a charger's current this cycle: the kind of a :class:`Reason`."""

    NO_CAR = "no car"
    STATE_UNKNOWN = "state unknown"
    ERROR_STATE = "error state"
    OFFLINE = "offline"  # silent: nothing written, its assumed draw reserved
    MAXIMUM = "maximum"  # its max_current_a (or the fail-safe value standing in for it)
    CAP = "cap"  # a rule or an override
    BELOW_MINIMUM = "below minimum"  # its maximum or cap is below its minimum: paused
    MIN_PAUSE = "min pause"
    CAR_CONNECTED = "car connected"  # state B: offered its minimum only
    CAR_DRAWS_LESS = "car draws less"
    STARTING = "starting"
    RAMP = "ramp"
    SITE_LIMIT = "site limit"  # a fuse, power or imbalance limit of the site
    PAUSED = "paused"  # a site limit could not give even its minimum
    HELD = "held back"  # the writer did not write its increase this cycle


@dataclass(frozen=True)
class Reason:
    """Why a charger got what it got: a kind for code, a text for people.

    Code decides on ``kind`` and ``subject`` (what it is about, the same from cycle to cycle:
    a site limit's name such as ``fuse L1``, a rule's name); only the edges (``lreason`` in the
    API, the logs, the status view) show ``text``, which carries the numbers of this cycle.
    """

    kind: Why
    text: str
    subject: str = ""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Command:
    current_a: float  # 0 or within [min_current_a, max]
    reason: Reason  # why it got what it got


@dataclass(frozen=True)
class Allocation:
    commands: Mapping[str, Command]  # one per charger, offline ones included (0, not written)
    state: AllocationState
    headroom_a: Phases3  # per-phase current available to chargers in force this cycle
    power_headroom_w: float | None  # chargers' total power available, None = no power limit
    limiting: tuple[str, ...]  # site limits that limited a charger this cycle, and the fail-safe

