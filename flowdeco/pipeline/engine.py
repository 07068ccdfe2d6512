"""The streaming engine behind :meth:`Pipeline.run`: threads, bounded queues, a window.

One pipeline run has three kinds of threads::

    source --feeder--> q0 --stage 0 workers--> q1 --stage 1 workers--> ... qN --collector
                 ^                                                              |
                 +------------------- window: in-flight slots <-----------------+

- The *feeder* pulls items from the source lazily and numbers them.  It first
  takes slots from the **window** (at most ``window`` items may be pulled and
  not yet delivered), so with one slow item the reorder buffer cannot grow
  without bound: the feeder simply stops a window ahead of the oldest
  unfinished item.
- Each stage has ``workers`` threads reading its bounded input queue (a
  :class:`Channel`) and writing to the next one; a full queue blocks the
  writer (backpressure).  Items move in small chunks: a worker takes as many
  waiting items as it can process in about ``_BUDGET`` seconds (one at a time
  when calls are slow, so a slow item never holds back items another worker
  could take), and passes results on when the chunk is done -- or before its
  next call when the next stage is waiting for work, so a result never waits
  behind a slow call while the next stage idles.  Moving chunks instead of
  single items is what makes the engine faster than a hand-written
  ``queue.Queue`` pipeline (see ``benchmarks/pipeline.py``).
- The *collector* is the calling thread: it reads the last queue, restores
  input order (``ordered=True``) in a reorder buffer bounded by the window,
  records failed items, and gives the window its slots back.

A failed call is retried by the stage's :class:`~flowdeco.Retry` policy
*without holding a worker*: the item goes into the stage's delay heap (kept in
its input channel, under the same lock) and whichever worker of the stage is
free picks it up when its time comes.  An item that fails for good skips the
later stages and goes straight to the collector as an error.

Shutdown: the feeder closes ``q0`` when the source ends (or feeding is
stopped); the last worker of stage k to finish closes ``q(k+1)``; the
collector ends when the last queue is closed and empty.  An abort
(Ctrl-C in the calling thread, a crash) wakes every waiting thread, and every
wait also re-checks the abort flag every ``POLL`` seconds, so no thread stays
blocked forever; stage threads are daemons, so a call that never returns
cannot keep the process alive.
"""

from __future__ import annotations

import math
import threading
from itertools import count, islice
from time import perf_counter
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..errors import FlowError
from ..outcome import format_error
from ..policies.timeout import call_in_thread
from .channels import Aborted, Channel, Flags, Window
from .result import (HIST_BIAS, HIST_SIZE, ItemError, PipelineMetrics, PipelineResult,
                     StageMetrics, StageWorkerMetrics, _BASE, percentile)

#: the most items a worker (or the feeder) moves at once
MAX_CHUNK = 64
#: seconds of calls a worker takes from a shared queue at once
_BUDGET = 0.002
#: the collector reads up to this many entries at once
_SINK_CHUNK = 4096


class PipelineStopped(FlowError):
    """A pipeline run ended early: aborted, or (for a node) stopped feeding after a
    failure under ``stop_on_error`` or an interrupt."""


class Reporter(Protocol):
    """Where per-item events go (the run's audit trail for a pipeline node)."""

    def retrying(self, stage: str, index: int, attempt: int, delay: float,
                 exc: BaseException) -> None: ...

    def failed(self, stage: str, index: int, attempts: int, error: str,
               exc: BaseException) -> None: ...


class _Failed:
    """An item that failed for good, on its way to the collector."""

    __slots__ = ("error",)

    def __init__(self, error: ItemError):
        self.error = error


class _WorkerStats:
    __slots__ = ("name", "stage", "calls", "items_in", "items_out", "failed", "retries",
                 "busy", "lat_sum", "lat_n", "first", "last", "hist")

    def __init__(self, name: str, stage: int):
        self.name = name
        self.stage = stage
        self.calls = 0
        self.items_in = 0
        self.items_out = 0
        self.failed = 0
        self.retries = 0
        self.busy = 0.0
        self.lat_sum = 0.0
        self.lat_n = 0
        self.first: float | None = None
        self.last: float | None = None
        self.hist = [0] * HIST_SIZE


def _apply(pair: tuple) -> Any:
    return pair[0](pair[1])


class _TimedCall:
    """A stage function under a per-call time limit (see :func:`call_in_thread`)."""

    __slots__ = ("fn", "seconds", "label")

    def __init__(self, fn: Callable[[Any], Any], seconds: float, label: str):
        self.fn = fn
        self.seconds = seconds
        self.label = label

    def __call__(self, item: Any) -> Any:
        return call_in_thread(_apply, (self.fn, item), self.seconds, self.label)


class BatchSizeError(Exception):
    """A batch stage returned a different number of results than it received items."""


def window_size(stages: Iterable[Any], queue_size: int) -> int:
    """The in-flight bound: every queue full, every worker busy, and as much again of
    reorder slack (items finished out of order waiting for an earlier one)."""
    stages = list(stages)
    chunk = min(MAX_CHUNK, queue_size)
    total = queue_size  # the last queue
    for s in stages:
        total += max(queue_size, s.batch_size or 0)
        total += 2 * s.workers * (s.batch_size or chunk)
    return total


class Execution:
    """One run of a pipeline (see the module docstring)."""

    def __init__(self, name: str, stages: tuple, items: Iterable[Any], *, queue_size: int,
                 ordered: bool, stop_on_error: bool, reporter: Reporter | None = None,
                 should_stop: Callable[[], bool] | None = None, collect: bool = True):
        self.name = name
        self.collect = collect
        self.stages = stages
        self.iterator: Iterator[Any] = iter(items)
        self.ordered = ordered
        self.stop_on_error = stop_on_error
        self.reporter = reporter
        self.should_stop = should_stop
        self.chunk = min(MAX_CHUNK, queue_size)
        self.flags = Flags()
        self.window = Window(window_size(stages, queue_size), self.flags)
        self.channels = []
        for s in stages:
            ch = Channel(max(queue_size, s.batch_size or 0), self.flags, s.batch_size or 0,
                          self.window)
            self.channels.append(ch)
            if s.batch_size:
                self.window.batch_channels.append(ch)
        self.sink = Channel(queue_size, self.flags)
        self.channels.append(self.sink)
        self.calls = [s.fn if s.timeout is None else
                      _TimedCall(s.fn, s.timeout, f"{name}.{s.name}") for s in stages]
        self.rngs = [s.retry.rng() if s.retry is not None else None for s in stages]
        self._alive = [s.workers for s in stages]
        self._lock = threading.Lock()
        self.stats: list[_WorkerStats] = []
        self.threads: list[threading.Thread] = []
        self.outputs: list[Any] = []
        self.errors: list[ItemError] = []
        #: live counters, read by the progress display
        self.pulled = 0
        self.delivered = 0
        #: the most items pulled and not yet delivered, seen by the feeder after each pull
        self.max_in_flight = 0
        self.started = perf_counter()
        self.duration = 0.0

    # -- the run
    def run(self) -> PipelineResult:
        self.started = perf_counter()
        threads = self.threads
        threads.append(threading.Thread(target=self._feed, name=f"{self.name}/feed",
                                        daemon=True))
        for k, s in enumerate(self.stages):
            target = self._batch_worker if s.batch_size else self._item_worker
            for j in range(s.workers):
                ws = _WorkerStats(f"{self.name}/{s.name}-{j}", k)
                self.stats.append(ws)
                threads.append(threading.Thread(target=target, args=(k, ws), name=ws.name,
                                                daemon=True))
        for t in threads:
            t.start()
        try:
            self._collect()
        except BaseException:
            self.abort()
            for t in threads:
                t.join(0.5)
            if self.flags.crash is not None:
                raise RuntimeError(f"pipeline {self.name!r}: a worker crashed inside flowdeco") \
                    from self.flags.crash
            raise
        self.duration = perf_counter() - self.started
        for t in threads:
            t.join()
        if self.flags.crash is not None:
            raise RuntimeError(f"pipeline {self.name!r}: a worker crashed inside flowdeco") \
                from self.flags.crash
        if self.flags.source_error is not None:
            raise self.flags.source_error  # the source's own error, after the in-flight items drained
        self.errors.sort(key=lambda e: e.index)
        return PipelineResult(self.outputs, self.errors, self.metrics(),
                              stopped=self.flags.stop)

    def abort(self) -> None:
        """Make every thread of this run give up as soon as it can."""
        self.flags.abort = True
        self.flags.stop = True
        self.window.wake()
        for ch in self.channels:
            ch.wake()

    def stop(self) -> None:
        """Stop feeding; what is in flight still finishes."""
        self.flags.stop = True
        self.window.wake()

    # -- threads
    def _feed(self) -> None:
        flags = self.flags
        window = self.window
        put = self.channels[0].put
        it = self.iterator
        should_stop = self.should_stop
        cap = min(self.channels[0].cap, 1024)
        limit = 1
        idx = 0
        try:
            while not flags.stop:
                if should_stop is not None and should_stop():
                    flags.interrupted = True
                    flags.stop = True
                    break
                n = window.acquire(limit)
                if n == 0:
                    break
                chunk: list = []
                t0 = perf_counter()
                try:
                    chunk.extend(zip(count(idx), islice(it, n)))
                except BaseException as exc:  # noqa: BLE001 - the source's own error
                    flags.source_error = exc
                    flags.stop = True
                elapsed = perf_counter() - t0
                got = len(chunk)
                idx += got
                self.pulled = idx
                if idx - self.delivered > self.max_in_flight:
                    self.max_in_flight = idx - self.delivered
                if got < n:
                    window.release(n - got)
                if got:
                    put(chunk)
                if got < n:
                    break
                limit = cap if elapsed <= 0 else max(1, min(cap, int(_BUDGET * got / elapsed)))
        except Aborted:
            return
        except BaseException as exc:  # noqa: BLE001 - never leave the collector waiting
            self._crash(exc)
            return
        self.channels[0].close()

    def _item_worker(self, k: int, ws: _WorkerStats) -> None:
        fn = self.calls[k]
        get = self.channels[k].get
        outch = self.channels[k + 1]
        put = outch.put
        hist = ws.hist
        frexp = math.frexp
        pc = perf_counter
        cap = self.chunk
        limit = 1
        calls = items_in = items_out = 0
        busy = 0.0
        first = last = None
        try:
            while True:
                got = get(limit)
                if got is None:
                    break
                entries, attempt = got
                if attempt == 1:
                    items_in += len(entries)
                out: list = []
                append = out.append
                paused = 0.0
                t = start = pc()
                for idx, item in entries:
                    if out and outch.hungry:  # the next stage waits: hand over what is done
                        items_out += len(out)
                        put(out)
                        out = []
                        append = out.append
                        t2 = pc()          # (time spent handing over is not the next call's)
                        paused += t2 - t
                        t = t2
                    try:
                        v = fn(item)
                    except BaseException as exc:  # noqa: BLE001 - an item may raise anything
                        t2 = pc()
                        m, e = frexp(t2 - t + HIST_BIAS)
                        hist[(e << 3) + int(m * 16) + _BASE] += 1
                        t = t2
                        self._failed(k, ws, [(idx, item)], attempt, exc)
                        continue
                    t2 = pc()
                    m, e = frexp(t2 - t + HIST_BIAS)
                    hist[(e << 3) + int(m * 16) + _BASE] += 1
                    t = t2
                    append((idx, v))
                elapsed = t - start - paused
                busy += elapsed
                calls += len(entries)
                if first is None:
                    first = start
                last = t
                if out:
                    items_out += len(out)
                    put(out)
                limit = cap if elapsed <= 0 else \
                    max(1, min(cap, int(_BUDGET * len(entries) / elapsed)))
        except Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - never leave the collector waiting
            self._crash(exc)
        finally:
            ws.calls, ws.items_in, ws.items_out = calls, items_in, items_out
            ws.busy = ws.lat_sum = busy
            ws.lat_n = calls
            ws.first, ws.last = first, last
        self._worker_done(k)

    def _batch_worker(self, k: int, ws: _WorkerStats) -> None:
        fn = self.calls[k]
        size = self.stages[k].batch_size
        get = self.channels[k].get
        put = self.channels[k + 1].put
        hist = ws.hist
        frexp = math.frexp
        first = None
        try:
            while True:
                got = get(size)
                if got is None:
                    break
                entries, attempt = got
                n = len(entries)
                if attempt == 1:
                    ws.items_in += n
                t0 = perf_counter()
                try:
                    results = fn([item for _, item in entries])
                    err: BaseException | None = None
                    try:
                        m = len(results)
                    except TypeError:
                        m = -1
                    if m != n:
                        err = BatchSizeError(
                            f"stage {self.stages[k].name!r} returned "
                            f"{'a ' + type(results).__name__ if m < 0 else f'{m} results'} "
                            f"for a batch of {n} items (a batch stage returns one result "
                            "per item, in order)")
                except BaseException as exc:  # noqa: BLE001 - a batch may raise anything
                    err = exc
                t1 = perf_counter()
                d = t1 - t0
                ws.calls += 1
                ws.busy += d
                ws.lat_sum += d * n
                ws.lat_n += n
                mm, e = frexp(d + HIST_BIAS)
                hist[(e << 3) + int(mm * 16) + _BASE] += n
                if first is None:
                    first = ws.first = t0
                ws.last = t1
                if err is not None:
                    self._failed(k, ws, entries, attempt, err)
                    continue
                ws.items_out += n
                put([(entry[0], r) for entry, r in zip(entries, results)])
        except Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - never leave the collector waiting
            self._crash(exc)
        self._worker_done(k)

    def _failed(self, k: int, ws: _WorkerStats, entries: list, attempt: int,
                exc: BaseException) -> None:
        """A call failed: retry it later by the stage's policy, or record the items as failed."""
        stage = self.stages[k]
        policy = stage.retry
        reporter = self.reporter
        if policy is not None and not self.flags.abort and policy.should_retry(exc, attempt):
            delay = policy.delay_before(attempt, self.rngs[k], exc)
            ws.retries += len(entries)
            if reporter is not None:
                for idx, _ in entries:
                    reporter.retrying(stage.name, idx, attempt, delay, exc)
            self.channels[k].defer(delay, entries, attempt + 1)
            return
        ws.failed += len(entries)
        error = format_error(exc)
        if reporter is not None:
            for idx, _ in entries:
                reporter.failed(stage.name, idx, attempt, error, exc)
        self.sink.put([(idx, _Failed(ItemError.of(idx, item, stage.name, error, attempt, exc)))
                       for idx, item in entries])
        if self.stop_on_error:
            self.stop()

    def _worker_done(self, k: int) -> None:
        with self._lock:
            self._alive[k] -= 1
            last = self._alive[k] == 0
        if last and not self.flags.abort:
            self.channels[k + 1].close()

    def _crash(self, exc: BaseException) -> None:
        if self.flags.crash is None:
            self.flags.crash = exc
        self.abort()

    # -- the collector (calling thread)
    def _collect(self) -> None:
        get = self.sink.get
        release = self.window.release
        outputs = self.outputs
        append = outputs.append
        errors = self.errors
        ordered = self.ordered and self.collect
        pending: dict[int, Any] = {}
        nxt = 0
        failed_type = _Failed
        while True:
            try:
                got = get(_SINK_CHUNK)
            except Aborted:
                if self.flags.crash is not None:
                    raise RuntimeError(
                        f"pipeline {self.name!r}: a worker crashed inside flowdeco") \
                        from self.flags.crash
                raise PipelineStopped(f"pipeline {self.name!r} was aborted") from None
            if got is None:
                break
            entries = got[0]
            if ordered:
                before = nxt
                for idx, v in entries:
                    if idx != nxt:
                        pending[idx] = v    # overtook an earlier item: wait for it
                        continue
                    if type(v) is failed_type:
                        errors.append(v.error)
                    else:
                        append(v)
                    nxt += 1
                # whatever the entries unblocked (pending is bounded by the window)
                while pending:
                    v = pending.pop(nxt, pending)
                    if v is pending:
                        break
                    if type(v) is failed_type:
                        errors.append(v.error)
                    else:
                        append(v)
                    nxt += 1
                if nxt != before:
                    self.delivered += nxt - before
                    release(nxt - before)
            elif self.collect:
                for _, v in entries:
                    if type(v) is failed_type:
                        errors.append(v.error)
                    else:
                        append(v)
                self.delivered += len(entries)
                release(len(entries))
            else:  # outputs are dropped: only errors are kept, in any order
                for _, v in entries:
                    if type(v) is failed_type:
                        errors.append(v.error)
                self.delivered += len(entries)
                release(len(entries))

    # -- figures
    def metrics(self) -> PipelineMetrics:
        duration = self.duration
        stages: dict[str, StageMetrics] = {}
        workers = []
        for k, s in enumerate(self.stages):
            mine = [ws for ws in self.stats if ws.stage == k]
            hist = [0] * HIST_SIZE
            for ws in mine:
                for i, c in enumerate(ws.hist):
                    if c:
                        hist[i] += c
                workers.append(StageWorkerMetrics(ws.name, s.name, ws.calls,
                                                  ws.items_out + ws.failed, ws.busy))
            firsts = [ws.first for ws in mine if ws.first is not None]
            lasts = [ws.last for ws in mine if ws.last is not None]
            span = max(lasts) - min(firsts) if firsts and lasts else 0.0
            out = sum(ws.items_out for ws in mine)
            failed = sum(ws.failed for ws in mine)
            busy = sum(ws.busy for ws in mine)
            lat_n = sum(ws.lat_n for ws in mine)
            stages[s.name] = StageMetrics(
                name=s.name, workers=s.workers, batch_size=s.batch_size,
                items_in=sum(ws.items_in for ws in mine), items_out=out, items_failed=failed,
                retries=sum(ws.retries for ws in mine), busy=busy, span=span,
                throughput=(out + failed) / span if span > 0 else 0.0,
                latency_mean=sum(ws.lat_sum for ws in mine) / lat_n if lat_n else None,
                latency_p95=percentile(hist, 0.95),
                queue_hwm=self.channels[k].hwm,
                utilisation=busy / (s.workers * duration) if duration > 0 else 0.0)
        n_out = self.delivered - len(self.errors)
        return PipelineMetrics(
            name=self.name, items=self.pulled, outputs=n_out, failed=len(self.errors),
            duration=duration, throughput=n_out / duration if duration > 0 else 0.0,
            max_in_flight=self.max_in_flight, window=self.window.size, stages=stages,
            workers=tuple(workers))
