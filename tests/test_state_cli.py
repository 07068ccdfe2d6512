"""Durable state from the command line: code changes, run history, locks, signals, bad files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flowdeco import cli
from flowdeco.plugins.state.store import APPLICATION_ID

FLOW = """
    import os
    from flowdeco import task

    def mark(name):
        with open("calls.log", "a") as fh:
            fh.write(name + "\\n")

    @task
    def extract():
        mark("extract")
        return [1, 2, 3]

    @task
    def transform(extract):
        mark("transform")
        if os.environ.get("FD_FAIL"):
            raise ValueError("bad input")
        return [x * 10 for x in extract]

    @task
    def load(transform):
        mark("load")
        return sum(transform)

    @task
    def audit(extract):
        mark("audit")
        return len(extract)
"""


def fd(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60
       ) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full)


def popen(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "flowdeco", *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Cli:
    """``python -m flowdeco ARGS`` in this process (fast); the flow module is re-imported."""

    def __init__(self, cwd: Path, capsys, monkeypatch):
        self.cwd, self.capsys, self.monkeypatch = cwd, capsys, monkeypatch
        monkeypatch.chdir(cwd)

    def __call__(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        for k, v in (env or {}).items():
            self.monkeypatch.setenv(k, v)
        for name, mod in list(sys.modules.items()):
            if str(self.cwd) in (getattr(mod, "__file__", None) or ""):
                del sys.modules[name]  # see edits of the flow file, like a new process would
        self.capsys.readouterr()
        try:
            code = cli.main(list(args))
        finally:
            for k in env or {}:
                self.monkeypatch.delenv(k)
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(args, int(code), out, err)


@pytest.fixture
def fdi(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Cli(tmp_path, capsys, monkeypatch)
    for name, mod in list(sys.modules.items()):
        if str(tmp_path) in (getattr(mod, "__file__", None) or ""):
            del sys.modules[name]


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("flowdeco: error: "), stderr
    return lines[0]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` (files written by another process); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def work(tmp_path):
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    return tmp_path


def calls(work: Path) -> list[str]:
    path = work / "calls.log"
    out = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return out


def test_fail_fix_resume_from_the_cli(fdi, work):
    r = fdi("flow.py", "--run-id", "r1", env={"FD_FAIL": "1"})
    assert r.returncode == 1 and "(run r1)" in r.stdout
    assert sorted(calls(work)) == ["audit", "extract", "transform"]
    r = fdi("flow.py", "--resume", "r1")
    assert r.returncode == 0, r.stderr
    assert "2 succeeded, 2 restored" in r.stdout and "(run r1)" in r.stdout
    assert sorted(calls(work)) == ["load", "transform"]
    assert "run_resumed" in r.stderr and "restored=2" in r.stderr


def test_changed_code_reruns_the_task_and_downstream(fdi, work):
    assert fdi("flow.py", "--run-id", "r1").returncode == 0
    calls(work)
    src = (work / "flow.py").read_text()
    # a comment or a moved line is no change; a changed body is
    (work / "flow.py").write_text("# a comment\n\n" + src)
    r = fdi("flow.py", "--resume", "r1", "-q")
    assert r.returncode == 0 and calls(work) == []
    (work / "flow.py").write_text(src.replace("x * 10", "x * 100"))
    r = fdi("flow.py", "--resume", "r1")
    assert r.returncode == 0, r.stderr
    assert sorted(calls(work)) == ["load", "transform"]
    changed = [ln for ln in r.stderr.splitlines() if "task_changed" in ln]
    assert len(changed) == 1 and "transform" in changed[0] and "source changed" in changed[0]
    assert "warning" in changed[0]
    out = json.loads(fdi("runs", "export", "r1", "--state-dir", ".flowdeco").stdout)
    assert out["results"]["load"] == 600


def test_rerun_from_the_cli(fdi, work):
    assert fdi("flow.py", "--run-id", "r1").returncode == 0
    calls(work)
    r = fdi("flow.py", "--resume", "r1", "--rerun", "extract", "-q")
    assert r.returncode == 0
    assert sorted(calls(work)) == ["audit", "extract", "load", "transform"]
    r = fdi("flow.py", "--rerun", "extract")
    assert r.returncode == 4 and "--rerun needs --resume" in one_error_line(r.stderr)


@pytest.mark.parametrize("args, message", [
    (["--resume", "ghost"], "unknown run id 'ghost'"),
    (["--resume", "last", "--state-dir", "empty"], "no saved run of flow 'flow'"),
    (["--resume", "r1", "--no-state"], "--no-state"),
    (["--resume", "a/b"], "invalid run id"),
    (["--run-id", "r1"], "already exists"),
])
def test_resume_errors_exit_4_with_one_line(fdi, work, args, message):
    assert fdi("flow.py", "--run-id", "r1", "-q").returncode == 0
    r = fdi("flow.py", *args)
    assert r.returncode == 4
    assert message in one_error_line(r.stderr)


def test_run_history_commands(fdi, work):
    assert fdi("flow.py", "--run-id", "a1", "-q", env={"FD_FAIL": "1"}).returncode == 1
    assert fdi("flow.py", "--run-id", "a2", "-q").returncode == 0
    assert fdi("flow.py", "--resume", "a1", "-q").returncode == 0
    listing = fdi("runs")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["RUN", "ID", "FLOW", "STATUS", "STARTED", "DURATION", "TASKS"]
    assert [ln.split()[0] for ln in lines[1:]] == ["a1", "a2"]  # latest session first
    assert "succeeded" in lines[1] and "4 succeeded" in lines[1]
    show = fdi("runs", "show", "a1")
    assert show.returncode == 0
    assert "run a1 of flow flow: succeeded" in show.stdout and "2 sessions" in show.stdout
    assert any(ln.split()[:3] == ["transform", "succeeded", "1"] for ln in show.stdout.splitlines())
    export = fdi("runs", "export", "last")
    data = json.loads(export.stdout)
    assert data["run_id"] == "a1" and data["totalCompleted"] == 4
    assert data["results"] == {"extract": [1, 2, 3], "transform": [10, 20, 30], "load": 60,
                               "audit": 3}
    r = fdi("runs", "export", "a2", "-o", "a2.json")
    assert r.returncode == 0 and (work / "a2.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((work / "a2.json").read_text())["status"] == "succeeded"
    r = fdi("runs", "prune", "--keep", "1")
    assert r.returncode == 0 and "removed 1 run(s), kept 1" in r.stdout
    assert [ln.split()[0] for ln in fdi("runs").stdout.splitlines()[1:]] == ["a1"]
    assert not (work / ".flowdeco" / "runs" / "a2").exists()
    r = fdi("runs", "show", "a2")
    assert r.returncode == 4 and "unknown run id 'a2'" in one_error_line(r.stderr)
    r = fdi("runs", "prune")
    assert r.returncode == 4 and "--keep" in one_error_line(r.stderr)


def test_runs_on_an_empty_state_dir_creates_nothing(fdi, tmp_path):
    r = fdi("runs", "--state-dir", "nothing-here")
    assert r.returncode == 0 and "no saved runs in nothing-here" in r.stdout
    assert not (tmp_path / "nothing-here").exists()
    r = fdi("runs", "show", "last")
    assert r.returncode == 4 and "no saved runs" in one_error_line(r.stderr)


BLOCKING = """
    import os, time
    from flowdeco import task

    @task
    def first():
        return 1

    @task
    def slow(first):
        open("started-" + str(os.getpid()), "w").close()
        while not os.path.exists("release"):
            time.sleep(0.01)
        return 2

    @task
    def last(slow):
        return 3
"""


def test_a_run_in_use_is_refused_until_its_holder_dies(fdi, tmp_path):
    (tmp_path / "flow.py").write_text(textwrap.dedent(BLOCKING))
    holder = popen("flow.py", "--run-id", "busy", "-w", "2", cwd=tmp_path)
    try:
        wait_for(lambda: any(p.name.startswith("started-") for p in tmp_path.iterdir()),
                 what="the first process to start its slow task")
        other = fd("flow.py", "--resume", "busy", cwd=tmp_path)
        assert other.returncode == 4
        assert "run ID 'busy' is in use by another process" in one_error_line(other.stderr)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=20)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()
    # the kernel dropped the lock of the killed holder
    (tmp_path / "release").touch()
    again = fdi("flow.py", "--resume", "busy", "-q")
    assert again.returncode == 0, again.stderr
    assert "1 succeeded" in again.stdout or "2 succeeded" in again.stdout
    listing = fdi("runs").stdout
    assert "busy" in listing and "succeeded" in listing


def test_parallel_runs_share_a_state_dir(fdi, tmp_path):
    (tmp_path / "flow.py").write_text(textwrap.dedent(BLOCKING))
    procs = [popen("flow.py", "--run-id", f"p{i}", "-q", cwd=tmp_path) for i in range(3)]
    try:
        wait_for(lambda: sum(p.name.startswith("started-") for p in tmp_path.iterdir()) == 3,
                 what="three runs to start")
        (tmp_path / "release").touch()
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    listing = fdi("runs").stdout
    assert sum("3 succeeded" in ln for ln in listing.splitlines()) == 3


def test_sigterm_records_in_flight_tasks_as_interrupted(fdi, tmp_path):
    (tmp_path / "flow.py").write_text(textwrap.dedent(BLOCKING))
    proc = popen("flow.py", "--run-id", "sig", cwd=tmp_path)
    try:
        wait_for(lambda: any(p.name.startswith("started-") for p in tmp_path.iterdir()),
                 what="the slow task to start")
        proc.send_signal(signal.SIGTERM)
        (tmp_path / "release").touch()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    data = json.loads(fdi("runs", "export", "sig").stdout)
    assert data["status"] == "interrupted"
    assert data["tasks"]["first"]["status"] == "succeeded"
    assert data["tasks"]["slow"]["status"] in ("interrupted", "succeeded")
    assert data["tasks"]["last"]["status"] in ("skipped", "succeeded")
    r = fdi("flow.py", "--resume", "sig", "-q")
    assert r.returncode == 0 and "restored" in r.stdout


def _answer():
    return 42


@pytest.fixture(scope="module")
def bad_blobs(tmp_path_factory) -> dict[str, bytes]:
    import flowdeco
    from flowdeco import task
    root = tmp_path_factory.mktemp("blobs")
    assert flowdeco.run([task(_answer)], state_dir=root / "good").ok
    good = (root / "good" / "state.db").read_bytes()
    foreign = root / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("INSERT INTO invoices (amount) VALUES (9.5)")
    conn.commit()
    conn.close()
    newer = root / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=42")
    conn.execute("CREATE TABLE runs (x)")
    conn.commit()
    conn.close()
    return {
        "random bytes": os.urandom(3000),
        "text file": b"not a database at all\n" * 10,
        "truncated": good[: len(good) // 2],
        "header only": good[:100],
        "foreign sqlite": foreign.read_bytes(),
        "newer schema": newer.read_bytes(),
    }


@pytest.mark.parametrize("case, message", [
    ("random bytes", "is not a SQLite database"),
    ("text file", "is not a SQLite database"),
    ("truncated", "is corrupted or unreadable"),
    ("header only", "is corrupted or unreadable"),
    ("foreign sqlite", "is not a flowdeco state database (tables 'invoices')"),
    ("newer schema", "written by a newer flowdeco (schema version 42"),
])
def test_bad_databases_are_refused_and_left_untouched(fdi, tmp_path, bad_blobs, case, message):
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    blob = bad_blobs[case]
    state = tmp_path / "bad"
    state.mkdir()
    (state / "state.db").write_bytes(blob)
    for args in (["flow.py", "--state-dir", "bad"], ["flow.py", "--state-dir", "bad",
                                                     "--resume", "x"],
                 ["runs", "--state-dir", "bad"], ["runs", "show", "last", "--state-dir", "bad"]):
        r = fdi(*args)
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        assert message in one_error_line(r.stderr)
        assert (state / "state.db").read_bytes() == blob
    assert sorted(p.name for p in state.iterdir()) == ["state.db"]


def test_the_example_fails_then_resumes(fdi, tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "resumable_etl.py"
    r = fdi(str(example), "--run-id", "demo")
    assert r.returncode == 1, r.stderr
    assert "FAILED clean - ValueError: row 100" in r.stdout
    r = fdi(str(example), "--resume", "demo", "--param", "on_bad=skip",
           "--param", "target=out/report.json")
    assert r.returncode == 0, r.stderr
    assert "3 succeeded, 1 restored" in r.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["total"] == 4950 and report["rows"] == 100
    # the expensive extract ran once
    assert (tmp_path / "extract-calls.txt").read_text().count("x") == 1


def test_a_live_run_with_nothing_finished_yet_does_not_say_no_tasks(fdi, tmp_path):
    """Tasks are recorded as they end: a run still going with none ended has tasks, just
    none finished ("no tasks" read as an empty flow)."""
    import time as _time

    from flowdeco.plugins.state.store import SQLiteStore

    store = SQLiteStore(tmp_path / ".flowdeco")
    store.open()
    store.begin_run("live", "etl", _time.time() - 5, resumed=False)  # pid: this process
    store.close()
    listed = fdi("runs")
    assert listed.returncode == 0 and "no task finished yet" in listed.stdout, listed.stdout
    shown = fdi("runs", "show", "live")
    assert shown.returncode == 0, shown.stderr
    assert "running" in shown.stdout and "no task finished yet" in shown.stdout
    assert "no tasks" not in listed.stdout + shown.stdout
