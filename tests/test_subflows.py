"""Sub-flows: ``Flow.as_task`` nodes, qualified names, binding, nesting."""

from __future__ import annotations

import threading

import pytest

from flowdeco import (CycleError, DuplicateTaskError, Flow, MissingDependencyError,
                      TaskDefinitionError, task)
from flowdeco.testing import run_flow


def validation_flow(name="validation"):
    sub = Flow(name)

    @sub.task
    def check_format(data):
        return all(isinstance(x, int) for x in data)

    @sub.task
    def check_size(data, check_format):
        return check_format and len(data) > 0

    return sub


def test_node_names_are_qualified_and_result_is_the_sink():
    outer = Flow("outer")

    @outer.task
    def data():
        return [1, 2, 3]

    outer.add(validation_flow().as_task("validate"))

    @outer.task
    def report(validate):
        return f"valid={validate}"

    result = run_flow(outer)
    assert result.ok, result.outcomes
    assert list(result.outcomes) == ["data", "validate", "validate.check_format",
                                     "validate.check_size", "report"]
    assert result.results["validate.check_format"] is True
    assert result.results["validate"] is True
    assert result.results["report"] == "valid=True"
    assert result.outcomes["validate"].status == "succeeded"


def test_several_sinks_give_a_dict_by_inner_name():
    sub = Flow("many")

    @sub.task
    def left():
        return "L"

    @sub.task
    def right():
        return "R"

    outer = Flow("outer")
    outer.add(sub.as_task("both"))

    @outer.task
    def join(both):
        return both

    result = run_flow(outer)
    assert result.results["both"] == {"left": "L", "right": "R"}
    assert result.results["join"] == {"left": "L", "right": "R"}


def test_module_flow_can_use_a_node_in_a_list():
    sub = validation_flow()

    @task
    def data():
        return [5]

    node = sub.as_task("v")
    result = run_flow([data, node])
    assert result.results["v"] is True
    assert set(result.outcomes) == {"data", "v", "v.check_format", "v.check_size"}


def test_bind_maps_inner_parameters_to_outer_names():
    sub = validation_flow()
    outer = Flow("outer")

    @outer.task
    def good_users():
        return [1, 2]

    @outer.task
    def bad_users():
        return [1, "two"]

    outer.add(sub.as_task("check_good", bind={"data": "good_users"}))
    outer.add(sub.as_task("check_bad", bind={"data": "bad_users"}))

    result = run_flow(outer)
    assert result.ok, result.outcomes
    assert result.results["check_good"] is True
    assert result.results["check_bad"] is False
    assert result.results["check_good.check_format"] is True
    assert result.results["check_bad.check_format"] is False


def test_bind_to_unknown_name_is_missing_dependency():
    outer = Flow("outer")
    outer.add(validation_flow().as_task("v", bind={"data": "nope"}))
    with pytest.raises(MissingDependencyError) as info:
        run_flow(outer)
    assert "nope" in str(info.value)


def test_free_inner_parameter_without_binding_is_missing_dependency():
    outer = Flow("outer")
    outer.add(validation_flow().as_task("v"))
    with pytest.raises(MissingDependencyError) as info:
        run_flow(outer)
    assert "v.check_format" in str(info.value) and "data" in str(info.value)


def test_inner_parameter_from_run_params():
    outer = Flow("outer")
    outer.add(validation_flow().as_task("v"))
    result = run_flow(outer, params={"data": [1]})
    assert result.results["v"] is True


def test_nesting_to_any_depth():
    leaf = Flow("leaf")

    @leaf.task
    def deepest(seed):
        return seed * 2

    middle = Flow("middle")
    middle.add(leaf.as_task("l"))

    @middle.task
    def mid_sum(l):  # noqa: E741 - receives the leaf node's result
        return l + 1

    top = Flow("top")
    top.add(middle.as_task("m"))

    outer = Flow("outer")

    @outer.task
    def seed():
        return 10

    outer.add(top.as_task("t"))

    @outer.task
    def final(t):
        return t

    result = run_flow(outer)
    assert result.ok, result.outcomes
    assert result.results["t.m.l.deepest"] == 20
    assert result.results["t.m.mid_sum"] == 21
    assert result.results["t.m"] == 21
    assert result.results["t"] == 21
    assert result.results["final"] == 21
    assert {"t", "t.m", "t.m.l", "t.m.l.deepest", "t.m.mid_sum"} <= set(result.outcomes)


def test_ctx_task_is_the_qualified_name():
    sub = Flow("sub")
    seen = []

    @sub.task
    def who(ctx):
        seen.append(ctx.task)

    outer = Flow("outer")
    outer.add(sub.as_task("node"))
    run_flow(outer)
    assert seen == ["node.who"]


def test_flow_containing_itself_is_a_cycle():
    selfish = Flow("selfish")

    @selfish.task
    def a():
        pass

    selfish.add(selfish.as_task("me"))
    with pytest.raises(CycleError) as info:
        run_flow(selfish)
    assert "selfish" in str(info.value)


def test_mutually_nested_flows_are_a_cycle():
    f1, f2 = Flow("f1"), Flow("f2")
    f1.add(f2.as_task("two"))
    f2.add(f1.as_task("one"))
    with pytest.raises(CycleError) as info:
        run_flow(f1)
    cyc = info.value.cycle
    assert cyc[0] == cyc[-1] and set(cyc) == {"f1", "f2"}


def test_failed_inner_task_fails_the_node_and_skips_downstream():
    sub = Flow("sub")

    @sub.task
    def ok_inner():
        return 1

    @sub.task
    def bad_inner():
        raise ValueError("inner boom")

    @sub.task
    def after_bad(bad_inner):
        return 2

    outer = Flow("outer")
    outer.add(sub.as_task("node"))

    @outer.task
    def downstream(node):
        return node

    @outer.task
    def independent():
        return "still runs"

    result = run_flow(outer)
    assert result.status == "failed" and not result.ok
    oc = result.outcomes
    assert oc["node.ok_inner"].status == "succeeded"
    assert oc["node.bad_inner"].status == "failed"
    assert oc["node.bad_inner"].error == "ValueError: inner boom"
    assert oc["node.after_bad"].status == "skipped" and oc["node.after_bad"].reason == "upstream"
    assert oc["node"].status == "failed"
    assert "bad_inner" in oc["node"].error
    assert oc["downstream"].status == "skipped" and oc["downstream"].reason == "upstream"
    assert oc["independent"].status == "succeeded"


def test_node_after_orders_every_inner_task():
    order = []
    lock = threading.Lock()

    def rec(name):
        with lock:
            order.append(name)

    sub = Flow("sub")

    @sub.task
    def inner_a():
        rec("inner_a")

    @sub.task
    def inner_b():
        rec("inner_b")

    outer = Flow("outer")

    @outer.task
    def gate():
        rec("gate")

    outer.add(sub.as_task("node", after=[gate]))

    @outer.task(after=["node"])
    def closing():
        rec("closing")

    result = run_flow(outer, workers=4)
    assert result.ok, result.outcomes
    assert order[0] == "gate"
    assert order[-1] == "closing"
    assert sorted(order[1:3]) == ["inner_a", "inner_b"]


def test_after_a_node_object():
    order = []
    sub = Flow("sub")

    @sub.task
    def inner():
        order.append("inner")

    node = sub.as_task("node")

    @task(after=[node])
    def later():
        order.append("later")

    result = run_flow([later, node], workers=4)
    assert result.ok, result.outcomes
    assert order == ["inner", "later"]


def test_a_flow_backs_several_nodes_and_names_do_not_clash():
    sub = Flow("sub")

    @sub.task
    def same_name(ctx):
        return ctx.task

    outer = Flow("outer")

    @outer.task
    def same_name_outer():
        return 0

    outer.add(sub.as_task("x"))
    outer.add(sub.as_task("y"))
    result = run_flow(outer)
    assert result.results["x"] == "x.same_name"
    assert result.results["y"] == "y.same_name"


def test_duplicate_member_in_a_flow():
    f = Flow("f")

    @f.task
    def a():
        pass

    f.add(a)
    with pytest.raises(DuplicateTaskError):
        run_flow(f)

    g = Flow("g")
    g.add(f.as_task("n"))
    g.add(Flow("other").as_task("n"))
    with pytest.raises(DuplicateTaskError):
        run_flow(g)


def test_flow_add_plain_function_and_options():
    f = Flow("f")

    def plain():
        return 3

    def uses(plain):
        return plain * 2

    assert f.add(plain) is plain
    f.add(uses, priority=2)
    assert uses.__flowdeco_task__.priority == 2
    assert run_flow(f).results == {"plain": 3, "uses": 6}
    with pytest.raises(TaskDefinitionError):
        f.add(Flow("x").as_task("n"), priority=1)


def test_stop_on_error_inside_a_subflow():
    sub = Flow("sub")

    @sub.task(priority=10)
    def fails_first():
        raise RuntimeError("stop")

    @sub.task
    def never():
        raise AssertionError("must not start")

    outer = Flow("outer")
    outer.add(sub.as_task("node"))

    @outer.task
    def also_never():
        raise AssertionError("must not start")

    result = run_flow(outer, workers=1, stop_on_error=True)
    assert result.status == "failed"
    oc = result.outcomes
    assert oc["node.fails_first"].status == "failed"
    assert oc["node.never"].status == "skipped" and oc["node.never"].reason == "stopped"
    assert oc["also_never"].status == "skipped" and oc["also_never"].reason == "stopped"
    assert oc["node"].status in ("failed", "skipped")


def test_subflow_on_sync_executor():
    outer = Flow("outer")

    @outer.task
    def data():
        return [1]

    outer.add(validation_flow().as_task("v"))
    result = run_flow(outer, executor="sync")
    assert result.results["v"] is True


def test_node_whose_input_failed_is_skipped_not_succeeded():
    sub = Flow("sub")

    @sub.task
    def inner(data):
        return data

    outer = Flow("outer")

    @outer.task
    def data():
        raise ValueError("no data")

    outer.add(sub.as_task("node"))
    ran = []

    @outer.task
    def down(node):
        ran.append(node)

    result = run_flow(outer)
    oc = result.outcomes
    assert oc["data"].status == "failed"
    assert oc["node.inner"].status == "skipped" and oc["node.inner"].reason == "upstream"
    assert (oc["node"].status, oc["node"].reason) == ("skipped", "upstream")
    assert (oc["down"].status, oc["down"].reason) == ("skipped", "upstream")
    assert ran == []
    assert result.status == "failed"


def test_node_after_a_failed_task_is_skipped():
    sub = Flow("sub")

    @sub.task
    def inner():
        return "ran"

    outer = Flow("outer")

    @outer.task
    def gate():
        raise RuntimeError("closed")

    outer.add(sub.as_task("node", after=[gate]))
    ran = []

    @outer.task
    def down(node):
        ran.append(node)

    result = run_flow(outer)
    oc = result.outcomes
    assert oc["node.inner"].status == "skipped"
    assert (oc["node"].status, oc["node"].reason) == ("skipped", "upstream")
    assert oc["down"].status == "skipped"
    assert ran == []


def test_as_task_defaults_to_the_flow_name_and_node_can_be_a_target():
    sub = Flow("checks")

    @sub.task
    def one():
        return 1

    @sub.task
    def two(one):
        return one + 1

    node = sub.as_task()
    assert node.name == "checks"
    result = run_flow([node])
    assert result.results["checks"] == 2
    assert "checks.two" in result.outcomes

    as_target = run_flow(node)  # a node as the run target: its flow, unqualified
    assert as_target.results == {"one": 1, "two": 2}


def test_select_a_whole_node():
    outer = Flow("outer")

    @outer.task
    def data():
        return [1, 2]

    @outer.task
    def unrelated():
        raise AssertionError("not selected")

    outer.add(validation_flow().as_task("validate"))
    result = run_flow(outer, select="validate")
    assert result.ok, result.outcomes
    assert set(result.outcomes) == {"data", "validate", "validate.check_format",
                                    "validate.check_size"}
    assert result.results["validate"] is True
