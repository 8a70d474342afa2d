"""The ``get_history`` body: the controller's 24 h buckets as columns, for the status page's chart.

Columns (one list per value, the same index is the same bucket) rather than one object per
bucket: 2880 buckets of nine values are ~100 KB this way and would be three times that with the
keys repeated, and the page draws each series from one list anyway. Powers are whole watts,
unknown values ``null`` (never a made-up 0, as in ``get_dev_info``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.history import Bucket, Spread
from web.devinfo import whole


def _spreads(spreads: Sequence[Spread | None]) -> dict[str, list[int | None]]:
    return {
        "min": [whole(s.min) if s is not None else None for s in spreads],
        "avg": [whole(s.avg) if s is not None else None for s in spreads],
        "max": [whole(s.max) if s is not None else None for s in spreads],
    }


def history_body(buckets: Sequence[Bucket], *, bucket_s: float, span_s: float, cycle_s: float | None,
                 now: float) -> dict[str, Any]:
    """``{"bucket_s", "span_s", "cycle_s", "now", "t", "cycles", "grid_w", "chargers_w",
    "grid_limit_w", "chargers_limit_w", "failsafe"}`` (docs/api.md, ``get_history``)."""
    return {
        "bucket_s": bucket_s,
        "span_s": span_s,
        "cycle_s": cycle_s,
        "now": whole(now),
        "t": [whole(b.t) for b in buckets],
        "cycles": [b.cycles for b in buckets],
        "grid_w": _spreads([b.grid_w for b in buckets]),
        "chargers_w": _spreads([b.chargers_w for b in buckets]),
        "grid_limit_w": [whole(b.grid_limit_w) for b in buckets],
        "chargers_limit_w": [whole(b.chargers_limit_w) for b in buckets],
        "failsafe": [b.failsafe for b in buckets],
    }
