"""flowdeco-dask: found by entry point; a flow behaves on a LocalCluster as on threads."""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import json
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

flowdeco_dask = pytest.importorskip("flowdeco_dask")
distributed = pytest.importorskip("distributed")

from flowdeco import CollectionError, UsageError, hookimpl, run  # noqa: E402
from flowdeco import cli  # noqa: E402
from flowdeco.manager import make_pluginmanager  # noqa: E402
from flowdeco.testing import within  # noqa: E402
from flowdeco_dask.executor import DaskExecutor  # noqa: E402

TIMEOUT = 120.0
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One LocalCluster of 2 worker processes for the module, started the plugin's way.

    Flow modules are written into a folder put on ``sys.path`` *before* the
    workers start, so they import the flows by name like a cluster started
    for a run does.
    """
    flows = tmp_path_factory.mktemp("flows")
    sys.path.insert(0, str(flows))
    ex = DaskExecutor.start(2)
    written: list[str] = []

    def write(source: str) -> Path:
        name = f"fddask_{next(_names)}"
        path = flows / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        written.append(name)
        importlib.invalidate_caches()
        return path

    yield SimpleNamespace(client=ex.client, address=ex.client.scheduler.address, dir=flows,
                          write=write)
    ex.shutdown()
    sys.path.remove(str(flows))
    for name in written:
        sys.modules.pop(name, None)


def go(target, timeout=TIMEOUT, **kw):
    """``run`` in a helper thread, so a hanging engine fails the test instead of the suite."""
    kw.setdefault("state_dir", None)
    return within(timeout, run, target, **kw)


def _audit(state_dir, run_id):
    path = Path(state_dir) / "runs" / run_id / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _shape(events):
    """Per task, its events in order with the fields that do not depend on timing."""
    keep = ("attempt", "attempts", "error", "reason", "status", "n", "delay", "resumed")
    out: dict = {}
    for e in events:
        out.setdefault(e.get("task"), []).append(
            (e["event"],) + tuple((k, e[k]) for k in keep if k in e))
    return out


def _summary(result):
    return ({k: (o.status, o.attempts, o.error, o.reason) for k, o in result.outcomes.items()},
            result.results, result.status)


# --------------------------------------------------------------------------- discovery


def test_found_through_its_entry_point():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="flowdeco")}
    assert eps.get("dask") == "flowdeco_dask"
    pm = make_pluginmanager()
    assert pm.get_plugin("dask") is flowdeco_dask
    # loading the plugin does not load Dask: other runs pay nothing for it
    assert "flowdeco_dask.executor" not in sys.modules or "distributed" in sys.modules


def test_disabled_plugin_leaves_dask_unknown(cluster):
    path = cluster.write("""
        from flowdeco import task
        @task
        def a():
            return 1
    """)
    with pytest.raises(UsageError, match="unknown executor 'dask'"):
        go(str(path), executor="dask", disable=["dask"])


# --------------------------------------------------------------------------- same as threads


DAG = """
    import os
    from pathlib import Path
    from flowdeco import task

    COUNTER = Path({counter!r})

    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1

    @task
    def c(a):
        return a * 10

    @task(retries=2)
    def flaky(b, c, ctx):
        # a file-based counter: workers share no memory with the driver
        n = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
        COUNTER.write_text(str(n))
        ctx.log.info("trying", n=n)
        if n < 3:
            raise ValueError(f"attempt {{n}}")
        return {{"sum": b + c, "pid": os.getpid()}}

    @task
    def broken(a):
        raise KeyError("nope")

    @task
    def never(broken):
        return 0
"""


@pytest.mark.parametrize("how", ["client", "client.get_executor()"])
def test_dag_retries_and_audit_match_threads(cluster, tmp_path, how):
    got = {}
    for ex in ("thread", how):
        path = cluster.write(DAG.format(counter=str(tmp_path / f"counter-{ex}")))
        executor = {"thread": "thread", "client": cluster.client,
                    "client.get_executor()": cluster.client.get_executor()}[ex]
        st = tmp_path / f"st-{ex}"
        result = go(str(path), executor=executor, state_dir=st, run_id="same")
        pids = result.results["flaky"].pop("pid")
        got[ex] = (_summary(result), _shape(_audit(st, "same")), pids)
    assert got["thread"][:2] == got[how][:2]
    assert got[how][0][1]["flaky"] == {"sum": 12}
    assert got[how][2] != got["thread"][2]          # it ran in a worker process
    assert ("task_retrying", ("attempt", 1), ("error", "ValueError: attempt 1"),
            ("delay", 0.0)) in got[how][1]["flaky"]
    assert ("trying", ("attempt", 3), ("n", 3)) in got[how][1]["flaky"]


def test_lambdas_and_closures_travel_by_value(cluster):
    from flowdeco import task

    def make(n):
        @task
        def plus():
            return n + 1
        return plus

    double = task(name="double")(lambda plus: plus * 2)
    result = go([make(1), double], executor=cluster.client)
    assert result.results == {"plus": 2, "double": 4}


def test_unpicklable_task_is_a_collection_error(cluster, tmp_path, capsys):
    path = cluster.write("""
        import threading
        from flowdeco import task

        def make():
            lock = threading.Lock()
            @task
            def locked():
                with lock:
                    return 1
            return locked
        locked = make()
    """)
    with pytest.raises(CollectionError, match="task 'locked' cannot run on the dask executor: "
                                              r"it \(.*\) cannot be pickled"):
        go(str(path), executor=cluster.client)
    rc = cli.main([str(path), "--executor", "dask", "--dask-address", cluster.address,
                   "--no-state"])
    assert rc == 4
    assert "task 'locked' cannot run on the dask executor" in capsys.readouterr().err


def test_killed_worker_fails_only_its_attempt(cluster, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    path = cluster.write(f"""
        import os
        from pathlib import Path
        from flowdeco import task

        D = Path({str(markers)!r})

        @task(retries=1)
        def crash():
            marker = D / "crashed"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return os.getpid()

        @task
        def after(crash):
            return crash

        @task
        def independent():
            return "fine"
    """)
    st = tmp_path / "st"
    result = go(str(path), executor=cluster.client, state_dir=st, run_id="crash")
    assert result.ok, result.outcomes
    assert result.outcomes["crash"].attempts == 2
    assert result.results["after"] == result.results["crash"] != int(
        (markers / "crashed").read_text())
    assert result.results["independent"] == "fine"
    [retrying] = [e for e in _audit(st, "crash") if e["event"] == "task_retrying"]
    assert retrying["task"] == "crash"
    assert retrying["error"].startswith("WorkerCrashed: dask worker tcp://")
    assert retrying["error"].endswith(" died while running task 'crash'")
    cluster.client.wait_for_workers(2, timeout=60)   # the nanny restarts the dead worker


def test_timeout_fails_the_attempt_on_a_dask_worker(cluster):
    path = cluster.write("""
        import time
        from flowdeco import task

        @task(timeout=0.3)
        def slow():
            time.sleep(3)
            return 1

        @task
        def quick():
            return 2
    """)
    t0 = time.monotonic()
    result = go(str(path), executor=cluster.client)
    assert time.monotonic() - t0 < 2.5
    out = result.outcomes["slow"]
    assert out.status == "failed"
    assert out.error == "TaskTimeout: task 'slow' exceeded its timeout of 0.3 s"
    assert result.results["quick"] == 2


def test_workers_default_to_the_clusters_threads(cluster):
    seen = {}

    class Spy:
        @hookimpl
        def flowdeco_run_finish(self, run, result):
            seen["workers"] = run.workers

    path = cluster.write("""
        from flowdeco import task
        @task
        def a():
            return 1
    """)
    cluster.client.wait_for_workers(2, timeout=60)
    go(str(path), executor=cluster.client, plugins=[Spy()])
    assert seen["workers"] == 2
    go(str(path), executor=cluster.client, workers=1, plugins=[Spy()])
    assert seen["workers"] == 1


def test_resumed_run_restores_on_dask_like_on_threads(cluster, tmp_path):
    pm = make_pluginmanager()
    if pm.get_plugin("state") is None:
        pytest.skip("no state plugin: resume is not available")
    got = {}
    for ex in ("thread", "client"):
        flag = tmp_path / f"fixed-{ex}"
        path = cluster.write(f"""
            from pathlib import Path
            from flowdeco import task

            @task
            def first():
                return 1

            @task
            def gate(first):
                if not Path({str(flag)!r}).exists():
                    raise RuntimeError("not yet")
                return first + 1

            @task
            def last(gate):
                return gate * 10
        """)
        executor = "thread" if ex == "thread" else cluster.client
        st = tmp_path / f"st-{ex}"
        failed = go(str(path), executor=executor, state_dir=st, run_id="r")
        flag.write_text("")
        resumed = go(str(path), executor=executor, state_dir=st, resume="r")
        got[ex] = (_summary(failed), _summary(resumed), _shape(_audit(st, "r")))
    assert got["thread"] == got["client"]
    assert got["client"][1][0]["first"][0] == "restored"
    assert got["client"][1][1] == {"first": 1, "gate": 2, "last": 20}


# --------------------------------------------------------------------------- CLI


def test_cli_with_an_address(cluster, tmp_path, capsys):
    path = cluster.write("""
        import os
        from flowdeco import task

        @task
        def where():
            return os.getpid()

        @task
        def check(where):
            assert where != int(os.environ.get("FD_DRIVER_PID", "0"))
            return where
    """)
    rc = cli.main([str(path), "--executor", "dask", "--dask-address", cluster.address,
                   "--state-dir", str(tmp_path / "st"), "--run-id", "addr"])
    assert rc == 0, capsys.readouterr().err
    events = _audit(tmp_path / "st", "addr")
    assert [e["event"] for e in events][-1] == "run_finished"
    # the cluster is not ours to close: it still answers
    assert cluster.client.submit(sum, [1, 2], pure=False).result(30) == 3


def test_address_needs_the_dask_executor(cluster, capsys):
    path = cluster.write("""
        from flowdeco import task
        @task
        def a():
            return 1
    """)
    rc = cli.main([str(path), "--dask-address", cluster.address, "--no-state"])
    assert rc == 4
    assert "--dask-address needs --executor dask" in capsys.readouterr().err


def test_executor_dask_starts_and_closes_a_local_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "fddask_own.py"
    path.write_text(textwrap.dedent("""
        import os
        from flowdeco import task

        @task
        def one():
            return os.getpid()

        @task
        def two():
            return os.getpid()
    """))
    made = []
    real_start = DaskExecutor.start.__func__

    def spy(cls, workers, address=None, **kw):
        ex = real_start(cls, workers, address, **kw)
        made.append((workers, ex))
        return ex

    monkeypatch.setattr(DaskExecutor, "start", classmethod(spy))
    rc = cli.main([str(path), "--executor", "dask", "-w", "2", "--no-state", "-q"])
    sys.modules.pop("fddask_own", None)
    assert rc == 0, capsys.readouterr().err
    [(workers, ex)] = made
    assert workers == 2
    assert ex.cluster.status.name == "closed"
    assert ex.client.status == "closed"


def test_tiny_tasks_go_in_batches(cluster, tmp_path):
    class Counting(DaskExecutor):
        sizes: list

        def submit(self, fn, /, *args, **kwargs):
            self.sizes.append(len(args[0]) if fn.__name__ == "call_batch" else 1)
            return super().submit(fn, *args, **kwargs)

    n = 300
    path = cluster.write(f"""
        from flowdeco import task

        def _tiny(i):
            def tiny(ctx):
                if i % 11 == 5 and ctx.attempt == 1:
                    raise ValueError("again")
                return i
            tiny.__name__ = tiny.__qualname__ = f"t{{i}}"
            return task(retries=1)(tiny)

        for _i in range({n}):
            globals()[f"t{{_i}}"] = _tiny(_i)
    """)
    ex = Counting(cluster.client)
    ex.sizes = []
    st = tmp_path / "st"
    result = go(str(path), executor=ex, state_dir=st, run_id="tiny")
    assert result.results == {f"t{i}": i for i in range(n)}
    retried = [i for i in range(n) if i % 11 == 5]
    assert sum(ex.sizes) == n + len(retried)
    assert len(ex.sizes) < n / 4, ex.sizes
    started = [e["task"] for e in _audit(st, "tiny") if e["event"] == "task_started"]
    assert len(started) == n + len(retried)
    assert {result.outcomes[f"t{i}"].attempts for i in retried} == {2}


PIPELINE = """
    import os
    from flowdeco import Pipeline, task

    pipe = Pipeline("numbers", queue_size=4)

    @pipe.stage(workers=2)
    def square(x):
        if x == 7:
            raise ValueError("seven")
        return x * x

    @pipe.stage(batch_size=3)
    def tag(batch):
        return [(x, os.getpid()) for x in batch]

    @task
    def source():
        return list(range(12))

    numbers = pipe.as_task("numbers", source=source)

    @task
    def total(numbers):
        return sum(x for x, _ in numbers.outputs)
"""


def test_pipeline_node_runs_on_a_worker_like_on_threads(cluster):
    pytest.importorskip("flowdeco.pipeline")
    got = {}
    for ex in ("thread", "client"):
        path = cluster.write(PIPELINE)
        result = go(str(path), executor="thread" if ex == "thread" else cluster.client)
        res = result.results["numbers"]
        got[ex] = ([x for x, _ in res.outputs], [(e.index, e.stage, e.error) for e in res.errors],
                   result.results["total"], {pid for _, pid in res.outputs})
    assert got["thread"][:3] == got["client"][:3]
    assert got["client"][0] == [x * x for x in range(12) if x != 7]
    assert got["client"][1] == [(7, "square", "ValueError: seven")]
    import os
    assert got["thread"][3] == {os.getpid()} and os.getpid() not in got["client"][3]
