"""A full disk while writing the audit trail stops the run cleanly, like one in the store.

Nothing new starts, ``audit_write_failed`` says what happened and what to do, the
run is recorded ``failed`` (not left ``running``), exit 1; a torn last line is cut
off; a resume while the disk is still full is the same clean stop.  Injected
(``ENOSPC`` from a file object) everywhere, and on a real full tmpfs where one can
be mounted.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import flowdeco
from flowdeco import cli
from flowdeco.plugins import audit as audit_mod
from flowdeco.plugins.state import SQLiteStore

CHAIN = """
    from flowdeco import task

    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def a():
        mark("a")
        return 1

    @task
    def b(a):
        mark("b")
        return a + 1

    @task
    def c(b):
        mark("c")
        return b + 1
"""


class FullAfter:
    """A text file whose writes fail with ENOSPC once ``budget`` characters are written;
    the failing write leaves the part that fitted (a torn line), as a real disk does."""

    def __init__(self, real, budget: int):
        self.real = real
        self.budget = budget

    def write(self, s: str) -> int:
        if len(s) > self.budget:
            self.real.write(s[:self.budget])
            self.real.flush()
            self.budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(s)
        return self.real.write(s)

    def flush(self) -> None:
        self.real.flush()

    def close(self) -> None:
        self.real.close()


@pytest.fixture
def disk(monkeypatch):
    """``disk.fill(after_lines=N, left=K)``: the audit file's disk fills up after N whole
    lines plus K characters of the next one (in every run until ``disk.free()``)."""
    original = audit_mod._open_private

    class Disk:
        full = False

        def fill(self, after_lines: int, left: int = 10) -> None:
            def open_full(path):
                f = original(path)
                real_write = f.write
                state = {"lines": 0}

                class Counting(FullAfter):
                    def write(self, s):
                        if state["lines"] >= after_lines:
                            return super().write(s)
                        state["lines"] += s.count("\n")
                        return real_write(s)
                return Counting(f, left)
            monkeypatch.setattr(audit_mod, "_open_private", open_full)

        def free(self) -> None:
            monkeypatch.setattr(audit_mod, "_open_private", original)
    return Disk()


class Recorder:
    def __init__(self):
        self.events = []

    @flowdeco.hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)


def run_status(state: Path, run_id: str) -> str:
    store = SQLiteStore(state)
    try:
        assert store.open(create=False)
        return store.load_run(run_id).status
    finally:
        store.close()


def parsed_lines(path: Path) -> list[dict]:
    """Every line of the file, parsed (fails on a torn or garbled line)."""
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_a_full_disk_while_writing_the_audit_trail_stops_the_run(flows, tmp_path, disk,
                                                                 executor):
    log = tmp_path / "calls.log"
    path = flows.write(CHAIN.format(log=str(log)))
    st = flows.cwd / "st"
    trail = st / "runs" / "full" / "audit.jsonl"
    disk.fill(after_lines=2)  # run_started, task_started a; then a's success fails
    rec = Recorder()
    result = flowdeco.run(str(path), state_dir=st, run_id="full", executor=executor,
                          workers=1, plugins=[rec])
    assert result.status == "failed"
    failed = [e for e in rec.events if e.name == "audit_write_failed"]
    assert len(failed) == 1
    fields = failed[0].fields
    assert fields["level"] == "error" and "No space left" in fields["error"]
    assert fields["file"] == str(trail) and "--resume full" in fields["hint"]
    if executor == "sync":  # (thread workers may have chained b and c on already)
        assert "b" not in log.read_text().split()  # nothing new started
    assert run_status(st, "full") == "failed"  # recorded as stopped, not left running
    lines = parsed_lines(trail)  # the torn line was cut off
    assert [e["event"] for e in lines] == ["run_started", "task_started"]

    disk.free()
    log.unlink()
    again = flowdeco.run(str(path), state_dir=st, resume="full", executor=executor)
    assert again.ok and again["c"].result == 3
    assert again["a"].status == "restored"
    events = [e["event"] for e in parsed_lines(trail)]
    assert events[2] == "run_started" and events[-1] == "run_finished"


def test_cli_full_disk_is_one_line_and_exit_1_also_when_resumed_still_full(flows, tmp_path,
                                                                            disk, capsys):
    log = tmp_path / "calls.log"
    path = flows.write(CHAIN.format(log=str(log)))
    disk.fill(after_lines=3)  # b's task_started fails (b runs: it was starting), c never starts
    code = cli.main([str(path), "--state-dir", "st", "--run-id", "full", "--executor", "sync"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "audit_write_failed" in ln]
    assert len(lines) == 1
    assert "No space left on device" in lines[0] and "--resume full" in lines[0]
    assert run_status(flows.cwd / "st", "full") == "failed"
    assert log.read_text().split() == ["a", "b"]

    disk.fill(after_lines=0, left=0)  # still full: not even run_started fits
    code = cli.main([str(path), "--state-dir", "st", "--resume", "full"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "audit_write_failed" in ln]) == 1
    assert run_status(flows.cwd / "st", "full") == "failed"
    assert log.read_text().split() == ["a", "b"]  # nothing started

    disk.free()
    assert cli.main([str(path), "--state-dir", "st", "--resume", "full"]) == 0
    capsys.readouterr()
    assert log.read_text().split().count("c") == 1
    parsed_lines(flows.cwd / "st" / "runs" / "full" / "audit.jsonl")


def test_a_torn_last_line_is_cut_off_when_the_trail_is_opened_again(flows, tmp_path):
    log = tmp_path / "calls.log"
    path = flows.write(CHAIN.format(log=str(log)))
    st = flows.cwd / "st"
    trail = st / "runs" / "r" / "audit.jsonl"
    assert flowdeco.run(str(path), state_dir=st, run_id="r", rerun=None).ok
    whole = trail.read_text()
    trail.write_text(whole + '{"event": "task_start')  # a crash in the middle of a line
    from flowdeco.plugins.audit import read_events
    assert [e["event"] for e in read_events(trail)] == [
        json.loads(x)["event"] for x in whole.splitlines()]  # readers skip it
    again = flowdeco.run(str(path), state_dir=st, resume="r")
    assert again.ok
    lines = parsed_lines(trail)
    assert len(lines) > len(whole.splitlines())
    assert trail.read_text().startswith(whole)


def test_a_trail_without_any_newline_is_emptied(flows, tmp_path):
    log = tmp_path / "calls.log"
    path = flows.write(CHAIN.format(log=str(log)))
    st = flows.cwd / "st"
    trail = st / "runs" / "r" / "audit.jsonl"
    trail.parent.mkdir(parents=True)
    trail.write_text('{"event": "run_sta')
    assert flowdeco.run(str(path), state_dir=st, run_id="r").ok
    assert parsed_lines(trail)[0]["event"] == "run_started"


# ------------------------------------------------------------- a real full disk (tmpfs)


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``where``; None, or why it cannot be done here."""
    if not sys.platform.startswith("linux"):
        return "tmpfs is Linux only"
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a tmpfs needs root and mount(8)"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}"
    return None


def _fill(folder: Path) -> None:
    """Write a filler file until the disk is full."""
    with open(folder / f"filler-{uuid.uuid4().hex}", "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        while True:  # the last bytes of a page
            try:
                fh.write(b"\0")
            except OSError:
                break


NOISY = """
    from flowdeco import task

    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def first(ctx):
        mark("first")
        return 1

    @task
    def noisy(ctx, first):
        mark("noisy")
        for i in range(30):
            ctx.log.info("chunk", i=i, data="x" * 20000)
        return first + 1

    @task
    def last(ctx, noisy):
        mark("last")
        for i in range(30):
            ctx.log.info("chunk", i=i, data="y" * 20000)
        return noisy + 1
"""


def test_a_real_full_disk_under_the_audit_trails(flows, tmp_path):
    """STATE_DIR/runs on a 256 KiB tmpfs (the store itself elsewhere): the trail fills it."""
    log = tmp_path / "calls.log"
    path = flows.write(NOISY.format(log=str(log)))
    st = flows.cwd / "st"
    runs = st / "runs"
    runs.mkdir(parents=True)
    why = _mount_tmpfs(runs, "256k")
    if why is not None:
        pytest.skip(why)
    try:
        cmd = [sys.executable, "-m", "flowdeco", str(path), "--state-dir", str(st),
               "--run-id", "full", "--executor", "sync"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        failures = [ln for ln in r.stderr.splitlines() if "audit_write_failed" in ln]
        assert len(failures) == 1 and "No space left on device" in failures[0]
        assert "last" not in log.read_text().split()
        assert run_status(st, "full") == "failed"
        trail = runs / "full" / "audit.jsonl"
        assert trail.read_text().endswith("\n")

        # resume while the disk is still full: the same clean stop (the few lines that
        # fit into the trail's last page are written, last's big log lines are not)
        _fill(runs)
        resume = cmd[:-4] + ["--executor", "sync", "--resume", "full"]
        r = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        assert len([ln for ln in r.stderr.splitlines() if "audit_write_failed" in ln]) == 1
        assert run_status(st, "full") == "failed"
        assert trail.read_text().endswith("\n")
    finally:
        subprocess.run(["umount", str(runs)], check=False)
    # space again (the tmpfs is gone: the trail starts afresh on the normal disk)
    r = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert log.read_text().split() == ["first", "noisy", "last"]  # each ran once
    assert run_status(st, "full") == "succeeded"
