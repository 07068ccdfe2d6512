"""How the plugin switches on: the application's provider, OTEL_* variables, or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import flowdeco_otel
from flowdeco import hookimpl
from flowdeco.testing import run_flow
from opentelemetry import trace
from opentelemetry.util._once import Once

HERE = Path(__file__).resolve().parent.parent

ONE = """
    from flowdeco import task

    @task
    def one():
        return 1

    @task
    def two(one):
        return one + 1
"""


class Peek:
    """Keeps the run and whether the otel plugin registered a Tracing for it."""

    def __init__(self):
        self.seen = {}

    @hookimpl
    def flowdeco_run_start(self, run):
        self.seen["run"] = run
        self.seen["tracing"] = run.config.pluginmanager.get_plugin("otel-tracing")


@pytest.fixture
def global_provider(traces):
    """Set the process's global tracer provider for one test, then unset it again
    (OpenTelemetry allows setting it once per process: its own tests reset it like this)."""
    def reset():
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None
    reset()
    trace.set_tracer_provider(traces.provider)
    yield traces
    reset()


@pytest.fixture
def no_otel_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)


def test_installed_without_a_provider_it_registers_nothing_and_costs_nothing(
        flow_module, no_otel_env):
    flow = flow_module(ONE)
    peek = Peek()
    run_flow(flow, plugins=[flowdeco_otel, peek])
    run = peek.seen["run"]
    assert peek.seen["tracing"] is None
    # no attempt scopes: the run keeps its fast paths (plain calls, workers chaining)
    assert run._scope is None and run.inline_successors and run._calls == [None, None]


def test_idle_it_does_not_even_import_opentelemetry(tmp_path):
    """Installed in a process that never set a provider: no OpenTelemetry import, per run
    one check (flowdeco_collection_finish) and nothing per task."""
    (tmp_path / "flow.py").write_text(textwrap.dedent(ONE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    code = ("import sys, flowdeco, flowdeco_otel\n"
            "r = flowdeco.run('flow.py', state_dir=None, plugins=[flowdeco_otel])\n"
            "print(r.status, sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["succeeded", "[]"], proc.stderr


def test_with_the_applications_provider_every_run_is_traced(flow_module, global_provider,
                                                             no_otel_env):
    flow = flow_module(ONE)
    peek = Peek()
    run_flow(flow, plugins=[flowdeco_otel, peek])
    assert isinstance(peek.seen["tracing"], flowdeco_otel.Tracing)
    names = sorted(s.name for s in global_provider.spans)
    assert names == ["attempt one", "attempt two", f"run {flow.__name__}", "task one", "task two"]
    # and it is unregistered after the run: the next session starts clean
    assert peek.seen["run"].config.pluginmanager.get_plugin("otel-tracing") is None


def test_otel_sdk_disabled_turns_it_off(flow_module, global_provider, monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    peek = Peek()
    run_flow(flow_module(ONE), plugins=[flowdeco_otel, peek])
    assert peek.seen["tracing"] is None and global_provider.spans == []


def test_a_tracing_passed_in_plugins_is_not_doubled(flow_module, global_provider, no_otel_env):
    flow = flow_module(ONE)
    run_flow(flow, plugins=[flowdeco_otel, flowdeco_otel.Tracing(global_provider.provider)])
    assert len(global_provider.named("task one")) == 1


def _cli(tmp_path, env_extra, *args):
    (tmp_path / "flow.py").write_text(textwrap.dedent(ONE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    # from a checkout -p loads the module; installed, the entry point has already (once)
    return subprocess.run([sys.executable, "-m", "flowdeco", "flow.py", "--no-state", "-q",
                           "-p", "flowdeco_otel", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_otel_traces_exporter_console_sets_up_the_sdk_from_the_environment(tmp_path):
    proc = _cli(tmp_path, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "nightly"})
    assert proc.returncode == 0, proc.stderr
    # the console exporter prints one JSON object per span
    decoder, text, spans = json.JSONDecoder(), proc.stdout, []
    i = text.find("{")
    while i >= 0:
        obj, end = decoder.raw_decode(text, i)
        spans.append(obj)
        i = text.find("{", end)
    names = sorted(s["name"] for s in spans)
    assert names == ["attempt one", "attempt two", "run flow", "task one", "task two"]
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"nightly"}


def test_an_unknown_exporter_is_a_usage_error_naming_it(tmp_path):
    proc = _cli(tmp_path, {"OTEL_TRACES_EXPORTER": "zipkin_nowhere"})
    assert proc.returncode == 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'zipkin_nowhere'" in lines[0] and "OTEL_TRACES_EXPORTER" in lines[0]


def test_the_distribution_declares_the_flowdeco_entry_point():
    meta = tomllib.loads((HERE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["flowdeco"] == {"otel": "flowdeco_otel"}
    assert any(d.startswith("opentelemetry-api") for d in meta["project"]["dependencies"])
    assert any(d.startswith("opentelemetry-sdk") for d in meta["project"]["optional-dependencies"]["test"])
