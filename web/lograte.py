"""A log line per key and per minute at most: what an attacker does must not fill the disk.

The listeners log what they refuse (a connection over a cap, a failed TLS handshake, a request
that missed its deadline) because an operator needs to see it. But each of those is one packet
for an attacker, so each key (the kind of refusal and the client's address) gets one line per
``window_s``; the next line after a quiet spell says how many were left out meanwhile. The table
of keys is bounded (the least recently logged key is forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_KEYS = 1024


class RateLimitedLog:
    """``log(key, level, msg, *args)``: the first line of ``key`` in each window, the rest counted.

    Not thread-safe: each listener uses its own from its event-loop thread.
    """

    def __init__(self, logger: logging.Logger, *, window_s: float = DEFAULT_WINDOW_S,
                 max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()  # key -> (logged at, suppressed)

    def log(self, key: Hashable, level: int, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log unless ``key`` was logged less than ``window_s`` ago; True when it was written."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self._window_s:
            self._keys[key] = (entry[0], entry[1] + 1)
            return False
        suppressed = entry[1] if entry is not None else 0
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        if suppressed:
            msg += " (%d more like it in the last %.0f s not logged)"
            args = (*args, suppressed, self._window_s)
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True
