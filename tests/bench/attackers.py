"""Hostile and honest HTTP clients in one asyncio process: the attacks on the listeners, and the
authorised requests whose latency shows whether the API still answers meanwhile.

Used by ``bench_listener_attack.py`` (figures before/after) and by
``tests/integration/test_listener_attacks.py`` (the promises, asserted). It runs as its own
process so that hundreds of sockets and the measuring clients never share the GIL or the CPU
clock of the server under test::

    python tests/bench/attackers.py < plan.json      # one JSON result line on stdout

The plan (JSON on stdin, so that passwords never appear in a process list)::

    {"seconds": 8, "warmup_s": 1.5, "per_address": 8, "probe_timeout_s": 15,
     "targets": {"lan": {"port": 8080}, "smgw": {"port": 8443}},
     "attacks": [{"kind": "idle", "target": "lan", "count": 400}, ...],
     "probes": [{"target": "lan", "interval_s": 0.25, "authorization": "Basic ..."},
                {"target": "smgw", "interval_s": 0.25, "tls": {"cert": ..., "key": ..., "ca": ...}},
                {"target": "lan", "interval_s": 0.25, "authorization": "...", "keep_alive": true}]}

Attack kinds; every attacker reconnects ``reconnect_s`` (0.2 s) after the server closed it, so
the pressure lasts for the whole window, as a real attacker's would:

- ``idle``: TCP connect, then silence (on a TLS port: a handshake that never starts).
- ``slow_head``: a request line, then one more header byte every ``byte_interval_s`` (1 s).
- ``slow_body``: a complete head with ``Content-Length: 60000``, then one body byte per second.
- ``flood``: like ``idle``, all ``count`` sockets opened at once (to exhaust descriptors).

Attackers bind to source addresses 127.0.<a>.<b> (a >= 1), ``per_address`` sockets each, the way
separate devices on a LAN would come from separate addresses; the probes come from 127.0.0.1.
Probes start every ``interval_s`` whether or not the previous one finished (a stalled server
then shows as many slow probes, not as a few); each is ``GET /cnf?cmd=get_cm_vars`` on a new
connection (``Connection: close``) unless ``keep_alive`` (one connection reused; a dropped one is
counted and reopened). Only 127.0.0.0/8 is ever a target.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 5.0
MAX_PROBES_IN_FLIGHT = 64
SLOW_BODY_LENGTH = 60000  # under the API's 64 KiB, so only time can refuse it


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (a value that was measured), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


def source_address(index: int, per_address: int) -> str:
    """The source address of attacker socket ``index``: 127.0.1.1, 127.0.1.2, ... (never .0.0.x)."""
    n = index // max(1, per_address)
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


@dataclass
class AttackStats:
    """What one attack did: connections made, refused, and how long the server held them."""

    kind: str
    target: str
    count: int
    connects: int = 0
    connect_errors: Counter[str] = field(default_factory=Counter)
    closed_by_server: int = 0
    held_s: list[float] = field(default_factory=list)  # connect -> the server closed it
    open_now: int = 0
    open_max: int = 0

    def report(self) -> dict[str, Any]:
        held = self.held_s
        return {
            "kind": self.kind, "target": self.target, "count": self.count, "connects": self.connects,
            "connect_errors": dict(self.connect_errors), "closed_by_server": self.closed_by_server,
            "open_max": self.open_max,
            "held_s": {"n": len(held), "p50": percentile(held, 50), "max": max(held, default=None)},
        }


@dataclass
class ProbeStats:
    """The authorised requests on one listener: latency of each, and what went wrong."""

    target: str
    keep_alive: bool
    latencies_s: list[float] = field(default_factory=list)  # every probe, failed ones included
    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    drops: int = 0  # keep-alive: the connection was gone when the next request went out

    def report(self) -> dict[str, Any]:
        lat = self.latencies_s
        return {
            "target": self.target, "keep_alive": self.keep_alive, "n": len(lat),
            "ok": self.statuses.get("200", 0), "statuses": dict(self.statuses), "failures": dict(self.failures),
            "drops": self.drops,
            "latency_s": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "max": max(lat, default=None)},
        }


class Attack:
    """Runs one plan: attackers first, then the probes for ``seconds`` once ``warmup_s`` passed."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.targets: dict[str, dict[str, Any]] = plan["targets"]
        self.per_address = int(plan.get("per_address", 8))
        self.reconnect_s = float(plan.get("reconnect_s", 0.2))
        self.byte_interval_s = float(plan.get("byte_interval_s", 1.0))
        self.probe_timeout_s = float(plan.get("probe_timeout_s", 15.0))
        self.stopping = asyncio.Event()  # set once every probe is done: the attack lasts until then
        self.next_source = 0

    # ---- attackers ---------------------------------------------------------------------------
    async def _connect(self, port: int, source: str, stats: AttackStats) -> tuple[asyncio.StreamReader,
                                                                                 asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0)), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            stats.connect_errors[type(exc).__name__ if not isinstance(exc, OSError) or exc.errno is None
                                 else f"errno {exc.errno}"] += 1
            return None
        stats.connects += 1
        return reader, writer

    async def _feed(self, kind: str, writer: asyncio.StreamWriter) -> None:
        """What the attacker sends, slowly; returns only when the window is over."""
        if kind == "slow_head":
            writer.write(b"GET /cnf?cmd=get_cm_vars HTTP/1.1\r\nHost: x\r\n")
            trickle = b"X-Slow: " + b"a" * 1_000_000
        elif kind == "slow_body":
            writer.write(b"POST /cnf?cmd=set_cm_vars HTTP/1.1\r\nHost: x\r\n"
                         + f"Content-Length: {SLOW_BODY_LENGTH}\r\n\r\n".encode())
            trickle = b"{" + b" " * (SLOW_BODY_LENGTH - 1)
        else:
            await self.stopping.wait()
            return
        for i in range(len(trickle)):
            await writer.drain()
            await asyncio.sleep(self.byte_interval_s)
            writer.write(trickle[i:i + 1])

    async def _attacker(self, kind: str, port: int, source: str, stats: AttackStats) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        while not self.stopping.is_set():
            conn = await self._connect(port, source, stats)
            if conn is None:
                await asyncio.sleep(self.reconnect_s)
                continue
            reader, writer = conn
            opened = time.monotonic()
            stats.open_now += 1
            stats.open_max = max(stats.open_max, stats.open_now)
            feeder = asyncio.ensure_future(self._feed(kind, writer))
            closer = asyncio.ensure_future(self._until_closed(reader))
            try:
                done, _ = await asyncio.wait({feeder, closer, stop}, return_when=asyncio.FIRST_COMPLETED)
                if closer in done or (feeder in done and feeder.exception() is not None):
                    stats.closed_by_server += 1
                    stats.held_s.append(time.monotonic() - opened)
            finally:
                stats.open_now -= 1
                for task in (feeder, closer):
                    task.cancel()
                writer.transport.abort()
            if not self.stopping.is_set():
                await asyncio.sleep(self.reconnect_s)
        stop.cancel()

    @staticmethod
    async def _until_closed(reader: asyncio.StreamReader) -> None:
        """Read (and drop) whatever the server says until it closes the connection."""
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass

    def _start_attacks(self) -> tuple[list[AttackStats], list[asyncio.Task[None]]]:
        all_stats, tasks = [], []
        for spec in self.plan.get("attacks", []):
            stats = AttackStats(spec["kind"], spec["target"], int(spec["count"]))
            port = int(self.targets[spec["target"]]["port"])
            for _ in range(stats.count):
                source = source_address(self.next_source, self.per_address)
                self.next_source += 1
                tasks.append(asyncio.ensure_future(self._attacker(stats.kind, port, source, stats)))
            all_stats.append(stats)
        return all_stats, tasks

    # ---- probes ------------------------------------------------------------------------------
    def _tls_context(self, spec: dict[str, Any]) -> ssl.SSLContext | None:
        tls = spec.get("tls")
        if not tls:
            return None
        context = ssl.create_default_context(cafile=tls["ca"])
        context.load_cert_chain(tls["cert"], tls["key"])
        return context

    @staticmethod
    def _request(spec: dict[str, Any], keep_alive: bool) -> bytes:
        lines = ["GET /cnf?cmd=get_cm_vars HTTP/1.1", f"Host: {LOOPBACK}"]
        if spec.get("authorization"):
            lines.append(f"Authorization: {spec['authorization']}")
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> str:
        """Read one response (Content-Length framed); its status code."""
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        await reader.readexactly(length)
        return status

    async def _probe_once(self, spec: dict[str, Any], context: ssl.SSLContext | None, stats: ProbeStats) -> None:
        port = int(self.targets[spec["target"]]["port"])
        start = time.monotonic()
        writer = None
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                reader, writer = await asyncio.open_connection(
                    LOOPBACK, port, ssl=context, server_hostname=LOOPBACK if context else None)
                writer.write(self._request(spec, keep_alive=False))
                stats.statuses[await self._response(reader)] += 1
        except TimeoutError:
            stats.failures["timeout"] += 1
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, IndexError) as exc:
            stats.failures[type(exc).__name__] += 1
        finally:
            stats.latencies_s.append(time.monotonic() - start)
            if writer is not None:
                writer.transport.abort()

    async def _probe_periodic(self, spec: dict[str, Any], stats: ProbeStats, until: float) -> None:
        context = self._tls_context(spec)
        interval_s = float(spec.get("interval_s", 0.25))
        running: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            if len(running) < MAX_PROBES_IN_FLIGHT:
                task = asyncio.ensure_future(self._probe_once(spec, context, stats))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.sleep(interval_s)
        if running:
            await asyncio.wait(running)

    async def _probe_keep_alive(self, spec: dict[str, Any], stats: ProbeStats, until: float) -> None:
        context = self._tls_context(spec)
        port = int(self.targets[spec["target"]]["port"])
        interval_s = float(spec.get("interval_s", 0.25))
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < until:
            start = time.monotonic()
            try:
                async with asyncio.timeout(self.probe_timeout_s):
                    if conn is None:
                        conn = await asyncio.open_connection(LOOPBACK, port, ssl=context,
                                                             server_hostname=LOOPBACK if context else None)
                    reader, writer = conn
                    writer.write(self._request(spec, keep_alive=True))
                    stats.statuses[await self._response(reader)] += 1
            except TimeoutError:
                stats.failures["timeout"] += 1
                conn = self._drop(conn)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, IndexError) as exc:
                stats.failures[type(exc).__name__] += 1
                stats.drops += conn is not None
                conn = self._drop(conn)
            stats.latencies_s.append(time.monotonic() - start)
            await asyncio.sleep(interval_s)
        self._drop(conn)

    @staticmethod
    def _drop(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].transport.abort()
        return None

    # ---- the run -----------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        seconds = float(self.plan.get("seconds", 8.0))
        warmup_s = float(self.plan.get("warmup_s", 1.5))
        attack_stats, attackers = self._start_attacks()
        await asyncio.sleep(warmup_s)
        window_start = time.monotonic()
        until = window_start + seconds
        probe_stats, probes = [], []
        for spec in self.plan.get("probes", []):
            keep_alive = bool(spec.get("keep_alive"))
            stats = ProbeStats(spec["target"], keep_alive)
            runner = self._probe_keep_alive if keep_alive else self._probe_periodic
            probes.append(asyncio.ensure_future(runner(spec, stats, until)))
            probe_stats.append(stats)
        await asyncio.gather(*probes)
        window_end = time.monotonic()
        self.stopping.set()
        for task in attackers:
            task.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)
        return {
            "window_start_s": window_start, "window_end_s": window_end,
            "attacks": [s.report() for s in attack_stats],
            "probes": [s.report() for s in probe_stats],
        }


def main() -> int:
    import resource

    plan = json.loads(sys.stdin.read())
    attack_sockets = sum(int(a["count"]) for a in plan.get("attacks", []))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = attack_sockets + MAX_PROBES_IN_FLIGHT * 4 + 64
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    result = asyncio.run(Attack(plan).run())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
