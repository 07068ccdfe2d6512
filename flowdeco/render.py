"""Text views of a graph: ``--collect-only`` listing, Mermaid and Graphviz dot.

Edges point upstream -> downstream and include ``after=`` edges.  A sub-flow
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


def _parent(graph: Graph, v: Vertex) -> int | None:
    """The sub-flow node vertex directly containing ``v``, if any."""
    if "." not in v.name:
        return None
    return graph.by_name.get(v.name.rsplit(".", 1)[0])


def collect_only(graph: Graph) -> str:
    """One line per task: name, then ``<- dependencies``; sub-flow nodes are marked."""
    nodes = sum(1 for v in graph if v.kind is SUBFLOW)
    head = f"<flow {graph.name}: {len(graph) - nodes} tasks"
    lines = [head + (f", {nodes} sub-flow node{'s' if nodes > 1 else ''}>" if nodes else ">")]
    for v in graph.vertices:
        depth = v.name.count(".")
        label = v.name
        if v.kind is SUBFLOW:
            label += f"  (sub-flow {v.node.flow.name})" if v.node is not None else "  (sub-flow)"
        deps = [graph.vertices[d].name for d in _display_deps(graph, v)]
        tags = f"  [{', '.join(sorted(v.tags))}]" if v.tags else ""
        prio = f"  priority={v.priority}" if v.priority else ""
        lines.append("  " * (depth + 1) + label + (f"  <- {', '.join(deps)}" if deps else "")
                     + prio + tags)
    return "\n".join(lines)


def _children(graph: Graph) -> dict[int | None, list[Vertex]]:
    kids: dict[int | None, list[Vertex]] = {}
    for v in graph.vertices:
        kids.setdefault(_parent(graph, v), []).append(v)
    return kids


def mermaid(graph: Graph) -> str:
    """A Mermaid ``flowchart`` (paste into GitHub markdown or mermaid.live)."""
    def q(text: str) -> str:
        return text.replace('"', "#quot;")

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
                yield f'{indent}n{v.index}["{q(v.name)}"]'

    out.extend(emit(None, "    "))
    for v in graph.vertices:
        for d in _display_deps(graph, v):
            out.append(f"    n{d} --> n{v.index}")
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
                yield f"{indent}{q(v.name)};"

    out.extend(emit(None, "    "))
    for v in graph.vertices:
        for d in _display_deps(graph, v):
            out.append(f"    {q(graph.vertices[d].name)} -> {q(v.name)};")
    out.append("}")
    return "\n".join(out)
