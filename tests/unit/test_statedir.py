"""controller.records.statedir: the write probe at start and the one set-aside helper, on real files.

Permissions do not stop root (CI runs as root), so an unwritable state directory is made the way
root meets one too: a file where the directory should be. The read-only file system itself is
attacked against the real process in tests/integration/test_state_dir.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.records import statedir
from controller.records.statedir import PROBE_NAME, StateDirError, check_writable, put_back, set_aside

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_check_writable_creates_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    check_writable(state)
    assert state.is_dir() and list(state.iterdir()) == []


def test_a_file_where_the_state_directory_should_be_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    with pytest.raises(StateDirError) as caught:
        check_writable(state)
    message = str(caught.value)
    assert message.startswith(f"state_dir {state} cannot be written: ") and "\n" not in message
    assert state.read_text() == "not a directory"


def test_a_probe_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / PROBE_NAME).mkdir()  # the probe's name is taken by a directory: open() fails
    with pytest.raises(StateDirError, match="Is a directory"):
        check_writable(tmp_path)


def test_set_aside_keeps_both_of_two_bad_files_in_one_second(tmp_path: Path) -> None:
    path = tmp_path / "gridlog.sqlite3"
    path.write_text("first")
    first = set_aside(path, clock=lambda: T0)
    path.write_text("second")
    second = set_aside(path, label="foreign", clock=lambda: T0)
    path.write_text("third")
    third = set_aside(path, label="foreign", clock=lambda: T0)
    assert first.name == "gridlog.sqlite3.corrupt-20260101T000000Z" and first.read_text() == "first"
    assert second.name == "gridlog.sqlite3.foreign-20260101T000000Z" and second.read_text() == "second"
    assert third.name == "gridlog.sqlite3.foreign-20260101T000000Z-1" and third.read_text() == "third"
    assert not path.exists()


def test_set_aside_renames_the_sidecars_first_and_syncs_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gridlog.sqlite3"
    for name, text in (("gridlog.sqlite3", "db"), ("gridlog.sqlite3-wal", "wal")):
        (tmp_path / name).write_text(text)
    renames: list[str] = []
    synced: list[Path] = []
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        renames.append(Path(src).name)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(statedir, "fsync_dir", synced.append)
    kept = set_aside(path, sidecars=("-wal", "-shm"), clock=lambda: T0)
    # A -wal left behind would be replayed into the new database of the same name.
    assert renames == ["gridlog.sqlite3-wal", "gridlog.sqlite3"]
    assert kept.read_text() == "db" and Path(f"{kept}-wal").read_text() == "wal"
    assert not Path(f"{kept}-shm").exists() and synced == [tmp_path]


def test_a_taken_sidecar_name_moves_the_file_to_the_next_free_name(tmp_path: Path) -> None:
    path = tmp_path / "gridlog.sqlite3"
    path.write_text("db")
    (tmp_path / "gridlog.sqlite3-wal").write_text("wal")
    (tmp_path / "gridlog.sqlite3.corrupt-20260101T000000Z-wal").write_text("an older wal")
    kept = set_aside(path, sidecars=("-wal", "-shm"), clock=lambda: T0)
    assert kept.name == "gridlog.sqlite3.corrupt-20260101T000000Z-1"
    assert kept.read_text() == "db" and Path(f"{kept}-wal").read_text() == "wal"
    assert (tmp_path / "gridlog.sqlite3.corrupt-20260101T000000Z-wal").read_text() == "an older wal"


def test_the_rename_is_followed_by_an_fsync_of_the_directory_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behaviour, not the seam: the real ``fsync_dir`` runs and ``os.fsync`` gets the directory."""
    path = tmp_path / "variables.json"
    path.write_text("{")
    synced: list[tuple[bool, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    kept = set_aside(path, clock=lambda: T0)
    assert kept.name == "variables.json.corrupt-20260101T000000Z"
    assert synced == [(True, tmp_path.stat().st_ino)]


def test_put_back_undoes_set_aside_with_its_sidecars_and_syncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gridlog.sqlite3"
    for name, text in (("gridlog.sqlite3", "db"), ("gridlog.sqlite3-shm", "shm")):
        (tmp_path / name).write_text(text)
    kept = set_aside(path, label="replaced", sidecars=("-wal", "-shm"), clock=lambda: T0)
    synced: list[Path] = []
    monkeypatch.setattr(statedir, "fsync_dir", synced.append)
    put_back(kept, path, sidecars=("-wal", "-shm"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gridlog.sqlite3", "gridlog.sqlite3-shm"]
    assert path.read_text() == "db" and synced == [tmp_path]
