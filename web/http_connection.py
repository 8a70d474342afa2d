"""One client connection on a listener's event loop: TLS handshake, requests, answers, close.

Everything that waits on the client happens here, as a coroutine, under a deadline for the whole
phase (``web.limits``): the handshake, each request head, each body, each answer being written.
h11 parses and frames HTTP/1.1 (keep-alive, chunked bodies, ``Expect: 100-continue``,
pipelined requests one after the other). A request reaches a worker thread only once its head
and body are complete (``web.wsgi_bridge``); what the server edge refuses is answered here
(``web.http_edge``), after which the connection reads and drops what the client still sends for
a moment (so the client sees the answer instead of a reset) and closes.

Connections that say nothing are closed without a word when their deadline passes; a client that
had started a request head or body gets a 408 first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import h11

from web.gate import Phase, Slot
from web.http_edge import SERVER_NAME, EdgeError, declared_length, error_bytes, from_protocol_error, http_date
from web.limits import ListenerLimits
from web.lograte import RateLimitedLog
from web.wsgi_bridge import AppAnswer, Peer, WsgiApp, build_environ, run_app, tls_variables

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
TLS_CLOSE_S = 2.0  # how long a TLS close waits for the client's close_notify


@dataclass(frozen=True)
class ListenerContext:
    """What every connection of one listener shares."""

    name: str  # "LAN" or "SMGW", for the log
    limits: ListenerLimits
    app: WsgiApp
    executor: Executor
    notes: RateLimitedLog
    server_name: str
    server_port: int


class _ClientGone(Exception):
    """The client closed or reset the connection: nothing left to answer."""


@dataclass(eq=False)
class ConnectionHandle:
    """What it takes to close one accepted connection at any moment (``drop``, when the gate
    evicts it): before its task ran, during the TLS handshake, or once it has a transport."""

    sock: socket.socket
    task: asyncio.Task[None] | None = None
    transport: asyncio.Transport | None = None
    wrapping: bool = False  # asyncio owns the socket from here on

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        elif self.wrapping:  # mid-handshake: a shutdown makes asyncio fail the handshake and close
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:  # the task has not started: nobody else has the socket yet
            self.sock.close()
        if self.task is not None:
            self.task.cancel()


async def serve_socket(ctx: ListenerContext, handle: ConnectionHandle, address: tuple[Any, ...], slot: Slot,
                       tls_context: ssl.SSLContext | None) -> None:
    """Serve one accepted socket to the end (the caller releases ``slot`` afterwards)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    handle.wrapping = True
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, handle.sock, ssl=tls_context,
            ssl_handshake_timeout=ctx.limits.handshake_s if tls_context is not None else None,
            ssl_shutdown_timeout=TLS_CLOSE_S if tls_context is not None else None)
    except OSError as exc:  # ssl.SSLError, the handshake deadline (ConnectionAbortedError), a reset
        ctx.notes.log(("handshake", slot.address), logging.INFO, "%s listener: TLS handshake with %s failed: %s",
                      ctx.name, address[0], exc or type(exc).__name__)
        return
    assert isinstance(transport, asyncio.Transport)
    handle.transport = transport
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    tls = tls_variables(transport.get_extra_info("ssl_object")) if tls_context is not None else None
    peer = Peer(str(address[0]), int(address[1]), ctx.server_name, ctx.server_port, tls)
    await HttpConnection(ctx, reader, writer, peer, slot).serve()


class HttpConnection:
    """The request/answer cycles of one connection (after the TLS handshake, if any)."""

    def __init__(self, ctx: ListenerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: Peer, slot: Slot) -> None:
        self.ctx = ctx
        self.limits = ctx.limits
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.slot = slot
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=ctx.limits.max_head_bytes)

    async def serve(self) -> None:
        clean = False
        try:
            keep_alive = False
            while True:
                request = await self._read_head(keep_alive)
                if request is None:
                    return
                body = await self._read_body(declared_length(request, self.limits.max_body_bytes))
                answer = await self._answer(request, body)
                if not await self._send(request, answer):
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    clean = True  # MUST_CLOSE: HTTP/1.0 or "Connection: close"
                    return
                self.h11.start_next_cycle()
                keep_alive = True
        except EdgeError as refusal:
            await self._refuse(refusal)
        except _ClientGone:
            pass
        finally:
            self._close(clean)

    # ---- reading -----------------------------------------------------------------------------
    async def _recv(self, deadline: float) -> bytes:
        """Up to READ_CHUNK bytes (b"" at the client's end of stream) before ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self.reader.read(READ_CHUNK)
        except (ConnectionError, ssl.SSLError) as exc:
            raise _ClientGone() from exc

    def _next_event(self) -> Any:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise from_protocol_error(exc) from None

    async def _read_head(self, keep_alive: bool) -> h11.Request | None:
        """The next request head, or None when the client closed or stayed silent until its
        deadline. A keep-alive connection has ``idle_s`` to start a request, any request
        ``head_s`` to complete its head (a new connection from the end of its handshake)."""
        limits = self.limits
        now = self.loop.time()
        leftover = len(self.h11.trailing_data[0])  # a pipelined request already received
        started = leftover > 0 or not keep_alive
        deadline = now + (limits.head_s if started else limits.idle_s)
        self.slot.enter(Phase.READING if leftover else Phase.WAITING, now)
        fed = 0
        while True:
            event = self._next_event()
            if isinstance(event, h11.Request):
                if leftover + fed - len(self.h11.trailing_data[0]) > limits.max_head_bytes:
                    raise EdgeError(431, f"request line and headers over {limits.max_head_bytes} bytes")
                return event
            if event is not h11.NEED_DATA:  # ConnectionClosed (or PAUSED, which cannot happen here)
                return None
            if leftover + fed > limits.max_head_bytes:
                raise EdgeError(431, f"request line and headers over {limits.max_head_bytes} bytes")
            try:
                data = await self._recv(deadline)
            except TimeoutError:
                if fed or leftover:
                    raise EdgeError(408, f"request head not complete within {limits.head_s:g} s") from None
                return None  # silent until its deadline: closed without a word
            if data and not (fed or leftover):
                self.slot.enter(Phase.READING, self.loop.time())
                if not started:
                    deadline = self.loop.time() + limits.head_s
            fed += len(data)
            self.h11.receive_data(data)

    async def _read_body(self, length: int | None) -> bytes:
        """The whole body (``length`` None: chunked), at most ``max_body_bytes``, in ``body_s``."""
        limits = self.limits
        if length and self.h11.they_are_waiting_for_100_continue:
            self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        deadline = self.loop.time() + limits.body_s
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body_bytes:
                    raise EdgeError(413, f"request body too large: at most {limits.max_body_bytes} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            elif event is h11.NEED_DATA:
                try:
                    data = await self._recv(deadline)
                except TimeoutError:
                    raise EdgeError(408, f"request body not complete within {limits.body_s:g} s") from None
                self.h11.receive_data(data)
            else:
                raise EdgeError(400, "malformed HTTP request: the body ended unexpectedly")

    # ---- answering ---------------------------------------------------------------------------
    def _run(self, request: h11.Request, body: bytes) -> AppAnswer:
        """In a worker thread: the app's whole answer."""
        return run_app(self.ctx.app, build_environ(request, body, self.peer))

    async def _answer(self, request: h11.Request, body: bytes) -> AppAnswer:
        self.slot.enter(Phase.ANSWERING, self.loop.time())
        try:
            return await self.loop.run_in_executor(self.ctx.executor, self._run, request, body)
        except Exception:
            log.exception("%s listener: the app failed on %s %r", self.ctx.name, request.method.decode("ascii"),
                          request.target[:200])
            return AppAnswer(500, "Internal Server Error", [("Content-Type", "application/json")],
                             b'{"error":"internal error; the controller\'s log has the details"}\n')

    async def _send(self, request: h11.Request, answer: AppAnswer) -> bool:
        """Write the answer within ``write_s``; False when the connection is unusable after it."""
        names = {name.lower() for name, _ in answer.headers}
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
        if "content-length" not in names:
            headers.append((b"Content-Length", str(len(answer.body)).encode()))
        if "date" not in names:
            headers.append((b"Date", http_date().encode()))
        if "server" not in names:
            headers.append((b"Server", SERVER_NAME.encode()))
        try:
            data = self.h11.send(h11.Response(status_code=answer.status, headers=headers,
                                              reason=answer.reason.encode("latin-1")))
            if answer.body and request.method != b"HEAD":
                data += self.h11.send(h11.Data(data=answer.body))
            data += self.h11.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            log.error("%s listener: the app's answer cannot be sent as HTTP: %s", self.ctx.name, exc)
            self.writer.write(error_bytes(500, "internal error; the controller's log has the details"))
            await self._drain()
            return False
        self.writer.write(data)
        return await self._drain()

    async def _drain(self) -> bool:
        try:
            async with asyncio.timeout(self.limits.write_s):
                await self.writer.drain()
            return True
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return False

    # ---- refusing and closing ----------------------------------------------------------------
    async def _refuse(self, refusal: EdgeError) -> None:
        """Answer a refusal (``Connection: close``), then read and drop for a moment."""
        self.slot.enter(Phase.CLOSING, self.loop.time())
        self.ctx.notes.log((refusal.status, self.slot.address), logging.INFO, "%s listener: %d to %s: %s",
                           self.ctx.name, refusal.status, self.peer.address, refusal.message)
        self.writer.write(error_bytes(refusal.status, refusal.message))
        if not await self._drain():
            return
        transport = self.writer.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                return
        deadline = self.loop.time() + self.limits.linger_s
        left = self.limits.linger_bytes
        try:
            while left > 0:
                data = await self._recv(deadline)
                if not data:
                    return
                left -= len(data)
        except (TimeoutError, _ClientGone):
            return

    def _close(self, clean: bool) -> None:
        """Close: politely after a complete answer, at once in every other case."""
        transport = self.writer.transport
        if clean and not transport.is_closing():
            transport.close()
        else:
            transport.abort()
