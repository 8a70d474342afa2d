"""Load allocation: pure functions of one snapshot (see docs/load-management.md).

``algorithm`` is ``allocate()`` and ``acknowledge()``; ``types`` its inputs, memory and
outputs; ``constraints`` the site's electrical limits as linear constraints; ``rules`` the
charging rules and caps; ``assumed_draw`` what a silent box is taken to draw. Import the
public names from ``controller.allocation``.
"""

from controller.allocation.algorithm import (
    RESOLUTION_A,
    RUNNING_A,
    Allocation,
    AllocationState,
    ChargerInput,
    ChargerMemory,
    Command,
    Reason,
    Settings,
    SiteInput,
    Why,
    acknowledge,
    allocate,
)

__all__ = [
    "RESOLUTION_A",
    "RUNNING_A",
    "Allocation",
    "AllocationState",
    "ChargerInput",
    "ChargerMemory",
    "Command",
    "Reason",
    "Settings",
    "SiteInput",
    "Why",
    "acknowledge",
    "allocate",
]
