"""The HTTP listeners: cheroot servers on background threads, one per listener.

``WebServers`` owns the LAN listener (``http.listen``, basic auth) and the SMGW listener
(``smgw.listen``, mutual TLS). Two separate cheroot servers, so that a client stalling the TLS
handshake on the SMGW port (cheroot shakes hands in its accept loop, for at most ``timeout``)
can never hold up the LAN API, and vice versa.

- ``start()`` binds every port at once and raises ``OSError`` when one is busy (nothing is left
  listening then); ``serve()`` runs on a daemon thread per server; ``stop()`` is clean and
  idempotent (the lead's Service calls it on SIGTERM). ``listen`` port 0 binds a free port;
  ``lan_port`` / ``smgw_port`` tell which.
- Limits: 8 worker threads per listener (idle keep-alive connections wait in cheroot's selector,
  not in a worker), 10 s socket timeout on the LAN (5 s on the SMGW port: a stalled handshake
  blocks its accept loop that long), 32 KiB of request line and headers, bodies above 1 MiB
  refused by cheroot itself (the app refuses everything above 64 KiB with a JSON 413; the 1 MiB
  backstop also bounds chunked bodies before the app reads them).
- SMGW: cheroot's ``BuiltinSSLAdapter`` with the context from ``TlsStore.server_context()``
  (client certificate required). Without a usable certificate at start the SMGW listener is not
  started (an error in the log says why); an upload over the LAN (``set_tls_cert``) starts it.
  After every upload the new context is swapped in: new connections use it, open ones finish.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cheroot import wsgi
from cheroot.ssl import Adapter
from cheroot.ssl.builtin import BuiltinSSLAdapter

from web.app import DRAIN_LIMIT_BYTES, ApiContext, create_app
from web.auth import Authenticator, BasicAuth, ClientCertAuth

if TYPE_CHECKING:
    from controller.config_schema import Http, Smgw
    from web.tls import TlsStore

log = logging.getLogger(__name__)

WORKER_THREADS = 8
LAN_TIMEOUT_S = 10
SMGW_TIMEOUT_S = 5
SHUTDOWN_TIMEOUT_S = 2
MAX_HEADER_BYTES = 32 * 1024
LISTEN_BACKLOG = 64
POLL_S = 0.1  # cheroot's select() timeout: how fast stop() is noticed (default 0.5 s); ~10 idle wakeups/s


class ContextSSLAdapter(BuiltinSSLAdapter):
    """cheroot's builtin TLS adapter around a ready ``SSLContext``.

    The stock constructor loads certificate files itself; ours come from ``TlsStore``, so the
    constructor is bypassed and ``context`` (read for every new connection) can be swapped.
    """

    def __init__(self, context: ssl.SSLContext) -> None:  # noqa: D107 - see the class docstring
        Adapter.__init__(self, None, None)  # type: ignore[arg-type]  # sets the plain attributes
        self.context = context
        self._server_env: dict[str, Any] = {}


class _Server(wsgi.Server):
    """cheroot's server with its error log in ``logging`` instead of bare stderr.

    ``info_level``: where cheroot's informational lines go. On the SMGW port they say which
    client failed the TLS handshake (no or a wrong certificate): worth INFO. On the LAN they are
    dropped connections: DEBUG.
    """

    info_level = logging.DEBUG
    listener = "http"

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        log.log(level if level >= logging.WARNING else self.info_level, "%s listener: %s",
                self.listener, msg, exc_info=traceback)


@dataclass
class _Listener:
    name: str
    server: _Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.bind_addr[1])


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
    """The LAN and SMGW listeners of one controller; see the module docstring."""

    def __init__(self, ctx: ApiContext, http: Http | None, smgw: Smgw | None, tls: TlsStore | None) -> None:
        self._ctx = ctx
        self._http = http
        self._smgw = smgw
        self._tls = tls
        self._lock = threading.RLock()
        self._lan: _Listener | None = None
        self._smgw_listener: _Listener | None = None
        self._smgw_adapter: ContextSSLAdapter | None = None
        self._started = False
        self._stopped = False

    @property
    def lan_port(self) -> int | None:
        return self._lan.port if self._lan is not None else None

    @property
    def smgw_port(self) -> int | None:
        listener = self._smgw_listener
        return listener.port if listener is not None else None

    def start(self) -> None:
        """Bind and serve. Raises OSError (and leaves nothing listening) when a port is busy."""
        with self._lock:
            if self._started:
                return
            self._started = True
            try:
                if self._http is not None:
                    auth = BasicAuth.from_config(self._http)
                    host, port = split_listen(self._http.listen)
                    self._lan = self._serve("lan", host, port, auth, None, LAN_TIMEOUT_S)
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
        """Stop both listeners (open requests get ``SHUTDOWN_TIMEOUT_S`` to finish). Idempotent."""
        with self._lock:
            self._stopped = True
            listeners = [x for x in (self._lan, self._smgw_listener) if x is not None]
        for listener in listeners:
            try:
                listener.server.stop()
            except Exception:
                log.exception("stopping the %s listener failed", listener.name)
            listener.thread.join(SHUTDOWN_TIMEOUT_S + 1)
            if listener.thread.is_alive():
                log.warning("the %s listener thread did not end in time", listener.name)

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
        adapter = ContextSSLAdapter(context)
        auth = ClientCertAuth(self._smgw.functions)
        host, port = split_listen(self._smgw.listen)
        self._smgw_listener = self._serve("smgw", host, port, auth, adapter, SMGW_TIMEOUT_S)
        self._smgw_adapter = adapter

    def _tls_changed(self) -> None:
        """After an upload: swap the context in (new connections use it) or start the listener."""
        with self._lock:
            if self._stopped or self._smgw is None:
                return
            if self._smgw_adapter is None:
                try:
                    self._start_smgw()
                except OSError as exc:
                    log.error("SMGW listener on %s could not start: %s", self._smgw.listen, exc)
                return
            context = self._smgw_context()
            if context is not None:
                self._smgw_adapter.context = context
                log.info("SMGW listener: new TLS certificate in use for new connections")

    # ---- one listener ------------------------------------------------------------------------
    def _serve(self, name: str, host: str, port: int, auth: Authenticator,
               adapter: ContextSSLAdapter | None, timeout_s: int) -> _Listener:
        app = create_app(self._ctx, listener=name, auth=auth)
        server = _Server((host, port), app, numthreads=WORKER_THREADS, server_name="gridcharge",
                         request_queue_size=LISTEN_BACKLOG, timeout=timeout_s,
                         shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        server.max_request_header_size = MAX_HEADER_BYTES
        server.max_request_body_size = DRAIN_LIMIT_BYTES
        server.expiration_interval = POLL_S
        server.listener = name
        if adapter is not None:
            server.ssl_adapter = adapter
            server.info_level = logging.INFO
        server.prepare()  # binds now: OSError when the port is busy
        thread = threading.Thread(target=server.serve, name=f"http-{name}", daemon=True)
        thread.start()
        listener = _Listener(name, server, thread)
        scheme = "https" if adapter is not None else "http"
        log.info("%s API listening on %s://%s:%d/cnf", name.upper(), scheme, host, listener.port)
        return listener
