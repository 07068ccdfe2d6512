"""``flowdeco_attempt_scope``: context an attempt takes to its worker (thread, sync, process).

A plugin's scope is entered on the worker around each attempt -- retries and
mapped instances included -- so what a task body sees there (a trace
context, in flowdeco-otel) belongs to that very attempt.
"""

from __future__ import annotations

import textwrap

import pytest

from flowdeco import hookimpl
from flowdeco.testing import run_flow

FLOW = """
    from flowdeco import Flow, Retry, task

    ACTIVE = []          # the labels of the scopes entered on this worker, innermost last


    class Mark:
        \"\"\"A scope: picklable, so it travels to worker processes.\"\"\"

        def __init__(self, label):
            self.label = label

        def __enter__(self):
            ACTIVE.append(self.label)

        def __exit__(self, *exc):
            ACTIVE.remove(self.label)


    SEEN = []

    @task(retry=Retry(retries=1, delay=0))
    def flaky(ctx):
        if ctx.attempt == 1:
            raise ValueError(list(ACTIVE))   # the failing attempt's scopes, in its error
        return list(ACTIVE)

    @task(map="flaky")
    def each(flaky):
        return list(ACTIVE)

    sub = Flow("sub")

    @sub.task
    def inner():
        return list(ACTIVE)

    node = sub.as_task("part")

    @task
    def after(part, each):
        return list(ACTIVE)

    def solo():
        return 1
"""


class ScopePlugin:
    """Gives each attempt a Mark labelled ``name#attempt``; records where it was asked."""

    def __init__(self, mark):
        self.mark = mark
        self.asked = []

    @hookimpl
    def flowdeco_attempt_scope(self, task, name, attempt, iteration):
        self.asked.append((task.name, name, attempt))
        return self.mark(f"{name}#{attempt}")


@pytest.fixture
def flow(tmp_path, monkeypatch):
    path = tmp_path / "scoped_flow.py"
    path.write_text(textwrap.dedent(FLOW))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop("scoped_flow", None)
    mod = importlib.import_module("scoped_flow")
    yield mod
    sys.modules.pop("scoped_flow", None)


@pytest.mark.parametrize("executor", ["thread", "sync", "process"])
def test_each_attempt_runs_inside_its_own_scope(flow, executor):
    plugin = ScopePlugin(flow.Mark)
    result = run_flow(flow, executor=executor, workers=2, plugins=[plugin], fail_after=60)
    assert result.status == "succeeded", result.outcomes
    assert result.outcomes["flaky"].attempts == 2
    # the second attempt saw only its own scope (the first one's was exited)
    out = {name: result[name].result for name in ("flaky", "each", "part", "after")}
    assert out["flaky"] == ["flaky#2"]
    # each mapped instance (one per item of flaky's list) in its own scope, under its name
    assert out["each"] == [["each[0]#1"]]
    assert out["part"] == ["part.inner#1"]
    assert out["after"] == ["after#1"]
    assert ("flaky", "flaky", 1) in plugin.asked and ("flaky", "flaky", 2) in plugin.asked
    assert ("each", "each[0]", 1) in plugin.asked
    # sub-flow nodes do not run: no scope is asked for them
    assert [a for a in plugin.asked if a[0] == "part"] == []


def test_a_run_without_scopes_keeps_its_fast_paths(flow):
    """No plugin implements the hook: tasks are plain calls (nothing wrapped, chaining on)."""
    seen = {}

    class Peek:
        @hookimpl
        def flowdeco_run_start(self, run):
            seen["run"] = run

    run_flow([flow.solo], executor="thread", plugins=[Peek()])
    run = seen["run"]
    assert run._scope is None and run._calls == [None] and run.inline_successors
