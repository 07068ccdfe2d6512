"""The ``thread`` executor: a thread pool that can give up on a thread (attempt deadlines).

A Python thread cannot be killed.  When an attempt overruns its time limit
(``@task(timeout=...)``), the scheduler fails the attempt and goes on; the
code keeps running on its thread until it returns by itself.  The stdlib
``ThreadPoolExecutor`` cannot live with that: its threads are joined at
interpreter exit and by ``shutdown(wait=True)``, so one task sleeping for an
hour keeps the process alive for an hour, and the stuck thread still counts
against ``max_workers``.

:class:`ThreadPool` is a ``ThreadPoolExecutor`` (for ``isinstance`` checks)
with its own small implementation: daemon threads, started on demand up to
``max_workers`` and then reused; :meth:`ThreadPool.give_up` takes a thread
out of the pool -- it no longer counts against ``max_workers``, is not
joined by ``shutdown``, and ends quietly when its call returns -- so the run
keeps its full concurrency and the process exits when the run is over.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from typing import Any, Callable

__all__ = ["ThreadPool"]


class ThreadPool(ThreadPoolExecutor):
    """A pool of daemon threads with :meth:`give_up` (see the module docstring)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "flowdeco-worker"):
        # deliberately not ThreadPoolExecutor.__init__: no stdlib threads or queues
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix
        self._jobs: SimpleQueue = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        #: threads waiting for a job, less the jobs queued for them
        self._idle = 0
        #: jobs queued that no thread is reserved for (all busy): the next thread to
        #: finish takes one instead of counting itself idle
        self._backlog = 0
        self._named = 0
        self._given_up: set[threading.Thread] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max_workers:
                self._spawn()
            else:
                self._backlog += 1
        return future

    def _spawn(self) -> None:
        """Start a thread (lock held)."""
        t = threading.Thread(target=self._serve, name=f"{self._thread_name_prefix}_{self._named}",
                             daemon=True)
        self._named += 1
        self._threads.add(t)
        t.start()

    def _serve(self) -> None:
        me = threading.current_thread()
        get = self._jobs.get
        lock = self._lock
        while True:
            job = get()
            if job is None:  # shutdown
                return
            future, fn, args, kwargs = job
            job = None
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            future = fn = args = kwargs = result = None  # type: ignore[assignment]
            with lock:
                if me in self._given_up:
                    self._given_up.discard(me)
                    return  # replaced while it ran: not part of the pool any more
                if self._backlog:
                    self._backlog -= 1  # a job waits: this thread takes it, it is not idle
                else:
                    self._idle += 1

    def give_up(self, thread: threading.Thread) -> None:
        """Take ``thread`` (busy with a call nobody waits for any more) out of the pool.

        A new thread is started at once when jobs are waiting, so the pool
        keeps ``max_workers`` threads serving.
        """
        with self._lock:
            if thread not in self._threads:
                return
            self._threads.discard(thread)
            self._given_up.add(thread)
            if not self._shutdown and self._backlog and len(self._threads) < self._max_workers:
                self._backlog -= 1
                self._spawn()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except Exception:  # noqa: BLE001 - queue.Empty
                        break
                    if job is not None:
                        job[0].cancel()
            threads = list(self._threads)
            for _ in threads:
                self._jobs.put(None)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()

    def __repr__(self) -> str:
        return (f"<ThreadPool {self._thread_name_prefix!r} max_workers={self._max_workers} "
                f"threads={len(self._threads)}>")
