"""Circuit plugin: the tasks' ``circuit=`` option (contract §1, §4, §6).

::

    api = CircuitBreaker("api", threshold=3, reset_after=30.0)

    @task(circuit=api)            # or circuit="api": names are process-wide
    def fetch():
        ...

The breaker itself (state machine, concurrency, processes) is
:class:`~flowdeco.policies.circuit.CircuitBreaker` in the core
(:mod:`flowdeco.policies.circuit`).  This plugin resolves ``circuit=`` at
collection (an unknown name is a collection error naming the task), guards
each attempt with the task's breaker, and reports the transitions of the
breakers a run uses as ``circuit_opened``, ``circuit_half_open`` and
``circuit_closed`` with ``breaker`` (the name).  An attempt refused by an
open breaker is a failed attempt like any other (a retry policy waits by its
own delays); a timed-out attempt counts as a failure of the breaker.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import CollectionError, suggest
from ..manager import hookimpl, swap_plugin
# the breaker lives in the core; re-exported here for compatibility
from ..policies.circuit import (CLOSED, EVENTS, HALF_OPEN, OPEN,  # noqa: F401
                                CircuitBreaker, CircuitCall, CircuitOpenError, CircuitState,
                                Listener)

NAME = "circuit"
_GUARD = "circuit-guard"
_WRAPPER = "circuit-wrapper"


def resolve(task: Any) -> CircuitBreaker | None:
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

    In this process (thread and sync executors) a task's breaker is its
    attempt guard (``flowdeco_task_guards``: nothing built per task).  Tasks
    the guards do not cover -- every task on other executors, instances of
    mapped tasks -- get a :class:`CircuitCall` wrapper from a
    :class:`CircuitWrapper` registered for that run only.
    """

    def __init__(self) -> None:
        #: id(breaker) -> (breaker, its run listener)
        self._used: dict[int, tuple[CircuitBreaker, Listener]] = {}
        self._guards: dict[int, CircuitBreaker] = {}

    @hookimpl
    def flowdeco_run_start(self, run: Any) -> None:
        self.unsubscribe_all()
        tasks = run.graph.using("circuit")
        # resolve each distinct circuit= value once (most flows share a few breakers)
        firsts = {id(v.spec.circuit): v for v in tasks}
        breakers = {key: resolve(v) for key, v in firsts.items()}
        for breaker in {id(b): b for b in breakers.values()}.values():
            def listener(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
                run.emit(EVENTS[new], breaker=b.name)  # its transitions, in the run's events
            breaker.subscribe(listener)  # type: ignore[union-attr]
            self._used[id(breaker)] = (breaker, listener)  # type: ignore[assignment]
        if run.local:
            self._guards = {v.index: breakers[id(v.spec.circuit)] for v in tasks
                            if v.spec.map is None}  # type: ignore[misc]
            wrapped = {v.index: breakers[id(v.spec.circuit)] for v in tasks
                       if v.spec.map is not None}
        else:
            self._guards = {}
            wrapped = {v.index: breakers[id(v.spec.circuit)] for v in tasks}
        swap_plugin(run.config.pluginmanager, _WRAPPER, CircuitWrapper(wrapped) if wrapped else None)

    @hookimpl
    def flowdeco_task_guards(self, run: Any) -> dict[int, CircuitBreaker] | None:
        guards, self._guards = self._guards, {}
        return guards or None

    @hookimpl
    def flowdeco_run_finish(self, run: Any, result: Any) -> None:
        self.unsubscribe_all()
        swap_plugin(run.config.pluginmanager, _WRAPPER)

    def unsubscribe_all(self) -> None:
        used, self._used = self._used, {}
        for breaker, listener in used.values():
            breaker.unsubscribe(listener)


class CircuitWrapper:
    """Wraps the attempts of the tasks guards cannot cover (see CircuitGuard)."""

    def __init__(self, breakers: dict[int, CircuitBreaker]):
        self.breakers = breakers

    # tryfirst: the outermost wrapper, so a timed-out attempt counts as a failure and an
    # open breaker refuses before a timeout helper is involved
    @hookimpl(tryfirst=True)
    def flowdeco_task_wrap(self, run: Any, task: Any) -> Callable[[Callable], Callable] | None:
        breaker = self.breakers.get(task.index)
        if breaker is None:
            return None
        return lambda call: CircuitCall(call, breaker)


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_task_options() -> list[str]:
    return ["circuit"]


@hookimpl
def flowdeco_collection_finish(config: Any, graph: Any) -> None:
    used = graph.using("circuit")
    for v in used:
        resolve(v)  # unknown names and wrong types fail here, before anything runs
    if used and config.pluginmanager.get_plugin(_GUARD) is None:
        config.pluginmanager.register(CircuitGuard(), _GUARD)


@hookimpl
def flowdeco_unconfigure(config: Any) -> None:
    pm = config.pluginmanager
    swap_plugin(pm, _WRAPPER)
    guard = pm.get_plugin(_GUARD)
    if guard is not None:
        guard.unsubscribe_all()
        pm.unregister(guard)
