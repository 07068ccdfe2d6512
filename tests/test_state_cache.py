"""Input-hash caching (``@task(cache=...)``): hits, misses, TTL, source changes, bypasses."""

from __future__ import annotations

import sqlite3
import textwrap
import time

import pytest

import flowdeco
from flowdeco import FlowError, TaskDefinitionError, UsageError, task
from flowdeco.task import get_spec
from flowdeco.plugins.state import SQLiteStore
from flowdeco.plugins.state.store import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

FLOW = """
    import os
    from pathlib import Path
    from flowdeco import task

    LOG = {log!r}
    DATA = {data!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def source():
        return Path(DATA).read_text().split()

    @task(cache=True{options})
    def count(source):
        mark("count")
        {body}

    @task
    def report(count):
        mark("report")
        if os.environ.get("FD_FAIL_REPORT"):
            raise RuntimeError("report failed")
        return f"{{count}} words"
"""


class CacheFlow:
    def __init__(self, flows, flow_run, tmp_path):
        self.flows = flows
        self.flow_run = flow_run
        self.log = tmp_path / "calls.log"
        self.data = tmp_path / "data.txt"
        self.data.write_text("a b c")
        self.path = None

    def write(self, options: str = "", body: str = "return len(source)"):
        self.path = self.flows.write(FLOW.format(log=str(self.log), data=str(self.data),
                                                 options=options, body=body))
        return self.path

    def run(self, **kw):
        kw.setdefault("state", True)
        return self.flow_run(str(self.path), **kw)

    def calls(self) -> list[str]:
        calls = self.log.read_text().split() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return calls


@pytest.fixture
def cf(flows, flow_run, tmp_path):
    flow = CacheFlow(flows, flow_run, tmp_path)
    flow.write()
    return flow


class Logged:
    """Flow modules whose tasks call ``mark(name)`` to log that they ran (``log``)."""

    def __init__(self, flows, tmp_path):
        self.flows = flows
        self.log = tmp_path / "log"

    def write(self, body: str):
        return self.flows.write(f"""
            from flowdeco import task
            def mark(n):
                with open({str(self.log)!r}, "a") as fh:
                    fh.write(str(n) + "\\n")
        """ + textwrap.dedent(body).replace("\n", "\n            "))

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def logged(flows, tmp_path):
    return Logged(flows, tmp_path)


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_same_code_and_inputs_are_restored_from_the_cache(cf, flow_events, executor):
    first = cf.run(run_id="r1", executor=executor)
    assert first.ok and first.results["report"] == "3 words"
    assert cf.calls() == ["count", "report"]
    second = cf.run(run_id="r2", executor=executor)
    second.assert_ok()
    assert cf.calls() == ["report"]          # count was not called
    assert second.outcomes["count"].status == "restored"
    assert second.results["report"] == "3 words"
    (ev,) = flow_events.of("task_restored", task="count")
    assert ev.fields["source"] == "cache" and ev.fields["cached_run"] == "r1"
    assert ev.fields["age"] >= 0


def test_changed_inputs_miss_and_both_results_stay_cached(cf):
    cf.run(run_id="r1")
    cf.data.write_text("a b c d e")
    assert cf.run(run_id="r2").results["report"] == "5 words"
    assert cf.calls() == ["count", "report", "count", "report"]
    cf.data.write_text("a b c")
    assert cf.run(run_id="r3").results["report"] == "3 words"  # r1's entry still answers
    assert cf.calls() == ["report"]


def test_a_failed_task_is_not_cached(cf, monkeypatch):
    cf.write(body="return (1 / 0) if os.environ.get('FD_FAIL') else len(source)")
    monkeypatch.setenv("FD_FAIL", "1")
    assert not cf.run(run_id="r1").ok
    monkeypatch.delenv("FD_FAIL")
    assert cf.run(run_id="r2").outcomes["count"].status == "succeeded"
    assert cf.calls() == ["count", "count", "report"]


def test_source_change_misses_and_same_code_hits_across_flows(cf):
    cf.run(run_id="r1")
    cf.write(body="return len(source) * 10")   # another module (another flow), changed code
    assert cf.run(run_id="r2").results["report"] == "30 words"
    cf.write()                                  # a third module with r1's code
    assert cf.run(run_id="r3").results["report"] == "3 words"
    assert cf.calls() == ["count", "report", "count", "report", "report"]


def test_ttl_expires_entries(cf, flow_clock, flow_events):
    cf.write(options=", cache_ttl=60")
    cf.run(run_id="r1")
    flow_clock.advance(59)
    assert cf.run(run_id="r2").outcomes["count"].status == "restored"
    assert flow_events.of("task_restored", task="count")[0].fields["age"] >= 59
    flow_clock.advance(2)          # r1's result (not r2's restore) is now 61 s old
    assert cf.run(run_id="r3").outcomes["count"].status == "succeeded"
    flow_clock.advance(30)
    assert cf.run(run_id="r4").outcomes["count"].status == "restored"  # r3's, 30 s old
    assert cf.calls() == ["count", "report", "report", "count", "report", "report"]


def test_no_cache_runs_and_refreshes_the_entry(cf):
    cf.run(run_id="r1")
    assert cf.run(run_id="r2", no_cache=True).outcomes["count"].status == "succeeded"
    r3 = cf.run(run_id="r3")
    assert r3.outcomes["count"].status == "restored"
    assert cf.calls() == ["count", "report", "count", "report", "report"]


def test_refresh_bypasses_matching_tasks_only(logged, flow_run):
    path = logged.write("""
        @task(cache=True)
        def a():
            mark("a"); return 1
        @task(cache=True)
        def b():
            mark("b"); return 2
    """)
    flow_run(str(path), state=True)
    flow_run(str(path), state=True, refresh=["b"])
    assert sorted(logged.calls()) == ["a", "b", "b"]  # a and b run in parallel
    with pytest.raises(UsageError, match="--refresh 'nope' matches no task"):
        flow_run(str(path), state=True, refresh=["nope"])


def test_a_key_function_picks_the_inputs_that_matter(logged, flow_run):
    path = logged.write("""
        @task(cache=lambda url: url.lower())
        def fetch(url, verbose=False):
            mark(url)
            return len(url)
    """)
    assert flow_run(str(path), state=True, params={"url": "HTTP://X", "verbose": True}).ok
    r = flow_run(str(path), state=True, params={"url": "http://x", "verbose": False})
    assert r.outcomes["fetch"].status == "restored" and r.results["fetch"] == 8
    assert logged.calls() == ["HTTP://X"]


def test_unhashable_inputs_run_uncached_with_one_warning(logged, flow_run, flow_events):
    path = logged.write("""
        @task(cache=True)
        def use(lock):
            mark("use")
            return 1
    """)
    import threading
    for _ in range(2):
        assert flow_run(str(path), state=True, params={"lock": threading.Lock()}).ok
        (warn,) = flow_events.of("state_warning", task="use")
        assert "input 'lock' cannot be hashed" in warn.fields["error"]
        assert "key function" in warn.fields["error"]
    assert logged.calls() == ["use", "use"]


def test_key_function_errors_warn_and_run(flows, flow_run, flow_events):
    path = flows.write("""
        from flowdeco import task
        @task(cache=lambda x: 1 / 0)
        def t(x):
            return x
    """)
    assert flow_run(str(path), state=True, params={"x": 1}).ok
    (warn,) = flow_events.of("state_warning", task="t")
    assert "key function raised ZeroDivisionError" in warn.fields["error"]


def test_mapped_instances_are_cached_one_by_one(logged, flow_run, flow_events, tmp_path):
    data = tmp_path / "files"
    data.write_text("a b")
    path = logged.write(f"""
        from pathlib import Path
        @task
        def files():
            return Path({str(data)!r}).read_text().split()
        @task(map="files", cache=True)
        def parse(files):
            mark(files)
            return files.upper()
        @task
        def joined(parse):
            return "".join(parse)
    """)
    assert flow_run(str(path), state=True, run_id="m1").results["joined"] == "AB"
    data.write_text("x a b")        # a new element in front: indices shift
    r = flow_run(str(path), state=True, run_id="m2")
    assert r.results["joined"] == "XAB"
    assert sorted(logged.calls()) == ["a", "b", "x"]
    restored = {e.task: e.fields["cached_run"] for e in flow_events.of("task_restored")}
    assert restored == {"parse[1]": "m1", "parse[2]": "m1"}
    # all instances cached: the mapped task ends while the scheduler dispatches, and
    # its dependent must not wait for a commit nobody asked for (it once hung here)
    t0 = time.monotonic()
    r = flow_run(str(path), state=True, run_id="m3", workers=1)
    assert r.results["joined"] == "XAB" and len(flow_events.of("task_restored")) == 3
    assert time.monotonic() - t0 < 20


def test_resuming_a_run_restores_its_cache_hits(cf, monkeypatch, flow_state):
    cf.run(run_id="r1")
    monkeypatch.setenv("FD_FAIL_REPORT", "1")
    assert not cf.run(run_id="r2").ok
    # r1's row goes away: r2 must restore count from its own record, not from the cache
    store = SQLiteStore(flow_state)
    store.open()
    store.delete_run("r1")
    store.close()
    monkeypatch.delenv("FD_FAIL_REPORT")
    r = cf.run(resume="r2")
    assert r.ok and r.outcomes["count"].status == "restored"
    assert cf.calls() == ["count", "report", "report", "report"]


def test_rerun_runs_cached_tasks_and_their_downstream_again(logged, flow_run):
    path = logged.write("""
        @task(cache=True)
        def first():
            mark("first"); return 1
        @task(cache=True)
        def second(first):
            mark("second"); return first + 1
        @task(cache=True)
        def other():
            mark("other"); return 0
    """)
    assert flow_run(str(path), state=True, run_id="r1").ok
    logged.log.unlink()
    r = flow_run(str(path), state=True, resume="r1", rerun=["first"])
    assert r.ok and sorted(logged.calls()) == ["first", "second"]
    assert r["other"].status == "restored"


def test_without_state_cached_tasks_just_run(cf):
    cf.run(state=False)
    cf.run(state=False)
    assert cf.calls() == ["count", "report", "count", "report"]


def test_cache_needs_the_state_plugin(cf):
    with pytest.raises(FlowError, match="cache"):
        cf.run(disable=["state"])


@pytest.mark.parametrize("kwargs, message", [
    ({"cache_ttl": 10}, "cache_ttl= needs cache=True"),
    ({"cache": False, "cache_ttl": 10}, "cache_ttl= needs cache=True"),
    ({"cache": "yes"}, "cache= takes True/False or a key function"),
    ({"cache": True, "cache_ttl": -1}, "cache_ttl must be a number of seconds > 0"),
    ({"cache": lambda nope: nope}, "takes parameter 'nope', which is not a parameter"),
])
def test_bad_cache_options_are_decoration_errors(kwargs, message):
    def t(x):
        return x
    with pytest.raises(TaskDefinitionError, match=message):
        task(**kwargs)(t)


def test_cache_false_is_no_cache():
    @task(cache=False)
    def t():
        return 1
    assert get_spec(t).cache is None and "cache" not in get_spec(t).uses


def test_cli_flags(cf, capsys, monkeypatch):
    from flowdeco.cli import main
    state = str(cf.path.parent.parent / "st")
    assert main([str(cf.path), "--state-dir", state, "-q"]) == 0
    assert main([str(cf.path), "--state-dir", state, "-q", "--refresh", "count"]) == 0
    assert main([str(cf.path), "--state-dir", state, "-q", "--no-cache"]) == 0
    assert main([str(cf.path), "--state-dir", state, "-q"]) == 0
    assert cf.calls() == ["count", "report"] * 3 + ["report"]
    assert main([str(cf.path), "--state-dir", state, "--refresh", "zzz"]) == 4
    assert "--refresh 'zzz' matches no task" in capsys.readouterr().err


def test_a_version_1_database_is_migrated(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for stmt in MIGRATIONS[1]:
        conn.execute(stmt)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO runs VALUES ('old', 'f', 'succeeded', 1.0, 1.0, 2.0, 1.0, 1, NULL)")
    conn.execute("INSERT INTO tasks VALUES ('old', 't', 'succeeded', 1, 1.0, 2.0, 'ab.0', '7', "
                 "NULL, NULL)")
    conn.close()
    store = SQLiteStore(tmp_path)
    assert store.open(create=False)
    try:
        rec = store.load_tasks("old")["t"]
        assert rec.result == "7" and rec.cache_key is None
        assert store.find_cached("k" * 64, 0.0) is None
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_store_without_find_cached_runs_cached_tasks(cf):
    class Plain(SQLiteStore):
        find_cached = None

    class Backend:
        @flowdeco.hookimpl(tryfirst=True)
        def flowdeco_state_store(self, state_dir, config):
            return Plain(state_dir)

    cf.run(plugins=[Backend()])
    assert cf.run(plugins=[Backend()]).outcomes["count"].status == "succeeded"
    assert cf.calls() == ["count", "report", "count", "report"]
