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
