"""What a listener does when ``accept()`` fails: back off, and say so once per streak.

Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), ``accept()`` fails at
once, again and again, while the pending connections wait in the kernel's backlog; retrying at
once spins a core and, with a line per failure, floods the log (the previous server wrote
109,000 lines, 86 MiB, in 25 s that way: ``tests/bench/bench_listener_attack.py``, ``fd_flood``).
So each failure waits before the next try: 50 ms, doubling up to 1 s while failures follow each
other. Failures less than ``quiet_s`` (10 s) apart are one streak: its first failure logs one
error, and the first ``accept()`` that works ``quiet_s`` after the streak's last failure logs one
warning with the streak's count and length. The listener may free descriptors in between (it
closes idle connections), so single successes inside a streak do not end it.

Errors that concern only the connection being accepted (the client reset it already) are
retried at once and not logged.
"""

from __future__ import annotations

import errno
import logging

#: The client went away between its connect and our accept: nothing to back off from.
CLIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM, errno.EINTR,
                           errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                           errno.ENETUNREACH, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
#: The process or the system ran out of something; ``accept`` keeps failing until it is freed.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptBackoff:
    """The failure streak of one listener's ``accept()``; ``failed`` says how long to wait."""

    def __init__(self, logger: logging.Logger, listener: str, *, first_delay_s: float = 0.05,
                 max_delay_s: float = 1.0, quiet_s: float = 10.0) -> None:
        self._log = logger
        self._listener = listener
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.quiet_s = quiet_s
        self.failures = 0  # in the current streak; 0 = no streak
        self.streaks = 0  # streaks started so far
        self._delay_s = first_delay_s
        self._first_s = 0.0
        self._last_s = 0.0

    @staticmethod
    def is_client_error(exc: OSError) -> bool:
        return exc.errno in CLIENT_ERRNOS

    def failed(self, exc: OSError, now_s: float, shed: int = 0) -> float:
        """Note a failed ``accept()``; the delay before the next try. ``shed``: connections the
        listener closed to free descriptors (mentioned in the streak's first line)."""
        if self.failures and now_s - self._last_s >= self.quiet_s:
            self.succeeded(now_s)  # the old streak ended long ago; this failure starts a new one
        if self.failures == 0:
            self.streaks += 1
            self._first_s = now_s
            self._delay_s = self.first_delay_s
            cause = "out of file descriptors or memory" if exc.errno in RESOURCE_ERRNOS else "unexpected error"
            self._log.error("%s listener: accept() fails (%s: %s); retrying with backoff up to %.0f s%s; "
                            "logged once until it works again", self._listener, cause, exc, self.max_delay_s,
                            f", closed {shed} idle connection(s)" if shed else "")
        else:
            self._delay_s = min(self.max_delay_s, self._delay_s * 2)
        self.failures += 1
        self._last_s = now_s
        return self._delay_s

    def succeeded(self, now_s: float) -> None:
        """Note a working ``accept()``; ends a streak once ``quiet_s`` passed since its last failure."""
        if self.failures and now_s - self._last_s >= self.quiet_s:
            self._log.warning("%s listener: accept() works again after %d failed tries over %.1f s",
                              self._listener, self.failures, self._last_s - self._first_s)
            self.failures = 0
