"""What a wallbox that does not answer is assumed to draw, and for how long.

A box that falls silent (dead bus, broken cable, a box rebooting) does not stop charging: it
keeps the limit it was last given until its own watchdog or validity time runs out, and only
then falls back to its fail-safe current. A box without a watchdog keeps its last limit for as
long as it is silent. So the control loop must keep that much current reserved for it, or it
would hand the same amperes to another car and the grid connection would carry both.

This module owns that rule as a pure function of what is known about the box (:class:`SilentBox`)
and the time; the loop gathers the facts (the writer's acknowledged writes, the last reading, the
profile's fall-back) and the allocation reserves the answer on the box's phases and counts it
as the box's own draw when it works out the other consumption (grid - chargers).

The rule, most specific first:

* **Never written since gridcharge started (or since the box came back):** its limit is whatever
  it was before, so it is taken to draw what it was last measured drawing, or, never read at all,
  its maximum. This lasts as long as it is silent: gridcharge has configured no watchdog on it.
* **Written, with a fall-back known to be armed:** the larger of its last acknowledged limit and
  its last measured draw (and its fail-safe current, in case it falls back early) until the
  fall-back time plus :data:`FALLBACK_MARGIN_S` has passed since the box was last fed (its last
  answered request for a box that any request feeds, its last acknowledged limit write for one
  that only a write feeds); from then on its fail-safe current.
* **Written, no fall-back** (the model has none, or its watchdog was never set up): the larger of
  its last acknowledged limit and its last measured draw, for as long as it is silent.

Assumption (documented for the installer): a request that got no answer did not reach the box,
so it did not feed the box's watchdog; the margin covers the box's clock running a little slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Added to a box's fall-back time before its fail-safe current is trusted: clock drift, a
#: watchdog counted from the end of a request rather than its start, one cycle of reading lag.
FALLBACK_MARGIN_S = 2.0


@dataclass(frozen=True)
class SilentBox:
    """What is known about a charger that does not answer (times on the loop's monotonic clock)."""

    landed_a: float | None  # the last limit it acknowledged since it (re)appeared; None: not written
    landed_s: float | None  # when that limit write was acknowledged
    contact_s: float | None  # the last time it answered anything (a read or a write)
    measured_a: float | None  # its highest phase current in its last reading; None: never read
    fallback_s: float | None  # its own fall-back time, when known to be armed; None: never falls back
    fed_by_any_request: bool  # True: any request feeds its watchdog; False: only a limit write
    failsafe_a: float  # what it falls back to
    maximum_a: float  # the most it can give, for a box never read and never written

    def __post_init__(self) -> None:
        for name in ("failsafe_a", "maximum_a"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True)
class Assumed:
    """The current reserved for a silent box on each of its phases, and why (for ``lreason``)."""

    current_a: float
    why: str


def _a(value: float) -> str:
    return f"{round(value, 1):g} A"


def assumed_draw(box: SilentBox, now_s: float, margin_s: float = FALLBACK_MARGIN_S) -> Assumed:
    """The current a silent box is taken to draw at ``now_s``; see the module docstring."""
    measured = max(0.0, box.measured_a) if box.measured_a is not None else None
    if box.landed_a is None:
        if measured is not None:
            return Assumed(measured, f"{_a(measured)} as last measured (never written)")
        return Assumed(box.maximum_a, f"{_a(box.maximum_a)}, its maximum (never read)")
    held = max(box.landed_a, measured or 0.0)
    held_text = f"{_a(held)} as last {'given' if held == box.landed_a else 'measured'}"
    if box.fallback_s is None:
        return Assumed(held, f"{held_text} (it has no watchdog)")
    fed_s = box.landed_s
    if box.fed_by_any_request and box.contact_s is not None:
        fed_s = box.contact_s if fed_s is None else max(fed_s, box.contact_s)
    if fed_s is None:  # cannot happen with a landed limit; be safe rather than sorry
        return Assumed(held, f"{held_text} (it has no watchdog)")
    left_s = fed_s + box.fallback_s + margin_s - now_s
    if left_s > 0:
        when = f"until its watchdog falls back ({math.ceil(left_s)} s)"
        if box.failsafe_a > held:
            return Assumed(box.failsafe_a, f"{_a(box.failsafe_a)} fail-safe, as its watchdog may fall back early")
        return Assumed(held, f"{held_text} {when}")
    return Assumed(box.failsafe_a, f"{_a(box.failsafe_a)} fail-safe (its watchdog has fallen back)")
