"""The metrics plugin: arithmetic on synthetic records and a fake clock, the CLI table, JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import flowdeco
from flowdeco import FakeClock, Retry, task
from flowdeco.plugins.metrics import RunMetrics, TaskMetrics, WorkerMetrics, format_table


def synthetic() -> RunMetrics:
    """a -> (b, c) -> d on two workers; b is the long branch.

    time:   0   1   2   3   4
    w0:     [a ][  b   ][ d ]
    w1:         [c ]
    """
    return RunMetrics.from_arrays(
        names=["a", "b", "c", "d"], deps=[(), (0,), (0,), (1, 2)],
        t0=[10.0, 11.0, 11.0, 13.5], t1=[11.0, 13.0, 12.0, 14.0],
        worker=["w0", "w0", "w1", "w0"], attempts=[1, 2, 1, 1],
        status=["succeeded"] * 4, start=10.0, workers=2)


def test_per_task_figures_from_synthetic_records():
    m = synthetic()
    assert list(m.tasks) == ["a", "b", "c", "d"]
    b = m.tasks["b"]
    assert b == TaskMetrics(name="b", status="succeeded", queued=1.0, started=1.0,
                            finished=3.0, duration=2.0, attempts=2, worker="w0")
    d = m.tasks["d"]
    assert (d.queued, d.started, d.finished, d.duration) == (3.0, 3.5, 4.0, 0.5)
    assert d.wait == 0.5                       # ready at 3.0 (b done), started at 3.5
    assert m.tasks["a"].queued == 0.0 and m.tasks["a"].wait == 0.0


def test_per_run_and_per_worker_arithmetic():
    m = synthetic()
    assert m.makespan == 4.0
    assert m.total_task_time == 1.0 + 2.0 + 1.0 + 0.5
    assert m.workers_configured == 2
    assert m.parallel_efficiency == pytest.approx(4.5 / (4.0 * 2))
    assert m.workers == [WorkerMetrics("w0", 3, 3.5, 3.5 / 4.0), WorkerMetrics("w1", 1, 1.0, 0.25)]


def test_critical_path_follows_the_dependency_that_finished_last():
    m = synthetic()
    assert m.critical_path == ["a", "b", "d"]
    assert m.critical_path_time == 1.0 + 2.0 + 0.5
    # make c the long branch instead: the path follows it
    m2 = RunMetrics.from_arrays(
        names=["a", "b", "c", "d"], deps=[(), (0,), (0,), (1, 2)],
        t0=[0.0, 1.0, 1.0, 5.0], t1=[1.0, 2.0, 5.0, 6.0], worker=["w"] * 4,
        attempts=[1] * 4, status=["succeeded"] * 4, start=0.0, workers=1)
    assert m2.critical_path == ["a", "c", "d"]
    assert m2.critical_path_time == 6.0
    assert m2.parallel_efficiency == pytest.approx((1 + 1 + 4 + 1) / 6.0)


def test_skipped_tasks_and_subflow_points_count_no_time():
    m = RunMetrics.from_arrays(
        names=["a", "node", "b"], deps=[(), (0,), (1,)],
        t0=[0.0, 0.0, None], t1=[2.0, 2.0, None], worker=["w", None, None],
        attempts=[1, 1, 0], status=["failed", "succeeded", "skipped"], start=0.0, workers=4,
        is_task=[True, False, True])
    assert m.total_task_time == 2.0
    assert m.tasks["b"] == TaskMetrics("b", "skipped", None, None, None, 0.0, 0, None)
    assert m.critical_path == ["a"]            # the sub-flow completion point is not a task
    assert [w.worker for w in m.workers] == ["w"]


def test_empty_run_metrics():
    m = RunMetrics.from_arrays(names=[], deps=[], t0=[], t1=[], worker=[], attempts=[],
                               status=[], start=0.0, workers=2)
    assert (m.makespan, m.total_task_time, m.parallel_efficiency) == (0.0, 0.0, 0.0)
    assert m.critical_path == [] and m.workers == [] and m.pipelines == {}


# --------------------------------------------------------------------------- real runs


def test_run_on_a_fake_clock_gives_exact_figures():
    clock = FakeClock(start=100.0)

    def work(seconds):
        def body():
            clock.advance(seconds)
            return seconds
        return body

    def named(fn, name, **kw):
        fn.__name__ = name
        return task(fn, **kw)

    extract = named(work(2.0), "extract")

    def transform(extract):
        clock.advance(3.0)
        return extract

    def side(extract):
        clock.advance(1.0)
        return 0

    def load(transform, side):
        clock.advance(0.5)
        return 1

    tasks = [extract, task(transform), task(side), task(load)]
    result = flowdeco.run(tasks, state_dir=None, executor="sync", clock=clock)
    assert result.ok
    m = result.metrics
    assert isinstance(m, RunMetrics)
    assert {n: t.duration for n, t in m.tasks.items()} == {
        "extract": 2.0, "transform": 3.0, "side": 1.0, "load": 0.5}
    assert m.tasks["load"].worker == "sync" and m.tasks["load"].attempts == 1
    assert m.makespan == 6.5
    assert m.total_task_time == 6.5
    assert m.parallel_efficiency == pytest.approx(6.5 / (6.5 * m.workers_configured))
    # one worker runs transform (declared first) then side: load waited for side last
    assert [m.tasks[n].started for n in ("extract", "transform", "side", "load")] == [
        0.0, 2.0, 5.0, 6.0]
    assert m.tasks["load"].queued == 6.0
    assert m.critical_path == ["extract", "side", "load"]
    assert m.critical_path_time == 3.5
    assert m.workers == [WorkerMetrics("sync", 4, 6.5, 1.0)]


def test_mapped_instances_have_their_own_figures_on_a_fake_clock():
    clock = FakeClock(start=100.0)

    @task
    def items():
        clock.advance(1.0)
        return [1.0, 2.0, 0.5]

    @task(map="items")
    def each(items):
        clock.advance(items)
        return items

    @task
    def total(each):
        clock.advance(0.25)
        return sum(each)

    result = flowdeco.run([items, each, total], state_dir=None, executor="sync", clock=clock)
    assert result.results["total"] == 3.5
    m = result.metrics
    assert {n: t.duration for n, t in m.tasks.items() if "[" in n} == {
        "each[0]": 1.0, "each[1]": 2.0, "each[2]": 0.5}
    assert m.tasks["each[1]"].queued == 1.0 and m.tasks["each[1]"].started == 2.0
    assert m.tasks["each[2]"].worker == "sync" and m.tasks["each[2]"].status == "succeeded"
    assert m.makespan == 4.75
    # the instances' work, not the mapped task's span on top of it
    assert m.total_task_time == 4.75
    assert m.workers == [WorkerMetrics("sync", 5, 4.75, 1.0)]  # items, 3 instances, total
    assert m.critical_path == ["items", "each", "total"]


def test_contract_fields_on_a_thread_run_with_retries():
    calls = []

    @task(retry=Retry(retries=2))
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return 1

    @task
    def after(flaky):
        return flaky + 1

    result = flowdeco.run([flaky, after], state_dir=None, workers=2)
    assert result.ok
    t = result.metrics.tasks["flaky"]
    assert t.attempts == 3 and t.duration >= 0 and t.worker
    workers = result.metrics.workers
    assert sum(w.tasks_processed for w in workers) == 2
    assert all(w.busy >= 0 and 0 <= w.utilisation for w in workers)
    # every worker that ran an attempt (a failed one too), at least those where tasks ended
    assert {w.worker for w in workers} >= {result.metrics.tasks[n].worker for n in ("flaky", "after")}


def test_disabling_the_plugin_leaves_no_metrics():
    @task
    def one():
        return 1

    assert flowdeco.run([one], state_dir=None, disable=["metrics"]).metrics is None
    assert flowdeco.run([one], state_dir=None).metrics is not None


def test_table_lists_run_workers_and_pipelines():
    from flowdeco import Pipeline

    pipe = Pipeline("tbl")
    pipe.stage(lambda x: x + 1, name="inc")

    @task
    def src():
        return list(range(50))

    node = pipe.as_task("tbl", source=src)
    result = flowdeco.run([src, node], state_dir=None)
    text = format_table(result.metrics)
    assert text.splitlines()[0].strip("- ") == "metrics"
    assert "makespan" in text and "parallel efficiency" in text
    assert "critical path" in text and "src -> tbl" in text
    assert "pipeline tbl: 50 items, 50 out, 0 failed" in text
    assert any(line.split()[:2] == ["inc", "2"] for line in text.splitlines())


def test_long_critical_paths_are_abbreviated():
    n = 50
    m = RunMetrics.from_arrays(
        names=[f"c{i}" for i in range(n)], deps=[()] + [(i - 1,) for i in range(1, n)],
        t0=[float(i) for i in range(n)], t1=[float(i + 1) for i in range(n)],
        worker=["w"] * n, attempts=[1] * n, status=["succeeded"] * n, start=0.0, workers=1)
    assert len(m.critical_path) == n
    assert "c0 -> c1 -> c2 -> ... -> c48 -> c49 (50 tasks)" in format_table(m)


FLOW = """
from flowdeco import Pipeline, task

pipe = Pipeline("nums")

@pipe.stage
def double(x):
    return 2 * x

@task
def numbers():
    return list(range(10))

doubled = pipe.as_task("doubled", source=numbers)

@task
def total(doubled):
    return sum(doubled.outputs)
"""


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_the_table_and_writes_json(tmp_path):
    (tmp_path / "flow.py").write_text(FLOW)
    proc = cli("flow.py", "--no-state", "--metrics-json", "m.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "metrics" in out and "critical path" in out
    assert "pipeline doubled: 10 items, 10 out, 0 failed" in out
    assert out.index("metrics") < out.index("3 succeeded")   # table before the summary line
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["status"] == "succeeded"
    assert set(data["tasks"]) == {"numbers", "doubled", "total"}
    assert set(data["tasks"]["total"]) >= {"duration", "attempts", "worker", "queued",
                                           "started", "finished"}
    assert data["critical_path"] == ["numbers", "doubled", "total"]
    assert data["workers"][0]["tasks_processed"] >= 1
    stage = data["pipelines"]["doubled"]["stages"]["double"]
    assert stage["items_in"] == stage["items_out"] == 10
    assert not (tmp_path / "m.json.tmp").exists()


def test_cli_quiet_hides_the_table(tmp_path):
    (tmp_path / "flow.py").write_text(FLOW)
    proc = cli("flow.py", "--no-state", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "metrics" not in proc.stdout and "critical path" not in proc.stdout
    assert "3 succeeded" in proc.stdout
    proc = cli("flow.py", "--no-state", "-p", "no:metrics", cwd=tmp_path)
    assert proc.returncode == 0 and "critical path" not in proc.stdout


def test_metrics_json_from_python(tmp_path):
    @task
    def one():
        return 1

    flowdeco.run([one], state_dir=None, metrics_json=tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["tasks"]["one"]["attempts"] == 1


# --------------------------------------------------------------------------- busy time


def _flow_with_waits(clock):
    """On a fake clock: a task failing twice (10 s back-off) and an interval task (every 5 s).

    Each attempt / iteration is 1 s (flaky) or 0.5 s (poll) of work: 4.5 s of work in
    all, spread over a makespan of over 20 s of waiting.
    """
    calls = []

    @task(retry=Retry(retries=2, delay=10.0))
    def flaky():
        calls.append(1)
        clock.advance(1.0)
        if len(calls) < 3:
            raise ConnectionError("again")
        return 1

    @task(every=5.0, times=3)
    def poll(ctx):
        clock.advance(0.5)
        return ctx.iteration

    @task
    def both(flaky, poll):
        return len(poll)

    return [flaky, poll, both]


@pytest.mark.parametrize("executor", ["sync", "thread"])
def test_busy_time_is_attempt_time_never_waits_and_utilisation_at_most_one(executor):
    clock = FakeClock(start=100.0)
    result = flowdeco.run(_flow_with_waits(clock), state_dir=None, executor=executor,
                          workers=1, clock=clock)
    assert result.ok, result.outcomes
    m = result.metrics
    flaky, poll = m.tasks["flaky"], m.tasks["poll"]
    assert flaky.attempts == 3 and flaky.duration >= 23.0   # span: 3 attempts + 2 x 10 s
    assert flaky.busy == 3.0                                # work: the 3 attempts only
    assert poll.busy == 1.5 and poll.duration > 10.0
    assert m.tasks["both"].busy == m.tasks["both"].duration == 0.0
    assert m.total_task_time == 4.5
    assert sum(w.busy for w in m.workers) == 4.5
    assert m.makespan >= 23.0
    for w in m.workers:
        assert 0.0 <= w.utilisation <= 1.0, m.workers
    assert m.parallel_efficiency <= 1.0
    assert sum(w.tasks_processed for w in m.workers) == 3


def test_a_mapped_instance_retry_counts_its_attempts_not_its_back_off():
    clock = FakeClock(start=100.0)
    failed = set()

    @task
    def items():
        return [1, 2]

    @task(map="items", retry=Retry(retries=1, delay=30.0))
    def each(items):
        clock.advance(1.0)
        if items == 2 and items not in failed:
            failed.add(items)
            raise ConnectionError("again")
        return items

    result = flowdeco.run([items, each], state_dir=None, executor="sync", clock=clock)
    assert result.ok
    m = result.metrics
    assert m.tasks["each[1]"].duration == 32.0 and m.tasks["each[1]"].busy == 2.0
    assert m.total_task_time == 3.0
    assert m.workers[0].busy == 3.0 and m.workers[0].utilisation <= 1.0


def test_timer_example_utilisation_never_exceeds_one():
    """The issue's example: ``5 tasks 161.1ms 196%`` for an 82 ms makespan (real time)."""
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / "examples" / "timer_tasks.py"
    result = flowdeco.run(str(example), state_dir=None)
    assert result.ok
    m = result.metrics
    for w in m.workers:
        assert w.busy <= m.makespan and w.utilisation <= 1.0, m.workers
    assert m.parallel_efficiency <= 1.0


def test_synthetic_attempt_durations():
    m = RunMetrics.from_arrays(
        names=["a", "b"], deps=[(), (0,)], t0=[0.0, 1.0], t1=[1.0, 11.0],
        worker=["w0", "w1"], attempts=[1, 2], status=["succeeded"] * 2, start=0.0,
        workers=2, attempt_durations={1: [("w0", 0.5), ("w1", 1.0)]})
    assert m.tasks["b"].busy == 1.5 and m.tasks["b"].duration == 10.0
    assert {w.worker: (w.tasks_processed, w.busy) for w in m.workers} == {
        "w0": (1, 1.5), "w1": (1, 1.0)}
