"""The one source of time for a run.

Waits (retry back-off, delays, timeouts, intervals) use :meth:`Clock.monotonic`
so wall-clock changes never break them; timestamps in outcomes and the audit
trail use :meth:`Clock.now` (timezone-aware UTC).  Tests inject
:class:`FakeClock` to run hour-long schedules instantly.
"""

from __future__ import annotations

import datetime as _dt
import queue
import threading
import time
from typing import Any, Callable

UTC = _dt.timezone.utc

_EMPTY = object()


#: the longest a wait blocks without returning to Python (seconds), see wake_up_wait
WAKE_UP = 0.1


def wake_up_wait(get: Callable[..., Any], timeout: float | None) -> Any:
    """``get(timeout=...)`` for up to ``timeout`` seconds (None: until an item comes),
    returning to Python at least every :data:`WAKE_UP` seconds.

    Python runs signal handlers on the main thread, between bytecodes.  The
    OS may deliver a process's SIGINT or SIGTERM to any of its threads, and
    then a main thread blocked on a lock is not woken: Ctrl-C would wait for
    the next message or the end of the timeout (up to an interval task's whole
    period).  Waking up in slices bounds that delay; a wake-up costs a few
    microseconds.
    """
    if timeout is not None and timeout <= WAKE_UP:
        return get(timeout=max(timeout, 0.0))
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        step = WAKE_UP if end is None else min(WAKE_UP, end - time.monotonic())
        if step <= 0:
            raise queue.Empty
        try:
            return get(timeout=step)
        except queue.Empty:
            if end is not None and time.monotonic() >= end:
                raise


class Clock:
    """Real time: ``time.monotonic`` for waits, UTC wall time for timestamps."""

    virtual = False

    #: seconds on a clock that never goes back (waits, durations)
    monotonic = staticmethod(time.monotonic)
    #: wall time as POSIX seconds (cheap; converted to datetimes lazily)
    time = staticmethod(time.time)

    def now(self) -> _dt.datetime:
        """Timezone-aware UTC wall time."""
        return _dt.datetime.fromtimestamp(self.time(), UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, get: Callable[..., Any], timeout: float | None, idle: bool) -> Any:
        """Block on ``get`` (a queue's get) for at most ``timeout`` seconds.

        Returns the item, or raises ``queue.Empty`` when the timeout passed.
        ``idle`` tells whether anything is in flight; the real clock ignores it.
        """
        return wake_up_wait(get, timeout)


class FakeClock(Clock):
    """A clock that only moves when told to, or when the engine has nothing else to do.

    When the scheduler is idle (nothing in flight) and waits for a deadline, the
    fake clock jumps straight to it: a 24-hour schedule finishes in
    milliseconds.  ``sleep`` advances time instead of blocking.
    """

    virtual = True

    def __init__(self, start: float = 1_000.0, wall: float = 1_800_000_000.0):
        self._mono = float(start)
        self._offset = float(wall) - float(start)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        with self._lock:
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def wait(self, get: Callable[..., Any], timeout: float | None, idle: bool) -> Any:
        if idle and timeout is not None:
            try:
                return get(block=False)
            except queue.Empty:
                self.advance(max(timeout, 0.0))
                raise
        return wake_up_wait(get, None if timeout is None else max(min(timeout, 0.05), 0.0))
