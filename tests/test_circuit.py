"""Circuit breakers: the state machine, concurrency, and the circuit plugin (issue 3)."""

from __future__ import annotations

import itertools
import pickle
import threading
import time

import pytest

import flowdeco
from flowdeco import (CircuitBreaker, CircuitOpenError, CollectionError, FakeClock, Retry,
                      TaskDefinitionError, run, task)
from flowdeco.plugins.circuit import CircuitCall, CircuitState
from flowdeco.testing import FlowEvents

_names = itertools.count()
BARRIER_TIMEOUT = 5.0


def fresh(prefix: str = "cb", **kw) -> CircuitBreaker:
    kw.setdefault("clock", FakeClock())
    return CircuitBreaker(f"{prefix}-{next(_names)}", **kw)


def ok():
    return "ok"


def fail():
    raise ConnectionError("down")


def attempt(breaker: CircuitBreaker, fn=fail):
    try:
        return breaker.call(fn)
    except Exception as exc:  # noqa: BLE001
        return exc


class Transitions:
    def __init__(self, breaker: CircuitBreaker):
        self.seen: list[tuple[str, str]] = []
        breaker.subscribe(self)

    def __call__(self, breaker, old, new):
        self.seen.append((str(old), str(new)))


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("kwargs, word", [
    (dict(name=""), "name"),
    (dict(name=3), "name"),
    (dict(name="x", threshold=0), "threshold"),
    (dict(name="x", threshold=1.5), "threshold"),
    (dict(name="x", reset_after=-1), "reset_after"),
    (dict(name="x", reset_after=float("inf")), "reset_after"),
    (dict(name="x", half_open_attempts=0), "half_open_attempts"),
    (dict(name="x", clock="not a clock"), "clock"),
])
def test_invalid_arguments(kwargs, word):
    with pytest.raises(TaskDefinitionError, match=word):
        CircuitBreaker(**kwargs)


def test_defaults_and_registry():
    b = CircuitBreaker(f"defaults-{next(_names)}")
    assert (b.threshold, b.reset_after, b.half_open_attempts) == (5, 60.0, 1)
    assert b.state == CircuitState.CLOSED == "closed"
    assert CircuitBreaker.get(b.name) is b
    assert b.name in CircuitBreaker.names()
    with pytest.raises(KeyError):
        CircuitBreaker.get("no-such-breaker-anywhere")
    again = CircuitBreaker(b.name)  # re-created (a module imported again): replaces it
    assert CircuitBreaker.get(b.name) is again
    assert flowdeco.CircuitBreaker is CircuitBreaker
    assert issubclass(CircuitOpenError, flowdeco.FlowError)


def test_call_passes_arguments_and_returns():
    b = fresh()
    assert b.call(lambda a, *, k: a + k, 1, k=2) == 3
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    assert b.failures == 1


# --------------------------------------------------------------------------- state machine


def test_opens_after_threshold_consecutive_failures():
    b = fresh(threshold=3)
    seen = Transitions(b)
    attempt(b)
    attempt(b)
    assert b.state == "closed" and b.failures == 2
    attempt(b, ok)  # a success resets the count
    assert b.failures == 0
    for _ in range(3):
        assert isinstance(attempt(b), ConnectionError)
    assert b.state == "open"
    assert seen.seen == [("closed", "open")]


def test_open_fails_fast_without_calling():
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=30, clock=clock)
    attempt(b)
    calls = []
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        b.call(calls.append, 1)
    assert calls == []
    assert info.value.breaker == b.name
    assert info.value.retry_after == pytest.approx(20.0)
    assert "open" in str(info.value) and b.name in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.breaker, copy.retry_after, str(copy)) == (b.name, 20.0, str(info.value))


def test_half_open_after_reset_after_then_success_closes():
    clock = FakeClock()
    b = fresh(threshold=2, reset_after=30, clock=clock)
    seen = Transitions(b)
    attempt(b)
    attempt(b)
    clock.advance(29.9)
    assert b.state == "open"
    clock.advance(0.1)
    assert b.state == "half_open"
    assert b.call(ok) == "ok"
    assert b.state == "closed"
    assert seen.seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    attempt(b)  # the failure count started over
    assert b.state == "closed"


def test_half_open_failure_reopens_for_another_reset_after():
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=10, clock=clock)
    seen = Transitions(b)
    attempt(b)
    clock.advance(10)
    assert isinstance(attempt(b), ConnectionError)  # the trial call ran and failed
    assert b.state == "open"
    clock.advance(9)
    assert isinstance(attempt(b, ok), CircuitOpenError)
    clock.advance(1)
    assert attempt(b, ok) == "ok"
    assert seen.seen == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                         ("open", "half_open"), ("half_open", "closed")]


def test_half_open_attempts_successes_are_needed_to_close():
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=1, half_open_attempts=3, clock=clock)
    attempt(b)
    clock.advance(1)
    assert attempt(b, ok) == "ok"
    assert attempt(b, ok) == "ok"
    assert b.state == "half_open"
    assert attempt(b, ok) == "ok"
    assert b.state == "closed"


def test_half_open_admits_no_more_than_its_trials():
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=1, half_open_attempts=2, clock=clock)
    attempt(b)
    clock.advance(1)
    assert attempt(b, ok) == "ok"
    assert attempt(b, ok) == "ok"  # second success closes it
    attempt(b)
    clock.advance(1)
    # inside a trial, a third call is refused while the two trials are running
    inner = []

    def nested():
        inner.append(attempt(b, ok))
        inner.append(attempt(b, ok))
        return "outer"

    assert b.call(nested) == "outer"
    assert inner[0] == "ok"
    assert isinstance(inner[1], CircuitOpenError) and "half-open" in str(inner[1])


def test_keyboard_interrupt_neither_counts_nor_blocks_a_trial():
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=1, clock=clock)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.call(interrupted)
    assert b.state == "closed" and b.failures == 0
    attempt(b)
    clock.advance(1)
    with pytest.raises(KeyboardInterrupt):
        b.call(interrupted)  # the trial slot is given back
    assert attempt(b, ok) == "ok"
    assert b.state == "closed"


def test_reset_closes_and_forgets():
    b = fresh(threshold=2)
    seen = Transitions(b)
    attempt(b)
    b.reset()
    assert b.failures == 0
    attempt(b)
    attempt(b)
    assert b.state == "open"
    b.reset()
    assert b.state == "closed"
    assert seen.seen == [("closed", "open"), ("open", "closed")]


def test_unsubscribe_and_a_failing_listener():
    b = fresh(threshold=1)
    seen = Transitions(b)
    b.unsubscribe(seen)

    def broken(*args):
        raise RuntimeError("listener bug")

    b.subscribe(broken)
    with pytest.warns(RuntimeWarning, match="listener"):
        attempt(b)
    assert b.state == "open"
    assert seen.seen == []


def test_a_clock_can_be_a_function():
    now = [100.0]
    b = CircuitBreaker(f"fn-clock-{next(_names)}", threshold=1, reset_after=5,
                       clock=lambda: now[0])
    attempt(b)
    assert b.state == "open"
    now[0] += 5
    assert b.state == "half_open"


# --------------------------------------------------------------------------- concurrency


def test_calls_through_one_breaker_run_concurrently():
    """The lock guards state changes only: 4 calls meet inside the wrapped function."""
    b = fresh()
    barrier = threading.Barrier(4, timeout=BARRIER_TIMEOUT)
    results = []

    def meet():
        barrier.wait()
        return "met"

    def worker():
        results.append(attempt(b, meet))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BARRIER_TIMEOUT * 2)
    assert results == ["met"] * 4


def test_half_open_race_admits_exactly_the_trial_calls():
    """12 callers race a half-open breaker with 3 trials: the trials hold on until the
    other 9 have been refused, so a fourth admission would make the test time out."""
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=1, half_open_attempts=3, clock=clock)
    attempt(b)
    clock.advance(1)
    n = 12
    start = threading.Barrier(n, timeout=BARRIER_TIMEOUT)
    all_refused = threading.Event()
    results = []
    lock = threading.Lock()

    def trial():
        assert all_refused.wait(BARRIER_TIMEOUT), "more than 3 calls were admitted"
        return "ok"

    def worker():
        start.wait()
        r = attempt(b, trial)
        with lock:
            results.append(r)
            if sum(isinstance(x, CircuitOpenError) for x in results) == n - 3:
                all_refused.set()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BARRIER_TIMEOUT * 2)
    assert results.count("ok") == 3
    refused = [r for r in results if isinstance(r, CircuitOpenError)]
    assert len(refused) == n - 3
    assert all("half-open" in str(r) for r in refused)
    assert b.state == "closed"


def test_concurrent_failures_open_exactly_once():
    b = fresh(threshold=5)
    seen = Transitions(b)
    start = threading.Barrier(20, timeout=BARRIER_TIMEOUT)

    def worker():
        start.wait()
        for _ in range(5):
            attempt(b)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BARRIER_TIMEOUT * 2)
    assert b.state == "open"
    assert seen.seen == [("closed", "open")]


def test_late_result_of_a_call_admitted_before_opening_is_ignored():
    clock = FakeClock()
    b = fresh(threshold=1, reset_after=1, clock=clock)
    inside = threading.Event()
    release = threading.Event()
    out = []

    def slow_success():
        inside.set()
        release.wait(BARRIER_TIMEOUT)
        return "late"

    t = threading.Thread(target=lambda: out.append(attempt(b, slow_success)))
    t.start()
    assert inside.wait(BARRIER_TIMEOUT)
    attempt(b)  # opens while the slow call is running
    clock.advance(1)
    assert b.state == "half_open"
    release.set()
    t.join(BARRIER_TIMEOUT)
    assert out == ["late"]
    assert b.state == "half_open"  # the stale success did not close it


# --------------------------------------------------------------------------- pickling


def test_a_breaker_travels_by_name():
    b = fresh()
    assert pickle.loads(pickle.dumps(b)) is b
    call = pickle.loads(pickle.dumps(CircuitCall(len, b)))
    assert call.breaker is b and call([1, 2]) == 2


# --------------------------------------------------------------------------- in flows


def test_task_by_object_and_by_name_share_one_breaker():
    b = fresh("shared", threshold=2, reset_after=30)
    calls = []

    @task(circuit=b)
    def first():
        calls.append("first")
        raise ConnectionError("refused")

    @task(circuit=b.name)
    def second():
        calls.append("second")
        raise ConnectionError("refused")

    @task(circuit=b.name)
    def third():
        calls.append("third")

    run([first, second], state_dir=None, workers=2)
    assert sorted(calls) == ["first", "second"]
    assert b.state == "open"
    result = run([third], state_dir=None)  # breakers outlive runs: still open
    assert calls.count("third") == 0
    assert result.outcomes["third"].status == "failed"
    assert result.outcomes["third"].error.startswith("CircuitOpenError: circuit ")
    assert isinstance(result.outcomes["third"].exception, CircuitOpenError)


def test_unknown_breaker_name_is_a_collection_error():
    known = fresh("known")

    @task(circuit=known.name + "x")
    def lost():
        pass

    with pytest.raises(CollectionError) as info:
        run([lost], state_dir=None)
    msg = str(info.value)
    assert "lost" in msg and repr(known.name + "x") in msg
    assert repr(known.name) in msg  # listed, and suggested


def test_circuit_must_be_a_breaker_or_a_name():
    @task(circuit=42)
    def odd():
        pass

    with pytest.raises(CollectionError, match="odd.*CircuitBreaker"):
        run([odd], state_dir=None)


def test_collection_checks_each_breaker_value_once_naming_the_first_task(monkeypatch):
    """Collection resolves each distinct circuit= value once (not once per task); a bad
    value is still reported for the first task, in declaration order, that sets it."""
    import flowdeco.plugins.circuit as plugin
    shared = fresh("shared-once")
    seen = []
    real = plugin.resolve
    monkeypatch.setattr(plugin, "resolve", lambda v: seen.append(v.name) or real(v))

    @task(circuit=shared)
    def a():
        pass

    @task(circuit=shared.name)
    def b():
        pass

    @task(circuit=shared)
    def c():
        pass

    @task(circuit=shared.name)
    def d():
        pass

    assert run([a, b, c, d], state_dir=None).ok
    # collection: the first task of each value; run setup (its guards): one task of each
    assert seen[:2] == ["a", "b"] and len(seen) == 4, seen

    @task(circuit=7)
    def first_bad():
        pass

    @task(circuit="no-such-breaker")
    def second_bad():
        pass

    @task(circuit=7)
    def third_bad():
        pass

    with pytest.raises(CollectionError, match="first_bad"):
        run([a, first_bad, second_bad, third_bad], state_dir=None)
    with pytest.raises(CollectionError, match="second_bad.*no-such-breaker"):
        run([a, second_bad, first_bad, third_bad], state_dir=None)


class Heard:
    def __init__(self):
        self.events = []

    def state_change(self, b, old, new):
        self.events.append(("state", str(old), str(new)))

    def failure(self, b, exc):
        self.events.append(("failure", type(exc).__name__))

    def success(self, b):
        self.events.append(("success",))


@pytest.mark.parametrize("listening", [False, True])
def test_enter_exit_counts_exactly_as_call(listening):
    """The attempt guard protocol (enter/exit, with its closed-and-clean shortcut) and
    call() agree step by step: state, failures, what listeners hear."""
    clocks = FakeClock(), FakeClock()
    by_call = fresh("twin-call", threshold=3, reset_after=10, clock=clocks[0], exclude=KeyError)
    by_guard = fresh("twin-guard", threshold=3, reset_after=10, clock=clocks[1],
                     exclude=KeyError)
    heard = Heard(), Heard()
    if listening:
        by_call.add_listener(heard[0])
        by_guard.add_listener(heard[1])

    def body(outcome):
        if outcome == "fail":
            raise ConnectionError("down")
        if outcome == "excluded":
            raise KeyError("business")
        if outcome == "interrupt":
            raise KeyboardInterrupt
        return outcome

    def through_guard(outcome):
        token = by_guard.enter()
        try:
            result = body(outcome)
        except BaseException as exc:
            by_guard.exit(token, exc)
            raise
        by_guard.exit(token, None)
        return result

    script = ["ok", "fail", "ok", "fail", "fail", "excluded", "fail", "fail", "interrupt",
              "fail", "ok", "wait", "ok", "fail", "fail", "fail", "wait", "fail", "wait",
              "ok", "ok", "fail", "ok"]
    for step in script:
        if step == "wait":
            for c in clocks:
                c.advance(11)
            continue
        outs = []
        for go in (lambda: by_call.call(body, step), lambda: through_guard(step)):
            try:
                outs.append(("result", go()))
            except BaseException as exc:  # noqa: BLE001
                outs.append(("raised", type(exc).__name__))
        assert outs[0] == outs[1], step
        assert (by_call.state, by_call.failures) == (by_guard.state, by_guard.failures), step
    assert heard[0].events == heard[1].events
    assert by_call.state == "closed" and ("state", "open", "half_open") in heard[1].events \
        or not listening


def test_retry_meets_open_breaker_waits_by_policy_then_half_open_trial_closes_it():
    """Breaker and run share a FakeClock: retry delays move time past reset_after."""
    clock = FakeClock()
    b = fresh(threshold=2, reset_after=30, clock=clock)
    calls = []

    @task(circuit=b, retry=Retry(retries=4, delay=20.0))
    def recovering(ctx):
        calls.append(ctx.attempt)
        if ctx.attempt <= 2:
            raise ConnectionError("still down")
        return "up"

    rec = FlowEvents()
    result = run([recovering], state_dir=None, clock=clock, plugins=[rec])
    assert result.ok
    # attempts 1, 2 fail (breaker opens at t=20); attempt 3 at t=40 is refused
    # (open until t=50); attempt 4 at t=60 is the half-open trial and succeeds
    assert calls == [1, 2, 4]
    assert result.outcomes["recovering"].attempts == 4
    retrying = [e for e in rec.events if e.name == "task_retrying"]
    assert [e.fields["delay"] for e in retrying] == [20.0, 20.0, 20.0]
    assert retrying[2].fields["error"].startswith("CircuitOpenError")
    circuit = [(e.name, e.fields["breaker"]) for e in rec.events if e.name.startswith("circuit_")]
    assert circuit == [("circuit_opened", b.name), ("circuit_half_open", b.name),
                       ("circuit_closed", b.name)]
    names = [e.name for e in rec.events]
    retrying_at = [i for i, n in enumerate(names) if n == "task_retrying"]
    assert retrying_at[0] < names.index("circuit_opened") < retrying_at[1]  # in causal order
    assert b._listeners == []  # unsubscribed when the run finished


def test_timed_out_attempt_counts_as_a_breaker_failure():
    b = fresh(threshold=1, reset_after=30)

    @task(circuit=b, timeout=0.03)
    def hangs():
        time.sleep(0.15)

    result = run([hangs], state_dir=None)
    assert "TaskTimeout" in result.outcomes["hangs"].error
    assert b.state == "open"


def test_breakers_compose_with_parallel_tasks_without_serialising_them():
    b = fresh(threshold=3)
    barrier = threading.Barrier(4, timeout=BARRIER_TIMEOUT)

    def make(i):
        def t():
            barrier.wait()
            return i
        t.__name__ = f"par{i}"
        return task(circuit=b)(t)

    result = run([make(i) for i in range(4)], state_dir=None, workers=4)
    assert result.ok
    assert b.state == "closed"


def test_disabled_circuit_plugin_refuses_the_option():
    b = fresh()

    @task(circuit=b)
    def guarded():
        pass

    with pytest.raises(CollectionError, match="circuit"):
        run([guarded], state_dir=None, disable=["circuit"])


def test_process_workers_keep_their_own_breaker(write_module):
    path = write_module(
        "from flowdeco import task, CircuitBreaker, Retry\n"
        "dead = CircuitBreaker('proc-dead-endpoint', threshold=2, reset_after=60)\n"
        "@task(circuit='proc-dead-endpoint', retry=Retry(retries=3))\n"
        "def dead_call():\n"
        "    raise ConnectionError('refused')\n")
    result = run(str(path), state_dir=None, executor="process", workers=1)
    out = result.outcomes["dead_call"]
    assert out.attempts == 4
    assert out.error.startswith("CircuitOpenError")
    # the state changed in the worker process, not in this one
    assert CircuitBreaker.get("proc-dead-endpoint").state == "closed"
