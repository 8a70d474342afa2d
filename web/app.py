"""The cFos-compatible HTTP API: a Flask app with one route, ``/cnf``, dispatched on ``cmd``.

``create_app`` builds one app per listener (LAN, SMGW) around an ``ApiContext``: the web layer
reads the status the loop published and writes through the variable store; it never touches
devices (and never imports ``hal``). Every request is: read the body (at most 64 KiB) →
authenticate (``web.auth``) → find the command → check the caller's scope → run it. Every
refusal is ``{"error": "..."}`` with 400/401/403/404/405/413/429, or 503 for a grid log that
cannot be read now (``web.errors``); an unexpected exception is a 500 with the traceback in the
log, never for bad input.

Decisions where the cFos documentation is silent (also in docs/api.md):

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
  It first waits up to ``FLUSH_BEFORE_QUERY_S`` for queued rows, so a change made just before
  is in the answer.
- ``get_sessions``: the charging sessions that started in ``from``..``to`` (a session whose
  start is not known counts by its end), open ones included, with the same ``from``/``to``/
  ``format``/``limit`` as ``get_grid_log``, 503 the same way; JSON ``{"sessions": [...],
  "truncated": bool}``, CSV with whole-second times and whole Wh.
- ``set_cm_vars`` answers ``"saved": false`` besides the ``get_cm_vars`` body while saving the
  variables fails (a full or read-only card): the values act, but a restart would lose them
  unless saving recovers (it is retried every second). The key is absent while saving works.
- ``get_grid_log`` answers 503 (``Retry-After: 5``) when the log file cannot be read now; a
  damaged file is then being kept aside and replaced, so asking again reads the new log.
- ``get_grid_log`` and ``get_sessions`` take ``order=newest`` (an addition): newest first, so
  that ``limit=12`` gives the last twelve (the status page's last signals).
- ``get_history`` (status scope): the controller's last 24 h in 30 s buckets (``web.history``),
  ``from`` to get only the newer buckets; 400 when the controller keeps no history.
- The LAN listener also serves the status page at ``/`` (``web.page``); the SMGW listener does not.
- ``set_tls_cert`` (POST, admin): ``{"cert": PEM, "key": PEM}``, or the two PEMs concatenated
  as the raw body (``curl --data-binary @cm.pem``). A listener without a TLS store answers 400.

The request parsing lives in ``web.parsing`` and the answer shaping in ``web.render``; this module
keeps the listener's app, the command table and what each command does.

With an ``ApiContext.metrics``, the LAN app also serves ``GET /metrics`` (``web.metrics``: basic auth
unless ``http.metrics_auth`` is false) and both apps count every answer for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flask
from flask import Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from controller.formulas import FormulaError
from controller.records.record_writer import RecordUnavailable
from controller.allocation.rules import Override
from controller.status import Status
from controller.records.variables import VariableStore
from web.auth import Authenticator, Principal, Scope
from web.devinfo import dev_info
from web.errors import ApiError, bad_request, error_response, json_response, short
from web.metrics import METRICS_PATH, Metrics, install_metrics, open_to_all
from web.history import history_body
from web.page import register_page
from web.parsing import (
    flag,
    log_query,
    one,
    parse_cert_body,
    parse_enable_flag,
    parse_mamps,
    parse_time,
    required,
    vars_to_set,
)
from web.render import event_row, grid_log_csv, json_value, session_row, sessions_csv, vars_body

if TYPE_CHECKING:
    from controller.history import History
    from controller.records.gridlog import GridLog
    from controller.records.sessions import Session, SessionLog
    from web.tls import TlsStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DRAIN_LIMIT_BYTES = 1024 * 1024  # an oversized body up to this is read and dropped before the 413
FLUSH_BEFORE_QUERY_S = 2.0  # get_grid_log/get_sessions wait this long at most for queued rows


def _saving_works() -> bool:
    return False


@dataclass(frozen=True)
class ApiContext:
    """What the web layer may use: the store to write, the status to read, the loop's overrides.

    ``save_failing`` tells whether saving the variables fails now (the service's saver); while it
    does, ``set_cm_vars`` answers ``"saved": false``. ``main_fuse_a`` is the site's fuse, which
    ``get_dev_info`` shows as ``params.main_fuse_cur`` (None: not known, ``null``).
    """

    store: VariableStore
    status: Callable[[], Status]
    #: The loop's ``update_override(charger_id, current_a=..., enabled=...)``: a part not given
    #: stays as it is; returns the override in force (None: none); KeyError for no such charger.
    update_override: Callable[..., Override | None]
    grid_log: GridLog | None
    tls: TlsStore | None
    version: str
    save_failing: Callable[[], bool] = _saving_works
    main_fuse_a: float | None = None
    sessions: SessionLog | None = None  # the session log (get_sessions); None: not enabled
    metrics: Metrics | None = None  # GET /metrics on the LAN and the request counter; None: neither
    #: The status page's additions: the 24 h history (``get_history``; None: not kept), the
    #: configured cycle (how often the page asks) and each charger's open session (its energy in
    #: ``get_dev_info``).
    history: History | None = None
    cycle_s: float | None = None
    open_sessions: Callable[[], Mapping[str, Session]] | None = None


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
        self.commands: dict[str, Command] = {
            "set_cm_vars": Command(self.set_cm_vars, Scope.VARS, mutates=True),
            "get_cm_vars": Command(self.get_cm_vars, Scope.VARS),
            "get_dev_info": Command(self.get_dev_info, Scope.STATUS),
            "get_grid_log": Command(self.get_grid_log, Scope.STATUS),
            "get_sessions": Command(self.get_sessions, Scope.STATUS),
            "get_history": Command(self.get_history, Scope.STATUS),
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
        if tmp and not principal.may(Scope.ADMIN):  # docs/api.md lists tmp=1 among the admin calls
            raise ApiError(403, "tmp=1 needs the 'admin' function, which this "
                                f"{self.listener} client does not have (smgw.functions)")
        items = vars_to_set(request.get_data(cache=True), clear=clear)
        source = self.source()
        try:
            new = self.ctx.store.set_many(items, clear=clear, persist=not tmp, source=source)
        except FormulaError as exc:
            raise bad_request(str(exc)) from None
        names = ", ".join(short(n, 64) for n, _ in items) or "nothing"
        log.info("%s (%s) set %s%s%s", source, principal.name, names, " after clearing all" if clear else "",
                 " (tmp: not saved)" if tmp else "")
        body = vars_body(new, self.ctx.status())
        if not tmp and self.ctx.save_failing():
            body["saved"] = False  # acts now, but a restart would lose it unless saving recovers
        return json_response(body)

    def get_cm_vars(self, principal: Principal) -> Response:
        return json_response(vars_body(self.ctx.store.snapshot(), self.ctx.status()))

    # ---- status ---------------------------------------------------------------------------
    def get_dev_info(self, principal: Principal) -> Response:
        sessions = self.ctx.open_sessions() if self.ctx.open_sessions is not None else None
        return json_response(dev_info(self.ctx.status(), self.ctx.version, main_fuse_a=self.ctx.main_fuse_a,
                                      sessions=sessions))

    def get_grid_log(self, principal: Principal) -> Response:
        return _download("get_grid_log", self.ctx.grid_log, "the grid signal log", event_row, grid_log_csv,
                         "events")

    def get_sessions(self, principal: Principal) -> Response:
        return _download("get_sessions", self.ctx.sessions, "the session log", session_row, sessions_csv,
                         "sessions")

    def get_history(self, principal: Principal) -> Response:
        """The last 24 h in buckets (``web.history``); ``from``: only buckets starting then or later."""
        text_from = one("from")
        since = None if text_from is None else parse_time("from", text_from)
        history = self.ctx.history
        if history is None:
            raise bad_request("the history is not kept on this controller")
        return json_response(history_body(history.snapshot(since), bucket_s=history.bucket_s,
                                          span_s=history.span_s, cycle_s=self.ctx.cycle_s, now=history.now()))

    # ---- admin ----------------------------------------------------------------------------
    def override_device(self, principal: Principal) -> Response:
        dev_id = required("dev_id", "the charger to override, e.g. E1")
        mamps_text, flags = one("mamps"), one("flags")
        if mamps_text is None and flags is None:
            raise bad_request("override_device needs mamps (a current cap in mA) and/or flags (C or c)")
        mamps = None if mamps_text is None else parse_mamps(mamps_text)
        enable = None if flags is None else parse_enable_flag(flags)
        status = self.ctx.status()
        self._check_charger(status, dev_id)
        change: dict[str, Any] = {}
        if mamps is not None:
            change["current_a"] = None if mamps < 0 else mamps / 1000
        if enable is not None:
            change["enabled"] = enable
        try:
            new = self.ctx.update_override(dev_id, **change)  # composes with the override in force
        except KeyError:
            raise bad_request(f"dev_id {short(dev_id, 40)!r} is not a charger") from None
        log.info("%s (%s) override %s: %s", self.source(), principal.name, dev_id, new or "removed")
        current_a = new.current_a if new is not None else None
        return json_response({
            "dev_id": dev_id,
            "charging_enabled": new.enabled if new is not None else True,
            "override_cur": None if current_a is None else int(round(current_a * 1000)),
        })

    @staticmethod
    def _check_charger(status: Status, dev_id: str) -> None:
        if status.cycle_count == 0:
            return  # nothing published yet: update_override itself knows the chargers
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
        cert, key = parse_cert_body(request.get_data(cache=True))
        try:
            self.ctx.tls.install(cert, key)
        except TlsError as exc:
            raise bad_request(f"certificate not installed: {exc}") from None
        log.warning("%s (%s) installed a new SMGW TLS certificate", self.source(), principal.name)
        return json_response({"tls": json_value(self.ctx.tls.describe())})


def _download(cmd: str, record: Any, what: str, to_row: Callable[[Any], dict[str, Any]],
              to_csv: Callable[[list[dict[str, Any]]], Response], key: str) -> Response:
    """A record (the grid log, the session log) as JSON ``{key: [...], "truncated": bool}`` or
    CSV: at most ``limit`` rows in the time range, after waiting up to ``FLUSH_BEFORE_QUERY_S``
    for queued rows (read your own writes). A file that cannot be read now is a 503 with
    Retry-After; bad parameters are a 400 before anything is read."""
    q = log_query()
    if record is None:
        raise bad_request(f"{what} is not enabled on this controller")
    try:
        record.flush(FLUSH_BEFORE_QUERY_S)
    except TimeoutError:
        log.warning("%s: the %s writer is behind; answering without its queue", cmd, record.spec.label)
    try:
        found = record.query(q.from_ts, q.to_ts, limit=q.limit + 1, newest_first=q.newest_first)
    except RecordUnavailable as exc:
        raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
    rows = [to_row(item) for item in found[:q.limit]]
    if q.fmt == "csv":
        return to_csv(rows)
    return json_response({key: rows, "truncated": len(found) > q.limit})


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
    app = flask.Flask(f"gridcharge.{listener}", static_folder=None)  # no /static/ route from the cwd
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, TRAP_HTTP_EXCEPTIONS=False)
    api = Api(ctx, listener)
    app.extensions["gridcharge.api"] = api

    metrics_open = open_to_all(ctx.metrics, listener)

    @app.before_request
    def _authenticate() -> None:
        read_body()
        client = request.remote_addr or "unknown"
        if metrics_open and request.path == METRICS_PATH:  # http.metrics_auth: false
            flask.g.principal = Principal("metrics scraper", frozenset())
            return
        flask.g.principal = auth.authenticate(request.environ, client)

    @app.route("/cnf", methods=["GET", "POST"])
    def cnf() -> Response:
        return api.dispatch(flask.g.principal)

    if ctx.metrics is not None:
        install_metrics(app, ctx.metrics, listener=listener, commands=api.commands)
    if listener == "lan":
        register_page(app)  # the status page at / (the SMGW listener serves the API only)

    @app.after_request
    def _no_store(response: Response) -> Response:
        response.headers.setdefault("Cache-Control", "no-store")  # the page's files revalidate instead
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
