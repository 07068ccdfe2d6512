"""``-k`` expressions and ``run(select=...)``."""

from __future__ import annotations

import pytest

from flowdeco import Flow, NoTasksError, UsageError, run, task
from flowdeco.selection import compile_expression

NAMES = ["extract_users", "extract_orders", "transform", "load_warehouse", "report",
         "validate.check_format", "validate.check_size", "fetch[3]"]


def matches(expr):
    pred = compile_expression(expr)
    return [n for n in NAMES if pred(n)]


@pytest.mark.parametrize("expr, expected", [
    ("extract", ["extract_users", "extract_orders"]),
    ("EXTRACT", ["extract_users", "extract_orders"]),
    ("Users", ["extract_users"]),
    ("extract and users", ["extract_users"]),
    ("users or orders", ["extract_users", "extract_orders"]),
    ("not extract", ["transform", "load_warehouse", "report", "validate.check_format",
                     "validate.check_size", "fetch[3]"]),
    ("extract and not users", ["extract_orders"]),
    ("not not report", ["report"]),
    ("(extract or load) and not orders", ["extract_users", "load_warehouse"]),
    ("report or extract and users", ["extract_users", "report"]),   # and binds tighter
    ("(report or extract) and users", ["extract_users"]),
    ("validate.check", ["validate.check_format", "validate.check_size"]),
    ("validate.check_size", ["validate.check_size"]),
    ("fetch[3]", ["fetch[3]"]),
    ("  transform  ", ["transform"]),
    ("nothing_matches", []),
])
def test_expressions(expr, expected):
    assert matches(expr) == expected


@pytest.mark.parametrize("expr", ["", "   ", "a and", "and a", "(a", "a)", "a b", "not",
                                  "a or or b", "()", "a & b", "a | b", "a, b"])
def test_malformed_expressions(expr):
    with pytest.raises(UsageError):
        compile_expression(expr)


def _etl():
    calls = []

    @task
    def extract():
        calls.append("extract")
        return 1

    @task
    def transform(extract):
        calls.append("transform")
        return extract + 1

    @task(after=[transform])
    def load():
        calls.append("load")
        return "loaded"

    @task
    def report(extract):
        calls.append("report")
        return "report"

    @task
    def unrelated():
        calls.append("unrelated")

    return [extract, transform, load, report, unrelated], calls


def test_select_runs_matches_plus_ancestors():
    fns, calls = _etl()
    result = run(fns, state_dir=None, select="load")
    assert result.ok
    assert set(result.outcomes) == {"extract", "transform", "load"}
    assert sorted(calls) == ["extract", "load", "transform"]


def test_select_with_boolean_expression():
    fns, calls = _etl()
    result = run(fns, state_dir=None, select="report or unrelated")
    assert set(result.outcomes) == {"extract", "report", "unrelated"}
    assert result.results["report"] == "report"

    fns, calls = _etl()
    result = run(fns, state_dir=None, select="not load and not report")
    assert set(result.outcomes) == {"extract", "transform", "unrelated"}


def test_select_matching_nothing():
    fns, calls = _etl()
    with pytest.raises(NoTasksError) as info:
        run(fns, state_dir=None, select="zzz")
    assert "zzz" in str(info.value)
    assert calls == []


def test_malformed_select_runs_nothing():
    fns, calls = _etl()
    with pytest.raises(UsageError):
        run(fns, state_dir=None, select="load and")
    assert calls == []


def test_select_inner_task_of_a_subflow():
    sub = Flow("sub")

    @sub.task
    def check_format(data):
        return "fmt"

    @sub.task
    def check_size(data):
        return "size"

    outer = Flow("outer")

    @outer.task
    def data():
        return [1]

    @outer.task
    def unrelated():
        raise AssertionError("not selected")

    outer.add(sub.as_task("validate"))
    result = run(outer, state_dir=None, select="check_format")
    assert result.ok, result.outcomes
    assert set(result.outcomes) == {"data", "validate.check_format"}
    assert result.results["validate.check_format"] == "fmt"
