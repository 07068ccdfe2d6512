"""Pools (issue 19 item 4): ``--limit TAG=N`` / ``run(limits=)`` / ``[tool.flowdeco.limits]``.

At most N attempts of tasks carrying TAG run at once, across the run (mapped
instances and pipeline nodes included), and a task waiting for a slot holds
no worker.  Concurrency is measured by the tasks themselves (a counter under
a lock); barriers make the overlap certain where a test needs it, so a
broken cap fails the test instead of passing by luck.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import flowdeco
from flowdeco import Pipeline, UsageError, hookimpl, task
from flowdeco.testing import run_flow

from test_cli import assert_one_error_line


class Meter:
    """Running attempts per tag, and the most seen at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.order: list[str] = []

    def enter(self, name, tags):
        with self.lock:
            self.order.append(name)
            for t in tags:
                self.running[t] += 1
                self.peak[t] = max(self.peak[t], self.running[t])

    def linger(self):
        """Stay a moment, so that a broken cap shows as overlap (a working one never
        depends on it: the cap holds however long attempts take)."""
        threading.Event().wait(0.05)

    def leave(self, tags):
        with self.lock:
            for t in tags:
                self.running[t] -= 1


class Grab:
    """Keeps the run (to read its pool gate after the run)."""

    run = None

    @hookimpl
    def flowdeco_run_finish(self, run, result):
        self.run = run


def test_a_limit_caps_tasks_with_the_tag_and_leaves_the_rest_alone():
    meter = Meter()
    pair = threading.Barrier(2, timeout=10)   # db tasks can only finish two by two

    def make(k):
        @task(name=f"db{k}", tags=["db"])
        def db():
            meter.enter(f"db{k}", ["db"])
            try:
                pair.wait()
            finally:
                meter.leave(["db"])
        return db

    tasks = [make(k) for k in range(6)]
    grab = Grab()
    result = run_flow(tasks, workers=5, limits={"db": 2}, plugins=[grab])
    assert result.ok, result.failed()
    assert meter.peak["db"] == 2
    assert grab.run.pools.peak == {"db": 2}


def test_without_the_limit_the_same_flow_goes_wider():
    """The measurement can see a violation: no limit, more db tasks at once."""
    meter = Meter()
    four = threading.Barrier(4, timeout=10)

    def make(k):
        @task(name=f"db{k}", tags=["db"])
        def db():
            meter.enter(f"db{k}", ["db"])
            try:
                four.wait()
            finally:
                meter.leave(["db"])
        return db

    result = run_flow([make(k) for k in range(4)], workers=4)
    assert result.ok and meter.peak["db"] == 4


def test_waiting_for_a_slot_holds_no_worker():
    """Two workers, db=1: the db tasks wait for `free` to run; if a waiting db task
    held the second worker, `free` could never run and the db task would time out."""
    free_ran = threading.Event()

    def make(k):
        @task(name=f"db{k}", tags="db")
        def db():
            assert free_ran.wait(10), "free never ran: a worker was held by a waiting task"
        return db

    @task
    def free():
        free_ran.set()

    result = run_flow([make(0), make(1), make(2), free], workers=2, limits={"db": 1})
    assert result.ok, result.failed()


def test_slots_go_by_priority():
    meter = Meter()

    def make(k, prio):
        @task(name=f"t{k}", tags="db", priority=prio)
        def t():
            meter.enter(f"t{k}", ["db"])
            meter.linger()
            meter.leave(["db"])
        return t

    tasks = [make(0, 0), make(1, 5), make(2, 1), make(3, 9)]
    result = run_flow(tasks, workers=3, limits={"db": 1})
    assert result.ok
    assert meter.order == ["t3", "t1", "t2", "t0"]
    assert meter.peak["db"] == 1


def test_a_task_with_two_limited_tags_needs_a_slot_in_each():
    meter = Meter()
    spec = {"a1": ["a"], "a2": ["a"], "ab1": ["a", "b"], "ab2": ["a", "b"], "b1": ["b"],
            "b2": ["b"]}

    def make(name, tags):
        @task(name=name, tags=tags)
        def t():
            meter.enter(name, tags)
            time.sleep(0.002)
            meter.leave(tags)
        return t

    result = run_flow([make(n, t) for n, t in spec.items()], workers=4,
                      limits={"a": 2, "b": 1})
    assert result.ok
    assert meter.peak["a"] <= 2 and meter.peak["b"] <= 1


def test_mapped_instances_count_one_by_one():
    meter = Meter()
    grab = Grab()

    @task
    def items():
        return list(range(6))

    @task(map="items", tags="api")
    def call(items):
        meter.enter("call", ["api"])
        meter.linger()
        meter.leave(["api"])
        return items

    @task(tags="api")
    def other():
        meter.enter("other", ["api"])
        meter.linger()
        meter.leave(["api"])

    result = run_flow([items, call, other], workers=4, limits={"api": 2}, plugins=[grab])
    assert result.ok, result.failed()
    assert result["call"].result == list(range(6))
    assert meter.peak["api"] <= 2
    assert grab.run.pools.peak == {"api": 2}


def test_a_pipeline_node_takes_a_slot_like_a_task():
    windows = {}
    pipe = Pipeline("load")

    @pipe.stage()
    def double(x):
        windows.setdefault("node", [time.monotonic(), 0.0])
        threading.Event().wait(0.02)
        windows["node"][1] = time.monotonic()
        return 2 * x

    @task
    def rows():
        return [1, 2, 3]

    @task(tags="db")
    def writer():
        t0 = time.monotonic()
        threading.Event().wait(0.05)
        windows["writer"] = [t0, time.monotonic()]

    node = pipe.as_task("node", source=rows, tags=["db"])

    result = run_flow([rows, node, writer], workers=4, limits={"db": 1})
    assert result.ok, result.failed()
    assert result["node"].result.outputs == [2, 4, 6]
    (a0, a1), (b0, b1) = sorted(windows.values())
    assert a1 <= b0, windows   # one after the other, never side by side


def test_a_retry_wait_gives_the_slot_back():
    clock = flowdeco.FakeClock()
    order = []

    meter = Meter()

    @task(tags="db", retry=flowdeco.Retry(retries=1, delay=50))
    def flaky():
        meter.enter("flaky", ["db"])
        order.append("flaky")
        meter.linger()
        meter.leave(["db"])
        if order.count("flaky") == 1:
            raise ValueError("once")

    @task(tags="db")
    def steady():
        meter.enter("steady", ["db"])
        order.append("steady")
        meter.linger()
        meter.leave(["db"])

    result = run_flow([flaky, steady], workers=2, limits={"db": 1}, clock=clock)
    assert result.ok
    assert order == ["flaky", "steady", "flaky"]   # steady took the slot during the wait
    assert meter.peak["db"] == 1


def test_a_limit_that_cannot_bind_costs_nothing():
    grab = Grab()

    @task(tags="db")
    def a():
        return 1

    assert run_flow([a], workers=2, limits={"db": 2}, plugins=[grab]).ok
    assert grab.run.pools is None              # limit >= workers
    assert run_flow([a], workers=4, limits={"other": 1}, plugins=[grab]).ok
    assert grab.run.pools is None              # no task has the tag
    assert run_flow([a], workers=4, plugins=[grab]).ok
    assert grab.run.pools is None and grab.run.limits == {}


def test_limits_hold_on_processes():
    grab = Grab()
    result = run_flow([proc_a, proc_b, proc_c, proc_d], executor="process", workers=3,
                      limits={"db": 1}, plugins=[grab], fail_after=60)
    assert result.ok, result.failed()
    assert grab.run.pools.peak == {"db": 1}
    assert result["proc_d"].result == 9


@task(tags="db")
def proc_a():
    return 1


@task(tags="db")
def proc_b():
    return 2


@task(tags="db")
def proc_c(proc_a, proc_b):
    return proc_a + proc_b


@task(tags=["db"])
def proc_d(proc_c):
    return proc_c * proc_c


@pytest.mark.parametrize("bad, message", [
    ({"db": 0}, "a pool of 0"),
    ({"db": "two"}, "whole number"),
    (["db"], "expected TAG=N"),
    ({"": 1}, "non-empty"),
])
def test_bad_limits_are_usage_errors(bad, message):
    @task(tags="db")
    def a():
        return 1

    with pytest.raises(UsageError, match=message):
        run_flow([a], limits=bad)


def test_cli_limit_and_the_config_table(tmp_path, monkeypatch, capsys):
    from flowdeco import cli
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool_flow_cli.py").write_text(
        "from flowdeco import task\n"
        "@task(tags='db')\ndef a():\n    return 1\n")
    (tmp_path / "flowdeco.toml").write_text("no_state = true\n[limits]\ndb = 2\napi = 3\n")
    assert cli.main(["config", "pool_flow_cli.py", "--limit", "db=1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"limits +\['db=2', 'api=3', 'db=1'\] +command line", out), out
    assert cli.main(["pool_flow_cli.py", "--limit", "db=1"]) == 0
    capsys.readouterr()
    assert cli.main(["pool_flow_cli.py", "--limit", "db"]) == 4
    assert "--limit 'db': expected TAG=N" in assert_one_error_line(capsys.readouterr().err)


UNKNOWN_TAG_FLOW = """
from flowdeco import task

@task(tags=["net", "db"])
def fetch():
    return 1

@task(tags="db")
def load(fetch):
    return fetch + 1
"""


def test_a_limit_for_a_tag_no_task_has_warns_once_and_the_run_goes_on(tmp_path):
    """A typo in --limit (or a config file shared by several flows): one warning line naming
    the tag and the tags the flow has; not an error."""
    import os
    import subprocess
    import sys
    path = tmp_path / "tagged_flow.py"
    path.write_text(UNKNOWN_TAG_FLOW)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "flowdeco", str(path), "--no-state", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "NO_COLOR": "1"})

    r = cli("--limit", "nope=1", "--limit", "db=1")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "nope" in ln]
    assert len(lines) == 1, r.stderr
    assert "--limit nope=1: no task has tag 'nope' (tags in this flow: db, net)" in lines[0]
    assert "warning" in lines[0] and "Traceback" not in r.stderr
    assert "no task has tag" not in cli("--limit", "db=1", "--limit", "net=9").stderr
    # -q keeps warnings
    assert "no task has tag 'nope'" in cli("-q", "--limit", "nope=1").stderr


def test_run_limits_for_a_tag_no_task_has_are_a_warning_event():
    from flowdeco.testing import FlowEvents

    @task(tags="db")
    def a():
        return 1

    @task
    def b(a):
        return a

    events = FlowEvents()
    result = run_flow([a, b], limits={"db": 1, "io": 2}, plugins=[events])
    assert result.ok
    [warning] = events.of("config_warning")
    assert warning.fields == {"level": "warning",
                              "message": "limits={'io': 2}: no task has tag 'io' "
                                         "(tags in this flow: db)"}
    events.clear()
    assert run_flow([b, a], limits={"db": 1}, plugins=[events]).ok
    assert events.of("config_warning") == []
    # the sync executor has no pools, but the typo is still worth a word
    assert run_flow([b, a], limits={"io": 1}, executor="sync", plugins=[events]).ok
    assert len(events.of("config_warning")) == 1
    events.clear()

    @task
    def plain():
        return 1

    assert run_flow([plain], limits={"db": 1}, plugins=[events]).ok
    assert events.of("config_warning", message="limits={'db': 1}: no task has tag 'db' "
                                               "(no task in this flow has a tag)")


# --------------------------------------------------------------------------- property


@st.composite
def dags(draw):
    n = draw(st.integers(2, 12))
    tags = []
    deps = []
    for i in range(n):
        tags.append(draw(st.sampled_from([(), ("a",), ("b",), ("a", "b")])))
        deps.append(sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else [])
    mapped = draw(st.sets(st.integers(0, n - 1), max_size=2))
    flaky = draw(st.sets(st.integers(0, n - 1), max_size=2))
    limits = {"a": draw(st.integers(1, 3)), "b": draw(st.integers(1, 2))}
    workers = draw(st.integers(2, 5))
    return n, tags, deps, mapped, flaky, limits, workers


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.randoms(use_true_random=False))
def test_property_no_limit_is_ever_exceeded_on_random_dags(case, rnd):
    n, tags, deps, mapped, flaky, limits, workers = case
    meter = Meter()
    failed_once: set[str] = set()
    lock = threading.Lock()

    def body(name, tg):
        meter.enter(name, tg)
        try:
            time.sleep(rnd.random() * 0.002)  # vary the overlap; correctness never depends on it
            with lock:
                first = name not in failed_once
                failed_once.add(name)
            if name.split("[")[0] in flaky_names and first:
                raise ValueError("first attempt fails")
        finally:
            meter.leave(tg)

    flaky_names = {f"t{i}" for i in flaky}
    tasks = []
    for i in range(n):
        name = f"t{i}"
        params = [f"t{d}" for d in deps[i]]
        # every task returns [0, 1, 2]: a mapped task maps over its first dependency
        src = f"def {name}({', '.join(params)}):\n    body({name!r}, {tags[i]!r})\n" \
              f"    return [0, 1, 2]\n"
        ns = {"body": body}
        exec(src, ns)
        fn = ns[name]
        fn.__module__ = __name__
        opts = dict(name=name, tags=tags[i], retries=1 if i in flaky else 0)
        if i in mapped and params:
            opts["map"] = params[0]
        tasks.append(task(**opts)(fn))
    result = run_flow(tasks, workers=workers, limits=limits)
    assert result.ok, result.failed()
    for tag, cap in limits.items():
        assert meter.peak.get(tag, 0) <= cap, (tag, dict(meter.peak), limits)
