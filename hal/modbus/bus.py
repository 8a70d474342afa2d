"""Modbus buses for the controller: one pymodbus sync client per bus, and RTU wire-time arithmetic.

pymodbus is imported only inside ``hal/modbus/`` (here and in the server for simulators): its
API moved in every 3.x release (``slave=`` → ``device_id=``, keyword-only ``count=``,
datastores deprecated), so the driver absorbs those changes and everything else talks
``hal.modbus.types`` (``RegisterBus``, ``Table``) and ``hal.types`` (``DeviceError``). This
module owns:

- ``ModbusBus``: one pymodbus sync client per physical bus (RS485 line, TCP host, RTU-over-TCP
  gateway), one lock, the inter-request gap, per-request timeouts and retries, reconnect with
  backoff, and statistics including the RTU wire time.
- ``rtu_frame_bytes`` / ``rtu_wire_time_s``: pure arithmetic of the Modbus serial-line timing
  (docs/devices.md, "Modbus RTU timing").
- ``device_answer_error``: a DeviceAnswerError carrying a Modbus exception code (both sides).

The server for simulators and tests (``ModbusServer``, ``RegisterBank``) is in ``hal.modbus.server``.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import serial
from pymodbus import ExceptionResponse, FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException

from hal.modbus.types import RequestPolicy, Table
from hal.types import CommCause, CommError, DeviceAnswerError, DeviceError, LinkStats

log = logging.getLogger(__name__)

# pymodbus logs an ERROR for every timeout and refused connect; the bus logs going down and coming
# back once instead. Set the "pymodbus" logger to DEBUG after import to see frames again.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
LATENCY_WINDOW = 200  # requests kept for latency mean / p95 / max
TCP_TIMEOUTS_BEFORE_RECONNECT = 3  # a dead TCP peer without RST only ever shows as timeouts
EXCEPTION_FRAME_BYTES = 5  # addr + fc|0x80 + code + CRC

_READ_FC = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}


# --------------------------------------------------------------------------- wire-time arithmetic
def rtu_char_bits(parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> int:
    """Bits per character on the line: start + data + parity (if any) + stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def rtu_t35_s(baudrate: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    """The 3.5-character inter-frame silence; the spec fixes it at 1.75 ms above 19200 baud."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * rtu_char_bits(parity, stopbits, bytesize) / baudrate


def rtu_frame_bytes(function_code: int, count: int) -> tuple[int, int]:
    """(request bytes, response bytes) of an RTU transaction (docs/devices.md, RTU timing).

    ``count`` is registers for FC03/04/16, bits for FC01/02/15, ignored for FC05/06.
    """
    if function_code in (1, 2):
        return 8, 5 + math.ceil(count / 8)
    if function_code in (3, 4):
        return 8, 5 + 2 * count
    if function_code in (5, 6):
        return 8, 8
    if function_code == 15:
        return 9 + math.ceil(count / 8), 8
    if function_code == 16:
        return 9 + 2 * count, 8
    raise ValueError(f"no RTU frame size for function code {function_code}")


def rtu_wire_time_s(request_bytes: int, response_bytes: int, baudrate: int, parity: str = "N",
                    stopbits: int = 1, bytesize: int = 8) -> float:
    """Time the line is busy for one transaction, slave latency excluded: both frames + 2 × t3.5."""
    bits = rtu_char_bits(parity, stopbits, bytesize)
    return ((request_bytes + response_bytes) * bits / baudrate
            + 2 * rtu_t35_s(baudrate, parity, stopbits, bytesize))


# --------------------------------------------------------------------------- client side
@dataclass(frozen=True)
class BusSpec:
    """One physical Modbus bus as configured."""

    name: str
    kind: Literal["rtu", "tcp", "rtu-over-tcp"]
    port: str | None = None  # serial device path for rtu
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8
    host: str | None = None  # tcp / rtu-over-tcp
    tcp_port: int = 502
    timeout_s: float = 0.5  # default per request; a device's RequestPolicy may override
    retries: int = 0

    def default_policy(self) -> RequestPolicy:
        """The policy for devices that do not bring their own."""
        return RequestPolicy(timeout_s=self.timeout_s, retries=self.retries)


@dataclass(frozen=True)
class BusStats:
    """A snapshot of one bus's counters. Totals only grow: the controller diffs them per cycle."""

    name: str
    requests: int  # read/write calls, including those that failed fast
    transactions: int  # request frames answered or timed out (retries included)
    errors: int  # calls that raised
    timeouts: int  # transactions without an answer
    last_error: str | None
    down: bool  # cannot connect; backing off
    latency_mean_s: float  # over the last LATENCY_WINDOW transactions (timeouts included)
    latency_p95_s: float
    latency_max_s: float
    wire_time_s: float  # RTU: cumulative line time computed from frame sizes; 0 for plain TCP
    wire_time_last_s: float


def device_answer_error(message: str, code: int = ExcCodes.ILLEGAL_ADDRESS) -> DeviceAnswerError:
    """A DeviceAnswerError carrying a Modbus exception ``code`` (bank side: what to answer)."""
    exc = DeviceAnswerError(message)
    exc.code = int(code)
    return exc


class ModbusBus:
    """One bus, one pymodbus sync client, one lock: implements ``hal.modbus.types.RegisterBus``.

    pymodbus gets ``retries=0``; retries, gaps and timeouts are done here so that timing and
    statistics stay under control. Per-request timeouts work by setting ``timeout_connect`` on the
    client's and its transaction manager's ``CommParams`` (pymodbus 3.16 reads it on every
    receive) and, for serial, the pyserial timeout. Every error leaves as a ``DeviceError``.

    Connection handling: a lost connection is reopened on the next request; when opening fails
    the bus is *down* and requests fail fast until an exponential backoff (0.5 s doubling to
    30 s, on the injected clock) allows the next try. A silent unit is not a down bus (others on
    the line may answer), but on TCP a few timeouts in a row reopen the connection, since a
    peer that vanished without a reset only ever shows as timeouts.

    ``one_shot`` (``gridcharge read``: one request, then the process ends): a link that does not
    open is not "down, retrying with backoff" but a failure with its reason found out
    (``open_failure``: refused, not reachable, no such port, port in use ...), nothing logged,
    since the command prints it.
    """

    def __init__(self, spec: BusSpec, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, one_shot: bool = False) -> None:
        self.spec = spec
        self.name = spec.name
        self.one_shot = one_shot
        self._clock, self._sleep = clock, sleep
        self._client = _make_client(spec)
        self._lock = threading.Lock()  # one request at a time on the bus
        self._stats_lock = threading.Lock()  # stats() must not wait behind a slow request
        self._silence_s = rtu_t35_s(spec.baudrate, spec.parity, spec.stopbits, spec.bytesize) \
            if spec.kind == "rtu" else 0.0
        self._last_end_s: float | None = None
        self._closed = False
        self._down = False
        self._backoff_s = 0.0
        self._retry_at_s = 0.0
        self._timeouts_in_row = 0
        self._requests = self._transactions = self._errors = self._timeouts = 0
        self._last_error: str | None = None
        self._latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._wire_total_s = self._wire_last_s = 0.0
        self._wire_reported_s = 0.0  # what link_stats() last counted

    # ---- RegisterBus
    def read(self, table: Table, address: int, count: int, unit: int, policy: RequestPolicy) -> list[int]:
        _check_request(address, count, unit)
        fc = _READ_FC[table]
        method = {1: "read_coils", 2: "read_discrete_inputs", 3: "read_holding_registers",
                  4: "read_input_registers"}[fc]

        def decode(rr: Any) -> list[int]:
            if fc in (1, 2):  # bits come padded to whole bytes
                if len(rr.bits) != 8 * math.ceil(count / 8):
                    raise DeviceAnswerError(f"answer has {len(rr.bits)} bits for {count} asked")
                return [int(b) for b in rr.bits[:count]]
            if len(rr.registers) != count:
                raise DeviceAnswerError(f"answer has {len(rr.registers)} registers for {count} asked")
            return list(rr.registers)

        return self._request(f"bus {self.name} unit {unit} FC{fc:02d} @{address}+{count}", fc, count, policy,
                             lambda c: getattr(c, method)(address, count=count, device_id=unit), decode)

    def write(self, address: int, values: list[int], unit: int, policy: RequestPolicy, *,
              single: bool = False) -> None:
        if single and len(values) != 1:
            raise ValueError("single=True writes exactly one register (FC06)")
        _check_request(address, len(values), unit)
        if not all(0 <= v <= 0xFFFF for v in values):
            raise ValueError(f"register values must be 0..65535, got {values}")
        fc = 6 if single else 16

        def send(c: Any) -> Any:
            if single:
                return c.write_register(address, values[0], device_id=unit)
            return c.write_registers(address, list(values), device_id=unit)

        def decode(rr: Any) -> list[int]:
            if fc == 16 and rr.count != len(values):
                raise DeviceAnswerError(f"answer confirms {rr.count} registers for {len(values)} written")
            return []

        what = f"bus {self.name} unit {unit} FC{fc:02d} @{address}+{len(values)}"
        self._request(what, fc, len(values), policy, send, decode)

    @property
    def is_rtu(self) -> bool:
        """RTU framing on an RS485 line (directly or through a gateway): its wire time counts."""
        return self.spec.kind != "tcp"

    def stats(self) -> BusStats:
        with self._stats_lock:
            lat = sorted(self._latencies_s)
            return BusStats(
                name=self.name, requests=self._requests, transactions=self._transactions,
                errors=self._errors, timeouts=self._timeouts, last_error=self._last_error,
                down=self._down,
                latency_mean_s=sum(lat) / len(lat) if lat else 0.0,
                latency_p95_s=lat[max(0, math.ceil(0.95 * len(lat)) - 1)] if lat else 0.0,
                latency_max_s=lat[-1] if lat else 0.0,
                wire_time_s=self._wire_total_s, wire_time_last_s=self._wire_last_s)

    def link_stats(self) -> LinkStats:
        """For the status (``hal.types.Link``): the bus's timeouts (a counter); an RS485 line adds
        its wire time since the last call and in total (seconds, a counter)."""
        st = self.stats()
        details: dict[str, float] = {"timeouts": float(st.timeouts)}
        if self.is_rtu:
            details["wire_time_s_per_cycle"] = st.wire_time_s - self._wire_reported_s
            details["wire_time_s"] = st.wire_time_s
            self._wire_reported_s = st.wire_time_s
        return LinkStats(self.name, st.requests, st.errors, st.latency_p95_s, st.last_error, details)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    # ---- one call: retries around single transactions
    def _request(self, what: str, fc: int, count: int, policy: RequestPolicy,
                 send: Callable[[Any], Any], decode: Callable[[Any], list[int]]) -> list[int]:
        with self._lock:
            with self._stats_lock:
                self._requests += 1
            try:
                return self._attempts(what, fc, count, policy, send, decode)
            except DeviceError as exc:
                with self._stats_lock:
                    self._errors += 1
                    self._last_error = str(exc)
                raise

    def _attempts(self, what: str, fc: int, count: int, policy: RequestPolicy,
                  send: Callable[[Any], Any], decode: Callable[[Any], list[int]]) -> list[int]:
        error = CommError(f"{what}: no attempt made")
        for _ in range(policy.retries + 1):
            self._set_timeout(policy.timeout_s)
            self._ensure_connected()  # raises at once while backing off
            self._wait_gap(policy.gap_s)
            start_s = self._clock()
            try:
                rr = send(self._client)
            except ModbusIOException:
                self._finish(start_s, fc, count, answered=None)
                error = CommError(f"{what}: no answer within {policy.timeout_s:g} s", CommCause.NO_ANSWER)
                self._note_timeout()
                continue
            except Exception as exc:  # ConnectionException, OSError, pyserial errors: link lost
                self._last_end_s = self._clock()  # not booked as a transaction: maybe nothing was sent
                error = CommError(f"{what}: connection lost ({exc})", CommCause.LINK_LOST)
                log.debug("bus %s: connection lost: %s", self.name, exc)
                self._drop_connection()
                continue
            self._timeouts_in_row = 0
            if isinstance(rr, ExceptionResponse):
                self._finish(start_s, fc, count, answered=False)
                raise _exception_answer(what, rr.exception_code)
            self._finish(start_s, fc, count, answered=True)
            if rr is None or rr.isError():
                raise DeviceAnswerError(f"{what}: unusable answer {rr}")
            try:
                return decode(rr)
            except DeviceAnswerError as exc:
                raise DeviceAnswerError(f"{what}: {exc}") from None
        raise error

    def _set_timeout(self, timeout_s: float) -> None:
        client = self._client
        client.comm_params.timeout_connect = timeout_s
        client.transaction.comm_params.timeout_connect = timeout_s
        port = client.socket if isinstance(client, ModbusSerialClient) else None
        if port is not None and port.timeout != timeout_s:
            try:  # pyserial reconfigures the open port, which fails on an unplugged adapter
                port.timeout = timeout_s
                port.write_timeout = timeout_s
            except Exception as exc:
                log.debug("bus %s: cannot set timeout: %s", self.name, exc)
                self._drop_connection()  # reopened with the new timeout

    def _ensure_connected(self) -> None:
        """Connect if needed; while down, only try again when the backoff has run out."""
        if self._closed:
            raise CommError(f"bus {self.name} is closed")
        if self._client.connected:
            return
        now_s = self._clock()
        if self._down and now_s < self._retry_at_s:
            raise CommError(f"bus {self.name} down: reconnect in {self._retry_at_s - now_s:.1f} s")
        try:
            ok = bool(self._client.connect())
        except Exception:  # pyserial raises undocumented things; pymodbus catches most
            ok = False
        if not ok and self.one_shot:
            cause, why = open_failure(self.spec, self._client.comm_params.timeout_connect)
            raise CommError(f"bus {self.name}: cannot open {self._target()}: {why}", cause)
        if ok:
            if self._down:
                log.info("bus %s is back (%s)", self.name, self._target())
            self._down, self._backoff_s = False, 0.0
            return
        self._backoff_s = min(2 * self._backoff_s, BACKOFF_MAX_S) if self._down else BACKOFF_FIRST_S
        if not self._down:
            log.warning("bus %s down: cannot open %s; retrying with backoff", self.name, self._target())
        self._down, self._retry_at_s = True, now_s + self._backoff_s
        raise CommError(f"bus {self.name}: cannot open {self._target()}; reconnect in {self._backoff_s:.1f} s")

    def _wait_gap(self, gap_s: float) -> None:
        """Keep ``gap_s`` (device demand) and t3.5 (RTU) of silence after the last transaction."""
        need_s = max(gap_s, self._silence_s)
        if self._last_end_s is not None and need_s > 0:
            wait_s = self._last_end_s + need_s - self._clock()
            if wait_s > 0:
                self._sleep(wait_s)

    def _finish(self, start_s: float, fc: int, count: int, *, answered: bool | None) -> None:
        """Book one transaction; ``answered`` True = normal answer, False = exception, None = none."""
        end_s = self._clock()
        self._last_end_s = end_s
        wire_s = 0.0
        if self.spec.kind != "tcp":
            request_b, response_b = rtu_frame_bytes(fc, count)
            response_b = {True: response_b, False: EXCEPTION_FRAME_BYTES, None: 0}[answered]
            s = self.spec
            wire_s = rtu_wire_time_s(request_b, response_b, s.baudrate, s.parity, s.stopbits, s.bytesize)
        with self._stats_lock:
            self._transactions += 1
            self._latencies_s.append(end_s - start_s)
            self._wire_total_s += wire_s
            self._wire_last_s = wire_s

    def _note_timeout(self) -> None:
        with self._stats_lock:
            self._timeouts += 1
        self._timeouts_in_row += 1
        # rtu-over-tcp has no transaction id: a late answer would be taken for the next one's,
        # so its stream is started afresh after every timeout (the serial client flushes instead).
        limit = 1 if self.spec.kind == "rtu-over-tcp" else TCP_TIMEOUTS_BEFORE_RECONNECT
        if self.spec.kind != "rtu" and self._timeouts_in_row >= limit:
            log.debug("bus %s: %d timeouts in a row, reconnecting", self.name, self._timeouts_in_row)
            self._timeouts_in_row = 0
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Close the client so the next request reopens it (an unplugged adapter comes back)."""
        try:
            self._client.close()
        except Exception as exc:  # closing a vanished serial port can raise
            log.debug("bus %s: close failed: %s", self.name, exc)

    def _target(self) -> str:
        s = self.spec
        return (s.port or "?") if s.kind == "rtu" else f"{s.host}:{s.tcp_port}"


def open_failure(spec: BusSpec, timeout_s: float) -> tuple[CommCause, str]:
    """Why ``spec``'s link does not open: one attempt of our own, since pymodbus's ``connect()``
    only answers False and keeps the reason to its log. Opens what pymodbus opens (a TCP
    connection; the serial port with its exclusive lock) and closes it again."""
    if spec.kind == "rtu":
        return _serial_failure(spec)
    try:
        sock = socket.create_connection((spec.host or "", spec.tcp_port), timeout=timeout_s)
    except ConnectionRefusedError:
        return CommCause.REFUSED, "connection refused"
    except socket.gaierror as exc:
        return CommCause.UNKNOWN_HOST, f"host name not found ({exc.strerror})"
    except TimeoutError:
        return CommCause.UNREACHABLE, f"no connection within {timeout_s:g} s"
    except OSError as exc:
        if exc.errno in _UNREACHABLE_ERRNOS:
            return CommCause.UNREACHABLE, exc.strerror or str(exc)
        return CommCause.CANNOT_OPEN, exc.strerror or str(exc)
    sock.close()
    return CommCause.CANNOT_OPEN, "the connection failed, and opened on a second try"


_UNREACHABLE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT})
_PORT_ERRNOS = {
    errno.ENOENT: CommCause.NO_PORT, errno.ENODEV: CommCause.NO_PORT, errno.ENXIO: CommCause.NO_PORT,
    errno.EACCES: CommCause.NO_PERMISSION, errno.EPERM: CommCause.NO_PERMISSION,
    errno.EAGAIN: CommCause.PORT_BUSY, errno.EBUSY: CommCause.PORT_BUSY,
}


def _serial_failure(spec: BusSpec) -> tuple[CommCause, str]:
    try:
        port = serial.serial_for_url(spec.port, baudrate=spec.baudrate, bytesize=spec.bytesize,
                                     parity=spec.parity, stopbits=spec.stopbits, exclusive=True)
    except Exception as exc:  # SerialException carries the errno; pyserial raises others too
        code = getattr(exc, "errno", None)
        cause = _PORT_ERRNOS.get(code, CommCause.CANNOT_OPEN) if isinstance(code, int) else CommCause.CANNOT_OPEN
        return cause, " ".join(str(getattr(exc, "strerror", None) or exc).split())
    port.close()
    return CommCause.CANNOT_OPEN, "the port failed to open, and opened on a second try"


def _make_client(spec: BusSpec) -> ModbusSerialClient | ModbusTcpClient:
    if spec.kind == "rtu":
        if not spec.port:
            raise ValueError(f"bus {spec.name}: rtu needs a serial port")
        return ModbusSerialClient(spec.port, framer=FramerType.RTU, baudrate=spec.baudrate,
                                  bytesize=spec.bytesize, parity=spec.parity, stopbits=spec.stopbits,
                                  timeout=spec.timeout_s, retries=0, name=spec.name)
    if not spec.host:
        raise ValueError(f"bus {spec.name}: {spec.kind} needs a host")
    framer = FramerType.RTU if spec.kind == "rtu-over-tcp" else FramerType.SOCKET
    return ModbusTcpClient(spec.host, port=spec.tcp_port, framer=framer, timeout=spec.timeout_s,
                           retries=0, name=spec.name)


def _exception_answer(what: str, code: int) -> DeviceAnswerError:
    try:
        name = ExcCodes(code).name
    except ValueError:
        name = "unknown"
    return device_answer_error(f"{what}: Modbus exception {code} ({name})", code)


def _check_request(address: int, count: int, unit: int) -> None:
    """Programming errors, raised before anything reaches pymodbus (which would fail obscurely)."""
    if not 0 <= address <= 0xFFFF or not 1 <= count <= 2000 or not 0 <= unit <= 255:
        raise ValueError(f"bad Modbus request: address {address}, count {count}, unit {unit}")
