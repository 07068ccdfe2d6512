"""``flowdeco serve``: runs at cron ticks, missed ticks, catch-up, stopping (issue 6).

Schedules run on a FakeClock whose wall time is set near the interesting
moment; the fake clock jumps to each tick, so hours pass instantly.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flowdeco import FakeClock, UsageError, hookimpl
from flowdeco.cli import main as cli_main
from flowdeco.manager import make_pluginmanager
from flowdeco.plugins import serve as serve_mod
from flowdeco.plugins.serve import serve, tick_run_id

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc

HOURLY = """
    from flowdeco import task

    @task
    def fetch():
        return 21

    @task(cron="0 * * * *")
    def report(ctx, fetch):
        return {"run": ctx.run_id, "value": fetch * 2}

    @task
    def unrelated():
        return "not scheduled"
"""


def clock_at(text: str) -> FakeClock:
    """A fake clock whose wall time is the ISO datetime ``text``."""
    return FakeClock(wall=dt.datetime.fromisoformat(text).timestamp())


def wall(clock: FakeClock) -> str:
    return dt.datetime.fromtimestamp(clock.time(), UTC).isoformat()


@pytest.fixture
def hourly(write_module):
    return write_module(HOURLY, name="hourly")


def test_one_run_per_tick_with_its_own_id_and_state(hourly, tmp_path):
    clock = clock_at("2026-06-01T10:20:00+00:00")
    out = io.StringIO()
    report = serve(str(hourly), clock=clock, max_ticks=3, tz="UTC", state_dir=tmp_path,
                   out=out)
    assert report.reason == "max_ticks" and report.exit_code == 0
    ids = [r.run_id for r in report.runs]
    assert ids == ["hourly-20260601T110000Z", "hourly-20260601T120000Z",
                   "hourly-20260601T130000Z"]
    for r in report.runs:
        assert r.tasks == ("report",)
        assert r.result.ok
        # the cron task and what it needs; nothing else
        assert dict(r.result.results) == {"fetch": 21, "report": {"run": r.run_id, "value": 42}}
        assert (tmp_path / "runs" / r.run_id / "audit.jsonl").exists()
    assert [r.tick.isoformat() for r in report.runs] == [
        "2026-06-01T11:00:00+00:00", "2026-06-01T12:00:00+00:00", "2026-06-01T13:00:00+00:00"]
    assert wall(clock) == "2026-06-01T13:00:00+00:00"
    text = out.getvalue()
    assert "serving flow 'hourly'" in text
    assert "run hourly-20260601T120000Z: 2 succeeded" in text


def test_whole_flow_on_a_cron_option(write_module):
    path = write_module("""
        from flowdeco import task

        @task
        def a():
            return 1

        @task
        def b(a):
            return a + 1
    """, name="plain_flow")
    clock = clock_at("2026-06-01T10:01:00+00:00")
    report = serve(str(path), cron="*/15 * * * *", tz="UTC", clock=clock, max_ticks=2,
                   state_dir=None)
    assert [r.run_id for r in report.runs] == ["plain_flow-20260601T101500Z",
                                               "plain_flow-20260601T103000Z"]
    assert all(r.tasks == () and dict(r.result.results) == {"a": 1, "b": 2}
               for r in report.runs)


def test_a_yearly_schedule_is_instant_on_the_fake_clock(write_module):
    path = write_module("""
        from flowdeco import task

        @task
        def a():
            return 1
    """, name="yearly_flow")
    t0 = time.perf_counter()
    report = serve(str(path), cron="@yearly", tz="UTC", max_ticks=2, state_dir=None,
                   clock=clock_at("2026-06-01T00:00:00+00:00"))
    assert [r.run_id for r in report.runs] == ["yearly_flow-20270101T000000Z",
                                               "yearly_flow-20280101T000000Z"]
    assert time.perf_counter() - t0 < 1.0


def test_a_tick_run_that_cannot_start_is_reported_and_serve_goes_on(hourly, tmp_path):
    # a claim left by a serve killed before the run was recorded, for a task since removed
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "hourly.json").write_text(json.dumps({
        "version": 1, "flow": "hourly", "last_tick": 1_780_000_000.0,
        "running": {"run_id": "hourly-gone", "tick": 1_780_000_000.0, "tasks": ["removed"]}}))
    out = io.StringIO()
    report = serve(str(hourly), clock=clock_at("2026-05-28T20:30:00+00:00"), max_ticks=1,
                   tz="UTC", state_dir=tmp_path, catch_up=True, out=out)
    assert report.missed == (dt.datetime.fromtimestamp(1_780_000_000.0, UTC),)
    failed, ok = report.runs
    assert failed.run_id == "hourly-gone" and failed.catch_up
    assert failed.result is None and "'removed' are no longer in flow 'hourly'" in failed.error
    assert ok.result.ok
    assert "could not start" in out.getvalue()
    # reported once: the claim is gone
    saved = json.loads((tmp_path / "serve" / "hourly.json").read_text())
    assert saved["running"] is None


def test_a_claimed_tick_whose_run_was_never_recorded_is_missed_and_caught_up(hourly, tmp_path):
    tick = dt.datetime(2026, 6, 1, 11, tzinfo=UTC)
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "hourly.json").write_text(json.dumps({
        "version": 1, "flow": "hourly", "last_tick": tick.timestamp(),
        "running": {"run_id": tick_run_id("hourly", tick), "tick": tick.timestamp(),
                    "tasks": ["report"]}}))
    clock = clock_at("2026-06-01T12:30:00+00:00")
    out = io.StringIO()
    down = serve(str(hourly), clock=clock, max_ticks=0, tz="UTC", state_dir=tmp_path, out=out)
    assert [t.strftime("%H:%M") for t in down.missed] == ["11:00", "12:00"]
    assert down.unfinished is None
    assert "2 tick(s) of flow 'hourly' missed" in out.getvalue()
    caught = serve(str(hourly), clock=clock, max_ticks=0, tz="UTC", state_dir=tmp_path,
                   catch_up=True)
    assert [(r.run_id, r.catch_up, r.resumed, r.result.ok) for r in caught.runs] == [
        ("hourly-20260601T110000Z", True, False, True),
        ("hourly-20260601T120000Z", True, False, True)]
    assert serve(str(hourly), clock=clock, max_ticks=0, tz="UTC", state_dir=tmp_path,
                 catch_up=True).runs == ()


def test_a_clock_set_back_across_a_restart_never_serves_a_claimed_tick_again(hourly, tmp_path):
    first = serve(str(hourly), clock=clock_at("2026-06-01T10:20:00+00:00"), max_ticks=1,
                  tz="UTC", state_dir=tmp_path)
    assert [r.run_id for r in first.runs] == ["hourly-20260601T110000Z"]
    back = serve(str(hourly), clock=clock_at("2026-06-01T10:50:00+00:00"), max_ticks=1,
                 tz="UTC", state_dir=tmp_path)
    assert [(r.run_id, r.error) for r in back.runs] == [("hourly-20260601T120000Z", None)]


@pytest.mark.parametrize("fields, words", [
    ({"last_tick": 1e300}, ["last_tick"]),
    ({"last_tick": float("nan")}, ["last_tick"]),
    ({"running": "yes"}, ["running is not an object"]),
    ({"running": {"tick": 1.0, "tasks": []}}, ["running.run_id"]),
    ({"running": {"run_id": "../x", "tick": 1.0, "tasks": []}},
     ["running.run_id", "invalid run id"]),
    ({"running": {"run_id": "x", "tick": "soon", "tasks": []}}, ["running.tick"]),
    ({"running": {"run_id": "x", "tick": 1e300, "tasks": []}}, ["running.tick"]),
    ({"running": {"run_id": "x", "tick": 1.0, "tasks": "report"}}, ["running.tasks"]),
])
def test_a_damaged_serve_state_is_one_clear_error(hourly, tmp_path, capsys, fields, words):
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "hourly.json").write_text(json.dumps(
        {"version": 1, "flow": "hourly", "last_tick": 1.0, "running": None, **fields}))
    rc = serve_mod.main([str(hourly), "--state-dir", str(tmp_path), "--max-ticks", "1"],
                        make_pluginmanager(), clock=FakeClock())
    assert rc == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert "unreadable serve state" in line and "delete it" in line
    for w in words:
        assert w in line


class _Lines(io.StringIO):
    """An ``out`` stream that tells when serve is serving (its lock is held by then)."""

    def __init__(self) -> None:
        super().__init__()
        self.serving = threading.Event()

    def write(self, text: str) -> int:
        if "serving flow" in text:
            self.serving.set()
        return super().write(text)


def _second_serve(hourly: Path, state: Path) -> int:
    return serve_mod.main([str(hourly), "--state-dir", str(state), "--max-ticks", "1"],
                          make_pluginmanager(), clock=clock_at("2026-06-01T10:20:00+00:00"))


def test_a_second_serve_of_the_same_flow_and_state_dir_is_refused(hourly, tmp_path, capsys):
    box: list = []
    out = _Lines()
    t = threading.Thread(target=serve, args=(str(hourly),),
                         kwargs=dict(tz="UTC", state_dir=tmp_path, scheduler=box, out=out))
    t.start()       # real time: it waits for the next hour (stopped long before)
    try:
        assert out.serving.wait(10)
        rc = _second_serve(hourly, tmp_path)
    finally:
        box[0].stop()
        t.join(10)
    assert not t.is_alive()
    assert rc == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert "flow 'hourly' is already served from state dir" in line
    assert _second_serve(hourly, tmp_path) == 0      # released when it stopped

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", "serve", str(hourly), "--tz",
                             "UTC", "--state-dir", str(tmp_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("flowdeco serve: serving flow 'hourly'")
        capsys.readouterr()
        assert _second_serve(hourly, tmp_path) == 4
        assert "is already served" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.communicate()
    assert _second_serve(hourly, tmp_path) == 0      # the kernel dropped it with serve


def test_a_tick_that_cannot_be_claimed_is_not_run(hourly, tmp_path, capsys, monkeypatch):
    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serve_mod.os, "replace", full)
    rc = serve_mod.main([str(hourly), "--state-dir", str(tmp_path), "--max-ticks", "1", "--tz",
                         "UTC"], make_pluginmanager(),
                        clock=clock_at("2026-06-01T10:20:00+00:00"))
    monkeypatch.undo()
    assert rc == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert "cannot claim tick 2026-06-01T11:00:00+00:00 of flow 'hourly'" in line
    assert "No space left on device" in line and "--catch-up" in line
    assert not (tmp_path / "runs").exists()              # nothing ran unclaimed
    assert not (tmp_path / "serve" / "hourly.json").exists()


def test_schedules_that_fall_together_make_one_run(write_module):
    path = write_module("""
        from flowdeco import task

        @task(cron="*/10 * * * *")
        def ten():
            return 10

        @task(cron="*/15 * * * *")
        def fifteen():
            return 15
    """)
    clock = clock_at("2026-06-01T10:00:30+00:00")
    report = serve(str(path), tz="UTC", clock=clock, max_ticks=4, state_dir=None)
    got = [(r.tick.strftime("%H:%M"), r.tasks, sorted(r.result.results)) for r in report.runs]
    assert got == [("10:10", ("ten",), ["ten"]), ("10:15", ("fifteen",), ["fifteen"]),
                   ("10:20", ("ten",), ["ten"]),
                   ("10:30", ("fifteen", "ten"), ["fifteen", "ten"])]


@pytest.mark.parametrize("start, expected", [
    # spring forward: 02:00 CET -> 03:00 CEST, no 02:00 tick
    ("2026-03-29T00:30:00+01:00", ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
                                   "2026-03-29T04:00:00+02:00"]),
    # fall back: 03:00 CEST -> 02:00 CET, 02:00 happens twice and both run
    ("2026-10-25T01:30:00+02:00", ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00",
                                   "2026-10-25T03:00:00+01:00"]),
])
def test_serve_across_a_dst_change(hourly, start, expected):
    report = serve(str(hourly), tz="Europe/Berlin", clock=clock_at(start), max_ticks=3,
                   state_dir=None)
    assert [r.tick.isoformat() for r in report.runs] == expected
    ids = [r.run_id for r in report.runs]
    assert len(set(ids)) == 3       # ids are the ticks in UTC: distinct in the repeated hour
    assert all(r.result.ok for r in report.runs)


def test_ticks_passing_during_a_run_are_coalesced(write_module):
    path = write_module("""
        from flowdeco import task

        CLOCK = None
        STARTS = []

        @task(cron="*/10 * * * *")
        def slow(ctx):
            STARTS.append(CLOCK.time())
            if len(STARTS) == 1:
                CLOCK.advance(25 * 60)      # the first run takes 25 minutes
            return ctx.run_id
    """, name="slowmod")
    import slowmod
    clock = slowmod.CLOCK = clock_at("2026-06-01T10:05:00+00:00")
    report = serve(str(path), tz="UTC", clock=clock, max_ticks=3, state_dir=None)
    assert [r.tick.strftime("%H:%M") for r in report.runs] == ["10:10", "10:30", "10:40"]
    assert report.skipped == 1      # 10:20 passed during the first run
    starts = [dt.datetime.fromtimestamp(t, UTC).strftime("%H:%M") for t in slowmod.STARTS]
    assert starts == ["10:10", "10:35", "10:40"]   # late means at once, once


def test_missed_ticks_are_reported_and_caught_up(hourly, tmp_path):
    clock = clock_at("2026-06-01T10:20:00+00:00")
    first = serve(str(hourly), clock=clock, max_ticks=1, tz="UTC", state_dir=tmp_path)
    assert [r.run_id for r in first.runs] == ["hourly-20260601T110000Z"]
    assert first.missed == ()
    saved = json.loads((tmp_path / "serve" / "hourly.json").read_text())
    assert saved["last_tick_utc"] == "2026-06-01T11:00:00+00:00" and saved["running"] is None
    assert oct((tmp_path / "serve" / "hourly.json").stat().st_mode & 0o777) == "0o600"

    clock.advance(3 * 3600 + 600)           # down from 11:00 to 14:10
    out = io.StringIO()
    down = serve(str(hourly), clock=clock, max_ticks=0, tz="UTC", state_dir=tmp_path, out=out)
    assert [t.strftime("%H:%M") for t in down.missed] == ["12:00", "13:00", "14:00"]
    assert down.runs == ()
    assert "3 tick(s) of flow 'hourly' missed while serve was down" in out.getvalue()
    assert "--catch-up" in out.getvalue()

    caught = serve(str(hourly), clock=clock, max_ticks=0, tz="UTC", state_dir=tmp_path,
                   catch_up=True)
    assert [(r.run_id, r.catch_up, r.result.ok) for r in caught.runs] == [
        ("hourly-20260601T120000Z", True, True), ("hourly-20260601T130000Z", True, True),
        ("hourly-20260601T140000Z", True, True)]
    assert serve(str(hourly), clock=clock, max_ticks=0, tz="UTC",
                 state_dir=tmp_path).missed == ()


def test_without_state_nothing_is_recorded(hourly, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = clock_at("2026-06-01T10:20:00+00:00")
    serve(str(hourly), clock=clock, max_ticks=1, tz="UTC", state_dir=None)
    clock.advance(5 * 3600)
    assert serve(str(hourly), clock=clock, max_ticks=0, tz="UTC", state_dir=None).missed == ()
    assert not (tmp_path / ".flowdeco").exists()


class InterruptOnce:
    """Interrupts the first run while ``fetch`` runs (like Ctrl-C in flight)."""

    def __init__(self) -> None:
        self.done = False

    @hookimpl
    def flowdeco_report(self, run, event):
        if not self.done and event.name == "task_started" and event.task == "fetch":
            self.done = True
            run.stop(interrupted=True)


def test_an_interrupted_tick_run_stops_serve_and_catch_up_resumes_it(hourly, tmp_path):
    clock = clock_at("2026-06-01T10:20:00+00:00")
    first = serve(str(hourly), clock=clock, max_ticks=5, tz="UTC", state_dir=tmp_path,
                  plugins=[InterruptOnce()])
    assert first.reason == "interrupted" and first.exit_code == 2
    (cut,) = first.runs
    assert cut.result.status == "interrupted"
    assert dict(cut.result.results) == {"fetch": 21}
    saved = json.loads((tmp_path / "serve" / "hourly.json").read_text())
    assert saved["running"]["run_id"] == cut.run_id

    out = io.StringIO()
    again = serve(str(hourly), clock=clock, max_ticks=1, tz="UTC", state_dir=tmp_path,
                  catch_up=True, out=out)
    assert again.unfinished == cut.run_id
    resumed, nxt = again.runs
    assert (resumed.run_id, resumed.resumed, resumed.catch_up) == (cut.run_id, True, True)
    assert resumed.result.outcomes["fetch"].status == "restored"
    assert resumed.result.outcomes["report"].status == "succeeded"
    assert nxt.run_id == "hourly-20260601T120000Z" and nxt.result.ok
    assert f"run {cut.run_id} did not finish" in out.getvalue()


def test_stop_from_another_thread_while_waiting(hourly):
    box: list = []
    result: dict = {}

    def target():
        result["report"] = serve(str(hourly), cron="0 0 1 1 *", tz="UTC", state_dir=None,
                                 scheduler=box)

    t = threading.Thread(target=target)
    t.start()
    deadline = time.monotonic() + 10
    while not box and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    box[0].stop()
    t.join(10)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 1.0
    assert result["report"].reason == "stopped" and result["report"].runs == ()


def test_usage_errors(write_module, hourly):
    path = write_module("""
        from flowdeco import task

        @task
        def a():
            return 1
    """)
    with pytest.raises(UsageError, match="nothing to serve.*--cron"):
        serve(str(path), state_dir=None, max_ticks=1)
    with pytest.raises(UsageError, match="unknown time zone"):
        serve(str(hourly), tz="Mars/Olympus", state_dir=None, max_ticks=1)
    with pytest.raises(UsageError, match="run_id"):
        serve(str(hourly), run_id="x", state_dir=None, max_ticks=1)
    assert tick_run_id("my flow!", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == \
        "my_flow_-20260102T030405Z"


# --------------------------------------------------------------------------- CLI


def test_cli_serve_on_a_fake_clock(hourly, tmp_path, capsys):
    pm = make_pluginmanager()
    rc = serve_mod.main([str(hourly), "--tz", "UTC", "--max-ticks", "2", "--state-dir",
                         str(tmp_path / "st"), "-q"], pm,
                        clock=clock_at("2026-06-01T10:20:00+00:00"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "tick 2026-06-01T11:00:00+00:00: run hourly-20260601T110000Z: 2 succeeded" in out
    assert "run hourly-20260601T120000Z" in out
    assert (tmp_path / "st" / "runs" / "hourly-20260601T120000Z" / "audit.jsonl").exists()


@pytest.mark.parametrize("args, words", [
    (["--run-id", "x"], ["--run-id"]),
    (["--tz", "Nowhere/Land"], ["time zone"]),
    (["--max-ticks", "0"], ["max-ticks"]),
    (["--cron", "not a cron"], ["--cron", "invalid cron"]),
])
def test_cli_serve_usage_errors(hourly, capsys, args, words):
    rc = serve_mod.main([str(hourly), "--no-state", *args], make_pluginmanager(),
                        clock=FakeClock())
    assert rc == 4
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_serve_is_a_listed_command(capsys):
    assert cli_main(["--help"]) == 0
    assert "serve (run the flow at each tick of its cron schedules)" in capsys.readouterr().out
    assert cli_main(["serve", "--help"]) == 0
    assert "--catch-up" in capsys.readouterr().out


def test_sigterm_stops_serve_cleanly(tmp_path):
    mod = tmp_path / "yearly.py"
    mod.write_text(textwrap.dedent("""
        from flowdeco import task

        @task
        def a():
            return 1
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", "serve", str(mod), "--cron",
                             "0 0 1 1 *", "--tz", "UTC", "--no-state"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("flowdeco serve: serving flow 'yearly'")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
    assert rc == 0
    assert elapsed < 1.0
    assert "flowdeco serve: stopped" in out


# --------------------------------------------------------------------------- kills (issue 14)
#
# A tick is claimed (STATE_DIR/serve/FLOW.json) before its run is recorded in
# the store.  serve is killed (SIGKILL, like the OOM killer) at a chosen moment
# by a plugin that stops it there and says so in a marker file; the next start
# with --catch-up must run (or resume) the claimed tick, exactly once.

TICKER = """
    import os

    from flowdeco import task

    @task(cron="* * * * * *")
    def beat(ctx):
        with open(os.environ["TICK_LOG"], "a") as f:
            f.write(ctx.run_id + "\\n")
        return ctx.run_id
"""

PAUSER = """
    import os
    import time

    from flowdeco import hookimpl

    def _pause(where, run_id):
        if os.environ.get("PAUSE_AT") != where or os.path.exists(os.environ["PAUSE_MARK"]):
            return
        with open(os.environ["PAUSE_MARK"] + ".tmp", "w") as f:
            f.write(run_id)
        os.replace(os.environ["PAUSE_MARK"] + ".tmp", os.environ["PAUSE_MARK"])
        time.sleep(60)          # the test kills us here

    @hookimpl
    def flowdeco_configure(config):
        run_id = config.getoption("run_id") or config.getoption("resume")
        if run_id:              # a tick's session (the first session only collects)
            _pause("configure", run_id)

    @hookimpl(trylast=True)
    def flowdeco_run_start(run):
        _pause("run_start", run.run_id)

    @hookimpl(tryfirst=True)
    def flowdeco_unconfigure(config):
        run_id = config.getoption("run_id") or config.getoption("resume")
        if run_id:
            _pause("unconfigure", run_id)
"""


def _ticker(tmp_path: Path) -> tuple[Path, dict]:
    (tmp_path / "ticker.py").write_text(textwrap.dedent(TICKER))
    (tmp_path / "pauser.py").write_text(textwrap.dedent(PAUSER))
    env = dict(os.environ, TICK_LOG=str(tmp_path / "ticks.log"),
               PAUSE_MARK=str(tmp_path / "paused"),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path),
                                           os.environ.get("PYTHONPATH", "")]))
    return tmp_path / "ticker.py", env


def _serve_cmd(mod: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flowdeco", "serve", str(mod), "--tz", "UTC",
            "--state-dir", str(state), *extra]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _stored_runs(state: Path) -> dict[str, str]:
    from flowdeco.plugins.state import SQLiteStore

    store = SQLiteStore(state)
    try:
        if not store.open(create=False):
            return {}
        return {s.run.run_id: s.run.status for s in store.list_runs()}
    finally:
        store.close()


@pytest.mark.parametrize("where", ["configure", "run_start", "unconfigure"])
def test_a_tick_claimed_when_serve_is_killed_runs_exactly_once(tmp_path, where):
    """configure: claimed, run not recorded yet; run_start: recorded, nothing ran;
    unconfigure: the run ended and is recorded, the claim is not cleared yet."""
    mod, env = _ticker(tmp_path)
    state = tmp_path / "st"
    proc = subprocess.Popen(_serve_cmd(mod, state, "-p", "pauser"), cwd=tmp_path,
                            env=dict(env, PAUSE_AT=where), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "paused", proc)
    finally:
        proc.kill()
        proc.communicate()
    claimed = (tmp_path / "paused").read_text()
    saved = json.loads((state / "serve" / "ticker.json").read_text())
    assert saved["running"]["run_id"] == claimed      # the kill hit the claimed tick

    again = subprocess.run(_serve_cmd(mod, state, "--catch-up", "--max-ticks", "1"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    log = (tmp_path / "ticks.log").read_text().split()
    assert log.count(claimed) == 1, again.stdout
    assert len(log) == len(set(log))                   # no tick ran twice
    runs = _stored_runs(state)
    assert runs[claimed] == "succeeded"
    assert set(runs.values()) == {"succeeded"}
    if where == "unconfigure":    # it had finished: nothing to report, nothing run again
        assert "did not finish" not in again.stdout
        assert f"run {claimed}" not in again.stdout
    elif where == "configure":    # never started: it is a missed tick, run by --catch-up
        tick = dt.datetime.strptime(claimed[-16:], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert f"caught up {tick.isoformat()}: run {claimed}" in again.stdout
    else:                         # recorded, cut short: resumed
        assert f"run {claimed} did not finish" in again.stdout
        assert "resumed " in again.stdout


# --------------------------------------------------------------------------- cron that never fires

NEVER = "1 1 */100 * MON#4"     # day-of-month 1 only AND the 4th Monday (a '*' field: both)


@pytest.mark.parametrize("how", ["serve-task", "serve-cron", "run", "collect-only"])
def test_a_cron_expression_that_never_fires_is_a_usage_error(tmp_path, how):
    mod = tmp_path / "nevermod.py"
    cron = "*/5 * * * *" if how == "serve-cron" else NEVER
    mod.write_text(textwrap.dedent(f"""
        from flowdeco import task

        @task(cron={cron!r})
        def never():
            return 1
    """))
    args = {"serve-task": ["serve", str(mod)], "serve-cron": ["serve", str(mod), "--cron", NEVER],
            "run": [str(mod)], "collect-only": [str(mod), "--collect-only"]}[how]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "flowdeco", *args, "--tz", "UTC", "--no-state"]
                          if how.startswith("serve") else
                          [sys.executable, "-m", "flowdeco", *args, "--no-state"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert NEVER in lines[0] and "never" in lines[0]
    assert ("--cron" if how == "serve-cron" else "task 'never'") in lines[0]
    assert "Traceback" not in proc.stderr


def test_serve_killed_at_random_moments_loses_and_repeats_no_tick(tmp_path):
    """A seeded campaign: serve (a tick a second) is SIGKILLed at random moments and
    restarted with --catch-up.  The tick claimed at each kill ends up run, every run
    ends ``succeeded``, and a tick's task runs again only when a kill cut its run
    short (at most once per kill).  FLOWDECO_SERVE_KILLS=N runs a longer campaign."""
    import random

    kills = int(os.environ.get("FLOWDECO_SERVE_KILLS", "12"))
    rng = random.Random(1414)
    mod, env = _ticker(tmp_path)
    state = tmp_path / "st"
    claims: list[tuple[str, str | None]] = []       # (claimed run id, its status at the kill)
    for _ in range(kills):
        proc = subprocess.Popen(_serve_cmd(mod, state, "--catch-up"), cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().startswith("flowdeco serve: serving flow"), \
                proc.communicate()
            # a random moment in the first 20 ms after a tick (ticks are on whole
            # seconds): claim, run start, the run itself, the claim's clearing
            now = time.time()
            time.sleep(1 + int(now) - now + rng.uniform(0.0, 0.02))
        finally:
            proc.kill()
            proc.communicate()
        saved = json.loads((state / "serve" / "ticker.json").read_text())
        if saved["running"]:
            claimed = saved["running"]["run_id"]
            claims.append((claimed, _stored_runs(state).get(claimed)))
    final = subprocess.run(_serve_cmd(mod, state, "--catch-up", "--max-ticks", "1"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    runs = _stored_runs(state)
    log = (tmp_path / "ticks.log").read_text().split()
    twice = {r for r in log if log.count(r) > 1}
    lost = [c for c, _ in claims if runs.get(c) != "succeeded"]
    print(f"\n{kills} kills; claimed at the kill: {len(claims)} (run not recorded yet: "
          f"{sum(s is None for _, s in claims)}, recorded running: "
          f"{sum(s == 'running' for _, s in claims)}, ended: "
          f"{sum(s == 'succeeded' for _, s in claims)}); runs: {len(runs)}; "
          f"claimed ticks never run: {len(lost)}; tasks run twice: {len(twice)}")
    assert claims                                   # some kills hit a claimed tick
    assert lost == [], "ticks claimed at a kill were never run"
    assert set(runs.values()) == {"succeeded"}, runs
    assert set(log) == set(runs)                    # every recorded run ran its task
    assert all(log.count(r) == 2 for r in twice)
    assert twice <= {c for c, status in claims if status == "running"}


@pytest.mark.parametrize("flag", ["--cron", "--tz"])
def test_a_huge_cron_or_zone_is_echoed_cut_to_a_readable_line(hourly, capsys, flag):
    rc = serve_mod.main([str(hourly), "--no-state", flag, "1" * 10_000 + "\n2"],
                        make_pluginmanager(), clock=FakeClock())
    assert rc == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert "'1111" in line and "...'" in line and len(line) < 400
