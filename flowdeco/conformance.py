"""What every executor must do like threads: a test suite an executor's tests subclass.

A flow must give the same results, outcomes and audit trail whichever
executor runs its task bodies.  :class:`ExecutorConformance` holds those
tests once; the thread, process and Dask executors each run them::

    from flowdeco.testing import ExecutorConformance

    class TestProcess(ExecutorConformance):
        remote = True
        dead_worker_error = r"WorkerCrashed: worker process {pid} died .*"

        @pytest.fixture
        def executor(self):
            return "process"

Only ``executor`` is required.  A subclass may override ``write_flow`` (where
flow modules are written, e.g. a folder a cluster's workers can import from)
and ``counting_executor`` (an executor recording how many attempts each
submission carried, for the batching checks).  Imports only pytest and the
standard library, so ``flowdeco.testing`` stays cheap to load.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

_names = itertools.count()


def audit(state_dir: Path | str, run_id: str) -> list[dict]:
    """The audit events of run ``run_id`` kept under ``state_dir``, as dicts."""
    path = Path(state_dir) / "runs" / run_id / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def event_shape(events: list[dict]) -> dict[str | None, list[tuple]]:
    """Per task, its events in order with only the fields that do not depend on timing."""
    keep = ("attempt", "attempts", "error", "reason", "status", "n", "delay", "resumed")
    out: dict[str | None, list[tuple]] = {}
    for e in events:
        out.setdefault(e.get("task"), []).append(
            (e["event"],) + tuple((k, e[k]) for k in keep if k in e))
    return out


def summary(result: Any) -> tuple:
    """(outcomes without timings, results, status) of a ``RunResult``: what must match threads."""
    return ({k: (o.status, o.attempts, o.error, o.reason) for k, o in result.outcomes.items()},
            result.results, result.status)


DAG = """
    import os
    from pathlib import Path
    from flowdeco import task

    COUNTER = Path({counter!r})

    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1

    @task
    def c(a):
        return a * 10

    @task(retries=2)
    def flaky(b, c, ctx):
        # a file-based counter: workers may share no memory with the driver
        n = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
        COUNTER.write_text(str(n))
        ctx.log.info("trying", n=n)
        if n < 3:
            raise ValueError(f"attempt {{n}}")
        return {{"sum": b + c, "pid": os.getpid()}}

    @task
    def broken(a):
        raise KeyError("nope")

    @task
    def never(broken):
        return 0
"""

CRASH = """
    import os
    from pathlib import Path
    from flowdeco import task

    D = Path({markers!r})

    @task(retries=1)
    def crash():
        # the first attempt kills its worker process; the second finds the marker
        marker = D / "crashed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return os.getpid()

    @task
    def after(crash):
        return crash

    @task
    def independent():
        return "fine"
"""

TIMEOUT = """
    import time
    from flowdeco import task

    @task(timeout=0.3)
    def slow():
        time.sleep({sleep})
        return 1

    @task
    def quick():
        return 2
"""

POLICIES = """
    import time
    from flowdeco import CircuitBreaker, task

    BREAKER = CircuitBreaker("conformance-{tag}", threshold=1, reset_after=600)
    MAPPED = CircuitBreaker("conformance-mapped-{tag}", threshold=1, reset_after=600)

    @task
    def items():
        return [0.0, {sleep}]

    @task(map="items", timeout=0.3)
    def nap(items):
        time.sleep(items)
        return items

    @task(circuit=BREAKER)
    def down():
        raise ConnectionError("down")

    @task(circuit=BREAKER, after=[down], trigger="all_done")
    def refused():
        return 1

    @task(map="items", circuit=MAPPED)
    def shaky(items):
        raise ConnectionError(f"down {{items}}")
"""

RESUME = """
    from pathlib import Path
    from flowdeco import task

    @task
    def first():
        return 1

    @task
    def gate(first):
        if not Path({flag!r}).exists():
            raise RuntimeError("not yet")
        return first + 1

    @task
    def last(gate):
        return gate * 10
"""

PIPELINE = """
    import os
    from flowdeco import Pipeline, task

    pipe = Pipeline("numbers", queue_size=4)

    @pipe.stage(workers=2)
    def square(x):
        if x == 7:
            raise ValueError("seven")
        return x * x

    @pipe.stage(batch_size=3)
    def tag(batch):
        return [(x, os.getpid()) for x in batch]

    @task
    def source():
        return list(range(12))

    numbers = pipe.as_task("numbers", source=source)

    @task
    def total(numbers):
        return sum(x for x, _ in numbers.outputs)
"""

NAP = """
    import time
    from flowdeco import task

    @task
    def nap():
        time.sleep(0.2)
        return 1
"""

TINY = """
    import inspect
    from flowdeco import task

    def _tiny(i, deps):
        def tiny(ctx, **kw):
            if {fail!r} and i % 7 == 3 and ctx.attempt == 1:
                raise ValueError(f"first try of {{i}}")
            if i % 50 == 0:
                ctx.log.info("note", i=i)
            return i + sum(kw.values())
        tiny.__name__ = tiny.__qualname__ = f"t{{i}}"
        # parameters named after upstream tasks: rebuild the signature
        tiny.__signature__ = inspect.Signature(
            [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(d, inspect.Parameter.KEYWORD_ONLY) for d in deps])
        return task(retries=1)(tiny)

    for _i in range({n}):
        _deps = [f"t{{_i - {n} // 2}}"] if _i >= {n} // 2 else []
        _f = _tiny(_i, _deps)
        globals()[_f.__name__] = _f
"""


class ExecutorConformance:
    """Tests a flow's behaviour on an executor against the same flow on threads.

    Subclass it in a test module (named ``Test...``) and provide the
    ``executor`` fixture: the value given as ``run(executor=...)``.
    """

    #: seconds a run may take before its test fails instead of hanging the suite
    fail_after: float = 120.0
    #: attempts run in another process (their pid is not the driver's)
    remote: bool = False
    #: regex of the error of an attempt whose worker process died (``{pid}``: that
    #: process), or None when the executor has no worker process a task may kill
    dead_worker_error: str | None = None
    #: tiny attempts travel several to a submission (checked with ``counting_executor``)
    batches: bool = False
    #: with ``workers=1`` all attempts run in one process, so they share a breaker's state
    #: (False for a cluster of several worker processes: each counts its own failures)
    one_breaker_state: bool = True

    @pytest.fixture
    def executor(self) -> Any:
        raise NotImplementedError("a conformance subclass provides the executor fixture")

    @pytest.fixture
    def write_flow(self, tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Path]]:
        """``write_flow(source) -> Path``: a module of tasks, importable by name."""
        folder = tmp_path_factory.mktemp("flows")
        monkeypatch.syspath_prepend(str(folder))
        written: list[str] = []

        def write(source: str) -> Path:
            name = f"fdconf_{os.getpid()}_{next(_names)}"
            path = folder / f"{name}.py"
            path.write_text(textwrap.dedent(source))
            written.append(name)
            importlib.invalidate_caches()
            return path

        yield write
        for name in written:
            sys.modules.pop(name, None)

    @pytest.fixture
    def counting_executor(self) -> Any:
        """An executor whose ``sizes`` lists the attempts per submission, or None."""
        return None

    def run(self, target: Any, executor: Any, **kwargs: Any) -> Any:
        from .testing import run_flow
        return run_flow(target, executor=executor, fail_after=self.fail_after, **kwargs)

    # ------------------------------------------------------------------ the tests

    def test_dag_retries_and_audit_match_threads(self, executor, write_flow, tmp_path):
        got = {}
        for ex in ("thread", "tested"):
            path = write_flow(DAG.format(counter=str(tmp_path / f"counter-{ex}")))
            st = tmp_path / f"st-{ex}"
            result = self.run(str(path), "thread" if ex == "thread" else executor, workers=2,
                              state_dir=st, run_id="same")
            pid = result.results["flaky"].pop("pid")
            got[ex] = (summary(result), event_shape(audit(st, "same")), pid)
        assert got["thread"][:2] == got["tested"][:2]
        assert got["tested"][0][1]["flaky"] == {"sum": 12}
        assert (got["tested"][2] != os.getpid()) is self.remote
        flaky = got["tested"][1]["flaky"]
        assert ("task_retrying", ("attempt", 1), ("error", "ValueError: attempt 1"),
                ("delay", 0.0)) in flaky
        assert ("trying", ("attempt", 3), ("n", 3)) in flaky

    def test_dead_worker_fails_only_its_attempt(self, executor, write_flow, tmp_path):
        if self.dead_worker_error is None:
            pytest.skip("no worker process for a task to kill")
        markers = tmp_path / "m"
        markers.mkdir()
        path = write_flow(CRASH.format(markers=str(markers)))
        st = tmp_path / "st"
        result = self.run(str(path), executor, workers=1, state_dir=st, run_id="crash")
        assert result.ok, result.outcomes
        dead = int((markers / "crashed").read_text())
        assert result.outcomes["crash"].attempts == 2
        assert result.results["after"] == result.results["crash"] != dead
        assert result.results["independent"] == "fine"
        retrying = [e for e in audit(st, "crash") if e["event"] == "task_retrying"]
        assert [e["task"] for e in retrying] == ["crash"]
        assert re.fullmatch(self.dead_worker_error.format(pid=dead), retrying[0]["error"]), \
            retrying[0]["error"]

    def test_timeout_fails_the_attempt_and_the_run_goes_on(self, executor, write_flow):
        sleep = 3.0
        result = self.run(str(write_flow(TIMEOUT.format(sleep=sleep))), executor)
        out = result.outcomes["slow"]
        assert out.status == "failed"
        assert out.error == "TaskTimeout: task 'slow' exceeded its timeout of 0.3 s"
        assert out.duration < sleep / 2          # cut at its limit, not when the body returned
        assert result.results["quick"] == 2
        assert result.finished - result.started < sleep   # nor did the run wait for it

    def test_timeouts_and_breakers_match_threads_also_for_mapped_instances(
            self, executor, write_flow):
        """One mechanism per concern: a task's deadline and breaker apply the same way
        on every executor, to tasks and to each instance of a mapped task."""
        sleep = 3.0
        got = {}
        for ex in ("thread", "tested"):
            path = write_flow(POLICIES.format(tag=ex, sleep=sleep))
            result = self.run(str(path), "thread" if ex == "thread" else executor, workers=1)
            got[ex] = {name: (o.status, o.error and o.error.split(":")[0])
                       for name, o in result.outcomes.items()}
            assert result.outcomes["nap[1]"].error == \
                "TaskTimeout: task 'nap' exceeded its timeout of 0.3 s", ex
            assert result.outcomes["nap[1]"].duration < sleep / 2, ex
            assert result.finished - result.started < sleep, ex  # nor did the run wait
        if not self.one_breaker_state:  # a breaker's state lives in each worker process
            for d in got.values():
                for name in ("refused", "shaky", "shaky[0]", "shaky[1]"):
                    del d[name]
        assert got["tested"] == got["thread"], got
        if not self.one_breaker_state:
            return
        assert got["thread"] == {
            "items": ("succeeded", None), "nap": ("failed", "MapFailed"),
            "nap[0]": ("succeeded", None), "nap[1]": ("failed", "TaskTimeout"),
            "down": ("failed", "ConnectionError"), "refused": ("failed", "CircuitOpenError"),
            "shaky": ("failed", "MapFailed"), "shaky[0]": ("failed", "ConnectionError"),
            "shaky[1]": ("failed", "CircuitOpenError")}

    def test_times_are_on_the_drivers_clock(self, executor, write_flow):
        result = self.run(str(write_flow(NAP)), executor)
        out = result.outcomes["nap"]
        assert 0.2 <= out.duration <= result.finished - result.started
        assert abs((out.finished_at - out.started_at).total_seconds() - out.duration) < 1e-3
        # timestamps come from the driver's clock: they fall inside the run
        assert result.started - 1e-3 <= out.started_at.timestamp()
        assert out.finished_at.timestamp() <= result.finished + 1e-3

    def test_resumed_run_restores_like_on_threads(self, executor, write_flow, tmp_path):
        got = {}
        for ex in ("thread", "tested"):
            flag = tmp_path / f"fixed-{ex}"
            path = write_flow(RESUME.format(flag=str(flag)))
            chosen = "thread" if ex == "thread" else executor
            st = tmp_path / f"st-{ex}"
            failed = self.run(str(path), chosen, state_dir=st, run_id="r")
            flag.write_text("")
            resumed = self.run(str(path), chosen, state_dir=st, resume="r")
            got[ex] = (summary(failed), summary(resumed), event_shape(audit(st, "r")))
        assert got["thread"] == got["tested"]
        assert got["tested"][0][2] == "failed"
        assert got["tested"][1][0]["first"][0] == "restored"
        assert got["tested"][1][1] == {"first": 1, "gate": 2, "last": 20}

    def test_pipeline_node_runs_like_on_threads(self, executor, write_flow):
        got = {}
        for ex in ("thread", "tested"):
            result = self.run(str(write_flow(PIPELINE)), "thread" if ex == "thread" else executor)
            res = result.results["numbers"]
            got[ex] = ([x for x, _ in res.outputs],
                       [(e.index, e.stage, e.error) for e in res.errors],
                       result.results["total"], {pid for _, pid in res.outputs})
        assert got["thread"][:3] == got["tested"][:3]
        assert got["tested"][0] == [x * x for x in range(12) if x != 7]
        assert got["tested"][1] == [(7, "square", "ValueError: seven")]
        assert got["thread"][3] == {os.getpid()}
        assert (os.getpid() not in got["tested"][3]) is self.remote

    @pytest.mark.parametrize("fail", [False, True], ids=["ok", "retries"])
    def test_tiny_tasks_report_like_single_attempts(self, executor, counting_executor,
                                                    write_flow, tmp_path, fail):
        n = 300
        path = write_flow(TINY.format(n=n, fail=fail))
        st = tmp_path / "st"
        chosen = executor if counting_executor is None else counting_executor
        result = self.run(str(path), chosen, state_dir=st, run_id="tiny")
        assert result.ok, {k: o.error for k, o in result.outcomes.items() if o.error}
        half = n // 2
        assert result.results == {f"t{i}": i + (i - half if i >= half else 0) for i in range(n)}
        retried = {i for i in range(n) if fail and i % 7 == 3}
        if counting_executor is not None:
            sizes = counting_executor.sizes
            assert sum(sizes) == n + len(retried)
            if self.batches:
                assert max(sizes) > 10 and len(sizes) < n / 4, sizes
        # each attempt is reported as if it ran alone: started, then succeeded/retrying
        per_task: dict[str, list[str]] = {}
        for e in audit(st, "tiny"):
            if e.get("task"):
                per_task.setdefault(e["task"], []).append(e["event"])
        for i in range(n):
            first = ["task_started", "task_retrying"] if i in retried else []
            note = ["note"] if i % 50 == 0 else []
            assert per_task[f"t{i}"] == first + ["task_started"] + note + ["task_succeeded"], i
            assert result.outcomes[f"t{i}"].attempts == (2 if i in retried else 1)
