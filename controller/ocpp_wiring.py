"""The OCPP driver's part of building: one central system per build, one charger per box.

Registered with ``controller/drivers.py`` on import (``controller/build.py`` imports this module,
so any build knows ``model: ocpp``; the config entry type lives in ``controller.config``, so a
config parses without importing the driver). The central system is created on the first OCPP
box of a build (kept in ``BuildContext.scratch``), started at once (it listens: the boxes
connect to it) and added to the links as ``ocpp``; each box gets a worker group of its own,
``ocpp:<charge_box_id>``, so a box that does not answer holds up nobody else.
"""

from __future__ import annotations

import ssl

from controller.build import OneShotUnsupported
from controller.config import Config, OcppChargerConfig
from controller.drivers import register_charger_driver
from controller.hardware import BuildContext, DeviceHandle
from hal.ocpp.central import CentralSystem
from hal.ocpp.charger import BoxSpec, OcppCharger
from hal.types import Charger

#: How long a call to a box may take before it counts as unanswered (a box on Wi-Fi or LTE is slow).
CALL_TIMEOUT_S = 5.0
#: The heartbeat interval given to every box in its BootNotification answer. The WebSocket's own
#: pings (every 20 s) already find a dead connection; the heartbeat only keeps the box's clock.
HEARTBEAT_S = 300
#: What a box that never sent MeterValues and was never given a limit is taken to draw while
#: Charging, when its max_current_a is a formula: the most IEC 61851 AC charging offers.
UNKNOWN_LIMIT_A = 32.0


def sample_interval_s(cfg: Config) -> int:
    """MeterValueSampleInterval: the cycle, at least 1 s (a whole number of seconds in OCPP)."""
    return max(1, round(cfg.site.cycle_s))


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS for ``wss`` (OCPP security profile 2: the box checks the server's certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _central(ctx: BuildContext) -> CentralSystem:
    """The build's central system, created (not yet listening) for its first OCPP box."""
    central = ctx.scratch.get("ocpp")
    if isinstance(central, CentralSystem):
        return central
    server = ctx.cfg.ocpp
    if server is None:  # the config checks refuse model: ocpp without the section
        raise ValueError("model: ocpp needs the ocpp: section")
    context = server_context(str(server.cert), str(server.key)) if server.cert and server.key else None
    central = CentralSystem(server.host, server.port, ssl_context=context, heartbeat_s=HEARTBEAT_S,
                            call_timeout_s=CALL_TIMEOUT_S)
    ctx.scratch["ocpp"] = central
    ctx.hw.links[central.name] = central
    return central


def _is_last_box(cfg: Config, dev_id: str) -> bool:
    """``dev_id`` is the config's last OCPP box: the server listens once it knows every box (a
    box that connected earlier would be refused as unknown)."""
    ids = [i for i, c in cfg.chargers.items() if isinstance(c, OcppChargerConfig)]
    return bool(ids) and ids[-1] == dev_id


def build_charger(ctx: BuildContext, dev_id: str, cc: OcppChargerConfig) -> DeviceHandle[Charger]:
    if ctx.one_shot:
        raise OneShotUnsupported(
            f"{dev_id} is an OCPP box ({cc.charge_box_id}): it connects to the running gridcharge service "
            f"and cannot be read one-shot. Use 'gridcharge status' to see what it reports.")
    maximum = cc.max_current_a if isinstance(cc.max_current_a, (int, float)) else UNKNOWN_LIMIT_A
    spec = BoxSpec(cc.charge_box_id, cc.password, cc.connector, cc.phases, cc.phase_index,
                   frozenset(cc.id_tags) if cc.id_tags is not None else None, float(maximum))
    central = _central(ctx)
    charger = OcppCharger(dev_id, spec, central, stale_s=ctx.cfg.site.stale_s,
                          sample_interval_s=sample_interval_s(ctx.cfg), call_timeout_s=CALL_TIMEOUT_S,
                          on_event=ctx.on_event, on_session=ctx.on_session)
    central.add_box(charger)
    if _is_last_box(ctx.cfg, dev_id):
        central.start()  # raises OSError when the port is taken: gridcharge run says so and exits
    return DeviceHandle(dev_id, "charger", "ocpp", cc.connection_text(), f"ocpp:{cc.charge_box_id}", charger,
                        reports_sessions=True)


register_charger_driver(models=["ocpp"], config=OcppChargerConfig, build=build_charger)
