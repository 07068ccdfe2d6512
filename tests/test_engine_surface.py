"""The engine's public surface for plugins: timing records, the stop state, old import paths."""

from __future__ import annotations

import pytest

from flowdeco import hookimpl, run, task
from flowdeco.engine.states import StopState


def test_task_records_list_tasks_then_mapped_instances_with_their_timings():
    seen = {}

    @task
    def items():
        return [1, 2, 3]

    @task(map="items")
    def double(items):
        return items * 2

    @task
    def total(double):
        return sum(double)

    class Probe:
        @hookimpl
        def flowdeco_run_finish(self, run, result):
            seen["records"] = run.task_records()

    result = run([items, double, total], executor="sync", state_dir=None, plugins=[Probe()])
    assert result.results["total"] == 12
    rec = seen["records"]
    assert rec.names == ["items", "double", "total", "double[0]", "double[1]", "double[2]"]
    assert rec.status == ["succeeded"] * 6
    assert rec.attempts == [1, 1, 1, 1, 1, 1]
    assert rec.mapped == [False, True, False, False, False, False]
    assert rec.deps[3] == rec.deps[1]  # an instance waits for what its mapped task waits for
    for t0, t1 in zip(rec.t0, rec.t1):
        assert t0 is not None and t1 is not None and t0 <= t1
    assert rec.worker[3] == "sync" and rec.workers >= 1


@pytest.mark.parametrize("interrupted, state", [(False, StopState.STOPPING),
                                                (True, StopState.INTERRUPTED)])
def test_stop_state_is_one_value_behind_the_old_flags(interrupted, state):
    seen = []

    @task
    def first():
        return 1

    @task
    def second(first):
        return 2

    class Stopper:
        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_succeeded" and event.task == "first":
                seen.append(run.stop_state)
                run.stop(interrupted=interrupted)
                seen.append((run.stop_state, run.stopping, run.interrupted, run.abandoned))

    result = run([first, second], executor="sync", state_dir=None, plugins=[Stopper()])
    assert seen == [StopState.RUNNING, (state, True, interrupted, False)]
    assert result.outcomes["second"].status == "skipped"
    assert result.outcomes["second"].reason == "stopped"
    assert result.status == ("interrupted" if interrupted else "failed")


def test_the_old_runner_module_still_exports_its_public_names():
    import flowdeco.runner as runner
    from flowdeco.engine import scheduler, session

    assert runner.Run is scheduler.Run and runner.Session is session.Session
    assert runner.run is session.run
    for name in ("NoTasksError", "validate_run_id", "new_run_id", "RUN_ID_RE", "InternalError",
                 "RemoteTaskError", "format_traceback", "Outcomes", "PENDING", "DONE"):
        assert hasattr(runner, name), name


def _private_run_reads(path) -> list[str]:
    """``run._x`` / ``self.run._x`` / ``getattr(run, "_x")`` in a module, as ``line: name``."""
    import ast

    def is_run(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "run") or (
            isinstance(node, ast.Attribute) and node.attr == "run")

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and is_run(node.value):
            found.append(f"{node.lineno}: {node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr") and node.args and \
                is_run(node.args[0]) and len(node.args) > 1 and \
                isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_"):
            found.append(f"{node.lineno}: {node.args[1].value}")
    return found


def test_dynamic_flows_use_the_scheduler_port_not_run_privates():
    # map=, when= and trigger= reach the scheduler only through SchedulerPort and
    # the run's public names (see flowdeco/engine/port.py)
    from pathlib import Path

    import flowdeco.engine.dynamic as dynamic
    import flowdeco.engine.rules as rules

    assert _private_run_reads(Path(dynamic.__file__)) == []
    assert _private_run_reads(Path(rules.__file__)) == []


def test_private_run_reads_checker_finds_each_spelling(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f(run, self):\n    run._a\n    self.run._b = 1\n    getattr(run, '_c')\n"
                   "    run.ok\n    self.port._fine\n")
    assert _private_run_reads(src) == ["2: _a", "3: _b", "4: _c"]
