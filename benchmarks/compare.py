#!/usr/bin/env python
"""Before/after: ``overhead.py`` cells and ``plugins.py`` for two checkouts, interleaved.

Usage::

    python benchmarks/compare.py --base /tmp/base              # this checkout vs /tmp/base
    python benchmarks/compare.py --base A --head B --reps 7 --big

Every measurement runs in a fresh interpreter with ``PYTHONPATH`` set to one
checkout (and its ``plugins/*`` packages): each tree's own
``benchmarks/overhead.py --cell GRAPH METHOD`` and ``--fixed``, and its own
``benchmarks/plugins.py --quick`` (idle-plugin costs, its ratios to
"none").  The two trees alternate cell by cell, and which goes first flips
every repetition, so load changes hit both alike.  Prints one Markdown table
of medians (µs per task; ratio = head / base) and flags cells whose median
regressed by more than 5% and idle-plugin ratios that moved by more than 10%.
On a busy machine compare the minimums too (the least-disturbed process).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
from time import perf_counter

HERE = os.path.dirname(os.path.abspath(__file__))
GRAPHS = ("chain-2k", "fanout-10k", "layered-10k")
METHODS = ("bare", "pool", "thread_run", "thread_split", "sync_run", "sync_split")
#: (label, method, key in the cell's JSON)
COLUMNS = [("bare loop", "bare", "wall"), ("pool sched.", "pool", "wall"),
           ("thread run", "thread_run", "wall"), ("thread collect", "thread_split", "collect"),
           ("thread execute", "thread_split", "execute"), ("sync run", "sync_run", "wall"),
           ("sync collect", "sync_split", "collect"), ("sync execute", "sync_split", "execute")]


def env_for(tree: str) -> dict[str, str]:
    paths = [tree] + sorted(glob.glob(os.path.join(tree, "plugins", "*")))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def child(tree: str, script: str, args: list[str], timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", script), *args],
                          cwd=tree, env=env_for(tree), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {script} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def plugin_ratios(out: str) -> dict[str, float]:
    """``{configuration: run / none}`` from plugins.py's table."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"(none|retries|circuit|timeout)\s+([\d.]+)\s+([\d.]+)x", line)
        if m:
            found[m.group(1)] = float(m.group(3))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the checkout measured as 'before'")
    ap.add_argument("--head", default=os.path.dirname(HERE), help="'after' (default: this one)")
    ap.add_argument("--reps", type=int, default=5, help="processes per cell and tree")
    ap.add_argument("--plugin-runs", type=int, default=3, help="plugins.py --quick runs per tree")
    ap.add_argument("--plugin-rounds", type=int, default=4, help="rounds in each plugins.py run")
    ap.add_argument("--big", action="store_true", help="also layered-100k (slow)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    args = ap.parse_args()
    trees = {"base": os.path.abspath(args.base), "head": os.path.abspath(args.head)}
    for label in ("overhead.py", "plugins.py"):
        texts = {open(os.path.join(t, "benchmarks", label)).read().replace(
            "runner.Run._setup", "scheduler.setup") for t in trees.values()}
        if len({len(x) for x in texts}) > 1:
            print(f"note: benchmarks/{label} differs between the trees", file=sys.stderr)
    graphs = GRAPHS + (("layered-100k",) if args.big else ())
    raw: dict = {"cells": {}, "fixed": {k: [] for k in trees}, "plugins": {k: [] for k in trees},
                 "loadavg": [os.getloadavg()[0]]}
    t0 = perf_counter()
    for graph in graphs:
        cells = raw["cells"][graph] = {m: {k: [] for k in trees} for m in METHODS}
        for rep in range(args.reps):
            order = ("base", "head") if rep % 2 == 0 else ("head", "base")
            for method in METHODS:
                for which in order:
                    out = child(trees[which], "overhead.py", ["--cell", graph, method])
                    cells[method][which].append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {graph} done ({perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    for rep in range(args.plugin_runs):
        for which in (("base", "head") if rep % 2 == 0 else ("head", "base")):
            raw["fixed"][which].append(json.loads(child(
                trees[which], "overhead.py", ["--fixed", "100", "10"]).strip().splitlines()[-1]))
            raw["plugins"][which].append(plugin_ratios(child(trees[which], "plugins.py",
                                                             ["--quick", "--rounds", str(args.plugin_rounds)])))
    raw["loadavg"].append(os.getloadavg()[0])
    print(f"  fixed cost and plugins done ({perf_counter() - t0:.0f}s)", file=sys.stderr)
    print(render(raw, trees))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"trees": trees, "raw": raw}, fh, indent=1)
    return 0


def render(raw: dict, trees: dict[str, str]) -> str:
    med = statistics.median
    lines = [f"base {trees['base']} vs head {trees['head']}; load average at start/end "
             f"{raw['loadavg'][0]:.1f}/{raw['loadavg'][-1]:.1f}", "",
             "| graph | cell | base µs/task | head µs/task | head/base | min: base | min: head "
             "| min: head/base | |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for graph, cells in raw["cells"].items():
        for label, method, key in COLUMNS:
            runs = cells[method]
            n = runs["base"][0]["n"]
            b = med(c[key] for c in runs["base"]) / n * 1e6
            h = med(c[key] for c in runs["head"]) / n * 1e6
            bm = min(c[key] for c in runs["base"]) / n * 1e6
            hm = min(c[key] for c in runs["head"]) / n * 1e6
            flag = "REGRESSED > 5%" if h > b * 1.05 else ""
            lines.append(f"| {graph} | {label} | {b:.2f} | {h:.2f} | {h / b:.3f} | {bm:.2f} | "
                         f"{hm:.2f} | {hm / bm:.3f} | {flag} |")
    lines += ["", "| fixed cost (one-task run) | base ms | head ms | head/base |",
              "|---|---:|---:|---:|"]
    for ex in ("thread", "sync"):
        b = med(f[ex] for f in raw["fixed"]["base"]) * 1e3
        h = med(f[ex] for f in raw["fixed"]["head"]) * 1e3
        lines.append(f"| {ex} | {b:.3f} | {h:.3f} | {h / b:.3f} |")
    lines += ["", "| idle plugin (plugins.py --quick, run vs none) | base | head | moved |",
              "|---|---:|---:|---|"]
    for config in ("retries", "circuit", "timeout"):
        b = med(p[config] for p in raw["plugins"]["base"] if config in p)
        h = med(p[config] for p in raw["plugins"]["head"] if config in p)
        flag = "MOVED > 10%" if abs(h / b - 1) > 0.10 else ""
        lines.append(f"| {config} | {b:.3f}x | {h:.3f}x | {flag} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
