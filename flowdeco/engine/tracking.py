"""Which attempt is running on this thread: for plugins that attribute output to attempts.

A plugin that sets ``run.track_attempts = True`` in ``flowdeco_run_start``
(the capture plugin) makes the engine mark every thread that runs an attempt
of that run -- thread workers, the scheduler thread under the ``sync``
executor, a worker process -- with a :class:`Slot`.  Code running on that
thread (a ``logging`` handler, a ``sys.stdout`` proxy) then asks
:func:`current` which attempt it belongs to and reports audit events for it
with :meth:`Slot.emit`, the path ``ctx.log`` takes: posted to the
scheduler's queue from a thread, buffered and shipped back with the
attempt's result from a worker process.

Why a slot per thread, updated per attempt, instead of a wrapper per task:
marking an attempt is one attribute store (a tuple) and one test after it,
about 40 ns, where a ``flowdeco_task_wrap`` wrapper costs a call per attempt
and turns off the engine's inline fast paths.  A run that tracks nothing
pays one branch per attempt.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

#: live slots by thread id (a thread runs one attempt at a time)
_slots: dict[int, "Slot"] = {}
_get_ident = threading.get_ident


class Slot:
    """The attempt a thread is running: ``at`` is ``(key, attempt, iteration)`` or None.

    ``name_of(key)`` gives the task (or mapped instance) name; ``sink`` is the
    run's log sink (``Run._sink``), or None in a worker process, where records
    go to ``buffer`` and travel back with the attempt.  ``ends``: callables to
    run when the attempt ends (on this thread, before its completion is
    posted), registered with :meth:`at_end`; ``data``: per-attempt scratch
    space for plugins (a dict), dropped when the attempt ends.
    """

    __slots__ = ("at", "name_of", "sink", "buffer", "ends", "data", "prev", "ident")

    def __init__(self, sink: Callable[..., None] | None, name_of: Callable[[Any], str] | None,
                 buffer: list | None = None):
        self.at: tuple | None = None
        self.sink = sink
        self.name_of = name_of
        self.buffer: list = [] if buffer is None else buffer
        self.ends: list[Callable[[], None]] | None = None
        self.data: dict | None = None
        self.prev: Slot | None = None
        self.ident = 0

    @property
    def task(self) -> str | None:
        """The running task's (or instance's) name; None in a worker process."""
        at = self.at
        if at is None or self.name_of is None:
            return None
        return self.name_of(at[0])

    @property
    def attempt(self) -> int | None:
        return None if self.at is None else self.at[1]

    @property
    def iteration(self) -> int | None:
        return None if self.at is None else self.at[2]

    def emit(self, level: str, event: str, fields: dict) -> None:
        """Report audit event ``event`` of the running attempt (with ``level``, ``attempt``)."""
        at = self.at
        if at is None:
            return
        if self.sink is None:
            self.buffer.append((level, event, fields))
        else:
            self.sink(self.name_of(at[0]), level, at[1], at[2], event, fields)  # type: ignore[misc]

    def at_end(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on this thread when the running attempt ends (flush a partial line)."""
        if self.ends is None:
            self.ends = [fn]
        else:
            self.ends.append(fn)

    def end(self) -> None:
        """The attempt ended: run the ``at_end`` callables (the engine calls this when
        ``ends`` is set), then forget the attempt's scratch data."""
        ends, self.ends = self.ends, None
        for fn in ends or ():
            try:
                fn()
            except Exception:  # noqa: BLE001 - a plugin's flush must not fail the attempt
                pass
        self.data = None


def current() -> Slot | None:
    """The slot of the attempt running on this thread, or None (not inside an attempt)."""
    slot = _slots.get(_get_ident())
    return slot if slot is not None and slot.at is not None else None


def enter(sink: Callable[..., None] | None, name_of: Callable[[Any], str] | None,
          buffer: list | None = None) -> Slot:
    """Give this thread a new slot (once per worker loop, not per attempt); undo with
    :func:`leave`."""
    return push(Slot(sink, name_of, buffer))


def push(slot: Slot) -> Slot:
    """Make ``slot`` this thread's; one already there (a run started from inside a task
    on the ``sync`` executor) comes back with :func:`leave`."""
    slot.ident = ident = _get_ident()
    slot.prev = _slots.get(ident)
    _slots[ident] = slot
    return slot


def leave(slot: Slot) -> None:
    """The thread stops running attempts under ``slot``: end its attempt, restore the
    thread's previous slot."""
    if slot.ends is not None:
        slot.end()
    slot.at = None
    if _slots.get(slot.ident) is slot:
        if slot.prev is None:
            del _slots[slot.ident]
        else:
            _slots[slot.ident] = slot.prev
    slot.prev = None
