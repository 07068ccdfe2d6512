"""flowdeco-dask: found by entry point; a flow behaves on a LocalCluster as on threads.

"As on threads" is flowdeco's executor conformance suite, run with a client and with
``client.get_executor()``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

flowdeco_dask = pytest.importorskip("flowdeco_dask")
distributed = pytest.importorskip("distributed")

from flowdeco import CollectionError, UsageError, hookimpl, run  # noqa: E402
from flowdeco import cli  # noqa: E402
from flowdeco.manager import make_pluginmanager  # noqa: E402
from flowdeco.conformance import audit  # noqa: E402
from flowdeco.testing import ExecutorConformance, run_flow  # noqa: E402
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
        run_flow(str(path), executor="dask", disable=["dask"], fail_after=TIMEOUT)


# --------------------------------------------------------------------------- same as threads


class Counting(DaskExecutor):
    """Records how many attempts each submission carried."""

    sizes: list

    def submit(self, fn, /, *args, **kwargs):
        self.sizes.append(len(args[0]) if fn.__name__ == "call_batch" else 1)
        return super().submit(fn, *args, **kwargs)


class TestDaskClient(ExecutorConformance):
    """``run(executor=client)``: the conformance suite on a LocalCluster."""

    fail_after = TIMEOUT
    remote = True
    batches = True
    one_breaker_state = False  # two worker processes, each with its own breaker state
    dead_worker_error = r"WorkerCrashed: dask worker tcp://\S+ died while running task 'crash'"

    @pytest.fixture(autouse=True)
    def _all_workers(self, cluster):
        cluster.client.wait_for_workers(2, timeout=60)   # a killed worker's nanny restarts it

    @pytest.fixture
    def executor(self, cluster):
        return cluster.client

    @pytest.fixture
    def write_flow(self, cluster):
        return cluster.write

    @pytest.fixture
    def counting_executor(self, cluster):
        ex = Counting(cluster.client)
        ex.sizes = []
        return ex


class TestDaskClientExecutor(TestDaskClient):
    """``run(executor=client.get_executor())``: the same through Dask's own Executor."""

    @pytest.fixture
    def executor(self, cluster):
        return cluster.client.get_executor()


def test_lambdas_and_closures_travel_by_value(cluster):
    from flowdeco import task

    def make(n):
        @task
        def plus():
            return n + 1
        return plus

    double = task(name="double")(lambda plus: plus * 2)
    result = run_flow([make(1), double], executor=cluster.client, fail_after=TIMEOUT)
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
        run_flow(str(path), executor=cluster.client, fail_after=TIMEOUT)
    rc = cli.main([str(path), "--executor", "dask", "--dask-address", cluster.address,
                   "--no-state"])
    assert rc == 4
    assert "task 'locked' cannot run on the dask executor" in capsys.readouterr().err


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
    run_flow(str(path), executor=cluster.client, plugins=[Spy()], fail_after=TIMEOUT)
    assert seen["workers"] == 2
    run_flow(str(path), executor=cluster.client, workers=1, plugins=[Spy()], fail_after=TIMEOUT)
    assert seen["workers"] == 1


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
    events = audit(tmp_path / "st", "addr")
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


#: what a Dask nanny writes into its own process's environment before it spawns a worker
DASK_ENV = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MALLOC_TRIM_THRESHOLD_", "__DASK_PARENT_PID")


def test_a_local_cluster_leaves_the_drivers_environment_as_it_found_it(monkeypatch):
    """The nannies of a LocalCluster live in the driver and set PYTHONHASHSEED,
    OMP_NUM_THREADS=1... in ``os.environ`` for their workers: the driver (and every
    subprocess it starts later) keeps its own values."""
    for key in DASK_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own value
    before = dict(os.environ)
    ex = DaskExecutor.start(1, quiet=True)
    try:
        assert ex.submit(os.getenv, "PYTHONHASHSEED").result(TIMEOUT)  # the workers' own
        assert dict(os.environ) == before  # already during the run
    finally:
        ex.shutdown()
    assert dict(os.environ) == before


# --------------------------------------------------------------------------- captured output


def test_prints_and_logging_on_dask_workers_come_back_as_events(cluster, tmp_path):
    """Issue 19: the capture is installed on the worker before the attempt; the records
    travel back with the result and land in the audit trail of that attempt."""
    from flowdeco.plugins.audit import audit_path, read_events
    path = cluster.write("""
        import logging
        from flowdeco import task

        @task(retries=1)
        def shout(ctx):
            print("on a dask worker, attempt", ctx.attempt)
            logging.getLogger("fddask.cap").warning("warned %d", ctx.attempt)
            if ctx.attempt == 1:
                raise ValueError("again")
            return 1
    """)
    result = run_flow(str(path), executor=cluster.client, state_dir=str(tmp_path / "st"),
                      run_id="d1", fail_after=TIMEOUT)
    assert result.ok
    got = [(e["event"], e["task"], e["attempt"], e.get("text") or e.get("message"))
           for e in read_events(audit_path(tmp_path / "st", "d1"), ("task_log", "task_output"))]
    assert got == [("task_output", "shout", 1, "on a dask worker, attempt 1"),
                   ("task_log", "shout", 1, "warned 1"),
                   ("task_output", "shout", 2, "on a dask worker, attempt 2"),
                   ("task_log", "shout", 2, "warned 2")]
