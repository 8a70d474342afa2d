"""Run device I/O in parallel, one worker thread per bus.

Each group (a bus, or any other channel to devices) gets one worker thread, so requests on one
bus are serialised by construction while different buses run at the same time. The caller waits
with a deadline: a group whose previous job is still stuck (a dead RS485 line, a TCP host that
does not answer) gets no new job until it finishes, so a dead bus never stalls the others and
its queue never grows. A slow bus (many devices on a 9600 baud line) may finish after the
deadline: with a ``late_tag`` those results are kept and handed out by the next call, so a bus
that needs longer than one deadline still delivers every reading, just a cycle later.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class JobResult(Generic[T]):
    """What became of one job: a value, an exception, or neither (not run / not finished in time)."""

    value: T | None = None
    error: BaseException | None = None
    done: bool = False
    late: bool = False  # finished after the deadline of an earlier call


class GroupExecutor:
    """One single-thread worker per group; groups run in parallel."""

    def __init__(self, groups: Sequence[str], *, name: str = "bus") -> None:
        self._pools = {
            g: cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{g}") for g in groups
        }
        self._busy: dict[str, cf.Future[Any]] = {}
        self._late: dict[tuple[str, Hashable], JobResult[Any]] = {}
        self._lock = threading.Lock()

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self._pools)

    def busy(self, group: str) -> bool:
        """True while the group's last batch has not finished (its bus is stuck)."""
        with self._lock:
            fut = self._busy.get(group)
        return fut is not None and not fut.done()

    def run(
        self,
        jobs: Mapping[str, Sequence[tuple[K, Callable[[], T]]]],
        timeout_s: float,
        *,
        late_tag: str | None = None,
    ) -> dict[K, JobResult[T]]:
        """Run each group's jobs in order on its worker; wait at most ``timeout_s`` for all.

        ``jobs`` maps group → [(key, fn), ...], keys unique across groups. Returns key → JobResult for every key; jobs of a
        busy group or not finished by the deadline come back with ``done=False``, unless an
        earlier call with the same ``late_tag`` finished that key after its deadline: then that
        result comes back, marked ``late``.
        """
        results: dict[K, JobResult[T]] = {}
        futures: list[cf.Future[Any]] = []
        lock = threading.Lock()
        closed = False

        def batch(items: Sequence[tuple[K, Callable[[], T]]]) -> None:
            for key, fn in items:
                try:
                    res: JobResult[T] = JobResult(value=fn(), done=True)
                except Exception as exc:  # a device fault, never the caller's crash
                    res = JobResult(error=exc, done=True)
                with lock:
                    if not closed:
                        results[key] = res
                    elif late_tag is not None:
                        with self._lock:
                            self._late[(late_tag, key)] = res

        for group, items in jobs.items():
            if not items:
                continue
            if self.busy(group):
                log.debug("group %s still busy: skipping %d jobs", group, len(items))
                continue
            fut = self._pools[group].submit(batch, items)
            with self._lock:
                self._busy[group] = fut
            futures.append(fut)
        if futures:
            cf.wait(futures, timeout=max(0.0, timeout_s))
        with lock:
            closed = True
            out = dict(results)
        with self._lock:
            for items in jobs.values():
                for key, _ in items:
                    late = self._late.pop((late_tag, key), None) if late_tag is not None else None
                    if key not in out:
                        out[key] = JobResult(late.value, late.error, True, True) if late else JobResult()
        return out

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
