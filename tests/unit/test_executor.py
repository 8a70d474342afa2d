"""The per-bus worker groups: parallel across groups, serial within one, deadline honoured."""

from __future__ import annotations

import threading
import time

from hal.executor import GroupExecutor


def test_jobs_of_one_group_run_in_order_on_one_thread() -> None:
    ex = GroupExecutor(["a"])
    seen: list[tuple[str, str]] = []
    jobs = {"a": [(f"k{i}", lambda i=i: seen.append((f"k{i}", threading.current_thread().name)) or i)
                  for i in range(5)]}
    out = ex.run(jobs, timeout_s=2)
    assert [k for k, _ in seen] == [f"k{i}" for i in range(5)]
    assert len({name for _, name in seen}) == 1
    assert [out[f"k{i}"].value for i in range(5)] == list(range(5))
    ex.shutdown()


def test_errors_are_results_not_crashes() -> None:
    ex = GroupExecutor(["a"])

    def boom() -> None:
        raise ValueError("garbage")

    out = ex.run({"a": [("x", boom), ("y", lambda: 1)]}, timeout_s=2)
    assert isinstance(out["x"].error, ValueError) and out["x"].done
    assert out["y"].value == 1
    ex.shutdown()


def test_a_stuck_group_does_not_stall_the_others_and_gets_no_new_work() -> None:
    ex = GroupExecutor(["dead", "alive"])
    release = threading.Event()
    calls = {"dead": 0}

    def stuck() -> str:
        calls["dead"] += 1
        release.wait(5)
        return "late"

    t0 = time.monotonic()
    out = ex.run({"dead": [("d", stuck)], "alive": [("a", lambda: "ok")]}, timeout_s=0.2)
    assert time.monotonic() - t0 < 1.0
    assert out["a"].value == "ok" and not out["d"].done
    assert ex.busy("dead") and not ex.busy("alive")
    out = ex.run({"dead": [("d", stuck)], "alive": [("a", lambda: "ok2")]}, timeout_s=0.2)
    assert calls["dead"] == 1  # not queued again while stuck
    assert out["a"].value == "ok2" and not out["d"].done
    release.set()
    time.sleep(0.05)
    assert not ex.busy("dead")
    ex.shutdown()


def test_a_slow_group_delivers_its_results_to_the_next_call() -> None:
    """A bus that needs longer than one deadline still delivers every reading, a call later."""
    ex = GroupExecutor(["slow"])
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "reading"

    out = ex.run({"slow": [("M1", slow)]}, timeout_s=0.05, late_tag="read")
    assert not out["M1"].done
    release.set()
    deadline = time.monotonic() + 2
    while ex.busy("slow") and time.monotonic() < deadline:
        time.sleep(0.01)
    out = ex.run({"slow": [("M1", lambda: "fresh")]}, timeout_s=1, late_tag="read")
    assert out["M1"].value == "fresh" and not out["M1"].late  # a new result wins over a late one
    release.clear()
    ex.run({"slow": [("M1", slow)]}, timeout_s=0.05, late_tag="read")
    release.set()
    while ex.busy("slow") and time.monotonic() < deadline + 2:
        time.sleep(0.01)
    # The group is free again but this call's job does not finish in time: the late result comes.
    release.clear()
    out = ex.run({"slow": [("M1", slow)]}, timeout_s=0.05, late_tag="read")
    assert out["M1"].done and out["M1"].late and out["M1"].value == "reading"
    release.set()
    ex.shutdown()


def test_late_results_are_kept_only_with_a_tag() -> None:
    ex = GroupExecutor(["g"])
    release = threading.Event()
    ex.run({"g": [("k", lambda: release.wait(5) or "w")]}, timeout_s=0.05)
    release.set()
    time.sleep(0.1)
    out = ex.run({"g": [("k", lambda: (_ for _ in ()).throw(RuntimeError("x")))]}, timeout_s=1)
    assert isinstance(out["k"].error, RuntimeError)
    ex.shutdown()


def test_urgent_jobs_overtake_reads_that_have_not_started() -> None:
    """A limit write on a slow RS485 line waits for the request on the wire, not for the round."""
    ex = GroupExecutor(["rs485"])
    order: list[str] = []
    gate = threading.Event()

    def read(name: str, wait: bool = False):  # type: ignore[no-untyped-def]
        def job() -> str:
            if wait:
                gate.wait(5)
            order.append(name)
            return name
        return job

    reads = {"rs485": [("M1", read("M1", wait=True)), ("E1", read("E1")), ("E2", read("E2"))]}
    out = ex.run(reads, timeout_s=0.05, late_tag="read")
    assert not any(r.done for r in out.values()) and ex.busy("rs485")
    done = threading.Event()
    result: dict[str, object] = {}

    def write() -> None:
        result.update(ex.run({"rs485": [("E1", read("write E1"))]}, timeout_s=2, urgent=True))
        done.set()

    threading.Thread(target=write).start()
    time.sleep(0.05)
    assert ex.run({"rs485": [("M1", read("again"))]}, timeout_s=0.05, late_tag="read")["M1"].done is False
    gate.set()
    assert done.wait(2)
    assert order[:2] == ["M1", "write E1"]  # after the read on the wire, before the queued ones
    assert result["E1"].done  # type: ignore[union-attr]
    ex.shutdown()


def test_late_results_are_announced_and_can_be_collected_at_once() -> None:
    told: list[tuple[str, object]] = []
    ex = GroupExecutor(["g"], on_late=lambda group, key: told.append((group, key)))
    gate = threading.Event()
    ex.run({"g": [("M1", lambda: gate.wait(5) and "reading")]}, timeout_s=0.05, late_tag="read")
    assert ex.collect_late("read") == {}
    gate.set()
    deadline = time.monotonic() + 2
    while not told and time.monotonic() < deadline:
        time.sleep(0.01)
    assert told == [("g", "M1")]
    late = ex.collect_late("read")
    assert late["M1"].value == "reading" and late["M1"].late
    assert ex.collect_late("read") == {}  # handed out once
    ex.shutdown()


def test_one_call_of_urgent_jobs_at_a_time_per_group() -> None:
    ex = GroupExecutor(["g"])
    gate = threading.Event()
    calls = []
    out = ex.run({"g": [("w1", lambda: calls.append(1) or gate.wait(5))]}, timeout_s=0.05, urgent=True)
    assert not out["w1"].done
    out = ex.run({"g": [("w2", lambda: calls.append(2))]}, timeout_s=0.05, urgent=True)
    assert not out["w2"].done and calls == [1]  # skipped while the first is unfinished
    gate.set()
    ex.shutdown()
