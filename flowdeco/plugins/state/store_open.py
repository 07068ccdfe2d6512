"""Opening the SQLite store: schema, creation, migrations and read-only opens.

See :mod:`.store` for the layout and the safety rules; this module holds
how they are kept when the file is opened: the schema and its migrations,
:class:`SQLiteDatabase` (open, create, migrate, open read-only, close) and
the helpers its connections share (the checkpoint thread, busy retries,
translating driver errors while reading).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ...errors import StateError, one_line
from ..audit import make_private_dirs
from .runlock import _FileLock
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

DB_NAME = "state.db"
#: ``flock``-ed while a database is created or migrated (never by readers)
INIT_LOCK = ".init.lock"
#: databases up to this size get ``PRAGMA quick_check`` when opened
QUICK_CHECK_MAX_BYTES = 64 * 2**20

_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreChanged(StateError):
    """A database read without locks (``immutable``) was written meanwhile: read it again."""


class SQLiteDatabase:
    """The ``state.db`` file of a state dir: opening, creation, migrations, read-only opens.

    The base of :class:`~.store.SQLiteStore`, which adds the queries; kept
    apart because how a database is safely opened (inspected before any
    write, built under a temporary name, migrated under ``.init.lock``) is a
    concern of its own.
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
            fsync_dir(self.state_dir)
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


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: a folder that
    cannot be opened or synced, e.g. on some network filesystems, is left as is)."""
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


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # SQLite already rolled back (disk full, I/O error)


class _reading:
    """Turn driver errors while reading into StateError (a corrupted page shows up here)."""

    def __init__(self, store: SQLiteDatabase):
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
