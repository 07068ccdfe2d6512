"""Resuming a saved run: which run, what it lost, and which stored results come back.

The half of :class:`~.plugin.StatePlugin` that reads: ``--resume`` checks
(configure and collection), the restore plan of a resumed run, the
input-hash cache it answers from, and the :class:`Restorer` that hands
stored results to the scheduler.  Recording (rows, the writer, durability)
stays in :mod:`.plugin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ...errors import StateError, UsageError, shorten
from ...graph import SUBFLOW, TASK, Graph
from ...manager import hookimpl
from ...outcome import Restored
from ..audit import audit_path, read_events
from .cache import Cache
from .fingerprint import why_changed
from .results import INSTANCES, UNSAVED, ResultFileError
from .store import TaskRecord

if TYPE_CHECKING:  # pragma: no cover
    from ...engine.scheduler import Run
    from ...graph import Vertex

#: tasks named in one warning (``count`` gives the total)
_MAX_NAMES = 50


class _Restorer:
    """Supplies stored results (registered only on resume or when some task has ``cache=``).

    ``restore``: whole tasks by vertex index; ``instances``: single instances
    of mapped tasks (``scan[3]``) whose task did not complete as a whole;
    then the input-hash ``cache`` for tasks with ``cache=``.
    """

    def __init__(self, restore: dict[int, Restored], instances: dict[str, Restored],
                 cache: Cache | None):
        self.restore = restore
        self.instances = instances
        self.cache = cache

    @hookimpl
    def flowdeco_task_restore(self, run: Run, task: Vertex, name: str) -> Restored | None:
        if name == task.name:
            hit = self.restore.pop(task.index, None)
        else:
            hit = self.instances.pop(name, None)
        if hit is None and self.cache is not None and task.kind is TASK \
                and task.spec.cache is not None:
            hit = self.cache.lookup(run, task, name)
        return hit


class Resuming:
    """Resume checks and the restore plan; mixed into :class:`~.plugin.StatePlugin`
    (which owns the attributes used here: ``store``, ``stored``, ``rerun``...)."""

    def _hint(self) -> str:
        return f"list saved runs with: python -m flowdeco runs --state-dir {self.state_dir}"

    def check_exists(self, run_id: str) -> None:
        if not self.store.open(create=False) or self.store.load_run(run_id) is None:
            raise self._unknown(run_id)

    def _unknown(self, run_id: str) -> StateError:
        trail = audit_path(self.state_dir, run_id)
        if trail.is_file():
            # the audit trail is written after the run's record is committed: the store lost it
            return StateError(
                f"run {run_id!r} has an audit trail ({trail}) but no record in "
                f"{self.store.location}: the store lost it (a truncated or damaged "
                f"state.db-wal?) and it cannot be resumed; start a new run")
        return StateError(f"unknown run id {run_id!r}: no such run in {self.state_dir}; "
                          + self._hint())

    def _prepare_resume(self, graph: Graph) -> None:
        store = self.store
        rid = self.resume
        if rid == "last":
            if not store.open(create=False):
                raise StateError(f"no saved run of flow {graph.name!r} in {self.state_dir} to "
                                 "resume (there is no state database yet)")
            latest = store.list_runs(flow=graph.name, limit=1)
            if not latest:
                raise StateError(f"no saved run of flow {graph.name!r} in {self.state_dir} to "
                                 "resume; " + self._hint())
            rid = latest[0].run.run_id
            given = self.config.getoption("run_id")
            if given is not None and given != rid:
                raise UsageError(f"--run-id {shorten(given)} and --resume last ({rid!r}) disagree: "
                                 "a resumed run keeps its id (leave out --run-id)")
        assert rid is not None
        store.open(create=False)
        record = store.load_run(rid)
        if record is None:
            raise self._unknown(rid)
        if record.flow != graph.name:
            raise StateError(f"run {rid!r} is a run of flow {record.flow!r}, not of "
                             f"{graph.name!r}: resume it with the flow it ran, or start a new run")
        for expr, match in self.rerun:
            if not any(match(name) for name in graph.by_name):
                raise UsageError(f"--rerun {expr!r} matches no task of flow {graph.name!r}")
        if self.lock is None:
            self.lock = store.lock_run(rid)
        self.stored = store.load_tasks(rid)
        self._clean_orphans(rid, self.stored)
        self.lost = self._lost_by_store(rid, graph, self.stored)
        self.resume_id = rid
        self.config.option.run_id = rid

    def _clean_orphans(self, rid: str, stored: dict[str, TaskRecord]) -> None:
        """Result files a crash left without their row (written, never committed)."""
        results = self._result_store()
        referenced = set()
        for rec in stored.values():
            ref = results.ref(rec.result)
            if ref is not None:
                referenced.add(ref.path)
        results.files.clean_orphans(rid, referenced)

    def _lost_by_store(self, rid: str, graph: Graph, stored: dict[str, TaskRecord]
                       ) -> list[str]:
        """Tasks the audit trail shows as succeeded whose completion the store lacks.

        ``task_succeeded`` reaches the trail only after its completion is
        committed, so such a task was lost by the store (a -wal truncated or
        garbled, a backup restored): it runs again.  A success counts unless a
        later attempt of the same task started (a --rerun in a later session).
        """
        trail = audit_path(self.state_dir, rid)
        if not trail.is_file():
            return []
        last: dict[str, bool] = {}
        try:
            for event in read_events(trail, ("task_succeeded", "task_started")):
                name = event["event"]
                if name == "task_succeeded":
                    if event.get("durable", True) is not False:
                        last[event.get("task")] = True  # type: ignore[index]
                elif name == "task_started":
                    last[event.get("task")] = False  # type: ignore[index]
        except OSError:
            return []  # (unreadable: nothing to compare with)
        by_name = graph.by_name
        lost = []
        for name, succeeded in last.items():
            if not succeeded or not isinstance(name, str):
                continue
            rec = stored.get(name)
            if rec is not None and rec.completed:
                continue
            if name in by_name or _instance_base(name) in by_name:
                lost.append(name)
        return lost

    def _make_cache(self, run: Any) -> Cache | None:
        vertices = run.graph.vertices
        for expr, match in self.refresh:
            if not any(match(v.name) for v in vertices):
                raise UsageError(f"--refresh {expr!r} matches no task of flow {run.graph.name!r}")
        if not any(v.kind is TASK and v.spec.cache is not None for v in vertices):
            return None
        # --rerun asks for tasks and their downstream to run again: not from the cache either
        rerun = {v.name for v in vertices if any(m(v.name) for _, m in self.rerun)}
        if rerun:
            graph = run.graph
            rerun = {vertices[i].name for i in graph.descendants(
                graph.by_name[n] for n in rerun)} | rerun
        if self.no_cache:
            refresh: Callable[[str], bool] | None = lambda name: True  # noqa: E731
        elif self.refresh or rerun:
            matchers = [m for _, m in self.refresh]
            refresh = lambda name: name in rerun or any(m(name) for m in matchers)  # noqa: E731
        else:
            refresh = None
        return Cache(self.store, self.codec, self._fingerprint, refresh, self.results,
                     self.digests)

    def _plan_restore(self, run: Any) -> tuple[dict[int, Restored], dict[str, Restored]]:
        """Decide what a resumed run restores (see the module docstring of the package).

        A task is restored when its record is completed, its fingerprint is
        unchanged, ``--rerun`` does not match it and everything it depends on
        is restored too.  A mapped task that did not complete as a whole gets
        its completed instances restored one by one under the same conditions.
        """
        graph = run.graph
        vertices = graph.vertices
        stored = self.stored or {}
        instances_of: dict[str, list[TaskRecord]] = {}
        for name, rec in stored.items():
            base = _instance_base(name)
            if base is not None and rec.completed:
                instances_of.setdefault(base, []).append(rec)
        ok = [False] * len(vertices)
        restore: dict[int, Restored] = {}
        instances: dict[str, Restored] = {}
        changed: list[tuple[str, str]] = []
        requested = 0
        for i in graph.order:
            v = vertices[i]
            upstream_ok = all(ok[d] for d in v.deps)
            if v.kind is SUBFLOW:
                ok[i] = upstream_ok
                continue
            rec = stored.get(v.name)
            parts = instances_of.get(v.name, ())
            if rec is None and not parts:
                continue
            if any(match(v.name) for _, match in self.rerun):
                requested += rec is not None and rec.completed
                continue
            now = self._fingerprint(i)
            before = rec.fingerprint if rec is not None and rec.fingerprint else \
                (parts[0].fingerprint if parts else None)
            why = why_changed(before, now) if before else "no fingerprint"
            if why is not None:
                if rec is not None and rec.completed:
                    changed.append((v.name, why))
                continue
            if not upstream_ok:
                continue
            if rec is not None and rec.completed and rec.result != INSTANCES:
                if rec.result == UNSAVED:
                    ok[i] = True  # store=False: it runs again; what it fed stays restorable
                elif self._intact(run, rec):
                    found = self._load(run, rec)
                    if found is not None:
                        restore[i] = found
                        ok[i] = True
                continue
            for part in parts:
                if part.fingerprint == now and part.result != UNSAVED and self._intact(run, part):
                    found = self._load(run, part)
                    if found is not None:
                        instances[part.name] = found
        if self.lost:
            names = self.lost
            run.emit("state_warning", level="warning",
                     reason=f"the audit trail shows these tasks succeeded but "
                            f"{self.store.location} lacks their results (its -wal was "
                            f"truncated or damaged?)",
                     tasks=names[:_MAX_NAMES], count=len(names),
                     action="running them again")
        for name, why in changed:
            run.emit("task_changed", task=name, reason=why, level="warning",
                     action="re-running it and everything downstream")
        tasks = sum(1 for v in vertices if v.kind is TASK)
        fields: dict[str, Any] = {"restored": len(restore), "to_run": tasks - len(restore),
                                  "changed": len(changed), "rerun_requested": requested}
        if instances:
            fields["restored_instances"] = len(instances)
        run.emit("run_resumed", level="info", **fields)
        return restore, instances

    def _intact(self, run: Any, rec: TaskRecord) -> bool:
        """A stored result whose bytes changed since written is not restored (a warning)."""
        if getattr(rec, "intact", True):
            return True
        run.emit("state_warning", task=rec.name, level="warning",
                 error=f"run {self.resume_id!r}, task {rec.name!r}: the stored result does not "
                       f"match its checksum (changed in {self.store.location} since it was "
                       "written); running the task again")
        return False

    def _load(self, run: Any, rec: TaskRecord) -> Restored | None:
        """The stored result of ``rec``; None (with a warning: it runs again) when its file
        is missing, truncated, changed or cannot be loaded."""
        if rec.result is None:
            raise StateError(f"{self.store.location}: run {self.resume_id!r}, task "
                             f"{rec.name!r}: completed without a stored result; re-run it "
                             f"with --rerun {_base_name(rec.name)!r}")
        results = self._result_store()
        try:
            value = results.decode(rec.result)
        except ResultFileError as exc:
            run.emit("state_warning", task=rec.name, level="warning",
                     error=f"run {self.resume_id!r}, task {rec.name!r}: {exc}; running the task "
                           "again")
            return None
        except StateError as exc:
            raise StateError(f"run {self.resume_id!r}, task {rec.name!r}: {exc}; re-run it "
                             f"with --rerun {_base_name(rec.name)!r}") from None
        ref = results.ref(rec.result)
        if ref is not None:
            self.digests[rec.name] = ref.sha256
        return Restored(value, attempts=rec.attempts)


def _instance_base(name: str) -> str | None:
    """``"scan"`` for a mapped instance name ``"scan[3]"``, else None."""
    if not name.endswith("]"):
        return None
    base, sep, index = name[:-1].rpartition("[")
    return base if sep and base and index.isdigit() else None


def _base_name(name: str) -> str:
    return _instance_base(name) or name
