"""The scheduler: results, outcomes, failures, concurrency, priority, executors, run ids."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from flowdeco import FlowError, NoTasksError, RunResult, TaskOutcome, UsageError, hookimpl, task
from flowdeco.testing import run_flow

TIMEOUT = 10.0


def make(name, params=(), body="return {name!r}", ns=None, **opts):
    ns = dict(ns or {})
    exec(f"def {name}({', '.join(params)}):\n    " + body.format(name=name) + "\n", ns)
    return task(**opts)(ns[name])


class Recorder:
    """Lock-protected start order of task bodies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.order: list[str] = []

    def __call__(self, name):
        with self.lock:
            self.order.append(name)


# --------------------------------------------------------------------------- results


def test_chain_results_and_run_result():
    @task
    def extract():
        return {"records": 1000}

    @task
    def transform(extract):
        return {"processed": extract["records"] * 2}

    @task(after=[transform])
    def notify(ctx):
        return ctx.run_id

    result = run_flow([extract, transform, notify], run_id="r1")
    assert isinstance(result, RunResult)
    assert result.ok
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.run_id == "r1"
    assert result.results == {"extract": {"records": 1000}, "transform": {"processed": 2000},
                              "notify": "r1"}
    assert result.counts()["succeeded"] == 3
    assert result.summary().startswith("3 succeeded in ")
    assert result["transform"].result == {"processed": 2000}


def test_outcome_fields():
    @task
    def a():
        return 1

    before = dt.datetime.now(dt.timezone.utc)
    out = run_flow([a]).outcomes["a"]
    after = dt.datetime.now(dt.timezone.utc)
    assert isinstance(out, TaskOutcome)
    assert out.status == "succeeded"
    assert out.result == 1
    assert out.error is None
    assert out.attempts == 1
    assert out.reason is None
    for stamp in (out.started_at, out.finished_at):
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == dt.timedelta(0)
        assert before - dt.timedelta(seconds=1) <= stamp <= after + dt.timedelta(seconds=1)
    assert out.started_at <= out.finished_at
    assert isinstance(out.duration, float) and out.duration >= 0


def test_failed_task_outcome():
    @task
    def boom():
        raise ValueError("bad input")

    result = run_flow([boom])
    out = result.outcomes["boom"]
    assert out.status == "failed"
    assert out.error == "ValueError: bad input"
    assert out.attempts == 1
    assert out.result is None
    assert out.started_at is not None and out.finished_at is not None
    assert result.status == "failed" and not result.ok
    assert result.exit_code == 1
    assert result.results == {}
    assert "1 failed" in result.summary()


def test_graceful_degradation():
    @task
    def root():
        return 1

    @task
    def bad(root):
        raise RuntimeError("nope")

    @task
    def child(bad):
        raise AssertionError("must not run")

    @task
    def grandchild(child):
        raise AssertionError("must not run")

    @task(after=[bad])
    def ordered_after_bad():
        raise AssertionError("must not run")

    @task
    def join(root, grandchild):
        raise AssertionError("must not run")

    @task
    def sibling(root):
        return "sibling"

    @task
    def independent():
        return "independent"

    @task
    def after_sibling(sibling):
        return sibling + "!"

    result = run_flow([root, bad, child, grandchild, ordered_after_bad, join, sibling, independent,
                 after_sibling])
    oc = result.outcomes
    assert oc["bad"].status == "failed"
    for name in ("child", "grandchild", "ordered_after_bad", "join"):
        assert (oc[name].status, oc[name].reason) == ("skipped", "upstream"), name
        assert oc[name].attempts == 0
    assert result.results == {"root": 1, "sibling": "sibling", "independent": "independent",
                              "after_sibling": "sibling!"}
    assert result.status == "failed"
    assert result.counts() == {"succeeded": 4, "failed": 1, "skipped": 4, "restored": 0,
                               "interrupted": 0}


def test_long_failed_chain_skips_everything_downstream():
    n = 2000
    fns = [make("t0", body="raise ValueError('head')")]
    fns += [make(f"t{i}", [f"t{i - 1}"]) for i in range(1, n)]
    result = run_flow(fns)
    assert result.outcomes["t0"].status == "failed"
    counts = result.counts()
    assert counts["skipped"] == n - 1
    assert result.outcomes[f"t{n - 1}"].reason == "upstream"


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_stop_on_error_starts_nothing_new(executor):
    started = Recorder()

    @task(priority=10)
    def first_fails():
        started("first_fails")
        raise RuntimeError("stop here")

    @task
    def other():
        started("other")

    @task
    def another(other):
        started("another")

    result = run_flow([first_fails, other, another], workers=1, stop_on_error=True,
                      executor=executor)
    assert started.order == ["first_fails"]
    oc = result.outcomes
    assert oc["first_fails"].status == "failed"
    assert (oc["other"].status, oc["other"].reason) == ("skipped", "stopped")
    assert oc["another"].status == "skipped"
    assert result.status == "failed"
    assert result.exit_code == 1


def test_stop_on_error_lets_running_tasks_finish():
    class FailureSeen:
        def __init__(self):
            self.event = threading.Event()

        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_failed":
                self.event.set()

    seen = FailureSeen()
    both_running = threading.Barrier(2, timeout=TIMEOUT)
    started = Recorder()

    @task(priority=5)
    def slow():
        started("slow")
        both_running.wait()
        # finish only after the engine has recorded the failure (and so stopped)
        assert seen.event.wait(TIMEOUT)
        return "finished"

    @task(priority=5)
    def failing():
        started("failing")
        both_running.wait()
        raise RuntimeError("boom")

    @task
    def waiting():
        started("waiting")

    result = run_flow([slow, failing, waiting], workers=2, stop_on_error=True,
                        plugins=[seen], fail_after=TIMEOUT)
    oc = result.outcomes
    assert oc["slow"].status == "succeeded" and oc["slow"].result == "finished"
    assert oc["failing"].status == "failed"
    assert (oc["waiting"].status, oc["waiting"].reason) == ("skipped", "stopped")
    assert "waiting" not in started.order
    assert result.status == "failed"


def test_without_stop_on_error_everything_independent_runs():
    @task(priority=10)
    def fails():
        raise RuntimeError("x")

    @task
    def runs():
        return 1

    result = run_flow([fails, runs], workers=1)
    assert result.outcomes["runs"].status == "succeeded"


# --------------------------------------------------------------------------- concurrency


def _concurrency_probe(n, group):
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    barrier = threading.Barrier(group, timeout=TIMEOUT) if group > 1 else None

    def body():
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            if barrier is not None:
                barrier.wait()
        finally:
            with lock:
                state["now"] -= 1

    ns = {"body": body}
    fns = [make(f"p{i}", body="body()", ns=ns) for i in range(n)]
    return fns, state


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_bound_concurrency(workers):
    fns, state = _concurrency_probe(workers * 3, workers)
    result = run_flow(fns, workers=workers, fail_after=TIMEOUT)
    assert result.ok, result.failed()
    assert state["max"] == workers


def test_independent_tasks_run_in_parallel():
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    @task
    def left():
        barrier.wait()
        return "L"

    @task
    def right():
        barrier.wait()
        return "R"

    result = run_flow([left, right], workers=2, fail_after=TIMEOUT)
    assert result.results == {"left": "L", "right": "R"}


@pytest.mark.parametrize("bad", [0, -1, "2", True, 1.5])
def test_invalid_workers(bad):
    @task
    def a():
        pass

    with pytest.raises(UsageError):
        run_flow([a], workers=bad)


# --------------------------------------------------------------------------- priority


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_priority_orders_ready_tasks(executor):
    rec = Recorder()
    ns = {"rec": rec}
    fns = [make("p0_a", body="rec({name!r})", ns=ns),
           make("p5", body="rec({name!r})", ns=ns, priority=5),
           make("p0_b", body="rec({name!r})", ns=ns),
           make("p10", body="rec({name!r})", ns=ns, priority=10),
           make("neg", body="rec({name!r})", ns=ns, priority=-1),
           make("p0_c", body="rec({name!r})", ns=ns)]
    run_flow(fns, workers=1, executor=executor)
    assert rec.order == ["p10", "p5", "p0_a", "p0_b", "p0_c", "neg"]


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_priority_among_tasks_released_by_one_completion(executor):
    rec = Recorder()
    ns = {"rec": rec}
    fns = [make("gate", body="rec({name!r})", ns=ns),
           make("low", ["gate"], body="rec({name!r})", ns=ns, priority=1),
           make("high", ["gate"], body="rec({name!r})", ns=ns, priority=3),
           make("mid", ["gate"], body="rec({name!r})", ns=ns, priority=2),
           make("tie_a", ["gate"], body="rec({name!r})", ns=ns),
           make("tie_b", ["gate"], body="rec({name!r})", ns=ns)]
    run_flow(fns, workers=1, executor=executor)
    assert rec.order == ["gate", "high", "mid", "low", "tie_a", "tie_b"]


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_chained_successor_waits_for_higher_priority_ready_task(executor):
    rec = Recorder()
    ns = {"rec": rec}
    fns = [make("a", body="rec({name!r})", ns=ns, priority=10),
           make("h", body="rec({name!r})", ns=ns, priority=5),
           make("b", ["a"], body="rec({name!r})", ns=ns)]
    run_flow(fns, workers=1, executor=executor)
    assert rec.order == ["a", "h", "b"]


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_priority_wins_over_chained_successor_released_together(executor):
    # when g finishes, both b (only depends on g) and c (depends on g and x, x done)
    # become ready; c has the higher priority and must start first
    rec = Recorder()
    ns = {"rec": rec}
    fns = [make("x", body="rec({name!r})", ns=ns, priority=100),
           make("g", body="rec({name!r})", ns=ns, priority=50),
           make("b", ["g"], body="rec({name!r})", ns=ns, priority=1),
           make("c", ["g", "x"], body="rec({name!r})", ns=ns, priority=5)]
    run_flow(fns, workers=1, executor=executor)
    assert rec.order == ["x", "g", "c", "b"]


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_ties_in_declaration_order_also_for_chained_successors(executor):
    # a and z are ready at the start; after a, both z and b are ready with equal
    # priority, and z was declared first
    rec = Recorder()
    ns = {"rec": rec}
    fns = [make("a", body="rec({name!r})", ns=ns),
           make("z", body="rec({name!r})", ns=ns),
           make("b", ["a"], body="rec({name!r})", ns=ns)]
    run_flow(fns, workers=1, executor=executor)
    assert rec.order == ["a", "z", "b"]


# --------------------------------------------------------------------------- base exceptions


class CustomBase(BaseException):
    pass


@pytest.mark.parametrize("executor", ["thread", "sync"])
@pytest.mark.parametrize("exc, text", [
    (SystemExit(3), "SystemExit: 3"),
    (KeyboardInterrupt("ki"), "KeyboardInterrupt: ki"),
    (CustomBase("custom"), "CustomBase: custom"),
])
def test_base_exceptions_fail_the_task_only(executor, exc, text):
    @task
    def raiser():
        raise exc

    @task
    def downstream(raiser):
        return 1

    @task
    def other():
        return "other"

    result = run_flow([raiser, downstream, other], workers=2, executor=executor,
                      fail_after=TIMEOUT)
    oc = result.outcomes
    assert oc["raiser"].status == "failed"
    assert oc["raiser"].error == text
    assert oc["downstream"].status == "skipped"
    assert oc["other"].status == "succeeded"
    assert result.status == "failed"


# --------------------------------------------------------------------------- executors


def test_sync_executor_runs_in_the_calling_thread():
    caller = threading.get_ident()
    seen = set()
    lock = threading.Lock()

    def body():
        with lock:
            seen.add(threading.get_ident())

    ns = {"body": body}
    fns = [make("a", body="body()", ns=ns), make("b", ["a"], body="body()", ns=ns),
           make("c", body="body()", ns=ns)]
    result = run_flow(fns, executor="sync", workers=4)
    assert result.ok
    assert seen == {caller}


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_run_routes_stop_signals_and_puts_the_old_handlers_back(executor):
    """While a run started on the main thread runs, Ctrl-C and SIGTERM go to the run;
    afterwards the application's own handlers (a callable, SIG_IGN) are back."""
    import signal

    def mine(signum, frame):
        pass

    during = []

    @task
    def look():
        during.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    saved = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, mine)
    try:
        assert run_flow([look], executor=executor).ok
        after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    assert after == (signal.SIG_IGN, mine)
    assert all(callable(h) and h is not mine for h in during[0])


def test_a_handler_installed_outside_python_is_left_alone(monkeypatch):
    """``signal.getsignal`` gives None for a handler a C library installed: the run can
    neither read it nor put it back, so it does not replace it (before: the run took
    the signal and then failed restoring None with a TypeError)."""
    import signal

    import flowdeco.signals as signals

    foreign = {signal.SIGTERM}
    get, set_ = getattr(signals, "_get_handler", signal.getsignal), signals._set_handler
    calls = []

    def getsignal(sig):
        return None if sig in foreign else get(sig)

    def setsignal(sig, handler):
        calls.append(sig)
        if handler is None:  # what CPython says to putting back an unknown handler
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable")
        if sig in foreign:
            return None  # the previous handler: installed outside Python
        return set_(sig, handler)

    monkeypatch.setattr(signals, "_get_handler", getsignal, raising=False)
    monkeypatch.setattr(signals, "_set_handler", setsignal)

    @task
    def one():
        return 1

    result = run_flow([one], executor="sync")
    assert result.ok
    assert signal.SIGTERM not in calls and calls.count(signal.SIGINT) == 2


def test_thread_executor_runs_in_worker_threads():
    caller = threading.get_ident()
    seen = []

    @task
    def where():
        seen.append(threading.get_ident())

    run_flow([where], executor="thread")
    assert seen and seen[0] != caller


def test_executor_instance_is_used_and_not_shut_down():
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="my-pool")
    names = []

    @task
    def a():
        names.append(threading.current_thread().name)
        return 1

    @task
    def b(a):
        names.append(threading.current_thread().name)
        return a + 1

    try:
        result = run_flow([a, b], executor=pool)
        assert result.results == {"a": 1, "b": 2}
        assert names and all(n.startswith("my-pool") for n in names)
        assert pool.submit(lambda: 42).result(timeout=TIMEOUT) == 42  # still usable
        result = run_flow([a, b], executor=pool)  # and reusable for another run
        assert result.ok
    finally:
        pool.shutdown()


def test_unknown_executor_name():
    @task
    def a():
        pass

    with pytest.raises(UsageError):
        run_flow([a], executor="carrier-pigeon")


PROCESS_MODULE = """
    import os
    from flowdeco import task

    @task
    def where():
        return os.getpid()

    @task
    def double(where):
        return where * 2

    @task
    def named(ctx, double):
        return (ctx.task, ctx.run_id, double)

    @task
    def boom():
        raise ValueError("in a process")

    @task
    def after_boom(boom):
        return 1
"""


def test_process_executor(write_module):
    path = write_module(PROCESS_MODULE)
    result = run_flow(str(path), fail_after=60, executor="process", workers=2, run_id="proc")
    oc = result.outcomes
    pid = result.results["where"]
    assert isinstance(pid, int) and pid != os.getpid()
    assert result.results["double"] == pid * 2
    assert result.results["named"] == ("named", "proc", pid * 2)
    assert oc["boom"].status == "failed"
    assert oc["boom"].error == "ValueError: in a process"
    assert (oc["after_boom"].status, oc["after_boom"].reason) == ("skipped", "upstream")


# --------------------------------------------------------------------------- long chains


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_chain_of_2000_tasks(executor):
    n = 2000
    fns = [make("c0", body="return 0")]
    fns += [make(f"c{i}", [f"c{i - 1}"], body=f"return c{i - 1} + 1") for i in range(1, n)]
    result = run_flow(fns, executor=executor, workers=4)
    assert result.ok
    assert len(result.outcomes) == n
    assert result.results[f"c{n - 1}"] == n - 1
    assert all(result.results[f"c{i}"] == i for i in range(n))


# --------------------------------------------------------------------------- run ids


@pytest.mark.parametrize("bad", ["bad/id", "", ".", "..", "a" * 129, "has space", "ü",
                                 "a\nb", "../up"])
def test_invalid_run_ids(bad):
    ran = []

    @task
    def a():
        ran.append(1)

    with pytest.raises(UsageError) as info:
        run_flow([a], run_id=bad)
    assert isinstance(info.value, FlowError)
    assert ran == []


@pytest.mark.parametrize("good", ["a", "A-b_c.1", "a" * 128, "...", "2026-01-01.run_7"])
def test_valid_run_ids(good):
    seen = []

    @task
    def a(ctx):
        seen.append(ctx.run_id)

    assert run_flow([a], run_id=good).run_id == good
    assert seen == [good]


def test_generated_run_ids_are_valid_and_unique():
    @task
    def a():
        pass

    ids = {run_flow([a]).run_id for _ in range(3)}
    assert len(ids) == 3
    for rid in ids:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", rid) and rid not in (".", "..")


# --------------------------------------------------------------------------- context


def test_ctx_upstream_has_dependency_outcomes():
    seen = {}

    @task
    def a():
        return "A"

    @task
    def b():
        return "B"

    @task
    def unrelated():
        return "U"

    @task(after=[b])
    def c(a, ctx):
        seen.update({k: (o.status, o.result) for k, o in ctx.upstream.items()})
        return a

    result = run_flow([a, b, unrelated, c])
    assert result.ok
    assert seen == {"a": ("succeeded", "A"), "b": ("succeeded", "B")}


def test_ctx_per_task():
    seen = {}
    lock = threading.Lock()

    def body(ctx):
        with lock:
            seen[ctx.task] = (ctx.attempt, ctx.iteration, ctx.params.get("env"))

    ns = {"body": body}
    fns = [make("one", ["ctx"], body="body(ctx)", ns=ns),
           make("two", ["ctx", "one"], body="body(ctx)", ns=ns)]
    run_flow(fns, params={"env": "test"})
    assert seen == {"one": (1, None, "test"), "two": (1, None, "test")}


# --------------------------------------------------------------------------- misc


def test_no_files_without_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @task
    def a(ctx):
        ctx.log.info("something", detail=1)
        return 1

    @task
    def b(a):
        raise ValueError("x")

    run_flow([a, b], state_dir=None)
    assert list(tmp_path.iterdir()) == []


def test_no_tasks_error():
    with pytest.raises(NoTasksError):
        run_flow([])


def test_results_are_passed_by_identity_on_threads():
    payload = {"big": list(range(10))}
    seen = []

    @task
    def produce():
        return payload

    @task
    def consume(produce):
        seen.append(produce)

    run_flow([produce, consume])
    assert seen[0] is payload
