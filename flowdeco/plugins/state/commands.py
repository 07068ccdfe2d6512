"""``python -m flowdeco runs``: list, show, export and prune saved runs.

::

    python -m flowdeco runs [--state-dir DIR] [--flow NAME] [--limit N]   # list
    python -m flowdeco runs show ID|last [--state-dir DIR]                 # per-task table
    python -m flowdeco runs export ID|last [--state-dir DIR] [-o FILE]     # the run as JSON
    python -m flowdeco runs report ID|last -o run.html [--state-dir DIR]   # one HTML file
    python -m flowdeco runs prune --keep N [--state-dir DIR] [--dry-run]   # forget old runs
    python -m flowdeco runs diff A B [--state-dir DIR] [--json]            # two runs' graphs

Reading changes no byte of the state dir, even beside a crashed run's WAL
(:meth:`SQLiteStore.open_read_only`; another backend is opened with
``open(create=False)``), and never creates it.  Exit codes: 0, or 4 for usage
and state errors (one ``flowdeco: error: ...`` line on stderr).

Export format (``"format": "flowdeco-state/1"``): the seed's keys
``workflowId``, ``completedNodes``, ``startedNodes`` (in flight when the run
stopped), ``results`` (completed task -> stored JSON, see
:mod:`flowdeco.plugins.state.codec` for the ``$t`` tags) and
``totalCompleted``, plus ``files`` (completed task whose result is a file ->
``path``, ``serializer``, ``size``, ``sha256``; such tasks are not in
``results``), ``unsaved`` (completed tasks with ``store=False``), plus ``run_id``, ``flow``, ``status``, ``started``,
``finished`` (ISO 8601 UTC), ``duration``, ``sessions``, ``counts`` (tasks by
status) and ``tasks`` (per task: status, attempts, started, finished,
duration, error, reason, fingerprint).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Any, Sequence

from ...cli import Command
from ...errors import FlowError, StateError, UsageError, shorten
from ...outcome import ExitCode
from ...runid import validate_run_id
from ...timefmt import seconds, when
from .plugin import make_store
from .queries import diff_versions, run_detail, shown_status
from .results import INSTANCES, UNSAVED, ResultFiles, parse_ref
from .serializers import default_registry
from .store import RunSummary, SQLiteStore, Store, StoreChanged, TaskRecord
from .versions import VersionDiff

_ORDER = ("succeeded", "restored", "failed", "interrupted", "skipped", "running")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are exit 4, like the main CLI
        raise UsageError(f"runs: {message} (see python -m flowdeco runs --help)")

def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", dest="state_dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="where runs are kept (default: .flowdeco)")
    ap = _Parser(prog="flowdeco runs", parents=[common],
                 description="List and inspect saved runs (default: list them).")
    ap.add_argument("--flow", default=None, help="only runs of this flow")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="at most N runs")
    sub = ap.add_subparsers(dest="action", metavar="{list,show,export,report,prune,diff}",
                            parser_class=_Parser)
    ls = sub.add_parser("list", parents=[common], help="list runs (the default)")
    ls.add_argument("--flow", default=argparse.SUPPRESS, help="only runs of this flow")
    ls.add_argument("--limit", type=int, default=argparse.SUPPRESS, metavar="N",
                    help="at most N runs")
    show = sub.add_parser("show", parents=[common], help="one run, task by task")
    show.add_argument("run_id", metavar="ID", help="a run id, or 'last'")
    export = sub.add_parser("export", parents=[common], help="one run as JSON")
    export.add_argument("run_id", metavar="ID", help="a run id, or 'last'")
    export.add_argument("-o", "--output", default=None, metavar="FILE",
                        help="write to FILE (created owner-only) instead of stdout")
    report = sub.add_parser("report", parents=[common],
                            help="one run as a self-contained HTML file (needs flowdeco[ui])")
    report.add_argument("run_id", metavar="ID", help="a run id, or 'last'")
    report.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="the HTML file to write (e.g. run.html)")
    prune = sub.add_parser("prune", parents=[common], help="forget all but the latest runs")
    prune.add_argument("--keep", type=int, required=True, metavar="N",
                       help="how many of the most recent runs to keep")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    diff = sub.add_parser("diff", parents=[common],
                          help="added, removed and changed tasks and edges from run A to run B")
    diff.add_argument("run_a", metavar="A", help="a run id, or 'last'")
    diff.add_argument("run_b", metavar="B", help="a run id, or 'last'")
    diff.add_argument("--json", action="store_true", help="print the difference as JSON")
    return ap


def runs_command() -> Command:
    return Command(help="list and inspect saved runs", main=main)


def main(argv: Sequence[str], pluginmanager: Any, out: IO[str] | None = None) -> int:
    """Entry point of ``python -m flowdeco runs``; returns the exit code."""
    out = out or sys.stdout
    try:
        ns = _parser().parse_args(list(argv))
        for attempt in range(3):
            try:
                return _act(ns, pluginmanager, out)
            except StoreChanged:  # a run started while the store was read without locks
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
    except FlowError as exc:
        print(f"flowdeco: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except BrokenPipeError:  # ``runs export ID | head``: the reader has seen enough
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return ExitCode.OK


def _act(ns: argparse.Namespace, pluginmanager: Any, out: IO[str]) -> int:
    """One action (everything is read before anything is printed: it may be run again)."""
    state_dir = getattr(ns, "state_dir", ".flowdeco")
    store = make_store(pluginmanager, state_dir)
    try:
        action = ns.action or "list"
        if action == "list":
            return _list(store, state_dir, ns.flow, ns.limit, out)
        if action == "prune":
            return _prune(store, state_dir, ns.keep, ns.dry_run, out)
        if action == "diff":
            return _diff(store, _resolve(store, state_dir, ns.run_a),
                         _resolve(store, state_dir, ns.run_b), ns.json, out)
        run_id = _resolve(store, state_dir, ns.run_id)
        if action == "show":
            return _show(store, run_id, out)
        if action == "report":
            from ...ui.report import write_report
            path = write_report(state_dir, run_id, ns.output)
            print(f"wrote {path} (open it in a browser; it needs no server)", file=out)
            return ExitCode.OK
        return _export(store, run_id, ns.output, out)
    finally:
        store.close()


def _open_for_reading(store: Store) -> bool:
    """Open without writing: ``open_read_only`` when the backend has it (SQLite does)."""
    read_only = getattr(store, "open_read_only", None)
    return read_only() if read_only is not None else store.open(create=False)


def _resolve(store: Store, state_dir: str, run_id: str) -> str:
    if run_id == "last":
        runs = store.list_runs(limit=1) if _open_for_reading(store) else []
        if not runs:
            raise StateError(f"no saved runs in {state_dir}")
        return runs[0].run.run_id
    validate_run_id(run_id)
    if not _open_for_reading(store) or store.load_run(run_id) is None:
        raise StateError(f"unknown run id {run_id!r}: no such run in {state_dir}; list saved "
                         f"runs with: python -m flowdeco runs --state-dir {state_dir}")
    return run_id


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def _counts(counts: dict[str, int], status: str = "") -> str:
    """Tasks by status; a live run records tasks as they end, so none yet is not "no tasks"."""
    keys = sorted(counts, key=lambda k: (_ORDER.index(k) if k in _ORDER else 99, k))
    return ", ".join(f"{counts[k]} {k}" for k in keys if counts[k]) or (
        "no task finished yet" if status == "running" else "no tasks")


def _status(summary_run: Any) -> str:
    """``running`` only while its process lives; a run whose process died shows ``crashed``."""
    return shown_status(summary_run.status, summary_run.pid)


def _table(rows: list[list[str]], out: IO[str]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        cells = [cell.ljust(w) for cell, w in zip(r, widths)]
        print("  ".join(cells).rstrip(), file=out)


def _list(store: Store, state_dir: str, flow: str | None, limit: int | None,
          out: IO[str]) -> int:
    runs: list[RunSummary] = store.list_runs(flow=flow, limit=limit) \
        if _open_for_reading(store) else []
    if not runs:
        print(f"no saved runs in {state_dir}" + (f" of flow {shorten(flow)}" if flow else ""),
              file=out)
        return ExitCode.OK
    rows = [["RUN ID", "FLOW", "STATUS", "STARTED", "DURATION", "TASKS"]]
    for s in runs:
        r = s.run
        rows.append([r.run_id, r.flow, _status(r), when(r.started), seconds(r.duration),
                     _counts(s.counts, _status(r))])
    _table(rows, out)
    return ExitCode.OK


def _sorted_tasks(tasks: dict[str, TaskRecord]) -> list[TaskRecord]:
    return sorted(tasks.values(), key=lambda t: (t.started is None, t.started or 0.0, t.name))


def _show(store: Store, run_id: str, out: IO[str]) -> int:
    run = store.load_run(run_id)
    assert run is not None
    tasks = store.load_tasks(run_id)
    counts: dict[str, int] = {}
    for t in tasks.values():
        counts[t.status] = counts.get(t.status, 0) + 1
    sessions = f", {run.sessions} sessions" if run.sessions > 1 else ""
    detail = run_detail(store, run_id) if isinstance(store, SQLiteStore) else None
    version = f", flow version {detail.flow_version}" if detail and detail.flow_version else ""
    print(f"run {run.run_id} of flow {run.flow}: {_status(run)}, started {when(run.started)}"
          f"{sessions}, {seconds(run.duration)}{version}; {_counts(counts, _status(run))}",
          file=out)
    if not tasks:
        return ExitCode.OK
    rows = [["TASK", "STATUS", "ATTEMPTS", "DURATION", "DETAIL"]]
    for t in _sorted_tasks(tasks):
        detail = t.error or (f"reason: {t.reason}" if t.reason else "")
        detail = detail.splitlines()[0] if detail else ""
        rows.append([t.name, t.status, str(t.attempts), seconds(t.duration), detail[:100]])
    _table(rows, out)
    return ExitCode.OK


def export_run(store: Store, run_id: str) -> dict[str, Any]:
    """The run as a JSON-ready dict (the format in the module docstring)."""
    run = store.load_run(run_id)
    if run is None:
        raise StateError(f"unknown run id {run_id!r} in {store.location}")
    tasks = store.load_tasks(run_id)
    counts: dict[str, int] = {}
    results: dict[str, Any] = {}
    files: dict[str, Any] = {}
    unsaved: list[str] = []
    details: dict[str, Any] = {}
    state_dir = getattr(store, "state_dir", None)
    ordered = _sorted_tasks(tasks)
    for t in ordered:
        counts[t.status] = counts.get(t.status, 0) + 1
        if t.completed and t.result == UNSAVED:
            unsaved.append(t.name)
        elif t.result == INSTANCES:
            pass  # a mapped task: its instances' rows (``name[i]``) hold the values
        elif t.completed and t.result is not None:
            try:
                ref = parse_ref(t.result)
            except StateError as exc:
                raise StateError(f"{store.location}: run {run_id!r}, task {t.name!r}: {exc}") \
                    from None
            if ref is not None:
                path = str(Path(state_dir) / ref.path) if state_dir is not None else ref.path
                files[t.name] = {"path": path, "serializer": ref.serializer, "size": ref.size,
                                 "sha256": ref.sha256}
                continue
            try:
                results[t.name] = json.loads(t.result)
            except (ValueError, RecursionError) as exc:
                raise StateError(f"{store.location}: run {run_id!r}, task {t.name!r}: the stored "
                                 f"result is not valid JSON ({exc})") from None
        details[t.name] = {"status": t.status, "attempts": t.attempts,
                           "started": _iso(t.started), "finished": _iso(t.finished),
                           "duration": t.duration, "error": t.error, "reason": t.reason,
                           "fingerprint": t.fingerprint}
    completed = [t.name for t in ordered if t.completed]
    return {
        "format": "flowdeco-state/1",
        "workflowId": run.run_id,
        "run_id": run.run_id,
        "flow": run.flow,
        "status": run.status,
        "started": _iso(run.started),
        "finished": _iso(run.finished),
        "duration": run.duration,
        "sessions": run.sessions,
        "completedNodes": completed,
        "startedNodes": [t.name for t in ordered if t.status == "running"],
        "totalCompleted": len(completed),
        "counts": counts,
        "results": results,
        "files": files,
        "unsaved": unsaved,
        "tasks": details,
    }


def _export(store: Store, run_id: str, output: str | None, out: IO[str]) -> int:
    text = json.dumps(export_run(store, run_id), indent=2, ensure_ascii=False, allow_nan=False)
    if output is None:
        print(text, file=out)
        return ExitCode.OK
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    except OSError as exc:
        raise UsageError(f"runs export: cannot write {output}: {exc.strerror}") from None
    return ExitCode.OK


def _prune(store: Store, state_dir: str, keep: int, dry_run: bool, out: IO[str]) -> int:
    if keep < 0:
        raise UsageError("runs prune: --keep must be >= 0")
    if dry_run:
        runs = store.list_runs() if _open_for_reading(store) else []
    else:
        runs = store.list_runs() if store.open(create=False) else []
    doomed = runs[keep:]
    removed, busy = [], []
    for s in doomed:
        rid = s.run.run_id
        if dry_run:
            removed.append(rid)
            continue
        try:
            lock = store.lock_run(rid)
        except StateError:
            busy.append(rid)
            continue
        try:
            store.delete_run(rid)
            _remove_files(Path(state_dir), rid)
        finally:
            lock.release()
        try:
            (Path(state_dir) / "locks" / f"{rid}.lock").unlink()
        except OSError:
            pass
        removed.append(rid)
    if not dry_run and runs:
        _remove_orphan_results(store, state_dir)
    # one verb per line, on the line of the run it applies to: a bare list under a
    # "removed N, kept M" header could be read as the runs kept
    verb = "would remove" if dry_run else "removed"
    for rid in removed:
        print(f"{verb} run {rid}", file=out)
    for rid in busy:
        print(f"kept run {rid} (in use)", file=out)
    kept = [s.run.run_id for s in runs[:keep]]
    print(f"{verb} {len(removed)} run(s), kept {len(kept) + len(busy)}"
          + (f"; {len(busy)} in use left alone: {', '.join(busy)}" if busy else "")
          + (f"; the {len(kept)} newest kept: {', '.join(kept[:10])}"
             + (", ..." if len(kept) > 10 else "") if kept else ""), file=out)
    return ExitCode.OK


def _diff(store: Store, run_a: str, run_b: str, as_json: bool, out: IO[str]) -> int:
    if not isinstance(store, SQLiteStore):
        raise UsageError(f"runs diff: the store {store.location} does not keep flow versions "
                         "(only the built-in SQLite store does)")
    diff = diff_versions(store, run_a, run_b)
    if as_json:
        print(json.dumps(diff.to_dict(), indent=2, ensure_ascii=False), file=out)
        return ExitCode.OK
    for line in diff_lines(diff):
        print(line, file=out)
    return ExitCode.OK


def diff_lines(diff: VersionDiff) -> list[str]:
    """``runs diff`` output: a header, then one line per difference (``+``/``-``/``~``)."""
    def version(v: str | None) -> str:
        return v or "none recorded"

    lines = [f"run {diff.run_a} -> run {diff.run_b}: flow version {version(diff.version_a)} "
             f"-> {version(diff.version_b)}"]
    lines += [f"+ task {n}" for n in diff.added_tasks]
    lines += [f"- task {n}" for n in diff.removed_tasks]
    lines += [f"~ task {n} ({', '.join(what)})" for n, what in diff.changed_tasks.items()]
    lines += [f"+ edge {a} -> {b}" for a, b in diff.added_edges]
    lines += [f"- edge {a} -> {b}" for a, b in diff.removed_edges]
    if not diff.edges_known:
        lines.append("(edges not compared: a run was saved before flow versions were recorded)")
    if diff.empty:
        lines.append("no differences" + (" (same flow version)" if diff.version_a and
                                         diff.version_a == diff.version_b else ""))
    return lines


def _remove_files(state_dir: Path, run_id: str) -> None:
    """The run's folders (audit trail, result files) under ``STATE_DIR/runs`` and
    ``STATE_DIR/results``; run ids are validated names."""
    validate_run_id(run_id)
    folder = state_dir / "runs" / run_id
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)
    ResultFiles(state_dir, default_registry).remove_run(run_id)


def _remove_orphan_results(store: Store, state_dir: str) -> None:
    """Result files no row names: folders of runs the store does not know (deleted by an
    older flowdeco, or a run that died before its record was written) and files a crash
    left between writing a file and committing its row.  Runs in use are left alone."""
    files = ResultFiles(state_dir, default_registry)
    for rid in files.run_folders():
        try:
            validate_run_id(rid)
        except FlowError:
            continue
        try:
            lock = store.lock_run(rid)
        except StateError:
            continue  # in use: running, or being started right now
        try:
            if store.load_run(rid) is None:
                files.remove_run(rid)
                continue
            referenced = set()
            for t in store.load_tasks(rid).values():
                try:
                    ref = parse_ref(t.result)
                except StateError:
                    continue
                if ref is not None:
                    referenced.add(ref.path)
            files.clean_orphans(rid, referenced)
        finally:
            lock.release()
