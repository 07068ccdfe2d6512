"""``flowdeco serve --backfill FROM TO`` (issue 19): every tick once, oldest first, skipping
ticks done in the store, resuming cut-short ones, several at once with ``--max-active``.

Ticks are in the past of a FakeClock: nothing waits."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading

import pytest

from flowdeco import FakeClock, UsageError
from flowdeco.cli import main as cli_main
from flowdeco.plugins.backfill import backfill

UTC = dt.timezone.utc

HOURLY = """
    import os
    import signal
    from flowdeco import task

    @task
    def fetch():
        return 21

    @task(cron="0 * * * *")
    def report(ctx, fetch):
        stop = os.environ.get("BACKFILL_STOP_AT")
        if stop and ctx.run_id.endswith(stop):
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C while this tick's run is in flight
        kill = os.environ.get("BACKFILL_KILL_AT")
        if kill and ctx.run_id.endswith(kill):
            os.kill(os.getpid(), signal.SIGKILL)  # the machine dies mid-run
        return {"run": ctx.run_id, "value": fetch * 2}
"""


def now_clock() -> FakeClock:
    return FakeClock(wall=dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp())


@pytest.fixture
def hourly(write_module):
    return write_module(HOURLY, name="hourly")


def ids(report):
    return [r.run_id for r in report.runs]


def test_every_tick_in_the_range_runs_once_oldest_first(hourly, tmp_path):
    out = io.StringIO()
    report = backfill(str(hourly), "2026-03-01T22:00", "2026-03-02T01:00", tz="UTC",
                      clock=now_clock(), state_dir=tmp_path, out=out)
    assert report.exit_code == 0
    assert ids(report) == ["hourly-20260301T220000Z", "hourly-20260301T230000Z",
                           "hourly-20260302T000000Z", "hourly-20260302T010000Z"]
    for r in report.runs:
        assert r.tasks == ("report",) and dict(r.result.results)["report"]["run"] == r.run_id
        assert (tmp_path / "runs" / r.run_id / "audit.jsonl").exists()
    assert "4 tick(s), 0 already done, 4 to run" in out.getvalue()
    assert "backfilled 2026-03-01T22:00:00+00:00: run hourly-20260301T220000Z" in out.getvalue()
    assert all(r.backfill and not r.catch_up for r in report.runs)
    # serve's own file (last tick, claim) is left alone: serve would see nothing missed
    assert not (tmp_path / "serve" / "hourly.json").exists()


def test_naive_times_are_wall_time_in_the_schedules_zone_and_a_date_is_its_midnight(
        hourly, tmp_path):
    report = backfill(str(hourly), "2026-03-01", "2026-03-01T01:00", tz="Europe/Paris",
                      clock=now_clock(), state_dir=None)
    # midnight and 1am in Paris (UTC+1 in March)
    assert ids(report) == ["hourly-20260228T230000Z", "hourly-20260301T000000Z"]
    assert report.runs[0].tick.isoformat() == "2026-03-01T00:00:00+01:00"


def test_ticks_done_in_the_store_are_skipped(hourly, tmp_path):
    first = backfill(str(hourly), "2026-03-01T00:00", "2026-03-01T01:00", tz="UTC",
                     clock=now_clock(), state_dir=tmp_path)
    assert len(first.runs) == 2
    again = backfill(str(hourly), "2026-03-01T00:00", "2026-03-01T03:00", tz="UTC",
                     clock=now_clock(), state_dir=tmp_path)
    assert ids(again) == ["hourly-20260301T020000Z", "hourly-20260301T030000Z"]
    assert [t.isoformat() for t in again.done] == ["2026-03-01T00:00:00+00:00",
                                                    "2026-03-01T01:00:00+00:00"]


def test_a_backfill_cut_short_resumes_its_run_and_repeats_nothing(hourly, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("BACKFILL_STOP_AT", "20260301T010000Z")
    cut = backfill(str(hourly), "2026-03-01T00:00", "2026-03-01T02:00", tz="UTC",
                   clock=now_clock(), state_dir=tmp_path)
    assert cut.exit_code == 2
    assert ids(cut) == ["hourly-20260301T000000Z", "hourly-20260301T010000Z"]
    assert cut.runs[1].result.status == "interrupted" and cut.stopped == 1
    monkeypatch.delenv("BACKFILL_STOP_AT")
    out = io.StringIO()
    rest = backfill(str(hourly), "2026-03-01T00:00", "2026-03-01T02:00", tz="UTC",
                    clock=now_clock(), state_dir=tmp_path, out=out)
    assert rest.exit_code == 0
    assert [(r.run_id, r.resumed) for r in rest.runs] == [
        ("hourly-20260301T010000Z", True), ("hourly-20260301T020000Z", False)]
    assert "(1 resumed)" in out.getvalue()
    # the resumed run kept what had completed: fetch was restored, not run again
    assert rest.runs[0].result.outcomes["fetch"].status == "restored"
    assert [t.isoformat() for t in rest.done] == ["2026-03-01T00:00:00+00:00"]


def test_a_backfill_killed_mid_run_resumes_that_run_next_time(hourly, tmp_path):
    """SIGKILL during the second tick's run: the store holds it as running (its claim);
    the same command again resumes it (fetch is not run again) and runs the rest."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "flowdeco", "serve", str(hourly), "--tz", "UTC",
           "--state-dir", str(tmp_path), "-q", "--backfill", "2026-03-01T00:00",
           "2026-03-01T02:00"]
    env = dict(os.environ, BACKFILL_KILL_AT="20260301T010000Z")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    env.pop("BACKFILL_KILL_AT")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 tick(s), 1 already done, 2 to run (1 resumed)" in again.stdout
    assert "resumed 2026-03-01T01:00:00+00:00: run hourly-20260301T010000Z" in again.stdout
    audit = (tmp_path / "runs" / "hourly-20260301T010000Z" / "audit.jsonl").read_text()
    events = [json.loads(line) for line in audit.splitlines()]
    fetched = [e for e in events if e.get("task") == "fetch" and e["event"] == "task_started"]
    assert len(fetched) == 1   # before the kill only: restored on resume
    assert (tmp_path / "runs" / "hourly-20260301T020000Z").exists()


def test_max_active_runs_tick_runs_at_once_each_with_its_own_state(write_module, tmp_path):
    """Two tick runs meet at a barrier: only runs in flight together get past it."""
    flow = write_module("""
        import threading
        from flowdeco import task

        MET = threading.Barrier(2, timeout=20)

        @task(cron="0 * * * *")
        def meet(ctx):
            MET.wait()
            return ctx.run_id
    """, name="pair")
    report = backfill(str(flow), "2026-03-01T00:00", "2026-03-01T01:00", tz="UTC",
                      max_active=2, clock=now_clock(), state_dir=tmp_path)
    assert report.exit_code == 0, [r.result and r.result.outcomes for r in report.runs]
    assert ids(report) == ["pair-20260301T000000Z", "pair-20260301T010000Z"]
    assert [r.result["meet"].result for r in report.runs] == ids(report)
    for run_id in ids(report):
        lines = (tmp_path / "runs" / run_id / "audit.jsonl").read_text().splitlines()
        assert {json.loads(ln)["run_id"] for ln in lines} == {run_id}


def test_a_failed_tick_run_makes_exit_code_1_and_is_not_rerun(write_module, tmp_path):
    flow = write_module("""
        from flowdeco import task

        @task(cron="0 0 * * *")
        def nightly():
            raise RuntimeError("no data")
    """, name="nightly")
    report = backfill(str(flow), "2026-03-01", "2026-03-02", tz="UTC", clock=now_clock(),
                      state_dir=tmp_path)
    assert report.exit_code == 1 and len(report.runs) == 2
    again = backfill(str(flow), "2026-03-01", "2026-03-02", tz="UTC", clock=now_clock(),
                     state_dir=tmp_path)
    assert again.runs == () and len(again.done) == 2 and again.exit_code == 0


@pytest.mark.parametrize("args, named", [
    (["yesterday", "2026-03-01"], "'yesterday'"),
    (["2026-03-01", "2026-13-01"], "'2026-13-01'"),
    (["2026-03-02", "2026-03-01"], "is after TO"),
])
def test_bad_ranges_exit_4_naming_the_value(hourly, tmp_path, capsys, args, named):
    code = cli_main(["serve", str(hourly), "--tz", "UTC", "--state-dir", str(tmp_path),
                     "--backfill", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and named in err[0], err


def test_cli_backfill_with_max_active_and_flag_checks(hourly, tmp_path, capsys):
    code = cli_main(["serve", str(hourly), "--tz", "UTC", "--state-dir", str(tmp_path),
                     "--max-active", "2"])
    assert code == 4 and "--max-active needs --backfill" in capsys.readouterr().err
    code = cli_main(["serve", str(hourly), "--tz", "UTC", "--state-dir", str(tmp_path), "-q",
                     "--backfill", "2026-03-01T00:00", "2026-03-01T02:00", "--max-active", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "hourly-20260301T000000Z", "hourly-20260301T010000Z", "hourly-20260301T020000Z"]


def test_python_api_refuses_a_bad_max_active(hourly):
    with pytest.raises(UsageError, match="max_active"):
        backfill(str(hourly), "2026-03-01", "2026-03-02", max_active=0, state_dir=None)


def test_a_backfill_holds_the_serve_lock(hourly, tmp_path):
    """A serve (or another backfill) of the same flow and state dir would start the same
    tick runs: the second one is refused, naming the lock."""
    from flowdeco import StateError
    from flowdeco.plugins import serve as serve_mod

    lock = serve_mod._ServeLock.acquire("hourly", tmp_path / "serve" / "hourly.lock", tmp_path)
    try:
        with pytest.raises(StateError, match="already served"):
            backfill(str(hourly), "2026-03-01", "2026-03-01", tz="UTC", clock=now_clock(),
                     state_dir=tmp_path)
    finally:
        lock.release()
    assert not (tmp_path / "runs").exists()
