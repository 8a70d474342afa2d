"""The parts of ``gridcharge restore`` a process test cannot make fail on demand: a manifest
that lies, and a rename that fails halfway through the replacement (every change undone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.records.backup_manifest import BackupError, Role, parse_manifest
from controller.records.restore import _commit, _Step

CONFIG_FILE: dict[str, Any] = {"role": "config", "name": "config.yaml", "source": "/etc/gridcharge/config.yaml",
                               "size": 10, "sha256": "0" * 64, "mode": "0640"}
GOOD: dict[str, Any] = {"format": "gridcharge-backup", "format_version": 1, "created": 1767614400.0,
                        "gridcharge": "0.1.0", "host": "pi", "config_path": "/etc/gridcharge/config.yaml",
                        "state_dir": "/var/lib/gridcharge", "files": [CONFIG_FILE]}


def test_a_good_manifest_parses() -> None:
    manifest = parse_manifest(json.dumps(GOOD).encode())
    entry = manifest.entry(Role.CONFIG)
    assert entry is not None and entry.mode == 0o640 and entry.name == "config.yaml"


@pytest.mark.parametrize(("change", "words"), [
    ({"format": "tar"}, "not a gridcharge backup"),
    ({"format_version": 2}, "a newer gridcharge"),
    ({"files": [{**CONFIG_FILE, "name": "../../etc/shadow"}]}, "must be stored as config.yaml"),
    ({"files": [{**CONFIG_FILE, "role": "shell"}]}, "unknown role"),
    ({"files": [{**CONFIG_FILE, "sha256": "abc"}]}, "not a SHA-256"),
    ({"files": []}, "has no config"),
    ({"files": [CONFIG_FILE, CONFIG_FILE]}, "config listed 2 times"),
])
def test_a_manifest_that_lies_is_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(BackupError) as caught:
        parse_manifest(json.dumps({**GOOD, **change}).encode())
    assert words in str(caught.value)


def test_a_failed_rename_undoes_every_change(tmp_path: Path) -> None:
    first, second = tmp_path / "config.yaml", tmp_path / "variables.json"
    first.write_text("old config")
    second.write_text("old variables")
    new_first = tmp_path / ".config.yaml.restore-1"
    new_first.write_text("new config")
    steps = [_Step(Role.CONFIG, first, new_first),
             _Step(Role.VARIABLES, second, tmp_path / ".variables.json.restore-1")]  # vanished: fails
    with pytest.raises(FileNotFoundError):
        _commit(steps, clock=lambda: 1767614400.0)
    assert first.read_text() == "old config" and second.read_text() == "old variables"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.yaml.restore-1", "config.yaml",
                                                           "variables.json"]  # the caller removes the temp
