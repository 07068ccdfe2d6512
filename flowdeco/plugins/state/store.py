"""Where runs are kept: the :class:`Store` interface and its SQLite implementation.

The plugin talks to a store only through :class:`Store`; another backend (a
server database, an object store) is a class with these methods, returned by
a plugin's ``flowdeco_state_store`` hook (see :mod:`flowdeco.plugins.state`).

The SQLite store keeps every run of a state dir in ``STATE_DIR/state.db``
(WAL mode): table ``runs`` (one row per run id) and table ``tasks`` (one row
per task of a run: status, attempts, timings, source fingerprint, the result
as JSON, error or skip reason, and the input-hash cache key of a task with
``cache=``, indexed so :meth:`SQLiteStore.find_cached` is one lookup, and
the sha256 ``checksum`` of the result text, checked before a result is
restored or answers a cache lookup; rows written before schema version 3 have
none and are trusted as before); since version 4 each run's ``flow_version``
and, in table ``flow_graphs``, one graph snapshot per version (:mod:`.versions`).
The schema version is ``PRAGMA user_version``; ``PRAGMA application_id`` marks
the file as flowdeco's.
A new database is built under a temporary name and renamed into place, and
migrations run inside one ``BEGIN IMMEDIATE`` transaction, both under an
exclusive ``flock`` on ``STATE_DIR/.init.lock``, so processes starting together
never see half a schema.  The ``runs`` commands open the store read-only
(:meth:`SQLiteStore.open_read_only`) and change no byte of the state dir.

Safety rules: an existing file is inspected read-only before anything writes
to it; a file that is not SQLite, is truncated, belongs to another program
or comes from a newer flowdeco, and an empty (0-byte) ``state.db`` beside
saved runs' audit trails, raise :class:`~flowdeco.StateError` and are left
exactly as they were.  The database and its ``-wal``/``-shm`` files are
owner-only (the database is created 0600 before SQLite opens it; SQLite gives
its side files the database's mode, and the mode is checked after opening).
A run is protected by an exclusive ``flock`` on ``STATE_DIR/locks/RUN_ID.lock``
(never on the database itself), which the kernel releases when its holder
dies, even by SIGKILL.  Loading is strict: every row is structured by a
private cattrs converter into a validated record; unknown values, wrong types
and oversized fields raise :class:`~flowdeco.StateError`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
from typing import Any, Protocol, Sequence, runtime_checkable

from ...errors import StateError
# re-exported: this module is where callers (queries, ui, tests) import records from
from .records import (_ADDED_IN, _RUN_COLUMNS, _TASK_COLUMNS, MAX_ERROR, MAX_NAME,  # noqa: F401
                      RUN_STATUSES, SKIP_REASONS, TASK_STATUSES, CacheEntry, RunRecord,
                      RunSummary, TaskRecord, TaskRow, _max_len, _non_negative, _timestamp,
                      checksum, result_intact, structure)
from .runlock import RunLock
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION  # noqa: F401
from .store_open import (_CHECKPOINT_EVERY, DB_NAME, INIT_LOCK,  # noqa: F401
                         QUICK_CHECK_MAX_BYTES, SQLiteDatabase, StoreChanged, _reading,
                         _rollback)

__all__ = ["Store", "SQLiteStore", "RunRecord", "TaskRecord", "TaskRow", "RunSummary", "CacheEntry",
           "RunLock", "StoreChanged", "SCHEMA_VERSION", "APPLICATION_ID", "checksum",
           "result_intact"]


# --------------------------------------------------------------------------- interface


@runtime_checkable
class Store(Protocol):
    """What the state plugin needs from a backend.  All methods are called from one thread.

    ``location`` names the store in messages (a path, a URL without secrets).
    Errors: raise :class:`~flowdeco.StateError` for unusable state (corrupted,
    foreign, newer, invalid records, run in use); let ``OSError`` or the
    driver's own error escape from :meth:`record_tasks` and
    :meth:`finish_run` when a write fails (disk full): the plugin then stops
    the run and keeps what was written.
    """

    location: str

    def open(self, create: bool = True) -> bool:
        """Connect; create the store when missing and ``create``.  False: no store exists."""

    def close(self) -> None:
        """Release connections (idempotent)."""

    def lock_run(self, run_id: str) -> "RunLock":
        """Exclusive use of ``run_id`` until ``release()``; StateError if another process has it."""

    def begin_run(self, run_id: str, flow: str, now: float, resumed: bool) -> None:
        """Record that ``run_id`` starts (fresh: must not exist) or resumes (must exist)."""

    def load_run(self, run_id: str) -> RunRecord | None:
        """The run, or None when unknown."""

    def load_tasks(self, run_id: str) -> dict[str, TaskRecord]:
        """Every task record of the run, by name."""

    def record_tasks(self, run_id: str, rows: Sequence[TaskRow]) -> None:
        """Insert or replace these rows atomically (one transaction)."""

    def finish_run(self, run_id: str, status: str, now: float, duration: float) -> None:
        """Record how a session of the run ended; ``duration`` adds to its total."""

    def list_runs(self, flow: str | None = None, limit: int | None = None) -> list[RunSummary]:
        """Runs (of ``flow`` when given), the latest session first (started or resumed)."""

    def delete_run(self, run_id: str) -> None:
        """Forget the run and its tasks."""

    # Optional (flow versions, :mod:`.versions`): a store without it records none.
    #
    # def record_version(self, run_id: str, version: str, flow: str, graph: str) -> None:
    #     """Set the run's flow version and keep the graph snapshot (JSON text)
    #     of that version unless it is kept already; once per session."""
    #
    # Optional (input-hash caching, ``@task(cache=...)``): a store without it
    # keeps ``cache_key`` on rows but never answers a lookup, so cached tasks run.
    #
    # def find_cached(self, key: str, since: float) -> CacheEntry | None:
    #     """The newest ``succeeded`` row with this ``cache_key`` finished at or
    #     after ``since`` (POSIX seconds), with a result; called from the
    #     scheduler thread while another thread may be in ``record_tasks``."""


class SQLiteStore(SQLiteDatabase):
    """The default :class:`Store`: ``STATE_DIR/state.db`` (see the module docstring).

    Opening for writing (:meth:`open`) creates and migrates the database under
    an exclusive ``flock`` on ``STATE_DIR/.init.lock``, so processes starting
    together never see half a schema; a new database is built under a
    temporary name and renamed into place, so ``state.db`` is never an empty
    file of ours.  Opening for reading (:meth:`open_read_only`, the ``runs``
    commands) changes no byte of the state dir (see :meth:`_connect_read_only`).
    Every statement that takes a lock is retried while SQLite answers "busy"
    until ``busy_timeout`` seconds have really passed.
    """

    # -- runs
    def lock_run(self, run_id: str) -> RunLock:
        return RunLock(self.state_dir / "locks" / f"{run_id}.lock", run_id, str(self.state_dir))

    def lock_held(self, run_id: str) -> bool:
        return RunLock.held(self.state_dir / "locks" / f"{run_id}.lock")

    def begin_run(self, run_id: str, flow: str, now: float, resumed: bool) -> None:
        conn = self._c()
        with _reading(self):
            if resumed:
                cur = self._retry(lambda: conn.execute(
                    "UPDATE runs SET status='running', session_started=?, finished=NULL, "
                    "sessions=sessions+1, pid=? WHERE run_id=?", (now, os.getpid(), run_id)))
                if cur.rowcount != 1:
                    raise StateError(f"run {run_id!r} vanished from {self.path}")
            else:
                try:
                    self._retry(lambda: conn.execute(
                        "INSERT INTO runs (run_id, flow, status, started, session_started, "
                        "duration, sessions, pid) VALUES (?, ?, 'running', ?, ?, 0, 1, ?)",
                        (run_id, flow, now, now, os.getpid())))
                except sqlite3.IntegrityError:
                    row = conn.execute("SELECT status FROM runs WHERE run_id=?",
                                       (run_id,)).fetchone()
                    status = row[0] if row else "unknown"
                    if status == "succeeded":  # nothing to resume: the run id was reused
                        fix = (f"a run id names one run: give this one its own, e.g. "
                               f"--run-id {run_id}-YYYY-MM-DD (or drop the old run with "
                               f"runs prune); --resume {run_id} would re-run nothing")
                    else:
                        fix = (f"resume it with --resume {run_id}, or choose another "
                               f"--run-id (e.g. --run-id {run_id}-2)")
                    raise StateError(
                        f"run id {run_id!r} already exists in {self.state_dir} "
                        f"(a {status} run): {fix}") from None
        self._private_files()

    def load_run(self, run_id: str) -> RunRecord | None:
        with _reading(self):
            row = self._c().execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id=?",
                                    (run_id,)).fetchone()
        if row is None:
            return None
        return structure(dict(zip(_RUN_COLUMNS, row)), RunRecord,
                         f"{self.path}: the record of run {run_id!r}")

    def load_tasks(self, run_id: str) -> dict[str, TaskRecord]:
        columns = _TASK_COLUMNS if self.version >= SCHEMA_VERSION else [
            c if _ADDED_IN.get(c, 1) <= self.version else "NULL" for c in _TASK_COLUMNS]
        with _reading(self):
            rows = self._c().execute(
                f"SELECT {', '.join(columns)} FROM tasks WHERE run_id=?",
                (run_id,)).fetchall()
        out: dict[str, TaskRecord] = {}
        for row in rows:
            name = row[0]
            label = repr(name[:100]) if isinstance(name, str) else "?"
            rec = structure(dict(zip(_TASK_COLUMNS, row)), TaskRecord,
                            f"{self.path}: run {run_id!r}, task {label}")
            out[rec.name] = rec
        return out

    def record_tasks(self, run_id: str, rows: Sequence[TaskRow]) -> None:
        """Insert or replace ``rows`` in one transaction.

        A row SQLite cannot take (text that is not valid UTF-8: a lone
        surrogate in a result, an error message or a name) must not lose the
        others: the batch is written again with such rows repaired (see
        :func:`_storable_row`).
        """
        conn = self._c()
        if self._checkpointer is None:
            self._start_checkpointer()
        try:
            self._retry(lambda: self._insert(conn, run_id, rows))
        except (UnicodeEncodeError, OverflowError, sqlite3.InterfaceError,
                sqlite3.ProgrammingError):
            self._retry(lambda: self._insert(conn, run_id, [_storable_row(r) for r in rows]))
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self._checkpointer:
            self._checkpointer.wake.set()

    @staticmethod
    def _insert(conn: sqlite3.Connection, run_id: str, rows: Sequence[TaskRow]) -> None:
        if len(rows) <= _ROWS_PER_STATEMENT:  # one statement is its own transaction
            conn.execute(_insert_tasks(len(rows)), _flat(run_id, rows))
            return
        conn.execute("BEGIN")
        try:
            for i in range(0, len(rows), _ROWS_PER_STATEMENT):
                chunk = rows[i:i + _ROWS_PER_STATEMENT]
                conn.execute(_insert_tasks(len(chunk)), _flat(run_id, chunk))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def finish_run(self, run_id: str, status: str, now: float, duration: float) -> None:
        conn = self._c()
        self._retry(lambda: conn.execute(
            "UPDATE runs SET status=?, finished=?, duration=duration+?, pid=NULL WHERE run_id=?",
            (status, now, duration, run_id)))

    def list_runs(self, flow: str | None = None, limit: int | None = None) -> list[RunSummary]:
        where, args = ("WHERE flow=?", [flow]) if flow is not None else ("", [])
        lim = f"LIMIT {int(limit)}" if limit is not None else ""
        with _reading(self):
            conn = self._c()
            rows = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs {where} "
                                f"ORDER BY session_started DESC, started DESC, run_id {lim}",
                                args).fetchall()
            counts: dict[Any, dict[str, int]] = {}
            if rows:
                ids = [r[0] for r in rows]
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    for rid, status, n in conn.execute(
                            "SELECT run_id, status, count(*) FROM tasks WHERE run_id IN "
                            f"({', '.join('?' * len(chunk))}) GROUP BY run_id, status", chunk):
                        counts.setdefault(rid, {})[str(status)] = int(n)
        out = []
        for row in rows:
            rec = structure(dict(zip(_RUN_COLUMNS, row)), RunRecord,
                            f"{self.path}: a record of table runs")
            out.append(RunSummary(rec, counts.get(rec.run_id, {})))
        return out

    def delete_run(self, run_id: str) -> None:
        conn = self._c()
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            row = conn.execute("SELECT flow_version FROM runs WHERE run_id=?",
                               (run_id,)).fetchone()
            conn.execute("DELETE FROM tasks WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id=?", (run_id,))
            if row is not None and row[0] is not None:  # its graph snapshot, if no run keeps it
                conn.execute("DELETE FROM flow_graphs WHERE digest=? AND NOT EXISTS (SELECT 1 "
                             "FROM runs WHERE flow_version=?)", (row[0], row[0]))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    # -- flow versions (see .versions)
    def record_version(self, run_id: str, version: str, flow: str, graph: str) -> None:
        """Set the run's flow version; store the graph snapshot unless that version has one.

        One transaction, once per session (at its start).
        """
        conn = self._c()
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            if conn.execute("SELECT 1 FROM flow_graphs WHERE digest=?",
                            (version,)).fetchone() is None:
                conn.execute("INSERT INTO flow_graphs (digest, flow, graph) VALUES (?, ?, ?)",
                             (version, flow, graph))
            conn.execute("UPDATE runs SET flow_version=? WHERE run_id=?", (version, run_id))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    # -- input-hash caching
    def find_cached(self, key: str, since: float) -> CacheEntry | None:
        """The newest successful result stored under ``key`` that finished at or after ``since``."""
        conn = self._reader
        if conn is None:
            self._c()  # created, migrated
            conn = self._reader = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False)
        with _reading(self):
            row = conn.execute(
                "SELECT run_id, name, finished, result, checksum FROM tasks "
                "INDEXED BY tasks_by_cache_key "
                "WHERE cache_key=? AND finished>=? AND status='succeeded' AND result IS NOT NULL "
                "ORDER BY finished DESC LIMIT 1", (key, since)).fetchone()
        if row is None:
            return None
        run_id, name, finished, result, digest = row
        if type(run_id) is str and type(name) is str and type(finished) is float \
                and type(result) is str and (digest is None or type(digest) is str):
            try:  # the common case, without the converter (a lookup per cached task)
                return CacheEntry(run_id, name, finished, result, digest)
            except ValueError:
                pass
        return structure(dict(zip(("run_id", "name", "finished", "result", "checksum"), row)),
                         CacheEntry,
                         f"{self.path}: the cache entry {key[:16]}")


#: rows per INSERT: one statement (one step, one release of the GIL) for a whole batch
_ROWS_PER_STATEMENT = 256


@functools.lru_cache(maxsize=64)
def _insert_tasks(n: int) -> str:
    return "INSERT OR REPLACE INTO tasks VALUES " + ", ".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * n)


def _flat(run_id: str, rows: Sequence[TaskRow]) -> list:
    out: list = []
    for r in rows:
        out.append(run_id)
        out.extend(r)
        result = r.result
        out.append(None if result is None else
                   hashlib.sha256(result.encode("utf-8", "surrogatepass")).hexdigest())
    return out


def _encodable(text: Any) -> bool:
    if type(text) is not str or text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable_row(row: TaskRow) -> TaskRow:
    """``row`` with text SQLite can store: a result that is not valid UTF-8 fails its task.

    (The codec refuses such results before they get here; this keeps a batch
    whole when something else slips through.)  Error messages and names are
    kept with the offending characters escaped (``\\udcff``).
    """
    fields = [f if _encodable(f) else _escaped(f) for f in row]
    fixed = TaskRow(*fields)
    if not _encodable(row.result):
        fixed = fixed._replace(
            status="failed", result=None, cache_key=None,
            error=f"UnstorableResult: task {fixed.name!r}: the result cannot be stored: its "
                  "JSON text is not valid UTF-8 (a lone surrogate)")
    return fixed
