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
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))

# Runs the command with Ctrl-C at its default (the wrapper itself ignores it), then writes the
# exit status (-N for a signal) to the file named first.
_WRAPPER = """
import os, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
code = subprocess.call(sys.argv[2:], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(code))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


def need_tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        if IN_CI:
            pytest.fail("tmux is missing: .ci/run must install it")
        pytest.skip("tmux is not installed")
    return path


class TmuxPane:
    """``command`` running in a ``width`` x ``height`` pane; ``close()`` ends it and its server.

    The pane stays when the command ends (``remain-on-exit``), so that its last screen can still
    be read. The exit status comes from a small wrapper that writes it to a file: tmux itself may
    leave an ended command a zombie for a while before it marks the pane dead. The wrapper
    ignores Ctrl-C (``send("C-c")``), which reaches the command as it would in a terminal.
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
        self._status_file = os.path.join(self._dir, "exit-status")
        wrapped = [sys.executable, "-c", _WRAPPER, self._status_file, *command]
        subprocess.run([self.tmux, "-S", self.socket, "-f", conf, "new-session", "-d", "-s", "t",
                        "-x", str(width), "-y", str(height), "-c", str(cwd), *wrapped],
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
        """The command's exit status once it has ended (-N: killed by signal N), None while it runs."""
        try:
            with open(self._status_file) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return int(text)

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
