"""Property tests: random DAGs run correctly; random cyclic graphs report a real cycle."""

from __future__ import annotations

import itertools
import threading

import pytest

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flowdeco import CycleError, run, task
from flowdeco.clock import Clock
from flowdeco.graph import build_graph
from flowdeco.engine.dispatch import SyncDispatch

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def dags(draw, max_n=40):
    """(n, deps, priorities, declared): deps[j] maps each dependency i < j to "data" or
    "after"; ``declared`` is the order the tasks are declared in (often not topological)."""
    n = draw(st.integers(1, max_n))
    deps: list[dict[int, str]] = []
    for j in range(n):
        chosen = draw(st.lists(st.integers(0, j - 1), unique=True, max_size=min(j, 4))) if j else []
        deps.append({i: draw(st.sampled_from(["data", "after"])) for i in chosen})
    prios = draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n))
    declared = draw(st.one_of(st.just(list(range(n))), st.permutations(range(n))))
    return n, deps, prios, declared


class Journal:
    def __init__(self):
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []

    def body(self, ctx, args, fail=False):
        name = ctx if isinstance(ctx, str) else ctx.task  # (a task without ctx names itself)
        with self.lock:
            self.events.append(("start", name))
        wrong = [k for k, v in args.items() if v != k]
        with self.lock:
            self.events.append(("end", name))
        if fail:
            raise RuntimeError(f"{name} fails")
        return name if not wrong else ("WRONG", wrong)


def build_tasks(n, deps, prios, journal, failing=frozenset(), declared=None, plain=frozenset()):
    """Tasks t0..t{n-1}; those in ``plain`` take their results only (no ctx): the sync
    in-order path calls them by position."""
    fns = []
    for j in declared if declared is not None else range(n):
        data = [f"t{i}" for i, kind in deps[j].items() if kind == "data"]
        after = [f"t{i}" for i, kind in deps[j].items() if kind == "after"]
        ns = {"_journal": journal}
        args = ", ".join(f"{p!r}: {p}" for p in data)
        params, me = (data, f"'t{j}'") if j in plain else (["ctx"] + data, "ctx")
        exec(f"def t{j}({', '.join(params)}):\n"
             f"    return _journal.body({me}, {{{args}}}, {j in failing})\n", ns)
        fns.append(task(after=after, priority=prios[j])(ns[f"t{j}"]))
    return fns


@SETTINGS
@given(dag=dags(), workers=st.integers(1, 4), executor=st.sampled_from(["thread", "sync"]))
def test_random_dags_run_each_task_once_after_its_dependencies(dag, workers, executor):
    n, deps, prios, declared = dag
    journal = Journal()
    result = run(build_tasks(n, deps, prios, journal, declared=declared), workers=workers,
                 executor=executor, state_dir=None)
    assert result.ok, result.failed()
    assert result.results == {f"t{j}": f"t{j}" for j in range(n)}
    ev = journal.events
    starts = [name for kind, name in ev if kind == "start"]
    ends = [name for kind, name in ev if kind == "end"]
    assert sorted(starts) == sorted(f"t{j}" for j in range(n))   # each exactly once
    assert sorted(ends) == sorted(starts)
    pos = {e: k for k, e in enumerate(ev)}
    for j in range(n):
        for i in deps[j]:
            assert pos[("end", f"t{i}")] < pos[("start", f"t{j}")], (i, j)
    if workers == 1 or executor == "sync":
        # never two bodies at once
        assert all(ev[k][0] == "start" and ev[k + 1] == ("end", ev[k][1])
                   for k in range(0, len(ev), 2))


# no shrinking: a failure message already shows the start order, and shrinking
# scheduling counterexamples is slow
@settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(dag=dags(), executor=st.sampled_from(["thread", "sync"]))
def test_random_dags_with_one_worker_respect_priority(dag, executor):
    """With one worker, each start is the best ready task: highest priority, then declared first."""
    n, deps, prios, declared = dag
    journal = Journal()
    result = run(build_tasks(n, deps, prios, journal, declared=declared), workers=1,
                 executor=executor, state_dir=None)
    assert result.ok
    starts = [int(name[1:]) for kind, name in journal.events if kind == "start"]
    position = {u: k for k, u in enumerate(declared)}
    done: set[int] = set()
    for j in starts:
        ready = [u for u in range(n) if u not in done and all(i in done for i in deps[u])]
        best = min(ready, key=lambda u: (-prios[u], position[u]))
        assert j == best, (f"t{j} (priority {prios[j]}) started while t{best} "
                           f"(priority {prios[best]}) was ready; order {starts}")
        done.add(j)


@SETTINGS
@given(dag=dags(max_n=25), data=st.data(), workers=st.integers(1, 4),
       executor=st.sampled_from(["thread", "sync"]))
def test_random_failures_skip_exactly_the_downstream(dag, data, workers, executor):
    n, deps, prios, declared = dag
    failing = frozenset(data.draw(st.sets(st.integers(0, n - 1), max_size=3)))
    journal = Journal()
    result = run(build_tasks(n, deps, prios, journal, failing, declared), workers=workers,
                 executor=executor, state_dir=None)
    expected: dict[int, str] = {}
    for j in range(n):
        if any(expected[i] != "succeeded" for i in deps[j]):
            expected[j] = "skipped"
        else:
            expected[j] = "failed" if j in failing else "succeeded"
    for j in range(n):
        out = result.outcomes[f"t{j}"]
        assert out.status == expected[j], (j, out)
        if out.status == "skipped":
            assert out.reason == "upstream"
        if out.status == "failed":
            assert out.error == f"RuntimeError: t{j} fails"
    started = {name for kind, name in journal.events if kind == "start"}
    assert started == {f"t{j}" for j in range(n) if expected[j] != "skipped"}
    assert result.status == ("failed" if "failed" in expected.values() else "succeeded")


@SETTINGS
@given(dag=dags(max_n=25), data=st.data())
def test_sync_fast_path_matches_the_general_loop(dag, data):
    """``sync`` runs plain graphs straight down their order and hands over to the
    general loop at the first failure: starts, ends and outcomes are the same as
    with the general loop alone."""
    n, deps, prios, declared = dag
    failing = frozenset(data.draw(st.sets(st.integers(0, n - 1), max_size=3)))
    stop = data.draw(st.booleans())
    plain = frozenset(data.draw(st.sets(st.integers(0, n - 1))))

    def once():
        journal = Journal()
        result = run(build_tasks(n, deps, prios, journal, failing, declared, plain),
                     executor="sync", stop_on_error=stop, state_dir=None, clock=TickingClock())
        _check_sync_times(journal, result)
        return journal.events, {name: (o.status, o.reason, o.error, o.attempts, o.result,
                                       o.worker) for name, o in result.outcomes.items()}, \
            result.status

    fast = once()
    init = SyncDispatch.__init__

    def general_only(self, run):
        init(self, run)
        self.in_order = False

    with pytest.MonkeyPatch.context() as m:  # (function fixtures do not reset per example)
        m.setattr(SyncDispatch, "__init__", general_only)
        general = once()
    assert fast == general


class TickingClock(Clock):
    """Real wall time; a monotonic clock that moves one second at every read, so a task's
    start and end (read before and after its body) always differ."""

    def __init__(self):
        self._now = itertools.count(1000.0)
        self.monotonic = lambda: float(next(self._now))


def _check_sync_times(journal, result):
    """Timestamps of a sync run (the fast path reads the clock once per task): each ran
    task has started < finished (the clock ticks at every read) and duration =
    finished - started, and in the order the bodies ran, a task starts no earlier than
    the previous one finished."""
    ran = [name for kind, name in journal.events if kind == "start"]
    prev = None
    for name in ran:
        o = result.outcomes[name]
        assert o.started is not None and o.finished is not None, (name, o)
        assert o.started < o.finished, (name, o)
        assert o.duration == pytest.approx(o.finished - o.started, abs=1e-6), (name, o)
        if prev is not None:
            assert prev.finished <= o.started, (name, prev, o)
        prev = o


@st.composite
def cyclic_graphs(draw):
    """(n, edges): edges (u, w) mean w depends on u; at least one cycle is planted."""
    n = draw(st.integers(1, 12))
    perm = draw(st.permutations(range(n)))
    k = draw(st.integers(1, n))
    cyc = list(perm[:k])
    edges = {(cyc[i], cyc[(i + 1) % k]) for i in range(k)}
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=20))
    edges |= {(u, w) for u, w in extra if u != w}
    kinds = {e: draw(st.sampled_from(["data", "after"])) for e in sorted(edges)}
    return n, kinds


@SETTINGS
@given(graph=cyclic_graphs())
def test_cycles_are_reported_as_real_cycles(graph):
    n, kinds = graph
    fns = []
    for w in range(n):
        data = [f"n{u}" for (u, v), kind in sorted(kinds.items()) if v == w and kind == "data"]
        after = [f"n{u}" for (u, v), kind in sorted(kinds.items()) if v == w and kind == "after"]
        ns: dict = {}
        exec(f"def n{w}({', '.join(data)}):\n    return None\n", ns)
        fns.append(task(after=after)(ns[f"n{w}"]))
    try:
        build_graph("g", fns)
    except CycleError as exc:
        cyc, message = exc.cycle, str(exc)
    else:
        raise AssertionError(f"no CycleError for edges {sorted(kinds)}")
    assert len(cyc) >= 2
    assert cyc[0] == cyc[-1]
    assert len(set(cyc[:-1])) == len(cyc) - 1, cyc            # a simple cycle
    for a, b in zip(cyc, cyc[1:]):
        assert (int(a[1:]), int(b[1:])) in kinds, (a, b, cyc)  # an edge, in the direction of work
    assert " -> ".join(cyc) in message
