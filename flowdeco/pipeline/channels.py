"""The pipeline's flow control: run flags, the in-flight window and the bounded
channels between stages (put/get in chunks, delayed retries, high-water mark).

Separate from :mod:`.engine` (the threads that use them) so each reads alone.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from time import monotonic

#: how often a blocked thread re-checks the abort flag, in seconds
POLL = 0.25


class Aborted(Exception):
    """Raised inside pipeline threads when the run is aborted."""


class Flags:
    __slots__ = ("abort", "stop", "interrupted", "crash", "source_error")

    def __init__(self) -> None:
        self.abort = False
        self.stop = False
        self.interrupted = False
        self.crash: BaseException | None = None
        self.source_error: BaseException | None = None


class Window:
    """In-flight slots: the feeder takes them before pulling, the collector returns them."""

    def __init__(self, size: int, flags: Flags):
        self.size = size
        self.flags = flags
        self.inflight = 0
        #: True while the feeder waits for a slot: batch stages then take partial batches
        self.stalled = False
        self.cond = threading.Condition(threading.Lock())
        self.waiting = False
        self.batch_channels: list[Channel] = []

    def acquire(self, want: int) -> int:
        """Take up to ``want`` slots (at least one, waiting if needed); 0 when feeding stops."""
        flags = self.flags
        with self.cond:
            while self.inflight >= self.size:
                if flags.stop or flags.abort:
                    return 0
                if not self.stalled:
                    self.stalled = True
                    for ch in self.batch_channels:
                        ch.wake()
                self.waiting = True
                self.cond.wait(POLL)
                self.waiting = False
            if flags.stop or flags.abort:
                return 0
            self.stalled = False
            n = min(want, self.size - self.inflight)
            self.inflight += n
            return n

    def release(self, n: int) -> None:
        with self.cond:
            self.inflight -= n
            if self.waiting:
                self.cond.notify()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class Channel:
    """A bounded FIFO of ``(index, item)`` entries, plus the reading stage's delay heap.

    ``get`` returns ``(entries, attempt)``: a due retry first (one unit, with
    its attempt number), else up to ``limit`` waiting entries (attempt 1); a
    batch stage's channel waits for a full batch unless it is closed or the
    window is stalled.  ``None`` means closed and drained.
    """

    def __init__(self, capacity: int, flags: Flags, batch: int = 0,
                 window: Window | None = None):
        self.dq: deque = deque()
        self.cap = capacity
        self.batch = batch
        self.flags = flags
        self.window = window
        lock = threading.Lock()
        self.lock = lock
        self.not_empty = threading.Condition(lock)
        self.not_full = threading.Condition(lock)
        self.getters = 0
        self.putters = 0
        #: a reader is waiting for entries and no writer has woken it yet: writers
        #: holding finished results pass them on before their next call
        self.hungry = False
        self.closed = False
        self.hwm = 0
        self.delayed: list[tuple[float, int, list, int]] = []
        self._seq = 0

    def put(self, entries: list) -> None:
        n = len(entries)
        with self.lock:
            dq = self.dq
            while len(dq) + n > self.cap:
                room = self.cap - len(dq)
                if room > 0:
                    dq.extend(entries[:room])
                    entries = entries[room:]
                    n -= room
                    if len(dq) > self.hwm:
                        self.hwm = len(dq)
                    if self.getters and len(dq) >= self.batch:
                        self.hungry = False
                        self.not_empty.notify(room)
                if self.flags.abort:
                    raise Aborted
                self.putters += 1
                self.not_full.wait(POLL)
                self.putters -= 1
            dq.extend(entries)
            if len(dq) > self.hwm:
                self.hwm = len(dq)
            if self.getters and len(dq) >= self.batch:  # a batch reader wants a full batch
                self.hungry = False
                self.not_empty.notify(n)

    def get(self, limit: int) -> tuple[list, int] | None:
        with self.lock:
            flags = self.flags
            while True:
                if flags.abort:
                    raise Aborted
                delayed = self.delayed
                if delayed and delayed[0][0] <= monotonic():
                    _, _, entries, attempt = heapq.heappop(delayed)
                    return entries, attempt
                dq = self.dq
                n = len(dq)
                if n:
                    if self.batch:
                        if n < self.batch and not self.closed and not (
                                self.window is not None and self.window.stalled):
                            n = 0  # wait for a full batch
                        else:
                            limit = self.batch
                    if n:
                        if n <= limit:
                            entries = list(dq)
                            dq.clear()
                        else:
                            pop = dq.popleft
                            entries = [pop() for _ in range(limit)]
                        if self.putters:
                            self.not_full.notify_all()
                        return entries, 1
                elif self.closed and not delayed:
                    return None
                timeout = POLL
                if delayed:
                    timeout = min(POLL, max(delayed[0][0] - monotonic(), 0.0))
                self.getters += 1
                if not self.batch:  # (a batch reader needs a whole batch, not one more item)
                    self.hungry = True
                self.not_empty.wait(timeout)
                self.getters -= 1

    def defer(self, delay: float, entries: list, attempt: int) -> None:
        """Put a failed unit back for another attempt after ``delay`` seconds."""
        with self.lock:
            self._seq += 1
            heapq.heappush(self.delayed, (monotonic() + delay, self._seq, entries, attempt))
            if self.getters:
                self.not_empty.notify()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.not_empty.notify_all()

    def wake(self) -> None:
        with self.lock:
            self.not_empty.notify_all()
            self.not_full.notify_all()
