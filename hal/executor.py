"""Run device I/O in parallel, one worker thread per bus, writes ahead of reads.

Each group (a bus, or any other channel to devices) gets one worker thread, so requests on one
bus are serialised by construction while different buses run at the same time. The caller waits
with a deadline:

* A group whose earlier jobs are still running or waiting (a dead RS485 line, a TCP host that
  does not answer, a slow line that needs longer than the deadline) gets no new *reads* until
  they are done, so a dead bus never stalls the others and its queue never grows.
* *Urgent* jobs (limit writes) are queued even on a busy group, ahead of every read that has not
  started yet: a decrease waits at most for the one request on the wire, not for a whole round
  of a slow line. A group takes one call's urgent jobs at a time (a second call's are skipped
  while the first's are unfinished).
* A job that finishes after its call's deadline is kept when the call gave a ``late_tag``: the
  next call with that tag hands it out for that key, or :meth:`GroupExecutor.collect_late`
  takes it at once; ``on_late`` (if given) is told, so the caller can act on a late reading
  without waiting for its next call. A slow bus thus delivers every reading, just later.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

_URGENT, _NORMAL = 0, 1
INTERRUPT_POLL_S = 0.01  # how soon a wait notices its interrupt


@dataclass(frozen=True)
class JobResult(Generic[T]):
    """What became of one job: a value, an exception, or neither (not run / not finished in time)."""

    value: T | None = None
    error: BaseException | None = None
    done: bool = False
    late: bool = False  # finished after the deadline of an earlier call


class _Worker:
    """One thread that runs jobs by priority (urgent first), in submission order within one."""

    def __init__(self, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, cf.Future[Any] | None, Callable[[], Any] | None]] = \
            queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[[], Any]) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        self._queue.put((priority, next(self._seq), future, fn))
        return future

    def _run(self) -> None:
        while True:
            _, _, future, fn = self._queue.get()
            if future is None or fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - a job's failure is its result
                future.set_exception(exc)

    def stop(self) -> None:
        self._queue.put((-1, -1, None, None))


class GroupExecutor:
    """One worker per group; groups run in parallel. See the module docstring."""

    def __init__(self, groups: Sequence[str], *, name: str = "bus",
                 on_late: Callable[[str, Hashable], None] | None = None) -> None:
        self._workers = {g: _Worker(f"{name}-{g}") for g in groups}
        self._pending: dict[str, list[cf.Future[Any]]] = {g: [] for g in groups}
        self._urgent: dict[str, list[cf.Future[Any]]] = {g: [] for g in groups}
        self._late: dict[tuple[str, Hashable], JobResult[Any]] = {}
        self._lock = threading.Lock()
        self.on_late = on_late

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self._workers)

    def busy(self, group: str) -> bool:
        """True while any job given to the group earlier has not finished (its bus is stuck or slow)."""
        with self._lock:
            return any(not f.done() for f in self._pending[group])

    def run(
        self,
        jobs: Mapping[str, Sequence[tuple[K, Callable[[], T]]]],
        timeout_s: float,
        *,
        late_tag: str | None = None,
        urgent: bool = False,
        interrupt: threading.Event | None = None,
    ) -> dict[K, JobResult[T]]:
        """Run each group's jobs in order on its worker; wait at most ``timeout_s`` for all.

        ``jobs`` maps group → [(key, fn), ...], keys unique across groups. Returns key →
        JobResult for every key; jobs of a busy group (see the module docstring for ``urgent``)
        or not finished by the deadline come back with ``done=False``, unless an earlier call
        with the same ``late_tag`` finished that key after its deadline: then that result comes
        back, marked ``late``. ``interrupt``: stop waiting as soon as it is set (the jobs go on;
        with a ``late_tag`` their results come later).
        """
        batch = self.submit(jobs, late_tag=late_tag, urgent=urgent)
        batch.wait(timeout_s, interrupt)
        return batch.results()

    def submit(self, jobs: Mapping[str, Sequence[tuple[K, Callable[[], T]]]], *, late_tag: str | None = None,
               urgent: bool = False) -> Batch[K, T]:
        """Start the jobs (see :meth:`run`); wait for them with the returned :class:`Batch`."""
        batch: Batch[K, T] = Batch(self, jobs, late_tag)
        for group, items in jobs.items():
            if not items:
                continue
            with self._lock:
                self._pending[group] = [f for f in self._pending[group] if not f.done()]
                self._urgent[group] = [f for f in self._urgent[group] if not f.done()]
                blocked = self._urgent[group] if urgent else self._pending[group]
                if blocked:
                    log.debug("group %s still busy: skipping %d jobs", group, len(items))
                    continue
                for key, fn in items:
                    future = self._workers[group].submit(_URGENT if urgent else _NORMAL, fn)
                    self._pending[group].append(future)
                    if urgent:
                        self._urgent[group].append(future)
                    batch.futures[key] = future
                    if late_tag is not None:
                        future.add_done_callback(self._keep_if_late(late_tag, group, key, batch.closed))
        return batch

    def _take(self, batch: Batch[K, T]) -> dict[K, JobResult[T]]:
        out: dict[K, JobResult[T]] = {}
        tag = batch.late_tag
        with self._lock:
            for items in batch.jobs.values():
                for key, _ in items:
                    late = self._late.pop((tag, key), None) if tag is not None else None
                    future = batch.futures.get(key)
                    if future is not None and future.done():
                        out[key] = _result(future)
                    elif late is not None:
                        out[key] = JobResult(late.value, late.error, True, True)
                    else:
                        out[key] = JobResult()
        return out

    def _keep_if_late(self, tag: str, group: str, key: Hashable,
                      closed: threading.Event) -> Callable[[cf.Future[Any]], None]:
        def done(future: cf.Future[Any]) -> None:
            if not closed.is_set() or future.cancelled():
                return  # the batch is still waited for: it takes the result itself
            with self._lock:
                self._late[(tag, key)] = _result(future)
            if self.on_late is not None:
                try:
                    self.on_late(group, key)
                except Exception:
                    log.exception("on_late callback failed")
        return done

    def collect_late(self, tag: str) -> dict[Hashable, JobResult[Any]]:
        """Every result kept under ``tag`` since it was last handed out, marked ``late``."""
        with self._lock:
            keys = [k for k in self._late if k[0] == tag]
            return {k[1]: _as_late(self._late.pop(k)) for k in keys}

    def shutdown(self) -> None:
        for group, worker in self._workers.items():
            with self._lock:
                for future in self._pending[group]:
                    future.cancel()
            worker.stop()


class Batch(Generic[K, T]):
    """Jobs started by :meth:`GroupExecutor.submit`: wait for them, maybe in several goes, then
    take the results. What finishes after :meth:`results` is a late result (with a tag)."""

    def __init__(self, executor: GroupExecutor, jobs: Mapping[str, Sequence[tuple[K, Callable[[], T]]]],
                 late_tag: str | None) -> None:
        self._executor = executor
        self.jobs = jobs
        self.late_tag = late_tag
        self.futures: dict[K, cf.Future[Any]] = {}
        self.closed = threading.Event()

    def wait(self, timeout_s: float, interrupt: threading.Event | None = None) -> bool:
        """Wait until every job is done (True), ``timeout_s`` has passed or ``interrupt`` is set."""
        futures = list(self.futures.values())
        if not futures:
            return True
        if interrupt is None:
            _, pending = cf.wait(futures, timeout=max(0.0, timeout_s))
            return not pending
        deadline = time.monotonic() + timeout_s
        while not interrupt.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            _, pending = cf.wait(futures, timeout=min(remaining, INTERRUPT_POLL_S))
            if not pending:
                return True
        return all(f.done() for f in futures)

    def results(self) -> dict[K, JobResult[T]]:
        """Every key's result now; jobs still running hand theirs out later (with a tag)."""
        self.closed.set()
        return self._executor._take(self)


def _result(future: cf.Future[Any]) -> JobResult[Any]:
    if future.cancelled():
        return JobResult(error=cf.CancelledError("stopped"), done=True)
    exc = future.exception()
    if exc is not None:
        return JobResult(error=exc, done=True)
    return JobResult(value=future.result(), done=True)


def _as_late(result: JobResult[T]) -> JobResult[T]:
    return JobResult(result.value, result.error, True, True)
