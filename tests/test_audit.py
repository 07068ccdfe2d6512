"""The audit trail (contract §6): file, permissions, events, masking, console rendering."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path


import flowdeco
from flowdeco import Secret, cli

# --------------------------------------------------------------------------- helpers


def audit_file(state_dir: Path, run_id: str) -> Path:
    return state_dir / "runs" / run_id / "audit.jsonl"


def read_audit(state_dir: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in audit_file(state_dir, run_id).read_text().splitlines()
            if line.strip()]


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def task_events(events: list[dict]) -> list[tuple]:
    """(event, task) pairs of the contract's task lifecycle events."""
    return [(e["event"], e.get("task")) for e in events
            if e["event"].startswith(("run_", "task_"))]


TWO_TASKS = """
    from flowdeco import task

    @task
    def extract():
        return 1

    @task
    def load(extract):
        return extract + 1
"""

FAILING = """
    from flowdeco import task

    @task
    def first():
        return 1

    @task
    def explode(first):
        raise ValueError("bad record 7")

    @task
    def downstream(explode):
        return 3

    @task
    def side():
        return 4
"""

LOGGING = """
    from flowdeco import task

    @task
    def talk(ctx):
        ctx.log.info("hello", k=1)
        ctx.log.warning("careful", n=[1, 2])
        return ctx.run_id
"""

SECRET = """
    from flowdeco import task

    @task
    def use(ctx, token):
        assert token.reveal() == "hunter2"
        ctx.log.info("using", token=token)
        ctx.log.info("nested", cfg={"auth": token, "list": [token, (token,)]})
        ctx.log.info("formatted %s", token=token)
        ctx.log.warning("text", msg=f"token={token}")
        return len(token.reveal())

    @task
    def fail_with(token):
        raise ValueError(f"cannot use {token}")
"""


# --------------------------------------------------------------------------- the file


def test_cli_writes_private_audit_file(flows, capsys):
    path = flows.write(TWO_TASKS)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "r1"]) == 0
    capsys.readouterr()
    st = flows.cwd / "st"
    f = audit_file(st, "r1")
    assert f.is_file()
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for folder in (st, st / "runs", st / "runs" / "r1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_permissions_do_not_depend_on_umask(flows):
    path = flows.write(TWO_TASKS)
    old = os.umask(0)
    try:
        flowdeco.run(str(path), state_dir=flows.cwd / "st", run_id="open")
    finally:
        os.umask(old)
    f = audit_file(flows.cwd / "st", "open")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700


def test_every_line_has_event_timestamp_run_id(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "r-2.x"]) == 1
    capsys.readouterr()
    raw = audit_file(flows.cwd / "st", "r-2.x").read_text().splitlines()
    assert raw
    for line in raw:
        obj = json.loads(line)
        assert isinstance(obj, dict)
        assert isinstance(obj["event"], str) and obj["event"]
        assert obj["run_id"] == "r-2.x"
        ts = obj["timestamp"]
        assert ts.endswith("Z") or ts.endswith("+00:00"), ts
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        assert when.utcoffset() == dt.timedelta(0)
        assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 600


def test_event_sequence_for_two_task_flow(flows, capsys):
    path = flows.write(TWO_TASKS)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "seq"]) == 0
    capsys.readouterr()
    events = read_audit(flows.cwd / "st", "seq")
    assert task_events(events) == [
        ("run_started", None),
        ("task_started", "extract"), ("task_succeeded", "extract"),
        ("task_started", "load"), ("task_succeeded", "load"),
        ("run_finished", None),
    ]
    started = [e for e in events if e["event"] == "task_started"]
    assert all(e["attempt"] == 1 for e in started)
    succeeded = [e for e in events if e["event"] == "task_succeeded"]
    assert all(e["attempts"] == 1 for e in succeeded)
    # the worker that ran the attempt (the dashboard's timeline lanes)
    assert all(isinstance(e["worker"], str) and e["worker"] for e in succeeded)
    assert "worker" not in started[0]  # known only when the attempt ends
    assert events[-1]["status"] == "succeeded"
    assert "task" not in events[0] and "task" not in events[-1]


def test_failed_task_event_has_attempts_error_and_traceback(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "f1", "-w", "1"]) == 1
    capsys.readouterr()
    events = read_audit(flows.cwd / "st", "f1")
    failed = [e for e in events if e["event"] == "task_failed"]
    assert len(failed) == 1
    ev = failed[0]
    assert ev["task"] == "explode"
    assert ev["attempts"] == 1
    assert ev["error"] == "ValueError: bad record 7"
    assert isinstance(ev["worker"], str) and ev["worker"]
    tb = ev["traceback"]
    assert isinstance(tb, str)
    assert f'File "{path}", line' in tb and "in explode" in tb
    assert 'raise ValueError("bad record 7")' in tb
    assert tb.rstrip().endswith("ValueError: bad record 7")
    skipped = [e for e in events if e["event"] == "task_skipped"]
    assert [(e["task"], e["reason"]) for e in skipped] == [("downstream", "upstream")]
    assert ("task_succeeded", "side") in task_events(events)  # independent branch went on
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "failed"
    assert not any(e["event"] == "task_started" and e["task"] == "downstream" for e in events)


def test_an_error_message_with_a_lone_surrogate_is_recorded_not_fatal(flows, capsys):
    """Text decoded with surrogateescape (a file name in a foreign encoding) in an error
    message made the audit write raise UnicodeEncodeError: exit 3 and a lost run."""
    path = flows.write("""
        from flowdeco import task

        @task
        def bad():
            raise ValueError("cannot read file b\\udcff.csv")

        @task
        def good():
            return 1
    """)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "s1", "-w", "1"]) == 1
    capsys.readouterr()
    events = read_audit(flows.cwd / "st", "s1")
    failed = [e for e in events if e["event"] == "task_failed"]
    assert [e["task"] for e in failed] == ["bad"]
    assert failed[0]["error"] == "ValueError: cannot read file b\udcff.csv"
    assert ("task_succeeded", "good") in task_events(events)
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "failed"


def test_task_log_messages_go_to_the_trail_with_task(flows, capsys):
    path = flows.write(LOGGING)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "log1"]) == 0
    capsys.readouterr()
    events = read_audit(flows.cwd / "st", "log1")
    hello = [e for e in events if e["event"] == "hello"]
    assert len(hello) == 1
    assert hello[0]["task"] == "talk"
    assert hello[0]["k"] == 1
    assert hello[0]["run_id"] == "log1"
    assert hello[0]["attempt"] == 1
    careful = [e for e in events if e["event"] == "careful"]
    assert careful[0]["task"] == "talk" and careful[0]["n"] == [1, 2]
    names = [e["event"] for e in events]
    assert names.index("task_started") < names.index("hello") < names.index("task_succeeded")


def test_run_id_generated_when_not_given(flows):
    path = flows.write(TWO_TASKS)
    result = flowdeco.run(str(path), state_dir=flows.cwd / "st")
    assert result.ok
    events = read_audit(flows.cwd / "st", result.run_id)
    assert {e["run_id"] for e in events} == {result.run_id}


def test_default_state_dir_is_dot_flowdeco_in_cwd(flows, capsys):
    path = flows.write(TWO_TASKS)
    assert cli.main([str(path), "--run-id", "dflt"]) == 0
    capsys.readouterr()
    assert audit_file(flows.cwd / ".flowdeco", "dflt").is_file()


def test_nested_state_dir_that_does_not_exist_yet(flows, capsys):
    path = flows.write(TWO_TASKS)
    rc = cli.main([str(path), "--state-dir", "deep/er/state", "--run-id", "n1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert audit_file(flows.cwd / "deep" / "er" / "state", "n1").is_file()


# --------------------------------------------------------------------------- no state


def test_no_state_writes_nothing_cli_subprocess(flows):
    path = flows.write(FAILING)
    proc = subprocess.run([sys.executable, "-m", "flowdeco", str(path), "--no-state"],
                          cwd=flows.cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert all_files(flows.cwd) == []


def test_no_state_wins_over_state_dir(flows, capsys):
    path = flows.write(TWO_TASKS)
    assert cli.main([str(path), "--no-state", "--state-dir", "st", "--run-id", "r"]) == 0
    capsys.readouterr()
    assert all_files(flows.cwd) == []


def test_python_api_writes_same_file(flows, capsys):
    path = flows.write(TWO_TASKS)
    result = flowdeco.run(str(path), state_dir=flows.cwd / "st", run_id="r1")
    assert result.ok and result.run_id == "r1"
    events = read_audit(flows.cwd / "st", "r1")
    assert task_events(events)[0] == ("run_started", None)
    assert task_events(events)[-1] == ("run_finished", None)
    assert events[-1]["status"] == "succeeded"
    assert stat.S_IMODE(audit_file(flows.cwd / "st", "r1").stat().st_mode) == 0o600
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # from Python: no console rendering unless asked


def test_python_api_state_dir_none_writes_nothing(flows):
    path = flows.write(FAILING)
    result = flowdeco.run(str(path), state_dir=None, run_id="r1")
    assert result.status == "failed"
    assert all_files(flows.cwd) == []


# --------------------------------------------------------------------------- secrets


def test_secret_never_reaches_file_or_console(flows, capsys):
    path = flows.write(SECRET)
    st = flows.cwd / "st"
    for fmt in ("json", "console"):
        result = flowdeco.run(str(path), state_dir=st, run_id=f"s-{fmt}",
                              params={"token": Secret("hunter2")}, log_format=fmt)
        assert result["use"].status == "succeeded", result["use"]
        assert result["use"].result == 7
        assert result["fail_with"].error == "ValueError: cannot use ***"
        captured = capsys.readouterr()
        assert "hunter2" not in captured.out + captured.err
        assert "***" in captured.err
        text = audit_file(st, f"s-{fmt}").read_text()
        assert "hunter2" not in text
        events = read_audit(st, f"s-{fmt}")
        using = next(e for e in events if e["event"] == "using")
        assert using["token"] == "***" and using["task"] == "use"
        nested = next(e for e in events if e["event"] == "nested")
        assert nested["cfg"] == {"auth": "***", "list": ["***", ["***"]]}
    for f in all_files(flows.cwd):
        if f.is_file():
            assert b"hunter2" not in f.read_bytes(), f


# --------------------------------------------------------------------------- console


def test_log_format_json_prints_json_objects_to_stderr(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "--no-state", "--log-format", "json"]) == 1
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert lines
    objs = [json.loads(ln) for ln in lines]
    assert all(isinstance(o, dict) and "event" in o for o in objs)
    names = [o["event"] for o in objs]
    assert "run_started" in names and "task_failed" in names and "run_finished" in names
    assert any(o["event"] == "task_succeeded" and o["task"] == "first" for o in objs)
    assert "FAILED explode - ValueError: bad record 7" in captured.out


def test_console_default_shows_task_lines(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "--no-state"]) == 1
    err = capsys.readouterr().err
    assert "task_succeeded" in err and "first" in err
    assert "task_failed" in err and "explode" in err
    assert "task_skipped" in err


def test_quiet_hides_success_lines_keeps_failures(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "--no-state", "-q"]) == 1
    captured = capsys.readouterr()
    assert "task_succeeded" not in captured.err
    assert "task_failed" in captured.err and "explode" in captured.err
    assert "FAILED explode - ValueError: bad record 7" in captured.out


def test_quiet_json_hides_success_lines(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "--no-state", "-q", "--log-format", "json"]) == 1
    objs = [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    names = {o["event"] for o in objs}
    assert "task_succeeded" not in names
    assert "task_failed" in names


def test_very_quiet_prints_no_events_but_file_is_complete(flows, capsys):
    path = flows.write(FAILING)
    assert cli.main([str(path), "-qq", "--state-dir", "st", "--run-id", "qq"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    events = read_audit(flows.cwd / "st", "qq")
    assert ("task_succeeded", "first") in task_events(events)
    assert ("task_failed", "explode") in task_events(events)


def test_disabled_audit_writes_no_file(flows, capsys):
    path = flows.write(TWO_TASKS)
    assert cli.main([str(path), "-p", "no:audit", "--state-dir", "st", "--run-id", "na"]) == 0
    captured = capsys.readouterr()
    assert not audit_file(flows.cwd / "st", "na").exists()
    assert "task_succeeded" not in captured.err
    result = flowdeco.run(str(path), state_dir=flows.cwd / "st2", run_id="na",
                          disable=["audit"])
    assert result.ok
    assert not audit_file(flows.cwd / "st2", "na").exists()


# --------------------------------------------------------------------------- result retries

POLLING = """
    from flowdeco import Retry, task

    @task(retry=Retry(retries=5, retry_if=lambda status: status != "done"))
    def poll(ctx):
        return "done" if ctx.attempt == 3 else "running"

    @task
    def after(poll):
        return poll

    @task(retries=1)
    def flaky(ctx):
        if ctx.attempt == 1:
            raise ConnectionError("down")
        return 1
"""


def test_result_retries_are_in_the_trail_runs_show_and_the_dashboard(flows, capsys):
    """Retry(retry_if=...): every successful attempt run again is a ``task_retrying`` event
    (reason ``retry_if`` and the result instead of an error), so a reader of the trail, ``runs
    show`` and the dashboard agree on the attempts."""
    path = flows.write(POLLING)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "p1"]) == 0
    console = capsys.readouterr().err
    events = read_audit(flows.cwd / "st", "p1")
    poll = [e for e in events if e.get("task") == "poll"]
    assert [e["event"] for e in poll] == ["task_started", "task_retrying"] * 2 + [
        "task_started", "task_succeeded"]
    retrying = [e for e in poll if e["event"] == "task_retrying"]
    assert [e["attempt"] for e in retrying] == [1, 2]
    for e in retrying:
        assert (e["reason"], e["result"], e["delay"]) == ("retry_if", "'running'", 0.0)
        assert "error" not in e and isinstance(e["worker"], str) and e["worker"]
    assert poll[-1]["attempts"] == 3
    # an error retry keeps its own form
    flaky = [e for e in events if e["event"] == "task_retrying" and e["task"] == "flaky"]
    assert [(e["attempt"], e["error"], "reason" in e) for e in flaky] == [
        (1, "ConnectionError: down", False)]
    assert console.count("task_retrying") == 3 and console.count("reason=retry_if") == 2
    # runs show: the same attempts
    assert cli.main(["runs", "show", "p1", "--state-dir", "st"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert ["poll", "succeeded", "3"] in [r[:3] for r in rows]
    # the dashboard's model of the trail: two retried attempts, then the one that succeeded
    from flowdeco.ui.model import Trail
    trail = Trail()
    trail.feed(events)
    attempts = trail.attempts["poll"]
    assert [(a["n"], a["outcome"]) for a in attempts] == [
        (1, "retried"), (2, "retried"), (3, "succeeded")]
    assert all(a["end"] is not None for a in attempts)
    assert [(a.get("reason"), a.get("result")) for a in attempts[:2]] == [
        ("retry_if", "'running'")] * 2


def test_quiet_console_hides_result_retries_but_not_error_retries(flows, capsys):
    """A result retry is polling, not trouble: ``-q`` (warnings and errors) leaves it out."""
    path = flows.write(POLLING)
    assert cli.main([str(path), "--state-dir", "st", "--run-id", "q1", "-q"]) == 0
    console = capsys.readouterr().err
    assert console.count("task_retrying") == 1 and "ConnectionError: down" in console
    assert [e["task"] for e in read_audit(flows.cwd / "st", "q1")
            if e["event"] == "task_retrying"].count("poll") == 2  # the file has them all
