"""The backend outbox under SIGKILL: what a call returned from is in the file, in order.

A child process (``outbox_writer_proc.py``, the same Python as the tests) plays a gateway on the
real outbox: three charge points enqueue transactions while a sender delivers their oldest
messages, and the child prints one line after each call has returned. The test kills it with
SIGKILL at a random moment, reopens the file, and compares each charge point's pending messages
with what the printed lines promise: every enqueued message not delivered is there, in the order
it was enqueued; every delivered one is gone; a delivered StartTransaction's transaction has its
backend id and no Start left. Only the one call in flight at the kill may have happened or not
(all or nothing). The same file goes through several kills, so each run also starts from a file
that was killed before.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from controller.records.backend_outbox import START, BackendOutbox

HERE = Path(__file__).resolve().parent
RUNS = 4
BUDGET_S = 3.0  # for all the runs together
SEED = int(time.time())

#: A pending message as the printed lines name it: ("S", tx_key) for a StartTransaction,
#: ("E", seq) for the others.
Token = tuple[str, int]
Model = dict[str, list[Token]]


def play(path: Path, out: Path, seed: int, rng: random.Random) -> list[list[str]]:
    """Run the child until it has worked a little, SIGKILL it at a random moment; its lines."""
    with out.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, str(HERE / "outbox_writer_proc.py"), str(path), str(seed)],
                                stdout=stdout, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10.0
        while out.read_text().count("\n") < 10:  # ready, and some calls done
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the child did not start working within 10 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    text = out.read_text()
    complete = text[:text.rfind("\n") + 1]  # a line cut by the kill promises nothing
    return [line.split() for line in complete.splitlines()[1:]]


def replay(model: Model, lines: list[list[str]]) -> None:
    """Apply the printed lines to the model; a delivery must be of the charge point's oldest."""
    for kind, number, charge_point in lines:
        queue = model.setdefault(charge_point, [])
        if kind in ("S", "E"):
            queue.append((kind, int(number)))
        else:
            assert queue and queue[0] == ("S" if kind == "DS" else "E", int(number)), (kind, number, queue[:3])
            queue.pop(0)


def in_file(path: Path) -> tuple[Model, dict[int, int | None]]:
    """The pending messages of each charge point in seq order, and each transaction's backend id."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        model: Model = {}
        for seq, charge_point, action, tx_key in conn.execute(
                "SELECT seq, charge_point, action, tx_key FROM messages ORDER BY seq"):
            model.setdefault(charge_point, []).append(("S", tx_key) if action == START else ("E", seq))
        backend = dict(conn.execute("SELECT tx_key, backend_tx_id FROM transactions").fetchall())
        return model, backend
    finally:
        conn.close()


def in_flight(promised: Model, found: Model, backend: dict[int, int | None]) -> int:
    """How many charge points differ from the promise by the one call in flight (0 or 1), after
    checking that the difference is one: an enqueue more at the end, or a delivery more at the
    head (a Start then has its backend id)."""
    differ = 0
    for charge_point in set(promised) | set(found):
        want, got = promised.get(charge_point, []), found.get(charge_point, [])
        if want == got:
            continue
        differ += 1
        if got[:-1] == want:
            kind, number = got[-1]
            assert kind == "E" or number in backend, got[-1]
        else:
            assert got == want[1:], (charge_point, want[:5], got[:5])
            kind, number = want[0]
            if kind == "S":
                assert backend[number] == 1000 + number
    return differ


def test_every_call_that_returned_survives_sigkill_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "backend_outbox.sqlite3"
    path.parent.mkdir()
    rng = random.Random(SEED)
    model: Model = {}
    started = time.monotonic()
    runs = 0
    while runs < RUNS and (runs == 0 or time.monotonic() - started < BUDGET_S):
        lines = play(path, tmp_path / f"run{runs}.out", SEED + runs, rng)
        runs += 1
        assert len(lines) >= 9, f"seed {SEED}: the child was killed before it worked"
        replay(model, lines)
        found, backend = in_file(path)
        assert in_flight(model, found, backend) <= 1, f"seed {SEED}, run {runs}"
        for charge_point, queue in found.items():  # no Start twice: a delivered Start is gone
            for kind, tx_key in queue:
                assert kind == "E" or backend[tx_key] is None, (charge_point, tx_key)
        delivered = [int(n) for kind, n, _ in lines if kind == "DS"]
        assert all(backend[tx_key] == 1000 + tx_key for tx_key in delivered)
        model = found  # the call in flight happened or not: the next run goes on from the file
    assert runs >= 2, "the kills took too long to repeat"

    outbox = BackendOutbox(path)
    outbox.open()
    try:
        assert outbox.faults() == ()  # a killed file is a good file: nothing set aside
        assert outbox.pending() == sum(len(queue) for queue in model.values())
        for charge_point, queue in model.items():
            head = outbox.first(charge_point)
            assert head is not None and (("S", head.tx_key) if head.action == START else ("E", head.seq)) == queue[0]
    finally:
        outbox.close()
