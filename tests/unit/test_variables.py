"""Unit tests for controller.records.variables: the all-or-nothing, thread-safe variable store."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading

import pytest

from controller.formulas import NO_LIMIT, Evaluator, FormulaError, NoValue
from controller.records.variables import (DEFAULT_MAX_VARIABLES, TooManyVariables, VariableSet, VariableStore,
                                  evaluate_variables, normalize_expr, same_exprs)

RESERVED = {"M1", "E1", "E2", "RSE1"}


def make_store(**initial: object) -> VariableStore:
    return VariableStore(initial, reserved=RESERVED)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- normalize_expr


@pytest.mark.parametrize("given, stored", [
    (1, 1), (2.5, 2.5), (True, True), (False, False), (0, 0), (-3, -3),
    ("123", 123), (" 42 ", 42), ("-7", -7), ("+7", 7), ("2.5", 2.5), ("1e3", 1000.0),
    (".5", 0.5), ("007", 7), ("55000 * AVAIL / 100", "55000 * AVAIL / 100"),
    (" AVAIL ", " AVAIL "), ("True", "True"), ("nan", "nan"), ("inf", "inf"), ("1_000", "1_000"),
    ("1e15", 1e15), ("-1000000000000000", -10**15), (10**15, 10**15), (-1e15, -1e15),
    # digits of other scripts are no number (int('١٢٣') would be 123): a formula, refused when set
    ("\u0661\u0662\u0663", "\u0661\u0662\u0663"), ("\uff11\uff12\uff13", "\uff11\uff12\uff13"), ("1\u0662", "1\u0662"),
    ("0x10", "0x10"), ("", ""),
])
def test_normalize_expr(given: object, stored: object) -> None:
    result = normalize_expr(given)
    assert result == stored and type(result) is type(stored)


@pytest.mark.parametrize("given", [
    float("nan"), float("inf"), -float("inf"), "1e999", None, [1], {"a": 1}, b"1", "x" * 1025,
    "1e16", "1000000000000001", "-1000000000000001", 10**15 + 1, -1e16, 1e300, 10**400, "9" * 1000,
])
def test_normalize_expr_rejects(given: object) -> None:
    with pytest.raises(FormulaError):
        normalize_expr(given)


# --------------------------------------------------------------------------- construction


def test_initial_set() -> None:
    store = make_store(AVAIL=100, TARIF=0, LIM="55000 * AVAIL / 100")
    snap = store.snapshot()
    assert dict(snap.exprs) == {"AVAIL": 100, "TARIF": 0, "LIM": "55000 * AVAIL / 100"}
    assert set(snap.formulas) == {"AVAIL", "TARIF", "LIM"}
    assert snap.order == ("AVAIL", "LIM", "TARIF")
    assert snap.generation == 0
    assert not store.wake.is_set()


def test_empty_store() -> None:
    snap = VariableStore().snapshot()
    assert dict(snap.exprs) == {} and snap.order == () and snap.generation == 0


@pytest.mark.parametrize("initial, message", [
    ({"M1": 1}, "a device or input id"),
    ({"1x": 1}, "invalid name"),
    ({"min": 1}, "a function"),
    ({"hour": 1}, "a time value"),
    ({"A": "1 +"}, "variable A: formula does not parse"),
    ({"A": "B", "B": "A"}, "dependency cycle: A -> B -> A"),
    ({"A": float("nan")}, "variable A: number must be finite"),
])
def test_bad_initial(initial: dict, message: str) -> None:
    with pytest.raises(FormulaError, match=message):
        VariableStore(initial, reserved=RESERVED)


def test_snapshot_is_immutable() -> None:
    snap = make_store(A=1).snapshot()
    with pytest.raises(TypeError):
        snap.exprs["A"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.formulas["A"] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.generation = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- set_many


def test_set_many_adds_and_replaces() -> None:
    store = make_store(AVAIL=100, TARIF=0)
    new = store.set_many([("TARIF", 1), ("PWR", "70"), ("X", "PWR * 2")], source="test")
    assert dict(new.exprs) == {"AVAIL": 100, "TARIF": 1, "PWR": 70, "X": "PWR * 2"}
    assert new.order == ("AVAIL", "PWR", "TARIF", "X")
    assert new.generation == 1
    assert store.snapshot() is new
    assert store.wake.is_set()


def test_later_item_wins() -> None:
    store = make_store()
    assert store.set_many([("A", 1), ("A", 2)]).exprs["A"] == 2


def test_undefined_names_are_accepted() -> None:
    store = make_store()
    store.set_many([("A", "NOT_YET + M9.power_w + RSE7")])
    assert store.snapshot().formulas["A"].names == {"NOT_YET", "M9.power_w", "RSE7"}


def test_clear_replaces_everything() -> None:
    store = make_store(AVAIL=100, TARIF=0)
    new = store.set_many([("PWR", 70)], clear=True)
    assert dict(new.exprs) == {"PWR": 70}
    assert new.order == ("PWR",)
    assert store.set_many([], clear=True).exprs == {}


def test_clear_can_break_a_would_be_cycle() -> None:
    store = make_store(A="B")
    with pytest.raises(FormulaError, match="dependency cycle: A -> B -> A"):
        store.set_many([("B", "A")])
    assert dict(store.set_many([("B", "A")], clear=True).exprs) == {"B": "A"}


@pytest.mark.parametrize("clear", [False, True])
@pytest.mark.parametrize("items, message", [
    ([("PWR", 70), ("bad name", 1)], "invalid name 'bad name'"),
    ([("PWR", 70), ("E2", 1)], "a device or input id"),
    ([("PWR", 70), ("X", "open('/etc/passwd')")], "variable X: strings are not allowed"),
    ([("PWR", 70), ("X", "__import__('os')")], "strings are not allowed"),
    ([("PWR", 70), ("X", "lambda: 1")], "'lambda' is not allowed"),
    ([("PWR", 70), ("X", "foo(1)")], "function 'foo' not allowed"),
    ([("PWR", 70), ("X", "X + 1")], "dependency cycle: X -> X"),
    ([("PWR", 70), ("X", None)], "variable X: expr must be a number"),
    ([("PWR", 70), ("X", float("inf"))], "number must be finite"),
    ([("PWR", 70), ("X", 1, 2)], "a (name, expr) pair"),
    ([("PWR", 70), (5, 1)], "a variable name is a string"),
    ([("PWR", 70), ("X", "\u0661\u0662\u0663")], "variable X: digit '\u0661' (U+0661) is not allowed: write numbers with the digits 0-9"),
    ([("PWR", 70), ("X", 10**20)], "variable X: number too large: 100000000000000000000 (at most ±1e15)"),
    ([("PWR", 70), ("X", "2e15")], "variable X: number too large: 2000000000000000 (at most ±1e15)"),
    ([("PWR", 70), ("X", "AVAIL * 1e16")], "variable X: number too large: 1e+16 (at most ±1e15) (col 9)"),
    ([("PWR", 70), "X"], "a (name, expr) pair"),
])
def test_set_many_is_all_or_nothing(items: list, message: str, clear: bool) -> None:
    store = make_store(AVAIL=100)
    calls: list[object] = []
    store.add_listener(lambda old, new, source: calls.append(source))
    before = store.snapshot()
    with pytest.raises(FormulaError, match=re.escape(message)):
        store.set_many(items, clear=clear)
    assert store.snapshot() is before
    assert calls == [] and not store.wake.is_set()


def test_cycle_with_an_existing_variable_is_rejected() -> None:
    store = make_store(A="B + 1")
    with pytest.raises(FormulaError, match="dependency cycle: A -> B -> C -> A"):
        store.set_many([("C", "A"), ("B", "C")])
    assert dict(store.snapshot().exprs) == {"A": "B + 1"}


# --------------------------------------------------------------------------- listeners


def test_listener_gets_old_new_and_source() -> None:
    store = make_store(AVAIL=100)
    seen: list[tuple[VariableSet, VariableSet, str]] = []
    store.add_listener(lambda old, new, source: seen.append((old, new, source)))
    first = store.snapshot()
    second = store.set_many([("AVAIL", 50)], source="lan 10.0.0.2")
    assert seen == [(first, second, "lan 10.0.0.2")]
    assert seen[0][0].exprs["AVAIL"] == 100 and seen[0][1].exprs["AVAIL"] == 50


def test_listener_runs_after_wake_and_before_return() -> None:
    store = make_store()
    states: list[tuple[bool, int]] = []
    store.add_listener(lambda old, new, source: states.append(
        (store.wake.is_set(), store.snapshot().generation)))
    store.set_many([("A", 1)])
    assert states == [(True, 1)]


def test_failing_listener_is_logged_and_change_kept(caplog: pytest.LogCaptureFixture) -> None:
    store = make_store()
    later: list[int] = []

    def broken(old: VariableSet, new: VariableSet, source: str) -> None:
        raise OSError("disk full")

    store.add_listener(broken)
    store.add_listener(lambda old, new, source: later.append(new.generation))
    with caplog.at_level(logging.ERROR, logger="controller.records.variables"):
        new = store.set_many([("A", 1)], source="api")
    assert store.snapshot() is new and later == [1]
    assert "variable listener" in caplog.text and "disk full" in caplog.text


def test_listener_may_not_set_variables() -> None:
    store = make_store()
    errors: list[BaseException] = []

    def reentrant(old: VariableSet, new: VariableSet, source: str) -> None:
        try:
            store.set_many([("B", 2)])
        except RuntimeError as exc:
            errors.append(exc)

    store.add_listener(reentrant)
    store.set_many([("A", 1)])
    assert len(errors) == 1 and "B" not in store.snapshot().exprs


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_and_reader_see_consistent_snapshots() -> None:
    """Several threads set related variables while another takes snapshots: never half a set."""
    store = make_store(A=0, B=0, C="A - B")
    writers, calls_per_writer = 4, 150
    generations_seen: list[int] = []
    store.add_listener(lambda old, new, source: generations_seen.append(new.generation))
    stop = threading.Event()
    problems: list[str] = []

    def check(snap: VariableSet) -> str | None:
        exprs = snap.exprs
        if set(exprs) != set(snap.formulas) or set(exprs) != set(snap.order):
            return f"keys differ in generation {snap.generation}"
        if exprs["A"] != exprs["B"] or exprs["C"] != "A - B":
            return f"half a set in generation {snap.generation}: {dict(exprs)}"
        if any(snap.formulas[n].text != exprs[n] for n in exprs):
            return "formula does not match expr"
        if snap.order.index("C") < max(snap.order.index("A"), snap.order.index("B")):
            return f"bad order {snap.order}"
        return None

    def reader() -> None:
        last = -1
        while not stop.is_set():
            snap = store.snapshot()
            problem = check(snap)
            if problem is None and snap.generation < last:
                problem = f"generation went back {last} -> {snap.generation}"
            if problem:
                problems.append(problem)
                return
            last = snap.generation

    def writer(n: int) -> None:
        for i in range(calls_per_writer):
            value = n * 100000 + i
            items = [("A", value), ("EXTRA", str(i)), ("B", value), ("C", "A - B")]
            store.set_many(items, clear=(i % 10 == 0), source=f"w{n}")

    read_thread = threading.Thread(target=reader)
    read_thread.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    read_thread.join()
    assert problems == []
    total = writers * calls_per_writer
    assert store.snapshot().generation == total
    assert generations_seen == list(range(1, total + 1))  # listeners ran in change order
    assert check(store.snapshot()) is None


# --------------------------------------------------------------------------- evaluate_variables


def test_evaluate_variables_in_order() -> None:
    store = make_store(AVAIL=50, LIM="55000 * AVAIL / 100", HALF="LIM / 2", T="TARIF_X")
    results, symbols = evaluate_variables(Evaluator(), store.snapshot(), {"RSE1": 1})
    assert results == {"AVAIL": (50, None), "HALF": (13750, None), "LIM": (27500, None),
                       "T": (None, "unknown name TARIF_X")}
    assert symbols["LIM"] == 27500 and symbols["RSE1"] == 1
    assert isinstance(symbols["T"], NoValue)


def test_failed_variable_fails_its_readers_with_the_reason() -> None:
    store = make_store(X="RSE1 ? 4200 : 11000", Y="X + 1", Z="1 / 0", W="Z")
    results, _ = evaluate_variables(Evaluator(), store.snapshot(), {"RSE1": None})
    assert results["X"] == (None, "RSE1 has no value (unreadable or failed)")
    assert results["Y"] == (None, "X has no value (RSE1 has no value (unreadable or failed))")
    assert results["W"] == (None, "Z has no value (division by zero)")


def test_none_variable_is_no_limit_for_its_readers() -> None:
    store = make_store(LIM="4200 if RSE1 else None", COPY="LIM", SUM="LIM + 1")
    results, symbols = evaluate_variables(Evaluator(), store.snapshot(), {"RSE1": 0})
    assert results["LIM"] == (None, None) and symbols["LIM"] is NO_LIMIT
    assert results["COPY"] == (None, None)
    assert results["SUM"][0] is None and "None" in str(results["SUM"][1])


# --------------------------------------------------------------------------- the cap on the number


def capped(limit: int, **initial: object) -> tuple[VariableStore, list[str]]:
    store = VariableStore(initial, reserved=RESERVED, max_variables=limit)  # type: ignore[arg-type]
    calls: list[str] = []
    store.add_listener(lambda old, new, source: calls.append(source))
    return store, calls


def assert_refused(store: VariableStore, calls: list[str], message: str, items: list, **kwargs: object) -> None:
    before = store.snapshot()
    with pytest.raises(TooManyVariables, match=re.escape(message)):
        store.set_many(items, **kwargs)  # type: ignore[arg-type]
    assert store.snapshot() is before and calls == []


def test_the_default_cap_is_1000() -> None:
    store = VariableStore()
    assert store.max_variables == DEFAULT_MAX_VARIABLES == 1000
    store.set_many([(f"V{i}", i) for i in range(1000)])
    with pytest.raises(TooManyVariables, match=re.escape("this change would make 1001 (at most 1000")):
        store.set_many([("ONE_MORE", 1)])
    assert len(store.snapshot().exprs) == 1000


def test_a_set_beyond_the_cap_is_refused_whole() -> None:
    store, calls = capped(3, A=1)
    assert_refused(store, calls, "too many variables: this change would make 4 (at most 3, max_variables in the config)",
                   [("B", 2), ("C", 3), ("D", 4)])
    assert_refused(store, calls, "would make 4", [("B", 2), ("C", 3), ("D", 4), ("E", 5)], clear=True, persist=False)
    assert TooManyVariables.__mro__[1] is FormulaError  # the API's 400 for every refusal


def test_at_the_cap_values_still_change_and_clear_makes_room() -> None:
    store, calls = capped(3, A=1, B=2, C=3)
    assert dict(store.set_many([("A", 10), ("B", "A + 1")]).exprs) == {"A": 10, "B": "A + 1", "C": 3}
    assert dict(store.set_many([("X", 1), ("Y", 2), ("Z", 3)], clear=True).exprs) == {"X": 1, "Y": 2, "Z": 3}
    assert len(calls) == 2


def test_the_saved_set_is_capped_too() -> None:
    """tmp=1 values can hide saved variables: a saved call must not grow the saved set past the cap."""
    store, calls = capped(3, A=1, B=2, C=3)
    store.set_many([("T", 1)], clear=True, persist=False)  # in force: T; saved: A, B, C
    calls.clear()
    assert_refused(store, calls, "the saved set (without the tmp=1 values in force) would have 4 (at most 3",
                   [("D", 4)])
    assert dict(store.set_many([("A", 5)]).persistent) == {"A": 5, "B": 2, "C": 3}


def test_a_start_set_over_the_cap_is_kept_and_may_only_shrink(caplog: pytest.LogCaptureFixture) -> None:
    """The cap was lowered in the config after more were saved: the site must still start."""
    with caplog.at_level(logging.ERROR, logger="controller.records.variables"):
        store, calls = capped(2, A=1, B=2, C=3, D=4)
    assert "4 variables at start, more than max_variables (2)" in caplog.text
    assert dict(store.set_many([("A", 9)]).exprs) == {"A": 9, "B": 2, "C": 3, "D": 4}
    calls.clear()
    assert_refused(store, calls, "would make 5 (at most 2", [("E", 5)])
    assert dict(store.set_many([("Y", 1), ("Z", 2), ("W", 3)], clear=True).exprs) == {"Y": 1, "Z": 2, "W": 3}
    calls.clear()
    assert_refused(store, calls, "would make 4", [("V", 0)])


def test_the_cap_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        VariableStore(max_variables=0)


# --------------------------------------------------------------------------- persistent (tmp=1)


def test_persistent_is_the_set_in_force_without_tmp() -> None:
    store = make_store(AVAIL=100, TARIF=0)
    snap = store.snapshot()
    assert snap.persistent is snap.exprs
    new = store.set_many([("TARIF", 1)], source="api")
    assert new.persistent is new.exprs and dict(new.persistent) == {"AVAIL": 100, "TARIF": 1}


def test_tmp_set_applies_but_keeps_persistent() -> None:
    store = make_store(AVAIL=100)
    before = store.snapshot()
    tmp = store.set_many([("AVAIL", 50), ("X", 1)], persist=False)
    assert dict(tmp.exprs) == {"AVAIL": 50, "X": 1}
    assert tmp.persistent is before.persistent and dict(tmp.persistent) == {"AVAIL": 100}
    assert store.wake.is_set()
    later = store.set_many([("TARIF", 2)])  # a saved call is applied to the saved set only
    assert dict(later.exprs) == {"AVAIL": 50, "X": 1, "TARIF": 2}
    assert dict(later.persistent) == {"AVAIL": 100, "TARIF": 2}
    again = store.set_many([("AVAIL", 70)])
    assert dict(again.persistent) == {"AVAIL": 70, "TARIF": 2}


def test_tmp_clear_keeps_the_saved_set() -> None:
    store = make_store(AVAIL=100)
    tmp = store.set_many([("X", 1)], clear=True, persist=False)
    assert dict(tmp.exprs) == {"X": 1} and dict(tmp.persistent) == {"AVAIL": 100}
    saved_clear = store.set_many([("Y", 2)], clear=True)
    assert dict(saved_clear.exprs) == {"Y": 2}
    assert saved_clear.persistent is saved_clear.exprs  # no tmp value in force any more


def test_unchanged_persistent_keeps_its_identity() -> None:
    store = make_store(AVAIL=100)
    first = store.snapshot()
    same = store.set_many([("AVAIL", 100)])
    assert same.persistent is first.persistent and same.generation == 1
    changed_type = store.set_many([("AVAIL", 100.0)])  # shown differently by get_cm_vars
    assert changed_type.persistent is not same.persistent


def test_saved_set_with_a_cycle_is_rejected() -> None:
    """A tmp value can hide a saved formula; a saved call must not make the saved set cyclic."""
    store = make_store(A="B")
    store.set_many([("A", 1)], persist=False)
    before = store.snapshot()
    with pytest.raises(FormulaError, match=r"saved variables .*dependency cycle: A -> B -> A"):
        store.set_many([("B", "A")])
    assert store.snapshot() is before
    store.set_many([("B", "A")], persist=False)  # not saved: allowed, no cycle in force
    assert dict(store.snapshot().persistent) == {"A": "B"}


@pytest.mark.parametrize("a, b, same", [
    ({}, {}, True), ({"A": 1}, {"A": 1}, True), ({"A": 1}, {"A": 1.0}, False),
    ({"A": 1}, {"A": True}, False), ({"A": "x"}, {"A": "x "}, False), ({"A": 1}, {"B": 1}, False),
    ({"A": 1}, {"A": 1, "B": 2}, False), ({"A": 1, "B": 2}, {"B": 2, "A": 1}, True),
])
def test_same_exprs(a: dict, b: dict, same: bool) -> None:
    assert same_exprs(a, b) is same and same_exprs(b, a) is same


def test_variable_set_defaults_persistent_to_exprs() -> None:
    exprs = {"A": 1}
    assert VariableSet(exprs, {}, ("A",), 3).persistent is exprs  # type: ignore[arg-type]
