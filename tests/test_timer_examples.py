"""``examples/timer_tasks.py`` and ``examples/file_watcher.py`` (issue 6)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flowdeco
from flowdeco import FakeClock, hookimpl

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SUMMARY = re.compile(r"^=+ (\d+) succeeded in \d+\.\d\ds =+$", re.M)


def example(name: str) -> Path:
    return EXAMPLES / f"{name}.py"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", example(name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["timer_tasks", "file_watcher"])
def test_docstring_says_how_to_run_it(name):
    doc = load_module(name).__doc__
    assert doc and f"python -m flowdeco examples/{name}.py" in doc


# --------------------------------------------------------------------------- timer_tasks

TIMER_RESULTS = {
    "send_email": "Email sent",
    "health_report": {"checks": 5, "healthy": True, "worst_latency_ms": 15},
    "merge_batches": {"items": 15, "total": 105},
    "coordinator": {"fast_ticks": 6, "slow_ticks": 3, "job_polls": 4, "job_state": "done"},
}


def check_timer_results(result) -> None:
    assert result.ok, {n: o.error for n, o in result.outcomes.items() if o.error}
    for name, value in TIMER_RESULTS.items():
        assert result.results[name] == value, name
    assert [c["iteration"] for c in result.results["check_health"]] == [1, 2, 3, 4, 5]
    assert result.results["fast_ticker"] == [1, 2, 3, 4, 5, 6]
    assert result.results["slow_ticker"] == [10, 20, 30]


def test_timer_tasks_on_a_fake_clock():
    clock = FakeClock()
    result = flowdeco.run(example("timer_tasks"), state_dir=None, clock=clock)
    check_timer_results(result)
    o = result.outcomes
    # exact timing on the fake clock: delays from readiness, fixed-rate intervals
    assert round((o["send_email"].started_at - result.started_at).total_seconds(), 6) == 0.05
    assert round(o["check_health"].duration, 6) == 0.08          # 5 iterations, 20 ms apart
    assert round(o["slow_ticker"].duration, 6) == 0.06
    assert o["merge_batches"].started_at >= o["batch_c"].finished_at
    assert round((o["batch_c"].started_at - result.started_at).total_seconds(), 6) == 0.03
    assert o["coordinator"].started_at >= max(o[n].finished_at for n in
                                              ("fast_ticker", "slow_ticker", "job_status"))


def test_timer_tasks_in_real_time_with_few_workers():
    t0 = time.perf_counter()
    result = flowdeco.run(example("timer_tasks"), state_dir=None, workers=2)
    elapsed = time.perf_counter() - t0
    check_timer_results(result)
    assert elapsed < 2.0          # about 0.1 s of waits; generous for a loaded CI machine
    # the delays held no worker: with 2 workers, 5 timers still overlapped
    assert result.outcomes["check_health"].duration >= 0.08


def test_timer_tasks_from_the_cli(tmp_path):
    proc = cli(str(example("timer_tasks")), "--no-state", "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = SUMMARY.search(proc.stdout)
    assert m and int(m.group(1)) == 11, proc.stdout
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "succeeded"
    checks = [e for e in events if e["event"] == "health check"]
    assert [e["iteration"] for e in checks] == [1, 2, 3, 4, 5]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- file_watcher


def drop(folder: Path, name: str, text: str) -> None:
    """Write a file the way writers should: under a hidden name, then rename."""
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(folder / name)


class DropFiles:
    """Drops files into the folder just before given polls start (deterministic)."""

    def __init__(self, folder: Path, plan: dict[int, dict[str, str]]):
        self.folder = folder
        self.plan = plan

    @hookimpl
    def flowdeco_report(self, run, event):
        if event.name == "task_started" and event.task == "watch":
            for name, text in self.plan.get(event.fields["iteration"], {}).items():
                drop(self.folder, name, text)


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_file_watcher_processes_each_new_file_once(tmp_path, executor):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "early.txt", "already here\n")
    plan = {
        2: {"a.txt": "one two three\n", "b.txt": "four\nfive\n", "notes.md": "ignored"},
        4: {"c.txt": "six\n"},
        6: {"d.txt": "seven eight\n", "STOP": ""},
    }
    clock = FakeClock()
    result = flowdeco.run(example("file_watcher"), state_dir=None, clock=clock,
                          executor=executor, params={"folder": inbox},
                          plugins=[DropFiles(inbox, plan)])
    assert result.ok, {n: o.error for n, o in result.outcomes.items() if o.error}
    polls = result.results["watch"]
    assert [[r["file"] for r in p["processed"]] for p in polls] == [
        ["early.txt"], ["a.txt", "b.txt"], [], ["c.txt"], [], ["d.txt"]]
    assert [p["stop"] for p in polls] == [False] * 5 + [True]
    assert result.results["summary"] == {
        "polls": 6, "files": ["early.txt", "a.txt", "b.txt", "c.txt", "d.txt"], "words": 10}
    assert sorted(p.name for p in (inbox / "done").iterdir()) == [
        "a.txt", "b.txt", "c.txt", "d.txt", "early.txt"]
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "notes.md"]   # STOP consumed
    assert round(result.outcomes["watch"].duration, 6) == 0.25    # 6 polls, 50 ms apart


def test_file_watcher_in_real_time_with_files_dropped_while_it_runs(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", flowdeco.run(
        example("file_watcher"), state_dir=None, params={"folder": inbox})))
    thread.start()
    names = [f"f{i}.txt" for i in range(8)]
    for i, name in enumerate(names):
        drop(inbox, name, f"word {i}\n")
        time.sleep(0.015)
    (inbox / "STOP").touch()
    thread.join(10)
    assert not thread.is_alive()
    result = box["result"]
    assert result.ok
    processed = [r["file"] for p in result.results["watch"] for r in p["processed"]]
    assert sorted(processed) == names                       # each file once
    assert result.results["summary"]["words"] == 16
    assert sorted(p.name for p in (inbox / "done").iterdir()) == names


def test_file_watcher_from_the_cli(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "x.txt", "hello world\n")
    (inbox / "STOP").touch()
    proc = cli(str(example("file_watcher")), "--no-state", "--param", f"folder={inbox}",
               "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    (stopped,) = [e for e in events if e["event"] == "watcher stopped"]
    assert stopped["files"] == ["x.txt"] and stopped["polls"] == 1
    assert (inbox / "done" / "x.txt").exists()


def test_file_watcher_on_a_missing_folder_fails_clearly(tmp_path):
    result = flowdeco.run(example("file_watcher"), state_dir=None, clock=FakeClock(),
                          params={"folder": tmp_path / "nope"})
    out = result.outcomes["watch"]
    assert out.status == "failed" and "does not exist" in out.error
    assert result.outcomes["summary"].status == "skipped"
