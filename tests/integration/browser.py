"""A real browser for the status page tests: Debian's headless chromium driven by selenium through
Debian's chromedriver (``apt-get install chromium chromium-driver``; CI installs both).

Basic auth goes in as an ``Authorization`` header through the DevTools protocol
(``Network.setExtraHTTPHeaders``), so every request of the page carries it, as a browser does
after its login box. A missing chromium or chromedriver fails the test: it is never skipped.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.remote.webdriver import WebDriver

T = TypeVar("T")


def _binary(name: str, debian_path: str) -> str:
    found = shutil.which(name) or (debian_path if Path(debian_path).exists() else None)
    if found is None:
        raise AssertionError(f"{name} is missing: apt-get install -y --no-install-recommends chromium "
                             "chromium-driver (.ci/run does)")
    return found


def start_browser(width: int = 1280, height: int = 900) -> WebDriver:
    """Headless chromium (``--no-sandbox``: CI runs as root) with its console log kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
                f"--window-size={width},{height}", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=ChromeService(_binary("chromedriver", "/usr/bin/chromedriver")))
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(10)
    return driver


def authorize(driver: WebDriver, user: str, password: str) -> None:
    """Send HTTP basic auth with every request of the page from now on."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def viewport(driver: WebDriver, width: int, height: int = 900) -> None:
    """Lay the page out at ``width`` CSS pixels (a phone below 600: touch, mobile viewport)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def screenshot(driver: WebDriver, path: Path) -> Path:
    """The whole page (not only the viewport) as a PNG."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The console's errors since the last call (the log is emptied by reading it)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.05) -> T:
    """The first truthy result of ``check`` within ``timeout_s``, else an AssertionError."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(poll_s)
