"""The status page at ``/`` in a real browser (headless chromium, selenium, ``browser.py``) against
a running controller: the real ``Service`` on its own clock and loop thread, on the simulated home
site (an SDM630, two 3-phase wallboxes with a car each, a ripple-control contact), with the real
LAN listener (``web.runtime.start_web``).

What is proven (docs/api.md, "The status page"):
- at the same cycle, the page shows exactly what ``get_dev_info`` says: grid currents and power,
  the limits in force and what limits, each charger's state, currents, limit, lreason and
  written current, the inputs;
- it follows a change of the site within two cycles;
- a red banner says why while the fail-safe limit is in force, and goes when it ends;
- an admin edits AVAIL in the page: the store has it and the chargers get their new limits; an
  invalid formula shows the API's error next to the field and changes nothing;
- it is laid out for 360 px and 1280 px (no sideways scrolling), with screenshots of both saved
  to ``$GRIDCHARGE_SCREENSHOTS`` (default: the test's temporary directory); every form control
  has a name and all text has a contrast of at least 4.5:1 (WCAG AA), from the computed styles;
- no console errors but the deliberate 400 of the invalid formula;
- a wrong password gets a 401 and nothing of the page.

The tests share one controller and one browser (starting each takes a second or two) and run in
file order.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import authorize, console_errors, screenshot, start_browser, viewport, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from site_helpers import home_site, make_config

from controller.service import Service
from hal.sim.site import SimulatedSite
from web.runtime import start_web

USER = "admin"
PASSWORD = "status-page-pass-1"
CYCLE_S = 1.0
VOLTAGE_V = 230.0
CHARGERS_LIMIT_W = 9200.0  # chargers_limit_w = 9200 * AVAIL / 100

#: Reads every value the page shows, as the API value it carries (``data-raw``).
READ_PAGE = """
const raw = (id) => document.getElementById(id).dataset.raw;
const fields = (root) => {
  const out = {};
  for (const el of root.querySelectorAll("[data-field]")) out[el.dataset.field] = el.dataset.raw;
  return out;
};
const byDevice = (selector) => {
  const out = {};
  for (const el of document.querySelectorAll(selector)) out[el.dataset.dev] = fields(el);
  return out;
};
return {
  cycle_count: raw("cycle-count"), grid_power_w: raw("grid-power"), grid_limit_w: raw("grid-limit"),
  chargers_limit_w: raw("chargers-limit"), power_headroom_w: raw("power-headroom"),
  max_total_current: raw("max-total-current"), limiting: raw("limiting"), phases: fields(document.getElementById("phases")),
  chargers: byDevice("#chargers [data-dev]"), inputs: byDevice("#inputs [data-dev]"),
};
"""
#: WCAG checks in the browser: form controls without a name, and text whose contrast against its
#: (first opaque) background is below 4.5:1 (AA for normal text), from the computed styles.
ACCESSIBILITY = """
const rgb = (text) => (text.match(/[0-9.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => {
  const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const background = (el) => {
  for (; el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.99)) return c.slice(0, 3);
  }
  return [255, 255, 255];
};
const unnamed = [...document.querySelectorAll("input, button, select, textarea")]
  .filter((e) => !(e.labels && e.labels.length) && !e.textContent.trim() && !e.getAttribute("aria-label"))
  .map((e) => e.outerHTML);
const low = [];
for (const el of document.body.querySelectorAll("*")) {
  if (el.closest("svg") || !el.offsetParent) continue;
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own) continue;
  const a = luminance(rgb(getComputedStyle(el).color)), b = luminance(background(el));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) low.push(el.tagName + " " + el.textContent.trim().slice(0, 30) + " " + ratio.toFixed(2));
}
return {unnamed: unnamed, low_contrast: low, lang: document.documentElement.lang};
"""
CHARGER_FIELDS = ("current_l1", "current_l2", "current_l3", "cur_charging_power", "assigned_cur", "lreason",
                  "last_set_charging_cur", "state_text")


def raw(value: Any) -> str:
    """An API value as the page keeps it in ``data-raw`` (JSON, a string as itself, null as "")."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def expected(info: dict[str, Any]) -> dict[str, Any]:
    """What the page must show for this ``get_dev_info`` answer."""
    p = info["params"]
    return {
        "cycle_count": raw(p["cycle_count"]),
        **{key: raw(p[key]) for key in ("grid_power_w", "grid_limit_w", "chargers_limit_w", "power_headroom_w",
                                        "max_total_current", "limiting")},
        "phases": {f"grid_current_l{n}": raw(p[f"grid_current_l{n}"]) for n in (1, 2, 3)},
        "chargers": {d["dev_id"]: {key: raw(d[key]) for key in CHARGER_FIELDS} for d in info["devices"] if d["is_evse"]},
        "inputs": {i["id"]: {"active": raw(i["active"])} for i in info["inputs"]},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    sim: SimulatedSite
    service: Service
    url: str
    session: requests.Session

    def api(self, cmd: str, **params: Any) -> Any:
        r = self.session.get(f"{self.url}cnf", params={"cmd": cmd, **params}, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def written_a(self) -> dict[str, float]:
        return {cid: self.sim.wallbox(cid).values()["limit_written_a"] for cid in ("E1", "E2")}


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    sim = home_site()
    sim.start()
    port = free_port()
    cfg = make_config(sim, site={"chargers_limit_w": f"{CHARGERS_LIMIT_W:.0f} * AVAIL / 100", "increase_step_a": 16,
                                 "cycle_s": CYCLE_S},
                      http={"listen": f"127.0.0.1:{port}", "user": USER, "password": PASSWORD})
    service = Service(cfg)  # the real clock: the loop runs a cycle a second on its own thread
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    try:
        start_web(service)
        service.start()
        site = Live(sim, service, f"http://127.0.0.1:{port}/", session)
        wait_for(lambda: all(a > 0 for a in site.written_a().values()), 10, "both boxes written")
        yield site
    finally:
        session.close()
        service.stop()
        sim.stop()


@pytest.fixture(scope="module")
def browser(live: Live) -> Iterator[WebDriver]:
    driver = start_browser()
    try:
        authorize(driver, USER, PASSWORD)
        driver.get(live.url)
        yield driver
    finally:
        driver.quit()


def page(driver: WebDriver) -> dict[str, Any]:
    return driver.execute_script(READ_PAGE)  # type: ignore[no-any-return]


def same_cycle(live: Live, driver: WebDriver) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The page and ``get_dev_info`` read at the same cycle, or None (try again)."""
    info = live.api("get_dev_info")
    shown = page(driver)
    shown["chargers"] = {dev: {key: value for key, value in fields.items() if key in CHARGER_FIELDS}
                         for dev, fields in shown["chargers"].items()}
    want = expected(info)
    return (shown, want) if shown["cycle_count"] == want["cycle_count"] else None


def test_the_page_shows_what_get_dev_info_says(live: Live, browser: WebDriver) -> None:
    wait_for(lambda: page(browser)["cycle_count"], 5, "the page's first get_dev_info")
    shown, want = wait_for(lambda: same_cycle(live, browser), 5, "the page and the API at the same cycle")
    assert shown == want
    assert set(want["chargers"]) == {"E1", "E2"} and want["phases"]["grid_current_l1"]
    assert want["chargers"]["E1"]["lreason"] and want["inputs"] == {"RSE1": {"active": "false"}}
    l1_ma = int(want["phases"]["grid_current_l1"])
    text = browser.find_element(By.CSS_SELECTOR, '#phases [data-field="grid_current_l1"]').text
    assert text == f"{l1_ma / 1000:.1f} A of 25 A"  # the number a person reads is the same one
    assert browser.find_element(By.ID, "failsafe").is_displayed() is False


def test_the_page_follows_a_change_within_two_cycles(live: Live, browser: WebDriver) -> None:
    def page_l1() -> str:
        return str(page(browser)["phases"]["grid_current_l1"])

    def api_l1() -> str:
        return raw(live.api("get_dev_info")["params"]["grid_current_l1"])

    before = wait_for(lambda: page_l1() == api_l1() and page_l1(), 5, "the page at rest")
    live.sim.set_base_load(13.0, 5.0, 5.0)  # the house draws 3 A more on L1
    try:
        api_at = wait_for(lambda: api_l1() != before and time.monotonic(), 5, "the API to see the change")
        page_at = wait_for(lambda: page_l1() != before and time.monotonic(), 5, "the page to see the change")
        assert page_at - api_at <= 2 * CYCLE_S, f"the page lagged {page_at - api_at:.2f} s"
        shown, want = wait_for(lambda: same_cycle(live, browser), 5, "the page and the API at the same cycle")
        assert shown["phases"] == want["phases"]
    finally:
        live.sim.set_base_load(10.0, 5.0, 5.0)


def avail_expr(live: Live) -> Any:
    return next(v["expr"] for v in live.api("get_cm_vars")["vars"] if v["name"] == "AVAIL")


def submit(driver: WebDriver, name: str, text: str) -> None:
    field = driver.find_element(By.ID, f"var-{name}")
    field.clear()
    field.send_keys(text)
    field.send_keys(Keys.ENTER)


def message(driver: WebDriver, name: str) -> tuple[str, str]:
    el = driver.find_element(By.ID, f"var-{name}-msg")
    return str(el.get_attribute("class")), el.text


def test_an_admin_edit_of_avail_reaches_the_store_and_the_chargers(live: Live, browser: WebDriver) -> None:
    wait_for(lambda: browser.find_elements(By.ID, "var-AVAIL"), 5, "the variables")
    assert avail_expr(live) == 100
    before = live.written_a()
    submit(browser, "AVAIL", "50")
    wait_for(lambda: message(browser, "AVAIL") == ("msg ok", "Set to 50."), 5, "the page to confirm")
    assert avail_expr(live) == 50  # in the store the API reads
    limit_w = CHARGERS_LIMIT_W * 50 / 100

    def boxes_follow() -> bool:
        written = live.written_a()
        return written != before and sum(written.values()) * 3 * VOLTAGE_V <= limit_w + 1
    wait_for(boxes_follow, 5, "the wallboxes to get limits within 4600 W")
    wait_for(lambda: page(browser)["chargers_limit_w"] == raw(round(limit_w)), 3, "the page to show the new limit")


def test_an_invalid_value_shows_its_error_inline_and_changes_nothing(live: Live, browser: WebDriver) -> None:
    wait_for(lambda: avail_expr(live) == 50, 3, "AVAIL 50 from the edit before")
    wrong = "50 +"
    api_error = live.session.post(f"{live.url}cnf", params={"cmd": "set_cm_vars"}, timeout=5,
                                  json={"vars": [{"name": "AVAIL", "expr": wrong}]})
    assert api_error.status_code == 400
    submit(browser, "AVAIL", wrong)
    kind, text = wait_for(lambda: message(browser, "AVAIL")[0] == "msg error" and message(browser, "AVAIL"), 5,
                          "the error next to the field")
    assert text == "Not set: " + api_error.json()["error"]
    field = browser.find_element(By.ID, "var-AVAIL")
    assert field.get_attribute("aria-invalid") == "true" and field.get_attribute("value") == wrong
    assert avail_expr(live) == 50  # nothing changed
    live.api("set_cm_vars", name="AVAIL", val="100")


def test_a_fail_safe_shows_its_banner_with_the_reason(live: Live, browser: WebDriver) -> None:
    banner = browser.find_element(By.ID, "failsafe")
    assert not banner.is_displayed()
    live.sim.set_silent("M1")  # the grid meter stops answering: after stale_s (3 s) the fail-safe
    try:
        wait_for(banner.is_displayed, 8, "the fail-safe banner")
        reason = live.api("get_dev_info")["params"]["failsafe"]
        assert reason and reason in banner.text and banner.text.startswith("Fail-safe in force:")
        assert browser.find_element(By.ID, "faults").is_displayed()
    finally:
        live.sim.set_silent("M1", False)
    wait_for(lambda: not banner.is_displayed(), 8, "the banner to go")


def test_360_and_1280_pixels_screenshots_and_no_console_errors(live: Live, browser: WebDriver,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = Path(os.environ.get("GRIDCHARGE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    browser.get(live.url)  # a fresh page: no edited field, no message
    for width in (360, 1280):
        viewport(browser, width)
        wait_for(lambda: page(browser)["cycle_count"] and browser.execute_script(
            "return document.querySelectorAll('#chart svg path.line.grid').length"), 5, "the page and its chart")
        time.sleep(0.3)  # the chart redraws after a resize (150 ms)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scrolling
        for section in ("grid-section", "limits-section", "chargers-section", "chart-section", "inputs-section",
                        "vars-section", "signals-section"):
            assert browser.find_element(By.ID, section).is_displayed()
        assert browser.execute_script(ACCESSIBILITY) == {"unnamed": [], "low_contrast": [], "lang": "en"}
        path = screenshot(browser, folder / f"status-{width}.png")
        assert path.stat().st_size > 10_000
    errors = [e for e in console_errors(browser)
              if not ("cmd=set_cm_vars" in e["message"] and "status of 400" in e["message"])]
    assert errors == []


def test_a_wrong_password_gets_no_page(live: Live, browser: WebDriver) -> None:
    r = requests.get(live.url, auth=(USER, "not-the-password"), timeout=5)
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "wrong user name or password"} and "<html" not in r.text
    authorize(browser, USER, "not-the-password")
    browser.get(live.url)
    assert "House connection" not in browser.page_source
    assert browser.find_elements(By.ID, "chargers") == []
