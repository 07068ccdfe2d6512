"""Remote dispatch: process pools and Dask, where attempts travel by pickle.

The strategy :func:`~.dispatch.make_dispatcher` picks for an executor that is
neither ``sync`` nor a thread pool (see :mod:`.dispatch` for the interface).
Tiny attempts (by their measured durations, :class:`RemoteStats`) go in
batches of up to :data:`flowdeco.engine.dispatch.BATCH_MAX` (read there, so
setting it to 1 turns batching off).
"""

from __future__ import annotations

import heapq
import os
import time
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from ..executors import remote_failure
from ..pickling import load_outcome
from . import dispatch
from .attempt import RemotePolicy, call_batch, call_remote, is_plain
from .states import M_DONE, M_LOG, RUNNING

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


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


class RemoteDispatch(dispatch.Dispatch):
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
        #: per task: the guard and deadline its attempts carry to the worker, or None
        self.policies = remote_policies(run)

    def start(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        run = self.run
        stats = self.stats
        calls_of, fns = run._calls, run._fns
        table = run._table
        policies = self.policies
        members = [(i, attempt, iteration)]
        calls: list[tuple] = [(calls_of[i], kw, policies[i])]
        est = stats.tiny(fns[i]) if dispatch.BATCH_MAX > 1 and not run.stop_on_error \
            and policies[i] is None and is_plain(calls_of[i]) else None
        if est is not None:
            ready, mod, vertices, results = run._ready, run._prio_mod, run.graph.vertices, \
                run.results
            budget = 3.0 * stats.overhead - est  # type: ignore[operator]
            free = max(run.workers - run.inflight + 1, 1)
            limit = min(dispatch.BATCH_MAX, -(-(len(ready) + 1) // free))
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
            self.stats.observe([run._fns[m[0]] for m in members],
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
