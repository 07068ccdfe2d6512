"""The run's timers: tasks waiting for a retry delay, a ``delay=`` or their next interval.

A waiting task holds no worker: it sits in this heap until its time comes,
then goes back to the ready heap (or, for a mapped instance or a mapped
task's delay, back to :class:`~flowdeco.engine.dynamic.DynamicFlows`).
Scheduler thread only.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from .states import READY

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run

#: (due on the run's monotonic clock, sequence, task index, attempt, iteration)
Timer = tuple[float, int, int, int, "int | None"]


class Timers:
    """A heap of timers of one run (``run.timers``)."""

    __slots__ = ("run", "heap", "seq")

    def __init__(self, run: "Run"):
        self.run = run
        self.heap: list[Timer] = []
        self.seq = 0

    def __bool__(self) -> bool:
        return bool(self.heap)

    def next_due(self) -> float:
        """When the earliest timer is due (only when there is one)."""
        return self.heap[0][0]

    def push(self, due: float, i: int, attempt: int, iteration: int | None) -> None:
        """Make task ``i`` ready again at ``due`` with ``attempt``/``iteration``."""
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, i, attempt, iteration))

    def release(self) -> None:
        """Put the tasks whose time has come back on the ready heap."""
        run = self.run
        now = run.clock.monotonic()
        timers = self.heap
        table = run._table
        while timers and timers[0][0] <= now:
            _, _, i, attempt, iteration = heapq.heappop(timers)
            if table.gated[i] and run._dynamic().timer(i, attempt, iteration):
                continue  # a mapped instance's retry, or a mapped task's delay ended
            table.state[i] = READY
            table.next_attempt[i] = attempt
            table.next_iter[i] = iteration
            if run.pools is not None and run.pools.capped[i] is not None:
                run.pools.admit(i)  # a capped task waits for its pool slot (engine/pools.py)
                continue
            with run._lock:
                heapq.heappush(run._ready, run._prio[i])

    def take_all(self) -> list[Timer]:
        """Remove every timer (a stopping run), earliest first."""
        timers, self.heap = self.heap, []
        return sorted(timers)
