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

import fcntl
import functools
import hashlib
import math
import os
import re
import sqlite3
import shutil
import stat
import tempfile
import threading
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, Sequence, runtime_checkable

import attrs
import cattrs

from ...errors import StateError, one_line
from ..audit import make_private_dirs
from .codec import MAX_RESULT_BYTES

__all__ = ["Store", "SQLiteStore", "RunRecord", "TaskRecord", "TaskRow", "RunSummary", "CacheEntry",
           "RunLock", "StoreChanged", "SCHEMA_VERSION", "APPLICATION_ID", "checksum",
           "result_intact"]

#: ``PRAGMA application_id`` of a flowdeco state database ("fdst")
APPLICATION_ID = 0x66647374
SCHEMA_VERSION = 4
DB_NAME = "state.db"
#: ``flock``-ed while a database is created or migrated (never by readers)
INIT_LOCK = ".init.lock"
#: databases up to this size get ``PRAGMA quick_check`` when opened
QUICK_CHECK_MAX_BYTES = 64 * 2**20
MAX_NAME = 4096
MAX_ERROR = 65536
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
TASK_STATUSES = ("running", "succeeded", "failed", "skipped", "restored", "interrupted")
SKIP_REASONS = ("upstream", "stopped", "condition", "trigger")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

#: schema version -> statements that bring the previous version up to it
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE runs (
            run_id   TEXT PRIMARY KEY NOT NULL,
            flow     TEXT NOT NULL,
            status   TEXT NOT NULL,
            started  REAL NOT NULL,
            session_started REAL NOT NULL,
            finished REAL,
            duration REAL NOT NULL DEFAULT 0,
            sessions INTEGER NOT NULL DEFAULT 1,
            pid      INTEGER
        )""",
        """CREATE TABLE tasks (
            run_id      TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            status      TEXT NOT NULL,
            attempts    INTEGER NOT NULL,
            started     REAL,
            finished    REAL,
            fingerprint TEXT,
            result      TEXT,
            error       TEXT,
            reason      TEXT,
            PRIMARY KEY (run_id, name)
        ) WITHOUT ROWID""",
        "CREATE INDEX runs_by_flow ON runs (flow, session_started)",
    ),
    2: (  # input-hash caching (@task(cache=...)): the key a successful result answers
        "ALTER TABLE tasks ADD COLUMN cache_key TEXT",
        "CREATE INDEX tasks_by_cache_key ON tasks (cache_key, finished) "
        "WHERE cache_key IS NOT NULL",
    ),
    # sha256 of ``result`` (the stored text, UTF-8), checked when it is restored; rows
    # written before version 3 have none and are trusted as before
    3: ("ALTER TABLE tasks ADD COLUMN checksum TEXT",),
    # flow versions (see .versions): each run's version, one graph snapshot per version;
    # indexes for the UI's runs listing (latest first, by status)
    4: (
        "ALTER TABLE runs ADD COLUMN flow_version TEXT",
        """CREATE TABLE flow_graphs (
            digest TEXT PRIMARY KEY NOT NULL,
            flow   TEXT NOT NULL,
            graph  TEXT NOT NULL
        )""",
        "CREATE INDEX runs_by_session ON runs (session_started, started)",
        "CREATE INDEX runs_by_status ON runs (status, session_started)",
        "CREATE INDEX runs_by_version ON runs (flow_version) WHERE flow_version IS NOT NULL",
    ),
}


# --------------------------------------------------------------------------- records


def _max_len(limit: int) -> Any:
    def check(inst: Any, attribute: Any, value: Any) -> None:
        if value is not None and len(value) > limit:
            raise ValueError(f"{attribute.name} is {len(value)} characters long "
                             f"(the limit is {limit})")
    return check


def _non_negative(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


#: 9999-12-31T23:59:59Z: later timestamps cannot be shown as dates
_MAX_TIMESTAMP = 253402300799.0


def _timestamp(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None and not 0 <= value <= _MAX_TIMESTAMP:
        raise ValueError(f"{attribute.name} is not a plausible timestamp: {value!r}")


def _run_id(inst: Any, attribute: Any, value: str) -> None:
    if not _RUN_ID_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"invalid run id {value[:140]!r}")


@attrs.frozen
class RunRecord:
    """One saved run."""

    run_id: str = attrs.field(validator=_run_id)
    flow: str = attrs.field(validator=_max_len(MAX_NAME))
    status: Literal["running", "succeeded", "failed", "interrupted"]
    started: float = attrs.field(validator=_timestamp)
    #: when the latest session (first start or resume) began
    session_started: float = attrs.field(validator=_timestamp)
    finished: float | None = attrs.field(default=None, validator=_timestamp)
    duration: float = attrs.field(default=0.0, validator=_non_negative)
    sessions: int = attrs.field(default=1, validator=_non_negative)
    pid: int | None = None


@attrs.frozen
class TaskRecord:
    """One task of a saved run, as last recorded."""

    name: str = attrs.field(validator=_max_len(MAX_NAME))
    status: Literal["running", "succeeded", "failed", "skipped", "restored", "interrupted"]
    attempts: int = attrs.field(validator=_non_negative)
    started: float | None = attrs.field(default=None, validator=_timestamp)
    finished: float | None = attrs.field(default=None, validator=_timestamp)
    fingerprint: str | None = attrs.field(default=None, validator=_max_len(64))
    result: str | None = attrs.field(default=None, validator=_max_len(MAX_RESULT_BYTES))
    error: str | None = attrs.field(default=None, validator=_max_len(MAX_ERROR))
    reason: Literal["upstream", "stopped", "condition", "trigger"] | None = None
    #: the input-hash cache key (tasks with ``cache=``), else None
    cache_key: str | None = attrs.field(default=None, validator=_max_len(64))
    #: sha256 (hex) of ``result`` as written; None for rows of older stores (trusted)
    checksum: str | None = attrs.field(default=None, validator=_max_len(64))

    @property
    def intact(self) -> bool:
        """False when the stored result's bytes changed since they were written."""
        return result_intact(self.result, self.checksum)

    @property
    def completed(self) -> bool:
        return self.status in ("succeeded", "restored")

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return max(self.finished - self.started, 0.0)


class TaskRow(NamedTuple):
    """What the plugin writes for a task (cheap to build on the hot path); columns in order."""

    name: str
    status: str
    attempts: int
    started: float | None
    finished: float | None
    fingerprint: str | None
    result: str | None
    error: str | None
    reason: str | None
    cache_key: str | None = None


@attrs.frozen
class CacheEntry:
    """A stored successful result that answers an input-hash cache key."""

    run_id: str = attrs.field(validator=_run_id)
    name: str = attrs.field(validator=_max_len(MAX_NAME))
    finished: float = attrs.field(validator=_timestamp)
    result: str = attrs.field(validator=_max_len(MAX_RESULT_BYTES))
    checksum: str | None = attrs.field(default=None, validator=_max_len(64))

    @property
    def intact(self) -> bool:
        return result_intact(self.result, self.checksum)


def checksum(result: str) -> str:
    """What a row's ``checksum`` holds: sha256 (hex) of the result's UTF-8 bytes."""
    return hashlib.sha256(result.encode("utf-8", "surrogatepass")).hexdigest()


def result_intact(result: str | None, digest: str | None) -> bool:
    """Whether ``result`` still matches ``digest`` (no digest: an older row, trusted)."""
    return digest is None or result is None or checksum(result) == digest


@attrs.frozen
class RunSummary:
    """A run with its task counts by status (``runs`` listing)."""

    run: RunRecord
    counts: dict[str, int]


def _strict_converter() -> cattrs.Converter:
    """Structures rows into records without coercion: ``"3"`` is not an int."""
    conv = cattrs.Converter(forbid_extra_keys=True)

    def exact(kind: type, name: str) -> Any:
        def hook(value: Any, _: Any) -> Any:
            if type(value) is not kind:
                raise TypeError(f"expected {name}, got {type(value).__name__}")
            return value
        return hook

    def real(value: Any, _: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise TypeError(f"expected a finite number, got {type(value).__name__} {value!r:.40}")
        return float(value)

    conv.register_structure_hook(int, exact(int, "an integer"))
    conv.register_structure_hook(str, exact(str, "text"))
    conv.register_structure_hook(float, real)
    return conv


_CONVERTER = _strict_converter()


def _explain(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown keys {sorted(exc.extra_fields)}"
    return str(exc) or type(exc).__name__


def structure(data: dict, cls: type, what: str) -> Any:
    """A validated record from a row dict, or :class:`StateError` naming ``what`` and the field."""
    try:
        return _CONVERTER.structure(data, cls)
    except Exception as exc:  # noqa: BLE001 - cattrs groups, attrs validators
        if isinstance(exc, cattrs.BaseValidationError):
            detail = "; ".join(cattrs.transform_error(exc, format_exception=_explain))
        else:
            detail = f"{type(exc).__name__}: {exc}"
        raise StateError(f"{what} is invalid: {detail[:500]}") from None


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


class RunLock:
    """An exclusive ``flock`` on ``LOCK_DIR/RUN_ID.lock``; the kernel drops it if we die.

    An ``flock`` belongs to the open file, not to the process: a child forked
    while the lock is held (a ``process`` executor's worker) shares it through
    its copy of the descriptor, and would keep the run locked after the
    driver died.  So no child keeps it: a fork handler closes every held
    lock's descriptor in the child (closing, never unlocking -- an unlock
    would release the driver's lock too).  ``O_CLOEXEC`` covers ``exec``.
    """

    def __init__(self, path: Path, run_id: str, where: str):
        make_private_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(f"run ID {run_id!r} is in use by another process (state dir "
                             f"{where}); wait for it to finish, or choose another run id") from None
        except OSError:
            os.close(fd)
            raise
        self.fd: int | None = fd
        self.path = path
        _HELD_LOCKS.add(self)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        _HELD_LOCKS.discard(self)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @staticmethod
    def held(path: Path) -> bool:
        """Whether some process holds the lock (tries it and lets go at once)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


#: the run locks this process holds (see :class:`RunLock`: a forked child drops them)
_HELD_LOCKS: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _drop_locks_after_fork() -> None:
    for lock in list(_HELD_LOCKS):
        fd, lock.fd = lock.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_after_fork)


# --------------------------------------------------------------------------- SQLite


_TASK_COLUMNS = ("name", "status", "attempts", "started", "finished", "fingerprint", "result",
                 "error", "reason", "cache_key", "checksum")
_RUN_COLUMNS = tuple(f.name for f in attrs.fields(RunRecord))
#: columns of ``tasks`` added after version 1 (a read-only open leaves older stores as they are)
_ADDED_IN = {"cache_key": 2, "checksum": 3}
_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreChanged(StateError):
    """A database read without locks (``immutable``) was written meanwhile: read it again."""


class SQLiteStore:
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

    def __init__(self, state_dir: str | os.PathLike, *, synchronous: str = "normal",
                 busy_timeout: float = 30.0):
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.location = str(self.path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.conn: sqlite3.Connection | None = None
        #: a second connection for cache lookups (the writer thread uses ``conn``)
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._commits = 0
        #: schema version of the open database (a read-only open may find an older one)
        self.version = SCHEMA_VERSION
        #: read-only, without locks: (inode, size, mtime) of the file when it was opened
        self._immutable: tuple[int, int, int] | None = None
        #: read-only from a private copy (a WAL without its -shm): the copy's folder
        self._copy: str | None = None
        self._clock = time.monotonic
        self._sleep = time.sleep

    # -- opening
    def open(self, create: bool = True) -> bool:
        """Open for reading and writing (created when missing and ``create``)."""
        if self.conn is not None:
            return True
        return self._guarded(lambda: self._open(create))

    def open_read_only(self) -> bool:
        """Open for reading only, changing no byte of the state dir.  False: no store yet."""
        if self.conn is not None:
            return True
        return self._guarded(self._open_read_only)

    def _guarded(self, fn: Any) -> bool:
        try:
            return fn()
        except StateError:
            self.close()
            raise
        except sqlite3.Error as exc:
            self.close()
            raise self._db_error(exc) from None
        except UnicodeDecodeError as exc:
            self.close()
            raise self._corrupt(f"a text value is not UTF-8: {exc.reason}") from None
        except OSError as exc:
            self.close()
            raise StateError(f"cannot use the state database {self.path}: "
                             f"{exc.strerror or exc}") from None

    def _open(self, create: bool) -> bool:
        path = self.path
        existing = self._check_header()
        if existing is False:
            self._refuse_empty_beside_runs()
        if not existing and not create:
            return False
        if existing and not self._hot_journal():
            self._inspect_read_only()  # classify and check without writing (may be slow)
        make_private_dirs(self.state_dir)
        with self._init_lock():
            existing = self._check_header()  # again: another process may have made it
            if not existing:
                if existing is False:
                    self._refuse_empty_beside_runs()
                if not create:
                    return False
                self._create()
            conn = sqlite3.connect(path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            self.conn = conn
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StateError(f"{path}: cannot switch the database to WAL mode "
                                 f"(got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
        self.version = SCHEMA_VERSION
        self._private_files()
        return True

    def _hot_journal(self) -> bool:
        """A rollback journal left by a process killed mid-transaction (before WAL mode was on).

        Only a read-write connection can roll it back (SQLite's own crash
        recovery); a read-only look would fail with SQLITE_READONLY_ROLLBACK
        and refuse the state dir for good, so the write path skips that look
        and classifies the file under the write lock instead (:meth:`_migrate`).
        """
        try:
            return Path(str(self.path) + "-journal").stat().st_size > 0
        except OSError:
            return False

    def _open_read_only(self) -> bool:
        existing = self._check_header()
        if existing is None:
            return False
        if existing is False:
            self._refuse_empty_beside_runs()
            return False  # being created by a process starting right now, or left empty
        self.version = self._inspect_read_only(keep=True)
        return self.conn is not None

    def _init_lock(self) -> "_FileLock":
        return _FileLock(self.state_dir / INIT_LOCK, self.busy_timeout, self._clock,
                         self._sleep, self._locked)

    def _refuse_empty_beside_runs(self) -> None:
        """A 0-byte ``state.db`` next to saved runs' audit trails lost those runs: refuse it.

        flowdeco never leaves an empty database of its own (it renames a
        finished one into place), so with saved runs beside it the file was
        truncated or replaced.  Without saved runs it may be initialised.
        """
        runs = self.state_dir / "runs"
        try:
            saved = next(runs.glob("*/audit.jsonl"), None) is not None
        except OSError:
            saved = False
        if saved:
            raise StateError(
                f"the state database {self.path} is empty (0 bytes) although the state dir "
                f"holds saved runs (audit trails in {runs}): it was truncated or replaced; it "
                "was left untouched: restore it from a backup, or move it away to start a new "
                "history, or use another --state-dir")

    def _create(self) -> None:
        """Build a new database under a temporary name and rename it to ``state.db``."""
        wal = Path(str(self.path) + "-wal")
        try:
            orphan = wal.stat().st_size > 0
        except FileNotFoundError:
            orphan = False
        if orphan:
            raise StateError(f"{wal} exists without its database {self.path} (a leftover of "
                             "a removed database); it was left untouched: move it away, or "
                             "put the database back, or use another --state-dir")
        for stale in self.state_dir.glob(".state.db.*.tmp*"):  # a creator killed midway
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state.db.", suffix=".tmp", dir=self.state_dir)
        os.close(fd)  # mkstemp: owner-only
        try:
            conn = sqlite3.connect(tmp, timeout=self.busy_timeout, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                self._migrate(conn)
            finally:
                conn.close()  # the last connection: the WAL is folded in and removed
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.state_dir)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(tmp + suffix).unlink(missing_ok=True)

    def _retry(self, fn: Any) -> Any:
        """``fn()``, again while SQLite says "busy", until ``busy_timeout`` s have passed.

        SQLite's own busy handler is skipped in some cases (a journal mode
        switch or lock upgrade that could deadlock): those answer "busy" at once.
        """
        start = self._clock()
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                if self._clock() - start >= self.busy_timeout:
                    raise self._locked() from None
                self._sleep(delay)
                delay = min(delay * 2, 0.1)

    def _locked(self) -> StateError:
        return StateError(f"the state database {self.path} stayed locked by another process "
                          f"for {self.busy_timeout:g}s; try again")

    def _start_checkpointer(self) -> None:
        """Writers stop checkpointing (the fsync) themselves; a helper thread does it."""
        if self._checkpointer is None and self.conn is not None:
            self.conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path, self.synchronous, self.busy_timeout)
            self._checkpointer.start()

    def _check_header(self) -> bool | None:
        """None: no file; False: an empty file; True: plausibly SQLite.  Reads only.

        (A cut inside a page is caught here; a cut between pages is SQLite's to
        detect: it checks its header's page count against the file and the WAL
        under its own locks.)
        """
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(100)
                size = os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the state database {self.path}: "
                             f"{exc.strerror or exc}") from None
        if not head:
            return False
        if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
            raise StateError(f"{self.path} is not a SQLite database (corrupted, or another "
                             "program's file); it was left untouched: move it away or use "
                             "another --state-dir")
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            raise self._corrupt(f"invalid page size {page_size}")
        if size % page_size:
            raise self._corrupt(f"it is truncated: {size} bytes is not a whole number of "
                                f"{page_size}-byte pages")
        return True

    def _db_error(self, exc: sqlite3.Error) -> StateError:
        code = getattr(exc, "sqlite_errorname", "") or ""
        if _busy(exc):
            return StateError(f"the state database {self.path} is locked by another process "
                              f"({code or exc}); try again")
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or not code or \
                type(exc) is sqlite3.DatabaseError:
            return self._corrupt(exc)
        return StateError(f"cannot use the state database {self.path}: {exc} ({code})")

    def _corrupt(self, why: Any) -> StateError:
        return StateError(f"the state database {self.path} is corrupted or unreadable "
                          f"({one_line(str(why))}); it was left untouched: move it away (or "
                          "restore a backup) and run again, or use another --state-dir")

    def _foreign(self, detail: str) -> StateError:
        return StateError(f"{self.path} is not a flowdeco state database ({detail}); it was "
                          "left untouched: move it away or use another --state-dir")

    def _classify(self, conn: sqlite3.Connection, in_transaction: bool = False) -> int:
        """The schema version of a database that is ours (or empty); StateError otherwise.

        The three reads happen in one read transaction: read one by one, a
        database being created meanwhile looked like someone else's file.
        """
        if not in_transaction:
            conn.execute("BEGIN")
        try:
            # reading the schema makes SQLite check the header against the file (truncation)
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")]
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            if not in_transaction:
                _rollback(conn)
        if app == APPLICATION_ID:
            if version < 1:
                raise self._corrupt(f"invalid schema version {version}")
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} was written by a newer flowdeco (schema version {version}; "
                    f"this one reads up to {SCHEMA_VERSION}); upgrade flowdeco, or use another "
                    "--state-dir")
            return version
        if app == 0 and version == 0 and not tables:
            return 0
        what = f"application id {app:#x}" if app else \
            f"tables {', '.join(map(repr, tables[:5]))}" if tables else f"user version {version}"
        raise self._foreign(what)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that reads the database (and its WAL) and writes no byte anywhere.

        - ``-wal`` and ``-shm`` present (a live run, or one that crashed):
          ``mode=ro&readonly_shm=1``.  SQLite maps the ``-shm`` read-only: while
          a live connection holds it, it is trusted; else (a crashed run) SQLite
          reads the WAL into private memory.  Plain ``mode=ro`` would write the
          ``-shm``, and create ``-wal``/``-shm`` beside a clean database.
        - no ``-wal`` (or an empty one): no connection has the database open
          (a WAL-mode connection keeps its ``-wal``), so nothing waits in a WAL:
          ``immutable=1`` reads the file without locks or side files.  A run
          that starts meanwhile could checkpoint into the file as it is read;
          the file's (inode, size, mtime) is compared after every read, and a
          change raises :class:`StoreChanged` (the ``runs`` commands read again).
        - a non-empty ``-wal`` without its ``-shm`` (a copied or damaged state
          dir): the database and WAL are copied to a private temporary folder
          and the copy is read (rare; costs a copy).
        """
        wal = Path(str(self.path) + "-wal")
        shm = Path(str(self.path) + "-shm")
        try:
            wal_size: int | None = wal.stat().st_size
        except FileNotFoundError:
            wal_size = None
        base = "file:" + urllib.parse.quote(str(self.path.resolve()))
        if wal_size and shm.exists() and sqlite3.sqlite_version_info >= (3, 22):
            return sqlite3.connect(base + "?mode=ro&readonly_shm=1", uri=True,
                                   timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        if wal_size:
            self._copy = tempfile.mkdtemp(prefix="flowdeco-state-")
            copy = Path(self._copy) / DB_NAME
            shutil.copyfile(self.path, copy)
            shutil.copyfile(wal, str(copy) + "-wal")
            return sqlite3.connect(copy, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        st = self.path.stat()
        self._immutable = (st.st_ino, st.st_size, st.st_mtime_ns)
        return sqlite3.connect(base + "?mode=ro&immutable=1", uri=True, isolation_level=None,
                               check_same_thread=False)

    def _check_unchanged(self) -> None:
        """After an ``immutable`` read: StoreChanged if the file was written meanwhile."""
        try:
            st = self.path.stat()
            now = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            now = None
        if now != self._immutable or Path(str(self.path) + "-wal").exists():
            raise StoreChanged(f"{self.path} changed while it was read; read it again")

    def _inspect_read_only(self, keep: bool = False) -> int:
        """Classify an existing file without writing to it; its schema version.

        ``keep`` (``runs`` commands): the connection, which writes no byte
        (:meth:`_connect_read_only`), becomes the store's.  Else (a run about
        to write): a plain ``mode=ro`` connection, which may create
        ``-wal``/``-shm`` beside the file; those it created are removed again
        when the file is refused.
        """
        side = [Path(str(self.path) + s) for s in ("-wal", "-shm")]
        before = [p.exists() for p in side]
        if keep:
            conn = self._connect_read_only()
        else:
            uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout,
                                   isolation_level=None)
        ok = False
        try:
            try:
                version = self._classify(conn)
                if version and self.path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                    found = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
                    if found != ["ok"]:
                        raise self._corrupt("; ".join(map(str, found)))
            finally:
                if self._immutable is not None:
                    self._check_unchanged()  # a run started meanwhile: read it again
            ok = True
        finally:
            if keep and ok:
                self.conn = conn
            else:
                conn.close()
                self._drop_copy()
                self._immutable = None
            if not ok and not keep:
                for p, existed in zip(side, before):
                    if existed:
                        continue
                    try:
                        if p.name.endswith("-shm") or p.stat().st_size == 0:
                            p.unlink()
                    except OSError:
                        pass
        if keep and not version:  # an empty SQLite file: no runs yet
            self.close()
        return version

    def _drop_copy(self) -> None:
        copy, self._copy = self._copy, None
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION and \
                conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
            return
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            version = self._classify(conn, in_transaction=True)  # again, under the write lock
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _private_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            try:
                mode = p.stat().st_mode
            except FileNotFoundError:
                continue
            if stat.S_IMODE(mode) & 0o077:
                os.chmod(p, 0o600)

    def close(self) -> None:
        cp, self._checkpointer = self._checkpointer, None
        if cp is not None:
            cp.stop()
        for conn in (self._reader, self.conn):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._reader = self.conn = None
        self._immutable = None
        self._drop_copy()

    def _c(self) -> sqlite3.Connection:
        if self.conn is None:
            self.open()
        assert self.conn is not None
        return self.conn

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
#: commits between two checkpoints (a commit appends about one 4 KiB page to the WAL)
_CHECKPOINT_EVERY = 250


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database off the scheduler thread (SQLite releases the GIL).

    In WAL mode with ``synchronous=NORMAL`` a commit does not fsync; the
    checkpoint does, and it is the slow part.  The writer's connection has
    automatic checkpoints off; this thread runs a PASSIVE checkpoint (never
    blocks the writer) when woken, and the last connection to close does a
    final one.
    """

    def __init__(self, path: Path, synchronous: str, busy_timeout: float):
        super().__init__(name="flowdeco-state-checkpoint", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.wake = threading.Event()
        self.done = False

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error:
            return
        try:
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            while True:
                self.wake.wait()
                self.wake.clear()
                if self.done:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # the next one (or the final one at close) will do it
        finally:
            conn.close()

    def stop(self) -> None:
        self.done = True
        self.wake.set()
        self.join(timeout=60)


def _busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorname", "") or ""
    return code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _FileLock:
    """An exclusive ``flock`` on ``path`` (created owner-only), tried until ``timeout`` s."""

    def __init__(self, path: Path, timeout: float, clock: Any, sleep: Any, locked: Any):
        self.path, self.timeout, self.clock, self.sleep, self.locked = \
            path, timeout, clock, sleep, locked
        self.fd: int | None = None

    def __enter__(self) -> "_FileLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        start, delay = self.clock(), 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self.clock() - start >= self.timeout:
                    os.close(fd)
                    raise self.locked() from None
                self.sleep(delay)
                delay = min(delay * 2, 0.05)
            except OSError:
                os.close(fd)
                raise
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # releases the lock


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # SQLite already rolled back (disk full, I/O error)


class _reading:
    """Turn driver errors while reading into StateError (a corrupted page shows up here)."""

    def __init__(self, store: SQLiteStore):
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if self.store._immutable is not None and not isinstance(exc, StoreChanged):
            self.store._check_unchanged()  # read without locks: was it written meanwhile?
        if isinstance(exc, UnicodeDecodeError):  # a damaged TEXT value
            raise self.store._corrupt(f"a text value is not UTF-8: {exc.reason}") from None
        if exc is None or not isinstance(exc, sqlite3.Error) \
                or isinstance(exc, sqlite3.IntegrityError):
            return False
        raise self.store._db_error(exc) from None
