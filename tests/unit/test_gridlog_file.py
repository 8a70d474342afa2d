"""The grid log's file against what a failing SD card leaves behind: real SQLite files in a temp
dir, damaged by writing junk over their pages, the real writer thread, an injected wall clock.

Start: a foreign or corrupt file, or a directory in its place, is kept aside and replaced
(status fault, gap row). Run time: a damaged page met by a query or by the writer is checked,
set aside and replaced at most once per failure streak, no row of the writer lost. Size budget:
the oldest rows go first, rows older than two years before any within, with a warning first.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_clock import FakeClock
from record_writers import writers

from controller.records import gridlog_budget, record_writer
from controller.records.gridlog import DAY_S, GridLog, GridLogUnavailable
from controller.records.gridlog_budget import TWO_YEARS_S
from controller.records.gridlog_file import GridLogFileError, inspect, used_bytes

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STAMP = "20260101T000000Z"


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "gridlog.sqlite3"


@pytest.fixture()
def make_log(path: Path) -> Iterator[Callable[..., GridLog]]:
    with writers(GridLog, path, FakeClock(T0)) as build:
        yield build


def fill(grid_log: GridLog, n: int, *, ts: float = T0, name: str = "x" * 40) -> None:
    for i in range(n):
        grid_log.record("variable", name, i, i + 1, "lan:10.0.0.1", 1000.0, ts=ts + i)
    grid_log.flush()


def page_size(path: Path) -> int:
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    return 65536 if size == 1 else size


def root_page(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0])
    finally:
        conn.close()


def checkpoint(path: Path) -> None:
    """Move every page out of the WAL into the main file, where the junk will be written."""
    conn = sqlite3.connect(path)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        assert busy == 0
    finally:
        conn.close()


def damage(path: Path, page: int) -> None:
    """What a failing card does to one page: junk where the b-tree page was."""
    size = page_size(path)
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(b"\xa5" * size)


def aside(path: Path, label: str = "corrupt") -> Path:
    return path.with_name(f"{path.name}.{label}-{STAMP}")


def database(path: Path, *statements: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


#: What SQLite says about a damaged b-tree page: quick_check lists it, or (older SQLite) refuses.
DAMAGED = ("btreeInitPage() returns error code 11", "malformed")


def assert_replaced(grid_log: GridLog, path: Path, label: str, *why: str) -> None:
    """The old file is kept aside, the new log starts with a gap row saying so, the status says
    so; ``why``: one of these is the reason given."""
    kept = aside(path, label)
    assert kept.exists()
    grid_log.record("input", "RSE1", None, True, "start", None, ts=T0 + 1)
    grid_log.flush()
    gap, event = grid_log.query()
    assert gap.kind == "gap" and gap.new["set_aside"] == kept.name
    assert any(w in gap.new["why"] for w in why), gap.new
    assert event.name == "RSE1"
    [line] = [f for f in grid_log.faults() if "kept as" in f]
    assert f"was {label}" in line and any(w in line for w in why) and kept.name in line
    assert "\n" not in line


# --------------------------------------------------------------------------- at start


FOREIGN = [
    ("newer user_version", ("CREATE TABLE events(id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL,"
                            " name TEXT NOT NULL, old TEXT, new TEXT, source TEXT NOT NULL, grid_power_w REAL)",
                            "PRAGMA user_version=2"), "user_version 2, this version writes 1"),
    ("other columns", ("CREATE TABLE events(id INTEGER PRIMARY KEY, at TEXT, what TEXT)", "PRAGMA user_version=1"),
     "table events has the columns (id INTEGER, at TEXT, what TEXT), not ours"),
    ("another program", ("CREATE TABLE cats(name TEXT)",), "user_version 0, this version writes 1"),
]


@pytest.mark.parametrize("statements, why", [f[1:] for f in FOREIGN], ids=[f[0] for f in FOREIGN])
def test_a_foreign_database_is_kept_aside(make_log: Callable[..., GridLog], path: Path,
                                          caplog: pytest.LogCaptureFixture, statements: tuple[str, ...],
                                          why: str) -> None:
    database(path, *statements)
    original = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="controller.records.gridlog"):
        grid_log = make_log()
    assert aside(path, "foreign").read_bytes() == original
    assert "GRID LOG UNREADABLE" in caplog.text and why in caplog.text
    assert_replaced(grid_log, path, "foreign", why)


def test_a_directory_in_place_of_the_file_is_kept_aside(make_log: Callable[..., GridLog], path: Path) -> None:
    path.mkdir(parents=True)
    (path / "inside").write_text("kept")
    grid_log = make_log()
    assert (aside(path) / "inside").read_text() == "kept"
    assert_replaced(grid_log, path, "corrupt", "not a regular file but a directory")


def test_a_damaged_events_table_is_found_at_start(make_log: Callable[..., GridLog], path: Path) -> None:
    first = make_log()
    fill(first, 2000)
    first.stop()
    damage(path, root_page(path, "events"))  # the probe of old (count via the ts index) passed this
    damaged = path.read_bytes()
    grid_log = make_log()
    assert aside(path).read_bytes() == damaged  # kept byte for byte
    assert_replaced(grid_log, path, "corrupt", *DAMAGED)


def test_a_check_that_runs_out_of_time_is_a_warning(make_log: Callable[..., GridLog], path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    first = make_log()
    fill(first, 3000)
    first.stop()
    with caplog.at_level(logging.WARNING, logger="controller.records.gridlog"):
        grid_log = make_log(check_budget_s=0.0)
    assert "quick_check did not finish within 0 s" in caplog.text
    assert len(grid_log.query(limit=10_000)) == 3000  # the file is used, not set aside
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_file_that_cannot_be_written_is_not_set_aside(path: Path) -> None:
    database(path, "PRAGMA user_version=0")
    (path.parent / "gridlog.sqlite3-wal").mkdir()  # SQLite cannot open its WAL: a new file would fail too
    with pytest.raises(GridLogFileError, match="gridlog.sqlite3 cannot be used: "):
        GridLog(path, clock=FakeClock(T0)).open()
    assert path.is_file() and not list(path.parent.glob("*.corrupt-*"))


# --------------------------------------------------------------------------- at run time


def test_a_query_that_meets_a_damaged_page_gets_a_new_log_soon(make_log: Callable[..., GridLog],
                                                               path: Path) -> None:
    grid_log = make_log()
    fill(grid_log, 2000)
    checkpoint(path)
    damage(path, root_page(path, "events"))
    damage(path, root_page(path, "events_ts"))
    with pytest.raises(GridLogUnavailable, match="damaged .*malformed.*kept aside"):
        grid_log.query()  # the writer has the pages in its cache; a fresh reader does not
    deadline = time.monotonic() + 5
    while not aside(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    grid_log.flush()
    assert_replaced(grid_log, path, "corrupt", *DAMAGED)


def test_the_writer_meeting_a_damaged_page_loses_no_row(make_log: Callable[..., GridLog], path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    grid_log = make_log()
    fill(grid_log, 2000)
    checkpoint(path)
    damage(path, root_page(path, "events"))
    conn = sqlite3.connect(path)  # another writer: the log's connection must re-read its pages
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with caplog.at_level(logging.ERROR, logger="controller.records.gridlog"):
        for i in range(5):
            grid_log.record("input", f"after{i}", None, i, "input", None, ts=T0 + 10_000 + i)
        grid_log.flush()
    assert "malformed (writing)" in caplog.text  # met by the insert itself
    assert inspect(aside(path)) is not None  # the damaged file, kept
    events = grid_log.query()
    assert [e.kind for e in events] == ["gap"] + ["input"] * 5
    assert [e.name for e in events[1:]] == [f"after{i}" for i in range(5)]
    assert any("was corrupt" in line for line in grid_log.faults())
    assert grid_log.faults() == tuple(f for f in grid_log.faults() if "fails since" not in f)


def test_a_file_damaged_again_and_again_is_set_aside_once_per_streak(
        make_log: Callable[..., GridLog], path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_writer, "RETRY_MIN_S", 0.01)

    def always_malformed(self: GridLog, conn: sqlite3.Connection, rows: list) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    grid_log = make_log()
    monkeypatch.setattr(GridLog, "_insert", always_malformed)
    grid_log.record("input", "RSE1", None, True, "input", None)
    for _ in range(6):  # six attempts of the writer, each a flush
        grid_log.flush()
    kept = list(path.parent.glob("gridlog.sqlite3.corrupt-*"))
    assert len(kept) == 1  # one set-aside, then plain retries with backoff, no loop of new files
    assert any("fails since" in line and "malformed" in line for line in grid_log.faults())
    monkeypatch.undo()
    grid_log.flush()
    grid_log.flush()
    assert sorted(e.name for e in grid_log.query()) == ["RSE1", "gridlog"]  # the kept row, a gap row
    assert not any("fails since" in line for line in grid_log.faults())


def test_failing_writes_are_a_fault_until_one_works(make_log: Callable[..., GridLog], path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_writer, "RETRY_MIN_S", 0.01)
    failures = [1, 2]
    real_insert = GridLog._insert

    def full_disk(self: GridLog, conn: sqlite3.Connection, rows: list) -> None:
        if failures:
            failures.pop()
            raise sqlite3.OperationalError("database or disk is full")
        real_insert(self, conn, rows)

    monkeypatch.setattr(GridLog, "_insert", full_disk)
    grid_log = make_log()
    grid_log.record("input", "RSE1", None, True, "input", None)
    grid_log.flush()
    [line] = grid_log.faults()
    assert line.startswith(f"grid log: writing to {path} fails since 2026-01-01T00:00:00Z (database or disk is full)")
    grid_log.flush()
    grid_log.flush()
    assert grid_log.faults() == () and [e.name for e in grid_log.query()] == ["RSE1"]


# --------------------------------------------------------------------------- size budget


def test_over_budget_the_oldest_rows_beyond_two_years_go_first_then_loudly_recent_ones(
        make_log: Callable[..., GridLog], path: Path, caplog: pytest.LogCaptureFixture) -> None:
    budget = 300_000
    grid_log = make_log(max_bytes=budget)
    old_ts = T0 - TWO_YEARS_S - 20 * DAY_S  # kept by the daily prune (761 days), beyond two years
    fill(grid_log, 600, ts=old_ts, name="old" + "x" * 100)
    fill(grid_log, 800, ts=T0 - 300 * DAY_S, name="recent" + "x" * 100)
    assert grid_log.faults() == ()  # under budget, the two-year part well under 80 %

    with caplog.at_level(logging.WARNING, logger="controller.records.gridlog"):
        fill(grid_log, 700, ts=T0 - 200 * DAY_S, name="recent" + "x" * 100)
    names = [e.name[:3] for e in grid_log.query(limit=10_000)]
    old_left = names.count("old")
    assert 0 < old_left < 600 and names.count("rec") == 1500  # only rows beyond two years went
    assert [e.ts for e in grid_log.query(limit=1)] == [old_ts + 600 - old_left]  # the oldest first
    [warning] = grid_log.faults()  # and a warning before any row within two years has to go
    assert "last two years of records take about" in warning and "raise grid_log.max_bytes" in warning
    assert "WITHIN THE LAST TWO YEARS" not in caplog.text

    with caplog.at_level(logging.WARNING, logger="controller.records.gridlog"):
        fill(grid_log, 600, ts=T0 - 100 * DAY_S, name="recent" + "x" * 100)
    events = grid_log.query(limit=10_000)
    assert not [e for e in events if e.name.startswith("old")]
    assert events[0].ts > T0 - 300 * DAY_S  # the oldest recent rows went, in order
    assert "GRID LOG OVER BUDGET: deleted" in caplog.text and "WITHIN THE LAST TWO YEARS" in caplog.text
    assert any("within the last two years deleted since start" in f for f in grid_log.faults())
    conn = sqlite3.connect(path)
    assert used_bytes(conn) <= budget
    conn.close()


def test_the_budget_check_is_cheap(make_log: Callable[..., GridLog], path: Path) -> None:
    grid_log = make_log()
    fill(grid_log, 5000)
    conn = sqlite3.connect(path)
    budget = gridlog_budget.SizeBudget(max_bytes=used_bytes(conn) + 1)  # at the warning level
    start = time.perf_counter()
    for _ in range(100):
        budget.check(conn, T0)
    per_check_s = (time.perf_counter() - start) / 100
    conn.close()
    assert budget.warning is not None
    assert per_check_s < 0.005, per_check_s  # index lookups, no scan
