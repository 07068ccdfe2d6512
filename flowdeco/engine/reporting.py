"""Reporting: the events a run hands to ``flowdeco_report``, and its signal handler.

Reports are made on the scheduler thread only; log records and plugin
events from other threads arrive as messages (:class:`~flowdeco.engine.states.Msg`).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, Callable

from ..outcome import (FAILED, RESTORED, SKIPPED, SUCCEEDED, Event, Reschedule, TaskOutcome,
                       format_error)
from ..signals import on_stop_signals
from . import tracking
from .attempt import format_traceback
from .states import M_LOG, M_SIGNAL, S_SIGNALLED, StopState

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


class Reporter:
    """A run's event reporting (``run.reporter``): scheduler thread only, except :meth:`sink`."""

    def __init__(self, run: "Run"):
        self.run = run
        #: ``hook.flowdeco_report`` (set at setup, when some plugin implements it)
        self.hook: Any = None
        self.interrupt_reported = False

    def event(self, name: str, task: str | None, fields: dict, mono: float | None = None,
              outcome: TaskOutcome | None = None) -> None:
        """Report event ``name`` (``mono``: when, on the run's monotonic clock; default now)."""
        run = self.run
        ts = (run.clock.monotonic() if mono is None else mono) + run._offset
        self.hook(run=run, event=Event(name, ts, run.run_id, task, fields, outcome))

    def sink(self, task: str, level: str, attempt: int, iteration: int | None, event: str,
             fields: dict) -> None:
        """Where ``ctx.log`` records go (any thread): a message to the scheduler."""
        run = self.run
        run.q.put((M_LOG, task, level, attempt, iteration, event, fields, run.clock.monotonic()))

    def started(self, name: str, attempt: int, iteration: int | None,
                mono: float | None = None) -> None:
        f: dict[str, Any] = {"attempt": attempt}
        if iteration is not None:
            f["iteration"] = iteration
        self.event("task_started", name, f, mono)

    def outcome(self, i: int) -> None:
        """Report how task ``i`` ended (from the task table)."""
        run = self.run
        self.end(run.graph.vertices[i].name, run.outcome_at(i), run._table.t1[i])

    def end(self, name: str, out: TaskOutcome, t1: float | None) -> None:
        """Report how task (or mapped instance) ``name`` ended; ``t1`` on the monotonic clock."""
        status = out.status
        if status == SUCCEEDED:
            fields: dict[str, Any] = {"attempts": out.attempts, "duration": round(out.duration, 6)}
            if out.worker is not None:  # who ran the last attempt (the dashboard's lanes)
                fields["worker"] = out.worker
            self.event("task_succeeded", name, fields, t1, out)
        elif status == FAILED:
            fields = {"attempts": out.attempts, "error": out.error}
            if out.worker is not None:
                fields["worker"] = out.worker
            exc = out.exception
            if exc is not None and exc.__traceback__ is not None:
                fields["traceback"] = format_traceback(exc)
            elif exc is not None and hasattr(exc, "remote_traceback"):
                fields["traceback"] = exc.remote_traceback  # type: ignore[attr-defined]
            self.event("task_failed", name, fields, t1, out)
        elif status == SKIPPED:
            self.event("task_skipped", name, {"reason": out.reason}, None, out)
        elif status == RESTORED:
            fields = {"attempts": out.attempts}
            if self.run._restore_fields:
                fields.update(self.run._restore_fields.pop(name, ()))
            self.event("task_restored", name, fields, None, out)
        else:
            fields = {"attempts": out.attempts}
            if out.worker is not None:
                fields["worker"] = out.worker
            self.event("task_interrupted", name, fields, None, out)

    def interrupt(self, signum: int) -> None:
        """``run_interrupted`` (once): the signal, and how many running tasks are waited for."""
        if self.interrupt_reported or not self.run.reporting:
            return
        self.interrupt_reported = True
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        self.event("run_interrupted", None, {"signal": name, "running": self.run.running_count()})

    def install_signals(self) -> Callable[[], None]:
        """Ctrl-C / SIGTERM handling for the run; returns what restores the old handlers."""
        received = [0]
        run = self.run

        def handler(signum: int, frame: Any) -> None:
            received[0] += 1
            if run.stop_state < S_SIGNALLED:  # workers stop chaining at once
                run.stop_state = StopState.SIGNALLED
            if received[0] >= 2 and run.sync_busy:
                raise KeyboardInterrupt  # stop waiting for a task running on this thread
            if received[0] == 1 and run.sync_busy:
                # the scheduler is this thread, inside a task (no hook is running):
                # say what happens now, not when the task ends -- as the engine, not
                # as output the task's attempt printed (captured output)
                slot = tracking.current()
                at = None
                if slot is not None:
                    at, slot.at = slot.at, None
                try:
                    self.interrupt(signum)
                finally:
                    if slot is not None:
                        slot.at = at
            run.q.put((M_SIGNAL, signum))

        return on_stop_signals(handler)


def retrying_fields(attempt: int, delay: float, err: BaseException | None, worker: Any,
                    decision: Reschedule) -> dict[str, Any]:
    """The ``task_retrying`` event's fields: ``error`` after a failed attempt; after a
    successful one retried (``decision.retrying``) the decision's own fields say why."""
    fields: dict[str, Any] = {"attempt": attempt, "delay": delay}
    if err is not None:
        fields["error"] = format_error(err)
    fields["worker"] = worker
    fields.update(decision.fields)
    return fields
