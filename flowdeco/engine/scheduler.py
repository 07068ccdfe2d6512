"""The scheduler: runs a validated graph on an executor.

One scheduler thread (the caller's) owns the run's state.  Workers only run
task bodies and post what happened to one queue; the scheduler takes those
messages in order, calls the report hooks, and starts what became ready.  So
reporting plugins never need locks, and at most ``workers`` attempts are in
flight at a time (a crash loses at most that many).

The life of a task (states: :class:`~flowdeco.engine.states.TaskState`)::

    PENDING --deps done--> (restore? -> done) (delay? -> WAITING) -> READY
    READY --worker free--> RUNNING --attempt ends--> flowdeco_attempt_done
        -> Reschedule: WAITING (retry / next iteration), no worker held
        -> otherwise: DONE (succeeded / failed); successors are released,
           or skipped with reason "upstream" when this one did not succeed.

:class:`Run` owns readiness (the ready heap, timers), priority, completion
(:meth:`Run._on_done` -> :meth:`Run._finish`) and release; starting
attempts is the job of a dispatch strategy (:mod:`flowdeco.engine.dispatch`),
and the per-task fields live in a :class:`~flowdeco.engine.table.TaskTable`.
Sub-flow nodes and tasks with ``trigger=``, ``when=`` or ``map=`` go through
``DynamicFlows.gate`` once their dependencies are done (see
:mod:`flowdeco.engine.dynamic`); the hot paths of plain tasks never look at it,
and it reaches the scheduler only through a :class:`~flowdeco.engine.port.SchedulerPort`.
"""

from __future__ import annotations

import heapq
import threading
from concurrent.futures import Executor
from queue import Empty, SimpleQueue
from typing import Any, Mapping

from ..config import Config, check_run_timeout
from ..context import Context
from ..dag import promote_young
from ..deadlines import Watchdog
from ..graph import SUBFLOW, TASK, Graph, Vertex
from ..outcome import (FAILED, INTERRUPTED, RESTORED, SKIPPED, SUCCEEDED, Attempt, Deadline,
                       Finish, Reschedule, RunResult)
from ..threadpool import ThreadPool
from .pools import parse_limits
from .port import SchedulerPort
from .reporting import Reporter, retrying_fields
from .setup import setup
from .states import (DONE, M_CALL, M_CRASH, M_DONE, M_EMIT, M_EXPIRED, M_INSTANCE_DONE, M_LOG,
                     M_SIGNAL, OK, PENDING, READY, RUNNING, S_ABANDONED, S_STOPPING, WAITING,
                     InternalError, StopState)
from .surface import RunSurface
from .ending import finalize, run_timed_out, subflow_end
from .table import TaskTable
from .timers import Timers
from .views import Outcomes, Upstream

def _priority_keys(graph: Graph) -> tuple[list[int], bool]:
    """Sort keys: rank of the priority (highest first) * n + declaration index; and
    whether every task has the same priority (then a key is the index)."""
    n = max(len(graph), 1)
    priorities = {v.priority for v in graph.vertices}
    if len(priorities) < 2:
        # the key is the index: an upstream-first graph's order is that very list (shared,
        # neither is ever changed; a list of n fresh ints is 40 bytes per task)
        return graph.order if graph.declared_in_order else list(range(len(graph))), True
    ranks = {p: r for r, p in enumerate(sorted(priorities, reverse=True))}
    return [ranks[v.priority] * n + v.index for v in graph.vertices], False


class Run(RunSurface):
    """One execution of a graph.  Passed to run hooks as ``run``.

    Plugins read ``run_id``, ``config``, ``graph``, ``clock``, ``params``,
    ``state_dir`` (None with ``--no-state``), ``results`` (by task index) and
    ``stash`` (a dict for plugin state); :meth:`outcome` gives a task's
    outcome once it ended; :meth:`emit` reports an event from any thread.
    During ``flowdeco_run_start`` a plugin may set ``inline_successors`` or
    add task indices to ``on_success``.  ``limits`` (``{tag: N}``, ``--limit``)
    and ``run_timeout`` (seconds or None, ``--run-timeout``) are the run's
    pool limits and time limit.
    """

    def __init__(self, config: Config, graph: Graph, *, run_id: str, state_dir: str | None,
                 params: Mapping[str, Any], executor: Executor, workers: int,
                 stop_on_error: bool, resumed: bool = False, owns_executor: bool = True):
        self.config = config
        self.hook = config.hook
        self.graph = graph
        self.run_id = run_id
        self.state_dir = state_dir
        self.params = params
        self.executor = executor
        self.workers = workers
        self.stop_on_error = stop_on_error
        self.resumed = resumed
        self.owns_executor = owns_executor
        self.clock = config.clock
        self.stash: dict[Any, Any] = {}
        #: set by the metrics plugin (at run start, computed lazily); becomes RunResult.metrics
        self.metrics: Any = None
        #: plugins set False when a completion must be reported before dependents start
        self.inline_successors = True
        #: set by a plugin that makes completions durable after they are reported and
        #: confirms them with flowdeco_report_durable (the state plugin's writer thread)
        self.durable_later = False
        #: set True in flowdeco_run_start to have each attempt's thread marked
        #: (flowdeco.engine.tracking: captured logging and print output)
        self.track_attempts = False
        #: with track_attempts: callables a worker process runs before each attempt
        #: (picklable by reference, idempotent: install a capture there)
        self.worker_setup: list[Any] = []
        #: task indices whose *successful* attempts also go through flowdeco_attempt_done
        self.on_success: set[int] = set()
        #: for each task (index) or mapped instance (``(index, k)``) that ran more than one
        #: attempt (retries, interval iterations): ``(worker, seconds)`` of each attempt, in
        #: order; a task with one attempt is not listed (its outcome's duration is that
        #: attempt's).  Kept on the slow paths only; the metrics plugin's busy time.
        self.attempt_durations: dict[Any, list[tuple[str | None, float]]] = {}
        n = len(graph)
        self.results: list[Any] = [None] * n
        self.q: SimpleQueue = SimpleQueue()
        #: how far the run is from starting new work (:class:`StopState`); read it,
        #: don't set it (use :meth:`stop`): a plain attribute, the dispatchers read it per task
        self.stop_state = StopState.RUNNING
        #: the run's event reporting (:class:`~flowdeco.engine.reporting.Reporter`)
        self.reporter = Reporter(self)
        # compact per-task records; TaskOutcome objects are built on demand
        self._table = TaskTable(graph)
        # ready tasks as int keys (priority rank * n + index: highest priority, then
        # declared first), so heap operations compare ints and allocate nothing; the
        # attempt and iteration a queued task starts with are kept beside it
        self._ready: list[int] = []
        self._prio_mod = max(n, 1)
        #: _uniform: every task has the same priority (the ready heap's order is the
        #: graph's order)
        self._prio, self._uniform = _priority_keys(graph)
        # dynamic flows (.dynamic, made on first use): mapped tasks with instances to
        # start (priority keys, under _lock), and the tasks whose readiness goes
        # through DynamicFlows.gate -- sub-flow nodes, map=/when=/trigger= tasks, and
        # tasks whose dependency was skipped for a reason they inherit
        self._map_ready: list[int] = []
        self._dyn: Any = None
        #: tasks waiting for a retry, a delay or their next interval
        self.timers = Timers(self)
        #: engine (scheduler and dynamic flows): attempts and mapped instances in flight
        self.inflight = 0
        self._signals = 0
        #: engine: the sync executor is running a task on the scheduler thread
        self.sync_busy = False
        #: guards the ready heap, which thread workers also pop from (see ThreadDispatch)
        self._lock = threading.Lock()
        #: extra ``task_restored`` fields (``Restored.fields``) by task or instance name
        self._restore_fields: dict[str, Any] = {}
        #: attempts may have deadlines the scheduler enforces (flowdeco_task_deadline):
        #: true on flowdeco's thread pool, which can give up on a thread
        self.can_abandon = isinstance(executor, ThreadPool)
        self._deadlines: list[Deadline | None] | None = None
        #: per task, an object whose enter()/exit() bracket each attempt on the worker
        #: (flowdeco_task_guards: circuit breakers), or None
        self._guards: list[Any] | None = None
        #: flowdeco_attempt_scope's direct caller when some plugin implements it (setup)
        self._scope: Any = None
        self._watchdog: Watchdog | None = None
        #: engine: something was reported while dispatching (a restored mapped instance):
        #: call flowdeco_report_flush before the next task starts (see _flush)
        self.flush_due = False
        #: --run-timeout seconds (None: no limit); the deadline is set when the run starts
        self.run_timeout = check_run_timeout(config.getoption("run_timeout", None))
        #: engine: when nothing new may start (the run's clock, monotonic), or None
        self.run_deadline: float | None = None
        #: --limit / run(limits=): {tag: N}, at most N attempts of tasks tagged so at once
        self.limits = parse_limits(config.getoption("limits", None))
        #: engine: the gate enforcing the limits (engine/pools.py), None when none can bind
        self.pools: Any = None

    # -- the loop
    def execute(self) -> RunResult:
        try:
            setup(self)
            if self.reporting:
                fields: dict[str, Any] = {"flow": self.graph.name, "tasks": len(self.graph)}
                if self.resumed:
                    fields["resumed"] = True
                self.reporter.event("run_started", None, fields)
        except BaseException:
            # a plugin refused to start (a run in use, a foreign store): release
            # what the run owns before the error reaches the user
            if self.owns_executor:
                self.executor.shutdown(wait=False, cancel_futures=True)
            raise
        if self.run_timeout is not None:
            self.run_deadline = self.started + self.run_timeout
        restore = self.reporter.install_signals()
        try:
            try:
                if self._dispatcher.in_order:  # no counters needed unless it leaves the order
                    self._table.remaining = [0] * len(self.graph)
                else:
                    self._table.remaining = [len(v.deps) for v in self.graph.vertices]
                    gated = self._table.gated
                    roots: Any = range(len(self.graph))
                    if self.pools is not None:  # pool slots go by priority from the start
                        roots = sorted(roots, key=self._prio.__getitem__)
                    for i in roots:
                        if self._table.state[i] == PENDING and (
                                self._table.remaining[i] == 0
                                or gated[i] and self._dynamic().early(i, None)):  # always
                            done = self._make_ready(i)
                            if done is not None:
                                self._finish(*done)
                if self._has_flush:
                    self.hook.flowdeco_report_flush(run=self)
                promote_young()  # the run's per-task lists: not walked by every young collection
                self._loop()
            except KeyboardInterrupt:
                # a second Ctrl-C while the sync executor ran a task on this thread
                self.stop_state = StopState.ABANDONED
            finalize(self)
        finally:
            restore()
            if self._watchdog is not None:
                self._watchdog.stop()
            if self.owns_executor:
                self.executor.shutdown(wait=not self.abandoned, cancel_futures=True)
        finished = self.clock.monotonic()
        statuses = self._table.status
        status = INTERRUPTED if self.interrupted else (
            FAILED if self.stopping or (statuses.count(SUCCEEDED) != len(statuses)
                                        and FAILED in statuses) else SUCCEEDED)
        result = RunResult(run_id=self.run_id, status=status,
                           outcomes=Outcomes(self.graph.by_name, self.outcome_at,
                                             self._dyn if self._dyn and self._dyn.maps else None),
                           started=self.started + self._offset, finished=finished + self._offset,
                           duration=finished - self.started, flow=self.graph.name,
                           metrics=self.metrics)
        if self.reporting:
            counts = result.counts()
            self.reporter.event("run_finished", None, {"status": status, "duration": round(result.duration, 6),
                                                **{k: v for k, v in counts.items() if v}})
        if self._has_flush:
            self.hook.flowdeco_report_flush(run=self)
        self.hook.flowdeco_run_finish(run=self, result=result)
        return result

    def _loop(self) -> None:
        q = self.q
        get = q.get
        empty = q.empty
        clock = self.clock
        handle = self._handle
        dispatch = self._dispatcher.fill
        deadline = self.run_deadline   # --run-timeout (None: none)
        timers = self.timers
        while True:
            if deadline is not None and clock.monotonic() >= deadline:
                deadline = None
                run_timed_out(self)
            dispatch()
            if self.flush_due:
                self._flush()
            if self.stop_state == S_ABANDONED:
                return
            if self.inflight == 0 and (self.stop_state >= S_STOPPING or (
                    not self._ready and not self._map_ready and not self.timers)):
                return
            timeout = None
            if timers:
                timeout = timers.next_due() - clock.monotonic()
            if deadline is not None:  # wake up (a fake clock: jump) at the run's deadline
                left = deadline - clock.monotonic()
                if timeout is None or left < timeout:
                    timeout = left
            try:
                msg = clock.wait(get, timeout, self.inflight == 0)
            except Empty:
                timers.release()
                continue
            handle(msg)
            while not empty():
                handle(get())
            if timers:
                timers.release()
            if self._has_flush:
                self.hook.flowdeco_report_flush(run=self)

    def scheduler_port(self) -> "SchedulerPort":
        """What dynamic flows may use of this run's scheduler (after setup)."""
        return SchedulerPort(self)

    def _flush(self) -> None:
        """Flush reports made outside message handling, so gates waiting on them open."""
        self.flush_due = False
        self.hook.flowdeco_report_flush(run=self)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == M_DONE:
            self._on_done(*msg[1:])
        elif kind == M_INSTANCE_DONE:
            self._dyn.on_done(*msg[1:])
        elif kind == M_LOG:
            _, task, level, attempt, iteration, event, fields, mono = msg
            if self.reporting:
                extra = {"level": level, "attempt": attempt}
                if iteration is not None:
                    extra["iteration"] = iteration
                extra.update(fields)
                self.reporter.event(event, task, extra, mono)
        elif kind == M_EMIT:
            _, name, task, fields, mono = msg
            if self.reporting:
                self.reporter.event(name, task, fields, mono)
        elif kind == M_SIGNAL:
            self._signals += 1
            if self._signals == 1:
                self.reporter.interrupt(msg[1])
                self._stop(interrupted=True)
            else:
                self.stop_state = StopState.ABANDONED
        elif kind == M_EXPIRED:
            i, attempt, iteration, t0, thread, deadline, guard, token = msg[1][2:]
            self.executor.give_up(thread)
            instance = type(i) is tuple  # (MapState, k): a mapped task's instance
            error = deadline.error(i[0].name if instance else self.graph.vertices[i].name)
            if guard is not None:
                guard.exit(token, error)  # the overrun counts as the guarded call's failure
            if instance:
                self._dyn.on_done(i[0], i[1], attempt, None, error, t0, self.clock.monotonic(),
                                  thread.name, -1)
            else:
                self._on_done(i, attempt, iteration, None, error, t0, self.clock.monotonic(),
                              thread.name, None, 0)
        elif kind == M_CALL:
            msg[1]()
        elif kind == M_CRASH:
            raise InternalError("a worker crashed inside flowdeco") from msg[1]

    def _context(self, v: Vertex, attempt: int, iteration: int | None,
                 early: tuple | None = None) -> Context:
        return Context(self.run_id, v.name, attempt, iteration, self.params,
                       self._log_sink if self.local else None, Upstream(self, v.deps, early),
                       self if self.local else None)

    def _start(self, i: int, attempt: int, iteration: int | None) -> None:
        v = self.graph.vertices[i]
        kw = v.arguments(self.results)
        if v.wants_ctx:
            kw["ctx"] = self._context(v, attempt, iteration)
        self._table.state[i] = RUNNING
        self.inflight += 1
        if self.reporting:
            self.reporter.started(v.name, attempt, iteration)
        self._start_attempt(i, kw, attempt, iteration)

    # -- completion
    def _on_done(self, i: int, attempt: int, iteration: int | None, result: Any,
                 err: BaseException | None, t0: float, t1: float, worker: str | None,
                 nxt: int | None, seq: int) -> None:
        table = self._table
        t0s = table.t0
        state = table.state
        if nxt is None:
            self.inflight -= 1
        else:
            state[nxt] = RUNNING
            if t0s[nxt] is None:
                t0s[nxt] = t1
        if t0s[i] is None:
            t0s[i] = t0
        elif self.attempt_durations:  # a later attempt (or a chained task: start set on hand-off)
            log = self.attempt_durations.get(i)
            if log is not None:
                log.append((worker, t1 - t0))
        if err is None and i not in self._success_hooked:
            # the common case, kept flat: success, release successors
            self.results[i] = result
            table.status[i] = SUCCEEDED
            state[i] = DONE
            table.attempts[i] = attempt
            table.t1[i] = t1
            table.worker[i] = worker
            if self.reporting:
                self.reporter.outcome(i)
            remaining = table.remaining
            gated = table.gated
            plain = self._plain_release
            for s in self.graph.succs[i]:
                r = remaining[s] - 1
                remaining[s] = r
                if r == 0 and state[s] == PENDING:
                    if plain and not gated[s]:  # _make_ready's last lines, for a plain task
                        state[s] = READY
                        with self._lock:
                            heapq.heappush(self._ready, self._prio[s])
                        continue
                    done = self._make_ready(s)
                    if done is not None:
                        self._finish(*done)
                elif gated[s] and state[s] == PENDING and self._dynamic().early(s, i):
                    # a one_* rule met before its other dependencies ended (.dynamic)
                    done = self._make_ready(s)
                    if done is not None:
                        self._finish(*done)
        else:
            self._after_attempt(i, attempt, iteration, result, err, t0, t1, worker)
        if nxt is not None and self.reporting:
            self.reporter.started(self.graph.vertices[nxt].name, self._table.next_attempt[nxt],
                                 self._table.next_iter[nxt], t1)
        if seq:
            # last: what this completion released is in the ready heap now
            self._handled[worker] = seq  # type: ignore[index]

    def _after_attempt(self, i: int, attempt: int, iteration: int | None, result: Any,
                err: BaseException | None, t0: float, t1: float, worker: str | None) -> None:
        decision = None
        if self._has_attempt_done:
            v = self.graph.vertices[i]
            decision = self.hook.flowdeco_attempt_done(
                run=self, task=v,
                attempt=Attempt(attempt, iteration, result, err, t0 + self._offset,
                                t1 + self._offset, t1 - t0,
                                self._table.t0[i] + self._offset))  # type: ignore[operator]
        if isinstance(decision, Reschedule):
            if i not in self.attempt_durations:  # the first attempt (later ones: _on_done)
                self.attempt_durations[i] = [(worker, t1 - t0)]
            next_attempt = decision.attempt if decision.attempt is not None else attempt + 1
            next_iter = decision.iteration if decision.iteration is not None else iteration
            delay = max(float(decision.delay), 0.0)
            self._table.last_error[i] = err
            self._table.attempts[i] = attempt
            if self.reporting and (err is not None or decision.retrying):
                self.reporter.event("task_retrying", self.graph.vertices[i].name,
                                    retrying_fields(attempt, delay, err, worker, decision), t1)
            if self.stopping:
                self._finish(i, INTERRUPTED if self.interrupted or err is None else FAILED,
                             None, err, attempt, t1, worker)
                return
            self._table.state[i] = WAITING
            self.timers.push(self.clock.monotonic() + delay, i, next_attempt, next_iter)
            return
        if isinstance(decision, Finish):
            result, err = decision.result, decision.error
        elif decision is not None:
            raise InternalError(f"flowdeco_attempt_done returned {decision!r}; expected "
                                "Reschedule, Finish or None")
        self._finish(i, SUCCEEDED if err is None else FAILED, result, err, attempt, t1, worker)

    def _finish(self, i: int, status: str, result: Any, err: BaseException | str | None,
                attempts: int, t1: float | None, worker: str | None = None,
                reason: str | None = None) -> None:
        """Record how task ``i`` ended and release or skip its successors (iteratively)."""
        todo = [(i, status, result, err, attempts, t1, worker, reason)]
        state = self._table.state
        remaining = self._table.remaining
        succs = self.graph.succs
        vertices = self.graph.vertices
        while todo:
            i, status, result, err, attempts, t1, worker, reason = todo.pop()
            state[i] = DONE
            self._table.status[i] = status
            self._table.error[i] = err
            self._table.attempts[i] = attempts
            self._table.t1[i] = t1
            self._table.worker[i] = worker
            self._table.reason[i] = reason
            ok = status in OK
            if ok:
                self.results[i] = result
            elif status == FAILED and self.stop_on_error and not self.stopping:
                self._stop(interrupted=False)
            if self.reporting:
                self.reporter.outcome(i)
            # what an all_succeeded dependent inherits (see .dynamic): plain skips
            # ("condition", "trigger", "stopped") pass on, anything else that is not a
            # success gives "upstream"
            why = None if ok else reason if status == SKIPPED and reason in (
                "condition", "trigger", "stopped") else "upstream"
            for s in succs[i]:
                remaining[s] -= 1
                if state[s] != PENDING:
                    continue
                if not ok and vertices[s].kind is TASK:
                    if why == "upstream" and vertices[s].spec.trigger == "all_succeeded":
                        state[s] = DONE   # eager: no need to wait for its other dependencies
                        todo.append((s, SKIPPED, None, None, 0, None, None, "upstream"))
                        continue
                    # decided by its trigger rule once every dependency has ended
                    self._table.gated[s] = True
                if remaining[s] == 0 or (self._table.gated[s] and self._dynamic().early(s, i)):
                    done = self._make_ready(s)
                    if done is not None:
                        state[s] = DONE
                        todo.append(done)

    def _make_ready(self, i: int) -> tuple | None:
        """Dependencies are done: queue ``i``, or return how it ends right away.

        Called from the scheduler's completion paths; a returned tuple is
        completed by the caller (restored tasks, sub-flow nodes, tasks whose
        trigger rule or condition says skip).
        """
        v = self.graph.vertices[i]
        slow = self._table.gated[i]
        if slow:
            if v.kind is SUBFLOW:
                return subflow_end(self, v)
            done = self._dynamic().gate(v)
            if done is not None:
                return done
        if self._has_restore:
            restored = self._restore(self, v, v.name)
            if restored is not None:
                if restored.fields:
                    self._restore_fields[v.name] = restored.fields
                now = self.clock.monotonic()
                self._table.t0[i] = now
                return (i, RESTORED, restored.result, None, restored.attempts, now, None, None)
        if self._has_delay:
            delay = self.hook.flowdeco_task_delay(run=self, task=v)
            if delay:
                self._table.state[i] = WAITING
                self.timers.push(self.clock.monotonic() + float(delay), i, 1,
                                 self._table.first_iteration[i])
                return None
        if slow and v.spec.map is not None:  # type: ignore[union-attr]
            return self._dyn.expand(i)
        self._table.state[i] = READY   # next_attempt/next_iter still hold 1 / the first iteration
        if self.pools is not None and self.pools.capped[i] is not None:
            self.pools.admit(i)   # with its pool slots, or parked until one is free
            return None
        with self._lock:
            heapq.heappush(self._ready, self._prio[i])
        return None

    def _stop(self, interrupted: bool) -> None:
        """Start nothing new; tasks waiting for a retry or a delay end now."""
        self.stop_state = max(self.stop_state,
                              StopState.INTERRUPTED if interrupted else StopState.STOPPING)
        now = self.clock.monotonic()
        for _, _, i, attempt, iteration in self.timers.take_all():
            if self._table.gated[i] and self._dyn is not None and \
                    self._dyn.stop_timer(i, iteration, interrupted, now):
                continue  # a mapped instance waiting for a retry
            err = self._table.last_error[i]
            if self._table.t0[i] is None:
                self._finish(i, SKIPPED, None, None, 0, None, None, "stopped")
            elif err is None:  # between two iterations of an interval task: it was cut short
                self._finish(i, INTERRUPTED, None, None, self._table.attempts[i], now)
            else:
                self._finish(i, INTERRUPTED if interrupted else FAILED, None, err,
                             self._table.attempts[i], now)
