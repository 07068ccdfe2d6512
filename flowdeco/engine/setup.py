"""Setting a run up: hooks asked once, the per-task plan, the dispatch strategy.

Which hooks have implementations is asked once here, so an idle plugin costs
nothing per task; each task's call (``flowdeco_task_wrap``), guard
(``flowdeco_task_guards``) and deadline (``flowdeco_task_deadlines``) are
looked up into per-task lists the workers index, on every executor (remote
attempts carry theirs to the worker).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import repeat
from operator import is_not
from typing import TYPE_CHECKING, Any, Callable

from ..deadlines import Watchdog
from ..executors import SyncExecutor
from ..graph import TASK
from ..manager import direct_caller
from .attempt import Scoped, invoke
from .dispatch import make_dispatcher
from .pools import make_pools
from .scopes import start_scoped
from .states import M_EXPIRED

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


def setup(run: "Run") -> None:
    """Ask the run-start hooks, plan each task's call, guard and deadline, pick the strategy."""
    hook = run.hook
    report = run.reporter
    run._offset = run.clock.time() - run.clock.monotonic()
    run.started = run.clock.monotonic()
    run.sync = isinstance(run.executor, SyncExecutor)
    run.local = run.sync or isinstance(run.executor, ThreadPoolExecutor)
    hook.flowdeco_run_start(run=run)
    has = lambda h: bool(h.get_hookimpls())  # noqa: E731
    run.reporting = has(hook.flowdeco_report)
    report.hook = hook.flowdeco_report
    run._has_flush = has(hook.flowdeco_report_flush)
    run._has_restore = has(hook.flowdeco_task_restore)
    run._has_delay = has(hook.flowdeco_task_delay)
    run._has_attempt_done = has(hook.flowdeco_attempt_done)
    run._success_hooked = run.on_success if run._has_attempt_done else frozenset()
    wrap = direct_caller(hook.flowdeco_task_wrap, ("run", "task")) \
        if has(hook.flowdeco_task_wrap) else None
    #: flowdeco_attempt_scope, or None: then every attempt starts from the scheduler
    #: (_start, DynamicFlows.start), which adds its scopes to its arguments
    run._scope = direct_caller(hook.flowdeco_attempt_scope,
                               ("run", "task", "name", "attempt", "iteration")) \
        if has(hook.flowdeco_attempt_scope) else None
    scoped = run._scope is not None
    if scoped:
        run.inline_successors = False  # no worker chaining: see the hook's doc
        run._start = partial(start_scoped, run)  # type: ignore[method-assign]
    if run._has_restore:
        run._restore = direct_caller(hook.flowdeco_task_restore, ("run", "task", "name"),
                                      firstresult=True)
    if has(hook.flowdeco_task_deadlines):
        setup_deadlines(run, hook.flowdeco_task_deadlines(run=run))
    if has(hook.flowdeco_task_guards):
        run._guards = per_task(run, hook.flowdeco_task_guards(run=run))
    #: per task: an attempt with a guard or deadline (None: no task has one)
    run._policed = policed(run._guards, run._deadlines)
    local = run.local
    calls: list[Callable[[dict], Any] | None]
    if wrap is None and local and not scoped:
        calls = [None] * len(run.graph)  # every task a plain call, made inline
    else:
        calls = []
        for v in run.graph.vertices:
            call = None
            if v.kind is TASK:
                decos = wrap(run, v) if wrap is not None else ()  # (no None in it)
                if decos or not local or scoped:
                    call = partial(invoke, v.fn)
                    for deco in reversed(decos):
                        call = deco(call)
                    if scoped:
                        call = Scoped(call)
            calls.append(call)
    run._calls = calls
    #: every task a plain call of its function (no wrapper, no scope): see engine/inorder.py
    run._calls_inline = calls.count(None) == len(calls)
    # --limit: the pool gate (None unless a limit can bind; see engine/pools.py)
    run.pools = make_pools(run)
    if run.pools is not None:
        run._on_done = run.pools.wrap_done(run._on_done)  # type: ignore[method-assign]
    # thread workers take their next task themselves (no hand-off through the
    # scheduler) unless a plugin needs to see each completion first
    run._workers_pick = run.local and not run.sync and run.inline_successors
    # ... and a successor released by their own completion only when it goes
    # through no ready-time hook (restore, delay)
    run._chaining = run._workers_pick and not run._has_restore and not run._has_delay
    #: per worker thread: completions the scheduler has handled (see ThreadDispatch)
    run._handled: dict[str, int] = {}
    run._log_sink = report.sink if run.reporting else None
    #: mark the thread running each attempt (engine/tracking.py), when a plugin asked
    #: and something reports what it attributes
    run._tracking = bool(run.track_attempts) and run.reporting
    run._attempt_name = partial(attempt_name, run)
    #: what a remote attempt runs first in its worker process (see call_remote)
    run._worker_setup = tuple(run.worker_setup) if run._tracking else ()
    # a released task with no ready-time hook (restore, delay) goes straight to the heap
    run._plain_release = not run._has_restore and not run._has_delay and run.pools is None
    run._dispatcher = make_dispatcher(run)
    run._start_attempt = run._dispatcher.start


def policed(guards: list | None, deadlines: list | None) -> list[bool] | None:
    """Per task: whether it has a guard or a deadline (None: no task has either)."""
    if guards is None and deadlines is None:
        return None
    if guards is None or deadlines is None:  # (one list: a C pass)
        return list(map(is_not, guards or deadlines, repeat(None)))  # type: ignore[arg-type]
    return [g is not None or d is not None for g, d in zip(guards, deadlines)]


def attempt_name(run: "Run", key: Any) -> str:
    """The name of what a tracked attempt runs: task index ``i`` or instance ``(m, k)``."""
    if type(key) is int:
        return run.graph.vertices[key].name
    return key[0].instance(key[1])


def per_task(run: "Run", answers: list) -> list | None:
    """``{task index: value}`` answers merged into a per-vertex list (first answer wins),
    keeping tasks only (a mapped task's value serves its instances; sub-flow nodes
    take none); None if empty."""
    answers = [a for a in answers if a]
    if not answers:
        return None
    vertices = run.graph.vertices
    out: list[Any] = list(map(answers[-1].get, range(len(vertices))))  # one pass in C
    for answer in reversed(answers[:-1]):
        for i, x in answer.items():
            if x is not None:
                out[i] = x
    for i in run.graph.dynamic:  # sub-flow nodes take none
        if vertices[i].kind is not TASK:
            out[i] = None
    # (not out.count(None): that compares each value to None with its own __eq__,
    # a Python call per task for an attrs Deadline)
    return out if any(map(is_not, out, repeat(None))) else None


def setup_deadlines(run: "Run", answers: list) -> None:
    """Per-task deadlines; on flowdeco's thread pool (``can_abandon``) a watchdog
    enforces them, elsewhere each attempt does (``engine.attempt.call_limited``)."""
    deadlines = per_task(run, answers)
    if deadlines is not None:
        run._deadlines = deadlines
        if run.can_abandon:
            put = run.q.put  # the watchdog's thread: an overrun attempt, for the scheduler to end
            run._watchdog = Watchdog(lambda armed: put((M_EXPIRED, armed)))
            run._watchdog.start()

