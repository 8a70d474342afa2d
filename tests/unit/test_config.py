"""Tests of controller/config/: the docs/configuration.md example passes; every class of mistake is reported
with its exact path; all mistakes of a file are reported together; YAML 1.1 traps are errors."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.formulas.symbols import DEVICE_VALUES
from controller.config import (
    Config,
    ConfigError,
    GpioInputConfig,
    ModbusChargerConfig,
    ModbusInputConfig,
    RtuBus,
    TcpBus,
    config_warnings,
    all_buses,
    device_profile,
    devices_on_bus,
    implicit_buses,
    load_config,
    modbus_devices,
    parse_config,
    split_listen,
)
from hal.modbus.profile import PROFILE_NAMES

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]
FULL_EXAMPLE = DATA / "full_example.yaml"
DEPLOY_EXAMPLE = REPO / "deploy" / "config.example.yaml"
FULL_TEXT = FULL_EXAMPLE.read_text(encoding="utf-8")
BASE: dict[str, Any] = yaml.safe_load(FULL_TEXT)

CUSTOM_METER_PROFILE = {
    "model": "my_meter",
    "kind": "meter",
    "word_order": "big",
    "values": {
        "power_w": {"table": "input", "address": 0x0C, "type": "float32"},
        "current_l1_a": {"table": "input", "address": 0x06, "type": "float32"},
    },
}


def changed(*edits: tuple[str, Any]) -> dict[str, Any]:
    """A deep copy of the full example with ``("a.b.c", value)`` edits; value DELETE removes."""
    data = copy.deepcopy(BASE)
    for path, value in edits:
        data = _edited(data, path, value)
    return data


def _edited(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list) and last == len(node):
        node.append(value)
    else:
        node[last] = value
    return data


DELETE = object()


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test")
    return info.value.errors


def yaml_errors(tmp_path: Path, text: str) -> list[str]:
    file = tmp_path / "config.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.source == str(file)
    return info.value.errors


def spec_text_with(old: str, new: str) -> str:
    assert FULL_TEXT.count(old) == 1, old
    return FULL_TEXT.replace(old, new)


# --------------------------------------------------------------------------- the examples pass


def test_full_example_loads_without_errors() -> None:
    cfg = load_config(FULL_EXAMPLE)
    assert isinstance(cfg, Config)
    assert cfg.site.main_fuse_a == 35
    assert cfg.site.grid_limit_w == "55000 * AVAIL / 100"
    assert cfg.site.unbalanced_limit_a == 20
    assert cfg.site.increase_step_a == 2.0 and cfg.site.watchdog_s == 15
    assert cfg.state_dir == Path("/var/lib/gridcharge")
    assert cfg.http is not None and (cfg.http.host, cfg.http.port) == ("0.0.0.0", 80)
    assert cfg.smgw is not None and cfg.smgw.functions == ("vars", "status") and cfg.smgw.port == 8443
    rs485 = cfg.buses["rs485"]
    assert isinstance(rs485, RtuBus)
    assert (rs485.baudrate, rs485.parity, rs485.stopbits, rs485.timeout_s) == (19200, "E", 1, 0.3)
    assert cfg.buses["shed"].type == "rtu-over-tcp" and cfg.buses["shed"].baudrate == 9600
    e1, e2, e3 = cfg.chargers["E1"], cfg.chargers["E2"], cfg.chargers["E3"]
    assert (e1.phases, e1.phase_index, e1.max_current_a, e1.failsafe_current_a) == (3, 0, 16, 6.0)
    assert e2.max_current_a == "32 * AVAIL / 100"
    assert (e3.phases, e3.phase, e3.phase_index, e3.max_current_a, e3.bus_name) == (1, "L2", 1, 16.0, "tcp:192.168.1.51:502")
    rse1, rse2 = cfg.inputs["RSE1"], cfg.inputs["RSE2"]
    assert isinstance(rse1, GpioInputConfig) and rse1.gpio == 17 and rse1.active_low
    assert isinstance(rse2, ModbusInputConfig) and (rse2.model, rse2.table, rse2.index) == ("modbus_io", "discrete", 0)
    assert cfg.variables == {"AVAIL": 100, "TARIF": 0}
    assert len(cfg.rules) == 1 and cfg.rules[0].chargers == ("E1",) and cfg.rules[0].max_current_a == 0
    assert cfg.device_ids == {"M1", "E1", "E2", "E3", "RSE1", "RSE2"}


def test_deploy_example_loads_without_errors() -> None:
    cfg = load_config(DEPLOY_EXAMPLE)
    assert cfg.chargers and cfg.meters and cfg.site.grid_meter in cfg.meters


def test_deploy_example_custom_device_block_is_valid(tmp_path: Path) -> None:
    """The commented custom-device example in the deploy file works once uncommented."""
    lines = DEPLOY_EXAMPLE.read_text(encoding="utf-8").splitlines()
    stripped = [line.strip() for line in lines]
    start = stripped.index("# --- custom device: uncomment from here ---")
    end = stripped.index("# --- custom device: to here ---")
    lines[start + 1 : end] = [re.sub(r"^(\s*)# ?", r"\1", line) for line in lines[start + 1 : end]]
    cfg = load_config(_write(tmp_path, "\n".join(lines) + "\n"))
    custom = [m for m in cfg.meters.values() if m.profile is not None]
    assert custom and device_profile(custom[0]).kind == "meter"


def _write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "config.yaml"
    file.write_text(text, encoding="utf-8")
    return file


def test_minimal_config_takes_the_documented_defaults() -> None:
    cfg = parse_config({"site": {"main_fuse_a": 25}})
    site = cfg.site
    assert (site.voltage_v, site.unbalanced_limit_a, site.min_pause_s, site.stale_s) == (230, 20, 60, 5)
    assert (site.failsafe_limit_w, site.cycle_s, site.increase_step_a, site.watchdog_s) == (4200, 1.0, 2.0, 15)
    assert site.grid_limit_w is None and site.chargers_limit_w is None and site.grid_meter is None
    assert cfg.http is None and cfg.smgw is None and cfg.rules == () and cfg.buses == {}
    assert cfg.max_variables == 1000
    assert cfg.grid_log.max_bytes == 1_000_000_000
    assert parse_config({"site": {"main_fuse_a": 25}, "grid_log": {"max_bytes": 2_000_000}}).grid_log.max_bytes == 2_000_000


def test_unbalanced_limit_can_be_switched_off() -> None:
    assert parse_config({"site": {"main_fuse_a": 25, "unbalanced_limit_a": None}}).site.unbalanced_limit_a is None


def test_config_is_frozen() -> None:
    cfg = load_config(FULL_EXAMPLE)
    with pytest.raises(Exception):
        cfg.site.main_fuse_a = 63  # type: ignore[misc]


# --------------------------------------------------------------------------- one mistake, one exact path

CASES: list[tuple[str, list[tuple[str, Any]], list[tuple[str, str]]]] = [
    # unknown keys at several depths
    ("unknown top-level key", [("sites", {})], [("sites", "unknown key (did you mean 'site'?)")]),
    ("unknown site key", [("site.main_fuse", 35)], [("site.main_fuse", "did you mean 'main_fuse_a'?")]),
    ("unknown bus key", [("buses.rs485.paritty", "E")], [("buses.rs485.paritty", "did you mean 'parity'?")]),
    ("unknown tcp bus key", [("buses.garage.baudrate", 9600)], [("buses.garage.baudrate", "unknown key")]),
    ("unknown charger key", [("chargers.E1.priorty", 2)], [("chargers.E1.priorty", "did you mean 'priority'?")]),
    ("unknown gpio input key", [("inputs.RSE1.pullup", True)], [("inputs.RSE1.pullup", "did you mean 'pull_up'?")]),
    ("unknown modbus input key", [("inputs.RSE2.gpioo", 3)], [("inputs.RSE2.gpioo", "unknown key")]),
    ("unknown rule key", [("rules.0.chargerz", ["E1"])], [("rules.0.chargerz", "did you mean 'chargers'?")]),
    ("unknown smgw key", [("smgw.functionz", [])], [("smgw.functionz", "did you mean 'functions'?")]),
    ("unknown key lists the allowed", [("http.zzz", 1)], [("http.zzz", "allowed: listen, user, password, password_hash, metrics_auth")]),
    # wrong types and ranges
    ("number as text", [("site.main_fuse_a", "35")], [("site.main_fuse_a", "valid number")]),
    ("bool as number", [("site.cycle_s", True)], [("site.cycle_s", "valid number")]),
    ("float unit", [("chargers.E1.unit", 2.0)], [("chargers.E1.unit", "valid integer")]),
    ("bool phases", [("chargers.E1.phases", True)], [("chargers.E1.phases", "valid integer")]),
    ("phases 2", [("chargers.E1.phases", 2)], [("chargers.E1.phases", "Input should be 1 or 3")]),
    ("odd baudrate", [("buses.rs485.baudrate", 19201)], [("buses.rs485.baudrate", "19200")]),
    ("parity word", [("buses.rs485.parity", "even")], [("buses.rs485.parity", "'N', 'E' or 'O'")]),
    ("negative fuse", [("site.main_fuse_a", -5)], [("site.main_fuse_a", "greater than 0")]),
    ("cycle too short", [("site.cycle_s", 0.01)], [("site.cycle_s", "greater than or equal to 0.1")]),
    ("unit too big", [("chargers.E2.unit", 300)], [("chargers.E2.unit", "less than or equal to 255")]),
    ("gpio too big", [("inputs.RSE1.gpio", 40)], [("inputs.RSE1.gpio", "less than or equal to 27")]),
    ("section not a mapping", [("site", [1, 2])], [("site", "must be a mapping")]),
    ("rules not a list", [("rules", {"a": 1})], [("rules", "must be a list")]),
    ("unknown bus type", [("buses.shed.type", "udp")], [("buses.shed.type", "unknown bus type 'udp'")]),
    ("missing bus type", [("buses.shed.type", DELETE)], [("buses.shed.type", "required, but missing")]),
    ("relative state_dir", [("state_dir", "state")], [("state_dir", "absolute path")]),
    ("serial port not a path", [("buses.rs485.port", "COM3")], [("buses.rs485.port", "absolute path")]),
    ("host is a URL", [("buses.garage.host", "http://192.168.1.50")], [("buses.garage.host", "not a host name")]),
    ("listen without port", [("http.listen", "0.0.0.0")], [("http.listen", "host:port")]),
    ("listen port in other digits", [("http.listen", "0.0.0.0:\u0668\u0660")], [("http.listen", "host:port")]),
    ("smgw function unknown", [("smgw.functions", ["vars", "root"])], [("smgw.functions.1", "'vars', 'status', 'admin' or 'ocpp'")]),
    ("smgw functions empty", [("smgw.functions", [])], [("smgw.functions", "is empty")]),
    ("nan", [("site.failsafe_limit_w", float("nan"))], [("site.failsafe_limit_w", "finite number")]),
    ("min current below IEC", [("chargers.E1.min_current_a", 5)], [("chargers.E1.min_current_a", "must be at least 6 A: IEC 61851")]),
    ("fail-safe between 0 and 6", [("chargers.E1.failsafe_current_a", 3)], [("chargers.E1.failsafe_current_a", "0 (stop) or at least 6 A")]),
    # missing required fields
    ("missing fuse", [("site.main_fuse_a", DELETE)], [("site.main_fuse_a", "required, but missing")]),
    ("missing site", [("site", DELETE)], [("site", "required, but missing")]),
    ("missing tls cert", [("smgw.cert", DELETE)], [("smgw.cert", "required, but missing")]),
    ("missing serial port", [("buses.rs485.port", DELETE)], [("buses.rs485.port", "required, but missing")]),
    ("missing rule name", [("rules.0.name", DELETE)], [("rules.0.name", "required, but missing")]),
    ("missing gpio", [("inputs.RSE1", {"pull_up": True})], [("inputs.RSE1.gpio", "required, but missing")]),
    # formulas
    ("bad formula", [("chargers.E2.max_current_a", "32 * (AVAIL")], [("chargers.E2.max_current_a", "formula does not parse")]),
    ("forbidden formula", [("site.grid_limit_w", "__import__('os')")], [("site.grid_limit_w", "")]),
    ("bad variable formula", [("variables.TARIF", "1 +")], [("variables.TARIF", "formula does not parse")]),
    ("bad rule condition", [("rules.0.when", "TARIF ==")], [("rules.0.when", "formula does not parse")]),
    ("bool as a limit", [("site.grid_limit_w", True)], [("site.grid_limit_w", "not true/false")]),
    ("negative limit", [("chargers.E1.max_current_a", -1)], [("chargers.E1.max_current_a", "must not be negative")]),
    ("negative limit in quotes", [("rules.0.max_current_a", "-5")], [("rules.0.max_current_a", "must not be negative")]),
    ("bool limit in quotes", [("site.chargers_limit_w", "True")], [("site.chargers_limit_w", "not true/false")]),
    ("attribute of no device", [("site.grid_limit_w", "55000 - M9.power_w")], [("site.grid_limit_w", "'M9.power_w': no device named 'M9'")]),
    ("variable cycle", [("variables.A", "B + 1"), ("variables.B", "A * 2")], [("variables", "dependency cycle: A -> B -> A")]),
    ("self reference", [("variables.AVAIL", "AVAIL + 1")], [("variables", "dependency cycle")]),
    ("more variables than max_variables", [("max_variables", 1)], [("variables", "2 variables, more than max_variables (1)")]),
    ("max_variables zero", [("max_variables", 0)], [("max_variables", "greater than or equal to 1")]),
    ("max_variables too big", [("max_variables", 5001)], [("max_variables", "less than or equal to 5000")]),
    ("max_variables as text", [("max_variables", "1000")], [("max_variables", "valid integer")]),
    ("max_variables as float", [("max_variables", 1000.0)], [("max_variables", "valid integer")]),
    ("variable beyond 1e15", [("variables.TARIF", 1e16)], [("variables.TARIF", "number too large: 1e+16 (at most ±1e15)")]),
    ("limit beyond 1e15", [("site.grid_limit_w", 2 * 10**15)], [("site.grid_limit_w", "number too large: 2000000000000000")]),
    ("constant beyond 1e15 in a formula", [("site.grid_limit_w", "AVAIL * 1e16")], [("site.grid_limit_w", "number too large")]),
    ("digits of another script", [("variables.TARIF", "\u0661")], [("variables.TARIF", "digit '\u0661' (U+0661) is not allowed")]),
    # cross-references
    ("unknown bus", [("chargers.E2.bus", "garagee")], [("chargers.E2.bus", "no bus named 'garagee' (buses: garage, rs485, shed)")]),
    ("unknown input bus", [("inputs.RSE2.bus", "rs458")], [("inputs.RSE2.bus", "no bus named 'rs458'")]),
    ("bus and host", [("chargers.E1.host", "10.0.0.9")], [("chargers.E1.host", "either bus or host, not both")]),
    ("neither bus nor host", [("meters.M1.bus", DELETE)], [("meters.M1.bus", "required: give bus")]),
    ("port with bus", [("chargers.E2.port", 503)], [("chargers.E2.port", "only with host")]),
    ("host is a declared bus", [("chargers.E3.host", "192.168.1.50")], [("chargers.E3.host", "is bus 'garage'")]),
    ("rtu unit 0", [("chargers.E1.unit", 0)], [("chargers.E1.unit", "1..247 on an RS485 bus")]),
    ("rtu unit 250 through a gateway", [("buses.shed.host", "192.168.1.60"), ("chargers.E2.bus", "shed"), ("chargers.E2.unit", 250)],
     [("chargers.E2.unit", "1..247 on an RS485 bus")]),
    ("unknown model", [("chargers.E1.model", "heidelburg")], [("chargers.E1.model", "unknown model 'heidelburg' (did you mean 'heidelberg'?)")]),
    ("unknown model, no guess", [("meters.M1.model", "xyz")], [("meters.M1.model", "known: " + ", ".join(PROFILE_NAMES))]),
    ("charger profile for a meter", [("meters.M1.model", "heidelberg")], [("meters.M1.model", "'heidelberg' is a charger profile, but a meter is needed here")]),
    ("meter profile for a charger", [("chargers.E2.model", "sdm630")], [("chargers.E2.model", "'sdm630' is a meter profile, but a charger is needed here")]),
    ("meter profile for an input", [("inputs.RSE2.model", "sdm630")], [("inputs.RSE2.model", "'sdm630' is a meter profile, but an input is needed here")]),
    ("no model", [("meters.M1.model", DELETE)], [("meters.M1.model", "required: give model")]),
    ("model and profile", [("meters.M1.profile", CUSTOM_METER_PROFILE)], [("meters.M1.profile", "either model or profile")]),
    ("grid meter unknown", [("site.grid_meter", "M2")], [("site.grid_meter", "'M2' is not a meter")]),
    ("grid meter is a charger", [("site.grid_meter", "E1")], [("site.grid_meter", "'E1' is a charger, not a meter")]),
    ("duplicate id meter/charger", [("chargers.M1", {"model": "alfen", "host": "10.0.0.7"})], [("chargers.M1", "id 'M1' is already used by meters.M1")]),
    ("variable named like a device", [("variables.E1", 5)], [("variables.E1", "id 'E1' is already used by chargers.E1")]),
    ("input named like a charger", [("inputs.E2", {"gpio": 4})], [("inputs.E2", "already used by chargers.E2")]),
    ("bad id", [("meters.1M", {"model": "sdm630", "bus": "rs485", "unit": 9})], [("meters.1M", "a letter, then")]),
    ("id is a function", [("meters.min", {"model": "sdm630", "bus": "rs485", "unit": 9})], [("meters.min", "a function")]),
    ("bad variable name", [("variables.hour", 5)], [("variables.hour", "a time value")]),
    ("bus name with a colon", [("buses.tcp:x", {"type": "tcp", "host": "h"})], [("buses.tcp:x", "a bus name is a letter")]),
    ("duplicate unit on a bus", [("chargers.E1.unit", 1)], [("chargers.E1.unit", "unit 1 on bus 'rs485' is already meters.M1")]),
    ("duplicate implicit endpoint", [("chargers.E4", {"model": "abb_terra_ac", "host": "192.168.1.51"})],
     [("chargers.E4.unit", "unit 1 on bus 'tcp:192.168.1.51:502' is already chargers.E3")]),
    ("two rtu buses on one port", [("buses.other", {"type": "rtu", "port": "/dev/gridcharge-rs485-0"})],
     [("buses.other.port", "is already bus 'rs485'")]),
    ("two inputs on one pin", [("inputs.RSE3", {"gpio": 17})], [("inputs.RSE3.gpio", "GPIO 17 is already inputs.RSE1")]),
    ("input without index", [("inputs.RSE2.discrete_input", DELETE)], [("inputs.RSE2.discrete_input", "exactly one of discrete_input or coil")]),
    ("input with both", [("inputs.RSE2.coil", 1)], [("inputs.RSE2.discrete_input", "exactly one of discrete_input or coil")]),
    ("rule names unknown charger", [("rules.0.chargers", ["E1", "E9"])], [("rules.0.chargers.1", "no charger named 'E9'")]),
    ("rule with empty chargers", [("rules.0.chargers", [])], [("rules.0.chargers", "leave it out")]),
    ("rule with two caps", [("rules.0.max_power_w", 4200)], [("rules.0.max_current_a", "exactly one of max_current_a or max_power_w")]),
    ("rule without cap", [("rules.0.max_current_a", DELETE)], [("rules.0.max_current_a", "exactly one of")]),
    ("duplicate rule name", [("rules.1", {"name": "charge only at the reduced tariff", "max_power_w": 0})],
     [("rules.1.name", "duplicate rule name")]),
    # charger semantics
    ("phase on a 3-phase charger", [("chargers.E1.phase", "L2")], [("chargers.E1.phase", "only for a 1-phase charger")]),
    ("max below min", [("chargers.E1.max_current_a", 5)], [("chargers.E1.max_current_a", "5 A is below min_current_a (6 A)")]),
    ("max above IEC", [("chargers.E1.max_current_a", 100)], [("chargers.E1.max_current_a", "at most 80 A")]),
    ("fail-safe above max", [("chargers.E1.failsafe_current_a", 20)], [("chargers.E1.failsafe_current_a", "above max_current_a (16 A)")]),
    # site and listeners
    ("stale shorter than a cycle", [("site.stale_s", 0.5)], [("site.stale_s", "at least cycle_s")]),
    ("watchdog too short", [("site.watchdog_s", 1)], [("site.watchdog_s", "at least twice cycle_s")]),
    ("no password", [("http.password", DELETE)], [("http.password", "exactly one of password or password_hash")]),
    ("password and hash", [("http.password_hash", "scrypt:32768:8:1$abc$0123abcd")], [("http.password", "exactly one of")]),
    ("short password", [("http.password", "1234")], [("http.password", "at least 8 characters")]),
    ("password as number", [("http.password", 12345678)], [("http.password", "valid string")]),
    ("bad hash", [("http.password", DELETE), ("http.password_hash", "md5$x$y")], [("http.password_hash", "must be a werkzeug hash")]),
    ("user with colon", [("http.user", "ad:min")], [("http.user", "without ':' or spaces")]),
    ("metrics_auth as text", [("http.metrics_auth", "no")], [("http.metrics_auth", "valid boolean")]),
    ("listeners on one port", [("smgw.listen", "0.0.0.0:80")], [("smgw.listen", "port 80 is already http.listen")]),
    # the grid log's size budget
    ("grid log budget as text", [("grid_log", {"max_bytes": "1 GB"})], [("grid_log.max_bytes", "valid integer")]),
    ("grid log budget as float", [("grid_log", {"max_bytes": 1e9})], [("grid_log.max_bytes", "valid integer")]),
    ("grid log budget as bool", [("grid_log", {"max_bytes": True})], [("grid_log.max_bytes", "valid integer")]),
    ("grid log budget too small", [("grid_log", {"max_bytes": 999_999})], [("grid_log.max_bytes", "greater than or equal to 1000000")]),
    ("grid log budget too large", [("grid_log", {"max_bytes": 2 * 10**12})], [("grid_log.max_bytes", "less than or equal to 1000000000000")]),
    ("grid log key typo", [("grid_log", {"max_byte": 10**9})], [("grid_log.max_byte", "did you mean 'max_bytes'?")]),
    ("grid log not a mapping", [("grid_log", 10**9)], [("grid_log", "")]),
]


@pytest.mark.parametrize("edits, expected", [pytest.param(e, x, id=name) for name, e, x in CASES])
def test_each_mistake_is_reported_at_its_exact_path(edits: list[tuple[str, Any]], expected: list[tuple[str, str]]) -> None:
    errors = errors_of(changed(*edits))
    assert len(errors) == len(expected), errors
    for error, (path, fragment) in zip(errors, expected):
        assert error.startswith(f"{path}: "), (error, path)
        assert fragment in error, (error, fragment)


def test_valid_alternatives_pass() -> None:
    cfg = parse_config(changed(
        ("http.password", DELETE),
        ("http.password_hash", "scrypt:32768:8:1$k1aT9$0123456789abcdef"),
        ("http.listen", "[::]:8080"),
        ("chargers.E3.port", 5020),
        ("chargers.E1.failsafe_current_a", 0),
        ("chargers.E1.max_current_a", "clamp(32 - M1.current_a[0], 0, 16)"),
        ("inputs.RSE2.discrete_input", DELETE),
        ("inputs.RSE2.coil", 3),
        ("rules.0.max_current_a", DELETE),
        ("rules.0.max_power_w", "RSE1 ? 4200 : 11000"),
        ("rules.0.when", True),
        ("variables.LIMIT", "AVAIL > 50 && TARIF == 0"),
        ("variables.FLAG", False),
        ("variables._tmp", 1.5),
        ("site.grid_limit_w", 30000),
        ("meters.M2", {"profile": CUSTOM_METER_PROFILE, "host": "10.0.0.8", "unit": 255}),
    ))
    assert cfg.http is not None and (cfg.http.host, cfg.http.port) == ("::", 8080)
    assert cfg.chargers["E3"].bus_name == "tcp:192.168.1.51:5020"
    rse2 = cfg.inputs["RSE2"]
    assert isinstance(rse2, ModbusInputConfig) and (rse2.table, rse2.index) == ("coil", 3)
    assert device_profile(cfg.meters["M2"], "meters.M2").kind == "meter"


@pytest.mark.parametrize("method", ["scrypt", "pbkdf2"])
def test_werkzeug_password_hashes_are_accepted(method: str) -> None:
    from werkzeug.security import generate_password_hash

    password_hash = generate_password_hash("a long password", method=method)
    cfg = parse_config(changed(("http.password", DELETE), ("http.password_hash", password_hash)))
    assert cfg.http is not None and cfg.http.password_hash == password_hash and cfg.http.password is None


def test_password_is_not_in_the_repr() -> None:
    assert "1234abcd" not in repr(load_config(FULL_EXAMPLE))


# --------------------------------------------------------------------------- inline profiles


def test_inline_profile_errors_carry_the_config_path() -> None:
    broken = {**CUSTOM_METER_PROFILE, "values": {"power_w": {"table": "input", "address": 12, "type": "flaot32"}}}
    errors = errors_of(changed(("meters.M1.model", DELETE), ("meters.M1.profile", broken)))
    assert errors and all(e.startswith("meters.M1.profile.") for e in errors), errors
    assert any(e.startswith("meters.M1.profile.values.power_w.type: ") and "flaot32" in e for e in errors), errors


def test_inline_profile_of_the_wrong_kind() -> None:
    errors = errors_of(changed(("chargers.E2.model", DELETE), ("chargers.E2.profile", CUSTOM_METER_PROFILE)))
    assert errors == ["chargers.E2.profile.kind: is 'meter', but a charger is needed here"]


def test_input_index_beyond_the_module() -> None:
    count = device_profile(load_config(FULL_EXAMPLE).inputs["RSE2"]).inputs.count  # type: ignore[arg-type,union-attr]
    errors = errors_of(changed(("inputs.RSE2.discrete_input", count)))
    assert errors == [f"inputs.RSE2.discrete_input: {count} is beyond the {count} inputs of 'modbus_io' (counted from 0)"]


# --------------------------------------------------------------------------- all errors together


def test_three_mistakes_give_three_messages_sorted_by_path() -> None:
    errors = errors_of(changed(
        ("site.main_fuse_a", "35"),  # wrong type (pydantic)
        ("chargers.E2.bus", "garagee"),  # unknown bus (cross-reference)
        ("buses.rs485.paritty", "E"),  # unknown key (pydantic)
    ))
    assert [e.split(":")[0] for e in errors] == ["buses.rs485.paritty", "chargers.E2.bus", "site.main_fuse_a"]


def test_cross_checks_still_run_when_other_items_are_broken() -> None:
    errors = errors_of(changed(
        ("chargers.E1.unit", "two"),  # E1 broken: its own cross checks are skipped
        ("chargers.E2.bus", "nope"),
        ("rules.0.chargers", ["E1", "E7"]),  # E1 exists (though broken): only E7 is reported
        ("variables.A", "B"), ("variables.B", "A"),
        ("site.grid_meter", "M7"),
    ))
    paths = [e.split(": ")[0] for e in errors]
    assert paths == ["chargers.E1.unit", "chargers.E2.bus", "rules.0.chargers.1", "site.grid_meter", "variables"], errors


def test_variable_count_is_checked_when_another_section_is_broken() -> None:
    errors = errors_of(changed(("chargers.E1.unit", "two"), ("max_variables", 1)))
    assert [e.split(": ")[0] for e in errors] == ["chargers.E1.unit", "variables"], errors
    assert "2 variables, more than max_variables (1)" in errors[1]
    errors = errors_of(changed(("chargers.E1.unit", "two"), ("max_variables", "1")))  # its own error only
    assert [e.split(": ")[0] for e in errors] == ["chargers.E1.unit", "max_variables"], errors


def test_a_broken_bus_is_not_also_a_missing_bus() -> None:
    errors = errors_of(changed(("buses.rs485.baudrate", 1000)))
    assert [e.split(":")[0] for e in errors] == ["buses.rs485.baudrate"]


def test_paths_sort_numerically() -> None:
    rules = [{"name": f"r{i}", "max_current_a": 6, "chargers": ["X"]} for i in range(12)]
    errors = errors_of(changed(("rules", rules)))
    assert [e.split(":")[0] for e in errors] == [f"rules.{i}.chargers.0" for i in range(12)]


def test_config_error_text_lists_everything() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(changed(("site.main_fuse_a", DELETE), ("chargers.E2.bus", "x")), source="my.yaml")
    assert str(info.value).splitlines() == [
        "my.yaml: 2 errors",
        "  chargers.E2.bus: no bus named 'x' (buses: garage, rs485, shed)",
        "  site.main_fuse_a: required, but missing",
    ]


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "old, new, path, fragment",
    [
        ("pull_up: true", "pull_up: no", "inputs.RSE1.pull_up", "'no' is read by YAML as false: write false"),
        ("active_low: true", "active_low: on", "inputs.RSE1.active_low", "'on' is read by YAML as true"),
        ('password: "1234abcd"', "password: off", "http.password", '"off" in quotes for text'),
        ("unit: 2, phases: 3", "unit: 010, phases: 3", "chargers.E1.unit", "010 is read by YAML as the octal number 8: write 8, or 10"),
        ("gpio: 17", "gpio: 017", "inputs.RSE1.gpio", "octal number 15"),
        ("TARIF: 0", "TARIF: 0755", "variables.TARIF", "octal number 493"),
        ("min_pause_s: 60", "min_pause_s: 1:30", "site.min_pause_s", "1:30 is read by YAML as 90 (base 60)"),
        ("  AVAIL: 100", "  AVAIL: 100\n  ON: 1", "variables.ON", "'ON' is read by YAML as true"),
    ],
)
def test_yaml_11_guesses_are_errors_with_their_path(tmp_path: Path, old: str, new: str, path: str, fragment: str) -> None:
    errors = yaml_errors(tmp_path, spec_text_with(old, new))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: ") and fragment in errors[0], errors
    assert "(line " in errors[0]


def test_quoted_and_explicit_values_are_fine(tmp_path: Path) -> None:
    text = spec_text_with('password: "1234abcd"', "password: 'no-no-no-no'")
    text = text.replace("unit: 2, phases: 3", "unit: 0x02, phases: 3").replace("pull_up: true", "pull_up: false")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.chargers["E1"].unit == 2 and cfg.http is not None and cfg.http.password == "no-no-no-no"


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    errors = yaml_errors(tmp_path, "site:\n  main_fuse_a: 35\n  voltage_v: [230\n")
    assert len(errors) == 1 and errors[0].startswith("line 4, column 1: "), errors


def test_yaml_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    errors = yaml_errors(tmp_path, "site:\n\tmain_fuse_a: 35\n")
    assert errors[0].startswith("line 2, column 1: "), errors


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    text = spec_text_with("  E3: {", "  E1: {model: alfen, host: 10.0.0.3}\n  E3: {")
    errors = yaml_errors(tmp_path, text)
    assert len(errors) == 1 and errors[0].startswith("chargers.E1: duplicate key (line "), errors


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = FULL_TEXT.replace("chargers:\n", "x-box: &box {model: alfen, bus: garage}\nchargers:\n", 1)
    errors = yaml_errors(tmp_path, text)
    assert errors == ["x-box: unknown key (allowed: site, state_dir, grid_log, http, smgw, ocpp, ocpp_backend, buses, meters, chargers, inputs, variables, rules, max_variables, mqtt)"]
    text = FULL_TEXT.replace("  E3: {", "  E4: {<<: {model: alfen, bus: garage}, unit: 2}\n  E3: {")
    assert load_config(_write(tmp_path, text)).chargers["E4"].model == "alfen"


@pytest.mark.parametrize("text, fragment", [
    ("", "not empty"), ("# only a comment\n", "not empty"), ("- a\n- b\n", "not a list"), ("42\n", "not a number"), ("just text\n", "not text"),
])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    errors = yaml_errors(tmp_path, text)
    assert len(errors) == 1 and errors[0].startswith("top level: must be a mapping"), errors
    assert errors[0].endswith(f", {fragment}"), errors


def test_non_mapping_from_python() -> None:
    assert errors_of([1, 2]) == ["top level: must be a mapping of sections (site:, buses:, ...), not a list"]


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.errors[0].startswith("top level: cannot read the file")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"site: {main_fuse_a: 35}\n# K\xf6ln\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.errors == ["line 2: not UTF-8 text (save the file as UTF-8)"]


def test_python_tags_are_refused(tmp_path: Path) -> None:
    errors = yaml_errors(tmp_path, "site: !!python/object:os.system {}\n")
    assert len(errors) == 1 and errors[0].startswith("line 1, column 7: "), errors


# --------------------------------------------------------------------------- helpers for the rest of the code


def test_buses_and_devices_on_them() -> None:
    cfg = load_config(FULL_EXAMPLE)
    implicit = implicit_buses(cfg)
    assert list(implicit) == ["tcp:192.168.1.51:502"]
    bus = implicit["tcp:192.168.1.51:502"]
    assert isinstance(bus, TcpBus) and (bus.host, bus.port) == ("192.168.1.51", 502)
    assert set(all_buses(cfg)) == {"rs485", "garage", "shed", "tcp:192.168.1.51:502"}
    assert devices_on_bus(cfg) == {"rs485": ("M1", "E1", "RSE2"), "garage": ("E2",), "tcp:192.168.1.51:502": ("E3",)}
    assert [d for d, _ in modbus_devices(cfg)] == ["M1", "E1", "E2", "E3", "RSE2"]


@pytest.mark.parametrize("phase, index", [("L1", 0), ("L2", 1), ("L3", 2)])
def test_phase_index(phase: str, index: int) -> None:
    charger = ModbusChargerConfig.model_validate({"model": "alfen", "host": "10.0.0.1", "phases": 1, "phase": phase})
    assert charger.phase_index == index


@pytest.mark.parametrize(
    "listen, expected",
    [("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8443", ("::1", 8443)), ("localhost:8080", ("localhost", 8080))],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0", "0.0.0.0:0", "0.0.0.0:99999", ":80x", "a b:80"])
def test_split_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        split_listen(listen)


def test_json_schema_for_the_web_ui() -> None:
    schema = Config.model_json_schema()
    assert "site" in schema["properties"] and schema["additionalProperties"] is False


# --------------------------------------------------------------------------- warnings


def test_warnings_for_what_this_machine_lacks(tmp_path: Path) -> None:
    cfg = load_config(FULL_EXAMPLE)
    warnings = config_warnings(cfg, gpiochip_glob=str(tmp_path / "gpiochip*"))
    assert "buses.rs485.port: /dev/gridcharge-rs485-0 does not exist on this machine" in warnings
    assert "smgw.cert: /etc/gridcharge/tls/cm.pem does not exist on this machine" in warnings
    assert "smgw.client_ca: /etc/gridcharge/tls/smgw-ca.pem does not exist on this machine" in warnings
    assert any(w.startswith("inputs.RSE1.gpio: this machine has no GPIO chip") for w in warnings)
    assert not any(w.startswith("inputs.RSE2") for w in warnings)  # a Modbus input needs no GPIO
    assert not any(w.startswith("variables") or w.startswith("site.grid_limit_w") for w in warnings)  # AVAIL is defined


def test_no_warnings_when_everything_is_there(tmp_path: Path) -> None:
    for name in ("cm.pem", "cm.key", "ca.pem", "ttyUSB0", "gpiochip0"):
        (tmp_path / name).write_text("x")
    cfg = parse_config(changed(
        ("smgw.cert", str(tmp_path / "cm.pem")), ("smgw.key", str(tmp_path / "cm.key")),
        ("smgw.client_ca", str(tmp_path / "ca.pem")), ("buses.rs485.port", str(tmp_path / "ttyUSB0")),
        ("state_dir", str(tmp_path / "state" / "deeper")),
    ))
    assert config_warnings(cfg, gpiochip_glob=str(tmp_path / "gpiochip*")) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_state_dir_is_a_warning(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cfg = parse_config(changed(("state_dir", str(locked / "state"))))
    warnings = config_warnings(cfg, gpiochip_glob="/nonexistent*")
    assert f"state_dir: {locked / 'state'} is not writable by this user" in warnings


def test_unwritable_state_dir_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    cfg = parse_config(changed(("state_dir", str(tmp_path / "state"))))
    warnings = config_warnings(cfg, gpiochip_glob="/nonexistent*")
    assert f"state_dir: {tmp_path / 'state'} is not writable by this user" in warnings


def test_no_chargers_is_a_warning() -> None:
    cfg = parse_config(changed(("chargers", {}), ("rules", [])))
    assert "chargers: none configured" in config_warnings(cfg, gpiochip_glob="/*")


def test_three_yaml_mistakes_give_three_messages(tmp_path: Path) -> None:
    text = spec_text_with("pull_up: true", "pull_up: no")
    text = text.replace("bus: garage, unit: 1", "bus: garagee, unit: 1").replace("parity: E,", "paritty: E,")
    errors = yaml_errors(tmp_path, text)
    assert [e.split(": ")[0] for e in errors] == ["buses.rs485.paritty", "chargers.E2.bus", "inputs.RSE1.pull_up"], errors


# --------------------------------------------------------------------------- names in formulas

DECLARE = "a variable set later over the API must be declared under variables: with its starting value"


@pytest.mark.parametrize("path", [
    "site.grid_limit_w", "site.chargers_limit_w", "chargers.E2.max_current_a", "rules.0.when", "rules.0.max_current_a",
    "variables.TARIF",
])
def test_an_unknown_name_is_an_error_in_every_formula(path: str) -> None:
    errors = errors_of(changed((path, "55000 * AVIAL / 100")))
    assert errors == [f"{path}: unknown name 'AVIAL' (did you mean 'AVAIL'?); {DECLARE}"]


def test_unknown_name_in_a_rules_power_cap() -> None:
    errors = errors_of(changed(("rules.0.max_current_a", DELETE), ("rules.0.max_power_w", "tarif * 1000")))
    assert errors == [f"rules.0.max_power_w: unknown name 'tarif' (did you mean 'TARIF'?); {DECLARE}"]


def test_an_unknown_name_without_a_close_one() -> None:
    assert errors_of(changed(("site.grid_limit_w", "SOLAR_SURPLUS"))) == [
        f"site.grid_limit_w: unknown name 'SOLAR_SURPLUS'; {DECLARE}"]


@pytest.mark.parametrize("formula, reason", [
    ("M1", "'M1' is a meter: read one of its values, e.g. M1.power_w"),
    ("E1 * 2", "'E1' is a charger: read one of its values, e.g. E1.power_w"),
    ("M1.powr_w", "unknown name 'M1.powr_w' (did you mean 'M1.power_w'?): a meter has online, power_w, current_a"),
    ("E1.stat == 3", "unknown name 'E1.stat' (did you mean 'E1.state'?): a charger has online, state, charging"),
    ("M1.zzz", "unknown name 'M1.zzz': a meter has online, power_w"),
    ("RSE1.online", "unknown name 'RSE1.online': RSE1 is an input, read it alone (RSE1 is 1 when active, 0 when not)"),
    ("AVAIL.value", "unknown name 'AVAIL.value': AVAIL is a variable; only devices have values after a dot"),
    ("M2.power_w", "unknown name 'M2.power_w': no device named 'M2' (did you mean 'M1.power_w'?)"),
    ("ZZ9.power_w", "unknown name 'ZZ9.power_w': no device named 'ZZ9'"),
])
def test_device_and_input_names_are_checked(formula: str, reason: str) -> None:
    errors = errors_of(changed(("variables.X", formula)))
    assert len(errors) == 1 and errors[0].startswith(f"variables.X: {reason}"), errors


def test_every_symbol_a_formula_can_read_is_accepted() -> None:
    values = [f"M1.{v}" for v in DEVICE_VALUES["meter"]] + [f"E1.{v}" for v in DEVICE_VALUES["charger"]]
    formula = " + ".join(["AVAIL", "TARIF", "RSE1", "RSE2", "hour", "minute", "weekday", "max(M1.current_a)",
                          "M1.current_a[2]", *[v for v in values if not v.endswith(".current_a")]])
    assert parse_config(changed(("variables.X", formula))).variables["X"] == formula


def test_device_values_are_exactly_what_the_loop_provides() -> None:
    """The config check and the control loop's symbol table agree, online and offline."""
    from controller.formulas.symbols import device_symbols
    from hal.types import ChargerReading, IecState, MeterReading

    meter = MeterReading(power_w=1.0, current_a=(1.0, 2.0, 3.0), voltage_v=(230.0, 230.0, 230.0))
    charger = ChargerReading(state=IecState.C, current_a=(6.0, 6.0, 6.0))
    for kind, reading in (("meter", meter), ("charger", charger)):
        for value in (reading, None):
            names = {name.split(".", 1)[1] for name in device_symbols("X", kind, value)}
            assert names == set(DEVICE_VALUES[kind]), (kind, value)


def test_a_broken_variable_is_still_declared() -> None:
    """Formulas that read a variable whose own value is wrong get no second message."""
    errors = errors_of(changed(("variables.AVAIL", "1 +")))  # site.grid_limit_w reads AVAIL
    assert len(errors) == 1 and errors[0].startswith("variables.AVAIL: formula does not parse"), errors


# --------------------------------------------------------------------------- plausibility (the profiles' facts)


def problems_of(data: dict[str, Any], prefix: str = "") -> tuple[list[str], list[str]]:
    """(errors, warnings) of a config, the warnings without this machine's (ports, TLS files)."""
    try:
        cfg = parse_config(data, source="test")
    except ConfigError as exc:
        errors, warnings = exc.errors, exc.warnings
    else:
        errors, warnings = [], config_warnings(cfg, gpiochip_glob="/*")
    machine = ("does not exist on this machine", "not writable")
    return ([e for e in errors if e.startswith(prefix)],
            [w for w in warnings if w.startswith(prefix) and not any(m in w for m in machine)])


@pytest.mark.parametrize("bus, serial", [
    ({"baudrate": 9600}, "9600 8E1"), ({"parity": "N"}, "19200 8N1"), ({"stopbits": 2}, "19200 8E2"),
])
def test_fixed_serial_settings_must_match_the_bus(bus: dict[str, Any], serial: str) -> None:
    data = changed(*[(f"buses.rs485.{key}", value) for key, value in bus.items()])
    errors, _ = problems_of(data)
    assert errors == [
        f"chargers.E1.bus: 'heidelberg' speaks only 19200 8E1 (fixed on the box), but bus 'rs485' runs {serial}: "
        "set baudrate: 19200, parity: E, stopbits: 1 on the bus, and every device on it to match"], errors


def test_fixed_serial_settings_behind_a_gateway() -> None:
    errors, _ = problems_of(changed(("chargers.E1.bus", "shed")))  # shed: rtu-over-tcp, 9600 8N1 by default
    assert errors == [f"chargers.E1.bus: 'heidelberg' speaks only 19200 8E1 (fixed on the box), but bus 'shed' "
                      "runs 9600 8N1: set baudrate: 19200, parity: E, stopbits: 1 on the bus, and every device on it to match"]
    assert problems_of(changed(("chargers.E1.bus", "shed"), ("buses.shed.baudrate", 19200), ("buses.shed.parity", "E"))) == ([], [])


def test_a_pseudo_terminal_has_no_line_settings_to_compare(tmp_path: Path) -> None:
    """The simulator's null-modem, or a socat link to a remote serial server: the far end decides."""
    link = tmp_path / "ttyV0"
    link.symlink_to("/dev/pts/7")
    for port in ("/dev/pts/7", str(link)):
        assert problems_of(changed(("buses.rs485.port", port), ("buses.rs485.parity", "N")), "chargers") == ([], [])


def test_settings_that_may_change_are_not_compared() -> None:
    """An SDM630 leaves the factory at 9600 8N1 but can be set to 19200 8E1: no message."""
    assert problems_of(changed(("chargers.E1.bus", "garage"), ("chargers.E1.unit", 2)), "meters") == ([], [])


def test_a_misspelt_bus_setting_is_not_also_a_line_mismatch() -> None:
    errors, _ = problems_of(changed(("buses.rs485.parity", DELETE), ("buses.rs485.paritty", "E")))
    assert errors == ["buses.rs485.paritty: unknown key (did you mean 'parity'?)"]


@pytest.mark.parametrize("key, value, reason", [
    ("max_current_a", 20, "20 A is above what 'heidelberg' accepts (16 A)"),
    ("min_current_a", 20, "20 A is above what 'heidelberg' accepts (16 A)"),
])
def test_currents_above_what_the_model_accepts(key: str, value: float, reason: str) -> None:
    errors, _ = problems_of(changed((f"chargers.E1.{key}", value)), "chargers.E1")
    assert f"chargers.E1.{key}: {reason}" in errors, errors


def test_failsafe_above_what_the_model_accepts_when_the_maximum_is_a_formula() -> None:
    errors, _ = problems_of(changed(("chargers.E1.max_current_a", "16 * AVAIL / 100"), ("chargers.E1.failsafe_current_a", 20)))
    assert errors == ["chargers.E1.failsafe_current_a: 20 A is above what 'heidelberg' accepts (16 A)"]
    errors, _ = problems_of(changed(("chargers.E1.failsafe_current_a", 20)))  # said once: above max_current_a
    assert errors == ["chargers.E1.failsafe_current_a: 20 A is above max_current_a (16 A)"]


def test_models_without_a_known_maximum_take_up_to_the_iec_limit() -> None:
    assert problems_of(changed(("chargers.E2.max_current_a", 32)), "chargers") == ([], [])


def test_a_maximum_above_the_fuse_is_a_warning() -> None:
    errors, warnings = problems_of(changed(("site.main_fuse_a", 25), ("chargers.E2.max_current_a", 32)))
    assert errors == []
    assert warnings == ["chargers.E2.max_current_a: 32 A is above main_fuse_a (25 A): the box can never be given "
                        "that much; check the box's rating and the fuse"]


def test_a_minimum_above_the_fuse_is_an_error() -> None:
    errors, _ = problems_of(changed(("site.main_fuse_a", 10), ("chargers.E2.min_current_a", 13), ("chargers.E2.max_current_a", 16)))
    assert "chargers.E2.min_current_a: 13 A is above main_fuse_a (10 A): the box could never start charging" in errors


def test_minimum_above_maximum_is_an_error() -> None:
    errors, _ = problems_of(changed(("chargers.E2.max_current_a", 10), ("chargers.E2.min_current_a", 12)))
    assert errors == ["chargers.E2.max_current_a: 10 A is below min_current_a (12 A)"]


def _box(phases: int) -> dict[str, Any]:
    """An inline charger profile that declares the phases it works on."""
    data = yaml.safe_load((REPO / "hal" / "modbus" / "profiles" / "alfen.yaml").read_text(encoding="utf-8"))
    return {**data, "model": f"box{phases}", "phases": phases}


def test_a_three_phase_box_said_to_be_one_phase_is_an_error() -> None:
    errors, _ = problems_of(changed(("chargers.E3.model", DELETE), ("chargers.E3.profile", _box(3))))
    assert errors == ["chargers.E3.phases: 1, but 'box3' charges on 3 phases only: gridcharge would count its current "
                      "on L2 alone while it draws on all three; write phases: 3"]


def test_a_one_phase_box_said_to_be_three_phase_is_a_warning() -> None:
    errors, warnings = problems_of(changed(("chargers.E2.model", DELETE), ("chargers.E2.profile", _box(1))), "chargers")
    assert errors == []
    assert warnings == ["chargers.E2.phases: 3, but 'box1' charges on one phase only: write phases: 1 and phase: "
                        "(L1, L2 or L3, as wired); as it is, its current is counted on every phase and it gets less than it could"]
    assert problems_of(changed(("chargers.E3.model", DELETE), ("chargers.E3.profile", _box(1))), "chargers") == ([], [])


def test_a_one_phase_grid_meter_is_a_warning() -> None:
    errors, warnings = problems_of(changed(("meters.M1.model", "sdm120")), "site")
    assert errors == []
    assert warnings == ["site.grid_meter: 'M1' is 'sdm120', a 1-phase meter: gridcharge reads 0 A on L2 and L3, so on a "
                        "3-phase connection their load is unseen and their fuse unguarded; use a 3-phase meter"]


def test_failsafe_currents_above_the_fuse_together_are_a_warning() -> None:
    """E1 and E2 draw on every phase, E3 on L2 only: L2 carries all three fail-safe currents."""
    edits = [("chargers.E2.max_current_a", 16), ("chargers.E1.failsafe_current_a", 10), ("chargers.E2.failsafe_current_a", 10)]
    errors, warnings = problems_of(changed(("site.main_fuse_a", 25), ("chargers.E3.failsafe_current_a", 6), *edits), "chargers")
    assert (errors, warnings) == ([], ["chargers: the fail-safe currents add up to 26 A on L2, above main_fuse_a (25 A): "
                                       "if gridcharge stops, the boxes alone may trip the fuse; lower failsafe_current_a"])
    assert problems_of(changed(("site.main_fuse_a", 26), *edits), "chargers") == ([], [])


def test_the_examples_have_no_plausibility_messages() -> None:
    for example in (FULL_EXAMPLE, DEPLOY_EXAMPLE):
        cfg = load_config(example)
        machine = ("does not exist on this machine", "not writable", "no GPIO chip")
        assert [w for w in config_warnings(cfg) if not any(m in w for m in machine)] == [], example


# --------------------------------------------------------------------------- every kind at once


def test_one_bad_field_does_not_hide_the_cross_checks_of_its_entry() -> None:
    errors = errors_of(changed(
        ("chargers.E1.priority", "high"),  # E1 is still checked: its unit, bus and maximum
        ("chargers.E1.unit", 1),
        ("chargers.E1.max_current_a", 20),
        ("site.cycle_s", "fast"),  # the site is still checked: its grid meter, its formulas
        ("site.grid_meter", "E1"),
        ("site.grid_limit_w", "AVIAL * 550"),
        ("rules.0.name", 5),  # the rule is still checked: its chargers
        ("rules.0.chargers", ["E9"]),
    ))
    assert [e.split(": ")[0] for e in errors] == [
        "chargers.E1.max_current_a", "chargers.E1.priority", "chargers.E1.unit", "rules.0.chargers.0", "rules.0.name",
        "site.cycle_s", "site.grid_limit_w", "site.grid_meter"], errors


def test_a_missing_fuse_does_not_hide_the_rest_of_the_site() -> None:
    errors = errors_of(changed(("site.main_fuse_a", DELETE), ("site.grid_meter", "E2"), ("chargers.E2.min_current_a", 13)))
    assert errors == ["site.grid_meter: 'E2' is a charger, not a meter", "site.main_fuse_a: required, but missing"]


@pytest.mark.parametrize("edits, expected", [
    ([("chargers.E1.unit", "one"), ("meters.M1.unit", 2)], ["chargers.E1.unit"]),  # no "unit 1 is already ..."
    ([("http.password", "short")], ["http.password"]),  # no "give exactly one of password or password_hash"
    ([("site.cycle_s", "fast"), ("site.stale_s", 0.5)], ["site.cycle_s"]),  # no "stale_s must be at least cycle_s"
    ([("meters.M1.model", 5)], ["meters.M1.model"]),  # no "required: give model or profile"
    ([("meters.M1.bus", 5)], ["meters.M1.bus"]),  # no "required: give bus or host"
    ([("rules.0.max_current_a", "x +")], ["rules.0.max_current_a"]),  # no "give exactly one of"
    ([("inputs.RSE2.discrete_input", -1)], ["inputs.RSE2.discrete_input"]),  # no "give exactly one of"
    ([("inputs.RSE1.gpio", 99), ("inputs.RSE3", {"gpio": 0})], ["inputs.RSE1.gpio"]),
    ([("chargers.E1.min_current_a", 99)], ["chargers.E1.min_current_a"]),  # no "max below min"
    ([("smgw.cert", 5)], ["smgw.cert"]),
])
def test_a_bad_field_gives_one_message_not_two(edits: list[tuple[str, Any]], expected: list[str]) -> None:
    errors = errors_of(changed(*edits))
    assert [e.split(": ")[0] for e in errors] == expected, errors


def test_warnings_come_with_the_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(changed(("site.main_fuse_a", 25), ("chargers.E2.max_current_a", 32), ("chargers.E1.unit", 1)))
    assert info.value.errors == ["chargers.E1.unit: unit 1 on bus 'rs485' is already meters.M1"]
    assert "chargers.E2.max_current_a: 32 A is above main_fuse_a (25 A): the box can never be given that much; " \
           "check the box's rating and the fuse" in info.value.warnings
    assert "buses.rs485.port: /dev/gridcharge-rs485-0 does not exist on this machine" in info.value.warnings


# --------------------------------------------------------------------------- robustness (hypothesis)

_PATHS = sorted({p for p in (lambda walk: walk(walk, BASE, ""))(
    lambda self, node, prefix: [prefix.rstrip(".")] + [
        q for k, v in (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else [])
        for q in self(self, v, f"{prefix}{k}.")
    ]) if p})
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), _VALUES), min_size=1, max_size=3))
def test_any_edit_gives_a_config_or_path_errors_never_a_crash(edits: list[tuple[str, Any]]) -> None:
    data = copy.deepcopy(BASE)
    for path, value in edits:  # a later edit may land inside a value an earlier one replaced
        try:
            data = _edited(data, path, value)
        except (TypeError, KeyError, IndexError):
            continue
    try:
        parse_config(data)
    except ConfigError as exc:
        assert exc.errors and all(": " in e for e in exc.errors)
        assert exc.errors == sorted(set(exc.errors), key=exc.errors.index)  # no duplicates


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("site: {}[]-#&*!|>'\"\n\t 0123abnoy_.,?%@`")), max_size=60))
def test_any_yaml_text_gives_a_config_or_errors_never_a_crash(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    file = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    file.write_text(text, encoding="utf-8")
    try:
        load_config(file)
    except ConfigError as exc:
        assert exc.errors
