"""The one way unit tests make the record writers they exercise (``GridLog``, ``SessionLog``):
built on a path with an injected clock, started unless asked not to, and all stopped when the
test ends (a writer left running would outlive its temp directory)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from controller.records.record_writer import RecordWriter

W = TypeVar("W", bound=RecordWriter)


@contextmanager
def writers(cls: Callable[..., W], path: Path, clock: Callable[[], Any]) -> Iterator[Callable[..., W]]:
    """A builder ``build(start=True, **kwargs)`` of ``cls(path, clock=clock, **kwargs)``."""
    made: list[W] = []

    def build(start: bool = True, **kwargs: Any) -> W:
        kwargs.setdefault("clock", clock)
        writer = cls(path, **kwargs)
        if start:
            writer.start()
        made.append(writer)
        return writer

    try:
        yield build
    finally:
        for writer in made:
            writer.stop()
