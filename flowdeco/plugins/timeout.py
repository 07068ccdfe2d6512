"""Timeout: an attempt that runs longer than its limit fails with :class:`TaskTimeout`.

``@task(timeout=S)`` sets the limit of each attempt in seconds;
``run(timeout=S)`` / CLI ``--timeout S`` is the default for tasks that set
none.  A timed-out attempt is a failed attempt like any other: the task's
retry policy decides whether it runs again.

How an attempt is stopped depends on where it runs:

- **Worker process** (``executor="process"``): a ``SIGALRM`` timer
  (``signal.setitimer``) raises ``TaskTimeout`` inside the attempt, so the
  task's code really stops (also in ``time.sleep`` or a blocking socket
  call) and the worker process serves the next task.  Code stuck inside a C
  extension that never returns to the interpreter cannot be interrupted this
  way, and a task that catches every ``Exception`` can swallow the timeout.
- **Thread executor**: the attempt runs on its worker like any other, with a
  deadline (``flowdeco_task_deadline``, enforced by the scheduler's watchdog,
  :mod:`flowdeco.deadlines`).  At the deadline the scheduler fails the
  attempt with ``TaskTimeout`` and stops waiting; the pool replaces the
  worker thread, so the run keeps its concurrency, goes on and ends.  But
  **a Python thread cannot be killed**: the timed-out code keeps running in
  the background (a daemon thread) until it returns on its own (its result
  is dropped; its side effects happen).  A retry of that task may therefore
  overlap the abandoned attempt.  Use ``executor="process"`` when a
  timed-out attempt must really stop.
  A circuit breaker on the same task counts the timeout as its call's
  failure (the scheduler exits the task's guard with ``TaskTimeout``).
- **Elsewhere on threads** (``sync`` executor, Dask workers, instances of
  mapped tasks): the attempt runs on a helper daemon thread while the caller
  waits at most ``S`` seconds for it, with the same abandonment on expiry.

Cost: nothing is registered unless some task of the flow has a timeout (or a
default is set), and only those tasks are limited; on the thread executor an
attempt that finishes in time costs two short lock sections (no thread
hand-off); with the helper-thread wrapper it costs one hand-off.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..errors import UsageError
from ..manager import hookimpl, swap_plugin
from ..outcome import Deadline
# the error and the call helpers live in the core (pipelines use them too);
# re-exported here for compatibility
from ..policies.timeout import (TaskTimeout, TimeoutCall, call_in_thread,  # noqa: F401
                                call_with_alarm, timeout_message)

NAME = "timeout"
_GUARD = "timeout-guard"
_WRAPPER = "timeout-wrapper"


class TimeoutGuard:
    """Registered for a flow that uses timeouts; at run start decides how each task is limited.

    On flowdeco's thread pool (``run.can_abandon``) a task gets a scheduler
    deadline (``flowdeco_task_deadlines``): no wrapper, no hand-off.  The
    others -- every task on other executors, and instances of mapped tasks -- get a
    :class:`TimeoutCall` wrapper from a :class:`TimeoutWrapper` registered for
    that run only, so a run that needs no wrapper pays no per-task hook.
    """

    def __init__(self, default: float | None):
        self.default = default
        #: one Deadline per limit in seconds
        self._shared: dict[float, Deadline] = {}
        self._deadlines: dict[int, Deadline] = {}

    def _limit(self, v: Any) -> float:
        t = v.spec.timeout
        return t if t is not None else self.default  # type: ignore[return-value]

    def _deadline(self, seconds: float) -> Deadline:
        deadline = self._shared.get(seconds)
        if deadline is None:
            deadline = self._shared[seconds] = Deadline(
                seconds, lambda name: TaskTimeout(timeout_message(name, seconds)))
        return deadline

    @hookimpl(tryfirst=True)
    def flowdeco_run_start(self, run: Any) -> None:
        default = self.default
        # a few list passes and one shared Deadline when the limits agree (the usual
        # case): no object per task beyond the table itself
        limited = run.graph.using("timeout") if default is None else \
            [v for v in run.graph.vertices if v.spec is not None]
        wrapped: dict[int, float] = {}
        deadlines: dict[int, Deadline] = {}
        if run.can_abandon:
            plain = [v for v in limited if v.spec.map is None]
            if len(plain) < len(limited):
                ids = {id(v) for v in plain}
                wrapped = {v.index: self._limit(v) for v in limited if id(v) not in ids}
            same = {v.spec.timeout for v in plain}
            if len(same) == 1:
                d = self._deadline(next(iter(same)) if None not in same else default)
                deadlines = dict.fromkeys([v.index for v in plain], d)
            else:
                deadlines = {v.index: self._deadline(self._limit(v)) for v in plain}
        else:
            wrapped = {v.index: self._limit(v) for v in limited}
        self._deadlines = deadlines
        swap_plugin(run.config.pluginmanager, _WRAPPER, TimeoutWrapper(wrapped) if wrapped else None)

    @hookimpl
    def flowdeco_task_deadlines(self, run: Any) -> dict[int, Deadline] | None:
        deadlines, self._deadlines = self._deadlines, {}
        return deadlines or None

    @hookimpl
    def flowdeco_run_finish(self, run: Any, result: Any) -> None:
        swap_plugin(run.config.pluginmanager, _WRAPPER)


class TimeoutWrapper:
    """Wraps the attempts of the tasks a run cannot limit with a deadline (see TimeoutGuard)."""

    def __init__(self, seconds: dict[int, float]):
        self.seconds = seconds
        self.pid = os.getpid()

    @hookimpl
    def flowdeco_task_wrap(self, run: Any, task: Any) -> Callable[[Callable], Callable] | None:
        seconds = self.seconds.get(task.index)
        if seconds is None:
            return None
        name, pid = task.name, self.pid
        return lambda call: TimeoutCall(call, seconds, name, pid)


# --------------------------------------------------------------------------- hooks


@hookimpl(trylast=True)  # listed after the core's own options in --help
def flowdeco_addoption(parser: Any) -> None:
    parser.addoption("--timeout", dest="timeout", type=float, default=None, metavar="SECONDS",
                     group="running",
                     help="time limit of each attempt of tasks that set no timeout= "
                          "(a timed-out attempt fails with TaskTimeout)")


@hookimpl
def flowdeco_configure(config: Any) -> None:
    value = config.getoption("timeout")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value < float("inf")):
        raise UsageError(f"timeout must be a number of seconds > 0, got {value!r}")


@hookimpl
def flowdeco_task_options() -> list[str]:
    return ["timeout"]


@hookimpl
def flowdeco_collection_finish(config: Any, graph: Any) -> None:
    default = config.getoption("timeout")
    if default is None and not graph.using("timeout"):
        return  # no task has a timeout: register nothing, cost nothing
    pm = config.pluginmanager
    guard = pm.get_plugin(_GUARD)
    if guard is None:
        pm.register(TimeoutGuard(None if default is None else float(default)), _GUARD)


@hookimpl
def flowdeco_unconfigure(config: Any) -> None:
    for name in (_WRAPPER, _GUARD):
        swap_plugin(config.pluginmanager, name)
