"""Graph build fast paths, and what a build leaves in memory and in the collector.

``GraphBuilder._declare`` resolves most root-flow tasks as it declares them;
the general path (``resolve_early = False``) is ``_resolve_task`` for every
task.  ``_list_target`` accepts a list of decorated functions without its
per-item loop.  Both shortcuts must give the same graph (or the same error)
as the general code on any flow (property tests).
"""

from __future__ import annotations

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdeco import task
from flowdeco.collect import resolve_target
from flowdeco.errors import FlowError
from flowdeco.graph import Graph, GraphBuilder, build_graph, gc_paused
from flowdeco.task import SPEC_ATTR, make_spec

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class GeneralBuilder(GraphBuilder):
    """The builder with every task resolved by ``_resolve_task`` and names indexed by Graph."""

    resolve_early = False

    def build(self, members):
        graph = super().build(members)
        return Graph(graph.name, graph.vertices, None, None)


@st.composite
def flows(draw):
    """Task functions named t0..t{n-1}, each parameter one of: an earlier task, a later
    task, itself, a run parameter, a defaulted name, an unknown name, or ``ctx``; some
    with ``after=`` or ``map=``."""
    n = draw(st.integers(1, 12))
    fns = []
    for j in range(n):
        kinds = draw(st.lists(st.sampled_from(
            ["earlier", "earlier", "earlier", "later", "self", "param", "default", "unknown",
             "ctx"]), max_size=4))
        params: list[str] = []
        for k in kinds:
            if k == "earlier" and j:
                name = f"t{draw(st.integers(0, j - 1))}"
            elif k == "later" and j < n - 1:
                name = f"t{draw(st.integers(j + 1, n - 1))}"
            elif k == "self":
                name = f"t{j}"
            elif k == "param":
                name = "size"
            elif k == "default":
                name = "opt=1"
            elif k == "unknown":
                name = "nothing_here"
            elif k == "ctx":
                name = "ctx"
            else:
                continue
            if name.split("=")[0] not in [p.split("=")[0] for p in params]:
                params.append(name)
        params.sort(key=lambda p: "=" in p)  # defaults last
        ns: dict = {}
        exec(f"def t{j}({', '.join(params)}):\n    return 1\n", ns)
        options: dict = {}
        if j and draw(st.integers(0, 5)) == 0:
            options["after"] = [f"t{draw(st.integers(0, n - 1))}"]
        data = [p for p in params if p.startswith("t")]
        if data and draw(st.integers(0, 5)) == 0:
            options["map"] = draw(st.sampled_from(data))
        fns.append(task(**options)(ns[f"t{j}"]))
    order = draw(st.permutations(range(n)))
    return [fns[i] for i in order]


def _outcome(builder_cls, fns, params):
    try:
        with gc_paused():
            return builder_cls("f", params).build(list(fns))
    except FlowError as exc:
        return (type(exc), str(exc))


def _shape(graph):
    if not isinstance(graph, Graph):
        return graph
    return ([(v.index, v.name, v.kind, v.deps, v.argnames, v.argdeps, dict(v.consts), v.wants_ctx,
              v.fn, v.priority) for v in graph.vertices],
            list(graph.by_name.items()), graph.order, graph.declared_in_order, graph.dynamic,
            {o: [v.index for v in graph.using(o)] for o in graph.options_used})


@SETTINGS
@given(fns=flows(), with_param=st.booleans())
def test_root_flow_fast_path_builds_the_general_graph(fns, with_param):
    params = {"size": "3"} if with_param else {}
    fast = _outcome(GraphBuilder, fns, params)
    general = _outcome(GeneralBuilder, fns, params)
    assert _shape(fast) == _shape(general)
    if isinstance(fast, Graph):  # a vertex called by position takes exactly its results
        for v in fast.vertices:
            if v.positional:
                code = v.fn.__code__
                assert not v.consts and not v.wants_ctx and not code.co_kwonlyargcount
                assert code.co_varnames[:code.co_argcount] == v.argnames
                assert len(v.argdeps) == len(v.argnames)
    if isinstance(fast, Graph):  # and build_graph (the public entry) is the fast builder
        assert _shape(build_graph("f", list(fns), params)) == _shape(fast)


@SETTINGS
@given(fns=flows(), extra=st.sampled_from([None, "plain", "object", "class"]))
def test_list_target_checked_while_declaring_matches_the_item_by_item_check(fns, extra):
    """A list target's items are checked while the graph is declared (one pass over
    the list): the graph, or the error, is the one of converting item by item first."""
    items = list(fns)
    if extra == "plain":
        def plain():
            return 1
        items.append(plain)       # a plain function: gets a default spec
    elif extra == "object":
        items.append(42)          # not a task: refused naming it
    elif extra == "class":
        items.append(dict)        # callable, but a class: refused naming it
    target = resolve_target(items)
    assert target.loose and target.members == tuple(items)
    try:
        got = build_graph(target.name, target.members, {"size": "3"}, loose=True)
    except FlowError as exc:
        if extra in ("object", "class"):
            assert str(exc) == f"cannot run {items[-1]!r}: it is not a task function"
            return
        got = (type(exc), str(exc))
    assert extra not in ("object", "class") or not isinstance(got, Graph)
    converted = [i if getattr(i, SPEC_ATTR, None) is not None else make_spec(i) for i in items]
    expected = _outcome(GraphBuilder, converted, {"size": "3"})
    assert _shape(got) == _shape(expected)


def test_fast_path_is_taken_for_a_flow_declared_upstream_first(monkeypatch):
    """Guards the benchmark path: an upstream-first flow never calls _resolve_task."""
    @task
    def a():
        return 1

    @task
    def b(a):
        return a

    @task
    def c(a, b):
        return a + b

    @task
    def d(a, b, c):
        return a + b + c

    def refuse(*args):
        raise AssertionError("general path taken")

    monkeypatch.setattr(GraphBuilder, "_resolve_task", refuse)
    graph = build_graph("f", [a, b, c, d])
    assert [v.argdeps for v in graph.vertices] == [(), (0,), (0, 1), (0, 1, 2)]
    assert graph.declared_in_order and graph.by_name == {"a": 0, "b": 1, "c": 2, "d": 3}
    with pytest.raises(AssertionError, match="general path"):
        build_graph("f", [b, a])  # declared downstream first: the general path


def _chain_tasks(n):
    fns = []
    for j in range(n):
        ns: dict = {}
        exec(f"def c{j}({'c%d' % (j - 1) if j else ''}):\n    return 1\n", ns)
        fns.append(task(ns[f"c{j}"]))
    return fns


def test_build_moves_the_graph_to_the_oldest_generation_unscanned():
    """The first young collection after a build would otherwise scan every vertex."""
    import gc
    fns = _chain_tasks(50)
    gc.collect()
    graph = build_graph("f", fns)
    young = {id(o) for o in gc.get_objects(generation=0)} | \
        {id(o) for o in gc.get_objects(generation=1)}
    assert not any(id(v) in young for v in graph.vertices)
    assert any(v is graph.vertices[7] for v in gc.get_objects(generation=2))
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_build_leaves_objects_the_program_froze_frozen(monkeypatch):
    import gc
    fns = _chain_tasks(5)
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        thawed = []
        monkeypatch.setattr(gc, "unfreeze", lambda: thawed.append(1))
        build_graph("f", fns)
        monkeypatch.undo()
        assert not thawed  # not unfrozen by the build
        # (not "== frozen": a thread an earlier test left may free a frozen object meanwhile)
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()


def test_build_restores_a_disabled_collector_and_promotes_nothing_on_error():
    import gc
    fns = _chain_tasks(3)
    gc.disable()
    try:
        build_graph("f", fns)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(FlowError):
        build_graph("f", [fns[1]])  # c1 needs c0: a missing dependency
    assert gc.isenabled()


def test_tasks_without_tags_or_options_share_empty_ones():
    """A decorated task's memory: no empty frozenset/dict of its own (216 + 64 bytes)."""
    a, b = _chain_tasks(2)
    sa, sb = a.__flowdeco_task__, b.__flowdeco_task__
    assert sa.tags == frozenset() and sa.options == {}
    assert sa.tags is sb.tags and sa.options is sb.options

    @task(tags=["x"], team="core")
    def tagged():
        return 1

    spec = tagged.__flowdeco_task__
    assert spec.tags == frozenset({"x"}) and spec.options == {"team": "core"}
    assert spec.tags is not sa.tags and spec.options is not sa.options


def test_successor_lists_go_to_the_oldest_generation_unscanned():
    import gc
    graph = build_graph("f", _chain_tasks(30))
    gc.collect()
    succs = graph.succs
    young = {id(o) for o in gc.get_objects(generation=0)} | \
        {id(o) for o in gc.get_objects(generation=1)}
    assert id(succs) not in young and succs[3] == (4,)
    assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("builder", [GraphBuilder, GeneralBuilder])
def test_imported_tasks_join_the_graph_once(builder):
    """A task found in a member's globals (imported, not collected) is declared in phase 2."""
    ns: dict = {"task": task}
    exec("@task\ndef base():\n    return 1\n"
         "@task\ndef shared(base):\n    return base + 1\n"
         "@task(after=['shared'])\ndef first(shared):\n    return shared\n"
         "@task\ndef second(first, shared):\n    return first + shared\n", ns)
    graph = builder("f", {}).build([ns["first"], ns["second"]])
    assert graph.names == ["first", "second", "shared", "base"]
    assert graph["first"].deps == (2,) and graph["second"].argdeps == (0, 2)
    assert graph["shared"].argdeps == (3,) and not graph.declared_in_order
    assert graph.order == [3, 2, 0, 1]
