"""Regressions found by testing this session's features as a new user (branch qa-user).

Each test goes through what users touch (``run()``, the CLI, state files) and
failed before its fix.
"""

from __future__ import annotations

import textwrap
import time

import flowdeco


def test_mapped_instances_on_one_worker_with_state_do_not_stall(tmp_path):
    """A mapped task with more instances than workers, state on: each instance after the
    first on a worker waited 2 s (PREVIOUS_WAIT) for the *mapped task's* completion to be
    committed -- which only comes after the last instance.  6 trivial instances on one
    worker took > 10 s; they take milliseconds (5 s is a generous margin on a busy box)."""
    flow = tmp_path / "mapflow.py"
    flow.write_text(textwrap.dedent("""
        from flowdeco import task

        @task
        def items():
            return list(range(6))

        @task(map="items")
        def double(items):
            return items * 2

        @task
        def total(double):
            return sum(double)
    """))
    t0 = time.monotonic()
    result = flowdeco.run(str(flow), workers=1, state_dir=str(tmp_path / "state"))
    elapsed = time.monotonic() - t0
    assert result.ok and result.results["total"] == 30
    assert elapsed < 5.0, f"6 trivial mapped instances took {elapsed:.1f}s"


def test_a_non_string_tag_is_named_plainly():
    """QA: the message listed reprs of reprs (``got ["'db'", '3']``)."""
    import pytest

    from flowdeco import task
    from flowdeco.errors import TaskDefinitionError

    def load():
        return 1

    with pytest.raises(TaskDefinitionError) as info:
        task(tags=["db", 3])(load)
    assert "tags must be strings, got 'db', 3" in str(info.value)


def test_a_wrong_type_for_state_dir_or_select_is_a_usage_error(tmp_path, monkeypatch):
    """QA: run(state_dir=True) / run(select=True) (or `state_dir = true` in flowdeco.toml)
    crashed with TypeError/AttributeError instead of naming the option."""
    import pytest

    from flowdeco import cli
    from flowdeco.errors import UsageError

    def one():
        return 1

    with pytest.raises(UsageError, match="state_dir"):
        flowdeco.run([one], state_dir=True)
    with pytest.raises(UsageError, match="select"):
        flowdeco.run([one], state_dir=None, select=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWDECO_ADDOPTS", raising=False)
    (tmp_path / "qaflow_sd.py").write_text("from flowdeco import task\n\n@task\ndef a():\n"
                                           "    return 1\n")
    for body in ("state_dir = true\n", "select = true\n"):
        (tmp_path / "flowdeco.toml").write_text(body)
        assert cli.main(["qaflow_sd.py", "-qq"]) == 4, body
