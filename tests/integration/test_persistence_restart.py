"""Restart test with real processes: SIGKILL in the middle of a burst of sets (docs/api.md).

A child process runs what the service runs at start (``VariableFile.load``,
``initial_variables``, ``VariableStore``, ``VariableSaver`` with its default 1 s interval) on a
temp state_dir and performs an endless burst of ``set_many`` calls (saved ones, ``tmp=1`` ones,
``clear=1`` ones), printing each acknowledged generation with its time, flushed. The parent kills
it with SIGKILL in the middle of the burst, then loads the file like the next start would:

- the file is never corrupt, and the restored set is exactly the state after one call k: an
  acknowledged call, or the one call in flight at the kill (applied and saved, but its answer
  never left: its client saw no answer, so either outcome is right);
- every call acknowledged more than 1 s before the kill is included. The bound is the saver's
  interval plus the duration of one save (a write and two fsyncs), so the check allows
  ``SAVE_SLACK_S`` for that on a loaded CI machine.

Two rounds: the second child starts from the file the first one left.

Run as ``python test_persistence_restart.py child STATE_DIR``, this file is the child.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # the child: make the project importable
    sys.path.insert(0, str(ROOT))

from controller.records.persistence import (SavedVariables, VariableFile, VariableSaver,  # noqa: E402
                                    initial_variables)
from controller.records.variables import Expr, VariableStore, same_exprs  # noqa: E402

CONFIG: dict[str, Expr] = {"AVAIL": 100, "TARIF": 0}
SAVE_SLACK_S = 0.25
CHILD_MAX_S = 30.0  # the child stops by itself if the parent is gone
# A pause between calls, as any API client has (a request takes a round trip). Without it the
# burst thread does nothing but CPU work and microsecond syscalls (the flushed print), and
# CPython's GIL hand-over starves the saver: each syscall of a save (open, write, fsync, rename)
# must take the GIL back, and a thread that drops and re-takes the GIL every few microseconds
# bumps the GIL's switch counter, so the waiter's forced-switch request is never raised. Seen on
# a loaded 2-core machine: a 2 ms save took as long as the burst lasted.
CALL_GAP_S = 0.001


def call(i: int) -> tuple[list[tuple[str, Expr]], bool, bool]:
    """The i-th call of the burst (generation i): (items, clear, persist)."""
    if i % 7 == 0:  # tmp=1: applied, never saved
        return [("A", -i), ("T", i)], False, False
    if i % 13 == 0:  # clear=1: the config variables go too
        return [("A", i), ("B", i), ("C", f"A + B + {i}")], True, True
    return [("A", i), ("B", i), ("C", f"A + B + {i}"), (f"K{i % 5}", i)], False, True


class _MonotonicFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{time.monotonic():.6f} {record.threadName} {record.getMessage()}"


def child(state_dir: Path) -> None:
    handler = logging.StreamHandler(sys.stderr)  # the saves, for the parent's failure message
    handler.setFormatter(_MonotonicFormatter())
    logging.basicConfig(level=logging.DEBUG, handlers=[handler])
    file = VariableFile(state_dir)
    store = VariableStore(initial_variables(CONFIG, file.load()))
    saver = VariableSaver(file, store)
    saver.start()
    print("ready", flush=True)
    end = time.monotonic() + CHILD_MAX_S
    i = 0
    while time.monotonic() < end:
        i += 1
        items, clear, persist = call(i)
        new = store.set_many(items, clear=clear, persist=persist, source="lan:127.0.0.1")
        print(f"{new.generation} {time.monotonic():.6f}", flush=True)
        time.sleep(CALL_GAP_S)
    saver.stop()


def expected_saved(start: dict[str, Expr], k: int) -> dict[str, Expr]:
    """What a restart must restore after calls 1..k: an oracle independent of the store (the
    saved calls applied in order, ``clear`` first; ``tmp=1`` calls skipped)."""
    saved = dict(start)
    for i in range(1, k + 1):
        items, clear, persist = call(i)
        if not persist:
            continue
        if clear:
            saved = {}
        saved.update(items)
    return saved


def parse(line: str) -> tuple[int, float] | None:
    parts = line.split()
    if len(parts) != 2:
        return None  # a line cut by the kill
    return int(parts[0]), float(parts[1])


def run_and_kill(state_dir: Path, kill_after_s: float) -> tuple[list[tuple[int, float]], float, str]:
    """Start the child, SIGKILL it ``kill_after_s`` into its burst; its acks, the kill time and
    its log."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "child", str(state_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        assert first == "ready\n", first + (proc.stderr.read() if proc.stderr else "")
        acks: list[tuple[int, float]] = []
        for line in proc.stdout:
            ack = parse(line)
            if ack is not None:
                acks.append(ack)
                if ack[1] - acks[0][1] >= kill_after_s:
                    break
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        acks.extend(a for a in map(parse, proc.stdout.read().splitlines()) if a is not None)
        log_text = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return acks, killed_at, log_text


def check_round(state_dir: Path, start: dict[str, Expr], kill_after_s: float) -> SavedVariables:
    acks, killed_at, log_text = run_and_kill(state_dir, kill_after_s)
    acked = [gen for gen, _ in acks]
    assert acked == list(range(1, len(acks) + 1)) and len(acks) > 100, "a burst of acknowledged sets"

    assert not list(state_dir.glob("variables.json.corrupt-*"))
    loaded = VariableFile(state_dir).load()
    assert loaded is not None, "the first set of the burst is saved at once"
    # Exactly the state after one call: acknowledged, or the one in flight at the kill.
    k = loaded.generation
    assert 1 <= k <= len(acks) + 1, (k, len(acks))
    expected = expected_saved(start, k)
    assert same_exprs(loaded.vars, expected), (dict(loaded.vars), k)
    assert same_exprs(initial_variables(CONFIG, loaded), expected)
    # Every call acknowledged more than 1 s before the kill is in it.
    deadline = killed_at - 1.0 - SAVE_SLACK_S
    needed = max((gen for gen, t in acks if t <= deadline and call(gen)[2]), default=0)
    times = dict(acks)
    assert needed > 0 and k >= needed, (
        f"restored generation {k} (acked at {times.get(k)}), needed {needed} (acked at "
        f"{times[needed]}), killed at {killed_at:.6f} after {len(acks)} acks (first at "
        f"{acks[0][1]}); child log:\n{log_text}")
    return loaded


def test_sigkill_in_a_burst_restores_a_prefix(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = check_round(state_dir, dict(CONFIG), kill_after_s=1.6)
    # The next start restores that set and carries on from it; killed again, later in its burst.
    check_round(state_dir, initial_variables(CONFIG, first), kill_after_s=2.3)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"] and len(sys.argv) == 3:
        child(Path(sys.argv[2]))
    else:
        sys.exit("usage: test_persistence_restart.py child STATE_DIR")
