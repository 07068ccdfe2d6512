"""Time limits on one call: the :class:`TaskTimeout` error and the ways to enforce it.

Used by every caller that limits time: the engine's attempt primitive
(``engine.attempt.run_attempt``, for attempts no watchdog covers: the sync
executor, worker processes, Dask worker threads) and pipeline stages
(:mod:`flowdeco.pipeline`, per call).

- :func:`call_in_thread`: the call runs on a pooled helper daemon thread while
  the caller waits at most the limit.  A Python thread cannot be killed: on
  expiry the helper is abandoned and the code runs on until it returns.
- :func:`call_with_alarm`: main thread only (a worker process): a ``SIGALRM``
  timer raises :class:`TaskTimeout` inside the call, so the code really stops.
- :class:`TimeoutCall`: a picklable call that picks one of the two where it runs.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
from queue import Empty, SimpleQueue
from typing import Any, Callable

from ..errors import FlowError

class TaskTimeout(FlowError):
    """An attempt ran longer than its timeout (a failed attempt, retryable like any other)."""

    engine_decided = True  # one line on the console (see flowdeco.errors.FlowError)


def timeout_message(name: str, seconds: float) -> str:
    """The one-line message of a timed-out call of ``name``."""
    return f"task {name!r} exceeded its timeout of {seconds:g} s"


# --------------------------------------------------------------------------- helper threads
#
# Attempts with a timeout run on pooled daemon threads so that starting one
# costs a queue hand-off, not a thread start.  A helper whose attempt timed
# out stays busy until the code returns; the pool starts another when needed.
# Idle helpers exit after _IDLE_EXIT seconds.

_IDLE_EXIT = 30.0
_pool_lock = threading.Lock()
_jobs: SimpleQueue = SimpleQueue()
_idle = 0
_spawned = 0


class _Job:
    __slots__ = ("call", "kwargs", "context", "done", "result", "error")

    def __init__(self, call: Callable[[dict], Any], kwargs: dict):
        self.call = call
        self.kwargs = kwargs
        self.context = contextvars.copy_context()
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


def _helper() -> None:
    global _idle
    get = _jobs.get
    while True:
        try:
            job = get(timeout=_IDLE_EXIT)
        except Empty:
            with _pool_lock:
                if _idle > 0:
                    _idle -= 1
                    return
            continue
        try:
            job.result = job.context.run(job.call, job.kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker
            tb = exc.__traceback__
            if tb is not None and tb.tb_next is not None:
                exc.__traceback__ = tb.tb_next  # drop this frame from the task's traceback
            job.error = exc
        job.done.release()
        job = None
        with _pool_lock:
            _idle += 1


def _hand_off(job: _Job) -> None:
    global _idle, _spawned
    with _pool_lock:
        if _idle:
            _idle -= 1
            spawn = False
        else:
            _spawned += 1
            spawn = True
    if spawn:
        threading.Thread(target=_helper, name=f"flowdeco-timeout-{_spawned}",
                         daemon=True).start()
    _jobs.put(job)


def _reset_after_fork() -> None:
    global _jobs, _idle, _pool_lock
    _jobs = SimpleQueue()
    _idle = 0
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def call_in_thread(call: Callable[[dict], Any], kwargs: dict, seconds: float, name: str,
                   error: Callable[[str], BaseException] | None = None) -> Any:
    """Run ``call(kwargs)`` on a helper thread; raise :class:`TaskTimeout` after ``seconds``.

    The helper cannot be stopped: on timeout it is abandoned and the code
    keeps running until it returns by itself.  ``error(name)``, if given,
    makes the exception raised on expiry instead (a :class:`~flowdeco.Deadline`'s).
    """
    job = _Job(call, kwargs)
    _hand_off(job)
    if not job.done.acquire(timeout=seconds):
        raise TaskTimeout(timeout_message(name, seconds)) if error is None else error(name)
    if job.error is not None:
        err, job.error = job.error, None
        raise err
    return job.result


def call_with_alarm(call: Callable[[dict], Any], kwargs: dict, seconds: float, name: str,
                    error: Callable[[str], BaseException] | None = None) -> Any:
    """Run ``call(kwargs)`` in this (main) thread under a ``SIGALRM`` timer.

    On expiry the signal handler raises :class:`TaskTimeout` (or ``error(name)``)
    inside the call.  The previous ``SIGALRM`` handler is restored afterwards.
    Main thread only.
    """
    def on_alarm(signum: int, frame: Any) -> None:
        raise TaskTimeout(timeout_message(name, seconds)) if error is None else error(name)

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return call(kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old if old is not None else signal.SIG_DFL)


_HAS_ALARM = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


def can_alarm(driver_pid: int) -> bool:
    """A ``SIGALRM`` timer may limit a call here: the main thread of a process other
    than ``driver_pid`` (the run's own process keeps its signals to itself)."""
    return _HAS_ALARM and os.getpid() != driver_pid \
        and threading.current_thread() is threading.main_thread()


def timeout_error(seconds: float, name: str) -> TaskTimeout:
    """The :class:`TaskTimeout` of ``name`` for a limit of ``seconds`` (picklable as a
    ``partial``: a deadline's error travels to worker processes)."""
    return TaskTimeout(timeout_message(name, seconds))


class TimeoutCall:
    """One attempt under a time limit; picklable so it can run in a worker process.

    In a worker process's main thread it uses a ``SIGALRM`` timer (the code
    really stops); anywhere else a helper thread (the code cannot be killed).
    """

    __slots__ = ("call", "seconds", "name", "driver_pid")

    def __init__(self, call: Callable[[dict], Any], seconds: float, name: str, driver_pid: int):
        self.call = call
        self.seconds = seconds
        self.name = name
        self.driver_pid = driver_pid

    def __call__(self, kwargs: dict) -> Any:
        if can_alarm(self.driver_pid):
            return call_with_alarm(self.call, kwargs, self.seconds, self.name)
        return call_in_thread(self.call, kwargs, self.seconds, self.name)

    def __getstate__(self) -> tuple:
        return (self.call, self.seconds, self.name, self.driver_pid)

    def __setstate__(self, state: tuple) -> None:
        self.call, self.seconds, self.name, self.driver_pid = state

    def __repr__(self) -> str:
        return f"<TimeoutCall {self.name!r} {self.seconds:g}s>"
