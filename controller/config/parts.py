"""The parts of a config that validated, field by field, for the checks that span sections.

``gridcharge check-config`` reports every error of a file in one run. The schema reports each bad
field; the checks that span sections (a duplicate unit on a bus, a rule naming an unknown charger,
a formula naming an undeclared variable, a Heidelberg box on a 9600 baud bus) must still run on
everything else. So a section or entry that fails validation is validated again without its bad
fields (their defaults stand in), and the paths of those fields are kept in ``Parts.broken``: a
check that compares a field with another skips a field that is broken, so a bad value never
causes a second, misleading message. An entry whose required field is broken gets a neutral
stand-in for it (also marked broken) where one exists; otherwise the entry is left out, but its
name still counts as present, so references to it are not reported as unknown.

It is separate from the checks because it knows pydantic's errors and nothing about what a
config means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from controller import formulas
from controller.config.problems import Loc
from controller.config.schema import (
    BUS_MODELS,
    AbsPath,
    Loadpoint,
    Config,
    GpioInputConfig,
    Http,
    MaxVariables,
    MeterConfig,
    ModbusInputConfig,
    Mqtt,
    OcppServer,
    Rule,
    Site,
    OcppBackend,
    Smgw,
    VariableValue,
    charger_model,
    input_kind,
)
from controller.records.variables import DEFAULT_MAX_VARIABLES

SECTIONS = ("buses", "meters", "chargers", "inputs", "variables")


@dataclass
class Parts:
    """The sections that validated, entry by entry and field by field (see the module text)."""

    site: Site | None
    http: Http | None
    smgw: Smgw | None
    ocpp: OcppServer | None
    buses: dict[str, Any]
    meters: dict[str, MeterConfig]
    chargers: dict[str, Loadpoint]
    inputs: dict[str, Any]
    variables: dict[str, Any]
    rules: dict[int, Rule]
    present: dict[str, frozenset[str]]  # raw keys per section: what exists, valid or not
    max_variables: int | None = None  # None: the value given is invalid (reported by the schema)
    state_dir: Path | None = None
    ocpp_backend: OcppBackend | None = None
    broken: frozenset[Loc] = field(default_factory=frozenset)  # fields whose default stands in
    mqtt: Mqtt | None = None

    def intact(self, path: Loc, *names: str) -> bool:
        """True when none of the fields ``names`` of the entry at ``path`` is broken."""
        return not any(path + (name,) in self.broken for name in names)

    def whole(self, path: Loc) -> bool:
        """True when no field of the entry at ``path`` is broken, an unknown key included (a
        misspelt ``paritty:`` means the parity in force is not the one the installer meant)."""
        return not any(loc[: len(path)] == path for loc in self.broken)

    @classmethod
    def of(cls, cfg: Config) -> Parts:
        present = {s: frozenset(getattr(cfg, s)) for s in SECTIONS}
        return cls(cfg.site, cfg.http, cfg.smgw, cfg.ocpp, cfg.buses, cfg.meters, cfg.chargers, cfg.inputs,
                   cfg.variables, dict(enumerate(cfg.rules)), present, cfg.max_variables, cfg.state_dir,
                   cfg.ocpp_backend, mqtt=cfg.mqtt)

    @classmethod
    def salvage(cls, data: Mapping[str, Any]) -> Parts:
        """What can be used of a config that did not validate as a whole."""
        broken: set[Loc] = set()
        sections = {name: data.get(name) for name in SECTIONS}
        present = {n: frozenset(k for k in s if isinstance(k, str)) if isinstance(s, Mapping) else frozenset()
                   for n, s in sections.items()}
        variables = {}
        for name, value in _items(sections["variables"]):
            try:
                variables[name] = _VARIABLE.validate_python(value)
            except ValidationError:
                broken.add(("variables", name))
        parts = cls(
            site=_salvage(Site, data.get("site"), ("site",), broken),
            http=_salvage(Http, data.get("http"), ("http",), broken),
            smgw=_salvage(Smgw, data.get("smgw"), ("smgw",), broken),
            ocpp=_salvage(OcppServer, data.get("ocpp"), ("ocpp",), broken),
            buses=_entries(sections["buses"], "buses", _bus_model, broken),
            meters=_entries(sections["meters"], "meters", lambda _: MeterConfig, broken),
            chargers=_entries(sections["chargers"], "chargers", charger_model, broken),
            inputs=_entries(sections["inputs"], "inputs", _input_model, broken),
            variables=variables,
            rules=_entries(data.get("rules"), "rules", lambda _: Rule, broken),
            present=present,
            max_variables=_valid(_MAX_VARIABLES, data.get("max_variables", DEFAULT_MAX_VARIABLES)),
            state_dir=_valid(_STATE_DIR, data.get("state_dir", Config.model_fields["state_dir"].default)),
            ocpp_backend=_salvage(OcppBackend, data.get("ocpp_backend"), ("ocpp_backend",), broken),
            mqtt=_salvage(Mqtt, data.get("mqtt"), ("mqtt",), broken),
        )
        parts.broken = frozenset(broken)
        return parts


_VARIABLE: TypeAdapter[Any] = TypeAdapter(VariableValue)
_MAX_VARIABLES: TypeAdapter[Any] = TypeAdapter(MaxVariables)
_STATE_DIR: TypeAdapter[Any] = TypeAdapter(AbsPath)

#: Neutral values for required fields, so that one bad field does not hide the cross checks of
#: the rest of its section. Marked broken: no check reads them. Other required fields (a bus's
#: type, port or host) leave their entry out.
_STAND_INS: dict[tuple[type[BaseModel], str], Any] = {
    (Site, "main_fuse_a"): 1.0,
    (Rule, "name"): "?",
    (GpioInputConfig, "gpio"): 0,
    (Smgw, "cert"): "/", (Smgw, "key"): "/", (Smgw, "client_ca"): "/",
    (Mqtt, "host"): "localhost",
}


def _items(raw: Any, *, listed: bool = False) -> Iterable[tuple[Any, Any]]:
    """A mapping's items, or a list's (index, item) pairs when ``listed``; else nothing."""
    if listed:
        return enumerate(raw) if isinstance(raw, list) else ()
    return raw.items() if isinstance(raw, Mapping) else ()


def _entries(raw: Any, section: str, pick: Callable[[Any], type[BaseModel] | None],
             broken: set[Loc]) -> dict[Any, Any]:
    result = {}
    for key, value in _items(raw, listed=section == "rules"):
        model = pick(value)
        entry = _salvage(model, value, (section, key), broken) if model is not None else None
        if entry is not None:
            result[key] = entry
    return result


def _bus_model(raw: Any) -> type[BaseModel] | None:
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    return BUS_MODELS.get(kind) if isinstance(kind, str) else None


def _input_model(raw: Any) -> type[BaseModel]:
    return GpioInputConfig if input_kind(raw) == "gpio" else ModbusInputConfig


def _valid(adapter: TypeAdapter[Any], raw: Any) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError:
        return None


def _salvage(model: type[BaseModel], raw: Any, path: Loc, broken: set[Loc]) -> Any:
    """``raw`` validated as ``model`` without its bad fields, or None when that is not possible;
    the bad fields' paths are added to ``broken``."""
    if not isinstance(raw, Mapping):
        return None
    data = dict(raw)
    replaced: set[str] = set()
    while True:  # every round drops or replaces at least one key, or gives up
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            keys = {error["loc"][0] if error["loc"] else None for error in exc.errors()}
        if None in keys:  # the entry as a whole is wrong, not one of its fields
            return None
        for key in keys:
            if not isinstance(key, str):
                return None  # an index into a list, not a field: the entry as a whole is wrong
            broken.add(path + (key,))
            info = model.model_fields.get(key)
            if info is None or not info.is_required():
                if key not in data:
                    return None  # nothing left to drop: give up rather than loop
                del data[key]  # an unknown key, or the default stands in
            elif (model, key) in _STAND_INS and key not in replaced:
                data[key] = _STAND_INS[(model, key)]
                replaced.add(key)
            else:
                return None


# --------------------------------------------------------------------------- formulas


def formula_fields(parts: Parts) -> Iterator[tuple[Loc, Any]]:
    """Every formula of the config with its path (constants included)."""
    if parts.site is not None:
        yield ("site", "grid_limit_w"), parts.site.grid_limit_w
        yield ("site", "chargers_limit_w"), parts.site.chargers_limit_w
    for charger_id, charger in parts.chargers.items():
        yield ("chargers", charger_id, "max_current_a"), charger.max_current_a
    for index, rule in parts.rules.items():
        for name in ("when", "max_current_a", "max_power_w"):
            yield ("rules", index, name), getattr(rule, name)
    for name, value in parts.variables.items():
        yield ("variables", name), value


def compiled_formulas(parts: Parts) -> Iterator[tuple[Loc, formulas.Formula]]:
    """Every formula string of the config, compiled, with its path."""
    for path, value in formula_fields(parts):
        if isinstance(value, str):
            try:
                yield path, formulas.compile_formula(value)
            except formulas.FormulaError:
                pass  # already reported by the field's own validation
