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
  the OOM killer) fails the attempt it was running with
  :class:`WorkerCrashed` -- a failed attempt like any other, retried by the
  task's policy; the attempts in flight beside it run again in a new pool
  without using up an attempt.  Workers exit by themselves when the driver
  dies, so a killed run leaves nothing running and nothing locked.
- ``sync``: in the calling thread, one task at a time, for debugging.

The scheduler stays in the calling process whatever the executor, so
retries, timeouts, state and the audit trail behave the same everywhere.
Executor plugins (``flowdeco-dask``) add names through
``flowdeco_make_executor``.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing.connection import wait as _wait_sentinels

from .threadpool import ThreadPool
from typing import TYPE_CHECKING, Any, Callable

from .errors import FlowError, UsageError
from .manager import hookimpl
from .pickling import check_graph

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco.config import Config
    from flowdeco.graph import Graph


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


@functools.cache
def _cpus() -> int:
    """The machine's CPUs, asked once (``os.cpu_count`` costs ~10 µs: a run asks twice)."""
    return os.cpu_count() or 1


def default_workers(executor: str) -> int:
    cpus = _cpus()
    return cpus if executor in ("process", "dask") else min(32, cpus + 4)


# --------------------------------------------------------------------------- crashes


class WorkerCrashed(FlowError):
    """A worker process died while an attempt was in flight (segfault, ``os._exit``, OOM kill).

    A failed attempt like any other: the task's retry policy decides whether
    it runs again.  When a process pool breaks, the attempt whose process
    died fails this way ("... while running task 'x'", ``culprit`` True), and
    so do tiny attempts batched into the same submission; the attempts in
    flight beside it are sent again to a new pool.  ``culprit`` is False
    ("... while task 'y' was running in the same pool") only for an attempt
    lost with a pool whose break no attempt explains, after
    ``MAX_UNEXPLAINED_RESENDS`` resends, or during shutdown.
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


# --------------------------------------------------------------------------- worker processes
#
# Which worker runs which call: each worker process takes a slot of a shared
# array at start-up (its pid) and writes there the key of each call it starts.
# The key stays when the call returns (its result still travels back), so
# when the pool breaks, the slots of the dead processes name the calls that
# died with them -- and every other call in flight was merely sharing the pool.

_SLOT: tuple[Any, int] | None = None

#: how often a worker checks that the driver still lives (seconds); on Linux
#: the kernel also signals it at once (``PR_SET_PDEATHSIG``)
PARENT_POLL = 0.5
_PR_SET_PDEATHSIG = 1
_PDEATHSIG = getattr(signal, "SIGRTMIN", None) if sys.platform.startswith("linux") else None


def _init_worker(slots: Any, counter: Any, size: int, parent: int | None) -> None:
    global _SLOT
    # Ctrl-C reaches the whole process group: the driver decides what stops
    # (in-flight attempts finish, contract), so workers ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(parent)
    with counter.get_lock():
        j = counter.value
        counter.value += 1
    if j < size:
        slots[2 * j] = os.getpid()
        _SLOT = (slots, 2 * j + 1)


def _watch_parent(parent: int | None) -> None:
    """End this worker as soon as the process that started it dies.

    Once the driver is gone nobody records what a worker does, and a worker
    that runs on repeats work the resumed run does again (the run lock is
    not the worker's to keep: see ``RunLock``).  The kernel tells Linux
    workers at once (``PR_SET_PDEATHSIG``); a daemon thread checking
    ``getppid()`` every :data:`PARENT_POLL` seconds covers other systems and
    a task that replaced the signal's handler.  The signal is a catchable
    one checked against ``getppid()``, because Linux also sends it when the
    *thread* that forked the worker ends (a pool replaced from a callback
    thread) -- that must not kill it.  ``parent`` is the expected parent
    (None under ``forkserver``, whose server is the parent): a worker whose
    parent died before this ran exits at once.
    """
    ppid = os.getppid()
    if parent is not None and ppid != parent:
        os._exit(1)

    def orphaned() -> bool:
        return os.getppid() != ppid

    if _PDEATHSIG is not None:
        def on_parent_death(signum: int, frame: Any) -> None:
            if orphaned():
                os._exit(1)

        try:
            signal.signal(_PDEATHSIG, on_parent_death)
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(_PDEATHSIG), 0, 0, 0)
        except (OSError, AttributeError, ValueError):  # no prctl: the thread watches alone
            pass
    if orphaned():  # died before the signal was armed
        os._exit(1)
    threading.Thread(target=_poll_parent, args=(orphaned,), name="flowdeco-parent-watch",
                     daemon=True).start()


def _poll_parent(orphaned: Callable[[], bool]) -> None:
    while not orphaned():
        time.sleep(PARENT_POLL)
    os._exit(1)


def _tracked(key: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    slot = _SLOT
    if slot is not None:
        slot[0][slot[1]] = key
    return fn(*args, **kwargs)


# what a broken pool means for one call in flight (see _Pool.blame)
_DIED = "died"          # it ran in a process that died
_BESIDE = "beside"      # another call's process died: this one only shared the pool
_UNKNOWN = "unknown"    # no call of ours ran in a process that died (or none died)

#: how often a call is sent again after breaks no call in flight explains
#: (a process killed while idle, or while unpickling a call before it could
#: say which): beyond this the call fails with :class:`WorkerCrashed`
MAX_UNEXPLAINED_RESENDS = 2


class _Pool:
    """One ``ProcessPoolExecutor`` and its slot array; replaced as a whole once broken."""

    def __init__(self, workers: int, ctx: Any):
        self.size = workers
        self.slots = ctx.RawArray("q", 2 * workers)
        parent = os.getpid() if ctx.get_start_method() in ("fork", "spawn") else None
        self.executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker,
            initargs=(self.slots, ctx.Value("i", 0), workers, parent))
        # the pool's own dict (filled as processes start): still ours after its shutdown
        procs = getattr(self.executor, "_processes", None)
        self.procs: dict = procs if procs is not None else {}
        #: keys of the calls submitted and not ended yet
        self.inflight: set[int] = set()
        self._crash: dict[int, int] | None = None   # dead pid -> exit code, once known
        self._died: set[int] = set()                # keys of the calls the dead ran

    def dead(self) -> dict[int, int]:
        """Worker processes that have exited, pid -> exit code (read once, after a break).

        The first broken call's callback reads it, before the pool
        terminates the processes that are still alive.
        """
        if self._crash is None:
            procs = dict(self.procs)
            dead: dict[int, int] = {}
            ready = set(_wait_sentinels([p.sentinel for p in procs.values()], 0)) \
                if procs else set()
            for pid, p in procs.items():
                if p.exitcode is None and p.sentinel in ready:
                    p.join(1.0)  # exited a moment ago: reap it for its exit code
                if p.exitcode is not None:
                    dead[pid] = p.exitcode
            s = self.slots
            ran = {s[2 * j + 1] for j in range(self.size) if s[2 * j] in dead}
            self._died = ran & self.inflight
            self._crash = dead
        return self._crash

    def blame(self, key: int) -> str:
        """After the pool broke: what its break means for call ``key`` (``_DIED`` ...)."""
        self.dead()
        if key in self._died:
            return _DIED
        return _BESIDE if self._died else _UNKNOWN

    def running(self, key: int) -> int | None:
        """The pid of the worker that last started call ``key``."""
        s = self.slots
        for j in range(self.size):
            if s[2 * j + 1] == key:
                return s[2 * j]
        return None

    def crash_error(self, key: int, exc: BaseException, verdict: str) -> WorkerCrashed:
        dead = self.dead()
        pid = self.running(key)
        if verdict == _DIED and pid in dead:
            return WorkerCrashed(f"worker process {pid} died ({_exit_text(dead[pid])})")
        if dead:
            other, code = next(iter(dead.items()))
            return WorkerCrashed(f"worker process {other} died ({_exit_text(code)})",
                                 culprit=False)
        return WorkerCrashed(f"the process pool broke ({exc})")


class _Call:
    """One submission: what to run, the future its caller holds, its unexplained resends."""

    __slots__ = ("fn", "args", "kwargs", "outer", "resends")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.outer: Future = Future()
        self.resends = 0


class ProcessExecutor(Executor):
    """A process pool that replaces itself when a worker process dies.

    ``ProcessPoolExecutor`` refuses every submission once one of its worker
    processes died (``BrokenProcessPool``), and fails every call in flight.
    This executor knows which process ran which call: the call whose process
    died fails with :class:`WorkerCrashed` (naming the dead process and its
    exit code); the calls that were merely in flight beside it are sent
    again to a new pool, unseen by their caller (an attempt is not used
    up).  A break that no call in flight explains (a process killed while
    idle) sends them again at most :data:`MAX_UNEXPLAINED_RESENDS` times.

    Workers end by themselves when the process that started them dies (see
    ``_watch_parent``), so a killed run leaves nothing running.

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
        call = _Call(fn, args, kwargs)
        self._send(call)
        return call.outer

    def _send(self, call: _Call) -> None:
        """Submit ``call`` to the current pool, replacing a broken one."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._seq += 1
            key = self._seq
            pool = self._pool
            inner = None
            if pool is not None:
                pool.inflight.add(key)
                try:
                    inner = pool.executor.submit(_tracked, key, call.fn, call.args, call.kwargs)
                except BrokenProcessPool:
                    pool.inflight.discard(key)
                    self.rebuilds += 1
                    pool.executor.shutdown(wait=False)
            if inner is None:
                # (outside the except block: a forked worker would inherit the exception
                # being handled as the __context__ of every error its tasks raise)
                pool = self._pool = _Pool(self._max_workers, self._ctx)
                pool.inflight.add(key)
                inner = pool.executor.submit(_tracked, key, call.fn, call.args, call.kwargs)
        inner.add_done_callback(partial(self._ended, pool, key, call))

    def _ended(self, pool: _Pool, key: int, call: _Call, inner: Future) -> None:
        """Call ``key`` ended in ``pool`` (on the pool's thread): pass its outcome on, or resend."""
        outer = call.outer
        if inner.cancelled():
            pool.inflight.discard(key)
            outer.cancel()
            return
        exc = inner.exception()
        if exc is None:
            pool.inflight.discard(key)
            outer.set_result(inner.result())
            return
        if isinstance(exc, BrokenProcessPool):
            verdict = pool.blame(key)   # now, before the pool stops its live processes
            pool.inflight.discard(key)
            if verdict == _BESIDE or (verdict == _UNKNOWN
                                      and call.resends < MAX_UNEXPLAINED_RESENDS):
                call.resends += verdict == _UNKNOWN
                # not on this thread: from Python 3.12 it holds the broken pool's
                # lock, which a submit waiting on self._lock may need (deadlock)
                try:
                    threading.Thread(target=self._resend, args=(pool, key, call, exc, verdict),
                                     name="flowdeco-resend", daemon=True).start()
                    return
                except RuntimeError:  # interpreter shutting down: fail it below
                    pass
            exc = pool.crash_error(key, exc, verdict)
        else:
            pool.inflight.discard(key)
        outer.set_exception(exc)

    def _resend(self, pool: _Pool, key: int, call: _Call, exc: BaseException,
                verdict: str) -> None:
        """Send a call lost with a broken pool again (to a new pool); fail it if that fails."""
        try:
            self._send(call)
        except Exception:  # noqa: BLE001 - shut down, or no new pool can start
            call.outer.set_exception(pool.crash_error(key, exc, verdict))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list(pool.procs.values())
        pool.executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        if not wait:
            # the run stopped waiting (a second Ctrl-C): do not let the
            # interpreter's exit wait for attempts nobody will record
            for p in procs:
                if p.exitcode is None:
                    p.terminate()


def relay(outer: Future, inner: Future, crash: Callable[[BaseException], BaseException | None]
          ) -> None:
    """``inner`` (a cluster's future) ended: pass its outcome on to ``outer``.

    ``crash(exc)`` turns an error that means "the worker died" into the error
    the attempt fails with (:class:`WorkerCrashed`), or returns None for any
    other error, which passes on unchanged.  Executor plugins use it.
    """
    if inner.cancelled():
        outer.cancel()
        return
    exc = inner.exception()
    if exc is None:
        outer.set_result(inner.result())
    else:
        outer.set_exception(crash(exc) or exc)


# --------------------------------------------------------------------------- hooks


def executor_width(executor: Executor) -> int | None:
    """How many attempts ``executor`` runs at once, if it says: its ``max_workers``.

    An executor a plugin makes (a Dask cluster's threads) sets ``max_workers``;
    for the standard library's pools, their ``_max_workers``.
    """
    width = getattr(executor, "max_workers", None) or getattr(executor, "_max_workers", None)
    return width if isinstance(width, int) and not isinstance(width, bool) and width > 0 else None


def choose_executor(config: Any, workers: int | None) -> tuple[Executor, int, bool]:
    """The run's executor, always through ``flowdeco_make_executor``: (executor, workers, owned).

    ``executor=`` is a name (``"thread"``) or an object (an ``Executor``, or
    something a plugin recognises, like a Dask ``Client``).  Plugins see
    both and may return their own executor (wrapping the object); when no
    plugin does, an ``Executor`` object is used as it is.  ``owned``: the
    run made it, so it shuts it down.  Without ``workers``, the executor's
    own width (:func:`executor_width`) wins over the default for its name.
    """
    given = config.getoption("executor")
    name = given if isinstance(given, str) else type(given).__name__
    made = config.hook.flowdeco_make_executor(
        config=config, name=name, workers=workers or default_workers(name))
    if made is None:
        if not isinstance(given, Executor):
            raise UsageError(f"unknown executor {name!r}: use thread, process or sync "
                             "(dask needs the flowdeco-dask plugin)")
        made = given
    if workers is None:
        workers = executor_width(made) or default_workers(name)
    return made, workers, made is not given


@hookimpl(trylast=True)
def flowdeco_make_executor(config: Config, name: str, workers: int) -> Executor | None:
    if name == "thread":
        return ThreadPool(max_workers=workers, thread_name_prefix="flowdeco-worker")
    if name == "process":
        return ProcessExecutor(max_workers=workers)
    if name == "sync":
        return SyncExecutor()
    return None


@hookimpl
def flowdeco_collection_finish(config: Config, graph: Graph) -> None:
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
