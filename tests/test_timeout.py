"""Per-attempt timeouts: thread, sync and process executors (contract §1; issue 3)."""

from __future__ import annotations

import contextvars
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flowdeco
from flowdeco import CollectionError, TaskTimeout, UsageError, hookimpl, run, task
from flowdeco.cli import main as cli_main
from flowdeco.plugins.timeout import TimeoutCall, call_in_thread, call_with_alarm
from flowdeco.testing import FlowEvents, run_flow

ROOT = Path(__file__).resolve().parents[1]
POSIX = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")


class Recorder(FlowEvents):
    """The audit events, and whether the timeout plugin registered its guard for the run."""

    guard_registered: bool | None = None

    @hookimpl
    def flowdeco_run_start(self, run):
        self.guard_registered = run.config.pluginmanager.get_plugin("timeout-guard") is not None


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_an_attempt_longer_than_its_timeout_fails_and_the_run_goes_on(executor):
    @task(timeout=0.05)
    def slow():
        time.sleep(2.0)
        return "too late"

    @task
    def independent():
        return "fine"

    @task
    def downstream(slow):
        return slow

    run_flow([independent], executor=executor)  # the first run in a process loads the plugins
    t0 = time.perf_counter()
    result = run_flow([slow, independent, downstream], executor=executor)
    wall = time.perf_counter() - t0
    out = result.outcomes["slow"]
    assert out.status == "failed"
    assert out.error == "TaskTimeout: task 'slow' exceeded its timeout of 0.05 s"
    assert isinstance(out.exception, TaskTimeout)
    assert out.attempts == 1
    assert result.outcomes["independent"].status == "succeeded"
    assert result.outcomes["downstream"].reason == "upstream"
    assert result.exit_code == 1
    assert wall < 2.0, "the run waited for the abandoned attempt (it sleeps 2 s)"


def test_a_fast_attempt_keeps_its_result_error_and_context():
    seen = {}

    @task(timeout=5)
    def quick(ctx):
        seen["thread"] = threading.current_thread().name
        seen["attempt"] = ctx.attempt
        ctx.log.info("hello from the helper")
        return 42

    @task(timeout=5)
    def broken():
        raise KeyError("missing")

    @task
    def plain():
        seen["plain"] = threading.current_thread().name

    rec = Recorder()
    result = run_flow([quick, broken, plain], plugins=[rec], executor="sync")
    assert result.results["quick"] == 42
    assert result.outcomes["broken"].error == "KeyError: 'missing'"
    assert seen["attempt"] == 1
    assert seen["thread"].startswith("flowdeco-timeout-")
    assert not seen["plain"].startswith("flowdeco-timeout-")  # no timeout: not wrapped
    assert any(e.name == "hello from the helper" and e.task == "quick" for e in rec.events)


def test_context_variables_reach_the_helper_thread():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("flowdeco_test_var", default="unset")

    def call(kwargs):
        return var.get()

    var.set("set by the caller")
    assert call_in_thread(call, {}, 5.0, "t") == "set by the caller"


def test_helper_threads_are_pooled_daemons():
    before = {t.ident for t in threading.enumerate() if t.name.startswith("flowdeco-timeout-")}
    for _ in range(20):
        assert call_in_thread(lambda kw: kw["x"], {"x": 1}, 5.0, "t") == 1
    helpers = [t for t in threading.enumerate() if t.name.startswith("flowdeco-timeout-")]
    assert all(t.daemon for t in helpers)
    assert len({t.ident for t in helpers} - before) <= 1


def test_timeout_error_traceback_points_at_the_task():
    def boom(kwargs):
        raise ValueError("inside the task")

    with pytest.raises(ValueError) as info:
        call_in_thread(boom, {}, 5.0, "t")
    assert info.traceback[-1].name == "boom"


def test_no_timeout_anywhere_registers_nothing():
    rec = Recorder()
    run_flow([task(lambda: 1, name="plain")], plugins=[rec])
    assert rec.guard_registered is False
    rec = Recorder()

    @task(timeout=1)
    def timed():
        return 1

    run_flow([timed], plugins=[rec])
    assert rec.guard_registered is True


# --------------------------------------------------------------------------- defaults and options


def test_run_timeout_is_the_default_for_tasks_without_one():
    @task
    def slow_default():
        time.sleep(0.15)

    @task(timeout=5)
    def own_limit():
        time.sleep(0.08)
        return "ok"

    result = run_flow([slow_default, own_limit], timeout=0.03)
    assert "exceeded its timeout of 0.03 s" in result.outcomes["slow_default"].error
    assert result.outcomes["own_limit"].status == "succeeded"


@pytest.mark.parametrize("value", [0, -1, "1", float("inf"), True])
def test_invalid_run_timeout_is_a_usage_error(value):
    @task
    def t():
        pass

    with pytest.raises(UsageError, match="timeout"):
        run_flow([t], timeout=value)


def test_cli_timeout_option(tmp_path, capsys):
    flow = tmp_path / "fdtimeout_cli.py"
    flow.write_text("import time\nfrom flowdeco import task\n"
                    "@task\ndef nap():\n    time.sleep(0.15)\n")
    try:
        assert cli_main([str(flow), "--no-state", "--timeout", "0.03"]) == 1
        assert "TaskTimeout" in capsys.readouterr().out
        assert cli_main([str(flow), "--no-state", "--timeout", "abc"]) == 4
    finally:
        sys.modules.pop("fdtimeout_cli", None)


def test_disabled_timeout_plugin_refuses_the_option():
    @task(timeout=1)
    def timed():
        pass

    with pytest.raises(CollectionError, match="timeout"):
        run_flow([timed], disable=["timeout"])


def test_exported_from_the_package():
    assert flowdeco.TaskTimeout is TaskTimeout
    assert issubclass(TaskTimeout, flowdeco.FlowError)


# --------------------------------------------------------------------------- processes


@POSIX
def test_alarm_interrupts_the_call_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    with pytest.raises(TaskTimeout, match="'napper' exceeded its timeout of 0.05 s"):
        call_with_alarm(lambda kw: time.sleep(5), {}, 0.05, "napper")
    assert time.perf_counter() - t0 < 1.0
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert call_with_alarm(lambda kw: kw["v"], {"v": 7}, 5.0, "quick") == 7
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_wrapper_pickles_for_worker_processes():
    call = TimeoutCall(len, 2.5, "t", os.getpid())
    clone = pickle.loads(pickle.dumps(call))
    assert (clone.call, clone.seconds, clone.name, clone.driver_pid) == (len, 2.5, "t", os.getpid())
    # in the driver it uses a helper thread, not SIGALRM
    assert clone({"a": 1, "b": 2}) == 2
    err = pickle.loads(pickle.dumps(TaskTimeout("task 't' exceeded its timeout of 1 s")))
    assert isinstance(err, TaskTimeout) and "exceeded" in str(err)


@POSIX
def test_process_executor_really_stops_the_attempt(write_module):
    """The worker process is interrupted and serves the next task (workers=1)."""
    path = write_module(
        "import os, time\n"
        "from flowdeco import task\n"
        "@task(timeout=0.1, priority=1)\n"
        "def stuck():\n"
        "    time.sleep(3600)\n"
        "@task\n"
        "def next_one():\n"
        "    return os.getpid()\n"
        "@task(timeout=5)\n"
        "def in_time():\n"
        "    return os.getpid()\n")
    t0 = time.perf_counter()
    result = run_flow(str(path), executor="process", workers=1)
    assert time.perf_counter() - t0 < 5
    assert result.outcomes["stuck"].status == "failed"
    assert "TaskTimeout" in result.outcomes["stuck"].error
    assert result.results["next_one"] == result.results["in_time"] != os.getpid()


# --------------------------------------------------------------------------- end to end


def _cli(flow: Path, *args: str) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flowdeco", str(flow), "--no-state", *args],
                          cwd=flow.parent, env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


HOUR_LONG = ("import time\nfrom flowdeco import task\n"
             "@task(timeout=1)\ndef hangs():\n    time.sleep(3600)\n"
             "@task\ndef fine():\n    return 1\n")


@pytest.mark.parametrize("executor", ["thread", pytest.param("process", marks=POSIX)])
def test_cli_run_with_an_hour_long_task_and_timeout_1_ends_with_exit_1(tmp_path, executor):
    flow = tmp_path / f"hour_{executor}.py"
    flow.write_text(HOUR_LONG)
    code, output, wall = _cli(flow, "--executor", executor)
    assert code == 1, output
    assert wall < 6, wall
    assert "FAILED hangs - TaskTimeout: task 'hangs' exceeded its timeout of 1 s" in output
    assert "1 succeeded, 1 failed" in output


def test_per_task_answers_cost_no_call_of_the_values_eq(monkeypatch):
    """Merging a hook's per-task answers compared every value to None with its own
    ``__eq__``: a Python call per task for an attrs Deadline (the timeout plugin's)."""
    import flowdeco

    compared = []
    monkeypatch.setattr(flowdeco.Deadline, "__eq__",
                        lambda self, other: compared.append(other) or self is other)
    deadline = flowdeco.Deadline(60.0, lambda name: TimeoutError(f"{name} is late"))

    @task
    def one():
        return 1

    @task
    def two():
        return 2

    class Limits:
        @flowdeco.hookimpl
        def flowdeco_task_deadlines(self, run):
            return {run.graph.by_name["one"]: deadline, run.graph.by_name["two"]: deadline}

    result = run([one, two], state_dir=None, executor="thread", plugins=[Limits()])
    assert result.results == {"one": 1, "two": 2}
    assert compared == []


def test_policed_marks_tasks_with_a_guard_or_a_deadline():
    """``setup.policed`` (built in C) against its definition, a falsy guard included."""
    from flowdeco.engine import setup

    class Falsy:
        def __bool__(self):
            return False

    deadline = flowdeco.Deadline(60.0, lambda name: TimeoutError(f"{name} is late"))
    guards = [None, Falsy(), None, "g", None]
    deadlines = [None, None, deadline, deadline, None]
    spelled_out = [g is not None or d is not None for g, d in zip(guards, deadlines)]
    assert setup.policed(guards, deadlines) == spelled_out == [False, True, True, True, False]
    assert setup.policed(guards, None) == [g is not None for g in guards]
    assert setup.policed(None, deadlines) == [d is not None for d in deadlines]
    assert setup.policed(None, None) is None
    assert all(type(x) is bool for x in setup.policed(guards, deadlines))
