"""``Context``: what a task receives in its ``ctx`` parameter."""

from __future__ import annotations

import traceback
from typing import Any, Callable, Mapping

import structlog

LogSink = Callable[[str, str, int, "int | None", str, dict], None]

_LEVELS = ("debug", "info", "warning", "warn", "error", "critical", "exception", "msg", "fatal")


class _SinkLogger:
    """The end of a task logger's structlog chain: hands each record to the run.

    In a thread, the record goes straight to the scheduler's queue (audit
    events stay in order with task events); in a worker process the records
    are buffered and travel back with the attempt's result.
    """

    __slots__ = ("sink", "task", "attempt", "iteration", "buffer")

    def __init__(self, sink: LogSink | None, task: str, attempt: int, iteration: int | None):
        self.sink = sink
        self.task = task
        self.attempt = attempt
        self.iteration = iteration
        self.buffer: list[tuple[str, str, dict]] = []

    def _emit(self, level: str, event_dict: dict) -> None:
        event = str(event_dict.pop("event", ""))
        if level == "exception" or event_dict.pop("exc_info", None):
            event_dict["exception"] = traceback.format_exc()
            level = "error" if level == "exception" else level
        if self.sink is None:
            self.buffer.append((level, event, event_dict))
        else:
            self.sink(self.task, level, self.attempt, self.iteration, event, event_dict)

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in _LEVELS:
            raise AttributeError(name)
        level = "warning" if name == "warn" else "critical" if name == "fatal" else \
            "info" if name == "msg" else name
        return lambda **ev: self._emit(level, ev)

    def __getstate__(self) -> Any:
        return (self.task, self.attempt, self.iteration)

    def __setstate__(self, state: Any) -> None:
        self.task, self.attempt, self.iteration = state
        self.sink = None
        self.buffer = []


def _passthrough(logger: Any, method: str, event_dict: dict) -> dict:
    return event_dict


def make_logger(sink: LogSink | None, task: str, attempt: int, iteration: int | None) -> Any:
    """A structlog bound logger whose records become audit events of ``task``.

    Private processor chain: nothing here touches structlog's global
    configuration, which belongs to the application.
    """
    return structlog.wrap_logger(_SinkLogger(sink, task, attempt, iteration),
                                 processors=[_passthrough], context_class=dict,
                                 wrapper_class=structlog.BoundLogger)


class Context:
    """Passed to a task's ``ctx`` parameter.

    ``run_id``; ``task`` (the qualified task name); ``attempt`` (1-based);
    ``iteration`` (1-based for interval tasks, else None); ``params`` (the run
    parameters); ``log`` (a structlog bound logger writing to the run's audit
    trail, with ``task`` bound); ``upstream`` (outcomes of upstream tasks, for
    tasks that run despite an upstream failure); ``run`` (the :class:`Run`, for
    engine extensions such as pipeline nodes that report events with
    ``ctx.run.emit``; None in worker processes).
    """

    __slots__ = ("run_id", "task", "attempt", "iteration", "params", "log", "upstream", "run")

    def __init__(self, run_id: str, task: str, attempt: int, iteration: int | None,
                 params: Mapping[str, Any], sink: LogSink | None,
                 upstream: Mapping[str, Any] | None = None, run: Any = None):
        self.run_id = run_id
        self.task = task
        self.attempt = attempt
        self.iteration = iteration
        self.params = params
        self.log = make_logger(sink, task, attempt, iteration)
        self.upstream = upstream or {}
        self.run = run

    def __repr__(self) -> str:
        return (f"Context(run_id={self.run_id!r}, task={self.task!r}, attempt={self.attempt}, "
                f"iteration={self.iteration})")

    def __reduce__(self) -> Any:
        return (Context, (self.run_id, self.task, self.attempt, self.iteration,
                          dict(self.params), None, dict(self.upstream)))

    def _buffered_logs(self) -> list[tuple[str, str, dict]]:
        return self.log._logger.buffer
