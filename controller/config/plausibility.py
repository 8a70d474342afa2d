"""Plausibility: what the config asks of a device against the facts of its model's profile.

A config can be well formed and still describe a site that cannot work: a Heidelberg box on a
9600 baud bus never answers, a limit above what the box accepts is refused, a box that needs
more than the main fuse to start never charges. The facts come from the profiles themselves
(``hal/modbus/profiles/*.yaml``: ``link.fixed``, ``phases``, ``max_current_a``), so a new model brings
its own checks.

The rule for the severity, the same for every check:

- **error** when the site cannot work as written, or would be unsafe: fixed serial settings
  that differ from the bus, a current above what the model accepts, a ``min_current_a`` above
  the main fuse, ``phases: 1`` for a box that draws on three phases;
- **warning** when it works and stays safe, but something is probably mistyped: a
  ``max_current_a`` above the main fuse (gridcharge never gives more than the fuse allows),
  ``phases: 3`` for a 1-phase box (its current is counted on every phase, so it gets less, not
  more), a 1-phase meter at the grid connection (right for a 1-phase house), fail-safe currents
  that add up to more than the fuse.

Each check skips a field that did not validate (``Parts.broken``): its own error says enough.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from controller.config.parts import Parts
from controller.config.problems import Loc, Problem
from controller.config.schema import (
    MAX_CURRENT_A,
    Loadpoint,
    ModbusChargerConfig,
    RtuBus,
    RtuOverTcpBus,
    device_profile,
)
from hal.modbus import profile as profiles


def check_plausibility(parts: Parts) -> Iterator[Problem]:
    """Errors and warnings from the profiles' facts (see the module text for which is which)."""
    yield from _fixed_serial_settings(parts)
    for charger_id, charger in parts.chargers.items():
        path: Loc = ("chargers", charger_id)
        profile = _profile(parts, path, charger) if isinstance(charger, ModbusChargerConfig) else None
        yield from _currents(parts, path, charger, profile)
        if profile is not None:
            yield from _phases(parts, path, charger, profile)
    yield from _grid_meter(parts)
    yield from _failsafe_total(parts)


def _profile(parts: Parts, path: Loc, device: Any) -> profiles.Profile | None:
    """The device's profile, or None when it is not known or not valid (reported elsewhere)."""
    if not parts.intact(path, "model", "profile"):
        return None
    if getattr(device, "profile", None) is not None and getattr(device, "model", None) is not None:
        return None
    try:
        return device_profile(device, ".".join(map(str, path)))
    except (profiles.ProfileError, OSError):
        return None


def _serial(bus: RtuBus | RtuOverTcpBus) -> str:
    return f"{bus.baudrate} 8{bus.parity}{bus.stopbits}"


def _pseudo_terminal(port: str) -> bool:
    """A pseudo-terminal (``/dev/pts/N``, or a link to one, as socat makes for a remote serial
    server, and the simulator's null-modem) carries bytes without line settings: the settings that
    count are at its far end, out of sight. A link is followed only where it exists."""
    return os.path.realpath(port).startswith("/dev/pts/")


def _fixed_serial_settings(parts: Parts) -> Iterator[Problem]:
    """A model that speaks only one set of serial settings, on an RS485 bus set otherwise."""
    for section in ("meters", "chargers", "inputs"):
        for device_id, device in getattr(parts, section).items():
            path: Loc = (section, device_id)
            bus = parts.buses.get(getattr(device, "bus", None) or "")
            if not isinstance(bus, (RtuBus, RtuOverTcpBus)) or not parts.intact(path, "bus"):
                continue
            if not parts.whole(("buses", device.bus)) or (isinstance(bus, RtuBus) and _pseudo_terminal(bus.port)):
                continue
            profile = _profile(parts, path, device)
            if profile is None or profile.link is None or not profile.link.fixed:
                continue
            link = profile.link
            if (bus.baudrate, bus.parity, bus.stopbits) != (link.baudrate, link.parity, link.stopbits):
                yield Problem(path + ("bus",), (
                    f"'{profile.model}' speaks only {link.serial_text()} (fixed on the box), but bus "
                    f"'{device.bus}' runs {_serial(bus)}: set baudrate: {link.baudrate}, parity: "
                    f"{link.parity}, stopbits: {link.stopbits} on the bus, and every device on it to match"))


def _currents(parts: Parts, path: Loc, charger: Loadpoint, profile: profiles.Profile | None) -> Iterator[Problem]:
    """The charger's currents against what its model accepts and what the main fuse allows."""
    model_max = profile.max_current_a if profile is not None else None
    site = parts.site
    fuse = site.main_fuse_a if site is not None and parts.intact(("site",), "main_fuse_a") else None
    configured = charger.max_current_a
    maximum: float | None = None  # a formula (known only at run time), or beyond IEC 61851 (its own error)
    if isinstance(configured, (int, float)) and parts.intact(path, "max_current_a") and configured <= MAX_CURRENT_A:
        maximum = float(configured)
    minimum = charger.min_current_a if parts.intact(path, "min_current_a") else None
    failsafe = charger.failsafe_current_a if parts.intact(path, "failsafe_current_a") else None
    if model_max is not None and profile is not None:
        accepts = f"above what '{profile.model}' accepts ({model_max:g} A)"
        if maximum is not None and maximum > model_max:
            yield Problem(path + ("max_current_a",), f"{maximum:g} A is {accepts}")
        if minimum is not None and minimum > model_max:
            yield Problem(path + ("min_current_a",), f"{minimum:g} A is {accepts}")
        if failsafe is not None and failsafe > model_max and (maximum is None or failsafe <= maximum):
            yield Problem(path + ("failsafe_current_a",), f"{failsafe:g} A is {accepts}")  # else: "above max"
    if fuse is None:
        return
    if maximum is not None and maximum > fuse:
        yield Problem(path + ("max_current_a",), (
            f"{maximum:g} A is above main_fuse_a ({fuse:g} A): the box can never be given that much; "
            "check the box's rating and the fuse"), warning=True)
    if minimum is not None and minimum > fuse:
        yield Problem(path + ("min_current_a",),
                      f"{minimum:g} A is above main_fuse_a ({fuse:g} A): the box could never start charging")


def _phases(parts: Parts, path: Loc, charger: Loadpoint, profile: profiles.Profile) -> Iterator[Problem]:
    """``phases:`` against a model that works on one or on three phases only."""
    if profile.phases is None or not parts.intact(path, "phases") or charger.phases == profile.phases:
        return
    if charger.phases == 1:
        yield Problem(path + ("phases",), (
            f"1, but '{profile.model}' charges on 3 phases only: gridcharge would count its current on "
            f"{charger.phase} alone while it draws on all three; write phases: 3"))
    else:
        yield Problem(path + ("phases",), (
            f"3, but '{profile.model}' charges on one phase only: write phases: 1 and phase: (L1, L2 or L3, "
            "as wired); as it is, its current is counted on every phase and it gets less than it could"),
            warning=True)


def _grid_meter(parts: Parts) -> Iterator[Problem]:
    """A 1-phase meter at the grid connection sees nothing of L2 and L3."""
    site = parts.site
    meter_id = site.grid_meter if site is not None and parts.intact(("site",), "grid_meter") else None
    meter = parts.meters.get(meter_id or "")
    if meter is None:
        return
    profile = _profile(parts, ("meters", meter_id), meter)
    if profile is not None and profile.phases == 1:
        yield Problem(("site", "grid_meter"), (
            f"'{meter_id}' is '{profile.model}', a 1-phase meter: gridcharge reads 0 A on L2 and L3, so on "
            "a 3-phase connection their load is unseen and their fuse unguarded; use a 3-phase meter"),
            warning=True)


def _failsafe_total(parts: Parts) -> Iterator[Problem]:
    """What the boxes draw on their own when gridcharge stops, per phase, against the fuse."""
    site = parts.site
    if site is None or not parts.intact(("site",), "main_fuse_a") or not parts.chargers:
        return
    totals = [0.0, 0.0, 0.0]
    for charger_id, charger in parts.chargers.items():
        if not parts.intact(("chargers", charger_id), "failsafe_current_a", "phases", "phase"):
            return  # an unknown share: no total
        for index in (range(3) if charger.phases == 3 else (charger.phase_index,)):
            totals[index] += charger.failsafe_current_a
    worst = max(range(3), key=lambda i: totals[i])
    if totals[worst] > site.main_fuse_a:
        yield Problem(("chargers",), (
            f"the fail-safe currents add up to {totals[worst]:g} A on L{worst + 1}, above main_fuse_a "
            f"({site.main_fuse_a:g} A): if gridcharge stops, the boxes alone may trip the fuse; lower "
            "failsafe_current_a"), warning=True)
