"""cFos syntax: the tokenizer that turns a formula as the user wrote it into Python text.

Owns the first stage of a formula's life (docs/configuration.md): cFos operators (``c ? a : b``, ``&&``,
``||``, ``!``, ``^``) are translated to Python so that formulas written for the cFos Charging
Manager work unchanged, and characters the language never uses (quotes, ``;``, ``=``) are
rejected before Python's parser sees them. Numbers are written with the ASCII digits 0-9 only:
Python would read digits of other scripts ('١٢٣', '１２３') as numbers too. It also keeps the map from columns of the translated
text back to the original, so that every later error points at what the user typed.

Separate from ``controller.formulas`` because it is pure text work (no AST, no asteval): it is
the one place that knows cFos spelling, and it can be read and tested on its own.

Also home of ``FormulaError``, the error every stage of the language raises: this module is the
first stage, so the later ones (``formula_compiler``, ``formulas``) import it from here.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Union

MAX_BRACKET_DEPTH = 32
MAX_TERNARIES = 32

#: Prefix of every "cannot be parsed" message, from this module and from Python's parser.
NO_PARSE = "formula does not parse: "


class FormulaError(ValueError):
    """A formula (or a variable name) that cannot be right; the message says what is wrong."""


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
    |(?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>\*\*|//|==|!=|<=|>=|&&|\|\||[-+*/%<>()\[\],.?:!^&|~])""",
    re.VERBOSE,
)
_BAD_CHARS = {
    "'": "strings are not allowed", '"': "strings are not allowed",
    ";": "only one expression is allowed", "=": "'=' is not allowed (compare with '==')",
}


def _non_ascii_digit(char: str) -> str | None:
    """Why a digit of another script is refused: Python's ``int``/``float`` read '١٢٣' as 123,
    so a formula or value that looks like a number to one reader must not be one to another."""
    if char.isdigit():
        return f"digit {char!r} (U+{ord(char):04X}) is not allowed: write numbers with the digits 0-9"
    return None


def _tokenize(text: str) -> list[_Tok]:
    """Split into tokens; reject any character the language does not use (strings first of all)."""
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            char = text[pos]
            reason = _BAD_CHARS.get(char) or _non_ascii_digit(char) or f"unexpected character {char!r}"
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
                raise FormulaError(f"{NO_PARSE}unmatched {tok.text!r} (col {tok.col + 1})")
            opener, segments = stack.pop()
            (stack[-1][1] if stack else top)[-1].append(_Group(opener, segments, tok))
        elif tok.text == "," and stack:
            current.append([])
        else:
            current[-1].append(tok)
    if stack:
        opener = stack[-1][0]
        raise FormulaError(f"{NO_PARSE}{opener.text!r} was never closed (col {opener.col + 1})")
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
            raise FormulaError(f"{NO_PARSE}'!' needs an operand (col {col + 1})")
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
            raise FormulaError(f"{NO_PARSE}':' without '?' (col {colon.col + 1})")
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
        raise FormulaError(f"{NO_PARSE}'?' without ':' (col {col + 1})")
    cond, then, other = items[:qpos], items[qpos + 1:cpos], items[cpos + 1:]
    if not cond or not then or not other:
        raise FormulaError(f"{NO_PARSE}'? :' needs a condition and two values (col {col + 1})")
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


@dataclass(frozen=True)
class ColumnMap:
    """Columns of the translated Python text mapped back to the formula the user wrote."""

    positions: tuple[tuple[int, _Tok], ...]  # (column in the Python text, original token)

    def original_col(self, offset: int) -> int:
        """1-based column in the original text for a 1-based column in the translated text."""
        col0 = offset - 1
        best: tuple[int, _Tok] | None = None
        for out_col, tok in self.positions:
            if out_col <= col0:
                best = (out_col, tok)
        if best is None:
            return 1
        out_col, tok = best
        return tok.col + 1 + min(col0 - out_col, len(tok.text) - 1)


def translate(text: str) -> str:
    """The Python text of a formula written with or without cFos operators (for display/tests)."""
    return to_python(text)[0]


def to_python(text: str) -> tuple[str, ColumnMap]:
    """The Python text of a formula ("" if it has no tokens) and the map of its columns back.

    Raises FormulaError for characters, keywords and cFos operators that cannot be right.
    """
    python, positions = _join(_translate_tokens(text))
    return python, ColumnMap(tuple(positions))


_KEYWORDS_ALLOWED = frozenset({"and", "or", "not", "if", "else", "True", "False", "None"})


def _translate_tokens(text: str) -> list[_Tok]:
    """Python tokens of a formula; forbidden keywords and too many ``?`` fail before any work."""
    tokens = _tokenize(text)
    for tok in tokens:
        if tok.kind == "name" and keyword.iskeyword(tok.text) and tok.text not in _KEYWORDS_ALLOWED:
            raise FormulaError(f"{tok.text!r} is not allowed (col {tok.col + 1})")
    if sum(1 for tok in tokens if tok.text == "?") > MAX_TERNARIES:
        raise FormulaError(f"too many '?' operators (at most {MAX_TERNARIES})")
    return _flatten(_translate_segment(_group(tokens)))
