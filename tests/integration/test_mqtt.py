"""The MQTT bridge against a real mosquitto on loopback (docs/mqtt.md).

The controller runs on the simulated home (two wallboxes, a meter, the ripple contact) with the
real HTTP API beside it, so what arrives over MQTT is compared with what ``get_dev_info`` says;
a test client of our own (``Watcher``) subscribes like Home Assistant would. Each test starts
its own broker on a free port, so the retained messages of one test never leak into another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mqtt_helpers import Mosquitto, Received, Watcher
from pki import make_pki
from site_helpers import BASE_SITE, make_config
from web_helpers import running_web

from controller.service import Service
from hal.sim.site import SimulatedSite

ROOT = Path(__file__).resolve().parents[2]
P = "gridcharge"  # the default prefix
E1_MAX = "16 * AVAIL / 100"  # E1's maximum follows AVAIL, so a set over MQTT shows in its limit


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def mqtt_section(broker: Mosquitto, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": broker.port, "writable": ["AVAIL"], **extra}


def watch(broker: Mosquitto, topic_filter: str = "#") -> Watcher:
    return Watcher(broker.port, topic_filter)


def ma_to_a(milliamps: int | None) -> str:
    return "None" if milliamps is None else f"{milliamps / 1000:.3f}"


def text(value: Any) -> str:
    return "None" if value is None else str(value)


def expected_from_dev_info(info: dict[str, Any]) -> dict[str, str]:
    """What the MQTT topics must say, derived from ``get_dev_info`` alone (its units: mA, W)."""
    p = info["params"]
    out = {
        f"{P}/site/grid_power_w": text(p["grid_power_w"]),
        **{f"{P}/site/grid_current_l{i}_a": ma_to_a(p[f"grid_current_l{i}"]) for i in (1, 2, 3)},
        f"{P}/site/grid_limit_w": text(p["grid_limit_w"]),
        f"{P}/site/chargers_limit_w": text(p["chargers_limit_w"]),
        f"{P}/site/power_headroom_w": text(p["power_headroom_w"]),
        f"{P}/site/failsafe": "ON" if p["failsafe"] else "OFF",
        f"{P}/site/failsafe_reason": p["failsafe"] or "none",
    }
    chargers = [d for d in info["devices"] if d["is_evse"]]
    out[f"{P}/site/chargers_power_w"] = text(sum(d["cur_charging_power"] for d in chargers))
    for d in chargers:
        cid = d["dev_id"]
        out.update({
            f"{P}/{cid}/state": d["state_text"],
            f"{P}/{cid}/power_w": text(d["cur_charging_power"]),
            **{f"{P}/{cid}/current_l{i}_a": ma_to_a(d[f"current_l{i}"]) for i in (1, 2, 3)},
            f"{P}/{cid}/limit_a": ma_to_a(d["assigned_cur"]),
            f"{P}/{cid}/lreason": d["lreason"],
        })
    for i in info["inputs"]:
        out[f"{P}/site/input/{i['id']}"] = "None" if i["active"] is None else ("ON" if i["active"] else "OFF")
    return out


def matches(expected: dict[str, str]) -> Any:
    def check(messages: dict[str, Received]) -> bool:
        return all(t in messages and messages[t].payload == v for t, v in expected.items())
    return check


def wait_until(check: Any, timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- values out


def test_values_arrive_retained_and_equal_get_dev_info(broker: Mosquitto) -> None:
    with running_web(mqtt=mqtt_section(broker), chargers={"E1": {"max_current_a": E1_MAX}}) as web:
        assert web.service.mqtt is not None
        web.service.mqtt.start()
        web.cycles(2)
        info = web.client.get("get_dev_info").json()
        expected = expected_from_dev_info(info)
        assert expected[f"{P}/E1/state"] == "C (charging)" and expected[f"{P}/site/grid_power_w"] != "None"
        first = watch(broker, f"{P}/#")
        try:
            first.wait_for(matches(expected), what="the state of get_dev_info")
        finally:
            first.close()
        late = watch(broker, f"{P}/#")  # subscribes after the values were published
        try:
            late.wait_for(matches({**expected, f"{P}/status": "online", f"{P}/site/var/AVAIL": "100"}))
            assert all(late.messages[t].retained for t in expected), "every state topic is retained"
            energy = late.payload(f"{P}/E1/session_energy_wh")
            assert energy is not None and float(energy) >= 0
        finally:
            late.close()
        web.sim.set_silent("E2", True)  # E2 stops answering: its values become unknown, not 0
        web.cycles(5)
        info = web.client.get("get_dev_info").json()
        watcher = watch(broker, f"{P}/#")
        try:
            watcher.wait_for(matches({f"{P}/E2/state": "offline", f"{P}/E2/power_w": "None",
                                      f"{P}/E2/current_l1_a": "None"}), what="E2 offline")
        finally:
            watcher.close()
        assert next(d for d in info["devices"] if d["dev_id"] == "E2")["state_text"] == "offline"


# --------------------------------------------------------------------------- sets in


def test_a_set_over_mqtt_changes_the_variable_the_limit_and_is_logged(broker: Mosquitto) -> None:
    with running_web(mqtt=mqtt_section(broker), chargers={"E1": {"max_current_a": E1_MAX}}) as web:
        service = web.service
        assert service.mqtt is not None
        service.grid_log.start()
        service.mqtt.start()
        watcher = watch(broker, f"{P}/#")
        try:
            watcher.wait_for(matches({f"{P}/status": "online", f"{P}/site/var/AVAIL": "100"}))
            watcher.publish(f"{P}/set/AVAIL", "50")
            wait_until(lambda: service.store.snapshot().exprs.get("AVAIL") == 50, what="AVAIL = 50 in the store")
            web.cycles(3)
            e1 = next(d for d in web.client.get("get_dev_info").json()["devices"] if d["dev_id"] == "E1")
            assert e1["max_charging_cur"] == 8000 and e1["assigned_cur"] <= 8000
            watcher.wait_for(matches({f"{P}/site/var/AVAIL": "50", f"{P}/E1/limit_a": ma_to_a(e1["assigned_cur"])}))
            assert web.sim.wallbox("E1").values()["limit_written_a"] <= 8.0 + 1e-6  # the box got it
            assert web.client.get("get_cm_vars").json()["vars"][0] == {"name": "AVAIL", "expr": 50, "val": 50,
                                                                      "error": None}
        finally:
            watcher.close()
        service.grid_log.flush()
        rows = [e for e in service.grid_log.query() if e.kind == "variable" and e.name == "AVAIL"]
        assert [(e.old, e.new, e.source) for e in rows][-1] == (100, 50, "mqtt")


def test_refused_sets_change_nothing_and_say_why(broker: Mosquitto) -> None:
    seed = watch(broker)
    try:  # a set someone published with the retain flag long ago: the broker plays it at every connect
        seed.publish(f"{P}/set/AVAIL", "42", retain=True)
    finally:
        seed.close()
    with running_web(mqtt=mqtt_section(broker)) as web:
        service = web.service
        assert service.mqtt is not None
        before = dict(service.store.snapshot().exprs)
        watcher = watch(broker, f"{P}/#")
        try:
            service.mqtt.start()
            watcher.wait_for(lambda m: "retained" in getattr(m.get(f"{P}/set/AVAIL/error"), "payload", ""),
                             what="the retained set refused")
            for topic, payload, why in ((f"{P}/set/TARIF", "1", "not writable over MQTT"),
                                        (f"{P}/set/AVAIL", "abc", "not a number"),
                                        (f"{P}/set/AVAIL", "", "empty payload"),
                                        (f"{P}/set/AVAIL", "1e99", "too large")):
                watcher.publish(topic, payload)
                watcher.wait_for(lambda m: why in getattr(m.get(f"{topic}/error"), "payload", "-"), what=why)
                assert watcher.messages[f"{topic}/error"].retained is False
            assert dict(service.store.snapshot().exprs) == before
            watcher.publish(f"{P}/set/AVAIL", "75")  # the next good one works
            wait_until(lambda: service.store.snapshot().exprs.get("AVAIL") == 75)
        finally:
            watcher.publish(f"{P}/set/AVAIL", "", retain=True)  # clear the broker's copy
            watcher.close()


# --------------------------------------------------------------------------- Home Assistant discovery

# Home Assistant's MQTT discovery, field by field (its MQTT sensor, binary sensor and number
# documentation): the keys each component accepts, the ones it requires, and the unit and
# state class each device class accepts.
COMMON_KEYS = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
               "default_entity_id", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
               "json_attributes_template", "json_attributes_topic", "name", "object_id", "origin",
               "payload_available", "payload_not_available", "platform", "qos", "unique_id"}
ALLOWED = {
    "sensor": COMMON_KEYS | {"device_class", "expire_after", "force_update", "last_reset_value_template", "options",
                             "state_class", "state_topic", "suggested_display_precision", "unit_of_measurement",
                             "value_template"},
    "binary_sensor": COMMON_KEYS | {"device_class", "expire_after", "force_update", "off_delay", "payload_off",
                                    "payload_on", "state_topic", "value_template"},
    "number": COMMON_KEYS | {"command_template", "command_topic", "device_class", "max", "min", "mode", "optimistic",
                             "payload_reset", "retain", "state_topic", "step", "unit_of_measurement",
                             "value_template"},
}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "number": {"command_topic"}}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id",
               "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
SENSOR_UNITS = {"power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"}, "current": {"mA", "A"},
                "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"}}
SENSOR_STATE_CLASSES = {"power": {"measurement"}, "current": {"measurement"}, "energy": {"total", "total_increasing"}}
BINARY_DEVICE_CLASSES = {"battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
                         "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
                         "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
                         "tamper", "update", "vibration", "window"}


def check_config(component: str, config: dict[str, Any], states: dict[str, Received]) -> list[str]:
    """Every way ``config`` breaks Home Assistant's rules (empty: none)."""
    bad = [f"unknown key {k}" for k in set(config) - ALLOWED[component]]
    bad += [f"missing {k}" for k in REQUIRED[component] | {"name", "unique_id", "device"} if k not in config]
    device = config.get("device", {})
    bad += [f"unknown device key {k}" for k in set(device) - DEVICE_KEYS]
    if not (isinstance(device.get("identifiers"), list) and device["identifiers"]
            and all(isinstance(i, str) and i for i in device["identifiers"])):
        bad.append("device identifiers must be a non-empty list of strings")
    bad += [f"unknown origin key {k}" for k in set(config.get("origin", {})) - ORIGIN_KEYS]
    if config.get("entity_category") not in (None, "diagnostic", "config") or \
            (component != "number" and config.get("entity_category") == "config"):
        bad.append(f"entity_category {config.get('entity_category')}")
    dc, unit, sc = config.get("device_class"), config.get("unit_of_measurement"), config.get("state_class")
    if component == "sensor":
        if dc == "enum":
            if unit is not None or sc is not None or not config.get("options"):
                bad.append("an enum sensor has options, and no unit or state class")
        elif dc is not None:
            if unit not in SENSOR_UNITS.get(dc, set()):
                bad.append(f"unit {unit} is not one of device class {dc}")
            if sc not in SENSOR_STATE_CLASSES.get(dc, set()):
                bad.append(f"state class {sc} is not one of device class {dc}")
        elif unit is not None or sc is not None:
            bad.append("a text sensor has no unit or state class")
        if "suggested_display_precision" in config and not isinstance(config["suggested_display_precision"], int):
            bad.append("suggested_display_precision must be an integer")
    if component == "binary_sensor" and dc is not None and dc not in BINARY_DEVICE_CLASSES:
        bad.append(f"binary sensor device class {dc}")
    if component == "number":
        if config.get("mode", "auto") not in ("auto", "box", "slider"):
            bad.append(f"mode {config.get('mode')}")
        if not config.get("min", 1) < config.get("max", 100) or not config.get("step", 1) >= 0.001:
            bad.append("min < max and step >= 0.001")
    for key in ("state_topic", "availability_topic"):  # the topics exist: a retained value is there
        if key in config and config[key] not in states:
            bad.append(f"{key} {config[key]} has no retained value")
    if component == "sensor" and config.get("options") and config["state_topic"] in states \
            and states[config["state_topic"]].payload not in config["options"]:
        bad.append(f"state {states[config['state_topic']].payload} is not among the options")
    return bad


def test_discovery_configs_are_valid_for_home_assistant(broker: Mosquitto) -> None:
    with running_web(mqtt=mqtt_section(broker)) as web:
        assert web.service.mqtt is not None
        web.service.mqtt.start()
        expected_configs = web.service.mqtt.discovery
        web.cycles(1)
        def everything(m: dict[str, Any]) -> bool:
            return all(t in m for t in expected_configs) and f"{P}/E1/state" in m and f"{P}/site/var/AVAIL" in m

        first = watch(broker)  # may see them live (not flagged retained) on a busy machine
        try:
            first.wait_for(everything, what="every config and state")
        finally:
            first.close()
        watcher = watch(broker)  # subscribing later: what it gets at once is what the broker retained
        try:
            watcher.wait_for(everything, what="every config and state, retained")
            messages = dict(watcher.messages)
        finally:
            watcher.close()
    configs = {t: json.loads(r.payload) for t, r in messages.items() if t.startswith("homeassistant/")}
    assert set(configs) == set(expected_configs) and all(messages[t].retained for t in configs)
    states = {t: r for t, r in messages.items() if t.startswith(f"{P}/")}
    problems = {}
    for topic, config in configs.items():
        discovery, component, node, object_id, last = topic.split("/")
        assert (discovery, node, last) == ("homeassistant", "gridcharge", "config")
        assert component in ALLOWED, topic
        if found := check_config(component, config, states):
            problems[topic] = found
    assert not problems, problems
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(unique_ids) == len(set(unique_ids))
    devices = {tuple(c["device"]["identifiers"]): c["device"] for c in configs.values()}
    identifiers = {i for ids in devices for i in ids}
    assert {d["name"] for d in devices.values()} == {"gridcharge", "Wallbox E1", "Wallbox E2"}
    assert all(d.get("via_device", "gridcharge") in identifiers for d in devices.values())
    numbers = [c for t, c in configs.items() if t.startswith("homeassistant/number/")]
    assert [(c["name"], c["command_topic"], c["state_topic"]) for c in numbers] == \
        [("AVAIL", f"{P}/set/AVAIL", f"{P}/site/var/AVAIL")]
    sensors = {c["unique_id"]: c for c in configs.values()}
    assert sensors["gridcharge_charger_E1_session_energy_wh"]["unit_of_measurement"] == "Wh"
    assert sensors["gridcharge_site_failsafe"]["device_class"] == "problem"
    assert sensors["gridcharge_input_RSE1"]["state_topic"] == f"{P}/site/input/RSE1"


def test_home_assistant_online_gets_the_configs_again_and_stale_ones_are_deleted(broker: Mosquitto) -> None:
    stale = "homeassistant/sensor/gridcharge/charger_E9_power_w/config"  # a charger that is gone
    other = "homeassistant/sensor/othernode/x/config"  # not ours: left alone
    seed = watch(broker)
    try:
        seed.publish(stale, '{"name": "Power"}', retain=True)
        seed.publish(other, '{"name": "X"}', retain=True)
    finally:
        seed.close()
    with running_web(mqtt=mqtt_section(broker)) as web:
        assert web.service.mqtt is not None
        web.service.mqtt.start()
        topic = "homeassistant/number/gridcharge/variable_AVAIL/config"
        watcher = watch(broker, "homeassistant/#")
        try:
            watcher.wait_for(lambda m: topic in m and m.get(stale, Received("x", True)).payload == "",
                             what="the config, and the stale one deleted")
            assert watcher.payload(other) == '{"name": "X"}'
            count = sum(1 for t, _ in watcher.history if t == topic)
            watcher.publish("homeassistant/status", "online")  # Home Assistant (re)started
            watcher.wait_for(lambda m: sum(1 for t, _ in watcher.history if t == topic) > count,
                             what="the configs again")
        finally:
            watcher.close()


def test_discovery_switched_off_deletes_the_configs_of_an_earlier_run(broker: Mosquitto) -> None:
    with running_web(mqtt=mqtt_section(broker)) as web:  # an earlier run, with discovery
        assert web.service.mqtt is not None
        web.service.mqtt.start()
        configs = set(web.service.mqtt.discovery)
        watcher = watch(broker, "homeassistant/#")
        try:
            watcher.wait_for(lambda m: configs <= set(m), what="the configs")
        finally:
            watcher.close()
    watcher = watch(broker, "homeassistant/#")  # gets the configs of the earlier run, retained
    try:
        watcher.wait_for(lambda m: configs <= set(m), what="the earlier configs")
        with running_web(mqtt=mqtt_section(broker, homeassistant=False)) as web:
            assert web.service.mqtt is not None and web.service.mqtt.discovery == {}
            web.service.mqtt.start()
            watcher.wait_for(lambda m: all(m[t].payload == "" for t in configs), what="every config deleted")
    finally:
        watcher.close()
    later = watch(broker, "homeassistant/#")
    try:
        time.sleep(0.3)  # a retained config would arrive at once on subscribing
        assert later.messages == {}
    finally:
        later.close()


def test_tls_with_a_client_certificate_and_what_refuses_it(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path, tls=(pki.ca_path, *pki.server_paths))
    broker.start()
    watcher = watch(broker, "#")  # on the plain listener
    cert, key = (str(p) for p in pki.client_paths)
    try:
        good = {"host": "127.0.0.1", "port": broker.tls_port, "tls": {"ca": str(pki.ca_path), "cert": cert, "key": key}}
        with running_web(mqtt=good) as web:
            assert web.service.mqtt is not None
            web.service.mqtt.start()
            watcher.wait_for(matches({f"{P}/status": "online", f"{P}/E1/state": "C (charging)"}), what="over TLS")
        untrusted = {**good, "prefix": "untrusted", "tls": {"ca": str(pki.rogue_ca_path), "cert": cert, "key": key}}
        missing = {**good, "prefix": "missing", "tls": {"ca": str(tmp_path / "gone.pem")}}
        with running_web(mqtt=untrusted) as web, running_web(mqtt=missing) as web2:
            for service, why in ((web.service, "cannot reach the broker"), (web2.service, "TLS files unusable")):
                assert service.mqtt is not None
                service.mqtt.start()  # the controller runs on: MQTT only is off, and the status says why
                wait_until(lambda: any(f.startswith(f"mqtt: {why}") for f in service.status().faults), what=why)
            web.cycles(1)
        assert not any(t.startswith(("untrusted/", "missing/")) for t in watcher.messages)
    finally:
        watcher.close()
        broker.stop()


# --------------------------------------------------------------------------- the last will


def test_the_last_will_says_offline_when_the_process_dies(broker: Mosquitto, sim: SimulatedSite,
                                                           tmp_path: Path) -> None:
    data = sim.config_dict(timeout_s=0.3)
    data.update(site=BASE_SITE, variables={"AVAIL": 100}, state_dir=str(tmp_path / "state"),
                mqtt=mqtt_section(broker))
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    watcher = watch(broker, f"{P}/#")
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        watcher.wait_for(matches({f"{P}/status": "online", f"{P}/E1/state": "C (charging)"}), timeout_s=15)
        os.kill(proc.pid, signal.SIGKILL)  # no goodbye: only the broker's last will can say it
        proc.wait(5)
        watcher.wait_for(matches({f"{P}/status": "offline"}), what="the last will")
    finally:
        proc.kill()
        proc.wait(5)
        watcher.close()
    later = watch(broker, f"{P}/status")
    try:
        later.wait_for(lambda m: m.get(f"{P}/status") == Received("offline", True), what="offline, retained")
    finally:
        later.close()


# --------------------------------------------------------------------------- a broker that goes away


CYCLE_S = 0.4  # a few cycles per phase of the broker; long enough that a busy CI machine does not overrun


def test_a_slow_or_stopped_broker_never_slows_the_loop(broker: Mosquitto, sim: SimulatedSite) -> None:
    cfg = make_config(sim, site={"cycle_s": CYCLE_S, "stale_s": 2.0}, mqtt=mqtt_section(broker))
    service = Service(cfg)  # the real clock: the loop runs on its own thread, as in production
    assert service.mqtt is not None
    cycles: list[tuple[float, float, int]] = []  # (when, cycle time, overruns)
    service.loop.add_cycle_listener(lambda s: cycles.append((time.monotonic(), s.cycle_time_s, s.overruns)))
    watcher = watch(broker, f"{P}/#")
    service.start()
    try:
        watcher.wait_for(matches({f"{P}/status": "online", f"{P}/E1/state": "C (charging)"}), timeout_s=10)
        watcher.close()
        t0 = time.monotonic()
        time.sleep(1.0)
        t1 = time.monotonic()
        broker.pause()  # a broker that takes nothing in (a stuck process, a full network)
        time.sleep(1.5)
        broker.resume()
        broker.stop()  # and one that is gone
        wait_until(lambda: any(f.startswith("mqtt: ") for f in service.status().faults), what="an mqtt fault")
        time.sleep(1.5)
        t2 = time.monotonic()
        broker.start()  # a fresh broker: it lost every retained message
        watcher = watch(broker, "#")
        again = {f"{P}/status", f"{P}/E1/state", f"{P}/site/var/AVAIL", *service.mqtt.discovery}
        watcher.wait_for(lambda m: again <= set(m), timeout_s=8, what="everything again")
        assert not any(f.startswith("mqtt: ") for f in service.status().faults)
        watcher.publish(f"{P}/set/AVAIL", "40")  # sets work again
        wait_until(lambda: service.store.snapshot().exprs.get("AVAIL") == 40)
        watcher.wait_for(matches({f"{P}/site/var/AVAIL": "40"}))
    finally:
        watcher.close()
        service.stop()
    before = [c for when, c, _ in cycles if t0 <= when < t1]
    during = [c for when, c, _ in cycles if t1 <= when < t2]
    overruns = [o for when, _, o in cycles if t0 <= when < t2]
    assert len(before) >= 2 and len(during) >= 6, (len(before), len(during))
    assert overruns[-1] == overruns[0], "no cycle overran while the broker was slow or away"
    median = sorted(during)[len(during) // 2]
    assert max(during) < CYCLE_S and median <= 2 * sorted(before)[len(before) // 2] + 0.02, (before, during)
