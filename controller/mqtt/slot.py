"""The hand-over from the control loop to the MQTT sender: latest value wins, per topic.

The loop offers every topic's payload once per cycle and never waits: ``offer`` takes a lock for
a dict comparison and returns. The sender takes what changed since it last took. Between two
takes a topic that changed twice is sent once, with its latest payload: a slow or absent broker
means skipped intermediate states, never a backlog. Memory is bounded by the number of topics
(one payload each), however long the broker is away.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping


class LatestSlot:
    """Topic → latest payload, and which topics the sender has not taken since they changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, str] = {}
        self._due: set[str] = set()
        self.ready = threading.Event()  # set when something is due

    def offer(self, payloads: Mapping[str, str]) -> int:
        """Keep the payloads; those that differ from the latest become due. Returns how many."""
        with self._lock:
            changed = [topic for topic, payload in payloads.items() if self._latest.get(topic) != payload]
            for topic in changed:
                self._latest[topic] = payloads[topic]
            self._due.update(changed)
        if changed:
            self.ready.set()
        return len(changed)

    def take(self) -> dict[str, str]:
        """The due topics with their latest payloads; none is due afterwards."""
        with self._lock:
            due, self._due = self._due, set()
            return {topic: self._latest[topic] for topic in sorted(due)}

    def mark_due(self, topics: Iterable[str] | None = None) -> None:
        """Send these topics again (all when None: after a reconnect, the broker may have lost
        its retained messages)."""
        with self._lock:
            self._due.update(self._latest if topics is None else (t for t in topics if t in self._latest))
            due = bool(self._due)
        if due:
            self.ready.set()

    def latest(self, topic: str) -> str | None:
        with self._lock:
            return self._latest.get(topic)

    def __len__(self) -> int:
        with self._lock:
            return len(self._latest)
