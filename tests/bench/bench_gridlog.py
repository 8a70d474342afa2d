"""Benchmark: what the grid log's safety checks cost on a large log.

A grid log of ``--rows`` rows (default 1,000,000, about 74 MB) is written by the real
``GridLog`` writer in a temporary directory (rows of a typical variable change). Then:

- **open**: ``GridLog.open()`` on that file, as at every start: the ``user_version`` and column
  checks and ``PRAGMA quick_check`` (bounded by ``gridlog_file.CHECK_BUDGET_S``, 30 s), and the
  write that proves the file writable. Also ``quick_check`` alone in MB/s, to scale it to a full
  budget (``grid_log.max_bytes``, 1 GB by default). The file was just written, so it is in the
  page cache: an SD card reads slower.
- **budget check**: ``SizeBudget.check`` as the writer runs it after every insert, with the
  budget set just above the file so that the warning estimate runs too (the most it does
  without deleting), in µs per check, ``--checks`` (200) times.
- **clear**: ``set_many(clear=True)`` on a ``VariableStore`` holding ``--clear`` (1,000)
  variables, with ``GridSignalRecorder`` attached to a started log: ms until the writer has
  every row, and rows lost (must be 0).

Run: ``.venv/bin/python tests/bench/bench_gridlog.py [--rows 1000000] [--clear 1000]``.
Prints a table, then one JSON line with the figures. Exits 1 when a row was lost or a check
failed; the times are reported, not judged.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from controller.records.gridlog import GridLog, GridSignalRecorder
from controller.records.gridlog_budget import SizeBudget
from controller.records.gridlog_file import CHECK_BUDGET_S, quick_check, used_bytes
from controller.status import EMPTY_STATUS, Status
from controller.records.variables import VariableStore

BATCH = 10_000
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class _NoLoop:
    """The recorder's view of a loop that publishes nothing (only variable rows are measured)."""

    status = EMPTY_STATUS

    def add_cycle_listener(self, callback: Any) -> None:
        return None


def build(path: Path, rows: int) -> float:
    """Write ``rows`` rows through the real writer; returns seconds taken."""
    start = time.perf_counter()
    grid_log = GridLog(path, clock=lambda: T0)
    grid_log.start()
    for first in range(0, rows, BATCH):
        grid_log.record_many([("variable", "AVAIL", i % 100, (i + 1) % 100, "lan:192.168.1.5", 3200.5)
                              for i in range(first, min(rows, first + BATCH))], wait_s=60.0)
    grid_log.stop(timeout_s=600.0)
    return time.perf_counter() - start


def measure(rows: int, checks: int, clear: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gc-bench-gridlog-") as tmp:
        path = Path(tmp) / "gridlog.sqlite3"
        build_s = build(path, rows)
        size = path.stat().st_size

        grid_log = GridLog(path, clock=lambda: T0)
        start = time.perf_counter()
        grid_log.open()
        open_s = time.perf_counter() - start
        set_aside = list(Path(tmp).glob("gridlog.sqlite3.*-*"))
        grid_log.close()

        conn = sqlite3.connect(path)
        start = time.perf_counter()
        problems = quick_check(conn, CHECK_BUDGET_S)
        check_s = time.perf_counter() - start
        budget = SizeBudget(max_bytes=used_bytes(conn) + 1)
        start = time.perf_counter()
        for _ in range(checks):
            budget.check(conn, T0)
        budget_us = (time.perf_counter() - start) / checks * 1e6
        conn.close()

        clear_ms, lost = clear_rows(Path(tmp) / "clear.sqlite3", clear)
    return {"rows": rows, "file_mb": round(size / 1e6, 1), "build_s": round(build_s, 1),
            "open_s": round(open_s, 3), "quick_check_s": round(check_s, 3),
            "quick_check_mb_per_s": round(size / 1e6 / check_s, 0) if check_s > 0 else None,
            "quick_check_ok": problems is None, "set_aside": len(set_aside),
            "budget_check_us": round(budget_us, 1), "budget_warning": budget.warning is not None,
            "clear_variables": clear, "clear_written_ms": round(clear_ms, 1), "clear_rows_lost": lost}


def clear_rows(path: Path, n: int) -> tuple[float, int]:
    """ms until a clear of ``n`` variables is written, and how many of its rows are missing."""
    grid_log = GridLog(path)
    grid_log.start()
    store = VariableStore({f"V{i:05d}": i for i in range(n)})
    GridSignalRecorder(grid_log).attach(store, _NoLoop())
    grid_log.flush(timeout_s=60.0)
    start = time.perf_counter()
    store.set_many([("ONLY", 1)], clear=True, source="bench")
    grid_log.flush(timeout_s=60.0)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    written = [e for e in grid_log.query(limit=10 * n + 10) if e.source == "bench"]
    grid_log.stop()
    return elapsed_ms, n + 1 - len(written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the log to check")
    parser.add_argument("--checks", type=int, default=200, help="budget checks to time")
    parser.add_argument("--clear", type=int, default=1000, help="variables deleted by one clear=1")
    args = parser.parse_args(argv)
    common.quiet_logging()
    r = measure(args.rows, args.checks, args.clear)
    print(f"grid log of {r['rows']} rows, {r['file_mb']} MB (written in {r['build_s']} s, page cache warm)")
    common.print_table(
        ["figure", "value"],
        [["GridLog.open() at start (checks + quick_check + write)", f"{r['open_s']} s"],
         ["PRAGMA quick_check alone", f"{r['quick_check_s']} s ({r['quick_check_mb_per_s']} MB/s)"],
         ["size-budget check after an insert (at the warning level)", f"{r['budget_check_us']} µs"],
         [f"clear=1 of {r['clear_variables']} variables, all rows written", f"{r['clear_written_ms']} ms"],
         ["rows of that clear lost", r["clear_rows_lost"]]],
    )
    common.emit_json({"bench": "gridlog", **r})
    return 1 if r["clear_rows_lost"] or not r["quick_check_ok"] or r["set_aside"] else 0


if __name__ == "__main__":
    sys.exit(main())
