"""What the status page reads and is served, over real HTTP on the LAN listener (``web_helpers``):
``get_history``, the chargers' ``session_energy`` in ``get_dev_info``, and ``/`` with its files
(types, caching, security headers, basic auth). The page itself in a browser:
``test_status_page.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from web_helpers import PASSWORD, USER, WebSite, running_web

from hal.sim.site import SimulatedSite


@pytest.fixture()
def web(sim: SimulatedSite) -> Iterator[WebSite]:
    with running_web(sim, cycles=3) as w:
        yield w


def test_get_history_has_the_cycles_in_buckets(web: WebSite) -> None:
    body = web.client.get("get_history").json()
    assert (body["bucket_s"], body["span_s"], body["cycle_s"]) == (30.0, 86400.0, 1.0)
    assert body["t"] and all(t % 30 == 0 for t in body["t"]) and sum(body["cycles"]) == 3
    assert body["t"][-1] <= body["now"] < body["t"][-1] + 30
    columns = ("grid_limit_w", "chargers_limit_w", "failsafe", "cycles")
    assert all(len(body[key]) == len(body["t"]) for key in columns)
    for series in ("grid_w", "chargers_w"):
        assert set(body[series]) == {"min", "avg", "max"}
        low, mean, high = (body[series][k][-1] for k in ("min", "avg", "max"))
        assert isinstance(mean, int) and low <= mean <= high
    assert body["grid_limit_w"][-1] is None  # the home site has no grid limit
    assert body["chargers_limit_w"][-1] is None  # "4200 if RSE1 else None", RSE1 open
    later = web.client.get("get_history", **{"from": str(body["t"][-1] + 30)}).json()
    assert later["t"] == [] and later["grid_w"] == {"min": [], "avg": [], "max": []}
    same = web.client.get("get_history", **{"from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(body["t"][-1]))})
    assert same.json()["t"] == [body["t"][-1]]
    bad = web.client.get("get_history", **{"from": "yesterday"})
    assert bad.status_code == 400 and "parameter from" in bad.json()["error"]


def test_session_energy_while_a_car_is_plugged_in(web: WebSite) -> None:
    def energy() -> dict[str, object]:
        info = web.client.get("get_dev_info").json()
        return {d["dev_id"]: d["session_energy"] for d in info["devices"] if d["is_evse"]}

    first = energy()
    assert all(isinstance(wh, int) and wh >= 0 for wh in first.values()), first
    web.sim.unplug("E2")
    web.cycles(2)
    after = energy()
    assert after["E2"] is None and isinstance(after["E1"], int)


def test_the_page_and_its_files_behind_basic_auth(web: WebSite) -> None:
    base = web.client.base_url
    page = web.client.session.get(f"{base}/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="static/app.js" defer></script>' in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-cache" and page.headers["X-Content-Type-Options"] == "nosniff"
    again = web.client.session.get(f"{base}/", headers={"If-None-Match": page.headers["ETag"]}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")):
        r = web.client.session.get(f"{base}/static/{name}", timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind) and r.content
    for missing in ("nope.js", "index.html", "..%2fapp.py"):
        r = web.client.session.get(f"{base}/static/{missing}", timeout=5)
        assert r.status_code == 404 and "error" in r.json()
    head = web.client.session.head(f"{base}/", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert web.client.get("get_cm_vars").headers["Cache-Control"] == "no-store"  # the API is never cached
    for auth in (None, (USER, "wrong-password")):
        r = requests.get(f"{base}/", auth=auth, timeout=5)
        assert r.status_code == 401 and r.headers["Content-Type"] == "application/json" and "<html" not in r.text
    assert requests.get(f"{base}/static/app.js", timeout=5).status_code == 401
    assert requests.get(f"{base}/", auth=(USER, PASSWORD), timeout=5).status_code == 200
