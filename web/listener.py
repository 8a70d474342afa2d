"""One HTTP listener: a listening socket, an asyncio event loop on its own thread, a few workers.

Why not cheroot, which served the API before: cheroot gives each new connection to one of its
worker threads, which then reads the request with a per-``recv`` timeout, so a handful of silent
or byte-trickling clients occupy every worker for as long as they like; and it does the TLS
handshake in its accept loop, so one client that never sends a ClientHello stops the whole
listener for the timeout. Both are its design, not a setting. Here, accepting, TLS handshakes
and reading requests are coroutines on an event loop, each under a deadline for its whole phase;
worker threads only run the Flask app on complete requests (``web.http_connection``). h11 does
the HTTP/1.1 parsing and framing.

The listener:

- binds in ``start()`` on the caller's thread, so a busy port is an ``OSError`` there and nothing
  is left listening; then serves on a daemon thread ``http-<name>``;
- accepts in a loop that backs off on ``accept()`` errors and logs them once per streak
  (``web.accept``); out of descriptors, it also closes the longest-waiting idle connections;
- admits connections through ``web.gate`` (a cap per address and in total) before any byte is
  read, and closes refused ones at once;
- wraps each new connection with ``tls_context`` as it is at that moment: assigning a new
  context (a certificate upload) affects new connections only;
- ``stop()``: stops accepting and closes the socket, gives requests being answered
  ``shutdown_s`` to finish, closes everything else; idempotent, callable from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from web.accept import AcceptBackoff
from web.gate import ConnectionGate, Phase, Refusal, Slot
from web.http_connection import ConnectionHandle, ListenerContext, serve_socket
from web.limits import ListenerLimits
from web.lograte import RateLimitedLog
from web.wsgi_bridge import WsgiApp

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024  # connections the kernel holds until accepted (capped by net.core.somaxconn)
SHED_ON_EMFILE = 16  # idle connections closed when accept() runs out of descriptors


def bind(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A listening, non-blocking TCP socket; ``OSError`` when the address is busy or wrong.

    ``::`` listens on IPv6 and IPv4 (dual stack) where the system allows it.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    dual = family == socket.AF_INET6 and host in ("::", "") and socket.has_dualstack_ipv6()
    sock = socket.create_server(sockaddr, family=family, backlog=backlog, dualstack_ipv6=dual)
    sock.setblocking(False)
    return sock


class HttpListener:
    """One listener; see the module docstring."""

    def __init__(self, name: str, host: str, port: int, app: WsgiApp, limits: ListenerLimits, *,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.limits = limits
        self.tls_context = tls_context  # read for every new connection (hot-swapped after an upload)
        self._app = app
        self._sock = bind(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.gate = ConnectionGate(limits.max_connections, limits.max_per_address)
        self.backoff = AcceptBackoff(log, name)
        self._notes = RateLimitedLog(log)
        self._executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix=f"http-{name.lower()}")
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], Slot] = {}  # the connections being served
        self._thread = threading.Thread(target=self._run, name=f"http-{name.lower()}", daemon=True)
        self._stop_lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (see the module docstring). Idempotent, from any thread."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._thread.ident is None:  # never started: nothing else uses the socket or the loop
            self._sock.close()
            self._loop.close()
        else:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(self.limits.shutdown_s + 3.0)
            if self._thread.is_alive():
                log.warning("%s listener: its thread did not end in time", self.name)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the event loop thread ---------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception:
            log.exception("%s listener failed", self.name)
        finally:
            self._sock.close()
            self._loop.close()

    async def _main(self) -> None:
        ctx = ListenerContext(self.name, self.limits, self._app, self._executor, self._notes,
                              server_name=self.host or "0.0.0.0", server_port=self.port)
        accepting = asyncio.ensure_future(self._accept_loop(ctx))
        await self._stopping.wait()
        accepting.cancel()
        await asyncio.gather(accepting, return_exceptions=True)
        self._sock.close()
        loop = asyncio.get_running_loop()
        until = loop.time() + self.limits.shutdown_s
        while loop.time() < until and any(slot.phase is Phase.ANSWERING for slot in self._tasks.values()):
            await asyncio.sleep(0.02)  # let the requests being answered finish (keep-alive ones then wait)
        for slot in list(self._tasks.values()):
            slot.drop()  # closes the connection and cancels its task (also one not yet started)
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _accept_loop(self, ctx: ListenerContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(self._sock)
            except OSError as exc:
                if self.backoff.is_client_error(exc):
                    continue
                shed = self.gate.shed(SHED_ON_EMFILE)
                await asyncio.sleep(self.backoff.failed(exc, loop.time(), shed))
                continue
            self.backoff.succeeded(loop.time())
            try:
                self._admit(ctx, sock, address)
            except Exception as exc:  # a bug; the listener must go on accepting
                sock.close()
                self._notes.log(("admit", type(exc).__name__), logging.ERROR, "%s listener: admitting a "
                                "connection failed", self.name, exc_info=exc)
            # sock_accept returns without yielding while the backlog is full: let the closes of
            # evicted connections (and everything else on this loop) run between two accepts
            await asyncio.sleep(0)

    @staticmethod
    def _no_delay(sock: socket.socket) -> None:
        """TCP_NODELAY: asyncio sets it only on sockets created with IPPROTO_TCP, and without it
        a TLS answer waits ~40 ms for the client's delayed ACK of the session tickets (Nagle)."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def _admit(self, ctx: ListenerContext, sock: socket.socket, address: Any) -> None:
        loop = asyncio.get_running_loop()
        admission = self.gate.admit(str(address[0]), loop.time())
        slot = admission.slot
        if slot is None:
            sock.close()
            if admission.refusal is Refusal.PER_ADDRESS:
                self._notes.log(("per_address", address[0]), logging.WARNING,
                                "%s listener: refused a connection from %s: it already has %d (the cap per address)",
                                self.name, address[0], self.limits.max_per_address)
            else:
                self._notes.log(("full",), logging.WARNING,
                                "%s listener: refused a connection from %s: all %d connections are taken and no "
                                "address holds more waiting ones than it", self.name, address[0],
                                self.limits.max_connections)
            return
        if admission.evicted is not None:
            self._notes.log(("evicted",), logging.WARNING,
                            "%s listener: %d connections (the cap): closed a waiting one from %s (the most "
                            "loaded address) for a new one from %s", self.name, self.limits.max_connections,
                            admission.evicted.address, address[0])
        self._no_delay(sock)
        handle = ConnectionHandle(sock)
        task = loop.create_task(serve_socket(ctx, handle, address, slot, self.tls_context))
        handle.task = task
        slot.drop = handle.drop
        self._tasks[task] = slot
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        slot = self._tasks.pop(task, None)
        if slot is not None:
            self.gate.release(slot)
        if not task.cancelled() and task.exception() is not None:  # a bug: connections handle their errors
            exc = task.exception()
            self._notes.log(("bug", type(exc).__name__), logging.ERROR, "%s listener: a connection failed "
                            "unexpectedly", self.name, exc_info=exc)
