"""The charger driver registry: how a protocol other than Modbus joins load management.

A driver brings two things: the type of its charger entries in the config (a subclass of
``controller.config.Loadpoint`` with its own connection keys, selected by the ``model:`` values
it claims), and a builder that turns such an entry into a ``controller.hardware.DeviceHandle``
whose device implements ``hal.types.Charger`` and whose ``group`` names the worker that does its
I/O. Nothing else in the controller changes: the loop, the allocation, the status, the API and
the formulas see a charger. Modbus is the built-in driver (every ``model:`` not claimed here
names a Modbus profile). See docs/architecture.md, "Adding a protocol".
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.build import CHARGER_BUILDERS, ChargerBuilder
from controller.config import CHARGER_MODELS, Loadpoint


def register_charger_driver(*, models: Iterable[str], config: type[Loadpoint], build: ChargerBuilder) -> None:
    """Make ``model: <one of models>`` a charger of this driver. Raises ValueError on a clash."""
    models = tuple(models)
    taken = [m for m in models if m in CHARGER_MODELS and CHARGER_MODELS[m] is not config]
    if taken:
        raise ValueError(f"models already claimed by another driver: {', '.join(taken)}")
    for model in models:
        CHARGER_MODELS[model] = config
    CHARGER_BUILDERS[config] = build


def unregister_charger_driver(*, models: Iterable[str], config: type[Loadpoint]) -> None:
    """Undo :func:`register_charger_driver` (tests)."""
    for model in models:
        if CHARGER_MODELS.get(model) is config:
            del CHARGER_MODELS[model]
    CHARGER_BUILDERS.pop(config, None)


# The built-in drivers of other protocols register themselves on import; ``controller/build.py``
# imports this module, so any build knows them. At the end: they use the functions above.
from controller import ocpp_wiring  # noqa: E402,F401
