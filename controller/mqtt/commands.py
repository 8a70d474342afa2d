"""What a message on ``<prefix>/set/<VAR>`` may do, checked before it reaches the variable store.

Decisions (docs/mqtt.md):

- Only the variables listed in ``mqtt.writable`` may be set; the default is none. MQTT has no
  identity of its own beyond the broker's accounts, so what it may touch is named in the config.
- The payload is a number as text (``75``, ``-3.5``), what Home Assistant's number entity
  sends. Formulas are set through the HTTP API, where the caller is authenticated.
- A retained message is refused: it is what someone published long ago, and it would be played
  again at every reconnect, a stale grid signal each time.
- Everything else the store refuses (a value beyond its range, too many variables) is refused
  the same way, and nothing changes.
"""

from __future__ import annotations

from collections.abc import Collection

from controller.formulas import FormulaError
from controller.records.variables import normalize_expr

MAX_PAYLOAD_BYTES = 64  # far more than any number needs


class Refused(Exception):
    """A set that changes nothing; ``str()`` says why, in words for the person who sent it."""


def parse_set(name: str, payload: bytes, *, writable: Collection[str], retained: bool) -> int | float:
    """The number a set asks for, or ``Refused`` (see the module text)."""
    if name not in writable:
        allowed = ", ".join(sorted(writable)) or "none"
        raise Refused(f"{name} is not writable over MQTT (mqtt.writable: {allowed})")
    if retained:
        raise Refused("a retained set is refused: it would be played again at every reconnect "
                      "(publish without the retain flag)")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused(f"payload too long ({len(payload)} bytes): send a number")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Refused("payload is not UTF-8 text: send a number") from None
    if not text:
        raise Refused("empty payload: send a number")
    try:
        value = normalize_expr(text)
    except FormulaError as exc:
        raise Refused(str(exc)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"not a number: {text[:40]!r} (formulas are set through the HTTP API)")
    return value
