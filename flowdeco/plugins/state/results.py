"""Result files: values stored beside the database, under ``STATE_DIR/results/RUN_ID/``.

A task's row holds either its result as JSON (see :mod:`.codec`) or one of
two small JSON records in the same column:

- ``{"$t":"file","s":SERIALIZER,"p":PATH,"n":SIZE,"h":SHA256}``: the value
  is the file ``STATE_DIR/PATH`` written by serializer ``s`` (``json``: JSON
  text too large for a row), ``n`` bytes long with that sha256;
- ``{"$t":"unsaved"}``: a task with ``store=False`` succeeded; its value was
  not kept, so a resume runs it again;
- ``{"$t":"instances"}``: a mapped task whose list of results cannot be
  stored as one value (a list of DataFrames); its instances' rows hold them.

(The codec never writes a top-level ``$t`` other than its own tags, so
these cannot be confused with a value.)

Durability: a file is written under a new, unique name and fsynced, and its
folder is fsynced, before the row naming it is submitted for commit; a crash
in between leaves an *orphan* file that no row names, never a row that names
a missing file.  Orphans are deleted when the run is resumed
(:meth:`ResultFiles.clean_orphans`) and by ``runs prune``.  Folders are
0700 and files 0600, like the database.

Reading checks the size and the sha256 of the whole file before the
serializer sees a byte, so a truncated or changed file is refused (and its
task runs again) -- a pickle is never loaded unless it is the one written.
An unsafe serializer's file is loaded only from a folder that is owned by
this user and writable by no one else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import threading
from pathlib import Path
from typing import Any, NamedTuple

from ...errors import StateError
from ..audit import make_private_dirs
from .serializers import CHUNK, MissingExtra, Registry, Serializer
from .store_open import fsync_dir

__all__ = ["FileRef", "ResultFiles", "ResultFileError", "ResultWriteError", "UNSAVED", "INSTANCES",
           "parse_ref", "is_record", "RESULTS_DIR"]

RESULTS_DIR = "results"
UNSAVED = '{"$t":"unsaved"}'
#: a mapped task whose list of results has no form of its own (DataFrames, ...): a resume
#: restores it instance by instance from the instances' rows
INSTANCES = '{"$t":"instances"}'
_FILE_PREFIX = '{"$t":"file",'
_RUN_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_FILE_RE = re.compile(r"[A-Za-z0-9_-]{1,80}-[0-9a-f]{16}(\.[A-Za-z0-9]{1,16})?")
_SAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")


class FileRef(NamedTuple):
    """What a row says about its result file."""

    serializer: str
    path: str
    size: int
    sha256: str

    def text(self) -> str:
        return json.dumps({"$t": "file", "s": self.serializer, "p": self.path, "n": self.size,
                           "h": self.sha256}, separators=(",", ":"))


class ResultFileError(StateError):
    """A result file cannot be used (missing, truncated, changed, unloadable): re-run its task."""


class ResultWriteError(StateError):
    """Writing a result file failed (disk full): the run stops like for a failed commit."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


def is_record(text: str | None) -> bool:
    """Whether a stored result is a file reference or the unsaved marker (not a value)."""
    return text is not None and text.startswith('{"$t":"') and (
        text.startswith(_FILE_PREFIX) or text == UNSAVED or text == INSTANCES)


def parse_ref(text: str | None) -> FileRef | None:
    """The file reference in a stored result, None for a value; StateError when malformed."""
    if text is None or not text.startswith(_FILE_PREFIX):
        return None
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise StateError(f"a result file reference is not valid JSON ({exc})") from None
    if type(d) is not dict or set(d) != {"$t", "s", "p", "n", "h"}:
        raise StateError(f"a result file reference has the keys {sorted(d)}")
    s, p, n, h = d["s"], d["p"], d["n"], d["h"]
    if type(s) is not str or type(p) is not str or type(n) is not int or n < 0 \
            or type(h) is not str or not re.fullmatch(r"[0-9a-f]{64}", h):
        raise StateError("a result file reference has a field of the wrong type")
    parts = p.split("/")
    if len(parts) != 3 or parts[0] != RESULTS_DIR or not _RUN_RE.fullmatch(parts[1]) \
            or parts[1] in (".", "..") or not _FILE_RE.fullmatch(parts[2]):
        raise StateError(f"a result file reference names a path outside {RESULTS_DIR}/: {p[:200]!r}")
    return FileRef(s, p, n, h)


class _HashingFile:
    """A write-only binary file object over a descriptor that hashes and counts what passes."""

    def __init__(self, fd: int):
        self.fd = fd
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = len(view)
        self.sha.update(view)
        done = 0
        while done < n:
            done += os.write(self.fd, view[done:done + (64 << 20)])
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


class ResultFiles:
    """Writes, checks and reads result files of one state dir (thread-safe)."""

    def __init__(self, state_dir: str | os.PathLike, registry: Registry):
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / RESULTS_DIR
        self.registry = registry
        self._made: set[str] = set()
        self._lock = threading.Lock()

    # -- writing
    def _folder(self, run_id: str) -> Path:
        folder = self.root / run_id
        if run_id not in self._made:
            with self._lock:
                if not folder.is_dir():
                    make_private_dirs(folder)
                    fsync_dir(self.root)
                    fsync_dir(self.state_dir)
                self._made.add(run_id)
        return folder

    def _new_file(self, run_id: str, name: str, suffix: str) -> tuple[Path, str, int]:
        folder = self._folder(run_id)
        stem = _SAFE_CHAR.sub("_", name)[:80] or "_"
        base = f"{stem}-{secrets.token_hex(8)}{suffix}"
        path = folder / base
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return path, f"{RESULTS_DIR}/{run_id}/{base}", fd

    def write(self, run_id: str, name: str, serializer: Serializer, value: Any) -> str:
        """Write ``value`` with ``serializer``; the row text naming the file (durable on return).

        Raises :class:`ResultWriteError` when the disk refuses it; any other
        exception is the serializer's (the value cannot be written that way).
        """
        return self._write(run_id, name, serializer.name, serializer.suffix,
                           lambda fh: serializer.dump(value, fh))

    def write_json(self, run_id: str, name: str, text: str) -> str:
        """JSON text too large for a row, as a ``.json`` file."""
        def dump(fh: Any) -> None:
            for i in range(0, len(text), CHUNK):
                fh.write(text[i:i + CHUNK].encode("utf-8", "surrogatepass"))
        return self._write(run_id, name, "json", ".json", dump)

    def _write(self, run_id: str, name: str, sname: str, suffix: str, dump: Any) -> str:
        try:
            path, rel, fd = self._new_file(run_id, name, suffix)
        except OSError as exc:
            raise ResultWriteError(_write_failed(name, self.root / run_id, exc), exc) from None
        ok = False
        try:
            fh = _HashingFile(fd)
            try:
                dump(fh)
            except OSError as exc:
                raise ResultWriteError(_write_failed(name, path, exc), exc) from None
            try:
                os.fsync(fd)
            except OSError as exc:
                raise ResultWriteError(_write_failed(name, path, exc), exc) from None
            ok = True
        finally:
            os.close(fd)
            if not ok:
                path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return FileRef(sname, rel, fh.size, fh.sha.hexdigest()).text()

    def link(self, ref: FileRef, run_id: str, name: str) -> str:
        """A reference to a copy (a hard link when possible) of ``ref``'s file in ``run_id``'s
        folder: a cache hit must not depend on the other run's files staying."""
        if ref.path.split("/")[1] == run_id:
            return ref.text()
        src = self.state_dir / ref.path
        suffix = os.path.splitext(ref.path)[1]
        try:
            path, rel, fd = self._new_file(run_id, name, suffix)
        except OSError as exc:
            raise ResultWriteError(_write_failed(name, self.root / run_id, exc), exc) from None
        os.close(fd)
        try:
            path.unlink()
            try:
                os.link(src, path)
            except OSError:
                shutil.copyfile(src, path)
                os.chmod(path, 0o600)
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise ResultWriteError(_write_failed(name, path, exc), exc) from None
        fsync_dir(path.parent)
        return FileRef(ref.serializer, rel, ref.size, ref.sha256).text()

    # -- reading
    def read(self, ref: FileRef) -> Any:
        """The value in ``ref``'s file; :class:`ResultFileError` saying why it cannot be used."""
        if ref.serializer == "json":
            serializer = None
        else:
            serializer = self.registry.get(ref.serializer)
            if serializer is None:
                raise ResultFileError(f"its file {ref.path} was written by serializer "
                                      f"{ref.serializer!r}, which is not registered (install or "
                                      "enable the plugin that provides it)")
        path = self.state_dir / ref.path
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise ResultFileError(f"its result file {path} is missing") from None
        except OSError as exc:
            raise ResultFileError(f"its result file {path} cannot be read: "
                                  f"{exc.strerror or exc}") from None
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_size != ref.size:
                raise ResultFileError(f"its result file {path} is {st.st_size} bytes, not the "
                                      f"{ref.size} written (truncated or changed)")
            sha = hashlib.sha256()
            buf = bytearray(min(CHUNK * 8, max(ref.size, 1)))
            view = memoryview(buf)
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                sha.update(view[:n])
            if sha.hexdigest() != ref.sha256:
                raise ResultFileError(f"its result file {path} does not match its checksum "
                                      "(changed since it was written)")
            if serializer is not None and not serializer.safe:
                self._check_private(path, st)
            fh.seek(0)
            try:
                if serializer is None:
                    return fh.read().decode("utf-8", "surrogatepass")  # the codec decodes it
                return serializer.load(fh)
            except MissingExtra as exc:
                raise ResultFileError(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a format library may raise anything
                raise ResultFileError(f"serializer {ref.serializer!r} cannot load {path}: "
                                      f"{type(exc).__name__}: {str(exc)[:300]}") from None

    def _check_private(self, path: Path, st: os.stat_result) -> None:
        """An unsafe format runs code when loaded: only from files nobody else could change."""
        uid = os.getuid()
        for p, s in ((path, st), (path.parent, None), (self.root, None), (self.state_dir, None)):
            s = s or os.stat(p)
            if s.st_uid != uid or s.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ResultFileError(f"{p} is writable by other users or not owned by you, so "
                                      "its pickle is not loaded (it could run anyone's code); "
                                      "make the state dir owner-only (chmod -R go-w)")

    # -- cleaning
    def clean_orphans(self, run_id: str, referenced: set[str]) -> int:
        """Delete files of ``run_id`` that no row names (a crash between file and commit)."""
        folder = self.root / run_id
        removed = 0
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return 0
        for e in entries:
            rel = f"{RESULTS_DIR}/{run_id}/{e.name}"
            if rel not in referenced and e.is_file(follow_symlinks=False):
                try:
                    os.unlink(e.path)
                    removed += 1
                except OSError:
                    pass
        return removed

    def remove_run(self, run_id: str) -> None:
        """Delete the run's folder of result files (``runs prune``)."""
        if not _RUN_RE.fullmatch(run_id) or run_id in (".", ".."):
            return
        folder = self.root / run_id
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)

    def run_folders(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []


def _write_failed(name: str, where: Path, exc: OSError) -> str:
    """``where``: the file, or the folder it was to be made in."""
    return f"task {name!r}: cannot write its result file {where}: {exc.strerror or exc}"
