"""Formulas: the small expression language of variables, site limits, charger maxima and rules.

This is the language's public face (import everything from here) and owns its last stages;
a formula's whole life (docs/configuration.md) is:

1. **Translate** cFos operators (``c ? a : b``, ``&&``, ``||``, ``!``, ``^``) to Python:
   ``controller.formulas.cfos_syntax``.
2. **Validate** the Python AST against an allow-list at set/config time, and
3. **Compile** it once for asteval: ``controller.formulas.compiler``.
4. **Evaluate** many times (once per control cycle) with one asteval interpreter: here.
5. **Order** formulas that read each other (``evaluation_order``): here.

Why evaluation needs no timer: the language has no loops, no calls other than the seven listed
functions, no strings and no containers, and the AST is bounded (1024 characters, depth 100).
Arithmetic is done on floats only (bools and ints are converted at every binary operator), so a
huge power overflows at once (``9**9**9**9`` -> error in microseconds) instead of building a
huge integer. Evaluation time is therefore linear in the formula's size. Measured on the 2-core
CI-class machine: ~1 µs for a constant, 6-25 µs for a typical formula, 50-70 µs for one that
reads 10 symbols, under 1 ms for the largest allowed (a Pi 4 is about 5-10x slower);
``tests/unit/test_formulas.py::test_evaluation_cost`` prints the figures (``pytest -s``).

Decisions made in this module (documented so that they are not re-decided by accident):

- Device tuples (``M1.current_a``) may be indexed with a constant 0, 1 or 2
  (``M1.current_a[0]`` is L1), or passed whole as the only argument of ``min``/``max``
  (``max(M1.current_a)``, the most loaded phase). Anywhere else a tuple is an evaluation error.
- Integral float results are returned as ``int`` (``100.0`` -> ``100``) so that ``get_cm_vars``
  shows what the user typed; bools stay bools; ``None`` means "no limit".
- Numbers are bounded by ±``MAX_ABS_NUMBER`` (1e15): a larger constant is refused when the
  formula is set, and a larger result is an evaluation error (like a division by zero), so no
  client ever reads a 300-digit number. Intermediate values may be larger (``1e15 * 10 / 100``).
- ``c ? a : b`` uses Python truthiness (cFos: true when > 0; they differ only for negative c).
  ``^`` is Python's ``**`` with Python's precedence (binds tighter than unary minus on its left).
  ``!x`` binds to its operand like in C: ``!a == b`` is ``(not a) == b``.
- Bitwise ``&``, ``|``, ``~`` are rejected: on floats they have no meaning.
"""

from __future__ import annotations

import ast
import heapq
import logging
import math
import re
import threading
from collections.abc import Mapping
from typing import Callable

from asteval import Interpreter
from asteval.asteval import ALL_NODES
from asteval.astutils import safe_pow

from controller.formulas.cfos_syntax import MAX_BRACKET_DEPTH, MAX_TERNARIES, FormulaError, translate
from controller.formulas.compiler import (FUNCTIONS, LIMIT_TEXT, MAX_ABS_NUMBER, MAX_DEPTH, MAX_LENGTH,
                                         NAME_RE, TIME_SYMBOLS, Formula, FormulaText, Lookup,
                                         NumberRangeError,
                                         check_name, compile_formula, number_problem,
                                         number_text, validate_formula)

__all__ = [
    "FUNCTIONS", "MAX_ABS_NUMBER", "MAX_BRACKET_DEPTH", "MAX_DEPTH", "MAX_LENGTH",
    "MAX_TERNARIES", "NAME_RE", "NO_LIMIT", "TIME_SYMBOLS", "Evaluator", "Formula",
    "FormulaError", "FormulaText", "NoValue", "NumberRangeError", "check_name", "compile_formula",
    "evaluation_order", "number_problem", "translate", "validate_formula",
]

log = logging.getLogger(__name__)


class NoValue:
    """A symbol value meaning "known name, but no value now", with the reason.

    Equivalent to ``None`` in ``symbols`` (device offline, input unreadable) but lets the caller
    say why, e.g. ``NoValue("variable LIM failed: division by zero")``.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NoValue({self.reason!r})"


class _NoLimit:
    """Singleton for a *variable* that evaluated to ``None`` ("no limit")."""

    _instance: "_NoLimit | None" = None

    def __new__(cls) -> "_NoLimit":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_LIMIT"


#: Put this into ``symbols`` for a variable whose formula evaluated to ``None``: the formulas
#: that read it then see Python ``None`` (while a plain ``None`` symbol is an error, because it
#: means "device/input unreadable", and a broken wire must restrict, not release).
NO_LIMIT = _NoLimit()


# --------------------------------------------------------------------------- evaluation


def _round(value: float, ndigits: float | None = None) -> float:
    if ndigits is None:
        return float(round(value))
    if ndigits != int(ndigits):
        raise ValueError("the number of digits must be whole")
    return float(round(value, int(ndigits)))


def _floor(value: float) -> float:
    return float(math.floor(value))


def _ceil(value: float) -> float:
    return float(math.ceil(value))


def _clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to [low, high]; ``low`` wins when low > high (a limit must not grow)."""
    return max(low, min(high, value))


_FUNCTION_TABLE: dict[str, Callable[..., object]] = {
    "min": min, "max": max, "abs": abs, "round": _round, "floor": _floor, "ceil": _ceil,
    "clamp": _clamp,
}
_BINOP_FUNCS: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: safe_pow,
}
_HANDLED_NODES = {"expr", "binop", "unaryop", "boolop", "compare", "ifexp", "call", "name",
                  "constant"}


def _as_float(value: object) -> float:
    """Arithmetic operand as float: bools and small ints from functions, nothing else."""
    if isinstance(value, float):
        return value
    if isinstance(value, int):  # bool or int, e.g. True + True, abs(True)
        return float(value)
    if value is None:
        raise TypeError("None (no limit) in arithmetic")
    raise TypeError(f"{type(value).__name__} in arithmetic")


class _FloatInterpreter(Interpreter):
    """asteval with float-only arithmetic, so no operation can build a huge integer."""

    def on_binop(self, node: ast.BinOp) -> float:
        left = _as_float(self.run(node.left))
        right = _as_float(self.run(node.right))
        result = _BINOP_FUNCS[type(node.op)](left, right)
        if not isinstance(result, float):  # (-8) ** 0.5 is complex
            raise ValueError("math domain error (negative number to a fractional power)")
        return result

    def on_unaryop(self, node: ast.UnaryOp) -> object:
        operand = self.run(node.operand)
        if isinstance(node.op, ast.Not):
            return not operand
        value = _as_float(operand)
        return -value if isinstance(node.op, ast.USub) else value


def _make_interpreter() -> Interpreter:
    symtable: dict[str, object] = dict(_FUNCTION_TABLE)
    config = {node: node in _HANDLED_NODES for node in ALL_NODES}
    interp = _FloatInterpreter(symtable=symtable, use_numpy=False, minimal=True, config=config,
                               readonly_symbols=set(_FUNCTION_TABLE),
                               max_statement_length=MAX_LENGTH)
    for name in list(interp.symtable):  # asteval adds print(); keep only our functions
        if name not in _FUNCTION_TABLE:
            del interp.symtable[name]
    return interp


_CALL_ERROR_RE = re.compile(r"Error running function '(\w+)' with args .* and kwargs .*?: (.*)$",
                            re.DOTALL)
_FRIENDLY = {"ZeroDivisionError": "division by zero",
             "OverflowError": "number too large (overflow)"}


def _error_text(interp: Interpreter) -> str:
    """One line for the status API: "division by zero", "floor(): number too large (overflow)"."""
    holder = interp.error[0]
    exc_name = getattr(holder.exc, "__name__", "Error")
    message = str(holder.msg)
    friendly = _FRIENDLY.get(exc_name)
    call = _CALL_ERROR_RE.match(message)
    if call:
        return f"{call.group(1).lstrip('_')}(): {friendly or call.group(2)}"
    if friendly:
        return friendly
    return f"{exc_name}: {message}" if message else exc_name


def _resolve(lookup: Lookup, symbols: Mapping[str, object]) -> tuple[object, str | None]:
    """The value a synthetic name takes, or the error why it has none."""
    if lookup.symbol not in symbols:
        return None, f"unknown name {lookup.symbol}"
    value = symbols[lookup.symbol]
    if value is None:
        where = "device offline" if "." in lookup.symbol else "unreadable or failed"
        return None, f"{lookup.symbol} has no value ({where})"
    if isinstance(value, NoValue):
        return None, f"{lookup.symbol} has no value ({value.reason})"
    if value is NO_LIMIT:
        return None, None
    if isinstance(value, (tuple, list)):
        if lookup.phase_index is not None:
            if lookup.phase_index >= len(value):
                return None, f"{lookup.synthetic}: no such phase"
            value = value[lookup.phase_index]
        elif lookup.tuple_ok:
            return _scalar_tuple(lookup.symbol, value)
        else:
            return None, (f"{lookup.symbol} is per phase: use {lookup.symbol}[0] .. [2] "
                          f"or min()/max() of it")
    elif lookup.phase_index is not None:
        return None, f"{lookup.symbol} is not per phase: it cannot be indexed"
    return _scalar(lookup.synthetic, value)


def _scalar(name: str, value: object) -> tuple[object, str | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number, None
        return None, f"{name} is not a finite number"
    return None, f"{name} is not a number ({type(value).__name__})"


def _scalar_tuple(name: str, values: tuple | list) -> tuple[object, str | None]:
    out = []
    for value in values:
        number, error = _scalar(name, value)
        if error:
            return None, error
        out.append(number)
    return tuple(out), None


def _result(value: object) -> tuple[object, str | None]:
    """Check a formula's result (a finite number within ±``MAX_ABS_NUMBER``, a bool or None);
    integral floats become ints for display (100.0 -> 100)."""
    if value is None or isinstance(value, bool):
        return value, None
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number):
            return None, f"result is not a finite number ({number})"
        if abs(number) > MAX_ABS_NUMBER:
            return None, f"result out of range: {number_text(number)} (beyond {LIMIT_TEXT})"
        if number.is_integer():  # exact: MAX_ABS_NUMBER < 2**53
            return int(number), None
        return number, None
    return None, f"result is not a number ({type(value).__name__})"


class Evaluator:
    """Evaluates compiled formulas with one asteval interpreter.

    Meant to be owned by one thread (the control loop); an internal lock (uncontended: ~0.1 µs)
    makes a stray call from another thread safe rather than corrupting the shared symbol table.
    """

    def __init__(self) -> None:
        self._interp = _make_interpreter()
        self._lock = threading.Lock()

    def evaluate(self, formula: Formula,
                 symbols: Mapping[str, object]) -> tuple[object, str | None]:
        """(value, None) or (None, error). Never raises for a compiled formula."""
        if formula.constant is not None:
            return _result(formula.constant)
        if formula.tree is None:
            return None, "formula was not compiled"
        values: dict[str, object] = {}
        for lookup in formula.lookups:
            value, error = _resolve(lookup, symbols)
            if error:
                return None, error
            values[lookup.synthetic] = value
        with self._lock:
            return self._run(formula, values)

    def _run(self, formula: Formula, values: dict[str, object]) -> tuple[object, str | None]:
        interp = self._interp
        interp.symtable.update(values)
        interp.error = []
        interp.error_msg = None
        interp.retval = None
        interp._interrupt = None
        interp.expr = formula.python  # for asteval's messages; never run(expr=): code_text grows
        try:
            value = interp.run(formula.tree, with_raise=False)
        except Exception as exc:  # asteval records errors itself; this is a last resort
            log.exception("asteval raised on %r", formula.text)
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            for name in values:
                interp.symtable.pop(name, None)
        if interp.error:
            error = _error_text(interp)
            interp.error = []
            return None, error
        return _result(value)


# --------------------------------------------------------------------------- order


def evaluation_order(formulas: Mapping[str, Formula]) -> list[str]:
    """Names in dependency order (a formula after the ones it reads), ties broken by name.

    Only the keys of ``formulas`` count as dependencies; other names (devices, inputs, time,
    undefined variables) are leaves. Raises FormulaError("dependency cycle: A -> B -> A").
    """
    deps = {name: {dep for dep in formula.names if dep in formulas}
            for name, formula in formulas.items()}
    dependents: dict[str, list[str]] = {name: [] for name in formulas}
    for name, needs in deps.items():
        for dep in needs:
            dependents[dep].append(name)
    waiting = {name: len(needs) for name, needs in deps.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for user in dependents[name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(formulas):
        raise FormulaError("dependency cycle: " + " -> ".join(_find_cycle(deps, set(order))))
    return order


def _find_cycle(deps: Mapping[str, set[str]], done: set[str]) -> list[str]:
    """A cycle among the names not ordered: each of them still reads another one of them."""
    node = min(name for name in deps if name not in done)
    path: list[str] = []
    seen: dict[str, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(dep for dep in deps[node] if dep not in done)
    return path[seen[node]:] + [node]
