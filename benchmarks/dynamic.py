#!/usr/bin/env python
"""Per-instance overhead of a mapped task (issue 8) next to the core per-task figure.

Usage::

    python benchmarks/dynamic.py            # 5 processes per cell (about a minute)
    python benchmarks/dynamic.py --quick    # 2 processes per cell
    python benchmarks/dynamic.py --json out.json

Cells, each in a fresh interpreter (this script calls itself with ``--cell``),
interleaved, medians (and minimums) over the processes:

- ``map-thread`` / ``map-sync``: ``@task(map="items")`` over 100,000 elements
  of a no-op function, ``workers=4``; ``Session.execute`` time / 100,000
  (the two one-element tasks around it are included and negligible);
- ``pool-map``: ``ThreadPoolExecutor(4).map`` of the same function over the
  same 100,000 elements (pool creation and shutdown included);
- ``layered-10k``: the core benchmark's per-task figure, reusing
  ``benchmarks/overhead.py``'s generator and cell: 10,000 no-op tasks in 20
  layers, thread executor, ``workers=4``, ``Session.execute`` time / 10,000.

Target: map-thread per instance <= 1.2x the layered-10k thread per-task figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

N = 100_000
CELLS = ("map-thread", "map-sync", "pool-map", "layered-10k")
TARGET = 1.2


def noop(items):
    return items


def run_cell(cell: str) -> dict:
    import gc

    import overhead
    if cell == "layered-10k":
        out = overhead.run_cell("layered-10k", "thread_split")
        return {"cell": cell, "n": out["n"], "execute": out["execute"]}
    values = list(range(N))
    gc.collect()
    if cell == "pool-map":
        t0 = perf_counter()
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(noop, values))
        took = perf_counter() - t0
        assert got == values
        return {"cell": cell, "n": N, "execute": took}
    from flowdeco import task
    from flowdeco.runner import Session
    executor = cell.split("-")[1]

    def items():
        return values

    def done(mapped):
        return len(mapped)

    fns = [task(items), task(name="mapped", map="items")(noop), task(done)]
    overhead._warm_up(executor)
    s = Session.start(options=dict(no_state=True, executor=executor, workers=4))
    g = s.collect(fns)
    t0 = perf_counter()
    result = s.execute(g)
    took = perf_counter() - t0
    s.close()
    assert result.ok and result["done"].result == N, result.status
    assert result["mapped[99999]"].result == N - 1
    return {"cell": cell, "n": N, "execute": took}


def child(cell: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--cell", cell],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cell} failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 processes per cell instead of 5")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    ap.add_argument("--cell", choices=CELLS, help="(internal) measure one cell")
    args = ap.parse_args(argv)
    if args.cell:
        sys.stdout.write(json.dumps(run_cell(args.cell)) + "\n")
        sys.stdout.flush()
        os._exit(0)
    reps = 2 if args.quick else 5
    raw: dict[str, list[dict]] = {c: [] for c in CELLS}
    load = [os.getloadavg()[0]]
    for _ in range(reps):   # interleaved, so drift hits every cell alike
        for cell in CELLS:
            raw[cell].append(child(cell))
    load.append(os.getloadavg()[0])
    us = {c: {stat.__name__: stat(r["execute"] / r["n"] * 1e6 for r in raw[c])
              for stat in (statistics.median, min)} for c in CELLS}
    lines = [f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {reps} processes per "
             f"cell, load average at start/end {load[0]:.2f}/{load[1]:.2f}", "",
             "| cell | µs per instance/task (median) | (min) |", "|---|---:|---:|"]
    for c in CELLS:
        lines.append(f"| {c} | {us[c]['median']:.2f} | {us[c]['min']:.2f} |")
    ratio = {s: us["map-thread"][s] / us["layered-10k"][s] for s in ("median", "min")}
    vs_pool = {s: us["map-thread"][s] / us["pool-map"][s] for s in ("median", "min")}
    lines += ["",
              f"map-thread per instance / layered-10k thread per task: {ratio['median']:.2f}x "
              f"(min-based {ratio['min']:.2f}x), target <= {TARGET}x: "
              f"{'PASS' if ratio['median'] <= TARGET else 'FAIL'}",
              f"map-thread per instance / ThreadPoolExecutor(4).map per element: "
              f"{vs_pool['median']:.2f}x (min-based {vs_pool['min']:.2f}x)"]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"raw": raw, "us": us, "ratio": ratio, "vs_pool": vs_pool}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
