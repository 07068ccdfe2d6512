"""Durable state from Python: recording, resume, --rerun, unstorable results, usage errors."""

from __future__ import annotations

import json
import hashlib
import sqlite3
from pathlib import Path

import pytest

import flowdeco
from flowdeco import StateError, UsageError
from flowdeco.plugins.state import SQLiteStore, register_type
from flowdeco.plugins.state.commands import export_run

ETL = """
    import json, os, datetime
    from flowdeco import task

    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def extract():
        mark("extract")
        return {{"rows": (1, 2, 3), "at": datetime.date(2026, 1, 1)}}

    @task
    def transform(extract):
        mark("transform")
        if os.environ.get("FD_FAIL_TRANSFORM"):
            raise ValueError("bad row")
        return [r * 2 for r in extract["rows"]]

    @task
    def load(transform):
        mark("load")
        return sum(transform)

    @task
    def report(extract):
        mark("report")
        return str(extract["at"])
"""


@pytest.fixture
def etl(flows, tmp_path):
    log = tmp_path / "calls.log"
    path = flows.write(ETL.format(log=str(log)))

    class Etl:
        state = flows.cwd / "state"

        def run(self, **kw):
            kw.setdefault("state_dir", self.state)
            kw.setdefault("workers", 2)
            return flowdeco.run(str(path), **kw)

        def calls(self) -> list[str]:
            return log.read_text().split() if log.exists() else []

        def reset_calls(self):
            log.unlink(missing_ok=True)

    return Etl()


def test_a_run_is_recorded_with_results(etl):
    result = etl.run(run_id="r1")
    assert result.ok
    store = SQLiteStore(etl.state)
    assert store.open(create=False)
    try:
        run = store.load_run("r1")
        tasks = store.load_tasks("r1")
    finally:
        store.close()
    assert run.status == "succeeded" and run.flow == result.flow and run.sessions == 1
    assert {n: t.status for n, t in tasks.items()} == dict.fromkeys(
        ["extract", "transform", "load", "report"], "succeeded")
    assert json.loads(tasks["load"].result) == 12
    assert all(t.fingerprint and t.attempts == 1 for t in tasks.values())


def test_resume_restores_completed_tasks_without_calling_them(etl, monkeypatch):
    monkeypatch.setenv("FD_FAIL_TRANSFORM", "1")
    first = etl.run(run_id="r1")
    assert first.status == "failed"
    assert first["load"].status == "skipped" and first["report"].status == "succeeded"
    monkeypatch.delenv("FD_FAIL_TRANSFORM")
    etl.reset_calls()
    second = etl.run(resume="r1")
    assert second.ok and second.run_id == "r1"
    assert sorted(etl.calls()) == ["load", "transform"]
    assert second["extract"].status == "restored" and second["report"].status == "restored"
    # restored results come back with their types and feed dependents
    assert second.results["extract"]["rows"] == (1, 2, 3)
    assert second.results["load"] == 12
    assert second["extract"].attempts == 1
    # a third resume restores everything
    etl.reset_calls()
    third = etl.run(resume="r1")
    assert third.ok and etl.calls() == []
    assert {o.status for o in third.outcomes.values()} == {"restored"}


def test_resume_last_picks_the_latest_run_of_this_flow(etl, flows, monkeypatch):
    monkeypatch.setenv("FD_FAIL_TRANSFORM", "1")
    etl.run(run_id="old")
    etl.run(run_id="new")
    other = flows.write("from flowdeco import task\n@task\ndef solo():\n    return 1\n")
    assert flowdeco.run(str(other), state_dir=etl.state, run_id="other-flow").ok
    monkeypatch.delenv("FD_FAIL_TRANSFORM")
    result = etl.run(resume="last")
    assert result.run_id == "new" and result.ok


def test_rerun_reruns_matching_tasks_and_downstream(etl):
    assert etl.run(run_id="r1").ok
    etl.reset_calls()
    result = etl.run(resume="r1", rerun=["transform"])
    assert sorted(etl.calls()) == ["load", "transform"]
    assert result["extract"].status == "restored" and result["load"].status == "succeeded"
    etl.reset_calls()
    result = etl.run(resume="r1", rerun=["extract or report"])
    assert sorted(etl.calls()) == ["extract", "load", "report", "transform"]


def test_changed_parameters_rerun_the_task(flows, tmp_path):
    log = tmp_path / "p.log"
    path = flows.write(f"""
        from flowdeco import task

        @task
        def base():
            open({str(log)!r}, "a").write("base\\n")
            return 1

        @task
        def scaled(base, factor: int = 1):
            open({str(log)!r}, "a").write("scaled\\n")
            return base * factor
    """)
    st = flows.cwd / "st"
    first = flowdeco.run(str(path), state_dir=st, run_id="p", params={"factor": 2})
    assert first.results["scaled"] == 2
    log.unlink()
    events = []

    class Rec:
        @flowdeco.hookimpl
        def flowdeco_report(self, run, event):
            events.append(event)

    result = flowdeco.run(str(path), state_dir=st, resume="p", params={"factor": 3},
                          plugins=[Rec()])
    assert result.results["scaled"] == 3 and log.read_text().split() == ["scaled"]
    changed = [e for e in events if e.name == "task_changed"]
    assert [(e.task, e.fields["reason"], e.fields["level"]) for e in changed] == \
        [("scaled", "parameters changed", "warning")]


def test_resuming_another_flow_is_refused(etl, flows):
    assert etl.run(run_id="r1").ok
    other = flows.write("from flowdeco import task\n@task\ndef solo():\n    return 1\n")
    with pytest.raises(StateError, match="is a run of flow"):
        flowdeco.run(str(other), state_dir=etl.state, resume="r1")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(resume="nope"), StateError, "unknown run id 'nope'.*python -m flowdeco runs"),
    (dict(resume="last"), StateError, "no saved run of flow"),
    (dict(resume="../x"), UsageError, "invalid run id"),
    (dict(resume="r1", state_dir=None), UsageError, "--no-state"),
    (dict(rerun=["load"]), UsageError, "--rerun needs --resume"),
    (dict(resume="r1", run_id="r2"), UsageError, "disagree"),
    (dict(resume="r1", rerun=["zzz"]), UsageError, "matches no task"),
])
def test_resume_usage_errors(etl, kwargs, error, message):
    if kwargs.get("resume") not in ("last", "nope"):
        assert etl.run(run_id="r1").ok
    with pytest.raises(error, match=message):
        etl.run(**kwargs)


def test_a_fresh_run_may_not_reuse_an_id(etl):
    assert etl.run(run_id="r1").ok
    with pytest.raises(StateError, match="already exists.*--resume r1"):
        etl.run(run_id="r1")


def test_state_sync_full(etl, monkeypatch):
    seen = []
    orig = SQLiteStore.open

    def spy(self, create=True):
        ok = orig(self, create)
        if ok and self.conn is not None:
            seen.append(self.conn.execute("PRAGMA synchronous").fetchone()[0])
        return ok

    monkeypatch.setattr(SQLiteStore, "open", spy)
    assert etl.run(run_id="f", state_sync="full").ok
    assert seen and set(seen) == {2}  # FULL
    with pytest.raises(UsageError):
        etl.run(run_id="g", state_sync="sometimes")


def test_no_state_writes_nothing(etl):
    assert etl.run(state_dir=None).ok
    assert not etl.state.exists()


class Opaque:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is Opaque and other.v == self.v


def test_an_unstorable_result_fails_its_task_without_retry(flows):
    path = flows.write(f"""
        from flowdeco import task
        from {__name__} import Opaque
        CALLS = []

        @task(retries=3)
        def make():
            CALLS.append(1)
            return {{"ok": [1, Opaque(2)]}}

        @task
        def use(make):
            return 1
    """)
    result = flowdeco.run(str(path), state_dir=flows.cwd / "st")
    out = result["make"]
    assert out.status == "failed" and out.attempts == 1
    assert out.error.startswith(
        "UnstorableResult: task 'make': result of type dict cannot be stored")
    assert "test_state_resume.Opaque at $['ok'][1]" in out.error and "register_type" in out.error
    assert result["use"].status == "skipped"
    assert isinstance(out.exception, StateError)
    # ... and works once the type is registered
    register_type(Opaque, encode=lambda o: o.v, decode=Opaque)
    try:
        assert flowdeco.run(str(path), state_dir=flows.cwd / "st").ok
    finally:
        from flowdeco.plugins.state.codec import default_codec
        default_codec._custom.pop(Opaque, None)


@pytest.mark.parametrize("executor", ["sync", "process"])
def test_other_executors_record_and_resume(flows, executor, monkeypatch, tmp_path):
    log = tmp_path / "x.log"
    path = flows.write(f"""
        import os
        from flowdeco import task

        @task
        def a():
            open({str(log)!r}, "a").write("a\\n")
            return (1, 2)

        @task
        def b(a):
            open({str(log)!r}, "a").write("b\\n")
            if os.environ.get("FD_FAIL_B"):
                raise RuntimeError("no")
            return list(a)

        @task
        def c():
            return object()   # cannot be stored: fails the task
    """)
    st = flows.cwd / "st"
    monkeypatch.setenv("FD_FAIL_B", "1")
    first = flowdeco.run(str(path), state_dir=st, run_id="e", executor=executor, workers=2)
    assert first["b"].status == "failed"
    assert "cannot be stored" in first["c"].error
    monkeypatch.delenv("FD_FAIL_B")
    log.unlink()
    second = flowdeco.run(str(path), state_dir=st, resume="e", executor=executor, workers=2)
    assert log.read_text().split() == ["b"]
    assert second.results["b"] == [1, 2] and second["a"].status == "restored"


def test_subflow_nodes_resume(flows, tmp_path):
    log = tmp_path / "s.log"
    path = flows.write(f"""
        import os
        from flowdeco import Flow, task

        inner = Flow("inner")

        @inner.task
        def left():
            open({str(log)!r}, "a").write("left\\n")
            return 1

        @inner.task
        def right():
            open({str(log)!r}, "a").write("right\\n")
            if os.environ.get("FD_FAIL_RIGHT"):
                raise RuntimeError("no")
            return 2

        node = inner.as_task("node")

        @task
        def total(node):
            return node["left"] + node["right"]
    """)
    st = flows.cwd / "st"
    import os
    os.environ["FD_FAIL_RIGHT"] = "1"
    try:
        assert flowdeco.run(str(path), state_dir=st, run_id="s").status == "failed"
    finally:
        del os.environ["FD_FAIL_RIGHT"]
    log.unlink()
    result = flowdeco.run(str(path), state_dir=st, resume="s")
    assert result.ok and result.results["total"] == 3
    assert log.read_text().split() == ["right"]
    assert result["node.left"].status == "restored"


def test_export_has_the_seed_keys(etl, monkeypatch):
    monkeypatch.setenv("FD_FAIL_TRANSFORM", "1")
    etl.run(run_id="r1")
    store = SQLiteStore(etl.state)
    store.open(create=False)
    try:
        data = export_run(store, "r1")
    finally:
        store.close()
    assert data["workflowId"] == data["run_id"] == "r1"
    assert sorted(data["completedNodes"]) == ["extract", "report"]
    assert data["totalCompleted"] == 2
    assert data["counts"] == {"succeeded": 2, "failed": 1, "skipped": 1}
    assert data["results"]["extract"]["rows"] == {"$t": "tuple", "v": [1, 2, 3]}
    assert data["tasks"]["transform"]["error"] == "ValueError: bad row"
    assert data["tasks"]["load"]["reason"] == "upstream"
    json.dumps(data, allow_nan=False)


def test_a_write_failure_stops_the_run_and_keeps_what_was_written(flows, tmp_path):
    """A full disk: SQLITE_FULL from a size-capped database; resume later works."""
    log = tmp_path / "f.log"
    path = flows.write(f"""
        from flowdeco import task

        def mark(n):
            open({str(log)!r}, "a").write(n + "\\n")

        @task
        def small():
            mark("small")
            return 1

        @task
        def big(small):
            mark("big")
            return "x" * 200_000

        @task
        def after(big):
            mark("after")
            return len(big)
    """)
    st = flows.cwd / "st"

    class Capped(SQLiteStore):
        def open(self, create=True):
            ok = super().open(create)
            if ok and self.conn is not None:
                pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
                self.conn.execute(f"PRAGMA max_page_count={pages + 3}")
            return ok

    class Backend:
        @flowdeco.hookimpl
        def flowdeco_state_store(self, state_dir, config):
            return Capped(state_dir)

    events = []

    class Rec:
        @flowdeco.hookimpl
        def flowdeco_report(self, run, event):
            events.append(event)

    result = flowdeco.run(str(path), state_dir=st, run_id="full", plugins=[Backend(), Rec()],
                          workers=1)
    assert result.status == "failed"
    failed = [e for e in events if e.name == "state_write_failed"]
    assert len(failed) == 1 and failed[0].fields["level"] == "error"
    assert "full" in failed[0].fields["error"]
    assert result["after"].status in ("skipped", "failed")
    assert "after" not in log.read_text().split()  # nothing started on unsaved inputs
    store = SQLiteStore(st)
    store.open(create=False)
    try:
        tasks = store.load_tasks("full")
        assert tasks["small"].status == "succeeded"  # what was written is kept
    finally:
        store.close()
    log.unlink()
    again = flowdeco.run(str(path), state_dir=st, resume="full")
    assert again.ok and again["small"].status == "restored"
    assert log.read_text().split() == ["big", "after"]


def test_the_database_is_owner_only_even_with_umask_zero(flows, tmp_path):
    path = flows.write("""
        import os, stat
        from flowdeco import task

        @task
        def modes(ctx):
            import glob
            out = {}
            for p in glob.glob(os.path.join(os.environ["FD_STATE"], "state.db*")):
                out[os.path.basename(p)] = stat.S_IMODE(os.stat(p).st_mode)
            return out

        @task
        def later(modes):
            return modes
    """)
    st = flows.cwd / "st"
    import os
    old = os.umask(0)
    os.environ["FD_STATE"] = str(st)
    try:
        result = flowdeco.run(str(path), state_dir=st, run_id="perm")
    finally:
        os.umask(old)
        del os.environ["FD_STATE"]
    assert result.ok
    seen = result.results["later"]
    assert set(seen) >= {"state.db", "state.db-wal", "state.db-shm"}
    assert set(seen.values()) == {0o600}
    audit = st / "runs" / "perm" / "audit.jsonl"
    assert audit.stat().st_mode & 0o777 == 0o600
    assert (st / "locks" / "perm.lock").stat().st_mode & 0o777 == 0o600
    assert st.stat().st_mode & 0o777 == 0o700


def test_records_are_loaded_strictly(etl):
    assert etl.run(run_id="r1").ok
    db = etl.state / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tasks SET attempts='three' WHERE name='load'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=r"task 'load' is invalid: .*attempts"):
        etl.run(resume="r1")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tasks SET attempts=1, status='weird' WHERE name='load'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="status"):
        etl.run(resume="r1")
    conn = sqlite3.connect(db)
    bad = '{"$t": 1}'  # intact (its checksum matches) but not loadable: refused
    conn.execute("UPDATE tasks SET status='succeeded', result=?, checksum=? WHERE name='load'",
                 (bad, hashlib.sha256(bad.encode()).hexdigest()))
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="task 'load'.*--rerun 'load'"):
        etl.run(resume="r1")
    assert etl.run(resume="r1", rerun=["load"]).ok


def test_locks_refuse_a_run_in_use_in_this_process(etl):
    assert etl.run(run_id="r1").ok
    store = SQLiteStore(etl.state)
    lock = store.lock_run("r1")
    try:
        with pytest.raises(StateError, match="in use by another process"):
            etl.run(resume="r1")
    finally:
        lock.release()
    assert etl.run(resume="r1").ok


def test_plugin_manager_is_clean_after_a_run(etl):
    """The session's objects are unregistered, so pooled managers are reused."""
    from flowdeco import manager
    assert etl.run(run_id="r1").ok
    assert etl.run(resume="r1").ok
    for leases in manager._POOL.values():
        for lease in leases:
            assert lease.pm.get_plugin("state-store") is None
            assert lease.pm.get_plugin("state-restorer") is None


def test_resume_keeps_the_audit_trail(etl):
    assert etl.run(run_id="r1").ok
    assert etl.run(resume="r1").ok
    lines = [json.loads(x) for x in
             (etl.state / "runs" / "r1" / "audit.jsonl").read_text().splitlines()]
    starts = [e for e in lines if e["event"] == "run_started"]
    assert len(starts) == 2 and starts[1]["resumed"] is True
    assert Path(etl.state / "state.db").exists()


def test_mapped_instances_are_restored_one_by_one(flows, tmp_path, monkeypatch):
    log = tmp_path / "m.log"
    path = flows.write(f"""
        import os
        from flowdeco import task

        @task
        def files():
            return ["a", "b", "c", "d"]

        @task(map="files")
        def scan(files):
            open({str(log)!r}, "a").write(files + "\\n")
            if files == "c" and os.environ.get("FD_FAIL_C"):
                raise ValueError("unreadable")
            return (files, len(files))

        @task
        def total(scan):
            return [name for name, _ in scan]
    """)
    st = flows.cwd / "st"
    monkeypatch.setenv("FD_FAIL_C", "1")
    first = flowdeco.run(str(path), state_dir=st, run_id="m", workers=2)
    assert first["scan"].status == "failed" and first["scan[2]"].status == "failed"
    monkeypatch.delenv("FD_FAIL_C")
    log.unlink()
    second = flowdeco.run(str(path), state_dir=st, resume="m", workers=2)
    assert second.ok and log.read_text().split() == ["c"]
    assert second["scan[0]"].status == "restored" and second["scan[2]"].status == "succeeded"
    assert second.results["scan"][0] == ("a", 1)  # restored instance results keep their types
    assert second.results["total"] == ["a", "b", "c", "d"]
    third = flowdeco.run(str(path), state_dir=st, resume="m", rerun=["files"])
    assert third.ok and sorted(log.read_text().split()) == ["a", "b", "c", "c", "d"]
    # killed after every instance was recorded but before the mapped task was: on
    # resume all instances are restored while the scheduler dispatches, and the
    # dependent must still start (its commit gate once waited forever here)
    log.unlink()
    for workers in (1, 2):
        conn = sqlite3.connect(st / "state.db")
        conn.execute("DELETE FROM tasks WHERE run_id='m' AND name IN ('scan', 'total')")
        conn.commit()
        conn.close()
        fourth = flowdeco.run(str(path), state_dir=st, resume="m", workers=workers)
        assert fourth.ok and fourth.results["total"] == ["a", "b", "c", "d"]
        assert fourth["scan[3]"].status == "restored" and not log.exists()


def test_fingerprint_covers_options_that_shape_the_result():
    """Changing `until=` or `map=` changes what a task returns, so a resumed run must
    not restore its old result (they were missing from the fingerprint)."""
    import attrs as _attrs
    from flowdeco.plugins.state.fingerprint import fingerprint
    from flowdeco.task import make_spec

    def poll(ctx):
        return ctx.iteration

    base = make_spec(poll, every=1.0, times=3)
    with_until = make_spec(poll, every=1.0, times=3, until=lambda r: r > 1)
    assert fingerprint(poll, base, None) != fingerprint(poll, with_until, None)
    mapped = _attrs.evolve(base, map="items")
    assert fingerprint(poll, base, None) != fingerprint(poll, mapped, None)
