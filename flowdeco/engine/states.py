"""The scheduler's vocabulary: task states, message kinds, stop states.

Each is an ``IntEnum`` (readable in a debugger and in ``repr``); the hot
paths compare the members' plain ``int`` aliases below, which cost the same
as the bare ints they replace.
"""

from __future__ import annotations

from enum import IntEnum

from ..outcome import RESTORED, SKIPPED, SUCCEEDED, TaskOutcome


class TaskState(IntEnum):
    """Where a task is in its life (see :mod:`flowdeco.engine.scheduler`)."""

    PENDING = 0   # dependencies not all ended
    WAITING = 1   # on a timer: a delay, a retry's backoff, the next interval iteration
    READY = 2     # in the ready heap
    RUNNING = 3   # an attempt is on a worker (or its mapped instances are)
    DONE = 4      # has its outcome


class Msg(IntEnum):
    """Kinds of message posted to the scheduler's queue (the first item of each tuple)."""

    DONE = 0            # an attempt ended: (i, attempt, iteration, result, err, t0, t1, worker, next, seq)
    LOG = 1             # a ctx.log record
    EMIT = 2            # Run.emit: a plugin's audit event
    SIGNAL = 3          # Ctrl-C / SIGTERM
    CRASH = 4           # a worker failed inside flowdeco: the run ends with InternalError
    INSTANCE_DONE = 5   # a mapped task's instance attempt ended (see .dynamic)
    EXPIRED = 6         # an attempt overran its deadline (see flowdeco.deadlines)
    CALL = 7            # a plugin's callable to run on the scheduler thread (Run.call_soon)


class StopState(IntEnum):
    """How far a run is from starting new work; it only ever moves up.

    ``SIGNALLED`` is set by the signal handler itself so thread workers stop
    chaining at once; the scheduler then moves to ``INTERRUPTED`` when it
    handles the signal's message.
    """

    RUNNING = 0
    SIGNALLED = 1     # a signal arrived, not handled by the scheduler yet
    STOPPING = 2      # -x or Run.stop(): nothing new starts
    INTERRUPTED = 3   # Ctrl-C / SIGTERM / Run.stop(interrupted=True)
    ABANDONED = 4     # a second signal: in-flight attempts are not waited for


PENDING, WAITING, READY, RUNNING, DONE = (int(s) for s in TaskState)
M_DONE, M_LOG, M_EMIT, M_SIGNAL, M_CRASH, M_INSTANCE_DONE, M_EXPIRED, M_CALL = \
    (int(m) for m in Msg)
S_RUNNING, S_SIGNALLED, S_STOPPING, S_INTERRUPTED, S_ABANDONED = (int(s) for s in StopState)

#: statuses whose result is the task's value
OK = (SUCCEEDED, RESTORED)
SKIP_UPSTREAM = TaskOutcome(SKIPPED, reason="upstream")
SKIP_STOPPED = TaskOutcome(SKIPPED, reason="stopped")


class InternalError(Exception):
    """A bug in flowdeco or a plugin (exit code 3)."""
