"""The per-task table: one column per field, one row per vertex of the graph.

Columns rather than one object per task: a run of 100,000 tasks keeps a few
lists of small ints and shared strings, and the hot paths alias the columns
they touch into locals.  :class:`~flowdeco.outcome.TaskOutcome` objects are
built from a row only when someone looks (``Run.outcome_at``).
"""

from __future__ import annotations

from typing import Any

from ..graph import Graph
from ..outcome import TaskOutcome
from .states import PENDING


class TaskTable:
    """Per-task columns, indexed by vertex index.  Owned by the scheduler thread."""

    __slots__ = ("state", "status", "reason", "error", "attempts", "t0", "t1", "worker",
                 "cache", "remaining", "last_error", "next_attempt", "first_iteration",
                 "next_iter", "gated")

    def __init__(self, graph: Graph):
        n = len(graph)
        #: a :class:`~flowdeco.engine.states.TaskState` value (as an int)
        self.state: list[int] = [PENDING] * n
        #: the outcome status once ended (``succeeded``, ``failed``, ...), else None
        self.status: list[str | None] = [None] * n
        #: why a skipped task was skipped
        self.reason: list[str | None] = [None] * n
        #: the failure: an exception, or a message for engine-decided failures
        self.error: list[BaseException | str | None] = [None] * n
        self.attempts: list[int] = [0] * n
        #: start of the first attempt and end of the last, on the run's monotonic clock
        self.t0: list[float | None] = [None] * n
        self.t1: list[float | None] = [None] * n
        #: the worker that ran the last attempt
        self.worker: list[str | None] = [None] * n
        #: TaskOutcome objects already built
        self.cache: list[TaskOutcome | None] = [None] * n
        #: dependencies not ended yet (filled when the run starts; unused in order)
        self.remaining: list[int] = []
        #: the error of the attempt a task waits to retry after
        self.last_error: list[BaseException | None] = [None] * n
        #: attempt and iteration the task's next start runs
        self.next_attempt: list[int] = [1] * n
        self.first_iteration: list[int | None] = [None] * n
        for v in graph.using("every"):
            self.first_iteration[v.index] = 1
        self.next_iter: list[int | None] = list(self.first_iteration)
        #: readiness goes through the dynamic gate (sub-flow nodes, map=/when=/trigger=,
        #: and tasks whose dependency was skipped for a reason they inherit)
        self.gated: list[bool] = [False] * n
        for i in graph.dynamic:
            self.gated[i] = True

    def row(self, i: int) -> dict[str, Any]:
        """Task ``i``'s fields (for debugging and tests)."""
        return {name: getattr(self, name)[i] if name != "remaining" or self.remaining else None
                for name in self.__slots__}
