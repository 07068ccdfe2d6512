"""The part of :class:`~flowdeco.engine.scheduler.Run` that plugins use: the public surface.

Read-only views of the stop state, events from any thread (:meth:`emit`),
callbacks onto the scheduler thread (:meth:`call_soon`), outcomes, task
inputs and timing records.  Everything here is documented and typed; a
plugin needs nothing prefixed with ``_``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..graph import Vertex
from ..outcome import SKIPPED, TaskOutcome, format_error
from .states import (M_CALL, M_EMIT, OK, RUNNING, S_ABANDONED, S_INTERRUPTED, S_STOPPING,
                     SKIP_STOPPED, SKIP_UPSTREAM)

if TYPE_CHECKING:  # pragma: no cover
    from .records import TaskRecords


class RunSurface:
    """Public methods of a run (mixed into :class:`~flowdeco.engine.scheduler.Run`)."""

    # -- stop state (read-only views; ``stop_state`` itself is an attribute)
    @property
    def stopping(self) -> bool:
        """Nothing new starts: ``-x``, :meth:`stop`, or an interrupt."""
        return self.stop_state >= S_STOPPING

    @property
    def interrupted(self) -> bool:
        """Ctrl-C, SIGTERM, or ``stop(interrupted=True)``."""
        return self.stop_state >= S_INTERRUPTED

    @property
    def abandoned(self) -> bool:
        """A second signal: in-flight attempts are not waited for."""
        return self.stop_state == S_ABANDONED

    # -- public helpers for plugins
    def emit(self, name: str, task: str | None = None, **fields: Any) -> None:
        """Report an audit event from any thread (delivered on the scheduler thread, in order)."""
        self.q.put((M_EMIT, name, task, fields, self.clock.monotonic()))

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` on the scheduler thread soon (from any thread; wakes the scheduler).

        For a plugin thread whose news must reach report hooks, which run on
        the scheduler thread only (the state plugin's writer after a commit).
        ``flowdeco_report_flush`` follows, as after every batch of messages.
        """
        self.q.put((M_CALL, fn))

    def now(self) -> float:
        """Current wall time (POSIX seconds) on the run's clock."""
        return self.clock.time()

    def stop(self, interrupted: bool = False) -> None:
        """Start nothing new (like ``-x``, or like Ctrl-C with ``interrupted=True``).

        Scheduler thread only (call it from a hook).  A plugin that can no
        longer do its job safely -- a store whose disk is full -- stops the run
        this way; running tasks finish and are recorded.
        """
        if not self.stopping:
            self._stop(interrupted)

    def outcome(self, name: str) -> TaskOutcome | None:
        """The outcome of task ``name`` (or mapped instance ``name[k]``) if it has ended, else None."""
        i = self.graph.by_name.get(name)
        if i is None:
            if self._dyn is not None and name.endswith("]"):
                return self._dyn.instance_outcome(name)
            raise KeyError(name)
        return self.outcome_at(i) if self._table.status[i] is not None else None

    def task_inputs(self, task: Vertex, name: str | None = None) -> dict[str, Any]:
        """The arguments ``task`` is called with once its dependencies are done (no ``ctx``).

        ``name`` may name an instance of a mapped task (``scan[3]``): its own
        arguments.  Scheduler thread only, from ``flowdeco_task_restore`` or
        later (input-hash caching keys tasks by these).  Parameters left to
        their defaults are not included.
        """
        if name is not None and name != task.name:
            kw = self._dynamic().instance_inputs(task.index, name)
            if kw is None:
                raise KeyError(name)
            return kw
        return task.arguments(self.results)

    def task_records(self) -> "TaskRecords":
        """Per-task timing records (start, end, worker, attempts, status), mapped
        instances included: what metrics are computed from (scheduler thread or after
        the run)."""
        from .records import TaskRecords
        return TaskRecords(self)

    def _dynamic(self) -> Any:
        """This run's :class:`~flowdeco.engine.dynamic.DynamicFlows` (trigger rules, when=, map=)."""
        if self._dyn is None:
            from .dynamic import DynamicFlows
            self._dyn = DynamicFlows(self)
        return self._dyn

    def outcome_at(self, i: int) -> TaskOutcome:
        out = self._table.cache[i]
        if out is None:
            status = self._table.status[i]
            if status is None:
                raise KeyError(self.graph.vertices[i].name)
            if status == SKIPPED:
                out = SKIP_UPSTREAM if self._table.reason[i] == "upstream" else \
                    SKIP_STOPPED if self._table.reason[i] == "stopped" else \
                    TaskOutcome(SKIPPED, reason=self._table.reason[i])  # type: ignore[arg-type]
            else:
                err = self._table.error[i]
                t0, t1 = self._table.t0[i], self._table.t1[i]
                off = self._offset
                out = TaskOutcome(
                    status, self.results[i] if status in OK else None,  # type: ignore[arg-type]
                    None if err is None else err if isinstance(err, str) else format_error(err),
                    self._table.attempts[i], None if t0 is None else t0 + off,
                    None if t1 is None else t1 + off,
                    0.0 if t0 is None or t1 is None else t1 - t0,
                    exception=err if isinstance(err, BaseException) else None,
                    worker=self._table.worker[i])
            self._table.cache[i] = out
        return out

    def running_count(self) -> int:
        """Tasks and mapped instances running now: what a stopping run waits for."""
        n = self._table.state.count(RUNNING)
        dyn = self._dyn
        if dyn is not None and dyn.maps:
            from .instances import I_RUNNING
            for i, m in dyn.maps.items():
                n += m.status.count(I_RUNNING) - (self._table.state[i] == RUNNING)
        return n

