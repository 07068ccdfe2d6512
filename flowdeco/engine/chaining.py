"""Worker chaining: which successor a thread worker may run right after a task.

Computed once per run for :class:`~.dispatch.ThreadDispatch` (a worker that
finishes a task may take its chained successor itself, without a round trip
through the scheduler).  Scheduler thread, at setup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graph import TASK

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


def chains(run: "Run") -> list[int | None]:
    """For each task, the successor a worker may run right after it, or None.

    Only a task that depends on nothing else qualifies, and only when no
    other successor (which may become ready by the same completion) would
    have to start first by the priority rule, and never a task that goes
    through the dynamic gate (``map=``, ``when=``, ``trigger=``) or that a
    pool caps (it needs a slot first).
    """
    vertices = run.graph.vertices
    watched, slow = run._success_hooked, run._table.gated
    capped = run.pools.capped if run.pools is not None else None
    out: list[int | None] = []
    for i, first in enumerate(first_successors(run)):
        best = None
        if first is not None and i not in watched:
            w = vertices[first]
            if w.kind is TASK and len(w.deps) == 1 and not slow[first] and (
                    capped is None or capped[first] is None):  # a pool slot first
                best = first
        out.append(best)
    return out


def first_successors(run: "Run") -> list[int | None]:
    """Each task's successor that goes first by the priority rule (None: no successor)."""
    first = run.__dict__.get("_first_succs")
    if first is None:
        get = run._prio.__getitem__
        first = run._first_succs = [min(succ, key=get) if succ else None
                                    for succ in run.graph.succs]
    return first
