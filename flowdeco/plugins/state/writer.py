"""Committing off the scheduler thread, with a gate that keeps dependents waiting.

The contract is that a task's completion is durable before any task that
depends on it starts.  Committing on the scheduler thread meets it simply but
puts every commit on the critical path of the run (the scheduler starts
nothing while SQLite writes).  With a thread executor the plugin does this
instead:

- the scheduler hands each batch of rows to a :class:`Writer` thread with a
  sequence number (a queue put) and notes, per task, the batch holding its
  completion;
- the writer commits as soon as it is free: a batch arriving at an idle
  writer is committed at once, and the batches that arrive while a commit
  is in progress go into the next transaction together (group commit
  without a gathering window); after each commit it publishes the highest
  committed sequence number and calls ``on_commit`` (the plugin then wakes
  the scheduler, which tells reporting plugins what is durable now);
- every task with dependencies is wrapped (``flowdeco_task_wrap``) by a gate
  that, on the worker and before the task body runs, waits until the batches
  of all its dependencies are committed.  A dependency committed long ago
  costs one integer comparison.  A successor the core chains on the same
  worker right after its dependency (``run.inline_successors``, kept on)
  finds that dependency not even reported yet and waits for it the same way.

So a task's body never runs before the completions it depends on are
durable, and a crash at any point loses at most completions that nothing
has used yet and that were waiting for the commit in progress or being
committed: at most one per worker, plus one completing at that instant.
If a commit fails (disk full), the writer stops, every gate
waiting for that batch raises :class:`~flowdeco.StateError` (the task fails
without running) and the plugin stops the run.
"""

from __future__ import annotations

import sys
import threading
from queue import Empty, SimpleQueue
from typing import Any, Callable, Sequence

from ...errors import StateError
from .codec import Unstorable, type_name
from .store import Store, TaskRow

_STOP = None
#: ``seqs[i]`` of a task whose end the scheduler has not seen yet
UNREPORTED = sys.maxsize


class Writer(threading.Thread):
    """Commits batches of rows for one run, in order, on its own thread."""

    def __init__(self, store: Store, run_id: str,
                 on_commit: Callable[[], None] | None = None):
        super().__init__(name=f"flowdeco-state-writer-{run_id}", daemon=True)
        self.store = store
        self.run_id = run_id
        #: called on the writer thread after each commit (and after a failed one)
        self.on_commit = on_commit
        self.queue: SimpleQueue = SimpleQueue()
        self.cond = threading.Condition()
        #: highest sequence number whose rows are committed
        self.committed = 0
        self.error: BaseException | None = None
        #: rows of batches that could not be written (after an error)
        self.unwritten: dict[str, TaskRow] = {}

    def submit(self, seq: int, rows: Sequence[TaskRow]) -> None:
        self.queue.put((seq, rows))

    def run(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        while True:
            first = get()  # idle until a batch arrives, then commit at once
            stop = first is _STOP
            batches = [] if stop else [first]
            while True:  # with what queued up while the last commit was in progress
                try:
                    item = get_nowait()
                except Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batches.append(item)
            if batches:
                self._write(batches)
                if self.on_commit is not None:
                    self.on_commit()
            if stop:
                return

    def _write(self, batches: list[tuple[int, Sequence[TaskRow]]]) -> None:
        if len(batches) == 1:
            rows = batches[0][1]
        else:
            merged: dict[str, TaskRow] = {}
            for _, batch in batches:
                for row in batch:
                    merged[row.name] = row
            rows = list(merged.values())
        if self.error is None:
            try:
                self.store.record_tasks(self.run_id, rows)
            except BaseException as exc:  # noqa: BLE001 - reported by the plugin, not here
                self.error = exc
            else:
                with self.cond:
                    self.committed = batches[-1][0]
                    self.cond.notify_all()
                return
        for row in rows:
            self.unwritten[row.name] = row
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, seqs: list[int], deps: tuple[int, ...]) -> None:
        """Block until the completions of ``deps`` are committed; StateError if they never will be.

        ``seqs[d]`` is the batch of ``d``'s completion, :data:`UNREPORTED` while
        the scheduler has not seen it (a successor chained on the same worker).
        """
        with self.cond:
            while max([seqs[d] for d in deps]) > self.committed and self.error is None:
                self.cond.wait()
            if max([seqs[d] for d in deps]) > self.committed:
                err = self.error
                raise StateError(f"not started: the results it depends on could not be saved "
                                 f"({type(err).__name__}: {err})")

    def stop(self) -> None:
        """Commit what is queued and end the thread."""
        if self.is_alive():
            self.queue.put(_STOP)
            self.join()


class UnstorableResult(StateError):
    """Raised on the worker when a task's result cannot be stored; fails the task, never retried."""


def wrapper(name: str, dumps: Callable[[Any], str],
            encoded: dict[int, tuple[Any, str]], writer: Writer | None, seqs: list[int],
            deps: tuple[int, ...]) -> Callable[[Callable[[dict], Any]], Callable[[dict], Any]]:
    """The ``flowdeco_task_wrap`` decorator of a task on an in-process executor.

    On the worker: wait until the dependencies' completions are committed
    (when a writer thread commits), run the attempt, then encode its result
    so that the scheduler only stores text; an unstorable result raises
    :class:`UnstorableResult` (see :func:`unstorable_error`).
    """
    def decorate(call: Callable[[dict], Any]) -> Callable[[dict], Any]:
        def attempt(kwargs: dict) -> Any:
            if deps and writer is not None and max([seqs[d] for d in deps]) > writer.committed:
                writer.wait_for(seqs, deps)
            result = call(kwargs)
            try:
                text = dumps(result)
            except Unstorable as exc:
                raise unstorable_error(name, result, exc) from None
            encoded[id(result)] = (result, text)
            return result
        return attempt
    return decorate


def unstorable_error(name: str, value: Any, exc: Unstorable) -> UnstorableResult:
    return UnstorableResult(f"task {name!r}: result of type {type_name(type(value))} cannot be "
                            f"stored: {exc}")
