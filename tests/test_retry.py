"""Retry policies and the retry plugin (contract §1, §4, §6; issue 3)."""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowdeco
from flowdeco import (CollectionError, FakeClock, Retry, TaskDefinitionError, UsageError,
                      run, task)
from flowdeco.cli import main as cli_main
from flowdeco.testing import FlowEvents, run_flow

ROOT = Path(__file__).resolve().parents[1]


def failing_times(n: int, exc: type[BaseException] = ConnectionError, name: str = "flaky",
                  **options):
    """A task that fails its first ``n`` attempts, then returns its attempt number."""
    def flaky(ctx):
        if ctx.attempt <= n:
            raise exc(f"attempt {ctx.attempt} failed")
        return ctx.attempt
    flaky.__name__ = name
    return task(**options)(flaky)


# --------------------------------------------------------------------------- the policy


def test_defaults_match_the_contract():
    r = Retry()
    assert (r.retries, r.backoff, r.delay, r.max_delay, r.min_delay, r.jitter, r.on, r.seed) == \
        (0, "fixed", 0.0, None, 0.0, 0.0, (Exception,), None)
    assert r.preview() == []


@pytest.mark.parametrize("backoff, expected", [
    ("fixed", [0.5, 0.5, 0.5, 0.5, 0.5]),
    ("linear", [0.5, 1.0, 1.5, 2.0, 2.5]),
    ("exponential", [0.5, 1.0, 2.0, 4.0, 8.0]),
])
def test_delay_formulas(backoff, expected):
    r = Retry(retries=5, backoff=backoff, delay=0.5)
    assert r.preview() == expected
    assert [r.delay_before(n) for n in range(1, 6)] == expected


@pytest.mark.parametrize("backoff, expected", [
    ("fixed", [1.0, 1.0, 1.0, 1.0]),
    ("linear", [1.0, 1.0, 1.5, 2.0]),
    ("exponential", [1.0, 1.0, 2.0, 2.5]),
])
def test_min_and_max_delay_clamp(backoff, expected):
    r = Retry(retries=4, backoff=backoff, delay=0.5, min_delay=1.0, max_delay=2.5)
    assert r.preview() == expected


def test_jitter_stays_in_its_band_and_is_then_clamped():
    r = Retry(retries=200, backoff="fixed", delay=10.0, jitter=0.2, seed=1)
    delays = r.preview()
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(set(delays)) > 150  # really random
    capped = Retry(retries=200, delay=10.0, jitter=0.2, seed=1, max_delay=10.0, min_delay=9.0)
    assert all(9.0 <= d <= 10.0 for d in capped.preview())
    assert 10.0 in capped.preview()  # the cap is hard: anything above it becomes the cap


def test_seed_makes_jitter_reproducible():
    a = Retry(retries=6, backoff="exponential", delay=1.0, jitter=0.5, seed=42)
    b = Retry(retries=6, backoff="exponential", delay=1.0, jitter=0.5, seed=42)
    assert a.preview() == a.preview() == b.preview()
    assert a.preview() != Retry(retries=6, backoff="exponential", delay=1.0, jitter=0.5,
                                seed=43).preview()
    base = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert all(0.5 * x <= d <= 1.5 * x for d, x in zip(a.preview(), base))


def test_unseeded_jitter_uses_the_random_module(monkeypatch):
    import random
    monkeypatch.setattr(random, "random", lambda: 1.0)
    r = Retry(retries=2, delay=2.0, jitter=0.5)
    assert r.preview() == [3.0, 3.0]


def test_preview_length_and_argument_checks():
    r = Retry(retries=3, delay=1.0)
    assert r.preview(5) == [1.0] * 5
    assert r.preview(0) == []
    with pytest.raises(ValueError):
        r.preview(-1)
    with pytest.raises(ValueError):
        r.delay_before(0)


def test_huge_attempt_numbers_never_overflow():
    r = Retry(retries=10_000, backoff="exponential", delay=1.0, max_delay=60.0, jitter=0.3,
              seed=7)
    t0 = time.perf_counter()
    delays = r.preview()
    assert time.perf_counter() - t0 < 1.0
    assert len(delays) == 10_000
    assert delays[-1] == 60.0 and max(delays) == 60.0
    assert r.delay_before(10**9) == 60.0
    # no cap at all: astronomically long, but a finite float, not an OverflowError
    uncapped = Retry(retries=5000, backoff="exponential", delay=1.0)
    assert math.isfinite(uncapped.delay_before(5000))
    assert math.isfinite(Retry(backoff="linear", delay=1e300).delay_before(10**10))
    # full jitter near the cap still yields values in range
    full = Retry(retries=3000, backoff="exponential", delay=0.1, max_delay=5.0, jitter=1.0, seed=3)
    assert all(0.0 <= d <= 5.0 for d in full.preview())


@settings(max_examples=150, deadline=None)
@given(backoff=st.sampled_from(["fixed", "linear", "exponential"]),
       delay=st.floats(0, 100), jitter=st.floats(0, 1),
       min_delay=st.floats(0, 10), extra=st.one_of(st.none(), st.floats(0, 1000)),
       n=st.integers(1, 100_000), seed=st.integers(0, 2**32))
def test_every_delay_respects_formula_jitter_and_clamps(backoff, delay, jitter, min_delay, extra,
                                                        n, seed):
    max_delay = None if extra is None else min_delay + extra
    r = Retry(retries=1, backoff=backoff, delay=delay, jitter=jitter, min_delay=min_delay,
              max_delay=max_delay, seed=seed)
    d = r.delay_before(n, r.rng())
    assert math.isfinite(d)
    assert d >= min_delay
    if max_delay is not None:
        assert d <= max_delay
    if backoff == "exponential":
        try:
            exact = math.ldexp(delay, n - 1)
        except OverflowError:
            exact = math.inf
    else:
        exact = delay if backoff == "fixed" else delay * n
    lo = exact * (1 - jitter) if jitter < 1 else 0.0
    hi = exact * (1 + jitter)
    if max_delay is not None:
        lo, hi = min(lo, max_delay), min(hi, max_delay)
    lo, hi = max(lo, min_delay), max(hi, min_delay)
    if math.isfinite(hi):
        assert lo * (1 - 1e-9) <= d <= hi * (1 + 1e-9)


@pytest.mark.parametrize("kwargs, words", [
    (dict(retries=-1), ["retries"]),
    (dict(retries=1.5), ["retries"]),
    (dict(retries=True), ["retries"]),
    (dict(backoff="exponentail"), ["backoff", "exponential"]),
    (dict(delay=-0.1), ["delay"]),
    (dict(delay=float("nan")), ["delay"]),
    (dict(delay="1"), ["delay"]),
    (dict(max_delay=-1), ["max_delay"]),
    (dict(min_delay=-1), ["min_delay"]),
    (dict(min_delay=5, max_delay=1), ["max_delay", "min_delay"]),
    (dict(jitter=1.5), ["jitter"]),
    (dict(jitter=-0.1), ["jitter"]),
    (dict(on=ValueError("x")), ["on="]),
    (dict(on=(ValueError, int)), ["on="]),
    (dict(on=()), ["on="]),
    (dict(seed="abc"), ["seed"]),
])
def test_invalid_arguments_are_refused_at_construction(kwargs, words):
    with pytest.raises(TaskDefinitionError) as info:
        Retry(**kwargs)
    for w in words:
        assert w in str(info.value)


def test_on_accepts_a_type_or_a_collection():
    assert Retry(on=KeyError).on == (KeyError,)
    assert Retry(on=[KeyError, OSError]).on == (KeyError, OSError)
    assert Retry(retries=1, on=LookupError).should_retry(KeyError(), 1)
    assert not Retry(retries=1, on=LookupError).should_retry(ValueError(), 1)
    assert not Retry(retries=1).should_retry(ValueError(), 2)


def test_policy_is_a_frozen_hashable_picklable_value():
    r = Retry(retries=2, backoff="linear", delay=0.1, on=(KeyError,), seed=3)
    assert r == Retry(retries=2, backoff="linear", delay=0.1, on=(KeyError,), seed=3)
    assert hash(r) == hash(Retry(retries=2, backoff="linear", delay=0.1, on=(KeyError,), seed=3))
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(AttributeError):
        r.retries = 5  # type: ignore[misc]
    assert "backoff='linear'" in repr(r)


def test_exported_from_the_package():
    assert flowdeco.Retry is Retry
    assert "Retry" in flowdeco.__all__


# --------------------------------------------------------------------------- in a run


def test_retries_n_means_n_plus_one_attempts():
    seen = []

    @task(retries=2)
    def always(ctx):
        seen.append(ctx.attempt)
        raise ConnectionError("down")

    result = run_flow([always], clock=FakeClock())
    out = result.outcomes["always"]
    assert out.status == "failed"
    assert out.attempts == 3
    assert seen == [1, 2, 3]
    assert out.error == "ConnectionError: down"
    assert result.exit_code == 1


def test_success_after_failures_counts_attempts_and_feeds_downstream():
    flaky = failing_times(2, retries=3)

    @task
    def after(flaky):
        return flaky * 10

    result = run_flow([flaky, after], clock=FakeClock())
    assert result.ok
    assert result.outcomes["flaky"].attempts == 3
    assert result.results == {"flaky": 3, "after": 30}


def test_no_retry_by_default():
    flaky = failing_times(1)
    result = run_flow([flaky], clock=FakeClock())
    assert result.outcomes["flaky"].status == "failed"
    assert result.outcomes["flaky"].attempts == 1


def test_task_retrying_events_carry_attempt_delay_and_error():
    policy = Retry(retries=3, backoff="exponential", delay=2.0)
    flaky = failing_times(3, retry=policy)
    rec = FlowEvents()
    result = run_flow([flaky], plugins=[rec], clock=FakeClock())
    assert result.ok
    retrying = rec.of("task_retrying", task="flaky")
    assert [e.fields["attempt"] for e in retrying] == [1, 2, 3]
    assert [e.fields["delay"] for e in retrying] == [2.0, 4.0, 8.0]
    assert [e.fields["error"] for e in retrying] == [
        "ConnectionError: attempt 1 failed", "ConnectionError: attempt 2 failed",
        "ConnectionError: attempt 3 failed"]
    assert [e.fields["attempt"] for e in rec.of("task_started", task="flaky")] == [1, 2, 3, 4]
    assert rec.of("task_succeeded", task="flaky")[0].fields["attempts"] == 4
    # the waits happened on the run's clock: 2 + 4 + 8 virtual seconds
    starts = [e.timestamp for e in rec.of("task_started", task="flaky")]
    assert starts[-1] - starts[0] == pytest.approx(14.0, abs=0.5)


def test_seeded_jitter_in_a_run_equals_preview():
    policy = Retry(retries=4, backoff="exponential", delay=1.0, jitter=0.5, seed=99)
    delays_of_runs = []
    for _ in range(2):
        rec = FlowEvents()
        run_flow([failing_times(4, retry=policy)], plugins=[rec], clock=FakeClock())
        delays_of_runs.append([e.fields["delay"] for e in rec.of("task_retrying")])
    assert delays_of_runs[0] == delays_of_runs[1] == policy.preview()


def test_error_outside_on_fails_at_once():
    seen = []

    @task(retry=Retry(retries=5, on=(ConnectionError, TimeoutError)))
    def picky(ctx):
        seen.append(ctx.attempt)
        raise ValueError("bad input: retrying will not help")

    result = run_flow([picky], clock=FakeClock())
    assert result.outcomes["picky"].status == "failed"
    assert result.outcomes["picky"].attempts == 1
    assert seen == [1]


def test_on_matches_subclasses():
    flaky = failing_times(2, exc=ConnectionResetError, retry=Retry(retries=2, on=OSError))
    assert run_flow([flaky], clock=FakeClock()).ok


def test_keyboard_interrupt_is_not_retried_by_default():
    assert not Retry(retries=3).should_retry(KeyboardInterrupt(), 1)


def test_downstream_is_skipped_when_retries_run_out():
    flaky = failing_times(5, retries=1)

    @task
    def after(flaky):
        return flaky

    result = run_flow([flaky, after], clock=FakeClock())
    assert result.outcomes["flaky"].attempts == 2
    assert result.outcomes["after"].status == "skipped"
    assert result.outcomes["after"].reason == "upstream"


# --------------------------------------------------------------------------- engine-wide default


def test_run_retries_applies_to_tasks_that_set_none():
    a = failing_times(2, name="a")
    b = failing_times(2, name="b", retries=0)
    result = run_flow([a, b], retries=2, clock=FakeClock())
    assert result.outcomes["a"].status == "succeeded"
    assert result.outcomes["a"].attempts == 3
    assert result.outcomes["b"].status == "failed"  # its own retries=0 wins
    assert result.outcomes["b"].attempts == 1


def test_run_retry_policy_default():
    rec = FlowEvents()
    a = failing_times(2, name="a")
    b = failing_times(2, name="b", retry=Retry(retries=2, delay=5.0))
    result = run_flow([a, b], retry=Retry(retries=3, backoff="linear", delay=1.0), plugins=[rec],
                      clock=FakeClock())
    assert result.ok
    assert [e.fields["delay"] for e in rec.of("task_retrying", task="a")] == [1.0, 2.0]
    assert [e.fields["delay"] for e in rec.of("task_retrying", task="b")] == [5.0, 5.0]


@pytest.mark.parametrize("options, words", [
    (dict(retries=1, retry=Retry(retries=1)), ["retries", "retry", "not both"]),
    (dict(retries=-1), ["retries"]),
    (dict(retries="2"), ["retries"]),
    (dict(retry=3), ["retry=", "Retry"]),
])
def test_bad_engine_defaults_are_usage_errors(options, words):
    with pytest.raises(UsageError) as info:
        run_flow([failing_times(0)], **options, clock=FakeClock())
    for w in words:
        assert w in str(info.value)


def test_cli_retries_option(tmp_path, capsys):
    flow = tmp_path / "fdretry_cli.py"
    flow.write_text(
        "from flowdeco import task\n"
        "@task\n"
        "def flaky(ctx):\n"
        "    if ctx.attempt < 3:\n"
        "        raise ConnectionError('nope')\n"
        "    return ctx.attempt\n")
    try:
        assert cli_main([str(flow), "--no-state", "-q", "--retries", "2"]) == 0
        assert cli_main([str(flow), "--no-state", "-q", "--retries", "1"]) == 1
        assert cli_main([str(flow), "--no-state", "-q", "--retries", "-3"]) == 4
        assert "--retries" in capsys.readouterr().err
    finally:
        sys.modules.pop("fdretry_cli", None)


# --------------------------------------------------------------------------- collection


def test_retry_must_be_a_policy():
    @task(retry=3)
    def wrong():
        pass

    with pytest.raises(CollectionError) as info:
        run_flow([wrong], clock=FakeClock())
    assert "wrong" in str(info.value) and "Retry" in str(info.value)


def test_invalid_policy_in_a_module_is_a_collection_error_exit_4(tmp_path, capsys):
    flow = tmp_path / "fdretry_bad.py"
    flow.write_text(
        "from flowdeco import task, Retry\n"
        "@task(retry=Retry(retries=2, jitter=3))\n"
        "def t():\n"
        "    return 1\n")
    assert cli_main([str(flow), "--no-state"]) == 4
    err = capsys.readouterr().err
    assert "jitter" in err and "[0, 1]" in err


# --------------------------------------------------------------------------- waits hold no worker


def test_a_task_waiting_for_its_retry_frees_its_worker():
    """One worker: while ``flaky`` waits 0.15 s for its retry, ``other`` runs."""
    log: list[tuple[str, int]] = []

    @task(retry=Retry(retries=1, delay=0.15), priority=1)
    def flaky(ctx):
        log.append(("flaky", ctx.attempt))
        if ctx.attempt == 1:
            raise ConnectionError("later")
        return "ok"

    @task
    def other():
        log.append(("other", 1))
        return "done"

    result = run([flaky, other], state_dir=None, workers=1)
    assert result.ok
    assert log == [("flaky", 1), ("other", 1), ("flaky", 2)]


def test_many_retry_waits_overlap_instead_of_queueing():
    """20 tasks fail once and retry after 0.3 s on 4 workers.

    If waiting held a worker, the waits would queue 4 at a time: >= 5 x 0.3 s.
    Not holding one, all 20 wait together: about 0.3 s.
    """
    def make(i):
        def t(ctx):
            if ctx.attempt == 1:
                raise ConnectionError("once")
            return i
        t.__name__ = f"t{i}"
        return task(retry=Retry(retries=1, delay=0.3))(t)

    tasks = [make(i) for i in range(20)]
    clock = FakeClock()
    t0 = clock.monotonic()
    result = run_flow(tasks, workers=4, clock=clock)
    waited = clock.monotonic() - t0   # on the fake clock: only the waits count, exactly
    assert result.ok
    assert all(o.attempts == 2 for o in result.outcomes.values())
    assert waited == pytest.approx(0.3), waited   # holding workers: >= 1.5 s


def test_fake_clock_retries_of_an_hour_finish_at_once():
    flaky = failing_times(3, retry=Retry(retries=3, delay=3600.0))
    t0 = time.perf_counter()
    result = run_flow([flaky], clock=FakeClock())
    assert result.ok
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_a_retry_wait_stops_promptly(tmp_path):
    flow = tmp_path / "waits.py"
    flow.write_text(
        "from flowdeco import task, Retry\n"
        "@task(retry=Retry(retries=3, delay=60))\n"
        "def slowpoke():\n"
        "    raise ConnectionError('down')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", str(flow), "--no-state",
                             "--log-format", "json"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        line = ""
        assert proc.stderr is not None
        while "task_retrying" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "task_retrying" in line
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert "interrupted" in out.lower() or "interrupted" in err.lower()


# --------------------------------------------------------------------------- composition


def test_timed_out_attempt_is_retried():
    @task(timeout=0.05, retries=1)
    def sometimes_slow(ctx):
        if ctx.attempt == 1:
            time.sleep(0.15)
        return ctx.attempt

    result = run([sometimes_slow], state_dir=None)
    assert result.ok
    assert result.results["sometimes_slow"] == 2


def test_retries_in_a_worker_process(write_module):
    path = write_module(
        "from flowdeco import task, Retry\n"
        "@task(retry=Retry(retries=2, delay=0.01))\n"
        "def flaky(ctx):\n"
        "    if ctx.attempt < 3:\n"
        "        raise ConnectionError(f'attempt {ctx.attempt}')\n"
        "    return ctx.attempt\n")
    result = run(str(path), state_dir=None, executor="process", workers=1)
    assert result.ok, result.outcomes
    assert result.results["flaky"] == 3
    assert result.outcomes["flaky"].attempts == 3


def test_disabled_retry_plugin_costs_nothing_and_refuses_retry_options():
    flaky = failing_times(0)
    assert run_flow([flaky], disable=["retry"], clock=FakeClock()).ok
    with pytest.raises(CollectionError):
        run_flow([failing_times(0, retries=1)], disable=["retry"], clock=FakeClock())


def test_sync_executor_retries():
    flaky = failing_times(2, retries=2)
    result = run_flow([flaky], executor="sync", clock=FakeClock())
    assert result.ok and result.outcomes["flaky"].attempts == 3



def test_exponential_growth_of_a_subnormal_delay_is_not_capped_early():
    """Regression (found by hypothesis): with no max_delay the exponent cap was a fixed
    1100, so a tiny delay stopped doubling long before it reached the float range."""
    tiny = 2.2250738585e-313
    r = Retry(retries=1, backoff="exponential", delay=tiny)
    assert r.delay_before(1102) == math.ldexp(tiny, 1101)
    assert math.isfinite(r.delay_before(100_000))
