"""Watch a simulated site's grid currents at every instant and judge each change.

A meter read once a cycle would miss a 0.4 s overload between two writes; the simulator's
physics reports every change of the grid currents (a write landing on a box, a box's watchdog
falling back, a step of the house load), so the tests can check the fuse *after every single
write*. Changes the test itself makes (house load, a car plugged in) are tagged as the world's
doing: the controller has to react to them, but they are not its fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from hal.sim.site import SimulatedSite
from hal.types import Phases3

TOLERANCE_A = 0.5  # measurement tolerance of a meter


@dataclass(frozen=True)
class Change:
    t_s: float
    before: Phases3
    after: Phases3
    world: bool  # made by the test (house load, a car), not by the controller or a box
    house: Phases3  # the house's own load then (its imbalance is not gridcharge's doing)


class GridWatch:
    def __init__(self, site: SimulatedSite) -> None:
        self.site = site
        self.changes: list[Change] = []
        self._world = False
        with site.physics.lock:
            self._last = site.physics.grid_currents_a()
            site.physics.watch(self._changed)

    def _changed(self, t_s: float, currents: Phases3) -> None:  # sim lock held
        self.changes.append(Change(t_s, self._last, currents, self._world, self.site.physics.base_load_a))
        self._last = currents

    @contextlib.contextmanager
    def world(self) -> Iterator[None]:
        """Changes made inside are the world's (holds the sim's lock, so no write interleaves)."""
        with self.site.physics.lock:
            self._world = True
            try:
                yield
            finally:
                self._world = False

    def violations(self, main_fuse_a: float, unbalanced_limit_a: float | None) -> list[str]:
        """Every change not made by the world that raised a phase above the fuse, or widened a
        phase difference beyond the imbalance limit (both with the meter tolerance).

        The imbalance limit is the larger of ``unbalanced_limit_a`` and the house's own
        difference: a house unbalanced on its own is not gridcharge's to fix.
        """
        out = []
        for c in self.changes:
            if c.world:
                continue
            for p in range(3):
                if c.after[p] > main_fuse_a + TOLERANCE_A and c.after[p] > c.before[p] + 1e-9:
                    out.append(f"t={c.t_s:.2f}: L{p + 1} {c.before[p]:.1f} -> {c.after[p]:.1f} A "
                               f"over the {main_fuse_a:g} A fuse")
            if unbalanced_limit_a is None:
                continue
            for p in range(3):
                for q in range(3):
                    before, after = c.before[p] - c.before[q], c.after[p] - c.after[q]
                    allowed = max(unbalanced_limit_a, c.house[p] - c.house[q])
                    if p != q and after > allowed + TOLERANCE_A and after > before + 1e-9:
                        out.append(f"t={c.t_s:.2f}: L{p + 1}-L{q + 1} {before:.1f} -> {after:.1f} A "
                                   f"over the {allowed:g} A imbalance limit")
        return out

    def peak(self) -> Phases3:
        """The highest current each phase carried at any moment (after the first change)."""
        if not self.changes:
            return self._last
        return (max(c.after[0] for c in self.changes), max(c.after[1] for c in self.changes),
                max(c.after[2] for c in self.changes))
