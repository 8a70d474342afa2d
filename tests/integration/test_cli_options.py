"""``gridcharge --version`` and the global options on either side of the command, as processes."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from controller.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "deploy/config.example.yaml"


def gridcharge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_version() -> None:
    res = gridcharge("--version")
    assert res.returncode == 0 and res.stdout == f"gridcharge {metadata.version('gridcharge')}\n"


def test_log_level_after_the_command(tmp_path: Path) -> None:
    out = str(tmp_path / "b.tar.gz")
    after = gridcharge("backup", out, "--config", EXAMPLE, "--log-level", "DEBUG")
    assert after.returncode == 0, after.stderr
    assert " DEBUG controller.records.backup: " in after.stderr  # the level took effect, not just parsed
    quiet = gridcharge("check-config", "--config", EXAMPLE, "--log-level", "ERROR")  # the case as reported
    assert quiet.returncode == 0 and " DEBUG " not in quiet.stderr and " INFO " not in quiet.stderr


def test_log_level_before_the_command_still_works_and_after_wins(tmp_path: Path) -> None:
    out = str(tmp_path / "b.tar.gz")
    before = gridcharge("--log-level", "DEBUG", "backup", out, "--config", EXAMPLE)
    assert before.returncode == 0 and " DEBUG controller.records.backup: " in before.stderr
    both = gridcharge("--log-level", "DEBUG", "backup", out, "--config", EXAMPLE, "--log-level", "ERROR")
    assert both.returncode == 0 and " DEBUG " not in both.stderr


def test_every_command_takes_the_global_options() -> None:
    """Checked on the parser itself: a command added later gets them without doing anything."""
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) >= {"run", "demo", "check-config", "read", "hash-password", "backup", "restore"}
    for name, command in commands.items():
        assert "--log-level" in command.format_help(), name
    with pytest.raises(SystemExit) as bad:
        parser.parse_args(["check-config", "--log-level", "LOUD"])
    assert bad.value.code == 2
