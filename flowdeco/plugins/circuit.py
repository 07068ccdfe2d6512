"""Circuit plugin: the tasks' ``circuit=`` option (contract §1, §4, §6).

::

    api = CircuitBreaker("api", threshold=3, reset_after=30.0)

    @task(circuit=api)            # or circuit="api": names are process-wide
    def fetch():
        ...

The breaker itself (state machine, concurrency, processes) is
:class:`~flowdeco.policies.circuit.CircuitBreaker` in the core
(:mod:`flowdeco.policies.circuit`).  This plugin resolves ``circuit=`` at
collection (an unknown name is a collection error naming the task), makes
the task's breaker the guard of each of its attempts (on every executor,
mapped instances included), and reports the transitions of the
breakers a run uses as ``circuit_opened``, ``circuit_half_open`` and
``circuit_closed`` with ``breaker`` (the name).  An attempt refused by an
open breaker is a failed attempt like any other (a retry policy waits by its
own delays); a timed-out attempt counts as a failure of the breaker.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING

from ..errors import CollectionError, suggest
from ..manager import hookimpl
# the breaker lives in the core; re-exported here for compatibility
from ..policies.circuit import (CLOSED, EVENTS, HALF_OPEN, OPEN,  # noqa: F401
                                CircuitBreaker, CircuitCall, CircuitOpenError, CircuitState,
                                Listener)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..engine.scheduler import Run
    from ..graph import Graph, Vertex
    from ..outcome import RunResult

NAME = "circuit"
_GUARD = "circuit-guard"


def _firsts(tasks: "tuple[Vertex, ...]") -> "dict[int, Vertex]":
    """``{id(circuit= value): first task that sets it}``: one entry per distinct value,
    to resolve each once (a comprehension: slot reads are cheaper than attrgetter)."""
    return {id(v.spec.circuit): v for v in reversed(tasks)}  # type: ignore[union-attr]


def resolve(task: "Vertex") -> CircuitBreaker | None:
    """The breaker of a graph vertex (``circuit=`` object or name), or None.

    Raises :class:`~flowdeco.CollectionError` naming the task for an unknown
    name or a value that is not a breaker.
    """
    spec = task.spec
    value = None if spec is None else spec.circuit
    if value is None or isinstance(value, CircuitBreaker):
        return value
    if isinstance(value, str):
        try:
            return CircuitBreaker.get(value)
        except KeyError:
            pass
        known = CircuitBreaker.names()
        hint = suggest(value, known)
        raise CollectionError(
            f"task {task.name!r}: circuit={value!r} names no CircuitBreaker"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (known breakers: {', '.join(map(repr, known)) or 'none'}; create it with "
              f"CircuitBreaker({value!r}) at module level, before the flow is collected)")
    raise CollectionError(
        f"task {task.name!r}: circuit= takes a CircuitBreaker or its name, got {value!r}")


class CircuitGuard:
    """Registered when a flow's tasks use breakers: guards their attempts, reports transitions.

    A task's breaker is its attempt guard (``flowdeco_task_guards``: nothing
    built per task), on every executor and for every instance of a mapped
    task; on process and Dask workers the breaker travels by name and counts
    that worker's calls (see :mod:`flowdeco.policies.circuit`).
    """

    def __init__(self) -> None:
        #: id(breaker) -> (breaker, its run listener)
        self._used: dict[int, tuple[CircuitBreaker, Listener]] = {}

    @hookimpl
    def flowdeco_task_guards(self, run: "Run") -> dict[int, CircuitBreaker] | None:
        self.unsubscribe_all()
        tasks = run.graph.using("circuit")
        # resolve each distinct circuit= value once (most flows share a few breakers)
        firsts = _firsts(tasks)
        breakers = {key: resolve(v) for key, v in firsts.items()}
        for breaker in {id(b): b for b in breakers.values()}.values():
            def listener(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
                run.emit(EVENTS[new], breaker=b.name)  # its transitions, in the run's events
            breaker.subscribe(listener)  # type: ignore[union-attr]
            self._used[id(breaker)] = (breaker, listener)  # type: ignore[assignment]
        if len(breakers) == 1:  # one breaker for all (the usual case): no lookup per task
            return dict.fromkeys([v.index for v in tasks], *breakers.values()) or None
        return {v.index: breakers[id(v.spec.circuit)] for v in tasks} or None  # type: ignore[union-attr,misc]

    @hookimpl
    def flowdeco_run_finish(self, run: "Run", result: "RunResult") -> None:
        self.unsubscribe_all()

    def unsubscribe_all(self) -> None:
        used, self._used = self._used, {}
        for breaker, listener in used.values():
            breaker.unsubscribe(listener)


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_task_options() -> list[str]:
    return ["circuit"]


@hookimpl
def flowdeco_collection_finish(config: "Config", graph: "Graph") -> None:
    used = graph.using("circuit")
    # unknown names and wrong types fail here, before anything runs: each distinct
    # circuit= value checked once (most flows share a few breakers), by the first task
    # that sets it, in declaration order (it names that task in the error)
    for v in sorted(_firsts(used).values(), key=attrgetter("index")):
        resolve(v)
    if used and config.pluginmanager.get_plugin(_GUARD) is None:
        config.pluginmanager.register(CircuitGuard(), _GUARD)


@hookimpl
def flowdeco_unconfigure(config: "Config") -> None:
    pm = config.pluginmanager
    guard = pm.get_plugin(_GUARD)
    if guard is not None:
        guard.unsubscribe_all()
        pm.unregister(guard)
