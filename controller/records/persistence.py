"""Saving the variables in the state directory and restoring them at start (docs/api.md).

This module owns ``state_dir/variables.json``:

``{"format": 1, "saved_at": <unix time>, "generation": N, "vars": {name: expr}, "deleted": [names]}``

- **Whole snapshots only.** A save writes ``VariableSet.persistent`` of one generation, never a
  partial update, so the file always holds the state after some prefix of the acknowledged
  calls (``tmp=1`` calls do not change ``persistent`` and cause no save).
- **Atomic.** Write ``variables.json.tmp`` in the same directory (mode 0600), ``flush`` +
  ``fsync``, ``os.replace`` onto ``variables.json``, then ``fsync`` the directory so that the
  rename itself survives a power cut. A crash at any moment leaves the old or the new file.
- **Corrupt files are kept.** A file that does not parse or does not validate (names, formulas
  through ``controller.formulas``, no dependency cycle) is renamed aside as
  ``variables.json.corrupt-<YYYYmmddTHHMMSSZ>`` with a loud ``log.error`` saying what, where and
  why, and the service starts from the config values. It is never deleted. A file that exists but
  cannot be read is treated the same way (renamed aside, never overwritten later).
  One exception: a variable whose number (or a formula's constant) is beyond ±1e15, the bound
  ``controller.formulas.compiler.MAX_ABS_NUMBER`` set after such a value could be saved, is dropped
  with a ``log.error`` and the rest of the file is used: throwing away every saved grid signal
  for one out-of-range value would be worse.
- **Config values and ``clear=1``.** The rules (docs/api.md): "``variables:`` in the config gives the starting value
  of a variable that has no saved value" and "``clear=1`` deletes every variable, those from the
  config included". A config variable missing from the file is therefore ambiguous: deleted by a
  ``clear=1``, or added to the config after the file was saved? The ``deleted`` list settles it:
  ``initial_variables`` seeds a config variable only when the file has no value for it AND it is
  not in ``deleted``. ``deleted`` holds the names that were in force when the saver started (the
  restored and config-seeded variables) or were already in ``deleted``, and that are no longer
  saved: exactly the config variables a ``clear=1`` removed (plus, harmlessly, API variables a
  ``clear=1`` removed). Setting such a name again removes it from ``deleted``. The saver needs no
  config for this, so ``VariableSaver(file, store)`` is all the service has to write.
- Once a file exists, its values win over the config's: an installer who edits a value under
  ``variables:`` sees it take effect only for variables the file does not hold; ``initial_variables``
  logs each config value that a saved value overrides.
- **Coalesced saves.** ``VariableSaver`` listens to the store and saves on its own thread (never
  on the API's or the loop's thread): at once after an isolated change, then at most once per
  ``min_interval_s``, and always once after the last change. ``stop()`` writes a pending save. A
  change is therefore on disk at most ``min_interval_s`` plus one save's duration (a write and two
  fsyncs) after it was acknowledged (given CPU time: a thread that sets variables in a loop
  without ever blocking can starve the saver of the GIL; API requests block on their sockets
  between calls). A failed save (disk full, read-only file system) is logged
  once per failure streak and retried after ``min_interval_s`` and at the next change; until a
  save works again ``VariableSaver.failing`` is true and ``faults()`` gives the status line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from controller.formulas import (FormulaError, NumberRangeError, check_name, compile_formula,
                                 evaluation_order)
from controller.records.statedir import VARIABLES_FILE, fsync_dir, one_line, set_aside, utc_text
from controller.records.variables import Expr, VariableSet, VariableStore, normalize_expr

log = logging.getLogger(__name__)

FILE_NAME = VARIABLES_FILE
FORMAT = 1
FILE_MODE = 0o600
MAX_FILE_BYTES = 64 * 1024 * 1024  # far beyond any real set; guards the start against a junk file


class CorruptFile(ValueError):
    """The variables file does not parse or does not validate; the message says why."""


@dataclass(frozen=True)
class SavedVariables:
    """The content of ``variables.json``: one generation's saved set, and the deleted names."""

    vars: Mapping[str, Expr]
    deleted: tuple[str, ...] = ()
    generation: int = 0
    saved_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "saved_at": self.saved_at, "generation": self.generation,
                "vars": dict(self.vars), "deleted": list(self.deleted)}


def _reject_constant(text: str) -> float:
    raise CorruptFile(f"{text} is not JSON")


def parse_saved(text: str) -> SavedVariables:
    """Parse and validate the file content; raise CorruptFile saying what is wrong."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CorruptFile(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptFile(f"not a JSON object but {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise CorruptFile(f"unknown format {data.get('format')!r} (this version reads {FORMAT})")
    generation = data.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise CorruptFile(f"generation {generation!r} is not a count")
    saved_at = data.get("saved_at")
    if not isinstance(saved_at, (int, float)) or isinstance(saved_at, bool) \
            or not math.isfinite(saved_at):
        raise CorruptFile(f"saved_at {saved_at!r} is not a time")
    return SavedVariables(_parse_vars(data.get("vars")), _parse_deleted(data.get("deleted")),
                          generation, float(saved_at))


def _parse_vars(raw: object) -> Mapping[str, Expr]:
    if not isinstance(raw, dict):
        raise CorruptFile(f"vars is not an object but {type(raw).__name__}")
    exprs: dict[str, Expr] = {}
    formulas = {}
    for name, expr in raw.items():
        try:
            check_name(name)
            value = normalize_expr(expr)
            formulas[name] = compile_formula(value)
        except NumberRangeError as exc:  # saved before numbers were bounded: not corruption
            log.error("saved variable %s dropped: %s; formulas that read it fail until it is set "
                      "again", name, exc)
            continue
        except FormulaError as exc:
            raise CorruptFile(f"variable {name!r}: {exc}") from None
        exprs[name] = value
    try:
        evaluation_order(formulas)
    except FormulaError as exc:
        raise CorruptFile(str(exc)) from None
    return MappingProxyType(exprs)


def _parse_deleted(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise CorruptFile(f"deleted is not a list of names: {raw!r:.80}")
    return tuple(raw)


def _utc_stamp(unix_s: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(unix_s))


class VariableFile:
    """``state_dir/variables.json``: atomic saves, validated loads, corrupt files kept aside."""

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / FILE_NAME
        self.tmp_path = self.state_dir / (FILE_NAME + ".tmp")
        self._clock = clock
        self.loaded: SavedVariables | None = None  # what the last load() found (the saver reads it)
        self.set_aside_note: str | None = None  # a status fault line after a corrupt file was kept aside

    def load(self) -> SavedVariables | None:
        """The saved set; None when there is none, or when the file was corrupt (then renamed
        aside with log.error). Raises OSError only when a corrupt or unreadable file cannot be
        moved aside, because starting then would later overwrite it."""
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            self.loaded = None
            return None
        except OSError as exc:
            self._set_aside(f"cannot be read: {exc}")
            self.loaded = None
            return None
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise CorruptFile(f"larger than {MAX_FILE_BYTES} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorruptFile(f"not UTF-8: {exc}") from None
            saved = parse_saved(text)
        except CorruptFile as exc:
            self._set_aside(str(exc))
            self.loaded = None
            return None
        log.info("restored %d variable(s) from %s (generation %d, saved %s UTC)", len(saved.vars),
                 self.path, saved.generation, _utc_stamp(saved.saved_at))
        self.loaded = saved
        return saved

    def _set_aside(self, why: str) -> Path:
        try:
            target = set_aside(self.path, clock=self._clock)
        except OSError as exc:
            log.error("saved variables %s are unusable (%s) and could not be moved aside: %s; "
                      "refusing to start over them", self.path, why, exc)
            raise
        log.error("SAVED VARIABLES LOST: %s is unusable (%s); kept as %s; starting from the "
                  "config's variables", self.path, why, target)
        self.set_aside_note = (f"state_dir: {FILE_NAME} was unusable ({' '.join(why.split())}); kept as "
                               f"{target.name}; started from the config's variables")
        return target

    def save(self, saved: SavedVariables) -> None:
        """Write atomically (tmp, fsync, rename, fsync dir); raise OSError on failure, leaving
        the previous file as it was."""
        data = json.dumps(saved.to_json(), indent=1, sort_keys=True, allow_nan=False).encode()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)  # an old tmp file keeps its mode otherwise
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp_path, self.path)
        except BaseException:
            _remove_quietly(self.tmp_path)  # free the space of a half-written file (disk full)
            raise
        fsync_dir(self.state_dir)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def initial_variables(config_vars: Mapping[str, Expr], saved: SavedVariables | None, *,
                      reserved: Collection[str] = ()) -> dict[str, Expr]:
    """The variables to start with: the saved ones, plus each config variable that has no saved
    value and was not deleted by a ``clear=1`` (see the module docstring).

    Robust against a config that changed since the save: a saved variable whose name is now a
    device or input id (``reserved``) is dropped with log.error, and when the seeded config
    variables would form a dependency cycle with the saved ones, the saved set alone is used
    (log.error), so the service still starts.
    """
    if saved is None:
        return dict(config_vars)
    result: dict[str, Expr] = {}
    for name, expr in saved.vars.items():
        if name in reserved:
            log.error("saved variable %s dropped: %s is now a device or input id", name, name)
            continue
        result[name] = expr
    deleted = set(saved.deleted)
    seeded: list[str] = []
    for name, expr in config_vars.items():
        if name in saved.vars:
            if type(saved.vars[name]) is not type(expr) or saved.vars[name] != expr:
                log.info("variable %s: saved value %r wins over the config's %r", name,
                         saved.vars[name], expr)
        elif name in deleted:
            log.info("variable %s: not seeded from the config (deleted by clear=1)", name)
        else:
            result[name] = expr
            seeded.append(name)
    if seeded and not _acyclic(result):
        log.error("config variables %s form a dependency cycle with the saved ones: not seeded",
                  ", ".join(seeded))
        for name in seeded:
            del result[name]
    return result


def _acyclic(exprs: Mapping[str, Expr]) -> bool:
    try:
        evaluation_order({name: compile_formula(expr) for name, expr in exprs.items()})
    except FormulaError:
        return False
    return True


@dataclass
class _SaverState:
    pending: bool = False
    stopping: bool = False
    last_start: float = -math.inf
    failures: int = 0
    saves: int = 0
    failing_since: float | None = None  # wall time of the first failure of the current streak
    last_error: str = ""
    tracked: set[str] = field(default_factory=set)  # names whose removal goes into "deleted"


class VariableSaver:
    """Saves the store's ``persistent`` set, coalesced, on its own thread (module docstring).

    Build it right after ``file.load()`` and the store, before any ``set_many``: the names in
    force then (restored and config-seeded) are those whose removal by ``clear=1`` must be
    remembered in ``deleted``.

    ``clock`` is the monotonic clock of the interval. Tests with an injected clock drive
    ``poll()`` themselves instead of calling ``start()`` (the thread waits in real seconds).
    """

    def __init__(self, file: VariableFile, store: VariableStore, *, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._file = file
        self._store = store
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._cond = threading.Condition()
        self._state = _SaverState()
        loaded = file.loaded
        self._state.tracked = set(store.snapshot().persistent) | set(loaded.deleted if loaded else ())
        self._thread: threading.Thread | None = None
        store.add_listener(self._on_change)

    @property
    def saves(self) -> int:
        """How many saves succeeded (tests, status)."""
        return self._state.saves

    @property
    def failing(self) -> bool:
        """True from a failed save until a save works again: changes made meanwhile act, but a
        restart would lose them (the API answers ``"saved": false``)."""
        with self._cond:
            return self._state.failing_since is not None

    def faults(self) -> tuple[str, ...]:
        """The status fault line while saving fails (empty when it works)."""
        with self._cond:
            since, error = self._state.failing_since, self._state.last_error
        if since is None:
            return ()
        return (f"state_dir: saving the variables to {self._file.path} fails since "
                f"{utc_text(since)} ({error}); the values in force act but are not saved, "
                f"retried every {self._min_interval_s:g} s",)

    def _on_change(self, old: VariableSet, new: VariableSet, source: str) -> None:
        """Store listener, on the API's thread: only note that a save is due."""
        if new.persistent is old.persistent:
            return  # tmp=1, or a set that changed nothing that is saved
        with self._cond:
            if not self._state.pending:  # already pending: the saver waits for its time anyway
                self._state.pending = True
                self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="variable-saver", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write a pending save now and end the thread (idempotent)."""
        with self._cond:
            self._state.stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("variable saver did not stop within %.1f s", timeout_s)
        else:
            self.poll()  # never started (tests, a failed start): flush here

    def poll(self) -> float | None:
        """Save if a save is due now. Returns the seconds until a pending save is due, 0.0 after a
        save, None when nothing is pending."""
        with self._cond:
            wait_s = self._due_in()
            if wait_s is None or wait_s > 0:
                return wait_s
            self._claim()
        self._save()
        return 0.0

    def _due_in(self) -> float | None:
        if not self._state.pending:
            return None
        if self._state.stopping:
            return 0.0
        return max(0.0, self._state.last_start + self._min_interval_s - self._clock())

    def _claim(self) -> None:
        self._state.pending = False
        self._state.last_start = self._clock()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    wait_s = self._due_in()
                    if wait_s == 0.0:
                        self._claim()
                        break
                    if self._state.stopping:
                        return
                    self._cond.wait(wait_s)
                stopping = self._state.stopping
            self._save()
            if stopping:
                return

    def _save(self) -> bool:
        """Save the latest snapshot; on failure mark the save pending again (retried after
        ``min_interval_s`` or at stop)."""
        snap = self._store.snapshot()
        saved = SavedVariables(
            vars=snap.persistent,
            deleted=tuple(sorted(self._state.tracked - set(snap.persistent))),
            generation=snap.generation,
            saved_at=self._wall_clock(),
        )
        try:
            self._file.save(saved)
        except Exception as exc:
            with self._cond:
                self._state.pending = not self._state.stopping
                if self._state.failing_since is None:
                    self._state.failing_since = saved.saved_at
                self._state.last_error = one_line(exc)
            self._state.failures += 1
            if self._state.stopping:
                log.error("saving the variables to %s failed at stop: %s; changes since the "
                          "last save are lost", self._file.path, exc)
            elif self._state.failures == 1:
                log.error("saving the variables to %s failed: %s; retrying (this is logged once "
                          "until a save works again)", self._file.path, exc)
            else:
                log.debug("saving the variables failed again (%d): %s", self._state.failures, exc)
            return False
        if self._state.failures:
            log.warning("saving the variables to %s works again after %d failed attempt(s)",
                        self._file.path, self._state.failures)
            self._state.failures = 0
            with self._cond:
                self._state.failing_since = None
                self._state.last_error = ""
        self._state.saves += 1
        log.debug("saved %d variable(s), generation %d", len(saved.vars), saved.generation)
        return True
