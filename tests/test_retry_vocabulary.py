"""Retry's vocabulary from tenacity (issue 20): give_up_after, retries=None, on= predicates,
not_on=, retry_if= on results, wait= callables, timedelta durations.

Policy-level expected values are translated from tenacity's own tests
(``test_tenacity.py``: ``stop_after_attempt``, ``stop_after_delay``, ``stop_any``,
``wait_incrementing``, ``wait_chain``, ``wait_exponential`` with min/max,
``retry_if_exception``, ``retry_if_not_exception_type``, ``retry_if_result``).
tenacity counts attempts, flowdeco retries: ``stop_after_attempt(3)`` is
``retries=2``.  Runs use a FakeClock; a task "takes time" by advancing it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from flowdeco import FakeClock, Retry, RetryError, TaskDefinitionError, task
from flowdeco.policies.retry import Chain, Incrementing
from flowdeco.testing import FlowEvents, run_flow

ERR = IOError("x")


# --------------------------------------------------------------------------- stop conditions


def test_stop_after_attempt():            # tenacity: stop_after_attempt(3)
    r = Retry(retries=2)
    assert r.should_retry(ERR, 2)          # make_retry_state(2, 6546): no stop
    assert not r.should_retry(ERR, 3)      # (3, 0.1): stop
    assert not r.should_retry(ERR, 4)


def test_give_up_after_is_stop_after_delay():    # tenacity: stop_after_delay(1)
    r = Retry(retries=None, give_up_after=1)
    assert r.should_retry(ERR, 2, elapsed=0.999)
    assert not r.should_retry(ERR, 2, elapsed=1)
    assert not r.should_retry(ERR, 2, elapsed=1.001)
    assert r.should_retry(ERR, 10_000, elapsed=0.5)   # no limit on attempts


def test_the_first_limit_reached_wins():    # tenacity: stop_any(stop_after_delay(1), stop_after_attempt(4))
    r = Retry(retries=3, give_up_after=timedelta(seconds=1))
    assert r.should_retry(ERR, 1, elapsed=0.1)
    assert r.should_retry(ERR, 2, elapsed=0.2)
    assert r.should_retry(ERR, 3, elapsed=0.8)
    assert not r.should_retry(ERR, 4, elapsed=0.8)
    assert not r.should_retry(ERR, 3, elapsed=1.8)
    assert not r.should_retry(ERR, 4, elapsed=1.8)


def test_retries_none_needs_a_budget():
    with pytest.raises(TaskDefinitionError, match="retries=None .* needs give_up_after="):
        Retry(retries=None)
    with pytest.raises(ValueError, match="no retries limit"):
        Retry(retries=None, give_up_after=5).preview()
    assert Retry(retries=None, give_up_after=5, delay=2).preview(3) == [2.0, 2.0, 2.0]


def test_give_up_after_in_a_run_counts_from_the_first_attempt():
    clock = FakeClock()
    starts = []

    @task(retry=Retry(retries=None, give_up_after=10, delay=1))
    def slow(ctx):
        starts.append(clock.monotonic())
        clock.advance(4)                  # each attempt takes 4 s
        raise ConnectionError(f"attempt {ctx.attempt}")

    result = run_flow([slow], clock=clock)
    out = result["slow"]
    # ends at 4 (retry), starts 5 ends 9 (retry), starts 10 ends 14 >= 10: give up
    assert (out.status, out.attempts) == ("failed", 3)
    assert [s - starts[0] for s in starts] == [0, 5, 10]
    assert "attempt 3" in out.error


def test_retries_still_cap_a_budget():
    clock = FakeClock()

    @task(retry=Retry(retries=1, give_up_after=timedelta(hours=1)))
    def flaky():
        raise ConnectionError("down")

    assert run_flow([flaky], clock=clock)["flaky"].attempts == 2


# --------------------------------------------------------------------------- which failures


def test_on_takes_a_predicate_on_the_exception():   # tenacity: retry_if_exception(pred)
    r = Retry(retries=3, on=lambda e: "retryable" in str(e))
    assert r.should_retry(ValueError("retryable, try again"), 1)
    assert not r.should_retry(ValueError("fatal"), 1)


def test_not_on_is_never_retried():        # tenacity: retry_if_not_exception_type(IOError)
    r = Retry(retries=3, not_on=IOError)
    assert r.should_retry(ValueError("x"), 1)
    assert not r.should_retry(IOError("x"), 1)
    r = Retry(retries=3, on=OSError, not_on=(FileNotFoundError, PermissionError))
    assert r.should_retry(ConnectionError("x"), 1)
    assert not r.should_retry(FileNotFoundError("x"), 1)
    assert not r.should_retry(KeyError("x"), 1)


def test_on_and_not_on_in_a_run():
    calls = []

    @task(retry=Retry(retries=5, on=lambda e: e.args[0] < 3, not_on=KeyError))
    def flaky(ctx):
        calls.append(ctx.attempt)
        raise ValueError(ctx.attempt)

    @task(retry=Retry(retries=5, not_on=KeyError))
    def missing():
        raise KeyError("no such key")

    result = run_flow([flaky, missing], clock=FakeClock())
    assert calls == [1, 2, 3]               # 3 is not < 3: fails at once
    assert (result["missing"].status, result["missing"].attempts) == ("failed", 1)


def test_bad_filters_are_refused_at_decoration():
    with pytest.raises(TaskDefinitionError, match="not_on= takes an exception type"):
        Retry(not_on="KeyError")
    with pytest.raises(TaskDefinitionError, match="on= takes an exception type .* predicate"):
        Retry(on=("ValueError",))
    with pytest.raises(TaskDefinitionError, match="retry_if= takes a predicate"):
        Retry(retry_if=True)
    with pytest.raises(TaskDefinitionError, match="wait= takes a callable"):
        Retry(wait=5)


# --------------------------------------------------------------------------- results


def test_retry_if_on_the_result():         # tenacity: retry_if_result(lambda x: x == 1)
    r = Retry(retries=2, retry_if=lambda x: x == 1)
    assert r.should_retry_result(1, 1) is True
    assert r.should_retry_result(2, 1) is False
    assert r.should_retry_result(1, 3) is None       # still true, limits out


def test_retry_if_polls_until_done():
    clock = FakeClock()
    seen = []

    @task(retry=Retry(retries=None, give_up_after=60, delay=5,
                      retry_if=lambda status: status != "done"))
    def job_status(ctx):
        seen.append(clock.monotonic())
        return "done" if ctx.attempt == 4 else "running"

    @task
    def after(job_status):
        return job_status

    events = FlowEvents()
    result = run_flow([job_status, after], clock=clock, plugins=[events])
    assert result.ok
    assert (result["job_status"].result, result["job_status"].attempts) == ("done", 4)
    assert [t - seen[0] for t in seen] == [0, 5, 10, 15]
    assert result["after"].result == "done"
    # each result retry is reported like an error retry, with a reason instead of an error
    retrying = events.of("task_retrying", task="job_status")
    assert [(e.fields["attempt"], e.fields["delay"]) for e in retrying] == [(1, 5.0), (2, 5.0),
                                                                           (3, 5.0)]
    for e in retrying:
        assert e.fields["reason"] == "retry_if" and e.fields["result"] == "'running'"
        assert "error" not in e.fields and e.fields["worker"]
    assert events.names("job_status") == ["task_started", "task_retrying"] * 3 + [
        "task_started", "task_succeeded"]


def test_retry_if_still_true_when_the_limits_run_out_fails_the_task():
    @task(retry=Retry(retries=2, retry_if=lambda r: r is None))
    def poll():
        return None

    out = run_flow([poll], clock=FakeClock())["poll"]
    assert (out.status, out.attempts) == ("failed", 3)
    assert isinstance(out.exception, RetryError)
    assert "retry_if=" in out.error and "still true after 3 attempt(s)" in out.error
    assert "retries=2" in out.error


def test_retry_if_for_mapped_instances():
    @task
    def ids():
        return [1, 2]

    @task(map="ids", retry=Retry(retries=3, retry_if=lambda r: r[1] < 2))
    def poll(ids, ctx):
        return (ids, ctx.attempt)

    events = FlowEvents()
    result = run_flow([ids, poll], clock=FakeClock(), plugins=[events])
    assert result["poll"].result == [(1, 2), (2, 2)]
    # each instance's result retry is reported under the instance's name
    assert sorted((e.task, e.fields["attempt"], e.fields["reason"], e.fields["result"])
                  for e in events.of("task_retrying")) == [
        ("poll[0]", 1, "retry_if", "(1, 1)"), ("poll[1]", 1, "retry_if", "(2, 1)")]


# --------------------------------------------------------------------------- waits


def test_wait_incrementing():               # tenacity: wait_incrementing(start=500, increment=100)
    r = Retry(retries=3, wait=Incrementing(start=500, increment=100))
    assert r.preview() == [500, 600, 700]
    capped = Retry(retries=4, wait=Incrementing(start=1, increment=2, max=timedelta(seconds=4)))
    assert capped.preview() == [1, 3, 4, 4]


def test_wait_chain():                      # tenacity: wait_chain(fixed 1 x2, fixed 4 x2, fixed 8)
    r = Retry(retries=6, wait=Chain(1, 1, 4, 4, 8))
    assert r.preview() == [1, 1, 4, 4, 8, 8]
    r = Retry(retries=3, wait=Chain(timedelta(seconds=2), Incrementing(10, 1)))
    assert r.preview() == [2, 11, 12]


def test_wait_exponential_min_max():        # tenacity: wait_exponential(min=20) / (max=40)
    assert Retry(retries=7, backoff="exponential", delay=1, min_delay=20).preview() == \
        [20, 20, 20, 20, 20, 32, 64]
    assert Retry(retries=7, backoff="exponential", delay=1, max_delay=40).preview() == \
        [1, 2, 4, 8, 16, 32, 40]


def test_wait_callable_gets_the_error_and_preview_is_what_a_run_waits():
    def wait(n, error):
        return 30 if isinstance(error, TimeoutError) else 2 * n

    r = Retry(retries=3, wait=wait, max_delay=5)
    assert r.preview() == [2, 4, 5]
    assert r.delay_before(1, error=TimeoutError()) == 5

    clock = FakeClock()
    starts = []

    @task(retry=Retry(retries=3, wait=Chain(1, 10, 100)))
    def flaky(ctx):
        starts.append(clock.monotonic())
        if ctx.attempt <= 3:
            raise ConnectionError("down")
        return ctx.attempt

    result = run_flow([flaky], clock=clock)
    assert result["flaky"].result == 4
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == Retry(retries=3, wait=Chain(1, 10, 100)).preview() == [1, 10, 100]


def test_a_wait_that_returns_nonsense_fails_the_task_naming_it():
    @task(retry=Retry(retries=2, wait=lambda n, e: "soon"))
    def flaky():
        raise ConnectionError("down")

    out = run_flow([flaky], clock=FakeClock())["flaky"]
    assert (out.status, out.attempts) == ("failed", 1)
    assert "returned 'soon' for retry 1" in out.error


def test_durations_take_timedelta():
    r = Retry(retries=3, backoff="exponential", delay=timedelta(milliseconds=500),
              max_delay=timedelta(seconds=1.5), min_delay=timedelta(0))
    assert r.preview() == [0.5, 1.0, 1.5]
    assert r.delay == 0.5 and r.max_delay == 1.5
    with pytest.raises(TaskDefinitionError, match="give_up_after must be .* or a timedelta"):
        Retry(retries=1, give_up_after=timedelta(seconds=-1))


def test_pipeline_stages_take_the_failure_vocabulary_but_not_result_or_budget_limits():
    from flowdeco import Pipeline

    pipe = Pipeline("p")
    pipe.stage(name="ok", retry=Retry(retries=2, not_on=KeyError, wait=Chain(0, 0)))(lambda x: x)
    with pytest.raises(TaskDefinitionError, match="cannot use retry_if= or give_up_after="):
        pipe.stage(name="polls", retry=Retry(retries=2, retry_if=lambda r: r is None))(
            lambda x: x)
