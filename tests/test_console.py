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
