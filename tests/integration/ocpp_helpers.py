"""What the OCPP integration tests share: a simulated box connected to a central system on
loopback, and the control loop driven on a FakeClock while the box answers in real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fake_clock import FakeClock

from controller.service import Service
from hal.sim.ocpp_box import SimOcppBox

BOX_ID = "EVB-P2231"
BOX_PASSWORD = "box-secret"


def box_for(port: int, cleanup: list[Callable[[], None]], box_id: str = BOX_ID, **kw: Any) -> SimOcppBox:
    """A simulated box connected to ``ws(s)://127.0.0.1:port/ocpp/<box_id>``, stopped by ``cleanup``."""
    kw.setdefault("password", BOX_PASSWORD)
    scheme = "wss" if kw.get("ssl_context") is not None else "ws"
    box = SimOcppBox(f"{scheme}://127.0.0.1:{port}/ocpp", box_id, **kw)
    cleanup.append(box.stop)
    return box.start()


def run_until(service: Service, clock: FakeClock, done: Callable[[Any], bool], timeout_s: float = 8.0) -> Any:
    """Cycles (one FakeClock second, a quarter of a real second each) until ``done(status)``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = service.loop.run_once()
        clock.advance(1.0)
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.25)
