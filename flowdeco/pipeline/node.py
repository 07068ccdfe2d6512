"""A pipeline as one node of a flow (:meth:`Pipeline.as_task`).

The node is an ordinary task function, built so that the core needs to know
nothing about pipelines: its parameters are ``ctx`` and one named after the
source task (so the graph makes the source a dependency and passes its
result), and its body runs the pipeline on the task's worker thread.

From there it reports per-item events to the run's audit trail through
``ctx.run.emit`` (thread-safe; delivered on the scheduler thread, so every
``flowdeco_report`` plugin sees them): ``item_retrying`` (``stage``,
``item_index``, ``attempt``, ``delay``, ``error``), ``item_failed``
(``stage``, ``item_index``, ``attempts``, ``error``, and ``traceback`` for
the first 100 failures) and ``pipeline_finished`` (``items``, ``outputs``,
``failed``, ``duration``, ``max_in_flight``, and ``stages``: per stage ``stage``,
``workers``, ``items_in``, ``items_out``, ``items_failed``, ``throughput`` (items/s)
and ``queue_hwm``, the most items that waited in its input queue).  In a worker process (no ``ctx.run``) the same
events go through ``ctx.log``.  An interrupt of the run (Ctrl-C) stops
feeding; the items in flight drain and the node fails.

The node's task sets the option ``pipeline=`` (this pipeline): the
``pipeline`` plugin checks the stages' options against the active plugins at
collection (a stage's ``retries=`` under ``-p no:retry`` is refused there).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import TaskDefinitionError
from ..flow import SubflowNode
from ..outcome import format_error
from ..params import READS_PARAMS_ATTR
from ..stash import StashKey
from ..task import CTX, get_spec, task
from .engine import PipelineStopped

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Execution
    from .pipe import Pipeline

#: ``run.stash`` key: {node name: running Execution}, read by the progress display
LIVE_KEY: StashKey[dict[str, "Execution"]] = StashKey("flowdeco.pipeline.live")
#: tracebacks are written to the audit trail for this many failed items per node run
TRACEBACKS = 100


def live(run: Any) -> dict[str, "Execution"]:
    """The pipelines running in ``run`` now, by node name (a snapshot)."""
    return dict(run.stash.get(LIVE_KEY) or {})


class _EmitReporter:
    """Per-item events into the run's audit trail (any thread)."""

    def __init__(self, emit: Callable[..., None], task: str):
        self.emit = emit
        self.task = task
        self.tracebacks = TRACEBACKS

    def retrying(self, stage: str, index: int, attempt: int, delay: float,
                 exc: BaseException) -> None:
        self.emit("item_retrying", task=self.task, stage=stage, item_index=index,
                  attempt=attempt, delay=delay, error=format_error(exc))

    def failed(self, stage: str, index: int, attempts: int, error: str,
               exc: BaseException) -> None:
        fields: dict[str, Any] = {"stage": stage, "item_index": index, "attempts": attempts,
                                  "error": error}
        if self.tracebacks > 0:
            self.tracebacks -= 1
            from ..engine.attempt import format_traceback
            fields["traceback"] = format_traceback(exc)
        self.emit("item_failed", task=self.task, **fields)


class _LogReporter(_EmitReporter):
    """The same events through ``ctx.log`` (worker processes, where there is no run)."""

    def __init__(self, log: Any, task: str):
        def emit(name: str, task: str, **fields: Any) -> None:
            (log.warning if name == "item_retrying" else log.info if name ==
             "pipeline_finished" else log.error)(name, **fields)
        super().__init__(emit, task)


def stage_figures(m: Any) -> list[dict]:
    """Per stage, for ``pipeline_finished``: the counters the engine keeps anyway (read
    once, when the node ends; nothing is added to the per-item path)."""
    return [{"stage": s.name, "workers": s.workers, "items_in": s.items_in,
             "items_out": s.items_out, "items_failed": s.items_failed,
             "throughput": round(s.throughput, 3), "queue_hwm": s.queue_hwm}
            for s in m.stages.values()]


class _Node:
    """The body of a pipeline node (called by the generated task function)."""

    def __init__(self, pipe: "Pipeline", name: str, items: Callable[[Any], Iterable[Any]] | None,
                 stop_on_error: bool | None, collect: bool):
        self.pipe = pipe
        self.name = name
        self.items = items
        self.stop_on_error = stop_on_error
        self.collect = collect

    def __call__(self, ctx: Any, upstream: Any) -> Any:
        items = upstream if self.items is None else self.items(upstream)
        run = getattr(ctx, "run", None)
        stop_on_error = self.stop_on_error
        if stop_on_error is None:
            stop_on_error = bool(run is not None and run.stop_on_error)
        reporter: _EmitReporter | None = None
        should_stop = None
        task_name = ctx.task if ctx is not None else self.name
        if run is not None:
            reporter = _EmitReporter(run.emit, task_name)
            should_stop = lambda: run.interrupted  # noqa: E731
        elif ctx is not None:
            reporter = _LogReporter(ctx.log, task_name)
        execution = self.pipe.execution(items, stop_on_error=stop_on_error, collect=self.collect,
                                        reporter=reporter, should_stop=should_stop)
        registry = None
        if run is not None:
            registry = run.stash.setdefault(LIVE_KEY, {})
            registry[task_name] = execution
        try:
            result = execution.run()
        finally:
            if registry is not None:
                registry.pop(task_name, None)
        m = result.metrics
        if reporter is not None:
            reporter.emit("pipeline_finished", task=task_name, items=m.items, outputs=m.outputs,
                          failed=m.failed, duration=round(m.duration, 6),
                          max_in_flight=m.max_in_flight, stages=stage_figures(m))
        if execution.flags.interrupted:
            raise PipelineStopped(f"pipeline {self.pipe.name!r} interrupted after "
                                  f"{m.items} items ({m.outputs} delivered)")
        if result.stopped:
            first = result.errors[0]
            raise PipelineStopped(
                f"pipeline {self.pipe.name!r} stopped feeding after item {first.index} failed "
                f"in stage {first.stage!r}: {first.error} ({m.failed} failed, "
                f"{m.outputs} delivered)")
        return result


def _template(ctx, source):  # type: ignore[no-untyped-def]  # parameters renamed per node
    return _pipeline_node(ctx, source)  # type: ignore[name-defined]  # noqa: F821


def _source_name(source: Any) -> tuple[str, Any]:
    if isinstance(source, str):
        return source, None
    if isinstance(source, SubflowNode):
        return source.name, None
    spec = get_spec(source)
    if spec is None:
        raise TaskDefinitionError(
            f"as_task(source={source!r}): source must be a task function, a sub-flow node "
            "or a task name")
    return spec.name, source


def make_node(pipe: "Pipeline", name: str, source: Any, *,
              items: Callable[[Any], Iterable[Any]] | None, stop_on_error: bool | None,
              collect: bool, after: Iterable[Any], priority: int, tags: Iterable[str],
              module: str) -> Callable[..., Any]:
    """Build the task function ``name(ctx, <source>)`` running ``pipe`` (see module docstring)."""
    src, fn = _source_name(source)
    where = f"pipeline node {name!r}"
    if not src.isidentifier() or src == CTX:
        raise TaskDefinitionError(
            f"{where}: source task name {src!r} cannot be a parameter name "
            "(use a task whose name is a Python identifier other than 'ctx')")
    if items is not None and not callable(items):
        raise TaskDefinitionError(f"{where}: items= must be a function of the source's result")
    if stop_on_error is not None and not isinstance(stop_on_error, bool):
        raise TaskDefinitionError(f"{where}: stop_on_error must be True, False or None")
    namespace: dict[str, Any] = {
        "__name__": module, "_pipeline_node": _Node(pipe, name, items, stop_on_error, collect)}
    if fn is not None:
        namespace[src] = fn  # lets the graph find a source task imported from elsewhere
    code = _template.__code__.replace(co_varnames=(CTX, src), co_name=name)
    if sys.version_info >= (3, 11):
        code = code.replace(co_qualname=name)
    node = types.FunctionType(code, namespace, name)
    node.__qualname__ = name
    node.__module__ = module
    node.__doc__ = f"Pipeline {pipe.name!r} fed by task {src!r} (made by Pipeline.as_task)."
    setattr(node, READS_PARAMS_ATTR, False)  # its ctx never reads run parameters
    # pipeline=: the pipeline plugin checks the stages' options at collection
    return task(node, name=name, after=after, priority=priority, tags=tags, pipeline=pipe)
