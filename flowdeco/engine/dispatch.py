"""Dispatch strategies: how a run's ready tasks get onto workers.

The scheduler (:class:`~flowdeco.engine.scheduler.Run`) decides *what* is
ready and in which order; a strategy decides *how* it runs.  Each has the
same small interface:

- ``fill()``: start ready tasks while workers are free (the scheduler calls
  it before waiting for the next message);
- ``start(i, kw, attempt, iteration)``: run one attempt of task ``i``
  (already marked RUNNING and reported started) with arguments ``kw``;
- ``in_order``: True while the strategy runs the graph straight down its
  order without dependency counters (the sync executor's fast path).

Every attempt ends in one message to the scheduler's queue (``M_DONE``) or,
on the sync executor, in a direct call to ``Run._on_done``: the one
completion path.

- :class:`ThreadDispatch`: thread pools.  A worker that finishes a task
  picks its next task itself, under the ready heap's lock -- the best ready
  task, or the successor that depends only on the task it just finished --
  and posts "finished A, started B" as one message.  It only takes a task
  the priority rule lets go first: one that beats every successor the
  finished task may release, and with one worker nothing while an earlier
  completion of its own is still unseen by the scheduler.  A chain costs a
  function call instead of two thread switches.  A plugin that must see each
  completion before dependents start turns this off with
  ``run.inline_successors = False``.
- :class:`SyncDispatch`: the ``sync`` executor, tasks one by one on the
  scheduler thread.
- :class:`RemoteDispatch`: process pools and Dask; attempts travel by pickle,
  tiny ones in batches.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from ..executors import remote_failure
from ..pickling import load_outcome
from . import tracking
from .attempt import RemotePolicy, call_batch, call_remote, is_plain, run_attempt
from .chaining import chains, first_successors
from .ending import run_timed_out
from .inorder import leave_order, run_order
from .states import M_CRASH, M_DONE, M_LOG, RUNNING, S_RUNNING, S_STOPPING

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run

_INF = float("inf")

#: most attempts in one remote submission (1 turns batching off)
BATCH_MAX = 1024


def make_dispatcher(run: "Run") -> "Dispatch":
    """The strategy for ``run``'s executor (called at the end of ``setup``)."""
    if run.sync:
        return SyncDispatch(run)
    if run.local:
        return ThreadDispatch(run)
    return RemoteDispatch(run)


class Dispatch:
    """The interface (see the module docstring); ``fill`` pops the ready heap by priority."""

    in_order = False

    def __init__(self, run: "Run"):
        self.run = run

    def fill(self) -> None:
        run = self.run
        if run._map_ready:  # a mapped task has instances to start: merge by priority
            return run._dyn.dispatch()
        ready = run._ready
        lock = run._lock
        mod = run._prio_mod
        table = run._table
        while ready and run.inflight < run.workers and run.stop_state < S_STOPPING:
            with lock:
                if not ready:
                    break
                i = heapq.heappop(ready) % mod
            run._start(i, table.next_attempt[i], table.next_iter[i])

    def start(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- threads


class ThreadDispatch(Dispatch):
    """Thread pools: workers run attempts and pick their next task themselves."""

    def __init__(self, run: "Run"):
        super().__init__(run)
        # workers take their next task themselves (no hand-off through the scheduler)
        # unless a plugin needs to see each completion first
        self.workers_pick = run.inline_successors
        # with one worker, priority order must be exact: a worker does not pick its
        # next task while a completion of its own that may release tasks is unseen
        self.exact_order = run.workers == 1
        self.chain_next = chains(run) if run._chaining else [None] * len(run.graph)
        self.nsuccs = [len(x) for x in run.graph.succs]
        #: each task's function by vertex index (read by the workers)
        self.fns = [v.fn for v in run.graph.vertices]
        key = run._prio
        # the best priority key among each task's successors
        self.best_succ = [_INF if f is None else key[f] for f in first_successors(run)] \
            if self.workers_pick else []
        #: per worker thread: completions posted (the scheduler's side: run._handled)
        self.posted: dict[str, int] = {}
        self.submit = run.executor.submit

    def start(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        self.submit(self.work, i, kw, attempt, iteration)

    def work(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        """A worker thread: run attempts until there is nothing for it to take.

        After each attempt the worker picks its next task itself, under the
        ready-heap lock: the chained successor of the task it just finished
        (released by this very completion, so not in the heap yet) when it
        goes first, else the best ready task.  It posts the completion and the
        task it took in one message, so the scheduler (which reports and owns
        the state) learns both in order -- without a hand-off per task.
        """
        run = self.run
        put = run.q.put
        slot = None
        try:
            mono = run.clock.monotonic
            calls = run._calls
            fns = self.fns
            vertices = run.graph.vertices
            results = run.results
            table = run._table
            ready = run._ready
            lock = run._lock
            key = run._prio
            chain_next = self.chain_next
            mod = run._prio_mod
            me = threading.current_thread()
            worker = me.name
            nsuccs = self.nsuccs
            best_succ = self.best_succ
            handled = run._handled
            exact = self.exact_order
            pick = self.workers_pick
            map_ready = run._map_ready
            posted = self.posted
            seq = posted.get(worker, 0)
            # the last completion this worker posted that may release tasks other
            # than the one it chained to: until the scheduler has handled it, the
            # ready set is incomplete (matters when priority order must be exact)
            fanout = 0
            deadlines = run._deadlines
            guards = run._guards
            watchdog = run._watchdog
            # the task's name is needed only for a deadline no watchdog enforces
            named = deadlines is not None and watchdog is None
            # deadlines are real time: on the real clock an attempt's start is its arming time
            real = mono is time.monotonic
            # captured output (flowdeco.engine.tracking): this thread's slot, marked per attempt
            slot = tracking.enter(run.reporter.sink, run._attempt_name) if run._tracking else None
            # --run-timeout: take nothing new once the run's deadline has passed
            run_end = run.run_deadline
            if run_end is None:
                run_end = _INF
            while True:
                call = calls[i]
                if slot is not None:
                    slot.at = (i, attempt, iteration)
                t0 = mono()
                deadline = deadlines[i] if deadlines is not None else None
                guard = guards[i] if guards is not None else None
                if deadline is None and guard is None:
                    # the bare call, written out: the thread benchmark's per-task path
                    try:
                        result, err = (fns[i](**kw) if call is None else call(kw)), None  # type: ignore[misc]
                    except BaseException as exc:  # noqa: BLE001 - a task may raise anything
                        result, err = None, exc
                else:
                    result, err, overran = run_attempt(
                        fns[i], call, kw, guard, deadline, watchdog, i, attempt, iteration, t0,
                        me, t0 if real else None, vertices[i].name if named else "")
                    if overran:
                        return  # the scheduler ended this attempt and gave up this thread
                t1 = mono()
                if slot is not None and slot.ends is not None:
                    slot.end()  # (a partial line printed last, before the completion)
                nxt = None
                chained = False
                if pick and run.stop_state == S_RUNNING and t1 < run_end and not (
                        err is not None and run.stop_on_error) and not (
                        exact and handled.get(worker, 0) < fanout):
                    # a task this completion releases may have to go first: take
                    # the heap's best only when it beats every successor of i (the
                    # best of which is the chained candidate, when there is one); a
                    # mapped task's instances are started by the scheduler, so one that
                    # goes first stops the worker here
                    cand = chain_next[i] if err is None else None
                    with lock:
                        top = ready[0] if ready else _INF
                        mtop = map_ready[0] if map_ready else _INF
                        if top < best_succ[i] and top < mtop:
                            nxt = heapq.heappop(ready) % mod
                        elif cand is not None and key[cand] < top and key[cand] < mtop:
                            nxt, chained = cand, True
                seq += 1
                posted[worker] = seq
                if nsuccs[i] > chained:
                    fanout = seq
                put((M_DONE, i, attempt, iteration, result, err, t0, t1, worker, nxt, seq))
                if nxt is None:
                    return
                v = vertices[nxt]
                ctx = None
                if v.wants_ctx:  # (ctx.upstream knows a chained task's dependency at once)
                    ctx = run._context(v, table.next_attempt[nxt], table.next_iter[nxt],
                                       (i, result, attempt, t0, t1, worker) if chained else None)
                i, attempt, iteration = nxt, table.next_attempt[nxt], table.next_iter[nxt]
                if chained:            # its one dependency is the result in hand
                    kw = dict(v.consts) if v.consts else {}
                    for p in v.argnames:
                        kw[p] = result
                else:
                    kw = v.arguments(results)
                if ctx is not None:
                    kw["ctx"] = ctx
        except BaseException as exc:  # noqa: BLE001 - never leave the scheduler waiting
            put((M_CRASH, exc))
        finally:
            if slot is not None:
                tracking.leave(slot)


# --------------------------------------------------------------------------- sync


class SyncDispatch(Dispatch):
    """The ``sync`` executor: ready tasks run one by one on the scheduler thread."""

    def __init__(self, run: "Run"):
        super().__init__(run)
        # a graph with nothing dynamic in it runs straight down its priority order
        # until the first attempt that does not simply succeed
        self.in_order = not run._has_restore and not run._has_delay \
            and not run._success_hooked and not run.graph.dynamic \
            and not run.graph.using("every") and run._scope is None
        #: captured output: the scheduler thread's slot while it runs attempts (in fill)
        self.slot = run._sync_slot = tracking.Slot(run.reporter.sink, run._attempt_name) \
            if run._tracking else None

    def start(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        run = self.run
        result, err, t0, t1 = self.attempt_here(i, kw, attempt, iteration)
        run._on_done(i, attempt, iteration, result, err, t0, t1, "sync", None, 0)
        if run._has_flush:
            run.hook.flowdeco_report_flush(run=run)

    def fill(self) -> None:
        slot = self.slot
        if slot is None:
            return self._fill()
        tracking.push(slot)
        try:
            self._fill()
        finally:
            tracking.leave(slot)

    def _fill(self) -> None:
        run = self.run
        if self.in_order:
            self.in_order = False
            self.run_in_order()
            if not run._ready:
                return  # all ran (or stopped): the graph's successor lists were never needed
        ready = run._ready
        map_ready = run._map_ready
        mod = run._prio_mod
        table = run._table
        deadline = run.run_deadline
        while (ready or map_ready) and run.stop_state < S_STOPPING:
            if deadline is not None and run.clock.monotonic() >= deadline:
                run_timed_out(run)
                break
            if map_ready and run._dyn.sync_step():  # a mapped task's instance went first
                continue
            i = heapq.heappop(ready) % mod
            if run.flush_due:
                run._flush()
            run._start(i, table.next_attempt[i], table.next_iter[i])

    def attempt_here(self, i: int, kw: dict, attempt: int, iteration: int | None
                     ) -> tuple[Any, BaseException | None, float, float]:
        """One attempt of task ``i`` on this thread, then the messages that arrived
        meanwhile; (result, error, start, end)."""
        run = self.run
        guard = run._guards[i] if run._guards is not None else None
        deadline = run._deadlines[i] if run._deadlines is not None else None
        mono = run.clock.monotonic
        slot = self.slot
        run.sync_busy = True
        if slot is not None:
            slot.at = (i, attempt, iteration)
        t0 = mono()
        v = run.graph.vertices[i]
        result, err, _ = run_attempt(v.fn, run._calls[i], kw, guard, deadline, name=v.name)
        t1 = mono()
        if slot is not None:
            if slot.ends is not None:
                slot.end()
            slot.at = None  # hooks run on this thread between attempts
        run.sync_busy = False
        q = run.q
        while not q.empty():  # log records, events and signals that arrived during the task
            run._handle(q.get())
        return result, err, t0, t1

    def run_in_order(self) -> None:
        """Run the graph straight down its order (see :mod:`.inorder`) until the first
        attempt that does not simply succeed, or a stop."""
        run_order(self)

    def leave_order(self) -> None:
        """Build the general loop's ready heap and dependency counters mid-run."""
        leave_order(self.run)


# --------------------------------------------------------------------------- remote


class RemoteStats:
    """What a round trip to a remote executor costs, and how long each task code runs there.

    Updated from the executor's callback thread, read by the scheduler: the
    figures are estimates, so a read that misses the latest update is fine.
    """

    __slots__ = ("overhead", "runtime")

    def __init__(self) -> None:
        self.overhead: float | None = None
        self.runtime: dict[Any, float] = {}

    def observe(self, fns: list, durations: list[float], roundtrip: float) -> None:
        runtime = self.runtime
        for fn, d in zip(fns, durations):
            key = getattr(fn, "__code__", fn)
            prev = runtime.get(key)
            runtime[key] = d if prev is None else 0.7 * prev + 0.3 * d
        over = max(roundtrip - sum(durations), 0.0)
        self.overhead = over if self.overhead is None else 0.8 * self.overhead + 0.2 * over

    def tiny(self, fn: Any) -> float | None:
        """The estimated run time of ``fn`` when it is shorter than a round trip, else None."""
        est = self.runtime.get(getattr(fn, "__code__", fn))
        over = self.overhead
        return est if est is not None and over is not None and est < over else None


def remote_policies(run: "Run") -> list[RemotePolicy | None]:
    """Per task, the guard and deadline a remote attempt carries (None: neither)."""
    n = len(run.graph)
    if run._policed is None:
        return [None] * n
    guards = run._guards or [None] * n
    deadlines = run._deadlines or [None] * n
    pid = os.getpid()
    return [RemotePolicy(guards[i], deadlines[i], v.name, pid) if run._policed[i] else None
            for i, v in enumerate(run.graph.vertices)]


class RemoteDispatch(Dispatch):
    """Process pools and Dask: each attempt travels by pickle (:func:`call_remote`).

    Tiny tasks are batched: when the task being started and the next ready
    ones are plain calls (no per-attempt wrapper, guard or deadline) whose code ran shorter than
    a round trip to a worker costs, they go as one submission that runs them
    in sequence (:func:`call_batch`).  The completions are posted back as if
    a worker had chained them ("finished A, started B"), so reports, state and
    the audit trail are those of single attempts.  A batch holds at most about
    three round trips' worth of estimated work, so it never starves other
    workers; code never seen yet and code slower than a round trip go alone.
    """

    def __init__(self, run: "Run"):
        super().__init__(run)
        self.stats = RemoteStats()
        #: each task's function by vertex index
        self.fns = [v.fn for v in run.graph.vertices]
        #: per task: the guard and deadline its attempts carry to the worker, or None
        self.policies = remote_policies(run)

    def start(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        run = self.run
        stats = self.stats
        calls_of, fns = run._calls, self.fns
        table = run._table
        policies = self.policies
        members = [(i, attempt, iteration)]
        calls: list[tuple] = [(calls_of[i], kw, policies[i])]
        est = stats.tiny(fns[i]) if BATCH_MAX > 1 and not run.stop_on_error \
            and policies[i] is None and is_plain(calls_of[i]) else None
        if est is not None:
            ready, mod, vertices, results = run._ready, run._prio_mod, run.graph.vertices, \
                run.results
            budget = 3.0 * stats.overhead - est  # type: ignore[operator]
            free = max(run.workers - run.inflight + 1, 1)
            limit = min(BATCH_MAX, -(-(len(ready) + 1) // free))
            mapped = run._map_ready   # mapped tasks' instances (.dynamic)
            with run._lock:
                while ready and len(members) < limit:
                    if mapped and mapped[0] < ready[0]:
                        break       # a mapped task goes first: the scheduler starts it
                    j = ready[0] % mod
                    e = stats.tiny(fns[j])
                    if e is None or e > budget or policies[j] is not None \
                            or not is_plain(calls_of[j]):
                        break
                    heapq.heappop(ready)
                    budget -= e
                    members.append((j, table.next_attempt[j], table.next_iter[j]))
            for j, a, it in members[1:]:
                v = vertices[j]
                kj = v.arguments(results)
                if v.wants_ctx:
                    kj["ctx"] = run._context(v, a, it)
                table.state[j] = RUNNING
                calls.append((calls_of[j], kj, None))
        sent = time.perf_counter()
        setup = run._worker_setup  # captured output: installed in the worker first
        try:
            if setup:
                fut = run.executor.submit(call_remote, *calls[0], setup) if len(calls) == 1 \
                    else run.executor.submit(call_batch, calls, setup)
            else:
                fut = run.executor.submit(call_remote, *calls[0]) if len(calls) == 1 else \
                    run.executor.submit(call_batch, calls)
        except Exception as exc:  # noqa: BLE001 - a broken or closed pool fails the attempt
            fut = Future()
            fut.set_exception(exc)
        fut.add_done_callback(partial(self.done, tuple(members), sent))

    def done(self, members: tuple, sent: float, fut: Any) -> None:
        """A remote submission ended (on the executor's callback thread): post its attempts.

        ``members`` are the ``(task, attempt, iteration)`` it carried, one or a
        batch.  Attempts keep the durations the worker measured, the last one
        ending now on the run's clock (a worker's clock may be another
        host's).  A batch is posted as a chain: each completion names the
        next member as started, and only the last frees the worker slot.  A
        dead worker (broken pool, killed Dask worker) fails every attempt the
        submission carried with ``WorkerCrashed``.
        """
        run = self.run
        put = run.q.put
        vertices = run.graph.vertices
        now = run.clock.monotonic()
        try:
            out = fut.result()
            outs = [out] if len(members) == 1 else out
        except BaseException as exc:  # noqa: BLE001 - pickling errors, broken pools, cancels
            outs = [(None, remote_failure(exc, vertices[m[0]].name), now, now, None, [])
                    for m in members]
        else:
            self.stats.observe([self.fns[m[0]] for m in members],
                               [o[3] - o[2] for o in outs], time.perf_counter() - sent)
        shift = now - outs[-1][3]
        last = len(members) - 1
        for k, ((i, attempt, iteration), (payload, err, t0, t1, worker, logs)) in \
                enumerate(zip(members, outs)):
            name = vertices[i].name
            result, err = load_outcome(payload, err, name)
            t0, t1 = t0 + shift, t1 + shift
            for level, event, fields in logs:
                put((M_LOG, name, level, attempt, iteration, event, fields, t1))
            put((M_DONE, i, attempt, iteration, result, err, t0, t1, worker,
                 members[k + 1][0] if k < last else None, 0))
