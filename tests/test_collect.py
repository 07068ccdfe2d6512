"""Run targets and the module rule (collection)."""

from __future__ import annotations

import importlib
import sys

import pytest

from flowdeco import CollectionError, Flow, FlowError, NoTasksError, task
from flowdeco.testing import run_flow

ETL = """
    from flowdeco import task

    @task
    def extract():
        return [1, 2, 3]

    @task
    def transform(extract):
        return [x * 10 for x in extract]

    @task(after=[transform])
    def load(transform):
        return sum(transform)

    def helper():          # not a task
        return 99

    NOT_A_TASK = 5
"""

EXPECTED = {"extract": [1, 2, 3], "transform": [10, 20, 30], "load": 60}


# --------------------------------------------------------------------------- target kinds


def test_file_path_as_str(write_module):
    path = write_module(ETL)
    result = run_flow(str(path))
    assert result.ok
    assert result.results == EXPECTED
    assert list(result.outcomes) == ["extract", "transform", "load"]


def test_file_path_as_path(write_module):
    assert run_flow(write_module(ETL)).results == EXPECTED


def test_module_name(write_module):
    path = write_module(ETL)
    assert run_flow(path.stem).results == EXPECTED


def test_module_object(write_module):
    path = write_module(ETL)
    module = importlib.import_module(path.stem)
    assert run_flow(module).results == EXPECTED


def test_package_folder(tmp_path, write_module):
    pkg = tmp_path / "fdpkg_etl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(ETL.replace("\n    ", "\n"))
    try:
        assert run_flow(pkg).results == EXPECTED
    finally:
        sys.modules.pop("fdpkg_etl", None)


@pytest.mark.parametrize("how", ["path", "module"])
def test_module_colon_flow_object(write_module, how):
    path = write_module("""
        from flowdeco import Flow, task

        pipeline = Flow("pipeline")

        @pipeline.task
        def one():
            return 1

        @pipeline.task
        def two(one):
            return one + 1

        @task
        def module_level():
            return "not in the flow"
    """)
    base = str(path) if how == "path" else path.stem
    result = run_flow(f"{base}:pipeline")
    assert result.results == {"one": 1, "two": 2}


def test_module_colon_task_list(write_module):
    path = write_module("""
        from flowdeco import task

        @task
        def a():
            return "a"

        @task
        def b():
            return "b"

        only_a = [a]
    """)
    assert run_flow(f"{path}:only_a").results == {"a": "a"}


def test_flow_object_target_has_unqualified_names():
    flow = Flow("myflow")

    @flow.task
    def first():
        return 1

    @flow.task
    def second(first):
        return first + 1

    result = run_flow(flow)
    assert result.results == {"first": 1, "second": 2}
    assert flow.run(state_dir=None).results == {"first": 1, "second": 2}


def test_list_of_plain_functions():
    def a():
        return 2

    def b(a):
        return a * 3

    result = run_flow([a, b])
    assert result.results == {"a": 2, "b": 6}
    assert not hasattr(a, "__flowdeco_task__")  # plain functions are not mutated


def test_single_task_function_target():
    @task
    def lonely():
        return "alone"

    assert run_flow(lonely).results == {"lonely": "alone"}


# --------------------------------------------------------------------------- module rule


def test_only_tasks_defined_in_the_module_are_collected(write_module):
    base = write_module("""
        from flowdeco import task

        @task
        def source():
            return 21

        @task
        def unrelated():
            raise AssertionError("must not run")

        @task
        def ordering_only():
            return "first"
    """)
    main = write_module(f"""
        from flowdeco import task
        from {base.stem} import source, unrelated, ordering_only

        @task
        def use(source):
            return source * 2

        @task(after=[ordering_only])
        def later():
            return "later"
    """)
    result = run_flow(main)
    assert result.ok, result.outcomes
    assert set(result.outcomes) == {"use", "source", "later", "ordering_only"}
    assert result.results["use"] == 42
    assert "unrelated" not in result.outcomes


def test_flow_owned_tasks_are_not_module_tasks(write_module):
    path = write_module("""
        from flowdeco import Flow, task

        sub = Flow("sub")

        @sub.task
        def inner():
            return "inner"

        @task
        def top():
            return "top"
    """)
    assert set(run_flow(path).outcomes) == {"top"}


def test_module_level_subflow_node_is_collected(write_module):
    path = write_module("""
        from flowdeco import Flow, task

        sub = Flow("sub")

        @sub.task
        def inner(start):
            return start + 1

        @task
        def start():
            return 1

        node = sub.as_task("node")

        @task
        def after_node(node):
            return node * 100
    """)
    result = run_flow(path)
    assert result.ok, result.outcomes
    assert set(result.outcomes) == {"start", "node", "node.inner", "after_node"}
    assert result.results["after_node"] == 200


def test_alias_is_collected_once(write_module):
    path = write_module("""
        from flowdeco import task

        calls = []

        @task
        def once():
            calls.append(1)
            return 1

        alias = once
    """)
    result = run_flow(path)
    assert list(result.outcomes) == ["once"]
    assert sys.modules[path.stem].calls == [1]


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "flow.py"
    with pytest.raises(CollectionError) as info:
        run_flow(str(missing))
    assert str(missing) in str(info.value)


def test_missing_module_name():
    with pytest.raises(CollectionError) as info:
        run_flow("fd_no_such_module_xyz")
    assert "fd_no_such_module_xyz" in str(info.value)


def test_syntax_error(write_module):
    path = write_module("""
        from flowdeco import task

        @task
        def broken(:
            pass
    """)
    with pytest.raises(CollectionError) as info:
        run_flow(path)
    msg = str(info.value)
    assert "syntax" in msg.lower()
    assert path.name in msg


def test_import_raising(write_module):
    path = write_module("""
        raise ValueError("config missing")
    """)
    with pytest.raises(CollectionError) as info:
        run_flow(str(path))
    msg = str(info.value)
    assert "ValueError" in msg and "config missing" in msg
    assert path.name in msg


def test_import_raising_system_exit(write_module):
    path = write_module("""
        import sys
        sys.exit(3)
    """)
    with pytest.raises(CollectionError) as info:
        run_flow(path)
    assert "SystemExit" in str(info.value)


def test_failed_import_can_be_retried_after_a_fix(write_module):
    path = write_module("raise RuntimeError('not yet')\n")
    with pytest.raises(CollectionError):
        run_flow(path)
    path.write_text(ETL.replace("\n    ", "\n"))
    assert run_flow(path).results == EXPECTED


def test_module_colon_missing_object(write_module):
    path = write_module(ETL + "\n    from flowdeco import Flow\n    pipeline = Flow('p')\n")
    with pytest.raises(CollectionError) as info:
        run_flow(f"{path}:pipelin")
    msg = str(info.value)
    assert "pipelin" in msg
    assert "pipeline" in msg  # the suggestion


def test_module_colon_object_is_not_a_flow(write_module):
    path = write_module(ETL)
    with pytest.raises(CollectionError) as info:
        run_flow(f"{path}:NOT_A_TASK")
    assert "NOT_A_TASK" in str(info.value)
    with pytest.raises(CollectionError):
        run_flow(f"{path}:helper")


def test_nothing_after_colon(write_module):
    path = write_module(ETL)
    with pytest.raises(CollectionError):
        run_flow(f"{path}:")


@pytest.mark.parametrize("bad", [42, [1, 2], [object()]])
def test_unrunnable_targets(bad):
    with pytest.raises(CollectionError):
        run_flow(bad)


def test_module_without_tasks(write_module):
    path = write_module("""
        def helper():
            return 1
    """)
    with pytest.raises(NoTasksError) as info:
        run_flow(path)
    assert isinstance(info.value, FlowError)


def test_empty_list_and_empty_flow():
    with pytest.raises(NoTasksError):
        run_flow([])
    with pytest.raises(NoTasksError):
        run_flow(Flow("empty"))


def test_collection_errors_are_flow_errors():
    assert issubclass(CollectionError, FlowError)
    assert issubclass(NoTasksError, FlowError)


def test_a_file_loaded_from_two_threads_at_once_is_never_seen_half_executed(tmp_path):
    """Two runs of one file started at once (backfill --max-active, run() in threads): the
    second must wait for the first's import, not collect its half-executed module."""
    import threading
    import types
    from flowdeco.collect import load_file

    hold = types.ModuleType("_fd_collect_hold")
    hold.entered, hold.release = threading.Event(), threading.Event()
    sys.modules[hold.__name__] = hold
    path = tmp_path / "fd_slow_import_flow.py"
    path.write_text("import _fd_collect_hold as h\nh.entered.set()\nh.release.wait(10)\n\n"
                    "def work():\n    return 1\n")
    seen: dict[str, bool] = {}

    def load(who):
        seen[who] = hasattr(load_file(path), "work")

    first = threading.Thread(target=load, args=("first",))
    try:
        first.start()
        assert hold.entered.wait(10)
        second = threading.Thread(target=load, args=("second",))
        second.start()
        second.join(0.5)  # half-executed module handed out at once (the bug), or waiting
        hold.release.set()
        first.join(10)
        second.join(10)
    finally:
        hold.release.set()
        sys.modules.pop(hold.__name__, None)
        sys.modules.pop("fd_slow_import_flow", None)
    assert seen == {"first": True, "second": True}
