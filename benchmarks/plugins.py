#!/usr/bin/env python
"""What a resilience plugin that is configured but never triggers adds per task.

Usage::

    python benchmarks/plugins.py            # 10,000-task layered graph, 5 repetitions
    python benchmarks/plugins.py --quick    # 2,000 tasks, 3 repetitions

Same no-op graph as ``overhead.py`` (layered, 20 layers, 1-3 parents per
task), thread executor with 4 workers, no state.  Each configuration runs in
a fresh interpreter per repetition (this script calls itself with
``--cell CONFIG N``); the figure is the median execute time per task, and the
ratio is against ``none`` (no option set).  Target (issue 3): <= 1.10x.

Configurations: ``none``; ``retries`` (``retries=2``, every task succeeds);
``circuit`` (every task through one shared ``CircuitBreaker`` that stays
closed); ``timeout`` (``timeout=60`` on every task, never reached).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from time import perf_counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

CONFIGS = ("none", "retries", "circuit", "timeout")


def options(config: str) -> dict:
    if config == "none":
        return {}
    if config == "retries":
        return {"retries": 2}
    if config == "circuit":
        from flowdeco import CircuitBreaker
        return {"circuit": CircuitBreaker("bench", threshold=5)}
    if config == "timeout":
        return {"timeout": 60.0}
    raise SystemExit(f"unknown configuration {config!r}")


def cell(config: str, n: int) -> dict:
    from overhead import make_fn, spec_layered

    from flowdeco import task
    from flowdeco.runner import Session
    opts = options(config)
    spec = spec_layered(n)
    fns = [task(**opts)(make_fn(name, params)) for name, params, _ in spec]
    warm = [task(**opts)(make_fn(f"w{i}", ())) for i in range(50)]
    for _ in range(2):  # imports, entry points, the first hook calls
        s = Session.start(options=dict(no_state=True, executor="thread", workers=4))
        assert s.execute(s.collect(warm)).ok
        s.close()
    s = Session.start(options=dict(no_state=True, executor="thread", workers=4))
    g = s.collect(fns)
    t0 = perf_counter()
    result = s.execute(g)
    t1 = perf_counter()
    s.close()
    assert result.ok, result.status
    return {"execute_us_per_task": (t1 - t0) / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--cell", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        print(json.dumps(cell(args.cell[0], int(args.cell[1]))))
        return 0
    n = 2_000 if args.quick else 10_000
    reps = args.reps or (3 if args.quick else 5)
    figures: dict[str, float] = {}
    for config in CONFIGS:
        values = []
        for _ in range(reps):
            out = subprocess.run([sys.executable, __file__, "--cell", config, str(n)],
                                 capture_output=True, text=True, check=True)
            values.append(json.loads(out.stdout.strip().splitlines()[-1])["execute_us_per_task"])
        figures[config] = statistics.median(values)
    base = figures["none"]
    print(f"layered-{n // 1000}k, thread executor, 4 workers, median of {reps}")
    print(f"{'configuration':<14}{'us/task':>10}{'vs none':>10}  target <= 1.10x")
    for config in CONFIGS:
        ratio = figures[config] / base
        verdict = "" if config == "none" else ("PASS" if ratio <= 1.10 else "FAIL")
        print(f"{config:<14}{figures[config]:>10.1f}{ratio:>9.2f}x  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
