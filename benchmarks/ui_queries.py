#!/usr/bin/env python
"""What the UI's read-only queries cost on a big store, and what recording a flow version costs.

Usage::

    python benchmarks/ui_queries.py            # 10,000 runs x 10 tasks, 25 repetitions
    python benchmarks/ui_queries.py --quick    # 2,000 runs x 10 tasks, 7 repetitions
    python benchmarks/ui_queries.py --runs 50000 --tasks 10

A state dir is generated (schema 4, written with plain SQL in one
transaction: 5 flows, statuses succeeded/failed/interrupted and one running,
20 flow versions, one run a minute), opened read-only the way the UI opens
it, and each query of :mod:`flowdeco.plugins.state.queries` is timed: median
and max of the repetitions, in ms of wall and CPU time (the CPU figure is
steadier on a loaded machine).  Target (issue 17): listing a page of runs
from 10,000 in under 200 ms of server time.  ``without v4 indexes``: the
same listing on a copy whose schema-4 indexes were dropped (what they buy).

Then ``version``: building the graph snapshot of a 10,000-task flow, its
canonical JSON and digest (what the state plugin does once per run, at its
start; never per task).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
from time import perf_counter, process_time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FLOWS = ("etl", "reports", "ml_train", "backup", "ingest")
STATUSES = ("succeeded",) * 7 + ("failed", "failed", "interrupted")
T0 = 1_780_000_000.0


def generate(state_dir: str, runs: int, tasks: int) -> None:
    from flowdeco.plugins.state.store import SQLiteStore

    store = SQLiteStore(state_dir)
    store.open()  # schema, pragmas
    store.close()
    rng = random.Random(17)
    conn = sqlite3.connect(os.path.join(state_dir, "state.db"), isolation_level=None)
    conn.execute("BEGIN")
    versions = [f"{rng.getrandbits(64):016x}" for _ in range(20)]
    for v in versions:
        conn.execute("INSERT INTO flow_graphs VALUES (?, ?, ?)",
                     (v, "etl", '{"flow":"etl","tasks":[],"edges":[]}'))
    run_rows, task_rows = [], []
    for i in range(runs):
        rid = f"run-{i:06d}"
        start = T0 + 60 * i
        status = "running" if i == runs - 1 else rng.choice(STATUSES)
        run_rows.append((rid, FLOWS[i % len(FLOWS)], status, start, start,
                         None if status == "running" else start + 30, 30.0, 1,
                         os.getpid() if status == "running" else None, rng.choice(versions)))
        for j in range(tasks):
            st = "failed" if status == "failed" and j == tasks - 1 else "succeeded"
            task_rows.append((rid, f"task_{j}", st, 1, start + j, start + j + 1,
                              "0123456789abcdef.0", "[1, 2, 3]", None, None, None, None))
    conn.executemany("INSERT INTO runs (run_id, flow, status, started, session_started, "
                     "finished, duration, sessions, pid, flow_version) "
                     "VALUES (?,?,?,?,?,?,?,?,?,?)", run_rows)
    conn.executemany("INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", task_rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def timed(fn, reps: int) -> tuple[float, float, float]:
    """(median wall ms, max wall ms, median CPU ms) of ``reps`` calls after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        w, c = perf_counter(), process_time()
        fn()
        cpu.append((process_time() - c) * 1000)
        wall.append((perf_counter() - w) * 1000)
    return statistics.median(wall), max(wall), statistics.median(cpu)


def bench_queries(state_dir: str, runs: int, reps: int, label: str = "") -> list[tuple]:
    from flowdeco.plugins.state import queries as q
    from flowdeco.plugins.state.store import SQLiteStore

    store = SQLiteStore(state_dir)
    assert store.open_read_only()
    mid = T0 + 60 * (runs // 2)
    cases = [
        ("list_runs (first page of 50)", lambda: q.list_runs(store)),
        ("list_runs flow=etl", lambda: q.list_runs(store, flow="etl")),
        ("list_runs status=failed", lambda: q.list_runs(store, status="failed")),
        ("list_runs status=running", lambda: q.list_runs(store, status="running")),
        ("list_runs text='run-0001'", lambda: q.list_runs(store, text="run-0001")),
        ("list_runs since/until (a day)", lambda: q.list_runs(store, since=mid,
                                                               until=mid + 86400)),
        ("list_runs last page", lambda: q.list_runs(store, offset=max(runs - 50, 0))),
        ("run_detail", lambda: q.run_detail(store, f"run-{runs // 2:06d}")),
        ("task_rows", lambda: q.task_rows(store, f"run-{runs // 2:06d}")),
        ("changed_tasks", lambda: q.changed_tasks(store, f"run-{runs // 2:06d}")),
        ("data_version", lambda: q.data_version(store)),
    ]
    out = []
    try:
        for name, fn in cases:
            rows = fn()
            if name.startswith("list_runs"):
                assert rows[1] > 0, name
            out.append((label + name, *timed(fn, reps)))
    finally:
        store.close()
    return out


def bench_version(n: int, reps: int) -> tuple:
    from flowdeco import task
    from flowdeco.graph import build_graph
    from flowdeco.plugins.state.versions import snapshot, snapshot_json, version_of

    def make(i: int, parent: str | None):
        ns: dict = {}
        if parent is None:
            exec(f"def t{i}():\n    return {i}\n", ns)
        else:
            exec(f"def t{i}({parent}):\n    return {parent} + 1\n", ns)
        return task(ns[f"t{i}"])

    members = [make(i, f"t{i - 1 - (i % 3)}" if i > 3 else None) for i in range(n)]
    graph = build_graph("big", members)

    def once():
        version_of(snapshot_json(snapshot(graph)))
    return (f"version of a {n:,}-task flow (once per run)", *timed(once, reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--tasks", type=int, default=10)
    ns = ap.parse_args()
    runs = ns.runs or (2000 if ns.quick else 10_000)
    reps = 7 if ns.quick else 25
    tmp = tempfile.mkdtemp(prefix="fd-uiq-")
    try:
        state = os.path.join(tmp, "state")
        t = perf_counter()
        generate(state, runs, ns.tasks)
        print(f"generated {runs:,} runs x {ns.tasks} tasks in {perf_counter() - t:.1f}s "
              f"({os.path.getsize(os.path.join(state, 'state.db')) / 2**20:.1f} MiB)",
              file=sys.stderr)
        rows = bench_queries(state, runs, reps)
        bare = os.path.join(tmp, "bare")
        os.makedirs(bare)
        shutil.copy(os.path.join(state, "state.db"), bare)
        conn = sqlite3.connect(os.path.join(bare, "state.db"))
        for index in ("runs_by_session", "runs_by_status", "runs_by_version"):
            conn.execute(f"DROP INDEX {index}")
        conn.commit()
        conn.close()
        rows += [r for r in bench_queries(bare, runs, reps, "without v4 indexes: ")
                 if "list_runs" in r[0]]
        rows.append(bench_version(10_000 if not ns.quick else 2_000, max(reps // 5, 3)))
        print(f"\n{runs:,} runs x {ns.tasks} tasks, {reps} repetitions\n")
        print("| query | median ms | max ms | CPU ms (median) |")
        print("|---|---:|---:|---:|")
        for name, med, worst, cpu in rows:
            print(f"| {name} | {med:.2f} | {worst:.2f} | {cpu:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
