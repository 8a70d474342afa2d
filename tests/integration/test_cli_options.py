"""``gridcharge --version`` and the global options on either side of the command, as processes."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

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
    assert " DEBUG controller.backup: " in after.stderr  # the level took effect, not just parsed
    quiet = gridcharge("backup", out, "--log-level", "ERROR", "--config", EXAMPLE)
    assert quiet.returncode == 0 and " DEBUG " not in quiet.stderr
    assert gridcharge("check-config", "--config", EXAMPLE, "--log-level", "WARNING").returncode == 0


def test_log_level_before_the_command_still_works_and_after_wins(tmp_path: Path) -> None:
    out = str(tmp_path / "b.tar.gz")
    before = gridcharge("--log-level", "DEBUG", "backup", out, "--config", EXAMPLE)
    assert before.returncode == 0 and " DEBUG controller.backup: " in before.stderr
    both = gridcharge("--log-level", "DEBUG", "backup", out, "--config", EXAMPLE, "--log-level", "ERROR")
    assert both.returncode == 0 and " DEBUG " not in both.stderr


def test_every_command_takes_the_global_options() -> None:
    for command in ("run", "demo", "check-config", "read", "hash-password", "backup", "restore"):
        res = gridcharge(command, "--help")
        assert res.returncode == 0 and "--log-level" in res.stdout, command
    bad = gridcharge("check-config", "--log-level", "LOUD")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
