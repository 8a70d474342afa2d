"""Formula compiler: the allow-list check and the one-time compilation of a formula.

Owns the second stage of a formula's life (docs/configuration.md), run at set/config time:

1. **Parse** the Python text that ``cfos_syntax`` translated, with errors mapped back to the
   column the user typed.
2. **Validate** the AST against an allow-list, so that what cannot be right is rejected with a
   400 instead of failing every second in the loop.
3. **Compile** once: int constants become floats, ``X.attr`` / ``X.attr[i]`` become synthetic
   names, so asteval runs with attribute access, subscripts and all statements disabled.

It also owns what the language *is*: its functions, time symbols, name rules and size limits,
the ``Formula`` value that the evaluator runs, and ``check_name`` for variable names.

Separate from ``controller.formulas`` (evaluation) because checking runs once per edit and
evaluation once per control cycle; neither needs the other's machinery (no asteval here).
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from controller.formulas.cfos_syntax import NO_PARSE, ColumnMap, FormulaError, to_python

FormulaText = Union[str, int, float, bool]

MAX_LENGTH = 1024  # characters of a formula string
MAX_DEPTH = 100  # AST nesting; keeps asteval's recursion far below Python's limit
#: The largest magnitude of a number: of a constant in a formula, of a variable's value and of a
#: formula's result. Far beyond any power (W) or current (A) of a site, and below 2**53, so every
#: integer in range is exact as a float and ``get_cm_vars`` never shows more than 16 digits.
MAX_ABS_NUMBER = 1e15
LIMIT_TEXT = "±" + f"{MAX_ABS_NUMBER:.0e}".replace("e+", "e")  # "±1e15", for messages


class NumberRangeError(FormulaError):
    """A number beyond ±``MAX_ABS_NUMBER`` (as a value or a formula's constant). Its own type
    because a value saved before the bound existed is dropped at start, not taken as corruption."""


FUNCTIONS: frozenset[str] = frozenset({"min", "max", "abs", "round", "floor", "ceil", "clamp"})
#: Provided by the control loop every cycle: hour 0-23, minute 0-59,
#: weekday 0 = Monday .. 6 = Sunday (Python's ``date.weekday()``; cFos counts 0 = Sunday,
#: but its formulas say ``date.weekday``, which is not a symbol here).
TIME_SYMBOLS: frozenset[str] = frozenset({"hour", "minute", "weekday"})
NAME_RE: re.Pattern[str] = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

_PHASE_INDEXES = (0, 1, 2)
_ARITY: dict[str, tuple[int, int]] = {  # function -> (min args, max args)
    "min": (1, 64), "max": (1, 64), "abs": (1, 1), "round": (1, 2),
    "floor": (1, 1), "ceil": (1, 1), "clamp": (3, 3),
}


_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_ALLOWED_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_FORBIDDEN_WHAT = {
    ast.Lambda: "lambda", ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions", ast.List: "lists",
    ast.Tuple: "tuples", ast.Dict: "dicts", ast.Set: "sets", ast.NamedExpr: "assignments",
    ast.JoinedStr: "strings", ast.Starred: "starred arguments", ast.Slice: "slices",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}


class Lookup(NamedTuple):
    """How the evaluator fills one synthetic name from ``symbols``."""

    synthetic: str  # name in the compiled tree, e.g. "M1.current_a[0]"
    symbol: str  # key in symbols, e.g. "M1.current_a"
    phase_index: int | None  # index into a tuple value (L1 = 0)
    tuple_ok: bool  # the name only appears as the sole argument of min()/max()


def _at(node: ast.AST, columns: ColumnMap) -> str:
    """The ``" (col N)"`` suffix of an error: where the node is in the text the user typed."""
    offset = getattr(node, "col_offset", None)
    if offset is None:
        return ""
    return f" (col {columns.original_col(offset + 1)})"


def _depth(tree: ast.AST) -> int:
    """Depth of an AST, iteratively (a recursive walk could itself hit the recursion limit)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Checker:
    """Allow-list walk over the parsed expression; collects the names it reads."""

    def __init__(self, columns: ColumnMap) -> None:
        self.columns = columns
        self.names: set[str] = set()
        self.tuple_ok: set[str] = set()
        self.tuple_bad: set[str] = set()

    def fail(self, node: ast.AST, message: str) -> FormulaError:
        return FormulaError(message + _at(node, self.columns))

    def check(self, node: ast.expr, in_aggregate: bool = False) -> None:
        if isinstance(node, ast.Constant):
            self._constant(node)
        elif isinstance(node, ast.Name):
            self._name(node)
        elif isinstance(node, ast.Attribute):
            self._device_value(node, None, in_aggregate)
        elif isinstance(node, ast.Subscript):
            self._subscript(node)
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _ALLOWED_BINOPS):
                raise self.fail(node, "bitwise operators are not allowed")
            self.check(node.left)
            self.check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Invert):
                raise self.fail(node, "bitwise operators are not allowed")
            self.check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self.check(value)
        elif isinstance(node, ast.Compare):
            if not all(isinstance(op, _ALLOWED_CMPOPS) for op in node.ops):
                raise self.fail(node, "only == != < <= > >= comparisons are allowed")
            for child in (node.left, *node.comparators):
                self.check(child)
        elif isinstance(node, ast.IfExp):
            for child in (node.test, node.body, node.orelse):
                self.check(child)
        elif isinstance(node, ast.Call):
            self._call(node)
        else:
            what = _FORBIDDEN_WHAT.get(type(node), type(node).__name__)
            raise self.fail(node, f"{what} not allowed")

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, (str, bytes)):
            raise self.fail(node, "strings are not allowed")
        if value is None or isinstance(value, bool):
            return
        if not isinstance(value, (int, float)):
            raise self.fail(node, f"constant {value!r} not allowed")
        problem = number_problem(value)
        if problem:
            raise NumberRangeError(problem + _at(node, self.columns))

    def _name(self, node: ast.Name) -> None:
        if node.id in FUNCTIONS:
            raise self.fail(node, f"function {node.id} must be called")
        if not NAME_RE.fullmatch(node.id):
            raise self.fail(node, f"invalid name {node.id!r}")
        self.names.add(node.id)

    def _device_value(self, node: ast.Attribute, index: int | None, in_aggregate: bool) -> None:
        if not isinstance(node.value, ast.Name):
            raise self.fail(node, "only Device.value attributes are allowed (e.g. M1.power_w)")
        base, attr = node.value.id, node.attr
        if attr.startswith("_"):
            raise self.fail(node, f"attribute {attr!r} not allowed (starts with '_')")
        if not NAME_RE.fullmatch(base) or not NAME_RE.fullmatch(attr) or base in FUNCTIONS:
            raise self.fail(node, f"invalid name {base}.{attr}")
        symbol = f"{base}.{attr}"
        self.names.add(symbol)
        if index is None:
            (self.tuple_ok if in_aggregate else self.tuple_bad).add(symbol)

    def _subscript(self, node: ast.Subscript) -> None:
        index = node.slice
        if not isinstance(node.value, ast.Attribute):
            raise self.fail(node, "only device values can be indexed (e.g. M1.current_a[0])")
        if not (isinstance(index, ast.Constant) and type(index.value) is int
                and index.value in _PHASE_INDEXES):
            raise self.fail(node, "index must be 0, 1 or 2 (phase L1, L2, L3)")
        self._device_value(node.value, index.value, False)

    def _call(self, node: ast.Call) -> None:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
            called = func.id if isinstance(func, ast.Name) else ast.unparse(func)
            raise self.fail(node, f"function {called!r} not allowed (allowed: "
                                  f"{', '.join(sorted(FUNCTIONS))})")
        if node.keywords:
            raise self.fail(node, f"{func.id}(): keyword arguments are not allowed")
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(node, f"{func.id}(): starred arguments are not allowed")
        low, high = _ARITY[func.id]
        if not low <= len(node.args) <= high:
            raise self.fail(node, f"{func.id}() takes {low if low == high else f'{low} to {high}'}"
                                  f" arguments, got {len(node.args)}")
        aggregate = func.id in ("min", "max") and len(node.args) == 1
        if aggregate and not isinstance(node.args[0], ast.Attribute):
            raise self.fail(node, f"{func.id}() of one argument needs a per-phase device value")
        for arg in node.args:
            self.check(arg, in_aggregate=aggregate)


class _Compiler(ast.NodeTransformer):
    """Rewrite the checked tree for asteval: floats everywhere, device values as plain names."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, int) and not isinstance(node.value, bool):
            return ast.copy_location(ast.Constant(float(node.value)), node)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        name = f"{node.value.id}.{node.attr}"  # type: ignore[attr-defined]
        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        attr = node.value
        name = f"{attr.value.id}.{attr.attr}[{node.slice.value}]"  # type: ignore[attr-defined]
        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)


# --------------------------------------------------------------------------- Formula


@dataclass(frozen=True)
class Formula:
    """A checked, compiled formula. Build it with ``compile_formula``.

    ``names`` holds every symbol it reads as ``symbols`` must provide it: ``"AVAIL"``,
    ``"M1.power_w"``, ``"M1.current_a"`` (also for ``M1.current_a[0]``), ``"RSE1"``, ``"hour"``.
    ``constant`` is the value of a plain number/bool formula (``100``, ``"-5"``, ``True``), else
    None. ``python`` is the expression after cFos operators were translated.
    """

    text: FormulaText
    names: frozenset[str]
    constant: float | bool | None = None
    python: str = ""
    tree: ast.Expr | None = field(default=None, repr=False, compare=False)
    lookups: tuple[Lookup, ...] = field(default=(), repr=False, compare=False)




def number_problem(value: int | float) -> str | None:
    """Why a number cannot be a constant or a value (not finite, beyond ±``MAX_ABS_NUMBER``)."""
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        number = math.inf
    if math.isnan(number):
        return "number must be finite (NaN and Infinity are not allowed)"
    if abs(number) > MAX_ABS_NUMBER:
        return f"number too large: {number_text(value)} (at most {LIMIT_TEXT})"
    return None


def number_text(value: int | float) -> str:
    """A number for a message: short, even for an integer of 4000 digits."""
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 24 else f"an integer of {len(text.lstrip('-'))} digits"
    return f"{value:.16g}"


def _number_formula(text: int | float | bool) -> Formula:
    if isinstance(text, bool):
        return Formula(text, frozenset(), text, repr(text))
    if isinstance(text, float) and not math.isfinite(text):
        raise FormulaError("number must be finite (NaN and Infinity are not allowed)")
    problem = number_problem(text)
    if problem:
        raise NumberRangeError(problem)
    return Formula(text, frozenset(), float(text), repr(text))


def _parse(text: str) -> tuple[ast.expr, ColumnMap, str]:
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula too long ({len(text)} characters, at most {MAX_LENGTH})")
    python, columns = to_python(text)
    if not python:
        raise FormulaError("formula is empty")
    try:
        tree = ast.parse(python, mode="eval")
    except SyntaxError as exc:
        if not exc.offset or exc.offset < 1:  # Python reports 0 for an unexpected end
            where = "at the end"
        else:
            where = f"col {columns.original_col(exc.offset)}"
        raise FormulaError(f"{NO_PARSE}{exc.msg} ({where})") from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError("formula is too complex") from None
    if _depth(tree) > MAX_DEPTH:
        raise FormulaError(f"formula is too complex (nested more than {MAX_DEPTH} levels)")
    return tree.body, columns, python


def _constant_of(body: ast.expr) -> float | bool | None:
    """The value of a plain number (``5``, ``-2.5``) or bool constant, else None."""
    sign = 1.0
    if isinstance(body, ast.UnaryOp) and isinstance(body.op, (ast.USub, ast.UAdd)):
        sign = -1.0 if isinstance(body.op, ast.USub) else 1.0
        body = body.operand
        if isinstance(body, ast.Constant) and isinstance(body.value, bool):
            return None
    if not isinstance(body, ast.Constant) or body.value is None:
        return None
    if isinstance(body.value, bool):
        return body.value
    if not isinstance(body.value, (int, float)):
        return None
    return sign * float(body.value)


def compile_formula(text: FormulaText) -> Formula:
    """Check and compile a formula once; raise FormulaError saying what is wrong."""
    if isinstance(text, (bool, int, float)):
        return _number_formula(text)
    if not isinstance(text, str):
        raise FormulaError("a formula is a number, a boolean or a string, "
                           f"not {type(text).__name__}")
    body, columns, python = _parse(text)
    checker = _Checker(columns)
    checker.check(body)
    constant = _constant_of(body)
    compiled = _Compiler().visit(body)
    tree = ast.fix_missing_locations(ast.Expr(value=compiled))
    return Formula(text, frozenset(checker.names), constant, python, tree,
                   _lookups(compiled, checker))


def _lookups(compiled: ast.AST, checker: _Checker) -> tuple[Lookup, ...]:
    synthetic = sorted({node.id for node in ast.walk(compiled)
                        if isinstance(node, ast.Name) and node.id not in FUNCTIONS})
    out = []
    for name in synthetic:
        symbol, _, rest = name.partition("[")
        index = int(rest[:-1]) if rest else None
        tuple_ok = symbol in checker.tuple_ok and symbol not in checker.tuple_bad
        out.append(Lookup(name, symbol, index, tuple_ok))
    return tuple(out)


def validate_formula(text: FormulaText) -> None:
    """Set/config-time check; raises FormulaError."""
    compile_formula(text)


def check_name(name: str, reserved: Collection[str] = ()) -> None:
    """Raise FormulaError unless ``name`` may name a variable (docs/configuration.md)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FormulaError(f"invalid name {name!r}: a letter or '_', then up to 63 letters, "
                           "digits or '_'")
    if keyword.iskeyword(name):
        raise FormulaError(f"invalid name {name!r}: a Python keyword")
    if name in FUNCTIONS:
        raise FormulaError(f"invalid name {name!r}: a function")
    if name in TIME_SYMBOLS:
        raise FormulaError(f"invalid name {name!r}: a time value")
    if name in reserved:
        raise FormulaError(f"invalid name {name!r}: a device or input id")
