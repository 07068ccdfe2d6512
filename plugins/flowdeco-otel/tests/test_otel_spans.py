"""The span tree of a run: run, tasks, attempts; retries, a sub-flow, a mapped task;
the trace context inside task bodies on threads and in worker processes."""

from __future__ import annotations

import pytest

import flowdeco_otel
from flowdeco import Restored, hookimpl
from flowdeco.testing import run_flow
from opentelemetry.trace import StatusCode

TIMEOUT = 60.0

FLOW = """
    from flowdeco import Flow, Retry, task
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    #: the test's provider; None in a worker process, where a body makes its own
    PROVIDER = None


    def opened(label):
        \"\"\"Open a span in a task body, as user code does: its trace and its parent span.\"\"\"
        provider = PROVIDER
        if provider is None:
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        with provider.get_tracer("user").start_as_current_span(label) as span:
            parent = span.parent
        return {"trace": span.context.trace_id, "parent": parent and parent.span_id}


    @task
    def items():
        return [1, 2]


    @task(retry=Retry(retries=1, delay=0))
    def flaky(ctx):
        seen = opened("flaky body")
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return seen


    @task(map="items")
    def each(items):
        return opened(f"each body {items}")


    part_flow = Flow("part_flow")


    @part_flow.task
    def inner():
        return opened("inner body")


    part = part_flow.as_task("part")


    @task
    def after(flaky, each, part):
        return "done"
"""


def parent_name(traces, span):
    p = traces.parent_of(span)
    return p.name if p is not None else None


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_span_tree_of_a_flow_with_a_retry_a_subflow_and_a_mapped_task(
        traces, flow_module, executor):
    flow = flow_module(FLOW)
    if executor == "thread":
        flow.PROVIDER = traces.provider   # bodies' spans land in the same exporter
    result = run_flow(flow, executor=executor, workers=2, run_id="r-tree",
                      plugins=[flowdeco_otel.Tracing(traces.provider)], fail_after=TIMEOUT)
    assert result.status == "succeeded", result.outcomes

    run = traces.one(f"run {result.flow}")
    assert run.parent is None
    assert run.attributes["flowdeco.run_id"] == "r-tree"
    assert run.attributes["flowdeco.status"] == "succeeded"
    assert {s.context.trace_id for s in traces.spans} == {run.context.trace_id}

    # tasks under the run; the sub-flow's inner task under its node; instances under the map
    for name in ("items", "flaky", "each", "part", "after"):
        assert parent_name(traces, traces.one(f"task {name}")) == run.name, name
    assert parent_name(traces, traces.one("task part.inner")) == "task part"
    for k in (0, 1):
        inst = traces.one(f"task each[{k}]")
        assert parent_name(traces, inst) == "task each"
        assert inst.attributes["flowdeco.status"] == "succeeded"
        assert parent_name(traces, traces.one(f"attempt each[{k}]")) == f"task each[{k}]"
    assert traces.one("task each").attributes["flowdeco.instances"] == 2

    # the retry: two attempt spans, the first failed; a retry event on the task span
    task = traces.one("task flaky")
    assert task.attributes["flowdeco.status"] == "succeeded"
    assert task.attributes["flowdeco.attempts"] == 2
    attempts = sorted(traces.named("attempt flaky"), key=lambda s: s.attributes["flowdeco.attempt"])
    assert [a.attributes["flowdeco.attempt"] for a in attempts] == [1, 2]
    assert [parent_name(traces, a) for a in attempts] == ["task flaky"] * 2
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert "first attempt fails" in attempts[0].status.description
    assert attempts[1].status.status_code is not StatusCode.ERROR
    retry = [e for e in task.events if e.name == "retry"]
    assert len(retry) == 1 and retry[0].attributes["flowdeco.attempt"] == 1
    assert attempts[0].end_time <= attempts[1].start_time

    # spans the bodies opened nest under their own attempt, on this worker or another process
    seen = result["flaky"].result
    assert seen == {"trace": run.context.trace_id, "parent": attempts[1].context.span_id}
    for k, body in enumerate(result["each"].result):
        assert body["parent"] == traces.one(f"attempt each[{k}]").context.span_id
    assert result["part"].result["parent"] == traces.one("attempt part.inner").context.span_id
    if executor == "thread":
        bodies = traces.named("flaky body")
        assert sorted(parent_name(traces, b) for b in bodies) == ["attempt flaky"] * 2
        assert {b.parent.span_id for b in bodies} == {a.context.span_id for a in attempts}


FAILING = """
    from flowdeco import task

    @task
    def cached():
        raise AssertionError("restored, never run")

    @task
    def broken(cached):
        raise RuntimeError("disk full")

    @task
    def report(broken):
        return "never"
"""


class RestoreCached:
    @hookimpl
    def flowdeco_task_restore(self, task, name):
        if name == "cached":
            return Restored(41, fields={"source": "test"})
        return None


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_restores_and_skips_are_task_spans_with_events_and_failures_have_error_status(
        traces, flow_module, executor):
    flow = flow_module(FAILING)
    result = run_flow(flow, executor=executor,
                      plugins=[RestoreCached(), flowdeco_otel.Tracing(traces.provider)])
    assert result.status == "failed"
    cached = traces.one("task cached")
    assert cached.attributes["flowdeco.status"] == "restored"
    assert [e.name for e in cached.events] == ["restored"]
    assert cached.events[0].attributes["source"] == "test"
    assert traces.named("attempt cached") == []
    broken = traces.one("task broken")
    assert broken.status.status_code is StatusCode.ERROR and "disk full" in broken.status.description
    assert traces.one("attempt broken").status.status_code is StatusCode.ERROR
    skipped = traces.one("task report")
    assert skipped.attributes["flowdeco.status"] == "skipped"
    assert skipped.attributes["flowdeco.reason"] == "upstream"
    assert [e.name for e in skipped.events] == ["skipped"]
    run = traces.one(f"run {result.flow}")
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes["flowdeco.failed"] == 1 and run.attributes["flowdeco.skipped"] == 1


def test_task_log_records_are_events_on_their_attempt_span(traces, flow_module):
    flow = flow_module("""
        from flowdeco import task

        @task
        def talk(ctx):
            ctx.log.info("rows loaded", rows=3)
    """)
    run_flow(flow, plugins=[flowdeco_otel.Tracing(traces.provider)])
    events = traces.one("attempt talk").events
    assert [(e.name, e.attributes["rows"], e.attributes["level"]) for e in events] == \
        [("rows loaded", 3, "info")]


def test_a_run_inside_a_traced_caller_nests_under_the_callers_span(traces, flow_module):
    flow = flow_module("""
        from flowdeco import task

        @task
        def one():
            return 1
    """)
    with traces.provider.get_tracer("app").start_as_current_span("deploy") as outer:
        run_flow(flow, plugins=[flowdeco_otel.Tracing(traces.provider)])
    run = [s for s in traces.spans if s.name.startswith("run ")][0]
    assert run.parent.span_id == outer.get_span_context().span_id


def test_flow_version_is_an_attribute_when_the_run_has_one(traces, flow_module):
    """Flow versions come from another part of the engine: read when there, absent otherwise."""
    flow = flow_module("""
        from flowdeco import task

        @task
        def one():
            return 1
    """)

    class Versioned:
        @hookimpl(tryfirst=True)
        def flowdeco_run_start(self, run):
            run.flow_version = "v-abc123"

    run_flow(flow, plugins=[flowdeco_otel.Tracing(traces.provider)])
    assert "flowdeco.flow_version" not in traces.spans[-1].attributes
    traces.exporter.clear()
    run_flow(flow, plugins=[Versioned(), flowdeco_otel.Tracing(traces.provider)])
    run = [s for s in traces.spans if s.name.startswith("run ")][0]
    assert run.attributes["flowdeco.flow_version"] == "v-abc123"
