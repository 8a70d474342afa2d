"""Every name a formula of the config reads must exist, or it is an error with a "did you mean".

A formula may read a declared variable (``AVAIL``), a device value (``M1.power_w``,
``E1.state``: ``controller.formulas.symbols.DEVICE_VALUES``), an input (``RSE1``) or the time (``hour``,
``minute``, ``weekday``); function names are checked when the formula is compiled. At run time a
name that is none of these is only an evaluation error, because the API may set a variable later.
In the config file it is an error: the file must declare its variables under ``variables:`` with
their starting values, so ``55000 * AVIAL / 100`` is caught at the meter cabinet, not by the
fail-safe on the first evening.

Names count as declared when their entry is present in the file, valid or not, so one broken
entry does not also make every formula that reads it fail.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping

from controller.config.parts import Parts, compiled_formulas
from controller.config.problems import Problem
from controller.formulas import TIME_SYMBOLS
from controller.formulas.symbols import DEVICE_VALUES

_DECLARE = "a variable set later over the API must be declared under variables: with its starting value"


def check_names(parts: Parts) -> Iterator[Problem]:
    """An error for every name of every formula that nothing in the config provides."""
    kinds = {device_id: "meter" for device_id in parts.present["meters"]}
    kinds.update({device_id: "charger" for device_id in parts.present["chargers"]})
    known = _Known(variables=parts.present["variables"], inputs=parts.present["inputs"], devices=kinds)
    for path, formula in compiled_formulas(parts):
        for name in sorted(formula.names):
            reason = known.dotted(name) if "." in name else known.bare(name)
            if reason is not None:
                yield Problem(path, reason)


class _Known:
    """The names a formula of this config may read, and why another name is wrong."""

    def __init__(self, *, variables: Collection[str], inputs: Collection[str], devices: Mapping[str, str]) -> None:
        self.variables = variables
        self.inputs = inputs
        self.devices = devices
        self.bare_names = set(variables) | set(inputs) | set(TIME_SYMBOLS)

    def bare(self, name: str) -> str | None:
        if name in self.bare_names:
            return None
        kind = self.devices.get(name)
        if kind is not None:
            return f"'{name}' is a {kind}: read one of its values, e.g. {name}.power_w"
        close = closest(name, self.bare_names)
        hint = f" (did you mean '{close}'?)" if close else ""
        return f"unknown name '{name}'{hint}; {_DECLARE}"

    def dotted(self, name: str) -> str | None:
        owner, value = name.split(".", 1)
        kind = self.devices.get(owner)
        if kind is not None:
            values = DEVICE_VALUES[kind]
            if value in values:
                return None
            close = closest(value, values)
            hint = f" (did you mean '{owner}.{close}'?)" if close else ""
            return f"unknown name '{name}'{hint}: a {kind} has {', '.join(values)}"
        if owner in self.inputs:
            return f"unknown name '{name}': {owner} is an input, read it alone ({owner} is 1 when active, 0 when not)"
        if owner in self.variables:
            return f"unknown name '{name}': {owner} is a variable; only devices have values after a dot"
        close = closest(owner, self.devices, cutoff=0.5)  # ids are short: M2 for M1 is a typo
        hint = f" (did you mean '{close}.{value}'?)" if close else ""
        return f"unknown name '{name}': no device named '{owner}'{hint}"


def closest(word: str, candidates: Collection[str], cutoff: float = 0.6) -> str | None:
    """The candidate ``word`` most likely mistypes (case does not count), or None."""
    by_lower = {candidate.lower(): candidate for candidate in sorted(candidates)}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[match[0]] if match else None
