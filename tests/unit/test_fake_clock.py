"""The test suite's one clock double (tests/fake_clock.py): every shape of clock reads one time."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from fake_clock import MONDAY_NOON, FakeClock

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_every_reading_is_the_same_time_and_moves_only_when_told() -> None:
    clock = FakeClock(T0)
    assert clock() == clock.monotonic() == clock.time() == T0 and clock.now() == MONDAY_NOON
    clock.advance(90)
    assert clock() == clock.monotonic() == clock.time() == T0 + 90
    assert clock.now() == datetime(2026, 1, 5, 12, 1, 30)


def test_sleep_moves_time_at_once_and_is_recorded() -> None:
    clock = FakeClock()
    start = time.monotonic()
    clock.sleep(30)
    clock.sleep(0.05)
    assert time.monotonic() - start < 1 and clock() == 1030.05 and clock.sleeps == [30, 0.05]


def test_wait_runs_out_at_once_unless_the_event_is_set() -> None:
    clock = FakeClock(wall=datetime(2026, 3, 1, 8, 0))
    event = threading.Event()
    assert clock.wait(event, 2.5) is False and clock() == 1002.5
    event.set()
    assert clock.wait(event, 2.5) is True and clock() == 1002.5
    assert clock.now() == datetime(2026, 3, 1, 8, 0, 2, 500000)


def test_real_time_flows_on_top_of_the_moves() -> None:
    clock = FakeClock(real_time=True)
    first = clock()
    time.sleep(0.02)
    second = clock()
    assert 0.02 <= second - first < 1
    clock.advance(60)
    assert clock() - second >= 60
