"""Run timeout (issue 19 item 5): ``--run-timeout S`` / ``run(run_timeout=S)``.

After S seconds on the run's clock nothing new starts and the run ends like
after a first Ctrl-C: in-flight tasks finish and are recorded, the rest are
``skipped`` (``stopped``), status ``interrupted`` (exit 2), state saved, and
``--resume`` picks up where it stopped.  Time is a :class:`FakeClock` here:
tasks advance it, and an idle scheduler jumps it to the next deadline.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

import flowdeco
from flowdeco import FakeClock, UsageError, hookimpl, task
from flowdeco.testing import run_flow

from test_cli import fd


class Events:
    def __init__(self):
        self.events = []

    @hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)

    def of(self, name):
        return [e for e in self.events if e.name == name]


def chain_of_ten_second_tasks(clock, calls):
    """a -> b -> c -> d, each advancing the fake clock by 10 s."""
    @task
    def a():
        calls.append("a")
        clock.advance(10)
        return 1

    @task
    def b(a):
        calls.append("b")
        clock.advance(10)
        return a + 1

    @task
    def c(b):
        calls.append("c")
        clock.advance(10)
        return b + 1

    @task
    def d(c):
        calls.append("d")
        clock.advance(10)
        return c + 1

    return [a, b, c, d]


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_no_task_starts_after_the_run_timeout_and_the_run_is_interrupted(executor):
    clock = FakeClock()
    calls: list[str] = []
    events = Events()
    result = run_flow(chain_of_ten_second_tasks(clock, calls), clock=clock, executor=executor,
                      run_timeout=25, plugins=[events])
    assert calls == ["a", "b", "c"]          # c started at 20 s < 25 s, d would start at 30 s
    assert result.status == "interrupted"
    assert result.exit_code == 2
    assert [result[n].status for n in "abc"] == ["succeeded"] * 3
    assert (result["d"].status, result["d"].reason) == ("skipped", "stopped")
    (ev,) = events.of("run_interrupted")
    assert ev.fields["reason"] == "run_timeout"
    assert ev.fields["run_timeout"] == 25
    assert "signal" not in ev.fields


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_a_run_that_ends_in_time_is_not_touched(executor):
    clock = FakeClock()
    calls: list[str] = []
    result = run_flow(chain_of_ten_second_tasks(clock, calls), clock=clock, executor=executor,
                      run_timeout=45)
    assert result.ok and calls == ["a", "b", "c", "d"]


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_an_idle_run_wakes_at_the_run_timeout_not_at_the_next_timer(executor):
    """Waiting for a delay or a retry: the fake clock jumps to the run's deadline
    (30 s), not to the delay's end (1000 s); the waiting task is skipped."""
    clock = FakeClock()
    start = clock.monotonic()

    @task
    def quick():
        return 1

    @task(delay=1000)
    def later():
        return 2

    result = run_flow([quick, later], clock=clock, executor=executor, run_timeout=30)
    assert result.status == "interrupted"
    assert result["quick"].status == "succeeded"
    assert (result["later"].status, result["later"].reason) == ("skipped", "stopped")
    assert clock.monotonic() - start == pytest.approx(30)


def test_a_task_waiting_for_a_retry_ends_with_its_error_as_on_ctrl_c():
    clock = FakeClock()
    start = clock.monotonic()

    @task(retry=flowdeco.Retry(retries=5, delay=100))
    def flaky():
        raise ValueError("down")

    result = run_flow([flaky], clock=clock, run_timeout=150)
    assert result.status == "interrupted"
    assert result["flaky"].status == "interrupted"
    assert result["flaky"].attempts == 2      # at 0 s and at 100 s; the one at 200 s never starts
    assert clock.monotonic() - start == pytest.approx(150)


def test_a_timed_out_run_resumes_where_it_stopped(tmp_path):
    clock = FakeClock()
    calls: list[str] = []
    tasks = chain_of_ten_second_tasks(clock, calls)
    first = flowdeco.run(tasks, clock=clock, state_dir=tmp_path, run_id="r1", run_timeout=15,
                         executor="sync")
    assert first.status == "interrupted" and calls == ["a", "b"]
    second = flowdeco.run(tasks, clock=clock, state_dir=tmp_path, resume="r1", executor="sync")
    assert second.ok
    assert calls == ["a", "b", "c", "d"]
    assert [second[n].status for n in "abcd"] == ["restored", "restored", "succeeded",
                                                  "succeeded"]
    assert second["d"].result == 4


@pytest.mark.parametrize("bad", [0, -1, "soon", True, float("nan")])
def test_a_bad_run_timeout_is_a_usage_error(bad):
    @task
    def a():
        return 1

    with pytest.raises(UsageError, match="run_timeout"):
        run_flow([a], run_timeout=bad)


def test_cli_run_timeout_exits_2_and_says_why(tmp_path):
    (tmp_path / "slowflow.py").write_text(textwrap.dedent("""
        from flowdeco import task

        @task
        def first():
            return 1

        @task(delay=120)
        def much_later(first):
            return 2
    """))
    proc = fd("slowflow.py", "--run-timeout", "0.3", "--no-state", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "run timeout" in (proc.stdout + proc.stderr)
    assert "interrupted" in proc.stdout
    bad = fd("slowflow.py", "--run-timeout", "-2", "--no-state", cwd=tmp_path)
    assert bad.returncode == 4
    assert "--run-timeout" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_mapped_instances_stop_starting_at_the_run_timeout(executor):
    clock = FakeClock()
    ran: list[int] = []

    @task
    def items():
        return list(range(6))

    @task(map="items")
    def each(items):
        ran.append(items)
        clock.advance(10)
        return items

    result = run_flow([items, each], clock=clock, executor=executor, workers=1, run_timeout=25)
    assert ran == [0, 1, 2]
    assert result.status == "interrupted"
    assert [result.outcomes[f"each[{k}]"].status for k in range(6)] == \
        ["succeeded"] * 3 + ["skipped"] * 3


def test_the_flow_run_fixture_returns_a_timed_out_run_without_stopping_the_session(
        flow_run, flow_clock):
    @task(delay=100)
    def late():
        return 1

    result = flow_run([late], run_timeout=5)
    assert result.status == "interrupted"
    assert flow_run.result is result


def test_the_console_says_the_run_timeout_not_ctrl_c():
    from flowdeco.plugins.audit import stopping_line
    line = stopping_line({"reason": "run_timeout", "run_timeout": 30.0, "running": 2})
    assert line.startswith("run timeout (30.0s) reached: stopping: waiting for 2 running tasks")
    assert "again" not in line
    assert stopping_line({"signal": "SIGINT", "running": 1}).endswith("Ctrl-C again to abandon it")
