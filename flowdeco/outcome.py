"""What a run produces: outcomes, results, events, exit codes (contract §3, §6).

All frozen attrs classes.  Timestamps are kept as POSIX floats internally
(cheap on the hot path) and exposed as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import datetime as _dt
import enum
from functools import cached_property
from typing import Any, Callable, Literal, Mapping

import attrs

from .clock import UTC


class ExitCode(enum.IntEnum):
    """Process exit codes (pytest's)."""

    OK = 0
    TASKS_FAILED = 1
    INTERRUPTED = 2
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4
    NO_TASKS_COLLECTED = 5


Status = Literal["succeeded", "failed", "skipped", "restored", "interrupted"]
RunStatus = Literal["succeeded", "failed", "interrupted"]
SkipReason = Literal["upstream", "stopped", "condition", "trigger"]

SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
RESTORED = "restored"
INTERRUPTED = "interrupted"
STATUSES = (SUCCEEDED, FAILED, SKIPPED, RESTORED, INTERRUPTED)


def to_datetime(ts: float | None) -> _dt.datetime | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, UTC)


def format_error(exc: BaseException) -> str:
    """``"ExcType: message"`` (contract form of ``TaskOutcome.error``)."""
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@attrs.frozen
class TaskOutcome:
    """How one task ended.

    ``status`` is one of ``succeeded``, ``failed``, ``skipped`` (see
    ``reason``), ``restored``, ``interrupted``; ``result`` the return value
    (None unless succeeded or restored); ``error`` ``"ExcType: message"`` or
    None; ``attempts`` the number of attempts started.
    """

    status: Status
    result: Any = None
    error: str | None = None
    attempts: int = 0
    started: float | None = attrs.field(default=None, repr=False)
    finished: float | None = attrs.field(default=None, repr=False)
    duration: float = 0.0
    reason: SkipReason | None = None
    exception: BaseException | None = attrs.field(default=None, repr=False, eq=False)
    worker: str | None = attrs.field(default=None, repr=False)

    @property
    def started_at(self) -> _dt.datetime | None:
        return to_datetime(self.started)

    @property
    def finished_at(self) -> _dt.datetime | None:
        return to_datetime(self.finished)

    @property
    def ok(self) -> bool:
        return self.status in (SUCCEEDED, RESTORED)


@attrs.frozen
class Attempt:
    """One attempt of a task, as seen by ``flowdeco_attempt_done``."""

    number: int
    iteration: int | None
    result: Any
    error: BaseException | None
    started: float
    finished: float
    duration: float
    #: when the first attempt of this task (or mapped instance) started, on the same
    #: clock as ``started``; what a time budget across attempts is measured from
    #: (``Retry(give_up_after=...)``).  None: not known (an Attempt made elsewhere).
    first_started: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen
class Reschedule:
    """Run the task again after ``delay`` seconds (see ``flowdeco_attempt_done``).

    After a failed attempt this is a retry, reported ``task_retrying``.  After a
    successful one it is not (an interval task's next iteration) unless
    ``retrying`` is true: a successful attempt run again as a retry
    (``Retry(retry_if=...)``), reported ``task_retrying`` too, with ``fields``
    saying why instead of an ``error``.
    """

    delay: float = 0.0
    attempt: int | None = None        # next attempt number; default: previous + 1
    iteration: int | None = None      # next iteration (interval tasks)
    fields: Mapping[str, Any] = attrs.field(factory=dict)  # extra fields for the event
    retrying: bool = False            # a successful attempt retried: report task_retrying


@attrs.frozen
class Finish:
    """End the task now with this result, or with this error when ``error`` is set."""

    result: Any = None
    error: BaseException | None = None


@attrs.frozen
class Restored:
    """A result supplied by ``flowdeco_task_restore`` instead of running the task."""

    result: Any
    attempts: int = 0
    fields: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Deadline:
    """A time limit on each attempt of a task (``flowdeco_task_deadline``).

    ``seconds`` of real time; ``error(task_name)`` makes the exception an
    overrun attempt fails with (for the timeout plugin, ``flowdeco.TaskTimeout``).  One
    Deadline may serve many tasks.
    """

    seconds: float
    error: Callable[[str], BaseException]


@attrs.frozen
class Event:
    """One audit event (contract §6): a name, a UTC timestamp, a task, more fields."""

    name: str
    timestamp: float
    run_id: str
    task: str | None = None
    fields: Mapping[str, Any] = attrs.field(factory=dict)
    outcome: TaskOutcome | None = attrs.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The audit-trail form: ``event``, ``timestamp`` (ISO 8601 UTC), ``run_id``, ``task``, fields."""
        out: dict[str, Any] = {
            "event": self.name,
            "timestamp": _dt.datetime.fromtimestamp(self.timestamp, UTC).isoformat(
                timespec="microseconds").replace("+00:00", "Z"),
            "run_id": self.run_id,
        }
        if self.task is not None:
            out["task"] = self.task
        out.update(self.fields)
        return out


@attrs.frozen
class RunResult:
    """What :func:`flowdeco.run` returns.

    ``outcomes`` maps every selected task (qualified name) to its
    :class:`TaskOutcome`; ``results`` maps tasks that succeeded or were
    restored to their return values; ``metrics`` is filled by the metrics
    plugin when it is on.
    """

    run_id: str
    status: RunStatus
    outcomes: Mapping[str, TaskOutcome]
    started: float = attrs.field(repr=False)
    finished: float = attrs.field(repr=False)
    duration: float = 0.0
    metrics: Any = attrs.field(default=None, repr=False)
    flow: str = ""

    @property
    def ok(self) -> bool:
        """True when no selected task failed or was interrupted."""
        return self.status == SUCCEEDED

    @cached_property
    def results(self) -> dict[str, Any]:
        return {n: o.result for n, o in self.outcomes.items() if o.status in (SUCCEEDED, RESTORED)}

    @property
    def started_at(self) -> _dt.datetime:
        return to_datetime(self.started)  # type: ignore[return-value]

    @property
    def finished_at(self) -> _dt.datetime:
        return to_datetime(self.finished)  # type: ignore[return-value]

    @property
    def exit_code(self) -> ExitCode:
        if self.status == INTERRUPTED:
            return ExitCode.INTERRUPTED
        return ExitCode.OK if self.status == SUCCEEDED else ExitCode.TASKS_FAILED

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for o in self.outcomes.values():
            counts[o.status] += 1
        return counts

    def summary(self) -> str:
        """pytest-like: ``3 succeeded, 1 failed, 2 skipped in 0.12s``; a run stopped by
        Ctrl-C or SIGTERM says so: ``2 succeeded, 1 skipped, interrupted in 30.00s``."""
        counts = self.counts()
        parts = [f"{n} {s}" for s, n in counts.items() if n] or ["no tasks"]
        if self.status == INTERRUPTED:
            parts.append("interrupted")
        return f"{', '.join(parts)} in {self.duration:.2f}s"

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` unless the run succeeded, listing what went wrong.

        The message names each failed or interrupted task with its error, and
        how many tasks were skipped because of them::

            run 20261127-...-ab12 failed: 1 failed, 2 skipped
              FAILED transform - ValueError: bad record 7
              skipped (upstream): load, notify
        """
        if self.ok:
            return
        counts = {k: v for k, v in self.counts().items() if v and k not in (SUCCEEDED, RESTORED)}
        lines = [f"run {self.run_id} {self.status}: "
                 + ", ".join(f"{n} {s}" for s, n in counts.items())]
        skipped: dict[str, list[str]] = {}
        for name, o in self.outcomes.items():
            if o.status == FAILED:
                lines.append(f"  FAILED {name} - {o.error}")
            elif o.status == INTERRUPTED:
                lines.append(f"  INTERRUPTED {name}")
            elif o.status == SKIPPED:
                skipped.setdefault(o.reason or "?", []).append(name)
        for reason, names in skipped.items():
            shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
            lines.append(f"  skipped ({reason}): {shown}")
        raise AssertionError("\n".join(lines))

    def failed(self) -> dict[str, TaskOutcome]:
        return {n: o for n, o in self.outcomes.items() if o.status == FAILED}

    def __getitem__(self, name: str) -> TaskOutcome:
        return self.outcomes[name]
