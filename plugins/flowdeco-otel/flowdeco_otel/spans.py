"""``Tracing``: a run's audit events as OpenTelemetry spans.

The span tree of one run::

    run FLOW                         (flowdeco.run_id, flowdeco.flow, flowdeco.status, ...)
      task NAME                      (flowdeco.task, flowdeco.status, flowdeco.attempts)
        attempt NAME                 (flowdeco.attempt; one per attempt: retries, iterations)
          ...spans the task body opens, on whatever worker runs it
      task SUBFLOW_NODE              (a sub-flow: its inner tasks nest under it)
        task SUBFLOW_NODE.inner
      task MAPPED                    (a mapped task: one child per instance)
        task MAPPED[0]
          attempt MAPPED[0]

Everything is built on the scheduler thread from the reports
(``flowdeco_report``), with the events' own times, so the spans of process
and Dask attempts are made and exported by the driver too.  Retries are
``retry`` events on the task span (the failed attempt's span has status
ERROR); restored tasks (resume, cache) and skipped tasks are zero-length
task spans with ``flowdeco.status`` ``restored`` / ``skipped``, a
``restored`` / ``skipped`` event and, for skips, ``flowdeco.reason``.  Each
attempt's span context travels to its worker (``flowdeco_attempt_scope``):
there it is the current span while the body runs.

Limit: the engine reports no end for a successful iteration of an interval
task (``every=``) that goes on, so such an attempt span ends when the next
iteration starts (or with the task).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from flowdeco import hookimpl

from .scope import LocalScope, remote_scope

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Event, Run, RunResult

#: instrumentation scope name of flowdeco's spans
SCOPE_NAME = "flowdeco"

_ENDS = {"task_succeeded", "task_failed", "task_interrupted"}
_PLAIN = (str, bool, int, float)


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _attr(value: Any) -> Any:
    return value if isinstance(value, _PLAIN) else str(value)


def flow_version(run: Any, fields: dict) -> Any:
    """The run's flow version when the engine knows one (read defensively: older
    engines have none): ``run.flow_version``, the graph's ``version``, or a
    ``flow_version`` / ``version`` field of ``run_started``."""
    for value in (getattr(run, "flow_version", None), getattr(run.graph, "version", None),
                  fields.get("flow_version"), fields.get("version")):
        if isinstance(value, _PLAIN) and value != "":
            return value
    return None


class Tracing:
    """The plugin object for one session: ``run(flow, plugins=[Tracing(provider)])``.

    ``tracer_provider`` None uses the global provider.  Installed as the
    ``otel`` entry point, flowdeco registers one for every run when a
    provider is configured (see :mod:`flowdeco_otel.sdk`).
    """

    def __init__(self, tracer_provider: Any = None):
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(SCOPE_NAME)
        self._reset()

    def _reset(self) -> None:
        self.run_span: Span | None = None
        self.run_ctx: Any = None
        #: open task spans by task (or instance, sub-flow node) name
        self.tasks: dict[str, Span] = {}
        #: the open attempt span of each task or instance
        self.attempts: dict[str, Span] = {}
        #: task name -> the name of the sub-flow node it is directly inside
        self.inside: dict[str, str] = {}
        self.local = True
        self.run_id = ""

    # ------------------------------------------------------------------ hooks
    @hookimpl
    def flowdeco_run_start(self, run: "Run") -> None:
        self._reset()
        self.local = bool(run.local)
        self.run_id = run.run_id
        self.run_ctx = otel_context.get_current()  # a run inside a traced caller nests there
        vertices = run.graph.vertices
        nodes = sorted((v for v in vertices if v.members), key=lambda v: -len(v.members))
        for node in nodes:  # outer sub-flows first: the innermost one wins
            for m in node.members:
                self.inside[vertices[m].name] = node.name

    @hookimpl
    def flowdeco_report(self, run: "Run", event: "Event") -> None:
        name, task, fields = event.name, event.task, event.fields
        t = _ns(event.timestamp)
        if task is None:
            self._run_event(run, name, fields, t)
        elif name == "task_started":
            self._start_attempt(task, fields, t)
        elif name in _ENDS:
            self._end_task(task, name, fields, t)
        elif name == "task_retrying":
            self._retrying(task, fields, t)
        elif name == "task_restored" or name == "task_skipped":
            self._not_run(task, name, fields, t)
        elif name == "task_mapped":
            self._task_span(task, t).set_attribute("flowdeco.instances", fields.get("instances", 0))
        else:  # a task's log record or a plugin's event: on its attempt (or task) span
            span = self.attempts.get(task) or self.tasks.get(task)
            if span is not None:
                span.add_event(name, {k: _attr(v) for k, v in fields.items()}, timestamp=t)

    @hookimpl
    def flowdeco_attempt_scope(self, name: str) -> Any:
        span = self.attempts.get(name)
        if span is None:
            return None
        return LocalScope(span) if self.local else remote_scope(span)

    @hookimpl
    def flowdeco_run_finish(self, run: "Run", result: "RunResult") -> None:
        # whatever is still open (a run that stopped early): end it now
        for span in list(self.attempts.values()) + list(self.tasks.values()):
            span.end()
        if self.run_span is not None and self.run_span.is_recording():
            self.run_span.end()
        self._reset()

    # ------------------------------------------------------------------ spans
    def _run_event(self, run: Any, name: str, fields: dict, t: int) -> None:
        if name == "run_started":
            attrs = {"flowdeco.run_id": run.run_id, "flowdeco.flow": str(fields.get("flow")),
                     "flowdeco.tasks": int(fields.get("tasks", 0)),
                     "flowdeco.resumed": bool(fields.get("resumed", False))}
            version = flow_version(run, fields)
            if version is not None:
                attrs["flowdeco.flow_version"] = version
            self.run_span = self.tracer.start_span(
                f"run {fields.get('flow')}", context=self.run_ctx, attributes=attrs, start_time=t)
            self.run_ctx = trace.set_span_in_context(self.run_span, self.run_ctx)
        elif self.run_span is None:
            return
        elif name == "run_finished":
            status = str(fields.get("status"))
            span = self.run_span
            span.set_attribute("flowdeco.status", status)
            for key in ("succeeded", "failed", "skipped", "restored", "interrupted"):
                if key in fields:
                    span.set_attribute(f"flowdeco.{key}", int(fields[key]))
            if status == "failed":
                span.set_status(Status(StatusCode.ERROR, "run failed"))
            span.end(end_time=t)
        else:  # run_interrupted, run-level plugin events
            self.run_span.add_event(name, {k: _attr(v) for k, v in fields.items()}, timestamp=t)

    def _parent(self, name: str, t: int) -> Any:
        """The context a task span of ``name`` starts in: its mapped task's span, its
        sub-flow node's span, else the run's."""
        if name.endswith("]") and "[" in name:
            return trace.set_span_in_context(self._task_span(name[:name.rindex("[")], t))
        node = self.inside.get(name)
        if node is not None:
            return trace.set_span_in_context(self._task_span(node, t))
        return self.run_ctx

    def _task_span(self, name: str, t: int) -> Span:
        span = self.tasks.get(name)
        if span is None:
            span = self.tasks[name] = self.tracer.start_span(
                f"task {name}", context=self._parent(name, t),
                attributes={"flowdeco.task": name, "flowdeco.run_id": self.run_id},
                start_time=t)
        return span

    def _start_attempt(self, task: str, fields: dict, t: int) -> None:
        prev = self.attempts.pop(task, None)
        if prev is not None:  # an interval task's previous iteration
            prev.end(end_time=t)
        parent = self._task_span(task, t)
        attrs = {"flowdeco.task": task, "flowdeco.attempt": int(fields.get("attempt", 1)),
                 "flowdeco.run_id": self.run_id}
        if fields.get("iteration") is not None:
            attrs["flowdeco.iteration"] = int(fields["iteration"])
        self.attempts[task] = self.tracer.start_span(
            f"attempt {task}", context=trace.set_span_in_context(parent), attributes=attrs,
            start_time=t)

    def _retrying(self, task: str, fields: dict, t: int) -> None:
        error = str(fields.get("error", ""))
        attempt = self.attempts.pop(task, None)
        if attempt is not None:
            attempt.set_attribute("flowdeco.status", "failed")
            attempt.set_status(Status(StatusCode.ERROR, error))
            attempt.end(end_time=t)
        self._task_span(task, t).add_event(
            "retry", {"flowdeco.attempt": int(fields.get("attempt", 0)),
                      "flowdeco.delay": float(fields.get("delay", 0.0)), "error": error},
            timestamp=t)

    def _end_task(self, task: str, name: str, fields: dict, t: int) -> None:
        status = name[len("task_"):]
        error = fields.get("error")
        attempt = self.attempts.pop(task, None)
        if attempt is not None:
            attempt.set_attribute("flowdeco.status", status)
            if error is not None:
                attempt.set_status(Status(StatusCode.ERROR, str(error)))
            attempt.end(end_time=t)
        span = self._task_span(task, t)
        del self.tasks[task]
        span.set_attribute("flowdeco.status", status)
        span.set_attribute("flowdeco.attempts", int(fields.get("attempts", 0)))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end(end_time=t)

    def _not_run(self, task: str, name: str, fields: dict, t: int) -> None:
        status = name[len("task_"):]
        span = self._task_span(task, t)
        del self.tasks[task]
        span.set_attribute("flowdeco.status", status)
        attrs = {k: _attr(v) for k, v in fields.items()}
        if status == "skipped":
            span.set_attribute("flowdeco.reason", str(fields.get("reason")))
        span.add_event(status, attrs, timestamp=t)
        span.end(end_time=t)
