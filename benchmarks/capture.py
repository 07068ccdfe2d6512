#!/usr/bin/env python
"""What output capture costs per task when tasks print and log nothing (issue 19).

Usage::

    python benchmarks/capture.py                  # 10,000-task layered graph, 12 rounds
    python benchmarks/capture.py --quick          # 2,000 tasks, 4 rounds
    python benchmarks/capture.py --executor sync
    python benchmarks/capture.py --once on|off    # one run, for callgrind (see below)

Same no-op layered graph as ``overhead.py``, one process, configurations run
interleaved round after round; figures are medians of ``Session.execute``
(run start, every task, run end) in µs per task.  Capture only tracks attempts
when something reports, so both configurations register a reporter: ``noop``
(a ``flowdeco_report`` that does nothing: the strictest view, every other
per-event cost gone) or ``audit`` (the JSON-lines audit trail in a temporary
state dir, state plugin off).  Target: capture on within 5% of capture off.

Wall-clock figures are noisy on a shared machine; for instruction counts::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/capture.py --once on --tasks 2000   # and 12000: the
    # difference / 10,000 is the per-task count, fixed costs cancel out
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
from time import perf_counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from flowdeco import hookimpl  # noqa: E402


class NoopReporter:
    """Something that reports: what makes a run track attempts at all."""

    @hookimpl
    def flowdeco_report(self, run, event):  # type: ignore[no-untyped-def]
        pass


def build(n: int, prefix: str) -> list:
    from overhead import make_fn, spec_layered

    from flowdeco import task
    name = lambda x: f"{prefix}_{x}"  # noqa: E731
    return [task(make_fn(name(t), tuple(name(p) for p in params)))
            for t, params, _ in spec_layered(n)]


def one_run(fns: list, capture: bool, reporter: str, executor: str, state: str) -> float:
    from flowdeco.engine.session import Session
    opts = dict(executor=executor, workers=4, capture="yes" if capture else "no")
    plugins: list = []
    if reporter == "noop":
        opts["no_state"] = True
        plugins = [NoopReporter()]
    else:
        opts["state_dir"] = state
    s = Session.start(options=opts, plugins=plugins, disable=("state", "metrics"))
    try:
        g = s.collect(fns)
        gc.collect()
        t0 = perf_counter()
        result = s.execute(g)
        t1 = perf_counter()
    finally:
        s.close()
    assert result.ok, result.status
    return t1 - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--executor", default="thread", choices=("thread", "sync"))
    ap.add_argument("--reporter", default="noop", choices=("noop", "audit"))
    ap.add_argument("--once", choices=("on", "off", "build"), default=None,
                    help="one run (build: graph and collection only, to subtract)")
    ap.add_argument("--tasks", type=int, default=None, help="graph size (default 10,000)")
    args = ap.parse_args()
    n = args.tasks or (2_000 if args.quick else 10_000)
    state = tempfile.mkdtemp(prefix="fd-capture-bench-")
    if args.once:
        fns = build(n, "once")
        if args.once == "build":
            from flowdeco.engine.session import Session
            s = Session.start(options=dict(no_state=True))
            s.collect(fns)
            s.close()
        else:
            one_run(fns, args.once == "on", args.reporter, args.executor, state)
        return 0
    rounds = args.rounds or (4 if args.quick else 12)
    flows = {"off": build(n, "off"), "on": build(n, "on")}
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds + 1):  # round 0 warms up
        order = ("off", "on") if r % 2 else ("on", "off")
        for config in order:
            t = one_run(flows[config], config == "on", args.reporter, args.executor, state)
            if r:
                times[config].append(t)
    off = statistics.median(times["off"]) / n * 1e6
    on = statistics.median(times["on"]) / n * 1e6
    ratio = on / off
    print(f"layered-{n // 1000}k, {args.executor} executor, reporter {args.reporter}, "
          f"median of {rounds} interleaved rounds (µs per task, Session.execute)")
    print(f"capture off {off:8.2f}")
    print(f"capture on  {on:8.2f}  {ratio:.3f}x  {'PASS' if ratio <= 1.05 else 'FAIL'} (<= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
