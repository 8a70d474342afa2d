"""A serial null-modem cable in pure Python: two pseudo-terminals joined back to back.

RTU tests and the demo need a serial line with a device path at *both* ends (pymodbus opens a
path), and CI should not need socat. One ``openpty()`` is not enough: its
master end has no path. So two pty pairs are opened and a thread copies bytes between the two
master ends; ``port_a`` and ``port_b`` are the slave paths, one for the client, one for the
server. Note: a Linux pty refuses even/odd parity, so RTU over this cable runs 8N1.
"""

from __future__ import annotations

import logging
import os
import pty
import select
import threading
import tty

log = logging.getLogger(__name__)


class PtyNullModem:
    """Bytes written to ``port_a`` come out of ``port_b`` and back. Close with ``close()``."""

    def __init__(self) -> None:
        self._master_a, slave_a = pty.openpty()
        self._master_b, slave_b = pty.openpty()
        for fd in (slave_a, slave_b):
            tty.setraw(fd)  # no echo, no CR/LF translation
        for fd in (self._master_a, self._master_b):
            os.set_blocking(fd, False)  # never let the pump block on a full, unread line
        self.port_a: str = os.ttyname(slave_a)
        self.port_b: str = os.ttyname(slave_b)
        self._slaves = (slave_a, slave_b)  # held open: a master reads EIO once no slave fd is open
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="pty-null-modem", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        peer = {self._master_a: self._master_b, self._master_b: self._master_a}
        while True:
            readable, _, _ = select.select([self._master_a, self._master_b, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            for fd in readable:
                try:
                    data = os.read(fd, 4096)
                    os.write(peer[fd], data)
                except (BlockingIOError, OSError) as exc:
                    # Like a real line nobody listens to: the bytes are lost.
                    log.debug("null modem dropped data: %s", exc)

    def close(self) -> None:
        """Stop the pump and close every descriptor; idempotent."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(2)
        for fd in (self._master_a, self._master_b, *self._slaves, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> PtyNullModem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
