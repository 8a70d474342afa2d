"""The live view of a running site: one ``get_dev_info`` answer drawn for a terminal.

``gridcharge status`` draws it from the service's HTTP API and ``gridcharge demo`` from its own
controller, so both show the same thing from the same data: the JSON body of ``get_dev_info``
(cFos units: mA, W). Working from that body rather than from the in-process ``Status`` is what
lets ``status`` run outside the service, and it keeps the view honest about what the API says.

Pure: a dict in, a ``rich`` renderable out. Sections, top to bottom: a title line (version,
cycle, age of the last cycle), the grid per phase against the main fuse (a phase over the fuse
is highlighted and named in a line of its own, so that it shows in plain text too), the limits
in force and the fail-safe, one row per charger (IEC state, current per phase, the limit it was
given, its maximum, and why), the inputs, and every fault. It fits 80 columns; wider terminals
give the reasons more room.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from hal.types import IEC_WORDS

#: IEC 61851-1 pilot states in words, as ``C (charging)``.
#: The words of each IEC 61851 state: the one vocabulary of ``read``, ``get_dev_info`` and here.
STATE_WORDS: dict[str, str] = dict(IEC_WORDS)
#: cFos ``state`` codes, for a service that does not send ``iec_state`` (5 is E or F).
CFOS_STATES: dict[int, str] = {1: "A", 2: "B", 3: "C", 4: "D", 5: "E/F"}
OFFLINE_STATE = 6
#: A phase at or above this share of the fuse is shown as a warning (yellow).
NEAR_FUSE_SHARE = 0.9
#: A last cycle older than this is called out: the control loop is not running.
STALE_CYCLE_S = 10.0

OK, WARN, BAD, DIM = "green", "yellow", "bold white on red", "dim"


def amps(milliamps: Any) -> float | None:
    """mA (the API's unit) to A; None for null or anything that is not a number."""
    if isinstance(milliamps, bool) or not isinstance(milliamps, (int, float)):
        return None
    return milliamps / 1000.0


def _a(milliamps: Any, missing: str = "-") -> str:
    value = amps(milliamps)
    return missing if value is None else f"{value:.1f} A"


def _w(watts: Any, missing: str = "none") -> str:
    return missing if not isinstance(watts, (int, float)) or isinstance(watts, bool) else f"{watts:.0f} W"


def state_text(device: Mapping[str, Any]) -> Text:
    """``C (charging)``, ``offline`` or ``E/F (error)`` for a charger of ``get_dev_info``."""
    code = device.get("state")
    if code == OFFLINE_STATE:
        return Text("offline", style=BAD)
    letter = device.get("iec_state") or (CFOS_STATES.get(code, "?") if isinstance(code, int) else "?")
    words = STATE_WORDS.get(letter, "error" if letter == "E/F" else "unknown")
    style = OK if letter in ("C", "D") else BAD if letter in ("E", "F", "E/F", "?") else ""
    return Text(f"{letter} ({words})", style=style)


def _title(params: Mapping[str, Any], source: str, now: float) -> Text:
    title = Text(f"gridcharge {params.get('version', '?')}", style="bold")
    title.append(f" · {source}")
    cycle = params.get("cycle_count")
    when = params.get("time")
    if cycle and isinstance(when, (int, float)):
        title.append(f" · cycle {cycle} at {time.strftime('%H:%M:%S', time.localtime(when))}")
        age = now - when
        if age > STALE_CYCLE_S:
            title.append(f"  no cycle for {age:.0f} s: is the control loop stuck?", style=BAD)
    elif not cycle:
        title.append(" · no cycle yet", style=WARN)
    return title


def _grid(params: Mapping[str, Any]) -> tuple[Table, list[Text]]:
    """The grid per phase against the fuse, and a line for every phase over the fuse."""
    fuse = amps(params.get("main_fuse_cur"))
    currents = [amps(params.get(f"grid_current_l{i}")) for i in (1, 2, 3)]
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 2, 0, 0))
    table.add_column("grid", style="bold", min_width=16)
    for i in (1, 2, 3):
        table.add_column(f"L{i}", justify="right", min_width=7)
    table.add_column("power", justify="right", min_width=8)
    over: list[Text] = []
    if all(c is None for c in currents):
        table.add_row("current", Text("grid meter offline", style=BAD), "", "", _w(params.get("grid_power_w"), "-"))
    else:
        cells: list[Text] = []
        for phase, current in enumerate(currents, start=1):
            if current is None:
                cells.append(Text("-"))
                continue
            style = ""
            if fuse is not None and current > fuse:
                style = BAD
                over.append(Text(f"L{phase} is {current - fuse:.1f} A over the {fuse:g} A main fuse", style=BAD))
            elif fuse is not None and current >= NEAR_FUSE_SHARE * fuse:
                style = WARN
            cells.append(Text(f"{current:.1f} A", style=style))
        table.add_row("current", *cells, _w(params.get("grid_power_w"), "-"))
    if fuse is not None:
        fuse_text = f"{fuse:g} A"
        table.add_row("main fuse", fuse_text, fuse_text, fuse_text, "", style=DIM)
    return table, over


def _limits(params: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", min_width=16)
    table.add_column()
    table.add_row("house limit", f"{_w(params.get('grid_limit_w'))}  (grid_limit_w)")
    table.add_row("chargers limit", f"{_w(params.get('chargers_limit_w'))}  (chargers_limit_w)")
    left = [f"{_w(params.get('power_headroom_w'), 'no power limit')} (power limits)"]
    per_phase = amps(params.get("max_total_current"))
    if per_phase is not None:
        left.append(f"{per_phase:.1f} A (fuse, on the fullest phase)")
    table.add_row("left for chargers", ", ".join(left))
    limiting = params.get("limiting") or []
    table.add_row("limited by", ", ".join(str(x) for x in limiting) if limiting else "nothing")
    failsafe = params.get("failsafe")
    table.add_row("fail-safe", Text(f"IN FORCE: {failsafe}", style=BAD) if failsafe else Text("off", style=OK))
    return table


def _charger_limit(device: Mapping[str, Any]) -> Text:
    if device.get("charging_enabled") is False:
        return Text("disabled", style=WARN)
    assigned = amps(device.get("assigned_cur"))
    if assigned is None:
        return Text("-")
    if assigned == 0:
        return Text("paused", style=WARN)
    return Text(f"{assigned:.1f} A")


def _chargers(devices: Sequence[Mapping[str, Any]]) -> Table | Text:
    chargers = [d for d in devices if d.get("is_evse")]
    if not chargers:
        return Text("no chargers (yet)", style=DIM)
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("charger", style="bold", no_wrap=True)
    table.add_column("model", style=DIM, no_wrap=True)
    table.add_column("state", no_wrap=True)
    for i in (1, 2, 3):
        table.add_column(f"L{i}", justify="right", no_wrap=True)
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("max", justify="right", no_wrap=True)
    table.add_column("reason", ratio=1, min_width=12)
    for d in chargers:
        phases = [amps(d.get(f"current_l{i}")) for i in (1, 2, 3)]
        table.add_row(
            str(d.get("dev_id", "?")), str(d.get("model", "")), state_text(d),
            *("-" if a is None else f"{a:.1f}" for a in phases),
            _charger_limit(d), _a(d.get("max_charging_cur")), str(d.get("lreason") or ""),
        )
    return table


def _inputs(inputs: Sequence[Mapping[str, Any]]) -> Text:
    line = Text()
    line.append("inputs  ", style="bold")
    if not inputs:
        line.append("none", style=DIM)
    for n, item in enumerate(inputs):
        if n:
            line.append("  ")
        active = item.get("active")
        if active is True:
            word, style = "active", WARN
        elif active is False:
            word, style = "inactive", ""
        else:
            word, style = "unreadable", BAD
        line.append(f"{item.get('id', '?')} ")
        line.append(word, style=style)
    return line


def _backend(backend: Mapping[str, Any] | None) -> list[Text]:
    """The supplier's OCPP backend: one line per charger (connected, or why not; messages waiting)."""
    if not backend:
        return []
    head = Text.assemble(("backend ", "bold"))
    if not backend.get("enabled"):
        head.append(str(backend.get("reason") or "off"), style=WARN)
        return [head]
    head.append(f"{backend.get('connected', 0)}/{backend.get('charge_points', 0)} connected",
                style=OK if backend.get("connected") == backend.get("charge_points") else BAD)
    lines = [head]
    for charger_id, cp in (backend.get("chargers") or {}).items():
        line = Text(f"  {charger_id} as {cp.get('backend_id')}: ")
        if cp.get("connected"):
            line.append(f"connected, {cp.get('ocpp_status') or '-'}", style=OK)
        else:
            line.append(f"{cp.get('state')}: {cp.get('reason') or '-'}", style=BAD)
        if cp.get("queued"):
            line.append(f", {cp['queued']} message(s) waiting", style=WARN)
        lines.append(line)
    return lines


def _faults(faults: Sequence[Any]) -> list[Text]:
    if not faults:
        return [Text.assemble(("faults  ", "bold"), ("none", OK))]
    lines = [Text.assemble(("faults  ", "bold"), (f"{len(faults)}", BAD))]
    lines += [Text(f"  {fault}", style="red") for fault in faults]
    return lines


def render(info: Mapping[str, Any], *, source: str, notes: Sequence[Text | str] = (),
           now: float | None = None) -> RenderableType:
    """One frame of the live view from a ``get_dev_info`` body.

    ``source`` names where the data comes from (the API's URL, "demo"); ``notes`` are lines
    shown under the title (a connection lost while watching, say); ``now`` (unix time) tells how
    old the last cycle is, the current time by default.
    """
    params: Mapping[str, Any] = info.get("params") or {}
    grid, over = _grid(params)
    parts: list[RenderableType] = [_title(params, source, time.time() if now is None else now)]
    parts += [Text(note, style=WARN) if isinstance(note, str) else note for note in notes]
    parts += ["", grid, *over, "", _limits(params), "", _chargers(info.get("devices") or []), "",
              _inputs(info.get("inputs") or []), *_backend(params.get("backend")), *_faults(params.get("faults") or [])]
    return Group(*parts)
