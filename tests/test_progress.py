"""The live progress view: shown on terminals only, never in pipes or with -q."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import types

import pytest

import flowdeco
from flowdeco import Pipeline, task
from flowdeco.plugins.progress import ProgressView, enabled

WAIT = 10.0


class FakeTTY(io.StringIO):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def isatty(self):
        return True

    def write(self, s):
        with self.lock:
            n = super().write(s)
            self.changed.notify_all()
            return n

    def wait_for(self, needle: str) -> None:
        with self.lock:
            assert self.changed.wait_for(lambda: needle in self.getvalue(), WAIT), \
                f"{needle!r} never shown: {self.getvalue()!r}"


class Pipe(io.StringIO):
    def isatty(self):
        return False


def config(**options):
    values = {"progress": None, "quiet": 0, **options}
    from_cli = values.pop("from_cli", True)
    return types.SimpleNamespace(getoption=lambda name, default=None: values.get(name, default),
                                 from_cli=from_cli)


def test_shown_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    assert enabled(config(), FakeTTY())
    assert not enabled(config(), Pipe())                       # a pipe, a file, CI logs
    assert not enabled(config(quiet=1), FakeTTY())             # -q
    assert not enabled(config(progress=False), FakeTTY())      # --no-progress
    assert not enabled(config(from_cli=False), FakeTTY())      # Python run(): opt in
    assert enabled(config(from_cli=False, progress=True), FakeTTY())
    assert not enabled(config(progress=True), Pipe())          # never escape codes in a pipe
    monkeypatch.setenv("TERM", "dumb")
    assert not enabled(config(), FakeTTY())


def test_nothing_registered_when_off():
    seen = []

    @task
    def probe(ctx):
        seen.append(ctx.run.config.pluginmanager.get_plugin("progress-view"))

    flowdeco.run([probe], state_dir=None, progress=True)   # stderr is not a terminal here
    assert seen == [None]


def test_live_line_counts_tasks_and_erases_itself_at_the_end():
    tty = FakeTTY()
    view = ProgressView(tty, interval=0.01)

    @task
    def quick():
        return 1

    @task
    def slow(quick):
        # not just "1 running": with one worker, slow is chained right after quick,
        # so "0/4 done | 1 running" (quick's end not yet reported) can come first
        tty.wait_for("1/4 done | 1 running")
        return 2

    @task
    def failing(quick):
        raise ValueError("x")

    @task
    def skipped(failing):
        return 3

    result = flowdeco.run([quick, slow, failing, skipped], state_dir=None, plugins=[view],
                          workers=1, executor="thread")
    assert result.status == "failed"
    out = tty.getvalue()
    assert "\r\x1b[K" in out
    assert out.endswith("\r\x1b[K")                         # the line is gone after the run
    assert "flowdeco 1/4 done | 1 running" in out
    assert view.counts == {"succeeded": 2, "failed": 1, "skipped": 1, "interrupted": 0}
    assert view._thread is None                             # the ticker thread has ended


def test_mapped_instances_count_in_the_total():
    view = ProgressView(FakeTTY(), interval=10)

    @task
    def items():
        return [1, 2, 3]

    @task(map="items")
    def each(items):
        return items

    result = flowdeco.run([items, each], state_dir=None, plugins=[view])
    assert result.ok
    assert view.total == 5 and sum(view.counts.values()) == 5  # 2 tasks + 3 instances
    assert view.line().startswith("flowdeco 5/5 done")


def test_line_shows_remaining_estimate_and_pipeline_rate():
    tty = FakeTTY()
    now = [0.0]
    view = ProgressView(tty, interval=0.01, clock=lambda: now[0])
    pipe = Pipeline("feed")
    seen_line = threading.Event()

    @pipe.stage(workers=1)
    def work(x):
        if x == 100:
            now[0] = 4.0
            # a line drawn once the clock says 4.0 (an earlier one, drawn at 2.0, also
            # shows the pipeline: waiting for "feed " let the run end before any redraw)
            tty.wait_for("~4.0s left")
            seen_line.set()
        return x

    @task
    def first():
        now[0] = 2.0
        return list(range(200))

    node = pipe.as_task("feed", source=first)
    result = flowdeco.run([first, node], state_dir=None, plugins=[view])
    assert result.ok and seen_line.is_set()
    # lines drawn while `now` was still 2.0 come first: look at one drawn at 4.0
    line = next(chunk for chunk in tty.getvalue().split("\r") if "~4.0s left" in chunk)
    assert line.startswith("flowdeco 1/2 done | 1 running | feed ")
    assert " items " in line and "/s" in line
    assert "4.0s, ~4.0s left" in line                      # 1 of 2 done in 4 s: 4 s to go


def test_cli_in_a_pipe_never_shows_it(tmp_path):
    (tmp_path / "flow.py").write_text("from flowdeco import task\n\n@task\ndef one():\n"
                                      "    return 1\n")
    proc = subprocess.run([sys.executable, "-m", "flowdeco", "flow.py", "--no-state"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[K" not in proc.stderr and "\r" not in proc.stderr
    assert "done |" not in proc.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("extra,shown", [((), True), (("-q",), False),
                                         (("-p", "no:progress"), False),
                                         (("--no-progress",), False)])
def test_cli_on_a_terminal(tmp_path, extra, shown):
    (tmp_path / "flow.py").write_text(
        "import time\nfrom flowdeco import task\n\n@task\ndef slow():\n"
        "    time.sleep(0.5)\n    return 1\n")
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", "flow.py", "--no-state", *extra],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0
    proc.stdout.close()
    err = b"".join(chunks).decode()
    assert ("flowdeco 0/1 done | 1 running" in err) is shown, err
    assert ("\x1b[K" in err) is shown


def test_after_ctrl_c_the_line_says_stopping_and_no_longer_estimates_time_left():
    import signal
    tty = FakeTTY()
    now = [0.0]
    view = ProgressView(tty, interval=0.01, clock=lambda: now[0])

    @task
    def first():
        now[0] = 2.0
        return 1

    @task
    def second(first):
        tty.wait_for("~")                       # 1 of 3 done: an estimate is shown
        os.kill(os.getpid(), signal.SIGINT)     # the run's handler, on the main thread
        tty.wait_for("stopping")
        return 2

    @task
    def third(second):
        return 3

    result = flowdeco.run([first, second, third], state_dir=None, plugins=[view], workers=1)
    assert result.status == "interrupted"
    after = tty.getvalue().split("stopping", 1)[1]
    line = next(chunk for chunk in tty.getvalue().split("\r") if "stopping" in chunk)
    assert line.startswith("flowdeco 1/3 done | stopping | 1 running"), line
    assert "left" not in after                  # no estimate once stopping
