"""Reporting: the events a run hands to ``flowdeco_report``, and its signal handler.

Reports are made on the scheduler thread only; log records and plugin
events from other threads arrive as messages (:class:`~flowdeco.engine.states.Msg`).
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from ..outcome import FAILED, RESTORED, SKIPPED, SUCCEEDED, Event, TaskOutcome
from ..signals import on_stop_signals
from . import tracking
from .attempt import format_traceback
from .states import M_LOG, M_SIGNAL, S_SIGNALLED


class RunReporting:
    """Event reporting (mixed into :class:`~flowdeco.engine.scheduler.Run`)."""

    # -- reporting
    def _report(self, name: str, task: str | None, fields: dict, mono: float | None = None,
                outcome: TaskOutcome | None = None) -> None:
        ts = (self.clock.monotonic() if mono is None else mono) + self._offset
        self._report_hook(run=self, event=Event(name, ts, self.run_id, task, fields, outcome))

    def _sink(self, task: str, level: str, attempt: int, iteration: int | None, event: str,
              fields: dict) -> None:
        self.q.put((M_LOG, task, level, attempt, iteration, event, fields, self.clock.monotonic()))

    def _report_started(self, name: str, attempt: int, iteration: int | None,
                        mono: float | None = None) -> None:
        f: dict[str, Any] = {"attempt": attempt}
        if iteration is not None:
            f["iteration"] = iteration
        self._report("task_started", name, f, mono)

    def _report_outcome(self, i: int) -> None:
        self._report_end(self.graph.vertices[i].name, self.outcome_at(i), self._table.t1[i])

    def _report_end(self, name: str, out: TaskOutcome, t1: float | None) -> None:
        """Report how task (or mapped instance) ``name`` ended; ``t1`` on the monotonic clock."""
        status = out.status
        if status == SUCCEEDED:
            fields: dict[str, Any] = {"attempts": out.attempts, "duration": round(out.duration, 6)}
            self._report("task_succeeded", name, fields, t1, out)
        elif status == FAILED:
            fields = {"attempts": out.attempts, "error": out.error}
            exc = out.exception
            if exc is not None and exc.__traceback__ is not None:
                fields["traceback"] = format_traceback(exc)
            elif exc is not None and hasattr(exc, "remote_traceback"):
                fields["traceback"] = exc.remote_traceback  # type: ignore[attr-defined]
            self._report("task_failed", name, fields, t1, out)
        elif status == SKIPPED:
            self._report("task_skipped", name, {"reason": out.reason}, None, out)
        elif status == RESTORED:
            fields = {"attempts": out.attempts}
            if self._restore_fields:
                fields.update(self._restore_fields.pop(name, ()))
            self._report("task_restored", name, fields, None, out)
        else:
            self._report("task_interrupted", name, {"attempts": out.attempts}, None, out)

    def _report_interrupt(self, signum: int) -> None:
        """``run_interrupted`` (once): the signal, and how many running tasks are waited for."""
        if self._interrupt_reported or not self.reporting:
            return
        self._interrupt_reported = True
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        self._report("run_interrupted", None, {"signal": name, "running": self.running_count()})

    def _install_signals(self) -> Callable[[], None]:
        received = [0]

        def handler(signum: int, frame: Any) -> None:
            received[0] += 1
            if self._stop_state < S_SIGNALLED:  # workers stop chaining at once
                self._stop_state = S_SIGNALLED
            if received[0] >= 2 and self.sync_busy:
                raise KeyboardInterrupt  # stop waiting for a task running on this thread
            if received[0] == 1 and self.sync_busy:
                # the scheduler is this thread, inside a task (no hook is running):
                # say what happens now, not when the task ends -- as the engine, not
                # as output the task's attempt printed (captured output)
                slot = tracking.current()
                at = None
                if slot is not None:
                    at, slot.at = slot.at, None
                try:
                    self._report_interrupt(signum)
                finally:
                    if slot is not None:
                        slot.at = at
            self.q.put((M_SIGNAL, signum))

        return on_stop_signals(handler)
