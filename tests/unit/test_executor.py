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
