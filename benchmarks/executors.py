#!/usr/bin/env python
"""Thread, process and Dask executors side by side, in one run.

Usage::

    python benchmarks/executors.py                 # about a minute on 2 cores
    python benchmarks/executors.py --reps 3        # median of 3 per cell
    python benchmarks/executors.py --json out.json

Needs the dask plugin (``pip install -e plugins/flowdeco-dask``) for the Dask
rows; without it they are left out.  Two measurements:

1. **CPU-bound flow**: 16 independent tasks of pure-Python work (a loop
   calibrated to take ``--task-seconds``, default 0.5 s, on this machine),
   ``workers=2`` on each executor.  Threads share the GIL, so they take about
   16 x 0.5 s; two processes or two Dask worker processes about half of that.
   Target: process and dask at least 1.7x faster than thread.
2. **Per-task overhead**: 1,000 independent no-op tasks on the same 2-process
   Dask cluster through flowdeco (with the batching of tiny tasks, and with
   it turned off), next to the same calls made with ``client.submit``
   directly (all submitted, then gathered) -- and, for reference, on the
   process and thread executors.

Repetitions run interleaved (rep 1 of every executor, then rep 2, ...); the
tables give medians and, for the CPU flow, the best (minimum) wall times too:
on a shared machine other processes take cores from the 2-process runs but
hardly from the thread run (which uses one core), so the best case is the
better estimate of what the executors can do.

The Dask cluster (a ``LocalCluster`` of 2 worker processes with 1 thread
each, started like ``--executor dask`` starts one) is started for each
repetition's Dask measurements and closed after them; its start-up time is
reported on its own and is not in any other figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flowdeco  # noqa: E402

FLOW = '''
from flowdeco import task

LOOPS = {loops}


def burn(n):
    """Pure-Python work that holds the GIL."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def _cpu(i):
    def cpu():
        return burn(LOOPS) + i
    cpu.__name__ = cpu.__qualname__ = f"cpu{{i}}"
    return task(cpu)


def _noop(i):
    def noop():
        return i
    noop.__name__ = noop.__qualname__ = f"noop{{i}}"
    return task(noop)


CPU = [_cpu(i) for i in range({ncpu})]
NOOP = [_noop(i) for i in range({nnoop})]
for _f in CPU + NOOP:
    globals()[_f.__name__] = _f        # pickled by reference: module and name
'''


def noop(i):
    return i


def calibrate(seconds: float) -> int:
    """Loop count of ``burn`` that takes ``seconds`` here (best of 3 short probes)."""
    from bench_flow import burn  # type: ignore[import-not-found]
    n = 200_000
    best = min(_timed(burn, n) for _ in range(3))
    return max(1, int(n * seconds / best))


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def write_flow(folder: Path, loops: int, ncpu: int, nnoop: int) -> None:
    (folder / "bench_flow.py").write_text(textwrap.dedent(FLOW.format(
        loops=loops, ncpu=ncpu, nnoop=nnoop)))
    sys.modules.pop("bench_flow", None)


def run_flow(tasks, executor, workers=2) -> float:
    t0 = time.perf_counter()
    result = flowdeco.run(tasks, executor=executor, workers=workers, state_dir=None)
    wall = time.perf_counter() - t0
    assert result.ok, {k: o.error for k, o in result.outcomes.items() if o.error}
    return wall


def unbatched(tasks, executor) -> float:
    """``run_flow`` with the remote batching of tiny tasks turned off."""
    import flowdeco.engine.dispatch as dispatch
    saved, dispatch.BATCH_MAX = dispatch.BATCH_MAX, 1
    try:
        return run_flow(tasks, executor)
    finally:
        dispatch.BATCH_MAX = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1, help="repetitions per cell (median)")
    ap.add_argument("--task-seconds", type=float, default=0.5)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--noops", type=int, default=1000)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="fdbench-"))
    sys.path.insert(0, str(folder))          # before workers start: they import bench_flow
    write_flow(folder, 1, 0, 0)
    loops = calibrate(args.task_seconds)
    write_flow(folder, loops, args.tasks, args.noops)
    import bench_flow  # type: ignore[import-not-found]

    try:
        from flowdeco_dask.executor import DaskExecutor
    except ImportError:
        DaskExecutor = None
        print("flowdeco-dask is not installed: no Dask rows", file=sys.stderr)

    out: dict = {"load_start": os.getloadavg()[0], "loops": loops,
                 "one_task_s": _timed(bench_flow.burn, loops), "dask_startup_s": []}
    names = ["thread", "process"] + (["dask", "client.submit"] if DaskExecutor else [])
    cpu: dict[str, list[float]] = {k: [] for k in names if k != "client.submit"}
    over: dict[str, list[float]] = {k: [] for k in names}
    over.update({f"{k} unbatched": [] for k in ("process", "dask") if k in names})
    for rep in range(args.reps):
        print(f"rep {rep + 1}/{args.reps}: thread, process ...", file=sys.stderr)
        for name in ("thread", "process"):
            run_flow(bench_flow.NOOP[:4], name)          # warm-up (imports, first fork)
            cpu[name].append(run_flow(bench_flow.CPU, name))
            over[name].append(run_flow(bench_flow.NOOP, name))
            if name == "process":
                over["process unbatched"].append(unbatched(bench_flow.NOOP, name))
        if DaskExecutor is None:
            continue
        # the cluster lives only while Dask is measured: idle, it would still
        # take some CPU from the other executors' runs
        print(f"rep {rep + 1}/{args.reps}: dask ...", file=sys.stderr)
        t0 = time.perf_counter()
        dask = DaskExecutor.start(2)
        try:
            dask.client.wait_for_workers(2)
            out["dask_startup_s"].append(time.perf_counter() - t0)
            run_flow(bench_flow.NOOP[:4], dask.client)   # warm-up: workers import the flow
            cpu["dask"].append(run_flow(bench_flow.CPU, dask.client))
            over["dask"].append(run_flow(bench_flow.NOOP, dask.client))
            over["dask unbatched"].append(unbatched(bench_flow.NOOP, dask.client))
            t0 = time.perf_counter()
            futs = [dask.client.submit(noop, i, pure=False) for i in range(args.noops)]
            dask.client.gather(futs)
            over["client.submit"].append(time.perf_counter() - t0)
            del futs
        finally:
            dask.shutdown()
    out["cpu"] = {k: statistics.median(v) for k, v in cpu.items()}
    out["cpu_best"] = {k: min(v) for k, v in cpu.items()}
    out["noop"] = {k: statistics.median(v) for k, v in over.items()}
    out["cpu_all"], out["noop_all"] = cpu, over
    out["load_end"] = os.getloadavg()[0]
    report(out, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def report(out: dict, args: argparse.Namespace) -> None:
    cpu = out["cpu"]
    print(f"load average {out['load_start']:.2f} -> {out['load_end']:.2f}; "
          f"one task alone: {out['one_task_s']:.3f} s; reps: {args.reps}")
    if out["dask_startup_s"]:
        print(f"Dask LocalCluster (2 processes) start-up: "
              f"{statistics.median(out['dask_startup_s']):.2f} s (median; not in the figures "
              "below)")
    print()
    print(f"CPU-bound flow: {args.tasks} tasks x {out['one_task_s']:.2f} s, workers=2")
    print()
    best = out["cpu_best"]
    print("| executor | wall (s), median | speed-up vs thread | target (>= 1.7x) "
          "| best wall (s) | best-case speed-up | best-case target |")
    print("|---|---|---|---|---|---|---|")
    for name, wall in cpu.items():
        speed, bspeed = cpu["thread"] / wall, best["thread"] / best[name]
        verdict = ("" if name == "thread" else "PASS" if speed >= 1.7 else "FAIL")
        bverdict = ("" if name == "thread" else "PASS" if bspeed >= 1.7 else "FAIL")
        print(f"| {name} | {wall:.2f} | {speed:.2f}x | {verdict} | {best[name]:.2f} "
              f"| {bspeed:.2f}x | {bverdict} |")
    print()
    n = args.noops
    print(f"Per-task overhead: {n} independent no-op tasks (median)")
    print()
    print("| how | wall (s) | per task (ms) |")
    print("|---|---|---|")
    for name, wall in out["noop"].items():
        label = {"dask": "flowdeco on dask (2 workers)",
                 "dask unbatched": "flowdeco on dask, batching off",
                 "process": "flowdeco on process (2)",
                 "process unbatched": "flowdeco on process (2), batching off",
                 "thread": "flowdeco on thread (2)",
                 "client.submit": "client.submit directly, all at once, then gather"
                 }.get(name, name)
        print(f"| {label} | {wall:.3f} | {wall / n * 1000:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
