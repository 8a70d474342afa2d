"""controller.records.backend_outbox: the durable queue of OCPP transaction messages, on a real
SQLite file in a temporary directory, with an injected clock (pruning by age).

Permissions do not stop root (CI runs as root), so the read-only state directory is a read-only
bind mount in a private user + mount namespace (``unshare -rm``), in a child process; without
root a ``chmod`` does it in-process. SIGKILL is attacked in
tests/integration/test_backend_outbox_kill.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_clock import FakeClock

from controller.records.backend_outbox import (
    DAY_S,
    FILE_NAME,
    METER_VALUES,
    RETENTION_S,
    START,
    STOP,
    BackendOutbox,
    BackendOutboxError,
    OutMessage,
    RecordFileError,
    Transaction,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STAMP = "20260101T000000Z"
ROOT = Path(__file__).resolve().parents[2]
CP1, CP2, CP3 = "DE-GC-0001-E1", "DE-GC-0001-E2", "DE-GC-0001-E3"

Outboxes = Callable[..., BackendOutbox]


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / FILE_NAME


@pytest.fixture()
def outboxes(path: Path, clock: FakeClock) -> Iterator[Outboxes]:
    """``make(**kwargs)``: an opened ``BackendOutbox`` on ``path``; all closed at the end."""
    made: list[BackendOutbox] = []

    def make(**kwargs: Any) -> BackendOutbox:
        kwargs.setdefault("clock", clock)
        outbox = BackendOutbox(path, **kwargs)
        outbox.open()
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


def start(outbox: BackendOutbox, charge_point: str = CP1, charger_id: str = "E1", session_id: int | None = 7,
          meter_start_wh: int = 1000) -> Transaction:
    return outbox.start_transaction(charge_point=charge_point, charger_id=charger_id, session_id=session_id,
                                    id_tag="TAG-1", meter_start_wh=meter_start_wh, timestamp="2026-01-01T00:00:00Z")


def meter(wh: int) -> dict[str, Any]:
    """A MeterValues payload as the gateway builds it (without transactionId)."""
    return {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T00:05:00Z", "sampledValue": [
        {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]}


def stop(outbox: BackendOutbox, tx_key: int, meter_stop_wh: int = 5000) -> OutMessage:
    return outbox.stop_transaction(tx_key, meter_stop_wh=meter_stop_wh, timestamp="2026-01-01T01:00:00Z",
                                   reason="EVDisconnected")


def drain(outbox: BackendOutbox, charge_point: str, backend_tx_id: int = 900) -> list[tuple[str, int | None]]:
    """Deliver the charge point's messages in order, as the sender does; (action, tx_key) each."""
    seen = []
    while (message := outbox.first(charge_point)) is not None:
        seen.append((message.action, message.tx_key))
        outbox.delivered(message.seq, backend_tx_id=backend_tx_id if message.action == START else None)
    return seen


def dump(path: Path) -> list[list[tuple[Any, ...]]]:
    """Every row of the three tables (what "nothing changed" compares)."""
    conn = sqlite3.connect(path)
    try:
        return [conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("messages", "transactions", "state")]
    finally:
        conn.close()


# --------------------------------------------------------------------------- the API


def test_a_transaction_is_three_kinds_of_message_as_sent(outboxes: Outboxes, clock: FakeClock) -> None:
    outbox = outboxes()
    tx = start(outbox)
    assert tx == Transaction(tx.tx_key, CP1, "E1", 7, None, True, T0, 1000, "TAG-1")
    clock.advance(60)
    values = outbox.add_meter_values(tx.tx_key, meter(2000))
    assert (values.action, values.payload, values.tx_key, values.attempts, values.created_ts) == (
        METER_VALUES, meter(2000), tx.tx_key, 0, T0 + 60)
    stopped = outbox.stop_transaction(tx.tx_key, meter_stop_wh=5000, timestamp="2026-01-01T01:00:00Z",
                                      reason="EVDisconnected", transaction_data=meter(4000)["meterValue"])
    assert stopped.payload == {"meterStop": 5000, "timestamp": "2026-01-01T01:00:00Z", "reason": "EVDisconnected",
                               "idTag": "TAG-1", "transactionData": meter(4000)["meterValue"]}
    assert outbox.pending() == outbox.pending(CP1) == 3 and outbox.pending(CP2) == 0

    first = outbox.first(CP1)
    assert first is not None and first.action == START and first.created_ts == T0
    assert first.payload == {"connectorId": 1, "idTag": "TAG-1", "meterStart": 1000,
                             "timestamp": "2026-01-01T00:00:00Z"}
    assert first.seq < values.seq < stopped.seq
    outbox.delivered(first.seq, backend_tx_id=4711)
    assert outbox.transaction(tx.tx_key) == Transaction(tx.tx_key, CP1, "E1", 7, 4711, False, T0, 1000, "TAG-1")
    assert outbox.first(CP1) == values
    outbox.delivered(values.seq)
    outbox.delivered(stopped.seq)
    assert outbox.first(CP1) is None and outbox.pending() == 0 and outbox.dropped() == 0
    assert outbox.faults() == ()


def test_order_is_kept_per_charge_point_with_several_interleaved(outboxes: Outboxes) -> None:
    outbox = outboxes()
    txs = {cp: start(outbox, cp, f"E{i}") for i, cp in enumerate((CP1, CP2, CP3), 1)}
    for wh in range(3):
        for cp in (CP3, CP1, CP2):
            outbox.add_meter_values(txs[cp].tx_key, meter(wh))
    stop(outbox, txs[CP2].tx_key)
    second = start(outbox, CP2, "E2")
    outbox.add_meter_values(second.tx_key, meter(99))
    assert outbox.pending(CP2) == 7
    assert drain(outbox, CP2) == [(START, txs[CP2].tx_key), *[(METER_VALUES, txs[CP2].tx_key)] * 3,
                                  (STOP, txs[CP2].tx_key), (START, second.tx_key), (METER_VALUES, second.tx_key)]
    seqs = []
    while (message := outbox.first(CP1)) is not None:
        seqs.append(message.seq)
        outbox.delivered(message.seq, backend_tx_id=1 if message.action == START else None)
    assert seqs == sorted(seqs) and len(seqs) == 4 and outbox.pending() == outbox.pending(CP3) == 4


def test_a_delivered_start_keeps_its_backend_id_and_is_never_sent_again(outboxes: Outboxes) -> None:
    outbox = outboxes()
    tx = start(outbox)
    outbox.add_meter_values(tx.tx_key, meter(1500))
    first = outbox.first(CP1)
    assert first is not None
    outbox.delivered(first.seq, backend_tx_id=31)
    outbox.close()
    again = outboxes()
    message = again.first(CP1)
    assert message is not None and message.action == METER_VALUES
    reopened = again.transaction(tx.tx_key)
    assert reopened is not None and reopened.backend_tx_id == 31 and reopened.open
    assert again.open_transaction("E1") == reopened


def test_reopening_keeps_everything_and_never_reuses_a_number(outboxes: Outboxes, path: Path) -> None:
    outbox = outboxes()
    tx = start(outbox)
    outbox.add_meter_values(tx.tx_key, meter(1200))
    outbox.set_state(CP1, "boot", {"accepted": True, "interval": 300})
    failing = outbox.first(CP1)
    assert failing is not None
    assert outbox.failed(failing.seq) == 1 and outbox.failed(failing.seq) == 2
    before = dump(path)
    outbox.close()
    outbox.close()  # idempotent
    again = outboxes()
    assert dump(path) == before
    message = again.first(CP1)
    assert message is not None and message.attempts == 2 and again.pending() == 2
    assert again.get_state(CP1, "boot") == {"accepted": True, "interval": 300}
    drain(again, CP1)
    stop(again, tx.tx_key)
    drain(again, CP1)
    newest = start(again)
    again.close()
    last = outboxes()
    message = last.first(CP1)
    # all of 1..3 were deleted: the numbers go on, not from 1 again
    assert message is not None and message.seq == 4 and newest.tx_key == tx.tx_key + 1


def test_a_second_stop_is_refused_and_changes_nothing(outboxes: Outboxes, path: Path) -> None:
    outbox = outboxes()
    tx = start(outbox)
    stop(outbox, tx.tx_key)
    before = dump(path)
    with pytest.raises(ValueError, match=f"transaction {tx.tx_key} is already stopped"):
        stop(outbox, tx.tx_key, meter_stop_wh=6000)
    with pytest.raises(ValueError, match="already stopped: no MeterValues after its StopTransaction"):
        outbox.add_meter_values(tx.tx_key, meter(6000))
    assert dump(path) == before and outbox.pending() == 2


BAD_CALLS: list[tuple[str, Callable[[BackendOutbox, int], Any], str]] = [
    ("unknown transaction", lambda o, tx: stop(o, tx + 100), "no transaction"),
    ("meter of unknown transaction", lambda o, tx: o.add_meter_values(tx + 100, meter(1)), "no transaction"),
    ("meter with transactionId", lambda o, tx: o.add_meter_values(tx, {"transactionId": 3}), "without transactionId"),
    ("meter with NaN", lambda o, tx: o.add_meter_values(tx, {"v": float("nan")}), "not JSON"),
    ("meter not JSON", lambda o, tx: o.add_meter_values(tx, {"v": {1, 2}}), "not JSON"),
    ("start without backend id", lambda o, tx: o.delivered(1), "backend_tx_id is needed"),
    ("backend id for meter", lambda o, tx: o.delivered(2, backend_tx_id=5), "only a StartTransaction"),
    ("unknown seq", lambda o, tx: o.delivered(99), "no pending message 99"),
    ("fail unknown seq", lambda o, tx: o.failed(99), "no pending message 99"),
    ("drop unknown seq", lambda o, tx: o.drop(99, "why"), "no pending message 99"),
    ("adopt unknown", lambda o, tx: o.adopt(tx + 100, 3), "no transaction"),
    ("meter stop not int", lambda o, tx: o.stop_transaction(tx, meter_stop_wh=1.5, timestamp="t",  # type: ignore[arg-type]
                                                            reason="Local"), "meter_stop_wh must be an integer"),
    ("empty reason", lambda o, tx: o.stop_transaction(tx, meter_stop_wh=1, timestamp="t", reason=""),
     "reason must be a non-empty string"),
    ("start with bool meter", lambda o, tx: start(o, meter_start_wh=True), "meter_start_wh must be an integer"),
    ("state not JSON", lambda o, tx: o.set_state(CP1, "k", object()), "not JSON"),
]


@pytest.mark.parametrize("call, why", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_a_value_error_and_changes_nothing(outboxes: Outboxes, path: Path,
                                                       call: Callable[[BackendOutbox, int], Any], why: str) -> None:
    outbox = outboxes()
    tx = start(outbox)
    outbox.add_meter_values(tx.tx_key, meter(1))
    before = dump(path)
    with pytest.raises(ValueError, match=why):
        call(outbox, tx.tx_key)
    assert dump(path) == before and outbox.pending() == 2 and outbox.faults() == ()


def test_a_dropped_message_is_logged_counted_and_unblocks_the_queue(outboxes: Outboxes,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    outbox = outboxes()
    tx = start(outbox)
    values = outbox.add_meter_values(tx.tx_key, meter(1300))
    first = outbox.first(CP1)
    assert first is not None
    outbox.delivered(first.seq, backend_tx_id=8)
    outbox.failed(values.seq)
    with caplog.at_level(logging.ERROR, logger="controller.records.backend_outbox"):
        outbox.drop(values.seq, "CALLERROR FormationViolation, 5 times")
    (record,) = caplog.records
    line = record.getMessage()
    assert f"message {values.seq} (MeterValues of {CP1}, transaction {tx.tx_key}, 1 failed attempt(s))" in line
    assert "DROPPED without delivery: CALLERROR FormationViolation, 5 times" in line and '"1300"' in line
    assert outbox.dropped() == 1 and outbox.first(CP1) is None
    closing = stop(outbox, tx.tx_key)
    assert outbox.first(CP1) == closing


def test_sessions_and_chargers_find_their_transactions(outboxes: Outboxes) -> None:
    outbox = outboxes()
    old = start(outbox, session_id=1)
    stop(outbox, old.tx_key)
    current = start(outbox, session_id=2)
    other = start(outbox, CP2, "E2", session_id=None)
    assert outbox.open_transaction("E1") == current and outbox.open_transaction("E2") == other
    assert outbox.open_transaction("E3") is None and outbox.transaction(999) is None
    found = outbox.transaction_for_session("E1", 1)
    assert found is not None and found.tx_key == old.tx_key and not found.open
    assert outbox.transaction_for_session("E2", 1) is None
    outbox.adopt(other.tx_key, 3)  # the session went on under a new id after a restart
    adopted = outbox.transaction_for_session("E2", 3)
    assert adopted is not None and adopted.tx_key == other.tx_key


def test_state_is_kept_per_charge_point_and_none_deletes_it(outboxes: Outboxes) -> None:
    outbox = outboxes()
    outbox.set_state(CP1, "heartbeat_s", 300)
    outbox.set_state(CP2, "heartbeat_s", 60)
    outbox.set_state(CP1, "heartbeat_s", 900)
    outbox.set_state(CP1, "booted", "2026-01-01T00:00:00Z")
    outbox.set_state(CP1, "booted", None)
    assert (outbox.get_state(CP1, "heartbeat_s"), outbox.get_state(CP2, "heartbeat_s")) == (900, 60)
    assert outbox.get_state(CP1, "booted") is None and outbox.get_state(CP3, "heartbeat_s") is None


def test_calls_from_several_threads_keep_each_charge_points_order(outboxes: Outboxes) -> None:
    outbox = outboxes()
    txs = [start(outbox, f"CP-{i}", f"E{i}") for i in range(4)]
    made: dict[int, list[int]] = {tx.tx_key: [] for tx in txs}

    def enqueue(tx: Transaction) -> None:
        for wh in range(25):
            made[tx.tx_key].append(outbox.add_meter_values(tx.tx_key, meter(wh)).seq)

    threads = [threading.Thread(target=enqueue, args=(tx,)) for tx in txs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outbox.pending() == 4 * 26
    for tx in txs:
        assert drain(outbox, tx.charge_point)[0] == (START, tx.tx_key)
    assert outbox.pending() == 0
    for tx in txs:  # each thread's messages in the order its calls returned, values in order
        assert made[tx.tx_key] == sorted(made[tx.tx_key]) and len(made[tx.tx_key]) == 25


def test_a_closed_outbox_refuses_calls(path: Path) -> None:
    outbox = BackendOutbox(path)
    with pytest.raises(BackendOutboxError, match="is not open"):
        outbox.first(CP1)
    outbox.open()
    outbox.close()
    with pytest.raises(BackendOutboxError, match="is not open"):
        start(outbox)


# --------------------------------------------------------------------------- a failing write


def test_a_failing_write_raises_changes_nothing_and_is_a_fault_until_it_works(
        outboxes: Outboxes, path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = outboxes()
    tx = start(outbox)
    before = dump(path)
    conn = outbox._conn  # a full card, the way SQLite meets one: no page may be added
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    with caplog.at_level(logging.ERROR, logger="controller.records.backend_outbox"):
        for _ in range(2):
            with pytest.raises(BackendOutboxError, match="MeterValues of transaction 1 was not stored: "
                                                         "database or disk is full"):
                outbox.add_meter_values(tx.tx_key, {"big": "x" * 100_000})
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1  # once per streak
    (fault,) = outbox.faults()
    assert "backend outbox: writing to" in fault and "new messages for the backend are not stored" in fault
    assert dump(path) == before and outbox.pending() == 1
    conn.execute("PRAGMA max_page_count=1073741823")
    outbox.add_meter_values(tx.tx_key, meter(1))
    assert outbox.faults() == () and outbox.pending() == 2


# --------------------------------------------------------------------------- the budget and pruning


def test_the_budget_drops_the_oldest_meter_values_only(outboxes: Outboxes, path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    outbox = outboxes(max_pending=5)
    a = start(outbox)
    b = start(outbox, CP2, "E2")
    first_a = outbox.add_meter_values(a.tx_key, meter(1))
    first_b = outbox.add_meter_values(b.tx_key, meter(2))
    stop(outbox, b.tx_key)
    with caplog.at_level(logging.ERROR, logger="controller.records.backend_outbox"):
        newest = outbox.add_meter_values(a.tx_key, meter(3))  # the sixth: the oldest MeterValues goes
        stop(outbox, a.tx_key)  # the seventh: the next oldest
    assert outbox.pending() == 5 and outbox.dropped() == 2
    assert [(m[2], m[4]) for m in dump(path)[0]] == [(START, a.tx_key), (START, b.tx_key), (STOP, b.tx_key),
                                                     (METER_VALUES, a.tx_key), (STOP, a.tx_key)]
    lines = [r.getMessage() for r in caplog.records]
    assert f"DROPPED the 1 oldest MeterValues (seq {first_a.seq}..{first_a.seq}, {CP1})" in lines[0]
    assert f"(seq {first_b.seq}..{first_b.seq}, {CP2})" in lines[1]
    (fault,) = outbox.faults()
    assert "2 MeterValues dropped since start (more than 5 messages were waiting" in fault
    newer = start(outbox, CP3, "E3")  # the last MeterValues goes
    assert outbox.pending() == 5 and outbox.dropped() == 3
    assert newest.seq not in [m[0] for m in dump(path)[0]]
    # only Start/Stop and the newest are left: the queue grows beyond the budget rather than lose them
    outbox.add_meter_values(newer.tx_key, meter(4))
    assert outbox.pending() == 6 and outbox.dropped() == 3
    start(outbox)  # that MeterValues is older now: it goes
    assert outbox.pending() == 6 and outbox.dropped() == 4
    assert [m[2] for m in dump(path)[0]] == [START, START, STOP, STOP, START, START]


def test_closed_and_delivered_transactions_go_after_30_days(outboxes: Outboxes, clock: FakeClock,
                                                            path: Path) -> None:
    outbox = outboxes()
    delivered = start(outbox)
    stop(outbox, delivered.tx_key)
    drain(outbox, CP1)
    undelivered = start(outbox, CP2, "E2")
    stop(outbox, undelivered.tx_key)
    still_open = start(outbox, CP3, "E3")
    drain(outbox, CP3)
    clock.advance(RETENTION_S - 1)
    outbox.set_state(CP1, "k", 1)  # a write, but the daily prune is not due for a day
    assert outbox.transaction(delivered.tx_key) is not None
    clock.advance(DAY_S)
    outbox.set_state(CP1, "k", 2)  # due: the delivered one goes
    assert outbox.transaction(delivered.tx_key) is None
    assert outbox.transaction(undelivered.tx_key) is not None and outbox.transaction(still_open.tx_key) is not None
    assert outbox.pending(CP2) == 2  # pending messages are never pruned
    drain(outbox, CP2)
    outbox.close()
    again = outboxes()  # prunes at open
    assert again.transaction(undelivered.tx_key) is None and again.transaction(still_open.tx_key) is not None
    assert len(dump(path)[1]) == 1


# --------------------------------------------------------------------------- a file that cannot be used


def aside(path: Path, label: str) -> Path:
    return path.with_name(f"{path.name}.{label}-{STAMP}")


def damage_a_page(path: Path) -> None:
    """What a failing card does: junk over a b-tree page of a file full of messages."""
    outbox = BackendOutbox(path, clock=lambda: T0)
    outbox.open()
    tx = start(outbox)
    for wh in range(200):
        outbox.add_meter_values(tx.tx_key, meter(wh))
    outbox.close()  # the last connection checkpoints the WAL into the file
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    with open(path, "r+b") as handle:
        handle.seek(3 * size)
        handle.write(b"\xa5" * size)


def other_database(path: Path, table: str) -> None:
    """A database of another schema (version 1) at ``path``."""
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table}")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()


def foreign_file(path: Path) -> None:
    other_database(path, "messages(seq INTEGER PRIMARY KEY, body TEXT)")


def session_log_in_its_place(path: Path) -> None:
    other_database(path, "sessions(id INTEGER PRIMARY KEY, charger_id TEXT)")


UNUSABLE: list[tuple[str, Callable[[Path], object], str, str]] = [
    ("garbage", lambda p: p.write_bytes(b"not a database at all " * 200), "corrupt", "file is not a database"),
    ("damaged page", damage_a_page, "corrupt", "quick_check: "),
    ("directory", lambda p: p.mkdir(), "corrupt", "not a regular file but a directory"),
    ("other tables", foreign_file, "foreign", "table messages has the columns (seq INTEGER, body TEXT), not ours"),
    ("another record file", session_log_in_its_place, "foreign", "table messages has the columns (none)"),
]


@pytest.mark.parametrize("make_bad, label, why", [u[1:] for u in UNUSABLE], ids=[u[0] for u in UNUSABLE])
def test_an_unusable_file_is_kept_aside_and_a_new_one_started(outboxes: Outboxes, path: Path,
                                                              make_bad: Callable[[Path], object], label: str,
                                                              why: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_bad(path)
    outbox = outboxes()
    assert aside(path, label).exists() and path.is_file()
    (fault,) = outbox.faults()
    assert fault.startswith(f"backend outbox: {FILE_NAME} was {label} (") and why in fault
    assert f"kept as {aside(path, label).name}" in fault and "messages still pending in it are not sent" in fault
    assert outbox.pending() == 0
    tx = start(outbox)
    assert tx.tx_key == 1 and outbox.pending() == 1


def test_a_state_dir_that_is_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(RecordFileError, match=f"backend outbox .*{FILE_NAME} cannot be used: not a directory"):
        BackendOutbox(tmp_path / "state" / FILE_NAME).open()


READ_ONLY_CHILD = """
import json, sys
from pathlib import Path
from controller.records.backend_outbox import BackendOutbox, RecordFileError
results = {}
for name in sys.argv[2:]:
    try:
        BackendOutbox(Path(sys.argv[1]) / name).open()
        results[name] = "opened"
    except RecordFileError as exc:
        results[name] = "RecordFileError: " + str(exc)
print(json.dumps(results))
"""


def namespaces_work() -> bool:
    """Whether a read-only bind mount can be made in a private user + mount namespace."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as target:
        try:
            res = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$1" "$1"', "sh", target],
                                 capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return res.returncode == 0


def open_read_only(state: Path, *names: str) -> dict[str, str]:
    """Open each ``state/name`` while ``state`` is read-only, in a child process."""
    command = [sys.executable, "-c", READ_ONLY_CHILD, str(state), *names]
    if os.geteuid() == 0:
        if not namespaces_work():
            pytest.skip("root, and unshare -rm (user + mount namespace) is not allowed here")
        command = ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(state), *command]
    else:
        state.chmod(0o555)
    try:
        res = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    finally:
        state.chmod(0o755)
    assert res.returncode == 0, res.stderr
    result: dict[str, str] = json.loads(res.stdout)
    return result


def test_a_read_only_state_dir_raises_and_sets_nothing_aside(path: Path) -> None:
    outbox = BackendOutbox(path, clock=lambda: T0)
    outbox.open()
    start(outbox)
    outbox.close()
    before = dump(path)
    results = open_read_only(path.parent, FILE_NAME, "new_" + FILE_NAME)
    for name, result in results.items():
        assert result.startswith(f"RecordFileError: backend outbox {path.parent / name} cannot be used: "), result
    assert sorted(p.name for p in path.parent.iterdir()) == [FILE_NAME]
    assert dump(path) == before
