"""The ``sync`` executor's fast path: a plain graph run straight down its order.

When nothing can change the order tasks start in (no restore, delay, dynamic
task, interval, or plugin watching successful attempts), running them one by
one needs no ready heap and no dependency counters: the heap would pop
exactly Kahn's order keyed by priority then declaration, which is the graph's
own order when priorities are all equal.  The first attempt that does not
simply succeed, or a stop, hands the rest over to the general loop
(:func:`leave_order` rebuilds the heap and counters).

Two loops share that contract, both checked against the general loop by
``tests/test_properties.py``:

- :func:`run_plain`, the common run: nothing reports between tasks (no report
  or flush hook, no captured output), no guard, deadline, wrapper or run
  timeout.  A task whose function takes exactly its upstream results
  (``Vertex.positional``) is called with positional arguments, no keyword
  dict; the end of one task is the start of the next (one clock read each).
- :func:`run_in_order`, everything else the fast path allows: reports,
  captured output, guards and deadlines, wrapped calls, ``--run-timeout``.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from ..graph import kahn_order
from ..outcome import SUCCEEDED
from .attempt import run_attempt
from .ending import run_timed_out
from .states import DONE, PENDING, READY, RUNNING, S_STOPPING

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import SyncDispatch
    from .scheduler import Run


def run_order(dispatch: "SyncDispatch") -> None:
    """Run the graph in order with the cheapest loop that keeps every guarantee."""
    run = dispatch.run
    order = run.graph.order if run._uniform else kahn_order(run.graph, run._prio)
    if not run.reporting and not run._has_flush and dispatch.slot is None \
            and run.run_deadline is None and run._policed is None and run._calls_inline:
        return run_plain(run, order)
    return run_in_order(dispatch, order)


def run_plain(run: "Run", order: list[int]) -> None:
    """The in-order loop with nothing between two tasks but the queue check."""
    results = run.results
    table = run._table
    state, status, attempts = table.state, table.status, table.attempts
    t0s, t1s, workers = table.t0, table.t1, table.worker
    vertices = run.graph.vertices
    mono = run.clock.monotonic
    empty, get, handle = run.q.empty, run.q.get, run._handle
    t = mono()  # when the next task starts: the previous one's end
    for i in order:
        if run.stop_state and run.stop_state >= S_STOPPING:  # (an IntEnum: test 0 first)
            return leave_order(run)
        v = vertices[i]
        if v.positional:
            kw = None
        else:
            kw = v.arguments(results)
            if v.wants_ctx:
                kw["ctx"] = run._context(v, 1, None)
        state[i] = RUNNING
        run.sync_busy = True
        t0 = t
        try:
            if kw is None:
                d = v.argdeps
                n = len(d)
                if n == 1:
                    result = v.fn(results[d[0]])
                elif n == 2:
                    result = v.fn(results[d[0]], results[d[1]])
                elif n == 3:
                    result = v.fn(results[d[0]], results[d[1]], results[d[2]])
                elif not n:
                    result = v.fn()
                else:
                    result = v.fn(*map(results.__getitem__, d))
            else:
                result = v.fn(**kw)
            err = None
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            result, err = None, exc
        t = t1 = mono()
        run.sync_busy = False
        if not empty():  # log records, events and signals that arrived during the task
            while not empty():
                handle(get())
            t = mono()
        if err is not None:
            return fail_over(run, i, err, t0, t1)
        results[i] = result
        status[i] = SUCCEEDED
        state[i] = DONE
        attempts[i] = 1
        t0s[i] = t0
        t1s[i] = t1
        workers[i] = "sync"
    return None


def run_in_order(dispatch: "SyncDispatch", order: list[int]) -> None:
    """The in-order loop with reports, captured output, guards, deadlines and wrappers."""
    run = dispatch.run
    results = run.results
    table = run._table
    state, status, attempts = table.state, table.status, table.attempts
    t0s, t1s, workers = table.t0, table.t1, table.worker
    vertices = run.graph.vertices
    calls, guards, deadlines, policed = run._calls, run._guards, run._deadlines, run._policed
    mono = run.clock.monotonic
    empty, get, handle = run.q.empty, run.q.get, run._handle
    reporting, has_flush, report = run.reporting, run._has_flush, run.reporter
    slot = dispatch.slot
    deadline = run.run_deadline
    # one clock read per task: with no report hook between two tasks, the end of one
    # is the start of the next (the next start includes building its arguments, well
    # under a microsecond); otherwise, and after handling messages, the clock is read
    chain = not reporting and not has_flush and slot is None
    t = mono()  # when the next task starts, if chained
    for i in order:
        if deadline is not None and mono() >= deadline:
            run_timed_out(run)
        if run.stop_state and run.stop_state >= S_STOPPING:
            return leave_order(run)
        if run.flush_due:
            run._flush()
            t = mono()
        v = vertices[i]
        kw = v.arguments(results)
        if v.wants_ctx:
            kw["ctx"] = run._context(v, 1, None)
        state[i] = RUNNING
        if reporting:
            report.started(v.name, 1, None)
        call = calls[i]
        run.sync_busy = True
        if slot is not None:
            slot.at = (i, 1, None)
        t0 = t if chain else mono()
        if policed is None or not policed[i]:
            try:
                result, err = (v.fn(**kw) if call is None else call(kw)), None  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - a task may raise anything
                result, err = None, exc
        else:
            result, err, _ = run_attempt(
                v.fn, call, kw, guards[i] if guards is not None else None,
                deadlines[i] if deadlines is not None else None, name=v.name)
        t = t1 = mono()
        if slot is not None:
            if slot.ends is not None:
                slot.end()
            slot.at = None  # hooks run on this thread between attempts
        run.sync_busy = False
        if not empty():  # log records, events and signals that arrived during the task
            while not empty():
                handle(get())
            t = mono()
        if err is not None:
            fail_over(run, i, err, t0, t1)
            if has_flush:
                run.hook.flowdeco_report_flush(run=run)
            return None
        results[i] = result
        status[i] = SUCCEEDED
        state[i] = DONE
        attempts[i] = 1
        t0s[i] = t0
        t1s[i] = t1
        workers[i] = "sync"
        if reporting:
            report.outcome(i)
        if has_flush:
            run.hook.flowdeco_report_flush(run=run)
    return None


def fail_over(run: "Run", i: int, err: BaseException, t0: float, t1: float) -> None:
    """Task ``i``'s first attempt raised ``err``: the general loop takes over the run,
    and the one completion path decides (retry, failure, stop)."""
    leave_order(run)
    run.inflight += 1
    run._on_done(i, 1, None, None, err, t0, t1, "sync", None, 0)


def leave_order(run: "Run") -> None:
    """Build the general loop's ready heap and dependency counters mid-run."""
    table = run._table
    state, remaining, key = table.state, table.remaining, run._prio
    ready: list[int] = []
    for j, v in enumerate(run.graph.vertices):
        if state[j] == PENDING or state[j] == READY:
            r = 0
            for d in v.deps:
                if state[d] != DONE:
                    r += 1
            remaining[j] = r
            if r == 0:
                state[j] = READY
                ready.append(key[j])
    heapq.heapify(ready)
    with run._lock:
        run._ready[:] = ready
