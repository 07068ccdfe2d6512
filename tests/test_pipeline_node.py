"""A pipeline as one node of a flow: ``Pipeline.as_task``."""

from __future__ import annotations

import itertools
import os
import signal
import threading

import pytest

import flowdeco
from flowdeco import Pipeline, PipelineResult, hookimpl, task
from flowdeco.task import get_spec
from flowdeco.testing import run_flow


class Capture:
    """Records every reported event (a reporting plugin)."""

    def __init__(self):
        self.events = []

    @hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)

    def named(self, *names):
        return [e for e in self.events if e.name in names]


def squares_pipeline(name="squares", **kw):
    pipe = Pipeline(name, **kw)

    @pipe.stage(workers=2)
    def parse(x):
        if x == 13:
            raise ValueError("unlucky")
        return int(x)

    @pipe.stage(workers=3)
    def square(n):
        return n * n

    return pipe


def test_node_consumes_the_upstream_iterable_and_downstream_gets_the_result():
    pipe = squares_pipeline()

    @task
    def numbers():
        return list(range(20))

    node = pipe.as_task("squares", source=numbers)

    @task
    def report(squares):
        assert isinstance(squares, PipelineResult)
        return {"sum": sum(squares.outputs), "failed": [e.index for e in squares.errors]}

    result = run_flow([numbers, node, report])
    assert result.ok, result.outcomes
    assert list(result.outcomes) == ["numbers", "squares", "report"]
    assert result.results["report"] == {"sum": sum(x * x for x in range(20) if x != 13),
                                        "failed": [13]}
    assert result.results["squares"].outputs == [x * x for x in range(20) if x != 13]
    o = result.outcomes
    assert o["numbers"].finished_at <= o["squares"].started_at
    assert o["squares"].finished_at <= o["report"].started_at
    # the run's metrics include the pipeline's own figures
    assert result.metrics.pipelines["squares"].stages["square"].items_in == 19


def test_node_in_a_module_with_a_source_name_and_items_function(write_module, tmp_path):
    data = tmp_path / "rows.txt"
    data.write_text("\n".join(str(i) for i in range(100)))
    path = write_module(f'''
        from flowdeco import Pipeline, task

        pipe = Pipeline("lines")

        @pipe.stage
        def parse(line):
            return int(line)

        @task
        def rows_file():
            return {str(data)!r}                  # a path: storable, the rows stream lazily

        def read_lines(path):
            with open(path) as f:
                for line in f:
                    yield line.strip()

        lines = pipe.as_task("lines", source="rows_file", items=read_lines)

        @task
        def total(lines):
            return sum(lines.outputs)
    ''')
    result = run_flow(path)
    assert result.ok, result.outcomes
    assert result.results["total"] == sum(range(100))
    assert list(result.outcomes) == ["rows_file", "lines", "total"]
    assert result.results["lines"].metrics.items == 100


def test_node_is_a_plain_function_too():
    pipe = squares_pipeline()

    @task
    def numbers():
        return [1, 2]

    node = pipe.as_task("sq", source=numbers)
    assert node.__name__ == "sq"
    out = node(None, [1, 2, 3])
    assert out.outputs == [1, 4, 9]


def test_per_item_events_reach_the_audit_hook_with_stage_and_item_index():
    pipe = Pipeline("events")
    tries = {}

    @pipe.stage(workers=1, retries=1)
    def flaky(x):
        tries[x] = tries.get(x, 0) + 1
        if x == 2:
            raise ConnectionError("down")
        if x == 4 and tries[x] == 1:
            raise ConnectionError("blip")
        return x

    @task
    def src():
        return range(6)

    node = pipe.as_task("ev", source=src)
    cap = Capture()
    result = run_flow([src, node], plugins=[cap])
    assert result.ok
    retrying = cap.named("item_retrying")
    assert sorted((e.fields["item_index"], e.fields["attempt"]) for e in retrying) == [
        (2, 1), (4, 1)]
    assert all(e.task == "ev" and e.fields["stage"] == "flaky" for e in retrying)
    assert all(e.fields["error"].startswith("ConnectionError") for e in retrying)
    failed = cap.named("item_failed")
    assert len(failed) == 1
    f = failed[0]
    assert (f.task, f.fields["stage"], f.fields["item_index"], f.fields["attempts"]) == (
        "ev", "flaky", 2, 2)
    assert f.fields["error"] == "ConnectionError: down"
    assert "raise ConnectionError" in f.fields["traceback"]
    done = cap.named("pipeline_finished")[0]
    assert (done.fields["items"], done.fields["outputs"], done.fields["failed"]) == (6, 5, 1)
    # per-item events come before the node's own task_succeeded
    names = [e.name for e in cap.events if e.task == "ev"]
    assert names.index("item_failed") < names.index("task_succeeded")


def test_per_item_events_are_written_to_the_audit_trail(tmp_path):
    import json

    pipe = squares_pipeline()

    @task
    def numbers():
        return list(range(15))

    node = pipe.as_task("squares", source=numbers)
    result = flowdeco.run([numbers, node], state_dir=tmp_path, run_id="p1")
    assert result.ok, result.outcomes
    lines = (tmp_path / "runs" / "p1" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    failed = [e for e in events if e["event"] == "item_failed"]
    assert len(failed) == 1
    assert failed[0]["task"] == "squares" and failed[0]["stage"] == "parse"
    assert failed[0]["item_index"] == 13 and failed[0]["run_id"] == "p1"


def test_pipeline_finished_carries_per_stage_figures_and_queue_high_water_marks(tmp_path):
    import json

    pipe = squares_pipeline()

    @task
    def numbers():
        return list(range(40))

    node = pipe.as_task("squares", source=numbers)
    result = flowdeco.run([numbers, node], state_dir=tmp_path, run_id="p2")
    assert result.ok, result.outcomes
    metrics = result.results["squares"].metrics
    lines = (tmp_path / "runs" / "p2" / "audit.jsonl").read_text().splitlines()
    done = [json.loads(x) for x in lines if '"pipeline_finished"' in x][0]
    assert (done["items"], done["outputs"], done["failed"]) == (40, 39, 1)
    assert done["max_in_flight"] == metrics.max_in_flight >= 1
    stages = done["stages"]
    assert [s["stage"] for s in stages] == ["parse", "square"]
    parse, square = stages
    assert (parse["items_in"], parse["items_out"], parse["items_failed"]) == (40, 39, 1)
    assert (square["items_in"], square["items_out"], square["items_failed"]) == (39, 39, 0)
    for s in stages:
        m = metrics.stages[s["stage"]]
        assert s["queue_hwm"] == m.queue_hwm >= 1  # every item waited in its input queue
        assert s["throughput"] == pytest.approx(m.throughput, rel=1e-3)
        assert s["workers"] == m.workers


def test_stop_on_error_fails_the_node_and_skips_downstream():
    pipe = squares_pipeline()

    @task
    def numbers():
        return list(range(1000))

    node = pipe.as_task("squares", source=numbers, stop_on_error=True)

    @task
    def report(squares):
        return len(squares.outputs)

    result = run_flow([numbers, node, report])
    assert result.status == "failed"
    o = result.outcomes["squares"]
    assert o.status == "failed"
    assert o.error.startswith("PipelineStopped: pipeline 'squares' stopped feeding after item 13 "
                              "failed in stage 'parse': ValueError: unlucky")
    assert result.outcomes["report"].status == "skipped"


def test_exitfirst_applies_to_items_unless_the_node_says_otherwise():
    @task
    def numbers():
        return list(range(100))

    stopping = squares_pipeline("stopping").as_task("stopping", source=numbers)
    result = run_flow([numbers, stopping], stop_on_error=True)
    assert result.outcomes["stopping"].status == "failed"

    tolerant = squares_pipeline("tolerant").as_task("tolerant", source=numbers,
                                                    stop_on_error=False)
    result = run_flow([numbers, tolerant], stop_on_error=True)
    assert result.ok
    assert [e.index for e in result.results["tolerant"].errors] == [13]


def test_pipeline_priority_is_the_node_priority():
    pipe = Pipeline("urgent", priority=5)
    pipe.stage(lambda x: x, name="noop")
    order = []

    @task
    def src():
        return [1]

    @task
    def chore(src):
        order.append("chore")

    node = pipe.as_task("urgent", source=src)
    assert get_spec(node).priority == 5
    assert get_spec(pipe.as_task("other", source=src, priority=-1)).priority == -1

    @task
    def after_urgent(urgent):
        order.append("after")

    result = run_flow([src, chore, node, after_urgent], workers=1, executor="sync")
    assert result.ok
    # with one worker, the higher-priority pipeline node ran before the chore declared earlier
    assert result.outcomes["urgent"].started_at <= result.outcomes["chore"].started_at


def test_stage_options_need_their_plugins():
    pipe = Pipeline("needs")
    pipe.stage(lambda x: x, name="work", retries=2)

    @task
    def src():
        return [1]

    node = pipe.as_task("needs", source=src)
    # refused at collection, like a task's retries= (tests/test_policies.py has the rest)
    with pytest.raises(flowdeco.CollectionError, match=r"'work' .*retries=.*-p no:retry"):
        run_flow([src, node], disable=["retry"])
    # the node itself needs the pipeline plugin
    with pytest.raises(flowdeco.CollectionError, match=r"'needs' sets pipeline="):
        run_flow([src, node], disable=["pipeline"])


def test_source_must_be_a_task_whose_name_can_be_a_parameter():
    pipe = squares_pipeline()
    with pytest.raises(flowdeco.TaskDefinitionError, match="source must be a task function"):
        pipe.as_task("x", source=lambda: [1])
    with pytest.raises(flowdeco.TaskDefinitionError, match="cannot be a parameter name"):
        pipe.as_task("x", source="ctx")


def test_interrupt_stops_feeding_and_the_node_fails():
    pipe = Pipeline("endless", queue_size=4)
    sent = threading.Event()

    @pipe.stage(workers=1)
    def work(x):
        if x == 20 and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C while the node streams
        return x

    @task
    def forever():
        return itertools.count()

    node = pipe.as_task("endless", source=forever)
    result = run_flow([forever, node])
    assert result.status == "interrupted"
    o = result.outcomes["endless"]
    assert o.status == "failed"
    assert o.error.startswith("PipelineStopped: pipeline 'endless' interrupted after")


def test_pipeline_result_is_stored_and_restored_by_the_state_plugin(tmp_path):
    pipe = squares_pipeline()

    @task
    def numbers():
        return list(range(20))

    node = pipe.as_task("squares", source=numbers)
    first = flowdeco.run([numbers, node], state_dir=tmp_path, run_id="s1")
    assert first.ok, first.outcomes
    again = flowdeco.run([numbers, node], state_dir=tmp_path, run_id="s1", resume="s1")
    assert again.outcomes["squares"].status == "restored"
    restored = again.results["squares"]
    assert isinstance(restored, PipelineResult)
    assert restored == first.results["squares"]
    assert restored.errors[0].index == 13 and restored.errors[0].exception is None
