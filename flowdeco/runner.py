"""The scheduler: runs a validated graph on an executor.

One scheduler thread (the caller's) owns the run's state.  Workers only run
task bodies and post what happened to one queue; the scheduler takes those
messages in order, calls the report hooks, and starts what became ready.  So
reporting plugins never need locks, and at most ``workers`` attempts are in
flight at a time (a crash loses at most that many).

The life of a task::

    PENDING --deps done--> (restore? -> done) (delay? -> WAITING) -> READY
    READY --worker free--> RUNNING --attempt ends--> flowdeco_attempt_done
        -> Reschedule: WAITING (retry / next iteration), no worker held
        -> otherwise: DONE (succeeded / failed); successors are released,
           or skipped with reason "upstream" when this one did not succeed.

Sub-flow nodes and tasks with ``trigger=``, ``when=`` or ``map=`` go through
``Dynamic.gate`` once their dependencies are done (trigger rule, condition);
a mapped task then runs as instances ``task[k]`` from a scheduler-side heap
merged with the ready heap by priority (see ``flowdeco/dynamic.py``).  The
hot paths of plain tasks never look at that module.

Hand-offs stay rare: a thread worker that finishes a task picks its next
task itself, under the ready heap's lock -- the best ready task, or the
successor that depends only on the task it just finished (released by this
very completion) -- and posts "finished A, started B" as one message.  It
only takes a task that the priority rule lets go first: one that beats every
successor the finished task may release, and with one worker nothing while an
earlier completion of its own is still unseen by the scheduler.  A chain
costs a function call instead of two thread switches.  A plugin that must see
each completion before dependents start can turn this off with
``run.inline_successors = False`` (the scheduler then starts every task), or
keep it and make each attempt wait on its worker until its inputs are
recorded -- the state plugin's way, see ``flowdeco/plugins/state/writer.py``.
"""

from __future__ import annotations

import heapq
import os
import pickle
import re
import secrets
import signal
import threading
import time
import traceback
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from queue import Empty, SimpleQueue
from typing import Any, Callable, Iterable, Mapping

from .clock import Clock
from .collect import resolve_target
from .config import Config, Parser, merge_options, parse_params
from .params import (check_params, declare_secrets, parse_param_env, scrub_options,
                     wrap_secrets)
from .context import Context
from .errors import CollectionError, FlowError, UsageError, shorten
from .executors import SyncExecutor, default_workers, remote_failure
from .graph import SUBFLOW, TASK, Graph, Vertex, build_graph, kahn_order
from .deadlines import CLAIM, Watchdog
from .manager import Lease, acquire, direct_caller, release
from .threadpool import ThreadPool
from .outcome import (FAILED, INTERRUPTED, RESTORED, SKIPPED, SUCCEEDED, Attempt, Deadline,
                      Event, Finish, Reschedule, RunResult, TaskOutcome, format_error)
from .pickling import UnpicklableResult, dumps_result, load_outcome
from .select import compile_expression
from .signals import on_stop_signals

RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

# task states
PENDING, WAITING, READY, RUNNING, DONE = range(5)
# message kinds
_DONE, _LOG, _EMIT, _SIGNAL, _CRASH = range(5)
_IDONE = 5  # a mapped task's instance ended (see .dynamic)
_EXPIRED = 6  # an attempt overran its deadline (see .deadlines)
_CALL = 7  # a plugin's callable to run on the scheduler thread (Run.call_soon)

_OK = (SUCCEEDED, RESTORED)
_INF = float("inf")
_SKIP_UPSTREAM = TaskOutcome(SKIPPED, reason="upstream")
_SKIP_STOPPED = TaskOutcome(SKIPPED, reason="stopped")


def _priority_keys(graph: Graph) -> tuple[list[int], bool]:
    """Sort keys: rank of the priority (highest first) * n + declaration index; and
    whether every task has the same priority (then a key is the index)."""
    n = max(len(graph), 1)
    priorities = {v.priority for v in graph.vertices}
    if len(priorities) < 2:
        return list(range(len(graph))), True
    ranks = {p: r for r, p in enumerate(sorted(priorities, reverse=True))}
    return [ranks[v.priority] * n + v.index for v in graph.vertices], False


class InternalError(Exception):
    """A bug in flowdeco or a plugin (exit code 3)."""


class RemoteTaskError(Exception):
    """An exception from a worker process that could not travel back as itself."""


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id in (".", ".."):
        raise UsageError(
            f"invalid run id {shorten(run_id)}: use 1-128 characters from A-Z a-z 0-9 . _ - "
            "(and not '.' or '..')")
    return run_id


def new_run_id(clock: Clock) -> str:
    """A sortable, unique id: ``20261127-033931-5f3a9c``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


_HERE = os.path.dirname(os.path.abspath(__file__))


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback without the engine's own frames (runner, wrappers' glue)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and \
            os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_HERE + os.sep):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _invoke(fn: Callable[..., Any], kwargs: dict) -> Any:
    return fn(**kwargs)


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        err = RemoteTaskError(format_error(exc))
        err.remote_traceback = format_traceback(exc)  # type: ignore[attr-defined]
        return err


def _call_remote(call: Callable[[dict], Any], kwargs: dict) -> tuple:
    """Run one attempt in a worker process; everything returned must pickle.

    The result travels as its own pickle, made here, so a result that cannot
    be pickled fails this attempt with an error naming its type (and one that
    cannot be unpickled in the driver fails it there) instead of failing the
    transport.  ``t0``/``t1`` are the worker's clock: the driver keeps only
    their differences.
    """
    t0 = time.monotonic()
    try:
        result, err = call(kwargs), None
    except BaseException as exc:  # noqa: BLE001 - a task may raise anything
        result, err = None, _portable(exc)
        if not hasattr(err, "remote_traceback"):  # a traceback does not pickle: its text does
            try:
                err.remote_traceback = format_traceback(exc)  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - an exception type refusing attributes
                pass
    t1 = time.monotonic()
    payload = None
    if err is None:
        try:
            payload = dumps_result(result)
        except UnpicklableResult as exc:
            err = exc
    ctx = kwargs.get("ctx")
    logs = ctx._buffered_logs() if isinstance(ctx, Context) else []
    # a worker is one thread of execution (one attempt at a time: metrics' utilisation);
    # a Dask worker process runs attempts on several threads
    me = threading.current_thread()
    worker = f"pid-{os.getpid()}" if me is threading.main_thread() else \
        f"pid-{os.getpid()}-{me.name}"
    return payload, err, t0, t1, worker, logs


def _call_batch(calls: list[tuple[Callable[[dict], Any], dict]]) -> list[tuple]:
    """Run several attempts in sequence in one worker (see ``Run._start_remote``)."""
    return [_call_remote(call, kwargs) for call, kwargs in calls]


#: most attempts in one remote submission (1 turns batching off)
_BATCH_MAX = 1024


def _plain(call: Any) -> bool:
    """A task call with no per-attempt wrapper (timeout, circuit breaker)."""
    return type(call) is partial and call.func is _invoke


class _RemoteStats:
    """What a round trip to a remote executor costs, and how long each task code runs there.

    Updated from the executor's callback thread, read by the scheduler: the
    figures are estimates, so a read that misses the latest update is fine.
    """

    __slots__ = ("overhead", "runtime")

    def __init__(self) -> None:
        self.overhead: float | None = None
        self.runtime: dict[Any, float] = {}

    def observe(self, fns: list, durations: list[float], roundtrip: float) -> None:
        runtime = self.runtime
        for fn, d in zip(fns, durations):
            key = getattr(fn, "__code__", fn)
            prev = runtime.get(key)
            runtime[key] = d if prev is None else 0.7 * prev + 0.3 * d
        over = max(roundtrip - sum(durations), 0.0)
        self.overhead = over if self.overhead is None else 0.8 * self.overhead + 0.2 * over

    def tiny(self, fn: Any) -> float | None:
        """The estimated run time of ``fn`` when it is shorter than a round trip, else None."""
        est = self.runtime.get(getattr(fn, "__code__", fn))
        over = self.overhead
        return est if est is not None and over is not None and est < over else None


# --------------------------------------------------------------------------- the run


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
        self._dyn = dynamic          # a .dynamic.Dynamic with mapped tasks, or None

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


class _Upstream(Mapping[str, TaskOutcome]):
    """``ctx.upstream``: outcomes of a task's dependencies, built when read.

    A task a thread worker chained right after its one dependency may read
    this before the scheduler has recorded that dependency's completion;
    ``early`` (``(index, result, attempt, t0, t1, worker)``) covers that case.
    """

    def __init__(self, run: "Run", deps: tuple[int, ...], early: tuple | None = None):
        self._run = run
        self._deps = {run.graph.vertices[d].name: d for d in deps}
        self._early = early

    def __getitem__(self, name: str) -> TaskOutcome:
        d = self._deps[name]
        run = self._run
        early = self._early
        if early is not None and early[0] == d and run._status[d] is None:
            _, result, attempt, t0, t1, worker = early
            off = run._offset
            return TaskOutcome(SUCCEEDED, result, None, attempt, t0 + off, t1 + off, t1 - t0,
                               worker=worker)
        return run.outcome_at(d)

    def __iter__(self):
        return iter(self._deps)

    def __len__(self) -> int:
        return len(self._deps)


class Run:
    """One execution of a graph.  Passed to run hooks as ``run``.

    Plugins read ``run_id``, ``config``, ``graph``, ``clock``, ``params``,
    ``state_dir`` (None with ``--no-state``), ``results`` (by task index) and
    ``stash`` (a dict for plugin state); :meth:`outcome` gives a task's
    outcome once it ended; :meth:`emit` reports an event from any thread.
    During ``flowdeco_run_start`` a plugin may set ``inline_successors`` or
    add task indices to ``on_success``.
    """

    def __init__(self, config: Config, graph: Graph, *, run_id: str, state_dir: str | None,
                 params: Mapping[str, Any], executor: Executor, workers: int,
                 stop_on_error: bool, resumed: bool = False, owns_executor: bool = True):
        self.config = config
        self.hook = config.hook
        self.graph = graph
        self.run_id = run_id
        self.state_dir = state_dir
        self.params = params
        self.executor = executor
        self.workers = workers
        self.stop_on_error = stop_on_error
        self.resumed = resumed
        self.owns_executor = owns_executor
        self.clock = config.clock
        self.stash: dict[Any, Any] = {}
        #: set by the metrics plugin (at run start, computed lazily); becomes RunResult.metrics
        self.metrics: Any = None
        #: plugins set False when a completion must be reported before dependents start
        self.inline_successors = True
        #: set by a plugin that makes completions durable after they are reported and
        #: confirms them with flowdeco_report_durable (the state plugin's writer thread)
        self.durable_later = False
        #: task indices whose *successful* attempts also go through flowdeco_attempt_done
        self.on_success: set[int] = set()
        #: for each task (index) or mapped instance (``(index, k)``) that ran more than one
        #: attempt (retries, interval iterations): ``(worker, seconds)`` of each attempt, in
        #: order; a task with one attempt is not listed (its outcome's duration is that
        #: attempt's).  Kept on the slow paths only; the metrics plugin's busy time.
        self.attempt_durations: dict[Any, list[tuple[str | None, float]]] = {}
        n = len(graph)
        self.results: list[Any] = [None] * n
        self.q: SimpleQueue = SimpleQueue()
        self.stopping = False
        self.interrupted = False
        self.abandoned = False
        # compact per-task records; TaskOutcome objects are built on demand
        self._state = [PENDING] * n
        self._status: list[str | None] = [None] * n
        self._reason: list[str | None] = [None] * n
        self._error: list[BaseException | str | None] = [None] * n
        self._attempts = [0] * n
        self._t0: list[float | None] = [None] * n
        self._t1: list[float | None] = [None] * n
        self._worker: list[str | None] = [None] * n
        self._cache: list[TaskOutcome | None] = [None] * n
        #: per task, dependencies not ended yet (filled by execute(), see _in_order)
        self._remaining: list[int] = []
        self._last_error: list[BaseException | None] = [None] * n
        # ready tasks as int keys (priority rank * n + index: highest priority, then
        # declared first), so heap operations compare ints and allocate nothing; the
        # attempt and iteration a queued task starts with are kept beside it
        self._ready: list[int] = []
        self._n = max(n, 1)
        #: _uniform: every task has the same priority (the ready heap's order is the
        #: graph's order)
        self._key, self._uniform = _priority_keys(graph)
        # dynamic flows (.dynamic, made on first use): mapped tasks with instances to
        # start (priority keys, under _lock), and the tasks whose readiness goes
        # through Dynamic.gate -- sub-flow nodes, map=/when=/trigger= tasks, and
        # tasks whose dependency was skipped for a reason they inherit
        self._mready: list[int] = []
        self._dyn: Any = None
        self._slow = [False] * n
        for i in graph.dynamic:
            self._slow[i] = True
        self._next_attempt = [1] * n
        self._timers: list[tuple[float, int, int, int, int | None]] = []
        self._timer_seq = 0
        self._inflight = 0
        self._signals = 0
        self._sync_busy = False
        #: set by the signal handler itself, so workers stop chaining at once
        self._halt = False
        self._interrupt_reported = False
        #: guards the ready heap, which thread workers also pop from (see _work)
        self._lock = threading.Lock()
        self._first_iteration: list[int | None] = [None] * n
        for v in graph.using("every"):
            self._first_iteration[v.index] = 1
        self._next_iter: list[int | None] = list(self._first_iteration)
        #: extra ``task_restored`` fields (``Restored.fields``) by task or instance name
        self._restore_fields: dict[str, Any] = {}
        #: attempts may have deadlines the scheduler enforces (flowdeco_task_deadline):
        #: true on flowdeco's thread pool, which can give up on a thread
        self.can_abandon = isinstance(executor, ThreadPool)
        self._deadlines: list[Deadline | None] | None = None
        #: per task, an object whose enter()/exit() bracket each attempt on the worker
        #: (flowdeco_task_guards: circuit breakers), or None
        self._guards: list[Any] | None = None
        self._watchdog: Watchdog | None = None
        #: something was reported while dispatching (a restored mapped instance): call
        #: flowdeco_report_flush before the next task starts (see _flush)
        self._flush_due = False

    # -- public helpers for plugins
    def emit(self, name: str, task: str | None = None, **fields: Any) -> None:
        """Report an audit event from any thread (delivered on the scheduler thread, in order)."""
        self.q.put((_EMIT, name, task, fields, self.clock.monotonic()))

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` on the scheduler thread soon (from any thread; wakes the scheduler).

        For a plugin thread whose news must reach report hooks, which run on
        the scheduler thread only (the state plugin's writer after a commit).
        ``flowdeco_report_flush`` follows, as after every batch of messages.
        """
        self.q.put((_CALL, fn))

    def now(self) -> float:
        """Current wall time (POSIX seconds) on the run's clock."""
        return self.clock.time()

    def stop(self, interrupted: bool = False) -> None:
        """Start nothing new (like ``-x``, or like Ctrl-C with ``interrupted=True``).

        Scheduler thread only (call it from a hook).  A plugin that can no
        longer do its job safely -- a store whose disk is full -- stops the run
        this way; running tasks finish and are recorded.
        """
        if not self.stopping:
            self._stop(interrupted)

    def outcome(self, name: str) -> TaskOutcome | None:
        """The outcome of task ``name`` (or mapped instance ``name[k]``) if it has ended, else None."""
        i = self.graph.by_name.get(name)
        if i is None:
            if self._dyn is not None and name.endswith("]"):
                return self._dyn.instance_outcome(name)
            raise KeyError(name)
        return self.outcome_at(i) if self._status[i] is not None else None

    def task_inputs(self, task: Vertex, name: str | None = None) -> dict[str, Any]:
        """The arguments ``task`` is called with once its dependencies are done (no ``ctx``).

        ``name`` may name an instance of a mapped task (``scan[3]``): its own
        arguments.  Scheduler thread only, from ``flowdeco_task_restore`` or
        later (input-hash caching keys tasks by these).  Parameters left to
        their defaults are not included.
        """
        if name is not None and name != task.name:
            kw = self._dynamic().instance_inputs(task.index, name)
            if kw is None:
                raise KeyError(name)
            return kw
        return task.arguments(self.results)

    def _dynamic(self) -> Any:
        """This run's :class:`~flowdeco.dynamic.Dynamic` (trigger rules, when=, map=)."""
        if self._dyn is None:
            from .dynamic import Dynamic
            self._dyn = Dynamic(self)
        return self._dyn

    def outcome_at(self, i: int) -> TaskOutcome:
        out = self._cache[i]
        if out is None:
            status = self._status[i]
            if status is None:
                raise KeyError(self.graph.vertices[i].name)
            if status == SKIPPED:
                out = _SKIP_UPSTREAM if self._reason[i] == "upstream" else \
                    _SKIP_STOPPED if self._reason[i] == "stopped" else \
                    TaskOutcome(SKIPPED, reason=self._reason[i])  # type: ignore[arg-type]
            else:
                err = self._error[i]
                t0, t1 = self._t0[i], self._t1[i]
                off = self._offset
                out = TaskOutcome(
                    status, self.results[i] if status in _OK else None,  # type: ignore[arg-type]
                    None if err is None else err if isinstance(err, str) else format_error(err),
                    self._attempts[i], None if t0 is None else t0 + off,
                    None if t1 is None else t1 + off,
                    0.0 if t0 is None or t1 is None else t1 - t0,
                    exception=err if isinstance(err, BaseException) else None,
                    worker=self._worker[i])
            self._cache[i] = out
        return out

    # -- setup
    def _setup(self) -> None:
        hook = self.hook
        self._offset = self.clock.time() - self.clock.monotonic()
        self.started = self.clock.monotonic()
        self.sync = isinstance(self.executor, SyncExecutor)
        self.local = self.sync or isinstance(self.executor, ThreadPoolExecutor)
        hook.flowdeco_run_start(run=self)
        has = lambda h: bool(h.get_hookimpls())  # noqa: E731
        self.reporting = has(hook.flowdeco_report)
        self._report_hook = hook.flowdeco_report
        self._has_flush = has(hook.flowdeco_report_flush)
        self._has_restore = has(hook.flowdeco_task_restore)
        self._has_delay = has(hook.flowdeco_task_delay)
        self._has_attempt_done = has(hook.flowdeco_attempt_done)
        self._watched = self.on_success if self._has_attempt_done else frozenset()
        wrap = direct_caller(hook.flowdeco_task_wrap, ("run", "task")) \
            if has(hook.flowdeco_task_wrap) else None
        if self._has_restore:
            self._restore = direct_caller(hook.flowdeco_task_restore, ("run", "task", "name"),
                                          firstresult=True)
        if self.can_abandon and has(hook.flowdeco_task_deadlines):
            self._setup_deadlines(hook.flowdeco_task_deadlines(run=self))
        if self.local and has(hook.flowdeco_task_guards):
            self._guards = self._per_task(hook.flowdeco_task_guards(run=self))
        local = self.local
        calls: list[Callable[[dict], Any] | None]
        if wrap is None and local:
            calls = [None] * len(self.graph)  # every task a plain call, made inline
        else:
            calls = []
            for v in self.graph.vertices:
                call = None
                if v.kind is TASK:
                    decos = wrap(self, v) if wrap is not None else ()  # (no None in it)
                    if decos or not local:
                        call = partial(_invoke, v.fn)
                        for deco in reversed(decos):
                            call = deco(call)
                calls.append(call)
        self._calls = calls
        self._fns = [v.fn for v in self.graph.vertices]
        # thread workers take their next task themselves (no hand-off through the
        # scheduler) unless a plugin needs to see each completion first
        self._pull = self.local and not self.sync and self.inline_successors
        # ... and a successor released by their own completion only when it goes
        # through no ready-time hook (restore, delay)
        self._inline = self._pull and not self._has_restore and not self._has_delay
        self._chain_next = self._chains() if self._inline else [None] * len(self.graph)
        # with one worker, priority order must be exact: a worker does not pick its
        # next task while a completion of its own that may release tasks is unseen
        self._strict = self.workers == 1
        # for thread workers picking their next task (_work): successor counts, and
        # the best priority key among each task's successors
        if self.local and not self.sync:
            self._nsuccs = [len(x) for x in self.graph.succs]
            key = self._key
            self._best_succ = [_INF if f is None else key[f] for f in self._first_succ()] \
                if self._pull else []
        #: per worker thread: completions posted / handled by the scheduler
        self._posted: dict[str, int] = {}
        self._handled: dict[str, int] = {}
        self._log_sink = self._sink if self.reporting else None
        # the sync executor runs a graph with nothing dynamic in it straight down its
        # priority order until the first attempt that does not simply succeed
        self._in_order = self.sync and not self._has_restore and not self._has_delay \
            and not self._watched and not self.graph.dynamic and not self.graph.using("every")

    def _chains(self) -> list[int | None]:
        """For each task, the successor a worker may run right after it, or None.

        Only a task that depends on nothing else qualifies, and only when no
        other successor (which may become ready by the same completion) would
        have to start first by the priority rule, and never a task that goes
        through the dynamic gate (``map=``, ``when=``, ``trigger=``).
        """
        vertices = self.graph.vertices
        watched, slow = self._watched, self._slow
        out: list[int | None] = []
        for i, first in enumerate(self._first_succ()):
            best = None
            if first is not None and i not in watched:
                w = vertices[first]
                if w.kind is TASK and len(w.deps) == 1 and not slow[first]:
                    best = first
            out.append(best)
        return out

    def _first_succ(self) -> list[int | None]:
        """Each task's successor that goes first by the priority rule (None: no successor)."""
        first = self.__dict__.get("_firsts")
        if first is None:
            get = self._key.__getitem__
            first = self._firsts = [min(succ, key=get) if succ else None
                                    for succ in self.graph.succs]
        return first

    # -- reporting
    def _report(self, name: str, task: str | None, fields: dict, mono: float | None = None,
                outcome: TaskOutcome | None = None) -> None:
        ts = (self.clock.monotonic() if mono is None else mono) + self._offset
        self._report_hook(run=self, event=Event(name, ts, self.run_id, task, fields, outcome))

    def _sink(self, task: str, level: str, attempt: int, iteration: int | None, event: str,
              fields: dict) -> None:
        self.q.put((_LOG, task, level, attempt, iteration, event, fields, self.clock.monotonic()))

    # -- the loop
    def execute(self) -> RunResult:
        try:
            self._setup()
            if self.reporting:
                fields: dict[str, Any] = {"flow": self.graph.name, "tasks": len(self.graph)}
                if self.resumed:
                    fields["resumed"] = True
                self._report("run_started", None, fields)
        except BaseException:
            # a plugin refused to start (a run in use, a foreign store): release
            # what the run owns before the error reaches the user
            if self.owns_executor:
                self.executor.shutdown(wait=False, cancel_futures=True)
            raise
        restore = self._install_signals()
        try:
            try:
                if self._in_order:  # no counters needed unless it hands over (_leave_order)
                    self._remaining = [0] * len(self.graph)
                else:
                    self._remaining = [len(v.deps) for v in self.graph.vertices]
                    for i in range(len(self.graph)):
                        if self._remaining[i] == 0 and self._state[i] == PENDING:
                            done = self._make_ready(i)
                            if done is not None:
                                self._finish(*done)
                if self._has_flush:
                    self.hook.flowdeco_report_flush(run=self)
                self._loop()
            except KeyboardInterrupt:
                # a second Ctrl-C while the sync executor ran a task on this thread
                self.interrupted = self.stopping = self.abandoned = True
            self._finalize()
        finally:
            restore()
            if self._watchdog is not None:
                self._watchdog.stop()
            if self.owns_executor:
                self.executor.shutdown(wait=not self.abandoned, cancel_futures=True)
        finished = self.clock.monotonic()
        status = INTERRUPTED if self.interrupted else (
            FAILED if self.stopping or FAILED in self._status else SUCCEEDED)
        result = RunResult(run_id=self.run_id, status=status,
                           outcomes=Outcomes(self.graph.by_name, self.outcome_at,
                                             self._dyn if self._dyn and self._dyn.maps else None),
                           started=self.started + self._offset, finished=finished + self._offset,
                           duration=finished - self.started, flow=self.graph.name,
                           metrics=self.metrics)
        if self.reporting:
            counts = result.counts()
            self._report("run_finished", None, {"status": status, "duration": round(result.duration, 6),
                                                **{k: v for k, v in counts.items() if v}})
        if self._has_flush:
            self.hook.flowdeco_report_flush(run=self)
        self.hook.flowdeco_run_finish(run=self, result=result)
        return result

    def _loop(self) -> None:
        q = self.q
        get = q.get
        empty = q.empty
        clock = self.clock
        handle = self._handle
        dispatch = self._dispatch_sync if self.sync else self._dispatch
        while True:
            dispatch()
            if self._flush_due:
                self._flush()
            if self.abandoned:
                return
            if self._inflight == 0 and (self.stopping or (
                    not self._ready and not self._mready and not self._timers)):
                return
            timeout = None
            if self._timers:
                timeout = self._timers[0][0] - clock.monotonic()
            try:
                msg = clock.wait(get, timeout, self._inflight == 0)
            except Empty:
                self._release_timers()
                continue
            handle(msg)
            while not empty():
                handle(get())
            if self._timers:
                self._release_timers()
            if self._has_flush:
                self.hook.flowdeco_report_flush(run=self)

    def _per_task(self, answers: list) -> list | None:
        """``{task index: value}`` answers merged into a per-vertex list (first answer wins),
        keeping plain tasks only (not sub-flow nodes, not mapped tasks); None if empty."""
        answers = [a for a in answers if a]
        if not answers:
            return None
        vertices = self.graph.vertices
        out: list[Any] = list(map(answers[-1].get, range(len(vertices))))  # one pass in C
        for answer in reversed(answers[:-1]):
            for i, x in answer.items():
                if x is not None:
                    out[i] = x
        for i in self.graph.dynamic:  # sub-flow nodes and mapped tasks take none
            v = vertices[i]
            if v.kind is not TASK or v.spec.map is not None:  # type: ignore[union-attr]
                out[i] = None
        return out if out.count(None) < len(out) else None

    def _setup_deadlines(self, answers: list) -> None:
        deadlines = self._per_task(answers)
        if deadlines is not None:
            self._deadlines = deadlines
            self._watchdog = Watchdog(self._expire)
            self._watchdog.start()

    def _limited(self, i: int, attempt: int, iteration: int | None, t0: float,
                 thread: threading.Thread, call: Any, kw: dict, guard: Any, deadline: Any
                 ) -> tuple[Any, BaseException | None, bool]:
        """One attempt with a guard and/or a deadline (the latter on thread workers only):
        (result, error, overran).

        The guard is entered before the deadline is armed, so an overrun attempt
        is exited by the scheduler (with the deadline's error) and never again
        when its call finally returns.
        """
        token = None
        if guard is not None:
            try:
                token = guard.enter()
            except BaseException as exc:  # noqa: BLE001 - the guard refuses the attempt
                return None, exc, False
        armed = None
        if deadline is not None:
            armed = self._watchdog.arm(i, attempt, iteration, t0, thread,  # type: ignore[union-attr]
                                       deadline, guard, token)
        try:
            result, err = (self._fns[i](**kw) if call is None else call(kw)), None
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            result, err = None, exc
        if armed is not None and not Watchdog.disarm(armed):
            return None, None, True
        if guard is not None:
            guard.exit(token, err)
        return result, err, False

    def _expire(self, armed: Any) -> None:
        """The watchdog's thread: an attempt overran its deadline; the scheduler ends it."""
        self.q.put((_EXPIRED, armed))

    def _flush(self) -> None:
        """Flush reports made outside message handling, so gates waiting on them open."""
        self._flush_due = False
        self.hook.flowdeco_report_flush(run=self)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == _DONE:
            self._on_done(*msg[1:])
        elif kind == _IDONE:
            self._dyn.on_done(*msg[1:])
        elif kind == _LOG:
            _, task, level, attempt, iteration, event, fields, mono = msg
            if self.reporting:
                extra = {"level": level, "attempt": attempt}
                if iteration is not None:
                    extra["iteration"] = iteration
                extra.update(fields)
                self._report(event, task, extra, mono)
        elif kind == _EMIT:
            _, name, task, fields, mono = msg
            if self.reporting:
                self._report(name, task, fields, mono)
        elif kind == _SIGNAL:
            self._signals += 1
            if self._signals == 1:
                self._report_interrupt(msg[1])
                self._stop(interrupted=True)
            else:
                self.abandoned = True
        elif kind == _EXPIRED:
            i, attempt, iteration, t0, thread, deadline, guard, token = msg[1][2:]
            self.executor.give_up(thread)
            error = deadline.error(self.graph.vertices[i].name)
            if guard is not None:
                guard.exit(token, error)  # the overrun counts as the guarded call's failure
            self._on_done(i, attempt, iteration, None, error, t0, self.clock.monotonic(),
                          thread.name, None, 0)
        elif kind == _CALL:
            msg[1]()
        elif kind == _CRASH:
            raise InternalError("a worker crashed inside flowdeco") from msg[1]

    def _dispatch(self) -> None:
        if self._mready:  # a mapped task has instances to start: merge by priority
            return self._dyn.dispatch()
        ready = self._ready
        lock = self._lock
        while ready and self._inflight < self.workers and not self.stopping:
            with lock:
                if not ready:
                    break
                i = heapq.heappop(ready) % self._n
            self._start(i, self._next_attempt[i], self._next_iter[i])

    def _dispatch_sync(self) -> None:
        """The ``sync`` executor: run ready tasks one by one on this thread.

        This is the engine's tightest loop, so the common case (the attempt
        succeeded, no plugin watches it) is written out here rather than going
        through :meth:`_on_done`; every other case does go through it.
        """
        if self._in_order:
            self._in_order = False
            self._run_in_order()
            if not self._ready:
                return  # all ran (or stopped): the graph's successor lists were never needed
        ready = self._ready
        succs = self.graph.succs
        results = self.results
        state, status, attempts = self._state, self._status, self._attempts
        t0s, t1s, workers = self._t0, self._t1, self._worker
        remaining, key = self._remaining, self._key
        watched = self._watched
        plain = not self._has_restore and not self._has_delay
        heappop, heappush = heapq.heappop, heapq.heappush
        n = self._n
        next_attempt, next_iter = self._next_attempt, self._next_iter
        reporting = self.reporting
        has_flush = self._has_flush
        slow = self._slow
        mready = self._mready
        while (ready or mready) and not self.stopping:
            if mready and self._dyn.sync_step():  # a mapped task's instance went first
                continue
            i = heappop(ready) % n
            if self._flush_due:
                self._flush()
            attempt = next_attempt[i]
            result, err, t0, t1 = self._attempt_here(i, attempt, next_iter[i])
            if err is None and i not in watched:
                results[i] = result
                status[i] = SUCCEEDED
                state[i] = DONE
                attempts[i] = attempt
                if t0s[i] is None:
                    t0s[i] = t0
                elif i in self.attempt_durations:  # the last attempt of a retried task
                    self.attempt_durations[i].append(("sync", t1 - t0))
                t1s[i] = t1
                workers[i] = "sync"
                if reporting:
                    self._report_outcome(i)
                for s in succs[i]:
                    r = remaining[s] - 1
                    remaining[s] = r
                    if r == 0 and state[s] == PENDING:
                        if plain and not slow[s]:
                            state[s] = READY
                            heappush(ready, key[s])
                        else:
                            done = self._make_ready(s)
                            if done is not None:
                                self._finish(*done)
            else:
                self._inflight += 1
                self._on_done(i, attempt, next_iter[i], result, err, t0, t1, "sync", None, 0)
            if has_flush:
                self.hook.flowdeco_report_flush(run=self)

    def _attempt_here(self, i: int, attempt: int, iteration: int | None
                      ) -> tuple[Any, BaseException | None, float, float]:
        """The ``sync`` executor: one attempt of task ``i`` on this thread, then the
        messages that arrived meanwhile; (result, error, start, end)."""
        v = self.graph.vertices[i]
        kw = v.arguments(self.results)
        if v.wants_ctx:
            kw["ctx"] = self._context(v, attempt, iteration)
        self._state[i] = RUNNING
        if self.reporting:
            self._report_started(v.name, attempt, iteration)
        call = self._calls[i]
        guard = self._guards[i] if self._guards is not None else None
        mono = self.clock.monotonic
        self._sync_busy = True
        t0 = mono()
        if guard is None:
            try:
                result, err = (v.fn(**kw) if call is None else call(kw)), None  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - a task may raise anything
                result, err = None, exc
        else:
            result, err, _ = self._limited(i, attempt, iteration, t0, None, call, kw,  # type: ignore[arg-type]
                                           guard, None)
        t1 = mono()
        self._sync_busy = False
        q = self.q
        while not q.empty():  # log records, events and signals that arrived during the task
            self._handle(q.get())
        return result, err, t0, t1

    def _run_in_order(self) -> None:
        """The ``sync`` executor's fast path: run the tasks in the order the ready heap
        would give them, with no heap and no dependency counting.

        Taken when nothing can change that order (no restore, delay, dynamic task,
        interval, or plugin watching successful attempts): run one by one, the ready
        heap is exactly Kahn's algorithm keyed by priority then declaration, which
        is the graph's own order when priorities are all equal.  The first attempt
        that fails, or a stop, hands the rest over to the general loop
        (:meth:`_leave_order` rebuilds its ready heap and counters).
        """
        order = self.graph.order if self._uniform else kahn_order(self.graph, self._key)
        results = self.results
        state, status, attempts = self._state, self._status, self._attempts
        t0s, t1s, workers = self._t0, self._t1, self._worker
        vertices = self.graph.vertices
        calls, guards = self._calls, self._guards
        mono = self.clock.monotonic
        empty, get, handle = self.q.empty, self.q.get, self._handle
        reporting, has_flush = self.reporting, self._has_flush
        for i in order:
            if self.stopping:
                return self._leave_order()
            if self._flush_due:
                self._flush()
            # _attempt_here(i, 1, None), written out: the call and its attribute
            # lookups are 15% of this loop's instructions per task (callgrind)
            v = vertices[i]
            kw = v.arguments(results)
            if v.wants_ctx:
                kw["ctx"] = self._context(v, 1, None)
            state[i] = RUNNING
            if reporting:
                self._report_started(v.name, 1, None)
            call = calls[i]
            self._sync_busy = True
            t0 = mono()
            if guards is None or guards[i] is None:
                try:
                    result, err = (v.fn(**kw) if call is None else call(kw)), None  # type: ignore[misc]
                except BaseException as exc:  # noqa: BLE001 - a task may raise anything
                    result, err = None, exc
            else:
                result, err, _ = self._limited(i, 1, None, t0, None, call, kw,  # type: ignore[arg-type]
                                               guards[i], None)
            t1 = mono()
            self._sync_busy = False
            while not empty():  # log records, events and signals that arrived during the task
                handle(get())
            if err is not None:
                self._leave_order()
                self._inflight += 1
                self._on_done(i, 1, None, result, err, t0, t1, "sync", None, 0)
                if has_flush:
                    self.hook.flowdeco_report_flush(run=self)
                return None
            results[i] = result
            status[i] = SUCCEEDED
            state[i] = DONE
            attempts[i] = 1
            t0s[i] = t0
            t1s[i] = t1
            workers[i] = "sync"
            if reporting:
                self._report_outcome(i)
            if has_flush:
                self.hook.flowdeco_report_flush(run=self)
        return None

    def _leave_order(self) -> None:
        """Build the general loop's ready heap and dependency counters mid-run."""
        state, remaining, key = self._state, self._remaining, self._key
        ready: list[int] = []
        for j, v in enumerate(self.graph.vertices):
            if state[j] == PENDING or state[j] == READY:
                r = 0
                for d in v.deps:
                    if state[d] != DONE:
                        r += 1
                remaining[j] = r
                if r == 0:
                    state[j] = READY
                    ready.append(key[j])
        heapq.heapify(ready)
        with self._lock:
            self._ready[:] = ready

    def _report_started(self, name: str, attempt: int, iteration: int | None,
                        mono: float | None = None) -> None:
        f: dict[str, Any] = {"attempt": attempt}
        if iteration is not None:
            f["iteration"] = iteration
        self._report("task_started", name, f, mono)

    def _context(self, v: Vertex, attempt: int, iteration: int | None,
                 early: tuple | None = None) -> Context:
        return Context(self.run_id, v.name, attempt, iteration, self.params,
                       self._log_sink if self.local else None, _Upstream(self, v.deps, early),
                       self if self.local else None)

    def _start(self, i: int, attempt: int, iteration: int | None) -> None:
        v = self.graph.vertices[i]
        kw = v.arguments(self.results)
        if v.wants_ctx:
            kw["ctx"] = self._context(v, attempt, iteration)
        self._state[i] = RUNNING
        self._inflight += 1
        if self.reporting:
            self._report_started(v.name, attempt, iteration)
        if self.local:
            self.executor.submit(self._work, i, kw, attempt, iteration)
        else:
            self._start_remote(i, kw, attempt, iteration)

    # -- remote executors (process pools, Dask): attempts travel by pickle
    #
    # Tiny tasks are batched: when the task being started and the next ready
    # ones are plain calls (no per-attempt wrapper) whose code ran shorter than
    # a round trip to a worker costs, they go as one submission that runs them
    # in sequence (``_call_batch``).  The worker posts them back as if it had
    # chained them ("finished A, started B"), so reports, state and the audit
    # trail are those of single attempts.  A batch holds at most about three
    # round trips' worth of estimated work, so it never starves other
    # workers; code never seen yet and code slower than a round trip go alone.

    def _start_remote(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        stats = self.__dict__.get("_remote_stats")
        if stats is None:
            stats = self._remote_stats = _RemoteStats()
        members = [(i, attempt, iteration)]
        calls = [(self._calls[i], kw)]
        est = stats.tiny(self._fns[i]) if _BATCH_MAX > 1 and not self.stop_on_error \
            and _plain(self._calls[i]) else None
        if est is not None:
            ready, n, vertices, results = self._ready, self._n, self.graph.vertices, self.results
            budget = 3.0 * stats.overhead - est
            free = max(self.workers - self._inflight + 1, 1)
            limit = min(_BATCH_MAX, -(-(len(ready) + 1) // free))
            mapped = self.__dict__.get("_mready") or ()   # mapped tasks' instances (.dynamic)
            with self._lock:
                while ready and len(members) < limit:
                    if mapped and mapped[0] < ready[0]:
                        break       # a mapped task goes first: the scheduler starts it
                    j = ready[0] % n
                    e = stats.tiny(self._fns[j])
                    if e is None or e > budget or not _plain(self._calls[j]):
                        break
                    heapq.heappop(ready)
                    budget -= e
                    members.append((j, self._next_attempt[j], self._next_iter[j]))
            for j, a, it in members[1:]:
                v = vertices[j]
                kj = v.arguments(results)
                if v.wants_ctx:
                    kj["ctx"] = self._context(v, a, it)
                self._state[j] = RUNNING
                calls.append((self._calls[j], kj))
        sent = time.perf_counter()
        try:
            fut = self.executor.submit(_call_remote, *calls[0]) if len(calls) == 1 else \
                self.executor.submit(_call_batch, calls)
        except Exception as exc:  # noqa: BLE001 - a broken or closed pool fails the attempt
            fut = Future()
            fut.set_exception(exc)
        fut.add_done_callback(partial(self._remote_done, tuple(members), sent))

    def _work(self, i: int, kw: dict, attempt: int, iteration: int | None) -> None:
        """A worker thread: run attempts until there is nothing for it to take.

        After each attempt the worker picks its next task itself, under the
        ready-heap lock: the chained successor of the task it just finished
        (released by this very completion, so not in the heap yet) when it
        goes first, else the best ready task.  It posts the completion and the
        task it took in one message, so the scheduler (which reports and owns
        the state) learns both in order -- without a hand-off per task.
        """
        put = self.q.put
        try:
            mono = self.clock.monotonic
            calls = self._calls
            fns = self._fns
            vertices = self.graph.vertices
            results = self.results
            ready = self._ready
            lock = self._lock
            key = self._key
            chain_next = self._chain_next
            n = self._n
            me = threading.current_thread()
            worker = me.name
            nsuccs = self._nsuccs
            best_succ = self._best_succ
            handled = self._handled
            strict = self._strict
            pull = self._pull
            mready = self._mready
            seq = self._posted.get(worker, 0)
            # the last completion this worker posted that may release tasks other
            # than the one it chained to: until the scheduler has handled it, the
            # ready set is incomplete (matters when priority order must be exact)
            fanout = 0
            deadlines = self._deadlines
            guards = self._guards
            arm = self._watchdog.arm if self._watchdog is not None else None
            # deadlines are real time: on the real clock an attempt's start is its arming time
            real = mono is time.monotonic
            while True:
                call = calls[i]
                t0 = mono()
                deadline = deadlines[i] if deadlines is not None else None
                guard = guards[i] if guards is not None else None
                if deadline is None and guard is None:
                    try:
                        result, err = (fns[i](**kw) if call is None else call(kw)), None  # type: ignore[misc]
                    except BaseException as exc:  # noqa: BLE001 - a task may raise anything
                        result, err = None, exc
                elif guard is None:  # a deadline only (timeouts): _limited, written out
                    armed = arm(i, attempt, iteration, t0, me, deadline,  # type: ignore[misc]
                                now=t0 if real else None)
                    try:
                        result, err = (fns[i](**kw) if call is None else call(kw)), None  # type: ignore[misc]
                    except BaseException as exc:  # noqa: BLE001 - a task may raise anything
                        result, err = None, exc
                    try:
                        armed[CLAIM].pop()  # Watchdog.disarm
                    except IndexError:
                        return  # the scheduler ended this attempt and gave up this thread
                else:
                    result, err, overran = self._limited(i, attempt, iteration, t0, me, call, kw,
                                                         guard, deadline)
                    if overran:
                        return  # the scheduler ended this attempt and gave up this thread
                t1 = mono()
                nxt = None
                chained = False
                if pull and not self.stopping and not self._halt and not (
                        err is not None and self.stop_on_error) and not (
                        strict and handled.get(worker, 0) < fanout):
                    # a task this completion releases may have to go first: take
                    # the heap's best only when it beats every successor of i (the
                    # best of which is the chained candidate, when there is one); a
                    # mapped task's instances are started by the scheduler, so one that
                    # goes first stops the worker here
                    cand = chain_next[i] if err is None else None
                    with lock:
                        top = ready[0] if ready else _INF
                        mtop = mready[0] if mready else _INF
                        if top < best_succ[i] and top < mtop:
                            nxt = heapq.heappop(ready) % n
                        elif cand is not None and key[cand] < top and key[cand] < mtop:
                            nxt, chained = cand, True
                seq += 1
                self._posted[worker] = seq
                if nsuccs[i] > chained:
                    fanout = seq
                put((_DONE, i, attempt, iteration, result, err, t0, t1, worker, nxt, seq))
                if nxt is None:
                    return
                v = vertices[nxt]
                ctx = None
                if v.wants_ctx:  # (ctx.upstream knows a chained task's dependency at once)
                    ctx = self._context(v, self._next_attempt[nxt], self._next_iter[nxt],
                                        (i, result, attempt, t0, t1, worker) if chained else None)
                i, attempt, iteration = nxt, self._next_attempt[nxt], self._next_iter[nxt]
                if chained:            # its one dependency is the result in hand
                    kw = dict(v.consts) if v.consts else {}
                    for p in v.argnames:
                        kw[p] = result
                else:
                    kw = v.arguments(results)
                if ctx is not None:
                    kw["ctx"] = ctx
        except BaseException as exc:  # noqa: BLE001 - never leave the scheduler waiting
            put((_CRASH, exc))

    def _remote_done(self, members: tuple, sent: float, fut: Any) -> None:
        """A remote submission ended (on the executor's callback thread): post its attempts.

        ``members`` are the ``(task, attempt, iteration)`` it carried, one or a
        batch.  Attempts keep the durations the worker measured, the last one
        ending now on the run's clock (a worker's clock may be another
        host's).  A batch is posted as a chain: each completion names the
        next member as started, and only the last frees the worker slot.  A
        dead worker (broken pool, killed Dask worker) fails every attempt the
        submission carried with ``WorkerCrashed``.
        """
        put = self.q.put
        vertices = self.graph.vertices
        now = self.clock.monotonic()
        try:
            out = fut.result()
            outs = [out] if len(members) == 1 else out
        except BaseException as exc:  # noqa: BLE001 - pickling errors, broken pools, cancels
            outs = [(None, remote_failure(exc, vertices[m[0]].name), now, now, None, [])
                    for m in members]
        else:
            self._remote_stats.observe([self._fns[m[0]] for m in members],
                                       [o[3] - o[2] for o in outs], time.perf_counter() - sent)
        shift = now - outs[-1][3]
        last = len(members) - 1
        for k, ((i, attempt, iteration), (payload, err, t0, t1, worker, logs)) in \
                enumerate(zip(members, outs)):
            name = vertices[i].name
            result, err = load_outcome(payload, err, name)
            t0, t1 = t0 + shift, t1 + shift
            for level, event, fields in logs:
                put((_LOG, name, level, attempt, iteration, event, fields, t1))
            put((_DONE, i, attempt, iteration, result, err, t0, t1, worker,
                 members[k + 1][0] if k < last else None, 0))

    # -- completion
    def _on_done(self, i: int, attempt: int, iteration: int | None, result: Any,
                 err: BaseException | None, t0: float, t1: float, worker: str | None,
                 nxt: int | None, seq: int) -> None:
        if nxt is None:
            self._inflight -= 1
        else:
            self._state[nxt] = RUNNING
            if self._t0[nxt] is None:
                self._t0[nxt] = t1
        if self._t0[i] is None:
            self._t0[i] = t0
        elif self.attempt_durations:  # a later attempt (or a chained task: start set on hand-off)
            log = self.attempt_durations.get(i)
            if log is not None:
                log.append((worker, t1 - t0))
        if err is None and i not in self._watched:
            # the common case, kept flat: success, release successors
            self.results[i] = result
            self._status[i] = SUCCEEDED
            self._state[i] = DONE
            self._attempts[i] = attempt
            self._t1[i] = t1
            self._worker[i] = worker
            if self.reporting:
                self._report_outcome(i)
            remaining = self._remaining
            state = self._state
            for s in self.graph.succs[i]:
                r = remaining[s] - 1
                remaining[s] = r
                if r == 0 and state[s] == PENDING:
                    done = self._make_ready(s)
                    if done is not None:
                        self._finish(*done)
        else:
            self._decide(i, attempt, iteration, result, err, t0, t1, worker)
        if nxt is not None and self.reporting:
            self._report_started(self.graph.vertices[nxt].name, self._next_attempt[nxt],
                                 self._next_iter[nxt], t1)
        if seq:
            # last: what this completion released is in the ready heap now
            self._handled[worker] = seq  # type: ignore[index]

    def _decide(self, i: int, attempt: int, iteration: int | None, result: Any,
                err: BaseException | None, t0: float, t1: float, worker: str | None) -> None:
        decision = None
        if self._has_attempt_done:
            v = self.graph.vertices[i]
            decision = self.hook.flowdeco_attempt_done(
                run=self, task=v,
                attempt=Attempt(attempt, iteration, result, err, t0 + self._offset,
                                t1 + self._offset, t1 - t0))
        if isinstance(decision, Reschedule):
            if i not in self.attempt_durations:  # the first attempt (later ones: _on_done)
                self.attempt_durations[i] = [(worker, t1 - t0)]
            next_attempt = decision.attempt if decision.attempt is not None else attempt + 1
            next_iter = decision.iteration if decision.iteration is not None else iteration
            delay = max(float(decision.delay), 0.0)
            self._last_error[i] = err
            self._attempts[i] = attempt
            if err is not None and self.reporting:
                self._report("task_retrying", self.graph.vertices[i].name,
                             {"attempt": attempt, "delay": delay, "error": format_error(err),
                              **decision.fields}, t1)
            if self.stopping:
                self._finish(i, INTERRUPTED if self.interrupted or err is None else FAILED,
                             None, err, attempt, t1, worker)
                return
            self._state[i] = WAITING
            self._push_timer(self.clock.monotonic() + delay, i, next_attempt, next_iter)
            return
        if isinstance(decision, Finish):
            result, err = decision.result, decision.error
        elif decision is not None:
            raise InternalError(f"flowdeco_attempt_done returned {decision!r}; expected "
                                "Reschedule, Finish or None")
        self._finish(i, SUCCEEDED if err is None else FAILED, result, err, attempt, t1, worker)

    def _finish(self, i: int, status: str, result: Any, err: BaseException | str | None,
                attempts: int, t1: float | None, worker: str | None = None,
                reason: str | None = None) -> None:
        """Record how task ``i`` ended and release or skip its successors (iteratively)."""
        todo = [(i, status, result, err, attempts, t1, worker, reason)]
        state = self._state
        remaining = self._remaining
        succs = self.graph.succs
        vertices = self.graph.vertices
        while todo:
            i, status, result, err, attempts, t1, worker, reason = todo.pop()
            state[i] = DONE
            self._status[i] = status
            self._error[i] = err
            self._attempts[i] = attempts
            self._t1[i] = t1
            self._worker[i] = worker
            self._reason[i] = reason
            ok = status in _OK
            if ok:
                self.results[i] = result
            elif status == FAILED and self.stop_on_error and not self.stopping:
                self._stop(interrupted=False)
            if self.reporting:
                self._report_outcome(i)
            # what an all_succeeded dependent inherits (see .dynamic): "condition" and
            # "stopped" pass on, anything else that is not a success gives "upstream"
            why = None if ok else reason if status == SKIPPED and reason in (
                "condition", "stopped") else "upstream"
            for s in succs[i]:
                remaining[s] -= 1
                if state[s] != PENDING:
                    continue
                if not ok and vertices[s].kind is TASK:
                    if why == "upstream" and vertices[s].spec.trigger == "all_succeeded":
                        state[s] = DONE   # eager: no need to wait for its other dependencies
                        todo.append((s, SKIPPED, None, None, 0, None, None, "upstream"))
                        continue
                    # decided by its trigger rule once every dependency has ended
                    self._slow[s] = True
                if remaining[s] == 0:
                    done = self._make_ready(s)
                    if done is not None:
                        state[s] = DONE
                        todo.append(done)

    def _push_timer(self, deadline: float, i: int, attempt: int, iteration: int | None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, i, attempt, iteration))

    def _release_timers(self) -> None:
        now = self.clock.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, i, attempt, iteration = heapq.heappop(timers)
            if self._slow[i] and self._dynamic().timer(i, attempt, iteration):
                continue  # a mapped instance's retry, or a mapped task's delay ended
            self._state[i] = READY
            self._next_attempt[i] = attempt
            self._next_iter[i] = iteration
            with self._lock:
                heapq.heappush(self._ready, self._key[i])

    def _make_ready(self, i: int) -> tuple | None:
        """Dependencies are done: queue ``i``, or return how it ends right away.

        Called from the scheduler's completion paths; a returned tuple is
        completed by the caller (restored tasks, sub-flow nodes, tasks whose
        trigger rule or condition says skip).
        """
        v = self.graph.vertices[i]
        slow = self._slow[i]
        if slow:
            if v.kind is SUBFLOW:
                return self._subflow_end(v)
            done = self._dynamic().gate(v)
            if done is not None:
                return done
        if self._has_restore:
            restored = self._restore(self, v, v.name)
            if restored is not None:
                if restored.fields:
                    self._restore_fields[v.name] = restored.fields
                now = self.clock.monotonic()
                self._t0[i] = now
                return (i, RESTORED, restored.result, None, restored.attempts, now, None, None)
        if self._has_delay:
            delay = self.hook.flowdeco_task_delay(run=self, task=v)
            if delay:
                self._state[i] = WAITING
                self._push_timer(self.clock.monotonic() + float(delay), i, 1,
                                 self._first_iteration[i])
                return None
        if slow and v.spec.map is not None:  # type: ignore[union-attr]
            return self._dyn.expand(i)
        self._state[i] = READY   # next_attempt/next_iter still hold 1 / the first iteration
        with self._lock:
            heapq.heappush(self._ready, self._key[i])
        return None

    def _subflow_end(self, v: Vertex) -> tuple:
        status = self._status
        failed = [self.graph.vertices[m].name for m in v.members if status[m] == FAILED]
        now = self.clock.monotonic()
        starts = [t for m in v.members if (t := self._t0[m]) is not None]
        self._t0[v.index] = min(starts) if starts else now
        if failed:
            err = f"SubflowFailed: {len(failed)} inner task(s) failed: {', '.join(failed)}"
            return (v.index, FAILED, None, err, 1, now, None, None)
        if any(status[m] is None or status[m] == INTERRUPTED for m in v.members):
            return (v.index, INTERRUPTED, None, None, 0, now, None, None)
        skipped = [self._reason[m] for m in v.members if status[m] == SKIPPED]
        # the node did not run as a whole: report why, like a skipped task (an inner
        # task skipped by its condition or trigger rule is routing, not a reason to
        # skip the node -- unless nothing inside ran)
        hard = [r for r in skipped if r not in ("condition", "trigger")]
        if hard:
            reason = "upstream" if "upstream" in hard else hard[0]
            return (v.index, SKIPPED, None, None, 0, None, None, reason)
        if skipped and len(skipped) == len(v.members):
            reason = "condition" if "condition" in skipped else "upstream"
            return (v.index, SKIPPED, None, None, 0, None, None, reason)
        if len(v.sinks) == 1:
            result = self.results[v.sinks[0][1]]
        else:
            result = {name: self.results[m] for name, m in v.sinks}
        return (v.index, SUCCEEDED, result, None, 1, now, None, None)

    def _report_outcome(self, i: int) -> None:
        self._report_end(self.graph.vertices[i].name, self.outcome_at(i), self._t1[i])

    def _report_end(self, name: str, out: TaskOutcome, t1: float | None) -> None:
        """Report how task (or mapped instance) ``name`` ended; ``t1`` on the monotonic clock."""
        status = out.status
        if status == SUCCEEDED:
            fields: dict[str, Any] = {"attempts": out.attempts, "duration": round(out.duration, 6)}
            self._report("task_succeeded", name, fields, t1, out)
        elif status == FAILED:
            fields = {"attempts": out.attempts, "error": out.error}
            exc = out.exception
            if exc is not None and exc.__traceback__ is not None:
                fields["traceback"] = format_traceback(exc)
            elif exc is not None and hasattr(exc, "remote_traceback"):
                fields["traceback"] = exc.remote_traceback  # type: ignore[attr-defined]
            self._report("task_failed", name, fields, t1, out)
        elif status == SKIPPED:
            self._report("task_skipped", name, {"reason": out.reason}, None, out)
        elif status == RESTORED:
            fields = {"attempts": out.attempts}
            if self._restore_fields:
                fields.update(self._restore_fields.pop(name, ()))
            self._report("task_restored", name, fields, None, out)
        else:
            self._report("task_interrupted", name, {"attempts": out.attempts}, None, out)

    def _stop(self, interrupted: bool) -> None:
        """Start nothing new; tasks waiting for a retry or a delay end now."""
        self.stopping = True
        if interrupted:
            self.interrupted = True
        timers, self._timers = self._timers, []
        now = self.clock.monotonic()
        for _, _, i, attempt, iteration in sorted(timers):
            if self._slow[i] and self._dyn is not None and \
                    self._dyn.stop_timer(i, iteration, interrupted, now):
                continue  # a mapped instance waiting for a retry
            err = self._last_error[i]
            if self._t0[i] is None:
                self._finish(i, SKIPPED, None, None, 0, None, None, "stopped")
            elif err is None:  # between two iterations of an interval task: it was cut short
                self._finish(i, INTERRUPTED, None, None, self._attempts[i], now)
            else:
                self._finish(i, INTERRUPTED if interrupted else FAILED, None, err,
                             self._attempts[i], now)

    def _finalize(self) -> None:
        """Give every task an outcome: in-flight ones interrupted, the rest skipped."""
        now = self.clock.monotonic()
        for i in self.graph.order:
            if self._status[i] is not None:
                continue
            v = self.graph.vertices[i]
            state = self._state[i]
            if v.kind is SUBFLOW:
                done = self._subflow_end(v)
            elif self._dyn is not None and i in self._dyn.maps:
                done = self._dyn.finalize(i)  # a mapped task: its instances first
            elif state == RUNNING:
                if self._t0[i] is None:
                    self._t0[i] = now
                done = (i, INTERRUPTED, None, None, max(self._attempts[i], 1), now, None, None)
            elif self.stopping:
                done = (i, SKIPPED, None, None, 0, None, None, "stopped")
            else:
                raise InternalError(f"task {v.name!r} was never scheduled (state {state})")
            _, status, result, err, attempts, t1, worker, reason = done
            self._state[i] = DONE
            self._status[i] = status
            self._error[i] = err
            self._attempts[i] = attempts
            self._t1[i] = t1
            self._reason[i] = reason
            if status in _OK:
                self.results[i] = result
            if self.reporting:
                self._report_outcome(i)

    # -- signals
    def running_count(self) -> int:
        """Tasks and mapped instances running now: what a stopping run waits for."""
        n = self._state.count(RUNNING)
        dyn = self._dyn
        if dyn is not None and dyn.maps:
            from .dynamic import I_RUNNING
            for i, m in dyn.maps.items():
                n += m.status.count(I_RUNNING) - (self._state[i] == RUNNING)
        return n

    def _report_interrupt(self, signum: int) -> None:
        """``run_interrupted`` (once): the signal, and how many running tasks are waited for."""
        if self._interrupt_reported or not self.reporting:
            return
        self._interrupt_reported = True
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        self._report("run_interrupted", None, {"signal": name, "running": self.running_count()})

    def _install_signals(self) -> Callable[[], None]:
        received = [0]

        def handler(signum: int, frame: Any) -> None:
            received[0] += 1
            self._halt = True
            if received[0] >= 2 and self._sync_busy:
                raise KeyboardInterrupt  # stop waiting for a task running on this thread
            if received[0] == 1 and self._sync_busy:
                # the scheduler is this thread, inside a task (no hook is running):
                # say what happens now, not when the task ends
                self._report_interrupt(signum)
            self.q.put((_SIGNAL, signum))

        return on_stop_signals(handler)


# --------------------------------------------------------------------------- sessions


class Session:
    """One invocation: plugin manager, configuration, collection, run, teardown."""

    def __init__(self, config: Config, params: Mapping[str, Any], lease: Lease | None = None):
        self.config = config
        self.params = dict(params)
        self._lease = lease

    @classmethod
    def start(cls, *, plugins: Iterable[Any] = (), disable: Iterable[str] = (),
              options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              clock: Clock | None = None, from_cli: bool = False,
              parser: Parser | None = None, pm: Any = None) -> "Session":
        lease = None
        if pm is None:
            lease = acquire(plugins, disable)
            pm, parser = lease.pm, lease.parser
        if parser is None:
            parser = Parser()
            pm.hook.flowdeco_addoption(parser=parser)
        try:
            values = merge_options(parser, options or {})
            config = Config(pm, parser, values, clock=clock, from_cli=from_cli)
            all_params = parse_params(values.get("param") or ())
            all_params.update(parse_param_env(values.get("param_env")))
            all_params.update(params or {})
            declare_secrets(all_params, values.get("secret"))
        except BaseException:
            if lease is not None:
                release(lease)
            raise
        session = cls(config, all_params, lease)
        config.params = session.params  # type: ignore[attr-defined]
        try:
            pm.hook.flowdeco_configure(config=config)
        except BaseException:
            session.close()
            raise
        return session

    def close(self) -> None:
        try:
            self.config.hook.flowdeco_unconfigure(config=self.config)
        finally:
            if self._lease is not None:
                release(self._lease)
                self._lease = None

    def collect(self, target: Any, unset_ok: bool = False) -> Graph:
        """Resolve the target, build and validate the graph, check the run parameters,
        apply ``-k``.  ``unset_ok``: leave required run parameters unset (listings)."""
        resolved = resolve_target(target)
        graph = build_graph(resolved.name, resolved.members, self.params, resolved.flow,
                            unset_ok=unset_ok)
        if not len(graph):
            raise NoTasksError(f"no tasks found in {resolved.name!r}: decorate functions with "
                               "@task (tasks imported from elsewhere are not collected on "
                               "their own)")
        self._check_options(graph)
        if self.params:  # against the whole flow: a parameter of a task -k leaves out is fine
            check_params(graph, self.params)
            wrap_secrets(graph, self.params)
            scrub_options(self.config.option, self.params)
        expr = self.config.getoption("select", None)
        if expr:
            match = compile_expression(expr)
            chosen = [v.index for v in graph.vertices if match(v.name)]
            if not chosen:
                raise NoTasksError(f"-k {expr!r} matched none of the {len(graph)} tasks "
                                   f"({', '.join(graph.names[:8])}{', ...' if len(graph) > 8 else ''})")
            graph = graph.subgraph(graph.ancestors(chosen))
        self.config.hook.flowdeco_collection_finish(config=self.config, graph=graph)
        return graph

    def _check_options(self, graph: Graph) -> None:
        used = graph.options_used
        if not used:
            return
        claimed = {name for names in self.config.hook.flowdeco_task_options() for name in names}
        for opt in used:
            if opt not in claimed:
                v = graph.using(opt)[0]
                raise CollectionError(
                    f"task {v.name!r} sets {opt}= but no active plugin handles it "
                    "(is the plugin that provides it disabled with -p no:NAME or not "
                    "installed?)")

    def execute(self, graph: Graph) -> RunResult:
        cfg = self.config
        state_dir = None if cfg.getoption("no_state") else cfg.getoption("state_dir")
        run_id = cfg.getoption("run_id")
        run_id = validate_run_id(run_id) if run_id is not None else new_run_id(cfg.clock)
        executor = cfg.getoption("executor")
        workers = cfg.getoption("workers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise UsageError(f"workers must be an int >= 1, got {workers!r}")
        owns = True
        if isinstance(executor, Executor):
            owns = False
            workers = workers or getattr(executor, "_max_workers", None) or default_workers("thread")
        else:
            name = str(executor)
            workers = workers or default_workers(name)
            made = cfg.hook.flowdeco_make_executor(config=cfg, name=name, workers=workers)
            if made is None:
                raise UsageError(
                    f"unknown executor {name!r}: use thread, process or sync "
                    "(dask needs the flowdeco-dask plugin)")
            executor = made
        run = Run(cfg, graph, run_id=run_id, state_dir=state_dir, params=self.params,
                  executor=executor, workers=workers,
                  stop_on_error=bool(cfg.getoption("stop_on_error")),
                  resumed=bool(cfg.getoption("resume", None)), owns_executor=owns)
        self.last_run = run
        return run.execute()


class NoTasksError(FlowError):
    """Nothing to run: no tasks collected, or ``-k`` matched none (exit code 5)."""


def run(target: Any, *, workers: int | None = None, params: Mapping[str, Any] | None = None,
        executor: str | Executor = "thread", state_dir: str | os.PathLike | None = ".flowdeco",
        run_id: str | None = None, resume: str | None = None, stop_on_error: bool = False,
        plugins: Iterable[Any] = (), disable: Iterable[str] = (), select: str | None = None,
        clock: Clock | None = None, **options: Any) -> RunResult:
    """Collect ``target`` and run it; returns a :class:`RunResult`.

    ``target`` is a module object, a module name, a file path,
    ``"module:flow"``, a :class:`Flow`, or a list of task functions.
    ``state_dir=None`` keeps nothing (``--no-state``).  ``plugins`` and
    ``disable`` are ``-p NAME`` and ``-p no:NAME``; ``select`` is ``-k``;
    further keyword options are those the active plugins declare.  Graph and
    usage errors raise :class:`FlowError` before anything runs.
    """
    given: dict[str, Any] = dict(workers=workers, executor=executor, run_id=run_id,
                                 stop_on_error=stop_on_error, select=select, **options)
    if state_dir is None:
        given["no_state"] = True
    else:
        given["state_dir"] = os.fspath(state_dir)
    if resume is not None:
        given["resume"] = resume
    session = Session.start(plugins=plugins, disable=disable, options=given,
                            params=params or {}, clock=clock)
    try:
        graph = session.collect(target)
        return session.execute(graph)
    finally:
        session.close()
