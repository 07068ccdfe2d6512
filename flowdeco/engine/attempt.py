"""One attempt of a task: the call, its guard and deadline, and its remote form.

:func:`run_attempt` is the primitive every dispatch strategy and mapped
instance uses: it runs one attempt under the task's guard
(``flowdeco_task_guards``: circuit breakers) and deadline
(``flowdeco_task_deadlines``: timeouts) and returns ``(result, error,
overran)``.  The two hottest loops (the sync executor's in-order run and a
thread worker with no guard or deadline) write the bare call out instead,
the only other copies.

:func:`call_remote` is an attempt in a worker process (or on a Dask worker):
its guard and deadline travel with it (:class:`RemotePolicy`) and
:func:`run_attempt` applies them there; everything it returns pickles,
including the result (as its own pickle) and the exception (or a
:class:`RemoteTaskError` carrying its text).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import traceback
from contextlib import ExitStack
from functools import partial
from typing import Any, Callable, NamedTuple

from ..context import Context
from ..deadlines import Watchdog
from ..outcome import format_error
from ..pickling import UnpicklableResult, dumps_result
from . import tracking
from ..policies.timeout import call_in_thread, call_with_alarm, can_alarm


class RemoteTaskError(Exception):
    """An exception from a worker process that could not travel back as itself."""



#: the engine's own source folder: its frames are cut from task tracebacks
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def format_traceback(exc: BaseException) -> str:
    """The exception's traceback without the engine's own frames (runner, wrappers' glue)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and \
            os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_HERE + os.sep):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def invoke(fn: Callable[..., Any], kwargs: dict) -> Any:
    return fn(**kwargs)


def portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        err = RemoteTaskError(format_error(exc))
        err.remote_traceback = format_traceback(exc)  # type: ignore[attr-defined]
        return err


class RemotePolicy(NamedTuple):
    """What limits a remote attempt, carried with it to the worker (pickled).

    ``guard`` and ``deadline`` are the task's (``flowdeco_task_guards``,
    ``flowdeco_task_deadlines``); ``name`` names the task in the deadline's
    error; ``driver_pid`` is the run's process (a worker's main thread may use
    a ``SIGALRM`` timer, the driver's never does).
    """

    guard: Any
    deadline: Any
    name: str
    driver_pid: int


def call_remote(call: Callable[[dict], Any], kwargs: dict,
                policy: RemotePolicy | None = None, setup: tuple = ()) -> tuple:
    """Run one attempt in a worker process; everything returned must pickle.

    With a ``policy`` the attempt runs under its guard and deadline here, in
    the worker (:func:`run_attempt`): the same mechanism as in the driver.
    The result travels as its own pickle, made here, so a result that cannot
    be pickled fails this attempt with an error naming its type (and one that
    cannot be unpickled in the driver fails it there) instead of failing the
    transport.  ``t0``/``t1`` are the worker's clock: the driver keeps only
    their differences.

    ``setup`` (a run that tracks attempts, see :mod:`flowdeco.engine.tracking`):
    callables to run first (installing a capture in this process); the
    attempt then runs under a slot whose records travel back in ``logs``, in
    order with the task's ``ctx.log`` records.
    """
    ctx = kwargs.get("ctx")
    slot = None
    if setup:
        for fn in setup:
            fn()
        slot = tracking.enter(None, None, ctx._buffered_logs() if isinstance(ctx, Context)
                              else None)
        slot.at = (None, 0, None)
    t0 = time.monotonic()
    if policy is None:
        try:
            result, err = call(kwargs), None
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            result, err = None, exc
    else:
        result, err, _ = run_attempt(invoke, call, kwargs, policy.guard, policy.deadline,
                                     name=policy.name, driver_pid=policy.driver_pid)
    if err is not None:
        exc, err = err, portable(err)
        if not hasattr(err, "remote_traceback"):  # a traceback does not pickle: its text does
            try:
                err.remote_traceback = format_traceback(exc)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - an exception type refusing attributes
                pass
    t1 = time.monotonic()
    if slot is not None:
        tracking.leave(slot)  # (its partial lines are flushed into the buffer first)
    payload = None
    if err is None:
        try:
            payload = dumps_result(result)
        except UnpicklableResult as exc:
            err = exc
    logs = ctx._buffered_logs() if isinstance(ctx, Context) else \
        slot.buffer if slot is not None else []
    # a worker is one thread of execution (one attempt at a time: metrics' utilisation);
    # a Dask worker process runs attempts on several threads
    me = threading.current_thread()
    worker = f"pid-{os.getpid()}" if me is threading.main_thread() else \
        f"pid-{os.getpid()}-{me.name}"
    return payload, err, t0, t1, worker, logs


def call_batch(calls: list[tuple], setup: tuple = ()) -> list[tuple]:
    """Run several attempts (``(call, kwargs, policy)``) in sequence in one worker
    (see ``RemoteDispatch.start``)."""
    return [call_remote(call, kwargs, policy, setup) for call, kwargs, policy in calls]



#: the key under which an attempt's scopes (``flowdeco_attempt_scope``) travel in its
#: arguments to the worker, where :class:`Scoped` takes them out again
SCOPES = "__flowdeco_scopes__"


class Scoped:
    """A task's outermost call when some plugin gives attempts scopes: enters
    the attempt's scopes (carried in its arguments under :data:`SCOPES`) around
    the rest of the call, on the worker.  Pickles with the call."""

    __slots__ = ("call",)

    def __init__(self, call: Callable[[dict], Any]):
        self.call = call

    def __call__(self, kwargs: dict) -> Any:
        scopes = kwargs.pop(SCOPES, None)
        if not scopes:
            return self.call(kwargs)
        with ExitStack() as stack:
            for scope in scopes:
                stack.enter_context(scope)
            return self.call(kwargs)

    def __reduce__(self) -> Any:
        return (Scoped, (self.call,))


def is_plain(call: Any) -> bool:
    """A task call with no per-attempt wrapper (``flowdeco_task_wrap``)."""
    return type(call) is partial and call.func is invoke



def call_limited(fn: Callable[..., Any], call: Callable[[dict], Any] | None, kw: dict,
                 deadline: Any, name: str, driver_pid: int | None = None) -> Any:
    """One call under ``deadline`` where no watchdog can give up the thread.

    In a worker process's main thread (``driver_pid`` given and not this
    process) a ``SIGALRM`` timer raises the deadline's error inside the call,
    so the code really stops; anywhere else (the sync executor, Dask worker
    threads, foreign thread pools) the call runs on a helper daemon thread
    while this one waits at most ``deadline.seconds``, and is abandoned on
    expiry (a Python thread cannot be killed).
    """
    c = call if call is not None else partial(invoke, fn)
    if driver_pid is not None and can_alarm(driver_pid):
        return call_with_alarm(c, kw, deadline.seconds, name, deadline.error)
    return call_in_thread(c, kw, deadline.seconds, name, deadline.error)


def run_attempt(fn: Callable[..., Any], call: Callable[[dict], Any] | None, kw: dict,
                guard: Any = None, deadline: Any = None, watchdog: Watchdog | None = None,
                key: Any = None, attempt: int = 1, iteration: int | None = None,
                t0: float = 0.0, thread: threading.Thread | None = None,
                now: float | None = None, name: str = "",
                driver_pid: int | None = None) -> tuple[Any, BaseException | None, bool]:
    """One attempt of a task: ``(result, error, overran)``.  Every executor uses it.

    ``call`` is the task's wrapped call (``flowdeco_task_wrap``) or None for
    a plain ``fn(**kw)``.  The guard (``flowdeco_task_guards``) is entered
    before the deadline (``flowdeco_task_deadlines``) is applied and exited
    with the attempt's error, a deadline's error included.  How the deadline
    is applied depends on where the attempt runs: with a ``watchdog``
    (flowdeco's thread pool) the attempt is armed and runs on this thread; an
    overrun one is ended by the scheduler (with the deadline's error; it also
    exits the guard) and never again when its call finally returns --
    ``overran`` means the scheduler has given up this thread.  Without one,
    :func:`call_limited` enforces it here.  ``key`` (a task index, or
    ``(MapState, k)`` for a mapped instance), ``attempt``, ``iteration``,
    ``t0`` and ``thread`` identify the attempt to the watchdog (``now``: its
    arming time, when it is ``t0``); ``name`` names the task in the error.
    """
    token = None
    if guard is not None:
        try:
            token = guard.enter()
        except BaseException as exc:  # noqa: BLE001 - the guard refuses the attempt
            return None, exc, False
    armed = None
    try:
        if deadline is None:
            result = fn(**kw) if call is None else call(kw)
        elif watchdog is not None:
            armed = watchdog.arm(key, attempt, iteration, t0, thread,  # type: ignore[arg-type]
                                 deadline, guard, token, now=now)
            result = fn(**kw) if call is None else call(kw)
        else:
            result = call_limited(fn, call, kw, deadline, name, driver_pid)
        err = None
    except BaseException as exc:  # noqa: BLE001 - a task may raise anything
        result, err = None, exc
    if armed is not None and not Watchdog.disarm(armed):
        return None, None, True
    if guard is not None:
        guard.exit(token, err)
    return result, err, False
