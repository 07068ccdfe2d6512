"""Fail, fix, resume: a failed run continues where it stopped.

Every run is saved in ``.flowdeco/`` (unless ``--no-state``).  ``extract``
stands for a slow, expensive download; ``clean`` refuses a malformed row.
The first run fails in ``clean``; the fix is a run parameter, and resuming the
run restores ``extract``'s saved result instead of downloading again::

    python -m flowdeco examples/resumable_etl.py --run-id demo
    #   FAILED clean - ValueError: row 100: amount 'n/a' is not a number ...
    #   1 succeeded, 1 failed, 2 skipped (run demo)

    python -m flowdeco examples/resumable_etl.py --resume demo --param on_bad=skip
    #   3 succeeded, 1 restored (run demo)

    python -m flowdeco runs              # the saved runs
    python -m flowdeco runs show demo    # task by task

Had the code of ``extract`` changed in between, the resumed run would say so
and run it again (with everything downstream); ``--rerun extract`` does that
on purpose.  ``--resume last`` picks the latest run of this flow.
"""

import json
from pathlib import Path

from flowdeco import task


@task
def extract(ctx):
    """The expensive step (a download): we never want to run it twice."""
    with open("extract-calls.txt", "a") as fh:  # lets you (and the tests) count the calls
        fh.write("x")
    rows = [{"id": i, "amount": i} for i in range(100)]
    rows.append({"id": 100, "amount": "n/a"})   # the upstream system sent one bad row
    ctx.log.info("extracted", rows=len(rows))
    return rows


@task
def clean(extract, on_bad: str = "fail"):
    """Keep rows with numeric amounts; a bad row fails the run unless ``on_bad=skip``."""
    good = []
    for row in extract:
        if isinstance(row["amount"], (int, float)):
            good.append(row)
        elif on_bad == "fail":
            raise ValueError(f"row {row['id']}: amount {row['amount']!r} is not a number "
                             "(fix the source, or resume with --param on_bad=skip)")
    return good


@task
def summarize(clean):
    return {"rows": len(clean), "total": sum(r["amount"] for r in clean)}


@task
def load(summarize, target: Path = Path("report.json")):
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summarize))
    return str(target)
