"""The dependency graph, built and validated once at collection (the graph itself: :mod:`.dag`).

Building has three phases (like doit's ``control.py``):

1. *declare*: every task and sub-flow node gets a vertex with its qualified
   name (``validate.check_format``); duplicate names in one flow are refused;
2. *resolve*: each parameter becomes a data dependency (a task of the flow, of
   an enclosing flow, or an imported task), a run parameter, ``ctx``, or keeps
   its default; ``after=`` entries become ordering dependencies;
3. *check*: a topological order is computed; a cycle is reported with its path.

Vertices are numbered in declaration order, which is also the tie-break among
ready tasks of equal priority.  The runner works on these integer indices only.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Mapping, Sequence

from .errors import CollectionError, CycleError, DuplicateTaskError, MissingDependencyError
from .flow import Flow, SubflowNode
# the model, exported from here as it always was (flowdeco.graph.Graph, ...)
from .dag import (_NO_CONSTS, SUBFLOW, TASK, Graph, SubflowVertex, Vertex, _FilledVertex,  # noqa: F401
                  gc_paused, kahn_order)
from .params import secret_annotation
from .secret import Secret
from .task import CTX, SPEC_ATTR, TaskSpec, get_spec, make_spec


class _Scope:
    """Names visible inside one flow while building: its members, then its parents'."""

    def __init__(self, flow: Flow | None, flow_name: str, prefix: str, parent: "_Scope | None",
                 bind: Mapping[str, str], node: SubflowNode | None):
        self.flow = flow
        self.flow_name = flow_name
        self.prefix = prefix
        self.parent = parent
        self.bind = bind
        self.node = node
        self.after: tuple[int, ...] = ()   # vertices every member waits for (a node's after=)
        self.local: dict[str, int] = {}

    def visible(self) -> list[str]:
        names: list[str] = []
        s: _Scope | None = self
        while s is not None:
            names.extend(s.local)
            s = s.parent
        return names

    def flows(self) -> list[str]:
        out: list[str] = []
        s: _Scope | None = self
        while s is not None:
            if s.flow is not None:
                out.append(s.flow.name)
            s = s.parent
        return out[::-1]


class GraphBuilder:
    """Turns a root flow's members into a validated :class:`Graph`."""

    #: resolve simple root-flow tasks while declaring them, and root-flow ``after=`` names
    #: with one lookup (False: every task in phase 2 and every ``after=`` entry through
    #: ``_lookup_after``, the general path the property tests compare with)
    resolve_early = True

    def __init__(self, name: str, params: Mapping[str, Any], root_flow: Flow | None = None,
                 unset_ok: bool = False, loose: bool = False):
        self.name = name
        #: the members are a list the user gave (``run([f, g])``): a plain function gets
        #: default options and anything else is refused as the list's item, checked
        #: here rather than in a pass of its own over the list
        self.loose = loose
        self.params = params
        #: a required parameter nothing fills is left unset instead of refused
        #: (``--collect-only`` and ``--graph`` list a flow without its run parameters)
        self.unset_ok = unset_ok
        self.vertices: list[Vertex] = []
        #: task vertices left to resolve and the scope each was declared in (parallel
        #: lists: no tuple per task for the garbage collector to scan)
        self._tasks: list[int] = []
        self._scopes: list[_Scope] = []
        self._nodes: list[tuple[int, _Scope, _Scope]] = []
        #: vertices the Graph indexes (plugin options, dynamic tasks, sub-flow nodes)
        self._special: list[int] = []
        #: every dependency seen so far was declared before its dependent
        self._in_order = True
        self._root = _Scope(root_flow, name, "", None, {}, None)

    def build(self, members: Sequence[Any]) -> Graph:
        self._declare(self._root, members)
        for index, outer, inner in self._nodes:          # parents before children
            node = self.vertices[index].node
            assert node is not None
            inner.after = outer.after + tuple(
                self._lookup_after(outer, a, self.vertices[index].name) for a in node.after)
        self._resolve_tasks()
        for index, _outer, inner in self._nodes:
            self._resolve_node(self.vertices[index], inner)
        # without sub-flows the root scope's names are every vertex's, in index order
        return Graph(self.name, self.vertices, self._special, self._in_order,
                     None if self._nodes else self._root.local)

    # -- phase 1: declare
    def _declare(self, scope: _Scope, members: Sequence[Any]) -> None:
        # One loop body per task, no calls (the declare phase's cost on a big flow):
        # _claim only reports a duplicate.
        # In the root flow a task whose parameters all name tasks declared before it,
        # with no after= or map= (nearly every task of a big flow), is resolved right
        # here: its dependencies are known, and phase 2 never visits it.
        local, prefix = scope.local, scope.prefix
        vertices, tasks, scopes, special = self.vertices, self._tasks, self._scopes, self._special
        get = local.get
        fast = self.resolve_early and scope.parent is None
        for m in members:
            try:
                spec = m.__flowdeco_task__  # (SPEC_ATTR: an attribute read, not getattr())
            except AttributeError:
                spec = None
            # (a decorated function is its spec's fn: callable without asking)
            if spec is None or (spec.fn is not m and not callable(m)):
                if isinstance(m, SubflowNode):
                    self._declare_node(scope, m)
                    continue
                spec = m if isinstance(m, TaskSpec) else self._loose_member(scope, m)
            name = spec.name
            if name in local:
                self._claim(scope, name, spec)  # raises DuplicateTaskError
            index = len(vertices)
            v = _FilledVertex()  # Vertex(index, prefix + name, TASK, spec, ...), field by field
            v.index = index
            v.name = prefix + name
            v.kind = TASK
            v.spec = spec
            v.fn = spec.fn
            v.consts = _NO_CONSTS
            v.wants_ctx = spec.wants_ctx
            v.priority = spec.priority
            v.tags = spec.tags
            vertices.append(v)
            dynamic = spec.dynamic
            if dynamic or spec.uses:
                special.append(index)
            # (looked up before this task's own name is bound: a name found is an
            # earlier vertex, and a task naming itself goes to phase 2, a cycle)
            if fast and not spec.after and (not dynamic or spec.map is None):
                names = spec.arg_names
                n = len(names)
                if n == 1:
                    d = get(names[0])
                    if d is not None:
                        v.argnames = names
                        v.argdeps = v.deps = (d,)
                        v.positional = spec.positional
                        local[name] = index
                        continue
                elif n == 2:
                    d = get(names[0])
                    d2 = get(names[1])
                    if d is not None and d2 is not None:
                        v.argnames = names
                        v.argdeps = v.deps = (d, d2)  # (one vertex per name: distinct)
                        v.positional = spec.positional
                        local[name] = index
                        continue
                elif n == 3:
                    d = get(names[0])
                    d2 = get(names[1])
                    d3 = get(names[2])
                    if d is not None and d2 is not None and d3 is not None:
                        v.argnames = names
                        v.argdeps = v.deps = (d, d2, d3)
                        v.positional = spec.positional
                        local[name] = index
                        continue
                elif n:
                    found = tuple(map(get, names))
                    if None not in found:
                        v.argnames = names
                        v.argdeps = v.deps = found
                        v.positional = spec.positional
                        local[name] = index
                        continue
                else:
                    v.deps = v.argnames = v.argdeps = ()
                    v.positional = spec.positional
                    local[name] = index
                    continue
            # (set in phase 2; it may also bind run parameters or keep defaults)
            v.deps = v.argnames = v.argdeps = ()
            v.positional = False
            local[name] = index
            tasks.append(index)
            scopes.append(scope)

    def _loose_member(self, scope: _Scope, m: Any) -> TaskSpec:
        """The spec of member ``m``, which is neither a task nor a sub-flow node: a plain
        function of a list target gets default options; anything else is refused."""
        if not self.loose:
            raise CollectionError(f"flow {scope.flow_name!r}: {m!r} is not a task")
        if getattr(m, SPEC_ATTR, None) is None and callable(m) and not isinstance(m, type):
            return make_spec(m)  # default options; the function is not changed
        raise CollectionError(f"cannot run {m!r}: it is not a task function")

    def _claim(self, scope: _Scope, name: str, origin: TaskSpec | str) -> int:
        """The next vertex index for ``name`` in ``scope``; two members of one flow with
        the same name are refused, naming where both come from."""
        if name in scope.local:
            first = self.vertices[scope.local[name]]
            was = first.spec.source_name if first.spec is not None else \
                f"sub-flow node of flow {first.node.flow.name!r}"  # type: ignore[union-attr]
            where = origin.source_name if isinstance(origin, TaskSpec) else origin
            raise DuplicateTaskError(scope.prefix + name, [was, where])
        index = len(self.vertices)
        scope.local[name] = index
        return index

    def _declare_node(self, scope: _Scope, node: SubflowNode) -> None:
        chain = scope.flows()
        if node.flow.name in chain:
            cyc = chain[chain.index(node.flow.name):] + [node.flow.name]
            raise CycleError(cyc)
        index = self._claim(scope, node.name, f"sub-flow node of flow {node.flow.name!r}")
        vertex = SubflowVertex(index, scope.prefix + node.name, SUBFLOW, None, node.priority,
                               node.tags, node)
        self.vertices.append(vertex)
        self._special.append(index)
        inner = _Scope(node.flow, node.flow.name, vertex.name + ".", scope, node.bind, node)
        self._nodes.append((index, scope, inner))
        start = len(self.vertices)
        self._declare(inner, node.flow.members)
        vertex.members = tuple(range(start, len(self.vertices)))

    # -- phase 2: resolve
    def _lookup(self, scope: _Scope, name: str) -> int | None:
        s: _Scope | None = scope
        while s is not None:
            if name in s.local:
                return s.local[name]
            if name in s.bind and s.parent is not None:
                found = self._lookup(s.parent, s.bind[name])
                if found is None:
                    raise MissingDependencyError(
                        s.prefix.rstrip("."), s.bind[name], "parameter", s.parent.visible())
                return found
            s = s.parent
        return None

    def _lookup_qualified(self, scope: _Scope, name: str) -> int | None:
        s: _Scope | None = scope
        while s is not None:
            for v in self.vertices:
                if v.name == s.prefix + name:
                    return v.index
            s = s.parent
        return None

    def _import(self, spec: TaskSpec) -> int:
        """Add a task defined outside the flow (imported) that something depends on."""
        found = self._root.local.get(spec.name)
        if found is not None:
            return found
        self._declare(self._root, (spec,))
        return len(self.vertices) - 1

    def _lookup_after(self, scope: _Scope, entry: Any, who: str) -> int:
        spec = None
        if isinstance(entry, SubflowNode):
            name = entry.name
        elif isinstance(entry, str):
            name = entry
        else:
            spec = get_spec(entry)
            if spec is None:
                raise CollectionError(f"task {who!r}: after= entry {entry!r} is not a task")
            name = spec.name
        found = self._lookup_qualified(scope, name) if "." in name else self._lookup(scope, name)
        if found is None and spec is not None and spec.owner is None:
            found = self._import(spec)
        if found is None:
            raise MissingDependencyError(who, name, "after", scope.visible())
        return found

    def _resolve_tasks(self) -> None:
        """Resolve the task vertices phase 1 left: imported tasks are appended as found."""
        tasks, scopes, vertices = self._tasks, self._scopes, self.vertices
        i = 0
        while i < len(tasks):
            self._resolve_task(vertices[tasks[i]], scopes[i])
            i += 1

    def _resolve_task(self, v: Vertex, scope: _Scope) -> None:
        spec = v.spec
        assert spec is not None
        v.wants_ctx = spec.wants_ctx
        names = spec.arg_names
        # the root flow binds nothing from outside: a name is its member or nothing
        if scope.parent is None:
            get = scope.local.get
            found_all = [get(name) for name in names]
        else:
            found_all = [self._lookup(scope, name) for name in names]
        if None not in found_all:  # the usual case: every parameter names a task of the flow
            if v.index in found_all:
                raise CycleError([v.name, v.name])
            # (in the root flow each name is one vertex: the dependencies are distinct)
            self._resolve_rest(v, scope, names, found_all,  # type: ignore[arg-type]
                               scope.parent is None or len(found_all) < 2)
        else:
            self._resolve_rest(v, scope, *self._resolve_params(v, scope, found_all), False)

    def _root_after(self, scope: _Scope, after: tuple[Any, ...]) -> dict[int, None] | None:
        """The vertices of ``after=`` entries that all name members of the root flow,
        looked up in C (a fan-in sink may wait for 10,000 tasks), as dict keys in
        order without repeats; else None."""
        if scope.parent is not None or not self.resolve_early or not after:
            return None
        try:
            found = dict.fromkeys(map(scope.local.get, after, repeat(-1)))
        except TypeError:  # an unhashable entry: refused by _lookup_after, naming it
            return None
        # (a name is a str; a task function or node as a key finds nothing: -1)
        return None if -1 in found else found

    def _resolve_params(self, v: Vertex, scope: _Scope, found_all: list[int | None]
                        ) -> tuple[tuple[str, ...], list[int]]:
        """Parameters that are not all tasks of the flow: imported tasks, run
        parameters, defaults -- or a missing dependency."""
        spec = v.spec
        assert spec is not None
        names: list[str] = []
        deps: list[int] = []
        for p, found in zip([p for p in spec.params if p.name != CTX], found_all):
            if found is None:
                imported = get_spec((getattr(spec.fn, "__globals__", None) or {}).get(p.name))
                if imported is not None and imported.owner is None:
                    found = self._import(imported)
            if found is not None:
                if found == v.index:
                    raise CycleError([v.name, v.name])
                names.append(p.name)
                deps.append(found)
            elif p.name in self.params:
                if v.consts is _NO_CONSTS:
                    v.consts = {}
                v.consts[p.name] = coerce_param(  # type: ignore[index]
                    v.name, p.name, self.params[p.name], p.annotation)
            elif not p.has_default and not self.unset_ok:
                raise MissingDependencyError(
                    v.name, p.name, "parameter", scope.visible() + list(self.params) + [CTX])
        return tuple(names), deps

    def _resolve_rest(self, v: Vertex, scope: _Scope, names: tuple[str, ...],
                      found: list[int], distinct: bool) -> None:
        """``after=`` entries, the sub-flow node's ``after=``, ``map=``; then store."""
        spec = v.spec
        assert spec is not None
        v.argnames = names
        v.argdeps = tuple(found)
        deps: Any = found
        unique = deps is found and distinct  # (deps has no repeated vertex)
        if spec.after or scope.after:
            # a task name in the root flow is its member or nothing: one dict lookup
            # each, in C (a fan-in sink may wait for 10,000 tasks); else the general way
            after = self._root_after(scope, spec.after)
            if after is not None:  # every entry the name of a root-flow member
                if v.index in after:
                    raise CycleError([v.name, v.name])
                unique = not found and not scope.after
                deps = after if unique else [*found, *after, *scope.after]
            else:
                unique = False
                deps = list(found)
                for a in spec.after:
                    dep = self._lookup_after(scope, a, v.name)
                    if dep == v.index:
                        raise CycleError([v.name, v.name])
                    deps.append(dep)
                deps.extend(scope.after)
        if spec.map is not None and spec.map not in names:
            what = "a run parameter" if spec.map in v.consts else "not bound to any task"
            raise CollectionError(
                f"task {v.name!r}: map={spec.map!r} must name a parameter bound to an upstream "
                f"task (the task runs once per element of that task's result), but "
                f"{spec.map!r} is {what}")
        if deps:
            if deps is found and distinct:
                v.deps = v.argdeps
            else:
                v.deps = tuple(deps) if unique else tuple(dict.fromkeys(deps))
            if self._in_order and max(deps) > v.index:
                self._in_order = False

    def _resolve_node(self, v: Vertex, inner: _Scope) -> None:
        members = set(v.members)
        depended_on = {d for m in v.members for d in self.vertices[m].deps if d in members}
        sinks = sorted(i for i in inner.local.values() if i not in depended_on)
        v.sinks = tuple((self.vertices[i].name[len(inner.prefix):], i) for i in sinks)
        v.deps = tuple(dict.fromkeys(v.members + inner.after))
        self._in_order = False  # the node's vertex comes before its members


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def coerce_param(task: str, name: str, value: Any, annotation: Any) -> Any:
    """Convert a string run parameter for a parameter annotated int, float, bool or Path.

    A parameter annotated ``Secret`` (``Secret[int]``, ...) receives a
    :class:`~flowdeco.Secret`; a value already wrapped (``--secret``) is
    converted inside its wrapper.  A secret's value never appears in the error.
    """
    is_secret, inner = secret_annotation(annotation)
    if is_secret:
        annotation = inner
    if isinstance(value, Secret):
        is_secret = True
        raw = value.reveal()
        if not isinstance(raw, str) or annotation is None:
            return value
        return Secret(_convert(task, name, raw, annotation, secret=True))
    if not isinstance(value, str) or annotation is None:
        return Secret(value) if is_secret else value
    out = _convert(task, name, value, annotation, secret=is_secret)
    return Secret(out) if is_secret else out


def _convert(task: str, name: str, value: str, annotation: Any, secret: bool) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(value)
        if kind in ("Path", "pathlib.Path"):
            from pathlib import Path
            return Path(value)
    except ValueError:
        from .errors import UsageError, shorten
        shown = f"{name}=***" if secret else f"{name}={shorten(value)}"
        what = "the secret value" if secret else shorten(value)
        raise UsageError(
            f"run parameter {shown}: task {task!r} declares {name}: {kind}, "
            f"and {what} is not a valid {kind}") from None
    return value


def build_graph(name: str, members: Sequence[Any], params: Mapping[str, Any] | None = None,
                root_flow: Flow | None = None, unset_ok: bool = False,
                loose: bool = False) -> Graph:
    """Build and validate the graph of ``members`` (tasks and sub-flow nodes).

    The cyclic garbage collector is paused while building: building creates
    several long-lived objects per task and no garbage cycles, and with 10,000
    tasks the collector's repeated full passes would cost more than the build.
    No user code runs here (the target was imported before).  ``unset_ok``
    leaves required run parameters nothing fills unset (for listings only);
    ``loose``: ``members`` is a user's list (:attr:`flowdeco.collect.Target.loose`).
    The graph lives as long as the run, so it goes straight to the oldest
    generation (see :func:`gc_paused`).
    """
    with gc_paused(promote=True):
        return GraphBuilder(name, params or {}, root_flow, unset_ok, loose).build(members)

