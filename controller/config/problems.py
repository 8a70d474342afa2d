"""How a problem with the config is described and reported: ``Problem`` and ``ConfigError``.

Every stage of the config check (the YAML reader, the schema, the cross-reference checks, the
formula names, the plausibility checks) reports in this one shape, a path into the file and a
reason, so ``gridcharge check-config`` can sort them all by path and list them together.

A problem is an error (the config is not used) or a warning (it is used, but something is odd or
missing on this machine). It is its own module because every stage imports it and it imports none
of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Loc = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: where (keys and list indexes) and why, in plain words."""

    path: Loc
    message: str
    warning: bool = False  # True: reported, but the config is still used

    def render(self) -> str:
        where = ".".join(str(part) for part in self.path) if self.path else "top level"
        return f"{where}: {self.message}"


def sort_key(problem: Problem) -> tuple[Any, ...]:
    """By path, list indexes numerically (``rules.2`` before ``rules.10``), then by message."""
    parts = tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in problem.path)
    return parts, problem.message


def rendered(problems: Iterable[Problem]) -> list[str]:
    """Distinct problems as ``path: reason`` lines, sorted by path."""
    return [p.render() for p in sorted(set(problems), key=sort_key)]


class ConfigError(Exception):
    """The configuration is unusable. ``errors`` lists every problem as ``path: reason``;
    ``warnings`` what would only have been a warning, found in the same run."""

    def __init__(self, errors: list[str], source: str = "<config>", warnings: list[str] | None = None) -> None:
        self.errors = errors
        self.warnings = list(warnings or ())
        self.source = source
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  {e}" for e in errors))


def raise_if(problems: Iterable[Problem], source: str) -> None:
    """Raise one ConfigError with every distinct error (and the warnings beside them), or return
    when there is no error."""
    problems = list(problems)
    errors = rendered(p for p in problems if not p.warning)
    if errors:
        raise ConfigError(errors, source, rendered(p for p in problems if p.warning))
