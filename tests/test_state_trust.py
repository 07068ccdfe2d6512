"""Damaged or surprising storage and hostile values (issue 14, storage items).

Each test goes through what users touch: the CLI (exit codes, stderr lines),
``flowdeco.run`` and the files of the state dir.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdeco import StateError
from flowdeco.plugins.state import SQLiteStore, TaskRow
from flowdeco.plugins.state.store import SCHEMA_VERSION
from test_state_cli import fd, fdi, one_error_line  # noqa: F401 - fdi is a fixture

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
"""


@pytest.fixture
def work(tmp_path):
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    return tmp_path


def calls(work: Path) -> list[str]:
    path = work / "calls.log"
    out = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative name -> sha256 of its bytes ("dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- 5: 0-byte state.db


def test_an_empty_state_db_beside_saved_runs_is_refused_untouched(fdi, work):
    assert fdi("flow.py", "--run-id", "r1").returncode == 0
    db = work / ".flowdeco" / "state.db"
    assert (work / ".flowdeco" / "runs" / "r1" / "audit.jsonl").exists()
    db.write_bytes(b"")  # torn by a crash of the file system, or truncated by hand
    before = snapshot(work / ".flowdeco")
    for args in (["runs"], ["runs", "show", "r1"], ["runs", "export", "last"],
                 ["flow.py", "--resume", "r1"], ["flow.py", "--run-id", "r2"],
                 ["runs", "prune", "--keep", "0"]):
        r = fdi(*args)
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert ".flowdeco/state.db" in line and "empty" in line and "saved runs" in line, line
        assert "move it away" in line or "restore a backup" in line, line
        assert snapshot(work / ".flowdeco") == before, args


def test_an_empty_state_db_without_saved_runs_is_a_new_store(fdi, work):
    (work / ".flowdeco").mkdir()
    db = work / ".flowdeco" / "state.db"
    db.write_bytes(b"")
    r = fdi("runs")  # a read command leaves it as it is
    assert r.returncode == 0 and "no saved runs" in r.stdout
    assert db.read_bytes() == b"" and sorted(os.listdir(db.parent)) == ["state.db"]
    assert fdi("flow.py", "--run-id", "r1").returncode == 0  # a run initialises it
    assert "r1" in fdi("runs").stdout


def test_a_hot_journal_left_by_a_killed_first_open_is_rolled_back_by_the_next_run(fdi, work):
    """A kill inside the first ``PRAGMA journal_mode=WAL`` (older flowdeco, or any SQLite
    program) leaves an empty database plus a hot rollback journal.  A read-only look cannot
    roll it back (SQLITE_READONLY_ROLLBACK), which refused every later run for good."""
    state = work / ".flowdeco"
    state.mkdir()
    db = state / "state.db"
    os.close(os.open(db, os.O_CREAT | os.O_RDWR, 0o600))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    header = bytes.fromhex("d9d505f920a163d7") + struct.pack(">IIIII", 0, 0xCDDE3AED, 0, 512,
                                                             4096)
    fh = os.open(Path(str(db) + "-journal"), os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fh, header.ljust(512, b"\0"))
    os.close(fh)
    r = fdi("flow.py", "--run-id", "after-kill")
    assert r.returncode == 0, r.stderr
    assert "after-kill" in fdi("runs").stdout


# --------------------------------------------------------------------------- 7: checksums


def _set_result(db: Path, name: str, text: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tasks SET result=? WHERE name=?", (text, name))
    conn.commit()
    conn.close()


def test_a_changed_stored_result_is_run_again_with_a_warning(fdi, work):
    r = fdi("flow.py", "--run-id", "r1", env={"FD_FAIL": "1"})
    assert r.returncode == 1
    calls(work)
    _set_result(work / ".flowdeco" / "state.db", "extract", "[7, 7, 7]")  # a hand edit
    r = fdi("flow.py", "--resume", "r1")
    assert r.returncode == 0, r.stderr
    assert sorted(calls(work)) == ["extract", "load", "transform"]  # extract ran again
    warnings = [ln for ln in r.stderr.splitlines() if "state_warning" in ln]
    assert len(warnings) == 1 and "extract" in warnings[0] and "checksum" in warnings[0], r.stderr
    export = json.loads(fdi("runs", "export", "r1").stdout)
    assert export["results"]["load"] == 60  # computed from [1, 2, 3], not from [7, 7, 7]
    events = [json.loads(ln) for ln in
              (work / ".flowdeco" / "runs" / "r1" / "audit.jsonl").read_text().splitlines()]
    warned = [e for e in events if e["event"] == "state_warning"]
    assert len(warned) == 1 and warned[0]["task"] == "extract"
    assert "checksum" in warned[0]["error"] and "r1" in warned[0]["error"]


CACHED = """
    from flowdeco import task

    @task(cache=True)
    def slow():
        with open("calls.log", "a") as fh:
            fh.write("slow\\n")
        return {"answer": 42}

    @task
    def show(slow):
        with open("answer.txt", "w") as fh:
            fh.write(str(slow["answer"]))
"""


def test_a_changed_cached_result_is_not_used(fdi, tmp_path):
    (tmp_path / "cached.py").write_text(textwrap.dedent(CACHED))
    assert fdi("cached.py", "--run-id", "c1").returncode == 0
    assert calls(tmp_path) == ["slow"]
    _set_result(tmp_path / ".flowdeco" / "state.db", "slow", '{"answer": 666}')
    r = fdi("cached.py", "--run-id", "c2")
    assert r.returncode == 0, r.stderr
    assert calls(tmp_path) == ["slow"] and (tmp_path / "answer.txt").read_text() == "42"
    assert "checksum" in r.stderr and "slow" in r.stderr


def test_a_version_2_store_is_migrated_and_its_results_trusted(fdi, work):
    assert fdi("flow.py", "--run-id", "r1", env={"FD_FAIL": "1"}).returncode == 1
    calls(work)
    db = work / ".flowdeco" / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)  # as flowdeco 2 left it: no checksums
    conn.execute("ALTER TABLE tasks DROP COLUMN checksum")
    for stmt in ("DROP INDEX runs_by_session", "DROP INDEX runs_by_status",
                 "DROP INDEX runs_by_version", "DROP TABLE flow_graphs",
                 "ALTER TABLE runs DROP COLUMN flow_version"):  # (schema 4's additions)
        conn.execute(stmt)
    conn.execute("PRAGMA user_version=2")
    conn.close()
    r = fdi("flow.py", "--resume", "r1")
    assert r.returncode == 0 and "state_warning" not in r.stderr, r.stderr
    assert sorted(calls(work)) == ["load", "transform"]  # extract restored, trusted
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    sums = dict(conn.execute("SELECT name, checksum FROM tasks"))
    conn.close()
    assert sums["extract"] is None and len(sums["load"]) == 64  # new rows carry one


# --------------------------------------------------------------------------- 8: read commands

KILLED = """
    import os, time
    from flowdeco import task

    @task
    def first():
        return {"rows": 3}

    @task
    def second(first):
        open("started", "w").close()
        time.sleep(120)
"""


def test_read_commands_change_no_byte_of_a_crashed_runs_state_dir(fdi, tmp_path):
    (tmp_path / "killed.py").write_text(textwrap.dedent(KILLED))
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", "killed.py", "--run-id", "k1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="the second task")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = tmp_path / ".flowdeco"
    assert (state / "state.db-wal").exists() and (state / "state.db-shm").exists()
    before = snapshot(state)
    out = tmp_path / "export.json"
    for args in (["runs"], ["runs", "list", "--flow", "killed"], ["runs", "show", "k1"],
                 ["runs", "show", "last"], ["runs", "export", "k1"],
                 ["runs", "export", "last", "-o", str(out)],
                 ["runs", "prune", "--keep", "0", "--dry-run"]):
        r = fdi(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert snapshot(state) == before, args
    assert "crashed" in fdi("runs").stdout  # the WAL's content is seen
    export = json.loads(out.read_text())
    assert export["results"] == {"first": {"rows": 3}} and export["startedNodes"] == ["second"]


def test_read_commands_change_no_byte_of_a_clean_state_dir(fdi, work):
    assert fdi("flow.py", "--run-id", "r1").returncode == 0
    state = work / ".flowdeco"
    before = snapshot(state)
    for args in (["runs"], ["runs", "show", "r1"], ["runs", "export", "last"]):
        assert fdi(*args).returncode == 0
        assert snapshot(state) == before, args


def test_read_commands_on_a_missing_state_dir_create_nothing(fdi, tmp_path):
    for args in (["runs"], ["runs", "show", "last"], ["runs", "export", "x"],
                 ["runs", "prune", "--keep", "1"]):
        fdi(*args, "--state-dir", "nowhere")
        assert not (tmp_path / "nowhere").exists(), args


def test_a_wal_without_its_shm_is_read_without_writing(tmp_path):
    """A copy of a crashed state dir that lost ``-shm``: the WAL's rows are still seen."""
    code = textwrap.dedent(f"""
        import os
        from flowdeco.plugins.state import SQLiteStore, TaskRow
        s = SQLiteStore({str(tmp_path)!r})
        s.open()
        s.begin_run("w", "f", 1.0, resumed=False)
        s.record_tasks("w", [TaskRow("a", "succeeded", 1, 1.0, 2.0, "x.0", "[1]", None, None)])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    os.unlink(tmp_path / "state.db-shm")
    before = snapshot(tmp_path)
    store = SQLiteStore(tmp_path)
    assert store.open_read_only()
    assert store.load_tasks("w")["a"].result == "[1]"
    store.close()
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- 9: first open

RACE = """
    import os, time
    from flowdeco import task

    open(f"ready-{os.getpid()}", "w").close()
    while not os.path.exists("go"):  # all eight start together
        time.sleep(0.002)

    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1
"""


@pytest.mark.parametrize("round_", range(3))
def test_eight_first_runs_at_once_into_a_new_state_dir(tmp_path, round_):
    (tmp_path / "race.py").write_text(textwrap.dedent(RACE))
    procs = [subprocess.Popen([sys.executable, "-m", "flowdeco", "race.py", "--run-id", f"r{i}",
                               "-q", "--state-dir", "fresh/state"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(8)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 8, what="eight processes")
        (tmp_path / "go").touch()
        results = [(p.wait(60), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
    assert [code for code, _ in results] == [0] * 8, [err for _, err in results]
    store = SQLiteStore(tmp_path / "fresh" / "state")
    assert store.open(create=False)
    assert sorted(s.run.run_id for s in store.list_runs()) == [f"r{i}" for i in range(8)]
    store.close()


def _held_empty_db(state_dir: Path) -> sqlite3.Connection:
    """An empty SQLite file in rollback mode with a write transaction open on it."""
    state_dir.mkdir(exist_ok=True)
    holder = sqlite3.connect(state_dir / "state.db", isolation_level=None,
                             check_same_thread=False)
    holder.execute("VACUUM")  # a valid, empty database (not yet WAL, not yet ours)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_opening_waits_for_another_openers_lock(tmp_path):
    """Switching to WAL while another process holds the lock waited no time at all."""
    holder = _held_empty_db(tmp_path)
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    store = SQLiteStore(tmp_path, busy_timeout=20)
    try:
        assert store.open()
        store.begin_run("x", "f", 1.0, resumed=False)
    finally:
        release.join()
        store.close()
        holder.close()


def test_the_locked_message_appears_only_after_the_timeout(tmp_path):
    holder = _held_empty_db(tmp_path)
    store = SQLiteStore(tmp_path, busy_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(StateError, match=r"stayed locked by another process for 0\.5s"):
            store.open()
        assert time.monotonic() - started >= 0.5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
    store = SQLiteStore(tmp_path, busy_timeout=0.5)
    assert store.open()
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StateError, match=r"stayed locked by another process for 0\.5s"):
            store.begin_run("x", "f", 1.0, resumed=False)
        assert time.monotonic() - started >= 0.5
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


# --------------------------------------------------------------------------- 10: unencodable


HOSTILE = """
    from flowdeco import task

    def mark(name):
        with open("calls.log", "a") as fh:
            fh.write(name + "\\n")

    @task
    def surrogate():
        mark("surrogate")
        return {"name": "ok", "bad": ["fine", "\\ud800"]}

    @task
    def good():
        mark("good")
        return 1

    @task
    def also_good():
        mark("also_good")
        return "two"
"""


def test_an_unencodable_result_fails_only_its_task(fdi, tmp_path):
    (tmp_path / "hostile.py").write_text(textwrap.dedent(HOSTILE))
    r = fdi("hostile.py", "--run-id", "h1", "-w", "4")
    assert r.returncode == 1, r.stderr
    assert "state_write_failed" not in r.stderr
    assert "UnstorableResult" in r.stderr and "'surrogate'" in r.stderr
    assert "surrogate" in r.stderr and "$['bad'][1]" in r.stderr
    assert sorted(calls(tmp_path)) == ["also_good", "good", "surrogate"]
    shown = fdi("runs", "show", "h1").stdout
    assert "good" in shown and "also_good" in shown
    r = fdi("hostile.py", "--resume", "h1")
    assert r.returncode == 1
    # the two good tasks were committed: only the failed one runs again
    assert calls(tmp_path) == ["surrogate"]


def test_an_unencodable_result_fails_on_a_process_executor_too(write_module, tmp_path):
    import flowdeco

    path = write_module("""
        from flowdeco import task

        @task
        def bad():
            return "\\udcff"

        @task
        def fine():
            return 2
    """)
    res = flowdeco.run(str(path), state_dir=tmp_path / "st", run_id="p", executor="process",
                       workers=2, disable=["audit"])
    bad, fine = res.outcomes["bad"], res.outcomes["fine"]
    assert bad.status == "failed" and fine.status == "succeeded"
    assert "UnstorableResult" in bad.error and "surrogate" in bad.error, bad.error
    store = SQLiteStore(tmp_path / "st")
    store.open(create=False)
    assert store.load_tasks("p")["fine"].result == "2"
    store.close()


def test_the_store_commits_the_rest_of_a_batch_with_an_unencodable_row(tmp_path):
    store = SQLiteStore(tmp_path)
    store.open()
    store.begin_run("r", "f", 1.0, resumed=False)
    store.record_tasks("r", [
        TaskRow("a", "succeeded", 1, 1.0, 2.0, "x.0", "1", None, None),
        TaskRow("b", "succeeded", 1, 1.0, 2.0, "x.0", '"\ud800"', None, None),
        TaskRow("c", "failed", 1, 1.0, 2.0, "x.0", None, "ValueError: \udcff", None)])
    tasks = store.load_tasks("r")
    store.close()
    assert tasks["a"].result == "1" and tasks["a"].status == "succeeded"
    assert tasks["b"].status == "failed" and tasks["b"].result is None
    assert "cannot be stored" in tasks["b"].error
    assert tasks["c"].error == "ValueError: \\udcff"


# --------------------------------------------------------------------------- 13: error lines


def test_a_huge_run_id_is_echoed_cut(fdi, work):
    huge = "x" * 10_000
    for args in (["flow.py", "--run-id", huge], ["flow.py", "--resume", huge],
                 ["runs", "show", huge], ["runs", "export", huge + "!"]):
        r = fdi(*args)
        assert r.returncode == 4
        line = one_error_line(r.stderr)
        assert len(line) < 400, line[:500]
        assert "10000 characters" in line or "10001 characters" in line, line


def test_a_multi_line_quick_check_report_is_one_line(fdi, work):
    assert fdi("flow.py", "--run-id", "r1").returncode == 0
    db = work / ".flowdeco" / "state.db"
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='runs'").fetchone()[0]
    conn.close()
    blob = bytearray(db.read_bytes())
    start = (root - 1) * page_size
    blob[start + 8:start + 64] = b"\xff" * 56  # garbled cell pointers of the runs table
    db.write_bytes(bytes(blob))
    r = fdi("runs")
    assert r.returncode == 4
    line = one_error_line(r.stderr)
    assert "corrupted" in line and len(line) < 700, line


@functools.lru_cache(maxsize=None)
def _blob() -> bytes:
    import flowdeco
    from flowdeco import task

    @task
    def one():
        return {"a": (1, 2), "b": "x" * 300}

    @task
    def two(one):
        return [one, one]

    with tempfile.TemporaryDirectory() as d:
        flowdeco.run([one, two], state_dir=d, run_id="r", disable=["audit"])
        return (Path(d) / "state.db").read_bytes()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_stores_read_only_raise_state_error_and_change_nothing(data):
    blob = bytearray(_blob())
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(1, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 6))):
            pos = data.draw(st.integers(0, len(blob) - 1))
            blob[pos] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.db").write_bytes(bytes(blob))
        store = SQLiteStore(d)
        try:
            if store.open_read_only():
                for summary in store.list_runs():
                    store.load_tasks(summary.run.run_id)
        except StateError:
            pass
        finally:
            store.close()
        assert os.listdir(d) == ["state.db"] and (Path(d) / "state.db").read_bytes() == blob


def test_read_commands_show_an_older_store_without_migrating_it(fdi, work):
    assert fdi("flow.py", "--run-id", "r1").returncode == 0
    db = work / ".flowdeco" / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)  # as flowdeco 1 left it
    conn.execute("DROP INDEX tasks_by_cache_key")
    conn.execute("ALTER TABLE tasks DROP COLUMN checksum")
    conn.execute("ALTER TABLE tasks DROP COLUMN cache_key")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    before = snapshot(work / ".flowdeco")
    r = fdi("runs", "export", "r1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"]["load"] == 60
    assert snapshot(work / ".flowdeco") == before
