"""Read-only mappings the engine hands out: ``RunResult.outcomes`` and ``ctx.upstream``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..outcome import SUCCEEDED, TaskOutcome

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


class Outcomes(Mapping[str, TaskOutcome]):
    """``RunResult.outcomes``: task name -> :class:`TaskOutcome`, built on first access.

    The run keeps compact per-task arrays on its hot path; outcome objects are
    made only for the tasks someone looks at.  The instances of a mapped task
    (``scan_file[3]``) are listed right after it.
    """

    def __init__(self, index: Mapping[str, int], build: Callable[[int], TaskOutcome],
                 dynamic: Any = None):
        self._index = index          # the graph's name -> index map, shared
        self._build = build
        self._dyn = dynamic          # a .dynamic.DynamicFlows with mapped tasks, or None

    def __getitem__(self, name: str) -> TaskOutcome:
        i = self._index.get(name)
        if i is not None:
            return self._build(i)
        out = self._dyn.instance_outcome(name) if self._dyn is not None else None
        if out is None:
            raise KeyError(name)
        return out

    def __iter__(self):
        if self._dyn is None:
            return iter(self._index)
        return self._names()

    def _names(self):
        names = self._dyn.instance_names
        for name, i in self._index.items():
            yield name
            yield from names(i)

    def __len__(self) -> int:
        return len(self._index) + (self._dyn.instance_count() if self._dyn is not None else 0)

    def __repr__(self) -> str:
        return repr(dict(self))


class Upstream(Mapping[str, TaskOutcome]):
    """``ctx.upstream``: outcomes of a task's dependencies, built when read.

    A task a thread worker chained right after its one dependency may read
    this before the scheduler has recorded that dependency's completion;
    ``early`` (``(index, result, attempt, t0, t1, worker)``) covers that case.
    Only dependencies that have ended are listed (a ``one_*`` or ``always``
    task may start before the others end).
    """

    def __init__(self, run: "Run", deps: tuple[int, ...], early: tuple | None = None):
        self._run = run
        self._deps = {run.graph.vertices[d].name: d for d in deps}
        self._early = early

    def __getitem__(self, name: str) -> TaskOutcome:
        d = self._deps[name]
        run = self._run
        early = self._early
        if early is not None and early[0] == d and run._table.status[d] is None:
            _, result, attempt, t0, t1, worker = early
            off = run._offset
            return TaskOutcome(SUCCEEDED, result, None, attempt, t0 + off, t1 + off, t1 - t0,
                               worker=worker)
        return run.outcome_at(d)

    def __iter__(self):
        # a task started before all its dependencies ended (one_* and always trigger
        # rules) sees the ones that have ended so far
        status = self._run._table.status
        early = self._early
        return (name for name, d in self._deps.items()
                if status[d] is not None or (early is not None and early[0] == d))

    def __len__(self) -> int:
        return sum(1 for _ in self)

