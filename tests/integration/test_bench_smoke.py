"""Smoke test of the benchmarks in ``tests/bench/``: each runs end to end with tiny parameters.

The benchmarks are scripts that print figures (``make bench``), not timed tests, so nothing here
checks a performance target: only that each script still runs against the real controller and
simulators, exits 0 and ends with its JSON line carrying sane figures. The scripts run in
parallel (they mostly wait on 1 s control cycles; ``bench_api`` loads the CPU for its 2 s of
``get_cm_vars``; ``bench_gridlog`` writes a small log, ``bench_backend_outbox`` a small outbox;
``bench_backend`` starts ``gridcharge run`` three times, its OCPP backend reachable, down, slow),
so the whole module takes about 15 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"
TIMEOUT_S = 90.0

TINY: dict[str, list[str]] = {
    "cycle_cost": ["--chargers", "3", "--seconds", "2", "--home-seconds", "2"],
    "memory": ["--chargers", "3", "--wait-s", "2"],
    "reaction": ["--chargers", "3", "--changes", "3"],
    "rtu": ["--seconds", "2"],
    "api": ["--chargers", "3", "--seconds", "2", "--changes", "3"],
    "variables": ["--counts", "20", "--long-counts", "5"],
    "listener_attack": ["--seconds", "1", "--scenarios", "baseline,stalled_tls", "--settle", "0.2"],
    "gridlog": ["--rows", "20000", "--checks", "20", "--clear", "200"],
    "ocpp": ["--boxes", "3", "--window-s", "3", "--changes", "3"],
    "backend_outbox": ["--transactions", "5", "--meters", "2", "--pending", "50"],
    "metrics": ["--seconds", "1", "--renders", "3", "--chargers", "10", "--observes", "1000"],
    "status_page": ["--browsers", "1", "--seconds", "2"],
    "backend": ["--sites", "tcp", "--chargers", "2", "--seconds", "2", "--steady-s", "0.5", "--delay-s", "0.2",
                "--scenarios", "socks5_1s,down_1s,slow_1s"],
}


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Start all the benchmarks at once, collect their output."""
    procs = {
        name: subprocess.Popen([sys.executable, str(BENCH / f"bench_{name}.py"), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for name, args in TINY.items()
    }
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=TIMEOUT_S)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def figures(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    lines = run.stdout.strip().splitlines()
    assert len(lines) >= 3, run.stdout  # a table, then the JSON line
    return json.loads(lines[-1])


def test_cycle_cost_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["cycle_cost"])
    assert data["bench"] == "cycle_cost"
    assert [r["chargers"] for r in data["results"]] == [3, 2]
    for r in data["results"]:
        assert r["cycles"] >= 1 and r["cpu_s"] > 0 and r["failed_cycles"] == 0


def test_memory_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["memory"])
    assert data["bench"] == "memory"
    for r in data["results"]:
        assert r["exit_code"] == 0 and r["failsafe_left"]
        assert r["chargers_written"] == r["chargers"]
        assert 5 < r["rss_mib"] < 1000


def test_reaction_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["reaction"])
    assert data["bench"] == "reaction"
    assert data["changes"] == 3 and data["wrong_limits"] == []
    assert 0 < data["reaction_s"]["p50"] <= data["reaction_s"]["max"] < 5


def test_rtu_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["rtu"])
    assert data["bench"] == "rtu"
    assert data["cycles"] >= 1 and data["errors"] == 0
    assert data["transactions_per_cycle"]["mean"] >= 3  # at least one read per device
    assert data["wire_ms_per_cycle"]["mean"] > 0
    assert 0 < data["busy_fraction"]["mean"] < 1


def test_api_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["api"])
    assert data["bench"] == "api"
    load = data["load"]
    assert load["requests"] > 0 and load["non_200"] == 0 and load["errors"] == 0
    assert load["connects"] == load["clients"] == 4  # keep-alive: one connection per client
    assert data["jitter_ms"]["n"] >= 1 and 0 <= data["jitter_ms"]["max"] < 1000
    assert data["set"]["changes"] == 3 and data["set"]["wrong_limits"] == []
    assert 0 < data["set"]["written_ms"]["p50"] <= data["set"]["written_ms"]["max"] < 5000
    assert data["failed_cycles"] == 0


def test_variables_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["variables"])
    assert data["bench"] == "variables"
    assert [(r["kind"], r["count"]) for r in data["results"]] == [("constant", 20), ("typical", 20), ("long", 5)]
    for r in data["results"]:
        assert r["evaluation_errors"] == 0 and r["set_s"] >= 0 and r["evaluate_ms"] > 0


def test_listener_attack_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["listener_attack"])
    assert data["bench"] == "listener_attack"
    assert [r["scenario"] for r in data["results"]] == ["baseline", "stalled_tls"]
    for r in data["results"]:
        assert set(r["probes"]) == {"lan", "smgw", "ka_smgw"}
        assert all(p["n"] >= 1 for p in r["probes"].values())
        assert r["loop"]["failed_cycles"] == 0 and r["fds"]["max_open"] > 0
    assert data["results"][1]["attacks"][0]["connects"] >= 20


def test_gridlog_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["gridlog"])
    assert data["bench"] == "gridlog" and data["rows"] == 20000
    assert data["quick_check_ok"] and data["set_aside"] == 0 and data["budget_warning"]
    assert data["clear_rows_lost"] == 0 and data["clear_written_ms"] > 0
    assert 0 < data["open_s"] < 30 and data["budget_check_us"] > 0


def test_ocpp_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["ocpp"])
    assert data["bench"] == "ocpp" and data["boxes"] == 3
    assert data["exit_code"] == 0 and data["failed_cycles"] == 0 and data["wrong_limits"] == []
    assert data["changes"] == 3 and 0 < data["ack_s"]["p50"] <= data["ack_s"]["max"] < 10
    assert data["cycles_in_window"] >= 1 and data["cpu_percent"] > 0 and 5 < data["rss_mib"] < 1000
    assert 0.5 <= data["meter_values_per_box_s"] <= 1.5  # MeterValues at the 1 s cycle


def test_backend_outbox_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["backend_outbox"])
    assert data["bench"] == "backend_outbox" and data["in_order"]
    for kinds in data["calls_ms"].values():
        assert {kind: s["n"] for kind, s in kinds.items()} == {"start": 5, "meter": 10, "stop": 5, "first": 21,
                                                               "delivered": 20}
        assert all(0 < s["p50"] <= s["max"] < 5000 for s in kinds.values())
    size = data["size"]
    assert size["pending"] == 50 and size["counted"] == size["reopened"] == 51
    assert 0 < size["closed_bytes"] <= size["open_bytes"] and size["bytes_per_message"] > size["payload_bytes"] / 2


def test_metrics_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["metrics"])
    assert data["bench"] == "metrics"
    home, many = data["home"], data["many"]
    assert home["render"]["samples"] > 50 and home["render"]["cpu_ms"]["p50"] > 0
    assert home["http"]["scrapes"] >= 1 and home["http"]["round_trip_ms"]["p50"] > 0
    assert home["loop"]["failed_cycles"] == 0
    assert many["chargers"] == 10 and many["render"]["samples"] > home["render"]["samples"]
    assert data["observe"]["us_per_cycle"] > 0


def test_status_page_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["status_page"])
    assert data["bench"] == "status_page" and data["browsers"] == 1 and data["exit_code"] == 0
    for window in (data["without"], data["with"]):
        assert window["cycles"] >= 1 and window["failed_cycles"] == 0 and window["cpu_percent"] > 0
    assert data["without"]["page_requests_per_s"] == 0 and data["with"]["page_requests_per_s"] > 0


def test_backend_runs(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    data = figures(runs["backend"])
    assert data["bench"] == "backend"
    by = {r["scenario"]: r for r in data["results"]}
    assert list(by) == ["socks5_1s", "down_1s", "slow_1s"]
    for r in by.values():
        assert r["exit_code"] == 0 and r["failed_cycles"] == 0 and r["limits_written"] == r["chargers"] == 2
        assert r["cycles_sampled"] >= 1 and 0 < r["cycle_ms"]["p50"] <= r["cycle_ms"]["max"] < 1000
        assert r["cpu_percent"] >= 0 and 5 < r["rss_mib"] < 1000  # a 2 s window: a few clock ticks
    assert by["socks5_1s"]["backend_state"] == "2 connected" and by["socks5_1s"]["meter_values_per_s"] > 0
    assert by["down_1s"]["delivered_per_s"] == 0 and by["down_1s"]["outbox_pending_end"] > 0
    assert by["slow_1s"]["backend_state"] == "2 connected" and by["slow_1s"]["delivered_per_s"] > 0
