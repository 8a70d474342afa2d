"""The gateway's thread: one asyncio loop that runs every charge point's connection to the backend.

Separate from the central system's thread (``hal.ocpp.central``): the gateway may run without
any OCPP box, and a backend that is slow or away must never slow the boxes that connect to us.
Nothing here blocks the control loop: other threads only hand work over (``call_soon``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0


class LoopThread:
    """An asyncio loop in a daemon thread: ``start(main)`` runs ``main()`` until ``stop()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._main_task: asyncio.Task[Any] | None = None

    def start(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, args=(main,), name=self.name, daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the {self.name} thread did not start in {START_TIMEOUT_S:g} s")

    def _run(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        async def wrapper() -> None:
            self._loop = asyncio.get_running_loop()
            self._main_task = asyncio.current_task()
            self._started.set()
            try:
                await main()
            except asyncio.CancelledError:
                pass

        try:
            asyncio.run(wrapper())
        except Exception:  # logged: the gateway is gone, the control loop goes on
            log.exception("the %s thread stopped", self.name)
        finally:
            self._started.set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop (any thread, never blocks); False when it does not run."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

    def stop(self) -> None:
        """Cancel ``main`` (it closes what it opened in its ``finally``) and wait for the thread."""
        thread, loop, task = self._thread, self._loop, self._main_task
        if thread is None:
            return
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass
        thread.join(STOP_TIMEOUT_S)
        self._thread = None


__all__ = ["LoopThread"]
