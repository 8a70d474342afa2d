"""The API's two listeners, wired to the app, the authentication and the TLS store.

``WebServers`` owns the LAN listener (``http.listen``, basic auth) and the SMGW listener
(``smgw.listen``, mutual TLS), each a ``web.listener.HttpListener`` with its own event-loop
thread and workers, so that nothing done to one port can slow the other.

- ``start()`` binds every port at once and raises ``OSError`` when one is busy (nothing is left
  listening then); ``stop()`` is clean and idempotent (the Service calls it on SIGTERM).
  ``listen`` port 0 binds a free port; ``lan_port`` / ``smgw_port`` tell which.
- Limits (``web.limits``): deadlines for every phase of a connection, a cap per client address
  and per listener; the caps of both listeners are fitted to the descriptors the process may
  still open, keeping ``DEVICE_RESERVE`` for the devices. Bodies above 64 KiB get a JSON 413.
- SMGW: the context from ``TlsStore.server_context()`` (client certificate required). Without a
  usable certificate at start the SMGW listener is not started (an error in the log says why);
  an upload over the LAN (``set_tls_cert``) starts it. After every upload the new context is
  swapped in: new connections use it, open ones finish with the old one.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from web.app import MAX_BODY_BYTES, ApiContext, create_app
from web.auth import Authenticator, BasicAuth, ClientCertAuth
from web.limits import LAN_LIMITS, SMGW_LIMITS, ListenerLimits, descriptor_budget, fit_to_budget
from web.listener import HttpListener

if TYPE_CHECKING:
    from controller.config.schema import Http, Smgw
    from web.tls import TlsStore

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::]:port"`` → (host, port); port 0 = any free port (tests).

    The config accepts ports 1..65535 only; tests build their ``Http``/``Smgw`` with
    ``model_construct`` to ask for port 0, so this parser (not the config's) is used here.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen must be 'host:port', not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class WebServers:
    """The LAN and SMGW listeners of one controller; see the module docstring.

    ``limits``: the ``ListenerLimits`` per listener (``"lan"``, ``"smgw"``), default
    ``LAN_LIMITS`` and ``SMGW_LIMITS``, before they are fitted to the descriptor budget.
    """

    def __init__(self, ctx: ApiContext, http: Http | None, smgw: Smgw | None, tls: TlsStore | None, *,
                 limits: dict[str, ListenerLimits] | None = None) -> None:
        self._ctx = ctx
        self._http = http
        self._smgw = smgw
        self._tls = tls
        wanted = {"lan": LAN_LIMITS, "smgw": SMGW_LIMITS, **(limits or {})}
        self._wanted = {name: replace(value, max_body_bytes=MAX_BODY_BYTES) for name, value in wanted.items()}
        self.limits: dict[str, ListenerLimits] = dict(self._wanted)
        self._lock = threading.RLock()
        self.lan: HttpListener | None = None
        self.smgw: HttpListener | None = None
        self._started = False
        self._stopped = False

    @property
    def lan_port(self) -> int | None:
        return self.lan.port if self.lan is not None else None

    @property
    def smgw_port(self) -> int | None:
        listener = self.smgw
        return listener.port if listener is not None else None

    def start(self) -> None:
        """Bind and serve. Raises OSError (and leaves nothing listening) when a port is busy."""
        with self._lock:
            if self._started:
                return
            self._started = True
            used = {name: limits for name, limits in self._wanted.items()
                    if (name == "lan" and self._http is not None) or (name == "smgw" and self._smgw is not None)}
            self.limits.update(fit_to_budget(used, descriptor_budget()))
            try:
                if self._http is not None:
                    auth = BasicAuth.from_config(self._http)
                    host, port = split_listen(self._http.listen)
                    self.lan = self._serve("LAN", host, port, auth, self.limits["lan"], None)
                if self._smgw is not None:
                    if self._tls is None:
                        log.error("smgw is configured but no TLS store was given: SMGW listener not started")
                    else:
                        self._tls.add_listener(self._tls_changed)
                        self._start_smgw()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop both listeners (requests being answered get ``shutdown_s`` to finish). Idempotent."""
        with self._lock:
            self._stopped = True
            listeners = [x for x in (self.lan, self.smgw) if x is not None]
        for listener in listeners:
            try:
                listener.stop()
            except Exception:
                log.exception("stopping the %s listener failed", listener.name)

    # ---- SMGW --------------------------------------------------------------------------------
    def _smgw_context(self) -> ssl.SSLContext | None:
        from web.tls import TlsError

        assert self._tls is not None
        try:
            return self._tls.server_context()
        except TlsError as exc:
            log.error("SMGW listener: no usable TLS certificate: %s", exc)
            return None

    def _start_smgw(self) -> None:
        assert self._smgw is not None
        context = self._smgw_context()
        if context is None:
            log.error("SMGW listener on %s not started; it starts once a certificate is uploaded "
                      "(POST /cnf?cmd=set_tls_cert as admin on the LAN)", self._smgw.listen)
            return
        auth = ClientCertAuth(self._smgw.functions)
        host, port = split_listen(self._smgw.listen)
        self.smgw = self._serve("SMGW", host, port, auth, self.limits["smgw"], context)

    def _tls_changed(self) -> None:
        """After an upload: swap the context in (new connections use it) or start the listener."""
        with self._lock:
            if self._stopped or self._smgw is None:
                return
            if self.smgw is None:
                try:
                    self._start_smgw()
                except OSError as exc:
                    log.error("SMGW listener on %s could not start: %s", self._smgw.listen, exc)
                return
            context = self._smgw_context()
            if context is not None:
                self.smgw.tls_context = context
                log.info("SMGW listener: new TLS certificate in use for new connections")

    # ---- one listener ------------------------------------------------------------------------
    def _serve(self, name: str, host: str, port: int, auth: Authenticator, limits: ListenerLimits,
               context: ssl.SSLContext | None) -> HttpListener:
        app = create_app(self._ctx, listener=name.lower(), auth=auth)
        listener = HttpListener(name, host, port, app, limits, tls_context=context)  # binds: OSError if busy
        listener.start()
        scheme = "https" if context is not None else "http"
        log.info("%s API listening on %s://%s:%d/cnf (at most %d connections, %d per address)", name, scheme,
                 host, listener.port, limits.max_connections, limits.max_per_address)
        return listener
