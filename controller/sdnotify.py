"""systemd's notify protocol: one datagram to ``$NOTIFY_SOCKET`` per message.

``READY=1`` after the first complete control cycle, ``WATCHDOG=1`` from the control loop itself
after each complete cycle (so a hung loop is restarted even though the process lives on), and
``STOPPING=1`` on shutdown. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. A failed
send is logged once and never stops the loop. The protocol is tiny, so no library.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address
        self._failed = False
        self.watchdog_s = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one message (e.g. ``"READY=1\\nSTATUS=..."``); True when it was sent."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            if not self._failed:
                log.error("sd_notify to %r failed: %s", self._address, exc)
            self._failed = True
            return False
        if self._failed:
            log.info("sd_notify works again")
        self._failed = False
        return True


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WatchdogSec=`` (systemd's advice), when the watchdog is meant for this process."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
