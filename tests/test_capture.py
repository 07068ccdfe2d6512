"""Captured task output (issue 19 item 1): ``logging`` and ``print`` per attempt.

Records and lines written while an attempt runs become ``task_log`` /
``task_output`` audit events of that attempt, on the thread, sync and process
executors; the console shows them for failed tasks only; ``-s`` /
``--capture=no`` turns it all off.
"""

from __future__ import annotations

import logging
import sys
import threading

import pytest

import flowdeco
from flowdeco import cli

EXECUTORS = ["thread", "sync", "process"]


def captured(state_dir, run_id):
    from flowdeco.plugins.audit import audit_path, read_events
    return [e for e in read_events(audit_path(state_dir, run_id))
            if e["event"] in ("task_log", "task_output")]


def brief(events):
    """(event, task, attempt, level, what) for comparing."""
    out = []
    for e in events:
        what = (e["stream"], e["text"]) if e["event"] == "task_output" else \
            (e["logger"], e["message"])
        out.append((e["event"], e["task"], e["attempt"], e["level"], what))
    return out


FLOW = """
    import logging, sys
    from flowdeco import task
    log = logging.getLogger("capflow.etl")

    @task
    def extract():
        print("reading", 3, "rows")
        log.warning("row %d is odd", 2)
        return 3

    @task(retries=1)
    def load(extract, ctx):
        print("partial line", end="")
        print(f"attempt {ctx.attempt}", file=sys.stderr)
        if ctx.attempt == 1:
            log.error("first try fails")
            raise ValueError("flaky")
        return extract
"""


@pytest.mark.parametrize("executor", EXECUTORS)
def test_logging_and_prints_become_events_of_their_attempt(flows, executor, tmp_path):
    path = flows.write(FLOW)
    result = flowdeco.run(str(path), executor=executor, workers=2,
                          state_dir=str(tmp_path / "st"), run_id="r1")
    assert result.ok, result.outcomes
    got = brief(captured(tmp_path / "st", "r1"))
    assert got == [
        ("task_output", "extract", 1, "info", ("stdout", "reading 3 rows")),
        ("task_log", "extract", 1, "warning", ("capflow.etl", "row 2 is odd")),
        ("task_output", "load", 1, "info", ("stderr", "attempt 1")),
        ("task_log", "load", 1, "error", ("capflow.etl", "first try fails")),
        # a last line without a newline is reported when its attempt ends
        ("task_output", "load", 1, "info", ("stdout", "partial line")),
        ("task_output", "load", 2, "info", ("stderr", "attempt 2")),
        ("task_output", "load", 2, "info", ("stdout", "partial line")),
    ]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_captured_events_come_before_the_attempts_end(flows, executor, tmp_path):
    path = flows.write(FLOW)
    flowdeco.run(str(path), executor=executor, state_dir=str(tmp_path / "st"), run_id="r1")
    from flowdeco.plugins.audit import audit_path, read_events
    names = [(e["event"], e.get("task"), e.get("attempt")) for e in
             read_events(audit_path(tmp_path / "st", "r1")) if e.get("task") == "load"]
    retry = names.index(("task_retrying", "load", 1))
    assert ("task_log", "load", 1) in names[:retry]
    assert names.index(("task_output", "load", 2)) < names.index(("task_succeeded", "load", None))


def test_exception_records_carry_the_traceback_text(flows, tmp_path):
    path = flows.write("""
        import logging
        from flowdeco import task

        @task
        def t():
            try:
                1 / 0
            except ZeroDivisionError:
                logging.getLogger("capflow").exception("division failed")
    """)
    flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1")
    (event,) = captured(tmp_path / "st", "r1")
    assert event["message"] == "division failed" and event["level"] == "error"
    assert "ZeroDivisionError" in event["exception"] and "Traceback" in event["exception"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_mapped_instances_get_their_own_output(flows, executor, tmp_path):
    path = flows.write("""
        from flowdeco import task

        @task
        def items():
            return [1, 2, 3]

        @task(map="items")
        def square(items):
            print("square of", items)
            return items * items
    """)
    result = flowdeco.run(str(path), executor=executor, workers=2,
                          state_dir=str(tmp_path / "st"), run_id="r1")
    assert result.results["square"] == [1, 4, 9]
    got = sorted((e["task"], e["text"]) for e in captured(tmp_path / "st", "r1"))
    assert got == [("square[0]", "square of 1"), ("square[1]", "square of 2"),
                   ("square[2]", "square of 3")]


def test_tasks_printing_at_the_same_time_are_told_apart(flows, tmp_path):
    path = flows.write("""
        import threading
        from flowdeco import task
        both = threading.Barrier(2, timeout=30)

        def make(name):
            def body():
                for i in range(50):
                    print(name, i)
                    if i == 0:
                        both.wait()  # the two tasks really overlap from here
                return name
            body.__name__ = name
            return task(body)

        left = make("left")
        right = make("right")
    """)
    result = flowdeco.run(str(path), workers=2, state_dir=str(tmp_path / "st"), run_id="r1")
    assert result.ok
    events = captured(tmp_path / "st", "r1")
    for name in ("left", "right"):
        mine = [e["text"] for e in events if e["task"] == name]
        assert mine == [f"{name} {i}" for i in range(50)]


def test_output_outside_attempts_passes_through_and_streams_come_back(flows, tmp_path, capsys):
    path = flows.write("""
        import threading
        from flowdeco import task
        seen = []

        @task
        def t():
            def other():
                print("from a thread of its own")
            th = threading.Thread(target=other)
            th.start()
            th.join()
            print("from the task")
    """)
    before = sys.stdout, sys.stderr
    flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1")
    assert (sys.stdout, sys.stderr) == before
    out = capsys.readouterr().out
    assert "from a thread of its own" in out and "from the task" not in out
    assert [e["text"] for e in captured(tmp_path / "st", "r1")] == ["from the task"]


@pytest.mark.parametrize("off", [{"capture": "no"}, {"capture": False}, {"no_capture": True}])
def test_capture_off_leaves_output_alone(flows, tmp_path, capsys, off):
    path = flows.write(FLOW)
    stdout = sys.stdout
    flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1", executor="sync", **off)
    assert sys.stdout is stdout
    assert captured(tmp_path / "st", "r1") == []
    assert "reading 3 rows" in capsys.readouterr().out


def test_log_level_lowers_the_root_level_for_the_run_only(flows, tmp_path):
    path = flows.write("""
        import logging
        from flowdeco import task

        @task
        def t():
            logging.getLogger("capflow.lvl").info("an info record")
            logging.getLogger("capflow.lvl").debug("a debug record")
    """)
    root = logging.getLogger()
    level = root.level
    flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="quiet")
    assert captured(tmp_path / "st", "quiet") == []  # WARNING: info is not a record
    flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="info", log_level="INFO")
    assert [e["message"] for e in captured(tmp_path / "st", "info")] == ["an info record"]
    assert root.level == level


def test_a_bad_log_level_is_a_usage_error(flows, tmp_path):
    path = flows.write(FLOW)
    with pytest.raises(flowdeco.FlowError, match="--log-level 'LOUD'"):
        flowdeco.run(str(path), state_dir=None, log_level="LOUD")


def test_records_outside_attempts_still_reach_the_last_resort_handler(capsys, monkeypatch):
    from flowdeco.plugins import capture
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # (pytest's own are there)
    capture.install()
    try:
        logging.getLogger("capflow.outside").warning("nobody configured logging")
    finally:
        capture.uninstall()
    assert "nobody configured logging" in capsys.readouterr().err


# --------------------------------------------------------------------------- console


def test_console_shows_captured_output_of_failed_tasks_only(flows, capsys):
    path = flows.write("""
        import logging
        from flowdeco import task

        @task
        def fine():
            print("all good here")
            logging.getLogger("capflow").warning("a warning of a task that succeeds")

        @task
        def broken(fine):
            print("about to fail")
            logging.getLogger("capflow").error("it is broken")
            raise RuntimeError("boom")
    """)
    code = cli.main([str(path), "--state-dir", "st", "--no-progress"])
    assert code == 1
    out = capsys.readouterr()
    console = out.out + out.err
    assert "all good here" not in console
    assert "a warning of a task that succeeds" not in console
    assert "captured output of broken" in console
    assert "[attempt 1] stdout: about to fail" in console
    assert "[attempt 1] ERROR capflow: it is broken" in console
    section = console.index("captured output of broken")
    assert console.index("task_failed") < section  # after the failure line


def test_dash_s_shows_prints_as_they_happen(flows, capsys):
    path = flows.write(FLOW)
    code = cli.main([str(path), "--state-dir", "st", "--no-progress", "-s"])
    assert code == 0
    out = capsys.readouterr()
    assert "reading 3 rows" in out.out
    assert "captured output" not in out.err


def test_nothing_reports_nothing_is_captured(flows, capsys):
    path = flows.write(FLOW)
    flowdeco.run(str(path), state_dir=None, executor="sync")  # no trail, no console
    assert "reading 3 rows" in capsys.readouterr().out


def test_process_workers_keep_their_capture_across_runs(flows, tmp_path):
    """A worker process installs the capture once; two runs on fresh pools both capture."""
    path = flows.write(FLOW)
    for run_id in ("p1", "p2"):
        flowdeco.run(str(path), executor="process", workers=1,
                     state_dir=str(tmp_path / "st"), run_id=run_id)
        assert len(captured(tmp_path / "st", run_id)) == 7


def test_concurrent_runs_share_one_installation(flows, tmp_path):
    path = flows.write(FLOW)
    stdout = sys.stdout
    errors: list[BaseException] = []

    def go(run_id):
        try:
            flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id=run_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sys.stdout is stdout
    for i in range(3):
        assert len(captured(tmp_path / "st", f"c{i}")) == 7


HOLD = '''
import os, time
from flowdeco import task

@task
def hold():
    print("inside hold")
    open({marker!r}, "w").close()
    end = time.monotonic() + 30
    while not os.path.exists({release!r}) and time.monotonic() < end:
        time.sleep(0.01)
    return 2
'''


def test_the_stopping_notice_is_not_captured_into_the_running_sync_task(tmp_path):
    """Ctrl-C during a task on the sync executor: the engine's notice (printed from the
    signal handler, on the thread running the task) reaches the console at once."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    marker, release = tmp_path / "holding", tmp_path / "release"
    flow = tmp_path / "hold_flow.py"
    flow.write_text(HOLD.format(marker=str(marker), release=str(release)))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), str(root / "plugins" / "flowdeco-dask"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", str(flow), "--executor", "sync",
                             "--no-state", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        end = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.01)
        assert marker.exists()
        proc.send_signal(signal.SIGINT)
        seen: list[str] = []
        found = threading.Event()

        def read():
            for line in proc.stderr:
                seen.append(line)
                if "stopping" in line:
                    found.set()
                    return

        threading.Thread(target=read, daemon=True).start()
        assert found.wait(10), "".join(seen)
        release.touch()
        out, _ = proc.communicate(timeout=30)
    finally:
        release.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 2
    assert "inside hold" not in out  # captured: the task succeeded


def test_the_stopping_notice_is_never_captured_whatever_stream_the_console_holds(
        flows, tmp_path, capsys):
    """Even when the console's stream is the capture proxy (a capture already installed
    when the run's console was set up), the engine's own notice printed from the signal
    handler, on the thread running a sync task, is not taken for the task's output."""
    import signal

    from flowdeco.plugins import capture
    path = flows.write("""
        import os, signal
        from flowdeco import task

        @task
        def interrupts_itself():
            os.kill(os.getpid(), signal.SIGTERM)
            return 1
    """)
    capture.install()  # sys.stderr is the proxy when the audit console takes it
    try:
        result = flowdeco.run(str(path), executor="sync", state_dir=str(tmp_path / "st"),
                              run_id="r1", log_format="console")
    finally:
        capture.uninstall()
    assert result.status == "interrupted"
    assert [e["text"] for e in captured(tmp_path / "st", "r1")] == []
    assert "stopping" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not None
