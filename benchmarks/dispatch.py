#!/usr/bin/env python
"""Per-task hooks: ``manager.direct_caller`` against pluggy's own hook call.

Usage::

    python benchmarks/dispatch.py            # 10,000-task layered graph, 10 rounds
    python benchmarks/dispatch.py --quick    # 2,000 tasks, 4 rounds
    python benchmarks/dispatch.py --once pluggy --config hooks --executor sync  # callgrind

Two hooks are called once per task: ``flowdeco_task_wrap`` at run start and
``flowdeco_task_restore`` when a task becomes ready.  The engine calls them
through :func:`flowdeco.manager.direct_caller`, a plain function over the
implementations; ``pluggy`` replaces it with pluggy's ``hook(**kwargs)`` call
(what the engine would do without it).  Configurations, thread executor, 4
workers, same no-op graph as ``overhead.py``:

- ``state``: the default run, state on (in a temporary folder): the state
  plugin wraps every task (``flowdeco_task_wrap``).
- ``hooks``: no state; one plugin implementing both per-task hooks and
  returning None (as ``flowdeco.testing``'s override plugin does for tasks it
  does not override).

Both dispatch modes run interleaved, round after round, in one process;
figures are medians in µs per task: ``run`` (collect + execute) and ``setup``
(the part of execute before the first task starts, where wrap runs).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
from time import perf_counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from flowdeco import hookimpl  # noqa: E402

CONFIGS = ("state", "hooks")
MODES = ("direct", "pluggy")


def pluggy_caller(caller: Any, argnames: tuple[str, ...], firstresult: bool = False) -> Any:
    """Same signature and results as direct_caller, through pluggy's dispatch."""
    return lambda *args: caller(**dict(zip(argnames, args)))


def use(mode: str) -> None:
    """Make every flowdeco module that imported direct_caller use ``mode``'s caller."""
    import flowdeco.manager as manager
    real = manager.__dict__.setdefault("_bench_direct_caller", manager.direct_caller)
    chosen = real if mode == "direct" else pluggy_caller
    for name, mod in list(sys.modules.items()):
        if name.startswith("flowdeco") and getattr(mod, "direct_caller", None) in (real,
                                                                                 pluggy_caller):
            mod.direct_caller = chosen  # type: ignore[attr-defined]


class IdleHooks:
    """Implements both per-task hooks and never acts."""

    @hookimpl
    def flowdeco_task_wrap(self, run: Any, task: Any) -> Any:
        return None

    @hookimpl
    def flowdeco_task_restore(self, run: Any, task: Any, name: str) -> Any:
        return None


EXECUTOR = ["thread"]


def session(config: str, tmp: str) -> Any:
    import flowdeco.runner as runner
    base = dict(executor=EXECUTOR[0], workers=4)
    if config == "state":
        return runner.Session.start(options=dict(base, state_dir=tmp))
    return runner.Session.start(options=dict(base, no_state=True), plugins=[IdleHooks()])


def build(n: int) -> dict[tuple[str, str], list]:
    from overhead import make_fn, spec_layered

    from flowdeco import task
    spec = spec_layered(n)
    flows = {}
    for config in CONFIGS:
        for mode in MODES:
            name = lambda x, c=config, m=mode: f"{c}_{m}_{x}"  # noqa: E731
            flows[config, mode] = [task(make_fn(name(t), tuple(name(p) for p in params)))
                                   for t, params, _ in spec]
    return flows


def one(flow: list, config: str, mode: str, tmp: str, setup: list) -> tuple[float, float]:
    use(mode)
    s = session(config, tmp)
    gc.collect()
    t0 = perf_counter()
    g = s.collect(flow)
    result = s.execute(g)
    t1 = perf_counter()
    s.close()
    assert result.ok, result.status
    return t1 - t0, setup.pop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--once", choices=MODES + ("none",),
                    help="one run in this mode (for callgrind); none: build only (the baseline)")
    ap.add_argument("--config", choices=CONFIGS, default="state")
    ap.add_argument("--executor", choices=("thread", "sync"), default="thread",
                    help="sync: one thread, deterministic instruction counts")
    args = ap.parse_args()
    EXECUTOR[0] = args.executor
    n = 2_000 if args.quick or args.once else 10_000
    rounds = args.rounds or (4 if args.quick else 10)

    import flowdeco.runner as runner
    setup: list[float] = []
    import flowdeco.engine.scheduler as scheduler
    original = scheduler.setup  # what Run.execute calls first

    def timed_setup(self: Any) -> None:
        t = perf_counter()
        original(self)
        setup.append(perf_counter() - t)

    scheduler.setup = timed_setup  # type: ignore[assignment]
    flows = build(n)
    with tempfile.TemporaryDirectory() as tmp:
        if args.once == "none":
            session(args.config, tmp).close()
            return 0
        if args.once:
            one(flows[args.config, args.once], args.config, args.once, tmp, setup)
            return 0
        whole: dict[tuple[str, str], list[float]] = {k: [] for k in flows}
        setups: dict[tuple[str, str], list[float]] = {k: [] for k in flows}
        keys = list(flows)
        for r in range(rounds + 1):  # round 0 warms up
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                w, st = one(flows[key], *key, tmp, setup)
                if r:
                    whole[key].append(w)
                    setups[key].append(st)
    print(f"layered-{n // 1000}k, {args.executor} executor, 4 workers, median of {rounds} interleaved "
          "rounds (µs per task)")
    print(f"{'config':<8}{'mode':<8}{'run':>8}{'setup':>8}")
    for key in flows:
        print(f"{key[0]:<8}{key[1]:<8}{statistics.median(whole[key]) / n * 1e6:>8.2f}"
              f"{statistics.median(setups[key]) / n * 1e6:>8.2f}")
    for config in CONFIGS:
        d, p = (statistics.median(whole[config, m]) for m in MODES)
        print(f"{config}: pluggy dispatch costs {(p - d) / n * 1e6:+.2f} µs per task "
              f"({p / d - 1:+.1%} of the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
