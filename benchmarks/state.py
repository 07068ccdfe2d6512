#!/usr/bin/env python
"""What durable state and the audit trail (the defaults) cost per task.

Usage::

    python benchmarks/state.py            # 5,000-task layered graph + 1,000-task chain, 7 rounds
    python benchmarks/state.py --quick    # 2,000 + 500 tasks, 3 rounds

``overhead.py`` and ``plugins.py`` run with ``state_dir=None``; this one runs
the same no-op graphs (``overhead.py``'s templates) the way ``flowdeco run``
does by default: state in SQLite (group commits by the writer thread,
dependents gated on their inputs being committed) and the audit trail in
``audit.jsonl``.  Configurations, interleaved round after round in one
process with the order rotated, each run into a fresh state directory,
medians of µs per task for the whole ``flowdeco.run`` call, in wall time and
in CPU time of the process (all threads; steadier on a loaded machine):

- ``thread/none``: thread executor, 4 workers, ``state_dir=None`` (reference);
- ``thread/state``: the same with state and audit trail;
- ``sync/state``: the sync executor with state and audit trail (one commit per task).

Also: ``sleeps``: 400 independent tasks each sleeping 2 ms on 8 workers with
state, wall time vs the ideal 100 ms (commits must not hold workers up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from time import perf_counter, process_time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

CONFIGS = (("thread", False), ("thread", True), ("sync", True))


def _sleepy(i: int):
    def fn():
        time.sleep(0.002)
        return i
    fn.__name__ = fn.__qualname__ = f"s{i}"
    return fn


def measure(graphs: dict, rounds: int) -> dict:
    import gc

    from overhead import make_fn

    import flowdeco
    from flowdeco import task
    flows = {}
    for gname, spec in graphs.items():
        for cfg in CONFIGS:
            tag = f"{cfg[0]}{int(cfg[1])}"
            flows[gname, cfg] = [task(make_fn(f"{tag}_{t}", tuple(f"{tag}_{p}" for p in ps)))
                                 for t, ps, _ in spec]
    sleepy = [task(_sleepy(i)) for i in range(400)]
    times: dict = {k: [] for k in flows}
    cpu: dict = {k: [] for k in flows}
    sleeps: list[float] = []
    root = tempfile.mkdtemp(prefix="flowdeco-bench-state-")
    try:
        keys = list(flows)
        for r in range(rounds + 1):  # round 0 warms up
            k = r % len(keys)
            for key in keys[k:] + keys[:k]:
                gname, (executor, state) = key
                sd = tempfile.mkdtemp(dir=root) if state else None
                gc.collect()
                c0, t0 = process_time(), perf_counter()
                res = flowdeco.run(flows[key], state_dir=sd, executor=executor, workers=4)
                t1, c1 = perf_counter(), process_time()
                assert res.ok, res.status
                if r:
                    times[key].append((t1 - t0) / len(flows[key]) * 1e6)
                    cpu[key].append((c1 - c0) / len(flows[key]) * 1e6)
                if sd:
                    shutil.rmtree(sd)
            sd = tempfile.mkdtemp(dir=root)
            t0 = perf_counter()
            res = flowdeco.run(sleepy, state_dir=sd, executor="thread", workers=8)
            t1 = perf_counter()
            assert res.ok
            if r:
                sleeps.append(t1 - t0)
            shutil.rmtree(sd)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {f"{g}  {e}/{'state' if s else 'none'}": (statistics.median(v),
                                                     statistics.median(cpu[g, (e, s)]))
           for (g, (e, s)), v in times.items()}
    out["sleeps (ms, ideal 100)"] = (statistics.median(sleeps) * 1e3, float("nan"))
    return out


def main() -> int:
    from overhead import spec_chain, spec_layered
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    n, c = (2_000, 500) if args.quick else (5_000, 1_000)
    rounds = args.rounds or (3 if args.quick else 7)
    graphs = {f"layered-{n}": spec_layered(n), f"chain-{c}": spec_chain(c)}
    figures = measure(graphs, rounds)
    print(f"median of {rounds} interleaved rounds, µs per task (flowdeco.run, 4 workers); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'':<34}{'wall':>9}{'cpu':>9}")
    for k, (wall, cpu) in figures.items():
        print(f"{k:<34}{wall:>9.1f}{cpu:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
