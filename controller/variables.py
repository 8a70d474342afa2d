"""The variable store: named numbers and formulas shared by the control loop and the web threads.

The web threads (``set_cm_vars``) change variables; the control loop reads them once per cycle.
They meet here (SPEC §2, §3):

- A change is all-or-nothing: every name, every formula and the dependency order of the *resulting*
  set are checked before anything changes, so a bad POST answers 400 and leaves the old set.
- Readers get an immutable ``VariableSet`` snapshot; swapping one reference is atomic, so
  ``snapshot()`` takes no lock and can never see half a change.
- Every change sets ``wake`` (the loop waits on it between ticks, so a grid signal acts at once)
  and calls the listeners (persist, grid-signal log) in the order of the changes, outside the
  lock that serialises writers.

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
                                 NoValue, check_name, compile_formula, evaluation_order)

log = logging.getLogger(__name__)

Expr = int | float | bool | str
Listener = Callable[["VariableSet", "VariableSet", str], None]

_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class VariableSet:
    """Immutable snapshot of all variables; ``generation`` bumps on every successful change."""

    exprs: Mapping[str, Expr]  # name -> expr as given (number or formula string)
    formulas: Mapping[str, Formula]
    order: tuple[str, ...]  # evaluation order
    generation: int


def normalize_expr(expr: object) -> Expr:
    """The stored form of an ``expr``: numbers and bools as they are, a string that is a number
    as that number (SPEC §2: ``val=123`` -> ``"expr": 123``), any other string as a formula.

    Raises FormulaError for NaN/Infinity and for values that are neither numbers nor strings.
    """
    if isinstance(expr, bool):
        return expr
    if isinstance(expr, (int, float)):
        if isinstance(expr, float) and not math.isfinite(expr):
            raise FormulaError("number must be finite (NaN and Infinity are not allowed)")
        return expr
    if not isinstance(expr, str):
        raise FormulaError(f"expr must be a number or a formula string, not {type(expr).__name__}")
    if len(expr) > MAX_LENGTH:
        raise FormulaError(f"formula too long ({len(expr)} characters, at most {MAX_LENGTH})")
    stripped = expr.strip()
    if _NUMBER_RE.fullmatch(stripped):
        number: int | float = int(stripped) if _INT_RE.fullmatch(stripped) else float(stripped)
        if isinstance(number, float) and not math.isfinite(number):
            raise FormulaError("number too large")
        return number
    return expr


def _empty() -> VariableSet:
    return VariableSet(MappingProxyType({}), MappingProxyType({}), (), 0)


class VariableStore:
    """Thread-safe store of the variables; see the module docstring for the guarantees."""

    def __init__(self, initial: Mapping[str, Expr] = {}, reserved: Collection[str] = ()) -> None:
        """Raise FormulaError when ``initial`` (the config's ``variables:``) is not valid."""
        self._reserved = frozenset(reserved)
        self._write_lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._notifying: int | None = None  # thread id running the listeners
        self._listeners: tuple[Listener, ...] = ()
        self.wake = threading.Event()
        self._current = self._build(_empty(), list(initial.items()), clear=True, generation=0)

    def snapshot(self) -> VariableSet:
        """The current set. Lock-free: one attribute read of an immutable object."""
        return self._current

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(old, new, source)`` after every change, in the order of the changes.

        Listeners run in the thread that made the change, after ``wake`` is set and before
        ``set_many`` returns (so a persisting listener has saved the set when the API answers).
        They must not call ``set_many``; an exception in one is logged and does not undo the change.
        """
        with self._write_lock:
            self._listeners = (*self._listeners, callback)

    def set_many(self, items: Sequence[tuple[str, Expr]], *, clear: bool = False,
                 source: str = "") -> VariableSet:
        """Set the given variables (after deleting all of them when ``clear``); all-or-nothing.

        Raises FormulaError, and changes nothing, for a bad name, a bad formula or a dependency
        cycle in the resulting set. A later item with the same name wins.
        """
        if self._notifying == threading.get_ident():
            raise RuntimeError("set_many called from a variable-store listener")
        with self._write_lock:
            old = self._current
            new = self._build(old, items, clear=clear, generation=old.generation + 1)
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

    @staticmethod
    def _call(listener: Listener, old: VariableSet, new: VariableSet, source: str) -> None:
        try:
            listener(old, new, source)
        except Exception:
            log.exception("variable listener %r failed (change from %s kept)", listener, source)

    def _build(self, old: VariableSet, items: Sequence[tuple[str, Expr]], *, clear: bool,
               generation: int) -> VariableSet:
        exprs: dict[str, Expr] = {} if clear else dict(old.exprs)
        formulas: dict[str, Formula] = {} if clear else dict(old.formulas)
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
        order = tuple(evaluation_order(formulas))
        return VariableSet(MappingProxyType(exprs), MappingProxyType(formulas), order, generation)


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
    ``NO_LIMIT``, so that readers fail, resp. see None, as SPEC §3 wants.
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
