"""The config file's YAML stage: the strict reader's findings as config problems.

The strictness itself (YAML 1.1's silent guesses such as ``no``, ``010`` and ``1:30``, and
duplicate keys, each with its path and line) is ``hal.strict_yaml``, shared with the device
profiles. This module only speaks the config's language: ``Problem`` for each finding, and
``ConfigError`` for a file that is not YAML at all.
"""

from __future__ import annotations

from typing import Any

from controller.config.problems import ConfigError, Loc, Problem
from hal.strict_yaml import YamlSyntaxError, read_strict_yaml


def read_yaml(text: str, source: str) -> tuple[Any, list[Problem], set[Loc]]:
    """Parse one YAML document; return data, YAML-level problems and the data paths they void
    (so that the schema's message about the same value can be left out)."""
    try:
        read = read_strict_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError([str(exc)], source) from None
    return read.data, [Problem(p.path, p.message) for p in read.problems], set(read.void)
