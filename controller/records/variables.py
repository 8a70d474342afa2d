"""The variable store: named numbers and formulas shared by the control loop and the web threads.

The web threads (``set_cm_vars``) change variables; the control loop reads them once per cycle.
They meet here (docs/api.md, docs/configuration.md):

- A change is all-or-nothing: every name, every formula and the dependency order of the *resulting*
  set are checked before anything changes, so a bad POST answers 400 and leaves the old set.
- Readers get an immutable ``VariableSet`` snapshot; swapping one reference is atomic, so
  ``snapshot()`` takes no lock and can never see half a change.
- The number of variables is capped (``max_variables``, default ``DEFAULT_MAX_VARIABLES``): every
  variable is evaluated every cycle and kept in memory, and a client in a loop must not grow
  that without end. A change that would leave more than the cap, in force or in the saved set, is
  rejected like any other bad change. A set that is already over the cap (a restart after the
  cap was lowered) is used as it is: changes that do not add variables still work.
- Every change sets ``wake`` (the loop waits on it between ticks, so a grid signal acts at once)
  and calls the listeners (persistence, grid-signal log) in the order of the changes, outside the
  lock that serialises writers.
- ``VariableSet.persistent`` is what a restart restores (``controller.records.persistence`` saves it):
  ``set_many(..., persist=False)`` (the API's ``tmp=1``, "apply but do not save") changes the
  variables in force but not ``persistent``. Calls with ``persist=True`` are applied to
  ``persistent`` as they are to the variables in force, so the saved set is always the state after
  some prefix of the persisted calls. Because a ``tmp=1`` value can hide a saved one, a persisted
  call is also rejected (400, nothing changes) when it would leave a dependency cycle in the saved
  set: such a set could not be restored.

``evaluate_variables`` evaluates a snapshot in dependency order for the loop.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from controller.formulas import (MAX_LENGTH, NO_LIMIT, Evaluator, Formula, FormulaError,
                                 NoValue, NumberRangeError, check_name, compile_formula,
                                 evaluation_order, number_problem)

log = logging.getLogger(__name__)

Expr = int | float | bool | str
Listener = Callable[["VariableSet", "VariableSet", str], None]

DEFAULT_MAX_VARIABLES = 1000


class TooManyVariables(FormulaError):
    """A change that would exceed the cap on the number of variables. A ``FormulaError``, so that
    every refusal of ``set_many`` is one type for its callers (the API answers 400)."""


# ASCII digits only: int('١٢٣') is 123, but a value that is no number to a cFos client or a
# spreadsheet must not become one here (it is a formula, which refuses such digits).
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class VariableSet:
    """Immutable snapshot of all variables; ``generation`` bumps on every successful change.

    ``persistent`` is what a restart restores: the variables without the effect of ``tmp=1``
    calls. It is the very ``exprs`` object while no ``tmp=1`` value is in force, and the previous
    set's ``persistent`` object when a change did not alter it (so listeners can test ``is``).
    Left out, it defaults to ``exprs``.
    """

    exprs: Mapping[str, Expr]  # name -> expr as given (number or formula string)
    formulas: Mapping[str, Formula]
    order: tuple[str, ...]  # evaluation order
    generation: int
    persistent: Mapping[str, Expr] = None  # type: ignore[assignment]  # None: the same as exprs

    def __post_init__(self) -> None:
        if self.persistent is None:
            object.__setattr__(self, "persistent", self.exprs)


def same_exprs(a: Mapping[str, Expr], b: Mapping[str, Expr]) -> bool:
    """Equal names with equal exprs of the same type (``1``, ``1.0`` and ``True`` differ here:
    ``get_cm_vars`` shows each as given, so changing one into another is a change)."""
    if a is b:
        return True
    if len(a) != len(b):
        return False
    missing = object()
    for name, expr in a.items():
        other = b.get(name, missing)
        if type(other) is not type(expr) or other != expr:
            return False
    return True


def normalize_expr(expr: object) -> Expr:
    """The stored form of an ``expr``: numbers and bools as they are, a string that is a number
    as that number (docs/api.md: ``val=123`` -> ``"expr": 123``), any other string as a formula.

    Raises FormulaError for NaN/Infinity, for numbers beyond ±``MAX_ABS_NUMBER`` (1e15) and for
    values that are neither numbers nor strings.
    """
    if isinstance(expr, bool):
        return expr
    if isinstance(expr, (int, float)):
        if isinstance(expr, float) and not math.isfinite(expr):
            raise FormulaError("number must be finite (NaN and Infinity are not allowed)")
        problem = number_problem(expr)
        if problem:
            raise NumberRangeError(problem)
        return expr
    if not isinstance(expr, str):
        raise FormulaError(f"expr must be a number or a formula string, not {type(expr).__name__}")
    if len(expr) > MAX_LENGTH:
        raise FormulaError(f"formula too long ({len(expr)} characters, at most {MAX_LENGTH})")
    stripped = expr.strip()
    if _NUMBER_RE.fullmatch(stripped):
        number: int | float = int(stripped) if _INT_RE.fullmatch(stripped) else float(stripped)
        problem = number_problem(number)
        if problem:
            raise NumberRangeError(problem)
        return number
    return expr


def _empty() -> VariableSet:
    return VariableSet(MappingProxyType({}), MappingProxyType({}), (), 0)


class VariableStore:
    """Thread-safe store of the variables; see the module docstring for the guarantees."""

    def __init__(self, initial: Mapping[str, Expr] = {}, reserved: Collection[str] = (), *,
                 max_variables: int = DEFAULT_MAX_VARIABLES) -> None:
        """Raise FormulaError when ``initial`` (the config's ``variables:``) is not valid.

        ``initial`` may hold more than ``max_variables`` (saved before the cap was lowered): that
        is logged, and from then on only changes that do not add variables are accepted.
        """
        if max_variables < 1:
            raise ValueError(f"max_variables must be at least 1, not {max_variables}")
        self.max_variables = max_variables
        self._reserved = frozenset(reserved)
        self._write_lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._notifying: int | None = None  # thread id running the listeners
        self._listeners: tuple[Listener, ...] = ()
        self.wake = threading.Event()
        self._current = self._build(_empty(), list(initial.items()), clear=True, generation=0)
        if len(self._current.exprs) > max_variables:
            log.error("%d variables at start, more than max_variables (%d): changes that add "
                      "variables are refused until enough are deleted", len(self._current.exprs),
                      max_variables)

    def snapshot(self) -> VariableSet:
        """The current set. Lock-free: one attribute read of an immutable object."""
        return self._current

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(old, new, source)`` after every change, in the order of the changes.

        Listeners run in the thread that made the change, after ``wake`` is set and before
        ``set_many`` returns.
        They must not call ``set_many``; an exception in one is logged and does not undo the change.
        They run on the API's thread, so they must be quick: the saver only notes that a save
        is due (its own thread writes the file, coalesced, see ``controller.records.persistence``).
        """
        with self._write_lock:
            self._listeners = (*self._listeners, callback)

    def set_many(self, items: Sequence[tuple[str, Expr]], *, clear: bool = False,
                 source: str = "", persist: bool = True) -> VariableSet:
        """Set the given variables (after deleting all of them when ``clear``); all-or-nothing.

        Raises FormulaError, and changes nothing, for a bad name, a bad formula, a dependency
        cycle in the resulting set (or in the resulting saved set, see the module docstring), or
        more variables than ``max_variables`` (``TooManyVariables``).
        A later item with the same name wins. ``persist=False`` (``tmp=1``) applies the change
        without changing ``persistent``, so it is not saved.
        """
        if self._notifying == threading.get_ident():
            raise RuntimeError("set_many called from a variable-store listener")
        with self._write_lock:
            old = self._current
            new = self._build(old, items, clear=clear, generation=old.generation + 1,
                              persist=persist)
            self._check_count(old, new)
            self._current = new
            self._notify_lock.acquire()  # taken under the write lock: listeners run in order
        try:
            self._notifying = threading.get_ident()
            self.wake.set()
            for listener in self._listeners:
                self._call(listener, old, new, source)
        finally:
            self._notifying = None
            self._notify_lock.release()
        return new

    def _check_count(self, old: VariableSet, new: VariableSet) -> None:
        """Refuse a change that grows the set in force, or the saved set, beyond the cap (a set
        already over it may shrink or stay, see ``__init__``)."""
        cap = self.max_variables
        if len(new.exprs) > cap and len(new.exprs) > len(old.exprs):
            raise TooManyVariables(f"too many variables: this change would make {len(new.exprs)} "
                                   f"(at most {cap}, max_variables in the config)")
        if len(new.persistent) > cap and len(new.persistent) > len(old.persistent):
            raise TooManyVariables(f"too many variables: the saved set (without the tmp=1 values in "
                                   f"force) would have {len(new.persistent)} (at most {cap}, "
                                   "max_variables in the config)")

    @staticmethod
    def _call(listener: Listener, old: VariableSet, new: VariableSet, source: str) -> None:
        try:
            listener(old, new, source)
        except Exception:
            log.exception("variable listener %r failed (change from %s kept)", listener, source)

    def _build(self, old: VariableSet, items: Sequence[tuple[str, Expr]], *, clear: bool,
               generation: int, persist: bool = True) -> VariableSet:
        exprs: dict[str, Expr] = {} if clear else dict(old.exprs)
        formulas: dict[str, Formula] = {} if clear else dict(old.formulas)
        changed: dict[str, Expr] = {}
        for item in items:
            name, expr = _unpack(item)
            check_name(name, self._reserved)
            try:
                value = normalize_expr(expr)
                formula = compile_formula(value)
            except FormulaError as exc:
                raise FormulaError(f"variable {name}: {exc}") from None
            exprs[name] = value
            formulas[name] = formula
            changed[name] = value
        order = tuple(evaluation_order(formulas))
        frozen = MappingProxyType(exprs)
        persistent = _next_persistent(old, frozen, changed, clear=clear, persist=persist)
        if persistent is not old.persistent and persistent is not frozen \
                and not same_exprs(persistent, frozen):
            _check_saved_order(persistent, frozen, formulas)
        return VariableSet(frozen, MappingProxyType(formulas), order, generation, persistent)


def _next_persistent(old: VariableSet, exprs: Mapping[str, Expr], changed: Mapping[str, Expr],
                     *, clear: bool, persist: bool) -> Mapping[str, Expr]:
    """The saved set after a change: the old one for ``tmp=1``, else the old one with the change
    applied; the old object itself when nothing changed in it (the saver then skips the save)."""
    if not persist:
        return old.persistent
    if clear or old.persistent is old.exprs:
        candidate: Mapping[str, Expr] = exprs  # no tmp value in force: saved set = set in force
    else:
        merged = dict(old.persistent)
        merged.update(changed)
        candidate = merged if not same_exprs(merged, exprs) else exprs
    if same_exprs(candidate, old.persistent):
        return old.persistent
    return candidate if candidate is exprs else MappingProxyType(dict(candidate))


def _check_saved_order(persistent: Mapping[str, Expr], exprs: Mapping[str, Expr],
                       formulas: Mapping[str, Formula]) -> None:
    """Reject a change that would save a set with a dependency cycle (a tmp value hides it now)."""
    saved_formulas: dict[str, Formula] = {}
    for name, expr in persistent.items():
        current = exprs.get(name)
        if name in formulas and type(current) is type(expr) and current == expr:
            saved_formulas[name] = formulas[name]
        else:
            saved_formulas[name] = compile_formula(expr)  # was valid when it was set
    try:
        evaluation_order(saved_formulas)
    except FormulaError as exc:
        raise FormulaError(f"the saved variables (without the tmp=1 values in force) would have a "
                           f"{exc}") from None


def _unpack(item: object) -> tuple[str, object]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise FormulaError(f"a variable is a (name, expr) pair, not {item!r:.60}")
    name, expr = item
    if not isinstance(name, str):
        raise FormulaError(f"a variable name is a string, not {type(name).__name__}")
    return name, expr


Result = tuple[object, "str | None"]


def evaluate_variables(
    evaluator: Evaluator, variables: VariableSet, symbols: Mapping[str, object]
) -> tuple[dict[str, Result], dict[str, object]]:
    """Evaluate every variable in dependency order.

    Returns the (value, error) of each variable, and ``symbols`` extended with the variables'
    values for the formulas evaluated after them (site limits, charger maxima, rules): a failed
    variable is a ``NoValue`` naming its error, a variable that is ``None`` ("no limit") is
    ``NO_LIMIT``, so that readers fail, resp. see None, as docs/configuration.md wants.
    """
    results: dict[str, Result] = {}
    extended = dict(symbols)
    for name in variables.order:
        value, error = evaluator.evaluate(variables.formulas[name], extended)
        results[name] = (value, error)
        if error is not None:
            extended[name] = NoValue(error)
        elif value is None:
            extended[name] = NO_LIMIT
        else:
            extended[name] = value
    return results, extended
