"""A command in a real terminal: a tmux pane of fixed size, read back as the screen shows it.

tmux is a full terminal emulator: ``screen()`` is what a person would see, and
``history_size()`` is how many lines have scrolled off the top. A view that redraws in place
leaves the history alone however many frames it draws; one that prints frame after frame
pushes every frame into it. Each pane has its own tmux server (its own socket), so tests do
not see each other or a tmux the developer runs.

Missing tmux skips the test, except under CI, where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def need_tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        if IN_CI:
            pytest.fail("tmux is missing: .ci/run must install it")
        pytest.skip("tmux is not installed")
    return path


class TmuxPane:
    """``command`` running in a ``width`` x ``height`` pane; ``close()`` ends it and its server.

    The pane stays when the command ends (``remain-on-exit``), so that its last screen and its
    exit status (``exit_status()``) can still be read. No shell sits between tmux and the
    command: a Ctrl-C (``send("C-c")``) reaches the command alone.
    """

    def __init__(self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
                 width: int = 100, height: int = 40) -> None:
        self.tmux = need_tmux()
        self._dir = tempfile.mkdtemp(prefix="gc-tmux-")  # a socket path must stay short
        self.socket = os.path.join(self._dir, "sock")
        conf = os.path.join(self._dir, "tmux.conf")
        with open(conf, "w") as f:
            f.write("set -g remain-on-exit on\nset -g history-limit 5000\n")
        environ = {**os.environ, **(env or {}), "TERM": "xterm-256color"}
        for name in ("TMUX", "COLUMNS", "LINES"):  # the size is the pane's, as in a real terminal
            environ.pop(name, None)
        subprocess.run([self.tmux, "-S", self.socket, "-f", conf, "new-session", "-d", "-s", "t",
                        "-x", str(width), "-y", str(height), "-c", str(cwd), *command],
                       check=True, env=environ, timeout=10)

    def _tmux(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-S", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def screen(self) -> str:
        """The visible screen, line by line (trailing spaces removed)."""
        return "\n".join(line.rstrip() for line in self._tmux("capture-pane", "-p", "-t", "t").splitlines())

    def history_size(self) -> int:
        """Lines scrolled off the top of the pane since it started."""
        return int(self._tmux("display-message", "-p", "-t", "t", "#{history_size}").strip())

    def everything(self) -> str:
        """Scrollback and screen together."""
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-")

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended, None while it runs."""
        answer = self._tmux("display-message", "-p", "-t", "t", "#{pane_dead}:#{pane_dead_status}")
        dead, _, status = answer.strip().partition(":")
        return int(status) if dead == "1" else None

    def wait_for_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (status := self.exit_status()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"still running after {timeout_s} s; the screen:\n{self.screen()}")
            time.sleep(0.1)
        return status

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, what: str) -> str:
        """The first screen for which ``predicate`` holds; fails with the last screen after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"no screen with {what} within {timeout_s} s; the last one:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            subprocess.run([self.tmux, "-S", self.socket, "kill-server"], capture_output=True, timeout=10)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
