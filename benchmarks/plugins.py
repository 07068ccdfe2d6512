#!/usr/bin/env python
"""What a resilience plugin that is configured but never triggers adds per task.

Usage::

    python benchmarks/plugins.py            # 10,000-task layered graph, 12 rounds
    python benchmarks/plugins.py --quick    # 2,000 tasks, 4 rounds

Same no-op graph as ``overhead.py`` (layered, 20 layers, 1-3 parents per
task), thread executor with 4 workers, no state, one process: each
configuration gets its own copy of the graph (distinct functions), and the
configurations run interleaved, round after round, so that machine noise and
garbage collection hit them alike; figures are medians.  ``run`` is collect +
execute, the span of the core benchmark's per-task "thread run" figure;
``execute`` is ``Session.execute`` alone (run start, every task, run end),
and ``setup`` the part of it before the first task starts (where per-task
hooks run).  Target (issue 3): a plugin configured on every task but never
triggering adds <= 10% to the per-task ``run`` cost; ``execute`` is shown as
the stricter view.

Configurations: ``none``; ``retries`` (``retries=2``, every task succeeds);
``circuit`` (every task through one shared ``CircuitBreaker`` that stays
closed); ``timeout`` (``timeout=60`` on every task, never reached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from time import perf_counter
from typing import Any

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


def measure(n: int, rounds: int) -> dict[str, dict[str, float]]:
    import gc

    from overhead import make_fn, spec_layered

    import flowdeco.runner as runner
    from flowdeco import task
    spec = spec_layered(n)
    flows = {}
    for config in CONFIGS:
        opts = options(config)
        name = lambda x, c=config: f"{c}_{x}"  # noqa: E731
        flows[config] = [task(**opts)(make_fn(name(t), tuple(name(p) for p in params)))
                         for t, params, _ in spec]
    setup: dict[str, list[float]] = {c: [] for c in CONFIGS}
    execute: dict[str, list[float]] = {c: [] for c in CONFIGS}
    whole: dict[str, list[float]] = {c: [] for c in CONFIGS}
    current = [CONFIGS[0]]
    import flowdeco.engine.scheduler as scheduler
    original = scheduler.setup  # what Run.execute calls first

    def timed_setup(self: Any) -> None:
        t0 = perf_counter()
        original(self)
        setup[current[0]].append(perf_counter() - t0)

    scheduler.setup = timed_setup  # type: ignore[assignment]
    try:
        for r in range(rounds + 1):  # round 0 warms up (imports, first hook calls)
            # rotate the order round by round: no configuration always goes first
            for config in CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]:
                current[0] = config
                s = runner.Session.start(options=dict(no_state=True, executor="thread",
                                                      workers=4))
                gc.collect()
                tc = perf_counter()
                g = s.collect(flows[config])
                t0 = perf_counter()
                result = s.execute(g)
                t1 = perf_counter()
                s.close()
                assert result.ok, result.status
                if r == 0:
                    setup[config].pop()
                else:
                    execute[config].append(t1 - t0)
                    whole[config].append(t1 - tc)
    finally:
        scheduler.setup = original  # type: ignore[assignment]
    return {c: {"execute": statistics.median(execute[c]) / n * 1e6,
                "setup": statistics.median(setup[c]) / n * 1e6,
                "run": statistics.median(whole[c]) / n * 1e6} for c in CONFIGS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    n = 2_000 if args.quick else 10_000
    rounds = args.rounds or (4 if args.quick else 12)
    figures = measure(n, rounds)
    base, base_x = figures["none"]["run"], figures["none"]["execute"]
    print(f"layered-{n // 1000}k, thread executor, 4 workers, median of {rounds} interleaved rounds"
          " (us per task)")
    print(f"{'configuration':<14}{'run':>8}{'vs none':>9}  {'target':<12}{'execute':>9}{'vs none':>9}"
          f"{'of which setup':>16}")
    for config in CONFIGS:
        f = figures[config]
        ratio, ratio_x = f["run"] / base, f["execute"] / base_x
        verdict = "" if config == "none" else ("<=1.10 PASS" if ratio <= 1.10 else "<=1.10 FAIL")
        print(f"{config:<14}{f['run']:>8.2f}{ratio:>8.2f}x  {verdict:<12}{f['execute']:>9.2f}"
              f"{ratio_x:>8.2f}x{f['setup']:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
