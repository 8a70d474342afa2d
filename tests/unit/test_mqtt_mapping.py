"""Unit tests of the pure parts of the MQTT bridge: the topics and payloads of a status, the
Home Assistant discovery configs, what a set may do, the latest-wins slot, the ``mqtt:``
section of the config, and the connection's failures in words. The bridge with its connection is tested against a real mosquitto in
tests/integration/test_mqtt.py."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from typing import Any

import pytest

from controller.allocation.types import Reason, Why
from controller.config import ConfigError, config_warnings, parse_config
from controller.mqtt.bridge import client_id
from controller.mqtt.commands import Refused, parse_set
from controller.mqtt.discovery import CHARGER_STATES, ChargerDevice, discovery_configs
from controller.mqtt.slot import LatestSlot
from controller.mqtt.topics import TopicNames, number, state_payloads
from controller.status import EMPTY_STATUS, ChargerStatus, DeviceStatus, Status, VariableStatus
from hal.mqtt_client import MqttConnection, MqttSettings, connect_failure
from hal.types import ChargerReading, IecState, InputReading

NAMES = TopicNames("gc", "homeassistant")


def device(id: str, kind: str, reading: Any, error: str | None = None) -> DeviceStatus:
    return DeviceStatus(id, kind, "heidelberg", "tcp:127.0.0.1:502/1", error is None, 0.5, error,
                        12.0 if error else 0.0, reading)


def charger(id: str, reading: Any, *, command_a: float = 10.0, error: str | None = None,
            reason: str = "fuse L1") -> ChargerStatus:
    return ChargerStatus(device(id, "charger", reading, error), 3, 1, 1, 6.0, 16.0, command_a, 10.0,
                         Reason(Why.SITE_LIMIT, reason), True, None)


def status(**changes: Any) -> Status:
    base = dataclasses.replace(
        EMPTY_STATUS, failsafe=None, grid_power_w=9876.4, grid_current_a=(12.3456, 8.0, 7.9994),
        grid_limit_w=11000.0, chargers_limit_w=None, power_headroom_w=1234.5,
        chargers=(charger("E1", ChargerReading(IecState.C, (10.0, 10.0, 10.0), 6900.4, 1200.0)),
                  charger("E2", ChargerReading(IecState.B, (0.0, 0.0, 0.0), 0.0, 50.0), command_a=0.0,
                          reason="no car drawing")),
        inputs=(device("RSE1", "input", InputReading(True)), device("RSE2", "input", None, "timeout")),
        variables=(VariableStatus("AVAIL", 75, 75, None), VariableStatus("LIM", "AVAIL * x", None, "no x"),
                   VariableStatus("TARIF", 0, 0, None)))
    return dataclasses.replace(base, **changes)


# --------------------------------------------------------------------------- state topics


def test_every_state_topic_of_a_status() -> None:
    got = state_payloads(status(), NAMES, session_energy_wh={"E1": 1234.6, "E2": 0.0}, writable=("AVAIL", "LIM"))
    assert got == {
        "gc/site/grid_power_w": "9876",
        "gc/site/grid_current_l1_a": "12.346",
        "gc/site/grid_current_l2_a": "8.000",
        "gc/site/grid_current_l3_a": "7.999",
        "gc/site/grid_limit_w": "11000",
        "gc/site/chargers_limit_w": "None",  # no limit set: unknown, never a made-up 0
        "gc/site/power_headroom_w": "1234",  # round half to even, as get_dev_info does
        "gc/site/chargers_power_w": "6900",
        "gc/site/failsafe": "OFF",
        "gc/site/failsafe_reason": "none",
        "gc/site/input/RSE1": "ON",
        "gc/site/input/RSE2": "None",  # cannot be read now
        "gc/E1/state": "C (charging)",
        "gc/E1/power_w": "6900",
        "gc/E1/current_l1_a": "10.000",
        "gc/E1/current_l2_a": "10.000",
        "gc/E1/current_l3_a": "10.000",
        "gc/E1/limit_a": "10.000",
        "gc/E1/lreason": "fuse L1",
        "gc/E1/session_energy_wh": "1235",
        "gc/E2/state": "B (car connected)",
        "gc/E2/power_w": "0",
        "gc/E2/current_l1_a": "0.000",
        "gc/E2/current_l2_a": "0.000",
        "gc/E2/current_l3_a": "0.000",
        "gc/E2/limit_a": "0.000",
        "gc/E2/lreason": "no car drawing",
        "gc/E2/session_energy_wh": "0",
        "gc/site/var/AVAIL": "75",
        "gc/site/var/LIM": "None",  # its formula fails
    }


def test_an_offline_charger_a_failsafe_and_no_grid_reading() -> None:
    offline = charger("E1", ChargerReading(IecState.C, (10.0, 10.0, 10.0), 6900.0), error="no answer for 6 s",
                      command_a=6.0, reason="fail-safe: E1 offline")
    got = state_payloads(status(chargers=(offline,), failsafe="grid meter M1 offline", grid_power_w=None,
                                grid_current_a=None, power_headroom_w=float("nan"), inputs=()),
                         NAMES, session_energy_wh={"E1": None})
    assert got == {
        "gc/site/grid_power_w": "None",
        "gc/site/grid_current_l1_a": "None",
        "gc/site/grid_current_l2_a": "None",
        "gc/site/grid_current_l3_a": "None",
        "gc/site/grid_limit_w": "11000",
        "gc/site/chargers_limit_w": "None",
        "gc/site/power_headroom_w": "None",
        "gc/site/chargers_power_w": "None",  # no charger's power is known
        "gc/site/failsafe": "ON",
        "gc/site/failsafe_reason": "grid meter M1 offline",
        "gc/E1/state": "offline",  # the old reading is not shown as if it were live
        "gc/E1/power_w": "None",
        "gc/E1/current_l1_a": "None",
        "gc/E1/current_l2_a": "None",
        "gc/E1/current_l3_a": "None",
        "gc/E1/limit_a": "6.000",
        "gc/E1/lreason": "fail-safe: E1 offline",
        "gc/E1/session_energy_wh": "None",
    }


@pytest.mark.parametrize(("value", "text"), [(75, "75"), (75.0, "75"), (0.5, "0.5"), (-3.25, "-3.25"),
                                              (True, "1"), (False, "0"), (None, "None"), ("x", "None"),
                                              (float("inf"), "None"), (1e15, "1000000000000000"),
                                              (1234567.125, "1234567.125")])
def test_a_variable_value_as_a_payload(value: object, text: str) -> None:
    assert number(value) == text


def test_topic_names() -> None:
    names = TopicNames("home/ev", "ha")
    assert (names.status, names.site("x"), names.charger("E1", "state"), names.input("RSE1")) == \
        ("home/ev/status", "home/ev/site/x", "home/ev/E1/state", "home/ev/site/input/RSE1")
    assert (names.variable("AVAIL"), names.set("AVAIL"), names.set_error("AVAIL"), names.set_filter) == \
        ("home/ev/site/var/AVAIL", "home/ev/set/AVAIL", "home/ev/set/AVAIL/error", "home/ev/set/+")
    assert [names.set_name(t) for t in ("home/ev/set/AVAIL", "home/ev/set/", "home/ev/set/A/error",
                                        "home/ev/site/x", "other/set/AVAIL")] == ["AVAIL", None, None, None, None]
    assert (names.node_id, names.ha_status, names.config_filter) == ("home_ev", "ha/status", "ha/+/home_ev/+/config")
    assert names.config("sensor", "site_x") == "ha/sensor/home_ev/site_x/config"
    assert [names.is_config(t) for t in ("ha/sensor/home_ev/site_x/config", "ha/sensor/other/site_x/config",
                                         "ha/sensor/home_ev/site_x", "ha/x/sensor/home_ev/a/config")] == \
        [True, False, False, False]
    assert (client_id("gridcharge"), client_id("home/ev")) == ("gridcharge", "gridcharge-home-ev")


# --------------------------------------------------------------------------- discovery


def test_discovery_configs_field_by_field() -> None:
    configs = {t: json.loads(p) for t, p in discovery_configs(
        NAMES, chargers={"E1": ChargerDevice("Heidelberg Energy Control", "Heidelberg"),
                         "E3": ChargerDevice("OCPP 1.6J wallbox")},
        inputs=("RSE1",), writable=("AVAIL",), version="1.2.3").items()}
    site_keys = ["grid_power_w", "grid_current_l1_a", "grid_current_l2_a", "grid_current_l3_a", "grid_limit_w",
                 "chargers_limit_w", "power_headroom_w", "chargers_power_w", "failsafe_reason"]
    charger_keys = ["state", "power_w", "current_l1_a", "current_l2_a", "current_l3_a", "limit_a", "lreason",
                    "session_energy_wh"]
    assert set(configs) == {
        *(f"homeassistant/sensor/gc/site_{k}/config" for k in site_keys),
        "homeassistant/binary_sensor/gc/site_failsafe/config",
        "homeassistant/binary_sensor/gc/input_RSE1/config",
        *(f"homeassistant/sensor/gc/charger_{c}_{k}/config" for c in ("E1", "E3") for k in charger_keys),
        "homeassistant/number/gc/variable_AVAIL/config",
    }
    site_device = {"identifiers": ["gc"], "name": "gridcharge gc", "manufacturer": "gridcharge",
                   "model": "EV charging manager", "sw_version": "1.2.3"}
    e1_device = {"identifiers": ["gc_E1"], "name": "Wallbox E1", "model": "Heidelberg Energy Control",
                 "manufacturer": "Heidelberg", "via_device": "gc"}
    common = {"availability_topic": "gc/status", "origin": {"name": "gridcharge", "sw_version": "1.2.3"}}
    assert configs["homeassistant/sensor/gc/site_grid_power_w/config"] == {
        "name": "Grid power", "unique_id": "gc_site_grid_power_w", "state_topic": "gc/site/grid_power_w",
        "device_class": "power", "state_class": "measurement", "unit_of_measurement": "W",
        "suggested_display_precision": 0, "device": site_device, **common}
    assert configs["homeassistant/sensor/gc/site_grid_current_l2_a/config"] == {
        "name": "Grid current L2", "unique_id": "gc_site_grid_current_l2_a", "state_topic": "gc/site/grid_current_l2_a",
        "device_class": "current", "state_class": "measurement", "unit_of_measurement": "A",
        "suggested_display_precision": 1, "device": site_device, **common}
    assert configs["homeassistant/binary_sensor/gc/site_failsafe/config"] == {
        "name": "Fail-safe", "unique_id": "gc_site_failsafe", "state_topic": "gc/site/failsafe",
        "device_class": "problem", "device": site_device, **common}
    assert configs["homeassistant/sensor/gc/site_failsafe_reason/config"] == {
        "name": "Fail-safe reason", "unique_id": "gc_site_failsafe_reason", "state_topic": "gc/site/failsafe_reason",
        "entity_category": "diagnostic", "device": site_device, **common}
    assert configs["homeassistant/binary_sensor/gc/input_RSE1/config"] == {
        "name": "Input RSE1", "unique_id": "gc_input_RSE1", "state_topic": "gc/site/input/RSE1",
        "device": site_device, **common}
    assert configs["homeassistant/sensor/gc/charger_E1_state/config"] == {
        "name": "State", "unique_id": "gc_charger_E1_state", "state_topic": "gc/E1/state", "device_class": "enum",
        "options": ["A (no car)", "B (car connected)", "C (charging)", "D (charging with ventilation)",
                    "E (no power)", "F (error)", "offline"], "device": e1_device, **common}
    assert configs["homeassistant/sensor/gc/charger_E1_limit_a/config"] == {
        "name": "Current limit", "unique_id": "gc_charger_E1_limit_a", "state_topic": "gc/E1/limit_a",
        "device_class": "current", "state_class": "measurement", "unit_of_measurement": "A",
        "suggested_display_precision": 1, "device": e1_device, **common}
    assert configs["homeassistant/sensor/gc/charger_E1_lreason/config"] == {
        "name": "Limit reason", "unique_id": "gc_charger_E1_lreason", "state_topic": "gc/E1/lreason",
        "device": e1_device, **common}
    assert configs["homeassistant/sensor/gc/charger_E1_session_energy_wh/config"] == {
        "name": "Session energy", "unique_id": "gc_charger_E1_session_energy_wh",
        "state_topic": "gc/E1/session_energy_wh", "device_class": "energy", "state_class": "total_increasing",
        "unit_of_measurement": "Wh", "suggested_display_precision": 0, "device": e1_device, **common}
    assert configs["homeassistant/sensor/gc/charger_E3_power_w/config"]["device"] == {
        "identifiers": ["gc_E3"], "name": "Wallbox E3", "model": "OCPP 1.6J wallbox", "via_device": "gc"}
    assert configs["homeassistant/number/gc/variable_AVAIL/config"] == {
        "name": "AVAIL", "unique_id": "gc_variable_AVAIL", "state_topic": "gc/site/var/AVAIL",
        "command_topic": "gc/set/AVAIL", "min": -1e15, "max": 1e15, "step": 0.01, "mode": "box",
        "device": site_device, **common}
    assert CHARGER_STATES[-1] == "offline"


def test_the_same_site_gives_the_same_bytes() -> None:
    def make() -> dict[str, str]:
        return discovery_configs(TopicNames("gridcharge"), chargers={"E1": ChargerDevice("m")}, inputs=(),
                                 writable=(), version="1")
    assert make() == make()
    assert json.loads(make()["homeassistant/sensor/gridcharge/site_grid_power_w/config"])["device"]["name"] == \
        "gridcharge"


# --------------------------------------------------------------------------- sets


@pytest.mark.parametrize(("payload", "value"), [(b"50", 50), (b" 75\n", 75), (b"-3.5", -3.5), (b"1e3", 1000.0)])
def test_a_set_takes_a_number(payload: bytes, value: float) -> None:
    got = parse_set("AVAIL", payload, writable=("AVAIL",), retained=False)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("name", "payload", "retained", "why"), [
    ("TARIF", b"1", False, "TARIF is not writable over MQTT (mqtt.writable: AVAIL)"),
    ("AVAIL", b"50", True, "a retained set is refused"),
    ("AVAIL", b"", False, "empty payload"),
    ("AVAIL", b"abc", False, "not a number: 'abc'"),
    ("AVAIL", b"AVAIL * 2", False, "not a number"),
    ("AVAIL", b"true", False, "not a number"),
    ("AVAIL", b"\xff", False, "not UTF-8"),
    ("AVAIL", b"1" * 65, False, "payload too long"),
    ("AVAIL", b"1e99", False, "number too large"),
    ("AVAIL", b"nan", False, "not a number"),
])
def test_what_a_set_may_not_do(name: str, payload: bytes, retained: bool, why: str) -> None:
    with pytest.raises(Refused, match=why.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        parse_set(name, payload, writable=("AVAIL",), retained=retained)


def test_nothing_is_writable_by_default() -> None:
    with pytest.raises(Refused, match=r"mqtt.writable: none"):
        parse_set("AVAIL", b"1", writable=(), retained=False)


# --------------------------------------------------------------------------- the slot


def test_the_slot_keeps_the_latest_payload_per_topic_and_takes_what_changed() -> None:
    slot = LatestSlot()
    assert slot.offer({"a": "1", "b": "1"}) == 2 and slot.ready.is_set()
    assert slot.offer({"a": "2", "b": "1"}) == 1  # b did not change
    assert slot.offer({"a": "3", "b": "1"}) == 1
    assert slot.take() == {"a": "3", "b": "1"}  # a changed twice: sent once, its latest
    assert slot.take() == {}
    assert slot.offer({"a": "3", "b": "1"}) == 0
    slot.mark_due(["b", "unknown"])
    assert slot.take() == {"b": "1"}
    slot.mark_due()  # after a reconnect: everything again
    assert slot.take() == {"a": "3", "b": "1"} and len(slot) == 2 and slot.latest("a") == "3"


def test_the_slot_stays_bounded_however_long_nobody_takes() -> None:
    slot = LatestSlot()
    offers = [threading.Thread(target=lambda: [slot.offer({f"t{i % 50}": str(n)}) for n in range(2000)])
              for i in range(4)]
    for thread in offers:
        thread.start()
    for thread in offers:
        thread.join()
    assert len(slot) <= 50 and len(slot.take()) <= 50


# --------------------------------------------------------------------------- the config section

BASE: dict[str, Any] = {
    "site": {"main_fuse_a": 25},
    "variables": {"AVAIL": 100},
    "buses": {"b": {"type": "tcp", "host": "wallbox.lan"}},
    "chargers": {"E1": {"model": "heidelberg", "bus": "b", "unit": 1}},
}


def problems(mqtt: Any, **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **sections, "mqtt": mqtt})
    return info.value.errors


def test_the_mqtt_section_defaults() -> None:
    cfg = parse_config({**BASE, "mqtt": {"host": "broker.lan"}})
    assert cfg.mqtt is not None
    assert (cfg.mqtt.port, cfg.mqtt.prefix, cfg.mqtt.homeassistant, cfg.mqtt.discovery_prefix, cfg.mqtt.writable,
            cfg.mqtt.user, cfg.mqtt.tls) == (1883, "gridcharge", True, "homeassistant", (), None, None)
    assert parse_config(BASE).mqtt is None
    assert "secret" not in repr(parse_config({**BASE, "mqtt": {"host": "h", "user": "u", "password": "secret"}}))


def test_mqtt_section_errors_all_at_once() -> None:
    got = problems({"host": "mqtt://broker", "port": 0, "prefix": "a/#", "discovery_prefix": "/ha",
                    "writable": ["AVAIL", "E1", "2x", "AVAIL"], "password": "p", "tls": {"cert": "/c.pem"},
                    "retain": True})
    assert got == [
        "mqtt.discovery_prefix: must be topic levels of letters, digits, '_', '-' or '.' joined by '/' (no '+', "
        "'#', spaces or '/' at either end), at most 100 characters, not '/ha'",
        "mqtt.host: not a host name or IP address: 'mqtt://broker'",
        "mqtt.password: needs user (the broker's account name)",
        "mqtt.port: Input should be greater than or equal to 1",
        "mqtt.prefix: must be topic levels of letters, digits, '_', '-' or '.' joined by '/' (no '+', '#', "
        "spaces or '/' at either end), at most 100 characters, not 'a/#'",
        "mqtt.retain: unknown key (allowed: host, port, user, password, tls, prefix, homeassistant, "
        "discovery_prefix, writable)",
        "mqtt.tls.key: give both cert and key (a client certificate), or neither",
        "mqtt.writable.1: invalid name 'E1': a device or input id",
        "mqtt.writable.2: invalid name '2x': a letter or '_', then up to 63 letters, digits or '_'",
        "mqtt.writable.3: 'AVAIL' is listed twice",
    ]


def test_topic_trees_and_charger_ids_that_clash() -> None:
    chargers = {"site": {"model": "heidelberg", "bus": "b", "unit": 1}}
    assert problems({"host": "h", "prefix": "homeassistant/ev"}, chargers=chargers) == [
        "chargers.site: 'site' is an MQTT topic of its own (<prefix>/site): give the charger another id",
        "mqtt.prefix: 'homeassistant/ev' overlaps discovery_prefix 'homeassistant': give them separate topic trees",
    ]
    cfg = parse_config({**BASE, "mqtt": {"host": "h", "prefix": "homeassistant", "homeassistant": False}})
    assert cfg.mqtt is not None and cfg.mqtt.prefix == "homeassistant"  # no discovery: no clash


def test_mqtt_warnings() -> None:
    cfg = parse_config({**BASE, "mqtt": {"host": "broker.lan", "user": "u", "password": "p", "writable": ["AVAIL", "NEW"],
                                         "tls": {"ca": "/nonexistent/ca.pem"}}})
    assert config_warnings(cfg) == [
        "mqtt.tls.ca: /nonexistent/ca.pem does not exist on this machine",
        "mqtt.writable.1: 'NEW' is not under variables: no formula reads it, so a set over MQTT would change nothing",
    ]
    cfg = parse_config({**BASE, "mqtt": {"host": "broker.lan", "user": "u", "password": "p"}})
    assert config_warnings(cfg) == ["mqtt.password: sent in clear text to broker.lan: add tls: (port 8883)"]
    assert config_warnings(parse_config({**BASE, "mqtt": {"host": "127.0.0.1", "user": "u", "password": "p"}})) == []


# --------------------------------------------------------------------------- connect failures in words


@pytest.mark.parametrize(("exc", "words"), [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused (is it running, is the port right?)"),
    (socket.gaierror(-2, "Name or service not known"), "unknown host name"),
    (TimeoutError(), "no answer"),
    (OSError(113, "No route to host"), "No route to host"),
    (None, "cannot reach the broker"),
])
def test_why_a_connect_failed_in_words(exc: BaseException | None, words: str) -> None:
    assert connect_failure(exc).startswith("cannot reach the broker") and connect_failure(exc).endswith(words)


def test_unusable_tls_files_leave_mqtt_off_without_stopping_anything(tmp_path: Any) -> None:
    connection = MqttConnection(MqttSettings("127.0.0.1", 1883, "t", "t/status", tls=True,
                                             ca=str(tmp_path / "gone.pem")),
                                subscriptions=(), on_connected=lambda: None, on_message=lambda *a: None)
    connection.start()
    connection.stop()
    assert not connection.connected
    assert (connection.problem() or "").startswith(f"TLS files unusable ({tmp_path / 'gone.pem'}): ")
