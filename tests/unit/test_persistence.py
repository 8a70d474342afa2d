"""Unit tests for controller.records.persistence: atomic saves, corrupt files kept aside, the start set,
and the coalescing saver (an injected clock drives ``poll()``; one test uses the real thread)."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from fake_clock import FakeClock

from controller.records import persistence
from controller.records.persistence import (SavedVariables, VariableFile, VariableSaver,
                                    initial_variables, parse_saved)
from controller.records.variables import Expr, VariableStore, same_exprs

CONFIG: dict[str, Expr] = {"AVAIL": 100, "TARIF": 0}
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Crash(BaseException):
    """A power cut at this point: nothing after it runs (not even ``except Exception``)."""


class SpyFile(VariableFile):
    """The real file, plus a record of every save and an optional injected failure."""

    def __init__(self, state_dir: Path, **kwargs: object) -> None:
        super().__init__(state_dir, **kwargs)  # type: ignore[arg-type]
        self.saved: list[SavedVariables] = []
        self.threads: list[str] = []
        self.fail_with: OSError | None = None
        self.event = threading.Event()

    def save(self, saved: SavedVariables) -> None:
        self.threads.append(threading.current_thread().name)
        if self.fail_with is not None:
            raise self.fail_with
        super().save(saved)
        self.saved.append(saved)
        self.event.set()


def saved(vars: Mapping[str, Expr], deleted: tuple[str, ...] = (), generation: int = 1) -> SavedVariables:
    return SavedVariables(dict(vars), deleted, generation, T0)


def write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def valid_json(**changes: object) -> str:
    data: dict[str, object] = {"format": 1, "saved_at": T0, "generation": 3,
                               "vars": {"AVAIL": 50, "LIM": "55000 * AVAIL / 100"}, "deleted": []}
    data.update(changes)
    return json.dumps(data)


# --------------------------------------------------------------------------- VariableFile


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    file = VariableFile(tmp_path)
    content = saved({"AVAIL": 50, "F": 2.5, "B": True, "LIM": "55000 * AVAIL / 100"}, ("TARIF",), 7)
    file.save(content)
    assert stat.S_IMODE(os.stat(file.path).st_mode) == 0o600
    assert not file.tmp_path.exists()
    on_disk = json.loads(file.path.read_text())
    assert on_disk == {"format": 1, "saved_at": T0, "generation": 7, "deleted": ["TARIF"],
                       "vars": {"AVAIL": 50, "F": 2.5, "B": True, "LIM": "55000 * AVAIL / 100"}}
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None
    assert same_exprs(loaded.vars, content.vars)
    assert (loaded.deleted, loaded.generation, loaded.saved_at) == (("TARIF",), 7, T0)


def test_load_absent_file_is_none(tmp_path: Path) -> None:
    file = VariableFile(tmp_path / "not-yet")
    assert file.load() is None and file.loaded is None


def test_save_creates_the_state_dir_and_fixes_an_old_tmp_mode(tmp_path: Path) -> None:
    file = VariableFile(tmp_path / "state")
    file.state_dir.mkdir()
    write(file.tmp_path, "junk")
    os.chmod(file.tmp_path, 0o666)
    file.save(saved({"A": 1}))
    assert stat.S_IMODE(os.stat(file.path).st_mode) == 0o600
    deeper = VariableFile(tmp_path / "deeper" / "state")
    deeper.save(saved({"A": 1}))
    assert deeper.load() is not None


@pytest.mark.parametrize("crash_in", ["write", "fsync", "replace"])
def test_crash_before_the_rename_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     crash_in: str) -> None:
    file = VariableFile(tmp_path)
    file.save(saved({"AVAIL": 100}, generation=1))
    old_bytes = file.path.read_bytes()

    def half_write(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise Crash()

    def crash(*args: object) -> None:
        raise Crash()

    target = {"write": (persistence, "_write_all", half_write), "fsync": (os, "fsync", crash),
              "replace": (os, "replace", crash)}[crash_in]
    monkeypatch.setattr(*target)
    with pytest.raises(Crash):
        file.save(saved({"AVAIL": 0, "NEW": 1}, generation=2))
    monkeypatch.undo()
    assert file.path.read_bytes() == old_bytes
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and dict(loaded.vars) == {"AVAIL": 100} and loaded.generation == 1


def test_a_torn_tmp_file_from_a_power_cut_is_ignored(tmp_path: Path) -> None:
    file = VariableFile(tmp_path)
    file.save(saved({"AVAIL": 100}))
    write(file.tmp_path, '{"format": 1, "vars": {"AV')  # what a cut during the write leaves
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and dict(loaded.vars) == {"AVAIL": 100}
    file.save(saved({"AVAIL": 1}))  # the next save overwrites it
    assert not file.tmp_path.exists()


def test_failed_save_raises_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    write(blocker, "")
    with pytest.raises(OSError):
        VariableFile(blocker / "state").save(saved({"A": 1}))


CORRUPT = [
    ("empty", b"", "not JSON"),
    ("truncated", b'{"format": 1, "vars": {"AV', "not JSON"),
    ("not utf-8", b"\xff\xfe{}", "not UTF-8"),
    ("not an object", b"[1, 2]", "not a JSON object"),
    ("no format", json.dumps({"vars": {}}).encode(), "unknown format None"),
    ("newer format", valid_json(format=2).encode(), "unknown format 2"),
    ("bad generation", valid_json(generation=-1).encode(), "generation -1"),
    ("bool generation", valid_json(generation=True).encode(), "generation True"),
    ("bad saved_at", valid_json(saved_at="yesterday").encode(), "saved_at 'yesterday'"),
    ("vars a list", valid_json(vars=[1]).encode(), "vars is not an object"),
    ("bad name", valid_json(vars={"1x": 1}).encode(), "variable '1x': invalid name"),
    ("keyword", valid_json(vars={"lambda": 1}).encode(), "a Python keyword"),
    ("bad formula", valid_json(vars={"A": "1 +"}).encode(), "variable 'A': formula does not parse"),
    ("injection", valid_json(vars={"A": "__import__('os')"}).encode(), "variable 'A'"),
    ("null expr", valid_json(vars={"A": None}).encode(), "expr must be a number"),
    ("cycle", valid_json(vars={"A": "B", "B": "A"}).encode(), "dependency cycle: A -> B -> A"),
    ("NaN", b'{"format": 1, "saved_at": 0, "generation": 0, "vars": {"A": NaN}, "deleted": []}',
     "NaN is not JSON"),
    ("deleted not names", valid_json(deleted=[1]).encode(), "deleted is not a list of names"),
    ("digits of another script", valid_json(vars={"A": "\u0661"}).encode(), "variable 'A': digit"),
    ("deadly nesting", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
]


@pytest.mark.parametrize("content, why", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_file_is_kept_aside_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           content: bytes, why: str) -> None:
    file = VariableFile(tmp_path, clock=FakeClock(T0 + 3661.5))
    write(file.path, content)
    with caplog.at_level(logging.ERROR, logger="controller.records.persistence"):
        assert file.load() is None
    aside = tmp_path / "variables.json.corrupt-20260101T010101Z"
    assert aside.read_bytes() == content  # kept, byte for byte
    assert not file.path.exists() and file.loaded is None
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(file.path) in record.getMessage() and str(aside) in record.getMessage()
    assert why in record.getMessage()


def test_a_saved_number_beyond_1e15_drops_that_variable_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file saved before numbers were bounded: the grid signals in it must survive."""
    file = VariableFile(tmp_path)
    write(file.path, valid_json(vars={"AVAIL": 30, "BIG": 1e18, "HUGE": 10**40, "F": "AVAIL * 1e16",
                                      "LIM": "55000 * AVAIL / 100"}))
    with caplog.at_level(logging.ERROR, logger="controller.records.persistence"):
        loaded = file.load()
    assert loaded is not None and file.path.exists()
    assert dict(loaded.vars) == {"AVAIL": 30, "LIM": "55000 * AVAIL / 100"}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "saved variable BIG dropped: number too large: 1e+18 (at most ±1e15)" in messages[0]
    assert "saved variable F dropped" in messages[2]
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    file = VariableFile(tmp_path, clock=FakeClock(T0))
    write(file.path, "first")
    file.load()
    write(file.path, "second")
    file.load()
    assert (tmp_path / "variables.json.corrupt-20260101T000000Z").read_text() == "first"
    assert (tmp_path / "variables.json.corrupt-20260101T000000Z-1").read_text() == "second"


def test_unreadable_file_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = VariableFile(tmp_path, clock=FakeClock(T0))
    file.path.mkdir()  # exists, cannot be read as a file (permissions do not stop root)
    with caplog.at_level(logging.ERROR):
        assert file.load() is None
    assert (tmp_path / "variables.json.corrupt-20260101T000000Z").is_dir()
    assert "cannot be read" in caplog.text


def test_corrupt_file_that_cannot_be_moved_aside_stops_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = VariableFile(tmp_path)
    write(file.path, "junk")

    def refuse(*args: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PermissionError):
        file.load()
    monkeypatch.undo()
    assert file.path.read_text() == "junk"


def test_parse_saved_normalizes_like_the_store() -> None:
    parsed = parse_saved(valid_json(vars={"A": "42", "B": 1e3, "C": False}))
    assert same_exprs(parsed.vars, {"A": 42, "B": 1000.0, "C": False})


# --------------------------------------------------------------------------- initial_variables


@pytest.mark.parametrize("config, saved_vars, deleted, expected", [
    # no file: the config
    (CONFIG, None, (), CONFIG),
    # saved values win; API variables come back
    (CONFIG, {"AVAIL": 50, "TARIF": 0, "PWR": 70}, (), {"AVAIL": 50, "TARIF": 0, "PWR": 70}),
    # a variable added to the config after the save is seeded
    ({**CONFIG, "NEW": 5}, {"AVAIL": 50, "TARIF": 1}, (), {"AVAIL": 50, "TARIF": 1, "NEW": 5}),
    # deleted by clear=1: not seeded again
    (CONFIG, {"PWR": 70}, ("AVAIL", "TARIF"), {"PWR": 70}),
    # deleted, then set again: the saved value
    (CONFIG, {"AVAIL": 10}, ("TARIF",), {"AVAIL": 10}),
    # an empty saved set after clear=1 with nothing
    (CONFIG, {}, ("AVAIL", "TARIF"), {}),
    # an empty config
    ({}, {"A": 1}, ("X",), {"A": 1}),
    # a type change is the saved value
    ({"AVAIL": 100}, {"AVAIL": 100.0}, (), {"AVAIL": 100.0}),
])
def test_initial_variables(config: dict, saved_vars: dict | None, deleted: tuple,
                           expected: dict) -> None:
    content = None if saved_vars is None else saved(saved_vars, deleted)
    result = initial_variables(config, content)
    assert same_exprs(result, expected)
    VariableStore(result)  # always a valid start set


def test_initial_variables_survives_a_config_that_changed(caplog: pytest.LogCaptureFixture) -> None:
    content = saved({"E9": 1, "A": "B", "KEEP": 2})
    with caplog.at_level(logging.ERROR):
        result = initial_variables({"B": "A + 1", "C": 3}, content, reserved={"E9"})
    assert same_exprs(result, {"A": "B", "KEEP": 2})  # E9 is now a charger; B would close a cycle
    assert "E9 is now a device" in caplog.text and "B, C form a dependency cycle" in caplog.text
    VariableStore(result, reserved={"E9"})


def test_initial_variables_logs_a_config_value_the_file_overrides(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="controller.records.persistence"):
        initial_variables({"AVAIL": 100}, saved({"AVAIL": 50}))
    assert "variable AVAIL: saved value 50 wins over the config's 100" in caplog.text


# --------------------------------------------------------------------------- VariableSaver


def make_saver(tmp_path: Path, config: Mapping[str, Expr] = CONFIG, *, interval_s: float = 1.0
               ) -> tuple[VariableStore, VariableSaver, SpyFile, FakeClock]:
    """What the service does at start: load, build the store, build the saver."""
    file = SpyFile(tmp_path)
    store = VariableStore(initial_variables(config, file.load()))
    clock = FakeClock()
    saver = VariableSaver(file, store, min_interval_s=interval_s, clock=clock, wall_clock=lambda: T0)
    return store, saver, file, clock


def test_nothing_is_saved_without_a_change(tmp_path: Path) -> None:
    _, saver, file, _ = make_saver(tmp_path)
    assert saver.poll() is None
    saver.stop()
    assert file.saved == [] and not file.path.exists()


def test_burst_of_100_sets_is_two_saves_and_the_last_holds_the_final_state(tmp_path: Path) -> None:
    store, saver, file, clock = make_saver(tmp_path)
    for i in range(100):
        store.set_many([("AVAIL", i), ("LIM", f"55000 * AVAIL / 100 + {i}")], source="lan:1.2.3.4")
        saver.poll()
        clock.advance(0.005)  # the burst lasts 0.5 s
    assert len(file.saved) == 1 and file.saved[0].generation == 1  # the leading edge, at once
    assert saver.poll() == pytest.approx(0.5)  # the trailing save is due 1 s after the first
    clock.advance(1001.0 - clock())  # the first save was at 1000.0
    assert saver.poll() == 0.0
    assert saver.poll() is None
    assert len(file.saved) == 2 and saver.saves == 2
    final = store.snapshot()
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and loaded.generation == 100 == final.generation
    assert same_exprs(loaded.vars, final.persistent)
    assert dict(loaded.vars) == {"AVAIL": 99, "TARIF": 0, "LIM": "55000 * AVAIL / 100 + 99"}


def test_isolated_changes_are_saved_at_once(tmp_path: Path) -> None:
    store, saver, file, clock = make_saver(tmp_path)
    for i in range(3):
        store.set_many([("AVAIL", i)])
        assert saver.poll() == 0.0
        clock.advance(1.0)
    assert [s.generation for s in file.saved] == [1, 2, 3]


def test_tmp_sets_are_not_saved(tmp_path: Path) -> None:
    store, saver, file, clock = make_saver(tmp_path)
    store.set_many([("AVAIL", 0), ("X", 1)], persist=False, source="smgw:10.0.0.7")
    store.set_many([("Y", 2)], clear=True, persist=False)
    assert saver.poll() is None and file.saved == []
    store.set_many([("TARIF", 1)])  # a saved set while tmp values are in force
    assert saver.poll() == 0.0
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and dict(loaded.vars) == {"AVAIL": 100, "TARIF": 1}


def test_a_set_that_changes_nothing_is_not_saved(tmp_path: Path) -> None:
    store, saver, file, _ = make_saver(tmp_path)
    store.set_many([("AVAIL", 100)])  # the value it already has (an SMGW repeating its signal)
    assert saver.poll() is None and file.saved == []


def test_clear_and_the_deleted_list_across_restarts(tmp_path: Path) -> None:
    # Run 1: clear=1 deletes the config variables too.
    store, saver, file, _ = make_saver(tmp_path)
    store.set_many([("PWR", 70)], clear=True)
    saver.stop()
    assert file.saved[-1].deleted == ("AVAIL", "TARIF")
    # Run 2: they are not seeded again; setting one removes it from "deleted".
    store, saver, file, clock = make_saver(tmp_path)
    assert dict(store.snapshot().exprs) == {"PWR": 70}
    store.set_many([("AVAIL", 30)])
    saver.stop()
    assert file.saved[-1].deleted == ("TARIF",)
    # Run 3: a config that gained a variable seeds it; the deleted one stays deleted.
    store, saver, file, _ = make_saver(tmp_path, {**CONFIG, "NEW": 1})
    assert dict(store.snapshot().exprs) == {"PWR": 70, "AVAIL": 30, "NEW": 1}
    store.set_many([("X", 1)], clear=True)
    saver.stop()
    assert file.saved[-1].deleted == ("AVAIL", "NEW", "PWR", "TARIF")
    # Run 4: only X.
    store, _, _, _ = make_saver(tmp_path, {**CONFIG, "NEW": 1})
    assert dict(store.snapshot().exprs) == {"X": 1}


def test_failed_saves_are_logged_once_per_streak_and_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, saver, file, clock = make_saver(tmp_path)
    file.fail_with = OSError(28, "No space left on device")
    with caplog.at_level(logging.DEBUG, logger="controller.records.persistence"):
        store.set_many([("AVAIL", 1)])
        assert saver.poll() == 0.0
        assert saver.poll() == pytest.approx(1.0)  # still pending: retried after the interval
        for _ in range(3):
            clock.advance(1.0)
            saver.poll()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
        file.fail_with = None
        clock.advance(1.0)
        assert saver.poll() == 0.0
    assert "works again after 4 failed attempt(s)" in caplog.text
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and loaded.vars["AVAIL"] == 1
    assert saver.poll() is None


def test_a_failing_save_is_visible_until_a_save_works(tmp_path: Path) -> None:
    store, saver, file, clock = make_saver(tmp_path)
    assert not saver.failing and saver.faults() == ()
    file.tmp_path.mkdir()  # a real failure, also for root: the tmp file cannot be opened
    store.set_many([("AVAIL", 1)])
    saver.poll()
    assert saver.failing
    [line] = saver.faults()
    assert line.startswith(f"state_dir: saving the variables to {file.path} fails since ")
    assert "Is a directory" in line and "not saved" in line
    file.tmp_path.rmdir()
    clock.advance(1.0)
    assert saver.poll() == 0.0  # the pending save is retried and works
    assert not saver.failing and saver.faults() == ()
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and loaded.vars["AVAIL"] == 1


def test_a_corrupt_file_kept_aside_leaves_a_status_line(tmp_path: Path) -> None:
    file = VariableFile(tmp_path, clock=FakeClock(T0))
    write(file.path, "{")
    file.load()
    assert file.set_aside_note == ("state_dir: variables.json was unusable (not JSON: Expecting property "
                                   "name enclosed in double quotes: line 1 column 2 (char 1)); kept as "
                                   "variables.json.corrupt-20260101T000000Z; started from the config's "
                                   "variables")


def test_a_failure_at_stop_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, saver, file, _ = make_saver(tmp_path)
    store.set_many([("AVAIL", 1)])
    saver.poll()
    store.set_many([("AVAIL", 2)])
    file.fail_with = OSError(30, "Read-only file system")
    with caplog.at_level(logging.ERROR):
        saver.stop()
    assert "failed at stop" in caplog.text


def test_saver_thread_saves_off_the_callers_thread_and_stop_flushes(tmp_path: Path) -> None:
    file = SpyFile(tmp_path)
    store = VariableStore(initial_variables(CONFIG, file.load()))
    saver = VariableSaver(file, store, min_interval_s=60.0)  # real clocks, a long interval
    saver.start()
    try:
        store.set_many([("AVAIL", 1)])
        assert file.event.wait(5.0)  # the leading edge: saved at once, not after 60 s
        store.set_many([("AVAIL", 2)])
        store.set_many([("AVAIL", 3)], persist=False)
    finally:
        saver.stop()  # the pending save (AVAIL=2) is written now, not in 60 s
    assert set(file.threads) == {"variable-saver"}
    assert [dict(s.vars)["AVAIL"] for s in file.saved] == [1, 2]
    loaded = VariableFile(tmp_path).load()
    assert loaded is not None and loaded.vars["AVAIL"] == 2
    saver.stop()  # idempotent


def test_saver_thread_waits_for_the_interval(tmp_path: Path) -> None:
    file = SpyFile(tmp_path)
    store = VariableStore(CONFIG)
    saver = VariableSaver(file, store, min_interval_s=0.2)
    saver.start()
    try:
        store.set_many([("AVAIL", 1)])
        assert file.event.wait(5.0)
        file.event.clear()
        store.set_many([("AVAIL", 2)])
        store.set_many([("AVAIL", 3)])
        assert file.event.wait(5.0)  # the trailing save, one interval after the first
    finally:
        saver.stop()
    assert [dict(s.vars)["AVAIL"] for s in file.saved] == [1, 3]


def test_listener_is_cheap_and_never_writes(tmp_path: Path) -> None:
    """The store listener only flags the save: set_many never waits for the disk."""
    store, saver, file, _ = make_saver(tmp_path)
    for i in range(50):
        store.set_many([("AVAIL", i)])
    assert file.saved == [] and file.threads == []
    saver.stop()
    assert len(file.saved) == 1 and file.saved[0].generation == 50
