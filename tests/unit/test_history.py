"""The status page's 24 h history: buckets, bounds, clock jumps, the cost of a cycle."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from fake_clock import FakeClock

from controller.history import History, chargers_power_w
from controller.status import EMPTY_STATUS, ChargerStatus, DeviceStatus, Status
from hal.types import ChargerReading, IecState

T0 = 1767614400.0  # 2026-01-05T12:00:00Z, a multiple of 30 s


def charger(id: str, power_w: float | None, current_a: tuple[float, float, float] = (0.0, 0.0, 0.0),
            online: bool = True) -> ChargerStatus:
    reading = ChargerReading(state=IecState.C, current_a=current_a, power_w=power_w, energy_wh=None)
    device = DeviceStatus(id=id, kind="charger", model="alfen", address="tcp", online=online, age_s=0.1,
                          error=None if online else "timeout", error_s=0.0, reading=reading)
    return ChargerStatus(device=device, phases=3, phase=0, priority=1, min_current_a=6, max_current_a=16,
                         command_a=10, written_a=10, reason="fuse L1", enabled=True, override_a=None)


class Site:
    """Statuses with counting cycle numbers, as the loop publishes them."""

    def __init__(self) -> None:
        self.count = 0

    def status(self, grid_w: float | None = 5000.0, *, chargers: tuple[ChargerStatus, ...] = (),
               grid_limit_w: float | None = None, chargers_limit_w: float | None = None,
               failsafe: str | None = None) -> Status:
        self.count += 1
        return replace(EMPTY_STATUS, cycle_count=self.count, grid_power_w=grid_w, chargers=chargers,
                       grid_limit_w=grid_limit_w, chargers_limit_w=chargers_limit_w, failsafe=failsafe)


def run(history: History, clock: FakeClock, site: Site, seconds: int, **kw: Any) -> None:
    for _ in range(seconds):
        history.on_cycle(site.status(**kw))
        clock.advance(1.0)


def test_a_bucket_keeps_min_max_average_and_the_lowest_limit() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock), Site()
    for grid, limit in [(1000.0, 11000.0), (3000.0, 4200.0), (2000.0, 11000.0)]:
        history.on_cycle(site.status(grid, chargers=(charger("E1", 1500.0), charger("E2", 700.0)),
                                     grid_limit_w=limit))
        clock.advance(1.0)
    [bucket] = history.snapshot()
    assert bucket.t == T0 and bucket.cycles == 3
    assert bucket.grid_w is not None and (bucket.grid_w.min, bucket.grid_w.max, bucket.grid_w.avg) == (1000, 3000, 2000)
    assert bucket.chargers_w is not None and bucket.chargers_w.avg == 2200
    assert bucket.grid_limit_w == 4200.0  # the tightest limit that acted in the bucket
    assert bucket.chargers_limit_w is None and bucket.failsafe is False


def test_buckets_follow_the_clock_and_the_open_one_is_last() -> None:
    clock = FakeClock(T0 + 10)
    history, site = History(clock=clock), Site()
    run(history, clock, site, 65)  # T0+10 .. T0+74: buckets T0, T0+30, T0+60
    buckets = history.snapshot()
    assert [b.t for b in buckets] == [T0, T0 + 30, T0 + 60]
    assert [b.cycles for b in buckets] == [20, 30, 15]
    assert [b.t for b in history.snapshot(since=T0 + 30)] == [T0 + 30, T0 + 60]
    assert [b.t for b in history.snapshot(since=T0 + 31)] == [T0 + 60]


def test_memory_is_bounded_to_the_span_and_old_buckets_leave() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock, bucket_s=30, span_s=3600), Site()
    assert history.capacity == 120
    for _ in range(500):  # 500 buckets' worth, one cycle per bucket
        history.on_cycle(site.status())
        clock.advance(30.0)
    buckets = history.snapshot()
    assert len(buckets) <= 121
    assert buckets[0].t >= clock() - 3600 and buckets[-1].t == T0 + 499 * 30
    clock.advance(2 * 3600)  # the loop stopped: nothing left within the span
    assert history.snapshot() == []


def test_unknown_values_are_none_not_zero_and_failsafe_marks_the_bucket() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock), Site()
    history.on_cycle(site.status(None, chargers=(charger("E1", 1000.0, online=False),), failsafe="M1 offline"))
    [bucket] = history.snapshot()
    assert bucket.grid_w is None and bucket.chargers_w is None and bucket.failsafe is True


def test_charger_power_falls_back_to_currents_times_voltage() -> None:
    status = replace(EMPTY_STATUS, chargers=(charger("E1", None, (10.0, 10.0, 10.0)), charger("E2", 2000.0),
                                             charger("E3", 5000.0, online=False)))
    assert chargers_power_w(status, 230.0) == pytest.approx(6900.0 + 2000.0)


def test_a_republished_status_counts_once() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock), Site()
    status = site.status(1000.0)
    for _ in range(3):  # a failed cycle republishes the last status
        history.on_cycle(status)
    assert history.snapshot()[0].cycles == 1


def test_a_clock_that_goes_back_drops_the_future_and_times_keep_increasing() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock), Site()
    run(history, clock, site, 120)
    clock.advance(-75)  # NTP corrects a clock that ran ahead
    run(history, clock, site, 10)
    times = [b.t for b in history.snapshot()]
    assert times == sorted(set(times)) and times[-1] == T0 + 30


def test_snapshot_from_another_thread_while_the_loop_adds() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock, bucket_s=1, span_s=600), Site()
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            times = [b.t for b in history.snapshot()]
            assert times == sorted(times)
            seen.append(len(times))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        run(history, clock, site, 5000)
    finally:
        stop.set()
        thread.join()
    assert seen and len(history.snapshot()) <= 601


def test_a_cycle_costs_microseconds_even_with_a_full_ring() -> None:
    clock = FakeClock(T0)
    history, site = History(clock=clock), Site()
    chargers = (charger("E1", 7000.0), charger("E2", 3000.0))
    for _ in range(history.capacity + 5):  # fill the ring
        history.on_cycle(site.status(chargers=chargers))
        clock.advance(30.0)
    statuses = [site.status(chargers=chargers, grid_limit_w=11000.0) for _ in range(20000)]
    started = time.perf_counter()
    for status in statuses:
        history.on_cycle(status)
        clock.advance(0.01)
    per_cycle_s = (time.perf_counter() - started) / len(statuses)
    assert per_cycle_s < 100e-6, per_cycle_s  # measured ~4 µs here; a cycle is 1 s


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        History(bucket_s=0)
    with pytest.raises(ValueError):
        History(bucket_s=60, span_s=30)
