"""The SQLite store: strict loading under fuzzing, schema, interface, locks."""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowdeco
from flowdeco import StateError, task
from flowdeco.plugins.state import RunLock, SQLiteStore, Store, TaskRow
from flowdeco.plugins.state.codec import default_codec
from flowdeco.plugins.state.commands import export_run
from flowdeco.plugins.state.store import APPLICATION_ID, SCHEMA_VERSION


@attrs.frozen
class Reading:
    sensor: str
    values: tuple


def _first():
    return {"when": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "ids": (1, 2)}


def _second(_first):
    return Reading("s1", (1.5, 2.5))


def _third(_second):
    raise RuntimeError("boom")


def _fourth(_third):
    return 1


@functools.lru_cache(maxsize=None)
def good_blob() -> bytes:
    """A valid state database with two runs (succeeded/failed/skipped tasks, rich results)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        fns = [task(_first), task(_second), task(_third), task(_fourth)]
        flowdeco.run(fns, state_dir=root, run_id="one", disable=["audit"])
        flowdeco.run(fns[:2], state_dir=root, run_id="two", disable=["audit"])
        assert not Path(str(root / "state.db") + "-wal").exists()  # closed cleanly
        return (root / "state.db").read_bytes()


@pytest.fixture
def good_store() -> bytes:
    return good_blob()


def load_everything(state_dir: Path) -> int:
    """Everything a resume, ``runs`` and ``runs export`` read; returns the number of tasks."""
    store = SQLiteStore(state_dir)
    n = 0
    try:
        if not store.open(create=False):
            return 0
        for summary in store.list_runs():
            rid = summary.run.run_id
            for rec in store.load_tasks(rid).values():
                n += 1
                if rec.result is not None:
                    default_codec.loads(rec.result)
            export_run(store, rid)
    finally:
        store.close()
    return n


def test_the_good_store_loads(good_store, tmp_path):
    (tmp_path / "state.db").write_bytes(good_store)
    assert load_everything(tmp_path) == 6


def _with_db(blob: bytes, check) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.db"
        path.write_bytes(blob)
        try:
            check(Path(d))
        except StateError:
            pass


FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(blob=st.binary(min_size=1, max_size=5000))
def test_random_bytes_raise_only_state_error_and_stay_untouched(blob):
    def check(d: Path) -> None:
        try:
            load_everything(d)
        finally:
            assert (d / "state.db").read_bytes() == blob
    _with_db(blob, check)


@FUZZ
@given(data=st.data())
def test_truncations_raise_only_state_error_and_stay_untouched(data):
    good = good_blob()
    cut = data.draw(st.integers(1, len(good) - 1))
    blob = good[:cut]

    def check(d: Path) -> None:
        with pytest.raises(StateError):
            load_everything(d)
        assert (d / "state.db").read_bytes() == blob
    _with_db(blob, check)


@FUZZ
@given(data=st.data())
def test_flipped_bytes_raise_only_state_error(data):
    blob = bytearray(good_blob())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
    _with_db(bytes(blob), load_everything)


sql_values = st.one_of(
    st.none(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.text(max_size=30),
    st.binary(max_size=20), st.floats(), st.sampled_from([
        "succeeded", "restored", "running", "{}", "[1", '{"$t": "tuple", "v": 5}',
        '{"$t": "obj", "c": "os:path", "v": {}}', '{"$t": "dict", "v": [[[1], 2]]}', "1e999",
        "x" * 70_000, "../../etc", "", "NaN"]))


@FUZZ
@given(data=st.data())
def test_mutated_records_raise_only_state_error(data):
    table = data.draw(st.sampled_from(["runs", "tasks"]))
    columns = {"runs": ["run_id", "flow", "status", "started", "session_started", "finished",
                        "duration", "sessions", "pid"],
               "tasks": ["run_id", "name", "status", "attempts", "started", "finished",
                         "fingerprint", "result", "error", "reason"]}[table]
    changes = data.draw(st.lists(st.tuples(st.sampled_from(columns), sql_values),
                                 min_size=1, max_size=3))

    def check(d: Path) -> None:
        conn = sqlite3.connect(d / "state.db")
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for column, value in changes:
                conn.execute(f"UPDATE {table} SET {column}=? WHERE rowid IN "
                             f"(SELECT rowid FROM {table} LIMIT 1)" if table == "runs" else
                             f"UPDATE {table} SET {column}=? WHERE name IN "
                             f"(SELECT name FROM {table} LIMIT 1)", (value,))
            conn.commit()
        except sqlite3.IntegrityError:
            return  # the schema refuses this mutation itself
        finally:
            conn.close()
        load_everything(d)
    _with_db(good_blob(), check)


def test_oversized_fields_are_refused(good_store, tmp_path):
    (tmp_path / "state.db").write_bytes(good_store)
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("UPDATE tasks SET error=? WHERE name='_third'", ("e" * 70_000,))
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="error is 70000 characters long"):
        load_everything(tmp_path)


def test_a_new_store_has_the_schema_and_modes(tmp_path):
    store = SQLiteStore(tmp_path / "st")
    assert store.open(create=False) is False and not (tmp_path / "st").exists()
    assert store.open()
    conn = store.conn
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert (tmp_path / "st" / "state.db").stat().st_mode & 0o777 == 0o600
    assert isinstance(store, Store)


def test_an_empty_file_or_empty_sqlite_db_becomes_a_store(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "state.db").touch()
    (tmp_path / "b").mkdir()
    sqlite3.connect(tmp_path / "b" / "state.db").close()
    for d in ("a", "b"):
        store = SQLiteStore(tmp_path / d)
        assert store.open()
        store.begin_run("x", "flow", 1.0, resumed=False)
        store.close()


def test_existing_loose_permissions_are_tightened(tmp_path):
    store = SQLiteStore(tmp_path)
    store.open()
    store.close()
    os.chmod(tmp_path / "state.db", 0o644)
    store.open()
    store.begin_run("x", "f", 1.0, resumed=False)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    store.close()


def test_records_round_trip_through_the_interface(tmp_path):
    store = SQLiteStore(tmp_path)
    store.open()
    store.begin_run("r", "flow", 100.0, resumed=False)
    store.record_tasks("r", [
        TaskRow("a", "succeeded", 2, 100.0, 101.5, "ab.0", "[1]", None, None),
        TaskRow("b", "skipped", 0, None, None, "cd.0", None, None, "upstream")])
    store.record_tasks("r", [TaskRow("b", "running", 1, 102.0, None, None, None, None, None)])
    store.finish_run("r", "failed", 103.0, 3.0)
    store.begin_run("r", "flow", 200.0, resumed=True)
    run = store.load_run("r")
    assert (run.status, run.sessions, run.duration, run.started) == ("running", 2, 3.0, 100.0)
    tasks = store.load_tasks("r")
    assert tasks["a"].duration == 1.5 and tasks["a"].completed
    assert tasks["b"].status == "running" and not tasks["b"].completed
    assert [s.run.run_id for s in store.list_runs(flow="flow")] == ["r"]
    assert store.list_runs(flow="other") == []
    store.delete_run("r")
    assert store.load_run("r") is None and store.load_tasks("r") == {}
    store.close()


def test_run_locks(tmp_path):
    lock = RunLock(tmp_path / "locks" / "r.lock", "r", str(tmp_path))
    assert RunLock.held(tmp_path / "locks" / "r.lock")
    with pytest.raises(StateError, match="in use by another process"):
        RunLock(tmp_path / "locks" / "r.lock", "r", str(tmp_path))
    lock.release()
    lock.release()  # idempotent
    assert not RunLock.held(tmp_path / "locks" / "r.lock")
    RunLock(tmp_path / "locks" / "r.lock", "r", str(tmp_path)).release()


def test_prune_leaves_runs_in_use_alone(tmp_path, capsys):
    from flowdeco.manager import make_pluginmanager
    from flowdeco.plugins.state.commands import main
    store = SQLiteStore(tmp_path)
    store.open()
    for i, rid in enumerate(["old", "busy", "new"]):
        store.begin_run(rid, "f", float(i), resumed=False)
        store.finish_run(rid, "succeeded", float(i) + 0.5, 0.5)
    store.close()
    lock = SQLiteStore(tmp_path).lock_run("busy")
    try:
        pm = make_pluginmanager()
        assert main(["prune", "--keep", "1", "--state-dir", str(tmp_path)], pm) == 0
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert "removed 1 run(s)" in out and "in use left alone: busy" in out
    store.open(create=False)
    assert sorted(s.run.run_id for s in store.list_runs()) == ["busy", "new"]
    store.close()


def test_copying_a_live_store_is_safe(good_store, tmp_path):
    """A store copied with its WAL (a backup taken mid-run) opens and loads."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "state.db").write_bytes(good_store)
    store = SQLiteStore(src)
    store.open()
    store.begin_run("three", "f", 5.0, resumed=False)
    store.record_tasks("three", [TaskRow("a", "succeeded", 1, 5.0, 6.0, "x.0", "7", None, None)])
    dst = tmp_path / "dst"
    shutil.copytree(src, dst)
    store.close()
    assert load_everything(dst) == 7
