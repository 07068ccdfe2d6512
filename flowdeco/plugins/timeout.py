"""Timeout: an attempt that runs longer than its limit fails with :class:`TaskTimeout`.

``@task(timeout=S)`` sets the limit of each attempt in seconds;
``run(timeout=S)`` / CLI ``--timeout S`` is the default for tasks that set
none.  A timed-out attempt is a failed attempt like any other: the task's
retry policy decides whether it runs again.

How an attempt is stopped depends on where it runs:

- **Worker process** (``executor="process"``): the limit travels with the
  attempt and is applied in the worker: a ``SIGALRM`` timer
  (``signal.setitimer``) raises ``TaskTimeout`` inside the attempt, so the
  task's code really stops (also in ``time.sleep`` or a blocking socket
  call) and the worker process serves the next task.  Code stuck inside a C
  extension that never returns to the interpreter cannot be interrupted this
  way, and a task that catches every ``Exception`` can swallow the timeout.
- **Thread executor** (tasks and instances of mapped tasks): the attempt runs
  on its worker like any other, with a deadline enforced by the scheduler's
  watchdog (:mod:`flowdeco.deadlines`).  At the deadline the scheduler fails the
  attempt with ``TaskTimeout`` and stops waiting; the pool replaces the
  worker thread, so the run keeps its concurrency, goes on and ends.  But
  **a Python thread cannot be killed**: the timed-out code keeps running in
  the background (a daemon thread) until it returns on its own (its result
  is dropped; its side effects happen).  A retry of that task may therefore
  overlap the abandoned attempt.  Use ``executor="process"`` when a
  timed-out attempt must really stop.
- **Elsewhere on threads** (``sync`` executor, Dask worker threads): the
  attempt runs on a helper daemon thread while the caller waits at most
  ``S`` seconds for it, with the same abandonment on expiry.

This plugin only decides which tasks have which limit (a
:class:`~flowdeco.Deadline` per task, ``flowdeco_task_deadlines``); the engine
applies it the same way on every executor (``engine.attempt.run_attempt``).
A circuit breaker on the same task counts the timeout as its call's failure.

Cost: nothing is registered unless some task of the flow has a timeout (or a
default is set), and only those tasks are limited; on the thread executor an
attempt that finishes in time costs two short lock-free stores (no thread
hand-off); with the helper thread it costs one hand-off.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..manager import hookimpl, swap_plugin
from ..outcome import Deadline
# the error and the call helpers live in the core (pipelines use them too);
# re-exported here for compatibility
from ..policies.timeout import (TaskTimeout, TimeoutCall, call_in_thread,  # noqa: F401
                                call_with_alarm, timeout_error, timeout_message)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config, Parser
    from ..engine.scheduler import Run
    from ..graph import Graph, Vertex

NAME = "timeout"
_GUARD = "timeout-guard"


class TimeoutGuard:
    """Registered for a flow that uses timeouts: gives each limited task its deadline.

    One shared :class:`~flowdeco.Deadline` per limit in seconds (usually one
    for the whole flow), picklable so that it travels with remote attempts.
    """

    def __init__(self, default: float | None):
        self.default = default
        #: one Deadline per limit in seconds
        self._shared: dict[float, Deadline] = {}

    def _limit(self, v: "Vertex") -> float:
        t = v.spec.timeout  # type: ignore[union-attr]
        return t if t is not None else self.default  # type: ignore[return-value]

    def _deadline(self, seconds: float) -> Deadline:
        deadline = self._shared.get(seconds)
        if deadline is None:
            deadline = self._shared[seconds] = Deadline(seconds, partial(timeout_error, seconds))
        return deadline

    @hookimpl
    def flowdeco_task_deadlines(self, run: "Run") -> dict[int, Deadline] | None:
        default = self.default
        limited = run.graph.using("timeout") if default is None else \
            [v for v in run.graph.vertices if v.spec is not None]
        # one shared Deadline when the limits agree (the usual case): no object per task
        same = {v.spec.timeout for v in limited}  # type: ignore[union-attr]
        if len(same) == 1:
            d = self._deadline(next(iter(same)) if None not in same else default)  # type: ignore[arg-type]
            return dict.fromkeys([v.index for v in limited], d) or None
        return {v.index: self._deadline(self._limit(v)) for v in limited} or None


# --------------------------------------------------------------------------- hooks


@hookimpl(trylast=True)  # listed after the core's own options in --help
def flowdeco_addoption(parser: "Parser") -> None:
    parser.addoption("--timeout", dest="timeout", type=float, default=None, metavar="SECONDS",
                     group="running",
                     help="time limit of each attempt of tasks that set no timeout= "
                          "(a timed-out attempt fails with TaskTimeout)")


@hookimpl
def flowdeco_configure(config: "Config") -> None:
    value = config.getoption("timeout")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value < float("inf")):
        raise UsageError(f"timeout must be a number of seconds > 0, got {value!r}")


@hookimpl
def flowdeco_task_options() -> list[str]:
    return ["timeout"]


@hookimpl
def flowdeco_collection_finish(config: "Config", graph: "Graph") -> None:
    default = config.getoption("timeout")
    if default is None and not graph.using("timeout"):
        return  # no task has a timeout: register nothing, cost nothing
    pm = config.pluginmanager
    guard = pm.get_plugin(_GUARD)
    if guard is None:
        pm.register(TimeoutGuard(None if default is None else float(default)), _GUARD)


@hookimpl
def flowdeco_unconfigure(config: "Config") -> None:
    swap_plugin(config.pluginmanager, _GUARD)
