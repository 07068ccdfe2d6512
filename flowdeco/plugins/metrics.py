"""Metrics: per-task, per-worker, per-pipeline-stage and per-run figures (contract §4).

``result.metrics`` is a :class:`RunMetrics`:

- ``tasks[name]``: :class:`TaskMetrics` -- ``queued`` (when its dependencies
  were done), ``started``, ``finished`` (all in seconds since the run
  started), ``duration``, ``attempts``, ``worker``, ``status``; ``wait`` is
  started - queued.  Instances of mapped tasks (``scan[3]``) are listed
  after the tasks; a mapped task's own entry spans its instances, and
  busy and total task time count the instances' work instead.
- ``workers``: one :class:`WorkerMetrics` per worker that ran a task --
  ``worker``, ``tasks_processed``, ``busy`` (seconds), ``utilisation`` (busy /
  makespan).
- ``makespan`` (first start to last finish), ``total_task_time`` (sum of
  task durations), ``parallel_efficiency`` (total task time / (makespan x
  workers)), ``critical_path`` (task names, upstream first) and
  ``critical_path_time``.
- ``pipelines[node name]``: the :class:`~flowdeco.pipeline.PipelineMetrics`
  of each pipeline node (items in/out/failed, throughput, mean and p95
  latency and queue high-water mark per stage).

**Cost.** Nothing per task: no report hook.  At run start the plugin puts a
lazy :class:`RunMetrics` on ``run.metrics`` (the runner hands it to the
``RunResult``); every figure is computed from the run's own per-task arrays
the first time it is read, so a run whose metrics nobody reads pays only for
creating that object.  The CLI prints a compact table after each run (``-q``
hides it); ``--metrics-json PATH`` writes everything as JSON.

**Definitions.** A task's ``duration`` is its outcome's (first attempt's
start to last attempt's end, so waits between retries count); its ``busy``
is its work: the sum of its attempts' durations, never the waits between
them (retry back-off, interval periods).  ``total_task_time`` sums the tasks'
busy time; a worker's ``busy`` sums the durations of the attempts that ran on
it, and as a worker runs one attempt at a time within the makespan its
``utilisation`` (busy / makespan) is at most 100%.  The
critical path is found backwards: start at the task that finished last, go
to the dependency that finished last (the one it waited for), and so on -- the
chain of tasks that bounded the makespan in this run.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import attrs
import cattrs

from ..manager import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Parser
    from ..engine.scheduler import Run
    from ..outcome import RunResult

NAME = "metrics"


@attrs.frozen
class TaskMetrics:
    """One task's figures; times are seconds since the run started (None if it never ran)."""

    name: str
    status: str | None
    queued: float | None
    started: float | None
    finished: float | None
    duration: float
    attempts: int
    worker: str | None
    #: seconds of work: the sum of its attempts' durations (never waits between them)
    busy: float = attrs.field(default=0.0, eq=False)

    @property
    def wait(self) -> float | None:
        """Seconds between becoming ready and starting (waiting for a worker, a delay, ...)."""
        if self.queued is None or self.started is None:
            return None
        return max(self.started - self.queued, 0.0)


@attrs.frozen
class WorkerMetrics:
    """One worker: ``tasks_processed``, ``busy`` seconds, ``utilisation`` = busy / makespan."""

    worker: str
    tasks_processed: int
    busy: float
    utilisation: float


@attrs.frozen
class Arrays:
    """Per-task records metrics are computed from (a run's, or synthetic ones in tests).

    Index ``i`` describes task ``names[i]``: ``deps[i]`` the indices it
    waited for, ``t0``/``t1`` start and end on the run's monotonic clock
    (None if it never ran), ``worker``, ``attempts``, ``status``;
    ``is_task[i]`` is False for sub-flow completion points; ``start`` is when
    the run started and ``workers`` its concurrency.
    """

    names: Sequence[str]
    deps: Sequence[Sequence[int]]
    t0: Sequence[float | None]
    t1: Sequence[float | None]
    worker: Sequence[str | None]
    attempts: Sequence[int]
    status: Sequence[str | None]
    start: float
    workers: int
    is_task: Sequence[bool] | None = None
    results: Sequence[Any] | None = None
    #: True for a mapped task's own record when its instances follow as records of
    #: their own: its span is not a task's work (busy time, total task time)
    mapped: Sequence[bool] | None = None
    #: for records that ran more than one attempt: ``(worker, seconds)`` of each attempt
    #: (the others ran one attempt, from ``t0`` to ``t1``)
    attempt_durations: Mapping[int, Sequence[tuple[str | None, float]]] | None = None


class _Tasks(Mapping[str, TaskMetrics]):
    """``RunMetrics.tasks``: built per task when read."""

    def __init__(self, metrics: "RunMetrics"):
        self._m = metrics
        self._index = {n: i for i, n in enumerate(metrics._a.names)}

    def __getitem__(self, name: str) -> TaskMetrics:
        return self._m._task(self._index[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"<{len(self)} task metrics>"


@attrs.frozen
class RunMetrics:
    """``RunResult.metrics``: computed from the run's records the first time a figure is read."""

    _a: Any = attrs.field(alias="arrays", repr=False)

    @classmethod
    def of_run(cls, run: "Run") -> "RunMetrics":
        return cls(run.task_records())

    @classmethod
    def from_arrays(cls, **fields: Any) -> "RunMetrics":
        """Metrics of synthetic records (see :class:`Arrays` for the fields)."""
        return cls(Arrays(**fields))

    def __repr__(self) -> str:
        return (f"RunMetrics(makespan={self.makespan:.6f}, tasks={len(self.tasks)}, "
                f"workers={len(self.workers)}, parallel_efficiency="
                f"{self.parallel_efficiency:.3f})")

    # -- helpers
    def _ran(self) -> Iterator[int]:
        """Records of work done: tasks and instances that ran (not sub-flow points,
        not a mapped task's own span, which its instances' records cover)."""
        a = self._a
        is_task = a.is_task
        mapped = getattr(a, "mapped", None)
        t0, t1 = a.t0, a.t1
        for i in range(len(t0)):
            if t0[i] is not None and t1[i] is not None and (is_task is None or is_task[i]) \
                    and (mapped is None or not mapped[i]):
                yield i

    @functools.cached_property
    def _attempts(self) -> Mapping[int, Sequence[tuple[str | None, float]]]:
        return getattr(self._a, "attempt_durations", None) or {}

    def _spans(self, i: int) -> Iterator[tuple[str | None, float]]:
        """``(worker, seconds)`` of each attempt of record ``i`` (which ran)."""
        spans = self._attempts.get(i)
        if spans is None:
            a = self._a
            yield a.worker[i], a.t1[i] - a.t0[i]
        else:
            yield from spans

    def _busy(self, i: int) -> float:
        a = self._a
        if a.t0[i] is None or a.t1[i] is None:
            return 0.0
        return sum(d for _, d in self._spans(i))

    def _task(self, i: int) -> TaskMetrics:
        a = self._a
        start = a.start
        t0, t1 = a.t0[i], a.t1[i]
        queued = None
        if a.status[i] is not None and t0 is not None:
            ends = [e for d in a.deps[i] if (e := a.t1[d]) is not None]
            queued = (max(ends) if ends else start) - start
        return TaskMetrics(
            name=a.names[i], status=a.status[i], queued=queued,
            started=None if t0 is None else t0 - start,
            finished=None if t1 is None else t1 - start,
            duration=0.0 if t0 is None or t1 is None else t1 - t0,
            attempts=a.attempts[i], worker=a.worker[i], busy=self._busy(i))

    # -- per task
    @functools.cached_property
    def tasks(self) -> Mapping[str, TaskMetrics]:
        """:class:`TaskMetrics` by task name (qualified), in declaration order."""
        return _Tasks(self)

    # -- per run
    @functools.cached_property
    def makespan(self) -> float:
        """Seconds from the run's start to the last task's end."""
        ends = [e for e in self._a.t1 if e is not None]
        return max(max(ends) - self._a.start, 0.0) if ends else 0.0

    @functools.cached_property
    def total_task_time(self) -> float:
        """Seconds of work: the sum of every attempt's duration (waits between
        attempts -- retry back-off, interval periods -- are not work)."""
        return sum(self._busy(i) for i in self._ran())

    @property
    def workers_configured(self) -> int:
        """The run's concurrency (``workers``)."""
        return self._a.workers

    @functools.cached_property
    def parallel_efficiency(self) -> float:
        """total task time / (makespan x workers): 1.0 when every worker was busy throughout."""
        span = self.makespan * max(self._a.workers, 1)
        return self.total_task_time / span if span > 0 else 0.0

    @functools.cached_property
    def workers(self) -> list[WorkerMetrics]:
        """One entry per worker that ran an attempt, by worker name.

        ``busy`` sums the durations of the attempts that ran on the worker; a
        worker runs one attempt at a time, within the makespan, so
        ``utilisation`` (busy / makespan) is at most 1.  ``tasks_processed``
        counts the tasks whose last attempt ran there.
        """
        a = self._a
        busy: dict[str, float] = {}
        count: dict[str, int] = {}
        for i in self._ran():
            for w, d in self._spans(i):
                if w is not None:
                    busy[w] = busy.get(w, 0.0) + d
            w = a.worker[i]
            if w is not None:
                count[w] = count.get(w, 0) + 1
        span = self.makespan
        # (min: sums of differences of clock readings may exceed their span by a rounding)
        return [WorkerMetrics(w, count.get(w, 0), busy[w],
                              min(busy[w] / span, 1.0) if span > 0 else 0.0)
                for w in sorted(busy)]

    @functools.cached_property
    def _critical(self) -> tuple[list[str], float]:
        a = self._a
        t0, t1 = a.t0, a.t1
        ended = [i for i in range(len(t1)) if t1[i] is not None]
        if not ended:
            return [], 0.0
        cur = max(ended, key=lambda i: (t1[i], -i))
        chain = [cur]
        while True:
            deps = [d for d in a.deps[cur] if t1[d] is not None]
            if not deps:
                break
            cur = max(deps, key=lambda d: (t1[d], -d))
            chain.append(cur)
        chain.reverse()
        keep = [i for i in chain if a.is_task is None or a.is_task[i]]
        total = sum(t1[i] - t0[i] for i in keep if t0[i] is not None)
        return [a.names[i] for i in keep], total

    @property
    def critical_path(self) -> list[str]:
        """The chain of tasks that bounded the makespan, upstream first."""
        return self._critical[0]

    @property
    def critical_path_time(self) -> float:
        """The sum of the durations of the critical path's tasks, in seconds."""
        return self._critical[1]

    # -- pipelines
    @functools.cached_property
    def pipelines(self) -> dict[str, Any]:
        """:class:`~flowdeco.pipeline.PipelineMetrics` by pipeline node name."""
        from ..pipeline import PipelineResult

        a = self._a
        results = a.results or ()
        return {a.names[i]: r.metrics for i, r in enumerate(results)
                if isinstance(r, PipelineResult)}

    # -- export
    def to_dict(self, tasks: bool = True) -> dict[str, Any]:
        """Everything as plain data (what ``--metrics-json`` writes)."""
        c = _converter()
        out: dict[str, Any] = {
            "makespan": self.makespan, "total_task_time": self.total_task_time,
            "workers_configured": self.workers_configured,
            "parallel_efficiency": self.parallel_efficiency,
            "critical_path": self.critical_path, "critical_path_time": self.critical_path_time,
            "workers": c.unstructure(self.workers),
            "pipelines": {n: c.unstructure(m) for n, m in self.pipelines.items()},
        }
        if tasks:
            out["tasks"] = {n: c.unstructure(m) for n, m in self.tasks.items()}
        return out


@functools.lru_cache(maxsize=1)
def _converter() -> cattrs.Converter:
    return cattrs.Converter()


# --------------------------------------------------------------------------- the table


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f}µs"
    if x < 1.0:
        return f"{x * 1e3:.1f}ms"
    return f"{x:.2f}s"


def _path(names: list[str], most: int = 6) -> str:
    if len(names) <= most:
        return " -> ".join(names)
    return " -> ".join(names[:3] + ["..."] + names[-2:]) + f" ({len(names)} tasks)"


def format_table(m: RunMetrics, max_workers: int = 8) -> str:
    """The compact table the CLI prints after a run."""
    lines = [f"{'-' * 30} metrics {'-' * 30}",
             f"makespan {_secs(m.makespan)}, task time {_secs(m.total_task_time)} on "
             f"{m.workers_configured} worker{'s' if m.workers_configured != 1 else ''} "
             f"(parallel efficiency {m.parallel_efficiency:.0%})"]
    if m.critical_path:
        lines.append(f"critical path {_secs(m.critical_path_time)}: {_path(m.critical_path)}")
    workers = m.workers
    if workers:
        shown = sorted(workers, key=lambda w: -w.busy)[:max_workers]
        width = max(len("worker"), *(len(w.worker) for w in shown))
        lines.append(f"  {'worker':<{width}}  {'tasks':>6}  {'busy':>8}  {'util':>5}")
        for w in sorted(shown, key=lambda w: w.worker):
            lines.append(f"  {w.worker:<{width}}  {w.tasks_processed:>6}  {_secs(w.busy):>8}  "
                         f"{w.utilisation:>5.0%}")
        if len(workers) > len(shown):
            lines.append(f"  ... and {len(workers) - len(shown)} more workers")
    for node, p in m.pipelines.items():
        lines.append(f"pipeline {node}: {p.items:,} items, {p.outputs:,} out, {p.failed:,} failed "
                     f"in {_secs(p.duration)} ({p.throughput:,.0f} items/s), "
                     f"max in flight {p.max_in_flight:,}/{p.window:,}")
        width = max(len("stage"), *(len(s) for s in p.stages))
        lines.append(f"  {'stage':<{width}}  {'workers':>7}  {'in':>9}  {'out':>9}  "
                     f"{'failed':>7}  {'items/s':>9}  {'mean':>8}  {'p95':>8}  {'queue':>6}")
        for s in p.stages.values():
            lines.append(f"  {s.name:<{width}}  {s.workers:>7}  {s.items_in:>9,}  "
                         f"{s.items_out:>9,}  {s.items_failed:>7,}  {s.throughput:>9,.0f}  "
                         f"{_secs(s.latency_mean):>8}  {_secs(s.latency_p95):>8}  "
                         f"{s.queue_hwm:>6,}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_addoption(parser: "Parser") -> None:
    parser.addoption("--metrics-json", dest="metrics_json", default=None, metavar="PATH",
                     group="state and output",
                     help="write the run's metrics (tasks, workers, pipelines) as JSON to PATH")


@hookimpl
def flowdeco_run_start(run: "Run") -> None:
    run.metrics = RunMetrics.of_run(run)


@hookimpl
def flowdeco_run_finish(run: "Run", result: "RunResult") -> None:
    metrics = result.metrics
    if not isinstance(metrics, RunMetrics):
        return
    cfg = run.config
    path = cfg.getoption("metrics_json", None)
    if path:
        data = {"run_id": result.run_id, "flow": result.flow, "status": result.status,
                **metrics.to_dict()}
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=repr)
        os.replace(tmp, path)
    if cfg.from_cli and not (cfg.getoption("quiet", 0) or 0):
        print(format_table(metrics), file=sys.stdout, flush=True)
