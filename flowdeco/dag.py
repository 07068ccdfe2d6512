"""The dependency graph as data: vertices, their dependencies, a topological order.

Built and validated once at collection by :mod:`flowdeco.graph` (declare,
resolve, check), which also exports every name here.  Vertices are numbered in declaration order, which
is also the tie-break among ready tasks of equal priority.  The runner works
on these integer indices only.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .errors import CycleError
from .flow import SubflowNode
from .task import TaskSpec

TASK = "task"
SUBFLOW = "subflow"
_NO_CONSTS: Mapping[str, Any] = {}


class Vertex:
    """One node of the compiled graph: a task, or (:class:`SubflowVertex`) the completion
    point of a sub-flow node."""

    __slots__ = ("index", "name", "kind", "spec", "fn", "deps", "argnames", "argdeps", "consts",
                 "wants_ctx", "positional", "priority", "tags")

    #: sub-flow vertices only (slots of SubflowVertex): every inner vertex, the sinks with
    #: their inner names, the node.  A task shares these empty defaults: 24 bytes and
    #: three stores less per task
    members: tuple[int, ...] = ()
    sinks: tuple[tuple[str, int], ...] = ()
    node: SubflowNode | None = None

    def __init__(self, index: int, name: str, kind: str, spec: TaskSpec | None,
                 priority: int, tags: frozenset[str], node: SubflowNode | None = None):
        if node is not None and not isinstance(self, SubflowVertex):
            raise TypeError("a sub-flow node's vertex is a SubflowVertex")
        self.index = index
        self.name = name
        self.kind = kind
        self.spec = spec
        self.fn: Callable[..., Any] | None = spec.fn if spec is not None else None
        self.deps: tuple[int, ...] = ()
        #: the data dependencies: parameter names and, position by position, the
        #: upstream vertices they take results from (two flat tuples, the first
        #: usually the spec's own: few objects per vertex for the garbage collector)
        self.argnames: tuple[str, ...] = ()
        self.argdeps: tuple[int, ...] = ()
        #: parameters bound to run parameters (a shared empty dict until one is bound)
        self.consts: Mapping[str, Any] = _NO_CONSTS
        self.wants_ctx = False
        #: the arguments are exactly the upstream results of ``argdeps``, which the
        #: function takes by position too (``TaskSpec.positional``; no ctx, no run
        #: parameter, no default left): the ``sync`` in-order path calls it without
        #: a keyword dict
        self.positional = False
        self.priority = priority
        self.tags = tags

    def __repr__(self) -> str:
        return f"<Vertex {self.index} {self.name!r} {self.kind}>"

    @property
    def args(self) -> tuple[tuple[str, int], ...]:
        """(parameter, upstream vertex) pairs: the data dependencies."""
        return tuple(zip(self.argnames, self.argdeps))

    def arguments(self, results: Sequence[Any]) -> dict[str, Any]:
        """The keyword arguments from upstream ``results`` (by vertex index) and bound
        run parameters; not ``ctx``.  Called before every attempt: most tasks take
        one to three results, so those get a literal instead of a loop."""
        names = self.argnames
        n = len(names)
        if n == 1:
            kw = {names[0]: results[self.argdeps[0]]}
        elif n == 2:
            d = self.argdeps
            kw = {names[0]: results[d[0]], names[1]: results[d[1]]}
        elif n == 3:
            d = self.argdeps
            kw = {names[0]: results[d[0]], names[1]: results[d[1]], names[2]: results[d[2]]}
        elif n:
            kw = dict(zip(names, map(results.__getitem__, self.argdeps)))
        else:
            kw = {}
        if self.consts:
            kw.update(self.consts)
        return kw


class _FilledVertex(Vertex):
    """A task vertex the graph builder fills in field by field.

    Calling this class runs no ``__init__`` (``object.__new__(Vertex)`` would
    go through a wrapper that builds two argument tuples: a fifth of the
    declare phase's cost per task).  Everything else is :class:`Vertex`'s.
    """

    __slots__ = ()
    __init__ = object.__init__


class SubflowVertex(Vertex):
    """The completion point of a sub-flow node: it ends when its inner vertices have."""

    __slots__ = ("members", "sinks", "node")

    def __init__(self, index: int, name: str, kind: str, spec: TaskSpec | None,
                 priority: int, tags: frozenset[str], node: SubflowNode | None = None):
        super().__init__(index, name, kind, spec, priority, tags)
        self.members: tuple[int, ...] = ()
        self.sinks: tuple[tuple[str, int], ...] = ()
        self.node = node


class Graph:
    """A validated DAG of :class:`Vertex` objects in declaration order.

    ``order`` is a topological order (Kahn's algorithm, declaration order among
    ties); ``succs`` the successors of each vertex (computed on first use: a
    ``sync`` run of a graph declared upstream-first never needs them);
    :meth:`using` the tasks that set a plugin option, so a plugin looks at
    those instead of scanning every vertex.
    """

    def __init__(self, name: str, vertices: list[Vertex], special: Iterable[int] | None = None,
                 declared_in_order: bool | None = None, by_name: dict[str, int] | None = None):
        self.name = name
        self.vertices = vertices
        #: (``by_name`` may be given by the builder, which has that dict already: every
        #: vertex's name and index, in vertex order)
        self.by_name = {v.name: v.index for v in vertices} if by_name is None else by_name
        if declared_in_order is None:
            declared_in_order = all(not v.deps or max(v.deps) < v.index for v in vertices)
        #: the graph was declared upstream-first (every dependency before its dependents)
        self.declared_in_order = declared_in_order
        if special is None:  # (a task vertex always has its spec)
            special = [v.index for v in vertices
                       if v.kind is not TASK or v.spec.uses or v.spec.dynamic]  # type: ignore[union-attr]
        using: dict[str, list[Vertex]] = {}
        dynamic: list[int] = []
        for i in special:
            v = vertices[i]
            spec = v.spec
            if v.kind is not TASK or spec.dynamic:  # type: ignore[union-attr]
                dynamic.append(i)
            if spec is not None:
                for opt in spec.uses:
                    using.setdefault(opt, []).append(v)
        self._using = {opt: tuple(vs) for opt, vs in using.items()}
        #: sub-flow nodes and tasks with ``map=``, ``when=`` or a trigger rule other
        #: than ``all_succeeded`` (their readiness goes through the dynamic gate)
        self.dynamic: tuple[int, ...] = tuple(dynamic)
        # an upstream-first graph's order is its declaration order (by induction, the
        # lowest ready index is always the next one), and it cannot have a cycle
        # (by_name's values: the vertices' own index ints in vertex order, copied in C;
        # not n new ints, 32 bytes per task)
        self.order = list(self.by_name.values()) if self.declared_in_order \
            else kahn_order(self)

    @functools.cached_property
    def succs(self) -> list[tuple[int, ...]]:
        """Successors (dependents) of each vertex, in declaration order.

        Built with the garbage collector paused: the one temporary list per
        vertex would otherwise survive into the oldest generation mid-build
        and set off a full collection (measured: 5 µs per task at 100,000);
        the tuples live as long as the graph, so they are promoted unscanned.
        """
        with gc_paused(promote=True):
            succs: list[list[int]] = [[] for _ in self.vertices]
            for v in self.vertices:
                for d in v.deps:
                    succs[d].append(v.index)
            return [tuple(s) if s else () for s in succs]

    def using(self, option: str) -> tuple[Vertex, ...]:
        """The tasks that set the plugin option ``option`` (``retry``, ``circuit``, a
        third-party option...), in declaration order."""
        return self._using.get(option, ())

    @property
    def options_used(self) -> list[str]:
        """Every plugin option some task of the graph sets."""
        return list(self._using)

    def __len__(self) -> int:
        return len(self.vertices)

    def __iter__(self):
        return iter(self.vertices)

    def __getitem__(self, name: str) -> Vertex:
        return self.vertices[self.by_name[name]]

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def ancestors(self, indices: Iterable[int]) -> set[int]:
        """``indices`` plus everything they (transitively) depend on."""
        seen: set[int] = set()
        stack = list(indices)
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(self.vertices[i].deps)
        return seen

    def descendants(self, indices: Iterable[int]) -> set[int]:
        """``indices`` plus everything that (transitively) depends on them."""
        seen: set[int] = set()
        stack = list(indices)
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(self.succs[i])
        return seen

    def subgraph(self, keep: Iterable[int]) -> "Graph":
        """A new graph of the kept vertices (dependencies must be kept too)."""
        keep_sorted = sorted(set(keep))
        remap = {old: new for new, old in enumerate(keep_sorted)}
        out: list[Vertex] = []
        for old in keep_sorted:
            v = self.vertices[old]
            cls = SubflowVertex if isinstance(v, SubflowVertex) else Vertex
            w = cls(remap[old], v.name, v.kind, v.spec, v.priority, v.tags, v.node)
            w.fn = v.fn
            w.deps = tuple(remap[d] for d in v.deps if d in remap)
            w.argnames = v.argnames
            w.argdeps = tuple(remap[d] for d in v.argdeps)
            w.consts = v.consts
            w.wants_ctx = v.wants_ctx
            w.positional = v.positional
            if isinstance(w, SubflowVertex):
                w.members = tuple(remap[m] for m in v.members if m in remap)
                w.sinks = tuple((n, remap[m]) for n, m in v.sinks if m in remap)
            out.append(w)
        return Graph(self.name, out)


def kahn_order(graph: Graph, keys: Sequence[int] | None = None) -> list[int]:
    """Kahn's algorithm: among ready vertices the lowest key goes first.

    ``keys`` are ints whose remainder modulo ``len(graph)`` is the vertex index
    (the runner's priority keys, ``rank * n + index``); by default the index
    itself, i.e. declaration order among ties.  Raises :class:`CycleError`.
    """
    n = max(len(graph.vertices), 1)
    key = range(n) if keys is None else keys
    succs = graph.succs
    indeg = [len(v.deps) for v in graph.vertices]
    ready = [key[i] for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready) % n
        order.append(i)
        for s in succs[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, key[s])
    if len(order) != len(graph.vertices):
        left = {i for i, d in enumerate(indeg) if d > 0}
        raise CycleError([graph.vertices[i].name for i in _find_cycle(graph, left)])
    return order


def _find_cycle(graph: Graph, left: set[int]) -> list[int]:
    """A cycle among ``left`` (vertices Kahn could not order), upstream first."""
    # Walk dependencies from any vertex left over; every one of them has a
    # dependency that is also left over, so the walk must revisit a vertex.
    start = min(left)
    path: list[int] = []
    pos: dict[int, int] = {}
    i = start
    while i not in pos:
        pos[i] = len(path)
        path.append(i)
        i = next(d for d in graph.vertices[i].deps if d in left)
    cycle = path[pos[i]:] + [i]
    cycle.reverse()  # deps point upstream; report in the direction work flows
    return cycle



@contextlib.contextmanager
def gc_paused(promote: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector while building long-lived, acyclic structures.

    ``promote``: when the block succeeds, move what it built (with every other
    tracked object) to the oldest generation without scanning it
    (``gc.freeze()`` + ``gc.unfreeze()``), instead of leaving the first young
    collection to scan every new object once -- about 0.5 µs per task on a
    10,000-task graph.  Skipped when the program froze objects itself.
    """
    enabled = gc.isenabled()
    gc.disable()
    ok = False
    try:
        yield
        ok = True
    finally:
        if enabled:
            if ok and promote:
                promote_young()
            gc.enable()


def promote_young() -> None:
    """Move every object the collector tracks to its oldest generation, unscanned.

    A run's per-task lists (its table columns, results, calls) live as long as
    the run; left young, each collection the run's own allocations set off walks
    all of them (10,000 tasks: ~400 instructions per task).  ``gc.freeze()`` +
    ``gc.unfreeze()`` splice the generation lists, O(1).  Skipped when the
    program froze objects itself (``unfreeze`` would thaw them).
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()
