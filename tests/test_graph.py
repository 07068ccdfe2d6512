"""The dependency graph: vertices, edges, order, cycles and graph errors."""

from __future__ import annotations

import pytest

from flowdeco import (CollectionError, CycleError, DuplicateTaskError, FlowError,
                      MissingDependencyError, UsageError, run, task)
from flowdeco.graph import build_graph, coerce_param


def make(name, params=(), **opts):
    """A task named ``name`` whose parameters are ``params`` (returns its name)."""
    ns: dict = {}
    exec(f"def {name}({', '.join(params)}):\n    return {name!r}\n", ns)
    return task(**opts)(ns[name])


def edges(graph):
    return {(graph.vertices[d].name, v.name) for v in graph for d in v.deps}


def rotations(cycle):
    core = cycle[:-1]
    return [core[i:] + core[:i] + [core[i]] for i in range(len(core))]


# --------------------------------------------------------------------------- building


def test_parameters_become_data_dependencies():
    a = make("a")
    b = make("b", ["a"])
    c = make("c", ["a", "b", "ctx"])
    g = build_graph("g", [a, b, c])
    assert g.names == ["a", "b", "c"]
    assert edges(g) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert g["c"].args == (("a", 0), ("b", 1))
    assert g["c"].wants_ctx and not g["b"].wants_ctx
    assert g.order == [0, 1, 2]


def test_after_adds_ordering_only_dependencies():
    a = make("a")
    b = make("b", after=[a])
    c = make("c", after=["b"])
    g = build_graph("g", [c, b, a])
    assert edges(g) == {("a", "b"), ("b", "c")}
    assert g["b"].args == () and g["c"].args == ()
    assert [g.vertices[i].name for i in g.order] == ["a", "b", "c"]


def test_order_ties_follow_declaration_order():
    names = ["zeta", "alpha", "mid", "beta"]
    g = build_graph("g", [make(n) for n in names])
    assert [g.vertices[i].name for i in g.order] == names


def test_run_params_and_defaults_are_not_dependencies():
    f = make("f", ["day", "limit=3"])
    g = build_graph("g", [f], params={"day": "x"})
    assert g["f"].deps == ()
    assert g["f"].consts == {"day": "x"}


def test_duplicate_dependency_is_one_edge():
    a = make("a")
    b = make("b", ["a"], after=[a, "a"])
    g = build_graph("g", [a, b])
    assert g["b"].deps == (0,)


def test_ancestors_and_descendants():
    a, b = make("a"), make("b", ["a"])
    c, d = make("c", ["b"]), make("d")
    g = build_graph("g", [a, b, c, d])
    names = lambda ix: {g.vertices[i].name for i in ix}  # noqa: E731
    assert names(g.ancestors([g.by_name["c"]])) == {"a", "b", "c"}
    assert names(g.descendants([g.by_name["a"]])) == {"a", "b", "c"}
    assert names(g.descendants([g.by_name["d"]])) == {"d"}


# --------------------------------------------------------------------------- cycles


def test_three_cycle_names_the_path():
    a = make("a", ["c"])
    b = make("b", ["a"])
    c = make("c", ["b"])
    with pytest.raises(CycleError) as info:
        build_graph("g", [a, b, c])
    err = info.value
    assert err.cycle in rotations(["a", "b", "c", "a"])
    assert " -> ".join(err.cycle) in str(err)
    assert isinstance(err, FlowError) and isinstance(err, CollectionError)


def test_cycle_message_reads_in_the_direction_of_work():
    # b feeds c, c feeds d, d feeds b; "a" is upstream and not part of the cycle
    a = make("a")
    b = make("b", ["a", "d"])
    c = make("c", ["b"])
    d = make("d", ["c"])
    e = make("e", ["d"])
    with pytest.raises(CycleError) as info:
        build_graph("g", [a, b, c, d, e])
    assert info.value.cycle in rotations(["b", "c", "d", "b"])
    assert "a" not in info.value.cycle and "e" not in info.value.cycle


def test_cycle_through_after():
    a = make("a", after=["b"])
    b = make("b", after=["a"])
    with pytest.raises(CycleError) as info:
        build_graph("g", [a, b])
    assert info.value.cycle in rotations(["a", "b", "a"])


def test_self_dependency_is_a_cycle():
    a = make("a", ["a"])
    with pytest.raises(CycleError) as info:
        build_graph("g", [a])
    assert info.value.cycle == ["a", "a"]

    b = make("b", after=["b"])
    with pytest.raises(CycleError):
        build_graph("g", [b])


def test_long_cycle_does_not_recurse():
    n = 3000
    fns = [make(f"t{i}", [f"t{(i - 1) % n}"]) for i in range(n)]
    with pytest.raises(CycleError) as info:
        build_graph("g", fns)
    assert len(info.value.cycle) == n + 1


def test_cycle_is_raised_by_run_before_anything_runs():
    ran = []

    @task
    def innocent():
        ran.append("innocent")

    a = make("a", ["b"])
    b = make("b", ["a"])
    with pytest.raises(CycleError):
        run([innocent, a, b], state_dir=None)
    assert ran == []


# --------------------------------------------------------------------------- other errors


def test_unknown_after_name_is_missing_dependency():
    load = make("load")
    notify = make("notify", after=["lod"])
    with pytest.raises(MissingDependencyError) as info:
        build_graph("g", [load, notify])
    err = info.value
    assert err.task == "notify" and err.name == "lod"
    assert "load" in err.suggestions
    assert "notify" in str(err) and "lod" in str(err) and "load" in str(err)


def test_unknown_parameter_is_missing_dependency():
    f = make("f", ["nothing_like_it"])
    with pytest.raises(MissingDependencyError) as info:
        build_graph("g", [f])
    assert info.value.task == "f" and info.value.name == "nothing_like_it"
    assert "'f'" in str(info.value) and "nothing_like_it" in str(info.value)


def test_after_an_undecorated_function_is_a_collection_error():
    def plain():
        pass

    f = make("f", after=[plain])
    with pytest.raises(CollectionError):
        build_graph("g", [f])


def test_duplicate_names_are_refused():
    @task(name="load")
    def load_a():
        pass

    @task(name="load")
    def load_b():
        pass

    with pytest.raises(DuplicateTaskError) as info:
        build_graph("g", [load_a, load_b])
    msg = str(info.value)
    assert info.value.name == "load"
    assert "load_a" in msg and "load_b" in msg
    with pytest.raises(DuplicateTaskError):
        run([load_a, load_b], state_dir=None)


def test_explicit_name_is_used_for_dependencies():
    @task(name="source")
    def make_source():
        return 5

    @task
    def use(source):
        return source + 1

    result = run([make_source, use], state_dir=None)
    assert result.results == {"source": 5, "use": 6}


# --------------------------------------------------------------------------- run params


@pytest.mark.parametrize("annotation, text, expected", [
    (int, "-7", -7), ("int", "7", 7), (float, "1e3", 1000.0), (bool, "On", True),
    (bool, "off", False), (None, "x", "x"),
])
def test_coerce_param(annotation, text, expected):
    assert coerce_param("t", "p", text, annotation) == expected


def test_coerce_param_rejects_bad_values():
    with pytest.raises(UsageError) as info:
        coerce_param("t", "p", "nope", int)
    assert "'t'" in str(info.value) and "p" in str(info.value)


# --------------------------------------------------------------------------- indexes


def test_using_lists_the_tasks_that_set_an_option_in_declaration_order():
    a = make("a", retries=2)
    b = make("b", ["a"])
    c = make("c", ["a"], retries=1, timeout=5)
    d = make("d", ["c"], color="blue")            # an option for a third-party plugin
    g = build_graph("g", [a, b, c, d])
    assert [v.name for v in g.using("retries")] == ["a", "c"]
    assert [v.name for v in g.using("timeout")] == ["c"]
    assert [v.name for v in g.using("color")] == ["d"]
    assert g.using("circuit") == ()
    assert sorted(g.options_used) == ["color", "retries", "timeout"]
    # the same index for a graph narrowed by -k (built from vertices, not by the builder)
    sub = g.subgraph(g.ancestors([g.by_name["c"]]))
    assert [v.name for v in sub.using("retries")] == ["a", "c"]
    assert sorted(sub.options_used) == ["retries", "timeout"]


def test_dynamic_lists_subflow_nodes_and_gated_tasks():
    from flowdeco import Flow
    inner = Flow("inner")

    @inner.task
    def check():
        return 1

    src = make("src")
    each = make("each", ["src"], map="src")
    gated = make("gated", ["src"], when=lambda src: bool(src))
    done = make("done", ["src"], trigger="all_done")
    plain = make("plain", ["src"])
    g = build_graph("g", [src, each, gated, done, plain, inner.as_task("node")])
    assert sorted(g.vertices[i].name for i in g.dynamic) == ["done", "each", "gated", "node"]


def test_an_upstream_first_declaration_is_its_own_order_and_otherwise_kahn_decides():
    a, b, c = make("a"), make("b", ["a"]), make("c", ["b"])
    g = build_graph("g", [a, b, c])
    assert g.declared_in_order and g.order == [0, 1, 2]
    g = build_graph("g", [c, b, a])                 # declared downstream-first
    assert not g.declared_in_order
    assert [g.vertices[i].name for i in g.order] == ["a", "b", "c"]
    assert g.succs[g.by_name["a"]] == (g.by_name["b"],)
