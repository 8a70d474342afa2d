"""An asyncio loop in a daemon thread: the home of the asyncio test servers (the test OCPP
backend, the test proxies) while the test's own thread stays synchronous and drives them.

Each ``start()`` of a server makes a new :class:`LoopThread`, so a server that was stopped
starts again on a fresh loop with nothing left over from its previous life. ``stop()`` cancels
whatever still runs on the loop (connection handlers, splices) and waits for it to finish, so a
test ends without "Task was destroyed but it is pending" warnings.

A client that drops a connection before it is set up (one that does not trust the server's
certificate ends the TLS handshake so) is what such a test means to happen: the loop logs it at
DEBUG instead of asyncio's ERROR with a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

T = TypeVar("T")
S = TypeVar("S")
log = logging.getLogger(__name__)

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class LoopThread:
    """One event loop running forever in one daemon thread, until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet_about_dropped_clients)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the loop and return its result; TimeoutError (and the coroutine
        cancelled) when it takes longer than ``timeout_s``, RuntimeError when the loop stops
        first."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result in {timeout_s:g} s") from None
        except concurrent.futures.CancelledError:
            raise RuntimeError(f"{self._thread.name}: stopped before the result was there") from None

    def stop(self) -> None:
        """Stop the loop, cancel what still runs on it, and end the thread."""
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed meanwhile
            pass
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise RuntimeError(f"{self._thread.name}: the loop did not stop in {STOP_TIMEOUT_S:g} s")


def _quiet_about_dropped_clients(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's handler, except for a client that went away while its connection was set up."""
    if isinstance(context.get("exception"), ConnectionError) and "transport creation" in context.get("message", ""):
        log.debug("%s: %r", context["message"], context["exception"])
        return
    loop.default_exception_handler(context)


class LoopServer(Generic[S]):
    """A test server on a :class:`LoopThread` of its own: ``start()`` runs ``_open()`` on a fresh
    loop (a free port the first time, the same port after a ``stop()``), ``stop()`` runs
    ``_close(server)`` and ends the loop; usable in ``with``. Subclasses set ``_port`` in
    ``_open`` and may clean up their records in ``_after_stop``."""

    label = "test server"

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._loop_thread: LoopThread | None = None
        self._server: S | None = None

    def start(self) -> Self:
        """Listen (on a free port the first time, on that same port after a ``stop()``)."""
        if self._loop_thread is not None:
            return self
        loop_thread = LoopThread(f"{type(self).__name__}:{self._port}")
        try:
            self._server = loop_thread.run(self._open(), START_TIMEOUT_S)
        except BaseException:
            loop_thread.stop()
            raise
        self._loop_thread = loop_thread
        log.info("%s listening on port %d", self.label, self._port)
        return self

    def stop(self) -> None:
        """Close the server (``_close``) and end its loop."""
        loop_thread, server = self._loop_thread, self._server
        if loop_thread is None or server is None:
            return
        self._loop_thread, self._server = None, None
        try:
            loop_thread.run(self._close(server), STOP_TIMEOUT_S)
        finally:
            loop_thread.stop()
            self._after_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def _open(self) -> S:
        raise NotImplementedError

    async def _close(self, server: S) -> None:
        raise NotImplementedError

    def _after_stop(self) -> None:
        """What to forget once stopped (the server's connections)."""
