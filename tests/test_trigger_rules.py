"""Trigger rules (issue 20): Airflow's full set, with Airflow's meanings.

The expected values are translated from Airflow's own trigger-rule tests and
docs (``TriggerRuleDep``: which rules wait, which fire early, which end a task
``upstream_failed`` -- flowdeco's skip reason ``upstream`` -- and which
``skipped`` -- flowdeco's reason ``trigger``).
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeco import TaskDefinitionError, task
from flowdeco.testing import run_flow

EXECUTORS = ["thread", "sync"]
#: how the one dependency ends: succeeded, failed, upstream-failed (skipped
#: "upstream"), skipped by a condition, skipped by a trigger rule
KINDS = ["succeeded", "failed", "upstream", "condition", "trigger"]
RUN = "run"

#: rule -> what ``down(up)`` does for each kind of ``up`` (run, or the skip reason)
TABLE = {
    #                              ok         failed      upstream    condition    trigger
    "all_succeeded":               [RUN,       "upstream", "upstream", "condition", "trigger"],
    "all_success":                 [RUN,       "upstream", "upstream", "condition", "trigger"],
    "all_failed":                  ["trigger", RUN,        RUN,        "trigger",   "trigger"],
    "all_done":                    [RUN,       RUN,        RUN,        RUN,         RUN],
    "all_skipped":                 ["trigger", "trigger",  "trigger",  RUN,         RUN],
    "one_success":                 [RUN,       "upstream", "upstream", "trigger",   "trigger"],
    "one_failed":                  ["trigger", RUN,        RUN,        "trigger",   "trigger"],
    "any_failed":                  ["trigger", RUN,        RUN,        "trigger",   "trigger"],
    "one_done":                    [RUN,       RUN,        "trigger",  "trigger",   "trigger"],
    "none_failed":                 [RUN,       "upstream", "upstream", RUN,         RUN],
    "none_failed_min_one_success": [RUN,       "upstream", "upstream", "trigger",   "trigger"],
    "none_skipped":                [RUN,       RUN,        RUN,        "trigger",   "trigger"],
}


def statuses(result, *names):
    return {n: (result[n].status, result[n].reason) for n in names}


def upstream_of(kind):
    """Tasks that end ``up`` the given way (``up`` last)."""
    if kind == "succeeded":
        @task
        def up():
            return "value"
        return [up]
    if kind == "failed":
        @task
        def up():
            raise ValueError("up failed")
        return [up]
    if kind == "condition":
        @task(when=lambda: False)
        def up():
            return "value"
        return [up]
    if kind == "trigger":
        @task
        def root():
            return 1

        @task(trigger="one_failed")   # nothing failed: skipped (trigger)
        def up(root):
            return "value"
        return [root, up]

    @task
    def root():
        raise ValueError("root failed")

    @task
    def up(root):
        return "value"
    return [root, up]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("rule, kind, expected", [
    (rule, kind, row[k]) for rule, row in TABLE.items() for k, kind in enumerate(KINDS)])
def test_rule_over_each_upstream_state(executor, rule, kind, expected):
    @task(trigger=rule)
    def down(up, ctx):
        return (up, ctx.upstream["up"].status, ctx.upstream["up"].reason)

    @task
    def after(down):               # all_succeeded: how down's outcome passes on
        return down

    result = run_flow([*upstream_of(kind), down, after], executor=executor)
    up, out = result["up"], result["down"]
    assert (up.status, up.reason) == {
        "succeeded": ("succeeded", None), "failed": ("failed", None),
        "upstream": ("skipped", "upstream"), "condition": ("skipped", "condition"),
        "trigger": ("skipped", "trigger")}[kind]
    if expected == RUN:
        assert out.status == "succeeded", out
        # a task that runs despite its upstream receives None for it, and its outcome
        assert out.result == (up.result, up.status, up.reason)
        assert result["after"].status == "succeeded"
    else:
        assert (out.status, out.reason) == ("skipped", expected)
        # plain skips pass on as skips; only a failure upstream passes on as "upstream"
        assert (result["after"].status, result["after"].reason) == ("skipped", expected)


@pytest.mark.parametrize("rule, kinds, expected", [
    # Airflow: one_success with no success -> upstream_failed, unless all skipped
    ("one_success", ["failed", "condition"], "upstream"),
    ("one_success", ["condition", "trigger"], "trigger"),
    ("one_success", ["failed", "succeeded"], RUN),
    ("one_failed", ["succeeded", "upstream"], RUN),
    ("one_done", ["upstream", "condition"], "trigger"),
    ("one_done", ["upstream", "failed"], RUN),
    ("all_failed", ["failed", "upstream"], RUN),
    ("all_failed", ["failed", "condition"], "trigger"),
    ("all_skipped", ["condition", "trigger"], RUN),
    ("all_skipped", ["condition", "succeeded"], "trigger"),
    ("none_failed", ["succeeded", "condition"], RUN),
    ("none_failed", ["condition", "upstream"], "upstream"),
    # the usual join after a branch: at least one branch ran, none failed
    ("none_failed_min_one_success", ["condition", "succeeded"], RUN),
    ("none_failed_min_one_success", ["condition", "condition"], "trigger"),
    ("none_failed_min_one_success", ["succeeded", "failed"], "upstream"),
    ("none_skipped", ["succeeded", "failed"], RUN),
    ("none_skipped", ["succeeded", "condition"], "trigger"),
    ("all_succeeded", ["condition", "trigger"], "trigger"),     # strongest plain reason
    ("all_succeeded", ["trigger", "failed"], "upstream"),
])
def test_rule_over_two_upstreams(rule, kinds, expected):
    def down(a, b):
        return [a, b]

    result = run_flow([*_two(kinds), task(name="down", trigger=rule)(down)])
    out = result["down"]
    if expected == RUN:
        assert out.status == "succeeded", out
        if rule.startswith("one_"):  # may start before the other one ended: None for it
            assert all(got in (None, result[n].result) for got, n in zip(out.result, "ab"))
        else:
            assert out.result == [result[n].result for n in "ab"]
    else:
        assert (out.status, out.reason) == ("skipped", expected)


def _two(kinds):
    """``a`` and ``b`` ending as ``kinds`` (with their own roots), for ``down(a, b)``."""
    made = []
    for name, kind in zip("ab", kinds):
        if kind == "succeeded":
            made.append(task(name=name)(lambda: "value"))
        elif kind == "failed":
            def boom():
                raise ValueError("failed")
            made.append(task(name=name)(boom))
        elif kind == "condition":
            made.append(task(name=name, when=lambda: False)(lambda: "value"))
        elif kind == "trigger":
            made.append(task(name=f"{name}_root")(lambda: 1))
            made.append(task(name=name, trigger="one_failed", after=[f"{name}_root"])(
                lambda: "value"))
        else:  # upstream
            def root_fails():
                raise ValueError("root failed")
            made.append(task(name=f"{name}_root")(root_fails))
            made.append(task(name=name, after=[f"{name}_root"])(lambda: "value"))
    return made


# --------------------------------------------------------------------------- the two bugs


def test_none_failed_chain_below_a_failure_is_upstream_failed():
    """fail -> A(none_failed) -> B(none_failed): A is upstream-failed, so B does not run
    (it used to: A was skipped as ``trigger``, a plain skip, and B ran)."""
    @task
    def fail():
        raise ValueError("x")

    @task(trigger="none_failed")
    def a(fail):
        return 1

    @task(trigger="none_failed")
    def b(a):
        return 2

    result = run_flow([fail, a, b])
    assert statuses(result, "a", "b") == {"a": ("skipped", "upstream"),
                                          "b": ("skipped", "upstream")}


def test_a_plain_trigger_skip_cascades_as_a_skip():
    """ok -> alert(any_failed, unmet) -> x(all_succeeded) -> final(none_failed): x is
    skipped as ``trigger`` (not ``upstream``), so final runs, as in Airflow."""
    @task
    def ok():
        return 1

    @task(trigger="any_failed")
    def alert(ok):
        return "paged"

    @task
    def x(alert):
        return alert

    @task(trigger="none_failed")
    def final(x):
        return "done"

    result = run_flow([ok, alert, x, final])
    assert result.ok
    assert statuses(result, "alert", "x") == {"alert": ("skipped", "trigger"),
                                              "x": ("skipped", "trigger")}
    assert (result["final"].status, result["final"].result) == ("succeeded", "done")


# --------------------------------------------------------------------------- firing early


def test_one_success_fires_without_waiting_for_the_others():
    """The slow dependency only finishes once the one_success task has run."""
    released = threading.Event()

    @task
    def fast():
        return "fast"

    @task
    def slow():
        assert released.wait(30), "one_success waited for the slow dependency"
        return "slow"

    @task(trigger="one_success")
    def first(fast, slow, ctx):
        seen = sorted(ctx.upstream)
        released.set()
        return (fast, slow, seen)

    @task
    def after(first, slow):
        return (first, slow)

    result = run_flow([fast, slow, first, after], workers=2)
    assert result.ok, result
    # the unfinished dependency's parameter is None; ctx.upstream lists the ended ones
    assert result["first"].result == ("fast", None, ["fast"])
    assert result["after"].result == (("fast", None, ["fast"]), "slow")


def test_one_failed_fires_at_the_first_failure():
    released = threading.Event()

    @task
    def broken():
        raise ValueError("x")

    @task
    def slow():
        assert released.wait(30), "one_failed waited for the slow dependency"
        return "slow"

    @task(trigger="one_failed", after=[broken, slow])
    def alert():
        released.set()
        return "paged"

    result = run_flow([broken, slow, alert], workers=2)
    assert (result["alert"].status, result["alert"].result) == ("succeeded", "paged")
    assert result["slow"].status == "succeeded"


def test_one_done_fires_and_a_task_started_early_ends_before_its_dependency():
    released = threading.Event()
    order = []

    @task
    def quick():
        return 1

    @task
    def slow():
        assert released.wait(30)
        order.append("slow")
        return 2

    @task(trigger="one_done")
    def watch(quick, slow):
        order.append("watch")
        released.set()
        return (quick, slow)

    result = run_flow([quick, slow, watch], workers=2)
    assert result.ok
    assert order == ["watch", "slow"]
    assert result["watch"].result == (1, None)


def test_early_skip_does_not_wait_either():
    """none_failed is decided (upstream) by the first failure, like all_succeeded."""
    released = threading.Event()

    @task
    def broken():
        raise ValueError("x")

    @task
    def slow():
        assert released.wait(30), "none_failed waited for the slow dependency"
        return 1

    @task(trigger="none_failed")
    def publish(broken, slow):
        return 1

    @task
    def opener(publish):   # skipped (upstream) as soon as publish is: opens the gate
        return 1

    from flowdeco import hookimpl

    class Open:
        @hookimpl
        def flowdeco_report(self, run, event):
            if event.name == "task_skipped" and event.task == "opener":
                released.set()

    result = run_flow([broken, slow, publish, opener], workers=2, plugins=[Open()])
    assert statuses(result, "publish", "opener") == {"publish": ("skipped", "upstream"),
                                                     "opener": ("skipped", "upstream")}
    assert result["slow"].status == "succeeded"


def test_always_runs_at_once():
    released = threading.Event()

    @task
    def slow():
        assert released.wait(30), "always waited for its dependency"
        return 1

    @task(trigger="always")
    def heartbeat(slow):
        released.set()
        return slow

    result = run_flow([slow, heartbeat], workers=2)
    assert result.ok
    assert result["heartbeat"].result is None
    assert result["slow"].result == 1


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("rule", sorted(TABLE) + ["always"])
def test_a_task_with_no_dependencies_runs_whatever_its_rule(executor, rule):
    @task(trigger=rule)
    def alone():
        return "ran"

    result = run_flow([alone], executor=executor)
    assert (result["alone"].status, result["alone"].result) == ("succeeded", "ran")


def test_when_sees_none_for_a_dependency_that_has_not_ended():
    released = threading.Event()
    seen = []

    @task
    def fast():
        return 1

    @task
    def slow():
        assert released.wait(30)
        return 2

    def check(fast, slow):
        seen.append((fast, slow))
        released.set()
        return True

    @task(trigger="one_success", when=check)
    def first(fast, slow):
        return fast

    result = run_flow([fast, slow, first], workers=2)
    assert result.ok
    assert seen == [(1, None)]


# --------------------------------------------------------------------------- names


def test_aliases_are_stored_as_the_rule_they_name():
    assert task(name="a", trigger="all_success")(lambda: 1).__flowdeco_task__.trigger \
        == "all_succeeded"
    assert task(name="b", trigger="any_failed")(lambda: 1).__flowdeco_task__.trigger \
        == "one_failed"


def test_an_unknown_rule_lists_the_rules():
    with pytest.raises(TaskDefinitionError,
                       match="trigger= must be one of 'all_succeeded', 'all_failed'.*"
                             "got 'sometimes'"):
        task(name="s", trigger="sometimes")(lambda: 1)


# --------------------------------------------------------------------------- any graph


ALL_RULES = sorted(set(TABLE) | {"always"})


def _reference(rule, deps):
    """Airflow's table over the dependencies' final (status, reason): "run" or the skip
    reason -- written from the docs, independently of flowdeco.engine.dynamic."""
    if not deps or rule in ("all_done", "always"):
        return RUN
    ok = [s == "succeeded" for s, _ in deps]
    failed = [s == "failed" for s, _ in deps]
    upfailed = [(s, r) == ("skipped", "upstream") for s, r in deps]
    skipped = [s == "skipped" and r != "upstream" for s, r in deps]
    bad = [f or u for f, u in zip(failed, upfailed)]
    if rule in ("all_succeeded", "all_success"):
        if all(ok):
            return RUN
        if any(bad):
            return "upstream"
        reasons = {r for (s, r), k in zip(deps, skipped) if k}
        return "trigger" if "trigger" in reasons else "condition"
    if rule == "all_failed":
        return RUN if all(bad) else "trigger"
    if rule == "all_skipped":
        return RUN if all(skipped) else "trigger"
    if rule == "one_success":
        return RUN if any(ok) else "trigger" if all(skipped) else "upstream"
    if rule in ("one_failed", "any_failed"):
        return RUN if any(bad) else "trigger"
    if rule == "one_done":
        return RUN if any(ok) or any(failed) else "trigger"
    if rule == "none_failed":
        return "upstream" if any(bad) else RUN
    if rule == "none_failed_min_one_success":
        return "upstream" if any(bad) else "trigger" if all(skipped) else RUN
    if rule == "none_skipped":
        return "trigger" if any(skipped) else RUN
    raise AssertionError(rule)


@st.composite
def graphs(draw):
    n = draw(st.integers(2, 8))
    spec = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        spec.append((sorted(deps), draw(st.sampled_from(ALL_RULES)),
                     draw(st.sampled_from(["ok", "ok", "fail", "condition"]))))
    return spec


@settings(max_examples=60, deadline=None)
@given(spec=graphs(), executor=st.sampled_from(EXECUTORS))
def test_any_graph_matches_airflows_table(spec, executor):
    """Random graphs of random rules: every task ends as the table says, whichever order
    the tasks ran in (rules firing early included)."""
    tasks = []
    for i, (deps, rule, plan) in enumerate(spec):
        def body(plan=plan):
            if plan == "fail":
                raise ValueError("planned failure")
            return 1
        tasks.append(task(name=f"t{i}", after=[f"t{d}" for d in deps], trigger=rule,
                          when=(lambda: False) if plan == "condition" else None)(body))
    result = run_flow(tasks, executor=executor, workers=3)
    final = {}
    for i, (deps, rule, plan) in enumerate(spec):
        verdict = _reference(rule, [final[d] for d in deps])
        if verdict == RUN:
            expected = {"ok": ("succeeded", None), "fail": ("failed", None),
                        "condition": ("skipped", "condition")}[plan]
        else:
            expected = ("skipped", verdict)
        out = result[f"t{i}"]
        assert (out.status, out.reason) == expected, (i, spec)
        final[i] = expected


def test_a_mapped_task_with_trigger_always_is_refused_when_defined():
    """``always`` starts a task when the run starts, before the result it maps over exists:
    it could only ever fail at run time, so the decorator says so."""
    from flowdeco import TaskDefinitionError, task

    with pytest.raises(TaskDefinitionError, match="trigger='always' starts the task before"):
        @task(map="items", trigger="always")
        def each(items):
            return items
