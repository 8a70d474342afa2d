"""Helpers for the gateway tests: a ``Service`` on the simulated home site whose gateway talks to a
real ``BackendCsms`` on loopback (directly or through a test proxy), its cycles driven by hand on
a FakeClock while the gateway's own thread runs in real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from backend_csms import BackendCsms, Received
from fake_clock import FakeClock
from site_helpers import make_config

from controller.service import Service
from hal.sim.site import SimulatedSite


def backend_section(csms: BackendCsms, **extra: Any) -> dict[str, Any]:
    return {"url": csms.url, "meter_values_interval_s": 1, **extra}


class GatewaySite:
    """A service with the gateway started (``run()`` is not called: the test runs the cycles)."""

    def __init__(self, sim: SimulatedSite, backend: dict[str, Any], **overrides: Any) -> None:
        self.sim = sim
        self.clock = FakeClock(time.time(), real_time=False)
        self.service = Service(make_config(sim, ocpp_backend=backend, **overrides), clock=self.clock)
        self.service.sessions.start()
        self.service.grid_log.start()
        assert self.service.gateway is not None
        self.gateway = self.service.gateway
        self.gateway.start()

    def cycle(self, n: int = 1) -> Any:
        status = None
        for _ in range(n):
            status = self.service.loop.run_once()
            self.clock.advance(1.0)
        return status

    def run_until(self, done: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
        """Cycles (and real time for the gateway's thread) until ``done()`` is truthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.cycle()
            value = done()
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
            time.sleep(0.05)

    def backend(self) -> dict[str, Any]:
        status = self.service.status().backend
        assert status is not None
        return {cp.charger_id: cp for cp in status.charge_points}

    def close(self) -> None:
        self.service.close()


def actions(messages: list[Received], cp_id: str, *wanted: str) -> list[str]:
    return [m.action for m in messages if m.cp_id == cp_id and (not wanted or m.action in wanted)]


__all__ = ["GatewaySite", "actions", "backend_section"]
