"""One mechanism per concern: retry, timeout and circuit policies live in the core.

Pipelines use the same policy objects as tasks without importing a plugin,
and disabling a plugin reaches pipeline stages: a stage option whose plugin
is off is refused when the flow is collected, as a task's is.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

import flowdeco
from flowdeco import CollectionError, Pipeline, Retry, TaskTimeout, cli, task

PACKAGE = Path(flowdeco.__file__).parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, absolute (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            # `from .. import plugins` / `from ..plugins import retry`
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


@pytest.mark.parametrize("folder", ["pipeline", "policies"])
def test_pipelines_and_policies_import_no_plugin(folder):
    files = sorted((PACKAGE / folder).glob("*.py"))
    assert files
    bad = [f"{f.relative_to(PACKAGE.parent)}:{line} imports {mod}"
           for f in files for line, mod in _imports(f)
           if mod == "flowdeco.plugins" or mod.startswith("flowdeco.plugins.")]
    assert bad == []


def test_public_names_and_compatibility_reexports_are_the_core_objects():
    from flowdeco.plugins import circuit, retry, timeout
    from flowdeco.policies import circuit as core_circuit
    from flowdeco.policies import retry as core_retry
    from flowdeco.policies import timeout as core_timeout

    assert flowdeco.Retry is retry.Retry is core_retry.Retry
    assert flowdeco.TaskTimeout is timeout.TaskTimeout is core_timeout.TaskTimeout
    assert timeout.call_in_thread is core_timeout.call_in_thread
    assert flowdeco.CircuitBreaker is circuit.CircuitBreaker is core_circuit.CircuitBreaker
    assert flowdeco.CircuitOpenError is circuit.CircuitOpenError is core_circuit.CircuitOpenError
    assert circuit.CircuitCall is core_circuit.CircuitCall


# --------------------------------------------------------------------------- disabled plugins

def _node(stage_options, *, late=False):
    """A flow: ``src`` -> pipeline node ``etl``; ``late``: the stage is declared after as_task."""
    ran = []

    @task
    def src():
        ran.append("src")
        return [1, 2]

    pipe = Pipeline("etl")
    pipe.stage(lambda x: x, name="parse")
    if late:
        node = pipe.as_task("etl", source=src)
    pipe.stage(lambda x: x + 1, name="enrich", **stage_options)
    if not late:
        node = pipe.as_task("etl", source=src)
    return [src, node], ran


@pytest.mark.parametrize("options, plugin", [
    ({"retries": 2}, "retry"),
    ({"retry": Retry(retries=1)}, "retry"),
    ({"timeout": 5.0}, "timeout"),
])
@pytest.mark.parametrize("late", [False, True])
def test_stage_option_of_a_disabled_plugin_is_refused_at_collection(options, plugin, late):
    tasks, ran = _node(options, late=late)
    with pytest.raises(CollectionError) as info:
        flowdeco.run(tasks, state_dir=None, disable=[plugin])
    message = str(info.value)
    assert "'etl'" in message and "'enrich'" in message and f"-p no:{plugin}" in message
    assert "'parse'" not in message
    assert ran == []  # refused before anything ran


def test_stage_options_are_accepted_with_their_plugins_on():
    tasks, ran = _node({"retries": 1, "timeout": 5.0})
    result = flowdeco.run(tasks, state_dir=None)
    assert result.ok and result.results["etl"].outputs == [2, 3]
    # the other plugin off: only the option it implements matters
    tasks, _ = _node({"retries": 1})
    assert flowdeco.run(tasks, state_dir=None, disable=["timeout"]).ok


def test_stage_options_accepted_when_another_plugin_claims_them():
    class ClaimRetries:
        @flowdeco.hookimpl
        def flowdeco_task_options(self):
            return ["retries", "retry"]

    tasks, _ = _node({"retries": 1})
    assert flowdeco.run(tasks, state_dir=None, disable=["retry"],
                        plugins=[ClaimRetries()]).ok


PIPELINE_FLOW = """
    from flowdeco import Pipeline, task

    @task
    def src():
        return [1, 2, 3]

    pipe = Pipeline("etl")

    @pipe.stage(workers=1, {option})
    def enrich(x):
        return x + 1

    etl = pipe.as_task("etl", source=src)
"""


@pytest.mark.parametrize("option, plugin", [("retries=2", "retry"), ("timeout=5.0", "timeout")])
def test_cli_refuses_a_stage_option_of_a_disabled_plugin_with_exit_4(mods, capsys, option,
                                                                     plugin):
    _, flow = mods.write_module(PIPELINE_FLOW.replace("{option}", option))
    assert cli.main([str(flow), "--no-state", "-p", f"no:{plugin}"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "'etl'" in err[0] and "'enrich'" in err[0] and f"-p no:{plugin}" in err[0]
    assert cli.main([str(flow), "--no-state"]) == 0


def test_standalone_pipeline_applies_its_policies_without_a_plugin_manager():
    calls = []
    pipe = Pipeline("alone")

    @pipe.stage(workers=1, retries=2)
    def flaky(x):
        calls.append(x)
        if calls.count(x) < 2:
            raise ValueError("once")
        return x

    release = threading.Event()

    @pipe.stage(workers=1, timeout=0.05)
    def stuck(x):
        if x == 2:
            release.wait(10.0)  # abandoned after its timeout, released below
        return x

    try:
        result = pipe.run([1, 2])
    finally:
        release.set()
    assert result.outputs == [1]
    assert calls == [1, 1, 2, 2]
    assert len(result.errors) == 1 and isinstance(result.errors[0].exception, TaskTimeout)
