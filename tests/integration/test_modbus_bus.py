"""ModbusBus against real pymodbus servers: TCP on loopback, RTU over a pty null modem, RTU over TCP.

Only waits are faked (a ``FakeClock`` on which real time flows, plus what ``sleep`` skipped), so
backoff is skipped by moving the clock and the inter-request gap is measured from the recorded sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_clock import FakeClock

from hal.modbus.bus import BusSpec, ModbusBus, rtu_frame_bytes, rtu_wire_time_s
from hal.modbus.server import ModbusServer, ServerLoop, device_answer_error
from hal.sim.pty import PtyNullModem
from hal.types import CommError, DeviceAnswerError
from hal.modbus.types import RegisterBus, RequestPolicy, Table

FAST = RequestPolicy(timeout_s=0.2)


class MemoryBank:
    """A unit with ``size`` addresses per table; outside them it answers exception 2."""

    def __init__(self, size: int = 100, base: int = 0) -> None:
        self.tables = {t: [(base + i) % 0x10000 for i in range(size)] for t in Table}
        for t in (Table.COIL, Table.DISCRETE):
            self.tables[t] = [i % 3 == 0 for i in range(size)]
        self.extra_registers = 0  # >0: answer more registers than asked (a broken device)
        self.delay_s = 0.0  # >0: answer late (blocks this server's loop, good enough for a test)
        self.writes: list[tuple[Table, int, list[int]]] = []

    def read(self, table: Table, address: int, count: int) -> list[int]:
        values = self.tables[table]
        if address + count > len(values):
            raise device_answer_error(f"no register {address}+{count}")
        answer = [int(v) for v in values[address:address + count + self.extra_registers]]
        time.sleep(self.delay_s)
        return answer

    def write(self, table: Table, address: int, values: list[int]) -> None:
        if any(v > 1000 for v in values):
            raise device_answer_error("value out of range", code=3)
        if address + len(values) > len(self.tables[table]):
            raise device_answer_error(f"no register {address}+{len(values)}")
        self.writes.append((table, address, values))
        self.tables[table][address:address + len(values)] = values


@pytest.fixture
def banks() -> dict[int, MemoryBank]:
    return {1: MemoryBank(base=100), 2: MemoryBank(base=200)}


@pytest.fixture
def tcp_server(banks: dict[int, MemoryBank]) -> Iterator[ModbusServer]:
    server = ModbusServer.tcp(banks).start()
    yield server
    server.stop()


@pytest.fixture
def fake_time() -> FakeClock:
    return FakeClock(real_time=True)


@pytest.fixture
def tcp_bus(tcp_server: ModbusServer, fake_time: FakeClock) -> Iterator[ModbusBus]:
    bus = ModbusBus(BusSpec("tcp1", "tcp", host="127.0.0.1", tcp_port=int(tcp_server.port)),
                    clock=fake_time.monotonic, sleep=fake_time.sleep)
    yield bus
    bus.close()


@pytest.fixture
def null_modem() -> Iterator[PtyNullModem]:
    with PtyNullModem() as nm:
        yield nm


# ------------------------------------------------------------------------------------------ TCP
def test_bus_implements_register_bus(tcp_bus: ModbusBus) -> None:
    assert isinstance(tcp_bus, RegisterBus)
    assert tcp_bus.name == "tcp1"


def test_tcp_reads_every_table(tcp_bus: ModbusBus) -> None:
    assert tcp_bus.read(Table.HOLDING, 3, 4, 1, FAST) == [103, 104, 105, 106]
    assert tcp_bus.read(Table.INPUT, 0, 2, 2, FAST) == [200, 201]
    expected_bits = [1 if i % 3 == 0 else 0 for i in range(10)]
    assert tcp_bus.read(Table.COIL, 0, 10, 1, FAST) == expected_bits
    assert tcp_bus.read(Table.DISCRETE, 0, 10, 2, FAST) == expected_bits
    assert tcp_bus.read(Table.COIL, 3, 1, 1, FAST) == [1]


def test_tcp_writes_single_and_multiple(tcp_bus: ModbusBus, banks: dict[int, MemoryBank]) -> None:
    tcp_bus.write(10, [7], 1, FAST, single=True)
    tcp_bus.write(20, [1, 2, 3], 1, FAST)
    assert banks[1].writes == [(Table.HOLDING, 10, [7]), (Table.HOLDING, 20, [1, 2, 3])]
    assert tcp_bus.read(Table.HOLDING, 20, 3, 1, FAST) == [1, 2, 3]
    with pytest.raises(ValueError):
        tcp_bus.write(10, [1, 2], 1, FAST, single=True)
    with pytest.raises(ValueError):
        tcp_bus.write(10, [70000], 1, FAST)


def test_exception_response_is_a_device_answer_error(tcp_bus: ModbusBus) -> None:
    with pytest.raises(DeviceAnswerError, match="exception 2") as info:
        tcp_bus.read(Table.HOLDING, 99, 5, 1, FAST)
    assert info.value.code == 2  # type: ignore[attr-defined]
    with pytest.raises(DeviceAnswerError, match="exception 3"):
        tcp_bus.write(0, [5000], 1, FAST)
    assert tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST) == [100]  # the bus is fine
    stats = tcp_bus.stats()
    assert (stats.requests, stats.errors, stats.timeouts, stats.down) == (3, 2, 0, False)


def test_bank_failure_answers_device_failure(tcp_bus: ModbusBus, banks: dict[int, MemoryBank]) -> None:
    banks[2].tables[Table.INPUT] = None  # type: ignore[assignment]  # the bank itself breaks
    with pytest.raises(DeviceAnswerError, match="exception 4"):
        tcp_bus.read(Table.INPUT, 0, 1, 2, FAST)


def test_bank_value_out_of_range_answers_device_failure(tcp_bus: ModbusBus, banks: dict[int, MemoryBank]) -> None:
    banks[1].tables[Table.HOLDING][0] = 70000  # a simulator bug must not leave the client waiting
    with pytest.raises(DeviceAnswerError, match="exception 4"):
        tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)


def test_server_that_cannot_listen_raises_and_leaves_no_thread() -> None:
    threads = set(threading.enumerate())
    with pytest.raises(RuntimeError):
        ModbusServer.rtu({1: MemoryBank()}, "/nonexistent/ttyGONE").start()
    assert set(threading.enumerate()) == threads


def test_wrong_register_count_is_a_device_answer_error(tcp_bus: ModbusBus, banks: dict[int, MemoryBank]) -> None:
    banks[1].extra_registers = 1
    with pytest.raises(DeviceAnswerError, match="3 registers for 2"):
        tcp_bus.read(Table.HOLDING, 0, 2, 1, FAST)


def test_silent_and_unknown_units_time_out(tcp_server: ModbusServer, tcp_bus: ModbusBus) -> None:
    tcp_server.set_silent(1, True)
    start = time.monotonic()
    with pytest.raises(CommError, match="no answer"):
        tcp_bus.read(Table.HOLDING, 0, 1, 1, RequestPolicy(timeout_s=0.2, retries=1))
    assert 0.35 < time.monotonic() - start < 0.8  # timeout × (retries + 1)
    with pytest.raises(CommError):
        tcp_bus.read(Table.HOLDING, 0, 1, 9, FAST)  # no such unit: no answer, not exception 4
    assert tcp_bus.read(Table.HOLDING, 0, 1, 2, FAST) == [200]  # the other unit still answers
    tcp_server.set_silent(1, False)
    assert tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST) == [100]
    stats = tcp_bus.stats()
    assert (stats.requests, stats.transactions, stats.errors, stats.timeouts) == (4, 5, 2, 3)
    assert stats.latency_max_s >= 0.2
    assert stats.latency_mean_s < stats.latency_max_s
    assert not stats.down


def test_server_stop_backoff_and_recovery(tcp_server: ModbusServer, tcp_bus: ModbusBus,
                                          fake_time: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hal.modbus.bus")
    assert tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST) == [100]
    tcp_server.stop()
    with pytest.raises(CommError):  # the open connection is found closed
        tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)
    with pytest.raises(CommError, match="reconnect in 0.5 s"):  # refused: down, first backoff
        tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)
    start = time.monotonic()
    for _ in range(5):  # fail fast while backing off
        with pytest.raises(CommError, match="down: reconnect in"):
            tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)
    assert time.monotonic() - start < 0.05
    assert tcp_bus.stats().down
    fake_time.advance(0.6)
    with pytest.raises(CommError, match="reconnect in 1.0 s"):  # still refused: backoff doubles
        tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)
    tcp_server.start()  # same port again
    with pytest.raises(CommError, match="down: reconnect in"):
        tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)
    fake_time.advance(1.1)
    assert tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST) == [100]
    stats = tcp_bus.stats()
    assert not stats.down and stats.errors == 9 and stats.requests == 11
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "hal.modbus.bus"]
    assert [m for m in messages if m[0] >= logging.INFO] == [
        (logging.WARNING, f"bus tcp1 down: cannot open 127.0.0.1:{tcp_server.port}; retrying with backoff"),
        (logging.INFO, f"bus tcp1 is back (127.0.0.1:{tcp_server.port})"),
    ]


def test_backoff_is_capped(fake_time: FakeClock) -> None:
    bus = ModbusBus(BusSpec("gone", "tcp", host="127.0.0.1", tcp_port=_closed_port()),
                    clock=fake_time.monotonic, sleep=fake_time.sleep)
    waits = []
    for _ in range(10):
        with pytest.raises(CommError) as info:
            bus.read(Table.HOLDING, 0, 1, 1, FAST)
        waits.append(float(str(info.value).split("reconnect in ")[1].split(" s")[0]))
        fake_time.advance(60)
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_closed_bus_refuses(tcp_bus: ModbusBus) -> None:
    tcp_bus.close()
    with pytest.raises(CommError, match="closed"):
        tcp_bus.read(Table.HOLDING, 0, 1, 1, FAST)


def test_healthy_bus_not_delayed_by_a_dead_one(banks: dict[int, MemoryBank]) -> None:
    """One lock per bus: a bus stuck in timeouts does not hold up another bus's thread."""
    with ModbusServer.tcp(banks) as healthy, ModbusServer.tcp(banks) as dead:
        dead.set_silent(1, True)
        good_bus = ModbusBus(BusSpec("good", "tcp", host="127.0.0.1", tcp_port=int(healthy.port)))
        dead_bus = ModbusBus(BusSpec("dead", "tcp", host="127.0.0.1", tcp_port=int(dead.port)))
        slow = RequestPolicy(timeout_s=0.3)
        started = threading.Event()

        def poll_dead() -> None:
            started.set()
            for _ in range(3):
                with pytest.raises(CommError):
                    dead_bus.read(Table.HOLDING, 0, 1, 1, slow)

        dead_thread = threading.Thread(target=poll_dead)
        dead_thread.start()
        started.wait()
        latencies = []
        while dead_thread.is_alive():
            start = time.monotonic()
            assert good_bus.read(Table.HOLDING, 0, 2, 1, FAST) == [100, 101]
            latencies.append(time.monotonic() - start)
        dead_thread.join()
        assert len(latencies) > 20
        assert max(latencies) < 0.1  # the dead bus times out after 0.3 s, three times
        assert dead_bus.stats().timeouts == 3 and good_bus.stats().errors == 0
        good_bus.close()
        dead_bus.close()


def test_many_servers_share_one_loop() -> None:
    loop = ServerLoop().start()
    servers = [ModbusServer.tcp({1: MemoryBank(base=n)}, loop=loop).start() for n in range(20)]
    try:
        for n, server in enumerate(servers):
            bus = ModbusBus(BusSpec(f"b{n}", "tcp", host="127.0.0.1", tcp_port=int(server.port)))
            assert bus.read(Table.INPUT, 1, 1, 1, FAST) == [n + 1]
            bus.close()
    finally:
        for server in servers:
            server.stop()
        loop.stop()


# ------------------------------------------------------------------------------------------ RTU
def test_rtu_two_units_wire_time_and_gap(null_modem: PtyNullModem, fake_time: FakeClock) -> None:
    banks = {3: MemoryBank(base=300), 4: MemoryBank(base=400)}
    with ModbusServer.rtu(banks, null_modem.port_b, baudrate=19200):
        bus = ModbusBus(BusSpec("rs485", "rtu", port=null_modem.port_a, baudrate=19200),
                        clock=fake_time.monotonic, sleep=fake_time.sleep)
        policy = RequestPolicy(timeout_s=0.5, gap_s=0.05)
        steps = [
            (4, 30, lambda: bus.read(Table.INPUT, 0, 30, 3, policy) == list(range(300, 330))),
            (3, 2, lambda: bus.read(Table.HOLDING, 5, 2, 4, policy) == [405, 406]),
            (6, 1, lambda: bus.write(7, [42], 4, policy, single=True) is None),
            (16, 3, lambda: bus.write(8, [1, 2, 3], 3, policy) is None),
            (1, 10, lambda: bus.read(Table.COIL, 0, 10, 3, policy) == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]),
        ]
        total_s = 0.0
        for fc, count, step in steps:
            assert step()
            expected_s = rtu_wire_time_s(*rtu_frame_bytes(fc, count), 19200, "N")
            stats = bus.stats()
            assert stats.wire_time_last_s == pytest.approx(expected_s)
            total_s += expected_s
            assert stats.wire_time_s == pytest.approx(total_s)
        assert banks[4].tables[Table.HOLDING][7] == 42 and banks[3].tables[Table.HOLDING][8:11] == [1, 2, 3]
        # every request after the first waited for the rest of the 50 ms gap
        assert len(fake_time.sleeps) == len(steps) - 1
        assert all(0.02 < s <= 0.05 for s in fake_time.sleeps), fake_time.sleeps
        stats = bus.stats()
        assert (stats.requests, stats.errors, stats.timeouts) == (5, 0, 0)
        assert 0 < stats.latency_mean_s <= stats.latency_p95_s <= stats.latency_max_s < 0.5
        bus.close()


def test_rtu_silent_unit_does_not_disturb_the_other(null_modem: PtyNullModem) -> None:
    banks = {3: MemoryBank(base=300), 4: MemoryBank(base=400)}
    with ModbusServer.rtu(banks, null_modem.port_b, baudrate=19200) as server:
        bus = ModbusBus(BusSpec("rs485", "rtu", port=null_modem.port_a, baudrate=19200))
        server.set_silent(3, True)
        with pytest.raises(CommError, match="no answer"):
            bus.read(Table.HOLDING, 0, 1, 3, FAST)
        assert bus.read(Table.HOLDING, 0, 1, 4, FAST) == [400]
        assert not bus.stats().down
        wire = bus.stats().wire_time_s  # the unanswered request still used the line
        assert wire == pytest.approx(rtu_wire_time_s(8, 0, 19200) + rtu_wire_time_s(8, 7, 19200))
        bus.close()


def test_serial_port_missing_then_plugged_in(tmp_path: Path, fake_time: FakeClock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """An adapter unplugged and plugged back (same stable name, new pty behind it) is picked up."""
    caplog.set_level(logging.INFO, logger="hal.modbus.bus")
    link = tmp_path / "ttyUSB-stable"
    bus = ModbusBus(BusSpec("usb", "rtu", port=str(link), baudrate=19200),
                    clock=fake_time.monotonic, sleep=fake_time.sleep)
    with pytest.raises(CommError, match="cannot open"):
        bus.read(Table.HOLDING, 0, 1, 1, FAST)
    for generation in range(2):  # plug in, use, unplug; twice
        with PtyNullModem() as nm, ModbusServer.rtu({1: MemoryBank(base=10 * generation)}, nm.port_b):
            link.unlink(missing_ok=True)
            link.symlink_to(nm.port_a)
            fake_time.advance(60)
            assert bus.read(Table.HOLDING, 0, 1, 1, FAST) == [10 * generation]
            assert not bus.stats().down
        link.unlink()
        with pytest.raises(CommError):
            for _ in range(3):  # the lost line is noticed on the first request or the next
                bus.read(Table.HOLDING, 0, 1, 1, FAST)
        fake_time.advance(60)
        with pytest.raises(CommError, match="cannot open"):
            bus.read(Table.HOLDING, 0, 1, 1, FAST)
        assert bus.stats().down
    bus.close()
    downs = [r for r in caplog.records if r.name == "hal.modbus.bus" and r.levelno == logging.WARNING]
    backs = [r for r in caplog.records if r.name == "hal.modbus.bus" and r.levelno == logging.INFO]
    assert (len(downs), len(backs)) == (3, 2)  # once per outage, not per failed request


def test_rtu_over_tcp_gateway(banks: dict[int, MemoryBank]) -> None:
    with ModbusServer.tcp(banks, rtu_framing=True) as gateway:
        bus = ModbusBus(BusSpec("gw", "rtu-over-tcp", host="127.0.0.1", tcp_port=int(gateway.port),
                                baudrate=9600))
        assert bus.read(Table.INPUT, 10, 2, 2, FAST) == [210, 211]
        bus.write(0, [9], 1, FAST, single=True)
        bus.write(1, [8, 7], 1, FAST)
        assert bus.read(Table.HOLDING, 0, 3, 1, FAST) == [9, 8, 7]
        assert bus.read(Table.HOLDING, 1, 2, 1, FAST) == [8, 7]
        assert bus.stats().wire_time_last_s == pytest.approx(0.0250, abs=5e-5)  # devices.md: 25.0 ms
        with pytest.raises(DeviceAnswerError, match="exception 2"):
            bus.read(Table.HOLDING, 500, 1, 1, FAST)
        gateway.set_silent(2, True)
        with pytest.raises(CommError, match="no answer"):
            bus.read(Table.INPUT, 0, 1, 2, FAST)
        assert bus.read(Table.INPUT, 0, 1, 1, FAST) == [100]
        bus.close()


@pytest.mark.parametrize("kind", ["tcp", "rtu-over-tcp"])
def test_late_answer_is_not_taken_for_the_next(banks: dict[int, MemoryBank], kind: str) -> None:
    """TCP drops it by transaction id; RTU framing has none, so its stream is started afresh."""
    with ModbusServer.tcp(banks, rtu_framing=kind != "tcp") as gateway:
        bus = ModbusBus(BusSpec("gw", kind, host="127.0.0.1", tcp_port=int(gateway.port)))  # type: ignore[arg-type]
        banks[1].delay_s = 0.3
        with pytest.raises(CommError, match="no answer"):
            bus.read(Table.HOLDING, 0, 1, 1, FAST)  # the answer [100] comes 0.1 s too late
        banks[1].delay_s = 0.0
        banks[1].tables[Table.HOLDING][0] = 555
        assert bus.read(Table.HOLDING, 0, 1, 1, RequestPolicy(timeout_s=0.5)) == [555]
        bus.close()


def _closed_port() -> int:
    """A loopback port with nobody listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
