#!/usr/bin/env python
"""Scheduling overhead of flowdeco against two baselines, on no-op task graphs.

Usage::

    python benchmarks/overhead.py            # full run (a few minutes)
    python benchmarks/overhead.py --quick    # smoke run (well under a minute)
    python benchmarks/overhead.py --json out.json

Every measurement of a graph runs in a fresh interpreter (this script calls
itself with ``--cell GRAPH METHOD``) and prints one JSON line; the parent
takes the median over the repetitions.  See ``benchmarks/README.md`` for what
each column means and the targets checked.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import types
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from graphlib import TopologicalSorter
from time import perf_counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# --------------------------------------------------------------------------- task generation


def _t0():
    return 1


def _t1(a):
    return a + 1


def _t2(a, b):
    return a + b + 1


def _t3(a, b, c):
    return a + b + c + 1


def _tsleep():
    time.sleep(0.01)
    return 1


_TEMPLATES = (_t0, _t1, _t2, _t3)


def make_fn(name: str, params: tuple[str, ...]):
    """A distinct plain function ``name(*params)`` computing a small value from its inputs."""
    tpl = _TEMPLATES[len(params)]
    code = tpl.__code__.replace(co_varnames=tuple(params), co_name=name, co_qualname=name) \
        if sys.version_info >= (3, 11) else \
        tpl.__code__.replace(co_varnames=tuple(params), co_name=name)
    return types.FunctionType(code, {}, name)


# A graph spec is a list of (name, params, after) in a topological order:
# ``params`` are data parents (passed by keyword), ``after`` ordering-only parents.

def spec_chain(n: int) -> list:
    out = [("c0", (), ())]
    for i in range(1, n):
        out.append((f"c{i}", (f"c{i - 1}",), ()))
    return out


def spec_fanout(n: int) -> list:
    leaves = [f"leaf{i}" for i in range(n - 2)]
    out = [("root", (), ())]
    out.extend((leaf, ("root",), ()) for leaf in leaves)
    out.append(("sink", (), tuple(leaves)))
    return out


def spec_layered(n: int, layers: int = 20, seed: int = 42) -> list:
    rng = random.Random(seed)
    width = n // layers
    out = []
    prev: list[str] = []
    for layer in range(layers):
        cur = [f"l{layer}_{j}" for j in range(width)]
        for name in cur:
            if layer == 0:
                out.append((name, (), ()))
            else:
                k = rng.randint(1, 3)
                out.append((name, tuple(rng.sample(prev, k)), ()))
        prev = cur
    return out


GRAPHS = {
    "chain-2k": lambda: spec_chain(2_000),
    "fanout-10k": lambda: spec_fanout(10_000),
    "layered-10k": lambda: spec_layered(10_000),
    "layered-100k": lambda: spec_layered(100_000),
}


def build_tasks(spec: list) -> list:
    """Decorated task functions for ``spec`` (plain functions + ``@task``)."""
    from flowdeco import task
    fns = []
    for name, params, after in spec:
        fn = make_fn(name, params)
        fns.append(task(after=list(after))(fn) if after else task(fn))
    return fns


def plain_nodes(spec: list) -> list:
    """(name, fn, params, deps) for the baselines (undecorated functions)."""
    return [(name, make_fn(name, params), params, params + after) for name, params, after in spec]


# --------------------------------------------------------------------------- baselines


def bare_loop(order: list) -> dict:
    """``order``: precomputed topological list of (name, fn, parent_names)."""
    results: dict = {}
    for name, fn, parents in order:
        results[name] = fn(**{p: results[p] for p in parents})
    return results


def pool_scheduler(nodes: list, workers: int = 4) -> dict:
    """graphlib.TopologicalSorter + ThreadPoolExecutor + wait(FIRST_COMPLETED)."""
    info = {name: (fn, params) for name, fn, params, _ in nodes}  # the input, by name
    ts: TopologicalSorter = TopologicalSorter()
    for name, _fn, _params, deps in nodes:
        ts.add(name, *deps)
    ts.prepare()
    results: dict = {}
    pending: dict = {}
    with ThreadPoolExecutor(workers) as ex:
        submit = ex.submit

        def submit_ready() -> None:
            for name in ts.get_ready():
                fn, params = info[name]
                pending[submit(fn, **{p: results[p] for p in params})] = name

        submit_ready()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                name = pending.pop(fut)
                results[name] = fut.result()
                ts.done(name)
            submit_ready()
    return results


# --------------------------------------------------------------------------- one cell (child process)


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def peak_rss() -> int:
    """VmHWM of this process in bytes (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _check(spec: list, got, sample_all: bool) -> None:
    """Compare results of a run with the bare loop's (outside any timing)."""
    expected = bare_loop([(name, fn, params) for name, fn, params, _ in plain_nodes(spec)])
    names = list(expected) if sample_all else list(expected)[:: max(1, len(expected) // 2000)] + [spec[-1][0]]
    for name in names:
        value = got(name)
        if value != expected[name]:
            raise AssertionError(f"wrong result for {name}: {value!r} != {expected[name]!r}")


def _prepare(spec: list, decorated: bool):
    """Build the functions with the collector paused, then collect: every cell starts alike."""
    gc.disable()
    t0 = perf_counter()
    built = build_tasks(spec) if decorated else plain_nodes(spec)
    took = perf_counter() - t0
    gc.enable()
    gc.collect()
    return built, took


def _warm_up(executor: str) -> float:
    """Run a one-task flow first and return its wall time.

    The first run in a process imports the plugins and scans installed
    distributions for ``flowdeco`` entry points (10-30 ms here, paid once per
    process): that is start-up, not per-task overhead, so it is measured and
    reported on its own (the "first run" figure) and kept out of the cells.
    """
    from flowdeco import run, task

    def warm():
        return 1

    t0 = perf_counter()
    run([task(warm)], state_dir=None, executor=executor)
    return perf_counter() - t0


def run_cell(graph: str, method: str) -> dict:
    spec = GRAPHS[graph]()
    n = len(spec)
    out: dict = {"graph": graph, "method": method, "n": n}
    full_check = n <= 20_000
    if method == "bare":
        nodes, _ = _prepare(spec, False)
        order = [(name, fn, params) for name, fn, params, _ in nodes]
        t0 = perf_counter()
        res = bare_loop(order)
        out["wall"] = perf_counter() - t0
        _check(spec, res.__getitem__, full_check)
    elif method == "pool":
        nodes, _ = _prepare(spec, False)
        t0 = perf_counter()
        res = pool_scheduler(nodes)
        out["wall"] = perf_counter() - t0
        _check(spec, res.__getitem__, full_check)
    elif method in ("thread_run", "sync_run"):
        from flowdeco import run
        fns, out["decorate"] = _prepare(spec, True)
        executor = method.split("_")[0]
        out["first_run"] = _warm_up(executor)
        out["hwm_reset"] = _reset_peak_rss()
        rss0 = _rss_now()
        t0 = perf_counter()
        result = run(fns, state_dir=None, executor=executor, workers=4)
        out["wall"] = perf_counter() - t0
        peak = peak_rss()
        out.update(rss_before=rss0, rss_peak=peak, bytes_per_task=(peak - rss0) / n)
        assert result.ok, result.status
        _check(spec, lambda name: result.outcomes[name].result, full_check)
    elif method in ("thread_split", "sync_split"):
        from flowdeco.runner import Session
        fns, out["decorate"] = _prepare(spec, True)
        executor = method.split("_")[0]
        out["first_run"] = _warm_up(executor)
        t0 = perf_counter()
        s = Session.start(options=dict(no_state=True, executor=executor, workers=4))
        t1 = perf_counter()
        g = s.collect(fns)
        t2 = perf_counter()
        result = s.execute(g)
        t3 = perf_counter()
        s.close()
        t4 = perf_counter()
        out.update(start=t1 - t0, collect=t2 - t1, execute=t3 - t2, close=t4 - t3, wall=t4 - t0)
        assert result.ok, result.status
        _check(spec, lambda name: result.outcomes[name].result, full_check)
    else:
        raise SystemExit(f"unknown method {method!r}")
    return out


def run_fixed(reps: int, warmup: int) -> dict:
    """Fixed cost of a one-task run, thread and sync, in one process."""
    from flowdeco import run, task
    one = task(make_fn("one", ()))
    out: dict = {}
    for executor in ("thread", "sync"):
        for _ in range(warmup):
            run([one], state_dir=None, executor=executor)
        times = []
        for _ in range(reps):
            t0 = perf_counter()
            r = run([one], state_dir=None, executor=executor)
            times.append(perf_counter() - t0)
            assert r.ok
        out[executor] = statistics.median(times)
        out[executor + "_min"] = min(times)
    out["reps"] = reps
    return out


def run_sleeps(reps: int) -> dict:
    """200 independent 10 ms sleeps on 8 thread workers: wall time vs 250 ms.

    Also measured, for context: the same sleeps submitted straight to a
    ThreadPoolExecutor(8), and flowdeco's mean idle gap on a worker between
    the end of one task and the start of its next.
    """
    from flowdeco import run, task
    fns = []
    for i in range(200):
        name = f"s{i}"
        fns.append(task(types.FunctionType(_tsleep.__code__.replace(co_name=name), globals(), name)))
    run(fns[:8], state_dir=None, executor="thread", workers=8)  # warm-up
    times, pool_times, gaps = [], [], []
    for _ in range(reps):
        t0 = perf_counter()
        with ThreadPoolExecutor(8) as ex:
            wait([ex.submit(fn) for fn in fns])
        pool_times.append(perf_counter() - t0)
        t0 = perf_counter()
        r = run(fns, state_dir=None, executor="thread", workers=8)
        times.append(perf_counter() - t0)
        assert r.ok
        by_worker: dict = {}
        for o in r.outcomes.values():
            by_worker.setdefault(o.worker, []).append((o.started, o.finished))
        for spans in by_worker.values():
            spans.sort()
            gaps.extend(b[0] - a[1] for a, b in zip(spans, spans[1:]))
    return {"wall": statistics.median(times), "min": min(times), "ideal": 200 / 8 * 0.010,
            "pool_wall": statistics.median(pool_times),
            "gap_ms": statistics.mean(gaps) * 1e3 if gaps else None}


# --------------------------------------------------------------------------- parent: orchestration

METHODS = ("bare", "pool", "thread_run", "thread_split", "sync_run", "sync_split")
#: repetitions per method at 100k (each process spends ~7 s just decorating 100k functions)
REPS_100K = {"bare": 3, "pool": 2, "thread_run": 3, "thread_split": 2}


def child(args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{' '.join(args)} printed no JSON:\n{proc.stdout}\n{proc.stderr}")


def measure(quick: bool, log) -> dict:
    small = dict.fromkeys(METHODS, 1 if quick else 5)
    plan = [("chain-2k", small), ("fanout-10k", small), ("layered-10k", small)]
    if not quick:
        plan.append(("layered-100k", REPS_100K))
    raw: dict = {"cells": {}, "quick": quick, "python": sys.version.split()[0],
                 "cpus": os.cpu_count(), "flowdeco": _git_state(), "loadavg": [_loadavg()]}
    for graph, reps in plan:
        cells: dict = {m: [] for m in reps}
        t0 = perf_counter()
        for rep in range(max(reps.values())):  # interleave methods so drift hits all alike
            for m, r in reps.items():
                if rep < r:
                    cells[m].append(child(["--cell", graph, m]))
        raw["cells"][graph] = cells
        log(f"  {graph}: {sum(reps.values())} processes in {perf_counter() - t0:.1f}s")
    raw["fixed"] = child(["--fixed", "100" if quick else "200", "10" if quick else "20"])
    raw["sleeps"] = child(["--sleeps", "2" if quick else "5"])
    log("  one-task fixed cost and sleeps done")
    raw["loadavg"].append(_loadavg())
    return raw


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _git_state() -> str:
    """Commit of the measured flowdeco, with '+dirty' when flowdeco/ has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "flowdeco"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head or "?") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def summarize(raw: dict, stat=statistics.median) -> dict:
    """``stat`` (median or min) per graph; times in µs per task."""
    def _med(cells: list[dict] | None, key: str) -> float | None:
        vals = [c[key] for c in cells or () if key in c]
        return stat(vals) if vals else None

    rows = {}
    for graph, cells in raw["cells"].items():
        first = next(iter(cells.values()))
        n = first[0]["n"]

        def us(method: str, key: str = "wall") -> float | None:
            v = _med(cells.get(method), key)
            return None if v is None else v / n * 1e6

        rows[graph] = {
            "n": n, "reps": "-".join(sorted({str(len(c)) for c in cells.values()})),
            "bare": us("bare"), "pool": us("pool"),
            "thread_run": us("thread_run"),
            "thread_collect": us("thread_split", "collect"),
            "thread_execute": us("thread_split", "execute"),
            "sync_run": us("sync_run"),
            "sync_collect": us("sync_split", "collect"),
            "sync_execute": us("sync_split", "execute"),
            "session_start_ms": (lambda v: None if v is None else v * 1e3)(
                _med(cells.get("thread_split"), "start")),
            "decorate": us("thread_split", "decorate"),
            "first_run_ms": (lambda v: None if v is None else v * 1e3)(
                _med(cells.get("thread_run"), "first_run")),
            "mem_bytes_per_task": _med(cells.get("thread_run"), "bytes_per_task"),
        }
    return rows


def targets(rows: dict, raw: dict, best: bool = False) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, limit, passed) rows; ``best`` uses the min-based rows and numbers."""
    out: list = []

    def ratio(a, b):
        return None if a is None or b is None else a / b

    def add(name, value, limit, fmt="{:.2f}x"):
        if value is None:
            out.append((name, "n/a", f"<= {fmt.format(limit)}", None))
        else:
            out.append((name, fmt.format(value), f"<= {fmt.format(limit)}", value <= limit))

    for g in ("fanout-10k", "layered-10k"):
        r = rows.get(g, {})
        add(f"{g}: thread run / pool scheduler", ratio(r.get("thread_run"), r.get("pool")), 2.0)
    r = rows.get("chain-2k", {})
    add("chain-2k: thread run / pool scheduler", ratio(r.get("thread_run"), r.get("pool")), 1.0)
    for g in ("chain-2k", "fanout-10k", "layered-10k"):
        r = rows.get(g, {})
        add(f"{g}: sync run / bare loop", ratio(r.get("sync_run"), r.get("bare")), 3.0)
        add(f"{g}: sync execute-only / bare loop", ratio(r.get("sync_execute"), r.get("bare")), 3.0)
    big, small = rows.get("layered-100k"), rows.get("layered-10k", {})
    add("layered thread run: per-task 100k / 10k",
        ratio(big.get("thread_run"), small.get("thread_run")) if big else None, 2.5)
    add("memory per task at 100k (peak RSS during run - RSS before)",
        big.get("mem_bytes_per_task") if big else None, 1024, "{:.0f} B")
    fixed = raw.get("fixed", {})
    add("one-task run, thread executor (median)",
        fixed["thread_min" if best else "thread"] * 1e3 if "thread" in fixed else None,
        1.0, "{:.3f} ms")
    sl = raw.get("sleeps", {})
    add("200 x 10 ms sleeps, 8 workers: wall / 250 ms ideal",
        sl["min" if best else "wall"] / sl["ideal"] if "wall" in sl else None, 1.05)
    return out


def render(rows: dict, tgt: list, tgt_min: list, raw: dict) -> str:
    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    lines = [f"flowdeco {raw.get('flowdeco', '?')}, Python {raw.get('python')}, "
             f"{raw.get('cpus')} CPUs, load average at start/end: "
             + "/".join(f(x) for x in raw.get("loadavg", [])), ""]
    if any(x is not None and x > 1.5 for x in raw.get("loadavg", [])):
        lines += ["**Warning: the machine was busy (load average > 1.5); thread numbers are "
                  "unreliable. Compare the min-based column of the targets table.**", ""]
    lines += ["## Per-task cost (µs per task, median of fresh processes)", ""]
    cols = [("graph", None), ("tasks", "n"), ("reps", "reps"), ("bare loop", "bare"),
            ("pool sched.", "pool"), ("thread run", "thread_run"),
            ("thread collect", "thread_collect"), ("thread execute", "thread_execute"),
            ("sync run", "sync_run"), ("sync collect", "sync_collect"),
            ("sync execute", "sync_execute")]
    lines.append("| " + " | ".join(c for c, _ in cols) + " |")
    lines.append("|" + "|".join("---" if k is None else "---:" for _, k in cols) + "|")
    for g, r in rows.items():
        cells = [g] + [str(r[k]) if k in ("n", "reps") else f(r.get(k)) for _, k in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Not in the run() timing (informative)", "",
              "| graph | @task decoration µs/task | first run in a process ms | "
              "Session.start ms | thread run: peak RSS growth B/task |",
              "|---|---:|---:|---:|---:|"]
    for g, r in rows.items():
        lines.append(f"| {g} | {f(r.get('decorate'))} | {f(r.get('first_run_ms'))} | "
                     f"{f(r.get('session_start_ms'))} | "
                     f"{f(r.get('mem_bytes_per_task'), 0)} |")

    fixed, sl = raw.get("fixed", {}), raw.get("sleeps", {})
    lines += ["", "## Other measurements", ""]
    if fixed:
        lines.append(f"- one-task run() fixed cost, median of {fixed.get('reps', '?')}: "
                     f"thread {fixed['thread'] * 1e3:.3f} ms (min {fixed['thread_min'] * 1e3:.3f}), "
                     f"sync {fixed['sync'] * 1e3:.3f} ms (min {fixed['sync_min'] * 1e3:.3f})")
    if sl:
        lines.append(f"- 200 x 10 ms sleeps on 8 thread workers: {sl['wall'] * 1e3:.1f} ms "
                     f"(min {sl['min'] * 1e3:.1f}) vs ideal {sl['ideal'] * 1e3:.0f} ms; the same "
                     f"sleeps on a bare ThreadPoolExecutor(8): {sl['pool_wall'] * 1e3:.1f} ms; "
                     f"flowdeco's mean idle gap on a worker between two tasks: "
                     f"{f(sl.get('gap_ms'), 3)} ms")
    big = raw["cells"].get("layered-100k", {}).get("thread_run")
    if big:
        c = big[0]
        lines.append(f"- memory, layered-100k thread run (first process): RSS before run "
                     f"{c['rss_before'] / 2**20:.1f} MiB, peak during run {c['rss_peak'] / 2**20:.1f} MiB"
                     + ("" if c.get("hwm_reset") else " (peak could not be reset; may include the build)"))
    def verdict(ok):
        return "n/a" if ok is None else "PASS" if ok else "FAIL"

    lines += ["", "## Targets (verdict from medians; best-case = from the per-cell minimums)", "",
              "| target | measured | limit | result | best-case | best-case result |",
              "|---|---:|---:|---|---:|---|"]
    for (name, value, limit, ok), (_, bvalue, _, bok) in zip(tgt, tgt_min):
        lines.append(f"| {name} | {value} | {limit} | {verdict(ok)} | {bvalue} | {verdict(bok)} |")
    return "\n".join(lines)


def _emit(obj: dict) -> int:
    """Child processes: print the JSON line and leave without tearing down the heap."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one repetition per cell, no 100k graph")
    ap.add_argument("--json", metavar="PATH", help="also write raw numbers, medians and targets here")
    ap.add_argument("--cell", nargs=2, metavar=("GRAPH", "METHOD"),
                    help=f"(internal) measure one cell: GRAPH in {list(GRAPHS)}, METHOD in {list(METHODS)}")
    ap.add_argument("--fixed", nargs=2, type=int, metavar=("REPS", "WARMUP"), help="(internal)")
    ap.add_argument("--sleeps", type=int, metavar="REPS", help="(internal)")
    args = ap.parse_args(argv)
    if args.cell:
        return _emit(run_cell(*args.cell))
    if args.fixed:
        return _emit(run_fixed(*args.fixed))
    if args.sleeps:
        return _emit(run_sleeps(args.sleeps))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = perf_counter()
    log(f"flowdeco overhead benchmark ({'quick' if args.quick else 'full'}), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    raw = measure(args.quick, log)
    rows = summarize(raw)
    tgt = targets(rows, raw)
    tgt_min = targets(summarize(raw, min), raw, best=True)
    print(render(rows, tgt, tgt_min, raw))
    log(f"total {perf_counter() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"raw": raw, "per_task_us": rows, "per_task_us_min": summarize(raw, min),
                       "targets": [dict(target=a, measured=b, limit=c, passed=d,
                                        best_case=bm, best_case_passed=bp)
                                   for (a, b, c, d), (_, bm, _, bp) in zip(tgt, tgt_min)]},
                      fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
