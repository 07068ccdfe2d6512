"""What serve keeps on disk: the claims file ``STATE_DIR/serve/FLOW.json`` and its lock.

See :mod:`.serve` for the rules (claims, missed ticks, one serve per flow);
this module reads and writes the file (atomically and durably) and holds the
lock, and is what the UI reads (:func:`load_serve_state`, :func:`is_served`).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..runid import validate_run_id
from ..errors import FlowError, StateError, UsageError

UTC = _dt.timezone.utc

STATE_VERSION = 1


def load_serve_state(path: str | os.PathLike) -> dict[str, Any]:
    """The validated contents of a serve state file ``STATE_DIR/serve/FLOW.json``.

    Keys: ``version``, ``flow``, ``last_tick`` (POSIX seconds), ``last_tick_utc``,
    ``running`` (the claim: ``run_id``, ``tick``, ``tasks``; None when no run
    is in progress or cut short) and ``schedules`` (``key``, ``expr``, ``tz``
    -- an IANA name, None for the machine's zone --, ``tasks``; absent in files
    of older releases).  FlowError naming the file when it is unreadable.
    Used by serve itself and by the UI's schedules view
    (:func:`flowdeco.plugins.state.queries.schedules`).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("not a serve state file of this version")
        last = data.get("last_tick")
        if last is not None and not _number(last):
            raise ValueError("last_tick is not a timestamp")
        _check_claim(data.get("running"))
        return data
    except (OSError, ValueError) as exc:
        raise FlowError(f"{path}: unreadable serve state ({_short(exc)}); delete it to "
                        "start afresh (missed ticks will not be reported once)") from None


def is_served(lock_path: str | os.PathLike) -> bool:
    """Whether a serve holds ``STATE_DIR/serve/FLOW.lock`` now (reads only, writes nothing).

    Within this process :data:`_HELD` answers (record locks do not exclude
    within a process, and closing a descriptor of the file would drop serve's
    own lock); else a non-blocking shared ``lockf`` is tried and let go.
    """
    key = os.path.realpath(lock_path)
    with _HELD_LOCK:
        if key in _HELD:
            return True
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)  # (drops the probe's lock)
        return False


class ServeLock:
    """``STATE_DIR/serve/FLOW.lock``, held while serving: two serves of one flow would
    claim the same ticks and clear each other's claims.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process
    only, so worker processes forked by a tick run (``--executor process``)
    never hold it, and the kernel drops it the moment serve dies, even if such
    a worker lives on.  Record locks do not exclude within a process, so
    :data:`_HELD` does that.
    """

    def __init__(self, fd: int, key: str):
        self.fd = fd
        self.key = key

    @classmethod
    def acquire(cls, flow: str, path: Path, state_dir: Any) -> "ServeLock":
        try:
            _private_dirs(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"{path}: cannot create the serve lock "
                             f"({exc.strerror or exc})") from None
        key = os.path.realpath(path)
        busy = False
        with _HELD_LOCK:
            if key in _HELD:
                busy = True
            else:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        raise StateError(f"{path}: cannot lock ({exc.strerror or exc})") from None
                    busy = True
                else:
                    _HELD.add(key)
        if busy:
            os.close(fd)
            raise StateError(f"flow {flow!r} is already served from state dir {state_dir} by "
                             f"another serve ({path} is locked); stop it first, or use another "
                             "--state-dir")
        return cls(fd, key)

    def release(self) -> None:
        with _HELD_LOCK:
            _HELD.discard(self.key)
            os.close(self.fd)  # closing drops the record lock


#: lock files held by serves of this process
_HELD: set[str] = set()


_HELD_LOCK = threading.Lock()


def _number(value: Any) -> bool:
    """A POSIX timestamp a datetime can hold (not NaN, not 1e300, not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        _dt.datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _check_claim(running: Any) -> None:
    """A claim is None or {"run_id": str, "tick": number, "tasks": [str, ...]}."""
    if running is None:
        return
    if not isinstance(running, dict):
        raise ValueError("running is not an object")
    run_id, tick, tasks = running.get("run_id"), running.get("tick"), running.get("tasks", [])
    if not isinstance(run_id, str):
        raise ValueError("running.run_id is not a string")
    try:
        validate_run_id(run_id)
    except UsageError as exc:
        raise ValueError(f"running.run_id: {exc}") from None
    if not _number(tick):
        raise ValueError("running.tick is not a timestamp")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError("running.tasks is not a list of task names")
    running["tasks"] = tasks


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in (path, path.parent):
        try:
            os.chmod(p, 0o700)
        except OSError:
            pass


def write_serve_state(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and durably: a new file
    fsynced, renamed over the old one, then the directory fsynced.  OSError on
    failure (the temporary file removed)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _private_dirs(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


__all__ = ["load_serve_state", "is_served", "write_serve_state", "ServeLock", "STATE_VERSION"]
