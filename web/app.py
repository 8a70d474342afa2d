"""The cFos-compatible HTTP API: a Flask app with one route, ``/cnf``, dispatched on ``cmd``.

``create_app`` builds one app per listener (LAN, SMGW) around an ``ApiContext``: the web layer
reads the status the loop published and writes through the variable store; it never touches
devices (and never imports ``hal``). Every request is: read the body (at most 64 KiB) →
authenticate (``web.auth``) → find the command → check the caller's scope → run it. Every
refusal is ``{"error": "..."}`` with 400/401/403/404/405/413/429 (``web.errors``); an unexpected
exception is a 500 with the traceback in the log, never for bad input.

Decisions where SPEC §2 is silent (also in README's API section):

- A command is picked by ``cmd`` whatever the method (GET or POST), because cFos clients and the
  cFos MQTT bridge send either. ``set_cm_vars`` takes its variables from the JSON body when there
  is one, else from ``name``/``val`` in the query; both at once is a 400. ``set_tls_cert`` needs
  POST. HEAD is refused for commands that change something.
- Query parameters this API does not know are ignored (cache busters, future cFos parameters);
  a known parameter given twice is a 400. ``clear`` and ``tmp`` are ``0`` or ``1``.
- The ``set_cm_vars`` body is strict: ``{"vars": [{"name": ..., "expr": ...}, ...]}``, no other
  top-level key, ``expr`` a number, a boolean or a formula string, no name twice. Items may also
  carry ``val`` and ``error`` (ignored): they are what ``get_cm_vars`` returns, so a client may
  send back what it read. Any other item key is a 400 (most likely a typo of ``expr``). An empty
  list is a 400 unless ``clear=1`` (then it deletes every variable).
- ``get_cm_vars``: ``val``/``error`` come from the latest cycle. A variable set after that cycle
  shows its own value when it is a constant, else ``val: null`` with
  ``error: "not evaluated yet ..."`` until the loop (woken by the set) has run.
- ``override_device``: ``mamps`` is an integer 0..80000 (mA); ``mamps=-1`` removes the current
  cap (an extension: cFos uses -1 for "none"). ``flags`` is ``C`` (disable) or ``c`` (enable);
  cFos's other letters (``E e U u``) are 400. The new override is composed with the one in force.
- ``get_grid_log``: ``from``/``to`` are unix seconds or ISO 8601 (no zone = UTC; ``+`` of an
  offset that arrived as a space is accepted), ``format=json`` (default) or ``csv``, ``limit``
  1..10000 (default 10000; JSON says ``truncated: true`` when more events matched).
  CSV cells that a spreadsheet would run as a formula (``= + - @`` and no number) get a ``'``.
- ``set_tls_cert`` (POST, admin): ``{"cert": PEM, "key": PEM}``, or the two PEMs concatenated
  as the raw body (``curl --data-binary @cm.pem``). A listener without a TLS store answers 400.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import flask
from flask import Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from controller.formulas import FormulaError
from controller.loop import Override
from controller.status import Status
from controller.variables import Expr, VariableSet, VariableStore
from web.auth import Authenticator, Principal, Scope
from web.devinfo import dev_info
from web.errors import ApiError, bad_request, error_response, json_response, short

if TYPE_CHECKING:
    from controller.gridlog import GridLog
    from web.tls import TlsStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DRAIN_LIMIT_BYTES = 1024 * 1024  # an oversized body up to this is read and dropped before the 413
MAX_OVERRIDE_MA = 80_000  # IEC 61851-1 AC charging tops out at 80 A
MAX_LOG_EVENTS = 10_000
NOT_EVALUATED = "not evaluated yet (set after the latest cycle)"
ITEM_KEYS = frozenset({"name", "expr"})
IGNORED_ITEM_KEYS = frozenset({"val", "error"})  # what get_cm_vars returns, sent back by some clients
CSV_FIELDS = ("time", "ts", "kind", "name", "old", "new", "source", "grid_power_w")


@dataclass(frozen=True)
class ApiContext:
    """What the web layer may use: the store to write, the status to read, the loop's overrides."""

    store: VariableStore
    status: Callable[[], Status]
    set_override: Callable[[str, Override | None], None]
    grid_log: GridLog | None
    tls: TlsStore | None
    version: str


# --------------------------------------------------------------------------- request parsing


def one(name: str) -> str | None:
    """The query parameter ``name``, None when absent; 400 when given more than once."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise bad_request(f"parameter {name} given {len(values)} times")
    return values[0] if values else None


def required(name: str, what: str) -> str:
    value = one(name)
    if value is None:
        raise bad_request(f"parameter {name} missing: {what}")
    return value


def flag(name: str) -> bool:
    value = one(name)
    if value is None or value == "0":
        return False
    if value == "1":
        return True
    raise bad_request(f"parameter {name} must be 0 or 1, not {short(value, 30)!r}")


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
    out: list[tuple[str, Expr]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        out.append(_parse_item(index, item, seen))
    return out


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


_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_SPACED_OFFSET = re.compile(r"^(.*\d) (\d\d:?\d\d)$", re.ASCII)


def parse_time(name: str, text: str) -> float:
    """Unix seconds or ISO 8601 (no zone = UTC) → unix seconds."""
    if _NUMBER_TEXT.fullmatch(text.strip()):
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


KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


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


# --------------------------------------------------------------------------- JSON values


def json_value(value: Any) -> Any:
    """A value safe for JSON: non-finite floats become None, unknown objects their text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def _same_expr(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def vars_body(varset: VariableSet, status: Status) -> dict[str, Any]:
    """The ``get_cm_vars`` body: every variable, sorted by name, with the latest cycle's value."""
    evaluated = {v.name: v for v in status.variables}
    out = []
    for name in sorted(varset.exprs):
        expr = varset.exprs[name]
        seen = evaluated.get(name)
        if seen is not None and _same_expr(seen.expr, expr):
            val, error = seen.value, seen.error
        elif not isinstance(expr, str):
            val, error = expr, None  # a constant's value needs no cycle
        else:
            val, error = None, NOT_EVALUATED
        val = json_value(val)
        if val is not None and not isinstance(val, (bool, int, float)):
            val, error = None, error or f"not a number: {short(str(val), 60)}"
        out.append({"name": name, "expr": json_value(expr), "val": val, "error": error})
    return {"vars": out}


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(json_value(value))
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _NUMBER_TEXT.fullmatch(text):
        return "'" + text
    return text


# --------------------------------------------------------------------------- overrides


class _OverrideBook:
    """Overrides this app queued that the published status may not show yet.

    ``set_override`` is taken at the start of the loop's next cycle; the cycle running when it
    was queued may already be past that point. So for two cycles after a call, the override this
    app queued is the base for the next one (two calls in a row compose), then the status is.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._queued: dict[str, tuple[Override | None, int]] = {}

    def current(self, status: Status, dev_id: str) -> Override:
        queued = self._queued.get(dev_id)
        if queued is not None and status.cycle_count < queued[1] + 2:
            return queued[0] or Override()
        for ch in status.chargers:
            if ch.device.id == dev_id:
                return Override(current_a=ch.override_a, enabled=ch.enabled)
        return Override()

    def queued(self, status: Status, dev_id: str, override: Override | None) -> None:
        self._queued[dev_id] = (override, status.cycle_count)


# --------------------------------------------------------------------------- the API


@dataclass(frozen=True)
class Command:
    run: Callable[[Principal], Response]
    scope: Scope
    mutates: bool = False
    post_only: bool = False


class Api:
    """The commands of one listener; ``create_app`` wires them to ``/cnf``."""

    def __init__(self, ctx: ApiContext, listener: str) -> None:
        self.ctx = ctx
        self.listener = listener
        self.overrides = _OverrideBook()
        self.commands: dict[str, Command] = {
            "set_cm_vars": Command(self.set_cm_vars, Scope.VARS, mutates=True),
            "get_cm_vars": Command(self.get_cm_vars, Scope.VARS),
            "get_dev_info": Command(self.get_dev_info, Scope.STATUS),
            "get_grid_log": Command(self.get_grid_log, Scope.STATUS),
            "override_device": Command(self.override_device, Scope.ADMIN, mutates=True),
            "set_tls_cert": Command(self.set_tls_cert, Scope.ADMIN, mutates=True, post_only=True),
        }

    def source(self) -> str:
        return f"{self.listener}:{request.remote_addr or 'unknown'}"

    def dispatch(self, principal: Principal) -> Response:
        cmd = one("cmd")
        if cmd is None:
            raise bad_request(f"parameter cmd missing: one of {', '.join(self.commands)}")
        command = self.commands.get(cmd)
        if command is None:
            raise bad_request(f"unknown cmd {short(cmd, 60)!r}: one of {', '.join(self.commands)}")
        if command.post_only and request.method != "POST":
            raise ApiError(405, f"{cmd} needs POST", {"Allow": "POST"})
        if command.mutates and request.method not in ("GET", "POST"):
            raise ApiError(405, f"{cmd} changes something: use GET or POST", {"Allow": "GET, POST"})
        if not principal.may(command.scope):
            raise ApiError(403, f"{cmd} needs the '{command.scope.value}' function, which this "
                                f"{self.listener} client does not have (smgw.functions)")
        return command.run(principal)

    # ---- variables ------------------------------------------------------------------------
    def set_cm_vars(self, principal: Principal) -> Response:
        clear, tmp = flag("clear"), flag("tmp")
        if tmp and not principal.may(Scope.ADMIN):  # SPEC §2 lists tmp=1 among the admin calls
            raise ApiError(403, "tmp=1 needs the 'admin' function, which this "
                                f"{self.listener} client does not have (smgw.functions)")
        body = request.get_data(cache=True)
        has_query = one("name") is not None or one("val") is not None
        if body.strip():
            if has_query:
                raise bad_request("give the variables either as name/val in the query or as a JSON body, not both")
            items = parse_vars_body(parse_json(body), clear=clear)
        else:
            name = required("name", "the variable to set (or POST a JSON body {\"vars\": [...]})")
            val = required("val", "a number or a formula")
            items = [(name, val)]
        source = self.source()
        try:
            new = self.ctx.store.set_many(items, clear=clear, persist=not tmp, source=source)
        except FormulaError as exc:
            raise bad_request(str(exc)) from None
        names = ", ".join(short(n, 64) for n, _ in items) or "nothing"
        log.info("%s (%s) set %s%s%s", source, principal.name, names, " after clearing all" if clear else "",
                 " (tmp: not saved)" if tmp else "")
        return json_response(vars_body(new, self.ctx.status()))

    def get_cm_vars(self, principal: Principal) -> Response:
        return json_response(vars_body(self.ctx.store.snapshot(), self.ctx.status()))

    # ---- status ---------------------------------------------------------------------------
    def get_dev_info(self, principal: Principal) -> Response:
        return json_response(dev_info(self.ctx.status(), self.ctx.version))

    def get_grid_log(self, principal: Principal) -> Response:
        text_from, text_to = one("from"), one("to")
        from_ts = None if text_from is None else parse_time("from", text_from)
        to_ts = None if text_to is None else parse_time("to", text_to)
        if from_ts is not None and to_ts is not None and from_ts > to_ts:
            raise bad_request("parameter from is after to")
        fmt = one("format") or "json"
        if fmt not in ("json", "csv"):
            raise bad_request(f"parameter format must be json or csv, not {short(fmt, 30)!r}")
        limit_text = one("limit")
        limit = MAX_LOG_EVENTS
        if limit_text is not None:
            if not re.fullmatch(r"[0-9]{1,6}", limit_text) or not 1 <= int(limit_text) <= MAX_LOG_EVENTS:
                raise bad_request(f"parameter limit must be an integer 1..{MAX_LOG_EVENTS}")
            limit = int(limit_text)
        if self.ctx.grid_log is None:
            raise bad_request("the grid signal log is not enabled on this controller")
        events = self.ctx.grid_log.query(from_ts, to_ts, limit=limit + 1)
        truncated = len(events) > limit
        rows = [self._event(e) for e in events[:limit]]
        if fmt == "csv":
            return self._csv(rows)
        return json_response({"events": rows, "truncated": truncated})

    @staticmethod
    def _event(event: Any) -> dict[str, Any]:
        ts = float(event.ts)
        return {
            "time": datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "ts": ts,
            "kind": event.kind,
            "name": event.name,
            "old": json_value(event.old),
            "new": json_value(event.new),
            "source": event.source,
            "grid_power_w": json_value(event.grid_power_w),
        }

    @staticmethod
    def _csv(rows: list[dict[str, Any]]) -> Response:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_FIELDS)
        for row in rows:
            writer.writerow([row["time"], repr(row["ts"])] + [_csv_cell(row[k]) for k in CSV_FIELDS[2:]])
        response = Response(out.getvalue(), mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="gridcharge-gridlog.csv"'
        return response

    # ---- admin ----------------------------------------------------------------------------
    def override_device(self, principal: Principal) -> Response:
        dev_id = required("dev_id", "the charger to override, e.g. E1")
        mamps_text, flags = one("mamps"), one("flags")
        if mamps_text is None and flags is None:
            raise bad_request("override_device needs mamps (a current cap in mA) and/or flags (C or c)")
        mamps = None if mamps_text is None else self._mamps(mamps_text)
        enable = None if flags is None else self._flags(flags)
        status = self.ctx.status()
        self._check_charger(status, dev_id)
        with self.overrides.lock:
            base = self.overrides.current(status, dev_id)
            current_a = base.current_a if mamps is None else (None if mamps < 0 else mamps / 1000)
            enabled = base.enabled if enable is None else enable
            new = None if enabled and current_a is None else Override(current_a=current_a, enabled=enabled)
            try:
                self.ctx.set_override(dev_id, new)
            except KeyError:
                raise bad_request(f"dev_id {short(dev_id, 40)!r} is not a charger") from None
            self.overrides.queued(status, dev_id, new)
        log.info("%s (%s) override %s: %s", self.source(), principal.name, dev_id, new or "removed")
        return json_response({
            "dev_id": dev_id,
            "charging_enabled": enabled,
            "override_cur": None if current_a is None else int(round(current_a * 1000)),
        })

    @staticmethod
    def _mamps(text: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,9}", text) or not (text == "-1" or 0 <= int(text) <= MAX_OVERRIDE_MA):
            raise bad_request(f"parameter mamps must be an integer 0..{MAX_OVERRIDE_MA} (mA), "
                              f"or -1 to remove the cap, not {short(text, 30)!r}")
        return int(text)

    @staticmethod
    def _flags(text: str) -> bool:
        if text == "C":
            return False
        if text == "c":
            return True
        raise bad_request(f"parameter flags must be C (disable charging) or c (enable), not {short(text, 30)!r}"
                          " (the cFos flags E, e, U, u are not supported)")

    @staticmethod
    def _check_charger(status: Status, dev_id: str) -> None:
        if status.cycle_count == 0:
            return  # nothing published yet: set_override itself knows the chargers
        if any(ch.device.id == dev_id for ch in status.chargers):
            return
        if any(d.id == dev_id for d in (*status.meters, *status.inputs)):
            raise bad_request(f"dev_id {dev_id!r} is not a charger")
        raise bad_request(f"no charger {short(dev_id, 40)!r}; chargers: "
                          + ", ".join(ch.device.id for ch in status.chargers))

    def set_tls_cert(self, principal: Principal) -> Response:
        from web.tls import TlsError  # here, so that the app runs where TLS is not configured

        if self.ctx.tls is None:
            raise bad_request("no SMGW listener is configured: there is no TLS certificate to set")
        body = request.get_data(cache=True)
        if not body.strip():
            raise bad_request('body missing: JSON {"cert": PEM, "key": PEM} or the PEMs concatenated')
        if body.lstrip().startswith(b"{"):
            data = parse_json(body)
            if not isinstance(data, dict) or set(data) != {"cert", "key"}:
                raise bad_request('body must be {"cert": PEM, "key": PEM} with exactly these keys')
            cert, key = data["cert"], data["key"]
            if not isinstance(cert, str) or not isinstance(key, str):
                raise bad_request("cert and key must be PEM strings")
        else:
            try:
                cert, key = split_pems(body.decode("ascii"))
            except UnicodeDecodeError:
                raise bad_request("body is not PEM text (it has bytes that are not ASCII)") from None
        try:
            self.ctx.tls.install(cert, key)
        except TlsError as exc:
            raise bad_request(f"certificate not installed: {exc}") from None
        log.warning("%s (%s) installed a new SMGW TLS certificate", self.source(), principal.name)
        return json_response({"tls": json_value(self.ctx.tls.describe())})


# --------------------------------------------------------------------------- the app


def read_body() -> bytes:
    """The whole body, at most ``MAX_BODY_BYTES``, else 413 (``RequestEntityTooLarge``).

    werkzeug refuses a Content-Length above ``MAX_CONTENT_LENGTH`` before reading, but a chunked
    body it silently cuts at the limit; a cut body may still parse, so one more byte is tried.
    """
    body = request.get_data(cache=True)
    if request.content_length is None and len(body) >= MAX_BODY_BYTES:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()
    return body


def _drain(limit: int) -> None:
    """Read and drop an oversized body (up to ``limit``) so the client sees our 413 instead of a
    connection reset (closing a socket with unread data makes the kernel send RST)."""
    stream = request.environ.get("wsgi.input")
    length = request.content_length
    if stream is None or length is None or length > limit:
        return
    remaining = length
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, 65536))
            if not chunk:
                return
            remaining -= len(chunk)
    except Exception:  # the client went away: nothing to answer anyway
        return


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers: dict[str, str] = {}
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        headers["Allow"] = allowed
        message = f"method {request.method} not allowed here (allowed: {allowed})"
    elif isinstance(exc, RequestEntityTooLarge):
        _drain(DRAIN_LIMIT_BYTES)
        message = f"request body too large: at most {MAX_BODY_BYTES} bytes"
    elif status == 404:
        message = f"no such path {short(request.path, 80)!r}: the API is /cnf?cmd=..."
    else:
        message = exc.description or exc.name
    return error_response(status, message, headers)


def create_app(ctx: ApiContext, *, listener: str, auth: Authenticator) -> flask.Flask:
    """The WSGI app of one listener (``"lan"`` or ``"smgw"``) with its authenticator."""
    app = flask.Flask(f"gridcharge.{listener}")
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, TRAP_HTTP_EXCEPTIONS=False)
    api = Api(ctx, listener)
    app.extensions["gridcharge.api"] = api

    @app.before_request
    def _authenticate() -> None:
        read_body()
        client = request.remote_addr or "unknown"
        flask.g.principal = auth.authenticate(request.environ, client)

    @app.route("/cnf", methods=["GET", "POST"])
    def cnf() -> Response:
        return api.dispatch(flask.g.principal)

    @app.after_request
    def _no_store(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return _http_error(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, short(request.full_path, 200))
        return error_response(500, f"internal error ({type(exc).__name__}); the controller's log has the details")

    return app
