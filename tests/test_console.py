"""What a user sees on the console (CLI runs as subprocesses): tracebacks, Ctrl-C.

Failures the engine decided (a timeout, an open circuit breaker, a result that
cannot be stored or pickled, a crashed worker) are one line: their traceback
would show flowdeco's own code.  Errors raised by task code show the task's
traceback, without the engine's frames.  The audit trail keeps the details.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = str(ROOT / "flowdeco")

EXPECTED_FLOW = '''
import os
import threading
import time

from flowdeco import CircuitBreaker, task

api = CircuitBreaker("console-api", threshold=1, reset_after=3600)
try:  # open the breaker at import, in the driver and in every worker process
    api.call(lambda: 1 / 0)
except ZeroDivisionError:
    pass


@task(timeout=0.3)
def slow():
    time.sleep(3)


@task
def unstorable():
    return threading.Lock()


@task(circuit=api)
def guarded():
    return 1


def helper(n):
    raise ValueError(f"bad record {n}")


@task
def boom():
    helper(7)
'''


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                NO_COLOR="1")


def _cli(tmp_path: Path, source: str, *options: str, timeout: float = 60) -> subprocess.CompletedProcess:
    flow = tmp_path / "flow.py"
    flow.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "flowdeco", str(flow), *options], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _blocks(stderr: str) -> dict[str, str]:
    """The console text of each ``task_failed`` line with what follows it (its traceback)."""
    out: dict[str, str] = {}
    current = None
    for line in stderr.splitlines():
        m = re.search(r"task_failed task=(\w+)", line)
        if m:
            current = m.group(1)
            out[current] = line + "\n"
        elif re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line):
            current = None
        elif current is not None:
            out[current] += line + "\n"
    return out


@pytest.mark.parametrize("executor", ["sync", "thread", "process"])
def test_engine_decided_failures_are_one_line_task_errors_show_the_task_traceback(
        tmp_path, executor):
    state = tmp_path / "state"
    proc = _cli(tmp_path, EXPECTED_FLOW, "--executor", executor, "-w", "2", "--state-dir",
                str(state), "--run-id", "r1", "-p", "no:metrics")
    assert proc.returncode == 1, proc.stderr
    blocks = _blocks(proc.stderr)
    assert set(blocks) == {"slow", "unstorable", "guarded", "boom"}, proc.stderr
    for name in ("slow", "unstorable", "guarded"):
        block = blocks[name]
        assert "Traceback" not in block and PKG not in block, f"{name}:\n{proc.stderr}"
        assert len(block.strip().splitlines()) == 1, block
    assert "TaskTimeout" in blocks["slow"]
    assert "CircuitOpenError" in blocks["guarded"]
    assert re.search(r"Unstorable|Unpicklable", blocks["unstorable"])
    # task code: its own traceback, from the task down to the raise, no engine frames
    boom = blocks["boom"]
    assert "Traceback (most recent call last)" in boom, proc.stderr
    assert 'flow.py", line' in boom and "in boom" in boom and "in helper" in boom
    assert "ValueError: bad record 7" in boom
    assert PKG not in boom, boom
    # the audit trail keeps the details: every failure with its error, the task's traceback
    events = [json.loads(line) for line in
              (state / "runs" / "r1" / "audit.jsonl").read_text().splitlines()]
    failed = {e["task"]: e for e in events if e["event"] == "task_failed"}
    assert set(failed) == set(blocks)
    assert "in helper" in failed["boom"]["traceback"]
    assert failed["guarded"]["error"].startswith("CircuitOpenError")


def test_a_crashed_worker_is_one_line(tmp_path):
    proc = _cli(tmp_path, """
        import os
        from flowdeco import task

        @task
        def dies():
            os._exit(9)
        """, "--executor", "process", "-w", "1", "--no-state", "-p", "no:metrics")
    assert proc.returncode == 1, proc.stderr
    block = _blocks(proc.stderr)["dies"]
    assert "WorkerCrashed" in block
    assert "Traceback" not in block and len(block.strip().splitlines()) == 1, proc.stderr


def test_the_marker_is_on_the_exception_classes():
    from flowdeco.errors import FlowError, StateError, engine_decided
    from flowdeco.executors import WorkerCrashed
    from flowdeco.pickling import UnpicklableResult
    from flowdeco.plugins.circuit import CircuitOpenError
    from flowdeco.plugins.state.writer import UnstorableResult
    from flowdeco.plugins.timeout import TaskTimeout

    for cls in (TaskTimeout, CircuitOpenError, UnstorableResult, StateError, WorkerCrashed,
                UnpicklableResult):
        assert cls.engine_decided is True, cls
    assert engine_decided(TaskTimeout("x"))
    # errors a task raises itself keep their traceback, FlowError included (a misuse
    # of flowdeco's API inside task code is best found by its line)
    assert not engine_decided(ValueError("x"))
    assert not engine_decided(FlowError("x"))


# --------------------------------------------------------------------------- Ctrl-C

HOLD_FLOW = '''
import os
import time

from flowdeco import task

RELEASE = {release!r}


@task
def first():
    return 1


@task(priority=1)
def hold(first):
    print("HOLDING", flush=True)
    end = time.monotonic() + 30
    while not os.path.exists(RELEASE) and time.monotonic() < end:
        time.sleep(0.01)
    return 2


@task
def after_hold(hold):
    return 3


@task
def other(first):
    return 4
'''


def _lines_until(stream, needle: str, timeout: float, seen: list[str]) -> bool:
    """Read ``stream`` line by line (on a helper thread) until a line contains ``needle``."""
    import threading

    found = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            if needle in line:
                found.set()
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return found.wait(timeout)


@pytest.mark.parametrize("executor", ["sync", "thread", "process"])
def test_first_ctrl_c_says_at_once_what_it_waits_for_and_the_summary_says_interrupted(
        tmp_path, executor):
    release = tmp_path / "release"
    flow = tmp_path / "flow.py"
    flow.write_text(HOLD_FLOW.format(release=str(release)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdeco", str(flow), "--executor", executor, "-w", "1",
         "--no-state", "-p", "no:metrics", "-s"],  # -s: the task's HOLDING line is the signal
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: cleaned up with its pool workers
    try:
        out: list[str] = []
        assert _lines_until(proc.stdout, "HOLDING", 30, out), out
        proc.send_signal(signal.SIGINT)
        err: list[str] = []
        # 'hold' cannot end before the test releases it: the line comes while it runs
        assert _lines_until(proc.stderr, "stopping", 10, err), "".join(err)
        notice = err[-1]
        assert "1 running task" in notice and "Ctrl-C again" in notice, notice
        release.touch()
        rest_out, rest_err = proc.communicate(timeout=30)
    finally:
        release.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 2, "".join(err) + rest_err
    summary = rest_out.strip().splitlines()
    # 'hold' was waited for and succeeded; 'after_hold' and 'other' never started
    assert re.search(r"2 succeeded, 2 skipped, interrupted in \d+\.\d+s", summary[-1]), rest_out
    assert any("SKIPPED" in line and "after_hold" in line and "other" in line
               for line in summary), rest_out
    assert notice.count("\n") == 1  # one line
