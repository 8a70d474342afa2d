"""Device profiles: the packaged profile files and how they are read; the public face.

docs/architecture.md "Devices are data": every supported model is one YAML file under
``hal/modbus/profiles/``. This module owns that catalogue (:data:`PROFILE_NAMES`) and
:func:`load_profile`, which reads a file as strictly as the config (``hal.strict_yaml``: duplicate
keys and YAML 1.1 guesses are errors) and validates it. The work is split into one job per module:

- ``hal.modbus.profile_types``: the frozen values a validated profile is made of (:class:`Profile`,
  :class:`ValueSpec`, ...), their register arithmetic and :func:`pack_blocks`;
- ``hal.modbus.profile_schema``: the schema and its strict validator, :func:`parse_profile` (also used
  for a custom device declared inline in the config); the schema summary is there.

Everything other modules use is importable from here, so ``from hal.modbus.profile import ...`` stays
the one import path: :data:`PROFILE_NAMES`, :func:`load_profile`, :func:`parse_profile`,
:class:`ProfileError`, :class:`Profile` and its parts. The simulators use the ``encode``
helpers of the value types to serve exactly what the devices decode.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from hal.modbus.profile_schema import parse_profile
from hal.modbus.profile_types import (
    CHARGER_VALUES,
    METER_VALUES,
    SETUP_SYMBOLS,
    Block,
    FactoryFallback,
    InputSpec,
    InvalidValue,
    Kind,
    LimitSpec,
    LinkDefaults,
    Packing,
    Profile,
    ProfileError,
    StateByValue,
    StateSpec,
    ValueSpec,
    WriteSpec,
    pack_blocks,
    scale_to_words,
)
from hal.strict_yaml import YamlSyntaxError, read_strict_yaml

__all__ = [
    "CHARGER_VALUES",
    "METER_VALUES",
    "PROFILE_NAMES",
    "SETUP_SYMBOLS",
    "Block",
    "FactoryFallback",
    "InputSpec",
    "InvalidValue",
    "Kind",
    "LimitSpec",
    "LinkDefaults",
    "Packing",
    "Profile",
    "ProfileError",
    "StateByValue",
    "StateSpec",
    "ValueSpec",
    "WriteSpec",
    "load_profile",
    "pack_blocks",
    "parse_profile",
    "profile_from_yaml",
    "scale_to_words",
]

_PROFILES = resources.files("hal.modbus").joinpath("profiles")
#: Packaged profiles: the file names under ``hal/modbus/profiles/`` without ``.yaml``. Adding a
#: model is adding a file (and its golden fixture, ``tests/unit/golden/<model>.yaml``): nothing
#: else lists them.
PROFILE_NAMES: tuple[str, ...] = tuple(sorted(
    entry.name.removesuffix(".yaml") for entry in _PROFILES.iterdir() if entry.name.endswith(".yaml")))


@lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """The packaged profile ``name`` (one of :data:`PROFILE_NAMES`), validated; cached."""
    if name not in PROFILE_NAMES:
        raise ProfileError([f"unknown profile {name!r} (known: {', '.join(PROFILE_NAMES)})"])
    source = f"hal/modbus/profiles/{name}.yaml"
    profile = profile_from_yaml(_PROFILES.joinpath(f"{name}.yaml").read_text(encoding="utf-8"), source)
    if profile.model != name:
        raise ProfileError([f"model: {profile.model!r} must equal the file name {name!r}"], source)
    return profile


def profile_from_yaml(text: str, source: str) -> Profile:
    """A profile from its YAML text, read as strictly as the config (``hal.strict_yaml``: no
    duplicate keys, no YAML 1.1 guesses such as ``010`` for 8), then validated. Raises
    ProfileError with every YAML problem, or with the schema's."""
    try:
        read = read_strict_yaml(text)
    except YamlSyntaxError as exc:
        raise ProfileError([f"YAML: {exc}"], source) from None
    if read.problems:
        raise ProfileError([p.render(top="profile") for p in read.problems], source)
    return parse_profile(read.data, source)
