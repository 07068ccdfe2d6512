"""Attempt scopes (``flowdeco_attempt_scope``): how an attempt starts when a plugin scopes it.

Only runs with an attempt-scope plugin use this: setup makes
:func:`start_scoped` the run's ``_start`` (the plain ``Run._start`` never
checks for scopes), and dynamic flows add an instance's scopes through the
port (``SchedulerPort.add_scopes``).  Scheduler thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graph import Vertex
from .attempt import SCOPES
from .states import RUNNING

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


def start_scoped(run: "Run", i: int, attempt: int, iteration: int | None) -> None:
    """``Run._start`` when a plugin gives attempts scopes (set at setup)."""
    v = run.graph.vertices[i]
    kw = v.arguments(run.results)
    if v.wants_ctx:
        kw["ctx"] = run._context(v, attempt, iteration)
    run._table.state[i] = RUNNING
    run.inflight += 1
    if run.reporting:
        run.reporter.started(v.name, attempt, iteration)
    add_scopes(run, kw, v, v.name, attempt, iteration)
    run._start_attempt(i, kw, attempt, iteration)


def add_scopes(run: "Run", kw: dict, v: Vertex, name: str, attempt: int,
               iteration: int | None) -> None:
    """The attempt's ``flowdeco_attempt_scope`` answers travel in its arguments."""
    scopes = run._scope(run, v, name, attempt, iteration)  # type: ignore[misc]
    if scopes:
        kw[SCOPES] = scopes
