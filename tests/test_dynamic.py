"""Dynamic flows (issue 8): map over results, conditional routing, trigger rules."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flowdeco import (CollectionError, Flow, Restored, TaskDefinitionError, cli, hookimpl,
                      run, task)
from flowdeco.testing import run_flow

EXECUTORS = ["thread", "sync"]


def statuses(result, *names):
    return {n: (result[n].status, result[n].reason) for n in names}


class Events:
    """Records reported events (scheduler thread only, so no lock)."""

    def __init__(self):
        self.events = []

    @hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)

    def of(self, name, task=None):
        return [e for e in self.events if e.name == name and (task is None or e.task == task)]


# --------------------------------------------------------------------------- map


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("workers", [1, 4])
def test_map_runs_once_per_element_and_gives_the_list_in_order(executor, workers):
    @task
    def files():
        return ["a", "bb", "ccc", "dddd", "eeeee"]

    @task(map="files")
    def scan(files, ctx):
        return (files, len(files), ctx.task)

    @task
    def total(scan):
        return scan

    result = run_flow([files, scan, total], executor=executor, workers=workers)
    assert result.ok, result.failed()
    expected = [(f, len(f), f"scan[{k}]") for k, f in enumerate(["a", "bb", "ccc", "dddd", "eeeee"])]
    assert result["scan"].status == "succeeded"
    assert result["scan"].result == expected
    assert result["total"].result == expected
    for k, value in enumerate(expected):
        out = result.outcomes[f"scan[{k}]"]
        assert (out.status, out.result, out.attempts) == ("succeeded", value, 1)
        assert out.started_at is not None and out.finished_at >= out.started_at
    # instances are listed right after their task
    assert list(result.outcomes) == ["files", "scan", *[f"scan[{k}]" for k in range(5)], "total"]
    assert len(result.outcomes) == 8
    assert result.results["scan[2]"] == expected[2]
    assert "scan[5]" not in result.outcomes and "scan[02]" not in result.outcomes


@pytest.mark.parametrize("executor", EXECUTORS)
def test_map_over_an_empty_list_gives_dependents_an_empty_list(executor):
    @task
    def files():
        return []

    @task(map="files")
    def scan(files):
        raise AssertionError("never called")

    @task
    def total(scan):
        return ("got", scan)

    result = run_flow([files, scan, total], executor=executor)
    assert result.ok
    assert result["scan"].status == "succeeded" and result["scan"].result == []
    assert result["total"].result == ("got", [])
    assert list(result.outcomes) == ["files", "scan", "total"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_map_over_one_element(executor):
    @task
    def files():
        return ("only",)

    @task(map="files")
    def scan(files, suffix="!"):
        return files + suffix

    result = run_flow([files, scan], executor=executor, params={"suffix": "?"})
    assert result.ok
    assert result["scan"].result == ["only?"]
    assert result["scan[0]"].result == "only?"


def test_map_accepts_any_iterable_and_passes_other_arguments():
    @task
    def numbers():
        return (n for n in range(4))    # a generator: materialized once

    @task
    def factor():
        return 10

    @task(map="numbers")
    def scale(numbers, factor):
        return numbers * factor

    result = run_flow([numbers, factor, scale])
    assert result["scale"].result == [0, 10, 20, 30]


@pytest.mark.parametrize("value, words", [
    (42, ["'scan'", "'files'", "int", "not iterable"]),
    ("abc", ["'scan'", "'files'", "str", "list"]),
])
def test_map_over_a_non_iterable_fails_the_task_with_a_clear_error(value, words):
    @task
    def files():
        return value

    @task(map="files")
    def scan(files):
        return files

    @task
    def total(scan):
        return scan

    result = run_flow([files, scan, total])
    assert not result.ok
    out = result["scan"]
    assert out.status == "failed" and out.error.startswith("TypeError: ")
    for w in words:
        assert w in out.error
    assert statuses(result, "total") == {"total": ("skipped", "upstream")}


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failed_instance_fails_the_task_and_names_it(executor):
    @task
    def files():
        return list(range(6))

    @task(map="files")
    def scan(files):
        if files in (2, 4):
            raise ValueError(f"bad {files}")
        return files

    @task
    def total(scan):
        return scan

    result = run_flow([files, scan, total], executor=executor, workers=2)
    assert result.status == "failed"
    assert result["scan"].status == "failed"
    assert result["scan"].error == "MapFailed: 2 of 6 instances failed: scan[2], scan[4]"
    assert [result[f"scan[{k}]"].status for k in range(6)] == \
        ["succeeded", "succeeded", "failed", "succeeded", "failed", "succeeded"]
    assert result["scan[2]"].error == "ValueError: bad 2"
    assert statuses(result, "total") == {"total": ("skipped", "upstream")}


@pytest.mark.parametrize("executor", EXECUTORS)
def test_per_instance_retry(executor, tmp_path):
    counter = tmp_path / "attempts"

    @task
    def files():
        return list(range(5))

    @task(map="files", retries=2)
    def scan(files, ctx):
        if files == 2:
            with open(counter, "a") as fh:
                fh.write(f"{ctx.task}:{ctx.attempt}\n")
            if ctx.attempt == 1:
                raise ConnectionError("flaky")
        return files * 10

    rec = Events()
    result = run_flow([files, scan], executor=executor, plugins=[rec])
    assert result.ok
    assert result["scan"].result == [0, 10, 20, 30, 40]
    assert [result[f"scan[{k}]"].attempts for k in range(5)] == [1, 1, 2, 1, 1]
    assert result["scan[2]"].error is None
    assert counter.read_text().split() == ["scan[2]:1", "scan[2]:2"]
    retrying = rec.of("task_retrying")
    assert [(e.task, e.fields["attempt"], e.fields["error"]) for e in retrying] == \
        [("scan[2]", 1, "ConnectionError: flaky")]
    assert [e.fields["attempt"] for e in rec.of("task_started", "scan[2]")] == [1, 2]


def test_instances_have_their_own_audit_events():
    @task
    def files():
        return ["x", "y"]

    @task(map="files")
    def scan(files, ctx):
        ctx.log.info("scanning", item=files)
        return files.upper()

    rec = Events()
    result = run_flow([files, scan], plugins=[rec], workers=1)
    assert result.ok
    names = [(e.name, e.task) for e in rec.events if e.task and e.task.startswith("scan")]
    assert names == [
        ("task_mapped", "scan"),
        ("task_started", "scan[0]"), ("scanning", "scan[0]"), ("task_succeeded", "scan[0]"),
        ("task_started", "scan[1]"), ("scanning", "scan[1]"), ("task_succeeded", "scan[1]"),
        ("task_succeeded", "scan"),
    ]
    assert rec.of("task_mapped")[0].fields == {"instances": 2}
    assert rec.of("scanning", "scan[1]")[0].fields["item"] == "y"
    assert rec.of("task_succeeded", "scan[1]")[0].outcome.result == "Y"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_map_with_exitfirst_starts_no_instance_after_the_first_failure(executor):
    started = []

    @task
    def files():
        return list(range(10))

    @task(map="files")
    def scan(files):
        started.append(files)
        if files == 2:
            raise ValueError("stop here")
        return files

    @task
    def other():
        return 1

    result = run_flow([files, scan, other], executor=executor, workers=1, stop_on_error=True)
    assert result.status == "failed"
    assert started == [0, 1, 2]
    assert [result[f"scan[{k}]"].status for k in range(3)] == ["succeeded", "succeeded", "failed"]
    for k in range(3, 10):
        assert (result[f"scan[{k}]"].status, result[f"scan[{k}]"].reason) == ("skipped", "stopped")
    assert result["scan"].status == "failed"
    assert result["scan"].error == "MapFailed: 1 of 10 instances failed: scan[2]"


def test_map_with_exitfirst_on_many_workers_stops_starting_instances():
    gate = threading.Event()
    started = []

    class OpenWhenStopping:
        """Lets the blocked instances finish once the run has stopped (after the failure)."""

        @hookimpl
        def flowdeco_report_flush(self, run):
            if run.stopping:
                gate.set()

    @task
    def files():
        return list(range(200))

    @task(map="files")
    def scan(files):
        started.append(files)
        if files == 0:
            raise ValueError("first")
        assert gate.wait(10)
        return files

    @task
    def total(scan):
        return scan

    result = run_flow([files, scan, total], workers=3, stop_on_error=True,
                plugins=[OpenWhenStopping()])
    assert result.status == "failed"
    assert sorted(started) == [0, 1, 2]
    assert [result[f"scan[{k}]"].status for k in range(3)] == ["failed", "succeeded", "succeeded"]
    assert {(result[f"scan[{k}]"].status, result[f"scan[{k}]"].reason)
            for k in range(3, 200)} == {("skipped", "stopped")}
    assert result["scan"].error == "MapFailed: 1 of 200 instances failed: scan[0]"
    assert (result["total"].status, result["total"].reason) == ("skipped", "stopped")


def test_mapped_task_priority_goes_before_plain_ready_tasks():
    order = []

    @task
    def files():
        return [1, 2, 3]

    @task(map="files", priority=5)
    def scan(files):
        order.append(f"scan{files}")

    @task
    def low_a(files):
        order.append("a")

    @task
    def low_b(files):
        order.append("b")

    for executor in EXECUTORS:
        order.clear()
        assert run_flow([files, low_a, low_b, scan], executor=executor, workers=1).ok
        assert order == ["scan1", "scan2", "scan3", "a", "b"], executor


def test_instances_run_concurrently_bounded_by_workers():
    lock = threading.Lock()
    live, peak = [0], [0]
    both = threading.Barrier(2, timeout=5)

    @task
    def files():
        return list(range(12))

    @task(map="files")
    def scan(files):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        if files < 2:
            both.wait()   # the first two run at the same time, or this times out
        with lock:
            live[0] -= 1
        return files

    result = run_flow([files, scan], workers=2)
    assert result.ok and result["scan"].result == list(range(12))
    assert peak[0] == 2


def test_map_when_predicate_sees_the_whole_list():
    @task
    def files():
        return [1, 2, 3]

    @task(map="files", when=lambda files: len(files) > 5)
    def scan(files):
        return files

    @task
    def after(scan):
        return scan

    result = run_flow([files, scan, after])
    assert result.ok
    assert statuses(result, "scan", "after") == {"scan": ("skipped", "condition"),
                                                "after": ("skipped", "condition")}
    assert list(result.outcomes) == ["files", "scan", "after"]


def test_map_must_name_a_parameter_bound_to_a_task():
    @task(map="names")
    def scan(names):
        return names

    with pytest.raises(CollectionError, match=r"task 'scan': map='names'.*run parameter"):
        run_flow([scan], params={"names": "a,b"})
    with pytest.raises(TaskDefinitionError, match=r"map= names the parameter.*'other'"):
        task(name="s", map="other")(lambda names: names)
    with pytest.raises(TaskDefinitionError, match="cannot be combined with every"):
        @task(map="x", every=1.0)
        def interval(x):
            return x


class RestoreSome:
    """Restores instances 0 and 2 of ``scan`` (a resume that kept them)."""

    def __init__(self):
        self.asked = []

    @hookimpl
    def flowdeco_task_restore(self, run, task, name):
        self.asked.append(name)
        if name in ("scan[0]", "scan[2]"):
            return Restored(f"saved-{name}", attempts=3)
        return None


@pytest.mark.parametrize("executor", EXECUTORS)
def test_instances_are_restored_one_by_one(executor):
    called = []

    @task
    def files():
        return ["a", "b", "c", "d"]

    @task(map="files")
    def scan(files):
        called.append(files)
        return files.upper()

    restorer, rec = RestoreSome(), Events()
    result = run_flow([files, scan], executor=executor, plugins=[restorer, rec])
    assert result.ok
    assert sorted(called) == ["b", "d"]
    assert result["scan"].result == ["saved-scan[0]", "B", "saved-scan[2]", "D"]
    assert (result["scan[0]"].status, result["scan[0]"].attempts) == ("restored", 3)
    assert result["scan[1]"].status == "succeeded"
    # asked for the task as a whole first, then per instance as each is about to start
    assert restorer.asked == ["files", "scan", "scan[0]", "scan[1]", "scan[2]", "scan[3]"]
    assert [e.task for e in rec.of("task_restored")] == ["scan[0]", "scan[2]"]


def test_a_restore_plugin_without_name_restores_a_mapped_task_as_a_whole():
    class Whole:
        @hookimpl
        def flowdeco_task_restore(self, run, task):
            return Restored(["old"]) if task.name == "scan" else None

    @task
    def files():
        return [1, 2]

    @task(map="files")
    def scan(files):
        raise AssertionError("restored as a whole")

    result = run_flow([files, scan], plugins=[Whole()])
    assert result.ok
    assert (result["scan"].status, result["scan"].result) == ("restored", ["old"])
    assert list(result.outcomes) == ["files", "scan"]


def test_map_on_the_process_executor(tmp_path, mods):
    _, path = mods.write_module("""
        from flowdeco import task

        @task
        def files():
            return [1, 2, 3]

        @task(map="files", retries=1)
        def square(files, ctx):
            ctx.log.info("squaring", n=files)
            return files * files

        @task
        def total(square):
            return sum(square)
    """)
    rec = Events()
    result = run_flow(str(path), executor="process", workers=2, plugins=[rec])
    assert result.ok, result.failed()
    assert result["square"].result == [1, 4, 9]
    assert result["total"].result == 14
    assert result["square[1]"].worker.startswith("pid-")
    assert sorted(e.task for e in rec.of("squaring")) == ["square[0]", "square[1]", "square[2]"]


def test_map_inside_a_subflow(mods):
    _, path = mods.write_module("""
        from flowdeco import Flow, task

        inner = Flow("inner")

        @inner.task
        def split(text):
            return text.split()

        @inner.task(map="split")
        def shout(split):
            return split.upper()

        node = inner.as_task("node")

        @task
        def text():
            return "a b c"

        @task
        def joined(node):
            return "-".join(node)
    """)
    result = run_flow(str(path))
    assert result.ok
    assert result["joined"].result == "A-B-C"
    assert result["node.shout[2]"].result == "C"


def test_run_outcome_knows_instances():
    seen = {}

    class Peek:
        @hookimpl
        def flowdeco_run_finish(self, run, result):
            seen["one"] = run.outcome("scan[1]")
            seen["none"] = run.outcome("scan[7]")

    @task
    def files():
        return [1, 2]

    @task(map="files")
    def scan(files):
        return -files

    run_flow([files, scan], plugins=[Peek()])
    assert seen["one"].result == -2 and seen["none"] is None


# --------------------------------------------------------------------------- when=


def is_big(total):
    return total > 100


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("total_value, ran", [(500, "big"), (5, "small")])
def test_routing_by_condition_both_ways(executor, total_value, ran):
    @task
    def total():
        return total_value

    @task(when=is_big)
    def big(total):
        return "big"

    @task(when=lambda total: not is_big(total))
    def small(total):
        return "small"

    @task
    def after_big(big):
        return big

    @task
    def after_small(small):
        return small

    @task(trigger="none_failed")
    def merge(big, small):
        return big or small

    result = run_flow([total, big, small, after_big, after_small, merge], executor=executor)
    assert result.ok
    skipped = "small" if ran == "big" else "big"
    assert result[ran].result == ran and result[f"after_{ran}"].result == ran
    assert statuses(result, skipped, f"after_{skipped}") == {
        skipped: ("skipped", "condition"), f"after_{skipped}": ("skipped", "condition")}
    assert result["merge"].result == ran


def test_when_predicate_gets_params_defaults_and_ctx():
    seen = {}

    def check(n, limit, ctx, mode="x"):
        seen.update(n=n, limit=limit, task=ctx.task, mode=mode)
        return True

    @task
    def n():
        return 3

    @task(when=check)
    def guarded(n, ctx, limit=10):
        return n

    result = run_flow([n, guarded])
    assert result.ok
    assert seen == {"n": 3, "limit": 10, "task": "guarded", "mode": "x"}


def test_a_raising_predicate_fails_the_task():
    def explode(x):
        raise RuntimeError("cannot decide")

    @task
    def x():
        return 1

    @task(when=explode)
    def y(x):
        return x

    @task
    def z(y):
        return y

    result = run_flow([x, y, z])
    assert result.status == "failed"
    assert (result["y"].status, result["y"].error, result["y"].attempts) == \
        ("failed", "RuntimeError: cannot decide", 0)
    assert statuses(result, "z") == {"z": ("skipped", "upstream")}


def test_when_on_a_root_task():
    @task(when=lambda: False)
    def never():
        return 1

    @task(when=lambda mode="on": mode == "on")
    def maybe():
        return 2

    result = run_flow([never, maybe])
    assert result.ok
    assert statuses(result, "never") == {"never": ("skipped", "condition")}
    assert result["maybe"].result == 2


def test_when_predicate_parameters_are_checked_at_decoration():
    with pytest.raises(CollectionError) as info:
        @task(when=lambda total, other: True)
        def f(total):
            return total
    msg = str(info.value)
    assert "task 'f'" in msg and "'other'" in msg and "not a parameter of the task" in msg
    with pytest.raises(TaskDefinitionError, match="when= takes a predicate"):
        task(name="s", when=True)(lambda: 1)


def test_condition_inside_a_subflow_does_not_skip_the_node(mods):
    _, path = mods.write_module("""
        from flowdeco import Flow, task

        route = Flow("route")

        @route.task(when=lambda value: value > 10)
        def big(value):
            return "big"

        @route.task(when=lambda value: value <= 10)
        def small(value):
            return "small"

        node = route.as_task("node")

        @task
        def value():
            return 3

        @task
        def after(node):
            return node
    """)
    result = run_flow(str(path))
    assert result.ok
    assert result["node"].status == "succeeded"
    assert result["after"].result == {"big": None, "small": "small"}
    assert statuses(result, "node.big") == {"node.big": ("skipped", "condition")}


# --------------------------------------------------------------------------- trigger rules


# the truth table of every rule over every upstream state: tests/test_trigger_rules.py


def test_trigger_rules_over_several_upstreams():
    @task
    def good():
        return 1

    @task
    def bad():
        raise ValueError("bad")

    @task(trigger="any_failed")
    def alert(good, bad, ctx):
        return sorted(n for n, o in ctx.upstream.items() if o.status == "failed")

    @task(trigger="none_failed")
    def publish(good, bad):
        return "published"

    @task(trigger="all_done", after=[alert, publish])
    def cleanup(ctx):
        return {n: o.status for n, o in ctx.upstream.items()}

    result = run_flow([good, bad, alert, publish, cleanup])
    assert result.status == "failed"
    assert result["alert"].result == ["bad"]
    assert statuses(result, "publish") == {"publish": ("skipped", "upstream")}
    assert result["cleanup"].result == {"alert": "succeeded", "publish": "skipped"}


def test_all_done_waits_for_every_dependency():
    order = []
    gate = threading.Event()

    @task
    def fast_fail():
        order.append("fail")
        raise ValueError("x")

    @task
    def slow():
        gate.wait(5)
        order.append("slow")
        return 1

    @task(trigger="all_done")
    def cleanup(fast_fail, slow):
        order.append("cleanup")
        return slow

    @task
    def opener(fast_fail):   # skipped at once when fast_fail fails: opens the gate
        return 1

    class Open:
        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_skipped" and event.task == "opener":
                gate.set()

    result = run_flow([fast_fail, slow, cleanup, opener], workers=2, plugins=[Open()])
    assert order == ["fail", "slow", "cleanup"]
    assert result["cleanup"].result == 1


# --------------------------------------------------------------------------- reason propagation


def test_condition_passes_on_and_mixes_with_upstream():
    @task(when=lambda: False)
    def off():
        return 1

    @task
    def broken():
        raise ValueError("x")

    @task
    def ok():
        return 1

    @task
    def child(off):
        return off

    @task
    def grandchild(child):
        return child

    @task
    def mixed(off, broken):        # a failure wins over a condition
        return 1

    @task
    def half(off, ok):             # only the condition: still a condition
        return 1

    @task(trigger="any_failed")
    def handler(ok):               # not met: trigger
        return 1

    @task
    def after_handler(handler):    # a trigger skip passes on as a plain skip (issue 20)
        return 1

    result = run_flow([off, broken, ok, child, grandchild, mixed, half, handler, after_handler])
    assert statuses(result, "off", "child", "grandchild", "mixed", "half", "handler",
                    "after_handler") == {
        "off": ("skipped", "condition"), "child": ("skipped", "condition"),
        "grandchild": ("skipped", "condition"), "mixed": ("skipped", "upstream"),
        "half": ("skipped", "condition"), "handler": ("skipped", "trigger"),
        "after_handler": ("skipped", "trigger")}


def test_stopped_passes_on(tmp_path):
    @task
    def bad():
        raise ValueError("x")

    @task(delay=3600)
    def later():
        return 1

    @task
    def after_later(later):
        return later

    @task(trigger="all_done")
    def cleanup(later):
        return 1

    from flowdeco import FakeClock
    result = run_flow([bad, later, after_later, cleanup], stop_on_error=True, clock=FakeClock())
    assert result.status == "failed"
    assert statuses(result, "later", "after_later", "cleanup") == {
        "later": ("skipped", "stopped"), "after_later": ("skipped", "stopped"),
        "cleanup": ("skipped", "stopped")}


# --------------------------------------------------------------------------- collect-only, graph

DYNAMIC_FLOW = """
    from flowdeco import task

    def is_big(scan_file):
        return sum(scan_file) > 10

    @task
    def files():
        return ["a", "b"]

    @task(map="files")
    def scan_file(files):
        return len(files)

    @task(when=is_big, cache=True, cache_ttl=60)
    def archive(scan_file):
        return 1

    @task(trigger="all_done", priority=2)
    def cleanup(archive):
        return 1
"""


def test_collect_only_shows_maps_conditions_and_trigger_rules(flows, capsys):
    path = flows.write(DYNAMIC_FLOW)
    assert cli.main([str(path), "--collect-only"]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()]
    assert "files" in lines
    assert "scan_file[*]  (map over files)  <- files" in lines
    assert "archive  <- scan_file  when=is_big  cached, ttl 60s" in lines
    assert "cleanup  <- archive  trigger=all_done  priority=2" in lines


def test_graph_shows_maps_conditions_and_trigger_rules(flows, capsys):
    path = flows.write(DYNAMIC_FLOW)
    assert cli.main([str(path), "--graph", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert 'n1[["scan_file[*]<br/>map over files"]]' in out
    assert "n0 -->|map| n1" in out
    assert 'n2["archive<br/>when=is_big<br/>cached, ttl 60s"]' in out
    assert 'n3["cleanup<br/>trigger=all_done"]' in out
    assert "n1 --> n2" in out
    assert cli.main([str(path), "--graph", "dot"]) == 0
    out = capsys.readouterr().out
    assert '"scan_file" [label="scan_file[*]\\nmap over files", shape=box3d];' in out
    assert '"files" -> "scan_file" [label="map"];' in out
    assert '"archive" [label="archive\\nwhen=is_big\\ncached, ttl 60s"];' in out
    assert '"files";' in out


def test_mermaid_escapes_lambda_names(flows, capsys):
    path = flows.write("""
        from flowdeco import task

        @task(when=lambda: True)
        def f():
            return 1
    """)
    assert cli.main([str(path), "--graph", "mermaid"]) == 0
    assert 'n0["f<br/>when=#lt;lambda#gt;"]' in capsys.readouterr().out


# --------------------------------------------------------------------------- options


def test_trigger_must_be_a_known_rule():
    with pytest.raises(TaskDefinitionError, match="trigger= must be one of 'all_succeeded'"):
        task(name="s", trigger="sometimes")(lambda: 1)


def test_cache_options_need_a_plugin_that_claims_them():
    @task(cache=True, cache_ttl=60)
    def cached():
        return 1

    spec = cached.__flowdeco_task__
    assert spec.uses == ("cache", "cache_ttl")
    with pytest.raises(CollectionError, match="sets cache= but no active plugin handles it"):
        run_flow([cached], disable=["state"])
    with pytest.raises(TaskDefinitionError, match="cache_ttl must be a number of seconds"):
        task(name="s", cache=True, cache_ttl=0)(lambda: 1)


def test_subflow_tasks_take_dynamic_options():
    sub = Flow("sub")

    @sub.task(trigger="all_done", when=lambda: True)
    def inner():
        return 1

    spec = inner.__flowdeco_task__
    assert (spec.trigger, spec.when is not None) == ("all_done", True)


# --------------------------------------------------------------------------- examples/dynamic.py

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dynamic.py"


def test_dynamic_example_maps_routes_aggregates_and_cleans_up():
    result = run_flow(str(EXAMPLE))
    assert result.ok, result.failed()
    files = ["customers.csv", "events.log", "notes.txt", "orders.csv"]
    assert [result[f"parse[{k}]"].result["file"] for k in range(4)] == files
    report = result["report"].result
    assert report["files"] == 4 and report["lines"] == 40 + 400 + 3000 + 5
    assert report["archived"] == ["events.log"]
    assert report["inlined"] == ["customers.csv", "notes.txt", "orders.csv"]
    cleanup = result["cleanup"].result
    assert cleanup["removed"] and not Path(cleanup["removed"]).exists()


def test_dynamic_example_routes_by_threshold():
    result = run_flow(str(EXAMPLE), params={"threshold": 10**9})
    assert result.ok
    assert statuses(result, "archive_big") == {"archive_big": ("skipped", "condition")}
    assert result["report"].result["archived"] == []
    assert result["cleanup"].status == "succeeded"


def test_dynamic_example_cleans_up_after_a_failure(tmp_path):
    (tmp_path / "good.txt").write_text("a\nb\n")
    (tmp_path / "bad.bin").write_bytes(b"\xff\xfe\xfa not utf-8")
    result = run_flow(str(EXAMPLE), params={"folder": str(tmp_path)})
    assert result.status == "failed"
    assert (result["parse[0]"].status, result["parse[0]"].attempts) == ("failed", 2)
    assert "UnicodeDecodeError" in result["parse[0]"].error
    assert result["parse[1]"].status == "succeeded"
    assert result["parse"].error == "MapFailed: 1 of 2 instances failed: parse[0]"
    assert statuses(result, "summary", "report") == {
        "summary": ("skipped", "upstream"), "report": ("skipped", "upstream")}
    cleanup = result["cleanup"]
    assert cleanup.status == "succeeded"
    assert cleanup.result == {"removed": None,
                              "upstream": {"workdir": "succeeded", "report": "skipped"}}
    assert (tmp_path / "good.txt").exists()   # not a temporary folder: left alone


def test_dynamic_example_from_the_cli(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "flowdeco", str(EXAMPLE), "--no-state",
                           "--log-format", "json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "12 succeeded" in proc.stdout
    assert '"task": "parse[3]"' in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_stop_in_the_middle_of_a_map_interrupts_it(executor):
    gate = threading.Event()

    class StopAfterOne:
        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_succeeded" and event.task == "scan[1]":
                run.stop()

        @hookimpl
        def flowdeco_report_flush(self, run):
            if run.stopping:
                gate.set()

    @task
    def files():
        return list(range(20))

    @task(map="files")
    def scan(files):
        if files >= 2:   # a worker that took the next instance already: wait for the stop
            assert gate.wait(10)
        return files

    result = run_flow([files, scan], executor=executor, workers=1, plugins=[StopAfterOne()])
    assert result.status == "failed"
    assert result["scan"].status == "interrupted"
    ran = [k for k in range(20) if result[f"scan[{k}]"].status == "succeeded"]
    assert ran[:2] == [0, 1] and ran == list(range(len(ran))) and len(ran) < 20
    assert {result[f"scan[{k}]"].reason for k in range(len(ran), 20)} == {"stopped"}
