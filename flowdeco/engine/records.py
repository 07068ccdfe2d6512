"""Public per-task timing records of a run (``Run.task_records()``), for plugins like metrics."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..graph import TASK

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


class TaskRecords:
    """Per-task timing records of a run, one column per field, each built when first read.

    Index ``i`` describes ``names[i]``: the graph's vertices first, then the
    instances of mapped tasks (``scan[3]``), each with the mapped task's
    dependencies.  ``t0``/``t1``: start of the first attempt and end of the
    last on the run's monotonic clock (None: never started / not ended);
    ``worker`` that ran the last attempt; ``attempts``; ``status`` (None while
    running); ``is_task`` False for sub-flow completion points; ``mapped``
    True for a mapped task's own record (None when there are none);
    ``attempt_durations`` ``(worker, seconds)`` per attempt for records that
    ran more than one; ``start`` when the run started (monotonic) and
    ``workers`` its concurrency.  Read on the scheduler thread or after the
    run (the metrics plugin's source).
    """

    def __init__(self, run: "Run"):
        self._run = run
        self.workers = run.workers

    @property
    def start(self) -> float:
        return self._run.started

    @functools.cached_property
    def _maps(self) -> list:
        dyn = self._run._dyn
        return sorted(dyn.maps.items()) if dyn is not None and dyn.maps else []

    def _joined(self, own: list, per_instance: Any) -> list:
        """``own`` (one entry per vertex), then ``per_instance(mapstate, k)`` for every instance."""
        if not self._maps:
            return own
        out = list(own)
        for _, m in self._maps:
            out.extend(per_instance(m, k) for k in range(m.n))
        return out

    @functools.cached_property
    def t0(self) -> list:
        return self._joined(self._run._table.t0, lambda m, k: _num(m.t0[k]))

    @functools.cached_property
    def t1(self) -> list:
        return self._joined(self._run._table.t1, lambda m, k: _num(m.t1[k]))

    @functools.cached_property
    def worker(self) -> list:
        return self._joined(self._run._table.worker, lambda m, k: m.workers[k])

    @functools.cached_property
    def attempts(self) -> list:
        return self._joined(self._run._table.attempts, lambda m, k: m.attempts[k])

    @functools.cached_property
    def status(self) -> list:
        return self._joined(self._run._table.status, lambda m, k: _instance_status(m, k))

    @functools.cached_property
    def results(self) -> list:
        return self._joined(self._run.results, lambda m, k: None)

    @functools.cached_property
    def names(self) -> list[str]:
        return self._joined([v.name for v in self._run.graph.vertices],
                            lambda m, k: m.instance(k))

    @functools.cached_property
    def deps(self) -> list[tuple[int, ...]]:
        return self._joined([v.deps for v in self._run.graph.vertices],
                            lambda m, k: m.vertex.deps)

    @functools.cached_property
    def is_task(self) -> list[bool]:
        return self._joined([v.kind is TASK for v in self._run.graph.vertices],
                            lambda m, k: True)

    @functools.cached_property
    def attempt_durations(self) -> dict[int, list]:
        """``run.attempt_durations`` keyed by record index (instances after the vertices)."""
        log = self._run.attempt_durations
        if not log:
            return {}
        first: dict[int, int] = {}
        n = len(self._run.graph.vertices)
        for i, m in self._maps:
            first[i] = n
            n += m.n
        return {(key if isinstance(key, int) else first[key[0]] + key[1]): spans
                for key, spans in log.items()
                if isinstance(key, int) or key[0] in first}

    @functools.cached_property
    def mapped(self) -> list[bool] | None:
        if not self._maps:
            return None
        flags = [False] * len(self._run.graph.vertices)
        for i, _ in self._maps:
            flags[i] = True
        return self._joined(flags, lambda m, k: False)


def _num(x: float) -> float | None:
    return None if x != x else x  # NaN: not started / not ended


def _instance_status(m: Any, k: int) -> str | None:
    from .instances import INSTANCE_STATUS
    return INSTANCE_STATUS.get(m.status[k])
