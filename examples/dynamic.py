"""Dynamic flows: map over discovered files, route by size, aggregate, always clean up.

    python -m flowdeco examples/dynamic.py --no-state
    python -m flowdeco examples/dynamic.py --no-state --param folder=/some/dir
    python -m flowdeco examples/dynamic.py --no-state --param threshold=100000
    python -m flowdeco examples/dynamic.py --collect-only

``workdir`` uses ``--param folder=`` or, by default, makes a temporary folder
with a few sample files.  ``discover`` lists the files; ``parse`` runs once per
file (``parse[0]``, ``parse[1]``, ... each with its own retries, outcome and
audit events) and ``summary`` receives the list of their results in file
order; with state on, an unchanged file is not parsed again in later runs
(``cache=file_identity``: ``--param folder=`` a fixed folder to see it).
``archive_big`` and ``inline_small`` are routed by ``when=``
conditions on the sizes: a branch with nothing to do is ``skipped`` with
reason ``condition``.  ``report`` (``trigger="none_failed"``) merges whichever
branches ran, and ``cleanup`` (``trigger="all_done"``) removes the temporary
folder whatever happened before, even when a file could not be parsed.
"""

import shutil
import tempfile
from pathlib import Path

from flowdeco import task

SAMPLES = {"orders.csv": 40, "customers.csv": 400, "events.log": 3000, "notes.txt": 5}


@task
def workdir(folder: str = ""):
    """The folder to scan: ``--param folder=`` or a temporary one with sample files."""
    if folder:
        return {"path": folder, "temporary": False}
    path = Path(tempfile.mkdtemp(prefix="flowdeco-dynamic-"))
    for name, lines in SAMPLES.items():
        (path / name).write_text("".join(f"{name},{i},{i * i}\n" for i in range(lines)))
    return {"path": str(path), "temporary": True}


@task
def discover(workdir):
    """Every file of the folder, sorted: the list ``parse`` maps over."""
    return sorted(str(p) for p in Path(workdir["path"]).iterdir() if p.is_file())


def file_identity(discover):
    """The cache key of one file: path, size and modification time (not its content)."""
    st = Path(discover).stat()
    return [discover, st.st_size, st.st_mtime_ns]


@task(map="discover", retries=1, cache=file_identity)
def parse(discover):
    """One file: its size and line count (runs once per discovered file).

    With state on, a file parsed before and unchanged since (same path, size
    and mtime) is restored from the cache instead of read again.
    """
    path = Path(discover)
    text = path.read_text(encoding="utf-8")
    return {"file": path.name, "bytes": path.stat().st_size, "lines": text.count("\n")}


@task
def summary(parse, threshold: int = 10_000):
    """Aggregate the per-file results (a list in ``discover`` order) and split by size."""
    return {
        "files": len(parse),
        "bytes": sum(p["bytes"] for p in parse),
        "lines": sum(p["lines"] for p in parse),
        "big": [p["file"] for p in parse if p["bytes"] > threshold],
        "small": [p["file"] for p in parse if p["bytes"] <= threshold],
    }


def has_big(summary):
    return bool(summary["big"])


def has_small(summary):
    return bool(summary["small"])


@task(when=has_big)
def archive_big(summary, ctx):
    """Big files go to the archive (here: just say which)."""
    ctx.log.info("archiving", files=summary["big"])
    return sorted(summary["big"])


@task(when=has_small)
def inline_small(summary):
    """Small files are kept inline."""
    return sorted(summary["small"])


@task(trigger="none_failed")
def report(summary, archive_big, inline_small):
    """Runs unless something failed; a branch that was skipped gives None."""
    return {**summary, "archived": archive_big or [], "inlined": inline_small or []}


@task(trigger="all_done", after=[report])
def cleanup(workdir, ctx):
    """Always runs, whatever happened upstream; says how each dependency ended."""
    removed = None
    if workdir is not None and workdir["temporary"]:
        shutil.rmtree(workdir["path"], ignore_errors=True)
        removed = workdir["path"]
    return {"removed": removed,
            "upstream": {name: out.status for name, out in ctx.upstream.items()}}
