"""Test proxies: the smart meter gateway's proxy that stands between gridcharge and the energy
supplier's OCPP backend, in its two kinds, SOCKS5 (RFC 1928, with RFC 1929 username/password)
and HTTP CONNECT (with ``Proxy-Authorization: Basic``).

Both are small but real: asyncio streams on 127.0.0.1 in a thread (:mod:`loop_thread`) that
speak the proxy protocol byte for byte, open a TCP connection to the target the client names,
and then splice bytes both ways without looking at them (TLS passes through untouched). They
record what clients asked for (``targets``) and how many tunnels opened (``tunnels``), so a test
sees that the traffic really went through the proxy and to which address.

``stop()`` closes the listener *and cuts every tunnel* (both of its TCP connections), which is
what a client sees when the gateway's proxy goes away; ``start()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import ipaddress
import logging
import socket
import threading
import urllib.parse
from enum import IntEnum

from loop_thread import STOP_TIMEOUT_S, LoopServer

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and says nothing is dropped after this
CONNECT_TIMEOUT_S = 5.0  # connecting to the target
CHUNK = 65536
MAX_HEAD = 16384  # the longest CONNECT request head the HTTP proxy reads

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Proxy(LoopServer[asyncio.Server]):
    """What both proxies share: the thread, the listener, the tunnels and their splicing, and
    the records. A subclass speaks its protocol in :meth:`_negotiate`."""

    scheme = ""
    label = "test proxy"

    def __init__(self, *, username: str | None = None, password: str | None = None, port: int = 0) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.username = username
        self.password = password
        super().__init__(port)
        self._lock = threading.Lock()
        self._tunnels = 0
        self._targets: list[tuple[str, int]] = []
        self._auth_failures = 0
        self._streams: set[asyncio.StreamWriter] = set()  # every open connection, both sides (the loop's)
        self._handlers: set[asyncio.Task[None]] = set()  # one per client connection (the loop's)

    # ---- life -------------------------------------------------------------------------------------
    async def _open(self) -> asyncio.Server:
        server = await asyncio.start_server(self._client, HOST, self._port)
        self._port = server.sockets[0].getsockname()[1]
        return server

    async def _close(self, server: asyncio.Server) -> None:
        """Cut every connection, then let their handlers see it and end (rather than be
        cancelled, which asyncio's stream server would log as an error)."""
        server.close()
        for writer in list(self._streams):
            writer.transport.abort()
        self._streams.clear()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=STOP_TIMEOUT_S / 2)
        await server.wait_closed()

    # ---- what tests read --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the proxy has no port before its first start()")
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    def url_for(self, username: str, password: str) -> str:
        """The proxy URL with credentials in it, as clients take them (``scheme://u:p@host:port``)."""
        userinfo = f"{urllib.parse.quote(username, safe='')}:{urllib.parse.quote(password, safe='')}"
        return f"{self.scheme}://{userinfo}@{HOST}:{self.port}"

    @property
    def tunnels(self) -> int:
        """Tunnels opened since this object was made."""
        with self._lock:
            return self._tunnels

    @property
    def targets(self) -> list[tuple[str, int]]:
        """``(host, port)`` that clients asked to be connected to, in order (a copy)."""
        with self._lock:
            return list(self._targets)

    @property
    def auth_failures(self) -> int:
        """Clients refused for wrong or missing credentials."""
        with self._lock:
            return self._auth_failures

    # ---- one client -------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._streams.add(writer)
        upstream: Streams | None = None
        try:
            upstream = await asyncio.wait_for(self._negotiate(reader, writer), HANDSHAKE_TIMEOUT_S)
            if upstream is None:
                return
            with self._lock:
                self._tunnels += 1
            await _splice((reader, writer), upstream)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # the client went away or said too little; nothing to answer
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    stream.close()
                    self._streams.discard(stream)
            self._handlers.discard(handler)

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Streams | None:
        """Speak the protocol up to an open tunnel: the target's streams, or None when refused
        (the refusal already answered)."""
        raise NotImplementedError

    def _asked(self, host: str, port: int) -> None:
        with self._lock:
            self._targets.append((host, port))

    def _refused_credentials(self) -> None:
        with self._lock:
            self._auth_failures += 1

    def _credentials_match(self, username: bytes, password: bytes) -> bool:
        assert self.username is not None and self.password is not None
        return (hmac.compare_digest(username, self.username.encode())
                and hmac.compare_digest(password, self.password.encode()))

    async def _connect(self, host: str, port: int) -> Streams:
        """The TCP connection to the target, tracked so that ``stop()`` cuts it too."""
        streams = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        self._streams.add(streams[1])
        return streams


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    """Copy one direction until end of file, then pass the half close on; a broken connection
    ends both directions."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.transport.abort()
        other.transport.abort()


async def _splice(client: Streams, target: Streams) -> None:
    await asyncio.gather(_pipe(client[0], target[1], client[1]), _pipe(target[0], client[1], target[1]))


# ---------------------------------------------------------------------------------------- SOCKS5


class SocksReply(IntEnum):
    """The reply codes of RFC 1928 (section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


SOCKS_VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929
METHOD_NO_AUTH = 0x00
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04


def socks_reply_for(exc: OSError) -> SocksReply:
    """The reply code for a failed connection to the target."""
    if isinstance(exc, ConnectionRefusedError):
        return SocksReply.CONNECTION_REFUSED
    if isinstance(exc, socket.gaierror | TimeoutError) or exc.errno == errno.EHOSTUNREACH:
        return SocksReply.HOST_UNREACHABLE
    if exc.errno == errno.ENETUNREACH:
        return SocksReply.NETWORK_UNREACHABLE
    return SocksReply.GENERAL_FAILURE


def _socks_reply(code: SocksReply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    address = ipaddress.ip_address(bound[0])
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes([SOCKS_VERSION, code, 0x00, atyp]) + address.packed + bound[1].to_bytes(2, "big")


class Socks5Proxy(_Proxy):
    """A SOCKS5 proxy: "no auth", or RFC 1929 username/password when both are given; CONNECT
    to IPv4, domain name and IPv6 targets, refused targets answered with their reply code."""

    scheme = "socks5"

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Streams | None:
        version, n_methods = await reader.readexactly(2)
        if version != SOCKS_VERSION:
            return None  # not SOCKS5: no reply a client could read
        methods = await reader.readexactly(n_methods)
        method = METHOD_NO_AUTH if self.username is None else METHOD_USERNAME_PASSWORD
        if method not in methods:
            if method == METHOD_USERNAME_PASSWORD:
                self._refused_credentials()
            writer.write(bytes([SOCKS_VERSION, METHOD_NONE_ACCEPTABLE]))
            await writer.drain()
            return None
        writer.write(bytes([SOCKS_VERSION, method]))
        if method == METHOD_USERNAME_PASSWORD and not await self._authenticate(reader, writer):
            return None

        version, command, _reserved, atyp = await reader.readexactly(4)
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif atyp == ATYP_DOMAIN:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode("ascii", errors="replace")
        else:
            await self._fail(writer, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED)
            return None
        port = int.from_bytes(await reader.readexactly(2), "big")
        self._asked(host, port)
        if version != SOCKS_VERSION or command != CMD_CONNECT:
            await self._fail(writer, SocksReply.COMMAND_NOT_SUPPORTED)
            return None
        try:
            target = await self._connect(host, port)
        except OSError as exc:
            log.info("socks5: %s:%d: %s", host, port, exc)
            await self._fail(writer, socks_reply_for(exc))
            return None
        bound = target[1].get_extra_info("sockname")
        writer.write(_socks_reply(SocksReply.SUCCEEDED, (bound[0], bound[1])))
        await writer.drain()
        return target

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        version, username_length = await reader.readexactly(2)
        username = await reader.readexactly(username_length)
        (password_length,) = await reader.readexactly(1)
        password = await reader.readexactly(password_length)
        accepted = version == AUTH_VERSION and self._credentials_match(username, password)
        writer.write(bytes([AUTH_VERSION, 0x00 if accepted else 0x01]))
        await writer.drain()
        if not accepted:
            self._refused_credentials()
        return accepted

    @staticmethod
    async def _fail(writer: asyncio.StreamWriter, code: SocksReply) -> None:
        writer.write(_socks_reply(code))
        await writer.drain()


# ---------------------------------------------------------------------------------- HTTP CONNECT

REASONS = {200: "Connection established", 400: "Bad Request", 405: "Method Not Allowed",
           407: "Proxy Authentication Required", 502: "Bad Gateway"}


def parse_authority(authority: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` of a CONNECT request; None when it is neither."""
    host, sep, port_text = authority.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address without brackets
    return host, int(port_text)


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except binascii.Error:
        return None
    username, sep, password = decoded.partition(b":")
    return (username, password) if sep else None


class HttpConnectProxy(_Proxy):
    """An HTTP proxy that only tunnels: ``CONNECT host:port`` gets ``200 Connection
    established`` and a splice; with username and password, ``Proxy-Authorization: Basic`` is
    required (407 otherwise); other methods get 405, an unreachable target 502."""

    scheme = "http"

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Streams | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._answer(writer, 400, "request head too long\n")
            return None
        if len(head) > MAX_HEAD:
            await self._answer(writer, 400, "request head too long\n")
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._answer(writer, 400, "not an HTTP/1.x request line\n")
            return None
        method, authority_text, _version = parts
        if method != "CONNECT":
            await self._answer(writer, 405, "this proxy only tunnels (CONNECT)\n", {"Allow": "CONNECT"})
            return None
        headers = {name.strip().lower(): value.strip()
                   for name, sep, value in (line.partition(":") for line in header_lines if line) if sep}
        if self.username is not None:
            credentials = _basic_credentials(headers.get("proxy-authorization"))
            if credentials is None or not self._credentials_match(*credentials):
                self._refused_credentials()
                await self._answer(writer, 407, "wrong or missing proxy credentials\n",
                                   {"Proxy-Authenticate": 'Basic realm="test proxy"'})
                return None
        authority = parse_authority(authority_text)
        if authority is None:
            await self._answer(writer, 400, "CONNECT needs host:port\n")
            return None
        host, port = authority
        self._asked(host, port)
        try:
            target = await self._connect(host, port)
        except OSError as exc:
            log.info("http connect: %s:%d: %s", host, port, exc)
            await self._answer(writer, 502, f"cannot connect to {host}:{port}: {exc}\n")
            return None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        return target

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, text: str,
                      headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", "Content-Type: text/plain; charset=utf-8",
                 f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
