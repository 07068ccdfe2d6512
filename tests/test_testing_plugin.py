"""The pytest plugin users test their flows with (flowdeco.testing), tested with pytester."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

FLOW = '''
from flowdeco import task

CALLS = []

@task
def extract():
    CALLS.append("extract")
    return {"records": 10}

@task
def transform(extract):
    return extract["records"] * 2

@task
def load(transform, table="events"):
    return f"{transform} rows into {table}"
'''


@pytest.fixture
def project(pytester):
    pytester.makepyfile(etlflow=FLOW)
    pytester.syspathinsert()
    return pytester


def run_tests(pytester, source: str, *args: str):
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest("-q", "-p", "no:cacheprovider", *args)


def test_flow_run_runs_in_process_without_state(project):
    res = run_tests(project, '''
        import os
        def test_it(flow_run):
            result = flow_run("etlflow")
            result.assert_ok()
            assert result.results["load"] == "20 rows into events"
            assert flow_run.result is result
            assert not os.path.exists(".flowdeco")
    ''')
    res.assert_outcomes(passed=1)


def test_params_and_run_options_pass_through(project):
    res = run_tests(project, '''
        def test_it(flow_run):
            result = flow_run("etlflow", params={"table": "archive"}, workers=1, executor="sync")
            assert result.results["load"] == "20 rows into archive"
    ''')
    res.assert_outcomes(passed=1)


def test_overrides_replace_a_result_without_calling_the_task(project):
    res = run_tests(project, '''
        import etlflow
        def test_it(flow_run, flow_events):
            result = flow_run("etlflow", overrides={"extract": {"records": 3}})
            result.assert_ok()
            assert result.results["load"] == "6 rows into events"
            assert result.outcomes["extract"].status == "restored"
            assert "extract" not in etlflow.CALLS
            assert flow_events.of("task_restored", task="extract")
    ''')
    res.assert_outcomes(passed=1)


def test_override_replaces_a_function_with_the_arguments_it_takes(project):
    res = run_tests(project, '''
        def test_it(flow_run):
            seen = []
            def fake_transform(extract):
                seen.append(extract)
                return 99
            result = flow_run("etlflow", override={"transform": fake_transform,
                                                   "extract": lambda: {"records": 1}})
            result.assert_ok()
            assert seen == [{"records": 1}]
            assert result.results["load"] == "99 rows into events"
            assert result.outcomes["transform"].status == "succeeded"
    ''')
    res.assert_outcomes(passed=1)


def test_override_of_unknown_task_is_a_clear_error(project):
    res = run_tests(project, '''
        import pytest
        from flowdeco import UsageError
        def test_it(flow_run):
            with pytest.raises(UsageError, match="unknown task 'extrct'; did you mean 'extract'"):
                flow_run("etlflow", overrides={"extrct": 1})
    ''')
    res.assert_outcomes(passed=1)


def test_flow_events_helpers(project):
    res = run_tests(project, '''
        def test_it(flow_run, flow_events):
            flow_run("etlflow")
            assert flow_events.names()[0] == "run_started"
            assert flow_events.names()[-1] == "run_finished"
            assert flow_events.names(task="load") == ["task_started", "task_succeeded"]
            (done,) = flow_events.of("task_succeeded", task="transform")
            assert done.outcome.result == 20
            assert flow_events.of("run_finished", status="succeeded")
            assert not flow_events.of("run_finished", status="failed")
            flow_run("etlflow")      # a second run starts a fresh log
            assert len(flow_events.of("run_started")) == 1
    ''')
    res.assert_outcomes(passed=1)


def test_assert_ok_failure_message_lists_failed_and_skipped_tasks(pytester):
    pytester.makepyfile(badflow='''
        from flowdeco import task

        @task
        def extract():
            raise ValueError("bad record 7")

        @task
        def transform(extract):
            return 1

        @task
        def other():
            return 2
    ''')
    pytester.syspathinsert()
    res = run_tests(pytester, '''
        def test_it(flow_run):
            flow_run("badflow").assert_ok()
    ''')
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([
        "*AssertionError: run * failed: 1 failed, 1 skipped*",
        "*FAILED extract - ValueError: bad record 7*",
        "*skipped (upstream): transform*",
    ])


def test_flow_clock_makes_a_long_retry_back_off_instant(pytester):
    pytester.makepyfile(flaky='''
        from flowdeco import task, Retry

        ATTEMPTS = []

        @task(retry=Retry(retries=5, delay=60.0))
        def fetch(ctx):
            ATTEMPTS.append(ctx.attempt)
            if ctx.attempt <= 5:
                raise ConnectionError("down")
            return "ok"
    ''')
    pytester.syspathinsert()
    res = run_tests(pytester, '''
        import time
        def test_it(flow_run, flow_clock, flow_events):
            start_real, start_fake = time.monotonic(), flow_clock.monotonic()
            result = flow_run("flaky")
            result.assert_ok()
            assert result.outcomes["fetch"].attempts == 6
            assert [e.fields["delay"] for e in flow_events.of("task_retrying")] == [60.0] * 5
            assert flow_clock.monotonic() - start_fake >= 300.0
            assert time.monotonic() - start_real < 1.0
    ''')
    res.assert_outcomes(passed=1)


def test_flow_state_is_a_fresh_folder_and_state_true_writes_there(project):
    res = run_tests(project, '''
        def test_it(flow_run, flow_state):
            assert flow_state.is_dir() and not any(flow_state.iterdir())
            result = flow_run("etlflow", state=True, run_id="r1")
            result.assert_ok()
            assert (flow_state / "runs" / "r1" / "audit.jsonl").exists()
    ''')
    res.assert_outcomes(passed=1)


def test_plugin_is_registered_through_the_pytest11_entry_point():
    from importlib.metadata import entry_points
    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("flowdeco") == "flowdeco.testing"


def test_loading_the_plugin_does_not_import_flowdeco(tmp_path):
    import subprocess
    import sys
    code = ("import sys, flowdeco.testing; "
            "print(sorted(m for m in sys.modules if m.startswith('flowdeco')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    # the package's __init__ runs (it is the parent package), the engine's modules
    # (runner, graph, plugins) are only imported when a fixture is used
    assert "flowdeco.runner" not in out and "flowdeco.plugins" not in out
    assert "flowdeco.engine" not in out


def test_flow_clock_runs_a_24_hour_interval_schedule_instantly(pytester):
    pytester.makepyfile(hourly='''
        from flowdeco import task

        @task(every=3600.0, times=24)
        def probe(ctx):
            return ctx.iteration
    ''')
    pytester.syspathinsert()
    res = run_tests(pytester, '''
        import time
        def test_it(flow_run, flow_clock):
            start_real, start_fake = time.monotonic(), flow_clock.monotonic()
            result = flow_run("hourly")
            result.assert_ok()
            assert result.results["probe"] == list(range(1, 25))
            assert flow_clock.monotonic() - start_fake >= 23 * 3600
            assert time.monotonic() - start_real < 1.0
    ''')
    res.assert_outcomes(passed=1)


def test_within_returns_reraises_and_bounds_a_hang():
    import threading

    from flowdeco.testing import within
    assert within(5, lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(KeyError):
        within(5, {}.__getitem__, "missing")
    gate = threading.Event()
    with pytest.raises(AssertionError, match="wait did not finish within 0.05s"):
        within(0.05, gate.wait, 10)
    gate.set()


# --------------------------------------------------------------------------- Ctrl-C, real time

STOPPED_FLOW = '''
import os
import signal
import time

from flowdeco import task

@task
def first():
    return 1

@task
def interrupted(first):
    os.kill(os.getpid(), signal.{sig})   # Ctrl-C while this task runs
    time.sleep(0.3)                      # (still running when the run sees the signal)
    return 2

@task
def never(interrupted):
    print("NEVER RAN")
    return 3
'''


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_in_flow_run_stops_the_flow_then_the_session(pytester, sig):
    pytester.makepyfile(stopflow=STOPPED_FLOW.format(sig=sig))
    pytester.makepyfile(test_user=textwrap.dedent('''
        import pytest

        def test_a(flow_run):
            try:
                flow_run("stopflow", workers=2)
            except KeyboardInterrupt:
                r = flow_run.result     # the flow was stopped and recorded first
                print("STATUS", r.status, r["interrupted"].status, r["never"].status,
                      r["never"].reason)
                raise
            print("RETURNED NORMALLY")

        def test_b():
            print("TEST B RAN")
    '''))
    res = pytester.runpytest_subprocess("-q", "-s", "-p", "no:cacheprovider")
    out = res.stdout.str()
    assert res.ret == pytest.ExitCode.INTERRUPTED, out
    assert "STATUS interrupted succeeded skipped stopped" in out, out
    assert "RETURNED NORMALLY" not in out and "NEVER RAN" not in out
    assert "TEST B RAN" not in out                  # pytest stopped the session
    assert "KeyboardInterrupt" in out


def test_a_long_real_time_wait_in_flow_run_is_reported_at_once_and_warned_once(pytester):
    pytester.makepyfile(test_user=textwrap.dedent('''
        from flowdeco import task

        @task(every=0.6, times=3)
        def poll(ctx):
            return ctx.iteration

        def test_it(flow_run):
            flow_run.real_wait_warning = 0.2    # seconds (default: a few)
            result = flow_run([poll])
            assert result.results["poll"] == [1, 2, 3]
    '''))
    res = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-W",
                                        "default::pytest.PytestWarning")
    out = res.stdout.str()
    res.assert_outcomes(passed=1, warnings=1)
    # on the terminal as it happens (not only in the captured output of a hung test)...
    assert out.count("waiting on the real clock") == 2, out   # the line and the warning
    assert "flow_clock" in out
    # ... and as a pytest warning in the summary
    assert "FlowRealTimeWarning" in out


def test_no_real_time_warning_with_flow_clock_or_short_waits(pytester):
    pytester.makepyfile(test_user=textwrap.dedent('''
        from flowdeco import task

        @task(every=3600, times=3)
        def hourly(ctx):
            return ctx.iteration

        @task(every=0.05, times=3)
        def quick(ctx):
            return ctx.iteration

        def test_fake_clock(flow_run, flow_clock):
            assert flow_run([hourly]).results["hourly"] == [1, 2, 3]

        def test_short_waits(flow_run):
            assert flow_run([quick]).results["quick"] == [1, 2, 3]
    '''))
    res = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2)
    assert "real clock" not in res.stdout.str()


def test_run_flow_keeps_no_state_and_fails_a_hung_run(tmp_path, monkeypatch):
    """The one helper the suite runs flows with (``flow_run`` is built on it)."""
    import threading

    from flowdeco import task
    from flowdeco.testing import run_flow
    monkeypatch.chdir(tmp_path)
    release = threading.Event()

    @task
    def quick():
        return 1

    @task
    def stuck():
        release.wait(30)

    assert run_flow([quick]).results == {"quick": 1}
    assert run_flow([quick], fail_after=30).results == {"quick": 1}
    assert list(tmp_path.iterdir()) == []           # no .flowdeco state folder
    try:
        with pytest.raises(AssertionError, match="did not finish within 0.2s"):
            run_flow([stuck], fail_after=0.2)
    finally:
        release.set()
