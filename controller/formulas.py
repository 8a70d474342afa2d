"""Formulas: the small expression language of variables, site limits, charger maxima and rules.

This module owns the whole life of a formula (SPEC §3):

1. **Translate** cFos operators (``c ? a : b``, ``&&``, ``||``, ``!``, ``^``) to Python with a
   small tokenizer, so that formulas written for the cFos Charging Manager work unchanged.
2. **Validate** the Python AST against an allow-list at set/config time, so that what cannot be
   right is rejected with a 400 instead of failing every second in the loop.
3. **Compile** once: int constants become floats, ``X.attr`` / ``X.attr[i]`` become synthetic
   names, so asteval runs with attribute access, subscripts and all statements disabled.
4. **Evaluate** many times (once per control cycle) with one asteval interpreter.
5. **Order** formulas that read each other (``evaluation_order``).

Why evaluation needs no timer: the language has no loops, no calls other than the seven listed
functions, no strings and no containers, and the AST is bounded (1024 characters, depth 100).
Arithmetic is done on floats only (bools and ints are converted at every binary operator), so a
huge power overflows at once (``9**9**9**9`` -> error in microseconds) instead of building a
huge integer. Evaluation time is therefore linear in the formula's size. Measured on the 2-core
CI-class machine: ~1 µs for a constant, 6-25 µs for a typical formula, 50-70 µs for one that
reads 10 symbols, under 1 ms for the largest allowed (a Pi 4 is about 5-10x slower);
``tests/unit/test_formulas.py::test_evaluation_cost`` prints the figures (``pytest -s``).

Decisions (documented because the brief left them to this module):

- Device tuples (``M1.current_a``) may be indexed with a constant 0, 1 or 2
  (``M1.current_a[0]`` is L1), or passed whole as the only argument of ``min``/``max``
  (``max(M1.current_a)``, the most loaded phase). Anywhere else a tuple is an evaluation error.
- Integral float results are returned as ``int`` (``100.0`` -> ``100``) so that ``get_cm_vars``
  shows what the user typed; bools stay bools; ``None`` means "no limit".
- ``c ? a : b`` uses Python truthiness (cFos: true when > 0; they differ only for negative c).
  ``^`` is Python's ``**`` with Python's precedence (binds tighter than unary minus on its left).
  ``!x`` binds to its operand like in C: ``!a == b`` is ``(not a) == b``.
- Bitwise ``&``, ``|``, ``~`` are rejected: on floats they have no meaning.
"""

from __future__ import annotations

import ast
import heapq
import keyword
import logging
import math
import re
import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Union

from asteval import Interpreter
from asteval.asteval import ALL_NODES
from asteval.astutils import safe_pow

log = logging.getLogger(__name__)

FormulaText = Union[str, int, float, bool]

MAX_LENGTH = 1024  # characters of a formula string
MAX_DEPTH = 100  # AST nesting; keeps asteval's recursion far below Python's limit
MAX_BRACKET_DEPTH = 32
MAX_TERNARIES = 32
MAX_ABS_NUMBER = 1e300  # larger constants are typos, and overflow on the first operation

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


_NO_PARSE = "formula does not parse: "


class FormulaError(ValueError):
    """A formula (or a variable name) that cannot be right; the message says what is wrong."""


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


# --------------------------------------------------------------------------- tokenizer / cFos


class _Tok(NamedTuple):
    kind: str  # "num", "name", "op"
    text: str
    col: int  # 0-based column in the original text


@dataclass
class _Group:
    """A bracketed group: ``(`` or ``[`` with its comma-separated segments."""

    open: _Tok
    segments: list[list["_Item"]]
    close: _Tok


_Item = Union[_Tok, _Group]

_TOKEN_RE = re.compile(
    r"""(?P<ws>\s+)
    |(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>\*\*|//|==|!=|<=|>=|&&|\|\||[-+*/%<>()\[\],.?:!^&|~])""",
    re.VERBOSE,
)
_BAD_CHARS = {
    "'": "strings are not allowed", '"': "strings are not allowed",
    ";": "only one expression is allowed", "=": "'=' is not allowed (compare with '==')",
}


def _tokenize(text: str) -> list[_Tok]:
    """Split into tokens; reject any character the language does not use (strings first of all)."""
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            char = text[pos]
            reason = _BAD_CHARS.get(char, f"unexpected character {char!r}")
            raise FormulaError(f"{reason} (col {pos + 1})")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()
    return tokens


def _group(tokens: list[_Tok]) -> list[_Item]:
    """Nest tokens into bracket groups (iteratively, so no recursion limit is at stake)."""
    closers = {"(": ")", "[": "]"}
    stack: list[tuple[_Tok, list[list[_Item]]]] = []
    top: list[list[_Item]] = [[]]
    for tok in tokens:
        current = stack[-1][1] if stack else top
        if tok.text in closers:
            if len(stack) >= MAX_BRACKET_DEPTH:
                raise FormulaError(f"brackets nested too deeply (col {tok.col + 1})")
            stack.append((tok, [[]]))
        elif tok.text in (")", "]"):
            if not stack or closers[stack[-1][0].text] != tok.text:
                raise FormulaError(f"{_NO_PARSE}unmatched {tok.text!r} (col {tok.col + 1})")
            opener, segments = stack.pop()
            (stack[-1][1] if stack else top)[-1].append(_Group(opener, segments, tok))
        elif tok.text == "," and stack:
            current.append([])
        else:
            current[-1].append(tok)
    if stack:
        opener = stack[-1][0]
        raise FormulaError(f"{_NO_PARSE}{opener.text!r} was never closed (col {opener.col + 1})")
    if len(top) > 1:
        raise FormulaError("only one expression is allowed (',' outside brackets)")
    return top[0]


def _is_tok(item: _Item, text: str) -> bool:
    return isinstance(item, _Tok) and item.kind == "op" and item.text == text


def _synthetic(text: str, col: int) -> _Tok:
    return _Tok("name" if text.isalpha() else "op", text, col)


def _paren(items: list[_Item], col: int) -> _Group:
    return _Group(_Tok("op", "(", col), [items], _Tok("op", ")", col))


def _operand_end(items: list[_Item], start: int) -> int:
    """Index after the unary operand starting at ``start``: prefix signs, a primary, postfixes."""
    i = start
    while i < len(items) and (_is_tok(items[i], "-") or _is_tok(items[i], "+")):
        i += 1
    if i >= len(items):
        return -1
    primary = items[i]
    if isinstance(primary, _Group):
        if primary.open.text != "(":
            return -1
    elif primary.kind == "op" or (keyword.iskeyword(primary.text)
                                  and primary.text not in ("True", "False", "None")):
        return -1
    i += 1
    while i < len(items):  # postfix: .attr, (call), [index]
        item = items[i]
        if _is_tok(item, ".") and i + 1 < len(items) and isinstance(items[i + 1], _Tok):
            i += 2
        elif isinstance(item, _Group):
            i += 1
        else:
            break
    return i


def _translate_bang(items: list[_Item]) -> list[_Item]:
    """``!x`` -> ``(not x)``, right to left so that ``!!x`` nests; ``!=`` is a separate token."""
    items = list(items)
    for i in range(len(items) - 1, -1, -1):
        if not _is_tok(items[i], "!"):
            continue
        col = items[i].col  # type: ignore[union-attr]
        end = _operand_end(items, i + 1)
        if end < 0:
            raise FormulaError(f"{_NO_PARSE}'!' needs an operand (col {col + 1})")
        items[i:end] = [_paren([_synthetic("not", col), *items[i + 1:end]], col)]
    return items


_SIMPLE = {"&&": "and", "||": "or", "^": "**"}


def _translate_segment(items: list[_Item]) -> list[_Item]:
    """Translate one comma-free segment: groups inside first, then ``!``, ``&& || ^``, ``?:``."""
    out: list[_Item] = []
    for item in items:
        if isinstance(item, _Group):
            item = _Group(item.open, [_translate_segment(seg) for seg in item.segments], item.close)
        elif item.kind == "op" and item.text in _SIMPLE:
            item = _Tok("name" if item.text != "^" else "op", _SIMPLE[item.text], item.col)
        out.append(item)
    return _split_ternary(_translate_bang(out))


def _split_ternary(items: list[_Item]) -> list[_Item]:
    """``c ? a : b`` -> ``(a) if (c) else (b)``; lowest precedence and right-associative as in C."""
    qpos = next((i for i, it in enumerate(items) if _is_tok(it, "?")), None)
    if qpos is None:
        colon = next((it for it in items if isinstance(it, _Tok) and _is_tok(it, ":")), None)
        if colon is not None:
            raise FormulaError(f"{_NO_PARSE}':' without '?' (col {colon.col + 1})")
        return items
    col = items[qpos].col  # type: ignore[union-attr]
    depth, cpos = 0, None
    for i in range(qpos + 1, len(items)):
        if _is_tok(items[i], "?"):
            depth += 1
        elif _is_tok(items[i], ":"):
            if depth == 0:
                cpos = i
                break
            depth -= 1
    if cpos is None:
        raise FormulaError(f"{_NO_PARSE}'?' without ':' (col {col + 1})")
    cond, then, other = items[:qpos], items[qpos + 1:cpos], items[cpos + 1:]
    if not cond or not then or not other:
        raise FormulaError(f"{_NO_PARSE}'? :' needs a condition and two values (col {col + 1})")
    return [_paren(_split_ternary(then), col), _synthetic("if", col), _paren(cond, col),
            _synthetic("else", col), _paren(_split_ternary(other), col)]


def _flatten(items: list[_Item]) -> list[_Tok]:
    """Tokens of nested groups, iteratively: ``!!!...x`` may nest deeper than Python recurses."""
    out: list[_Tok] = []
    stack: list[Iterator[_Item | _Tok]] = [iter(items)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, _Tok):
            out.append(item)
        else:
            parts: list[_Item | _Tok] = [item.open]
            for n, segment in enumerate(item.segments):
                if n:
                    parts.append(_Tok("op", ",", item.close.col))
                parts.extend(segment)
            parts.append(item.close)
            stack.append(iter(parts))
    return out


def _is_plain_name(tok: _Tok | None) -> bool:
    return tok is not None and tok.kind == "name" and not keyword.iskeyword(tok.text)


def _join(tokens: list[_Tok]) -> tuple[str, list[tuple[int, _Tok]]]:
    """Python text from tokens, and (output column, token) pairs to map error columns back.

    Tokens are separated by spaces except inside ``M1.power_w``, calls and brackets; a ``.`` is
    joined only to a name, so that ``1 . if`` never becomes the invalid literal ``1.if``.
    """
    parts: list[str] = []
    positions: list[tuple[int, _Tok]] = []
    length = 0
    prev: _Tok | None = None
    dot_joined = False
    for tok in tokens:
        tight = (prev is None or prev.text in ("(", "[") or tok.text in (")", "]", ",")
                 or (tok.text == "." and _is_plain_name(prev))
                 or (dot_joined and prev.text == "." and tok.kind == "name")
                 or (tok.text in ("(", "[") and (_is_plain_name(prev) or prev.text in (")", "]"))))
        dot_joined = tok.text == "." and tight
        if not tight:
            parts.append(" ")
            length += 1
        positions.append((length, tok))
        parts.append(tok.text)
        length += len(tok.text)
        prev = tok
    return "".join(parts), positions


def _original_col(positions: list[tuple[int, _Tok]], offset: int, text_len: int) -> int:
    """1-based column in the original text for a 1-based column in the translated text."""
    col0 = offset - 1
    best: tuple[int, _Tok] | None = None
    for out_col, tok in positions:
        if out_col <= col0:
            best = (out_col, tok)
    if best is None:
        return 1
    out_col, tok = best
    if col0 >= out_col + len(tok.text) and best is positions[-1]:
        return text_len + 1
    return tok.col + 1 + min(col0 - out_col, len(tok.text) - 1)


def translate(text: str) -> str:
    """The Python text of a formula written with or without cFos operators (for display/tests)."""
    return _join(_translate_tokens(text))[0]


_KEYWORDS_ALLOWED = frozenset({"and", "or", "not", "if", "else", "True", "False", "None"})


def _translate_tokens(text: str) -> list[_Tok]:
    tokens = _tokenize(text)
    for tok in tokens:
        if tok.kind == "name" and keyword.iskeyword(tok.text) and tok.text not in _KEYWORDS_ALLOWED:
            raise FormulaError(f"{tok.text!r} is not allowed (col {tok.col + 1})")
    if sum(1 for tok in tokens if tok.text == "?") > MAX_TERNARIES:
        raise FormulaError(f"too many '?' operators (at most {MAX_TERNARIES})")
    return _flatten(_translate_segment(_group(tokens)))


# --------------------------------------------------------------------------- validation


_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_ALLOWED_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_FORBIDDEN_WHAT = {
    ast.Lambda: "lambda", ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions", ast.List: "lists",
    ast.Tuple: "tuples", ast.Dict: "dicts", ast.Set: "sets", ast.NamedExpr: "assignments",
    ast.JoinedStr: "strings", ast.Starred: "starred arguments", ast.Slice: "slices",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}


class _Lookup(NamedTuple):
    """How the evaluator fills one synthetic name from ``symbols``."""

    synthetic: str  # name in the compiled tree, e.g. "M1.current_a[0]"
    symbol: str  # key in symbols, e.g. "M1.current_a"
    index: int | None  # phase index into a tuple value
    tuple_ok: bool  # the name only appears as the sole argument of min()/max()


def _at(node: ast.AST, positions: list[tuple[int, _Tok]], text_len: int) -> str:
    offset = getattr(node, "col_offset", None)
    if offset is None:
        return ""
    return f" (col {_original_col(positions, offset + 1, text_len)})"


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

    def __init__(self, positions: list[tuple[int, _Tok]], text_len: int) -> None:
        self.positions = positions
        self.text_len = text_len
        self.names: set[str] = set()
        self.tuple_ok: set[str] = set()
        self.tuple_bad: set[str] = set()

    def fail(self, node: ast.AST, message: str) -> FormulaError:
        return FormulaError(message + _at(node, self.positions, self.text_len))

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
        try:
            ok = math.isfinite(float(value)) and abs(float(value)) <= MAX_ABS_NUMBER
        except OverflowError:
            ok = False
        if not ok:
            raise self.fail(node, "number too large")

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
    lookups: tuple[_Lookup, ...] = field(default=(), repr=False, compare=False)


def _number_formula(text: int | float | bool) -> Formula:
    if isinstance(text, bool):
        return Formula(text, frozenset(), text, repr(text))
    try:
        value = float(text)
    except OverflowError:
        raise FormulaError("number too large") from None
    if not math.isfinite(value):
        raise FormulaError("number must be finite (NaN and Infinity are not allowed)")
    if abs(value) > MAX_ABS_NUMBER:
        raise FormulaError("number too large")
    return Formula(text, frozenset(), value, repr(text))


def _parse(text: str) -> tuple[ast.expr, list[tuple[int, _Tok]], str]:
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula too long ({len(text)} characters, at most {MAX_LENGTH})")
    tokens = _translate_tokens(text)
    if not tokens:
        raise FormulaError("formula is empty")
    python, positions = _join(tokens)
    try:
        tree = ast.parse(python, mode="eval")
    except SyntaxError as exc:
        if not exc.offset or exc.offset < 1:  # Python reports 0 for an unexpected end
            where = "at the end"
        else:
            where = f"col {_original_col(positions, exc.offset, len(text))}"
        raise FormulaError(f"{_NO_PARSE}{exc.msg} ({where})") from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError("formula is too complex") from None
    if _depth(tree) > MAX_DEPTH:
        raise FormulaError(f"formula is too complex (nested more than {MAX_DEPTH} levels)")
    return tree.body, positions, python


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
    return sign * float(body.value)


def compile_formula(text: FormulaText) -> Formula:
    """Check and compile a formula once; raise FormulaError saying what is wrong."""
    if isinstance(text, (bool, int, float)):
        return _number_formula(text)
    if not isinstance(text, str):
        raise FormulaError("a formula is a number, a boolean or a string, "
                           f"not {type(text).__name__}")
    body, positions, python = _parse(text)
    checker = _Checker(positions, len(text))
    checker.check(body)
    constant = _constant_of(body)
    compiled = _Compiler().visit(body)
    tree = ast.fix_missing_locations(ast.Expr(value=compiled))
    return Formula(text, frozenset(checker.names), constant, python, tree,
                   _lookups(compiled, checker))


def _lookups(compiled: ast.AST, checker: _Checker) -> tuple[_Lookup, ...]:
    synthetic = sorted({node.id for node in ast.walk(compiled)
                        if isinstance(node, ast.Name) and node.id not in FUNCTIONS})
    out = []
    for name in synthetic:
        symbol, _, rest = name.partition("[")
        index = int(rest[:-1]) if rest else None
        tuple_ok = symbol in checker.tuple_ok and symbol not in checker.tuple_bad
        out.append(_Lookup(name, symbol, index, tuple_ok))
    return tuple(out)


def validate_formula(text: FormulaText) -> None:
    """Set/config-time check; raises FormulaError."""
    compile_formula(text)


def check_name(name: str, reserved: Collection[str] = ()) -> None:
    """Raise FormulaError unless ``name`` may name a variable (SPEC §3)."""
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


def _resolve(lookup: _Lookup, symbols: Mapping[str, object]) -> tuple[object, str | None]:
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
        if lookup.index is not None:
            if lookup.index >= len(value):
                return None, f"{lookup.synthetic}: no such phase"
            value = value[lookup.index]
        elif lookup.tuple_ok:
            return _scalar_tuple(lookup.symbol, value)
        else:
            return None, (f"{lookup.symbol} is per phase: use {lookup.symbol}[0] .. [2] "
                          f"or min()/max() of it")
    elif lookup.index is not None:
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
    """Check a formula's result; integral floats become ints for display (100.0 -> 100)."""
    if value is None or isinstance(value, bool):
        return value, None
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number):
            return None, f"result is not a finite number ({number})"
        if number.is_integer() and abs(number) < 2**53:
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
