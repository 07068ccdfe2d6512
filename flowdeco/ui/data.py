"""What the dashboard reads: one read-only view over a state dir (store + audit trails).

The UI never writes to the state dir.  The store is opened with
:meth:`SQLiteStore.open_read_only` (no byte changes, even beside a live run's
WAL).  That connection can go stale in two ways, both handled here by
opening it again: a database read ``immutable`` (no WAL when it was opened)
raises :class:`StoreChanged` once a run writes to it; and a WAL connection
loses its ``-wal``/``-shm`` when the last writer closes.

The queries themselves (filters, pages, flow versions, graph snapshots,
schedules) are ``flowdeco.plugins.state.queries``; this module adds the
stale-connection handling, the shapes the pages draw and the audit trails.

Change detection (:meth:`StateReader.stamp`) is a stat of the database
files plus ``PRAGMA data_version`` on a WAL connection: cheap enough to poll
several times a second, and nothing is added to the engine's per-task path.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..errors import StateError
from ..plugins.audit import audit_path
from ..plugins.state import queries as _queries
from ..plugins.state.queries import shown_status
from ..plugins.state.store import (DB_NAME, RunRecord, SQLiteStore, StoreChanged,
                                   TaskRecord, _reading)

__all__ = ["StateReader", "RunRow", "read_audit", "run_status"]

T = TypeVar("T")
#: the statuses a run may be listed with (``crashed``: ``running`` whose process is gone)
RUN_FILTERS = ("running", "succeeded", "failed", "interrupted", "crashed")


def run_status(run: RunRecord) -> str:
    """``running`` only while its process lives; else ``crashed`` (as ``runs`` shows it)."""
    return shown_status(run.status, run.pid)


RunRow = dict  # run_id, flow, status, started, finished, duration, sessions, counts, version


def _row(run: RunRecord, counts: dict[str, int], version: str | None = None) -> RunRow:
    status = run_status(run)
    return {"run_id": run.run_id, "flow": run.flow, "status": status,
            "started": run.started, "finished": run.finished,
            "duration": so_far(status, run.duration, run.session_started),
            "sessions": run.sessions, "counts": dict(counts), "version": version}


def so_far(status: str, duration: float, session_started: float | None) -> float:
    """A run's duration as shown: the store counts ended sessions only, so a running run
    adds the time since its session started."""
    if status == "running" and session_started is not None:
        return duration + max(time.time() - session_started, 0.0)
    return duration


def day_bounds(day: str | None, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (UTC) -> the timestamp of that day's start (``end``: next day's)."""
    if not day:
        return None
    try:
        d = _dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise StateError(f"bad date {day[:40]!r}: use YYYY-MM-DD") from None
    if end:
        d += _dt.timedelta(days=1)
    return d.timestamp()


class StateReader:
    """A long-lived read-only view of ``state_dir`` shared by the server's threads."""

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = Path(state_dir)
        self._store: SQLiteStore | None = None
        self._wal_ids: tuple | None = None
        self._lock = threading.RLock()
        #: run id -> its audit trail read so far (:func:`flowdeco.ui.model.run_model`)
        self.followed: dict[str, Any] = {}
        self.follow_lock = threading.Lock()

    # -- the connection
    def _files(self) -> tuple:
        out = []
        for suffix in ("", "-wal", "-shm"):
            try:
                st = os.stat(str(self.state_dir / DB_NAME) + suffix)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def _open(self) -> SQLiteStore | None:
        """The open store, opened again when its connection went stale (None: no store yet)."""
        files = self._files()
        wal_ids = (files[1][0] if files[1] else None, files[2][0] if files[2] else None)
        if self._store is not None and self._wal_ids is not None and wal_ids != self._wal_ids:
            self._close()  # the WAL we read through was removed or replaced
        if self._store is None:
            store = SQLiteStore(self.state_dir)
            if not store.open_read_only():
                return None
            self._store = store
            self._wal_ids = wal_ids if getattr(store, "_immutable", None) is None else None
        return self._store

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store = None
        self._wal_ids = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _read(self, fn: Callable[[SQLiteStore], T], empty: T) -> T:
        """``fn(store)`` under the lock; opened again and retried when the store changed."""
        with self._lock:
            for attempt in range(3):
                store = self._open()
                if store is None:
                    return empty
                try:
                    # the store's own guard: driver errors become StateError naming the
                    # file, and a read without locks checks the file was not written meanwhile
                    with _reading(store):
                        return fn(store)
                except StoreChanged:
                    self._close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def stamp(self) -> tuple:
        """Changes whenever anything was committed to the store (cheap: stats + one PRAGMA)."""
        files = self._files()
        version = None
        with self._lock:
            store = self._store
            if store is not None and store.conn is not None \
                    and getattr(store, "_immutable", None) is None:
                try:
                    version = store.conn.execute("PRAGMA data_version").fetchone()[0]
                except Exception:  # noqa: BLE001 - a stale connection: the stats tell
                    version = None
        return files + (version,)

    # -- runs
    def list_runs(self, flow: str | None = None, status: str | None = None,
                  text: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[list[RunRow], int]:
        """One page of runs, newest first, and how many match in all."""
        if status is not None and status not in RUN_FILTERS:
            raise StateError(f"unknown run status {status[:40]!r}: one of "
                             f"{', '.join(RUN_FILTERS)}")
        def q(store: SQLiteStore) -> tuple[list[RunRow], int]:
            rows, total = _queries.list_runs(store, flow=flow, status=status, text=text,
                                             since=since, until=until, limit=limit,
                                             offset=offset)
            return [_normal_row(r) for r in rows], total
        return self._read(q, ([], 0))

    def flows(self) -> list[str]:
        return self._read(lambda s: [r[0] for r in s.conn.execute(  # type: ignore[union-attr]
            "SELECT DISTINCT flow FROM runs ORDER BY flow")], [])

    def run(self, run_id: str) -> RunRow | None:
        def q(store: SQLiteStore) -> RunRow | None:
            rec = store.load_run(run_id)
            if rec is None:
                return None
            counts: dict[str, int] = {}
            for st, n in store.conn.execute(  # type: ignore[union-attr]
                    "SELECT status, count(*) FROM tasks WHERE run_id=? GROUP BY status",
                    (run_id,)):
                counts[str(st)] = int(n)
            detail = _queries.run_detail(store, run_id)
            return _normal_row(detail) if detail is not None else _row(rec, counts)
        return self._read(q, None)

    def task_rows(self, run_id: str) -> list[tuple]:
        """(name, status, attempts, started, finished, error, reason) of every task: the
        columns a page draws, without the results (a 10,000-task run reads in milliseconds;
        :meth:`task` gives one task's full, validated record)."""
        return self._read(lambda s: s.conn.execute(  # type: ignore[union-attr]
            "SELECT name, status, attempts, started, finished, error, reason FROM tasks "
            "WHERE run_id=?", (run_id,)).fetchall(), [])

    def task(self, run_id: str, name: str) -> TaskRecord | None:
        """One task's record (validated like every load), None if the run has no such task."""
        def q(store: SQLiteStore) -> TaskRecord | None:
            from ..plugins.state.store import _ADDED_IN, _TASK_COLUMNS, structure
            cols = [c if _ADDED_IN.get(c, 1) <= store.version else "NULL" for c in _TASK_COLUMNS]
            row = store.conn.execute(  # type: ignore[union-attr]
                f"SELECT {', '.join(cols)} FROM tasks WHERE run_id=? AND name=?",
                (run_id, name)).fetchone()
            if row is None:
                return None
            return structure(dict(zip(_TASK_COLUMNS, row)), TaskRecord,
                             f"{store.path}: run {run_id!r}, task {name[:100]!r}")
        return self._read(q, None)

    def graph(self, run_id: str) -> dict | None:
        """The run's graph snapshot ``{"tasks": [...], "edges": [[up, down], ...]}`` or None."""
        return self._read(lambda s: normal_graph(_queries.graph_snapshot(s, run_id)), None)

    def changed_tasks(self, run_id: str) -> set[str]:
        """Tasks whose code changed since the previous run of the flow."""
        return self._read(lambda s: set(_queries.changed_tasks(s, run_id)), set())

    def schedules(self) -> list[dict]:
        """What ``serve`` runs over this state dir: per flow, the last tick claimed, the
        claim in progress, whether a serve holds it now, next and missed ticks."""
        return [_as_dict(r) for r in _queries.schedules(str(self.state_dir))]

    def audit_file(self, run_id: str) -> Path:
        return audit_path(self.state_dir, run_id)


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _as_dict(r: Any) -> dict:
    if isinstance(r, dict):
        return dict(r)
    if callable(getattr(r, "to_dict", None)):
        return dict(r.to_dict())
    import attrs
    if attrs.has(type(r)):
        return attrs.asdict(r)
    return dict(vars(r))


def _normal_row(r: Any) -> RunRow:
    """A row of the data layer's ``list_runs``/``run_detail`` (its ``RunRow`` record, a
    dict, or a :class:`RunSummary`) as this module's dict."""
    run = _get(r, "run")
    if isinstance(run, RunRecord):
        return _row(run, _get(r, "counts") or {}, _get(r, "flow_version"))
    out = _as_dict(r)
    out["counts"] = dict(out.get("counts") or {})
    out["version"] = out.pop("flow_version", out.get("version"))
    out["duration"] = so_far(str(out.get("status")), float(out.get("duration") or 0.0),
                             out.get("session_started"))
    return {k: out.get(k) for k in ("run_id", "flow", "status", "started", "finished",
                                    "duration", "sessions", "counts", "version")}


def normal_graph(snapshot: Any) -> dict | None:
    """Any reasonable snapshot shape -> ``{"tasks": [names], "edges": [[up, down]], "options"}``."""
    if snapshot is None:
        return None
    graph = _get(snapshot, "graph") or snapshot
    if isinstance(graph, str):
        graph = json.loads(graph)
    tasks_in = _get(graph, "tasks") or []
    names: list[str] = []
    edges: list[list[str]] = []
    options: dict[str, Any] = {}
    items = tasks_in.items() if isinstance(tasks_in, dict) else \
        ((_get(t, "name") if not isinstance(t, str) else t, t) for t in tasks_in)
    for name, t in items:
        if not isinstance(name, str):
            continue
        names.append(name)
        if isinstance(t, dict):
            for dep in t.get("deps") or t.get("upstream") or ():
                edges.append([dep, name])
            if isinstance(t.get("options"), dict):
                options[name] = t["options"]
    for e in _get(graph, "edges") or ():
        if isinstance(e, dict):
            e = [e.get("from") or e.get("source"), e.get("to") or e.get("target")]
        if isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(x, str) for x in e):
            edges.append([e[0], e[1]])
    seen = set()
    unique = []
    for e in edges:
        if tuple(e) not in seen:
            seen.add(tuple(e))
            unique.append(e)
    return {"tasks": names, "edges": unique, "options": options}


def read_audit(path: Path, offset: int = 0, max_bytes: int = 4 << 20,
               task: str | None = None) -> tuple[list[tuple[int, dict]], int]:
    """Events after byte ``offset`` of an audit trail: ``[(end_offset, event)]`` and the new offset.

    Only whole lines are read (a line being written is left for the next
    call); ``end_offset`` -- where the event's line ends -- is the event's id
    on the live stream, so a reconnecting browser resumes right after it.  A
    line that is not a JSON object (torn by a crash) is skipped.
    """
    try:
        fh = open(path, "rb")
    except OSError:
        return [], offset
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if offset > size:  # the file was replaced (a pruned and re-made run): start again
            offset = 0
        fh.seek(offset)
        data = fh.read(max_bytes)
    ends: list[int] = []
    lines: list[bytes] = []
    pos = offset
    needle = None if task is None else \
        b'"task": ' + json.dumps(task, ensure_ascii=False).encode("utf-8", "surrogatepass")
    for line in _lines(data):
        pos += len(line)
        if needle is not None and needle not in line:
            continue
        ends.append(pos)
        lines.append(line)
    return _parse(lines, ends), pos


def _parse(lines: list[bytes], ends: list[int]) -> list[tuple[int, dict]]:
    """Parse many JSON lines in one call (one array: ~5x faster than a call per line); a
    trail with a torn or foreign line is parsed line by line, skipping those."""
    events: list | None = None
    if lines:
        try:
            events = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            events = None
    if events is None or len(events) != len(lines):
        events = []
        for line in lines:
            try:
                events.append(json.loads(line.decode("utf-8", "replace")))
            except ValueError:
                events.append(None)
    return [(end, e) for end, e in zip(ends, events)
            if isinstance(e, dict) and isinstance(e.get("event"), str)]


def _lines(data: bytes) -> Iterator[bytes]:
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return
        yield data[start:end + 1]
        start = end + 1
