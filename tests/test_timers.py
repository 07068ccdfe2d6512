"""Delays, interval tasks and cron schedules: the timers plugin (contract §1, §4; issue 6).

Everything runs on a FakeClock (tasks advance it themselves to play slow
work), except one real-time test of Ctrl-C promptness in a subprocess.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from flowdeco import (CollectionError, FakeClock, Retry, TaskDefinitionError, hookimpl, run,
                      task)
from flowdeco.plugins.timers import CronSchedule, parse_cron, zone_info
from flowdeco.testing import FlowEvents, run_flow

ROOT = Path(__file__).resolve().parents[1]
BERLIN = ZoneInfo("Europe/Berlin")


def since(clock: FakeClock, t0: float = 1000.0) -> float:
    return round(clock.monotonic() - t0, 6)


# --------------------------------------------------------------------------- delay


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_delay_starts_no_sooner_than_ready_plus_delay(executor):
    clock = FakeClock()
    starts = {}

    @task
    def first():
        clock.advance(5)
        return 1

    @task(delay=30)
    def notify(first):
        starts["notify"] = since(clock)
        return first + 1

    result = run_flow([first, notify], clock=clock, executor=executor)
    assert result.ok and result.results["notify"] == 2
    assert starts["notify"] == 35.0     # ready at 5, plus 30
    out = result.outcomes
    assert (out["notify"].started_at - out["first"].finished_at).total_seconds() == 30.0


def test_a_delay_holds_no_worker():
    clock = FakeClock()
    log = []

    @task(delay=100)
    def later():
        log.append(("later", since(clock)))

    @task
    def meanwhile():
        log.append(("meanwhile", since(clock)))
        clock.advance(40)           # 40 s of work while `later` waits
        log.append(("meanwhile done", since(clock)))

    result = run_flow([later, meanwhile], clock=clock, workers=1)
    assert result.ok
    assert log == [("meanwhile", 0.0), ("meanwhile done", 40.0), ("later", 100.0)]


def test_an_hour_long_delay_is_instant_on_the_fake_clock():
    @task(delay=3600)
    def hourly():
        return "done"

    t0 = time.perf_counter()
    result = run_flow([hourly], clock=FakeClock())
    assert result.results == {"hourly": "done"}
    assert result.duration == 3600.0
    assert time.perf_counter() - t0 < 1.0


def test_zero_delay_is_no_delay_and_runs_without_timers_register_nothing():
    seen = {}

    class Probe:
        @hookimpl(trylast=True)
        def flowdeco_run_start(self, run):
            hook = run.hook
            seen.setdefault("delay", []).append(len(hook.flowdeco_task_delay.get_hookimpls()))
            seen.setdefault("done", []).append(
                len(hook.flowdeco_attempt_done.get_hookimpls()))
            seen["pm"] = run.config.pluginmanager

    @task(delay=0)
    def plain():
        return 1

    @task(delay=2)
    def delayed():
        return 2

    @task(every=1, times=2)
    def ticking():
        return 3

    probe = Probe()
    assert run_flow([plain], plugins=[probe], clock=FakeClock()).ok
    assert run_flow([delayed], plugins=[probe], clock=FakeClock()).ok
    assert run_flow([ticking], plugins=[probe], clock=FakeClock()).ok
    # only the retry plugin implements attempt_done when no interval task runs
    base = seen["done"][0]
    assert seen["delay"] == [0, 1, 0]
    assert seen["done"] == [base, base, base + 1]
    pm = seen["pm"]
    assert pm.hook.flowdeco_task_delay.get_hookimpls() == []   # unregistered after the run
    assert len(pm.hook.flowdeco_attempt_done.get_hookimpls()) == base


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_fixed_rate_iterations_and_result_list(executor):
    clock = FakeClock()
    starts = []

    @task(every=10, times=5)
    def poll(ctx):
        starts.append((ctx.iteration, ctx.attempt, since(clock)))
        clock.advance(3)                      # each iteration takes 3 s: no drift
        return ctx.iteration * 100

    result = run_flow([poll], clock=clock, executor=executor)
    assert result.ok
    assert result.results["poll"] == [100, 200, 300, 400, 500]
    assert starts == [(1, 1, 0.0), (2, 1, 10.0), (3, 1, 20.0), (4, 1, 30.0), (5, 1, 40.0)]
    assert result.outcomes["poll"].duration == 43.0


def test_an_overrun_is_followed_at_once_and_shifts_the_grid():
    """The drift rule: no pile-up, no burst of catch-up iterations."""
    clock = FakeClock()
    starts = []
    rec = FlowEvents()

    @task(every=10, times=5)
    def poll(ctx):
        starts.append(since(clock))
        if ctx.iteration == 2:
            clock.advance(25)                 # 2.5 intervals: slots 3 and 4 are missed
        return ctx.iteration

    result = run_flow([poll], clock=clock, plugins=[rec])
    assert result.results["poll"] == [1, 2, 3, 4, 5]
    assert starts == [0.0, 10.0, 35.0, 45.0, 55.0]
    (overrun,) = rec.of("interval_overrun", task="poll")
    assert overrun.fields["iteration"] == 3
    assert overrun.fields["late"] == 15.0
    assert overrun.fields["every"] == 10.0


def test_ctx_iteration_is_none_outside_interval_tasks_and_reported_inside():
    rec = FlowEvents()
    seen = {}

    @task(every=1, times=3)
    def ticking(ctx):
        return ctx.iteration

    @task
    def plain(ctx):
        seen["plain"] = ctx.iteration

    result = run_flow([ticking, plain], plugins=[rec], clock=FakeClock())
    assert result.results["ticking"] == [1, 2, 3]
    assert seen["plain"] is None
    started = [e.fields.get("iteration") for e in rec.of("task_started", task="ticking")]
    assert started == [1, 2, 3]
    assert "iteration" not in rec.of("task_started", task="plain")[0].fields


def test_until_stops_early_with_the_results_so_far():
    clock = FakeClock()
    checked = []

    def finished(status):
        checked.append(status["progress"])
        return status["progress"] >= 100

    @task(every=60, until=finished)          # no times: until decides
    def job_status(ctx):
        return {"progress": min(100, 40 * ctx.iteration)}

    @task(every=60, times=2, until=lambda r: False)
    def capped(ctx):
        return ctx.iteration

    result = run_flow([job_status, capped], clock=clock)
    assert result.results["job_status"] == [{"progress": 40}, {"progress": 80},
                                            {"progress": 100}]
    assert checked == [40, 80, 100]
    assert result.results["capped"] == [1, 2]
    assert result.duration == 120.0


def test_a_failing_until_fails_the_task():
    def broken(result):
        raise ValueError("bad predicate")

    @task(every=1, times=5, until=broken)
    def ticking():
        return 1

    result = run_flow([ticking], clock=FakeClock())
    out = result.outcomes["ticking"]
    assert out.status == "failed"
    assert out.error == "ValueError: bad predicate"


def test_a_failed_iteration_is_retried_by_its_policy_and_keeps_its_number():
    clock = FakeClock()
    calls = []
    rec = FlowEvents()

    @task(every=10, times=3, retry=Retry(retries=2, delay=3))
    def flaky(ctx):
        calls.append((ctx.iteration, ctx.attempt, since(clock)))
        if ctx.iteration == 2 and ctx.attempt < 3:
            raise ConnectionError("down")
        return ctx.iteration

    result = run_flow([flaky], clock=clock, plugins=[rec])
    assert result.results["flaky"] == [1, 2, 3]
    assert calls == [(1, 1, 0.0), (2, 1, 10.0), (2, 2, 13.0), (2, 3, 16.0), (3, 1, 20.0)]
    retrying = rec.of("task_retrying", task="flaky")
    assert [e.fields["attempt"] for e in retrying] == [1, 2]
    assert [e.fields.get("iteration") for e in rec.of("task_started", task="flaky")] == \
        [1, 2, 2, 2, 3]


def test_an_iteration_whose_retries_run_out_fails_the_task_and_skips_downstream():
    @task(every=10, times=3, retries=1)
    def flaky(ctx):
        if ctx.iteration == 2:
            raise ConnectionError(f"down (attempt {ctx.attempt})")
        return ctx.iteration

    @task
    def report(flaky):
        return len(flaky)

    result = run_flow([flaky, report], clock=FakeClock())
    assert result.status == "failed"
    out = result.outcomes["flaky"]
    assert out.status == "failed"
    assert out.error == "ConnectionError: down (attempt 2)"
    assert result.outcomes["report"].status == "skipped"
    assert result.outcomes["report"].reason == "upstream"


def test_downstream_starts_when_the_interval_task_has_ended():
    clock = FakeClock()

    @task(every=5, times=4)
    def sample(ctx):
        return ctx.iteration ** 2

    @task
    def total(sample):
        return sum(sample)

    result = run_flow([sample, total], clock=clock)
    assert result.results == {"sample": [1, 4, 9, 16], "total": 30}
    out = result.outcomes
    assert out["total"].started_at >= out["sample"].finished_at
    assert (out["sample"].finished_at - out["sample"].started_at).total_seconds() == 15.0


def test_delay_then_interval():
    clock = FakeClock()
    starts = []

    @task(delay=7, every=2, times=3)
    def warm(ctx):
        starts.append(since(clock))

    assert run_flow([warm], clock=clock).ok
    assert starts == [7.0, 9.0, 11.0]


def test_interval_task_on_processes_with_the_real_clock(write_module):
    path = write_module("""
        from flowdeco import task

        @task(every=0.01, times=3)
        def ticking(ctx):
            return (ctx.iteration, ctx.attempt)
    """)
    result = run(str(path), state_dir=None, executor="process", workers=1)
    assert result.results["ticking"] == [(1, 1), (2, 1), (3, 1)]


# --------------------------------------------------------------------------- stopping


def test_stop_on_error_ends_a_waiting_interval_task_interrupted():
    clock = FakeClock()

    @task(every=10, times=5)
    def poll(ctx):
        return ctx.iteration

    @task(delay=15)
    def boom():
        raise RuntimeError("boom")

    result = run_flow([poll, boom], clock=clock, stop_on_error=True)
    assert result.status == "failed"
    out = result.outcomes["poll"]
    assert out.status == "interrupted"
    assert out.error is None
    assert result.duration == 15.0            # iteration 3 (due at 20) never started


def test_an_interrupt_stops_an_interval_task_before_its_next_iteration():
    clock = FakeClock()
    iterations = []

    class CtrlC:
        """Interrupts the run when `trigger` has succeeded (poll is waiting then)."""

        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_succeeded" and event.task == "trigger":
                run.stop(interrupted=True)

    @task(every=10, times=5)
    def poll(ctx):
        iterations.append(ctx.iteration)
        return ctx.iteration

    @task(delay=25)
    def trigger():
        return "now"

    @task
    def after(poll):
        return poll

    result = run_flow([poll, trigger, after], clock=clock, plugins=[CtrlC()])
    assert result.status == "interrupted"
    assert result.exit_code == 2
    assert iterations == [1, 2, 3]
    assert result.outcomes["poll"].status == "interrupted"
    assert result.outcomes["after"].status == "skipped"


def test_an_interrupt_during_an_iteration_waits_for_it_then_stops():
    class CtrlC:
        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_started" and event.fields.get("iteration") == 2:
                run.stop(interrupted=True)

    @task(every=10, times=5)
    def poll(ctx):
        return ctx.iteration

    result = run_flow([poll], plugins=[CtrlC()], clock=FakeClock())
    assert result.status == "interrupted"
    out = result.outcomes["poll"]
    assert out.status == "interrupted"
    assert result.duration == 10.0


def start_minutely(tmp_path, *options):
    """``python -m flowdeco`` on a flow whose one task runs every 60 s (10 times)."""
    mod = tmp_path / "minutely.py"
    mod.write_text(
        "from flowdeco import task\n\n"
        "@task(every=60, times=10)\n"
        "def tick(ctx):\n"
        "    print(f'ITERATION {ctx.iteration}', flush=True)\n"
        "    return ctx.iteration\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # -s: the task's ITERATION line (not captured) is what the test waits for
    return subprocess.Popen([sys.executable, "-m", "flowdeco", str(mod), "-s", *options],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def interrupt_after_first_iteration(proc, send):
    """Wait for the first iteration, ``send(proc)`` a signal; (exit code, seconds to exit)."""
    try:
        assert proc.stdout.readline().strip() == "ITERATION 1"
        t0 = time.monotonic()
        send(proc)
        rc = proc.wait(timeout=10)
        return rc, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_ctrl_c_during_a_long_interval_wait_stops_at_once(tmp_path):
    """Real time: a task every 60 s; SIGINT after the first iteration -> exit 2 at once."""
    state = tmp_path / "state"
    proc = start_minutely(tmp_path, "--state-dir", str(state), "--run-id", "minutely-1")
    rc, elapsed = interrupt_after_first_iteration(proc, lambda p: p.send_signal(signal.SIGINT))
    assert rc == 2
    assert elapsed < 0.5 + 0.5            # the contract's 0.5 s, plus margin for a slow CI
    events = [json.loads(line) for line in
              (state / "runs" / "minutely-1" / "audit.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_finished"
    assert events[-1]["status"] == "interrupted"
    assert [e["event"] for e in events if e.get("task") == "tick"] == \
        ["task_started", "task_interrupted"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_ctrl_c_delivered_to_another_thread_still_stops_at_once(tmp_path):
    """The OS may hand a process's SIGINT to any thread; Python only runs the handler on
    the main thread, which used to sleep on through the whole 60 s interval wait.
    ``kill`` aimed at a worker thread's id makes that thread the receiver on Linux."""

    def to_a_worker_thread(p):
        others = [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid]
        assert others, "the run has worker threads"
        os.kill(max(others), signal.SIGINT)

    rc, elapsed = interrupt_after_first_iteration(start_minutely(tmp_path, "--no-state"),
                                                  to_a_worker_thread)
    assert rc == 2
    assert elapsed < 0.5 + 0.5


# --------------------------------------------------------------------------- declaring


@pytest.mark.parametrize("kwargs, words", [
    (dict(every=1, until=3), ["until", "callable"]),
    (dict(until=lambda r: True), ["until", "every"]),
    (dict(cron=5), ["cron", "string"]),
    (dict(cron="  "), ["cron"]),
])
def test_bad_timer_options_are_refused_at_decoration(kwargs, words):
    with pytest.raises(TaskDefinitionError) as info:
        @task(**kwargs)
        def t():
            pass
    msg = str(info.value)
    assert "'t'" in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("kwargs", [dict(every=1, until=bool), dict(cron="* * * * *")])
def test_until_and_cron_need_the_timers_plugin(kwargs):
    @task(**kwargs)
    def fancy():
        pass

    with pytest.raises(CollectionError) as info:
        run_flow([fancy], disable=["timers"], clock=FakeClock())
    msg = str(info.value)
    assert "fancy" in msg
    assert any(f"{k}=" in msg for k in kwargs)


def test_a_bad_cron_expression_is_a_collection_error_naming_the_task():
    ran = []

    @task(cron="61 * * * *")
    def hourly():
        ran.append(1)

    with pytest.raises(CollectionError) as info:
        run_flow([hourly], clock=FakeClock())
    msg = str(info.value)
    assert "'hourly'" in msg and "61 * * * *" in msg and "minute" in msg
    assert ran == []


def test_a_cron_task_runs_once_in_a_plain_run():
    @task(cron="*/5 * * * *")
    def every_five():
        return "ran"

    assert run_flow([every_five], clock=FakeClock()).results == {"every_five": "ran"}


# --------------------------------------------------------------------------- cron schedules


def ticks(expr: str, start: dt.datetime, n: int, tz=BERLIN) -> list[str]:
    sched = parse_cron(expr, tz)
    out, t = [], start
    for _ in range(n):
        t = sched.next_after(t)
        out.append(t.isoformat())
    return out


def test_cron_across_spring_forward():
    # Europe/Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST (02:xx does not exist)
    start = dt.datetime(2026, 3, 29, 0, 50, tzinfo=BERLIN)
    assert ticks("0 * * * *", start, 3) == [
        "2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]
    assert ticks("*/30 * * * *", start, 3) == [
        "2026-03-29T01:00:00+01:00", "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00"]
    # a daily job at a skipped time runs when the clock jumps, once
    assert ticks("30 2 * * *", dt.datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_cron_across_fall_back():
    # Europe/Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET (02:xx happens twice)
    start = dt.datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN)
    hourly = ticks("0 * * * *", start, 4)
    assert hourly == ["2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00",
                      "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]
    utc = [dt.datetime.fromisoformat(t).timestamp() for t in hourly]
    assert {b - a for a, b in zip(utc, utc[1:])} == {3600.0}   # real hours, none lost
    # a daily job at a repeated time runs once
    assert ticks("30 2 * * *", dt.datetime(2026, 10, 24, 12, tzinfo=BERLIN), 2) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_cron_month_ends():
    start = dt.datetime(2026, 1, 1, tzinfo=BERLIN)
    assert ticks("0 0 31 * *", start, 4) == [
        "2026-01-31T00:00:00+01:00", "2026-03-31T00:00:00+02:00",
        "2026-05-31T00:00:00+02:00", "2026-07-31T00:00:00+02:00"]
    assert ticks("0 0 L * *", start, 4) == [
        "2026-01-31T00:00:00+01:00", "2026-02-28T00:00:00+01:00",
        "2026-03-31T00:00:00+02:00", "2026-04-30T00:00:00+02:00"]
    assert ticks("0 0 L 2 *", start, 3) == [
        "2026-02-28T00:00:00+01:00", "2027-02-28T00:00:00+01:00", "2028-02-29T00:00:00+01:00"]
    assert ticks("59 23 * * *", dt.datetime(2026, 12, 31, 12, tzinfo=BERLIN), 2) == [
        "2026-12-31T23:59:00+01:00", "2027-01-01T23:59:00+01:00"]


def test_cron_zones_aliases_and_range():
    start = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert ticks("@hourly", start, 1, tz="UTC") == ["2026-06-01T13:00:00+00:00"]
    assert ticks("@daily", start, 1, tz="UTC") == ["2026-06-02T00:00:00+00:00"]
    sched = parse_cron("CRON_TZ=America/New_York 0 9 * * MON-FRI", "UTC")
    assert sched.tz == ZoneInfo("America/New_York")
    assert sched.next_after(start).isoformat() == "2026-06-01T09:00:00-04:00"
    window = sched.ticks(start, start + dt.timedelta(days=7))      # Mon 1 June .. Mon 8 June
    assert [t.day for t in window] == [1, 2, 3, 4, 5]
    assert isinstance(sched, CronSchedule)
    assert zone_info(None) is not None


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "0 0 30 2 *", "@often",
                                 # valid fields that never match together: never fires
                                 "1 1 */100 * MON#4", "0 0 */29 2 MON#5", "0 0 */40 * FRI#5",
                                 "CRON_TZ=Mars/Olympus 0 * * * *"])
def test_bad_cron_expressions(bad):
    with pytest.raises(CollectionError) as info:
        parse_cron(bad, "UTC", where="task 'x'")
    msg = str(info.value)
    assert msg.startswith("task 'x': ") and "\n" not in msg
    if "#" in bad:
        assert f"cron expression {bad!r} never fires" in msg


def test_a_hand_made_schedule_that_never_fires_is_refused_not_a_stop_iteration():
    sched = CronSchedule("1 1 */100 * MON#4", dt.timezone.utc)
    with pytest.raises(CollectionError, match="never fires"):
        sched.next_after(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert sched.ticks(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                       dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)) == []


def test_a_zone_name_too_long_for_a_file_is_a_usage_error(monkeypatch):
    """With the tzdata package installed (pandas brings it), ZoneInfo raises OSError
    (ENAMETOOLONG) for a huge name instead of ZoneInfoNotFoundError: still exit 4, one line."""
    import errno
    import zoneinfo

    from flowdeco.errors import UsageError
    from flowdeco.plugins.timers import zone_info

    def too_long(name):
        raise OSError(errno.ENAMETOOLONG, "File name too long", name)

    monkeypatch.setattr(zoneinfo, "ZoneInfo", too_long)
    with pytest.raises(UsageError, match="unknown time zone"):
        zone_info("1" * 10_000)
