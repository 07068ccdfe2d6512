"""Result files and serializers (``@task(store=...)``): round trips, damage, permissions,
``store=False``, pickle opt-in, caching, prune, the process executor, a full disk."""

from __future__ import annotations

import errno
import subprocess
import sys
import json
import os
import stat
from pathlib import Path

import pytest

import flowdeco
from flowdeco import TaskDefinitionError, UsageError, task
from flowdeco.plugins.state import Serializer
from flowdeco.plugins.state import results as results_mod
from flowdeco.plugins.state.commands import export_run
from flowdeco.plugins.state.results import UNSAVED, ResultFileError, ResultFiles, parse_ref
from flowdeco.plugins.state.serializers import FILE_THRESHOLD, Registry, default_registry
from flowdeco.plugins.state.store import SQLiteStore

MB = 2**20

FLOW = """
    import os
    from flowdeco import task

    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def blob():
        mark("blob")
        return bytes(range(256)) * (3 * 4096)      # 3 MiB: a file

    @task
    def words():
        mark("words")
        return "\\u00e9t\\u00e9 \\ud800 " * 200_000   # > 1 MiB of text, a lone surrogate kept

    @task
    def small():
        mark("small")
        return {{"n": 1}}                              # JSON in the row

    @task(store=False)
    def handle():
        mark("handle")
        return object()

    @task
    def total(blob, words, small, handle):
        mark("total")
        if os.environ.get("FD_FAIL_TOTAL"):
            raise RuntimeError("total failed")
        return [len(blob), len(words), small["n"]]
"""


class Events:
    def __init__(self):
        self.events = []

    @flowdeco.hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)

    def warnings(self):
        return [{"task": e.task, **e.fields} for e in self.events if e.name == "state_warning"]


class Ran:
    """A RunResult with the events the run reported."""

    def __init__(self, result, events):
        self.result, self.events = result, events

    def __getattr__(self, name):
        return getattr(self.result, name)


class Flow:
    def __init__(self, flows, tmp_path, source=FLOW):
        self.log = tmp_path / "calls.log"
        self.state = tmp_path / "state"
        self.path = flows.write(source.format(log=str(self.log)))

    def run(self, env=(), **kw):
        for k in env:
            os.environ[k] = "1"
        try:
            ev = Events()
            kw.setdefault("state_dir", str(self.state))
            return Ran(flowdeco.run(str(self.path), plugins=[ev], **kw), ev)
        finally:
            for k in env:
                os.environ.pop(k, None)

    def calls(self):
        calls = self.log.read_text().split() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return calls

    def rows(self, run_id):
        store = SQLiteStore(self.state)
        store.open(create=False)
        try:
            return store.load_tasks(run_id)
        finally:
            store.close()

    def file(self, run_id, name):
        ref = parse_ref(self.rows(run_id)[name].result)
        assert ref is not None, f"{name} is not a file result"
        return self.state / ref.path


@pytest.fixture
def flow(flows, tmp_path):
    return Flow(flows, tmp_path)


def failed_once(flow):
    res = flow.run(env=["FD_FAIL_TOTAL"], run_id="r1")
    assert res.status == "failed"
    assert sorted(flow.calls()) == ["blob", "handle", "small", "total", "words"]
    return res


# --------------------------------------------------------------------------- round trips


def test_auto_writes_large_values_to_files_and_resume_restores_them(flow):
    failed_once(flow)
    rows = flow.rows("r1")
    assert parse_ref(rows["blob"].result).serializer == "bytes"
    assert parse_ref(rows["words"].result).serializer == "text"
    assert rows["small"].result == '{"n":1}'  # small JSON stays in the row
    assert rows["handle"].result == UNSAVED
    res = flow.run(resume="r1")
    assert res.status == "succeeded"
    # store=False: runs again; the values stored in files come back without running
    assert sorted(flow.calls()) == ["handle", "total"]
    assert res.outcomes["blob"].status == "restored"
    assert res.outcomes["total"].result == [3 * MB, 200_000 * 6, 1]
    assert res.outcomes["words"].result == "\u00e9t\u00e9 \ud800 " * 200_000


@pytest.mark.parametrize("name, value", [
    ("bytes", b"\x00\xff" * 10),
    ("bytearray", bytearray(b"abc" * 1000)),
    ("text", "h\u00e9llo \ud800 \U0001f600"),
    ("pickle", {1, 2, 3j, ("x", frozenset({None}))}),
])
def test_builtin_serializers_round_trip(tmp_path, name, value):
    files = ResultFiles(tmp_path, default_registry)
    text = files.write("run1", "t", default_registry.get(name), value)
    ref = parse_ref(text)
    assert ref.serializer == name and ref.size == (tmp_path / ref.path).stat().st_size
    back = files.read(ref)
    assert type(back) is type(value) and back == value


def test_npy_round_trip_without_pickle(tmp_path):
    np = pytest.importorskip("numpy")
    files = ResultFiles(tmp_path, default_registry)
    arr = np.arange(24, dtype="int32").reshape(2, 3, 4)[:, ::2]  # not contiguous
    assert default_registry.auto(arr).name == "npy"
    back = files.read(parse_ref(files.write("r", "a", default_registry.get("npy"), arr)))
    assert back.dtype == arr.dtype and (back == arr).all()
    with pytest.raises(TypeError, match="dtype=object"):
        files.write("r", "o", default_registry.get("npy"), np.array([object()]))


def test_parquet_round_trip_of_a_pandas_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [0.5, 1.5, float("nan")]},
                      index=pd.Index([10, 20, 30], name="k"))
    df["cat"] = pd.Categorical(["u", "v", "u"])
    assert default_registry.auto(df).name == "parquet"
    files = ResultFiles(tmp_path, default_registry)
    back = files.read(parse_ref(files.write("r", "df", default_registry.auto(df), df)))
    pd.testing.assert_frame_equal(back, df)


def test_polars_round_trip(tmp_path):
    pl = pytest.importorskip("polars")
    df = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert default_registry.auto(df).name == "polars"
    files = ResultFiles(tmp_path, default_registry)
    back = files.read(parse_ref(files.write("r", "df", default_registry.auto(df), df)))
    assert back.equals(df)


def test_large_json_goes_to_a_json_file_and_comes_back(flows, tmp_path):
    f = Flow(flows, tmp_path, """
        from flowdeco import task
        LOG = {log!r}

        @task
        def many():
            return list(range(300_000))      # JSON text > 1 MiB
    """)
    assert f.run(run_id="j1").status == "succeeded"
    assert parse_ref(f.rows("j1")["many"].result).serializer == "json"
    res = f.run(resume="j1")
    assert res.outcomes["many"].status == "restored"
    assert res.outcomes["many"].result == list(range(300_000))


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("damage", ["missing", "truncated", "changed"])
def test_a_damaged_result_file_reruns_its_task_with_a_warning(flow, damage):
    failed_once(flow)
    path = flow.file("r1", "blob")
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        os.truncate(path, path.stat().st_size - 1)
    else:
        data = bytearray(path.read_bytes())
        data[1000] ^= 1
        path.write_bytes(data)
    res = flow.run(resume="r1")
    assert res.status == "succeeded"
    # blob runs again, and so does everything downstream of it; words is restored
    assert sorted(flow.calls()) == ["blob", "handle", "total"]
    warned = [w for w in res.events.warnings() if w.get("task") == "blob"]
    assert len(warned) == 1, res.events.warnings()
    word = {"missing": "is missing", "truncated": "not the", "changed": "checksum"}[damage]
    assert word in warned[0]["error"] and "running the task again" in warned[0]["error"]
    assert res.outcomes["total"].result[0] == 3 * MB


def test_a_changed_pickle_is_never_loaded(tmp_path):
    files = ResultFiles(tmp_path, default_registry)
    ref = parse_ref(files.write("r", "p", default_registry.get("pickle"), [1, 2]))
    path = tmp_path / ref.path
    import pickle
    path.write_bytes(pickle.dumps([1, 3], protocol=5))  # same size, other content
    with pytest.raises(ResultFileError, match="checksum"):
        files.read(ref)


def test_a_pickle_in_a_folder_others_can_write_is_refused(tmp_path):
    files = ResultFiles(tmp_path, default_registry)
    ref = parse_ref(files.write("r", "p", default_registry.get("pickle"), [1, 2]))
    folder = (tmp_path / ref.path).parent
    os.chmod(folder, 0o777)
    with pytest.raises(ResultFileError, match="writable by other users"):
        files.read(ref)
    os.chmod(folder, 0o700)
    assert files.read(ref) == [1, 2]


def test_references_outside_the_results_folder_are_refused():
    bad = {"$t": "file", "s": "bytes", "p": "results/r/../../../etc/passwd", "n": 1,
           "h": "0" * 64}
    with pytest.raises(flowdeco.StateError, match="outside"):
        parse_ref(json.dumps(bad, separators=(",", ":")))


def test_files_and_folders_are_owner_only(flow):
    failed_once(flow)
    path = flow.file("r1", "blob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


# --------------------------------------------------------------------------- choices


UNSTORABLE = """
    from flowdeco import task
    LOG = {log!r}

    class Model:                  # no JSON form, no value equality
        pass

    @task
    def fit():
        return Model()

    @task(store="pickle")
    def fit_pickled():
        return {{"weights": [1.0, 2.0], "kind": frozenset({{"a"}})}}
"""


def test_auto_never_pickles_and_says_what_to_choose(flows, tmp_path):
    f = Flow(flows, tmp_path, UNSTORABLE)
    res = f.run(run_id="u1")
    err = res.outcomes["fit"].error
    assert res.outcomes["fit"].status == "failed" and res.outcomes["fit"].attempts == 1
    assert err.startswith("UnstorableResult: task 'fit': result of type ") and ".Model" in err
    assert "store=" in err and "pickle" in err and "\n" not in err
    assert res.outcomes["fit_pickled"].status == "succeeded"
    assert parse_ref(f.rows("u1")["fit_pickled"].result).serializer == "pickle"
    assert not any(r.result and "pickle" in r.result for n, r in f.rows("u1").items()
                   if n == "fit")


def test_an_unsafe_plugin_serializer_is_never_chosen_by_auto():
    reg = Registry(default_registry._by_name.values())
    reg.add(Serializer("anything", object, lambda v, fh: None, lambda fh: None, safe=False))
    assert reg.auto(object()) is None
    reg.add(Serializer("safe-any", object, lambda v, fh: None, lambda fh: None))
    assert reg.auto(object()).name == "safe-any"
    assert reg.auto({"a": 1}) is None  # JSON containers stay JSON
    assert reg.auto(b"x" * FILE_THRESHOLD).name == "bytes"


def test_unknown_store_name_is_a_usage_error(flows, tmp_path):
    f = Flow(flows, tmp_path, """
        from flowdeco import task
        LOG = {log!r}

        @task(store="hdf5")
        def t():
            return 1
    """)
    with pytest.raises(UsageError, match=r"task 't': store='hdf5' names no serializer; choose"):
        f.run()
    with pytest.raises(UsageError, match=r"--store: store='nope'"):
        Flow(flows, tmp_path, FLOW).run(store="nope")


def test_store_option_checks_at_decoration():
    with pytest.raises(TaskDefinitionError, match="store=False keeps no result"):
        @task(cache=True, store=False)
        def c():
            return 1
    with pytest.raises(TaskDefinitionError, match="store= takes"):
        @task(store=True)
        def t():
            return 1


def test_run_wide_store_default_and_task_override(flows, tmp_path):
    f = Flow(flows, tmp_path, """
        from flowdeco import task
        LOG = {log!r}

        @task
        def a():
            return [1, 2]

        @task(store="json")
        def b():
            return [3]
    """)
    assert f.run(run_id="p1", store="pickle").status == "succeeded"
    rows = f.rows("p1")
    assert parse_ref(rows["a"].result).serializer == "pickle"
    assert rows["b"].result == "[3]"
    assert f.run(run_id="n1", store=False).status == "succeeded"
    assert f.rows("n1")["a"].result == UNSAVED


def test_a_plugin_adds_a_serializer_through_the_hook(flows, tmp_path):
    class Upper:
        def __init__(self, s):
            self.s = s

        def __eq__(self, other):
            return type(other) is Upper and other.s == self.s

    class Plugin:
        @flowdeco.hookimpl
        def flowdeco_result_serializers(self):
            return [Serializer("upper", Upper, lambda v, fh: fh.write(v.s.encode()),
                               lambda fh: Upper(fh.read().decode()), ".up")]

    @task
    def up():
        return Upper("abc")

    state = tmp_path / "st"
    res = flowdeco.run([up], state_dir=str(state), run_id="h1", plugins=[Plugin()])
    assert res.status == "succeeded", res.outcomes["up"].error
    files = list((state / "results" / "h1").iterdir())
    assert [p.suffix for p in files] == [".up"] and files[0].read_bytes() == b"abc"


def test_register_serializer_global(flows, tmp_path):
    f = Flow(flows, tmp_path, """
        from flowdeco import task
        from flowdeco.plugins.state import register_serializer
        LOG = {log!r}

        class Point:
            def __init__(self, x):
                self.x = x

        register_serializer("point-test", Point, lambda v, fh: fh.write(str(v.x).encode()),
                            lambda fh: Point(int(fh.read())), ".pt")

        @task
        def p():
            return Point(7)

        @task
        def use(p):
            return p.x
    """)
    try:
        res = f.run(run_id="g1", env=[])
        assert res.status == "succeeded" and res.outcomes["use"].result == 7
        assert parse_ref(f.rows("g1")["p"].result).serializer == "point-test"
    finally:
        default_registry._by_name.pop("point-test", None)
        default_registry.add(default_registry.get("bytes"))  # (resets the auto cache)


def test_collect_only_marks_unsaved_tasks(flow, capsys):
    from flowdeco import cli
    assert cli.main([str(flow.path), "--collect-only"]) == 0
    out = capsys.readouterr().out
    assert "handle  not stored (runs again on resume)" in out


# --------------------------------------------------------------------------- caching


CACHED = """
    from flowdeco import task
    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def blob():
        mark("blob")
        return b"z" * (2 * 2**20)

    @task(cache=True)
    def size(blob):
        mark("size")
        return len(blob)
"""


def test_cache_keys_of_file_inputs_use_their_checksum(flows, tmp_path, monkeypatch):
    f = Flow(flows, tmp_path, CACHED)
    from flowdeco.plugins.state import codec as codec_mod
    encoded = []
    real = codec_mod.Codec.encode
    monkeypatch.setattr(codec_mod.Codec, "encode",
                        lambda self, v: encoded.append(v) or real(self, v))
    assert f.run(run_id="c1").status == "succeeded"
    assert f.calls() == ["blob", "size"]
    res = f.run(run_id="c2")
    assert f.calls() == ["blob"]
    assert res.outcomes["size"].status == "restored"
    assert all(not isinstance(v, dict) or "blob" not in v for v in encoded), \
        "the 2 MiB input was encoded for its cache key"


def test_a_cache_hit_copies_the_file_so_pruning_the_source_run_is_safe(flows, tmp_path):
    f = Flow(flows, tmp_path, CACHED.replace("return len(blob)", "return blob[:4] * 2**19"))
    assert f.run(run_id="c1").status == "succeeded"
    assert f.run(run_id="c2").outcomes["size"].status == "restored"
    assert f.calls() == ["blob", "size", "blob"]
    src, copy = f.file("c1", "size"), f.file("c2", "size")
    assert src.parent.name == "c1" and copy.parent.name == "c2"
    assert copy.read_bytes() == src.read_bytes()
    assert prune(f.state, keep=1) == 0
    # prune kept the newest (c2); c1's files are gone, c2 resumes from its own copy
    assert not (f.state / "results" / "c1").exists()
    res = f.run(resume="c2")
    assert res.outcomes["size"].status == "restored" and not res.events.warnings()
    assert res.outcomes["size"].result == b"zzzz" * 2**19


def prune(state, keep, capsys=None):
    from flowdeco import cli
    return cli.main(["runs", "prune", "--keep", str(keep), "--state-dir", str(state)])


# --------------------------------------------------------------------------- prune, orphans


def test_prune_deletes_result_files_and_orphans(flow, capsys):
    failed_once(flow)
    assert flow.run(run_id="r2").status == "succeeded"
    flow.calls()
    orphan = flow.state / "results" / "r2" / "blob-0123456789abcdef.bin"
    orphan.write_bytes(b"left by a crash")
    ghost = flow.state / "results" / "ghost"
    ghost.mkdir()
    (ghost / "x-0123456789abcdef.bin").write_bytes(b"")
    assert prune(flow.state, keep=1) == 0
    assert "removed run r1" in capsys.readouterr().out
    assert not (flow.state / "results" / "r1").exists()
    assert not ghost.exists() and not orphan.exists()
    assert flow.file("r2", "blob").exists()


def test_resume_deletes_orphans_of_its_run(flow):
    failed_once(flow)
    orphan = flow.state / "results" / "r1" / "total-0123456789abcdef.bin"
    orphan.write_bytes(b"written, never committed")
    assert flow.run(resume="r1").status == "succeeded"
    assert not orphan.exists()
    assert flow.file("r1", "blob").exists()


# --------------------------------------------------------------------------- full disk


def test_a_full_disk_while_writing_a_result_file_stops_the_run_cleanly(flow, monkeypatch):
    real = os.write

    def full(fd, data):
        if len(data) > 100_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(results_mod.os, "write", full)
    res = flow.run(run_id="r1")
    assert res.status == "failed"
    names = [e.name for e in res.events.events]
    assert "state_write_failed" in names
    assert res.outcomes["blob"].status == "failed"
    assert "No space left" in res.outcomes["blob"].error
    assert not list((flow.state / "results" / "r1").glob("blob-*")), "partial file left"
    monkeypatch.setattr(results_mod.os, "write", real)
    flow.calls()
    res = flow.run(resume="r1")
    assert res.status == "succeeded"
    assert "blob" in flow.calls()


# --------------------------------------------------------------------------- executors


DATAFRAMES = """
    import pandas as pd
    from flowdeco import task
    LOG = {log!r}

    @task
    def frame():
        return pd.DataFrame({{"x": list(range(1000)), "y": ["a", "b"] * 500}})

    @task
    def agg(frame):
        return frame.groupby("y")["x"].sum().to_dict()
"""


def test_a_dataframe_result_on_the_process_executor(flows, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    f = Flow(flows, tmp_path, DATAFRAMES)
    res = f.run(run_id="d1", executor="process", workers=2)
    assert res.status == "succeeded", {n: o.error for n, o in res.outcomes.items()}
    assert res.outcomes["agg"].result == {"a": sum(range(0, 1000, 2)),
                                          "b": sum(range(1, 1000, 2))}
    assert parse_ref(f.rows("d1")["frame"].result).serializer == "parquet"
    res = f.run(resume="d1", rerun=["agg"], executor="process", workers=2)
    assert res.outcomes["frame"].status == "restored"
    assert isinstance(res.outcomes["frame"].result, pd.DataFrame)


MAPPED = """
    import os
    import pandas as pd
    from flowdeco import task
    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def parts():
        return [1, 2, 3]

    @task(map="parts")
    def frame(parts):
        n = parts
        mark(f"frame{{n}}")
        return pd.DataFrame({{"n": [n] * n}})

    @task
    def rows(frame):
        if os.environ.get("FD_FAIL_TOTAL"):
            raise RuntimeError("rows failed")
        return [len(f) for f in frame]
"""


def test_a_mapped_task_of_dataframes_resumes_instance_by_instance(flows, tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    f = Flow(flows, tmp_path, MAPPED)
    res = f.run(run_id="m1", env=["FD_FAIL_TOTAL"])
    assert res.outcomes["frame"].status == "succeeded" and not res.events.warnings()
    assert sorted(f.calls()) == ["frame1", "frame2", "frame3"]
    res = f.run(resume="m1")
    assert res.status == "succeeded" and not res.events.warnings()
    assert f.calls() == []
    assert res.outcomes["rows"].result == [1, 2, 3]


def test_export_lists_file_results_as_references(flow):
    failed_once(flow)
    store = SQLiteStore(flow.state)
    store.open_read_only()
    try:
        data = export_run(store, "r1")
    finally:
        store.close()
    blob = data["files"]["blob"]
    assert blob["serializer"] == "bytes" and blob["size"] == 3 * MB
    assert Path(blob["path"]).is_file() and len(blob["sha256"]) == 64
    assert "blob" not in data["results"] and data["results"]["small"] == {"n": 1}
    assert data["unsaved"] == ["handle"]


UNSAVED_CHAIN = """
    import os
    from flowdeco import task
    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task(store=False)
    def client():
        mark("client")
        return object()               # a connection: nothing to save

    @task
    def fetch(client):
        mark("fetch")
        return [1, 2, 3]

    @task
    def report(fetch):
        mark("report")
        if os.environ.get("FD_FAIL_TOTAL"):
            raise RuntimeError("report failed")
        return sum(fetch)
"""


def test_store_false_runs_again_on_resume_and_its_dependents_stay_restored(flows, tmp_path):
    f = Flow(flows, tmp_path, UNSAVED_CHAIN)
    assert f.run(run_id="s1", env=["FD_FAIL_TOTAL"]).status == "failed"
    assert f.calls() == ["client", "fetch", "report"]
    res = f.run(resume="s1")
    assert res.status == "succeeded"
    assert f.calls() == ["client", "report"]
    assert res.outcomes["fetch"].status == "restored" and res.outcomes["report"].result == 6


def test_cli_store_false_and_unknown_name(flow, capsys):
    from flowdeco import cli
    assert cli.main([str(flow.path), "--state-dir", str(flow.state), "--run-id", "c1",
                     "--store", "false", "-q"]) == 0
    assert all(r.result == UNSAVED for r in flow.rows("c1").values())
    capsys.readouterr()
    assert cli.main([str(flow.path), "--state-dir", str(flow.state), "--store", "hdf5"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowdeco: error: --store: store='hdf5' names no serializer")
    assert "\n" not in err


def test_a_result_file_is_complete_before_the_row_naming_it_commits(flow, monkeypatch):
    seen = []
    real = SQLiteStore.record_tasks

    def check(self, run_id, rows):
        for row in rows:
            ref = parse_ref(row.result)
            if ref is not None:
                path = self.state_dir / ref.path
                seen.append(row.name)
                assert path.is_file() and path.stat().st_size == ref.size, \
                    f"{row.name}: its row commits before its file is complete"
        return real(self, run_id, rows)

    monkeypatch.setattr(SQLiteStore, "record_tasks", check)
    for executor in ("thread", "sync"):
        assert flow.run(executor=executor).status == "succeeded"
    assert sorted(seen) == ["blob", "blob", "words", "words"]


CRASH_DRIVER = """
import os, sys
sys.path.insert(0, {src!r})
import flowdeco
from flowdeco.plugins.state.store import SQLiteStore

real = SQLiteStore.record_tasks

def die_before_committing_a_file_row(self, run_id, rows):
    if any(r.result and r.result.startswith('{{"$t":"file"') for r in rows):
        os._exit(9)  # killed after the file was written, before its row commits
    return real(self, run_id, rows)

if os.environ.get("FD_CRASH"):
    SQLiteStore.record_tasks = die_before_committing_a_file_row
res = flowdeco.run({flow!r}, state_dir={state!r}, run_id="k1",
                   resume="k1" if os.environ.get("FD_RESUME") else None)
print(res.status, res.outcomes["total"].result)
"""


def test_a_crash_between_file_and_commit_leaves_an_orphan_never_a_dangling_row(flow, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(CRASH_DRIVER.format(src=str(flow.path.parent), flow=str(flow.path),
                                          state=str(flow.state)))
    env = {**os.environ, "FD_CRASH": "1"}
    r = subprocess.run([sys.executable, str(driver)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 9, r.stderr
    files = list((flow.state / "results" / "k1").iterdir())
    assert files, "the file is written before its row is submitted"
    assert all(r.result is None or not r.result.startswith('{"$t":"file"')
               for r in flow.rows("k1").values())
    flow.calls()
    env = {**os.environ, "FD_RESUME": "1"}
    r = subprocess.run([sys.executable, str(driver)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "succeeded"
    assert "blob" in flow.calls()
    kept = set((flow.state / "results" / "k1").iterdir())
    assert not kept & set(files), "the orphans of the crash were not removed on resume"
    assert {flow.file("k1", "blob"), flow.file("k1", "words")} == kept
