"""Reading a ``/cnf`` request: query parameters, the ``set_cm_vars`` JSON body, times, raw PEMs.

Every function here turns untrusted request text into a checked Python value or raises a 400
(``web.errors.bad_request``) whose message names the parameter and what was expected. It is
separate from ``web.app`` so that the rules for *what a request may say* sit apart from *what a
command does*; nothing here knows the store, the status or the loop. The query helpers read
Flask's ``request``; the body and value parsers are pure and take text or bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import request

from controller.records.variables import Expr
from web.errors import bad_request, short

MAX_OVERRIDE_MA = 80_000  # IEC 61851-1 AC charging tops out at 80 A
MAX_LOG_EVENTS = 10_000
ITEM_KEYS = frozenset({"name", "expr"})
IGNORED_ITEM_KEYS = frozenset({"val", "error"})  # what get_cm_vars returns, sent back by some clients
KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")

NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_SPACED_OFFSET = re.compile(r"^(.*\d) (\d\d:?\d\d)$", re.ASCII)


# --------------------------------------------------------------------------- query parameters


def one(name: str) -> str | None:
    """The query parameter ``name``, None when absent; 400 when given more than once."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise bad_request(f"parameter {name} given {len(values)} times")
    return values[0] if values else None


def required(name: str, what: str) -> str:
    """The query parameter ``name``; 400 naming ``what`` it should be when absent."""
    value = one(name)
    if value is None:
        raise bad_request(f"parameter {name} missing: {what}")
    return value


def flag(name: str) -> bool:
    """A ``0``/``1`` query flag, absent = False; anything else is a 400 rather than a guess."""
    value = one(name)
    if value is None or value == "0":
        return False
    if value == "1":
        return True
    raise bad_request(f"parameter {name} must be 0 or 1, not {short(value, 30)!r}")


def parse_limit(text: str | None) -> int:
    """A record download's ``limit``: 1..``MAX_LOG_EVENTS``, absent = ``MAX_LOG_EVENTS``."""
    if text is None:
        return MAX_LOG_EVENTS
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_LOG_EVENTS:
        raise bad_request(f"parameter limit must be an integer 1..{MAX_LOG_EVENTS}")
    return int(text)


@dataclass(frozen=True)
class LogQuery:
    """The parameters of a record download (``get_grid_log``, ``get_sessions``)."""

    from_ts: float | None
    to_ts: float | None
    fmt: str  # "json" | "csv"
    limit: int
    newest_first: bool = False  # order=newest: the last ``limit`` rows, newest first


def log_query() -> LogQuery:
    """``from``/``to`` (unix seconds or ISO 8601, ``from`` not after ``to``), ``format``
    (``json``, the default, or ``csv``), ``limit`` and ``order`` (``oldest``, the default, or
    ``newest``) of this request; 400 for anything else."""
    text_from, text_to = one("from"), one("to")
    from_ts = None if text_from is None else parse_time("from", text_from)
    to_ts = None if text_to is None else parse_time("to", text_to)
    if from_ts is not None and to_ts is not None and from_ts > to_ts:
        raise bad_request("parameter from is after to")
    fmt = one("format") or "json"
    if fmt not in ("json", "csv"):
        raise bad_request(f"parameter format must be json or csv, not {short(fmt, 30)!r}")
    order = one("order") or "oldest"
    if order not in ("oldest", "newest"):
        raise bad_request(f"parameter order must be oldest or newest, not {short(order, 30)!r}")
    return LogQuery(from_ts, to_ts, fmt, parse_limit(one("limit")), newest_first=order == "newest")


def parse_mamps(text: str) -> int:
    """``override_device``'s ``mamps``: 0..``MAX_OVERRIDE_MA`` mA, or -1 to remove the cap."""
    if not re.fullmatch(r"-?[0-9]{1,9}", text) or not (text == "-1" or 0 <= int(text) <= MAX_OVERRIDE_MA):
        raise bad_request(f"parameter mamps must be an integer 0..{MAX_OVERRIDE_MA} (mA), "
                          f"or -1 to remove the cap, not {short(text, 30)!r}")
    return int(text)


def parse_enable_flag(text: str) -> bool:
    """``override_device``'s ``flags`` → charging enabled: ``C`` disables, ``c`` enables."""
    if text == "C":
        return False
    if text == "c":
        return True
    raise bad_request(f"parameter flags must be C (disable charging) or c (enable), not {short(text, 30)!r}"
                      " (the cFos flags E, e, U, u are not supported)")


def parse_time(name: str, text: str) -> float:
    """Unix seconds or ISO 8601 (no zone = UTC) → unix seconds."""
    if NUMBER_TEXT.fullmatch(text.strip()):
        value = float(text)
        if math.isfinite(value) and abs(value) < 1e11:
            return value
        raise bad_request(f"parameter {name}: {short(text, 40)} is out of range")
    candidate = _SPACED_OFFSET.sub(r"\1+\2", text.strip())  # '+01:00' arrives as ' 01:00' in a URL
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise bad_request(f"parameter {name} must be unix seconds or ISO 8601 "
                          f"(2026-01-05T12:00:00Z), not {short(text, 60)!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        raise bad_request(f"parameter {name}: {short(text, 40)} is out of range") from None


# --------------------------------------------------------------------------- JSON bodies


def _reject_constant(name: str) -> Any:
    raise bad_request(f"body is not valid JSON: {name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """The body as JSON whatever the Content-Type (``curl -d`` says form-urlencoded)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad_request(f"body is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise bad_request("body is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise bad_request(f"body is not usable JSON: {exc}") from None


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def parse_vars_body(data: Any, *, clear: bool) -> list[tuple[str, Expr]]:
    """The (name, expr) pairs of a ``set_cm_vars`` body, checked for shape (the store checks
    names and formulas)."""
    shape = '{"vars": [{"name": "N", "expr": 1}, ...]}'
    if not isinstance(data, dict):
        raise bad_request(f"body must be a JSON object {shape}, not {_type_name(data)}")
    unknown = sorted(set(data) - {"vars"})
    if unknown:
        raise bad_request(f"unknown key(s) in body: {', '.join(map(repr, unknown))} (expected {shape})")
    if "vars" not in data:
        raise bad_request(f'body has no "vars" list (expected {shape})')
    items = data["vars"]
    if not isinstance(items, list):
        raise bad_request(f'"vars" must be a list, not {_type_name(items)}')
    if not items and not clear:
        raise bad_request('"vars" is empty: nothing to set (with clear=1 an empty list deletes every variable)')
    seen: set[str] = set()
    return [_parse_item(index, item, seen) for index, item in enumerate(items)]


def _parse_item(index: int, item: Any, seen: set[str]) -> tuple[str, Expr]:
    where = f"vars[{index}]"
    if not isinstance(item, dict):
        raise bad_request(f'{where} must be an object {{"name": ..., "expr": ...}}, not {_type_name(item)}')
    unknown = sorted(set(item) - ITEM_KEYS - IGNORED_ITEM_KEYS)
    if unknown:
        raise bad_request(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: name, expr)")
    for key in ("name", "expr"):
        if key not in item:
            raise bad_request(f'{where}: "{key}" missing')
    name, expr = item["name"], item["expr"]
    if not isinstance(name, str):
        raise bad_request(f"{where}: name must be a string, not {_type_name(name)}")
    if not isinstance(expr, (bool, int, float, str)):
        raise bad_request(f"{where} ({short(name, 70)}): expr must be a number, a boolean or a formula "
                          f"string, not {_type_name(expr)}")
    if name in seen:
        raise bad_request(f"{where}: variable {short(name, 70)} given twice")
    seen.add(name)
    return name, expr


def vars_to_set(body: bytes, *, clear: bool) -> list[tuple[str, Expr]]:
    """The (name, expr) pairs of a ``set_cm_vars`` request: from the JSON body when there is one,
    else from ``name``/``val`` in the query (cFos clients send either); both at once is a 400."""
    has_query = one("name") is not None or one("val") is not None
    if body.strip():
        if has_query:
            raise bad_request("give the variables either as name/val in the query or as a JSON body, not both")
        return parse_vars_body(parse_json(body), clear=clear)
    name = required("name", "the variable to set (or POST a JSON body {\"vars\": [...]})")
    val = required("val", "a number or a formula")
    return [(name, val)]


def parse_cert_json(body: bytes) -> tuple[str, str]:
    """A ``set_tls_cert`` JSON body ``{"cert": PEM, "key": PEM}`` → (certificates, key)."""
    data = parse_json(body)
    if not isinstance(data, dict) or set(data) != {"cert", "key"}:
        raise bad_request('body must be {"cert": PEM, "key": PEM} with exactly these keys')
    cert, key = data["cert"], data["key"]
    if not isinstance(cert, str) or not isinstance(key, str):
        raise bad_request("cert and key must be PEM strings")
    return cert, key


# --------------------------------------------------------------------------- raw PEM bodies


def pem_blocks(text: str, label: str) -> list[str]:
    """Every ``-----BEGIN label----- ... -----END label-----`` block, in one linear scan (a regex
    with a back-reference is quadratic on a hostile body of unterminated BEGIN lines)."""
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    blocks: list[str] = []
    pos = 0
    while (start := text.find(begin, pos)) >= 0:
        stop = text.find(end, start)
        if stop < 0:
            break
        pos = stop + len(end)
        blocks.append(text[start:pos])
    return blocks


def split_pems(text: str) -> tuple[str, str]:
    """A raw body with the certificate(s) and the key concatenated → (certificates, key)."""
    certs = pem_blocks(text, "CERTIFICATE")
    keys = [block for label in KEY_LABELS for block in pem_blocks(text, label)]
    if not certs and not keys:
        raise bad_request('body must be JSON {"cert": PEM, "key": PEM} or the PEM certificate and key concatenated')
    return "\n".join(certs) + "\n", "\n".join(keys) + "\n"


def parse_cert_body(body: bytes) -> tuple[str, str]:
    """A ``set_tls_cert`` body, JSON or the raw PEMs concatenated → (certificates, key)."""
    if not body.strip():
        raise bad_request('body missing: JSON {"cert": PEM, "key": PEM} or the PEMs concatenated')
    if body.lstrip().startswith(b"{"):
        return parse_cert_json(body)
    try:
        return split_pems(body.decode("ascii"))
    except UnicodeDecodeError:
        raise bad_request("body is not PEM text (it has bytes that are not ASCII)") from None
