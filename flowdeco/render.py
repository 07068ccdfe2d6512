"""Text views of a graph: ``--collect-only`` listing, Mermaid and Graphviz dot.

Edges point upstream -> downstream and include ``after=`` edges (the edge a
mapped task maps over is labelled ``map``).  A sub-flow
node is drawn as a box (subgraph/cluster) holding its inner tasks; its
completion point receives edges from the inner sinks only.
"""

from __future__ import annotations

from typing import Iterator

from .graph import SUBFLOW, Graph, Vertex


def _display_deps(graph: Graph, v: Vertex) -> list[int]:
    if v.kind is SUBFLOW:
        return [m for _, m in v.sinks]
    return list(v.deps)


def _dynamic(v: Vertex) -> list[str]:
    """How a task is dynamic, as short notes: map, condition, non-default trigger rule, cache."""
    spec = v.spec
    if spec is None:
        return []
    notes = []
    if spec.map is not None:
        notes.append(f"map over {spec.map}")
    if spec.when is not None:
        notes.append(f"when={getattr(spec.when, '__name__', None) or repr(spec.when)}")
    if spec.trigger != "all_succeeded":
        notes.append(f"trigger={spec.trigger}")
    if spec.cache is not None:
        ttl = f", ttl {spec.cache_ttl:g}s" if spec.cache_ttl is not None else ""
        notes.append(("cached" if spec.cache is True else
                      f"cached by {getattr(spec.cache, '__name__', None) or 'key'}") + ttl)
    store = spec.store
    if store is False:
        notes.append("not stored (runs again on resume)")
    elif store is not None and store != "auto":
        notes.append(f"store={store}")
    return notes


def _label(v: Vertex) -> str:
    """A task's display name: ``scan_file[*]`` for a mapped task."""
    return v.name + "[*]" if v.spec is not None and v.spec.map is not None else v.name


def _map_edge(graph: Graph, v: Vertex, d: int) -> bool:
    """Whether the edge ``d -> v`` is the one ``v`` maps over."""
    spec = v.spec
    return spec is not None and spec.map is not None and (spec.map, d) in v.args


def _parent(graph: Graph, v: Vertex) -> int | None:
    """The sub-flow node vertex directly containing ``v``, if any."""
    if "." not in v.name:
        return None
    return graph.by_name.get(v.name.rsplit(".", 1)[0])


def collect_only(graph: Graph) -> str:
    """One line per task: name, then ``<- dependencies``; sub-flow nodes are marked.

    A mapped task shows as ``scan_file[*]  (map over files)``; a condition as
    ``when=<predicate name>``, a trigger rule other than the default as
    ``trigger=<rule>``, input-hash caching as ``cached`` (``cached by
    <key function>``, ``, ttl 60s``), ``store=False`` as ``not stored (runs again on
    resume)`` and another ``store=`` as ``store=NAME``.
    """
    nodes = sum(1 for v in graph if v.kind is SUBFLOW)
    head = f"<flow {graph.name}: {len(graph) - nodes} tasks"
    lines = [head + (f", {nodes} sub-flow node{'s' if nodes > 1 else ''}>" if nodes else ">")]
    for v in graph.vertices:
        depth = v.name.count(".")
        label = _label(v)
        if v.kind is SUBFLOW:
            label += f"  (sub-flow {v.node.flow.name})" if v.node is not None else "  (sub-flow)"
        notes = _dynamic(v)
        if notes and notes[0].startswith("map "):
            label += f"  ({notes.pop(0)})"
        deps = [graph.vertices[d].name for d in _display_deps(graph, v)]
        tags = f"  [{', '.join(sorted(v.tags))}]" if v.tags else ""
        prio = f"  priority={v.priority}" if v.priority else ""
        lines.append("  " * (depth + 1) + label + (f"  <- {', '.join(deps)}" if deps else "")
                     + "".join("  " + n for n in notes) + prio + tags)
    return "\n".join(lines)


def _children(graph: Graph) -> dict[int | None, list[Vertex]]:
    kids: dict[int | None, list[Vertex]] = {}
    for v in graph.vertices:
        kids.setdefault(_parent(graph, v), []).append(v)
    return kids


def mermaid(graph: Graph) -> str:
    """A Mermaid ``flowchart`` (paste into GitHub markdown or mermaid.live)."""
    def q(text: str) -> str:
        return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")

    kids = _children(graph)
    out = ["flowchart TD"]

    def emit(parent: int | None, indent: str) -> Iterator[str]:
        for v in kids.get(parent, []):
            if v.kind is SUBFLOW:
                yield f'{indent}subgraph sg{v.index}["{q(v.name)}"]'
                yield from emit(v.index, indent + "    ")
                yield f"{indent}end"
                yield f'{indent}n{v.index}(("{q(v.name)} done"))'
            else:
                text = "<br/>".join(q(t) for t in [_label(v), *_dynamic(v)])
                # a mapped task is drawn as a stacked box (many instances)
                shape = ('[["', '"]]') if v.spec is not None and v.spec.map else ('["', '"]')
                yield f'{indent}n{v.index}{shape[0]}{text}{shape[1]}'

    out.extend(emit(None, "    "))
    for v in graph.vertices:
        for d in _display_deps(graph, v):
            arrow = "-->|map|" if _map_edge(graph, v, d) else "-->"
            out.append(f"    n{d} {arrow} n{v.index}")
    return "\n".join(out)


def dot(graph: Graph) -> str:
    """A Graphviz ``digraph`` (render with ``dot -Tsvg``)."""
    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    kids = _children(graph)
    out = [f"digraph {q(graph.name)} {{", "    rankdir=LR;", "    node [shape=box];"]

    def emit(parent: int | None, indent: str) -> Iterator[str]:
        for v in kids.get(parent, []):
            if v.kind is SUBFLOW:
                yield f"{indent}subgraph {q('cluster_' + v.name)} {{"
                yield f"{indent}    label={q(v.name)};"
                yield from emit(v.index, indent + "    ")
                yield f"{indent}    {q(v.name)} [shape=doublecircle, label={q('done')}];"
                yield f"{indent}}}"
            else:
                notes = _dynamic(v)
                if not notes:
                    yield f"{indent}{q(v.name)};"
                    continue
                label = '"' + "\\n".join(q(t)[1:-1] for t in [_label(v), *notes]) + '"'
                shape = ", shape=box3d" if v.spec is not None and v.spec.map else ""
                yield f"{indent}{q(v.name)} [label={label}{shape}];"

    out.extend(emit(None, "    "))
    for v in graph.vertices:
        for d in _display_deps(graph, v):
            attr = ' [label="map"]' if _map_edge(graph, v, d) else ""
            out.append(f"    {q(graph.vertices[d].name)} -> {q(v.name)}{attr};")
    out.append("}")
    return "\n".join(out)
