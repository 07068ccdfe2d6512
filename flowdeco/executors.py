"""Where task bodies run: the core's ``thread``, ``process`` and ``sync`` executors.

- ``thread`` (default): a :class:`~flowdeco.threadpool.ThreadPool` (a
  ``ThreadPoolExecutor`` of daemon threads that can give up on a thread whose
  attempt overran its timeout).  Tasks share this process;
  nothing is pickled.  Right for I/O-bound work and for code that releases
  the GIL (NumPy, most C extensions).
- ``process``: a :class:`ProcessExecutor`, a ``ProcessPoolExecutor`` that
  heals itself.  Pure-Python CPU-bound work runs in parallel; each attempt
  travels to a worker process by pickle (the task function by reference:
  module and name), and its result or exception comes back the same way.
  Tasks that cannot travel are refused at collection (see
  :mod:`flowdeco.pickling`).  A worker that dies (segfault, ``os._exit``,
  the OOM killer) fails the attempts in flight with :class:`WorkerCrashed`
  -- failed attempts like any other, retried by the task's policy -- and the
  pool is replaced for the next attempts instead of breaking the run.
- ``sync``: in the calling thread, one task at a time, for debugging.

The scheduler stays in the calling process whatever the executor, so
retries, timeouts, state and the audit trail behave the same everywhere.
Executor plugins (``flowdeco-dask``) add names through
``flowdeco_make_executor``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing.connection import wait as _wait_sentinels

from .threadpool import ThreadPool
from typing import Any, Callable

from .errors import FlowError
from .manager import hookimpl
from .pickling import check_graph


class SyncExecutor(Executor):
    """Runs each task in the calling (scheduler) thread: for debugging with breakpoints.

    The runner recognises it and calls tasks directly, without futures.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - a future carries any failure
            fut.set_exception(exc)
        return fut


def default_workers(executor: str) -> int:
    cpus = os.cpu_count() or 1
    return cpus if executor in ("process", "dask") else min(32, cpus + 4)


# --------------------------------------------------------------------------- crashes


class WorkerCrashed(FlowError):
    """A worker process died while an attempt was in flight (segfault, ``os._exit``, OOM kill).

    A failed attempt like any other: the task's retry policy decides whether
    it runs again.  When a process pool breaks, *every* attempt in flight in
    it fails this way -- the one whose process died ("... while running task
    'x'", ``culprit`` True) and those running beside it, whose processes the
    pool stops ("... while task 'y' was running in the same pool",
    ``culprit`` False) -- and so do tiny attempts batched into the same
    submission.  The next attempts run in a new pool.
    """

    engine_decided = True  # one line on the console (see flowdeco.errors.FlowError)

    def __init__(self, detail: str, task: str | None = None, culprit: bool = True):
        self.detail = detail
        self.task = task
        self.culprit = culprit
        super().__init__(self._message())

    def _message(self) -> str:
        if self.task is None:
            return self.detail
        if self.culprit:
            return f"{self.detail} while running task {self.task!r}"
        return (f"{self.detail} while task {self.task!r} was running in the same pool; "
                "its attempt was lost with the pool, which was replaced")

    def __reduce__(self) -> Any:
        return (WorkerCrashed, (self.detail, self.task, self.culprit))


def remote_failure(exc: BaseException, task: str) -> BaseException:
    """What an attempt's future failed with, as the task's error (names the task on crashes).

    The runner calls this for every exception a remote executor's future
    raises: a broken pool of any ``concurrent.futures`` executor becomes
    :class:`WorkerCrashed`; anything else is returned unchanged.
    """
    if isinstance(exc, WorkerCrashed):
        return WorkerCrashed(exc.detail, task, exc.culprit)
    if isinstance(exc, BrokenExecutor):
        return WorkerCrashed(f"the worker pool broke ({exc})", task)
    return exc


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"exit code {code}, {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


# --------------------------------------------------------------------------- process pool
#
# Which worker runs which call: each worker process takes a slot of a shared
# array at start-up (its pid) and writes the key of the call it runs next to
# it.  When the pool breaks, the array names the call whose process died.

_SLOT: tuple[Any, int] | None = None


def _init_worker(slots: Any, counter: Any, size: int) -> None:
    global _SLOT
    # Ctrl-C reaches the whole process group: the driver decides what stops
    # (in-flight attempts finish, contract), so workers ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with counter.get_lock():
        j = counter.value
        counter.value += 1
    if j < size:
        slots[2 * j] = os.getpid()
        _SLOT = (slots, 2 * j + 1)


def _tracked(key: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    slot = _SLOT
    if slot is None:
        return fn(*args, **kwargs)
    arr, at = slot
    arr[at] = key
    try:
        return fn(*args, **kwargs)
    finally:
        arr[at] = 0


class _Pool:
    """One ``ProcessPoolExecutor`` and its slot array; replaced as a whole once broken."""

    def __init__(self, workers: int, ctx: Any):
        self.size = workers
        self.slots = ctx.RawArray("q", 2 * workers)
        self.executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker,
            initargs=(self.slots, ctx.Value("i", 0), workers))
        self._crash: dict[int, int] | None = None   # dead pid -> exit code, once known

    def dead(self) -> dict[int, int]:
        """Worker processes that have exited, pid -> exit code (read once, after a break)."""
        if self._crash is None:
            procs = dict(getattr(self.executor, "_processes", None) or {})
            dead: dict[int, int] = {}
            ready = set(_wait_sentinels([p.sentinel for p in procs.values()], 0)) \
                if procs else set()
            for pid, p in procs.items():
                if p.exitcode is None and p.sentinel in ready:
                    p.join(1.0)  # exited a moment ago: reap it for its exit code
                if p.exitcode is not None:
                    dead[pid] = p.exitcode
            self._crash = dead
        return self._crash

    def running(self, key: int) -> int | None:
        """The pid of the worker running call ``key``, if it was running."""
        s = self.slots
        for j in range(self.size):
            if s[2 * j + 1] == key:
                return s[2 * j]
        return None

    def crash_error(self, key: int, exc: BaseException) -> WorkerCrashed:
        dead = self.dead()
        pid = self.running(key)
        if pid is not None and pid in dead:
            return WorkerCrashed(f"worker process {pid} died ({_exit_text(dead[pid])})")
        if dead:
            other, code = next(iter(dead.items()))
            return WorkerCrashed(f"worker process {other} died ({_exit_text(code)})",
                                 culprit=False)
        return WorkerCrashed(f"the process pool broke ({exc})")


class ProcessExecutor(Executor):
    """A process pool that replaces itself when a worker process dies.

    ``ProcessPoolExecutor`` refuses every submission once one of its worker
    processes died (``BrokenProcessPool``), and fails every call in flight.
    This executor turns those failures into :class:`WorkerCrashed` (naming
    the dead process and its exit code) and starts a new pool for the next
    submission, so one crashing task costs its own attempt and the attempts
    that were in flight beside it -- never the rest of the run.

    ``executor="process"`` makes one with ``workers`` processes; pass one
    yourself to choose the start method::

        run("flow.py", executor=ProcessExecutor(4, mp_context=get_context("spawn")))

    ``rebuilds`` counts the pools replaced so far.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None):
        self._max_workers = max_workers or default_workers("process")
        self._ctx = mp_context or multiprocessing.get_context()
        self._lock = threading.Lock()
        self._pool: _Pool | None = None
        self._seq = 0
        self._closed = False
        self.rebuilds = 0

    @property
    def start_method(self) -> str:
        return self._ctx.get_start_method()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._seq += 1
            key = self._seq
            pool = self._pool
            inner = None
            if pool is not None:
                try:
                    inner = pool.executor.submit(_tracked, key, fn, args, kwargs)
                except BrokenProcessPool:
                    self.rebuilds += 1
                    pool.executor.shutdown(wait=False)
            if inner is None:
                # (outside the except block: a forked worker would inherit the exception
                # being handled as the __context__ of every error its tasks raise)
                pool = self._pool = _Pool(self._max_workers, self._ctx)
                inner = pool.executor.submit(_tracked, key, fn, args, kwargs)
        outer: Future = Future()
        inner.add_done_callback(partial(relay, outer, crash=partial(_pool_crash, pool, key)))
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool.executor, "_processes", None) or {}).values())
        pool.executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        if not wait:
            # the run stopped waiting (a second Ctrl-C): do not let the
            # interpreter's exit wait for attempts nobody will record
            for p in procs:
                if p.exitcode is None:
                    p.terminate()


def relay(outer: Future, inner: Future, crash: Callable[[BaseException], BaseException | None]
          ) -> None:
    """``inner`` (a pool's or a cluster's future) ended: pass its outcome on to ``outer``.

    ``crash(exc)`` turns an error that means "the worker died" into the error
    the attempt fails with (:class:`WorkerCrashed`), or returns None for any
    other error, which passes on unchanged.  Executor plugins use it too.
    """
    if inner.cancelled():
        outer.cancel()
        return
    exc = inner.exception()
    if exc is None:
        outer.set_result(inner.result())
    else:
        outer.set_exception(crash(exc) or exc)


def _pool_crash(pool: _Pool, key: int, exc: BaseException) -> BaseException | None:
    return pool.crash_error(key, exc) if isinstance(exc, BrokenProcessPool) else None


# --------------------------------------------------------------------------- hooks


@hookimpl(trylast=True)
def flowdeco_make_executor(config: Any, name: str, workers: int) -> Executor | None:
    if name == "thread":
        return ThreadPool(max_workers=workers, thread_name_prefix="flowdeco-worker")
    if name == "process":
        return ProcessExecutor(max_workers=workers)
    if name == "sync":
        return SyncExecutor()
    return None


@hookimpl
def flowdeco_collection_finish(config: Any, graph: Any) -> None:
    """Refuse, before anything runs, tasks that cannot travel to a worker process."""
    executor = config.getoption("executor", None)
    if executor == "process":
        method = multiprocessing.get_context().get_start_method()
    elif isinstance(executor, ProcessExecutor):
        method = executor.start_method
    elif isinstance(executor, ProcessPoolExecutor):
        ctx = getattr(executor, "_mp_context", None)
        method = ctx.get_start_method() if ctx is not None else None
    else:
        return
    check_graph(graph, "process", start_method=method)
