"""Benchmark: what N variables cost the controller (the ground for ``max_variables``).

Every variable is compiled when it is set, kept in memory as a checked AST, and evaluated in
every control cycle; each ``set_cm_vars`` also re-orders the whole set. So the number of variables
bounds three costs, measured here for N variables of one kind:

- ``constant``: ``V7 = 7``;
- ``typical``: ``V7 = min(V6 * 2 + 5, 100)`` (each reads the one before: a chain of N);
- ``long``: ``V7 = min(V6 * 0, V6 * 1, ..., V6 * 63)``, 64 arguments, about 700 characters
  (near the 1024-character limit; the heaviest kind of formula per variable).

Figures, each in a fresh child process (so the memory of one run does not carry into the next):
``set_s`` = one ``VariableStore.set_many`` with all N (as at start or a ``clear=1``);
``one_set_ms`` = the median of 20 ``set_many`` calls that change one variable of the N (what one
``set_cm_vars`` costs at that size); ``evaluate_ms`` = the median of 5 passes of
``evaluate_variables`` over the set (the variables' share of one control cycle); ``rss_mib`` =
growth of the child's resident memory (``VmRSS``) from before the set to after it.

Run: ``.venv/bin/python tests/bench/bench_variables.py [--counts 1000 5000] [--long-counts 1000]``.
Prints a table, then one JSON line with the figures. Exits 1 when a run did not work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

KINDS = ("constant", "typical", "long")
CHILD_TIMEOUT_S = 600.0


def expr(kind: str, index: int) -> int | str:
    """Variable ``V<index>``'s expression of ``kind``; V0 is always the constant 1."""
    if index == 0 or kind == "constant":
        return index or 1
    previous = f"V{index - 1}"
    if kind == "typical":
        return f"min({previous} * 2 + 5, 100)"
    return "min(" + ", ".join(f"{previous} * {k}" for k in range(64)) + ")"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(kind: str, count: int) -> dict[str, Any]:
    """One run, in this process: the figures of ``count`` variables of ``kind``."""
    from controller.formulas import Evaluator
    from controller.records.variables import VariableStore, evaluate_variables

    items = [(f"V{i}", expr(kind, i)) for i in range(count)]
    store = VariableStore({}, max_variables=count)
    before_kib = rss_kib()
    start = time.perf_counter()
    store.set_many(items)
    set_s = time.perf_counter() - start
    rss_mib = (rss_kib() - before_kib) / 1024
    one_set = []
    for n in range(20):
        index = (n * 7919) % count
        start = time.perf_counter()
        store.set_many([(f"V{index}", expr(kind, index))])
        one_set.append(time.perf_counter() - start)
    evaluator = Evaluator()
    snapshot = store.snapshot()
    passes = []
    errors = 0
    for _ in range(5):
        start = time.perf_counter()
        results, _ = evaluate_variables(evaluator, snapshot, {})
        passes.append(time.perf_counter() - start)
        errors = sum(1 for _, error in results.values() if error is not None)
    return {"kind": kind, "count": count, "set_s": round(set_s, 3),
            "one_set_ms": round(statistics.median(one_set) * 1000, 2),
            "evaluate_ms": round(statistics.median(passes) * 1000, 2), "rss_mib": round(rss_mib, 1),
            "evaluation_errors": errors}


def run_child(kind: str, count: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "one", kind, str(count)],
                         capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["one"]:  # a child: one measurement, one JSON line
        common.emit_json(measure(argv[1], int(argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000],
                        help="numbers of constant and typical variables")
    parser.add_argument("--long-counts", type=int, nargs="+", default=[1000],
                        help="numbers of long formulas (heavy: ~70 KiB each)")
    args = parser.parse_args(argv)
    common.quiet_logging()
    runs = [(kind, count) for count in args.counts for kind in KINDS[:2]]
    runs += [("long", count) for count in args.long_counts]
    results = [run_child(kind, count) for kind, count in runs]
    print("What N variables cost: one set of all N, one set of one variable among N, one evaluation "
          "pass (every cycle), resident memory")
    common.print_table(
        ["kind", "N", "set all (s)", "set one (ms)", "evaluate all (ms)", "memory (MiB)", "µs/var/cycle"],
        [[r["kind"], r["count"], r["set_s"], r["one_set_ms"], r["evaluate_ms"], r["rss_mib"],
          round(1000 * r["evaluate_ms"] / r["count"], 1)] for r in results],
    )
    common.emit_json({"bench": "variables", "results": results})
    return 1 if any(r["evaluation_errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
