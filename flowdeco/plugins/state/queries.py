"""Read-only questions about saved runs, for the UI and the ``runs`` commands.

Every function takes a :class:`~.store.SQLiteStore` opened with
:meth:`~.store.SQLiteStore.open_read_only` (nothing here writes a byte of the
state dir) or a store that was never opened because no database exists yet
(answers are empty then).  Rows are checked like the store's own records:
a value of the wrong type raises :class:`~flowdeco.StateError` naming it.

A store opened read-only while no run was writing reads the file without
locks; when a run starts meanwhile, the next read raises
:class:`~.store.StoreChanged`: close the store, open it again and ask again
(:class:`Reader` does that).

- :func:`list_runs`: one page of runs, newest session first, with filters and
  the total; indexed (schema 4): 10,000 runs list in a few ms
  (``benchmarks/ui_queries.py``).
- :func:`run_detail`, :func:`task_rows`: one run and its tasks (without the
  stored results: :func:`task_result` gives one, cut to a preview).
- :func:`graph_snapshot`, :func:`changed_tasks`, :func:`diff_versions`: flow
  versions (:mod:`.versions`).
- :func:`schedules`: what ``serve`` is running in a state dir (:mod:`.schedules`).
- :func:`data_version`: a number that changes when another connection
  commits (the UI polls it).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import attrs

from ...errors import StateError, UsageError
from .store import (MAX_ERROR, MAX_NAME, MIGRATIONS, RUN_STATUSES, SQLiteStore, StoreChanged,
                    _max_len, _non_negative, _reading, _timestamp, structure)
from .schedules import ScheduleInfo, schedules
from .versions import VersionDiff, diff_snapshots

__all__ = ["RunRow", "TaskView", "ResultPreview", "ScheduleInfo", "Reader", "list_runs",
           "run_detail", "task_rows", "task_result", "graph_snapshot", "changed_tasks",
           "previous_run", "diff_versions", "schedules", "data_version", "STATUS_FILTERS"]

#: what ``list_runs(status=...)`` accepts: the stored statuses, and ``crashed`` (a
#: ``running`` run whose process is gone; ``running`` then means really running)
STATUS_FILTERS = RUN_STATUSES + ("crashed",)
MAX_PAGE = 1000
_RUN_SELECT = ("run_id", "flow", "status", "started", "session_started", "finished",
               "duration", "sessions", "pid")
_ORDER = "ORDER BY session_started DESC, started DESC, run_id"


@attrs.frozen
class RunRow:
    """A run as the runs list shows it (``status`` is ``crashed`` for a dead ``running``)."""

    run_id: str
    flow: str = attrs.field(validator=_max_len(MAX_NAME))
    status: str
    started: float = attrs.field(validator=_timestamp)
    session_started: float = attrs.field(validator=_timestamp)
    finished: float | None = attrs.field(validator=_timestamp)
    #: seconds run in ended sessions (a session in progress is not counted yet)
    duration: float = attrs.field(validator=_non_negative)
    sessions: int = attrs.field(validator=_non_negative)
    pid: int | None
    flow_version: str | None = attrs.field(validator=_max_len(64))
    #: tasks by status (mapped instances count as tasks)
    counts: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def tasks(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["counts"] = dict(self.counts)
        return out


@attrs.frozen
class TaskView:
    """One task row of a run, without its stored result (see :func:`task_result`)."""

    name: str = attrs.field(validator=_max_len(MAX_NAME))
    status: str
    attempts: int = attrs.field(validator=_non_negative)
    started: float | None = attrs.field(validator=_timestamp)
    finished: float | None = attrs.field(validator=_timestamp)
    fingerprint: str | None = attrs.field(validator=_max_len(64))
    error: str | None = attrs.field(validator=_max_len(MAX_ERROR))
    reason: str | None
    #: the task has an input-hash cache key (``cache=``)
    cached: bool = attrs.field(converter=bool)
    #: characters of the stored result (JSON text), None without one
    result_chars: int | None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return max(self.finished - self.started, 0.0)

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["duration"] = self.duration
        return out


@attrs.frozen
class ResultPreview:
    """A stored result's JSON text, cut to ``limit`` characters (``truncated`` says so)."""

    text: str
    chars: int
    truncated: bool


# --------------------------------------------------------------------------- helpers


def _conn(store: SQLiteStore) -> Any:
    return store.conn


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` (a run's recorded owner) still exists."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def shown_status(status: Any, pid: Any) -> Any:
    """A run's status as shown: ``running`` only while its process lives, else ``crashed``."""
    return "crashed" if status == "running" and not process_alive(pid) else status


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise UsageError(f"{what}: a datetime needs a time zone (e.g. datetime.timezone.utc)")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise UsageError(f"{what} must be POSIX seconds or an aware datetime, got {value!r:.60}")


#: the schema version that added flow versions (found, not hard-coded: migrations may be
#: renumbered when branches merge)
VERSIONS_SCHEMA = min(v for v, statements in MIGRATIONS.items()
                      if any("flow_graphs" in s for s in statements))


def _has_versions(store: SQLiteStore) -> bool:
    return store.version >= VERSIONS_SCHEMA


def _run_row(store: SQLiteStore, row: tuple, counts: Mapping[str, int]) -> RunRow:
    data = dict(zip(_RUN_SELECT + ("flow_version",), row))
    data["status"] = str(data["status"])
    if data["status"] not in RUN_STATUSES:
        raise StateError(f"{store.path}: run {str(data['run_id'])[:100]!r} has an unknown "
                         f"status {data['status'][:40]!r}")
    data["status"] = shown_status(data["status"], data["pid"])
    data["counts"] = dict(counts)
    return structure(data, RunRow, f"{store.path}: the record of run {str(data['run_id'])[:100]!r}")


def _counts(conn: Any, ids: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for rid, status, n in conn.execute(
                "SELECT run_id, status, count(*) FROM tasks WHERE run_id IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY run_id, status", chunk):
            counts.setdefault(rid, {})[str(status)] = int(n)
    return counts


def _unknown(store: SQLiteStore, run_id: str) -> StateError:
    return StateError(f"unknown run id {run_id!r}: no such run in {store.state_dir}; list "
                      f"saved runs with: python -m flowdeco runs --state-dir {store.state_dir}")


# --------------------------------------------------------------------------- runs


def list_runs(store: SQLiteStore, *, flow: str | None = None, status: str | None = None,
              text: str | None = None, since: Any = None, until: Any = None,
              limit: int = 50, offset: int = 0) -> tuple[list[RunRow], int]:
    """One page of runs, the latest session first, and how many runs match in all.

    ``flow``: exactly this flow; ``status``: one of :data:`STATUS_FILTERS`;
    ``text``: a case-insensitive part of the run id or flow name, or the
    start of a flow version; ``since``/``until``: the run started at or after
    ``since`` and before ``until`` (POSIX seconds or aware datetimes);
    ``limit`` (1..1000) rows from ``offset``.
    """
    if status is not None and status not in STATUS_FILTERS:
        raise UsageError(f"unknown run status {status!r:.60}; expected one of "
                         f"{', '.join(STATUS_FILTERS)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise UsageError(f"limit must be an int from 1 to {MAX_PAGE}, got {limit!r:.60}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise UsageError(f"offset must be an int >= 0, got {offset!r:.60}")
    lo, hi = _seconds(since, "since"), _seconds(until, "until")
    conn = _conn(store)
    if conn is None:
        return [], 0
    versions = _has_versions(store)
    where: list[str] = []
    args: list[Any] = []
    if flow is not None:
        where.append("flow=?")
        args.append(flow)
    if status is not None:
        where.append("status=?")
        args.append("running" if status == "crashed" else status)
    if text:
        needle = text.lower()
        cond = "(instr(lower(run_id), ?) > 0 OR instr(lower(flow), ?) > 0"
        args += [needle, needle]
        if versions:
            cond += " OR substr(flow_version, 1, ?) = ?"
            args += [len(needle), needle]
        where.append(cond + ")")
    if lo is not None:
        where.append("started>=?")
        args.append(lo)
    if hi is not None:
        where.append("started<?")
        args.append(hi)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    columns = ", ".join(_RUN_SELECT) + (", flow_version" if versions else ", NULL")
    with _reading(store):
        if status in ("running", "crashed"):
            # whether its process lives is not in the table: filter here (runs in
            # progress are few), then page
            rows = conn.execute(f"SELECT {columns} FROM runs {clause} {_ORDER}", args).fetchall()
            rows = [r for r in rows if (shown_status("running", r[8]) == status)]
            total = len(rows)
            rows = rows[offset:offset + limit]
        else:
            total = conn.execute(f"SELECT count(*) FROM runs {clause}", args).fetchone()[0]
            rows = conn.execute(f"SELECT {columns} FROM runs {clause} {_ORDER} LIMIT ? OFFSET ?",
                                args + [limit, offset]).fetchall()
        counts = _counts(conn, [r[0] for r in rows]) if rows else {}
    return [_run_row(store, r, counts.get(r[0], {})) for r in rows], int(total)


def run_detail(store: SQLiteStore, run_id: str) -> RunRow | None:
    """The run as :func:`list_runs` shows it, or None when unknown."""
    conn = _conn(store)
    if conn is None:
        return None
    columns = ", ".join(_RUN_SELECT) + (", flow_version" if _has_versions(store) else ", NULL")
    with _reading(store):
        row = conn.execute(f"SELECT {columns} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        counts = _counts(conn, [run_id]) if row is not None else {}
    if row is None:
        return None
    return _run_row(store, row, counts.get(run_id, {}))


_TASK_SELECT = ("name", "status", "attempts", "started", "finished", "fingerprint", "error",
                "reason", "cache_key IS NOT NULL", "length(result)")
_TASK_FIELDS = ("name", "status", "attempts", "started", "finished", "fingerprint", "error",
                "reason", "cached", "result_chars")


def task_rows(store: SQLiteStore, run_id: str) -> list[TaskView]:
    """Every task row of the run (mapped instances too), in start order; [] when unknown."""
    conn = _conn(store)
    if conn is None:
        return []
    columns = [c if store.version >= 2 or not c.startswith("cache_key") else "0"
               for c in _TASK_SELECT]
    with _reading(store):
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM tasks WHERE run_id=?",
                            (run_id,)).fetchall()
    out: list[TaskView] = []
    for row in rows:
        data = dict(zip(_TASK_FIELDS, row))
        data["cached"] = int(data["cached"] or 0)
        name = data["name"]
        label = repr(name[:100]) if isinstance(name, str) else "?"
        out.append(structure(data, TaskView, f"{store.path}: run {run_id!r}, task {label}"))
    out.sort(key=lambda t: (t.started is None, t.started or 0.0, t.name))
    return out


def task_result(store: SQLiteStore, run_id: str, name: str,
                limit: int = 4096) -> ResultPreview | None:
    """The task's stored result (JSON text, see :mod:`.codec`), cut to ``limit`` characters.

    None when the task has no stored result.  Only the preview is read from
    the database (``substr``), however large the result.
    """
    conn = _conn(store)
    if conn is None:
        return None
    with _reading(store):
        row = conn.execute("SELECT substr(result, 1, ?), length(result) FROM tasks "
                           "WHERE run_id=? AND name=?", (limit, run_id, name)).fetchone()
    if row is None or row[0] is None:
        return None
    text, chars = row
    if type(text) is not str or type(chars) is not int:
        raise StateError(f"{store.path}: run {run_id!r}, task {name[:100]!r}: the stored "
                         "result is not text")
    return ResultPreview(text, chars, chars > len(text))


# --------------------------------------------------------------------------- versions


def _version(store: SQLiteStore, run_id: str) -> tuple[bool, str | None]:
    """(the run exists, its flow version)."""
    conn = _conn(store)
    if conn is None:
        return False, None
    column = "flow_version" if _has_versions(store) else "NULL"
    with _reading(store):
        row = conn.execute(f"SELECT {column} FROM runs WHERE run_id=?", (run_id,)).fetchone()
    if row is None:
        return False, None
    if row[0] is not None and (type(row[0]) is not str or len(row[0]) > 64):
        raise StateError(f"{store.path}: run {run_id!r} has an invalid flow version")
    return True, row[0]


def _snapshot_of(store: SQLiteStore, run_id: str, version: str | None) -> dict | None:
    if version is None:
        return None
    with _reading(store):
        row = store.conn.execute("SELECT graph FROM flow_graphs WHERE digest=?",  # type: ignore[union-attr]
                                 (version,)).fetchone()
    if row is None:
        return None
    try:
        snap = json.loads(row[0])
        if not isinstance(snap, dict) or not isinstance(snap.get("tasks"), list) \
                or not isinstance(snap.get("edges"), list) \
                or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                           for t in snap["tasks"]):
            raise ValueError("not a graph snapshot")
    except (TypeError, ValueError, RecursionError) as exc:
        raise StateError(f"{store.path}: the graph snapshot of run {run_id!r} (flow version "
                         f"{version}) is damaged ({str(exc)[:100]})") from None
    return snap


def graph_snapshot(store: SQLiteStore, run_id: str) -> dict | None:
    """The run's graph as it ran (:mod:`.versions`), or None (unknown run, or saved
    before flow versions were recorded)."""
    _, version = _version(store, run_id)
    return _snapshot_of(store, run_id, version)


def _fingerprints(store: SQLiteStore, run_id: str) -> dict[str, str | None]:
    """Task -> code fingerprint: from the snapshot, else from the run's task rows."""
    exists, version = _version(store, run_id)
    if not exists:
        raise _unknown(store, run_id)
    snap = _snapshot_of(store, run_id, version)
    if snap is not None:
        return {t["name"]: t.get("fingerprint") for t in snap["tasks"]
                if t.get("kind", "task") == "task"}
    return {t.name: (t.fingerprint.partition(".")[0] if t.fingerprint else None)
            for t in task_rows(store, run_id) if not _is_instance(t.name)}


def _is_instance(name: str) -> bool:
    if not name.endswith("]"):
        return False
    base, sep, index = name[:-1].rpartition("[")
    return bool(sep and base and index.isdigit())


def previous_run(store: SQLiteStore, run_id: str) -> str | None:
    """The run of the same flow started last before ``run_id``; None if none."""
    conn = _conn(store)
    if conn is None:
        return None
    with _reading(store):
        row = conn.execute("SELECT flow, started FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise _unknown(store, run_id)
        prev = conn.execute(
            "SELECT run_id FROM runs WHERE flow=? AND run_id<>? AND (started<? OR "
            "(started=? AND run_id<?)) ORDER BY started DESC, run_id DESC LIMIT 1",
            (row[0], run_id, row[1], row[1], run_id)).fetchone()
    return None if prev is None else prev[0]


def changed_tasks(store: SQLiteStore, run_id: str) -> set[str]:
    """Tasks whose code fingerprint differs from the previous run of the same flow.

    Tasks new in this run are not "changed" (:func:`diff_versions` lists them
    as added); a run without a previous one has none.  StateError for an
    unknown run id.
    """
    now = _fingerprints(store, run_id)
    prev = previous_run(store, run_id)
    if prev is None:
        return set()
    before = _fingerprints(store, prev)
    return {name for name, fp in now.items()
            if name in before and fp is not None and before[name] is not None
            and fp != before[name]}


def _rows_snapshot(store: SQLiteStore, run_id: str) -> dict:
    tasks = [{"name": n, "fingerprint": fp} for n, fp in _fingerprints(store, run_id).items()]
    return {"tasks": tasks, "edges": []}


def diff_versions(store: SQLiteStore, run_a: str, run_b: str) -> VersionDiff:
    """What changed from run ``run_a``'s graph to run ``run_b``'s.

    A run saved before flow versions were recorded is compared by its task
    rows (names and code fingerprints; ``edges_known`` is False).
    StateError naming the run id when one is unknown.
    """
    snaps: list[dict] = []
    versions: list[str | None] = []
    known = True
    for rid in (run_a, run_b):
        exists, version = _version(store, rid)
        if not exists:
            raise _unknown(store, rid)
        snap = _snapshot_of(store, rid, version)
        if snap is None:
            known = False
            snap = _rows_snapshot(store, rid)
        snaps.append(snap)
        versions.append(version)
    if not known:  # edges of one side unknown: compare tasks only
        snaps = [{"tasks": s["tasks"], "edges": []} for s in snaps]
    return diff_snapshots(snaps[0], snaps[1], run_a, run_b, versions[0], versions[1], known)


# --------------------------------------------------------------------------- live


def data_version(store: SQLiteStore) -> int:
    """``PRAGMA data_version``: changes when another connection commits to the database.

    0 when there is no database yet.  A store read without locks (no run was
    writing when it was opened) raises :class:`~.store.StoreChanged` once the
    file is written: reopen it (:class:`Reader` does).
    """
    conn = _conn(store)
    if conn is None:
        return 0
    with _reading(store):
        return int(conn.execute("PRAGMA data_version").fetchone()[0])


T = TypeVar("T")


class Reader:
    """A state dir's store, opened read-only on first use and again when it changed.

    ``reader.call(list_runs, flow="etl")`` runs a query function with the
    store; when the database appeared, or was written while it was read
    without locks (:class:`~.store.StoreChanged`), the store is reopened and
    the question asked again.  Not thread-safe: one per thread.
    """

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = Path(state_dir)
        self.store: SQLiteStore | None = None
        #: how many times a store was opened (see :meth:`data_version`)
        self.opened = 0

    def _open(self) -> SQLiteStore:
        if self.store is None or self.store.conn is None:
            if self.store is not None:
                self.store.close()
            store = SQLiteStore(self.state_dir)
            store.open_read_only()
            self.store = store
            self.opened += 1
        return self.store

    def data_version(self) -> int:
        """A number that changes whenever the data may have: :func:`data_version` of the
        current connection, plus the number of (re)opens in the high bits (a new
        connection starts its own count, which could repeat the old one's)."""
        version = self.call(data_version)
        return (self.opened << 32) + version

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in range(3):
            store = self._open()
            try:
                return fn(store, *args, **kwargs)
            except StoreChanged:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            store.close()
