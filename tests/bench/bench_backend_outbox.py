"""Benchmark: what the backend outbox's "stored before sent" costs per call, and its file size.

Every write call of ``controller.records.backend_outbox.BackendOutbox`` is one SQLite
transaction committed with ``synchronous=FULL`` (an fsync of the WAL) before it returns, on the
gateway's thread. Measured on two file systems, in a fresh temporary directory on each:

- ``tmpfs`` (``/dev/shm``): the cost of SQLite and the code alone (an fsync is free there);
- ``workdir``: the disk of the checkout (``--workdir``, default the repository), where the fsync
  reaches the device: what a Raspberry Pi's SD card is to gridcharge.

On each: ``--transactions`` (200) transactions of ``--meters`` (3) MeterValues each are
enqueued (``start_transaction``, ``add_meter_values``, ``stop_transaction``), then all their
messages delivered in order (``first`` + ``delivered``); the time of each call, in ms (mean, p50,
p95, max). Then, on tmpfs only (the size does not depend on the file system): ``--pending``
(10,000) MeterValues of one transaction left pending, as when the backend is away for a few
hours: the file's size while open (database + WAL) and after ``close()`` (checkpointed), bytes per
message, the enqueue time at the start and at the end of the fill, and ``open()`` of that file (the
checks and ``quick_check`` at start).

The MeterValues payload is the one a three-phase box's sample gives the backend: the energy
register, the power and the three phase currents, with a timestamp (about 450 bytes of JSON).

Run: ``.venv/bin/python tests/bench/bench_backend_outbox.py [--transactions 200] [--pending 10000]``.
Prints a table, then one JSON line with the figures. Exits 1 when a message went missing or came
out of order; the times are reported, not judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import common
from controller.records.backend_outbox import FILE_NAME, START, BackendOutbox

CP = "DE-GC-0001-E1"
TMPFS = Path("/dev/shm")
T = TypeVar("T")


def meter_payload(wh: int) -> dict[str, Any]:
    """One MeterValues sample of a three-phase box at 11 kW."""
    stamp = "2026-01-01T12:00:00Z"
    sampled = [{"value": str(wh), "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
                "unit": "Wh"},
               {"value": "11040", "context": "Sample.Periodic", "measurand": "Power.Active.Import", "unit": "W"}]
    sampled += [{"value": "16.0", "context": "Sample.Periodic", "measurand": "Current.Import", "phase": phase,
                 "unit": "A"} for phase in ("L1", "L2", "L3")]
    return {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": sampled}]}


class Timer:
    """Times calls by kind, in ms."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}

    def __call__(self, kind: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = call()
        self.ms.setdefault(kind, []).append((time.perf_counter() - start) * 1e3)
        return result


def calls(directory: Path, transactions: int, meters: int) -> tuple[dict[str, dict[str, float]], bool]:
    """Per-call times on a new outbox in ``directory``, and whether every message came back in order."""
    outbox = BackendOutbox(directory / FILE_NAME)
    outbox.open()
    timer = Timer()
    enqueued: list[tuple[str, int]] = []
    for n in range(transactions):
        tx = timer("start", lambda: outbox.start_transaction(
            charge_point=CP, charger_id="E1", session_id=n, id_tag="TAG", meter_start_wh=n * 1000,
            timestamp="2026-01-01T12:00:00Z"))
        enqueued.append((START, tx.tx_key))
        for m in range(meters):
            message = timer("meter", lambda: outbox.add_meter_values(tx.tx_key, meter_payload(n * 1000 + m)))
            enqueued.append((message.action, message.seq))
        message = timer("stop", lambda: outbox.stop_transaction(
            tx.tx_key, meter_stop_wh=n * 1000 + 999, timestamp="2026-01-01T13:00:00Z", reason="EVDisconnected"))
        enqueued.append((message.action, message.seq))
    delivered: list[tuple[str, int]] = []
    while (head := timer("first", lambda: outbox.first(CP))) is not None:
        is_start = head.action == START and head.tx_key is not None
        delivered.append((head.action, head.tx_key if is_start and head.tx_key is not None else head.seq))
        backend_id = 10_000 + head.tx_key if is_start and head.tx_key is not None else None
        timer("delivered", lambda: outbox.delivered(head.seq, backend_tx_id=backend_id))
    outbox.close()
    return {kind: rounded(common.summary(ms)) for kind, ms in timer.ms.items()}, delivered == enqueued


def pending_size(directory: Path, pending: int) -> dict[str, Any]:
    """File size and enqueue time with ``pending`` MeterValues waiting; ``open()`` of that file."""
    path = directory / FILE_NAME
    outbox = BackendOutbox(path)
    outbox.open()
    tx = outbox.start_transaction(charge_point=CP, charger_id="E1", session_id=1, id_tag="TAG", meter_start_wh=0,
                                  timestamp="2026-01-01T12:00:00Z")
    times: list[float] = []
    for n in range(pending):
        start = time.perf_counter()
        outbox.add_meter_values(tx.tx_key, meter_payload(n))
        times.append((time.perf_counter() - start) * 1e3)
    open_bytes = sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith(FILE_NAME))
    count = outbox.pending()
    outbox.close()
    closed_bytes = sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith(FILE_NAME))
    again = BackendOutbox(path)
    start = time.perf_counter()
    again.open()
    open_s = time.perf_counter() - start
    reopened = again.pending()
    again.close()
    edge = max(1, min(100, pending // 10))
    return {"pending": pending, "counted": count, "reopened": reopened, "open_bytes": open_bytes,
            "closed_bytes": closed_bytes, "bytes_per_message": round(closed_bytes / max(1, pending)),
            "payload_bytes": len(json.dumps(meter_payload(pending), separators=(",", ":"))),
            "meter_ms_first": round(statistics.fmean(times[:edge]), 3),
            "meter_ms_last": round(statistics.fmean(times[-edge:]), 3), "open_s": round(open_s, 3)}


def rounded(stats: dict[str, float]) -> dict[str, float]:
    return {key: (value if key == "n" else round(value, 3)) for key, value in stats.items()}


def measure(dirs: dict[str, Path], transactions: int, meters: int, pending: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    in_order = True
    for name, base in dirs.items():
        with tempfile.TemporaryDirectory(prefix=".gc-bench-outbox-", dir=base) as tmp:
            results[name], ok = calls(Path(tmp), transactions, meters)
            in_order = in_order and ok
    size_base = TMPFS if "tmpfs" in dirs else next(iter(dirs.values()))
    with tempfile.TemporaryDirectory(prefix=".gc-bench-outbox-", dir=size_base) as tmp:
        size = pending_size(Path(tmp), pending)
    return {"transactions": transactions, "meters": meters, "calls_ms": results, "in_order": in_order,
            "size": size}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=200, help="transactions enqueued and delivered")
    parser.add_argument("--meters", type=int, default=3, help="MeterValues per transaction")
    parser.add_argument("--pending", type=int, default=10_000, help="MeterValues left pending for the size")
    parser.add_argument("--workdir", type=Path, default=common.REPO_ROOT, help="a directory on the disk to measure")
    args = parser.parse_args(argv)
    common.quiet_logging()
    dirs = {"tmpfs": TMPFS} if TMPFS.is_dir() else {}
    dirs["workdir"] = args.workdir
    r = measure(dirs, args.transactions, args.meters, args.pending)
    print(f"backend outbox: {r['transactions']} transactions of {r['meters']} MeterValues, each call committed "
          "(WAL, synchronous=FULL); ms per call")
    rows = [[f"{name}: {kind}", s["n"], s["mean"], s["p50"], s["p95"], s["max"]]
            for name, kinds in r["calls_ms"].items() for kind, s in kinds.items()]
    common.print_table(["file system: call", "n", "mean", "p50", "p95", "max"], rows)
    s = r["size"]
    print(f"{s['pending']} pending MeterValues ({s['payload_bytes']} B of JSON each): {s['open_bytes'] / 1e6:.2f} MB "
          f"while open (with the WAL), {s['closed_bytes'] / 1e6:.2f} MB closed ({s['bytes_per_message']} B a "
          f"message); enqueue {s['meter_ms_first']} ms at the start, {s['meter_ms_last']} ms at the end; "
          f"open() of that file {s['open_s']} s")
    common.emit_json({"bench": "backend_outbox", **r})
    return 0 if r["in_order"] and s["counted"] == s["reopened"] == s["pending"] + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
