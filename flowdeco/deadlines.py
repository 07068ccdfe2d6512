"""Attempt deadlines on the thread executor: the scheduler stops waiting for an overrun attempt.

A plugin gives a task a :class:`~flowdeco.Deadline` through
``flowdeco_task_deadline`` (the timeout plugin does, for ``timeout=``).
When the executor is flowdeco's own thread pool, each attempt of that task
runs on its worker as usual -- no hand-off to another thread and no lock, so
an attempt that finishes in time costs about a microsecond -- and is *armed*
with the :class:`Watchdog`.  If it is still running when its deadline passes, the
watchdog ends it for the scheduler: the attempt fails with the deadline's
error (retryable like any error), the pool replaces the worker thread
(:meth:`~flowdeco.threadpool.ThreadPool.give_up`), and the abandoned code runs
on to its end in the background, its result dropped.  Whichever comes first
-- the attempt returning, or the deadline -- decides (an atomic ``list.pop``).

Deadlines are real time (``time.monotonic``): the code they limit runs in
real time, whatever clock the run uses.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Watchdog"]

#: an armed attempt is a list (cheap to make on the hot path):
#: [due, claim, task index, attempt, iteration, t0, thread, deadline, guard, guard token]
#: (the guard, if any, is exited by the scheduler when the attempt overruns); ``claim`` is a
#: one-element list whose ``pop()`` (atomic) decides between the attempt's end and
#: its expiry: whoever pops it first wins
DUE, CLAIM, INDEX, ATTEMPT, ITERATION, T0, THREAD, DEADLINE, GUARD, TOKEN = range(10)
#: the longest the watchdog sleeps: arming an attempt due later than its next look
#: costs no thread switch (most attempts never overrun)
IDLE_WAKE = 0.5
#: the watchdog's next look while it scans: +inf, so that one comparison on the hot
#: path (``due < wake``) covers both "earlier than its next look" and "it is scanning"
_SCANNING = float("inf")


class Watchdog(threading.Thread):
    """Watches the armed attempts of one run; ``expire(armed)`` is called for each overrun.

    Each worker thread has one slot (the attempt it runs); arming is a dict
    store and disarming a ``list.pop()``, both atomic, so the workers never
    take a lock.  The watchdog scans the slots when it wakes: at the earliest
    deadline it knows of, at least every ``IDLE_WAKE`` seconds, and when an
    attempt is armed with a deadline earlier than its next look.
    """

    def __init__(self, expire: Any):
        super().__init__(name="flowdeco-deadlines", daemon=True)
        self._expire = expire
        self._slots: dict[threading.Thread, list] = {}
        self._cond = threading.Condition(threading.Lock())
        #: when the watchdog looks next (_SCANNING while it scans: arming then notifies)
        self._wake = _SCANNING
        self._stopped = False

    def arm(self, i: int, attempt: int, iteration: int | None, t0: float,
            thread: threading.Thread, deadline: Any, guard: Any = None, token: Any = None,
            now: float | None = None) -> list:
        """On the worker (``thread``), before the attempt runs (after its guard admitted it).

        ``now``: ``time.monotonic()`` if the caller has just read it."""
        due = (time.monotonic() if now is None else now) + deadline.seconds
        armed = [due, [None], i, attempt, iteration, t0, thread, deadline, guard, token]
        self._slots[thread] = armed
        if due < self._wake:  # earlier than its next look, or it is scanning (+inf)
            with self._cond:
                self._cond.notify()
        return armed

    @staticmethod
    def disarm(armed: list) -> bool:
        """On the worker, after the attempt returned: False if it was expired meanwhile."""
        try:
            armed[CLAIM].pop()
        except IndexError:
            return False
        return True

    def run(self) -> None:
        slots = self._slots
        cond = self._cond
        with cond:
            while not self._stopped:
                self._wake = _SCANNING
                now = time.monotonic()
                nxt = now + IDLE_WAKE
                for armed in list(slots.values()):
                    if not armed[CLAIM]:
                        continue  # ended (or expired) already
                    if armed[DUE] <= now:
                        try:
                            armed[CLAIM].pop()
                        except IndexError:
                            continue  # it ended just now
                        self._expire(armed)
                    elif armed[DUE] < nxt:
                        nxt = armed[DUE]
                self._wake = nxt
                cond.wait(nxt - now)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
