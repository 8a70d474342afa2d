"""Shaping answers: controller values → JSON-safe values, the ``get_cm_vars`` body, grid-log rows,
session rows and their CSV downloads.

Separate from ``web.app`` because these are pure functions of the data the loop published (no
request, no store, no lock): what a client *sees* is decided here, what a command *does* there.
JSON and CSV both go through ``json_value`` so that NaN/inf never reach a client as invalid JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from flask import Response

from controller.status import Status
from controller.records.variables import VariableSet
from web.errors import short
from web.parsing import NUMBER_TEXT

NOT_EVALUATED = "not evaluated yet (set after the latest cycle)"
CSV_FIELDS = ("time", "ts", "kind", "name", "old", "new", "source", "grid_power_w")
SESSION_CSV_FIELDS = ("id", "charger", "start", "start_ts", "end", "end_ts", "energy_wh", "energy_source",
                      "start_wh", "end_wh", "id_tag", "transaction_id", "backend_transaction_id", "stop_reason")


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


def event_row(event: Any) -> dict[str, Any]:
    """One grid-log event as a ``get_grid_log`` row (UTC time with milliseconds and ``Z``)."""
    ts = float(event.ts)
    return {
        "time": _iso_ms(ts),
        "ts": ts,
        "kind": event.kind,
        "name": event.name,
        "old": json_value(event.old),
        "new": json_value(event.new),
        "source": event.source,
        "grid_power_w": json_value(event.grid_power_w),
    }


def _csv_cell(value: Any, *, watts: bool = False) -> str:
    """A cell a spreadsheet will not run as a formula: ``= + - @`` text that is no number gets a ``'``.

    Numbers are rounded to what they mean: ``watts`` (grid power, a limit, an energy in Wh) to
    whole units, any other number written without a float's noise (``50`` for 50.0, ``0.35`` stays).
    """
    if value is None:
        return ""
    value = json_value(value)
    if isinstance(value, float) and (watts or value.is_integer()):
        value = round(value)
    text = value if isinstance(value, str) else json.dumps(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not NUMBER_TEXT.fullmatch(text):
        return "'" + text
    return text


def _whole_second(ts: float) -> tuple[str, str]:
    """A CSV row's time and ts: the second the event happened in (cut, not rounded, so a row
    never shows a later second than it happened in)."""
    whole = math.floor(ts)
    return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), str(whole)


def _csv_download(header: tuple[str, ...], lines: list[list[str]], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(lines)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def grid_log_csv(rows: list[dict[str, Any]]) -> Response:
    """The ``get_grid_log`` rows as a CSV download, for a spreadsheet: whole-second UTC times,
    powers and limits in whole watts (the JSON keeps milliseconds and full values)."""
    lines = []
    for row in rows:
        watts = row["kind"] == "limit"  # old/new of a limit row are watts
        lines.append([*_whole_second(row["ts"]), _csv_cell(row["kind"]), _csv_cell(row["name"]),
                      _csv_cell(row["old"], watts=watts), _csv_cell(row["new"], watts=watts),
                      _csv_cell(row["source"]), _csv_cell(row["grid_power_w"], watts=True)])
    return _csv_download(CSV_FIELDS, lines, "gridcharge-gridlog.csv")


def _iso_ms(ts: float | None) -> str | None:
    if ts is None or not math.isfinite(ts):
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def session_row(session: Any) -> dict[str, Any]:
    """One session as a ``get_sessions`` row: its times as UTC text with milliseconds (None:
    not known, or still open) and as unix seconds, and every column of the session log."""
    return {
        "id": session.id,
        "charger": session.charger_id,
        "start": _iso_ms(session.start_ts),
        "end": _iso_ms(session.end_ts),
        "start_ts": json_value(session.start_ts),
        "end_ts": json_value(session.end_ts),
        "open": session.end_ts is None,
        "energy_wh": json_value(session.energy_wh),
        "energy_source": session.energy_source,
        "start_wh": json_value(session.start_wh),
        "end_wh": json_value(session.end_wh),
        "id_tag": session.id_tag,
        "transaction_id": session.transaction_id,
        "backend_transaction_id": session.backend_transaction_id,
        "stop_reason": session.stop_reason,
    }


def _csv_time(ts: float | None) -> list[str]:
    return ["", ""] if ts is None else list(_whole_second(ts))


def sessions_csv(rows: list[dict[str, Any]]) -> Response:
    """The ``get_sessions`` rows as a CSV download: whole-second UTC times (empty: not known or
    still open), energies in whole Wh, every text cell safe from spreadsheet formulas."""
    lines = [[_csv_cell(row["id"]), _csv_cell(row["charger"]), *_csv_time(row["start_ts"]),
              *_csv_time(row["end_ts"]), _csv_cell(row["energy_wh"], watts=True),
              _csv_cell(row["energy_source"]), _csv_cell(row["start_wh"], watts=True),
              _csv_cell(row["end_wh"], watts=True), _csv_cell(row["id_tag"]), _csv_cell(row["transaction_id"]),
              _csv_cell(row["backend_transaction_id"]), _csv_cell(row["stop_reason"])] for row in rows]
    return _csv_download(SESSION_CSV_FIELDS, lines, "gridcharge-sessions.csv")
