"""Flow versions: a digest of a run's graph, and the snapshot it is computed from.

Every run records its *flow version* (``runs.flow_version``) and, once per
distinct version, a JSON *snapshot* of its graph (table ``flow_graphs``), so
the UI draws a saved run's graph as it was and ``runs diff A B`` compares two
runs' graphs.  The snapshot::

    {"flow": NAME,
     "tasks": [{"name", "deps": [...], "after": [...], "options": {...},
                "fingerprint", "subflow", "mapped", "kind"}, ...],
     "edges": [[upstream, downstream], ...]}

- ``deps``: the tasks whose results the task takes (data dependencies);
  ``after``: ordering-only dependencies (``after=``, a sub-flow node's
  ``after=``); both by qualified name, in declaration order.
- ``options``: the ``@task`` options that change behaviour, only those set
  (``retries``, ``timeout``, ``map``, ``trigger``, plugin options...):
  numbers, strings and lists as they are; a policy object as its class and
  fields; a callable (``when=``, ``until=``) as ``module.qualname``; anything
  else as its type, so the digest is the same in every process.
- ``fingerprint``: the task's *code* fingerprint (the ``CODE`` half of
  :mod:`.fingerprint`: bytecode, constants, shaping options), without the run
  parameters bound to it: the version says which code ran, not with which
  ``--param``.  None for a sub-flow node.
- ``subflow``: the qualified name of the sub-flow node the task belongs to
  (the innermost one; ``"etl"`` for ``"etl.extract"``), else None: the UI
  collapses a sub-flow into that node.  ``kind``: ``"task"`` or
  ``"subflow"`` (the node itself, whose ``deps`` are its members' outside
  dependencies).
- ``mapped``: the task has ``map=`` (one node with many instances).
- ``edges``: every dependency, data or ordering, upstream first; a sub-flow
  node's link to its own members is not an edge (``subflow`` says it).

The version is the first 16 hex digits of the sha256 of the snapshot's
canonical JSON (sorted keys, no spaces): the same code and graph give the same
version in every process and Python run; a changed body, option or edge gives
another.  It is computed once per run (at its start), never per task.

Resume: a resumed run's version becomes the one of the graph its latest
session ran (its changed tasks ran again with the new code, restored tasks
have unchanged fingerprints, so the run's results match that graph); the
earlier version's snapshot stays in ``flow_graphs``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping

import attrs

from ...graph import SUBFLOW, Graph, gc_paused
from .fingerprint import code_digest

__all__ = ["snapshot", "snapshot_json", "version_of", "VersionDiff", "diff_snapshots",
           "DIGEST_CHARS"]

#: hex digits of sha256 kept as the version
DIGEST_CHARS = 16

#: TaskSpec fields that change how a task runs, with their defaults (left out when default)
_SPEC_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("retries", None), ("retry", None), ("timeout", None), ("delay", None), ("every", None),
    ("times", None), ("until", None), ("cron", None), ("circuit", None), ("map", None),
    ("when", None), ("trigger", "all_succeeded"), ("cache", None), ("cache_ttl", None),
    ("priority", 0),
)
_SIMPLE = (str, int, float, bool, type(None))


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON value that is the same in every process for an option's value."""
    if isinstance(value, _SIMPLE):
        if isinstance(value, float) and not math.isfinite(value):
            return repr(value)  # (JSON has no nan/inf)
        return value
    if depth > 6:
        return f"<{type(value).__qualname__}>"
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1)
                for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if hasattr(value, "total_seconds") and callable(value.total_seconds):  # timedelta
        return value.total_seconds()
    t = type(value)
    if attrs.has(t):  # a policy object (Retry...): its class and fields
        fields = {a.name: _plain(getattr(value, a.name, None), depth + 1)
                  for a in sorted(attrs.fields(t), key=lambda a: a.name)
                  if not a.name.startswith("_")}
        return {"$type": f"{t.__module__}.{t.__qualname__}", **fields}  # ("$" sorts first)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', None) or '?'}.{value.__qualname__}"
    name = getattr(value, "name", None)  # a CircuitBreaker: its name, never its counters
    if isinstance(name, str):
        return {"$type": f"{t.__module__}.{t.__qualname__}", "name": name}
    return f"<{t.__module__}.{t.__qualname__}>"


def _options(spec: Any) -> dict[str, Any]:
    if not spec.uses and not spec.dynamic and not spec.priority and not spec.tags:
        return {}  # (most tasks of a big flow: no option set)
    out: dict[str, Any] = {}
    for key, default in _SPEC_OPTIONS:
        value = getattr(spec, key, default)
        if value is not default and value != default:
            out[key] = _plain(value)
    tags = getattr(spec, "tags", None)
    if tags:
        out["tags"] = sorted(tags)
    for key, value in sorted((getattr(spec, "options", None) or {}).items()):
        out[str(key)] = _plain(value)
    return dict(sorted(out.items()))


def snapshot(graph: Graph) -> dict[str, Any]:
    """The JSON-ready snapshot of ``graph`` (format in the module docstring).

    Built with the garbage collector paused: a few small containers per task,
    none in a cycle, would otherwise set off collections (measured: half the
    time on a 10,000-task flow).
    """
    with gc_paused():
        return _snapshot(graph)


def _snapshot(graph: Graph) -> dict[str, Any]:
    vertices = graph.vertices
    names = [v.name for v in vertices]
    owner: dict[int, str] = {}
    for v in vertices:  # parents before children: an inner node overrides its parent
        if v.kind is SUBFLOW:
            for m in v.members:
                owner[m] = v.name
    tasks: list[dict[str, Any]] = []
    edges: list[list[str]] = []
    for v in vertices:
        if v.kind is SUBFLOW:
            members = set(v.members)
            outside = [d for d in v.deps if d not in members]
            node = v.node
            flow = getattr(getattr(node, "flow", None), "name", None)
            options: dict[str, Any] = {"flow": flow} if flow else {}
            if v.priority:
                options["priority"] = v.priority
            if v.tags:
                options["tags"] = sorted(v.tags)
            tasks.append({"after": [names[d] for d in outside], "deps": [],
                          "fingerprint": None, "kind": "subflow", "mapped": False,
                          "name": v.name, "options": options, "subflow": owner.get(v.index)})
            edges.extend([names[d], v.name] for d in outside)
            continue
        deps = v.deps
        spec = v.spec
        if deps is v.argdeps or deps == v.argdeps:  # (the usual case: no after=)
            data, after = [names[d] for d in deps], []
        else:
            first = list(dict.fromkeys(v.argdeps))
            seen = set(first)
            data = [names[d] for d in first]
            after = [names[d] for d in deps if d not in seen]
        # keys in sorted order: the text is canonical without sorting (see snapshot_json)
        tasks.append({"after": after, "deps": data, "fingerprint": code_digest(v.fn, spec),
                      "kind": "task", "mapped": getattr(spec, "map", None) is not None,
                      "name": v.name, "options": _options(spec) if spec is not None else {},
                      "subflow": owner.get(v.index)})
        name = v.name
        edges.extend([names[d], name] for d in deps)
    return {"edges": edges, "flow": graph.name, "tasks": tasks}


def snapshot_json(snap: Mapping[str, Any]) -> str:
    """The canonical JSON text of a snapshot (what is hashed and stored).

    :func:`snapshot` builds every mapping with its keys in sorted order (option
    values through :func:`_plain`, which sorts), so ``json.dumps`` without
    ``sort_keys`` (a third of the time on a big flow) gives the sorted text.
    """
    return json.dumps(snap, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def version_of(text: str) -> str:
    """The flow version of a snapshot's canonical JSON text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


@attrs.frozen
class VersionDiff:
    """What changed from run ``a``'s graph to run ``b``'s (``runs diff A B``)."""

    run_a: str
    run_b: str
    version_a: str | None
    version_b: str | None
    added_tasks: tuple[str, ...] = ()
    removed_tasks: tuple[str, ...] = ()
    #: task -> what changed about it ("code", "options", "mapped", "kind", "subflow")
    changed_tasks: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    added_edges: tuple[tuple[str, str], ...] = ()
    removed_edges: tuple[tuple[str, str], ...] = ()
    #: False when a run predates flow versions: tasks come from its task rows, edges unknown
    edges_known: bool = True

    @property
    def empty(self) -> bool:
        return not (self.added_tasks or self.removed_tasks or self.changed_tasks
                    or self.added_edges or self.removed_edges)

    def to_dict(self) -> dict[str, Any]:
        return {"run_a": self.run_a, "run_b": self.run_b, "version_a": self.version_a,
                "version_b": self.version_b, "added_tasks": list(self.added_tasks),
                "removed_tasks": list(self.removed_tasks),
                "changed_tasks": {k: list(v) for k, v in self.changed_tasks.items()},
                "added_edges": [list(e) for e in self.added_edges],
                "removed_edges": [list(e) for e in self.removed_edges],
                "edges_known": self.edges_known}


_COMPARED = (("fingerprint", "code"), ("options", "options"), ("mapped", "mapped"),
             ("kind", "kind"), ("subflow", "subflow"))


def diff_snapshots(a: Mapping[str, Any], b: Mapping[str, Any], run_a: str, run_b: str,
                   version_a: str | None, version_b: str | None,
                   edges_known: bool = True) -> VersionDiff:
    """Compare two snapshots (task order: ``b``'s for added/changed, ``a``'s for removed)."""
    ta = {t["name"]: t for t in a.get("tasks", ())}
    tb = {t["name"]: t for t in b.get("tasks", ())}
    added = tuple(n for n in tb if n not in ta)
    removed = tuple(n for n in ta if n not in tb)
    changed: dict[str, tuple[str, ...]] = {}
    for name, new in tb.items():
        old = ta.get(name)
        if old is None:
            continue
        what = tuple(label for key, label in _COMPARED
                     if key in old and key in new and old[key] != new[key])
        if what:
            changed[name] = what
    ea = [tuple(e) for e in a.get("edges", ())]
    eb = [tuple(e) for e in b.get("edges", ())]
    sa, sb = set(ea), set(eb)
    return VersionDiff(run_a, run_b, version_a, version_b, added, removed, changed,
                       tuple(e for e in eb if e not in sa),  # type: ignore[misc]
                       tuple(e for e in ea if e not in sb),  # type: ignore[misc]
                       edges_known)
