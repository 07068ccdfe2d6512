"""Fixtures for flowdeco-otel's tests: an SDK provider exporting to memory, flow modules."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

_names = itertools.count()


class Traces:
    """A provider whose finished spans are kept in memory, with lookups by name."""

    def __init__(self):
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self):
        return list(self.exporter.get_finished_spans())

    def named(self, name):
        return [s for s in self.spans if s.name == name]

    def one(self, name):
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def parent_of(self, span):
        if span.parent is None:
            return None
        by_id = {s.context.span_id: s for s in self.spans}
        return by_id.get(span.parent.span_id)


@pytest.fixture
def traces():
    t = Traces()
    yield t
    t.provider.shutdown()


@pytest.fixture
def flow_module(tmp_path, monkeypatch):
    """``flow_module(source)``: write a module into ``tmp_path`` (on ``sys.path``) and import it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def write(source):
        name = f"otelflow_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return importlib.import_module(name)

    yield write
    for name in made:
        sys.modules.pop(name, None)
