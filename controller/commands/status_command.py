"""``gridcharge status [--watch]``: the live view of the running service, from its HTTP API.

Once: one ``get_dev_info``, one frame printed, exit 0. ``--watch``: a new frame every
``interval_s``, redrawn in place on a terminal (``controller.commands.live_screen``), until Ctrl-C.

A service that cannot be reached, or that refuses the login, is one line on stderr and exit
``EXIT_SERVICE`` (7) before anything is drawn. Once a watch is running, a service that stops
answering (a restart, say) does not end it: the last frame stays, with a line saying since when
there has been no answer, and the watch goes on asking. A refused login ends it, since asking
again cannot help (and would count against the address's failed-login throttle).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from controller.commands.live_screen import LiveScreen, PipeAwareConsole
from controller.commands.status_client import StatusClient, StatusUnavailable
from controller.commands.status_view import render

log = logging.getLogger(__name__)

EXIT_SERVICE = 7  # (6 is run's "site not configured") the service cannot be reached or refused the login
MIN_INTERVAL_S = 0.2


def show_once(client: StatusClient, console: Console) -> None:
    """Print one frame of the service's status. Raises StatusUnavailable."""
    console.print(render(client.fetch(), source=client.base_url))


def watch(client: StatusClient, console: Console, *, interval_s: float = 1.0,
          sleep: Callable[[float], None] = time.sleep, frames: int | None = None) -> None:
    """Redraw the status every ``interval_s`` until interrupted, the reader of a pipe has gone,
    or ``frames`` frames have been shown.

    Raises StatusUnavailable when the first answer cannot be had or a login is refused.
    """
    interval_s = max(MIN_INTERVAL_S, interval_s)
    info = client.fetch()
    lost_since: float | None = None
    lost_why = ""
    footer = Text(f"every {interval_s:g} s from {client.url.split('?')[0]}; Ctrl-C stops", style="dim")
    shown = 0
    with LiveScreen(console) as screen:
        while True:
            notes: list[Text | str] = [footer]
            if lost_since is not None:
                stamp = time.strftime("%H:%M:%S", time.localtime(lost_since))
                notes.append(Text(f"no answer since {stamp}, still asking: {lost_why}", style="bold white on red"))
            screen.show(render(info, source=client.base_url, notes=notes))
            shown += 1
            if frames is not None and shown >= frames:
                return
            if isinstance(console, PipeAwareConsole) and console.reader_gone:  # `status --watch | head`
                return
            sleep(interval_s)
            try:
                info = client.fetch()
                lost_since = None
            except StatusUnavailable as exc:
                if exc.login_refused:
                    raise
                if lost_since is None:
                    lost_since = time.time()
                lost_why = str(exc)
                log.debug("status: %s", exc)
