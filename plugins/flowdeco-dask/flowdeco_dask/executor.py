"""The ``concurrent.futures`` executor that sends attempts to Dask workers."""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any, Callable

import cloudpickle
import dask
from distributed import Client, LocalCluster
from distributed.cfexecutor import ClientExecutor
from distributed.scheduler import KilledWorker

from flowdeco import UsageError
from flowdeco.executors import WorkerCrashed, relay
from flowdeco.pickling import importable
from flowdeco.pickling import check_graph as _check_graph


def check_graph(graph: Any) -> None:
    """Tasks must pickle with cloudpickle (Dask's pickler): lambdas and closures do.

    A task whose module a fresh worker could not import by name (built at
    run time, or ``__main__``) is shipped by value; other modules travel by
    reference, so they must be importable on the workers (they are on a
    local cluster; on a remote one, install the code there or upload it with
    ``client.upload_file``).
    """
    _check_graph(graph, "dask", dumps=cloudpickle.dumps, by_reference=False)
    for v in graph.vertices:
        fn = getattr(v, "fn", None)
        modname = getattr(fn, "__module__", None)
        if fn is None or modname is None or modname == "__main__":
            continue
        module = sys.modules.get(modname)
        if module is not None and not importable(modname):
            cloudpickle.register_pickle_by_value(module)


def cluster_threads(executor: Any) -> int:
    """How many tasks the cluster runs at once (its worker threads), 0 if unknown."""
    client = executor.client if isinstance(executor, DaskExecutor) else \
        getattr(executor, "_client", executor)
    try:
        return sum(client.nthreads().values())
    except Exception:  # noqa: BLE001 - a closed client: let the run fail on submit instead
        return 0


class DaskExecutor(Executor):
    """Submits each call to a ``distributed.Client`` as a Dask task (``pure=False``).

    A task whose worker process died fails with
    :class:`flowdeco.executors.WorkerCrashed` (Dask's ``KilledWorker``).  On
    a cluster this executor started, Dask does not re-run such a task itself
    (``allowed-failures`` 0): the task's retry policy decides, as for any
    failed attempt.  A scheduler you run yourself keeps its own setting
    (Dask's default re-runs a task up to 3 times on other workers first).

    ``shutdown`` closes only what this executor started: the client and the
    ``LocalCluster`` made by :meth:`start`, never a client given to :meth:`wrap`.
    """

    def __init__(self, client: Client, *, cluster: LocalCluster | None = None,
                 owns_client: bool = False):
        self.client = client
        self.cluster = cluster
        self._owns_client = owns_client
        self._inner = client.get_executor(pure=False)
        self._closed = False
        #: the cluster's worker threads (None if unknown): how many attempts to keep in flight
        self.max_workers: int | None = cluster_threads(self) or None
        self._max_workers = self.max_workers   # what the session reads of a given Executor
        #: files uploaded for the run (``flowdeco_dask.upload.Uploads``), released on shutdown
        self.uploads: Any = None
        #: the driver's values of the variables the local cluster's nannies set (see start)
        self._environ: dict[str, str | None] = {}

    @classmethod
    def start(cls, workers: int, address: str | None = None,
              quiet: bool = False) -> "DaskExecutor":
        """Connect to ``address``, or start a ``LocalCluster`` of ``workers`` processes.

        ``quiet`` (``-q``): the local cluster's scheduler, nannies and workers
        log nothing below CRITICAL (flowdeco reports what they would warn
        about: a dead worker is the attempt's ``WorkerCrashed``).
        """
        if address is not None:
            try:
                client = Client(address, set_as_default=False, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise UsageError(f"--dask-address {address}: cannot reach a Dask scheduler "
                                 f"there ({type(exc).__name__}: {exc})") from None
            return cls(client, owns_client=True)
        environ = dict(os.environ)
        try:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                # the scheduler's HTTP server on a free port (8787 may be taken), no dashboard
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", scheduler_kwargs={"dashboard": False},
                    silence_logs=logging.CRITICAL if quiet else logging.WARN)
        finally:
            set_by_dask = _restore_environ(environ)
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        ex = cls(client, cluster=cluster, owns_client=True)
        ex._environ = {key: environ.get(key) for key in set_by_dask}
        return ex

    @classmethod
    def wrap(cls, obj: Any) -> "DaskExecutor":
        """Use a ``Client`` (or its executor) that someone else owns."""
        if isinstance(obj, DaskExecutor):
            return obj
        if isinstance(obj, ClientExecutor):
            obj = obj._client
        return cls(obj)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        inner = self._inner.submit(fn, *args, **kwargs)
        outer: Future = Future()
        inner.add_done_callback(partial(relay, outer, crash=_worker_crash))
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._inner.shutdown(wait=wait and not cancel_futures)
            if self.uploads is not None and wait:
                # not when abandoning the run (a second Ctrl-C): no round trips then
                self.uploads.release()
        finally:
            if self._owns_client:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
                _restore_environ(self._environ, self._environ)

    def __repr__(self) -> str:
        where = "local cluster" if self.cluster is not None else "cluster"
        return f"<DaskExecutor {where} {self.client.scheduler.address if self.client.scheduler else '?'}>"


def _restore_environ(before: dict[str, str | None] | dict[str, str],
                     keys: Any = None) -> set[str]:
    """Put back this process's environment variables as they were in ``before`` (only
    ``keys``, default: every variable); returns the names that had changed.

    A LocalCluster's nannies live in the driver and, before they spawn a worker, write
    the worker's environment (``PYTHONHASHSEED``, ``MALLOC_TRIM_THRESHOLD_``,
    ``OMP_NUM_THREADS``...) into ``os.environ`` (Dask's nanny.py); a run must not leave
    them behind for the rest of the process and every subprocess it starts later.  The
    nanny writes them again before each worker (re)start, so a restarted worker still
    gets them.
    """
    keys = set(os.environ) | set(before) if keys is None else keys
    changed = {key for key in keys if os.environ.get(key) != before.get(key)}
    for key in changed:
        value = before.get(key)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return changed


def _worker_crash(exc: BaseException) -> BaseException | None:
    """A killed Dask worker fails the attempt with WorkerCrashed (see ``flowdeco.executors.relay``)."""
    if not isinstance(exc, KilledWorker):
        return None
    last = getattr(getattr(exc, "last_worker", None), "address", None)
    return WorkerCrashed(f"dask worker {last or '(unknown)'} died" if last else "a dask worker died")


def client_of(obj: Any) -> Client:
    """The ``distributed.Client`` behind a client, its executor, or a :class:`DaskExecutor`."""
    if isinstance(obj, DaskExecutor):
        return obj.client
    if isinstance(obj, ClientExecutor):
        return obj._client
    return obj
