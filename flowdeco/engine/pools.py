"""Pools: at most N tasks with a tag running at once (``--limit TAG=N``, ``run(limits=)``).

Like Airflow pools and Prefect tag limits.  A limit caps the *attempts*
running at the same time across the whole run -- plain tasks, pipeline nodes,
and each instance of a mapped task -- of every task carrying the tag (a task
with several limited tags needs a free slot in each).

How (a readiness gate, on the scheduler thread only): a capped task whose
dependencies are done enters the ready heap only with its slots reserved;
without room it is *parked* here -- it holds no worker, and workers never see
it.  A slot is given back when an attempt of its task ends (success, failure,
retry wait, timeout); the best parked task (by priority) whose pools all have
room then moves to the ready heap.  A mapped task's instances take their slot
as they start (``DynamicFlows.dispatch`` parks the whole mapped task when its
pool is full).  Thread workers do not chain into a capped successor, nor a
capped mapped task's next instance, so every capped start goes through here.

The gate exists only when a limit is below the run's worker count for a tag
some task carries (otherwise it could never bind): a run without limits pays
nothing (``Run.pools`` is None and no hot path looks at it).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ..errors import UsageError
from ..graph import TASK

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run


def parse_limits(value: Any) -> dict[str, int]:
    """``--limit`` values (``["db=2", ...]``), a mapping ``{"db": 2}``, or None, as
    ``{tag: N}`` with N an int >= 1; anything else is a :class:`UsageError`."""
    if not value:
        return {}
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        pairs = value.items()
    elif isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, str):
                tag, sep, n = item.partition("=")
                if not sep:
                    raise UsageError(f"--limit {item!r}: expected TAG=N (at most N tasks "
                                     "tagged TAG run at once)")
                out.append((tag.strip(), n.strip()))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out.append((item[0], item[1]))
            else:
                raise UsageError(f"limits: expected TAG=N or (tag, n), got {item!r}")
        pairs = out
    else:
        raise UsageError(f"limits must be a mapping {{tag: n}}, got {type(value).__name__}")
    limits: dict[str, int] = {}
    for tag, n in pairs:
        if not isinstance(tag, str) or not tag:
            raise UsageError(f"limits: a tag must be a non-empty string, got {tag!r}")
        if isinstance(n, str):
            try:
                n = int(n)
            except ValueError:
                raise UsageError(f"--limit {tag}={n}: N must be a whole number >= 1") from None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"limits: {tag!r} must be a whole number >= 1, got {n!r} "
                             "(a pool of 0 would never run its tasks)")
        limits[tag] = n   # a later value for a tag wins (command line after the file)
    return limits


def make_pools(run: "Run") -> "Pools | None":
    """The run's gate, or None when no limit can bind (see the module docstring)."""
    if not run.limits:
        return None
    warn_unknown_tags(run)
    if run.sync:
        return None
    binding = {t: n for t, n in run.limits.items() if n < run.workers}
    if not binding:
        return None
    capped: list[tuple[str, ...] | None] = []
    any_capped = False
    for v in run.graph.vertices:
        tags = tuple(sorted(t for t in v.tags if t in binding)) if v.kind is TASK else ()
        capped.append(tags or None)
        any_capped = any_capped or bool(tags)
    return Pools(run, binding, capped) if any_capped else None


def warn_unknown_tags(run: "Run") -> None:
    """One ``config_warning`` event (level warning: a console line, a line in the
    audit trail) per limited tag that no task of the run carries.

    Most likely a typo (``--limit bd=2``), which would otherwise cap nothing in
    silence; not an error, since a config file's ``[tool.flowdeco.limits]`` may
    serve several flows.  Once per run, only when limits are given.
    """
    tags: set[str] = set()
    for v in run.graph.vertices:
        if v.kind is TASK and v.tags:
            tags.update(v.tags)
    unknown = [t for t in run.limits if t not in tags]
    if not unknown:
        return
    cfg = run.config
    selected = bool(cfg.getoption("select", None))
    which = "selected task" if selected else "task"
    known = (f"tags {'of the selected tasks' if selected else 'in this flow'}: "
             + ", ".join(sorted(tags))) if tags else \
        ("the selected tasks have no tags" if selected else "no task in this flow has a tag")
    for t in unknown:
        n = run.limits[t]
        given = f"--limit {t}={n}" if cfg.from_cli else f"limits={{{t!r}: {n}}}"
        run.emit("config_warning", level="warning",
                 message=f"{given}: no {which} has tag {t!r} ({known})")


class Pools:
    """A run's pools (see the module docstring).  Scheduler thread only."""

    def __init__(self, run: "Run", limits: dict[str, int], capped: list[tuple[str, ...] | None]):
        self.run = run
        self.limit = limits
        #: slots taken per tag: reserved by tasks in the ready heap, or running
        self.used = dict.fromkeys(limits, 0)
        #: per task index, its limited tags (None: not capped)
        self.capped = capped
        #: per tag, the priority keys of parked tasks (a task with two tags is in both;
        #: entries of tasks no longer parked are dropped when they reach the top)
        self.waiting: dict[str, list[int]] = {t: [] for t in limits}
        self.parked: set[int] = set()
        #: the most slots of each tag ever taken at once (tests, and the curious)
        self.peak = dict.fromkeys(limits, 0)

    def room(self, i: int) -> bool:
        used, limit = self.used, self.limit
        return all(used[t] < limit[t] for t in self.capped[i])  # type: ignore[union-attr]

    def take(self, i: int) -> None:
        used, peak = self.used, self.peak
        for t in self.capped[i]:  # type: ignore[union-attr]
            n = used[t] = used[t] + 1
            if n > peak[t]:
                peak[t] = n

    def admit(self, i: int) -> None:
        """Capped task ``i`` is ready: into the ready heap with its slots, or parked."""
        run = self.run
        if self.room(i):
            self.take(i)
            with run._lock:
                heapq.heappush(run._ready, run._prio[i])
        else:
            self.park(i, run._prio[i])

    def park(self, i: int, key: int) -> None:
        self.parked.add(i)
        for t in self.capped[i]:  # type: ignore[union-attr]
            heapq.heappush(self.waiting[t], key)

    def release(self, i: int) -> None:
        """An attempt of capped task ``i`` (or an instance of it) ended: give back its
        slots and move what now fits out of the waiting lists."""
        tags = self.capped[i]
        used = self.used
        for t in tags:  # type: ignore[union-attr]
            used[t] -= 1
        run = self.run
        mod = run._prio_mod
        parked = self.parked
        maps = run._dyn.maps if run._dyn is not None else {}
        for t in tags:  # type: ignore[union-attr]
            heap = self.waiting[t]
            blocked = []
            while heap and used[t] < self.limit[t]:
                key = heapq.heappop(heap)
                j = key % mod
                if j not in parked:
                    continue  # admitted through another of its tags already
                if not self.room(j):
                    blocked.append(key)  # another of its pools is full: it waits there too
                    continue
                parked.discard(j)
                m = maps.get(j)
                if m is None:
                    self.take(j)
                    with run._lock:
                        heapq.heappush(run._ready, key)
                elif not m.queued and (m.retry or m.cursor < m.n):
                    # a mapped task: its instances take their slots as they start
                    with run._lock:
                        heapq.heappush(run._map_ready, key)
                        m.queued = True
            for key in blocked:
                heapq.heappush(heap, key)

    def wrap_done(self, on_done: Callable[..., None]) -> Callable[..., None]:
        """``Run._on_done`` that also gives back a capped attempt's slots."""
        capped = self.capped
        release = self.release

        def done(i: int, *rest: Any) -> None:
            on_done(i, *rest)
            if capped[i] is not None:
                release(i)
        return done
