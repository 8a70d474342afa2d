"""The Modbus server side: serve ``RegisterBank``s for the simulators and the tests.

Split from ``hal/modbus/bus.py`` to keep both readable (pymodbus, whose API moves between 3.x
releases, is imported only inside ``hal/modbus/``). A ``ModbusServer`` asks its banks on
every request (the simulators compute live values and react to writes), answers nothing for
unknown or silenced units (a dead RS485 device), and runs on an asyncio loop thread of its own
or one shared by many servers.

A simulated device answers as late as a real one: each unit may have a latency of its own (its
processing time, ``set_latency``), and a server behind an RS485 line (an RTU server on a
pseudo-terminal, which moves bytes at once whatever the baud rate, or an RS485 gateway) takes
the line's wire time (:class:`LineTiming`). A write takes effect when its request has arrived,
and a read samples the device then; the answer comes back after the device's latency and the
response's own wire time. Other units wait meanwhile, as on a real half-duplex line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from hal.modbus.bus import device_answer_error
from hal.types import DeviceAnswerError
from hal.modbus.types import Table

__all__ = ["LineTiming", "ModbusServer", "RegisterBank", "ServerLoop", "device_answer_error"]

log = logging.getLogger(__name__)

_FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT,
             3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 23: Table.HOLDING}
_WRITE_ECHO_FCS = frozenset({5, 6})  # pymodbus reads the value back to echo a single write


@dataclass(frozen=True)
class LineTiming:
    """The speed of an RS485 line: how long frames take on the wire at its baud rate.

    ``bits_per_char``: start + 8 data + parity + stop = 11 for 8E1 or 8N2, 10 for 8N1. Every
    frame is followed by the 3.5 character times of silence that end it.
    """

    baudrate: int
    bits_per_char: int = 11

    def frame_s(self, n_bytes: int) -> float:
        return (n_bytes + 3.5) * self.bits_per_char / self.baudrate

    def read_s(self, func_code: int, count: int) -> tuple[float, float]:
        """(request, response) wire time of a read of ``count`` registers or bits."""
        data = math.ceil(count / 8) if func_code in (1, 2) else 2 * count
        return self.frame_s(8), self.frame_s(5 + data)

    def write_s(self, func_code: int, count: int) -> tuple[float, float]:
        """(request, response) wire time of a write of ``count`` registers or coils."""
        if func_code in _WRITE_ECHO_FCS:
            return self.frame_s(8), self.frame_s(8)
        data = math.ceil(count / 8) if func_code == 15 else 2 * count
        return self.frame_s(9 + data), self.frame_s(8)


class RegisterBank(Protocol):
    """One simulated unit's registers, asked on every request (thread: the server's event loop).

    Raise ``DeviceAnswerError`` (e.g. from ``device_answer_error(msg, code)``) to answer with a
    Modbus exception: its ``code`` attribute, default 2 (illegal address). Other exceptions
    answer code 4 (device failure) and are logged.
    """

    def read(self, table: Table, address: int, count: int) -> list[int]:
        ...

    def write(self, table: Table, address: int, values: list[int]) -> None:
        ...


class _BankContext(ModbusServerContext):
    """Routes pymodbus datastore calls to the banks at request time.

    Why this and not ``SimDevice(action=...)``: a SimDevice pre-allocates every register and
    checks addresses against that allocation before the action runs, so a bank could neither
    decide which addresses exist nor stay small (~100 simulated wallboxes). In 3.16 the server
    accepts a ``ModbusServerContext`` marked ``old_simulator`` as is and only calls
    ``async_getValues``/``async_setValues``; ``NoSuchIdException`` together with
    ``ignore_missing_devices=True`` sends no answer at all, which is what a silent RS485 unit
    does (an unknown id on a SimDevice server answers exception 4 instead). ``__init__`` of the
    base is deliberately not called: it only builds SimDevices and logs a deprecation warning.
    Tied to pymodbus ~=3.16 (the legacy context goes away in 4.0).
    """

    def __init__(self, banks: Mapping[int, RegisterBank], is_silent: Callable[[int], bool],
                 line: LineTiming | None = None) -> None:
        self.simdevices: list = []
        self.old_simulator = True
        self._banks = dict(banks)
        self._is_silent = is_silent
        self.line = line
        self.latency_s: dict[int, float] = {}  # per unit: its processing time before it answers

    def _bank(self, device_id: int) -> RegisterBank:
        bank = self._banks.get(device_id)
        if bank is None or self._is_silent(device_id):
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return bank

    def _times(self, device_id: int, wire: tuple[float, float] | None) -> tuple[float, float]:
        """(before the device acts, before it answers): the request's wire time, then the
        device's latency and the response's wire time."""
        request_s, response_s = wire if wire is not None else (0.0, 0.0)
        return request_s, self.latency_s.get(device_id, 0.0) + response_s

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        bank, table = self._bank(device_id), _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        echo = func_code in _WRITE_ECHO_FCS  # the read-back of a single write: timed by the write
        before_s, answer_s = (0.0, 0.0) if echo else self._times(
            device_id, self.line.read_s(func_code, count) if self.line else None)
        await _sleep(before_s)
        try:
            values = [int(v) for v in bank.read(table, address, count)]
        except Exception as exc:
            return _exc_code(exc, device_id)
        await _sleep(answer_s)
        if table in (Table.COIL, Table.DISCRETE):
            return [bool(v) for v in values]
        if not all(0 <= v <= 0xFFFF for v in values):  # pymodbus would fail to encode: no answer
            log.warning("simulated unit %d returned a value outside 0..65535: %s", device_id, values)
            return ExcCodes.DEVICE_FAILURE
        return values

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Any) -> ExcCodes | None:
        bank, table = self._bank(device_id), _FC_TABLE.get(func_code)
        if table not in (Table.COIL, Table.HOLDING):
            return ExcCodes.ILLEGAL_FUNCTION
        words = [int(v) for v in values]
        before_s, answer_s = self._times(device_id, self.line.write_s(func_code, len(words)) if self.line else None)
        await _sleep(before_s)
        try:
            bank.write(table, address, words)
        except Exception as exc:
            return _exc_code(exc, device_id)
        await _sleep(answer_s)
        return None

    def device_ids(self) -> list[int]:
        return list(self._banks)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _exc_code(exc: Exception, unit: int) -> ExcCodes:
    if isinstance(exc, DeviceAnswerError):
        try:
            return ExcCodes(ExcCodes.ILLEGAL_ADDRESS if exc.code is None else exc.code)
        except ValueError:
            return ExcCodes.DEVICE_FAILURE
    log.warning("simulated unit %d failed: %r", unit, exc)
    return ExcCodes.DEVICE_FAILURE


class ServerLoop:
    """An asyncio event loop on its own daemon thread; several servers may share one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="modbus-server", daemon=True)

    def start(self) -> ServerLoop:
        self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 5.0) -> Any:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.run(_cancel_other_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ModbusServer:
    """A pymodbus TCP or RTU server answering from ``RegisterBank``s (simulators and tests).

    Runs on its own ``ServerLoop`` unless one is passed in (many servers, one thread).
    ``start()`` after ``stop()`` starts it again on the same port.
    """

    def __init__(self, banks: Mapping[int, RegisterBank],
                 factory: Callable[[ModbusServerContext, Any], Any], port: int | str,
                 loop: ServerLoop | None, line: LineTiming | None = None) -> None:
        self._silent: frozenset[int] = frozenset()
        self._context = _BankContext(banks, lambda unit: unit in self._silent, line)
        self._factory = factory
        self._shared_loop = loop
        self._loop: ServerLoop | None = None
        self._server: Any = None
        self.port: int | str = port  # TCP: the actual port once started; RTU: the serial device

    @classmethod
    def tcp(cls, banks: Mapping[int, RegisterBank], host: str = "127.0.0.1", port: int = 0, *,
            rtu_framing: bool = False, loop: ServerLoop | None = None,
            line: LineTiming | None = None) -> ModbusServer:
        """A Modbus TCP server; with ``rtu_framing`` an RS485 gateway (``line``: the RS485 side)."""
        framer = FramerType.RTU if rtu_framing else FramerType.SOCKET
        return cls(banks, lambda ctx, port_now: ModbusTcpServer(
            ctx, framer=framer, address=(host, port_now), ignore_missing_devices=True), port, loop, line)

    @classmethod
    def rtu(cls, banks: Mapping[int, RegisterBank], port: str, baudrate: int = 19200, parity: str = "N",
            stopbits: int = 1, *, loop: ServerLoop | None = None, line: LineTiming | None = None) -> ModbusServer:
        """An RTU server on a serial port; ``line`` times it like a real RS485 line (a pty has no baud)."""
        return cls(banks, lambda ctx, _: ModbusSerialServer(
            ctx, framer=FramerType.RTU, port=port, baudrate=baudrate, parity=parity, stopbits=stopbits,
            ignore_missing_devices=True), port, loop, line)

    def start(self) -> ModbusServer:
        """Return once the server listens; ``port`` then holds the actual TCP port."""
        if self._server is not None:
            return self
        self._loop = self._shared_loop or ServerLoop().start()
        try:
            self._server = self._loop.run(self._serve())
        except BaseException:
            self._release_loop()
            raise
        return self

    async def _serve(self) -> Any:
        server = self._factory(self._context, self.port)  # pymodbus wants its running loop at construction
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return server

    def stop(self) -> None:
        """Stop serving and close client connections; idempotent."""
        server, self._server = self._server, None
        if server is None or self._loop is None:
            return
        try:
            self._loop.run(server.shutdown())
        finally:
            self._release_loop()

    def _release_loop(self) -> None:
        if self._loop is not None and self._loop is not self._shared_loop:
            self._loop.stop()
        self._loop = None

    def set_silent(self, unit: int, silent: bool) -> None:
        """A silent unit gets no answer at all, like a dead device on RS485."""
        self._silent = (self._silent | {unit}) if silent else (self._silent - {unit})

    def set_latency(self, unit: int, seconds: float) -> None:
        """The unit's own processing time before it answers (0: at once)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be finite and >= 0, not {seconds!r}")
        self._context.latency_s[unit] = seconds

    def __enter__(self) -> ModbusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
