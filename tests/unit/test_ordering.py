"""The one order of reads and writes, and the place of a reading measured before it was fetched."""

from __future__ import annotations

import threading

from fake_clock import FakeClock

from controller.ordering import Sequence


def test_numbers_rise_and_remember_their_moment() -> None:
    clock = FakeClock(100.0)
    seq = Sequence(clock.monotonic)
    assert seq.at(99.0) == 0  # before anything was handed out
    first = seq()
    clock.advance(1.0)
    second, third = seq(), seq()
    clock.advance(1.0)
    assert (first, second, third) == (1, 2, 3)
    assert seq.at(100.0) == 1 and seq.at(100.5) == 1  # measured between 1 and 2: after 1
    assert seq.at(101.0) == 3 and seq.at(500.0) == 3


def test_forgets_the_oldest_half_when_full() -> None:
    clock = FakeClock(0.0)
    seq = Sequence(clock.monotonic, keep=4)
    for _ in range(9):
        seq()
        clock.advance(1.0)
    assert seq.at(8.0) == 9
    assert seq.at(0.5) == 0  # the first numbers are forgotten: "older than anything we know"


def test_threads_get_unique_numbers() -> None:
    seq = Sequence(FakeClock(0.0).monotonic)
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [seq() for _ in range(500)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 2001))
