#!/usr/bin/env python
"""Pipeline throughput and memory against a hand-written ``queue.Queue`` + threads pipeline.

Usage::

    python benchmarks/pipeline.py            # full run: 1,000,000 items, 3 reps (a few minutes)
    python benchmarks/pipeline.py --quick    # smoke run: 200,000 items, 1 rep
    python benchmarks/pipeline.py --json out.json

Both pipelines have three no-op stages (``lambda x: x``) fed lazily from a
generator, with bounded queues of 100 between stages:

- ``hand-written``: one ``queue.Queue(maxsize=100)`` per hop, N threads per
  stage calling the function on one item at a time, a feeder thread, the main
  thread collecting outputs into a list, sentinels to shut down.  The
  smallest correct thing (no ordering, no error handling, no metrics).
- ``flowdeco``: ``Pipeline("bench", queue_size=100, ordered=True)`` with
  ``@pipe.stage(workers=N)`` three times; ``pipe.run(source)``, with input
  order restored, per-item error handling, retries armed, and metrics.

Each measurement runs in a fresh interpreter (this script calls itself with
``--cell``); methods are interleaved rep by rep and the table shows medians.
Throughput is items / wall time of the whole run (threads started and joined
included).  Memory: peak RSS (``VmHWM``) of a process streaming 100,000 and
then 1,000,000 items through the 2-worker pipelines with outputs dropped
(``collect=False``; the hand-written one counts them), so only the engine's
own memory shows: it must stay flat (within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from overhead import peak_rss  # noqa: E402 - the same VmHWM reading as the core benchmark

STAGES = 3
QUEUE = 100


def noop(x):
    return x


def source(n: int):
    yield from range(n)


# --------------------------------------------------------------------------- the two pipelines


def hand_written(n: int, workers: int, collect: bool = True) -> int:
    """Three stages of ``workers`` threads each over ``queue.Queue(maxsize=100)``."""
    qs = [queue.Queue(maxsize=QUEUE) for _ in range(STAGES + 1)]
    stop = object()

    def feed() -> None:
        for item in source(n):
            qs[0].put(item)
        for _ in range(workers):
            qs[0].put(stop)

    done = [0] * STAGES
    lock = threading.Lock()

    def stage(k: int) -> None:
        get, put = qs[k].get, qs[k + 1].put
        while True:
            item = get()
            if item is stop:
                with lock:
                    done[k] += 1
                    last = done[k] == workers
                if last:
                    for _ in range(workers if k < STAGES - 1 else 1):
                        put(stop)
                return
            put(noop(item))

    threads = [threading.Thread(target=feed)]
    threads += [threading.Thread(target=stage, args=(k,)) for k in range(STAGES)
                for _ in range(workers)]
    for t in threads:
        t.start()
    out: list = []
    count = 0
    get = qs[STAGES].get
    while True:
        item = get()
        if item is stop:
            break
        if collect:
            out.append(item)
        count += 1
    for t in threads:
        t.join()
    return len(out) if collect else count


def flowdeco_pipeline(n: int, workers: int, collect: bool = True) -> int:
    from flowdeco import Pipeline

    pipe = Pipeline("bench", queue_size=QUEUE, ordered=True)
    for k in range(STAGES):
        pipe.stage(noop, name=f"s{k}", workers=workers)
    result = pipe.run(source(n), collect=collect)
    assert not result.errors
    if collect:
        assert result.outputs[:3] == [0, 1, 2] and result.outputs[-1] == n - 1
    return result.metrics.outputs


METHODS = {
    "hand-written w1": (hand_written, 1),
    "flowdeco w1": (flowdeco_pipeline, 1),
    "hand-written w2": (hand_written, 2),
    "flowdeco w2": (flowdeco_pipeline, 2),
}


def cell(method: str, n: int, collect: bool) -> dict:
    fn, workers = METHODS[method]
    if fn is flowdeco_pipeline:
        import flowdeco.pipeline  # noqa: F401 - imports are not part of the timing
    t0 = time.perf_counter()
    got = fn(n, workers, collect)
    took = time.perf_counter() - t0
    assert got == n, (method, got, n)
    return {"method": method, "n": n, "collect": collect, "seconds": took,
            "items_per_s": n / took, "peak_rss": peak_rss()}


def run_cell(method: str, n: int, collect: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--cell", method, str(n),
                          "collect" if collect else "drop"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200,000 items, 1 rep")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    ap.add_argument("--cell", nargs=3, metavar=("METHOD", "N", "MODE"), help="(internal)")
    args = ap.parse_args(argv)
    if args.cell:
        method, n, mode = args.cell
        print(json.dumps(cell(method, int(n), mode == "collect")))
        return 0

    n = 200_000 if args.quick else 1_000_000
    reps = 1 if args.quick else 3
    raw: dict = {"throughput": {m: [] for m in METHODS}, "rss": {}}
    for rep in range(reps):
        for m in METHODS:
            print(f"rep {rep + 1}/{reps}: {m} ({n:,} items)", file=sys.stderr)
            raw["throughput"][m].append(run_cell(m, n, True))
    sizes = (100_000, n)
    for m in ("hand-written w2", "flowdeco w2"):
        for size in sizes:
            print(f"peak RSS: {m} ({size:,} items, outputs dropped)", file=sys.stderr)
            raw["rss"][f"{m} {size}"] = [run_cell(m, size, False) for _ in range(reps)]

    med = {m: statistics.median(r["items_per_s"] for r in rs) for m, rs in raw["throughput"].items()}
    best = {m: max(r["items_per_s"] for r in rs) for m, rs in raw["throughput"].items()}
    lines = [f"# Pipeline benchmark ({n:,} items, 3 no-op stages, queues of {QUEUE}, "
             f"median of {reps})", "",
             "| pipeline | items/s (median) | items/s (best) | flowdeco / hand-written | target |",
             "|---|---:|---:|---:|---|"]
    verdicts = []
    for w in (1, 2):
        hw, fd = f"hand-written w{w}", f"flowdeco w{w}"
        ratio = med[fd] / med[hw]
        ok = ratio >= 0.5
        verdicts.append(ok)
        lines.append(f"| {hw} | {med[hw]:,.0f} | {best[hw]:,.0f} | | |")
        lines.append(f"| {fd} (ordered) | {med[fd]:,.0f} | {best[fd]:,.0f} | {ratio:.2f}x | "
                     f">= 0.5x {'PASS' if ok else 'FAIL'} |")
    lines += ["", "## Peak RSS, outputs dropped (2 workers per stage)", "",
              "| pipeline | " + " | ".join(f"{s:,} items" for s in sizes) + " | growth | target |",
              "|---|" + "---:|" * len(sizes) + "---:|---|"]
    for m in ("hand-written w2", "flowdeco w2"):
        peaks = [statistics.median(r["peak_rss"] for r in raw["rss"][f"{m} {s}"]) for s in sizes]
        growth = peaks[-1] / peaks[0] - 1
        ok = abs(growth) <= 0.10
        if m.startswith("flowdeco"):
            verdicts.append(ok)
        lines.append(f"| {m} | " + " | ".join(f"{p / 2**20:.1f} MiB" for p in peaks)
                     + f" | {growth:+.1%} | "
                     + (f"within 10% {'PASS' if ok else 'FAIL'}" if m.startswith("flowdeco")
                        else "(reference)") + " |")
    report = "\n".join(lines)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"raw": raw, "median_items_per_s": med, "report": report}, f, indent=1)
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
