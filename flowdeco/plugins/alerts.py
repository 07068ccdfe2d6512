"""Alerts: callbacks when a task fails, succeeds or is retried, and when a run ends.

``@task(on_failure=fn, on_success=fn, on_retry=fn)`` calls ``fn(alert)`` with
a :class:`TaskAlert` (``run_id``, ``task``, ``kind``, ``attempt``, ``error``,
``delay``, ``outcome``): ``on_failure`` once the task has failed for good
(after its retries), ``on_success`` when it succeeded (not when restored by
a resume or the cache), ``on_retry`` after each failed attempt that will be
retried, with that attempt's number and the delay before the next one.  For
a mapped task (``map=``) ``on_failure``/``on_success`` see the task as a
whole; ``on_retry`` is called for each instance's retries (``task`` is the
instance's name, ``scan[3]``).  ``run(on_finish=fn)`` calls ``fn(result)``
with the :class:`~flowdeco.RunResult` when the run has ended (also when it
failed or was interrupted).

Every callback runs on the scheduler thread: task callbacks right after the
batch of events that called for them (``flowdeco_report_flush``), so never
inside another plugin's report hook; ``on_finish`` in ``flowdeco_run_finish``
(after ``run_finished``).  A callback that raises never fails the run: the
error is reported as an ``alert_failed`` event (``callback``, ``error``,
``traceback``; a warning on the console) and the run goes on.  A callback
that blocks holds the scheduler up, so keep them short (hand slow work to a
thread or queue).

Cost: nothing is registered unless some task sets one of these options (or
``on_finish`` is given); then one report hook call per event.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Callable

import attrs

from ..errors import FlowError, UsageError
from ..manager import hookimpl
from ..outcome import Event, TaskOutcome, format_error

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Run, RunResult
    from flowdeco.config import Config, Parser
    from flowdeco.graph import Graph

NAME = "alerts"
_TASKS = "alerts-tasks"
_FINISH = "alerts-finish"

#: ``@task`` options, and the event each one answers
OPTIONS = {"on_failure": "task_failed", "on_success": "task_succeeded",
           "on_retry": "task_retrying"}
_KINDS = {"task_failed": ("on_failure", "failure"), "task_succeeded": ("on_success", "success"),
          "task_retrying": ("on_retry", "retry")}

#: the audit event of a callback that raised
ALERT_FAILED = "alert_failed"


@attrs.frozen
class TaskAlert:
    """What a task callback receives.

    ``kind``: ``"failure"``, ``"success"`` or ``"retry"``; ``attempt``: the
    attempt that failed (retry) or the number of attempts made; ``error``:
    ``"ExcType: message"`` or None; ``delay``: seconds until the retry (retry
    only); ``outcome``: the task's :class:`~flowdeco.TaskOutcome` (failure and
    success; None for a retry, the task has not ended).
    """

    run_id: str
    task: str
    kind: str
    attempt: int
    error: str | None = None
    delay: float | None = None
    outcome: TaskOutcome | None = None


def _report_failure(run: Any, callback: str, task: str | None, exc: BaseException) -> None:
    """A callback raised: an ``alert_failed`` event (warning), never an error of the run."""
    fields = {"level": "warning", "callback": callback, "error": format_error(exc),
              "traceback": "".join(traceback.format_exception(type(exc), exc,
                                                              exc.__traceback__))}
    run.hook.flowdeco_report(run=run, event=Event(ALERT_FAILED, run.now(), run.run_id, task,
                                                  fields))


class TaskCallbacks:
    """Registered for a session whose flow has task callbacks: collects due calls from
    the reports, makes them after each batch."""

    def __init__(self, graph: "Graph"):
        #: task name -> {option: callback}
        self.callbacks: dict[str, dict[str, Callable[..., Any]]] = {}
        for option in OPTIONS:
            for v in graph.using(option):
                self.callbacks.setdefault(v.name, {})[option] = v.spec.options[option]
        self.due: list[tuple[Callable[..., Any], str, TaskAlert]] = []

    @hookimpl
    def flowdeco_unconfigure(self, config: Config) -> None:
        config.pluginmanager.unregister(self)  # registered for one session

    @hookimpl
    def flowdeco_report(self, run: Run, event: Event) -> None:
        kind = _KINDS.get(event.name)
        if kind is None or event.task is None:
            return
        option, what = kind
        task = event.task
        mine = self.callbacks.get(task)
        if mine is None and option == "on_retry" and task.endswith("]"):
            mine = self.callbacks.get(task.rpartition("[")[0])  # a mapped task's instance
        fn = mine.get(option) if mine is not None else None
        if fn is None:
            return
        f = event.fields
        if what == "retry":
            alert = TaskAlert(run.run_id, task, what, f.get("attempt", 0), f.get("error"),
                              f.get("delay"))
        else:
            out = event.outcome
            alert = TaskAlert(run.run_id, task, what, out.attempts if out is not None else
                              f.get("attempts", 0), out.error if out is not None else None,
                              None, out)
        self.due.append((fn, option, alert))

    @hookimpl
    def flowdeco_report_flush(self, run: Run) -> None:
        if self.due:
            self.call_due(run)

    @hookimpl(tryfirst=True)
    def flowdeco_run_finish(self, run: Run, result: RunResult) -> None:
        self.call_due(run)

    def call_due(self, run: Any) -> None:
        due, self.due = self.due, []
        for fn, option, alert in due:
            try:
                fn(alert)
            except Exception as exc:  # noqa: BLE001 - a callback never fails the run
                _report_failure(run, option, alert.task, exc)


class FinishCallback:
    """``run(on_finish=fn)``: ``fn(result)`` once the run has ended."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    @hookimpl
    def flowdeco_unconfigure(self, config: Config) -> None:
        config.pluginmanager.unregister(self)  # registered for one session

    @hookimpl(tryfirst=True)
    def flowdeco_run_finish(self, run: Run, result: RunResult) -> None:
        try:
            self.fn(result)
        except Exception as exc:  # noqa: BLE001 - a callback never fails the run
            _report_failure(run, "on_finish", None, exc)


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    # Python only (no flag): run(on_finish=fn)
    parser.addoption(dest="on_finish", default=None,
                     help="a callable called with the RunResult when the run has ended")


@hookimpl
def flowdeco_task_options() -> list[str]:
    return list(OPTIONS)


# What this plugin registers for a session unregisters itself at its end, so a session
# without callbacks calls no unconfigure hook of this module.


@hookimpl
def flowdeco_configure(config: Config) -> None:
    fn = config.getoption("on_finish")
    if fn is None:
        return
    if not callable(fn):
        raise UsageError(f"on_finish={fn!r}: expected a callable taking the RunResult")
    config.pluginmanager.register(FinishCallback(fn), _FINISH)


@hookimpl
def flowdeco_collection_finish(config: Config, graph: Graph) -> None:
    used = False
    for option in OPTIONS:
        for v in graph.using(option):
            used = True
            fn = v.spec.options[option]
            if not callable(fn):
                raise FlowError(f"task {v.name!r}: {option}={fn!r} is not callable; give a "
                                f"function taking the alert (def {option}(alert): ...)")
    if used and config.pluginmanager.get_plugin(_TASKS) is None:
        config.pluginmanager.register(TaskCallbacks(graph), _TASKS)
