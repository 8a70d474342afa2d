"""How much each HTTP listener may take: deadlines, connection caps, workers and sizes.

The numbers and why (docs/api.md, "Listener limits", has the operator's view):

- Every phase of a connection has a deadline for the *whole* phase, not per received byte, so a
  client trickling one byte a second cannot hold a connection longer than a silent one: the TLS
  handshake ``handshake_s``, the first request head ``head_s`` after that, a keep-alive
  connection's next request ``idle_s`` to start and then ``head_s`` to complete, the body
  ``body_s``, writing the answer ``write_s``.
- Waiting connections cost a coroutine and a descriptor, never a thread: only a complete
  request reaches one of the ``workers`` threads that run the Flask app, so a few workers are
  enough however many clients are slow.
- ``max_per_address`` keeps one device from taking the whole listener; ``max_connections``
  bounds the descriptors a listener can hold. When a listener is full, a new connection replaces
  the oldest one that is not being answered (see ``web.gate``), so a flood from many addresses
  delays a real client by at most one connect.
- The caps of both listeners together are fitted to the process's descriptor limit
  (``RLIMIT_NOFILE``) minus what is open at start minus ``DEVICE_RESERVE``, so that Modbus TCP
  reconnects, serial ports and SQLite always find a free descriptor.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

#: Descriptors kept free for everything that is not an HTTP connection: Modbus TCP clients
#: (one per TCP device or gateway, reconnecting), serial ports, the SQLite grid log and its
#: journal, state files, logging, the event loops' own descriptors.
DEVICE_RESERVE = 256
#: A listener squeezed by a low descriptor limit still accepts this many connections.
MIN_CONNECTIONS = 8


@dataclass(frozen=True)
class ListenerLimits:
    """The limits of one listener; see the module docstring."""

    max_connections: int = 512
    max_per_address: int = 16
    handshake_s: float = 3.0
    head_s: float = 5.0
    idle_s: float = 10.0
    body_s: float = 10.0
    write_s: float = 10.0
    linger_s: float = 2.0  # after an error answer, read (and drop) what the client still sends
    linger_bytes: int = 1024 * 1024
    workers: int = 8
    max_head_bytes: int = 32 * 1024
    max_body_bytes: int = 64 * 1024
    shutdown_s: float = 2.0  # on stop, requests being answered get this long to finish


LAN_LIMITS = ListenerLimits()
SMGW_LIMITS = ListenerLimits(max_connections=64, max_per_address=8)


def open_descriptors() -> int:
    """Descriptors open in this process now (Linux ``/proc/self/fd``; 0 where it is missing)."""
    try:
        return max(0, len(os.listdir("/proc/self/fd")) - 1)  # minus the one listdir itself holds
    except OSError:
        return 0


def descriptor_budget(reserve: int = DEVICE_RESERVE) -> int | None:
    """Descriptors the listeners may hold: the soft ``RLIMIT_NOFILE`` minus those open now minus
    ``reserve``; None when there is no limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - open_descriptors() - reserve


def fit_to_budget(wanted: dict[str, ListenerLimits], budget: int | None) -> dict[str, ListenerLimits]:
    """Scale the ``max_connections`` of all listeners down (in proportion) until they fit
    ``budget``; never below ``MIN_CONNECTIONS`` each. Logs a warning when it had to."""
    total = sum(limits.max_connections for limits in wanted.values())
    if budget is None or total <= budget:
        return dict(wanted)
    fitted = {
        name: replace(limits, max_connections=max(MIN_CONNECTIONS, budget * limits.max_connections // total),
                      max_per_address=min(limits.max_per_address,
                                          max(MIN_CONNECTIONS, budget * limits.max_connections // total)))
        for name, limits in wanted.items()
    }
    log.warning("only %d file descriptors are free for HTTP connections (RLIMIT_NOFILE %d, %d kept for "
                "devices): connection caps lowered to %s; raise LimitNOFILE in the systemd unit",
                max(budget, 0), resource.getrlimit(resource.RLIMIT_NOFILE)[0], DEVICE_RESERVE,
                ", ".join(f"{name} {limits.max_connections}" for name, limits in fitted.items()))
    return fitted
