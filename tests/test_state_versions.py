"""Flow versions (graph digest, snapshot per run), ``runs diff``, the UI's read-only queries."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowdeco import FakeClock, Flow, Retry, StateError, UsageError
from flowdeco.graph import build_graph
from flowdeco.plugins.serve import serve
from flowdeco.plugins.state import queries as q
from flowdeco.plugins.state.store import (APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION,
                                          SQLiteStore, StoreChanged, TaskRow)
from flowdeco.plugins.state.versions import snapshot, snapshot_json, version_of

from test_state_cli import fdi, one_error_line  # noqa: F401 - the in-process CLI fixture

UTC = dt.timezone.utc

FLOW = """
    from flowdeco import task

    @task
    def extract():
        return [1, 2, 3]

    @task(retries=2)
    def transform(extract):
        return [x * 10 for x in extract]

    @task
    def load(transform):
        '''The total.'''
        return sum(transform)

    @task
    def audit(extract):
        return len(extract)
"""


def _version(members, name="f") -> str:
    return version_of(snapshot_json(snapshot(build_graph(name, members))))


def _module(tmp_path: Path, source: str, name: str):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib
        importlib.invalidate_caches()
        sys.modules.pop(name, None)
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def _tasks(mod) -> list:
    return [getattr(mod, n) for n in ("extract", "transform", "load", "audit")]


# --------------------------------------------------------------------------- the digest


def test_same_code_gives_the_same_version_in_another_process(tmp_path):
    mod = _module(tmp_path, FLOW, "fv_same")
    here = _version(_tasks(mod))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fv_same; "
            "from flowdeco.graph import build_graph; "
            "from flowdeco.plugins.state.versions import snapshot, snapshot_json, version_of; "
            "print(version_of(snapshot_json(snapshot(build_graph('f', [fv_same.extract, "
            "fv_same.transform, fv_same.load, fv_same.audit])))))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here and len(here) == 16


def test_a_changed_body_option_or_edge_changes_the_version_a_docstring_does_not(tmp_path):
    base = _module(tmp_path, FLOW, "fv_base")
    v0 = _version(_tasks(base))
    s0 = snapshot(build_graph("f", _tasks(base)))
    body = _module(tmp_path, FLOW.replace("x * 10", "x * 11"), "fv_body")
    s1 = snapshot(build_graph("f", _tasks(body)))
    fp0 = {t["name"]: t["fingerprint"] for t in s0["tasks"]}
    fp1 = {t["name"]: t["fingerprint"] for t in s1["tasks"]}
    assert {n for n in fp0 if fp0[n] != fp1[n]} == {"transform"}
    assert _version(_tasks(body)) != v0
    option = _module(tmp_path, FLOW.replace("retries=2", "retries=3"), "fv_option")
    assert _version(_tasks(option)) != v0
    edge = _module(tmp_path, FLOW.replace("@task\n    def audit", "@task(after=['load'])\n"
                                          "    def audit"), "fv_edge")
    s_edge = snapshot(build_graph("f", _tasks(edge)))
    assert ["load", "audit"] in s_edge["edges"] and _version(_tasks(edge)) != v0
    assert {t["name"]: t["fingerprint"] for t in s_edge["tasks"]} == fp0  # same code
    doc = _module(tmp_path, FLOW.replace("The total.", "The sum of it all."), "fv_doc")
    assert _version(_tasks(doc)) == v0


def test_the_snapshot_describes_deps_after_options_subflows_and_maps():
    inner = Flow("checks")

    @inner.task
    def size(data):
        return len(data)

    @inner.task(after=["size"])
    def done():
        return True

    outer = Flow("outer")

    @outer.task
    def data():
        return [1, 2]

    outer.add(inner.as_task("validate"))

    @outer.task(map="data", timeout=5.0)
    def each(data):
        return data

    @outer.task(retry=Retry(retries=3, backoff="linear"), tags={"b", "a"}, priority=2)
    def report(validate, each):
        return validate

    snap = snapshot(build_graph("outer", outer.members))
    tasks = {t["name"]: t for t in snap["tasks"]}
    assert snap["flow"] == "outer"
    assert tasks["validate"]["kind"] == "subflow" and tasks["validate"]["fingerprint"] is None
    assert tasks["validate"]["options"] == {"flow": "checks"}
    assert tasks["validate.size"]["subflow"] == "validate"
    assert tasks["validate.size"]["deps"] == ["data"]
    assert tasks["validate.done"]["after"] == ["validate.size"]
    assert tasks["each"]["mapped"] and tasks["each"]["options"] == {"map": "data", "timeout": 5.0}
    assert tasks["report"]["deps"] == ["validate", "each"] and tasks["report"]["subflow"] is None
    assert ["validate", "report"] in snap["edges"] and ["data", "each"] in snap["edges"]
    assert ["validate.size", "validate"] not in snap["edges"]  # membership is not an edge
    assert tasks["report"]["options"]["retry"]["$type"].endswith(".Retry")
    assert tasks["report"]["options"]["tags"] == ["a", "b"]
    # built in sorted key order: the canonical text needs no sort_keys
    assert snapshot_json(snap) == json.dumps(snap, sort_keys=True, separators=(",", ":"),
                                             ensure_ascii=False)


# --------------------------------------------------------------------------- recording


def _db(work: Path) -> sqlite3.Connection:
    return sqlite3.connect(work / ".flowdeco" / "state.db")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    return tmp_path


def test_each_run_records_its_version_and_one_snapshot_per_version(fdi, work):
    assert fdi("flow.py", "--run-id", "r1", "-q").returncode == 0
    assert fdi("flow.py", "--run-id", "r2", "-q").returncode == 0
    (work / "flow.py").write_text(textwrap.dedent(FLOW.replace("x * 10", "x * 7")))
    assert fdi("flow.py", "--run-id", "r3", "-q").returncode == 0
    conn = _db(work)
    versions = dict(conn.execute("SELECT run_id, flow_version FROM runs"))
    graphs = dict(conn.execute("SELECT digest, graph FROM flow_graphs"))
    conn.close()
    assert versions["r1"] == versions["r2"] != versions["r3"]
    assert set(graphs) == {versions["r1"], versions["r3"]}
    snap = json.loads(graphs[versions["r3"]])
    assert version_of(graphs[versions["r3"]]) == versions["r3"]
    assert [t["name"] for t in snap["tasks"]] == ["extract", "transform", "load", "audit"]
    store = SQLiteStore(work / ".flowdeco")
    store.open_read_only()
    try:
        assert q.graph_snapshot(store, "r3") == snap
        assert q.changed_tasks(store, "r3") == {"transform"}
        assert q.changed_tasks(store, "r2") == set() == q.changed_tasks(store, "r1")
    finally:
        store.close()


def test_a_resumed_run_takes_the_version_of_the_graph_it_resumed_with(fdi, work):
    (work / "flow.py").write_text(textwrap.dedent(FLOW.replace(
        "return sum(transform)", "raise ValueError('no')")))
    assert fdi("flow.py", "--run-id", "r1", "-q").returncode == 1
    first = dict(_db(work).execute("SELECT run_id, flow_version FROM runs"))["r1"]
    (work / "flow.py").write_text(textwrap.dedent(FLOW))
    assert fdi("flow.py", "--resume", "r1", "-q").returncode == 0
    conn = _db(work)
    now = dict(conn.execute("SELECT run_id, flow_version FROM runs"))["r1"]
    kept = {d for (d,) in conn.execute("SELECT digest FROM flow_graphs")}
    conn.close()
    assert now != first and kept == {first, now}


def test_prune_drops_snapshots_no_run_uses(fdi, work):
    assert fdi("flow.py", "--run-id", "r1", "-q").returncode == 0
    (work / "flow.py").write_text(textwrap.dedent(FLOW.replace("x * 10", "x * 7")))
    assert fdi("flow.py", "--run-id", "r2", "-q").returncode == 0
    assert fdi("flow.py", "--run-id", "r3", "-q").returncode == 0
    assert fdi("runs", "prune", "--keep", "1").returncode == 0
    conn = _db(work)
    assert conn.execute("SELECT count(*) FROM flow_graphs").fetchone()[0] == 1
    assert fdi("runs", "prune", "--keep", "0").returncode == 0
    assert conn.execute("SELECT count(*) FROM flow_graphs").fetchone()[0] == 0
    conn.close()


# --------------------------------------------------------------------------- runs diff / show


def test_runs_diff_prints_added_removed_changed_tasks_and_edges(fdi, work):
    assert fdi("flow.py", "--run-id", "a", "-q").returncode == 0
    changed = FLOW.replace("x * 10", "x * 3").replace(
        "@task\n    def audit(extract):\n        return len(extract)\n",
        "@task\n    def publish(load):\n        return load\n")
    (work / "flow.py").write_text(textwrap.dedent(changed))
    assert fdi("flow.py", "--run-id", "b", "-q").returncode == 0
    r = fdi("runs", "diff", "a", "b")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("run a -> run b: flow version ") and " -> " in lines[0]
    assert lines[1:] == ["+ task publish", "- task audit", "~ task transform (code)",
                         "+ edge load -> publish", "- edge extract -> audit"]
    r = fdi("runs", "diff", "b", "b")
    assert r.stdout.splitlines()[-1] == "no differences (same flow version)"
    r = fdi("runs", "diff", "a", "b", "--json")
    data = json.loads(r.stdout)
    assert data["added_tasks"] == ["publish"] and data["changed_tasks"] == {"transform": ["code"]}
    show = fdi("runs", "show", "b")
    version = dict(_db(work).execute("SELECT run_id, flow_version FROM runs"))["b"]
    assert f"flow version {version}" in show.stdout.splitlines()[0]


@pytest.mark.parametrize("args, name", [(("a", "zz"), "zz"), (("nope", "a"), "nope"),
                                        (("a", "../x"), "../x")])
def test_runs_diff_with_an_unknown_run_id_exits_4_naming_it(fdi, work, args, name):
    assert fdi("flow.py", "--run-id", "a", "-q").returncode == 0
    r = fdi("runs", "diff", *args)
    assert r.returncode == 4
    assert repr(name) in one_error_line(r.stderr)


# --------------------------------------------------------------------------- migration


def _v3_store(path: Path) -> None:
    """A store as the release before flow versions left it (schema 3 when written)."""
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / "state.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for version in range(1, q.VERSIONS_SCHEMA):  # everything before flow versions
        for stmt in MIGRATIONS[version]:
            conn.execute(stmt)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={q.VERSIONS_SCHEMA - 1}")
    conn.execute("INSERT INTO runs VALUES ('old', 'f', 'succeeded', 1.0, 1.0, 2.0, 1.0, 1, NULL)")
    conn.execute("INSERT INTO runs VALUES ('old2', 'f', 'failed', 3.0, 3.0, 4.0, 1.0, 1, NULL)")
    for rid, fp in (("old", "aa.0"), ("old2", "bb.0")):
        for name, fingerprint in (("t", fp), ("u", "cc.0")):
            conn.execute("INSERT INTO tasks (run_id, name, status, attempts, started, finished, "
                         "fingerprint, result) VALUES (?, ?, 'succeeded', 1, 1.0, 2.0, ?, '7')",
                         (rid, name, fingerprint))
    conn.close()


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_version_3_store_is_read_as_it_is_then_migrated(tmp_path):
    _v3_store(tmp_path)
    before = _fingerprint(tmp_path)
    store = SQLiteStore(tmp_path)
    assert store.open_read_only() and store.version == q.VERSIONS_SCHEMA - 1
    try:
        rows, total = q.list_runs(store)
        assert total == 2 and [r.flow_version for r in rows] == [None, None]
        assert q.graph_snapshot(store, "old") is None
        assert q.changed_tasks(store, "old2") == {"t"}  # from the task rows' fingerprints
        diff = q.diff_versions(store, "old", "old2")
        assert not diff.edges_known and dict(diff.changed_tasks) == {"t": ("code",)}
        assert q.list_runs(store, text="old2")[1] == 1
    finally:
        store.close()
    assert _fingerprint(tmp_path) == before
    store = SQLiteStore(tmp_path)
    assert store.open(create=False)
    store.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "flow_version" in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    assert conn.execute("SELECT count(*) FROM flow_graphs").fetchone()[0] == 0
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"runs_by_session", "runs_by_status", "runs_by_version"} <= indexes
    assert conn.execute("SELECT run_id, flow_version FROM runs ORDER BY run_id").fetchall() == [
        ("old", None), ("old2", None)]
    conn.close()


# --------------------------------------------------------------------------- list_runs


@pytest.fixture
def listing(tmp_path):
    """12 runs: flows a/b, statuses, one a day from 2026-01-01; one running (this pid)."""
    store = SQLiteStore(tmp_path)
    store.open()
    day = dt.datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for i in range(12):
        rid = f"{'ab'[i % 2]}-{i:02d}"
        store.begin_run(rid, "flow_" + "ab"[i % 2], day + i * 86400, resumed=False)
        store.record_tasks(rid, [TaskRow(f"t{j}", "succeeded" if j else "failed", 1,
                                         day + i * 86400, day + i * 86400 + 1, None, None,
                                         None, None) for j in range(3)])
        if i != 11:
            store.finish_run(rid, ("succeeded", "failed")[i % 3 == 0], day + i * 86400 + 5, 5.0)
    store.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("INSERT INTO runs (run_id, flow, status, started, session_started, pid) "
                 "VALUES ('dead', 'flow_a', 'running', ?, ?, NULL)", (day - 86400, day - 86400))
    conn.commit()
    conn.close()
    store = SQLiteStore(tmp_path)
    store.open_read_only()
    yield store, day
    store.close()


def test_list_runs_filters_and_pages(listing):
    store, day = listing
    rows, total = q.list_runs(store, limit=5)
    assert total == 13 and [r.run_id for r in rows] == ["b-11", "a-10", "b-09", "a-08", "b-07"]
    assert rows[0].status == "running" and rows[0].counts == {"succeeded": 2, "failed": 1}
    assert [r.run_id for r in q.list_runs(store, limit=5, offset=10)[0]] == ["b-01", "a-00",
                                                                             "dead"]
    assert q.list_runs(store, flow="flow_a")[1] == 7
    assert [r.run_id for r in q.list_runs(store, status="crashed")[0]] == ["dead"]
    assert [r.run_id for r in q.list_runs(store, status="running")[0]] == ["b-11"]
    assert {r.run_id for r in q.list_runs(store, status="failed")[0]} == {
        "a-00", "b-03", "a-06", "b-09"}
    assert [r.run_id for r in q.list_runs(store, text="B-0", flow="flow_b", limit=2)[0]] == [
        "b-09", "b-07"]
    since = dt.datetime(2026, 1, 3, tzinfo=UTC)
    rows, total = q.list_runs(store, since=since, until=day + 4 * 86400)
    assert total == 2 and [r.run_id for r in rows] == ["b-03", "a-02"]
    assert q.list_runs(store, text="zzz") == ([], 0)
    assert rows[0].to_dict()["counts"] == {"succeeded": 2, "failed": 1}


@pytest.mark.parametrize("kwargs, words", [
    ({"status": "done"}, "unknown run status 'done'"),
    ({"limit": 0}, "limit must be an int from 1 to 1000"),
    ({"offset": -1}, "offset must be an int >= 0"),
    ({"since": "yesterday"}, "since must be POSIX seconds"),
    ({"until": dt.datetime(2026, 1, 1)}, "until: a datetime needs a time zone"),
])
def test_list_runs_refuses_bad_arguments_by_name(listing, kwargs, words):
    with pytest.raises(UsageError, match=words):
        q.list_runs(listing[0], **kwargs)


def test_run_detail_and_task_rows(listing):
    store, day = listing
    assert q.run_detail(store, "nope") is None and q.task_rows(store, "nope") == []
    row = q.run_detail(store, "a-00")
    assert row.status == "failed" and row.tasks == 3 and row.duration == 5.0
    tasks = q.task_rows(store, "a-00")
    assert [t.name for t in tasks] == ["t0", "t1", "t2"] and tasks[0].duration == 1.0
    assert tasks[0].result_chars is None and not tasks[0].cached


def test_queries_on_a_missing_store_are_empty(tmp_path):
    store = SQLiteStore(tmp_path / "none")
    assert store.open_read_only() is False
    assert q.list_runs(store) == ([], 0) and q.run_detail(store, "x") is None
    assert q.data_version(store) == 0 and q.schedules(tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_task_result_reads_a_preview_only(tmp_path):
    store = SQLiteStore(tmp_path)
    store.open()
    store.begin_run("r", "f", 1.0, resumed=False)
    text = json.dumps(list(range(5000)))
    store.record_tasks("r", [TaskRow("t", "succeeded", 1, 1.0, 2.0, None, text, None, None)])
    store.close()
    store.open_read_only()
    try:
        preview = q.task_result(store, "r", "t", limit=10)
        assert preview.text == text[:10] and preview.chars == len(text) and preview.truncated
        assert q.task_result(store, "r", "missing") is None
    finally:
        store.close()


# --------------------------------------------------------------------------- live reading


def test_data_version_moves_when_a_run_commits(tmp_path):
    writer = SQLiteStore(tmp_path)
    writer.open()
    writer.begin_run("r", "f", 1.0, resumed=False)  # a live run: the WAL is in use
    reader = SQLiteStore(tmp_path)
    assert reader.open_read_only()
    try:
        first = q.data_version(reader)
        assert q.data_version(reader) == first
        writer.record_tasks("r", [TaskRow("t", "running", 1, 1.0, None, None, None, None, None)])
        assert q.data_version(reader) != first
        assert [t.name for t in q.task_rows(reader, "r")] == ["t"]
    finally:
        reader.close()
        writer.close()


def test_the_reader_reopens_a_store_written_after_it_was_opened(tmp_path):
    writer = SQLiteStore(tmp_path)
    writer.open()
    writer.begin_run("r1", "f", 1.0, resumed=False)
    writer.close()  # no WAL left: the next read-only open reads without locks
    reader = q.Reader(tmp_path)
    try:
        assert reader.call(q.list_runs)[1] == 1
        seen = reader.data_version()
        assert reader.data_version() == seen
        with pytest.raises(StoreChanged):
            writer.open()
            writer.begin_run("r2", "f", 2.0, resumed=False)
            q.list_runs(reader.store)
        assert reader.data_version() != seen  # a new connection: a new number
        assert reader.call(q.list_runs)[1] == 2
    finally:
        reader.close()
        writer.close()


def test_no_query_changes_a_byte_of_the_state_dir(fdi, work):
    assert fdi("flow.py", "--run-id", "r1", "-q").returncode == 0
    assert fdi("flow.py", "--run-id", "r2", "-q").returncode == 0
    state = work / ".flowdeco"
    before = _fingerprint(state)
    names = sorted(p.name for p in state.rglob("*"))
    store = SQLiteStore(state)
    store.open_read_only()
    try:
        q.list_runs(store, text="r", status="succeeded")
        q.run_detail(store, "r1")
        q.task_rows(store, "r1")
        q.task_result(store, "r1", "load")
        q.graph_snapshot(store, "r1")
        q.changed_tasks(store, "r2")
        q.diff_versions(store, "r1", "r2")
        q.data_version(store)
        q.schedules(state, store=store)
    finally:
        store.close()
    assert _fingerprint(state) == before
    assert sorted(p.name for p in state.rglob("*")) == names


def test_unknown_run_ids_raise_state_errors_naming_them(listing):
    store, _ = listing
    with pytest.raises(StateError, match="unknown run id 'zz'"):
        q.diff_versions(store, "a-00", "zz")
    with pytest.raises(StateError, match="unknown run id 'zz'"):
        q.changed_tasks(store, "zz")


# --------------------------------------------------------------------------- schedules


HOURLY = """
    from flowdeco import task

    @task
    def fetch():
        return 21

    @task(cron="0 * * * *")
    def report(fetch):
        return fetch * 2
"""


def test_schedules_show_last_next_and_missed_ticks(write_module, tmp_path):
    path = write_module(HOURLY, name="hourly_v")
    state = tmp_path / "st"
    clock = FakeClock(wall=dt.datetime(2026, 6, 1, 10, 20, tzinfo=UTC).timestamp())
    report = serve(str(path), clock=clock, max_ticks=2, tz="UTC", state_dir=state,
                   out=io.StringIO())
    assert [r.run_id for r in report.runs] == ["hourly_v-20260601T110000Z",
                                               "hourly_v-20260601T120000Z"]
    at = dt.datetime(2026, 6, 1, 15, 30, tzinfo=UTC).timestamp()
    (info,) = q.schedules(state, now=at)
    assert info.flow == "hourly_v" and not info.serving and info.claim is None
    assert info.last_tick == dt.datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()
    (sched,) = info.schedules
    assert sched["expr"] == "0 * * * *" and sched["tz"] == "UTC" and sched["tasks"] == ["report"]
    assert info.next_tick == dt.datetime(2026, 6, 1, 16, tzinfo=UTC).timestamp()
    assert info.missed == 3  # 13:00, 14:00, 15:00 passed while no serve ran
    from flowdeco.plugins.serve import _ServeLock
    lock = _ServeLock.acquire("hourly_v", state / "serve" / "hourly_v.lock", state)
    try:
        (info,) = q.schedules(state, now=at)
        assert info.serving and info.missed == 0
    finally:
        lock.release()
    assert not q.schedules(state, now=at)[0].serving


def test_schedules_see_a_serve_in_another_process(tmp_path):
    folder = tmp_path / "serve"
    folder.mkdir()
    lock = folder / "nightly.lock"
    lock.touch()
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        (info,) = q.schedules(tmp_path)
        assert info.flow == "nightly" and info.serving and info.schedules == ()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert not q.schedules(tmp_path)[0].serving


def test_a_damaged_serve_file_is_reported_not_raised(tmp_path):
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "x.json").write_text("{not json")
    (info,) = q.schedules(tmp_path)
    assert info.flow == "x" and "unreadable serve state" in info.error


def test_a_snapshot_that_cannot_be_made_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    import flowdeco
    import flowdeco.plugins.state.plugin as plugin

    def broken(graph):
        raise ValueError("an option JSON cannot hold")

    monkeypatch.setattr(plugin, "snapshot", broken)
    mod = _module(tmp_path, FLOW, "fv_broken")
    result = flowdeco.run(_tasks(mod), state_dir=tmp_path / "st", run_id="r")
    assert result.status == "succeeded"
    trail = (tmp_path / "st" / "runs" / "r" / "audit.jsonl").read_text()
    warning = [json.loads(line) for line in trail.splitlines() if "state_warning" in line]
    assert warning and "the flow version of run 'r' is not recorded: ValueError: an option " \
        "JSON cannot hold" in warning[0]["error"]
    conn = sqlite3.connect(tmp_path / "st" / "state.db")
    assert conn.execute("SELECT flow_version FROM runs").fetchall() == [(None,)]
    conn.close()
