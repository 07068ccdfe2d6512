#!/usr/bin/env python
"""Peak memory of storing a large result: state on vs ``--no-state``.

Usage::

    python benchmarks/results_memory.py                # 200 MB, bytes and str, thread executor
    python benchmarks/results_memory.py --mb 50        # smaller values
    python benchmarks/results_memory.py --kinds bytes  # one kind
    python benchmarks/results_memory.py --executor process  # the value comes back pickled
    python benchmarks/results_memory.py --json out.json

Each cell runs in a **fresh interpreter** (the script calls itself with
``--cell KIND STATE``): a one-task flow whose task returns a value of
``--mb`` megabytes (``b"x" * n`` or ``"x" * n``), run with
``flowdeco.run`` -- with state in a new temporary state dir (the value goes
to a result file under ``STATE_DIR/results``) or with ``state_dir=None`` --
then ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is read, so the figure is
the whole process's peak (interpreter, imports and the value included; with
``--executor process`` the driver's, which unpickles the value and writes its
file, not the worker's).
The target (issue 18): state on peaks at most 1.3x the ``--no-state`` run.
Each cell is run ``--reps`` times (default 3) and the median is shown.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.3


sys.path.insert(0, str(ROOT))
from flowdeco import task  # noqa: E402


@task
def big(kind: str, mb: int):
    """The large result (module level: a process executor imports it by name)."""
    n = mb * 10**6
    return b"x" * n if kind == "bytes" else "x" * n  # (bytes(n) would not touch its pages)


def cell(kind: str, state: str, mb: int, executor: str) -> dict:
    import flowdeco

    tmp = tempfile.mkdtemp(prefix="fd-resmem-")
    try:
        res = flowdeco.run([big], state_dir=None if state == "none" else tmp,
                           executor=executor, workers=1, params={"kind": kind, "mb": mb})
        ok = res.status == "succeeded"
        error = None if ok else res.outcomes["big"].error
        files = sorted(p.name for p in Path(tmp, "results").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "state": state, "mb": mb, "ok": ok, "error": error,
            "files": files, "peak_mb": round(peak_kb / 1024, 1)}


def run_cell(kind: str, state: str, mb: int, executor: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--cell", kind, state, "--mb", str(mb),
                          "--executor", executor],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--kinds", default="bytes,str")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--executor", default="thread", choices=("thread", "sync", "process"))
    ap.add_argument("--cell", nargs=2, metavar=("KIND", "STATE"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.cell:
        print(json.dumps(cell(ns.cell[0], ns.cell[1], ns.mb, ns.executor)))
        return 0
    rows = []
    failed = False
    print(f"executor {ns.executor}\n")
    print(f"| value | --no-state peak MB | state peak MB | ratio | target <= {TARGET} |")
    print("|---|---|---|---|---|")
    for kind in ns.kinds.split(","):
        peaks: dict[str, list[float]] = {"none": [], "state": []}
        for _ in range(ns.reps):
            for state in ("none", "state"):
                r = run_cell(kind, state, ns.mb, ns.executor)
                if not r["ok"]:
                    print(f"{kind}/{state}: the run failed: {r['error']}", file=sys.stderr)
                    failed = True
                peaks[state].append(r["peak_mb"])
        none, state = statistics.median(peaks["none"]), statistics.median(peaks["state"])
        ratio = state / none
        met = ratio <= TARGET
        failed |= not met
        rows.append({"kind": kind, "mb": ns.mb, "none_peak_mb": none, "state_peak_mb": state,
                     "ratio": round(ratio, 3), "met": met, "reps": peaks})
        print(f"| {kind} {ns.mb} MB | {none:.0f} | {state:.0f} | {ratio:.2f} | "
              f"{'yes' if met else 'NO'} |")
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
