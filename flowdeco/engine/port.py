"""What the scheduler offers to dynamic flows: the one way in for map, when= and trigger=.

:class:`~flowdeco.engine.dynamic.DynamicFlows` makes scheduling decisions
beside the scheduler, so it needs more than a plugin gets, but not the
scheduler's internals.  It gets a :class:`SchedulerPort`, built once per run
(after setup) by :meth:`Run.scheduler_port`: references to the per-task table,
the two ready heaps and their lock, the priority keys, what setup decided,
and bound methods of the run.  The references are the scheduler's own objects
and methods, so going through the port costs nothing on the per-instance
paths.  Besides the port, dynamic flows use the run's public names and three
engine counters on the run (``inflight``, ``flush_due``, ``sync_busy``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from .scopes import add_scopes

if TYPE_CHECKING:  # pragma: no cover
    from ..outcome import Restored, TaskOutcome
    from ..context import Context
    from ..graph import Vertex
    from .scheduler import Run
    from .table import TaskTable


class SchedulerPort:
    """The scheduler's state and operations that dynamic flows may use.

    State (read, and written only where noted):

    - ``table``: the per-task :class:`~flowdeco.engine.table.TaskTable`; dynamic
      flows read ``status``/``reason`` and set ``t0`` and ``state`` of the task
      they are deciding or expanding;
    - ``ready`` / ``map_ready``: the ready heap of plain tasks and the heap of
      mapped tasks with instances to start (priority keys, key % ``prio_mod``
      is the task index); both change under ``lock`` only;
    - ``prio``: the priority key of each task;
    - ``calls``: the per-task attempt wrapper (None: call the function);
    - ``guards`` / ``deadlines``: per-task attempt guard and deadline (None: no task
      has one); ``watchdog``: what enforces deadlines on flowdeco's thread pool, or None;
    - ``success_hooked``: tasks whose successful attempts go through
      ``flowdeco_attempt_done``; ``has_restore``, ``has_flush``,
      ``has_attempt_done``: whether those hooks have implementations;
    - ``restore_fields``: extra ``task_restored`` fields by task or instance name;
    - ``log_sink``: what ``ctx.log`` posts to (None when nothing reports);
    - ``chaining``: thread workers may take the next ready work themselves;
    - ``tracking``: mark attempts' threads (captured output, :mod:`flowdeco.engine.tracking`);
      ``sync_slot``: the scheduler thread's slot under the ``sync`` executor;
      ``attempt_name``: a slot's ``name_of``; ``worker_setup``: what a remote
      attempt runs first (``call_remote``'s ``setup``);
    - ``offset``: wall clock minus the monotonic clock (for reported times).

    Operations (scheduler thread unless noted):

    - ``finish(i, status, result, err, attempts, t1, worker=None, reason=None)``:
      task ``i`` ended; its successors are released or skipped;
    - ``start(i, attempt, iteration)``: start plain task ``i`` on the executor;
    - ``restore(run, task, name)``: ask ``flowdeco_task_restore`` (when
      ``has_restore``);
    - ``push_timer(deadline, i, attempt, iteration)``: call back at ``deadline``
      (``DynamicFlows.timer``; a mapped instance's number rides in ``iteration``);
    - ``flush()``: call ``flowdeco_report_flush`` now;
    - ``handle(msg)``: handle one worker message (the sync executor drains the queue);
    - ``context(task, attempt, iteration)``: a task's ``ctx``;
    - ``report(event, task, fields, mono)``, ``report_started(name, attempt,
      iteration, mono=None)``, ``report_end(name, outcome, t1)``: report events;
    - ``add_scopes(kw, task, name, attempt, iteration)``: add an attempt's
      ``flowdeco_attempt_scope`` answers to its arguments, right after its
      ``task_started`` report; None when no plugin implements the hook.
    """

    __slots__ = ("table", "ready", "map_ready", "lock", "prio", "prio_mod", "calls",
                 "guards", "deadlines", "watchdog",
                 "success_hooked", "has_restore", "has_flush", "has_attempt_done",
                 "restore_fields", "log_sink", "chaining", "tracking", "sync_slot",
                 "attempt_name", "worker_setup", "offset", "finish", "start",
                 "restore", "push_timer", "flush", "handle", "context", "report",
                 "report_started", "report_end", "add_scopes")

    def __init__(self, run: "Run"):
        self.table: TaskTable = run._table
        self.ready: list[int] = run._ready
        self.map_ready: list[int] = run._map_ready
        self.lock = run._lock
        self.prio: list[int] = run._prio
        self.prio_mod: int = run._prio_mod
        self.calls: list[Any] = run._calls
        self.guards: list[Any] | None = run._guards
        self.deadlines: list[Any] | None = run._deadlines
        self.watchdog = run._watchdog
        self.success_hooked = run._success_hooked
        self.has_restore: bool = run._has_restore
        self.has_flush: bool = run._has_flush
        self.has_attempt_done: bool = run._has_attempt_done
        self.restore_fields: dict[str, Any] = run._restore_fields
        self.log_sink = run._log_sink
        self.chaining: bool = run._chaining
        self.tracking: bool = run._tracking
        self.sync_slot: Any = getattr(run, "_sync_slot", None)
        self.attempt_name: Callable[[Any], str] = run._attempt_name
        self.worker_setup: tuple = run._worker_setup
        self.offset: float = run._offset
        self.finish: Callable[..., None] = run._finish
        self.start: Callable[[int, int, int | None], None] = run._start
        self.restore: Callable[[Run, Vertex, str], Restored | None] | None = \
            getattr(run, "_restore", None)
        self.push_timer: Callable[[float, int, int, int | None], None] = run.timers.push
        self.flush: Callable[[], None] = run._flush
        self.handle: Callable[[tuple], None] = run._handle
        self.context: Callable[..., Context] = run._context
        self.report: Callable[..., None] = run.reporter.event
        self.report_started: Callable[..., None] = run.reporter.started
        self.report_end: Callable[[str, TaskOutcome, float | None], None] = run.reporter.end
        self.add_scopes: Callable[..., None] | None = \
            partial(add_scopes, run) if run._scope is not None else None
