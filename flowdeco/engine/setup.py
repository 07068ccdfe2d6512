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
from typing import Any, Callable

from ..deadlines import Watchdog
from ..executors import SyncExecutor
from ..graph import TASK
from ..manager import direct_caller
from .attempt import invoke
from .dispatch import make_dispatcher


class RunSetup:
    """``Run._setup`` and its helpers (mixed into :class:`~flowdeco.engine.scheduler.Run`)."""

    # -- setup
    def _setup(self) -> None:
        hook = self.hook
        self._offset = self.clock.time() - self.clock.monotonic()
        self.started = self.clock.monotonic()
        self.sync = isinstance(self.executor, SyncExecutor)
        self.local = self.sync or isinstance(self.executor, ThreadPoolExecutor)
        hook.flowdeco_run_start(run=self)
        has = lambda h: bool(h.get_hookimpls())  # noqa: E731
        self.reporting = has(hook.flowdeco_report)
        self._report_hook = hook.flowdeco_report
        self._has_flush = has(hook.flowdeco_report_flush)
        self._has_restore = has(hook.flowdeco_task_restore)
        self._has_delay = has(hook.flowdeco_task_delay)
        self._has_attempt_done = has(hook.flowdeco_attempt_done)
        self._success_hooked = self.on_success if self._has_attempt_done else frozenset()
        wrap = direct_caller(hook.flowdeco_task_wrap, ("run", "task")) \
            if has(hook.flowdeco_task_wrap) else None
        if self._has_restore:
            self._restore = direct_caller(hook.flowdeco_task_restore, ("run", "task", "name"),
                                          firstresult=True)
        if has(hook.flowdeco_task_deadlines):
            self._setup_deadlines(hook.flowdeco_task_deadlines(run=self))
        if has(hook.flowdeco_task_guards):
            self._guards = self._per_task(hook.flowdeco_task_guards(run=self))
        #: per task: an attempt with a guard or deadline (None: no task has one)
        self._policed = None if self._guards is None and self._deadlines is None else [
            g is not None or d is not None for g, d in zip(
                self._guards or [None] * len(self.graph),
                self._deadlines or [None] * len(self.graph))]
        local = self.local
        calls: list[Callable[[dict], Any] | None]
        if wrap is None and local:
            calls = [None] * len(self.graph)  # every task a plain call, made inline
        else:
            calls = []
            for v in self.graph.vertices:
                call = None
                if v.kind is TASK:
                    decos = wrap(self, v) if wrap is not None else ()  # (no None in it)
                    if decos or not local:
                        call = partial(invoke, v.fn)
                        for deco in reversed(decos):
                            call = deco(call)
                calls.append(call)
        self._calls = calls
        self._fns = [v.fn for v in self.graph.vertices]
        # thread workers take their next task themselves (no hand-off through the
        # scheduler) unless a plugin needs to see each completion first
        self._workers_pick = self.local and not self.sync and self.inline_successors
        # ... and a successor released by their own completion only when it goes
        # through no ready-time hook (restore, delay)
        self._chaining = self._workers_pick and not self._has_restore and not self._has_delay
        self._chain_next = self._chains() if self._chaining else [None] * len(self.graph)
        #: per worker thread: completions the scheduler has handled (see ThreadDispatch)
        self._handled: dict[str, int] = {}
        self._log_sink = self._sink if self.reporting else None
        # a released task with no ready-time hook (restore, delay) goes straight to the heap
        self._plain_release = not self._has_restore and not self._has_delay
        self._dispatcher = make_dispatcher(self)
        self._start_attempt = self._dispatcher.start

    def _chains(self) -> list[int | None]:
        """For each task, the successor a worker may run right after it, or None.

        Only a task that depends on nothing else qualifies, and only when no
        other successor (which may become ready by the same completion) would
        have to start first by the priority rule, and never a task that goes
        through the dynamic gate (``map=``, ``when=``, ``trigger=``).
        """
        vertices = self.graph.vertices
        watched, slow = self._success_hooked, self._table.gated
        out: list[int | None] = []
        for i, first in enumerate(self._first_successors()):
            best = None
            if first is not None and i not in watched:
                w = vertices[first]
                if w.kind is TASK and len(w.deps) == 1 and not slow[first]:
                    best = first
            out.append(best)
        return out

    def _first_successors(self) -> list[int | None]:
        """Each task's successor that goes first by the priority rule (None: no successor)."""
        first = self.__dict__.get("_first_succs")
        if first is None:
            get = self._prio.__getitem__
            first = self._first_succs = [min(succ, key=get) if succ else None
                                    for succ in self.graph.succs]
        return first

    def _per_task(self, answers: list) -> list | None:
        """``{task index: value}`` answers merged into a per-vertex list (first answer wins),
        keeping tasks only (a mapped task's value serves its instances; sub-flow nodes
        take none); None if empty."""
        answers = [a for a in answers if a]
        if not answers:
            return None
        vertices = self.graph.vertices
        out: list[Any] = list(map(answers[-1].get, range(len(vertices))))  # one pass in C
        for answer in reversed(answers[:-1]):
            for i, x in answer.items():
                if x is not None:
                    out[i] = x
        for i in self.graph.dynamic:  # sub-flow nodes take none
            if vertices[i].kind is not TASK:
                out[i] = None
        return out if out.count(None) < len(out) else None

    def _setup_deadlines(self, answers: list) -> None:
        """Per-task deadlines; on flowdeco's thread pool (``can_abandon``) a watchdog
        enforces them, elsewhere each attempt does (``engine.attempt.call_limited``)."""
        deadlines = self._per_task(answers)
        if deadlines is not None:
            self._deadlines = deadlines
            if self.can_abandon:
                self._watchdog = Watchdog(self._expire)
                self._watchdog.start()

