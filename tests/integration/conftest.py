"""Fixtures for the controller against simulated devices on real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backend_csms import BackendCsms
from fake_clock import FakeClock
from site_helpers import home_site, make_config

from controller.service import Service
from hal.sim.site import SimulatedSite


@pytest.fixture()
def sim() -> Iterator[SimulatedSite]:
    site = home_site()
    site.start()
    yield site
    site.stop()


@pytest.fixture()
def controller(sim: SimulatedSite) -> Iterator[Callable[..., tuple[Service, FakeClock]]]:
    """Build a Service on a FakeClock against ``sim``; cycles run with ``service.loop.run_once()``."""
    made: list[Service] = []

    def build(**overrides: Any) -> tuple[Service, FakeClock]:
        clock = FakeClock()
        service = Service(make_config(sim, **overrides), clock=clock)
        made.append(service)
        return service, clock

    yield build
    for service in made:
        service.close()


@pytest.fixture()
def cleanup() -> Iterator[list[Callable[[], None]]]:
    """Stop functions a test registers (simulated boxes, services), run in reverse at its end."""
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


@pytest.fixture()
def csms() -> Iterator[BackendCsms]:
    """A real OCPP 1.6J backend on loopback for the gateway's tests (``backend_csms``)."""
    backend = BackendCsms().start()
    yield backend
    backend.stop()
