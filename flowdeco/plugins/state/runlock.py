"""Locks on files of a state dir: a run's lock (:class:`RunLock`) and the creation lock.

Both are ``flock`` s, never locks on the database itself, so the kernel
releases them when their holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path
from typing import Any

from ...errors import StateError
from ..audit import make_private_dirs


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
