"""Which connections a listener takes: a cap per client address and a cap in total.

Every accepted connection gets a ``Slot`` that says what it is doing (``Phase``). A new
connection is refused when its address already holds ``max_per_address`` slots. When the
listener holds ``max_connections``, the newcomer may take the place of a waiting connection
(handshake, waiting for or reading a request, lingering after an error) of the address that
holds the most slots, provided that address holds at least two more than the newcomer's: the
longest-waiting one of that address is closed. So a listener filled by many silent or slow
clients still takes a client with few connections (a real one) at once, while an attacker's
reconnects are refused cheaply (closed right after ``accept``) instead of churning through
each other. Connections whose request the app is running, or whose answer is being written,
are never closed for a newcomer.

Addresses are compared as text, IPv4-mapped IPv6 addresses as their IPv4 form. The gate is used
from one listener's event-loop thread only, so it needs no lock.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    WAITING = "waiting"  # for a request head (a new or a keep-alive connection)
    READING = "reading"  # a request head or body has started to arrive
    ANSWERING = "answering"  # the app runs the request, or the answer is being written
    CLOSING = "closing"  # an error was answered; what the client still sends is read and dropped


EVICTABLE = frozenset({Phase.HANDSHAKE, Phase.WAITING, Phase.READING, Phase.CLOSING})


class Refusal(enum.Enum):
    PER_ADDRESS = "per_address"
    FULL = "full"


def client_key(address: str) -> str:
    """The address a cap counts: IPv4-mapped IPv6 (``::ffff:1.2.3.4``) as IPv4."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


@dataclass(eq=False)
class Slot:
    """One admitted connection. ``drop`` (set by the listener) closes it when it is evicted."""

    address: str
    opened_s: float
    phase: Phase = Phase.HANDSHAKE
    since_s: float = 0.0  # when the current phase began
    drop: Callable[[], None] = field(default=lambda: None, repr=False)

    def enter(self, phase: Phase, now_s: float) -> None:
        self.phase = phase
        self.since_s = now_s


@dataclass(frozen=True)
class Admission:
    """The outcome of ``ConnectionGate.admit``: a slot, or why not; and whom it replaced."""

    slot: Slot | None
    refusal: Refusal | None = None
    evicted: Slot | None = None


class ConnectionGate:
    """The caps of one listener; see the module docstring."""

    def __init__(self, max_connections: int, max_per_address: int) -> None:
        if max_connections < 1 or max_per_address < 1:
            raise ValueError("connection caps must be at least 1")
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._count = 0
        self._by_address: dict[str, list[Slot]] = {}  # in admission order
        self._by_count: dict[int, set[str]] = {}  # n -> the addresses holding n slots
        self.refused: dict[Refusal, int] = {r: 0 for r in Refusal}
        self.evictions = 0

    def __len__(self) -> int:
        return self._count

    def count(self, address: str) -> int:
        return len(self._by_address.get(client_key(address), ()))

    def slots(self) -> Iterator[Slot]:
        return iter([slot for slots in self._by_address.values() for slot in slots])

    def admit(self, address: str, now_s: float) -> Admission:
        """A slot for a new connection from ``address``; when full, in place of a waiting one
        (see the module docstring), which is released here and its ``drop`` called."""
        key = client_key(address)
        mine = len(self._by_address.get(key, ()))
        if mine >= self.max_per_address:
            self.refused[Refusal.PER_ADDRESS] += 1
            return Admission(None, Refusal.PER_ADDRESS)
        evicted = None
        if self._count >= self.max_connections:
            evicted = self._victim(mine)
            if evicted is None:
                self.refused[Refusal.FULL] += 1
                return Admission(None, Refusal.FULL)
            self.evict(evicted)
        slot = Slot(key, now_s, Phase.HANDSHAKE, now_s)
        self._add(slot)
        return Admission(slot, None, evicted)

    def _victim(self, newcomer_holds: int) -> Slot | None:
        """The longest-waiting evictable slot of the most loaded address that holds at least two
        more slots than the newcomer's; None when there is none."""
        for held in range(self.max_per_address, newcomer_holds + 1, -1):
            for address in self._by_count.get(held, ()):
                waiting = [s for s in self._by_address[address] if s.phase in EVICTABLE]
                if waiting:
                    return min(waiting, key=lambda s: s.since_s)
        return None

    def oldest_waiting(self) -> Slot | None:
        """The slot that has been in an evictable phase the longest, if any."""
        waiting = [s for slots in self._by_address.values() for s in slots if s.phase in EVICTABLE]
        return min(waiting, key=lambda s: s.since_s, default=None)

    def evict(self, slot: Slot) -> None:
        """Release ``slot`` and close its connection."""
        if self.release(slot):
            self.evictions += 1
            slot.drop()

    def shed(self, n: int) -> int:
        """Evict up to ``n`` waiting connections (the longest-waiting first); how many went."""
        done = 0
        while done < n:
            victim = self.oldest_waiting()
            if victim is None:
                break
            self.evict(victim)
            done += 1
        return done

    def release(self, slot: Slot) -> bool:
        """Forget ``slot`` (its connection ended); False when it was already released."""
        slots = self._by_address.get(slot.address)
        if slots is None or slot not in slots:
            return False
        self._move(slot.address, len(slots), len(slots) - 1)
        slots.remove(slot)
        if not slots:
            del self._by_address[slot.address]
        self._count -= 1
        return True

    def _add(self, slot: Slot) -> None:
        slots = self._by_address.setdefault(slot.address, [])
        self._move(slot.address, len(slots), len(slots) + 1)
        slots.append(slot)
        self._count += 1

    def _move(self, address: str, old: int, new: int) -> None:
        if old:
            holders = self._by_count[old]
            holders.discard(address)
            if not holders:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, set()).add(address)
