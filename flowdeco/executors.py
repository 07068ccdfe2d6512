"""Where task bodies run: the core's ``thread``, ``process`` and ``sync`` executors."""

from __future__ import annotations

import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

from .manager import hookimpl


class SyncExecutor(Executor):
    """Runs each task in the calling (scheduler) thread: for debugging with breakpoints.

    The runner recognises it and calls tasks directly, without futures.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - a future carries any failure
            fut.set_exception(exc)
        return fut


def default_workers(executor: str) -> int:
    cpus = os.cpu_count() or 1
    return cpus if executor == "process" else min(32, cpus + 4)


@hookimpl(trylast=True)
def flowdeco_make_executor(config: Any, name: str, workers: int) -> Executor | None:
    if name == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowdeco-worker")
    if name == "process":
        return ProcessPoolExecutor(max_workers=workers)
    if name == "sync":
        return SyncExecutor()
    return None
