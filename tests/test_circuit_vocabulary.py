"""CircuitBreaker's vocabulary from pybreaker (issue 20): exclude=, listener objects,
``@breaker``, ``with breaker:``, open()/close()/half_open(), the failures counter.

Expected values are translated from pybreaker's own tests (``test_excluded_exceptions``,
``test_transition_events``, ``test_call_events``, ``test_failed_call_after_timeout``,
``test_failed_call_when_halfopen``, ``test_close``...): pybreaker's ``fail_max`` is
``threshold``, ``reset_timeout`` is ``reset_after``, ``fail_counter`` is ``failures``.
One difference stays: the call that trips the breaker re-raises its own error
(pybreaker raises CircuitBreakerError by default).  Time comes from a FakeClock.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from flowdeco import CircuitBreaker, CircuitOpenError, FakeClock, Retry, TaskDefinitionError, task
from flowdeco.testing import run_flow


def err():
    raise NotImplementedError


def suc():
    return True


def make(name="vocab", **kw):
    kw.setdefault("clock", FakeClock())
    return CircuitBreaker(name, **kw)


# --------------------------------------------------------------------------- the counter


def test_failures_counter_as_pybreaker_fail_counter():
    clock = FakeClock()
    b = make(threshold=3, reset_after=0.5, clock=clock)
    for _ in range(2):
        with pytest.raises(NotImplementedError):
            b.call(err)
    assert (b.state, b.failures) == ("closed", 2)
    with pytest.raises(NotImplementedError):   # the tripping call: its own error
        b.call(err)
    assert (b.state, b.failures) == ("open", 3)   # kept while open
    with pytest.raises(CircuitOpenError):
        b.call(suc)
    assert b.failures == 3
    clock.advance(0.6)
    with pytest.raises(NotImplementedError):   # the half-open trial fails: open again
        b.call(err)
    assert (b.state, b.failures) == ("open", 4)
    clock.advance(0.6)
    assert b.call(suc)                          # a trial success closes it
    assert (b.state, b.failures) == ("closed", 0)


def test_failed_and_successful_call_when_half_open():
    b = make()
    b.half_open()
    assert (b.state, b.failures) == ("half_open", 0)
    with pytest.raises(NotImplementedError):
        b.call(err)
    assert (b.state, b.failures) == ("open", 1)
    b2 = make("vocab2")
    b2.half_open()
    assert b2.call(suc)
    assert (b2.state, b2.failures) == ("closed", 0)


def test_operators_open_and_close():
    clock = FakeClock()
    b = make(threshold=3, reset_after=timedelta(seconds=30), clock=clock)
    assert b.reset_after == 30.0
    b.open()
    with pytest.raises(CircuitOpenError) as info:
        b.call(suc)
    assert info.value.retry_after == 30.0
    clock.advance(20)
    b.open()                                     # opening again restarts the wait
    clock.advance(20)
    with pytest.raises(CircuitOpenError):
        b.call(suc)
    b.close()
    assert (b.state, b.failures) == ("closed", 0)
    assert b.call(suc)


# --------------------------------------------------------------------------- exclude


def test_excluded_exceptions():               # pybreaker: exclude=[LookupError]
    b = make(exclude=[LookupError])
    with pytest.raises(NotImplementedError):
        b.call(err)
    assert b.failures == 1

    def lookup():
        raise LookupError

    def key():
        raise KeyError

    with pytest.raises(LookupError):            # not a failure: counts as a success
        b.call(lookup)
    assert b.failures == 0
    with pytest.raises(NotImplementedError):
        b.call(err)
    assert b.failures == 1
    with pytest.raises(KeyError):                # subclasses too
        b.call(key)
    assert b.failures == 0


def test_excluded_by_a_predicate():
    class HTTPError(Exception):
        def __init__(self, status):
            self.status = status

    b = make(threshold=2, exclude=lambda e: isinstance(e, HTTPError) and e.status < 500)

    def fails(status):
        raise HTTPError(status)

    for _ in range(5):
        with pytest.raises(HTTPError):
            b.call(fails, 404)                   # a business error: the service is fine
    assert (b.state, b.failures) == ("closed", 0)
    for _ in range(2):
        with pytest.raises(HTTPError):
            b.call(fails, 503)
    assert b.state == "open"


def test_bad_exclude_is_refused():
    with pytest.raises(TaskDefinitionError, match="exclude= takes exception types"):
        make(exclude=["KeyError"])
    with pytest.raises(TaskDefinitionError, match="exclude= takes exception types"):
        make(exclude=int)


def test_exclude_in_a_flow():
    b = make("vocab-flow", threshold=1, exclude=KeyError)

    @task(circuit=b)
    def lookup():
        raise KeyError("no such customer")

    @task(circuit=b, after=[lookup], trigger="all_done")
    def fetch():
        return "fetched"

    result = run_flow([lookup, fetch], executor="sync")
    assert result["lookup"].status == "failed"
    assert (result["fetch"].status, result["fetch"].result) == ("succeeded", "fetched")
    assert b.state == "closed"


# --------------------------------------------------------------------------- listeners


def test_transition_events():
    class Listener:
        def __init__(self):
            self.out = ""

        def state_change(self, cb, old, new):
            assert cb
            self.out += f"{old}->{new},"

    listener = Listener()
    b = make(listeners=(listener,))
    assert b.listeners == (listener,)
    b.open()
    b.half_open()
    b.close()
    assert listener.out == "closed->open,open->half_open,half_open->closed,"


def test_call_events():
    class Listener:
        def __init__(self):
            self.out = ""

        def before_call(self, cb, func, *args, **kwargs):
            assert cb
            self.out += "-"

        def success(self, cb):
            self.out += "success"

        def failure(self, cb, exc):
            assert exc
            self.out += "failure"

    listener = Listener()
    b = make()
    b.add_listener(listener)
    assert b.call(suc)
    with pytest.raises(NotImplementedError):
        b.call(err)
    assert listener.out == "-success-failure"
    b.remove_listener(listener)
    assert b.listeners == ()
    b.call(suc)
    assert listener.out == "-success-failure"


def test_listeners_hear_the_attempts_of_tasks():
    seen = []

    class Listener:
        def success(self, cb):
            seen.append("success")

        def failure(self, cb, exc):
            seen.append(type(exc).__name__)

    b = make("vocab-tasks", threshold=5)
    b.add_listener(Listener())

    @task(circuit=b, retry=Retry(retries=1))
    def flaky(ctx):
        if ctx.attempt == 1:
            raise ConnectionError("down")
        return ctx.attempt

    for executor in ("sync", "thread"):
        seen.clear()
        assert run_flow([flaky], executor=executor, clock=FakeClock())["flaky"].result == 2
        assert seen == ["ConnectionError", "success"]


def test_listener_without_callbacks_and_a_failing_listener():
    b = make()
    with pytest.raises(TypeError, match="has none of state_change"):
        b.add_listener(object())

    class Broken:
        def success(self, cb):
            raise RuntimeError("listener bug")

    b.add_listener(Broken())
    with pytest.warns(RuntimeWarning, match="listener .*success failed: RuntimeError"):
        assert b.call(suc)


def test_listeners_see_events_in_order_under_threads():
    """Listener calls hold the breaker's lock: a listener sees one event at a time."""
    inside = []
    overlaps = []

    class Listener:
        def success(self, cb):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            inside.pop()

    b = make(threshold=1000)
    b.add_listener(Listener())
    barrier = threading.Barrier(4)

    def hammer():
        barrier.wait()
        for _ in range(500):
            b.call(suc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


# --------------------------------------------------------------------------- decorator, with


def test_decorator():
    b = make(threshold=2)

    @b
    def fetch(x, *, scale=1):
        "Docstring"
        if x < 0:
            raise ValueError(x)
        return x * scale

    assert fetch.__doc__ == "Docstring" and fetch.__name__ == "fetch"
    assert fetch(2, scale=3) == 6
    for _ in range(2):
        with pytest.raises(ValueError):
            fetch(-1)
    with pytest.raises(CircuitOpenError):
        fetch(2)


def test_context_manager():
    clock = FakeClock()
    b = make(threshold=2, reset_after=10, clock=clock)
    with b:
        pass
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            with b:
                1 / 0
    assert b.state == "open"
    ran = []
    with pytest.raises(CircuitOpenError):
        with b:
            ran.append(1)
    assert ran == []
    clock.advance(10)
    with b:                       # the half-open trial succeeds
        ran.append(2)
    assert (ran, b.state) == ([2], "closed")


def test_context_manager_nests_and_excludes():
    b = make(threshold=1, exclude=KeyError)
    with pytest.raises(KeyError):
        with b:
            with b:
                raise KeyError("x")
    assert b.state == "closed"


def test_a_predicate_exclusion_does_not_stop_tasks_going_to_worker_processes(write_module):
    """A breaker travels to worker processes by name; a lambda in exclude= used to make
    every attempt fail with a PicklingError."""
    from flowdeco import run

    path = write_module("""
        from flowdeco import task, CircuitBreaker
        lookups = CircuitBreaker("vocab-proc", threshold=1,
                                 exclude=lambda e: isinstance(e, KeyError))

        @task(circuit=lookups)
        def lookup():
            raise KeyError("no such customer")

        @task(circuit=lookups, after=[lookup], trigger="all_done")
        def fetch():
            return "fetched"
    """)
    result = run(str(path), state_dir=None, executor="process", workers=1)
    assert "KeyError" in result["lookup"].error       # its own error, not a PicklingError
    assert (result["fetch"].status, result["fetch"].result) == ("succeeded", "fetched")
