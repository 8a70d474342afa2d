"""The cFos-compatible API over real HTTP: the listener on 127.0.0.1, requests (and curl), a real
variable store and control loop on a simulated site (Modbus TCP on loopback)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pki import Pki, make_pki
from site_helpers import home_site, make_config
from web_helpers import (
    PASSWORD,
    USER,
    WebSite,
    api_context,
    http_section,
    lan_client,
    running_web,
    smgw_section,
)

from controller.records.gridlog import GridLog, GridSignalRecorder
from controller.service import Service
from hal.sim.site import SimulatedSite
from web.auth import hash_password
from web.server import WebServers
from web.tls import TlsStore

FAST_S = 1.0  # "answers at once": generous for a loaded 2-core CI machine


@pytest.fixture(scope="module")
def site() -> Iterator[SimulatedSite]:
    sim = home_site()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture()
def web(site: SimulatedSite) -> Iterator[WebSite]:
    """A fresh store, loop and listener (no cycle run yet): for tests that change something."""
    with running_web(site, cycles=0) as w:
        yield w


@pytest.fixture(scope="module")
def shared(site: SimulatedSite) -> Iterator[WebSite]:
    """One store, loop and listener for the tests that must change nothing (each one checks)."""
    with running_web(site, cycles=1) as w:
        yield w


def exprs(web: WebSite) -> dict[str, Any]:
    return dict(web.service.store.snapshot().exprs)


def assert_error(response: requests.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    for word in words:
        assert word in message, message
    return message


def assert_rejected(web: WebSite, response: requests.Response, *words: str) -> None:
    """400, a message that says what is wrong, and nothing changed."""
    before = web.service.store.snapshot()
    assert_error(response, 400, *words)
    after = web.service.store.snapshot()
    assert after.generation == before.generation and dict(after.exprs) == dict(before.exprs)


# --------------------------------------------------------------------------- curl, verbatim


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_the_manuals_curl_lines_work_with_the_host_changed(web: WebSite) -> None:
    host = f"127.0.0.1:{web.servers.lan_port}"

    def curl(*args: str) -> tuple[int, Any]:
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--user", f"admin:{PASSWORD}", *args],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        body, _, code = out.rpartition("\n")
        return int(code), json.loads(body)

    code, body = curl(f"http://{host}/cnf?cmd=set_cm_vars&name=AVAIL&val=50")
    assert code == 200 and {"name": "AVAIL", "expr": 50, "val": 50, "error": None} in body["vars"]
    code, body = curl("-d", '{"vars": [{"name": "tarif", "expr": 1}, {"name": "PWR", "expr": 70}]}',
                      f"http://{host}/cnf?cmd=set_cm_vars")
    assert code == 200 and exprs(web) == {"AVAIL": 50, "TARIF": 0, "tarif": 1, "PWR": 70}
    code, body = curl("-d", '{"vars": [{"name": "tarif", "expr": 1}, {"name": "PWR", "expr": 70}]]}',
                      f"http://{host}/cnf?cmd=set_cm_vars")  # the manual's own stray ']'
    assert code == 400 and "not valid JSON" in body["error"]
    code, body = curl("-d", '{"vars": [{"name": "AVAIL", "expr": 80}]}', f"http://{host}/cnf?cmd=set_cm_vars&clear=1")
    assert code == 200 and exprs(web) == {"AVAIL": 80}
    code, body = curl(f"http://{host}/cnf?cmd=set_cm_vars&name=TARIF&val=1&clear=1")
    assert code == 200 and exprs(web) == {"TARIF": 1}
    code, body = curl(f"http://{host}/cnf?cmd=set_cm_vars&name=AVAIL&val=30&tmp=1")
    assert code == 200 and exprs(web) == {"TARIF": 1, "AVAIL": 30}
    code, body = curl(f"http://{host}/cnf?cmd=get_cm_vars")
    assert code == 200 and [v["name"] for v in body["vars"]] == ["AVAIL", "TARIF"]
    code, body = curl(f"http://{host}/cnf?cmd=get_dev_info")
    assert code == 200 and {"params", "devices", "inputs"} <= set(body)
    code, body = curl(f"http://{host}/cnf?cmd=override_device&dev_id=E1&mamps=10000")
    assert code == 200 and body["override_cur"] == 10000
    code, body = curl(f"http://{host}/cnf?cmd=override_device&dev_id=E1&flags=C")
    assert code == 200 and body["charging_enabled"] is False


# --------------------------------------------------------------------------- set_cm_vars


def test_get_set_stores_a_number_as_a_number_and_a_formula_as_text(web: WebSite) -> None:
    r = web.client.get("set_cm_vars", name="AVAIL", val="123")
    assert r.status_code == 200
    assert exprs(web)["AVAIL"] == 123 and isinstance(exprs(web)["AVAIL"], int)
    r = web.client.get("set_cm_vars", name="LIM", val="55000 * AVAIL / 100")
    assert r.status_code == 200 and exprs(web)["LIM"] == "55000 * AVAIL / 100"
    r = web.client.get("set_cm_vars", name="F", val="1.5")
    assert exprs(web)["F"] == 1.5
    body = r.json()  # a successful set answers like get_cm_vars
    assert body == web.client.get("get_cm_vars").json()


def test_post_body_is_json_whatever_the_content_type(web: WebSite) -> None:
    body = '{"vars": [{"name": "tarif", "expr": 1}, {"name": "PWR", "expr": "tarif * 70"}]}'
    for content_type in ("application/x-www-form-urlencoded", "application/json", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = web.client.session.post(web.client.url, params={"cmd": "set_cm_vars"}, data=body, headers=headers)
        assert r.status_code == 200, r.text
    assert exprs(web)["tarif"] == 1 and exprs(web)["PWR"] == "tarif * 70"


def test_get_cm_vars_shape_sorted_with_values_from_the_latest_cycle(web: WebSite) -> None:
    web.client.post("set_cm_vars", '{"vars": [{"name": "b", "expr": "AVAIL / 4"}, {"name": "a", "expr": "nope + 1"},'
                                   ' {"name": "Z", "expr": true}]}')
    before = {v["name"]: v for v in web.client.get("get_cm_vars").json()["vars"]}
    assert before["b"] == {"name": "b", "expr": "AVAIL / 4", "val": None,
                           "error": "not evaluated yet (set after the latest cycle)"}
    assert before["Z"] == {"name": "Z", "expr": True, "val": True, "error": None}  # a constant needs no cycle
    web.cycles(1)
    body = web.client.get("get_cm_vars").json()
    assert [v["name"] for v in body["vars"]] == ["AVAIL", "TARIF", "Z", "a", "b"]
    for item in body["vars"]:
        assert set(item) == {"name", "expr", "val", "error"}
    values = {v["name"]: v for v in body["vars"]}
    assert values["b"]["val"] == 25 and values["b"]["error"] is None
    assert values["a"]["val"] is None and "nope" in values["a"]["error"]
    assert values["AVAIL"] == {"name": "AVAIL", "expr": 100, "val": 100, "error": None}


def test_clear_deletes_every_variable_then_sets(web: WebSite) -> None:
    r = web.client.get("set_cm_vars", name="X", val="7", clear="1")
    assert r.status_code == 200 and exprs(web) == {"X": 7}
    r = web.client.post("set_cm_vars", '{"vars": []}', clear="1")
    assert r.status_code == 200 and exprs(web) == {} and r.json() == {"vars": []}


def test_tmp_applies_but_does_not_change_what_is_saved(web: WebSite) -> None:
    web.client.get("set_cm_vars", name="AVAIL", val="60")
    r = web.client.get("set_cm_vars", name="AVAIL", val="10", tmp="1")
    assert r.status_code == 200
    snap = web.service.store.snapshot()
    assert snap.exprs["AVAIL"] == 10 and snap.persistent["AVAIL"] == 60


def test_body_items_may_carry_what_get_cm_vars_returned(web: WebSite) -> None:
    items = web.client.get("get_cm_vars").json()["vars"]
    items[0]["expr"] = 42
    r = web.client.post("set_cm_vars", json.dumps({"vars": items}))
    assert r.status_code == 200 and exprs(web)["AVAIL"] == 42


@pytest.mark.parametrize(("body", "words"), [
    ('{"vars": [{"name": "tarif", "expr": 1}, {"name": "PWR", "expr": 70}]]}', ("not valid JSON",)),
    ('{"vars": [{"name": "A", "expr": 1}, {"name": "B", "expr": "(("}]}', ("variable B",)),
    ('{"vars": [{"name": "A", "expr": 1}, {"name": "1B", "expr": 2}]}', ("invalid name",)),
    ('{"vars": [{"name": "A", "expr": NaN}]}', ("NaN",)),
    ('{"vars": [{"name": "A", "expr": Infinity}]}', ("Infinity",)),
    ('{"vars": [{"name": "A", "expr": 1e999}]}', ("variable A",)),
    ('{"vars": [{"name": "A", "expr": 1}, {"name": "B", "expr": 1e16}]}', ("variable B: number too large: 1e+16 (at most ±1e15)",)),
    ('{"vars": [{"name": "A", "expr": 1}, {"name": "B", "expr": ' + "9" * 303 + '}]}',
     ("variable B: number too large: an integer of 303 digits (at most ±1e15)",)),
    ('{"vars": [{"name": "A", "expr": 1}, {"name": "B", "expr": "-1000000000000001"}]}', ("variable B: number too large",)),
    ('{"vars": [{"name": "A", "expr": "\u0661\u0662\u0663"}]}', ("variable A: digit '\u0661' (U+0661) is not allowed",)),
    ('{"vars": [{"name": "A", "expr": "AVAIL * \u0663"}]}', ("variable A: digit '\u0663' (U+0663) is not allowed",)),
    ('{"vars": [{"name": "A", "expr": null}]}', ("expr must be",)),
    ('{"vars": [{"name": "A", "expr": [1]}]}', ("expr must be",)),
    ('{"vars": [{"name": "A", "expr": {"x": 1}}]}', ("expr must be",)),
    ('{"vars": [{"name": 5, "expr": 1}]}', ("name must be a string",)),
    ('{"vars": [{"name": "A"}]}', ('"expr" missing',)),
    ('{"vars": [{"expr": 1}]}', ('"name" missing',)),
    ('{"vars": [{"name": "A", "exp": 1}]}', ("unknown key", "exp")),
    ('{"vars": [{"name": "A", "expr": 1}, {"name": "A", "expr": 2}]}', ("given twice",)),
    ('{"vars": {"name": "A", "expr": 1}}', ("must be a list",)),
    ('{"var": [{"name": "A", "expr": 1}]}', ("unknown key",)),
    ('[{"name": "A", "expr": 1}]', ("must be a JSON object",)),
    ('"vars"', ("must be a JSON object",)),
    ('{"vars": [1]}', ("must be an object",)),
    ("vars=1", ("not valid JSON",)),
    ("[" * 5000 + "]" * 5000, ("nested too deeply",)),
    ('{"vars": [{"name": "A", "expr": ' + "9" * 5000 + "}]}", ("not usable JSON",)),
    (b'{"vars": [{"name": "A\xff", "expr": 1}]}', ("not UTF-8",)),
    ('{"vars": [{"name": "E1", "expr": 1}]}', ("device or input id",)),
    ('{"vars": [{"name": "RSE1", "expr": 1}]}', ("device or input id",)),
    ('{"vars": [{"name": "min", "expr": 1}]}', ("function",)),
    ('{"vars": [{"name": "class", "expr": 1}]}', ("keyword",)),
    ('{"vars": [{"name": "' + "x" * 65 + '", "expr": 1}]}', ("invalid name",)),
    ('{"vars": [{"name": "A", "expr": "__import__(\'os\').system(\'id\')"}]}', ("variable A",)),
    ('{"vars": [{"name": "A", "expr": "open(\'/etc/passwd\').read()"}]}', ("variable A",)),
    ('{"vars": [{"name": "A", "expr": "E1.__class__"}]}', ("variable A",)),
    ('{"vars": [{"name": "A", "expr": "[x for x in range(10**9)]"}]}', ("variable A",)),
    ('{"vars": [{"name": "A", "expr": "lambda: 1"}]}', ("variable A",)),
    ('{"vars": [{"name": "A", "expr": "B + 1"}, {"name": "B", "expr": "A + 1"}]}', ("cycle",)),
    ('{"vars": [{"name": "A", "expr": "A * 2"}]}', ("cycle",)),
])
def test_bad_posts_are_400_and_change_nothing(shared: WebSite, body: str | bytes, words: tuple[str, ...]) -> None:
    assert_rejected(shared, shared.client.post("set_cm_vars", body), *words)
    assert_rejected(shared, shared.client.post("set_cm_vars", body, clear="1"), *words)  # clear=1 does not clear


@pytest.mark.parametrize(("params", "words"), [
    ({"name": "A"}, ("val missing",)),
    ({"val": "1"}, ("name missing",)),
    ({"name": "A", "val": ""}, ("empty",)),
    ({"name": "A", "val": "(("}, ("variable A",)),
    ({"name": "E1", "val": "1"}, ("device or input id",)),
    ({"name": "A b", "val": "1"}, ("invalid name",)),
    ({"name": "A", "val": "1", "clear": "yes"}, ("clear must be 0 or 1",)),
    ({"name": "A", "val": "1", "tmp": "2"}, ("tmp must be 0 or 1",)),
    ({"name": ["A", "B"], "val": "1"}, ("given 2 times",)),
    ({"name": "A", "val": "1e999"}, ("too large",)),
    ({"name": "A", "val": "1e16"}, ("variable A: number too large: 1e+16 (at most ±1e15)",)),
    ({"name": "A", "val": "-2000000000000000"}, ("variable A: number too large: -2000000000000000",)),
    ({"name": "A", "val": "AVAIL + 1e16"}, ("variable A: number too large",)),
    # digits of other scripts: int('١٢٣') is 123 in Python, but here it is no number
    ({"name": "A", "val": "\u0661\u0662\u0663"}, ("variable A: digit '\u0661' (U+0661) is not allowed: write "
                                                    "numbers with the digits 0-9 (col 1)",)),
    ({"name": "A", "val": "\uff11\uff12\uff13"}, ("digit '\uff11' (U+FF11) is not allowed",)),
    ({"name": "A", "val": "1\u0662"}, ("digit '\u0662' (U+0662) is not allowed",)),
    ({"name": "A", "val": "\u00b2"}, ("digit '\u00b2' (U+00B2) is not allowed",)),
    ({"name": "A", "val": "x" * 2000}, ("too long",)),
])
def test_bad_gets_are_400_and_change_nothing(shared: WebSite, params: dict[str, Any], words: tuple[str, ...]) -> None:
    assert_rejected(shared, shared.client.get("set_cm_vars", **params), *words)


def test_query_and_body_together_is_400(shared: WebSite) -> None:
    r = shared.client.post("set_cm_vars", '{"vars": [{"name": "A", "expr": 1}]}', name="B", val="2")
    assert_rejected(shared, r, "not both")


def test_a_cycle_with_an_existing_variable_is_400(web: WebSite) -> None:
    web.client.get("set_cm_vars", name="A", val="B + 1")
    assert_rejected(web, web.client.get("set_cm_vars", name="B", val="A * 2"), "cycle")


def test_more_variables_than_max_variables_is_400_and_changes_nothing(site: SimulatedSite) -> None:
    with running_web(site, cycles=0, max_variables=4) as web:  # the config has AVAIL and TARIF
        assert web.client.get("set_cm_vars", name="A", val="1").status_code == 200
        body = '{"vars": [{"name": "B", "expr": 2}, {"name": "C", "expr": 3}]}'
        assert_rejected(web, web.client.post("set_cm_vars", body),
                        "too many variables: this change would make 5 (at most 4, max_variables in the config)")
        assert web.client.get("set_cm_vars", name="B", val="2").status_code == 200  # the fourth
        assert_rejected(web, web.client.get("set_cm_vars", name="C", val="3", tmp="1"), "would make 5")
        assert web.client.get("set_cm_vars", name="A", val="B + 1").status_code == 200  # a change, not a fifth
        r = web.client.post("set_cm_vars", body, clear="1")  # clear=1 makes room
        assert r.status_code == 200 and exprs(web) == {"B": 2, "C": 3}


def test_numbers_up_to_1e15_are_kept_exactly(web: WebSite) -> None:
    r = web.client.get("set_cm_vars", name="A", val="-1000000000000000")
    assert r.status_code == 200 and exprs(web)["A"] == -10**15
    r = web.client.post("set_cm_vars", '{"vars": [{"name": "B", "expr": 999999999999999.5}, '
                                       '{"name": "C", "expr": 1e15}]}')
    assert r.status_code == 200
    web.cycles(1)
    shown = {v["name"]: v for v in web.client.get("get_cm_vars").json()["vars"]}
    assert shown["A"]["val"] == -10**15 and shown["B"]["val"] == 999999999999999.5
    assert shown["C"]["val"] == 10**15 and shown["C"]["error"] is None


def test_a_result_beyond_1e15_is_an_evaluation_error_not_a_huge_number(web: WebSite) -> None:
    """Only the result counts: a limit may be computed through larger values."""
    body = ('{"vars": [{"name": "BIG", "expr": "1e15 * 1e15 * 1e15 * 1e15 * 1e15"}, '
            '{"name": "OK", "expr": "1e15 * 1e15 / 1e15"}, {"name": "USES", "expr": "BIG / 1e15"}]}')
    assert web.client.post("set_cm_vars", body).status_code == 200
    web.cycles(1)
    response = web.client.get("get_cm_vars")
    assert max(len(token) for token in re.findall(r"[0-9]+", response.text)) <= 16
    shown = {v["name"]: v for v in response.json()["vars"]}
    assert shown["BIG"]["val"] is None
    assert shown["BIG"]["error"] == "result out of range: 1e+75 (beyond ±1e15)"
    assert shown["OK"] == {"name": "OK", "expr": "1e15 * 1e15 / 1e15", "val": 10**15, "error": None}
    assert shown["USES"]["val"] is None and "BIG has no value (result out of range" in shown["USES"]["error"]


def test_a_huge_power_sets_fast_and_evaluates_to_an_error(web: WebSite) -> None:
    start = time.monotonic()
    r = web.client.get("set_cm_vars", name="HUGE", val="9**9**9**9")
    assert r.status_code == 200 and time.monotonic() - start < FAST_S
    start = time.monotonic()
    web.cycles(1)
    item = next(v for v in web.client.get("get_cm_vars").json()["vars"] if v["name"] == "HUGE")
    assert item["val"] is None and item["error"]
    assert time.monotonic() - start < 5 * FAST_S  # one cycle with device I/O; no hang


def test_a_set_wakes_the_loop_and_changes_the_limits_at_once(site: SimulatedSite) -> None:
    """A real ControlLoop with a 5 s period: only the wake-up can explain a change within 1 s."""
    cfg = make_config(site, site={"grid_limit_w": "LIM", "cycle_s": 5.0, "stale_s": 5.0, "watchdog_s": 10.0},
                      variables={"LIM": 20000})
    service = Service(cfg)
    seen: list[Any] = []
    changed = threading.Event()
    first = threading.Event()

    def on_cycle(status: Any) -> None:
        seen.append(status)
        first.set()
        if status.grid_limit_w == 5000:
            changed.set()

    service.loop.add_cycle_listener(on_cycle)
    servers = WebServers(api_context(service), http_section(), None, None)
    servers.start()
    client = lan_client(servers)
    service.start()
    try:
        assert first.wait(10)
        assert seen[-1].grid_limit_w == 20000
        start = time.monotonic()
        assert client.get("set_cm_vars", name="LIM", val="5000").status_code == 200
        assert changed.wait(5)
        assert time.monotonic() - start < FAST_S
        info = client.get("get_dev_info").json()
        assert info["params"]["grid_limit_w"] == 5000
    finally:
        client.close()
        servers.stop()
        service.stop()


# --------------------------------------------------------------------------- get_dev_info


def test_get_dev_info_in_cfos_shape_and_units(web: WebSite) -> None:
    web.cycles(2)  # the second cycle reads what the first one wrote: the cars charge
    info = web.client.get("get_dev_info").json()
    params = info["params"]
    for key in ("max_total_current", "cycle_time", "version", "grid_limit_w", "chargers_limit_w", "failsafe",
                "overruns", "cycle_count"):
        assert key in params
    assert params["version"] == "test" and params["cycle_count"] == 2 and params["failsafe"] is None
    assert isinstance(params["max_total_current"], int) and isinstance(params["cycle_time"], int)
    devices = {d["dev_id"]: d for d in info["devices"]}
    assert set(devices) == {"E1", "E2", "M1"}
    e1, m1 = devices["E1"], devices["M1"]
    assert e1["is_evse"] is True and m1["is_evse"] is False
    assert e1["state"] == 3 and isinstance(e1["current_l1"], int) and e1["current_l1"] > 1000  # mA
    assert e1["last_set_charging_cur"] == round(web.service.loop.status.charger("E1").written_a * 1000)
    assert e1["max_charging_cur"] == 16000 and e1["min_charging_cur"] == 6000 and e1["lreason"]
    assert m1["power_w"] > 0 and m1["current_l1"] > 1000 and 200 < m1["voltage_l1"] < 260
    assert info["inputs"] == [{"id": "RSE1", "active": False, "com_err": False, "com_err_secs": 0,
                               "last_error": "", "dev_type": "input_modbus_io",
                               "address": info["inputs"][0]["address"]}]


# --------------------------------------------------------------------------- override_device


def test_override_caps_then_disables_then_enables(web: WebSite) -> None:
    r = web.client.get("override_device", dev_id="E1", mamps="8000")
    assert r.status_code == 200 and r.json() == {"dev_id": "E1", "charging_enabled": True, "override_cur": 8000}
    r = web.client.get("override_device", dev_id="E1", flags="C")  # before any cycle: composes with the cap
    assert r.json() == {"dev_id": "E1", "charging_enabled": False, "override_cur": 8000}
    status = web.cycles(1)
    e1 = status.charger("E1")
    assert e1.enabled is False and e1.override_a == 8.0 and e1.command_a == 0
    r = web.client.get("override_device", dev_id="E1", flags="c")
    assert r.json() == {"dev_id": "E1", "charging_enabled": True, "override_cur": 8000}
    e1 = web.cycles(2).charger("E1")
    assert e1.enabled is True and e1.override_a == 8.0 and 0 < e1.command_a <= 8.0
    info = {d["dev_id"]: d for d in web.client.get("get_dev_info").json()["devices"]}
    assert info["E1"]["override_cur"] == 8000 and info["E1"]["charging_enabled"] is True
    r = web.client.get("override_device", dev_id="E1", mamps="-1")
    assert r.json()["override_cur"] is None
    e1 = web.cycles(1).charger("E1")
    assert e1.override_a is None and e1.enabled is True


@pytest.mark.parametrize(("params", "words"), [
    ({"dev_id": "E9", "mamps": "8000"}, ("no charger", "E1, E2")),
    ({"dev_id": "M1", "mamps": "8000"}, ("not a charger",)),
    ({"dev_id": "RSE1", "flags": "C"}, ("not a charger",)),
    ({"mamps": "8000"}, ("dev_id missing",)),
    ({"dev_id": "E1"}, ("mamps", "flags")),
    ({"dev_id": "E1", "mamps": "8.5"}, ("mamps must be",)),
    ({"dev_id": "E1", "mamps": "-5"}, ("mamps must be",)),
    ({"dev_id": "E1", "mamps": "80001"}, ("mamps must be",)),
    ({"dev_id": "E1", "mamps": "ten"}, ("mamps must be",)),
    ({"dev_id": "E1", "mamps": "\u0663000"}, ("mamps must be",)),
    ({"dev_id": "E1", "flags": "E"}, ("flags must be",)),
    ({"dev_id": "E1", "flags": "Cc"}, ("flags must be",)),
    ({"dev_id": "E1", "flags": ""}, ("flags must be",)),
])
def test_bad_overrides_are_400(shared: WebSite, params: dict[str, str], words: tuple[str, ...]) -> None:
    assert_error(shared.client.get("override_device", **params), 400, *words)
    status = shared.cycles(1)
    assert all(c.enabled and c.override_a is None for c in status.chargers)


# --------------------------------------------------------------------------- get_grid_log


@pytest.fixture()
def logged_web(site: SimulatedSite, tmp_path: Path) -> Iterator[tuple[WebSite, GridLog]]:
    grid_log = GridLog(tmp_path / "gridlog.sqlite3")
    grid_log.start()
    try:
        with running_web(site, grid_log=grid_log, cycles=0) as w:
            GridSignalRecorder(grid_log).attach(w.service.store, w.service.loop)
            w.cycles(1)
            yield w, grid_log
    finally:
        grid_log.stop()


def test_grid_log_records_api_sets_with_listener_and_client(logged_web: tuple[WebSite, GridLog]) -> None:
    web, grid_log = logged_web
    assert web.client.get("set_cm_vars", name="AVAIL", val="40").status_code == 200
    grid_log.flush()
    events = web.client.get("get_grid_log").json()["events"]
    row = [e for e in events if e["kind"] == "variable" and e["source"] != "start"][-1]
    assert row["name"] == "AVAIL" and row["old"] == 100 and row["new"] == 40
    assert row["source"] == "lan:127.0.0.1" and row["time"].endswith("Z")
    assert {e["kind"] for e in events} >= {"variable", "limit", "input", "failsafe"}
    r = web.client.get("get_grid_log", format="csv")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == "time,ts,kind,name,old,new,source,grid_power_w"
    assert any(",variable,AVAIL,100,40,lan:127.0.0.1," in line for line in lines)


def test_grid_log_time_range_formats_and_limit(logged_web: tuple[WebSite, GridLog]) -> None:
    web, grid_log = logged_web
    base = 1_767_614_400.0  # 2026-01-05T12:00:00Z
    for i in range(5):
        grid_log.record("input", "RSE1", i % 2 == 1, i % 2 == 0, "input", 1000.0 + i, ts=base + 60 * i)
    grid_log.record("variable", "X", None, "=cmd|' /C calc'!A0", "lan:10.0.0.9", None, ts=base + 1)
    grid_log.flush()

    def names(**params: str) -> list[tuple[str, float]]:
        r = web.client.get("get_grid_log", **params)
        assert r.status_code == 200, r.text
        return [(e["name"], e["ts"]) for e in r.json()["events"]]

    assert len(names(**{"from": str(base), "to": str(base + 300)})) == 6
    assert names(**{"from": "2026-01-05T12:01:00Z", "to": "2026-01-05T12:03:00Z"}) == [
        ("RSE1", base + 60), ("RSE1", base + 120)]
    assert names(**{"from": "2026-01-05T13:01:00+01:00", "to": "2026-01-05 12:03"}) == [
        ("RSE1", base + 60), ("RSE1", base + 120)]
    r = web.client.session.get(f"{web.client.url}?cmd=get_grid_log&from=2026-01-05T13:01:00+01:00&to={base + 121}")
    assert [e["ts"] for e in r.json()["events"]] == [base + 60, base + 120]  # '+' arrived as a space
    body = web.client.get("get_grid_log", **{"from": str(base), "limit": "2"}).json()
    assert len(body["events"]) == 2 and body["truncated"] is True
    newest = web.client.get("get_grid_log", **{"from": str(base), "to": str(base + 300), "limit": "2",
                                               "order": "newest"}).json()  # the status page's last signals
    assert [e["ts"] for e in newest["events"]] == [base + 240, base + 180] and newest["truncated"] is True
    r = web.client.get("get_grid_log", order="latest")
    assert r.status_code == 400 and r.json()["error"] == "parameter order must be oldest or newest, not 'latest'"
    csv_text = web.client.get("get_grid_log", format="csv", **{"from": str(base), "to": str(base + 2)}).text
    assert "'=cmd|" in csv_text  # a spreadsheet will not run it


def test_grid_log_csv_has_whole_seconds_and_whole_watts(logged_web: tuple[WebSite, GridLog]) -> None:
    web, grid_log = logged_web
    base = 1_767_614_400.0  # 2026-01-05T12:00:00Z
    grid_log.record("limit", "grid_limit_w", 16999.6, 17000.4, "loop", 13364.4375, ts=base + 59.603)
    grid_log.record("variable", "AVAIL", 100, 50.0, "lan:10.0.0.9", None, ts=base + 61.999)
    grid_log.record("variable", "K", 0.35, "AVAIL * 2", "lan:10.0.0.9", -0.4, ts=base + 62)
    grid_log.flush()
    params = {"format": "csv", "from": str(base), "to": str(base + 100)}
    lines = web.client.get("get_grid_log", **params).text.splitlines()
    assert lines[1:] == [
        "2026-01-05T12:00:59Z,1767614459,limit,grid_limit_w,17000,17000,loop,13364",
        "2026-01-05T12:01:01Z,1767614461,variable,AVAIL,100,50,lan:10.0.0.9,",
        "2026-01-05T12:01:02Z,1767614462,variable,K,0.35,AVAIL * 2,lan:10.0.0.9,0",
    ]
    event = web.client.get("get_grid_log", **{**params, "format": "json"}).json()["events"][0]
    assert event["time"] == "2026-01-05T12:00:59.603Z" and event["new"] == 17000.4  # JSON keeps all


@pytest.mark.parametrize(("params", "words"), [
    ({"from": "yesterday"}, ("from must be",)),
    ({"to": "nan"}, ("to must be",)),
    ({"from": "1e400"}, ("from must be",)),
    ({"from": "99999999999999"}, ("out of range",)),
    ({"from": "200", "to": "100"}, ("after",)),
    ({"format": "xml"}, ("format",)),
    ({"limit": "0"}, ("limit",)),
    ({"limit": "10001"}, ("limit",)),
    ({"limit": "\u00b2"}, ("limit",)),  # '²'.isdigit() is True, int('²') raises
    ({"from": "\u0663"}, ("from must be",)),  # an Arabic-Indic digit
    ({"from": ["1", "2"]}, ("given 2 times",)),
])
def test_bad_grid_log_queries_are_400(shared: WebSite, params: dict[str, Any], words: tuple[str, ...]) -> None:
    assert_error(shared.client.get("get_grid_log", **params), 400, *words)  # checked before the log is


def test_a_damaged_grid_log_is_503_then_a_new_log(site: SimulatedSite, tmp_path: Path) -> None:
    grid_log = GridLog(tmp_path / "gridlog.sqlite3")
    grid_log.start()
    try:
        for i in range(2000):
            grid_log.record("input", "RSE1", None, i % 2 == 0, "input", None, ts=1_767_614_400.0 + i)
        grid_log.flush()
        conn = sqlite3.connect(grid_log.path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.close()
        with open(grid_log.path, "r+b") as handle:  # junk over the events table's root page
            handle.seek((root - 1) * size)
            handle.write(b"\xa5" * size)
        with running_web(site, grid_log=grid_log, cycles=0) as web:
            r = web.client.get("get_grid_log")
            assert_error(r, 503, "grid log file is damaged", "malformed", "ask again")
            assert r.headers["Retry-After"] == "5"
            deadline = time.monotonic() + 10
            while (r := web.client.get("get_grid_log")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            grid_log.flush()
            events = web.client.get("get_grid_log").json()["events"]
            assert events[0]["kind"] == "gap" and events[0]["new"]["set_aside"].startswith("gridlog.sqlite3.corrupt-")
            kept = [p for p in tmp_path.glob("gridlog.sqlite3.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
            assert len(kept) == 1, kept  # one file kept aside (with its -wal/-shm, if SQLite had them)
    finally:
        grid_log.stop()


def test_grid_log_not_configured_is_400(shared: WebSite) -> None:
    assert_error(shared.client.get("get_grid_log"), 400, "not enabled")


# --------------------------------------------------------------------------- protocol


def test_unknown_or_missing_cmd_is_400(shared: WebSite) -> None:
    assert_error(shared.client.get("reboot"), 400, "unknown cmd", "get_cm_vars")
    assert_error(shared.client.get(), 400, "cmd missing")
    assert_rejected(shared, shared.client.get("set_cm_var", name="A", val="1"), "unknown cmd")


def test_other_paths_are_404_and_other_methods_405(web: WebSite) -> None:
    s = web.client.session
    assert_error(s.get(f"{web.client.base_url}/", params={"cmd": "get_cm_vars"}), 404, "/cnf")
    assert_error(s.get(f"{web.client.base_url}/cnf/x"), 404)
    r = s.put(web.client.url, params={"cmd": "get_cm_vars"}, data="x")
    assert_error(r, 405, "PUT")
    assert "POST" in r.headers["Allow"]
    r = s.head(web.client.url, params={"cmd": "set_cm_vars", "name": "A", "val": "1"})
    assert r.status_code == 405 and "A" not in exprs(web)
    assert s.head(web.client.url, params={"cmd": "get_cm_vars"}).status_code == 200
    assert_error(web.client.get("set_tls_cert"), 405, "POST")


def test_body_over_64_kib_is_413(web: WebSite) -> None:
    item = '{"name": "A", "expr": 1}, '
    body = '{"vars": [' + item * (66 * 1024 // len(item)) + '{"name": "B", "expr": 2}]}'
    assert len(body) > 65536
    assert_error(web.client.post("set_cm_vars", body), 413, "65536")

    def chunks() -> Iterator[bytes]:  # chunked transfer encoding: no Content-Length to refuse early
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096].encode()

    r = web.client.session.post(web.client.url, params={"cmd": "set_cm_vars"}, data=chunks())
    assert_error(r, 413)
    assert_error(web.client.post("get_cm_vars", "x" * 70000), 413)
    assert exprs(web) == {"AVAIL": 100, "TARIF": 0}
    ok = '{"vars": [{"name": "A", "expr": 1}]}'
    assert web.client.post("set_cm_vars", ok + " " * (65536 - len(ok))).status_code == 200  # exactly 64 KiB


def test_huge_declared_body_is_refused_without_reading_it(web: WebSite) -> None:
    with socket.create_connection(("127.0.0.1", web.servers.lan_port), timeout=5) as sock:
        sock.sendall(b"POST /cnf?cmd=set_cm_vars HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_keep_alive_and_no_store(web: WebSite) -> None:
    r1 = web.client.get("get_cm_vars")
    r2 = web.client.get("get_cm_vars")
    assert r1.headers.get("Connection", "").lower() != "close" and r2.status_code == 200
    assert r1.headers["Cache-Control"] == "no-store"


# --------------------------------------------------------------------------- authentication


def test_missing_or_wrong_credentials_are_401_with_the_basic_challenge(web: WebSite) -> None:
    anon = requests.get(web.client.url, params={"cmd": "get_cm_vars"}, timeout=5)
    assert_error(anon, 401, "authentication required")
    assert anon.headers["WWW-Authenticate"].startswith('Basic realm="gridcharge"')
    wrong = requests.get(web.client.url, params={"cmd": "get_cm_vars"}, auth=(USER, "nope"), timeout=5)
    assert_error(wrong, 401, "wrong user name or password")
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    r = requests.get(web.client.url, params={"cmd": "set_cm_vars", "name": "A", "val": "1"}, auth=("root", PASSWORD))
    assert r.status_code == 401 and "A" not in exprs(web)


def test_repeated_failures_are_throttled_with_429(web: WebSite) -> None:
    url, params = web.client.url, {"cmd": "get_cm_vars"}
    codes = [requests.get(url, params=params, auth=(USER, f"guess{i}"), timeout=5).status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    r = requests.get(url, params=params, auth=(USER, PASSWORD), timeout=5)
    assert_error(r, 429, "too many failed logins")
    assert int(r.headers["Retry-After"]) >= 1


def test_hashed_password_from_the_config(site: SimulatedSite) -> None:
    with running_web(site, http=http_section(password=None, password_hash=hash_password(PASSWORD)), cycles=0) as w:
        for _ in range(3):
            assert w.client.get("get_cm_vars").status_code == 200
        assert requests.get(w.client.url, params={"cmd": "get_cm_vars"}, auth=(USER, "x"), timeout=5).status_code == 401


# --------------------------------------------------------------------------- serving


def test_busy_port_is_an_oserror_and_stop_is_idempotent(web: WebSite) -> None:
    other = WebServers(api_context(web.service), http_section(listen=f"127.0.0.1:{web.servers.lan_port}"), None, None)
    with pytest.raises(OSError):
        other.start()
    other.stop()
    port = web.servers.lan_port
    web.servers.stop()
    web.servers.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_no_sections_no_listeners(web: WebSite) -> None:
    servers = WebServers(api_context(web.service), None, None, None)
    servers.start()
    assert servers.lan_port is None and servers.smgw_port is None
    servers.stop()


# --------------------------------------------------------------------------- SMGW listener


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def smgw_web(site: SimulatedSite, pki: Pki, tmp_path: Path) -> Iterator[Any]:
    """LAN + SMGW listeners; ``make(functions)`` starts them, the test gets (web, servers, tls)."""
    started: list[WebServers] = []

    def make(functions: tuple[str, ...], cert: Path | None = None) -> tuple[WebSite, WebServers, TlsStore]:
        server_cert, server_key = pki.server_paths
        smgw = smgw_section(cert or server_cert, server_key, pki.ca_path, functions)
        tls = TlsStore(smgw, tmp_path / "state")
        servers = WebServers(api_context(web.service, tls=tls), http_section(), smgw, tls)
        servers.start()
        started.append(servers)
        return web, servers, tls

    with running_web(site, cycles=0) as web:
        yield make
        for servers in started:
            servers.stop()


def smgw_get(servers: WebServers, pki: Pki, cmd: str, client: tuple[Path, Path] | None = None,
             **params: str) -> requests.Response:
    return requests.get(f"https://127.0.0.1:{servers.smgw_port}/cnf", params={"cmd": cmd, **params},
                        cert=client or pki.client_paths, verify=str(pki.ca_path), timeout=5)


def test_smgw_scopes_are_enforced_without_a_password(smgw_web: Any, pki: Pki) -> None:
    web, servers, _ = smgw_web(("vars",))
    r = smgw_get(servers, pki, "set_cm_vars", name="AVAIL", val="50")
    assert r.status_code == 200 and exprs(web)["AVAIL"] == 50
    assert smgw_get(servers, pki, "get_cm_vars").status_code == 200
    assert_error(smgw_get(servers, pki, "set_cm_vars", name="AVAIL", val="40", tmp="1"), 403, "'admin'")
    assert exprs(web)["AVAIL"] == 50
    refused = (("get_dev_info", {}), ("get_grid_log", {}), ("override_device", {"dev_id": "E1", "flags": "C"}))
    for cmd, params in refused:
        assert_error(smgw_get(servers, pki, cmd, **params), 403, cmd)
    assert web.cycles(1).charger("E1").enabled is True


def test_smgw_status_and_admin_functions(smgw_web: Any, pki: Pki) -> None:
    _, servers, _ = smgw_web(("status",))
    assert smgw_get(servers, pki, "get_dev_info").status_code == 200
    assert_error(smgw_get(servers, pki, "set_cm_vars", name="A", val="1"), 403, "'vars'")
    servers.stop()
    web, servers, _ = smgw_web(("admin",))
    assert smgw_get(servers, pki, "override_device", dev_id="E1", flags="C").status_code == 200
    assert web.cycles(1).charger("E1").enabled is False


def test_smgw_refuses_clients_without_a_good_certificate(smgw_web: Any, pki: Pki) -> None:
    _, servers, _ = smgw_web(("admin",))
    url = f"https://127.0.0.1:{servers.smgw_port}/cnf?cmd=get_cm_vars"
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, verify=str(pki.ca_path), timeout=5)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, cert=pki.rogue_client_paths, verify=str(pki.ca_path), timeout=5)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url.replace("https", "http"), timeout=5)
    assert smgw_get(servers, pki, "get_cm_vars").status_code == 200


def test_stalled_smgw_handshake_does_not_block_the_lan(smgw_web: Any, pki: Pki) -> None:
    web, servers, _ = smgw_web(("vars",))
    lan = lan_client(servers)
    with socket.create_connection(("127.0.0.1", servers.smgw_port)):  # never says hello
        start = time.monotonic()
        assert lan.get("get_cm_vars").status_code == 200
        assert time.monotonic() - start < FAST_S
    lan.close()


def server_fingerprint(port: int, pki: Pki) -> bytes:
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    context.load_cert_chain(*pki.client_paths)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    return hashlib.sha256(der).digest()


def test_certificate_upload_starts_the_listener_then_replaces_the_pair(smgw_web: Any, pki: Pki, tmp_path: Path) -> None:
    web, servers, tls = smgw_web(("vars",), cert=tmp_path / "missing.pem")
    assert servers.smgw_port is None  # no usable certificate: not started, LAN still up
    lan = lan_client(servers)
    bad = lan.session.post(lan.url, params={"cmd": "set_tls_cert"},
                           json={"cert": pki.server2.cert_pem, "key": pki.server.key_pem})
    assert_error(bad, 400, "does not match")
    assert servers.smgw_port is None
    r = lan.session.post(lan.url, params={"cmd": "set_tls_cert"}, json={"cert": pki.server.cert_pem,
                                                                         "key": pki.server.key_pem})
    assert r.status_code == 200, r.text
    assert r.json()["tls"]["source"] == "upload"
    assert servers.smgw_port is not None
    assert server_fingerprint(servers.smgw_port, pki) == pki.server.fingerprint
    assert smgw_get(servers, pki, "get_cm_vars").status_code == 200
    raw_body = pki.server2.cert_pem + pki.server2.key_pem  # the PEMs concatenated, as curl --data-binary
    r = lan.session.post(lan.url, params={"cmd": "set_tls_cert"}, data=raw_body)
    assert r.status_code == 200, r.text
    assert server_fingerprint(servers.smgw_port, pki) == pki.server2.fingerprint
    lan.close()


def test_upload_needs_admin_and_a_tls_store(smgw_web: Any, pki: Pki, web: WebSite) -> None:
    _, servers, _ = smgw_web(("vars", "status"))
    r = requests.post(f"https://127.0.0.1:{servers.smgw_port}/cnf", params={"cmd": "set_tls_cert"},
                      json={"cert": pki.server2.cert_pem, "key": pki.server2.key_pem},
                      cert=pki.client_paths, verify=str(pki.ca_path), timeout=5)
    assert_error(r, 403, "'admin'")
    r = web.client.session.post(web.client.url, params={"cmd": "set_tls_cert"},
                                json={"cert": pki.server2.cert_pem, "key": pki.server2.key_pem})
    assert_error(r, 400, "no SMGW listener")
