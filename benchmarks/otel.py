#!/usr/bin/env python
"""What flowdeco-otel adds per task: installed and idle (no provider), and tracing.

Usage::

    python benchmarks/otel.py                 # 2,000-task chain, sync executor, 9 rounds
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/otel.py --one idle  # instruction counts of one configuration

Configurations (each its own copy of the graph, run interleaved, medians):
``none`` (plugin not loaded), ``idle`` (plugin loaded, no tracer provider, no
``OTEL_*``: the target of issue 19 is within 5% of ``none``), ``tracing``
(an SDK provider with an in-memory exporter: for information, it makes three
spans per task).  ``--one CONFIG`` runs one configuration once after a
warm-up run, for ``callgrind`` (compare ``Ir`` totals of ``none`` and
``idle``: the difference divided by the task count is the per-task cost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from time import perf_counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, os.path.join(ROOT, "plugins", "flowdeco-otel")):
    if p not in sys.path:
        sys.path.insert(0, p)

CONFIGS = ("none", "idle", "tracing")


def chain(n: int) -> list:
    def make(i: int):
        if i == 0:
            def node():
                return 0
        else:
            ns: dict = {}
            exec(f"def node(t{i - 1}):\n    return t{i - 1} + 1", ns)
            node = ns["node"]
        node.__name__ = f"t{i}"
        node.__qualname__ = f"t{i}"
        return node
    return [make(i) for i in range(n)]


def plugins(config: str) -> list:
    import flowdeco_otel
    if config == "none":
        return []
    if config == "idle":  # by name, like the installed entry point: a pooled plugin manager
        return ["flowdeco_otel"]
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return [flowdeco_otel.Tracing(provider)]


def once(tasks: list, config: str) -> float:
    from flowdeco import run
    t0 = perf_counter()
    result = run(tasks, executor="sync", state_dir=None, plugins=plugins(config),
                 disable=["otel"] if config == "none" else ())
    elapsed = perf_counter() - t0
    assert result.status == "succeeded"
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--one", choices=CONFIGS)
    args = ap.parse_args()
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]
    if args.one:
        tasks = chain(args.tasks)
        once(tasks, args.one)  # warm-up: imports, plugin manager pool
        once(tasks, args.one)
        return
    graphs = {c: chain(args.tasks) for c in CONFIGS}
    times: dict = {c: [] for c in CONFIGS}
    for c in CONFIGS:
        once(graphs[c], c)
    for _ in range(args.rounds):
        for c in CONFIGS:
            times[c].append(once(graphs[c], c))
    base = statistics.median(times["none"])
    print(f"| config | µs/task (median of {args.rounds}) | vs none |")
    print("|---|---|---|")
    for c in CONFIGS:
        m = statistics.median(times[c])
        print(f"| {c} | {m / args.tasks * 1e6:.2f} | {(m / base - 1) * 100:+.1f}% |")


if __name__ == "__main__":
    main()
