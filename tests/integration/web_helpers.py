"""Helpers for the HTTP API tests: real ``WebServers`` on 127.0.0.1 (free ports) around a real
``Service`` (variable store + control loop) on a simulated site, and a small client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from fake_clock import FakeClock
from site_helpers import home_site, make_config

from controller.config.schema import Http, Smgw
from controller.service import Service
from hal.sim.site import SimulatedSite
from web.app import ApiContext
from web.server import WebServers

USER = "admin"
PASSWORD = "test-pass-1234"


def http_section(*, password: str | None = PASSWORD, password_hash: str | None = None,
                 listen: str = "127.0.0.1:0") -> Http:
    """An ``http`` config section on a free port (the config itself accepts ports 1..65535 only)."""
    return Http.model_construct(listen=listen, user=USER, password=password, password_hash=password_hash)


def smgw_section(cert: Path, key: Path, client_ca: Path, functions: tuple[str, ...],
                 listen: str = "127.0.0.1:0") -> Smgw:
    return Smgw.model_construct(listen=listen, cert=cert, key=key, client_ca=client_ca, functions=functions)


def api_context(service: Service, *, grid_log: Any = None, tls: Any = None, version: str = "test") -> ApiContext:
    return ApiContext(
        store=service.store,
        status=service.status,
        update_override=service.loop.update_override,
        grid_log=grid_log,
        tls=tls,
        version=version,
        save_failing=lambda: service.saver.failing,
        history=service.history,
        cycle_s=service.cfg.site.cycle_s,
        open_sessions=service.session_recorder.open_sessions,
    )


@dataclass
class Client:
    """A keep-alive ``requests`` session against one listener."""

    base_url: str
    session: requests.Session

    @property
    def url(self) -> str:
        return f"{self.base_url}/cnf"

    def get(self, cmd: str | None = None, **params: Any) -> requests.Response:
        if cmd is not None:
            params = {"cmd": cmd, **params}
        return self.session.get(self.url, params=params, timeout=10)

    def post(self, cmd: str, body: str | bytes, **params: Any) -> requests.Response:
        """POST ``body`` as ``curl -d`` does: Content-Type application/x-www-form-urlencoded."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.session.post(self.url, params={"cmd": cmd, **params}, data=body, headers=headers, timeout=10)

    def close(self) -> None:
        self.session.close()


def lan_client(servers: WebServers, auth: tuple[str, str] | None = (USER, PASSWORD)) -> Client:
    session = requests.Session()
    session.auth = auth
    return Client(f"http://127.0.0.1:{servers.lan_port}", session)


@dataclass
class WebSite:
    """A simulated site, the controller on a FakeClock (cycles run by the test) and the API."""

    sim: SimulatedSite
    service: Service
    clock: FakeClock
    servers: WebServers
    client: Client

    def cycles(self, n: int = 1) -> Any:
        status = None
        for _ in range(n):
            status = self.service.loop.run_once()
            self.clock.advance(1.0)
        return status


@contextlib.contextmanager
def running_web(sim: SimulatedSite | None = None, *, http: Http | None = None, grid_log: Any = None,
                tls: Any = None, cycles: int = 2, **config: Any) -> Iterator[WebSite]:
    """Start (or reuse) a simulated site, a Service on a FakeClock and the LAN listener.

    ``grid_log`` and ``tls`` go into the ``ApiContext`` (no SMGW listener is started here).
    """
    own_sim = sim is None
    site = home_site() if sim is None else sim
    if own_sim:
        site.start()
    clock = FakeClock()
    service = Service(make_config(site, **config), clock=clock)
    servers = WebServers(api_context(service, grid_log=grid_log, tls=tls), http or http_section(), None, None)
    client: Client | None = None
    try:
        servers.start()
        client = lan_client(servers)
        web = WebSite(site, service, clock, servers, client)
        web.cycles(cycles)
        yield web
    finally:
        if client is not None:
            client.close()
        servers.stop()
        service.close()
        if own_sim:
            site.stop()
