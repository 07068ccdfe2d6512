"""On Dask workers too, a task body's spans nest under its attempt's span."""

from __future__ import annotations

import pytest

pytest.importorskip("flowdeco_dask")
pytest.importorskip("distributed")

import flowdeco_otel  # noqa: E402
from flowdeco.testing import run_flow  # noqa: E402

BODY = """
    from flowdeco import Retry, task
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


    def opened(label):
        provider = TracerProvider()        # the worker's own (spans kept in its memory)
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        with provider.get_tracer("user").start_as_current_span(label) as span:
            return {"trace": span.context.trace_id, "parent": span.parent.span_id}


    @task(retry=Retry(retries=1, delay=0))
    def flaky(ctx):
        seen = opened("flaky")
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return seen
"""


def test_dask_worker_bodies_nest_under_their_attempt(traces, flow_module):
    flow = flow_module(BODY)
    result = run_flow(flow, executor="dask", workers=1, dask_upload=False,
                      plugins=[flowdeco_otel.Tracing(traces.provider)], fail_after=120)
    assert result.status == "succeeded", result.outcomes
    second = [s for s in traces.named("attempt flaky") if s.attributes["flowdeco.attempt"] == 2]
    assert result["flaky"].result == {"trace": second[0].context.trace_id,
                                      "parent": second[0].context.span_id}
