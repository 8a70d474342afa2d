"""Fuzz the real API over real HTTP (hypothesis): random commands, query parameters and bodies.

Properties: never a 5xx; every 4xx is a JSON ``{"error": "..."}``; after every 4xx the variable
store is exactly as before (same exprs, same generation). The server, store and loop are shared
by all examples (module scope), so successful random sets accumulate, as they would in the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pki import make_pki
from web_helpers import WebSite, running_web, smgw_section

from controller.records.gridlog import GridLog, GridSignalRecorder
from web.tls import TlsStore

COMMANDS = ("set_cm_vars", "get_cm_vars", "get_dev_info", "get_grid_log", "override_device", "set_tls_cert")
PARAMS = ("name", "val", "clear", "tmp", "dev_id", "mamps", "flags", "from", "to", "format", "limit", "cmd")

# Text that requests can send (no lone surrogates); NUL, controls and any script included.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
INTERESTING = st.sampled_from([
    "", "0", "1", "-1", "1e999", "NaN", "Infinity", "9**9**9**9", "A", "E1", "M1", "RSE1", "AVAIL", "TARIF",
    "__import__('os')", "(" * 200, "a" * 65, "x if y else z", "c ? a : b", "C", "c", "E", "csv", "json",
    "2026-01-05T12:00:00Z", "10000", "80001", "AVAIL * 2", "AVAIL / 0", "min()", "open('x')", "\u00e9\u00df",
])
VALUE = st.one_of(INTERESTING, TEXT, st.integers(-10**6, 10**6).map(str))

JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20),
    st.floats(allow_nan=False, allow_infinity=False), TEXT, INTERESTING,
)
JSON = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(TEXT, st.sampled_from(["vars", "name", "expr"])),
                                                 inner, max_size=4)), max_leaves=12)
RANDOM_ITEM = st.fixed_dictionaries(
    {"name": st.one_of(INTERESTING, TEXT, JSON_SCALAR), "expr": st.one_of(JSON_SCALAR, INTERESTING)},
    optional={"val": JSON_SCALAR, "error": JSON_SCALAR, "extra": JSON_SCALAR},
)
GOOD_NAME = st.sampled_from(["A", "B", "AVAIL", "TARIF", "x_1", "Long_name_9"])
GOOD_EXPR = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6), st.booleans(), st.sampled_from(
    ["A + 1", "B * 2", "AVAIL / 4", "TARIF ? 1 : 0", "min(A, 3)", "9**9**9**9", "AVAIL > 50 && TARIF == 0"]))
GOOD_ITEM = st.fixed_dictionaries({"name": GOOD_NAME, "expr": GOOD_EXPR})
GOOD_BODY = st.builds(lambda items: json.dumps({"vars": items}), st.lists(GOOD_ITEM, max_size=4))
VAR_ITEM = st.one_of(RANDOM_ITEM, GOOD_ITEM)
VARS_BODY = st.builds(lambda items: json.dumps({"vars": items}), st.lists(VAR_ITEM, max_size=5))
BODY = st.one_of(
    st.none(),
    VARS_BODY,
    VARS_BODY.map(lambda text: text[:-1] + "]}"),  # the manual's stray bracket, and friends
    JSON.map(json.dumps),
    TEXT,
    st.binary(max_size=200),
    st.sampled_from(['{"vars": [{"name": "A", "expr": NaN}]}', "[" * 3000, '{"vars": [' + "9" * 5000 + "]}",
                     "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", '{"cert": 1, "key": 2}']),
)
CMD = st.integers(0, 7).flatmap(lambda i: TEXT if i == 0 else st.sampled_from(COMMANDS))  # 1/8 unknown
QUERY = st.dictionaries(st.one_of(st.sampled_from(PARAMS), TEXT), VALUE, max_size=6)


@pytest.fixture(scope="module")
def fuzz_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    """The API with everything behind it: grid log (filled by the recorder) and a TLS store."""
    directory = tmp_path_factory.mktemp("fuzz")
    pki = make_pki(directory / "pki")
    cert, key = pki.server_paths
    tls = TlsStore(smgw_section(cert, key, pki.ca_path, ("vars",)), directory / "state")
    grid_log = GridLog(directory / "gridlog.sqlite3")
    grid_log.start()
    try:
        with running_web(grid_log=grid_log, tls=tls, cycles=0) as web:
            GridSignalRecorder(grid_log).attach(web.service.store, web.service.loop)
            web.cycles(1)
            yield web
    finally:
        grid_log.stop()


def check(web: WebSite, method: str, params: dict[str, str], body: Any, label: str) -> None:
    """Send one request; assert the properties of the module docstring."""
    store = web.service.store
    before = store.snapshot()
    r = web.client.session.request(method, web.client.url, params=params, data=body, timeout=10)
    assert r.status_code < 500, r.text
    event(f"{label}: {r.status_code}")
    if r.status_code >= 400:
        assert r.headers["Content-Type"].startswith("application/json"), r.text
        assert isinstance(r.json()["error"], str) and r.json()["error"]
        after = store.snapshot()
        assert after.generation == before.generation
        assert dict(after.exprs) == dict(before.exprs)
    elif not r.headers["Content-Type"].startswith("text/csv"):
        assert isinstance(r.json(), dict)  # every other success is a JSON object


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmd=CMD, query=QUERY, body=BODY, post=st.booleans())
def test_random_requests_never_5xx_and_rejected_ones_change_nothing(
    fuzz_web: WebSite, cmd: str, query: dict[str, str], body: Any, post: bool
) -> None:
    params = {**query, "cmd": cmd} if "cmd" not in query else query
    method = "POST" if post or body is not None else "GET"
    check(fuzz_web, method, params, body, cmd if cmd in COMMANDS else "other cmd")


FLAG = st.sampled_from([None, "0", "1", "1", "yes"])
NAME = st.one_of(GOOD_NAME, GOOD_NAME, st.sampled_from(["E1", "RSE1", "1x", "min", "a" * 65]), TEXT)
VAL = st.one_of(GOOD_EXPR.map(str), GOOD_EXPR.map(str), VALUE)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAME, val=VAL, body=st.one_of(st.none(), VARS_BODY, GOOD_BODY, GOOD_BODY), clear=FLAG, tmp=FLAG)
def test_random_sets_are_all_or_nothing(fuzz_web: WebSite, name: str, val: str, body: str | None,
                                        clear: str | None, tmp: str | None) -> None:
    params = {"cmd": "set_cm_vars", "clear": clear, "tmp": tmp}
    if body is None:
        params.update(name=name, val=val)
    check(fuzz_web, "GET" if body is None else "POST", {k: v for k, v in params.items() if v is not None},
          body, "set_cm_vars")


def test_the_loop_still_runs_after_the_fuzzing(fuzz_web: WebSite) -> None:
    status = fuzz_web.cycles(1)
    assert status.failed_cycles == 0
    assert requests.get(fuzz_web.client.url, params={"cmd": "get_dev_info"}, auth=fuzz_web.client.session.auth,
                        timeout=5).status_code == 200
