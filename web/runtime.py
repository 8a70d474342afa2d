"""Attach the HTTP listeners to a running controller (``gridcharge run`` and ``demo``).

The web layer depends on the controller, never the other way round: the command line builds the
``Service`` and then hands it here. The listeners are stopped by the service's stop hook, before
the loop's last cycle writes the fail-safe currents.
"""

from __future__ import annotations

import logging
from typing import Any

from controller.service import Service
from controller.version import version
from web.app import ApiContext
from web.metrics import Metrics
from web.server import WebServers
from web.tls import TlsStore

log = logging.getLogger(__name__)


def start_web(service: Service, *, http: Any = None, smgw: Any = None) -> WebServers:
    """Start the LAN listener (``http:``) and the SMGW listener (``smgw:``) of ``service``.

    ``http``/``smgw`` override the config's sections (the demo's own listener). Raises OSError,
    leaving nothing listening, when a port cannot be bound.
    """
    cfg = service.cfg
    http = http if http is not None else cfg.http
    smgw = smgw if smgw is not None else cfg.smgw
    tls = TlsStore(smgw, service.state_dir) if smgw is not None else None
    metrics = None
    if http is not None:  # /metrics is on the LAN listener; its histogram needs every cycle from now on
        metrics = Metrics(service.status, version=version(), main_fuse_a=cfg.site.main_fuse_a,
                          auth_required=http.metrics_auth)
        service.loop.add_cycle_listener(metrics.cycles.observe)
    ctx = ApiContext(
        store=service.store,
        status=service.status,  # the loop's status plus the state directory's and grid log's faults
        update_override=service.loop.update_override,
        grid_log=service.grid_log,
        tls=tls,
        version=version(),
        save_failing=lambda: service.saver.failing,
        main_fuse_a=cfg.site.main_fuse_a,
        sessions=service.sessions,
        metrics=metrics,
        history=service.history,
        cycle_s=cfg.site.cycle_s,
        open_sessions=service.session_recorder.open_sessions,
    )
    servers = WebServers(ctx, http, smgw, tls)
    servers.start()
    service.add_stop_hook(servers.stop)
    if servers.lan_port is not None:
        log.info("HTTP API on %s (port %d)", http.listen, servers.lan_port)
    if servers.smgw_port is not None:
        log.info("SMGW listener on %s (port %d)", smgw.listen, servers.smgw_port)
    return servers
