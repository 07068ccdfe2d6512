#!/usr/bin/env python
"""The dashboard's server time: the runs list over 10,000 saved runs, a 10,000-task run.

Usage::

    python benchmarks/ui.py            # 10,000 runs, 10,000-task run, 20 rounds
    python benchmarks/ui.py --quick    # 2,000 runs, 2,000 tasks, 5 rounds

Runs are written through the store's own API (``begin_run``, ``record_tasks``,
``finish_run``) plus a synthetic audit trail, in a temporary state dir; then
the Starlette app answers through its TestClient (no network), interleaved
round after round.  Figures are medians in ms: ``/api/runs`` (first page, 50
runs, with the total), the same with a text filter, ``/api/runs/ID`` (the
whole run model: tasks, timeline, critical path, metrics, audit tail) and a
task panel (``/api/runs/ID/tasks/NAME``, which reads the audit trail).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warnings  # noqa: E402

with warnings.catch_warnings():  # newer Starlette prefers httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from flowdeco.plugins.state.store import SQLiteStore, TaskRow  # noqa: E402
from flowdeco.ui.app import create_app  # noqa: E402


def build(state: Path, runs: int, tasks: int) -> None:
    store = SQLiteStore(state)
    store.open()
    t0 = time.time() - runs
    for i in range(runs):
        rid = f"run-{i:06d}"
        store.begin_run(rid, f"flow{i % 7}", t0 + i, resumed=False)
        store.record_tasks(rid, [TaskRow(f"t{j}", "succeeded", 1, t0 + i, t0 + i + 0.5, None,
                                         "1", None, None) for j in range(3)])
        store.finish_run(rid, "succeeded", t0 + i + 1, 1.0)
    store.begin_run("big", "big", t0, resumed=False)
    rows, lines = [], []
    for j in range(tasks):
        s = t0 + j * 0.001
        rows.append(TaskRow(f"t{j:05d}", "succeeded", 1, s, s + 0.004, None, "1", None, None))
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + ".000000Z"
        lines.append(json.dumps({"event": "task_started", "timestamp": ts, "run_id": "big",
                                 "task": f"t{j:05d}", "attempt": 1}))
        lines.append(json.dumps({"event": "task_succeeded", "timestamp": ts, "run_id": "big",
                                 "task": f"t{j:05d}", "attempts": 1, "duration": 0.004}))
    store.record_tasks("big", rows)
    store.finish_run("big", "succeeded", t0 + 10, 10.0)
    store.close()
    (state / "runs" / "big").mkdir(parents=True)
    (state / "runs" / "big" / "audit.jsonl").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ns = ap.parse_args()
    runs, tasks, rounds = (2000, 2000, 5) if ns.quick else (10000, 10000, 20)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        build(state, runs, tasks)
        c = TestClient(create_app(state), base_url="http://127.0.0.1:8765")
        paths = {"runs list": "/api/runs", "runs list, text filter": "/api/runs?text=flow3",
                 "run model": "/api/runs/big", "task panel": "/api/runs/big/tasks/t00042"}
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(rounds):
            for k, p in paths.items():
                t = time.perf_counter()
                r = c.get(p)
                times[k].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (p, r.text[:200])
        print(f"{runs} runs, a {tasks}-task run; median of {rounds} rounds:")
        for k, v in times.items():
            print(f"  {k:24s} {statistics.median(v):8.1f} ms")


if __name__ == "__main__":
    main()
