"""The gateway to the supplier's OCPP 1.6J backend: every configured charger (Modbus and OCPP
boxes alike) is one charge point connected to ``<url>/<backend_id>`` (docs/backend.md).

It runs on its own thread (``hal.ocpp.backend_runner.LoopThread``), one connection per charger
(``hal.ocpp.backend_link.BackendLink``), and touches the rest of gridcharge in three places, none
of which ever waits for the backend, the network or the disk:

- **the control loop's cycles** (``on_cycle``, a cycle listener): the latest status is handed
  over to the gateway's thread, which sends StatusNotification when a charger's status changed;
- **the session log** (``on_session``, a listener of the session recorder): each saved session
  row is handed over, and becomes StartTransaction or StopTransaction, stored in the outbox
  (``controller.records.backend_outbox``) before it is sent;
- **the allocation** (``caps``, a cap source of the loop): what the backend asks of each charger
  (profiles, a remote stop, Inoperative) as a cap with its reason, read from an immutable
  snapshot; a change made by the backend is recorded in the grid log (kind ``backend``) and
  wakes the loop.

At start, the sessions open in the session log are handed over first, so a session that began
while the gateway was not running (or whose Start was lost with a SIGKILL before it was stored)
gets its transaction; one already stored is not started again.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller.backend.charge_point import BackendChargePoint, ChargePointSettings
from controller.config import Config
from controller.config.schema import OcppBackend, backend_disabled_reason
from controller.records.backend_outbox import BackendOutbox
from controller.records.sessions import Session, SessionLog
from controller.status import BackendStatus, Status
from controller.version import version
from hal.ocpp.backend_link import BackendLink, Route
from hal.ocpp.backend_runner import LoopThread

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0  # a backend behind an SMGW and LTE is slow; OCPP's own default is 30 s


def client_context(backend: OcppBackend) -> ssl.SSLContext | None:
    """TLS for a ``wss`` backend: the system's CAs, or only ``ca`` when given; a client
    certificate when ``cert``/``key`` are given (security profile 3)."""
    if not backend.url.startswith("wss://"):
        return None
    context = ssl.create_default_context(cafile=str(backend.ca) if backend.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if backend.cert is not None and backend.key is not None:
        context.load_cert_chain(str(backend.cert), str(backend.key))
    return context


class Gateway:
    """The gateway (module doc). ``start()`` after the session log is open; ``close()`` at stop."""

    def __init__(self, cfg: Config, outbox: BackendOutbox, sessions: SessionLog, *,
                 record: Callable[[str, str, object, object, str], None] | None = None,
                 wake_loop: Callable[[str], None] | None = None,
                 models: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> None:
        backend = cfg.ocpp_backend
        if backend is None:
            raise ValueError("the gateway needs the ocpp_backend: section")
        self.backend = backend
        self.outbox = outbox
        self.sessions = sessions
        self._record = record
        self._wake_loop = wake_loop
        self._clock = clock
        self.disabled_reason = backend_disabled_reason(backend, cfg.smgw)
        self.route = Route(backend.url, backend.proxy, backend.password, client_context(backend), CALL_TIMEOUT_S)
        self.charge_points: dict[str, BackendChargePoint] = {}
        for cid, backend_id in cfg.backend_ids.items():
            charger = cfg.chargers[cid]
            settings = ChargePointSettings(
                charger_id=cid, backend_id=backend_id, model=(models or {}).get(cid, charger.driver_model),
                phases=charger.phases, voltage_v=cfg.site.voltage_v, id_tag=backend.id_tag,
                meter_values_interval_s=backend.meter_values_interval_s, heartbeat_s=backend.heartbeat_s,
                firmware=f"gridcharge {version()}")
            self.charge_points[cid] = BackendChargePoint(settings, outbox, self, clock=clock,
                                                         set_backend_transaction_id=sessions.set_backend_transaction_id)
        self.links: dict[str, BackendLink] = {}
        self._thread = LoopThread("ocpp-backend")
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._latest: Status | None = None

    # ---- other threads ------------------------------------------------------------------------------
    def on_cycle(self, status: Status) -> None:
        """The loop's cycle listener: hand the status over (never blocks)."""
        self._latest = status
        self._thread.call_soon(self._drain)

    def on_session(self, session: Session) -> None:
        """The session recorder's row listener (any thread; never blocks)."""
        self._inbox.put(("session", session))
        self._thread.call_soon(self._drain)

    def caps(self) -> dict[str, tuple[float, str]]:
        """The loop's cap source: the backend's cap per charger now (only those with one)."""
        out: dict[str, tuple[float, str]] = {}
        if self.disabled_reason is not None:
            return out
        now = self._clock()
        for cid, cp in self.charge_points.items():
            cap_a, reason = cp.cap_now(now)
            if cap_a is not None:
                out[cid] = (cap_a, reason or "backend")
        return out

    def status(self) -> BackendStatus:
        return BackendStatus(url=self.backend.url, proxy=self.backend.proxy, enabled=self.disabled_reason is None,
                             reason=self.disabled_reason,
                             charge_points=tuple(cp.status() for cp in self.charge_points.values()),
                             dropped=self.outbox.dropped())

    # ---- GatewayHooks (the gateway's thread) ------------------------------------------------------------
    def cap_changed(self, charger_id: str, before: tuple[float | None, str | None],
                    after: tuple[float | None, str | None], what: str) -> None:
        log.info("backend %s: %s: cap %s → %s", charger_id, what, _cap_text(before), _cap_text(after))
        if self._record is not None:
            self._record("backend", charger_id, _cap_value(before), _cap_value(after),
                         f"backend:{self.charge_points[charger_id].s.backend_id}")
        if self._wake_loop is not None:
            self._wake_loop(f"backend {charger_id}: {what}")

    def wake_link(self, charger_id: str) -> None:
        link = self.links.get(charger_id)
        if link is not None:
            link.wake()

    # ---- running ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread and every connection (nothing when the gateway is off)."""
        if self.disabled_reason is not None:
            log.warning("OCPP backend gateway %s", self.disabled_reason)
            for cp in self.charge_points.values():
                cp.link_changed(False, "off", self.disabled_reason)
            return
        for session in self.sessions.open_sessions().values():
            self._inbox.put(("session", session))
        self._thread.start(self._main)

    async def _main(self) -> None:
        self.links = {cid: BackendLink(cp.s.backend_id, self.route, cp) for cid, cp in self.charge_points.items()}
        tasks = [asyncio.create_task(link.run(), name=f"backend {cid}") for cid, link in self.links.items()]
        tasks += [asyncio.create_task(self._meter_values(cp), name=f"meter values {cid}")
                  for cid, cp in self.charge_points.items()]
        log.info("OCPP backend gateway: %d charge point(s) to %s%s", len(self.links), self.backend.url,
                 f" through {self.backend.proxy}" if self.backend.proxy else "")
        self._drain()
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # All at once: twenty silent connections must not add up to a stop of 40 s.
            await asyncio.gather(*(asyncio.wait_for(link.close(), 2) for link in self.links.values()),
                                 return_exceptions=True)

    def _drain(self) -> None:
        """Take what other threads handed over (on the gateway's thread)."""
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "session":
                cp = self.charge_points.get(item.charger_id)
                if cp is not None:
                    try:
                        cp.on_session(item)
                    except Exception:  # a bad row must not stop the gateway
                        log.exception("backend %s: session %s not handled", item.charger_id, item.id)
        status = self._latest
        if status is None:
            return
        for charger in status.chargers:
            cp = self.charge_points.get(charger.device.id)
            if cp is None:
                continue
            cp.latest = charger
            link = self.links.get(charger.device.id)
            if link is not None and cp.status_now() != link.sent_status:
                link.wake()

    async def _meter_values(self, cp: BackendChargePoint) -> None:
        while True:
            await asyncio.sleep(cp.meter_values_interval_s)
            try:
                cp.sample_meter_values()
            except Exception:
                log.exception("backend %s: meter values not stored", cp.s.backend_id)

    def close(self) -> None:
        self._thread.stop()


def _cap_text(cap: tuple[float | None, str | None]) -> str:
    return "none" if cap[0] is None else f"{cap[0]:g} A ({cap[1]})"


def _cap_value(cap: tuple[float | None, str | None]) -> dict[str, Any] | None:
    return None if cap[0] is None else {"cap_a": round(cap[0], 2), "reason": cap[1]}


__all__ = ["Gateway", "client_context"]
