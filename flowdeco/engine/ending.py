"""How a run's tasks end when no attempt decides it: sub-flow nodes, and the run's last step.

A sub-flow node's outcome follows from its members' (:func:`subflow_end`);
when the run's deadline passes, :func:`run_timed_out` stops it; when the
loop is over, :func:`finalize` gives every task still without an outcome
one -- in-flight ones ``interrupted``, the rest ``skipped``.
Scheduler thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graph import SUBFLOW, Vertex
from ..outcome import FAILED, INTERRUPTED, SKIPPED, SUCCEEDED
from .states import DONE, OK, RUNNING, InternalError, StopState

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


def subflow_end(run: "Run", v: Vertex) -> tuple:
    """How sub-flow node ``v`` ends, from its member tasks (all ended): an outcome tuple."""
    status = run._table.status
    failed = [run.graph.vertices[m].name for m in v.members if status[m] == FAILED]
    now = run.clock.monotonic()
    starts = [t for m in v.members if (t := run._table.t0[m]) is not None]
    run._table.t0[v.index] = min(starts) if starts else now
    if failed:
        err = f"SubflowFailed: {len(failed)} inner task(s) failed: {', '.join(failed)}"
        return (v.index, FAILED, None, err, 1, now, None, None)
    if any(status[m] is None or status[m] == INTERRUPTED for m in v.members):
        return (v.index, INTERRUPTED, None, None, 0, now, None, None)
    skipped = [run._table.reason[m] for m in v.members if status[m] == SKIPPED]
    # the node did not run as a whole: report why, like a skipped task (an inner
    # task skipped by its condition or trigger rule is routing, not a reason to
    # skip the node -- unless nothing inside ran)
    hard = [r for r in skipped if r not in ("condition", "trigger")]
    if hard:
        reason = "upstream" if "upstream" in hard else hard[0]
        return (v.index, SKIPPED, None, None, 0, None, None, reason)
    if skipped and len(skipped) == len(v.members):
        reason = "condition" if "condition" in skipped else "upstream"
        return (v.index, SKIPPED, None, None, 0, None, None, reason)
    if len(v.sinks) == 1:
        result = run.results[v.sinks[0][1]]
    else:
        result = {name: run.results[m] for name, m in v.sinks}
    return (v.index, SUCCEEDED, result, None, 1, now, None, None)


def finalize(run: "Run") -> None:
    """Give every task an outcome: in-flight ones interrupted, the rest skipped."""
    statuses = run._table.status
    # every task ended (the usual run): no per-task loop (count() first: a C scan
    # comparing by identity, where ``in`` compares each status with None by value)
    if statuses.count(SUCCEEDED) == len(statuses) or None not in statuses:
        return
    now = run.clock.monotonic()
    for i in run.graph.order:
        if statuses[i] is not None:
            continue
        v = run.graph.vertices[i]
        state = run._table.state[i]
        if v.kind is SUBFLOW:
            done = subflow_end(run, v)
        elif run._dyn is not None and i in run._dyn.maps:
            done = run._dyn.finalize(i)  # a mapped task: its instances first
        elif state == RUNNING:
            if run._table.t0[i] is None:
                run._table.t0[i] = now
            done = (i, INTERRUPTED, None, None, max(run._table.attempts[i], 1), now, None, None)
        elif run.stopping:
            done = (i, SKIPPED, None, None, 0, None, None, "stopped")
        else:
            raise InternalError(f"task {v.name!r} was never scheduled (state {state})")
        _, status, result, err, attempts, t1, worker, reason = done
        run._table.state[i] = DONE
        run._table.status[i] = status
        run._table.error[i] = err
        run._table.attempts[i] = attempts
        run._table.t1[i] = t1
        run._table.reason[i] = reason
        if status in OK:
            run.results[i] = result
        if run.reporting:
            run.reporter.outcome(i)


def run_timed_out(run: "Run") -> None:
    """The run's deadline passed (``--run-timeout``): stop like a first Ctrl-C.

    Scheduler thread.  Nothing new starts, tasks waiting for a retry or a
    delay end, running ones are waited for and recorded; the run is
    ``interrupted`` (exit 2) and can be resumed.  Reported as
    ``run_interrupted`` with ``reason: "run_timeout"`` (no ``signal``).
    """
    if run.stop_state >= StopState.INTERRUPTED:
        return
    report = run.reporter
    if run.reporting and not report.interrupt_reported:
        report.interrupt_reported = True
        report.event("run_interrupted", None, {"reason": "run_timeout",
                                               "run_timeout": run.run_timeout,
                                               "running": run.running_count()})
    run._stop(interrupted=True)
