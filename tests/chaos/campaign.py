"""Run a crash campaign against the flowdeco in this checkout and print its figures.

    python tests/chaos/campaign.py --kills 30 --seed 1 --executor thread,process --workers 4

Each kill SIGKILLs the main process of a real ``python -m flowdeco`` run at a
seeded random moment; the run is resumed until it completes (see
:mod:`chaos.crashlib` for what is checked).  Exit 0 when every check held for
every executor, 1 otherwise.  ``--json FILE`` writes the figures and every
violation; ``-v`` prints one line per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# this checkout's tests/ (for chaos.crashlib) and flowdeco, whatever is installed
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from chaos.crashlib import LeftoverWatch, run_campaign, summary_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=30, help="kills per executor (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--executor", default="thread",
                    help="thread, process, or both as thread,process (default thread)")
    ap.add_argument("--workers", "-w", type=int, default=4)
    ap.add_argument("--dir", default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per round")
    ns = ap.parse_args(argv)
    executors = [e.strip() for e in ns.executor.split(",") if e.strip()]
    if not executors or any(e not in ("thread", "process") for e in executors):
        ap.error("--executor: thread, process or thread,process")
    tmp = None
    if ns.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowdeco-crash-")
        root = Path(tmp.name)
    else:
        root = Path(ns.dir)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if ns.verbose else None
    watch = LeftoverWatch()
    campaigns = [run_campaign(root / ex, kills=ns.kills, seed=ns.seed, executor=ex,
                              workers=ns.workers, watch=watch, progress=log)
                 for ex in executors]
    watch.drain()
    print(summary_table(campaigns))
    failed = False
    for camp in campaigns:
        details = {
            "audit promise": camp.audit_violations(),
            "store promise": camp.store_violations(),
            f"re-runs > {camp.bound}": [f"round {k.round} kill of session {k.session} "
                                        f"(+{k.delay:.2f}s): {len(k.reruns)} {sorted(k.reruns)}"
                                        for k in camp.over_bound()],
            "refused resumes": camp.refused(),
            "leftover processes": camp.leftovers(),
            "final results": camp.unequal_rounds(),
            "other problems": camp.problems(),
        }
        for what, items in details.items():
            if items:
                failed = True
                print(f"\n{camp.executor}: {what}: {len(items)}")
                for item in items[:8]:
                    print(f"  {item}")
                if len(items) > 8:
                    print(f"  ... and {len(items) - 8} more")
    if ns.json:
        Path(ns.json).write_text(json.dumps(
            [{**c.summary(), "audit_violations_detail": c.audit_violations(),
              "reruns": c.rerun_counts(), "refused_detail": c.refused(),
              "leftovers_detail": c.leftovers(), "unequal_rounds": c.unequal_rounds(),
              "problems": c.problems()} for c in campaigns], indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
