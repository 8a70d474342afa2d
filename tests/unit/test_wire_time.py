"""RTU frame sizes and wire time against the table in docs/devices.md ("Modbus RTU timing") (pure arithmetic)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal.modbus.bus import BusSpec, rtu_char_bits, rtu_frame_bytes, rtu_t35_s, rtu_wire_time_s
from hal.modbus.types import RequestPolicy


def read_ms(registers: int, baudrate: int, parity: str) -> float:
    return 1000 * rtu_wire_time_s(*rtu_frame_bytes(3, registers), baudrate, parity)


# docs/devices.md, "Modbus RTU timing", transaction-time table: (baud, parity, char ms, t3.5 ms, 2 regs, 30 regs, 80 regs)
TABLE = [
    (9600, "N", 1.042, 3.646, 25.0, 83.3, 187.5),
    (9600, "E", 1.146, 4.010, 27.5, 91.7, 206.3),
    (19200, "N", 0.521, 1.823, 12.5, 41.7, 93.8),
    (19200, "E", 0.573, 2.005, 13.8, 45.8, 103.1),
]


@pytest.mark.parametrize("baud, parity, char_ms, t35_ms, ms2, ms30, ms80", TABLE)
def test_transaction_table(baud: int, parity: str, char_ms: float, t35_ms: float,
                           ms2: float, ms30: float, ms80: float) -> None:
    assert 1000 * rtu_char_bits(parity) / baud == pytest.approx(char_ms, abs=0.0005)
    assert 1000 * rtu_t35_s(baud, parity) == pytest.approx(t35_ms, abs=0.0005)
    for registers, expected_ms in ((2, ms2), (30, ms30), (80, ms80)):
        # the table rounds to 0.1 ms (13.75 → 13.8), hence the tolerance just above 0.05
        assert read_ms(registers, baud, parity) == pytest.approx(expected_ms, abs=0.0501)


def test_worked_bus_budget() -> None:
    """SDM630 (18 + 6 + 6 registers) and Heidelberg (read 15 input, read 1 holding, FC06 write)."""
    def budget_ms(transactions: list[tuple[int, int]], baud: int, parity: str) -> float:
        return sum(1000 * rtu_wire_time_s(*rtu_frame_bytes(fc, n), baud, parity) for fc, n in transactions)

    sdm = [(4, 18), (4, 6), (4, 6)]
    heidelberg = [(4, 15), (3, 1), (6, 1)]
    assert budget_ms(sdm, 9600, "N") == pytest.approx(125, abs=0.5)
    assert budget_ms(heidelberg, 9600, "N") == pytest.approx(99, abs=0.5)
    assert budget_ms(sdm, 19200, "E") == pytest.approx(69, abs=0.5)
    assert budget_ms(heidelberg, 19200, "E") == pytest.approx(54, abs=0.5)


@pytest.mark.parametrize("fc, count, expected", [
    (3, 2, (8, 9)), (4, 30, (8, 65)), (4, 80, (8, 165)),
    (6, 1, (8, 8)), (5, 1, (8, 8)),
    (16, 1, (11, 8)), (16, 4, (17, 8)),
    (1, 1, (8, 6)), (2, 8, (8, 6)), (1, 9, (8, 7)), (2, 16, (8, 7)),
    (15, 10, (11, 8)),
])
def test_frame_bytes(fc: int, count: int, expected: tuple[int, int]) -> None:
    assert rtu_frame_bytes(fc, count) == expected


def test_unknown_function_code_has_no_frame_size() -> None:
    with pytest.raises(ValueError):
        rtu_frame_bytes(43, 1)


@pytest.mark.parametrize("baud", [38400, 57600, 115200])
def test_t35_is_fixed_above_19200(baud: int) -> None:
    assert rtu_t35_s(baud) == 0.00175
    assert rtu_t35_s(baud, "E", 2) == 0.00175


def test_char_bits() -> None:
    assert rtu_char_bits("N", 1) == 10
    assert rtu_char_bits("E", 1) == 11
    assert rtu_char_bits("O", 1) == 11
    assert rtu_char_bits("N", 2) == 11


@given(n=st.integers(1, 124), baud=st.sampled_from([2400, 4800, 9600, 19200, 38400, 115200]),
       parity=st.sampled_from("NEO"), stopbits=st.sampled_from([1, 2]))
def test_each_register_adds_two_characters(n: int, baud: int, parity: str, stopbits: int) -> None:
    one_more = rtu_wire_time_s(*rtu_frame_bytes(3, n + 1), baud, parity, stopbits)
    now = rtu_wire_time_s(*rtu_frame_bytes(3, n), baud, parity, stopbits)
    assert one_more - now == pytest.approx(2 * rtu_char_bits(parity, stopbits) / baud)


@given(bits=st.integers(1, 2000))
def test_bit_reads_round_up_to_bytes(bits: int) -> None:
    assert rtu_frame_bytes(1, bits) == (8, 5 + math.ceil(bits / 8))


def test_spec_default_policy() -> None:
    spec = BusSpec("b", "rtu", port="/dev/null", timeout_s=0.3, retries=2)
    assert spec.default_policy() == RequestPolicy(timeout_s=0.3, gap_s=0.0, retries=2)
