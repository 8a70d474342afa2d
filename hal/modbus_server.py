"""The Modbus server side: serve ``RegisterBank``s for the simulators and the tests.

Split from ``hal/modbus.py`` to keep both readable; the pymodbus names it needs come through
``hal.modbus``, the only module that imports pymodbus. A ``ModbusServer`` asks its banks on
every request (the simulators compute live values and react to writes), answers nothing for
unknown or silenced units (a dead RS485 device), and runs on an asyncio loop thread of its own
or one shared by many servers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from hal.modbus import (  # pymodbus names come through hal.modbus, the one module that imports it
    ExcCodes,
    FramerType,
    ModbusSerialServer,
    ModbusServerContext,
    ModbusTcpServer,
    NoSuchIdException,
    device_answer_error,
)
from hal.types import DeviceAnswerError, Table

__all__ = ["ModbusServer", "RegisterBank", "ServerLoop", "device_answer_error"]

log = logging.getLogger(__name__)

_FC_TABLE = {1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE, 4: Table.INPUT,
             3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 23: Table.HOLDING}


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

    def __init__(self, banks: Mapping[int, RegisterBank], is_silent: Callable[[int], bool]) -> None:
        self.simdevices: list = []
        self.old_simulator = True
        self._banks = dict(banks)
        self._is_silent = is_silent

    def _bank(self, device_id: int) -> RegisterBank:
        bank = self._banks.get(device_id)
        if bank is None or self._is_silent(device_id):
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return bank

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        bank, table = self._bank(device_id), _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            values = [int(v) for v in bank.read(table, address, count)]
        except Exception as exc:
            return _exc_code(exc, device_id)
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
        try:
            bank.write(table, address, [int(v) for v in values])
        except Exception as exc:
            return _exc_code(exc, device_id)
        return None

    def device_ids(self) -> list[int]:
        return list(self._banks)


def _exc_code(exc: Exception, unit: int) -> ExcCodes:
    if isinstance(exc, DeviceAnswerError):
        try:
            return ExcCodes(getattr(exc, "code", ExcCodes.ILLEGAL_ADDRESS))
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
                 loop: ServerLoop | None) -> None:
        self._silent: frozenset[int] = frozenset()
        self._context = _BankContext(banks, lambda unit: unit in self._silent)
        self._factory = factory
        self._shared_loop = loop
        self._loop: ServerLoop | None = None
        self._server: Any = None
        self.port: int | str = port  # TCP: the actual port once started; RTU: the serial device

    @classmethod
    def tcp(cls, banks: Mapping[int, RegisterBank], host: str = "127.0.0.1", port: int = 0, *,
            rtu_framing: bool = False, loop: ServerLoop | None = None) -> ModbusServer:
        framer = FramerType.RTU if rtu_framing else FramerType.SOCKET
        return cls(banks, lambda ctx, port_now: ModbusTcpServer(
            ctx, framer=framer, address=(host, port_now), ignore_missing_devices=True), port, loop)

    @classmethod
    def rtu(cls, banks: Mapping[int, RegisterBank], port: str, baudrate: int = 19200, parity: str = "N",
            stopbits: int = 1, *, loop: ServerLoop | None = None) -> ModbusServer:
        return cls(banks, lambda ctx, _: ModbusSerialServer(
            ctx, framer=FramerType.RTU, port=port, baudrate=baudrate, parity=parity, stopbits=stopbits,
            ignore_missing_devices=True), port, loop)

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

    def __enter__(self) -> ModbusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
