"""File watcher: poll a folder and process each new file once (the seed's file_watcher).

``watch`` is an interval task: every 50 ms it processes the new ``*.txt``
files of ``folder`` (counts their lines and words) and moves each into
``folder/done/``, so every file is processed once, also across restarts.
It stops ``until=`` a file named ``STOP`` appears in the folder (the STOP
file is removed, so the watcher can be started again), or on Ctrl-C.
``summary`` then gets the list of all polls.

Writers should create a file under another name (``.name.tmp``) and rename
it into place, so the watcher never reads a half-written file: names that
start with ``.`` or do not match ``pattern`` are ignored.  Processing is at
least once: a crash between processing a file and moving it processes it
again on the next start.

Run it::

    mkdir -p inbox && python -m flowdeco examples/file_watcher.py --no-state --param folder=inbox
    # elsewhere: echo "hello world" > inbox/a.txt; touch inbox/STOP
"""

from pathlib import Path

from flowdeco import task

STOP_FILE = "STOP"


def stop_requested(poll):
    """``until=`` predicate on the last poll's result."""
    return poll["stop"]


@task(every=0.05, until=stop_requested)
def watch(ctx, folder: Path, pattern: str = "*.txt"):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    # look for STOP first: every file written before STOP is then seen by this poll
    stop = (folder / STOP_FILE).exists()
    done = folder / "done"
    done.mkdir(exist_ok=True)
    processed = []
    for path in sorted(folder.glob(pattern)):
        if not path.is_file() or path.name.startswith("."):
            continue
        text = path.read_text()
        record = {"file": path.name, "lines": len(text.splitlines()), "words": len(text.split())}
        path.replace(done / path.name)
        processed.append(record)
        ctx.log.info("processed", **record)
    if stop:
        (folder / STOP_FILE).unlink(missing_ok=True)
    return {"poll": ctx.iteration, "processed": processed, "stop": stop}


@task
def summary(ctx, watch):
    files = [record for poll in watch for record in poll["processed"]]
    result = {
        "polls": len(watch),
        "files": [r["file"] for r in files],
        "words": sum(r["words"] for r in files),
    }
    ctx.log.info("watcher stopped", **result)
    return result
