"""Where the live view goes: redrawn in place on a terminal, frame after frame elsewhere.

On a terminal a ``rich`` ``Live`` display redraws the view in place (cursor up, rewrite), so
the scrollback does not grow however long it runs; lines printed with ``note`` appear above it
and scroll as usual. Log records that would go to the same terminal are printed the same way
while the view is up: written straight to the terminal they would land inside the view and
break the redrawing.

Anywhere else (a pipe, a file, CI) there is nothing to redraw: every frame ``show`` is given is
printed as plain text (no colours, no cursor movement), and notes are plain lines. The caller
decides how often to show a frame there (``redraws`` tells which case this is).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text


class PipeAwareConsole(Console):
    """A console that falls silent when the reader of its pipe goes away (``... | head``).

    rich's own answer to a closed pipe is ``SystemExit(1)`` from inside ``print``: raised in the
    control loop's thread, it would skip the loop's last cycle, which writes the fail-safe
    currents. Here the console goes quiet instead, points the stream at /dev/null (so that the
    interpreter's last flush is quiet too) and says so in ``reader_gone``; the caller stops.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reader_gone = False

    def on_broken_pipe(self) -> None:
        self.quiet = True
        self.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.file.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file: nothing left to silence
            pass


def console_for(out: TextIO) -> PipeAwareConsole:
    """A console for ``out``: the process's own terminal, or a terminal given as a file (tests).

    rich measures the terminal on the process's standard streams; for any other terminal its
    size is taken from that terminal here.
    """
    if out is sys.stdout:
        return PipeAwareConsole()
    try:
        size = os.get_terminal_size(out.fileno()) if out.isatty() else None
    except (AttributeError, OSError, ValueError):
        size = None
    if size is None:
        return PipeAwareConsole(file=out)
    return PipeAwareConsole(file=out, width=size.columns, height=size.lines, force_terminal=True)


class _ConsoleLogHandler(logging.Handler):
    """Prints log records through the screen, above the live view."""

    def __init__(self, screen: LiveScreen, like: logging.Handler) -> None:
        super().__init__(like.level)
        self.screen = screen
        self.setFormatter(like.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.screen.note(Text(self.format(record)))
        except Exception:
            self.handleError(record)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    try:
        return isinstance(handler, logging.StreamHandler) and stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


class LiveScreen:
    """The live view on ``console``; a context manager (``with LiveScreen(console) as screen``).

    Any thread may call ``show`` and ``note`` (the demo draws from the control loop, log records
    come from every thread). One lock makes each of them whole: rich computes where to move the
    cursor and writes the lines in two steps, and two threads between those steps would leave
    pieces of old frames on the screen.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.RLock()
        self.redraws = console.is_terminal and not console.is_dumb_terminal
        self._live: Live | None = None
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []

    def __enter__(self) -> LiveScreen:
        if self.redraws:
            # A frame taller than the terminal is cut ("ellipsis"): printed whole, it would scroll
            # and the next redraw could no longer reach its top.
            self._live = Live(console=self.console, auto_refresh=False, redirect_stdout=False,
                              redirect_stderr=False, vertical_overflow="ellipsis")
            self._live.start()
            self._route_logs()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Leave the last frame on the screen and give the logs their terminal back. Idempotent."""
        with self._lock:
            live, self._live = self._live, None
            if live is not None:
                live.stop()
        root = logging.getLogger()
        for original, stand_in in self._swapped:
            root.removeHandler(stand_in)
            root.addHandler(original)
        self._swapped = []

    def show(self, frame: RenderableType) -> None:
        """Redraw the view with ``frame`` (terminal), or print it (anything else)."""
        with self._lock:
            if self._live is not None:
                self._live.update(frame, refresh=True)
            elif not self.redraws:
                self.console.print(frame)
                self.console.print()

    def note(self, line: str | Text) -> None:
        """A line that stays: above the view on a terminal, in the flow of lines elsewhere."""
        with self._lock:
            self.console.print(line, soft_wrap=True, highlight=False, markup=False)

    def _route_logs(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if _writes_to_terminal(handler):
                stand_in = _ConsoleLogHandler(self, handler)
                root.removeHandler(handler)
                root.addHandler(stand_in)
                self._swapped.append((handler, stand_in))
