"""The state plugin: recording a run (options: :mod:`.hooks`; resuming: :mod:`.resume`).

Lifecycle of one session (see :mod:`flowdeco.hookspecs` for the hooks):

1. ``flowdeco_configure``: with ``--no-state`` nothing is registered.  Else
   the store is made (``flowdeco_state_store``), ``--resume``/``--rerun``
   are checked, and a :class:`StatePlugin` is registered.
2. ``flowdeco_collection_finish``: a resumed run is resolved (``last`` is the
   latest run *of this flow*), checked (same flow), locked, and its task
   records are loaded; ``--run-id`` is set to the resumed id.
3. ``flowdeco_run_start``: the run is locked and recorded ``running`` with its
   flow version and graph snapshot (:mod:`.versions`, once per session); on
   resume, fingerprints are compared, the tasks to restore are decided and a
   restorer is registered.  With a thread (or sync) executor every task is
   wrapped (``flowdeco_task_wrap``): on its worker it waits until its
   dependencies' completions are committed, then runs, then encodes its
   result.  Other executors: results are encoded in ``flowdeco_attempt_done``
   and ``run.on_success`` lists every task.
4. While running: an unstorable result fails its task at once (no retry);
   ``flowdeco_report`` buffers one row per task (with its fingerprint,
   computed then); ``flowdeco_report_flush``
   turns the buffer into one transaction when it holds a task's end.  With a
   thread executor the transaction is committed by a writer thread and each
   dependent waits on its worker until its inputs are committed (see
   :mod:`.writer`); with other executors it is committed right there, before
   anything new is dispatched.  A failed commit (disk full) stops the run and
   is reported as ``state_write_failed``.  What is committed is confirmed
   to reporting plugins on the scheduler thread (``flowdeco_report_durable``,
   ``run.durable_later``): at once after a commit made there, else when the
   writer's commit wakes the scheduler (``run.call_soon``).  The audit trail
   writes ``task_succeeded`` only then.  When ``run_finished`` is reported,
   everything still pending is committed and confirmed first.
5. ``flowdeco_run_finish``: last rows, final status, lock released.

Input-hash caching (``@task(cache=...)``, :mod:`.cache`) rides on the same
hooks: the restorer asks the cache when a cached task is ready, and the
task's row carries its cache key.
"""

from __future__ import annotations

import functools
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from ...errors import UsageError
from ...executors import SyncExecutor
from ...graph import SUBFLOW, TASK, Graph
from ...manager import direct_caller, hookimpl
from ...outcome import Event, Finish
from . import hookspecs
from .cache import Cache
from .codec import Codec, default_codec
from .fingerprint import fingerprint
from .resume import Resuming, _instance_base, _Restorer
from .results import INSTANCES, ResultFiles, ResultWriteError, parse_ref
from .serializers import Serializer, default_registry
from .storage import ResultStore, normalize_choice
from .store import RunLock, SQLiteStore, Store, TaskRecord, TaskRow
from .versions import snapshot, snapshot_json, version_of
from .writer import UNREPORTED, UnstorableResult, Writer, wrapper

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Config
    from ...engine.scheduler import Run
    from ...graph import Vertex
    from ...outcome import Attempt, RunResult

PLUGIN_NAME = "state-store"
RESTORER_NAME = "state-restorer"
_MAX_ERROR = 8192
_FILE_REF = '{"$t":"file",'


def add_hookspecs(pm: Any) -> None:
    """Declare ``flowdeco_state_store`` on ``pm`` (once)."""
    caller = getattr(pm.hook, "flowdeco_state_store", None)
    if caller is None or not caller.has_spec():
        pm.add_hookspecs(hookspecs)


def make_store(pm: Any, state_dir: str, config: Any = None) -> Store:
    """The store for ``state_dir``: a backend plugin's, else SQLite."""
    add_hookspecs(pm)
    store = pm.hook.flowdeco_state_store(state_dir=str(state_dir), config=config)
    if store is None:  # the built-in implementation is blocked or shadowed
        store = SQLiteStore(state_dir)
    return store


# --------------------------------------------------------------------------- the plugin


class StatePlugin(Resuming):
    """Durable state for one session; registered by ``flowdeco_configure`` when state is on."""

    def __init__(self, config: Any, store: Store, state_dir: str, resume: str | None,
                 rerun: list[tuple[str, Callable[[str], bool]]],
                 refresh: list[tuple[str, Callable[[str], bool]]] = (),  # type: ignore[assignment]
                 no_cache: bool = False, codec: Codec = default_codec):
        self.config = config
        self.store = store
        self.state_dir = state_dir
        self.resume = resume
        self.rerun = rerun
        self.refresh = list(refresh)
        self.no_cache = no_cache
        #: input-hash caching of this run, when some task has cache= (see .cache)
        self.cache: Cache | None = None
        self.codec = codec
        #: how results become row text and back (files: STATE_DIR/results, see .storage)
        self.results: ResultStore | None = None
        #: the run's store= default, and per task name the sha256 of its result file
        #: (input-hash cache keys use it instead of encoding the value)
        self.default_store: Any = "auto"
        self.digests: dict[str, str] = {}
        self.lock: RunLock | None = None
        self.resume_id: str | None = None
        self.stored: dict[str, TaskRecord] | None = None
        self.run_id: str | None = None
        self.pending: dict[str, TaskRow] = {}
        #: whether ``pending`` holds a task's end (a row some dependent may wait for)
        self.completions = False
        self.writer: Writer | None = None
        #: tasks run in this process (thread or sync executor): wrapped, encoded on the worker
        self.local = False
        #: per task index: the batch holding its completion (0: durable already)
        self.seqs: list[int] = []
        self.next_seq = 1
        #: id(result) -> (result, its JSON), encoded on the worker until it is recorded
        self.encoded: dict[int, tuple[Any, str]] = {}
        self.write_error: BaseException | None = None
        self._restorer: _Restorer | None = None
        #: on resume: completions the audit trail shows that the store lost
        self.lost: list[str] = []
        #: some plugin wants to hear which completions are durable (flowdeco_report_durable)
        self.confirm = False
        #: names of the completions in ``pending`` (kept only when ``confirm``)
        self.done_names: list[str] = []
        #: (batch, names) submitted to the writer and not confirmed yet
        self.unconfirmed: deque[tuple[int, list[str]]] = deque()
        #: a wake-up for the scheduler is on its way (writer thread -> run.call_soon)
        self._wake_posted = False

    # -- resume checks (configure and collection)
    @hookimpl
    def flowdeco_collection_finish(self, config: Config, graph: Graph) -> None:
        self._check_store(graph)
        if self.resume is not None:
            self._prepare_resume(graph)

    def _result_store(self) -> ResultStore:
        """Built once the flow is imported (its module may register serializers)."""
        if self.results is None:
            registry = default_registry.copy()
            for found in self.config.pluginmanager.hook.flowdeco_result_serializers():
                for ser in found or ():
                    if not isinstance(ser, Serializer):
                        raise UsageError(f"flowdeco_result_serializers returned {ser!r}, not a "
                                         "flowdeco.plugins.state.Serializer")
                    registry.add(ser)
            self.results = ResultStore(self.codec, ResultFiles(self.state_dir, registry),
                                       registry)
        return self.results

    def _check_store(self, graph: Graph) -> None:
        """``store=`` names a known serializer (the run's default, then each task's)."""
        results = self._result_store()
        self.default_store = normalize_choice(self.config.getoption("store", "auto"), "--store")
        results.check(self.default_store, "--store")
        for v in graph.using("store"):
            results.check(v.spec.store, f"task {v.name!r}")

    def _choice(self, v: Any) -> Any:
        store = v.spec.store
        return self.default_store if store is None else store

    # -- run start
    @hookimpl(tryfirst=True)
    def flowdeco_run_start(self, run: Run) -> None:
        graph = run.graph
        store = self.store
        if self.resume is not None and self.resume_id is None:
            self._prepare_resume(graph)  # the graph did not come from Session.collect
        if self.resume_id is not None and run.run_id != self.resume_id:
            raise UsageError(f"run id {run.run_id!r} is not the resumed run {self.resume_id!r}")
        vertices = graph.vertices
        if self.results is None:  # the graph did not come from Session.collect
            self._check_store(graph)
        # computed when a task is recorded (or, on resume, when it is compared)
        self.fps: list[str | None] = [None] * len(vertices)
        self.vertices = vertices
        self.run_id = run.run_id
        try:
            store.open()
            if self.lock is None:
                self.lock = store.lock_run(run.run_id)
            restore, instances = self._plan_restore(run) if self.stored is not None else ({}, {})
            self.cache = self._make_cache(run)
            if restore or instances or self.cache is not None:
                self._restorer = _Restorer(restore, instances, self.cache)
                self.config.pluginmanager.register(self._restorer, RESTORER_NAME)
            store.begin_run(run.run_id, graph.name, run.now(), self.resume_id is not None)
            record_version = getattr(store, "record_version", None)
            text = self._snapshot(run) if record_version is not None else None
            if text is not None:  # once per session, never per task
                record_version(run.run_id, version_of(text), graph.name, text)
        except BaseException:
            self.close()
            raise
        self.seqs = [UNREPORTED] * len(vertices)
        self.local = isinstance(run.executor, (ThreadPoolExecutor, SyncExecutor))
        run.durable_later = True  # completions are confirmed by flowdeco_report_durable
        self.confirm = bool(run.hook.flowdeco_report_durable.get_hookimpls())
        if self.confirm:  # once per commit: without pluggy's dispatch (see direct_caller)
            self._durable = direct_caller(run.hook.flowdeco_report_durable, ("run", "tasks"))
        if isinstance(run.executor, ThreadPoolExecutor):
            # workers share our memory: commit on a thread, gate dependents (see .writer)
            wake = None
            if self.confirm:
                def wake() -> None:  # on the writer thread, after a commit
                    if not self._wake_posted:
                        self._wake_posted = True
                        run.call_soon(lambda: self._confirm_committed(run))
            self.writer = Writer(store, run.run_id, wake)
            self.writer.start()
        elif not self.local:
            # results come back from other processes: encode them here (flowdeco_attempt_done)
            run.on_success.update(v.index for v in vertices if v.kind is TASK)
            run.inline_successors = False  # (not used with these executors anyway)

    @staticmethod
    def _snapshot(run: Any) -> str | None:
        """The graph snapshot's JSON text; None (and a warning) if it cannot be made:
        the flow version is for looking back, never a reason not to run."""
        try:
            return snapshot_json(snapshot(run.graph))
        except Exception as exc:  # noqa: BLE001 - an option value JSON cannot hold...
            run.emit("state_warning", level="warning",
                     error=f"the flow version of run {run.run_id!r} is not recorded: "
                           f"{type(exc).__name__}: {str(exc)[:200]}")
            return None

    def _fingerprint(self, i: int) -> str:
        fp = self.fps[i]
        if fp is None:
            v = self.vertices[i]
            fp = self.fps[i] = fingerprint(v.fn, v.spec, v.consts)
        return fp

    # -- attempts
    @hookimpl(tryfirst=True)
    def flowdeco_attempt_done(self, run: Run, task: Vertex, attempt: Attempt) -> Finish | None:
        """End a task whose result cannot be stored, without retry.

        Other failures are the retry plugin's (None).  With executors in other
        processes, successful results are encoded here as well.
        """
        err = attempt.error
        if err is not None:
            if isinstance(err, ResultWriteError):
                self._write_failed(run, err.cause)
                return Finish(error=err)
            return Finish(error=err) if isinstance(err, UnstorableResult) else None
        if self.local or task.kind is not TASK:
            return None  # encoded on the worker already
        result = attempt.result
        try:  # (a file is written here, on the scheduler thread, from the one copy we hold)
            text = self.results.encode(run.run_id, task.name, self._choice(task), result)
        except UnstorableResult as exc:
            return Finish(error=exc)
        except ResultWriteError as exc:
            self._write_failed(run, exc.cause)
            return Finish(error=exc)
        self.encoded[id(result)] = (result, text)
        return None

    @hookimpl
    def flowdeco_task_wrap(self, run: Run, task: Vertex) -> Any:
        if not self.local or task.kind is not TASK:
            return None
        # an interval task's successful iteration is not its completion: not waited for
        final = task.spec is None or getattr(task.spec, "every", None) is None
        choice = self._choice(task)
        if final:
            encode = functools.partial(self.results.encode, run.run_id, task.name, choice)
        elif choice in ("auto", "json"):
            # an iteration's result is not stored (the list of them is, at the end): check
            # that it has a JSON form, as its list needs one, but write no file per iteration
            encode = self.codec.dumps
        else:
            encode = _unchecked
        # nor is a mapped instance's end its task's (that comes after the last instance)
        last = task.index if final and not getattr(task.spec, "map", None) else -1
        return wrapper(task.name, encode, self.encoded, self.writer, self.seqs, task.deps, last)

    # -- recording
    @hookimpl(tryfirst=True)  # run_finished: drained before the audit trail writes it
    def flowdeco_report(self, run: Run, event: Event) -> None:
        name = event.name
        if name == "task_started":
            task = event.task
            self.pending[task] = TaskRow(task, "running", event.fields.get("attempt", 1),
                                         event.timestamp, None, None, None, None, None)
            return
        out = event.outcome
        if out is None or event.task is None:
            if name == "run_finished":
                self._drain(run)
            return
        graph = run.graph
        i = graph.by_name.get(event.task)
        if i is None:
            self._report_instance(run, event.task, out)
            return
        status = out.status
        cache, key = self.cache, None
        if cache is not None:
            key = cache.keys.pop(event.task, None)
        v = graph.vertices[i]
        result = None
        if status == "restored":
            result = cache.hits.pop(event.task, None) if cache is not None else None
            if result is None:
                self.seqs[i] = 0  # resumed: its record is already there, durable
                return
        error = out.error
        if v.kind is SUBFLOW:
            # done when its members are: durable when their rows are
            self.seqs[i] = max([self.seqs[m] for m in v.members], default=0)
        else:
            self.seqs[i] = self.next_seq
            if status == "succeeded":
                result, status, error = self._result_text(run, v, v.name, out.result, status,
                                                          error)
        if result is not None and result.startswith(_FILE_REF):
            self._digest(event.task, result)
        if error is not None and len(error) > _MAX_ERROR:
            error = error[:_MAX_ERROR] + "..."
        fp = self.fps[i] if v.kind is not TASK else self._fingerprint(i)
        self.pending[event.task] = TaskRow(
            event.task, status, out.attempts, out.started, out.finished,
            fp, result, error, out.reason, key)
        self.completions = True
        if self.confirm:
            self.done_names.append(event.task)

    def _report_instance(self, run: Any, name: str, out: Any) -> None:
        """An instance of a mapped task (``scan[3]``) ended: its own row, for restoring it alone."""
        base = _instance_base(name)
        i = run.graph.by_name.get(base) if base is not None else None
        if i is None:
            return
        cache, key = self.cache, None
        status, error, result = out.status, out.error, None
        if cache is not None:
            key = cache.keys.pop(name, None)
            if status == "restored":
                result = cache.hits.pop(name, None)
        if status == "restored" and result is None:
            return  # resumed: its record is already there
        if status == "succeeded":
            result, status, error = self._result_text(run, run.graph.vertices[i], name,
                                                      out.result, status, error)
        if error is not None and len(error) > _MAX_ERROR:
            error = error[:_MAX_ERROR] + "..."
        self.pending[name] = TaskRow(name, status, out.attempts, out.started, out.finished,
                                     self._fingerprint(i), result, error, out.reason, key)
        self.completions = True
        if self.confirm:
            self.done_names.append(name)

    def _digest(self, name: str, text: str) -> None:
        ref = parse_ref(text)
        if ref is not None:
            self.digests[name] = ref.sha256

    def _result_text(self, run: Any, v: Any, name: str, value: Any, status: str,
                     error: str | None) -> tuple[str | None, str, str | None]:
        enc = self.encoded.pop(id(value), None)
        if enc is not None and enc[0] is value:
            return enc[1], status, error
        try:  # a plugin ended the task with a result of its own (an interval's list)
            return self.results.encode(run.run_id, name, self._choice(v), value), status, error
        except (UnstorableResult, ResultWriteError) as exc:
            if isinstance(exc, UnstorableResult) and name == v.name and v.spec is not None \
                    and v.spec.map is not None:
                return INSTANCES, status, error  # its instances' rows hold the values
            # too late to fail the task: record it failed, so that a resume runs it again
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ResultWriteError):
                self._write_failed(run, exc.cause)
            else:
                run.emit("state_warning", task=name, level="warning", error=error)
            return None, "failed", error

    @hookimpl
    def flowdeco_report_flush(self, run: Run) -> None:
        writer = self.writer
        if writer is not None:
            if writer.error is not None:
                self._write_failed(run, writer.error)
            if self.completions:
                self._submit(writer)
            if self.unconfirmed and self.unconfirmed[0][0] <= writer.committed:
                self._confirm_committed(run)
            return
        if self.completions:  # executors without shared memory: commit here, before dispatch
            self._commit(run)

    def _submit(self, writer: Writer) -> None:
        seq = self.next_seq
        writer.submit(seq, list(self.pending.values()))
        self.next_seq += 1
        self.pending.clear()
        self.completions = False
        if self.done_names:
            self.unconfirmed.append((seq, self.done_names))
            self.done_names = []

    def _confirm_committed(self, run: Any) -> None:
        """Scheduler thread: tell reporting plugins which completions the writer committed."""
        self._wake_posted = False  # (before reading ``committed``: a later commit wakes again)
        writer, unconfirmed = self.writer, self.unconfirmed
        if writer is None:
            return
        committed = writer.committed
        names: list[str] = []
        while unconfirmed and unconfirmed[0][0] <= committed:
            names += unconfirmed.popleft()[1]
        if names:
            self._durable(run, names)

    def _drain(self, run: Any) -> None:
        """The run has ended (``run_finished``): commit what is pending and confirm it, so
        that every success is durable -- and announced -- before the run's end is."""
        writer = self.writer
        if writer is None:
            if self.completions:
                self._commit(run)
            return
        if self.completions:
            self._submit(writer)
        last = self.next_seq - 1
        with writer.cond:
            writer.cond.wait_for(lambda: writer.committed >= last or writer.error is not None)
        if writer.error is not None:
            self._write_failed(run, writer.error)
        self._confirm_committed(run)

    def _commit(self, run: Any) -> bool:
        try:
            self.store.record_tasks(run.run_id, list(self.pending.values()))
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError, a backend's own
            self._write_failed(run, exc)
            return False
        self.pending.clear()
        self.completions = False
        if self.done_names:
            names, self.done_names = self.done_names, []
            self._durable(run, names)
        return True

    def _write_failed(self, run: Any, exc: BaseException) -> None:
        if self.write_error is not None:
            return
        self.write_error = exc
        run.stop()  # start nothing whose inputs are not durable
        event = Event("state_write_failed", run.now(), run.run_id, None,
                      {"level": "error", "error": f"{type(exc).__name__}: {exc}",
                       "store": self.store.location,
                       "hint": f"free space, then resume with --resume {run.run_id}"})
        run.hook.flowdeco_report(run=run, event=event)

    # -- finish
    @hookimpl
    def flowdeco_run_finish(self, run: Run, result: RunResult) -> None:
        try:
            writer, self.writer = self.writer, None
            if writer is not None:
                if self.pending:
                    writer.submit(self.next_seq, list(self.pending.values()))
                    self.pending.clear()
                writer.stop()
                if writer.error is not None:
                    self.write_error = self.write_error or writer.error
                    self.pending = writer.unwritten
            if self.pending:  # last chance for rows a failed write left behind
                self._commit(run)
            status = "failed" if self.write_error is not None and result.status == "succeeded" \
                else result.status
            try:
                self.store.finish_run(run.run_id, status, run.now(), result.duration)
            except Exception as exc:  # noqa: BLE001 - the run is over; say so and go on
                print(f"flowdeco: warning: could not record the end of run {run.run_id!r} in "
                      f"{self.store.location}: {type(exc).__name__}: {exc}", file=sys.stderr)
            cfg = self.config
            if status != "succeeded" and cfg.from_cli and (cfg.getoption("quiet", 0) or 0) < 2:
                print(f"flowdeco: run {run.run_id} is saved; continue it with "
                      f"--resume {run.run_id} (or --resume last)", file=sys.stderr)
        finally:
            self.close()

    def close(self) -> None:
        """Release the run lock and the store (idempotent; also called at unconfigure)."""
        self.encoded.clear()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
        if self._restorer is not None:
            pm = self.config.pluginmanager
            if pm.is_registered(self._restorer):
                pm.unregister(self._restorer)
            self._restorer = None
        lock, self.lock = self.lock, None
        try:
            if lock is not None:
                lock.release()
        finally:
            self.store.close()


def _unchecked(value: Any) -> str:
    return ""


__all__ = ["StatePlugin", "make_store", "add_hookspecs"]
